/**
 * The routing variants of issue #5 on the CPU backend, against the float64 reference of
 * test/helpers/route-variants.ts: top-k for every k (with and without renormalisation), expert
 * capacity from a factor (prefill and decode factors), noisy top-k gating, GShard random routing,
 * the router statistics (Switch load-balancing loss, ST-MoE z-loss) on hand-computed cases, seeded
 * determinism, and the errors of bad options.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { binding } from '../lib/core/binding';
import { MoeLayer, moeForward, permuteSync, routeSync, tensor, type MoeLayerOptions, type Tensor } from '../lib/index';
import { f32, i32, makeProblem, type MoeProblem } from './helpers/problems';
import { assertClose, assertSameTensor, randn, tolFor, uniform, widen } from './helpers/reference';
import { refCapacity, refMoeVariants, refRouteVariants, routeNormal, routeUniform, type VariantOptions } from './helpers/route-variants';

const weightsOf = (p: MoeProblem) => ({ gate: p.gate, w1: p.w1, w3: p.w3, w2: p.w2 });
const wTol = { atol: 2e-6, rtol: 5e-5 };

/** route() against the reference: exact ids (near ties must be rare and are skipped), close weights. */
function checkRoute(p: MoeProblem, k: number, o: VariantOptions, got: ReturnType<typeof routeSync>, label: string) {
  const ref = refRouteVariants(p.xr, p.gr, p.T, p.d, p.E, k, o);
  const ties = ref.nearTie.filter(Boolean).length;
  assert.ok(ties <= Math.max(1, p.T / 20), `${label}: ${ties} near-tie tokens of ${p.T}`);
  for (let t = 0; t < p.T; t++) {
    if (ref.nearTie[t]) continue;
    const g = Array.from(got.topkIds.data.subarray(t * k, t * k + k));
    const w = Array.from(ref.ids.subarray(t * k, t * k + k));
    assert.equal(g, w, `${label}: token ${t} ids`);
  }
  assertClose(got.topkWeights.data, ref.weights, { ...wTol, skip: (i) => ref.nearTie[Math.floor(i / k)] }, `${label}: weights`);
  if (ties === 0) assert.equal(Array.from(got.tokensPerExpert.data), Array.from(ref.counts), `${label}: tokensPerExpert`);
  return ref;
}

// ---- top-k for every k ---------------------------------------------------------------------------

const topk = suite('top-k: every k in 1..E, normalize on and off');

topk('E = 1, 3, 8 with every k; E = 64 with k = 1, 2, 6, 64', () => {
  const cases: [number, number[]][] = [[1, [1]], [3, [1, 2, 3]], [8, [1, 2, 3, 4, 5, 6, 7, 8]], [64, [1, 2, 6, 64]]];
  for (const [E, ks] of cases)
    for (const k of ks)
      for (const normalize of [true, false]) {
        const p = makeProblem({ T: 33, d: 16, f: 8, E, seed: E * 100 + k, gateScale: 8 });
        const r = routeSync(p.x, p.gate, { topK: k, normalize });
        checkRoute(p, k, { normalize }, r, `E=${E} k=${k} normalize=${normalize}`);
      }
});

topk.run();

// ---- expert capacity -------------------------------------------------------------------------------

const cap = suite('capacity factor: Switch capacity, drops in token order, dropped slots reported');

/** A layer with these options vs the reference block: exact ids and drops, close output. */
async function checkLayer(p: MoeProblem, k: number, options: MoeLayerOptions, ro: VariantOptions, capacity: number, label: string) {
  const layer = await MoeLayer.create(weightsOf(p), { topK: k, ...options });
  const { output, routing, routerStats } = await layer.forward(p.x, { returnRouting: true, returnRouterStats: true });
  const ref = refMoeVariants(p.xr, p.gr, p.wr, p.T, k, { ...ro, capacity });
  assert.ok(!ref.route.nearTie.some(Boolean), `${label}: the input has near ties`);
  assert.equal(Array.from(routing!.topkIds.data), Array.from(ref.route.ids), `${label}: ids`);
  assert.equal(Array.from(routing!.dropped.data), Array.from(ref.perm.dropped), `${label}: dropped`);
  assert.equal(Array.from(routerStats!.dropped.data), Array.from(ref.perm.dropped), `${label}: routerStats.dropped`);
  assertClose(widen(output), ref.out, tolFor('float32', Math.max(p.d, p.f)), `${label}: output`);
  layer.dispose();
  return { output, routing: routing!, ref };
}

