/**
 * The decoder-model ops (lib/model/primitives.ts) against the float64 reference of helpers/reference-model.ts:
 * every dtype, shapes that break tiling, the KV cache (step-by-step decode equals one pass, rewind,
 * sliding window), sampling (greedy ties, NaN, top-p edges, determinism, the draw itself), the
 * Promise forms, and caller-provided outputs.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import {
  add,
  addSync,
  attention,
  attentionSync,
  embedding,
  embeddingSync,
  KvCache,
  Linear,
  linearSync,
  rmsNorm,
  rmsNormSync,
  rope,
  ropeSync,
  sample,
  sampleSync,
  cast,
  tensor,
  zeros,
  type FloatType,
  type SamplingParams,
  type Tensor,
} from '../lib/index';
import { binding } from '../lib/core/binding';
import { i32 } from './helpers/problems';
import { cpuBf16Activations } from './helpers/cpu-kernel';
import { assertClose, assertSameBits, assertSameTensor, FLOAT_TYPES, randInt, randn, roundBf16, tolFor, widen } from './helpers/reference';
import { refAttention, refEmbedding, refLinear, refRmsNorm, refArgmax, refRope, refSample, roundAll } from './helpers/reference-model';

const rt = (type: FloatType, n: number, seed: number, scale = 1, dims = [n]) => tensor(type, randn(n, seed, scale), dims) as Tensor;
/** Tolerance of an f32 result rounded to `type`, elementwise ops with O(1) error. */
/**
 * refLinear as the CPU computes it: with bf16 weights on the avx512-bf16 kernel table, x is rounded
 * to bf16 first (helpers/cpu-kernel.ts); the products are then exact and summed in f32, so the
 * f32 tolerance holds against this reference.
 */
const refLin = (x: Tensor, W: Tensor, T: number, k: number, n: number) =>
  refLinear(cpuBf16Activations(W.type as FloatType) ? widen(x).map(roundBf16) : widen(x), widen(W), T, k, n);
const tolOut = (type: FloatType) => tolFor(type, 1);

// ---- embedding ---------------------------------------------------------------------------------------

const emb = suite('embedding');

emb('every table type to every output type; T = 1 and 33; exact rows', async () => {
  const V = 50, d = 33;
  for (const tType of FLOAT_TYPES) {
    const table = rt(tType, V * d, 1, 1, [V, d]);
    for (const T of [1, 33]) {
      const ids = i32(randInt(T, V, 2 + T), [T]);
      const ref = refEmbedding(widen(table), d, ids.data);
      const dflt = embeddingSync(table, ids);
      assert.is(dflt.type, tType);
      assert.equal([...dflt.dims], [T, d]);
      assertSameBits(widen(dflt), ref, `${tType} T=${T}`);
      for (const outType of FLOAT_TYPES) {
        const got = await embedding(table, ids, { outType });
        assert.is(got.type, outType);
        assertSameBits(widen(got), roundAll(outType, ref), `${tType} -> ${outType} T=${T}`);
      }
    }
  }
});

emb('the same type out as in: rows copied bit for bit, NaN payloads and signed zeros included', () => {
  // a model keeps its embedding table as such a copy (lib/model/runtime.ts, keep)
  const V = 4, d = 3;
  const bits = [0x7c01, 0xfe33, 0x8000, 0x0001, 0x7bff, 0xfc00, 0x7e00, 0x3c00, 0x0000, 0xffff, 0x7f81, 0x1234];
  for (const type of ['float16', 'bfloat16'] as const) {
    const table = { type, data: Uint16Array.from(bits), dims: [V, d] } as Tensor;
    const got = embeddingSync(table, i32([3, 0, 2, 1, 3], [5]));
    assert.equal([...(got.data as Uint16Array)], [...bits.slice(9, 12), ...bits.slice(0, 3), ...bits.slice(6, 9), ...bits.slice(3, 6), ...bits.slice(9, 12)], type);
  }
});

emb('first and last rows, repeated ids, T = 0, and a caller-provided out', () => {
  const V = 7, d = 5;
  const table = rt('float32', V * d, 3, 1, [V, d]);
  const ids = i32([0, 6, 6, 0], [4]);
  const out = zeros('float32', [4, d]);
  const got = embeddingSync(table, ids, { out });
  assert.ok(got === out, 'the out tensor is returned');
  assertSameBits(out.data, refEmbedding(widen(table), d, ids.data), 'rows');
  assert.equal([...embeddingSync(table, i32([], [0])).dims], [0, d]);
});

// ---- RMS norm ----------------------------------------------------------------------------------------

