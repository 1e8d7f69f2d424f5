import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import {
  combineSync,
  DenseFfn,
  denseFfnForward,
  ExpertWeights,
  groupedGemmSync,
  MoeLayer,
  moeForward,
  permuteSync,
  routeSync,
  tensor,
  type Tensor,
} from '../lib/index';
import { makeProblem, perExpert, type MoeProblem } from './helpers/problems';
import {
  assertClose,
  assertSameTensor,
  FLOAT_TYPES,
  nearTies,
  randn,
  refDense,
  refMoe,
  skipTokens,
  tolFor,
  widen,
  type FloatType,
} from './helpers/reference';
import { tolForWeights } from './helpers/cpu-kernel';

const weightsOf = (p: MoeProblem) => ({ gate: p.gate, w1: p.w1, w3: p.w3, w2: p.w2 });

/** layer output vs the reference block; near-tie tokens skipped (and required to be rare). */
function checkForward(p: MoeProblem, out: Tensor, k: number, normalize: boolean, label: string) {
  const ref = refMoe(p.xr, p.gr, p.wr, p.T, k, normalize);
  assert.is(out.type, p.x.type, `${label}: output type is the input type`);
  assert.equal([...out.dims], [p.T, p.d], `${label}: output dims`);
  const ties = nearTies(ref.route, 1e-4);
  const nTies = ties.filter(Boolean).length;
  assert.ok(nTies <= Math.max(1, p.T / 20), `${label}: ${nTies} near-tie tokens of ${p.T}`);
  const tol = tolForWeights(p.x.type as FloatType, Math.max(p.d, p.f), p.w1.type as FloatType);
  assertClose(widen(out), ref.out, { ...tol, skip: skipTokens(ties, p.d) }, label);
}

// ---- whole forward vs the reference -----------------------------------------------------------

const forward = suite('MoeLayer.forward vs the float64 Mixtral block');

const SHAPES: [number, number, number, number, number][] = [
  // T, d, f, E, k
  [1, 33, 47, 8, 2],
  [33, 33, 47, 3, 2],
  [33, 1, 1, 3, 1],
  [7, 8, 16, 1, 1],
  [33, 16, 24, 64, 6],
  [511, 24, 40, 64, 6],
  [511, 64, 200, 8, 2],
];
for (const [T, d, f, E, k] of SHAPES)
  for (const dtype of FLOAT_TYPES)
    forward(`T=${T} d=${d} f=${f} E=${E} k=${k} ${dtype}`, async () => {
      const p = makeProblem({ T, d, f, E, xType: dtype, wType: dtype, gateType: dtype, seed: T + d + f + E + k });
      const layer = await MoeLayer.create(weightsOf(p), { topK: k });
      const { output, routing } = await layer.forward(p.x);
      assert.is(routing, undefined, 'no routing unless asked');
      checkForward(p, output, k, true, `${dtype} T=${T} d=${d} f=${f} E=${E} k=${k}`);
      layer.dispose();
    });

forward('normalize: false (unrenormalised top-k probabilities)', async () => {
  const p = makeProblem({ T: 33, d: 24, f: 40, E: 8, seed: 70 });
  const layer = await MoeLayer.create(weightsOf(p), { topK: 2, normalize: false });
  assert.is(layer.normalize, false);
  checkForward(p, (await layer.forward(p.x)).output, 2, false, 'normalize false');
  layer.dispose();
});

forward('mixed dtypes: x, gate and weights each of a different type', async () => {
  const combos: [FloatType, FloatType, FloatType][] = [
    ['float32', 'bfloat16', 'float16'],
    ['bfloat16', 'float32', 'float16'],
    ['float16', 'bfloat16', 'float32'],
    ['bfloat16', 'float16', 'bfloat16'],
  ];
  for (const [xType, gateType, wType] of combos) {
    const p = makeProblem({ T: 33, d: 33, f: 47, E: 8, xType, gateType, wType, seed: 71 });
    const layer = await MoeLayer.create(weightsOf(p), { topK: 2 });
    assert.is(layer.weightType, wType);
    checkForward(p, (await layer.forward(p.x)).output, 2, true, `x ${xType} gate ${gateType} w ${wType}`);
    layer.dispose();
  }
});