async function checkCapacity(p: MoeProblem, k: number, factor: number, label: string) {
  const capacity = refCapacity(p.T, k, p.E, factor);
  const { output, routing, ref } = await checkLayer(p, k, { capacityFactor: factor }, { normalize: true }, capacity, label);
  for (let e = 0; e < p.E; e++)
    assert.ok(routing.tokensPerExpert.data[e] - routing.dropped.data[e] <= capacity, `${label}: expert ${e} keeps more than ${capacity}`);
  return { output, ref, capacity };
}

cap('factors 0.5, 1.0, 1.25, 2.0 on a spread routing, k = 1 and 2', async () => {
  for (const k of [1, 2])
    for (const factor of [0.5, 1.0, 1.25, 2.0]) {
      const p = makeProblem({ T: 33, d: 16, f: 24, E: 4, seed: 500 + k, gateScale: 8 });
      const { ref } = await checkCapacity(p, k, factor, `k=${k} factor=${factor}`);
      const total = ref.perm.dropped.reduce((a, b) => a + b, 0);
      if (factor === 0.5) assert.ok(total > 0, `k=${k} factor 0.5 drops something`);
    }
});

/** Every token's logits favour expert 0 by far (x > 0, gate row 0 = +1, the others tiny). */
function oneExpertProblem(T: number, E: number, seed: number): MoeProblem {
  const d = 8;
  const p = makeProblem({ T, d, f: 12, E, seed });
  const x = uniform(T * d, seed, 0.5, 1.5);
  const g = randn(E * d, seed + 1, 0.01);
  for (let i = 0; i < d; i++) g[i] = 1;
  const xt = tensor('float32', x, [T, d]);
  const gt = tensor('float32', g, [E, d]);
  return { ...p, x: xt, gate: gt, xr: widen(xt), gr: widen(gt) };
}

cap('edge: every token picks one expert; tokens past the capacity output exactly 0', async () => {
  const T = 20;
  const E = 4;
  for (const factor of [0.5, 1.0, 1.25, 2.0]) {
    const p = oneExpertProblem(T, E, 600);
    const { output, ref, capacity } = await checkCapacity(p, 1, factor, `one expert, factor ${factor}`);
    assert.is(capacity, Math.ceil((T / E) * factor));
    assert.is(ref.perm.dropped[0], T - Math.min(T, capacity), `factor ${factor}: expert 0 drops the rest`);
    const o = output.data as Float32Array;
    for (let t = 0; t < T; t++) {
      const row = Array.from(o.subarray(t * p.d, (t + 1) * p.d));
      if (t >= capacity) assert.ok(row.every((v) => v === 0), `factor ${factor}: dropped token ${t} outputs 0`);
      else assert.ok(row.some((v) => v !== 0), `factor ${factor}: kept token ${t} has an output`);
    }
  }
});

