import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { combine, combineSync, float32ToBfloat16, float32ToFloat16, permuteSync, routeSync } from '../lib/index';
import { f32, i32, makeProblem } from './helpers/problems';
import { assertClose, assertSameTensor, FLOAT_TYPES, mulberry32, randn, refCombine, refPermute, tolFor, widen } from './helpers/reference';

/** A combine problem: y [R,d] random, rowOf/topkWeights from a real route + permute. */
function problem(T: number, k: number, E: number, d: number, seed: number, capacity?: number) {
  const p = makeProblem({ T, d: 8, f: 1, E, seed });
  const r = routeSync(p.x, p.gate, { topK: k });
  const pr = permuteSync(r.topkIds, E, capacity === undefined ? undefined : { capacity });
  const R = pr.expertOffsets.data[E];
  const y = f32(randn(R * d, seed + 1), [R, d]);
  return { y, rowOf: pr.rowOf, weights: r.topkWeights, R, ids: r.topkIds };
}

const vsRef = suite('combine vs the reference');

for (const [T, k, E, d] of [[1, 1, 1, 1], [1, 2, 8, 33], [33, 2, 8, 47], [511, 6, 64, 24], [33, 6, 8, 200], [511, 2, 3, 7]] as const)
  vsRef(`T=${T} k=${k} E=${E} d=${d}, every out type`, async () => {
    const c = problem(T, k, E, d, T + k + E + d);
    const ref = refCombine(c.y.data, c.rowOf.data, c.weights.data, T, k, d);
    for (const outType of FLOAT_TYPES) {
      const out = combineSync(c.y, c.rowOf, c.weights, { outType });
      assert.is(out.type, outType);
      assert.equal([...out.dims], [T, d]);
      const tol = outType === 'float32' ? { atol: 1e-6, rtol: 1e-6 * k } : tolFor(outType, k);
      assertClose(widen(out), ref, tol, `${outType}`);
      const a = await combine(c.y, c.rowOf, c.weights, { outType });
      assertSameTensor(a, out, `${outType}: async vs sync`);
    }
  });

vsRef('default outType is float32', () => {
  const c = problem(9, 2, 4, 5, 3);
  const out = combineSync(c.y, c.rowOf, c.weights);
  assert.is(out.type, 'float32');
  assertSameTensor(out, combineSync(c.y, c.rowOf, c.weights, { outType: 'float32' }), 'default');
});

vsRef('a hand-worked example', () => {
  // T=2, k=2, d=3: out[0] = 0.75*y[2] + 0.25*y[0]; out[1] = 0.5*y[1] + 0.5*y[3]
  const y = f32([1, 2, 3, 10, 20, 30, 100, 200, 300, -4, -8, 12], [4, 3]);
  const rowOf = i32([2, 0, 1, 3], [2, 2]);
  const w = f32([0.75, 0.25, 0.5, 0.5], [2, 2]);
  const out = combineSync(y, rowOf, w);
  assert.equal(Array.from(out.data), [75.25, 150.5, 225.75, 3, 6, 21]);
});

vsRef('dropped slots (rowOf = -1) contribute nothing; a fully dropped token is zero', () => {
  const T = 100, k = 2, E = 8, d = 16;
  const c = problem(T, k, E, d, 5, 6);
  const dropped = Array.from(c.rowOf.data).filter((r) => r === -1).length;
  assert.ok(dropped > 0, 'capacity 6 drops something');
  const ref = refCombine(c.y.data, c.rowOf.data, c.weights.data, T, k, d);
  const out = combineSync(c.y, c.rowOf, c.weights);
  assertClose(out.data, ref, { atol: 1e-6, rtol: 1e-6 }, 'with drops');
  let fully = 0;
  for (let t = 0; t < T; t++)
    if (c.rowOf.data[t * k] === -1 && c.rowOf.data[t * k + 1] === -1) {
      fully++;
      for (let i = 0; i < d; i++) assert.is(out.data[t * d + i], 0, `fully dropped token ${t}`);
    }
  assert.ok(fully > 0, 'some token is fully dropped');
  // all dropped: R = 0, y empty
  const none = combineSync(f32([], [0, d]), i32(new Int32Array(T * k).fill(-1), [T, k]), c.weights, { outType: 'bfloat16' });
  assert.equal([...none.dims], [T, d]);
  assert.ok(none.data.every((v) => v === 0));
});

vsRef('a dropped slot is skipped even when y holds NaN and the weight is NaN', () => {
  const y = f32([1, 2, NaN, NaN], [2, 2]);
  const out = combineSync(y, i32([0, -1], [1, 2]), f32([2, NaN], [1, 2]));
  assert.equal(Array.from(out.data), [2, 4]);
});