// The CPU backend's cast op (through the binding: the public cast() of host tensors is JS), against
// the JS conversions, every pair; the same op on device tensors is in test/46.
const castOp = suite('cast (CPU backend)');
castOp('every pair of float types rounds as the JS cast does; sync and async; errors', async () => {
  for (const from of FLOAT_TYPES)
    for (const to of FLOAT_TYPES) {
      const x = tensor(from, randn(70001, 6501, 300), [70001]) as Tensor;
      const want = cast(x, to);
      assertSameTensor(binding.cast(x as never, { outType: to }) as unknown as Tensor, want, `${from} -> ${to}`);
      assertSameTensor((await binding.cast(x as never, { outType: to, async: true })) as unknown as Tensor, want, `${from} -> ${to} async`);
    }
  assert.throws(() => binding.cast(tensor('float32', [1], [1]) as never, {}), /options.outType \(or options.out\) is required/);
});

const norm = suite('rmsNorm');

norm('x and weight of every type, d = 33 and 4096, T = 1 and 33', async () => {
  for (const xType of FLOAT_TYPES)
    for (const wType of FLOAT_TYPES)
      for (const [T, d] of [[1, 4096], [33, 33], [3, 100]]) {
        const x = rt(xType, T * d, 10 + d, 2, [T, d]);
        const w = tensor(wType, randn(d, 11, 0.5).map((v) => 1 + v), [d]) as Tensor;
        const eps = 1e-5;
        const ref = refRmsNorm(widen(x), widen(w), T, d, eps);
        const got = T === 1 ? rmsNormSync(x, w) : await rmsNorm(x, w, { eps });
        assert.is(got.type, xType);
        assertClose(widen(got), ref, tolFor(xType, d), `x ${xType} w ${wType} T=${T} d=${d}`);
      }
});

norm('eps matters for tiny rows; outType and in-place out', () => {
  const d = 16;
  const x = tensor('float32', new Float32Array(d).fill(1e-4), [1, d]);
  const w = tensor('float32', new Float32Array(d).fill(1), [d]);
  for (const eps of [1e-6, 1e-2]) assertClose(rmsNormSync(x, w, { eps }).data, refRmsNorm(widen(x), widen(w), 1, d, eps), tolFor('float32', d), `eps ${eps}`);
  const y = rmsNormSync(x, w, { outType: 'bfloat16' });
  assert.is(y.type, 'bfloat16');
  const x2 = rt('float16', 3 * 40, 12, 1, [3, 40]);
  const want = refRmsNorm(widen(x2), new Float64Array(40).fill(1), 3, 40, 1e-5);
  const ones = tensor('float32', new Float32Array(40).fill(1), [40]);
  const same = rmsNormSync(x2, ones, { out: x2 });
  assert.ok(same === x2, 'in place: the input is returned');
  assertClose(widen(x2), want, tolFor('float16', 40), 'in place');
});

// ---- linear ------------------------------------------------------------------------------------------

const lin = suite('Linear');

lin('every weight and activation type (T=33, in=33, out=47)', () => {
  for (const wType of FLOAT_TYPES)
    for (const xType of FLOAT_TYPES) {
      const [T, k, n] = [33, 33, 47];
      const W = rt(wType, n * k, 20, 1 / Math.sqrt(k), [n, k]);
      const x = rt(xType, T * k, 21, 1, [T, k]);
      const L = Linear.packSync(W);
      assert.is(L.inFeatures, k);
      assert.is(L.outFeatures, n);
      assert.is(L.type, wType);
      assert.ok(L.bytes >= n * k * (wType === 'float32' ? 4 : 2));
      const y = L.forwardSync(x);
      assert.is(y.type, 'float32');
      assert.equal([...y.dims], [T, n]);
      assertClose(y.data, refLin(x, W, T, k, n), tolFor('float32', k), `${wType}/${xType}`);
      L.dispose();
    }
});

lin('a bias [out] of any type, added in f32 before the one rounding to y (f32 and 16-bit y)', async () => {
  const [T, k, n] = [5, 33, 47];
  const W = rt('bfloat16', n * k, 22, 1 / Math.sqrt(k), [n, k]);
  const x = rt('float32', T * k, 23, 1, [T, k]);
  const plain = refLin(x, W, T, k, n);
  for (const bType of FLOAT_TYPES) {
    const b = rt(bType, n, 24, 1);
    const L = await Linear.pack(W, { bias: b });
    assert.ok(L.hasBias);
    const ref = plain.map((v, i) => v + widen(b)[i % n]);
    assertClose((await L.forward(x)).data, ref, tolFor('float32', k), `bias ${bType}`);
    for (const outType of ['float16', 'bfloat16'] as const)
      assertClose(widen(await L.forward(x, { outType })), ref, tolFor(outType, k), `bias ${bType} -> ${outType}`);
    L.dispose();
  }
  assert.not.ok(Linear.packSync(W).hasBias);
  assert.throws(() => Linear.packSync(W, { bias: rt('float32', n - 1, 1) }), /bias.dims\[0\] \(46\) must equal w.dims\[0\] \(out features\) \(47\)/);
});

