import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { route, routeSync, tensor, type RouteResult } from '../lib/index';
import { makeProblem, type MoeProblem } from './helpers/problems';
import {
  assertClose,
  assertSameTensor,
  FLOAT_TYPES,
  nearTies,
  ones,
  randn,
  refRoute,
  uniform,
  widen,
} from './helpers/reference';

/** logits: f32 dot products of length d. */
const logitTol = (d: number) => ({ atol: 2e-6 * Math.max(1, Math.sqrt(d / 16)), rtol: 1e-5 });
/** weights: softmax of those logits, relative error ~ a few times the logit error. */
const weightTol = (d: number) => ({ atol: 2e-6, rtol: 2e-5 * Math.max(1, Math.sqrt(d / 16)) });

/** Routing invariants that hold for every token, near tie or not. */
function checkInvariants(r: RouteResult, T: number, E: number, k: number, normalize: boolean, label: string) {
  assert.is(r.topkIds.type, 'int32', `${label}: topkIds type`);
  assert.is(r.topkWeights.type, 'float32', `${label}: topkWeights type`);
  assert.is(r.tokensPerExpert.type, 'int32', `${label}: tokensPerExpert type`);
  assert.equal([...r.topkIds.dims], [T, k], `${label}: topkIds dims`);
  assert.equal([...r.topkWeights.dims], [T, k], `${label}: topkWeights dims`);
  assert.equal([...r.tokensPerExpert.dims], [E], `${label}: tokensPerExpert dims`);
  const hist = new Int32Array(E);
  for (let t = 0; t < T; t++) {
    const seen = new Set<number>();
    let sum = 0;
    for (let j = 0; j < k; j++) {
      const id = r.topkIds.data[t * k + j];
      const w = r.topkWeights.data[t * k + j];
      assert.ok(id >= 0 && id < E, `${label}: token ${t} slot ${j}: id ${id} out of [0,${E})`);
      assert.ok(!seen.has(id), `${label}: token ${t}: expert ${id} chosen twice`);
      seen.add(id);
      hist[id]++;
      assert.ok(w >= 0 && w <= 1, `${label}: token ${t} slot ${j}: weight ${w} not a probability`);
      if (j > 0) assert.ok(w <= r.topkWeights.data[t * k + j - 1], `${label}: token ${t}: weights not in decreasing order`);
      sum += w;
    }
    if (normalize) assert.ok(Math.abs(sum - 1) <= 1e-6 * k, `${label}: token ${t}: normalised weights sum to ${sum}`);
    else assert.ok(sum <= 1 + 1e-6, `${label}: token ${t}: weights sum to ${sum} > 1`);
  }
  assert.equal(Array.from(r.tokensPerExpert.data), Array.from(hist), `${label}: tokensPerExpert is not the histogram of topkIds`);
}

/** Compares route() with the float64 reference; near-tie tokens get a looser, still meaningful check. */
function checkRoute(p: MoeProblem, k: number, normalize: boolean, label: string, r = routeSync(p.x, p.gate, { topK: k, normalize, returnLogits: true })) {
  const { T, d, E } = p;
  const ref = refRoute(p.xr, p.gr, T, d, E, k, normalize);
  checkInvariants(r, T, E, k, normalize, label);
  assert.ok(r.logits, `${label}: logits asked for`);
  assert.equal([...r.logits!.dims], [T, E], `${label}: logits dims`);
  assertClose(r.logits!.data, ref.logits, logitTol(d), `${label}: logits`);
  const ties = nearTies(ref, 1e-4);
  const nTies = ties.filter(Boolean).length;
  assert.ok(nTies <= Math.max(1, T / 20), `${label}: ${nTies} of ${T} tokens are near ties: the input does not test routing`);
  for (let t = 0; t < T; t++) {
    for (let j = 0; j < k; j++) {
      const got = r.topkIds.data[t * k + j];
      const want = ref.ids[t * k + j];
      if (!ties[t]) {
        if (got !== want)
          assert.unreachable(`${label}: token ${t} slot ${j}: expert ${got}, want ${want} (ids ${Array.from(r.topkIds.data.subarray(t * k, t * k + k))} vs ${Array.from(ref.ids.subarray(t * k, t * k + k))})`);
      } else {
        // a near tie may swap experts whose logits differ by less than the margin, no more
        const lg = ref.logits.subarray(t * E, (t + 1) * E);
        assert.ok(Math.abs(lg[got] - lg[want]) < 2e-4, `${label}: near-tie token ${t} slot ${j}: expert ${got} (logit ${lg[got]}) vs ${want} (logit ${lg[want]})`);
      }
    }
  }
  const refW = Float64Array.from(ref.weights);
  assertClose(r.topkWeights.data, refW, { ...weightTol(d), skip: (i) => ties[Math.floor(i / k)] }, `${label}: weights`);
  if (nTies === 0) assert.equal(Array.from(r.tokensPerExpert.data), Array.from(ref.counts), `${label}: tokensPerExpert`);
}

