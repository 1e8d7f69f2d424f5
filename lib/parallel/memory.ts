/**
 * Memory of one expert-parallel rank: the model's estimate less the routed experts other ranks hold.
 */
import type { MoeModelConfig } from '../hf/config.js';
import { countParameters, type MemoryEstimate } from '../hf/params.js';

/**
 * `estimate` (the whole model) for a rank holding experts [start, end) of every MoE layer: the
 * routed experts' share of the weight bytes is scaled by the experts it holds. Exact when every
 * parameter has one type (a Hugging Face checkpoint at `dtype`); proportional for a GGUF file whose
 * tensors mix types.
 */
export function expertShareEstimate(config: MoeModelConfig, estimate: MemoryEstimate, share: readonly [number, number]): MemoryEstimate {
  const p = countParameters(config);
  const E = config.numExperts;
  if (E < 1 || p.total === 0) return estimate;
  const others = E - (share[1] - share[0]);
  const drop = Math.round(((estimate.weightsBytes * p.experts.total) / p.total) * (others / E));
  return { ...estimate, weightsBytes: estimate.weightsBytes - drop, totalBytes: estimate.totalBytes - drop };
}
