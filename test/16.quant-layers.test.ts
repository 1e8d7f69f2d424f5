/**
 * Quantised experts and linear layers on the CPU against the float64 reference computed on the
 * dequantised weights: the error measured is the kernels', not the quantisation's.
 *
 * Two paths (native/backends/cpu/quant_experts.cc): decode (T <= 8) quantises the activations to 8
 * bits per block and takes integer dot products, as llama.cpp does, so its error is that of 8-bit
 * activations: about 1-2% relative RMS of the output (bounded here at 3%, any element within 20% of
 * the output's RMS); prefill dequantises panels to f32 and runs the f32 micro-kernel: the f32
 * tolerance. Each kernel table (MOE_CPU_QUANT_KERNEL) is checked in a child process.
 */
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { backendInfo, DenseFfn, dequantizeSync, ExpertWeights, Linear, MoeLayer, quantizeSync, tensor, type QuantType } from '../lib/index';
import { makeProblem } from './helpers/problems';
import { makeQuantProblem, relErrors } from './helpers/quant-problems';
import { assertClose, assertSameBits, nearTies, randn, refDense, refMoe, skipTokens, tolFor, widen } from './helpers/reference';

const TYPES: QuantType[] = ['q8_0', 'q4_0', 'q4_k', 'q5_k', 'q6_k'];
const DECODE = { rms: 0.03, max: 0.2 };

function check(got: ArrayLike<number>, ref: Float64Array, T: number, n: number, label: string, skip?: (i: number) => boolean) {
  if (T <= 8) {
    const g = skip ? Array.from(got, (v, i) => (skip(i) ? ref[i] : v)) : got;
    const e = relErrors(g, ref);
    assert.ok(e.rms < DECODE.rms && e.max < DECODE.max, `${label}: decode error rms ${e.rms.toFixed(4)}, max ${e.max.toFixed(4)} of the RMS`);
  } else {
    assertClose(got, ref, { ...tolFor('float32', n), skip }, label);
  }
}

// ---- the MoE layer ---------------------------------------------------------------------------------

const layer = suite('MoeLayer: quantised experts vs the float64 reference on their dequantised values');

for (const type of TYPES)
  for (const T of [1, 5, 33])
    layer(`${type}, T=${T}`, async () => {
      const d = 256, f = 512, E = 8, k = 2;
      const p = makeQuantProblem({ T, d, f, E, type, seed: 16 + T });
      const l = await MoeLayer.create({ gate: p.gate, w1: p.w1, w3: p.w3, w2: p.w2 }, { topK: k });
      assert.is(l.weightType, type);
      const { out, route } = refMoe(p.xr, p.gr, p.wr, T, k, true);
      const o = (await l.forward(p.x)).output;
      check(o.data as Float32Array, out, T, f, `${type} T=${T}`, skipTokens(nearTies(route), d));
      // sync and async, run twice: the same bits
      assertSameBits(l.forwardSync(p.x).output.data as Float32Array, o.data as Float32Array, `${type} T=${T} sync`);
      l.dispose();
    });

layer("Q4_K_M's mix: q4_k W1/W3 with q6_k W2", async () => {
  for (const T of [2, 40]) {
    const p = makeQuantProblem({ T, d: 256, f: 256, E: 4, type: 'q4_k', w2Type: 'q6_k', seed: 3 });
    const l = new MoeLayer({ gate: p.gate, w1: p.w1, w3: p.w3, w2: p.w2 });
    const w = ExpertWeights.packSync({ w1: p.w1, w3: p.w3, w2: p.w2 });
    assert.is(w.type, 'q4_k');
    assert.is(w.w2Type, 'q6_k');
    assert.is(w.bytes, 4 * (2 * 256 * 144 + 256 * 210));
    w.dispose();
    const { out, route } = refMoe(p.xr, p.gr, p.wr, T, 2, true);
    check(l.forwardSync(p.x).output.data as Float32Array, out, T, 256, `q4_k/q6_k T=${T}`, skipTokens(nearTies(route), 256));
  }
});