cap('decode calls use evalCapacityFactor (T == 1 or phase "decode"), prefill calls capacityFactor', async () => {
  const E = 4;
  const p = oneExpertProblem(6, E, 700);
  // prefill factor 0.5: ceil(6/4*0.5) = 1 slot; eval factor 2.0: ceil(6/4*2) = 3 slots
  const layer = await MoeLayer.create(weightsOf(p), { topK: 1, capacityFactor: 0.5, evalCapacityFactor: 2.0 });
  const drops = async (x: Tensor, phase?: 'auto' | 'prefill' | 'decode') =>
    Array.from((await layer.forward(x, { returnRouting: true, phase })).routing!.dropped.data)[0];
  assert.is(await drops(p.x), 5, 'prefill (auto, T = 6): capacity 1');
  assert.is(await drops(p.x, 'prefill'), 5, 'prefill forced');
  assert.is(await drops(p.x, 'decode'), 3, 'decode forced at T = 6: capacity 3');
  const one = tensor('float32', (p.x.data as Float32Array).slice(0, p.d), [1, p.d]);
  // T = 1 at factor 0.5 keeps ceil(1/4*0.5) = 1 slot anyway; the factor shows with phase forced
  assert.is(await drops(one), 0, 'decode (auto, T = 1)');
  layer.dispose();
  // without evalCapacityFactor, decode uses capacityFactor
  const l2 = await MoeLayer.create(weightsOf(p), { topK: 1, capacityFactor: 0.5 });
  assert.is(l2.evalCapacityFactor, undefined);
  assert.is(Array.from((await l2.forward(p.x, { returnRouting: true, phase: 'decode' })).routing!.dropped.data)[0], 5);
  l2.dispose();
});

cap('no factor: dropless, dropped all zero; the layer output equals the default layer bit for bit', async () => {
  const p = makeProblem({ T: 33, d: 16, f: 24, E: 4, seed: 800 });
  const a = await MoeLayer.create(weightsOf(p), { topK: 2 });
  const b = await MoeLayer.create(weightsOf(p), { topK: 2, capacityFactor: 100 });
  const ra = await a.forward(p.x, { returnRouting: true });
  assert.equal(Array.from(ra.routing!.dropped.data), [0, 0, 0, 0]);
  assertSameTensor((await b.forward(p.x)).output, ra.output, 'a factor that drops nothing');
  a.dispose();
  b.dispose();
});

cap.run();

// ---- noisy top-k gating ------------------------------------------------------------------------------

const noisy = suite('noisy top-k gating');

function noiseProblem(T: number, E: number, seed: number) {
  const p = makeProblem({ T, d: 16, f: 8, E, seed, gateScale: 4 });
  const wn = tensor('float32', randn(E * p.d, seed + 9, 2 / Math.sqrt(p.d)), [E, p.d]);
  return { p, wn, wnr: widen(wn) };
}

noisy('route with noise vs the reference, E = 8 k = 2 and E = 64 k = 6, normalize on and off', () => {
  for (const [E, k] of [[8, 2], [64, 6]])
    for (const normalize of [true, false]) {
      const { p, wn, wnr } = noiseProblem(33, E, 900 + E);
      const r = routeSync(p.x, p.gate, { topK: k, normalize, noise: { weights: wn, seed: 42 }, returnLogits: true });
      const ref = checkRoute(p, k, { normalize, noise: { w: wnr, seed: 42 } }, r, `noise E=${E} k=${k} normalize=${normalize}`);
      // the noise changes the routing of some tokens, and the returned logits stay the clean ones
      const clean = refRouteVariants(p.xr, p.gr, p.T, p.d, E, k, { normalize });
      assert.ok(ref.ids.some((id, i) => id !== clean.ids[i]), 'the noise changes some routing');
      assertClose(r.logits!.data, clean.logits, { atol: 1e-5, rtol: 1e-5 }, 'clean logits');
    }
});

noisy('the generator: keyed by (seed, token, expert), standard normal moments', () => {
  assert.is(routeNormal(1, 2, 3), routeNormal(1, 2, 3));
  assert.is.not(routeNormal(1, 2, 3), routeNormal(2, 2, 3));
  assert.is.not(routeNormal(1, 2, 3), routeNormal(1, 3, 3));
  let s = 0;
  let s2 = 0;
  const n = 20000;
  for (let i = 0; i < n; i++) {
    const z = routeNormal(7, i, i % 5);
    s += z;
    s2 += z * z;
  }
  assert.ok(Math.abs(s / n) < 0.03, `mean ${s / n}`);
  assert.ok(Math.abs(s2 / n - 1) < 0.05, `variance ${s2 / n}`);
});