// ---- shape sweep -------------------------------------------------------------------------------

const shapes = suite('route: shapes vs the float64 reference');

const EK: [number, number][] = [[1, 1], [3, 1], [3, 2], [8, 1], [8, 2], [8, 6], [64, 1], [64, 2], [64, 6]];
for (const [T, d] of [[1, 64], [33, 17], [511, 32]] as const)
  for (const [E, k] of EK)
    shapes(`T=${T} d=${d} E=${E} k=${k}`, () => {
      const p = makeProblem({ T, d, f: 1, E, seed: T * 1000 + E * 10 + k });
      for (const normalize of [true, false]) checkRoute(p, k, normalize, `T=${T} E=${E} k=${k} normalize=${normalize}`);
    });

shapes('d=1 (one multiply per logit)', () => {
  const p = makeProblem({ T: 33, d: 1, f: 1, E: 8, seed: 5 });
  checkRoute(p, 2, true, 'd=1');
});

shapes('d=200, not a multiple of 8 or 16', () => {
  const p = makeProblem({ T: 33, d: 200, f: 1, E: 8, seed: 6 });
  checkRoute(p, 2, true, 'd=200');
});

shapes('k = E: every expert, ordered by weight', () => {
  const p = makeProblem({ T: 33, d: 16, f: 1, E: 8, seed: 7 });
  checkRoute(p, 8, true, 'k=E normalize');
  checkRoute(p, 8, false, 'k=E');
});

shapes('T = 0: empty outputs, zero counts', () => {
  const x = tensor('float32', new Float32Array(0), [0, 4]);
  const gate = tensor('float32', randn(12, 1), [3, 4]);
  const r = routeSync(x, gate, { topK: 2, returnLogits: true });
  assert.equal([...r.topkIds.dims], [0, 2]);
  assert.equal([...r.topkWeights.dims], [0, 2]);
  assert.equal(Array.from(r.tokensPerExpert.data), [0, 0, 0]);
  assert.equal([...r.logits!.dims], [0, 3]);
});

shapes('defaults: topK 2, normalize true, no logits', () => {
  const p = makeProblem({ T: 33, d: 16, f: 1, E: 8, seed: 8 });
  const r = routeSync(p.x, p.gate);
  assert.is(r.logits, undefined);
  const explicit = routeSync(p.x, p.gate, { topK: 2, normalize: true });
  assertSameTensor(r.topkIds, explicit.topkIds, 'ids');
  assertSameTensor(r.topkWeights, explicit.topkWeights, 'weights');
  checkRoute(p, 2, true, 'defaults', { ...r, logits: routeSync(p.x, p.gate, { returnLogits: true }).logits });
});

shapes('normalize=false weights are the softmax probabilities themselves', () => {
  const p = makeProblem({ T: 33, d: 16, f: 1, E: 8, seed: 9 });
  const a = routeSync(p.x, p.gate, { topK: 8, normalize: false });
  // with k = E the weights of a token are the whole softmax: they sum to 1
  for (let t = 0; t < p.T; t++) {
    let s = 0;
    for (let j = 0; j < 8; j++) s += a.topkWeights.data[t * 8 + j];
    assert.ok(Math.abs(s - 1) < 1e-6, `token ${t}: softmax sums to ${s}`);
  }
  // normalising the top-2 of the unnormalised result gives the normalised result
  const u = routeSync(p.x, p.gate, { topK: 2, normalize: false });
  const n = routeSync(p.x, p.gate, { topK: 2, normalize: true });
  assert.equal(Array.from(u.topkIds.data), Array.from(n.topkIds.data));
  const renorm = new Float64Array(p.T * 2);
  for (let t = 0; t < p.T; t++) {
    const s = u.topkWeights.data[t * 2] + u.topkWeights.data[t * 2 + 1];
    renorm[t * 2] = u.topkWeights.data[t * 2] / s;
    renorm[t * 2 + 1] = u.topkWeights.data[t * 2 + 1] / s;
  }
  assertClose(n.topkWeights.data, renorm, { atol: 1e-7, rtol: 1e-6 }, 'renormalised');
});

