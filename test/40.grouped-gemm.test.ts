import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { ExpertWeights, groupedGemm, groupedGemmSync, permuteSync, routeSync, tensor, type Tensor } from '../lib/index';
import { i32, makeProblem, perExpert, type MoeProblem } from './helpers/problems';
import { cpuBf16Activations, tolForWeights } from './helpers/cpu-kernel';
import { assertClose, assertSameTensor, distinctIds, FLOAT_TYPES, refGroupedGemm, roundBf16, tolFor, type FloatType } from './helpers/reference';


const packs = new Map<MoeProblem, ExpertWeights>();
function packed(p: MoeProblem): ExpertWeights {
  let w = packs.get(p);
  if (!w) packs.set(p, (w = ExpertWeights.packSync({ w1: p.w1, w3: p.w3, w2: p.w2 })));
  return w;
}

/** groupedGemm on the given layout vs the reference on the same layout. */
function checkGemm(p: MoeProblem, sortedRows: Tensor<'int32'>, offsets: Tensor<'int32'>, label: string, w = packed(p)): Tensor<'float32'> {
  const y = groupedGemmSync(p.x, sortedRows, offsets, w);
  const R = offsets.data[p.E];
  assert.is(y.type, 'float32', `${label}: y type`);
  assert.equal([...y.dims], [R, p.d], `${label}: y dims`);
  const wType = p.w1.type as FloatType;
  const n = Math.max(p.d, p.f);
  if (cpuBf16Activations(wType)) {
    // The kernel's own arithmetic: x and h rounded to bf16, products accumulated in f32. An h whose
    // f32 and f64 values round to different bf16 neighbours moves its outputs by ~2^-9 of one term;
    // 2^-10 of max |ref| covers a few such ties, and nothing like a wrong or missing term.
    const exact = refGroupedGemm(p.xr, sortedRows.data, offsets.data, p.wr, true);
    assertClose(y.data, exact, { ...tolFor('float32', n), atolOfMax: 2 ** -10 }, `${label} (vs bf16-rounded activations)`);
  }
  const ref = refGroupedGemm(p.xr, sortedRows.data, offsets.data, p.wr);
  assertClose(y.data, ref, tolForWeights('float32', n, wType), label);
  return y;
}

/** Route-free layout from ids, through the library's permute (checked in 30.permute). */
function layout(ids: Int32Array, T: number, k: number, E: number, capacity?: number) {
  const r = permuteSync(i32(ids, [T, k]), E, capacity === undefined ? undefined : { capacity });
  return { rows: r.sortedRows, off: r.expertOffsets };
}

// ---- dtypes ------------------------------------------------------------------------------------

const dtypes = suite('groupedGemm: weight and activation dtypes');

for (const wType of FLOAT_TYPES)
  for (const xType of FLOAT_TYPES)
    dtypes(`weights ${wType}, x ${xType} (d=33, f=47)`, () => {
      const T = 33, k = 2, E = 8;
      const p = makeProblem({ T, d: 33, f: 47, E, xType, wType, seed: 40 });
      const { rows, off } = layout(distinctIds(T, k, E, 41), T, k, E);
      checkGemm(p, rows, off, `${wType}/${xType}`);
      const w = packed(p);
      assert.is(w.type, wType);
      assert.is(w.numExperts, E);
      assert.is(w.hiddenSize, 33);
      assert.is(w.intermediateSize, 47);
      assert.is(w.backend, 'cpu');
      assert.ok(w.bytes >= 3 * E * 33 * 47 * (wType === 'float32' ? 4 : 2), `bytes ${w.bytes} smaller than the weights`);
    });

// ---- shapes ------------------------------------------------------------------------------------

const shapes = suite('groupedGemm: shapes that break tiling');

