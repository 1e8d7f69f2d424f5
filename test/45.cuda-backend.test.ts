// The CUDA backend's ops against the float64 reference and against the CPU backend, on every
// device backend this process has: 'cuda' on a machine with a GPU, 'cuda-emu' when the tests run
// on the test build of the addon (scripts/run-tests.js does that: MOE_KERNELS_ADDON=build-emu/...,
// once per emulator schedule). Without one, the suite has nothing to run and says so.
//
// Device semantics that differ from the CPU backend, both from DESIGN.md's kernels: with 16-bit
// weights the grouped GEMM reads x rounded to the weights' type and keeps h in it, so the reference
// for those cases uses x rounded the same way and the tolerance of the 16-bit type.
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import {
  availableBackends,
  backendInfo,
  cast,
  combineSync,
  DenseFfn,
  ExpertWeights,
  groupedGemm,
  groupedGemmSync,
  MoeError,
  MoeLayer,
  permute,
  permuteSync,
  route,
  routeSync,
  type ResolvedBackend,
  tensor,
  type Tensor,
} from '../lib/index';
import { f32, i32, makeProblem, perExpert, tokensThatDependOnTheBatch, type MoeProblem } from './helpers/problems';
import { makeShared, refMoeShared } from './helpers/shared-experts';
import {
  assertClose,
  assertSameTensor,
  distinctIds,
  FLOAT_TYPES,
  nearTies,
  randInt,
  randn,
  refCombine,
  refPermute,
  refRoute,
  skipTokens,
  tolFor,
  uniform,
  widen,
  type FloatType,
} from './helpers/reference';

const DEVICE = availableBackends().filter((b) => b !== 'cpu') as ResolvedBackend[];
const weightsOf = (p: MoeProblem) => ({ gate: p.gate, w1: p.w1, w3: p.w3, w2: p.w2 });
/** x as the device's expert GEMMs read it: rounded to the weights' type. */
const xForExperts = (p: MoeProblem) => widen(cast(p.x, p.w1.type as FloatType));

/** h = silu(W1 x) * (W3 x) rounded to `t`, as the device stores it between its two GEMMs. */
function roundTo(v: Float64Array, t: FloatType): Float64Array {
  if (t === 'float32') return Float64Array.from(Float32Array.from(v));
  return widen(cast(tensor('float32', Float32Array.from(v), [v.length]), t));
}
/** refGroupedGemm with the device's intermediate: x rounded to the weights' type, h too. */
function refDeviceGemm(p: MoeProblem, sortedRows: ArrayLike<number>, offsets: ArrayLike<number>): Float64Array {
  const { d, f, E } = p.wr;
  const wt = p.w1.type as FloatType;
  const x = xForExperts(p);
  const R = offsets[E];
  const y = new Float64Array(R * d);
  const silu = (a: number) => a / (1 + Math.exp(-a));
  for (let e = 0; e < E; e++)
    for (let r = offsets[e]; r < offsets[e + 1]; r++) {
      const xo = sortedRows[r] * d;
      const h = new Float64Array(f);
      for (let j = 0; j < f; j++) {
        let a = 0, b = 0;
        for (let i = 0; i < d; i++) {
          a += p.wr.w1[(e * f + j) * d + i] * x[xo + i];
          b += p.wr.w3[(e * f + j) * d + i] * x[xo + i];
        }
        h[j] = silu(a) * b;
      }
      const hr = roundTo(h, wt);
      for (let i = 0; i < d; i++) {
        let s = 0;
        for (let j = 0; j < f; j++) s += p.wr.w2[(e * d + i) * f + j] * hr[j];
        y[r * d + i] = s;
      }
    }
  return y;
}

/** The MoE block as the device computes it: router on x, experts as refDeviceGemm. */
function refDeviceMoe(p: MoeProblem, k: number, normalize: boolean) {
  const r = refRoute(p.xr, p.gr, p.T, p.d, p.E, k, normalize);
  const layout = refPermute(r.ids, p.T, k, p.E);
  const y = refDeviceGemm(p, layout.sortedRows, layout.offsets);
  return { out: refCombine(y, layout.rowOf, r.weights, p.T, k, p.d), route: r };
}