noisy('seeded: the same seed gives the same bits, another seed another routing; per-token keys', () => {
  const { p, wn } = noiseProblem(64, 8, 950);
  const a = routeSync(p.x, p.gate, { topK: 2, noise: { weights: wn, seed: 5 } });
  const b = routeSync(p.x, p.gate, { topK: 2, noise: { weights: wn, seed: 5 } });
  const c = routeSync(p.x, p.gate, { topK: 2, noise: { weights: wn, seed: 6 } });
  assertSameTensor(b.topkIds, a.topkIds, 'same seed: ids');
  assertSameTensor(b.topkWeights, a.topkWeights, 'same seed: weights');
  assert.ok(Array.from(a.topkIds.data).some((v, i) => v !== c.topkIds.data[i]), 'another seed routes differently');
  // token t's draws depend on t only: the first 10 tokens alone route as in the batch
  const x10 = tensor('float32', (p.x.data as Float32Array).slice(0, 10 * p.d), [10, p.d]);
  const d = routeSync(x10, p.gate, { topK: 2, noise: { weights: wn, seed: 5 } });
  assert.equal(Array.from(d.topkIds.data), Array.from(a.topkIds.data.subarray(0, 20)));
});

noisy('MoeLayer with noise vs the reference block', async () => {
  const { p, wn, wnr } = noiseProblem(33, 8, 960);
  const opts = { noise: { weights: wn, seed: 11 }, capacityFactor: 1.25 };
  await checkLayer(p, 2, opts, { normalize: true, noise: { w: wnr, seed: 11 } }, refCapacity(33, 2, 8, 1.25), 'noisy layer');
});

noisy('concurrent async calls with noise and random routing give the serial bits', async () => {
  const { p, wn } = noiseProblem(65, 8, 970);
  const layer = await MoeLayer.create(weightsOf(p), { topK: 2, noise: { weights: wn, seed: 1 }, randomRouting: { seed: 2 }, capacityFactor: 1.0 });
  const serial = layer.forwardSync(p.x, { returnRouting: true, returnRouterStats: true });
  const many = await Promise.all(Array.from({ length: 6 }, () => layer.forward(p.x, { returnRouting: true, returnRouterStats: true })));
  for (const m of many) {
    assertSameTensor(m.output, serial.output, 'output');
    assertSameTensor(m.routing!.topkIds, serial.routing!.topkIds, 'ids');
    assertSameTensor(m.routing!.dropped, serial.routing!.dropped, 'dropped');
    assert.is(m.routerStats!.auxLoss, serial.routerStats!.auxLoss);
    assert.is(m.routerStats!.zLoss, serial.routerStats!.zLoss);
  }
  layer.dispose();
});

noisy.run();

// ---- GShard random routing ------------------------------------------------------------------------------

const rr = suite('GShard random routing (top-2)');

rr('route vs the reference: second expert kept when 2·g2 > u, else id -1 and weight 0', () => {
  for (const normalize of [true, false]) {
    const p = makeProblem({ T: 200, d: 16, f: 8, E: 8, seed: 1000, gateScale: 4 });
    const r = routeSync(p.x, p.gate, { topK: 2, normalize, randomRouting: { seed: 3 } });
    const ref = checkRoute(p, 2, { normalize, randomSeed: 3 }, r, `random routing normalize=${normalize}`);
    let dropped = 0;
    for (let t = 0; t < p.T; t++) {
      assert.ok(r.topkIds.data[2 * t] >= 0, 'the first expert is always kept');
      if (r.topkIds.data[2 * t + 1] === -1) {
        dropped++;
        assert.is(r.topkWeights.data[2 * t + 1], 0, 'a dropped second slot has weight 0');
      }
    }
    assert.ok(dropped > 0 && dropped < p.T, `some but not all second experts dropped (${dropped})`);
    const counted = Array.from(r.tokensPerExpert.data).reduce((a, b) => a + b, 0);
    assert.is(counted, 2 * p.T - dropped, '-1 slots count nowhere');
    assert.equal(Array.from(r.tokensPerExpert.data), Array.from(ref.counts));
  }
});