forward('layer properties and defaults', async () => {
  const p = makeProblem({ T: 4, d: 12, f: 20, E: 5, wType: 'bfloat16', seed: 72 });
  const layer = await MoeLayer.create(weightsOf(p));
  assert.is(layer.numExperts, 5);
  assert.is(layer.hiddenSize, 12);
  assert.is(layer.intermediateSize, 20);
  assert.is(layer.topK, 2, 'Mixtral default topK');
  assert.is(layer.normalize, true, 'Mixtral default normalize');
  assert.is(layer.backend, 'cpu');
  assert.is(layer.weightType, 'bfloat16');
  assert.ok(layer.bytes >= 3 * 5 * 12 * 20 * 2, `bytes ${layer.bytes}`);
  assert.is(layer.disposed, false);
  checkForward(p, (await layer.forward(p.x)).output, 2, true, 'defaults');
  layer.dispose();
  assert.is(layer.disposed, true);
  // E = 1: the default topK is 1
  const one = makeProblem({ T: 3, d: 4, f: 4, E: 1, seed: 73 });
  const l1 = new MoeLayer(weightsOf(one));
  assert.is(l1.topK, 1);
  checkForward(one, l1.forwardSync(one.x).output, 1, true, 'E=1 default');
  l1.dispose();
});

forward('T = 0 gives an empty output', async () => {
  const p = makeProblem({ T: 3, d: 8, f: 8, E: 4, seed: 74 });
  const layer = await MoeLayer.create(weightsOf(p));
  for (const t of FLOAT_TYPES) {
    const x = tensor(t, new Float32Array(0), [0, 8]);
    const { output, routing } = await layer.forward(x, { returnRouting: true });
    assert.is(output.type, t);
    assert.equal([...output.dims], [0, 8]);
    assert.equal([...routing!.topkIds.dims], [0, 2]);
    assert.equal(Array.from(routing!.tokensPerExpert.data), [0, 0, 0, 0]);
  }
  layer.dispose();
});

forward('per-expert weight arrays give the same bits as [E,f,d] tensors', async () => {
  for (const wType of FLOAT_TYPES) {
    const p = makeProblem({ T: 33, d: 33, f: 47, E: 8, wType, seed: 75 });
    const a = await MoeLayer.create(weightsOf(p));
    const b = await MoeLayer.create({ gate: p.gate, w1: perExpert(p.w1), w3: perExpert(p.w3), w2: perExpert(p.w2) });
    assertSameTensor((await b.forward(p.x)).output, (await a.forward(p.x)).output, `${wType}: arrays vs stacked`);
    a.dispose();
    b.dispose();
  }
});

// ---- consistency between the entry points -------------------------------------------------------

const entry = suite('forward entry points agree bit for bit');

entry('returnRouting equals route() on the same inputs', async () => {
  for (const dtype of FLOAT_TYPES) {
    const p = makeProblem({ T: 511, d: 24, f: 40, E: 64, xType: dtype, gateType: dtype, wType: dtype, seed: 76 });
    const layer = await MoeLayer.create(weightsOf(p), { topK: 6 });
    const { output, routing } = await layer.forward(p.x, { returnRouting: true });
    const r = routeSync(p.x, p.gate, { topK: 6, normalize: true });
    assert.ok(routing, 'routing returned');
    assertSameTensor(routing!.topkIds, r.topkIds, `${dtype}: ids`);
    assertSameTensor(routing!.topkWeights, r.topkWeights, `${dtype}: weights`);
    assertSameTensor(routing!.tokensPerExpert, r.tokensPerExpert, `${dtype}: tokensPerExpert`);
    // asking for the routing does not change the output
    assertSameTensor(output, (await layer.forward(p.x)).output, `${dtype}: output with and without routing`);
    layer.dispose();
  }
});

