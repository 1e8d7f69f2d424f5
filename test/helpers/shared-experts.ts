/**
 * Float64 references of the issue #5 serving variants: shared experts (DeepSeekMoE / Qwen2-MoE:
 * out = moe(x) + [sigmoid(x·g)] · shared(x)) and expert merging (Σ_e p_e W_e). Written from
 * DESIGN.md's semantics; the reference math calls nothing from the library (makeShared builds inputs
 * with its `tensor()`, like helpers/problems.ts).
 */
import { tensor, type FloatType } from '../../lib/index';
import { randn, refDense, refMoe, widen, type RefExperts } from './reference';

export interface RefShared {
  /** The shared FFN as one expert: w1/w3 [1,f_s,d], w2 [1,d,f_s]. */
  w: RefExperts;
  /** [d] sigmoid gate weights, or undefined (ungated). */
  gate?: Float64Array;
}

/** Shared experts of intermediate size fs (type wType) and an optional gate [1,d]. */
export function makeShared(d: number, fs: number, wType: FloatType, gated: boolean, seed: number) {
  const w1 = tensor(wType, randn(fs * d, seed, 1 / Math.sqrt(d)), [fs, d]);
  const w3 = tensor(wType, randn(fs * d, seed + 1, 1 / Math.sqrt(d)), [fs, d]);
  const w2 = tensor(wType, randn(d * fs, seed + 2, 1 / Math.sqrt(fs)), [d, fs]);
  const gate = gated ? tensor('float32', randn(d, seed + 3, 2 / Math.sqrt(d)), [1, d]) : undefined;
  const ref: RefShared = { w: { E: 1, d, f: fs, w1: widen(w1), w3: widen(w3), w2: widen(w2) }, gate: gate && widen(gate) };
  return { opts: { w1, w3, w2, ...(gate ? { gate } : {}) }, ref };
}

/** The MoE block with shared experts, per token. */
export function refMoeShared(x: Float64Array, gate: Float64Array, w: RefExperts, T: number, k: number, normalize: boolean, shared: RefShared): Float64Array {
  const { out } = refMoe(x, gate, w, T, k, normalize);
  const s = refDense(x, shared.w, T);
  const d = w.d;
  for (let t = 0; t < T; t++) {
    let g = 1;
    if (shared.gate) {
      let z = 0;
      for (let i = 0; i < d; i++) z += x[t * d + i] * shared.gate[i];
      g = 1 / (1 + Math.exp(-z));
    }
    for (let i = 0; i < d; i++) out[t * d + i] += g * s[t * d + i];
  }
  return out;
}

/** Σ_e p_e W_e over the experts' matrices, p normalised to sum one: {w1 [f,d], w3 [f,d], w2 [d,f]}. */
export function refMerge(w: RefExperts, p: ArrayLike<number>): { w1: Float64Array; w3: Float64Array; w2: Float64Array } {
  const { E, d, f } = w;
  let sum = 0;
  for (let e = 0; e < E; e++) sum += p[e];
  const n = d * f;
  const w1 = new Float64Array(n), w3 = new Float64Array(n), w2 = new Float64Array(n);
  for (let e = 0; e < E; e++) {
    const pe = p[e] / sum;
    for (let i = 0; i < n; i++) {
      w1[i] += pe * w.w1[e * n + i];
      w3[i] += pe * w.w3[e * n + i];
      w2[i] += pe * w.w2[e * n + i];
    }
  }
  return { w1, w3, w2 };
}