rr('the keep rate follows min(1, 2·g2)', () => {
  // expected kept fraction over many tokens vs observed
  const p = makeProblem({ T: 2000, d: 8, f: 4, E: 8, seed: 1100, gateScale: 2 });
  const r = routeSync(p.x, p.gate, { topK: 2, randomRouting: { seed: 9 } });
  const clean = routeSync(p.x, p.gate, { topK: 2 });
  let expected = 0;
  let kept = 0;
  for (let t = 0; t < p.T; t++) {
    const w = clean.topkWeights.data;
    expected += Math.min(1, (2 * w[2 * t + 1]) / (w[2 * t] + w[2 * t + 1]));
    if (r.topkIds.data[2 * t + 1] >= 0) kept++;
  }
  assert.ok(Math.abs(kept - expected) < 4 * Math.sqrt(p.T / 4), `kept ${kept}, expected ${expected.toFixed(1)}`);
  assert.ok(routeUniform(1, 0, 0, 2) >= 0 && routeUniform(1, 0, 0, 2) < 1);
});

rr('-1 slots flow through permute and the layer: no row, not a capacity drop', async () => {
  const perm = permuteSync(i32([0, -1, 1, 0, 2, -1], [3, 2]), 3, { capacity: 1 });
  assert.equal(Array.from(perm.rowOf.data), [0, -1, 1, -1, 2, -1]);
  assert.equal(Array.from(perm.dropped.data), [1, 0, 0], 'only the real overflow counts');
  assert.equal(Array.from(perm.expertOffsets.data), [0, 1, 2, 3]);
  const p = makeProblem({ T: 33, d: 16, f: 24, E: 4, seed: 1200, gateScale: 4 });
  const opts = { randomRouting: { seed: 4 }, capacityFactor: 1.0 };
  const { routing } = await checkLayer(p, 2, opts, { normalize: true, randomSeed: 4 }, refCapacity(33, 2, 4, 1.0), 'random-routing layer');
  assert.ok(Array.from(routing.topkIds.data).includes(-1), 'some second slots go to no expert');
});

rr.run();

// ---- router statistics ------------------------------------------------------------------------------------

const stats = suite('router statistics: Switch load-balancing loss and z-loss');

const sig = (v: number) => 1 / (1 + Math.exp(-v));

stats('hand-computed: two tokens, two experts', () => {
  // logits t0 = [1, 0], t1 = [-1, 0]: top-1 goes to 0 then 1; P = [0.5, 0.5], f = [0.5, 0.5]
  const x = f32([1, -1], [2, 1]);
  const gate = f32([1, 0], [2, 1]);
  const a = routeSync(x, gate, { topK: 1, returnRouterStats: true }).routerStats!;
  assert.ok(Math.abs(a.auxLoss - 2 * (0.5 * 0.5 + 0.5 * 0.5)) < 1e-6, `aux ${a.auxLoss}`);
  const z = (Math.log(Math.E + 1) ** 2 + Math.log(Math.exp(-1) + 1) ** 2) / 2;
  assert.ok(Math.abs(a.zLoss - z) < 1e-6, `z ${a.zLoss} vs ${z}`);
  // both tokens to expert 0: f = [1, 0], P_0 = sigmoid(1): aux = 2 * sigmoid(1)
  const b = routeSync(f32([1, 1], [2, 1]), gate, { topK: 1, returnRouterStats: true }).routerStats!;
  assert.ok(Math.abs(b.auxLoss - 2 * sig(1)) < 1e-6, `aux ${b.auxLoss} vs ${2 * sig(1)}`);
  // top-2 of 2 (HF's definition: f sums over the k choices): f = [1, 1], sum P = 1, aux = E * 1 = 2 = k
  const c = routeSync(f32([1, 1], [2, 1]), gate, { topK: 2, returnRouterStats: true }).routerStats!;
  assert.ok(Math.abs(c.auxLoss - 2) < 1e-6, `aux ${c.auxLoss}`);
  // z-loss of zero logits: logsumexp = log E
  const d = routeSync(f32([0, 0, 0], [1, 3]), f32([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], [4, 3]), { topK: 1, returnRouterStats: true }).routerStats!;
  assert.ok(Math.abs(d.zLoss - Math.log(4) ** 2) < 1e-6, `z ${d.zLoss}`);
  assert.ok(Math.abs(d.auxLoss - 4 * (1 * 0.25)) < 1e-6, `aux ${d.auxLoss}`);
});