vsRef('sums in f32 in j order', () => {
  // ((0 + 1e8) + 1) + (-1e8) = 0 in f32 (1e8 + 1 rounds to 1e8); another order would give 1
  const y = f32([1e8, 1, -1e8], [3, 1]);
  const out = combineSync(y, i32([0, 1, 2], [1, 3]), f32([1, 1, 1], [1, 3]));
  assert.is(out.data[0], 0);
  const out2 = combineSync(y, i32([0, 2, 1], [1, 3]), f32([1, 1, 1], [1, 3]));
  assert.is(out2.data[0], 1);
});

vsRef('the same row used by several slots, and T=0', () => {
  const y = f32([1, 2], [1, 2]);
  const out = combineSync(y, i32([0, 0, 0], [1, 3]), f32([0.5, 0.25, 0.25], [1, 3]));
  assert.equal(Array.from(out.data), [1, 2]);
  const empty = combineSync(f32([], [0, 4]), i32([], [0, 2]), f32([], [0, 2]), { outType: 'float16' });
  assert.equal([...empty.dims], [0, 4]);
});

vsRef('rowOf from the reference permute with capacity agrees with the library permute', () => {
  const T = 64, k = 2, E = 4, d = 8;
  const c = problem(T, k, E, d, 9, 20);
  const ref = refPermute(c.ids.data, T, k, E, 20);
  assert.equal(Array.from(c.rowOf.data), Array.from(ref.rowOf));
});

const rounding = suite('combine: output rounding matches the JS conversions');

/** f32 values that exercise every rounding case of f16 and bf16 (no -0: 0 + -0 is +0). */
function roundingValues(seed: number): Float32Array {
  const rnd = mulberry32(seed);
  const bits = new Uint32Array(1);
  const fl = new Float32Array(bits.buffer);
  const out: number[] = [1, -2.5, 65504, 65519, 65520, 1e6, -1e6, 2 ** -24, 2 ** -25, 3 * 2 ** -25, 5 * 2 ** -25, 1023.5 * 2 ** -24,
    2 ** -14, 1 + 2 ** -11, 1 + 3 * 2 ** -11, 1 + 2 ** -8, 1 + 3 * 2 ** -8, Infinity, -Infinity, 1e-10, 3.4e38, 1e-40];
  for (let i = 0; i < 4000; i++) {
    const e = Math.floor(rnd() * 60) - 40;
    out.push((rnd() < 0.5 ? -1 : 1) * (1 + rnd()) * 2 ** e);
  }
  for (let i = 0; i < 2000; i++) {
    bits[0] = Math.floor(rnd() * 2 ** 32);
    if (!Number.isNaN(fl[0]) && !Object.is(fl[0], -0)) out.push(fl[0]);
  }
  // exact ties for both formats
  for (let e = -26; e < 16; e++) for (const m of [1024.5, 1025.5, 2047.5]) out.push(m * 2 ** (e - 10));
  for (let e = -130; e < 127; e += 3) for (const m of [128.5, 129.5, 255.5]) out.push(m * 2 ** (e - 7));
  return Float32Array.from(out);
}

rounding('float16 and bfloat16 outputs round to nearest even like float32ToFloat16 / float32ToBfloat16', () => {
  const v = roundingValues(17);
  const n = v.length;
  const y = f32(v, [n, 1]);
  const rowOf = i32(Array.from({ length: n }, (_, i) => i), [n, 1]);
  const w = f32(new Float32Array(n).fill(1), [n, 1]);
  const h = combineSync(y, rowOf, w, { outType: 'float16' });
  const b = combineSync(y, rowOf, w, { outType: 'bfloat16' });
  const wantH = float32ToFloat16(v);
  const wantB = float32ToBfloat16(v);
  for (let i = 0; i < n; i++) {
    if (h.data[i] !== wantH[i]) assert.unreachable(`float16 of ${v[i]}: native 0x${h.data[i].toString(16)}, JS 0x${wantH[i].toString(16)}`);
    if (b.data[i] !== wantB[i]) assert.unreachable(`bfloat16 of ${v[i]}: native 0x${b.data[i].toString(16)}, JS 0x${wantB[i].toString(16)}`);
  }
});

rounding('NaN in y gives NaN in every out type', () => {
  const y = f32([NaN, 1], [2, 1]);
  for (const outType of FLOAT_TYPES) {
    const out = combineSync(y, i32([0, 1], [2, 1]), f32([1, 1], [2, 1]), { outType });
    const v = widen(out);
    assert.ok(Number.isNaN(v[0]), `${outType}: NaN kept`);
    assert.is(v[1], 1);
  }
});

vsRef.run();
rounding.run();


