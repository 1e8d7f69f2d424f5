/**
 * Expert merging for serving (the "aggregation of experts" idea): one dense SwiGLU FFN whose W1, W3
 * and W2 are the probability-weighted averages Σ_e p_e·W_e of an MoE layer's experts, with p a given
 * distribution, the measured routing counts, or uniform. The average is computed natively (f32
 * accumulation in expert order, output in the weights' type).
 *
 * This is an approximation: a SwiGLU FFN is not linear in its weights, so the merged FFN's output is
 * not the routed mixture Σ_j g_j·expert_j(x). `mergeDistance` measures how far apart they are on the
 * inputs you care about.
 */
import { binding, type NativeExpertMatrix } from '../core/binding.js';
import { type BackendName } from '../core/backend.js';
import { describe, rangeError, typeError } from '../core/errors.js';
import type { ExpertWeightsInit } from './experts.js';
import { DenseFfn, type DenseFfnWeights, type MoeLayer } from './layers.js';
import { checkOptions, required } from '../core/options.js';
import { toFloat32, type Tensor } from '../core/tensor.js';

export interface MergeOptions {
  /** Weight of each expert ([E] numbers >= 0, normalised to sum 1), or 'uniform' (the default). */
  distribution?: readonly number[] | 'uniform';
  /**
   * Routing counts to weight by instead: tokens per expert ([E], e.g. `routing.tokensPerExpert` or
   * counts summed over a run). Exclusive with `distribution`.
   */
  from?: Tensor | ArrayLike<number>;
  /** Backend of the DenseFfn that mergeExperts builds. */
  backend?: BackendName;
}

function numExperts(w: ExpertWeightsInit): number {
  const w1 = required<Tensor | readonly Tensor[]>(w, 'w1', 'weights');
  if (Array.isArray(w1)) return w1.length;
  const t = w1 as Tensor;
  if (!t || !Array.isArray(t.dims) || t.dims.length !== 3)
    throw typeError(`weights.w1 must be an [E,f,d] tensor or an array of [f,d] tensors, got ${describe(w1)}`);
  return t.dims[0];
}

/** The normalised merge distribution of `options` for E experts. */
export function mergeDistribution(E: number, options?: MergeOptions): number[] {
  const o = checkOptions(options);
  if (o.distribution !== undefined && o.from !== undefined)
    throw typeError('options.distribution and options.from are exclusive; give one');
  let p: number[];
  if (o.from !== undefined) {
    const f = o.from as Tensor | ArrayLike<number>;
    const data = (f as Tensor).data !== undefined && (f as Tensor).dims !== undefined ? (f as Tensor).data : (f as ArrayLike<number>);
    p = Array.from(data as ArrayLike<number>, Number);
    if (p.length !== E) throw rangeError(`options.from must hold ${E} counts (one per expert), got ${p.length}`);
  } else if (o.distribution === undefined || o.distribution === 'uniform') {
    p = new Array<number>(E).fill(1);
  } else if (Array.isArray(o.distribution)) {
    p = [...(o.distribution as number[])];
    if (p.length !== E) throw rangeError(`options.distribution must hold ${E} weights (one per expert), got ${p.length}`);
  } else {
    throw typeError(`options.distribution must be an array of numbers or 'uniform', got ${describe(o.distribution)}`);
  }
  let sum = 0;
  p.forEach((v, e) => {
    if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) throw rangeError(`merge weight ${e} must be a finite number >= 0, got ${describe(v)}`);
    sum += v;
  });
  if (!(sum > 0)) throw rangeError('the merge distribution is all zeros (no expert has weight)');
  return p.map((v) => v / sum);
}

/** The merged weights {w1 [f,d], w3 [f,d], w2 [d,f]} in the experts' type, computed natively. */
export async function mergeExpertWeights(weights: ExpertWeightsInit, options?: MergeOptions): Promise<DenseFfnWeights> {
  const p = mergeDistribution(numExperts(weights), options);
  const m = (k: 'w1' | 'w3' | 'w2') => required<NativeExpertMatrix>(weights, k, 'weights');
  return (await binding.merge_experts({ w1: m('w1'), w3: m('w3'), w2: m('w2') }, p, { async: true })) as unknown as DenseFfnWeights;
}

/** A DenseFfn merged from an MoE layer's experts (see the file comment: an approximation). */
export async function mergeExperts(weights: ExpertWeightsInit, options?: MergeOptions): Promise<DenseFfn> {
  const o = checkOptions(options);
  return DenseFfn.create(await mergeExpertWeights(weights, options), { backend: o.backend as BackendName });
}

export interface MergeDistance {
  /** ‖dense(x) − moe(x)‖₂ / ‖moe(x)‖₂ over all of x's elements. */
  relativeRms: number;
  /** RMS of the difference and of the MoE output. */
  rmsDiff: number;
  rmsMoe: number;
}

/** How far the merged FFN's output is from the MoE layer's on x [T,d]. */
export async function mergeDistance(merged: DenseFfn, layer: MoeLayer, x: Tensor): Promise<MergeDistance> {
  const [a, b] = await Promise.all([merged.forward(x), layer.forward(x)]);
  const da = toFloat32(a), db = toFloat32(b.output);
  let s2 = 0, m2 = 0;
  for (let i = 0; i < da.length; i++) {
    const diff = da[i] - db[i];
    s2 += diff * diff;
    m2 += db[i] * db[i];
  }
  const n = Math.max(1, da.length);
  return { relativeRms: m2 > 0 ? Math.sqrt(s2 / m2) : Math.sqrt(s2) === 0 ? 0 : Infinity, rmsDiff: Math.sqrt(s2 / n), rmsMoe: Math.sqrt(m2 / n) };
}