stats('vs the reference on random problems; the layer reports the same numbers as route', async () => {
  for (const [E, k] of [[8, 2], [64, 6], [3, 1]]) {
    const p = makeProblem({ T: 65, d: 16, f: 8, E, seed: 1300 + E, gateScale: 4 });
    const r = routeSync(p.x, p.gate, { topK: k, returnRouterStats: true });
    const ref = refRouteVariants(p.xr, p.gr, p.T, p.d, E, k, { normalize: true });
    assert.ok(Math.abs(r.routerStats!.auxLoss - ref.auxLoss) <= 1e-5 * Math.max(1, ref.auxLoss), `E=${E}: aux ${r.routerStats!.auxLoss} vs ${ref.auxLoss}`);
    assert.ok(Math.abs(r.routerStats!.zLoss - ref.zLoss) <= 1e-5 * Math.max(1, ref.zLoss), `E=${E}: z ${r.routerStats!.zLoss} vs ${ref.zLoss}`);
    const layer = await MoeLayer.create(weightsOf(p), { topK: k });
    const out = await layer.forward(p.x, { returnRouterStats: true, returnLogits: true });
    assert.is(out.routerStats!.auxLoss, r.routerStats!.auxLoss);
    assert.is(out.routerStats!.zLoss, r.routerStats!.zLoss);
    assert.equal(Array.from(out.routerStats!.tokensPerExpert.data), Array.from(r.tokensPerExpert.data));
    assert.equal([...out.routerStats!.logits!.dims], [p.T, E]);
    assert.is(out.routing, undefined, 'stats without routing');
    layer.dispose();
  }
});

stats('with random routing the -1 slots count nowhere in f_e', () => {
  const p = makeProblem({ T: 100, d: 8, f: 4, E: 4, seed: 1400, gateScale: 2 });
  const r = routeSync(p.x, p.gate, { topK: 2, randomRouting: { seed: 1 }, returnRouterStats: true });
  const ref = refRouteVariants(p.xr, p.gr, p.T, p.d, p.E, 2, { normalize: true, randomSeed: 1 });
  assert.ok(Math.abs(r.routerStats!.auxLoss - ref.auxLoss) < 1e-5, `aux ${r.routerStats!.auxLoss} vs ${ref.auxLoss}`);
});

stats('T = 0: zero losses', () => {
  const r = routeSync(tensor('float32', new Float32Array(0), [0, 4]), f32(new Array(8).fill(1), [2, 4]), { topK: 1, returnRouterStats: true });
  assert.equal(r.routerStats, { auxLoss: 0, zLoss: 0 });
});

stats.run();

// ---- errors --------------------------------------------------------------------------------------------------

const errors = suite('routing variants: errors for bad options');

function throwsWith(fn: () => unknown, cls: new (...a: never[]) => Error, ...needles: string[]) {
  try {
    fn();
  } catch (e) {
    assert.instance(e, cls);
    for (const n of needles) assert.ok((e as Error).message.includes(n), `message "${(e as Error).message}" lacks "${n}"`);
    return;
  }
  assert.unreachable(`nothing thrown (wanted ${needles.join(', ')})`);
}