lin('shapes: decode (T=1), prefill, odd sizes, K past the L2 panel size (blocked order)', async () => {
  const shapes: [number, number, number, FloatType][] = [
    [1, 512, 1000, 'bfloat16'], [1, 33, 1, 'float32'], [2, 1, 17, 'float16'], [7, 100, 17, 'float32'],
    [200, 96, 160, 'bfloat16'], [33, 64, 200, 'float16'], [8, 9000, 20, 'float32'], [13, 300, 520, 'float16'],
  ];
  for (const [T, k, n, wType] of shapes) {
    const W = rt(wType, n * k, T + k, 1 / Math.sqrt(k), [n, k]);
    const x = rt('float32', T * k, n, 1, [T, k]);
    const L = await Linear.pack(W);
    const y = await L.forward(x);
    assertClose(y.data, refLin(x, W, T, k, n), tolFor('float32', k), `T=${T} in=${k} out=${n} ${wType}`);
    assertSameTensor(linearSync(x, L), y, `T=${T} in=${k} out=${n}: sync vs async`);
    L.dispose();
  }
});

lin("a row's result does not depend on the rows batched with it", () => {
  for (const wType of FLOAT_TYPES) {
    const [T, k, n] = [100, 96, 72];
    const L = Linear.packSync(rt(wType, n * k, 30, 0.1, [n, k]));
    const x = rt('float32', T * k, 31, 1, [T, k]);
    const all = L.forwardSync(x);
    for (const [s, m] of [[0, 1], [57, 1], [99, 1], [10, 7]]) {
      const part = tensor('float32', (x.data as Float32Array).slice(s * k, (s + m) * k), [m, k]);
      assertSameBits(L.forwardSync(part).data, all.data.subarray(s * n, (s + m) * n), `${wType}: rows ${s}..${s + m - 1}`);
    }
    L.dispose();
  }
});

lin('outType, a caller-provided out, and the packed copy outliving the source', () => {
  const [T, k, n] = [5, 40, 24];
  const W = rt('bfloat16', n * k, 32, 0.2, [n, k]);
  const x = rt('float32', T * k, 33, 1, [T, k]);
  const ref = refLin(x, W, T, k, n);
  const L = Linear.packSync(W);
  (W.data as Uint16Array).fill(0x7fc0); // NaN: the layer keeps its own copy
  for (const outType of FLOAT_TYPES) {
    const y = L.forwardSync(x, { outType });
    assert.is(y.type, outType);
    assertClose(widen(y), ref, tolFor(outType, k), `outType ${outType}`);
  }
  const out = zeros('float16', [T, n]);
  assert.ok(L.forwardSync(x, { out }) === out);
  assertClose(widen(out), ref, tolFor('float16', k), 'out');
  L.dispose();
  assert.is(L.disposed, true);
});

// ---- RoPE --------------------------------------------------------------------------------------------

const rp = suite('rope');

rp('q and k of every type, hd 8/64/128, positions up to 5000, theta 1e4 and 1e6', async () => {
  for (const type of FLOAT_TYPES)
    for (const [T, Hq, Hkv, hd] of [[33, 4, 2, 8], [1, 32, 8, 128], [5, 1, 1, 64]]) {
      const q = rt(type, T * Hq * hd, 40 + hd, 1, [T, Hq, hd]);
      const k = rt(type, T * Hkv * hd, 41 + hd, 1, [T, Hkv, hd]);
      const pos = i32(randInt(T, 5000, 42 + T), [T]);
      for (const theta of [1e4, 1e6]) {
        const r = type === 'float32' ? ropeSync(q, k, pos, { theta }) : await rope(q, k, pos, { theta });
        assert.is(r.q.type, type);
        assert.is(r.k!.type, type);
        // cos/sin rounded to f32: relative 1e-7 per factor; f32 out allows a little more
        const tol = type === 'float32' ? { atol: 2e-6, rtol: 1e-5 } : tolOut(type);
        assertClose(widen(r.q), refRope(widen(q), T, Hq, hd, pos.data, theta), tol, `${type} q T=${T} hd=${hd} theta=${theta}`);
        assertClose(widen(r.k!), refRope(widen(k), T, Hkv, hd, pos.data, theta), tol, `${type} k T=${T} hd=${hd} theta=${theta}`);
      }
    }
});

rp('in place, k null, position 0 is the identity', () => {
  const [T, H, hd] = [3, 2, 16];
  const q = rt('float32', T * H * hd, 43, 1, [T, H, hd]);
  const before = widen(q);
  const r = ropeSync(q, null, i32([0, 0, 0], [T]));
  assert.is(r.k, null);
  assertSameBits(r.q.data, before, 'position 0');
  const pos = i32([1, 100, 4095], [T]);
  const fresh = ropeSync(q, null, pos).q;
  const same = ropeSync(q, null, pos, { inPlace: true });
  assert.ok(same.q === q, 'in place returns q');
  assertSameTensor(q, fresh, 'in place equals out of place');
});