// Set by scripts/run-tests.js for the emulated passes, so that a pass that loaded the wrong addon
// fails instead of testing nothing.
const required = process.env.MOE_TEST_REQUIRE_BACKEND;
if (required) {
  const req = suite('required backend');
  req(`the backend '${required}' is available in this process`, () => {
    assert.ok(DEVICE.includes(required as ResolvedBackend), `'${required}' missing: ${backendInfo().reason}`);
  });
  req.run();
}

for (const B of DEVICE) {
  const info = suite(`${B}: the backend`);
  info('backendInfo names it, and auto never picks the emulator', () => {
    const i = backendInfo();
    assert.is(i.cuda.name, B);
    assert.ok(i.cuda.available && i.cuda.compiled);
    assert.is(i.cuda.emulated, B === 'cuda-emu');
    assert.is(i.backend, B === 'cuda' ? 'cuda' : 'cpu');
    assert.ok(i.cuda.device && i.cuda.device.smCount > 0, 'device properties');
  });
  info.run();

  // ---- route --------------------------------------------------------------------------------------
  const r = suite(`${B}: route`);
  const RS: [number, number, number, number][] = [[1, 33, 8, 2], [33, 16, 3, 2], [33, 24, 64, 6], [5, 8, 1, 1], [40, 20, 8, 8]];
  for (const [T, d, E, k] of RS)
    for (const dt of FLOAT_TYPES)
      r(`T=${T} d=${d} E=${E} k=${k} ${dt}: ids as the CPU's, weights and logits as the reference's`, () => {
        const p = makeProblem({ T, d, f: 4, E, xType: dt, gateType: dt, seed: T * 7 + E + k, gateScale: 4 });
        const got = routeSync(p.x, p.gate, { topK: k, returnLogits: true, backend: B });
        const cpu = routeSync(p.x, p.gate, { topK: k, returnLogits: true });
        const ref = refRoute(p.xr, p.gr, T, d, E, k, true);
        const ties = nearTies(ref, 1e-4);
        for (let t = 0; t < T; t++)
          if (!ties[t]) for (let j = 0; j < k; j++) assert.is(got.topkIds.data[t * k + j], cpu.topkIds.data[t * k + j], `token ${t} slot ${j}`);
        assertClose(got.topkWeights.data, ref.weights, { ...tolFor('float32', d), skip: skipTokens(ties, k) }, 'weights');
        assertClose(got.logits!.data, ref.logits, tolFor('float32', d), 'logits');
        const counts = new Int32Array(E);
        for (const id of got.topkIds.data) counts[id]++;
        assert.equal([...got.tokensPerExpert.data], [...counts], 'tokens per expert');
      });
  r('normalize false, T = 0, and the async form', async () => {
    const p = makeProblem({ T: 9, d: 16, f: 4, E: 4, seed: 3, gateScale: 4 });
    const a = await route(p.x, p.gate, { topK: 2, normalize: false, backend: B });
    const ref = refRoute(p.xr, p.gr, 9, 16, 4, 2, false);
    assertClose(a.topkWeights.data, ref.weights, tolFor('float32', 16), 'unnormalised');
    const z = routeSync(f32([], [0, 16]), p.gate, { backend: B });
    assert.equal([...z.topkIds.dims], [0, 2]);
    assert.equal([...z.tokensPerExpert.data], [0, 0, 0, 0]);
  });
  r.run();

  // ---- permute: the same bits as the CPU --------------------------------------------------------------
  const pm = suite(`${B}: permute (bit-identical to the CPU)`);
  const PS: [number, number, number][] = [[1, 2, 8], [33, 2, 3], [33, 6, 64], [511, 2, 8], [300, 1, 1], [64, 2, 2000]];
  for (const [T, k, E] of PS)
    for (const capacity of [undefined, 0, 1, Math.ceil((T * k) / E)])
      pm(`T=${T} k=${k} E=${E} capacity=${capacity ?? 'none'}`, async () => {
        const ids = i32(k <= E ? distinctIds(T, k, E, T + E) : randInt(T * k, E, T), [T, k]);
        const opts = capacity === undefined ? {} : { capacity };
        const got = await permute(ids, E, { ...opts, backend: B });
        const cpu = permuteSync(ids, E, opts);
        for (const key of ['expertOffsets', 'sortedRows', 'rowOf', 'dropped'] as const) assertSameTensor(got[key], cpu[key], key);
      });
  pm('all tokens to one expert', () => {
    const ids = i32(new Int32Array(200).fill(3), [200, 1]);
    const got = permuteSync(ids, 5, { backend: B });
    assertSameTensor(got.sortedRows, permuteSync(ids, 5).sortedRows, 'sortedRows');
  });
  pm.run();

  // ---- grouped GEMM -------------------------------------------------------------------------------------
  const gg = suite(`${B}: groupedGemm vs the reference`);
  const GS: [number, number, number, number, number][] = [[33, 33, 47, 8, 2], [1, 64, 96, 8, 2], [16, 16, 24, 64, 6], [20, 8, 8, 1, 1], [7, 17, 9, 3, 2]];
  for (const [T, d, f, E, k] of GS)
    for (const wType of FLOAT_TYPES)
      for (const xType of wType === 'float32' ? FLOAT_TYPES : (['float32', wType] as FloatType[]))
        gg(`T=${T} d=${d} f=${f} E=${E} k=${k} weights ${wType} x ${xType}`, () => {
          const p = makeProblem({ T, d, f, E, xType, wType, seed: d + f + E });
          const lay = permuteSync(i32(distinctIds(T, k, E, T + d), [T, k]), E);
          const w = ExpertWeights.packSync({ w1: p.w1, w3: p.w3, w2: p.w2 }, { backend: B });
          assert.is(w.backend, B);
          const y = groupedGemmSync(p.x, lay.sortedRows, lay.expertOffsets, w);
          const R = lay.expertOffsets.data[E];
          assert.equal([...y.dims], [R, d]);
          const ref = refDeviceGemm(p, lay.sortedRows.data, lay.expertOffsets.data);
          assertClose(y.data, ref, tolFor('float32', Math.max(d, f)), 'y');
          w.dispose();
        });
  gg('experts with no rows, and rows given per expert as arrays', async () => {
    const p = makeProblem({ T: 12, d: 24, f: 40, E: 6, wType: 'bfloat16', seed: 9 });
    const ids = i32(Array.from({ length: 24 }, (_, s) => [1, 4][s % 2]), [12, 2]);
    const lay = permuteSync(ids, 6);
    const w = await ExpertWeights.pack({ w1: perExpert(p.w1), w3: perExpert(p.w3), w2: perExpert(p.w2) }, { backend: B });
    const y = await groupedGemm(p.x, lay.sortedRows, lay.expertOffsets, w);
    assertClose(y.data, refDeviceGemm(p, lay.sortedRows.data, lay.expertOffsets.data), tolFor('float32', 40), 'y');
    w.dispose();
  });
  gg.run();

  // ---- combine: the same bits as the CPU ---------------------------------------------------------------
  const cb = suite(`${B}: combine (bit-identical to the CPU)`);
  for (const outType of FLOAT_TYPES)
    for (const [T, k, d] of [[33, 2, 33], [1, 6, 64], [17, 1, 8]] as [number, number, number][])
      cb(`T=${T} k=${k} d=${d} out ${outType}, with dropped slots`, () => {
        const R = T * k;
        const y = f32(uniform(R * d, T + d), [R, d]);
        const rows = Array.from({ length: R }, (_, s) => (s % 5 === 3 ? -1 : (s * 7) % R));
        const rowOf = i32(rows, [T, k]);
        const wts = f32(uniform(T * k, k, 0, 1), [T, k]);
        const got = combineSync(y, rowOf, wts, { outType, backend: B });
        assertSameTensor(got, combineSync(y, rowOf, wts, { outType }), 'out');
        assertClose(widen(got), refCombine(y.data, rows, wts.data, T, k, d), tolFor(outType, k), 'vs reference');
      });
  cb.run();

  // ---- the layer ---------------------------------------------------------------------------------------
  const ly = suite(`${B}: MoeLayer.forward vs the float64 block`);
  const LS: [number, number, number, number, number][] = [[1, 33, 47, 8, 2], [33, 16, 24, 3, 2], [24, 16, 24, 64, 6], [7, 8, 16, 1, 1], [40, 64, 96, 8, 2]];
  for (const [T, d, f, E, k] of LS)
    for (const dt of FLOAT_TYPES)
      ly(`T=${T} d=${d} f=${f} E=${E} k=${k} ${dt}`, async () => {
        const p = makeProblem({ T, d, f, E, xType: dt, wType: dt, gateType: dt, seed: T + d + f + E + k, gateScale: 4 });
        const layer = await MoeLayer.create(weightsOf(p), { topK: k, backend: B });
        assert.is(layer.backend, B);
        const { output, routing } = await layer.forward(p.x, { returnRouting: true });
        const ref = refDeviceMoe(p, k, true);
        const ties = nearTies(ref.route, 1e-4);
        assert.is(output.type, dt);
        assertClose(widen(output), ref.out, { ...tolFor(dt, Math.max(d, f)), skip: skipTokens(ties, d) }, 'out');
        const cpu = routeSync(p.x, p.gate, { topK: k });
        for (let t = 0; t < T; t++)
          if (!ties[t]) for (let j = 0; j < k; j++) assert.is(routing!.topkIds.data[t * k + j], cpu.topkIds.data[t * k + j], `token ${t} slot ${j}`);
        layer.dispose();
      });

  ly('batchInvariant: a token gets the same bits alone as among 40 (tiles for every row count); without it the decode path sums in another order', async () => {
    for (const dt of ['float32', 'bfloat16'] as const) {
      // f32 activations and output (a bf16 output would round small differences away)
      const p = makeProblem({ T: 40, d: 64, f: 96, E: 4, xType: 'float32', wType: dt, gateType: dt, seed: 21, gateScale: 4 });
      const tokens = [0, 17, 39];
      const fixed = await MoeLayer.create(weightsOf(p), { topK: 2, backend: B, batchInvariant: true });
      assert.equal(await tokensThatDependOnTheBatch(fixed, p, tokens), [], `${dt}: batchInvariant`);
      fixed.dispose();
      const auto = await MoeLayer.create(weightsOf(p), { topK: 2, backend: B });
      assert.ok((await tokensThatDependOnTheBatch(auto, p, tokens)).length > 0, `${dt}: the default (GEMV for T=1) gives other bits than the tiles`);
      auto.dispose();
    }
  });

  ly('mixed dtypes: f32 x with bf16 weights reads x rounded to bf16', async () => {
    const p = makeProblem({ T: 20, d: 32, f: 48, E: 4, xType: 'float32', wType: 'bfloat16', gateType: 'float16', seed: 11, gateScale: 4 });
    const layer = await MoeLayer.create(weightsOf(p), { topK: 2, backend: B });
    const out = layer.forwardSync(p.x).output;
    assert.is(out.type, 'float32');
    const ref = refDeviceMoe(p, 2, true);
    assertClose(out.data, ref.out, { ...tolFor('float32', 48), skip: skipTokens(nearTies(ref.route), 32) }, 'out');
    layer.dispose();
  });

  ly('deterministic: sync, async, concurrent and repeated calls give the same bits', async () => {
    const p = makeProblem({ T: 33, d: 32, f: 40, E: 8, wType: 'bfloat16', xType: 'bfloat16', gateType: 'bfloat16', seed: 12 });
    const layer = await MoeLayer.create(weightsOf(p), { topK: 2, backend: B });
    const first = layer.forwardSync(p.x).output;
    const many = await Promise.all([0, 1, 2, 3].map(() => layer.forward(p.x)));
    for (const m of many) assertSameTensor(m.output, first, 'concurrent');
    assertSameTensor(layer.forwardSync(p.x).output, first, 'again');
    layer.dispose();
  });

  ly('the stages chained by hand give the layer forward bit for bit', async () => {
    const p = makeProblem({ T: 17, d: 24, f: 32, E: 8, seed: 13, gateScale: 4 });
    const layer = await MoeLayer.create(weightsOf(p), { topK: 2, backend: B });
    const out = layer.forwardSync(p.x).output;
    const w = ExpertWeights.packSync({ w1: p.w1, w3: p.w3, w2: p.w2 }, { backend: B });
    const rt = routeSync(p.x, p.gate, { topK: 2, backend: B });
    const lay = permuteSync(rt.topkIds, 8, { backend: B });
    const y = groupedGemmSync(p.x, lay.sortedRows, lay.expertOffsets, w);
    assertSameTensor(combineSync(y, lay.rowOf, rt.topkWeights, { backend: B }), out, 'chained stages');
    w.dispose();
    layer.dispose();
  });

  ly('dispose while calls are in flight: they finish; later calls fail with ERR_DISPOSED', async () => {
    const p = makeProblem({ T: 8, d: 16, f: 16, E: 4, seed: 14 });
    const layer = await MoeLayer.create(weightsOf(p), { backend: B });
    const pending = [layer.forward(p.x), layer.forward(p.x)];
    layer.dispose();
    for (const r of await Promise.all(pending)) assert.equal([...r.output.dims], [8, 16]);
    try {
      layer.forwardSync(p.x);
      assert.unreachable('forward after dispose');
    } catch (e) {
      assert.instance(e, MoeError);
      assert.is((e as MoeError).code, 'ERR_DISPOSED');
    }
  });

  ly('DenseFfn on the device vs the reference', async () => {
    for (const dt of FLOAT_TYPES) {
      const p = makeProblem({ T: 9, d: 24, f: 40, E: 1, xType: dt, wType: dt, seed: 15 });
      const ffn = await DenseFfn.create({ w1: perExpert(p.w1)[0], w3: perExpert(p.w3)[0], w2: perExpert(p.w2)[0] }, { backend: B });
      assert.is(ffn.backend, B);
      const out = (await ffn.forward(p.x)) as Tensor;
      assert.is(out.type, dt);
      const ident = Int32Array.from({ length: 9 }, (_, t) => t);
      assertClose(widen(out), refDeviceGemm(p, ident, [0, 9]), tolFor(dt, 40), dt);
      ffn.dispose();
    }
  });

  ly('groupedGemm runs where its experts were packed', () => {
    const p = makeProblem({ T: 4, d: 8, f: 8, E: 2, seed: 16 });
    const cpuW = ExpertWeights.packSync({ w1: p.w1, w3: p.w3, w2: p.w2 });
    const lay = permuteSync(i32([0, 1, 1, 0, 0, 1, 1, 0], [4, 2]), 2);
    const devW = ExpertWeights.packSync({ w1: p.w1, w3: p.w3, w2: p.w2 }, { backend: B });
    assertClose(groupedGemmSync(p.x, lay.sortedRows, lay.expertOffsets, devW).data, groupedGemmSync(p.x, lay.sortedRows, lay.expertOffsets, cpuW).data, tolFor('float32', 8), 'cpu vs device');
    cpuW.dispose();
    devW.dispose();
  });
  ly.run();

  // ---- routing variants (issue #5): the device against the CPU backend, same seeds ------------------
  const rv = suite(`${B}: routing variants, as on the CPU`);
  /** ids and drops equal (near ties skipped), weights, outputs and losses close. */
  const sameRouting = (got: { topkIds: Tensor<'int32'>; topkWeights: Tensor<'float32'> }, cpu: typeof got, ties: boolean[], k: number, label: string) => {
    for (let t = 0; t < ties.length; t++)
      if (!ties[t]) for (let j = 0; j < k; j++) assert.is(got.topkIds.data[t * k + j], cpu.topkIds.data[t * k + j], `${label}: token ${t} slot ${j}`);
    assertClose(got.topkWeights.data, cpu.topkWeights.data, { atol: 2e-6, rtol: 5e-5, skip: (i) => ties[Math.floor(i / k)] }, `${label}: weights`);
  };
  for (const [name, extra] of [
    ['noisy top-k', (p: MoeProblem) => ({ noise: { weights: tensor('float32', randn(p.E * p.d, 99, 1 / Math.sqrt(p.d)), [p.E, p.d]), seed: 5 } })],
    ['GShard random routing', () => ({ randomRouting: { seed: 11 } })],
    ['router statistics', () => ({ returnRouterStats: true, returnLogits: true })],
  ] as [string, (p: MoeProblem) => Record<string, unknown>][])
    rv(`route: ${name}`, () => {
      const p = makeProblem({ T: 40, d: 16, f: 4, E: 8, seed: 31, gateScale: 8 });
      const o = { topK: 2, ...extra(p) };
      const got = routeSync(p.x, p.gate, { ...o, backend: B });
      const cpu = routeSync(p.x, p.gate, o);
      sameRouting(got, cpu, nearTies(refRoute(p.xr, p.gr, 40, 16, 8, 2, true), 1e-4), 2, name);
      assert.equal([...got.tokensPerExpert.data], [...cpu.tokensPerExpert.data], 'tokens per expert');
      if (cpu.routerStats) {
        assertClose([got.routerStats!.auxLoss, got.routerStats!.zLoss], [cpu.routerStats.auxLoss, cpu.routerStats.zLoss], { atol: 1e-6, rtol: 1e-5 }, 'losses');
        assertClose(got.logits!.data, cpu.logits!.data, tolFor('float32', 16), 'logits');
      }
    });
  for (const factor of [0.5, 1.0, 1.25, 2.0])
    rv(`MoeLayer with capacityFactor ${factor}: the same drops and outputs as the CPU`, async () => {
      const p = makeProblem({ T: 33, d: 16, f: 24, E: 4, seed: 41, gateScale: 8 });
      const o = { topK: 2, capacityFactor: factor, noise: { weights: tensor('float32', randn(4 * 16, 42, 0.25), [4, 16]), seed: 3 } };
      const dev = await MoeLayer.create(weightsOf(p), { ...o, backend: B });
      const cpu = await MoeLayer.create(weightsOf(p), o);
      const a = await dev.forward(p.x, { returnRouting: true, returnRouterStats: true });
      const b = await cpu.forward(p.x, { returnRouting: true, returnRouterStats: true });
      const ties = nearTies(refRoute(p.xr, p.gr, 33, 16, 4, 2, true), 1e-3);
      assert.not.ok(ties.some(Boolean), 'a well-separated problem (drops depend on every token)');
      sameRouting(a.routing!, b.routing!, ties, 2, `factor ${factor}`);
      assert.equal([...a.routing!.dropped!.data], [...b.routing!.dropped!.data], 'dropped slots per expert');
      assertClose(a.output.data, b.output.data, tolFor('float32', 24), 'output');
      assertClose([a.routerStats!.auxLoss, a.routerStats!.zLoss], [b.routerStats!.auxLoss, b.routerStats!.zLoss], { atol: 1e-6, rtol: 1e-5 }, 'losses');
      dev.dispose();
      cpu.dispose();
    });
  rv('every token to one expert, capacity 1.0: the overflow is zero output on the device too', async () => {
    const p = makeProblem({ T: 16, d: 8, f: 8, E: 4, seed: 43 });
    const gate = tensor('float32', Float32Array.from({ length: 32 }, (_, i) => (i < 8 ? 4 : 0)), [4, 8]);
    const x = tensor('float32', Float32Array.from({ length: 128 }, () => 1), [16, 8]);
    const layer = await MoeLayer.create({ ...weightsOf(p), gate }, { topK: 1, capacityFactor: 1.0, backend: B });
    const r = await layer.forward(x, { returnRouting: true });
    assert.equal([...r.routing!.dropped!.data], [12, 0, 0, 0], 'capacity ceil(16/4) = 4 kept');
    for (let t = 4; t < 16; t++) for (let i = 0; i < 8; i++) assert.is(r.output.data[t * 8 + i], 0, `token ${t} dropped: zero`);
    layer.dispose();
  });
  rv.run();

  const sh = suite(`${B}: shared experts, as on the CPU`);
  for (const wType of ['float32', 'bfloat16'] as FloatType[])
    for (const gated of [false, true])
      sh(`${wType}, ${gated ? 'sigmoid-gated' : 'ungated'}: vs the float64 block and the CPU`, async () => {
        const p = makeProblem({ T: 19, d: 16, f: 8, E: 8, seed: 61, wType, gateScale: 8 });
        const sx = makeShared(16, 24, wType, gated, 62);
        const o = { topK: 2, sharedExperts: sx.opts };
        const dev = await MoeLayer.create(weightsOf(p), { ...o, backend: B });
        const cpu = await MoeLayer.create(weightsOf(p), o);
        const a = await dev.forward(p.x);
        const b = await cpu.forward(p.x);
        const tol = tolFor(wType, 24);
        // with 16-bit weights the device rounds x and h to the weights' type (file comment): an
        // absolute tolerance of 2% of the output's RMS covers that, the CPU keeps them in f32
        const ref = widen(b.output);
        const rms = Math.sqrt(ref.reduce((acc, v) => acc + v * v, 0) / ref.length);
        const loose = { atol: wType === 'float32' ? tol.atol * 4 : 0.02 * rms, rtol: tol.rtol * 4 };
        assertClose(widen(a.output), ref, loose, 'device vs CPU');
        if (wType === 'float32')
          assertClose(widen(a.output), refMoeShared(p.xr, p.gr, p.wr, p.T, 2, true, sx.ref), loose, 'device vs reference');
        assertSameTensor((await dev.forward(p.x)).output, a.output, 'deterministic on the device');
        dev.dispose();
        cpu.dispose();
      });
  sh('with capacity drops and a decode call (T = 1)', async () => {
    const p = makeProblem({ T: 24, d: 16, f: 8, E: 4, seed: 63, gateScale: 8 });
    const sx = makeShared(16, 8, 'float32', true, 64);
    const o = { topK: 1, capacityFactor: 0.5, sharedExperts: sx.opts };
    const dev = await MoeLayer.create(weightsOf(p), { ...o, backend: B });
    const cpu = await MoeLayer.create(weightsOf(p), o);
    const a = await dev.forward(p.x, { returnRouting: true });
    const b = await cpu.forward(p.x, { returnRouting: true });
    assert.equal([...a.routing!.dropped.data], [...b.routing!.dropped.data], 'dropped slots');
    assertClose(a.output.data, b.output.data, tolFor('float32', 16), 'output');
    const one = tensor('float32', p.x.data.slice(0, 16) as Float32Array, [1, 16]);
    assertClose((await dev.forward(one)).output.data, (await cpu.forward(one)).output.data, tolFor('float32', 16), 'decode');
    dev.dispose();
    cpu.dispose();
  });
  sh.run();
}

if (DEVICE.length === 0) console.log(`45.cuda-backend: no device backend in this process (${backendInfo().reason}); run through npm test for 'cuda-emu'`);