errors('route options', () => {
  const p = makeProblem({ T: 4, d: 8, f: 4, E: 4, seed: 1500 });
  const wn = f32(new Array(32).fill(0.1), [4, 8]);
  throwsWith(() => routeSync(p.x, p.gate, { topK: 1, randomRouting: { seed: 1 } }), RangeError, 'randomRouting', 'topK = 2', '1');
  throwsWith(() => routeSync(p.x, p.gate, { topK: 2, randomRouting: { seed: -1 } }), RangeError, 'randomRouting.seed', '-1');
  throwsWith(() => routeSync(p.x, p.gate, { topK: 2, randomRouting: { seed: 1.5 } }), TypeError, 'randomRouting.seed', '1.5');
  throwsWith(() => routeSync(p.x, p.gate, { randomRouting: 3 as never }), TypeError, 'options.randomRouting', '3');
  throwsWith(() => routeSync(p.x, p.gate, { noise: {} as never }), TypeError, 'noise.weights');
  throwsWith(() => routeSync(p.x, p.gate, { noise: { weights: f32([1, 2], [1, 2]) } }), RangeError, 'noise.weights.dims', '[4,8]', '[1,2]');
  throwsWith(() => routeSync(p.x, p.gate, { noise: { weights: wn, seed: 2 ** 53 } }), RangeError, 'noise.seed');
  throwsWith(() => routeSync(p.x, p.gate, { noise: { weights: i32([1], [1, 1]) as never } }), TypeError, 'noise.weights.type');
});

errors('layer options', async () => {
  const p = makeProblem({ T: 4, d: 8, f: 4, E: 4, seed: 1501 });
  for (const [v, cls] of [[0, RangeError], [-1, RangeError], [NaN, RangeError], [Infinity, RangeError], ['1', TypeError]] as const) {
    await MoeLayer.create(weightsOf(p), { capacityFactor: v as number }).then(
      () => assert.unreachable(`capacityFactor ${String(v)} accepted`),
      (e) => assert.instance(e, cls),
    );
    throwsWith(() => new MoeLayer(weightsOf(p), { evalCapacityFactor: v as number }), cls, 'evalCapacityFactor');
  }
  throwsWith(() => new MoeLayer(weightsOf(p), { topK: 1, randomRouting: {} }), RangeError, 'topK = 2');
  const layer = new MoeLayer(weightsOf(p), { capacityFactor: 1.5 });
  throwsWith(() => layer.forwardSync(p.x, { phase: 'train' as never }), TypeError, 'options.phase', '"train"');
  throwsWith(() => layer.forwardSync(p.x, { returnRouterStats: 1 as never }), TypeError, 'returnRouterStats');
  await moeForward(p.x, layer, { capacityFactor: 2 }).then(
    () => assert.unreachable('a different capacityFactor accepted'),
    (e) => assert.ok(String(e.message).includes('capacityFactor'), e.message),
  );
  await moeForward(p.x, layer, { noise: { weights: p.gate } }).then(
    () => assert.unreachable('noise with a layer accepted'),
    (e) => assert.instance(e, RangeError),
  );
  // one-shot moeForward takes the options
  const out = await moeForward(p.x, weightsOf(p), { capacityFactor: 1.0, returnRouting: true });
  assert.equal([...out.routing!.dropped.dims], [4]);
  layer.dispose();
});

errors('native checks of the options object', () => {
  const p = makeProblem({ T: 4, d: 8, f: 4, E: 4, seed: 1502 });
  const nt = (t: Tensor) => t as never;
  throwsWith(() => binding.route(nt(p.x), nt(p.gate), { topK: 2, bogus: 1 } as never), TypeError, 'options.bogus is not a known option of route');
  throwsWith(() => binding.route(nt(p.x), nt(p.gate), { topK: 2, capacityFactor: 1 } as never), TypeError, 'options.capacityFactor is not a known option of route');
  throwsWith(() => binding.route(nt(p.x), nt(p.gate), { topK: 1, randomRouting: true }), RangeError, 'topK = 2');
  throwsWith(() => binding.route(nt(p.x), nt(p.gate), { topK: 2, noiseSeed: 3 }), TypeError, 'noiseSeed');
  throwsWith(() => binding.route(nt(p.x), nt(p.gate), { topK: 2, noiseGate: nt(f32([1], [1, 1])) }), RangeError, 'noiseGate.dims');
  throwsWith(() => binding.route(nt(p.x), nt(p.gate), 5 as never), TypeError, 'options must be an object');
  throwsWith(() => binding.route(nt(p.x), nt(p.gate), {} as never), TypeError, 'options.topK is required');
  throwsWith(() => binding.route(nt(p.x), nt(p.gate), { topK: 2, async: 1 } as never), TypeError, 'options.async must be a boolean');
});

errors.run();