// ---- attention ---------------------------------------------------------------------------------------

const att = suite('attention');

interface AttnCase {
  T: number;
  Hq: number;
  Hkv: number;
  hd: number;
  cacheType: FloatType;
  qType: FloatType;
  window?: number;
}

function attnInputs(c: AttnCase, seed: number) {
  const q = rt(c.qType, c.T * c.Hq * c.hd, seed, 1, [c.T, c.Hq, c.hd]);
  const k = rt(c.qType, c.T * c.Hkv * c.hd, seed + 1, 1, [c.T, c.Hkv, c.hd]);
  const v = rt(c.qType, c.T * c.Hkv * c.hd, seed + 2, 1, [c.T, c.Hkv, c.hd]);
  return { q, k, v };
}
/** [T,H,hd] rows t0..t1 as a tensor of the same type */
const rows = (t: Tensor, t0: number, t1: number) => {
  const per = t.dims[1] * t.dims[2];
  return { type: t.type, data: t.data.slice(t0 * per, t1 * per), dims: [t1 - t0, t.dims[1], t.dims[2]] } as Tensor;
};

att('one causal pass vs the reference: GQA 4/2, 32/8, 1/1; hd 8/64/128; every cache and q type; windows', async () => {
  const cases: AttnCase[] = [];
  for (const cacheType of FLOAT_TYPES)
    for (const qType of FLOAT_TYPES) cases.push({ T: 33, Hq: 4, Hkv: 2, hd: 8, cacheType, qType });
  cases.push({ T: 12, Hq: 32, Hkv: 8, hd: 64, cacheType: 'bfloat16', qType: 'bfloat16' });
  cases.push({ T: 9, Hq: 1, Hkv: 1, hd: 128, cacheType: 'float16', qType: 'float32' });
  cases.push({ T: 11, Hq: 2, Hkv: 1, hd: 70, cacheType: 'bfloat16', qType: 'float16' }); // head dim past a multiple of 8
  cases.push({ T: 33, Hq: 4, Hkv: 2, hd: 8, cacheType: 'float32', qType: 'float32', window: 5 });
  cases.push({ T: 20, Hq: 6, Hkv: 3, hd: 16, cacheType: 'bfloat16', qType: 'float32', window: 1 });
  for (const c of cases) {
    const { q, k, v } = attnInputs(c, c.T + c.hd);
    const cache = new KvCache({ maxSeq: 64, numKvHeads: c.Hkv, headDim: c.hd, type: c.cacheType });
    const out = await attention(q, k, v, cache, { slidingWindow: c.window ?? 0 });
    assert.is(out.type, c.qType);
    assert.equal([...out.dims], [c.T, c.Hq, c.hd]);
    assert.is(cache.length, c.T);
    const ref = refAttention(widen(q), roundAll(c.cacheType, widen(k)), roundAll(c.cacheType, widen(v)), c.T, c.Hq, c.Hkv, c.hd, 0, c.window ?? 0);
    assertClose(widen(out), ref, tolFor(c.qType, 64), `${JSON.stringify(c)}`);
    cache.dispose();
  }
});

att('decode step by step (and prefill + decode) gives the same bits as one pass', async () => {
  for (const cacheType of FLOAT_TYPES)
    for (const window of [0, 4]) {
      const c: AttnCase = { T: 17, Hq: 8, Hkv: 2, hd: 64, cacheType, qType: 'bfloat16', window };
      const { q, k, v } = attnInputs(c, 50);
      const mk = () => new KvCache({ maxSeq: 32, numKvHeads: 2, headDim: 64, type: cacheType });
      const full = mk();
      const want = attentionSync(q, k, v, full, { slidingWindow: window });
      const steps = mk();
      for (let t = 0; t < c.T; t++) {
        const o = t % 2 ? attentionSync(rows(q, t, t + 1), rows(k, t, t + 1), rows(v, t, t + 1), steps, { slidingWindow: window })
          : await attention(rows(q, t, t + 1), rows(k, t, t + 1), rows(v, t, t + 1), steps, { slidingWindow: window });
        assertSameTensor(o, rows(want, t, t + 1), `${cacheType} window ${window}: step ${t}`);
      }
      assert.is(steps.length, c.T);
      const mixed = mk();
      const a = attentionSync(rows(q, 0, 10), rows(k, 0, 10), rows(v, 0, 10), mixed, { slidingWindow: window });
      const b = attentionSync(rows(q, 10, 17), rows(k, 10, 17), rows(v, 10, 17), mixed, { slidingWindow: window, startPos: 10 });
      assertSameTensor(a, rows(want, 0, 10), `${cacheType} window ${window}: prefill`);
      assertSameTensor(b, rows(want, 10, 17), `${cacheType} window ${window}: second chunk`);
      for (const x of [full, steps, mixed]) x.dispose();
    }
});