entry('the four stages composed by hand give the same bits as layer.forward', async () => {
  for (const dtype of FLOAT_TYPES)
    for (const [T, E, k] of [[1, 8, 2], [33, 3, 2], [511, 8, 2], [200, 64, 6]] as const) {
      const p = makeProblem({ T, d: 40, f: 72, E, xType: dtype, gateType: dtype, wType: dtype, seed: 77 + T });
      const layer = await MoeLayer.create(weightsOf(p), { topK: k });
      const experts = await ExpertWeights.pack({ w1: p.w1, w3: p.w3, w2: p.w2 });
      const r = routeSync(p.x, p.gate, { topK: k, normalize: true });
      const pr = permuteSync(r.topkIds, E);
      const y = groupedGemmSync(p.x, pr.sortedRows, pr.expertOffsets, experts);
      const out = combineSync(y, pr.rowOf, r.topkWeights, { outType: dtype });
      assertSameTensor(out, (await layer.forward(p.x)).output, `${dtype} T=${T} E=${E} k=${k}: stages vs forward`);
      experts.dispose();
      layer.dispose();
    }
});

entry('moeForward with raw weights and with a layer equals layer.forward', async () => {
  const p = makeProblem({ T: 33, d: 33, f: 47, E: 8, wType: 'bfloat16', xType: 'bfloat16', seed: 78 });
  const layer = await MoeLayer.create(weightsOf(p), { topK: 2 });
  const want = (await layer.forward(p.x, { returnRouting: true }));
  const raw = await moeForward(p.x, weightsOf(p), { topK: 2, returnRouting: true });
  assertSameTensor(raw.output, want.output, 'raw weights');
  assertSameTensor(raw.routing!.topkIds, want.routing!.topkIds, 'raw weights routing');
  const viaLayer = await moeForward(p.x, layer);
  assertSameTensor(viaLayer.output, want.output, 'with a layer');
  assert.is(viaLayer.routing, undefined);
  const same = await moeForward(p.x, layer, { topK: 2, normalize: true, returnRouting: true });
  assertSameTensor(same.routing!.topkWeights, want.routing!.topkWeights, 'with a layer and matching options');
  const k1 = await moeForward(p.x, weightsOf(p), { topK: 1, normalize: false });
  checkForward(p, k1.output, 1, false, 'moeForward topK 1 normalize false');
  layer.dispose();
});

entry('forwardSync equals forward, and new MoeLayer equals MoeLayer.create', async () => {
  for (const dtype of FLOAT_TYPES) {
    const p = makeProblem({ T: 65, d: 24, f: 56, E: 8, xType: dtype, wType: dtype, seed: 79 });
    const a = await MoeLayer.create(weightsOf(p), { topK: 2 });
    const b = new MoeLayer(weightsOf(p), { topK: 2 });
    const fa = (await a.forward(p.x)).output;
    assertSameTensor(a.forwardSync(p.x).output, fa, `${dtype}: forwardSync vs forward`);
    assertSameTensor((await b.forward(p.x)).output, fa, `${dtype}: constructor vs create`);
    a.dispose();
    b.dispose();
  }
});

entry('a row of a batch equals the same row run alone (the GEMM does not depend on batching)', async () => {
  for (const dtype of FLOAT_TYPES) {
    const T = 300, d = 64, f = 96;
    const p = makeProblem({ T, d, f, E: 8, xType: dtype, wType: dtype, seed: 80 });
    const layer = await MoeLayer.create(weightsOf(p), { topK: 2 });
    const all = (await layer.forward(p.x)).output;
    for (const t of [0, 137, 299]) {
      const x1 = { type: p.x.type, dims: [1, d], data: p.x.data.slice(t * d, (t + 1) * d) } as Tensor;
      const one = (await layer.forward(x1)).output;
      assertSameTensor(one, { type: all.type, dims: [1, d], data: all.data.subarray(t * d, (t + 1) * d) } as Tensor, `${dtype}: token ${t}`);
    }
    layer.dispose();
  }
});