// ---- dtypes ------------------------------------------------------------------------------------

const dtypes = suite('route: activation and gate dtypes');

for (const xType of FLOAT_TYPES)
  for (const gateType of FLOAT_TYPES)
    dtypes(`x ${xType}, gate ${gateType}`, async () => {
      for (const [T, d, E, k] of [[33, 40, 8, 2], [511, 24, 64, 6]] as const) {
        const p = makeProblem({ T, d, f: 1, E, xType, gateType, seed: 3 + T + E });
        checkRoute(p, k, true, `${xType}/${gateType} T=${T} E=${E} k=${k}`);
        // the Promise form gives the same bits as the Sync form
        const a = await route(p.x, p.gate, { topK: k, returnLogits: true });
        const s = routeSync(p.x, p.gate, { topK: k, returnLogits: true });
        assertSameTensor(a.topkIds, s.topkIds, 'async ids');
        assertSameTensor(a.topkWeights, s.topkWeights, 'async weights');
        assertSameTensor(a.tokensPerExpert, s.tokensPerExpert, 'async counts');
        assertSameTensor(a.logits!, s.logits!, 'async logits');
      }
    });

dtypes('logits accumulate in f32 even for 16-bit inputs (no 16-bit rounding of the logits)', () => {
  // x and gate exactly representable in bf16; the logit sum needs more than 8 mantissa bits
  const d = 4;
  const x = tensor('bfloat16', [1, 2 ** -8, 2 ** -8, 2 ** -8], [1, d]);
  const gate = tensor('bfloat16', [1, 1, 1, 1, 1, 0, 0, 0], [2, d]);
  const r = routeSync(x, gate, { topK: 2, returnLogits: true });
  assert.equal(Array.from(r.logits!.data), [1 + 3 * 2 ** -8, 1]);
  assert.equal(Array.from(r.topkIds.data), [0, 1]);
});

// ---- ties --------------------------------------------------------------------------------------

const ties = suite('route: deliberate ties');

ties('identical gate rows: the lower expert index comes first, equal weights', () => {
  const T = 33, d = 16, E = 8;
  const g = randn(E * d, 21, 0.01);
  for (const e of [2, 5]) g.set(ones(d), e * d); // rows 2 and 5 identical and dominant
  const gate = tensor('float32', g, [E, d]);
  for (const xType of FLOAT_TYPES) {
    const x = tensor(xType, uniform(T * d, 22, 0.5, 1.5), [T, d]);
    for (const k of [1, 2, 3]) {
      const r = routeSync(x, gate, { topK: k, normalize: true });
      for (let t = 0; t < T; t++) {
        assert.is(r.topkIds.data[t * k], 2, `${xType} k=${k} token ${t}: first id`);
        if (k >= 2) {
          assert.is(r.topkIds.data[t * k + 1], 5, `${xType} k=${k} token ${t}: second id`);
          assert.is(r.topkWeights.data[t * k], r.topkWeights.data[t * k + 1], `${xType} k=${k} token ${t}: equal weights`);
        }
      }
      if (k === 2) for (let t = 0; t < T; t++) assert.is(r.topkWeights.data[t * 2], 0.5, 'two equal experts normalise to 0.5 each');
    }
  }
});

ties('all-zero x: ids 0..k-1 with equal weights', () => {
  const T = 5, d = 7;
  for (const E of [1, 3, 8, 64])
    for (const k of [1, 2, 6].filter((k) => k <= E))
      for (const xType of FLOAT_TYPES) {
        const x = tensor(xType, new Float32Array(T * d), [T, d]);
        const gate = tensor('float32', randn(E * d, E), [E, d]);
        for (const normalize of [true, false]) {
          const r = routeSync(x, gate, { topK: k, normalize });
          const want = normalize ? 1 / k : 1 / E;
          for (let t = 0; t < T; t++)
            for (let j = 0; j < k; j++) {
              assert.is(r.topkIds.data[t * k + j], j, `E=${E} k=${k} ${xType} normalize=${normalize}: token ${t} slot ${j}`);
              assert.ok(Math.abs(r.topkWeights.data[t * k + j] - want) <= 1e-7, `E=${E} k=${k}: weight ${r.topkWeights.data[t * k + j]} != ${want}`);
              assert.is(r.topkWeights.data[t * k + j], r.topkWeights.data[t * k], 'equal weights');
            }
          const counts = Array.from({ length: E }, (_, e) => (e < k ? T : 0));
          assert.equal(Array.from(r.tokensPerExpert.data), counts, 'tokensPerExpert');
        }
      }
});