att('reset, truncate (rewind) and re-use, startPos past the length is refused', () => {
  const c: AttnCase = { T: 12, Hq: 4, Hkv: 4, hd: 8, cacheType: 'float32', qType: 'float32' };
  const one = attnInputs(c, 60);
  const two = attnInputs(c, 70);
  const cache = new KvCache({ maxSeq: 12, numKvHeads: 4, headDim: 8 });
  attentionSync(one.q, one.k, one.v, cache);
  // rewind to 5 and continue with the second sequence's tokens 5..11
  cache.truncate(5);
  assert.is(cache.length, 5);
  const out = attentionSync(rows(two.q, 5, 12), rows(two.k, 5, 12), rows(two.v, 5, 12), cache);
  const keys = widen(one.k).slice(0, 5 * 32);
  const vals = widen(one.v).slice(0, 5 * 32);
  const K = Float64Array.from([...keys, ...widen(two.k).slice(5 * 32)]);
  const Vv = Float64Array.from([...vals, ...widen(two.v).slice(5 * 32)]);
  assertClose(out.data, refAttention(widen(rows(two.q, 5, 12)), K, Vv, 7, 4, 4, 8, 5), tolFor('float32', 64), 'after truncate');
  cache.reset();
  assert.is(cache.length, 0);
  const again = attentionSync(two.q, two.k, two.v, cache);
  assertClose(again.data, refAttention(widen(two.q), widen(two.k), widen(two.v), 12, 4, 4, 8, 0), tolFor('float32', 64), 'after reset');
  assert.throws(() => cache.truncate(13), (e: Error) => e instanceof RangeError);
  cache.reset();
  assert.throws(() => attentionSync(one.q, one.k, one.v, cache, { startPos: 1 }), (e: Error) => e instanceof RangeError && /startPos/.test(e.message));
  cache.dispose();
});

att('a caller-provided out (may be q itself) and outType', () => {
  const c: AttnCase = { T: 5, Hq: 4, Hkv: 2, hd: 8, cacheType: 'float32', qType: 'float32' };
  const { q, k, v } = attnInputs(c, 80);
  const ref = refAttention(widen(q), widen(k), widen(v), 5, 4, 2, 8, 0);
  const cache = new KvCache({ maxSeq: 5, numKvHeads: 2, headDim: 8 });
  const bf = attentionSync(q, k, v, cache, { outType: 'bfloat16' });
  assert.is(bf.type, 'bfloat16');
  assertClose(widen(bf), ref, tolFor('bfloat16', 8), 'outType');
  cache.reset();
  assert.ok(attentionSync(q, k, v, cache, { out: q }) === q);
  assertClose(q.data, ref, tolFor('float32', 8), 'out = q');
  cache.dispose();
});

// ---- add ---------------------------------------------------------------------------------------------

const ad = suite('add');

ad('every type pair, in place, out, outType; f32 math', async () => {
  for (const aType of FLOAT_TYPES)
    for (const bType of FLOAT_TYPES) {
      const [T, d] = [33, 37];
      const a = rt(aType, T * d, 90, 1, [T, d]);
      const b = rt(bType, T * d, 91, 1, [T, d]);
      const exact = Float64Array.from(widen(a), (x, i) => Math.fround(x + widen(b)[i]));
      const got = await add(a, b);
      assert.is(got.type, aType);
      assertSameBits(widen(got), roundAll(aType, exact), `${aType}+${bType}`);
      const f = addSync(a, b, { outType: 'float32' });
      assertSameBits(f.data, exact, `${aType}+${bType} -> float32`);
      assert.ok(addSync(a, b, { inPlace: true }) === a);
      assertSameBits(widen(a), roundAll(aType, exact), `${aType}+=${bType}`);
    }
  const x = tensor('float32', [1, 2, 3], [1, 3]);
  const out = zeros('bfloat16', [1, 3]);
  assert.ok(addSync(x, x, { out }) === out);
  assertSameBits(widen(out), [2, 4, 6], 'out');
  const big = rt('float32', 3 * 40000, 92, 1, [3, 40000]); // several tasks
  assertSameBits(addSync(big, big).data, Float64Array.from(big.data, (v) => 2 * v), 'large');
});

// ---- sample ------------------------------------------------------------------------------------------

const smp = suite('sample');