const DF: [number, number][] = [[1, 1], [33, 47], [64, 200], [16, 16], [8, 24], [100, 7], [17, 9]];
for (const [d, f] of DF)
  for (const E of [1, 3, 8, 64])
    shapes(`d=${d} f=${f} E=${E}`, () => {
      const T = 33, k = Math.min(2, E);
      const wType: FloatType = (['float32', 'bfloat16', 'float16'] as const)[(d + E) % 3];
      const p = makeProblem({ T, d, f, E, wType, seed: d * 100 + f + E });
      const { rows, off } = layout(distinctIds(T, k, E, d + f + E), T, k, E);
      checkGemm(p, rows, off, `d=${d} f=${f} E=${E} ${wType}`);
    });

shapes('experts with zero rows (only experts 0, 4, 8 of 9 used)', () => {
  const T = 40, k = 2, E = 9;
  const p = makeProblem({ T, d: 33, f: 47, E, seed: 43 });
  const ids = distinctIds(T, k, 3, 44).map((e) => e * 4);
  const { rows, off } = layout(ids, T, k, E);
  checkGemm(p, rows, off, 'sparse experts');
});

shapes('all rows on one expert (first, middle, last)', () => {
  for (const wType of FLOAT_TYPES) {
    const T = 100, E = 8;
    const p = makeProblem({ T, d: 40, f: 72, E, wType, seed: 45 });
    for (const target of [0, 3, 7]) {
      const { rows, off } = layout(new Int32Array(T).fill(target), T, 1, E);
      checkGemm(p, rows, off, `${wType}: all on ${target}`);
    }
  }
});

shapes('E=64, k=6 fine-grained experts, T=511', () => {
  const T = 511, k = 6, E = 64;
  const p = makeProblem({ T, d: 48, f: 24, E, wType: 'bfloat16', seed: 46 });
  const r = routeSync(p.x, p.gate, { topK: k });
  const pr = permuteSync(r.topkIds, E);
  checkGemm(p, pr.sortedRows, pr.expertOffsets, 'E=64 k=6');
});

shapes('prefill shape: T=511, E=8, k=2, d=96, f=160 (many rows per expert)', () => {
  for (const wType of FLOAT_TYPES) {
    const T = 511, k = 2, E = 8;
    const p = makeProblem({ T, d: 96, f: 160, E, wType, xType: wType, seed: 47 });
    const r = routeSync(p.x, p.gate, { topK: k });
    const pr = permuteSync(r.topkIds, E);
    checkGemm(p, pr.sortedRows, pr.expertOffsets, `prefill ${wType}`);
  }
});

shapes('prefill with K past one K block: d=300, f=520, all rows on two experts', () => {
  const T = 64, E = 3;
  const p = makeProblem({ T, d: 300, f: 520, E, wType: 'float16', seed: 48 });
  const ids = new Int32Array(T * 2);
  for (let t = 0; t < T; t++) (ids[t * 2] = 0), (ids[t * 2 + 1] = 2);
  const { rows, off } = layout(ids, T, 2, E);
  checkGemm(p, rows, off, 'K blocks');
});

shapes('decode shapes: T=1..8 (few rows per expert)', () => {
  for (const wType of FLOAT_TYPES)
    for (let T = 1; T <= 8; T++) {
      const E = 8, k = 2;
      const p = makeProblem({ T, d: 96, f: 160, E, wType, seed: 50 + T });
      const { rows, off } = layout(distinctIds(T, k, E, 60 + T), T, k, E);
      checkGemm(p, rows, off, `decode T=${T} ${wType}`);
    }
});

shapes('R = 0 (everything dropped) gives an empty y', () => {
  const p = makeProblem({ T: 5, d: 8, f: 8, E: 3, seed: 49 });
  const { rows, off } = layout(distinctIds(5, 2, 3, 1), 5, 2, 3, 0);
  const y = groupedGemmSync(p.x, rows, off, packed(p));
  assert.equal([...y.dims], [0, 8]);
});

shapes('capacity-dropped layout: only the first R sorted rows are used', () => {
  const T = 60, k = 2, E = 4;
  const p = makeProblem({ T, d: 24, f: 40, E, seed: 51 });
  const { rows, off } = layout(distinctIds(T, k, E, 52), T, k, E, 10);
  assert.ok(off.data[E] < T * k);
  checkGemm(p, rows, off, 'capacity 10');
});

