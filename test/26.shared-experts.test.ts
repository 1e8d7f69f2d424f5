/**
 * Shared experts (DeepSeekMoE / Qwen2-MoE) on the CPU backend against the float64 reference of
 * test/helpers/shared-experts.ts: ungated and sigmoid-gated, several shared experts given as one of
 * n·f_shared, every weight type, odd shapes, with capacity drops (a fully dropped token keeps its
 * shared output), determinism, and the errors of bad options. Device backends: test/45.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { MoeLayer, moeForward, tensor, type FloatType, type Tensor } from '../lib/index';
import { makeProblem, type MoeProblem } from './helpers/problems';
import { assertClose, assertSameTensor, tolFor, widen } from './helpers/reference';
import { tolForWeights } from './helpers/cpu-kernel';
import { makeShared, refMoeShared } from './helpers/shared-experts';

const weightsOf = (p: MoeProblem) => ({ gate: p.gate, w1: p.w1, w3: p.w3, w2: p.w2 });

const s = suite('shared experts: CPU against the float64 reference');

s('ungated and gated, every weight type, odd shapes', async () => {
  const shapes = [
    { T: 1, d: 8, f: 4, E: 4, k: 2, fs: 8 },
    { T: 33, d: 20, f: 12, E: 8, k: 2, fs: 24 },
    { T: 17, d: 16, f: 6, E: 64, k: 6, fs: 12 },
  ];
  for (const sh of shapes)
    for (const wType of ['float32', 'bfloat16', 'float16'] as FloatType[])
      for (const gated of [false, true]) {
        const p = makeProblem({ ...sh, seed: sh.T + sh.E, wType, gateScale: 6 });
        const sx = makeShared(sh.d, sh.fs, wType, gated, 900 + sh.E);
        const layer = await MoeLayer.create(weightsOf(p), { topK: sh.k, sharedExperts: sx.opts });
        assert.is(layer.sharedIntermediateSize, sh.fs);
        const { output } = await layer.forward(p.x);
        const ref = refMoeShared(p.xr, p.gr, p.wr, p.T, sh.k, true, sx.ref);
        const tol = tolForWeights(wType === 'float32' ? 'float32' : wType, Math.max(sh.d, sh.f, sh.fs), wType);
        assertClose(widen(output), ref, { ...tol, atol: tol.atol * 4, rtol: tol.rtol * 4 }, `${JSON.stringify(sh)} ${wType} gated=${gated}`);
        layer.dispose();
      }
});

s('two shared experts given as one of 2·f_shared equal their sum', async () => {
  const p = makeProblem({ T: 9, d: 16, f: 8, E: 8, seed: 5 });
  const a = makeShared(16, 8, 'float32', false, 1), b = makeShared(16, 8, 'float32', false, 2);
  const cat = (x: Tensor, y: Tensor, rows: boolean): Tensor => {
    const [r, c] = x.dims;
    if (rows) return tensor('float32', Float32Array.from([...x.data, ...y.data]), [2 * r, c]);
    const out = new Float32Array(r * 2 * c);
    for (let i = 0; i < r; i++) {
      out.set(x.data.subarray(i * c, (i + 1) * c) as Float32Array, i * 2 * c);
      out.set(y.data.subarray(i * c, (i + 1) * c) as Float32Array, i * 2 * c + c);
    }
    return tensor('float32', out, [r, 2 * c]);
  };
  const both = { w1: cat(a.opts.w1, b.opts.w1, true), w3: cat(a.opts.w3, b.opts.w3, true), w2: cat(a.opts.w2, b.opts.w2, false) };
  const { output } = await moeForward(p.x, weightsOf(p), { sharedExperts: both });
  const ref = refMoeShared(p.xr, p.gr, p.wr, p.T, 2, true, a.ref);
  const only = refMoeShared(p.xr, p.gr, p.wr, p.T, 2, true, b.ref);
  const plain = refMoeShared(p.xr, p.gr, p.wr, p.T, 2, true, { w: { ...a.ref.w, w2: new Float64Array(a.ref.w.w2.length) } });
  const sum = ref.map((v, i) => v + only[i] - plain[i]);
  assertClose(widen(output), sum, tolFor('float32', 32), 'concatenated shared experts');
});

s('capacity drops: a fully dropped token keeps its shared output; deterministic', async () => {
  const p = makeProblem({ T: 40, d: 16, f: 8, E: 4, seed: 7, gateScale: 8 });
  const sx = makeShared(16, 8, 'float32', true, 31);
  const layer = await MoeLayer.create(weightsOf(p), { topK: 1, capacityFactor: 0.25, sharedExperts: sx.opts });
  const r = await layer.forward(p.x, { returnRouting: true });
  const dropped = Array.from(r.routing!.dropped.data).reduce((a, b) => a + b, 0);
  assert.ok(dropped > 0, 'some tokens are dropped');
  const rowOfDropped: number[] = [];
  const kept = new Map<number, number>();
  for (let t = 0; t < p.T; t++) {
    const e = r.routing!.topkIds.data[t];
    kept.set(e, (kept.get(e) ?? 0) + 1);
    if (kept.get(e)! > Math.ceil(p.T / 4 * 0.25)) rowOfDropped.push(t);
  }
  assert.is(rowOfDropped.length, dropped);
  const sharedOnly = refMoeShared(p.xr, p.gr, { ...p.wr, w2: new Float64Array(p.wr.w2.length) }, p.T, 1, true, sx.ref);
  const out = widen(r.output);
  for (const t of rowOfDropped)
    assertClose(out.subarray(t * 16, t * 16 + 16), sharedOnly.subarray(t * 16, t * 16 + 16), tolFor('float32', 16), `dropped token ${t}`);
  const again = await layer.forward(p.x);
  assertSameTensor(again.output, r.output, 'same bits on a second call');
  assertSameTensor(layer.forwardSync(p.x).output, r.output, 'forwardSync');
  layer.dispose();
});

s('errors name the option and the value', () => {
  const p = makeProblem({ T: 2, d: 8, f: 4, E: 4 });
  const sx = makeShared(8, 4, 'float32', true, 3);
  assert.throws(() => new MoeLayer(weightsOf(p), { sharedExperts: { ...sx.opts, gate: tensor('float32', new Float32Array(16), [2, 8]) } }), /sharedExperts\.gate\.dims must be \[1,8\]/);
  assert.throws(() => new MoeLayer(weightsOf(p), { sharedExperts: { ...sx.opts, w1: tensor('float32', new Float32Array(12), [4, 3]) } }), /w1|d|columns/);
  assert.throws(() => new MoeLayer(weightsOf(p), { sharedExperts: { ...sx.opts, w1: tensor('bfloat16', new Uint16Array(32), [4, 8]) } }), /type 'bfloat16' differs/);
  assert.throws(() => new MoeLayer(weightsOf(p), { sharedExperts: { w1: sx.opts.w1 } as never }), /sharedExperts\.w3 is required/);
});

s.run();