smp('greedy: argmax per row, ties to the lower index, NaN never wins, -Infinity rows', async () => {
  const V = 6;
  const l = tensor('float32', [
    0, 3, 1, 3, 2, 0, // tie at 1 and 3
    NaN, -1, NaN, -0.5, -2, NaN, // NaN ignored
    NaN, NaN, NaN, NaN, NaN, NaN, // all NaN -> 0
    -Infinity, -Infinity, -Infinity, -Infinity, -Infinity, 5, // last
  ], [4, V]);
  const ids = sampleSync(l);
  assert.is(ids.type, 'int32');
  assert.equal([...ids.data], [1, 3, 0, 5]);
  assert.equal([...(await sample(l, { temperature: 0, seed: 9 })).data], [1, 3, 0, 5]);
  assert.equal([...sampleSync(tensor('float32', [1, 9, 9], [3])).data], [1], '[V] logits give one id');
  // with temperature, a row of only NaN / -inf falls back to argmax; +inf logits share the draw
  const inf = tensor('float32', [NaN, NaN, -Infinity, Infinity, 1, Infinity], [2, 3]) as Tensor<'float32'>;
  const infIds = new Set<number>();
  for (let seed = 0; seed < 40; seed++) {
    const ids = sampleSync(inf, { temperature: 1, seed }).data;
    assert.is(ids[0], 2);
    infIds.add(ids[1]);
  }
  assert.equal([...infIds].sort(), [0, 2], 'both +inf logits are drawn, the finite one never');
});

smp('same seed and step give the same id (sync, async, rows), matching the reference draw', async () => {
  const V = 50, T = 4;
  const logits = tensor('float32', randn(T * V, 100, 2), [T, V]) as Tensor<'float32'>;
  let checked = 0;
  for (const [temperature, topP] of [[1, 1], [0.7, 0.9], [1.5, 0.5], [0.3, 0.95]])
    for (let step = 0; step < 25; step++) {
      const seed = 1234 + step * 7;
      const a = sampleSync(logits, { temperature, topP, seed, step });
      const b = await sample(logits, { temperature, topP, seed, step });
      assertSameTensor(a, b, `t=${temperature} p=${topP} step ${step}: sync vs async`);
      for (let r = 0; r < T; r++) {
        const ref = refSample(logits.data.subarray(r * V, (r + 1) * V), temperature, topP, seed, step, r);
        if (ref.margin < 1e-6) continue; // a boundary a last-bit expf difference could move
        assert.is(a.data[r], ref.id, `t=${temperature} p=${topP} seed ${seed} step ${step} row ${r}`);
        checked++;
      }
    }
  assert.ok(checked > 395, `only ${checked} of 400 draws compared`);
});

smp('the draws follow the distribution; steps and seeds change them', () => {
  const probs = [0.1, 0.2, 0.3, 0.4];
  const logits = tensor('float32', probs.map(Math.log), [4]) as Tensor<'float32'>;
  const counts = [0, 0, 0, 0];
  const N = 4000;
  for (let step = 0; step < N; step++) counts[sampleSync(logits, { temperature: 1, seed: 42, step }).data[0]]++;
  counts.forEach((c, i) => assert.ok(Math.abs(c / N - probs[i]) < 0.03, `token ${i}: ${c / N} vs ${probs[i]}`));
  const bySeed = new Set(Array.from({ length: 50 }, (_, s) => sampleSync(logits, { temperature: 1, seed: s, step: 3 }).data[0]));
  assert.ok(bySeed.size >= 3, 'different seeds give different tokens');
});

smp('top-p edges: ties by lower index, cut exactly at a boundary, tiny topP is greedy', () => {
  const flat = tensor('float32', [0, 0, 0, 0], [4]) as Tensor<'float32'>; // four equal tokens
  const seen = (topP: number, temperature = 1) => {
    const s = new Set<number>();
    for (let step = 0; step < 200; step++) s.add(sampleSync(flat, { temperature, topP, seed: 7, step }).data[0]);
    return [...s].sort();
  };
  assert.equal(seen(0.5), [0, 1], 'half of four ties: the two lowest indices');
  assert.equal(seen(0.25), [0], 'a quarter exactly: one token');
  assert.equal(seen(0.2500001), [0, 1], 'just past a quarter: two tokens');
  assert.equal(seen(1), [0, 1, 2, 3], 'topP 1 keeps all');
  const peaked = tensor('float32', [1, 5, 2, 4.9], [4]) as Tensor<'float32'>;
  for (let step = 0; step < 50; step++) assert.is(sampleSync(peaked, { temperature: 1, topP: 1e-6, seed: 1, step }).data[0], 1);
  for (let step = 0; step < 50; step++) assert.is(sampleSync(peaked, { temperature: 1e-3, seed: 1, step }).data[0], 1, 'tiny temperature');
});