shapes('arbitrary sorted rows (not from permute): repeated and unordered tokens', () => {
  const T = 9, E = 3;
  const p = makeProblem({ T, d: 20, f: 30, E, seed: 53 });
  const rows = i32([8, 0, 8, 3, 3, 3, 5, 1, 8, 0, 2, 2, 7], [13]);
  const off = i32([0, 4, 4, 13], [4]);
  const y = checkGemm(p, rows, off, 'arbitrary');
  // the same token through the same expert gives the same bits wherever its row sits
  const row = (r: number) => Array.from(y.data.subarray(r * 20, (r + 1) * 20));
  assert.equal(row(0), row(2), 'token 8, expert 0, rows 0 and 2');
  assert.equal(row(4), row(5), 'token 3, expert 2, rows 4 and 5');
  assert.equal(row(10), row(11), 'token 2, expert 2, rows 10 and 11');
  assert.not.equal(row(3), row(4), 'token 3 through experts 0 and 2 differs');
});

// ---- bit-level properties ----------------------------------------------------------------------

const bits = suite('groupedGemm: bit-level properties');

bits('per-expert arrays give the same bits as the [E,f,d] form', () => {
  for (const wType of FLOAT_TYPES) {
    const T = 33, k = 2, E = 8;
    const p = makeProblem({ T, d: 33, f: 47, E, wType, seed: 54 });
    const { rows, off } = layout(distinctIds(T, k, E, 55), T, k, E);
    const stacked = packed(p);
    const arrays = ExpertWeights.packSync({ w1: perExpert(p.w1), w3: perExpert(p.w3), w2: perExpert(p.w2) });
    assert.is(arrays.numExperts, E);
    assert.is(arrays.type, wType);
    const a = groupedGemmSync(p.x, rows, off, stacked);
    const b = groupedGemmSync(p.x, rows, off, arrays);
    assertSameTensor(b, a, `${wType}: arrays vs stacked`);
    arrays.dispose();
  }
});

bits('the Promise forms (pack and groupedGemm) give the same bits as the Sync forms', async () => {
  for (const wType of FLOAT_TYPES) {
    const T = 200, k = 2, E = 8;
    const p = makeProblem({ T, d: 64, f: 96, E, wType, seed: 56 });
    const { rows, off } = layout(distinctIds(T, k, E, 57), T, k, E);
    const ws = packed(p);
    const wa = await ExpertWeights.pack({ w1: p.w1, w3: p.w3, w2: p.w2 });
    assert.is(wa.bytes, ws.bytes);
    const ya = await groupedGemm(p.x, rows, off, wa);
    const ys = groupedGemmSync(p.x, rows, off, ws);
    assertSameTensor(ya, ys, `${wType}: async vs sync`);
    wa.dispose();
  }
});

bits("a row's result does not depend on the rows batched with it (decode vs prefill paths)", () => {
  for (const wType of FLOAT_TYPES) {
    const T = 300, E = 4;
    const p = makeProblem({ T, d: 96, f: 160, E, wType, seed: 58 });
    // every token on expert 1: one call with all 300 rows (prefill path)...
    const { rows, off } = layout(new Int32Array(T).fill(1), T, 1, E);
    const all = groupedGemmSync(p.x, rows, off, packed(p));
    // ...and calls with 1, 2, 7 rows (decode path), starting at different tokens
    for (const [start, n] of [[0, 1], [5, 1], [299, 1], [10, 2], [100, 7], [31, 13]]) {
      const few = groupedGemmSync(p.x, i32(Array.from({ length: n }, (_, i) => start + i), [n]), i32([0, 0, n, n, n], [E + 1]), packed(p));
      assertSameTensor(
        { ...few, data: few.data },
        { type: 'float32', dims: [n, p.d], data: all.data.subarray(start * p.d, (start + n) * p.d) },
        `${wType}: rows ${start}..${start + n - 1} alone vs in a batch of ${T}`,
      );
    }
  }
});