layer('options.quantize: float weights quantised at pack time, per-expert arrays, experts with no tokens', async () => {
  const T = 3, d = 64, f = 96, E = 8;
  const p = makeProblem({ T, d, f, E, seed: 5 });
  for (const q of ['q8_0', 'q4_0'] as const) {
    const split = (t: typeof p.w1) => Array.from({ length: E }, (_, e) => tensor('float32', (t.data as Float32Array).slice(e * t.dims[1] * t.dims[2], (e + 1) * t.dims[1] * t.dims[2]), [t.dims[1], t.dims[2]]));
    const l = await MoeLayer.create({ gate: p.gate, w1: split(p.w1), w3: split(p.w3), w2: split(p.w2) }, { quantize: q });
    assert.is(l.weightType, q);
    // the reference on what quantize() makes of the same weights
    const dq = (t: typeof p.w1) => widen(dequantizeSync(quantizeSync(t, q)));
    const { out, route } = refMoe(p.xr, p.gr, { E, d, f, w1: dq(p.w1), w3: dq(p.w3), w2: dq(p.w2) }, T, 2, true);
    check(l.forwardSync(p.x).output.data as Float32Array, out, T, f, `quantize ${q}`, skipTokens(nearTies(route), d));
    // quantised: the weights are a fraction of float32's
    assert.ok(l.bytes < 3 * E * d * f * (q === 'q8_0' ? 1.1 : 0.6), `${q}: ${l.bytes} bytes`);
    l.dispose();
  }
});

layer('shared experts of a quantised layer are quantised with it', async () => {
  const T = 4, d = 64, f = 64, E = 4;
  const p = makeProblem({ T, d, f, E, seed: 9 });
  const s = makeProblem({ T, d, f: 32, E: 1, seed: 10 });
  const sw = { w1: { ...s.w1, dims: [32, d] }, w3: { ...s.w3, dims: [32, d] }, w2: { ...s.w2, dims: [d, 32] } };
  const q = await MoeLayer.create({ gate: p.gate, w1: p.w1, w3: p.w3, w2: p.w2 }, { quantize: 'q8_0', sharedExperts: sw });
  const base = await MoeLayer.create({ gate: p.gate, w1: p.w1, w3: p.w3, w2: p.w2 }, { quantize: 'q8_0' });
  const dq = (t: typeof p.w1) => widen(dequantizeSync(quantizeSync(t, 'q8_0')));
  const sharedRef = refDense(p.xr, { E: 1, d, f: 32, w1: dq(sw.w1), w3: dq(sw.w3), w2: dq(sw.w2) }, T);
  const got = q.forwardSync(p.x).output.data as Float32Array;
  const without = base.forwardSync(p.x).output.data as Float32Array;
  check(Float32Array.from(got, (v, i) => v - without[i]), sharedRef, T, f, 'shared experts');
  q.dispose();
  base.dispose();
});

// ---- dense FFN and linear ---------------------------------------------------------------------------

const dense = suite('DenseFfn and Linear: quantised weights');

for (const type of TYPES)
  dense(`DenseFfn ${type}, T=1 and T=20`, async () => {
    const p = makeQuantProblem({ T: 20, d: 256, f: 256, E: 1, type, seed: 30 });
    const mat = (t: typeof p.w1) => ({ type: t.type, data: t.data, dims: [t.dims[1], t.dims[2]] });
    const ffn = await DenseFfn.create({ w1: mat(p.w1), w3: mat(p.w3), w2: mat(p.w2) });
    assert.is(ffn.weightType, type);
    const ref = refDense(p.xr, p.wr, 20);
    check((await ffn.forward(p.x)).data as Float32Array, ref, 20, 256, `${type} T=20`);
    const x1 = tensor('float32', (p.x.data as Float32Array).slice(0, 256), [1, 256]);
    check(ffn.forwardSync(x1).data as Float32Array, ref.slice(0, 256), 1, 256, `${type} T=1`);
    ffn.dispose();
  });