smp('hand-checked draws: the Philox known answer, equal logits split evenly, tiny topP is the argmax', () => {
  // Philox4x32-10 of counter 0, key 0 is 0x6627e8d5 0xe169c58d ... (Random123 kat_vectors), so the
  // draw of seed 0, step 0, row 0 is 0xe169c58d6627e8d5: top bits 1, 1. With n equal logits the
  // nucleus sum is n * 2^40 and target / 2^40 = the draw's top log2(n) bits.
  const f32 = (v: number[]) => tensor('float32', v, [v.length]) as Tensor<'float32'>;
  assert.is(sampleSync(f32([0, 0]), { temperature: 1 }).data[0], 1, 'two ties: top bit 1');
  assert.is(sampleSync(f32([5, 5, 5, 5]), { temperature: 0.5 }).data[0], 3, 'four ties: top bits 11');
  assert.is(sampleSync(f32([5, 5, 5, 5]), { temperature: 0.5, topP: 0.5 }).data[0], 1, 'half of four ties: ids 0, 1');
  assert.is(sampleSync(f32([0, 0, 0, 0, -Infinity, NaN]), { temperature: 1 }).data[0], 3, '-inf and NaN weigh 0');

  // two equal logits at temperature 1, topP 1: each id about half the time over many seeds
  const two = f32([0.25, -3, 0.25, -40]); // -40: exp(-40.25) * 2^40 < 1, weight 0, never drawn
  const counts = [0, 0, 0, 0];
  const N = 2000;
  for (let seed = 0; seed < N; seed++) counts[sampleSync(two, { temperature: 1, seed, step: 5 }).data[0]]++;
  assert.is(counts[3], 0, 'a weight of 0 is never drawn');
  const pOther = Math.exp(-3.25) / (2 + Math.exp(-3.25));
  assert.ok(Math.abs(counts[1] / N - pOther) < 0.015, `id 1: ${counts[1] / N} vs ${pOther}`);
  assert.ok(Math.abs(counts[0] - counts[2]) < 0.08 * N, `ids 0 and 2: ${counts[0]} vs ${counts[2]}`);
  assert.ok(counts[0] > 0.4 * N && counts[2] > 0.4 * N, `ids 0 and 2: ${counts}`);

  // topP tiny keeps only the largest weight: the argmax on every row, seed and step
  const V = 40, T = 6;
  const rows = tensor('float32', randn(T * V, 77, 2), [T, V]) as Tensor<'float32'>;
  for (let seed = 0; seed < 30; seed++) {
    const ids = sampleSync(rows, { temperature: 1.3, topP: 1e-9, seed, step: seed * 3 });
    for (let r = 0; r < T; r++) assert.is(ids.data[r], refArgmax(rows.data.subarray(r * V, (r + 1) * V)), `seed ${seed} row ${r}`);
  }
  // ... while topP 1 on the same rows leaves the argmax often
  let moved = 0;
  for (let seed = 0; seed < 30; seed++) {
    const ids = sampleSync(rows, { temperature: 1.3, seed, step: seed * 3 });
    for (let r = 0; r < T; r++) moved += ids.data[r] !== refArgmax(rows.data.subarray(r * V, (r + 1) * V)) ? 1 : 0;
  }
  assert.ok(moved > 30, `only ${moved} of 180 draws left the argmax`);
});

smp('top-k and min-p keep exactly the tokens they name; ties by lower id', () => {
  const probs = [0.05, 0.4, 0.15, 0.3, 0.1];
  const logits = tensor('float32', probs.map(Math.log), [5]) as Tensor<'float32'>;
  const seen = (o: SamplingParams) => {
    const s = new Set<number>();
    for (let step = 0; step < 300; step++) s.add(sampleSync(logits, { temperature: 1, seed: 3, step, ...o }).data[0]);
    return [...s].sort();
  };
  assert.equal(seen({}), [0, 1, 2, 3, 4]);
  assert.equal(seen({ topK: 1 }), [1], 'top-1 is the argmax');
  assert.equal(seen({ topK: 2 }), [1, 3]);
  assert.equal(seen({ topK: 3 }), [1, 2, 3]);
  assert.equal(seen({ topK: 5 }), [0, 1, 2, 3, 4], 'k = V keeps all');
  assert.equal(seen({ minP: 0.3 }), [1, 2, 3], 'p >= 0.3 x 0.4 = 0.12');
  assert.equal(seen({ minP: 0.5 }), [1, 3]);
  assert.equal(seen({ minP: 1 }), [1], 'minP 1: the top only');
  assert.equal(seen({ topK: 3, minP: 0.5 }), [1, 3], 'both filters');
  assert.equal(seen({ topK: 3, topP: 0.7 }), [1, 3], 'top-p on what top-k kept: 0.4 + 0.3 of 0.85 reaches 0.7');
  const flat = tensor('float32', [0, 0, 0, 0], [4]) as Tensor<'float32'>;
  const ties = new Set<number>();
  for (let step = 0; step < 100; step++) ties.add(sampleSync(flat, { temperature: 1, topK: 2, step }).data[0]);
  assert.equal([...ties].sort(), [0, 1], 'four ties, k = 2: the two lowest ids');
});