bits('ExpertWeights keeps its own copy: overwriting the source arrays changes nothing', () => {
  for (const wType of FLOAT_TYPES) {
    const T = 20, k = 2, E = 3;
    const p = makeProblem({ T, d: 24, f: 36, E, wType, seed: 59 });
    const w = ExpertWeights.packSync({ w1: p.w1, w3: p.w3, w2: p.w2 });
    const { rows, off } = layout(distinctIds(T, k, E, 60), T, k, E);
    const before = groupedGemmSync(p.x, rows, off, w);
    for (const t of [p.w1, p.w3, p.w2]) (t.data as Uint16Array | Float32Array).fill(wType === 'float32' ? 12345 : 0x7c00);
    const after = groupedGemmSync(p.x, rows, off, w);
    assertSameTensor(after, before, `${wType}: after overwriting the sources`);
    const ref = refGroupedGemm(p.xr, rows.data, off.data, p.wr, cpuBf16Activations(wType));
    assertClose(after.data, ref, { ...tolFor('float32', 36), atolOfMax: cpuBf16Activations(wType) ? 2 ** -10 : 0 }, `${wType}: still the original weights`);
    w.dispose();
  }
});

bits('x rows not referenced by sortedRows are never read (NaN there does not leak)', () => {
  const T = 10, E = 2, d = 16, f = 24;
  const p = makeProblem({ T, d, f, E, seed: 61 });
  (p.x.data as Float32Array).fill(NaN, 5 * d, 6 * d); // token 5
  const rows = i32([0, 1, 2, 3, 4, 6, 7, 8, 9], [9]);
  const off = i32([0, 4, 9], [3]);
  const y = groupedGemmSync(p.x, rows, off, packed(p));
  assert.ok(y.data.every((v) => Number.isFinite(v)), 'no NaN from token 5');
  const xr = Float64Array.from(p.xr);
  const ref = refGroupedGemm(xr, rows.data, off.data, p.wr);
  assertClose(y.data, ref, tolFor('float32', f), 'NaN row skipped');
});

bits('16-bit weights are widened exactly (a one-hot path reproduces a weight)', () => {
  // d = f = 1: y = w2 * silu(w1 x) * (w3 x). With x = 1, w1 = w3 = 1: y = w2 * silu(1), where the
  // avx512-bf16 table rounds h = silu(1) to bf16 first (x = 1 is exact in bf16).
  for (const wType of ['float16', 'bfloat16'] as const) {
    const w2vals = [0.333, -1.5, 1 / 7];
    const E = 3;
    const w = ExpertWeights.packSync({
      w1: tensor(wType, [1, 1, 1], [E, 1, 1]),
      w3: tensor(wType, [1, 1, 1], [E, 1, 1]),
      w2: tensor(wType, w2vals, [E, 1, 1]),
    });
    const x = tensor('float32', [1], [1, 1]);
    const y = groupedGemmSync(x, i32([0, 0, 0], [3]), i32([0, 1, 2, 3], [4]), w);
    const s1 = 1 / (1 + Math.exp(-1));
    const s = cpuBf16Activations(wType) ? roundBf16(s1) : s1;
    const w2r = tensor(wType, w2vals, [3]);
    const want = Array.from(w2r.data, (h) => (wType === 'float16' ? f16(h) : bf16(h)) * s);
    assertClose(y.data, want, { atol: 1e-7, rtol: 1e-6 }, `${wType} one-hot`);
  }
});

function f16(h: number): number {
  const e = (h >> 10) & 31, m = h & 1023, s = h & 0x8000 ? -1 : 1;
  return e === 0 ? s * m * 2 ** -24 : s * (1 + m / 1024) * 2 ** (e - 15);
}
function bf16(h: number): number {
  return new Float32Array(new Uint32Array([h << 16]).buffer)[0];
}

dtypes.run();
shapes.run();
bits.run();