ties('ties among several experts keep ascending index order inside the tie', () => {
  // d = 1, x = 1: logits are the gate values themselves
  const gate = tensor('float32', [1, 3, 3, 2, 3, -1], [6, 1]);
  const x = tensor('float32', [1, 1], [2, 1]);
  const r = routeSync(x, gate, { topK: 4, normalize: false, returnLogits: true });
  assert.equal(Array.from(r.topkIds.data), [1, 2, 4, 3, 1, 2, 4, 3]);
  const w = r.topkWeights.data;
  assert.is(w[0], w[1]);
  assert.is(w[1], w[2]);
  assert.ok(w[3] < w[2]);
  // reference weights: softmax over [1,3,3,2,3,-1]
  const ref = refRoute(widen(x), widen(gate), 2, 1, 6, 4, false);
  assertClose(w, ref.weights, { atol: 1e-7, rtol: 1e-6 }, 'tie weights');
});

ties('negative x reverses the order; ties still go to the lower index', () => {
  const gate = tensor('float32', [1, 3, 3, 2, 1, -1], [6, 1]);
  const x = tensor('float32', [-1], [1, 1]);
  const r = routeSync(x, gate, { topK: 3, normalize: true });
  assert.equal(Array.from(r.topkIds.data), [5, 0, 4]);
});

ties('large logits do not overflow the softmax', () => {
  const gate = tensor('float32', [1000, 999, -1000, 0], [4, 1]);
  const x = tensor('float32', [1], [1, 1]);
  const r = routeSync(x, gate, { topK: 2, normalize: false });
  assert.equal(Array.from(r.topkIds.data), [0, 1]);
  const e1 = Math.exp(-1);
  assertClose(r.topkWeights.data, [1 / (1 + e1), e1 / (1 + e1)], { atol: 1e-7, rtol: 1e-6 }, 'large logits');
});

ties('a NaN in x does not crash and still yields k distinct valid ids', () => {
  const T = 3, d = 4, E = 5, k = 3;
  const xv = randn(T * d, 31);
  xv[5] = NaN; // token 1
  const x = tensor('float32', xv, [T, d]);
  const gate = tensor('float32', randn(E * d, 32, 0.5), [E, d]);
  const r = routeSync(x, gate, { topK: k });
  checkInvariants(
    { ...r, topkWeights: { ...r.topkWeights, data: r.topkWeights.data.map((w) => (Number.isNaN(w) ? 0 : w)) } },
    T, E, k, false, 'NaN row',
  );
  // the clean tokens are routed normally
  const ref = refRoute(widen(x), widen(gate), T, d, E, k, true);
  for (const t of [0, 2]) assert.equal(Array.from(r.topkIds.data.subarray(t * k, t * k + k)), Array.from(ref.ids.subarray(t * k, t * k + k)), `token ${t}`);
});

ties('equal tokens get equal results', () => {
  const T = 17, d = 12, E = 8;
  const row = randn(d, 41);
  const xv = new Float32Array(T * d);
  for (let t = 0; t < T; t++) xv.set(row, t * d);
  const r = routeSync(tensor('float32', xv, [T, d]), tensor('float32', randn(E * d, 42, 0.3), [E, d]), { topK: 2 });
  for (let t = 1; t < T; t++) {
    assert.equal(Array.from(r.topkIds.data.subarray(t * 2, t * 2 + 2)), Array.from(r.topkIds.data.subarray(0, 2)));
    assert.equal(Array.from(r.topkWeights.data.subarray(t * 2, t * 2 + 2)), Array.from(r.topkWeights.data.subarray(0, 2)));
  }
});

shapes.run();
dtypes.run();
ties.run();