smp('penalties: repetition divides positive and multiplies negative logits, presence once, frequency per count', () => {
  const l = (v: number[]) => tensor('float32', v, [v.length]) as Tensor<'float32'>;
  const g = (v: number[], o: SamplingParams) => sampleSync(l(v), o).data[0];
  assert.is(g([2, 1.5, 0], {}), 0);
  assert.is(g([2, 1.5, 0], { repetitionPenalty: 2, penaltyTokens: [0] }), 1, '2 / 2 = 1 < 1.5');
  assert.is(g([2, 1.5, 0], { repetitionPenalty: 1.2, penaltyTokens: [0] }), 0, '2 / 1.2 > 1.5');
  assert.is(g([-1, -1.5, -9], { repetitionPenalty: 2, penaltyTokens: [0, 0] }), 1, '-1 x 2 = -2 < -1.5');
  assert.is(g([1, 0.85], { frequencyPenalty: 0.1, penaltyTokens: [0] }), 0, '1 - 0.1 > 0.85');
  assert.is(g([1, 0.85], { frequencyPenalty: 0.1, penaltyTokens: [0, 0] }), 1, '1 - 2 x 0.1 < 0.85');
  assert.is(g([1, 0.85], { presencePenalty: 0.1, penaltyTokens: [0, 0, 0] }), 0, 'presence counts once');
  assert.is(g([1, 0.85], { presencePenalty: 0.2, penaltyTokens: [0] }), 1);
  assert.is(g([1, 0.85], { presencePenalty: -0.5, penaltyTokens: [1] }), 1, 'a negative penalty favours the token');
  assert.is(g([1, 0.85], { frequencyPenalty: 0.1, penaltyTokens: new Int32Array([0, 0]) }), 1, 'an Int32Array history');
  // the logits passed in are not changed
  const x = l([2, 1.5, 0]);
  sampleSync(x, { repetitionPenalty: 2, penaltyTokens: [0] });
  assert.equal([...x.data], [2, 1.5, 0]);
  // with temperature, a penalised token is drawn less often
  let a = 0, b = 0;
  for (let step = 0; step < 400; step++) {
    a += sampleSync(l([0, 0]), { temperature: 1, seed: 1, step }).data[0];
    b += sampleSync(l([0, 0]), { temperature: 1, seed: 1, step, presencePenalty: 1, penaltyTokens: [1] }).data[0];
  }
  assert.ok(a > 150 && b < 0.6 * a, `token 1 drawn ${a} times, ${b} when penalised`);
});

smp('rows: each row its own parameters and draw, the same id alone or batched in any position', async () => {
  const V = 40, T = 5;
  const logits = tensor('float32', randn(T * V, 321, 2), [T, V]) as Tensor<'float32'>;
  const params: SamplingParams[] = [
    { temperature: 0 },
    { temperature: 1, topK: 5, seed: 11, step: 3 },
    { temperature: 0.8, topP: 0.9, minP: 0.05, seed: 12, step: 9, penaltyTokens: [1, 2, 2], repetitionPenalty: 1.3 },
    { temperature: 1.4, seed: 13, step: 1, frequencyPenalty: 0.5, presencePenalty: 0.2, penaltyTokens: [5, 5, 7] },
    { temperature: 2, topK: 30, topP: 0.95, seed: 14, step: 100 },
  ];
  const row = (r: number) => tensor('float32', logits.data.slice(r * V, (r + 1) * V), [1, V]) as Tensor<'float32'>;
  const batched = sampleSync(logits, { rows: params });
  assertSameTensor(await sample(logits, { rows: params }), batched, 'sync vs async');
  for (let r = 0; r < T; r++) {
    assert.is(sampleSync(row(r), { rows: [params[r]] }).data[0], batched.data[r], `row ${r} alone`);
    assert.is(sampleSync(row(r), params[r]).data[0], batched.data[r], `row ${r} alone, top-level options (row 0 draws as a row entry)`);
  }
  // reversed: each row keeps its id
  const rev = tensor('float32', Array.from({ length: T }, (_, r) => [...logits.data.slice((T - 1 - r) * V, (T - r) * V)]).flat(), [T, V]) as Tensor<'float32'>;
  const back = sampleSync(rev, { rows: [...params].reverse() });
  assert.equal([...back.data].reverse(), [...batched.data]);
  // with top-level options, rows draw from (seed, step, t): rows of equal logits differ
  const same = tensor('float32', Array.from({ length: 8 }, () => [...logits.data.slice(0, V)]).flat(), [8, V]) as Tensor<'float32'>;
  assert.ok(new Set(sampleSync(same, { temperature: 3, seed: 5 }).data).size > 1, 'rows t draw differently');
  assert.is(new Set(sampleSync(same, { rows: Array(8).fill({ temperature: 3, seed: 5 }) }).data).size, 1, 'equal rows with equal entries draw alike');
});

smp('a caller-provided int32 out', () => {
  const out = zeros('int32', [2]);
  assert.ok(sampleSync(tensor('float32', [0, 1, 1, 0], [2, 2]), { out }) === out);
  assert.equal([...out.data], [1, 0]);
});

emb.run();
castOp.run();
norm.run();
lin.run();
rp.run();
att.run();
ad.run();
smp.run();