for (const type of TYPES)
  dense(`Linear ${type} with a bias, T=1, 3 and 17, output types`, async () => {
    const out = 48, inF = 512;
    const bytesPerRow = ({ q8_0: 34 * 16, q4_0: 18 * 16, q4_k: 144 * 2, q5_k: 176 * 2, q6_k: 210 * 2 } as Record<string, number>)[type];
    // a fresh [out, in] matrix in this format
    const w = makeQuantProblem({ T: 1, d: 256, f: inF, E: 1, type, seed: 41 }).w2;
    const wm = { type: w.type, data: w.data.slice(0, out * bytesPerRow), dims: [out, inF] };
    const bias = tensor('float32', randn(out, 42), [out]);
    const lin = await Linear.pack(wm, { bias });
    assert.is(lin.type, type);
    const wr = widen(dequantizeSync(wm));
    for (const T of [1, 3, 17]) {
      const x = tensor('float32', randn(T * inF, 43 + T), [T, inF]);
      const xr = widen(x);
      const ref = new Float64Array(T * out);
      for (let t = 0; t < T; t++)
        for (let j = 0; j < out; j++) {
          let s = 0;
          for (let i = 0; i < inF; i++) s += xr[t * inF + i] * wr[j * inF + i];
          ref[t * out + j] = s + bias.data[j];
        }
      check(lin.forwardSync(x).data as Float32Array, ref, T, inF, `${type} T=${T}`);
      const y16 = await lin.forward(x, { outType: 'bfloat16' });
      assert.is(y16.type, 'bfloat16');
    }
    lin.dispose();
  });

dense('Linear.pack({quantize}) and its errors', async () => {
  const w = tensor('float32', randn(16 * 64, 50, 0.1), [16, 64]);
  const lin = Linear.packSync(w, { quantize: 'q8_0' });
  assert.is(lin.type, 'q8_0');
  assert.ok(lin.bytes < 16 * 64 * 1.1);
  lin.dispose();
  await assert.throws(() => Linear.packSync(tensor('float32', new Float32Array(16 * 48), [16, 48]), { quantize: 'q8_0' }), (e: Error) => e instanceof RangeError && /multiple of 32/.test(e.message));
  assert.throws(() => Linear.packSync(w, { quantize: 'q3_k' as never }), (e: Error) => e instanceof TypeError && /options\.quantize must be one of/.test(e.message));
});

dense('MoeLayer({quantize}) errors name the weight', () => {
  const p = makeProblem({ T: 1, d: 33, f: 64, E: 2, seed: 1 });
  assert.throws(() => new MoeLayer({ gate: p.gate, w1: p.w1, w3: p.w3, w2: p.w2 }, { quantize: 'q8_0' }), (e: Error) => e instanceof RangeError && /weights\.w1/.test(e.message) && /multiple of 32/.test(e.message));
  const q = makeProblem({ T: 1, d: 64, f: 64, E: 2, seed: 1 });
  assert.throws(() => new MoeLayer({ gate: q.gate, w1: q.w1, w3: q.w3, w2: q.w2 }, { quantize: 'q4_k' }), (e: Error) => e instanceof RangeError && /multiple of 256/.test(e.message));
  assert.throws(() => new MoeLayer({ gate: q.gate, w1: q.w1, w3: q.w3, w2: q.w2 }, { quantize: 'float16' as never }), TypeError);
  // mixed float and quantised matrices
  const w1 = quantizeSync(q.w1, 'q8_0');
  assert.throws(() => ExpertWeights.packSync({ w1, w3: q.w3, w2: q.w2 }), (e: Error) => e instanceof TypeError && /share one type/.test(e.message));
});

// ---- every kernel table this CPU has, and the thread count --------------------------------------------

const tables = suite('quantised kernels: every table, any thread count');

const child = path.join(__dirname, 'helpers', 'child-quant.ts');
function runChild(env: Record<string, string>): { table: string; bits: string; kbits: string } {
  const r = spawnSync(process.execPath, ['-r', 'tsx/cjs', child], { env: { ...process.env, ...env }, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`child-quant (${JSON.stringify(env)}) failed: ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split('\n').pop()!);
}

tables('each table against the reference; SIMD k-quants give the portable bits; threads change nothing', () => {
  const names = backendInfo().cpu.quantKernels.split(',');
  assert.ok(names.includes('portable'));
  let portable = '';
  for (const name of names) {
    const r = runChild({ MOE_CPU_QUANT_KERNEL: name });
    assert.is(r.table, name);
    if (name === 'portable') portable = r.kbits;
    else assert.is(r.kbits, portable, `${name}: the k-quant decode dots give the portable table's bits`);
    const one = runChild({ MOE_CPU_QUANT_KERNEL: name, MOE_NUM_THREADS: '1' });
    assert.is(one.bits, r.bits, `${name}: 1 thread vs ${backendInfo().cpu.threads}`);
  }
});

layer.run();
dense.run();
tables.run();