// ---- one copy of the weights ------------------------------------------------------------------------

const copy = suite('MoeLayer keeps one copy of its weights');

copy('overwriting the caller arrays after create does not change forward', async () => {
  for (const dtype of FLOAT_TYPES) {
    const p = makeProblem({ T: 33, d: 33, f: 47, E: 8, xType: dtype, wType: dtype, gateType: dtype, seed: 81 });
    for (const make of [(w: ReturnType<typeof weightsOf>) => MoeLayer.create(w), async (w: ReturnType<typeof weightsOf>) => new MoeLayer(w)]) {
      const q = makeProblem({ T: 33, d: 33, f: 47, E: 8, xType: dtype, wType: dtype, gateType: dtype, seed: 81 });
      const layer = await make(weightsOf(q));
      const before = (await layer.forward(p.x)).output;
      const garbage = dtype === 'float32' ? 1e30 : 0x7c00;
      for (const t of [q.gate, q.w1, q.w3, q.w2]) (t.data as Float32Array | Uint16Array).fill(garbage);
      const after = (await layer.forward(p.x)).output;
      assertSameTensor(after, before, `${dtype}: after overwriting`);
      checkForward(p, after, 2, true, `${dtype}: still the original weights`);
      layer.dispose();
    }
  }
});

copy('the input x is not modified by forward', async () => {
  const p = makeProblem({ T: 33, d: 16, f: 24, E: 8, xType: 'float16', seed: 82 });
  const before = p.x.data.slice();
  const layer = await MoeLayer.create(weightsOf(p));
  await layer.forward(p.x);
  layer.forwardSync(p.x);
  assert.equal(Array.from(p.x.data), Array.from(before));
  layer.dispose();
});

// ---- dense FFN ------------------------------------------------------------------------------------

const dense = suite('DenseFfn vs the reference');

for (const dtype of FLOAT_TYPES)
  for (const [T, d, f] of [[1, 1, 1], [33, 33, 47], [7, 64, 200], [130, 40, 72]] as const)
    dense(`${dtype} T=${T} d=${d} f=${f}`, async () => {
      const p = makeProblem({ T, d, f, E: 1, xType: dtype, wType: dtype, seed: 90 + T + d });
      const w = { w1: perExpert(p.w1)[0], w3: perExpert(p.w3)[0], w2: perExpert(p.w2)[0] };
      const ffn = await DenseFfn.create(w);
      assert.is(ffn.hiddenSize, d);
      assert.is(ffn.intermediateSize, f);
      assert.is(ffn.weightType, dtype);
      assert.is(ffn.backend, 'cpu');
      const out = await ffn.forward(p.x);
      assert.is(out.type, dtype);
      assert.equal([...out.dims], [T, d]);
      assertClose(widen(out), refDense(p.xr, p.wr, T), tolForWeights(dtype, Math.max(d, f), dtype), `dense ${dtype}`);
      assertSameTensor(ffn.forwardSync(p.x), out, 'forwardSync');
      assertSameTensor(await denseFfnForward(p.x, w), out, 'denseFfnForward raw');
      assertSameTensor(await denseFfnForward(p.x, ffn), out, 'denseFfnForward with a DenseFfn');
      assertSameTensor(new DenseFfn(w).forwardSync(p.x), out, 'constructor');
      // a one-expert MoE layer with k = 1 has weight 1 and must give the same bits
      const moe = await MoeLayer.create({ gate: tensor('float32', randn(d, 3), [1, d]), w1: p.w1, w3: p.w3, w2: p.w2 }, { topK: 1 });
      assertSameTensor((await moe.forward(p.x)).output, out, 'E=1 k=1 MoE layer vs DenseFfn');
      moe.dispose();
      ffn.dispose();
      assert.is(ffn.disposed, true);
    });

forward.run();
entry.run();
copy.run();
dense.run();
