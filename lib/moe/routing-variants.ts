/**
 * Options of the routing variants shared by `route` (lib/moe/stages.ts) and `MoeLayer` (lib/moe/layers.ts),
 * checked here and turned into the native module's variants object. All are off by default: the
 * default routing stays Mixtral's (top-k, renormalised, dropless).
 *
 * Random draws come from a counter-based generator keyed by (seed, token index, expert)
 * (native/include/moe/route_rng.h), so the same seed routes the same way on every backend and run,
 * and token t's draws do not depend on the other tokens of the batch.
 */
import type { NativeRouteOptions, NativeTensor } from '../core/binding.js';
import { describe, rangeError, typeError } from '../core/errors.js';
import { checkOptions, intOption } from '../core/options.js';
import { checkTensor, FLOAT_TYPES, type Tensor } from '../core/tensor.js';

/** Noisy top-k gating (Shazeer et al. 2017). */
export interface NoiseOptions {
  /**
   * W_noise [E,d] (any float type). Routing logits become H = x·Wgᵀ + N(0,1)·softplus(x·W_noiseᵀ);
   * top-k and the weights use H (with `normalize`: the softmax over the k kept values of H). The
   * returned logits and the router statistics use the clean logits x·Wgᵀ.
   */
  weights: Tensor;
  /** Seed of the Gaussian draws, an integer in [0, 2^53). Default 0. */
  seed?: number;
}

/** GShard random routing, for topK = 2 only. */
export interface RandomRoutingOptions {
  /**
   * Seed of the draws, an integer in [0, 2^53). Default 0. The second expert of each token is kept
   * with probability min(1, 2·g2), g2 = w2 / (w1 + w2); a dropped second slot has id -1 and weight 0
   * and goes to no expert (it is not a capacity drop).
   */
  seed?: number;
}

/** Router statistics from the clean float32 logits, for training-time monitoring. */
export interface RouterStats {
  /**
   * Switch load-balancing loss E·Σ_e f_e·P_e, as Hugging Face transformers'
   * `load_balancing_loss_func` computes it for top-k: f_e = (slots routed to e) / T summed over the k
   * choices (so perfectly even routing gives k), P_e = mean over tokens of softmax(logits)[e].
   * Slots routed to no expert (random routing) count nowhere.
   */
  auxLoss: number;
  /** ST-MoE router z-loss: mean over tokens of logsumexp(logits)². */
  zLoss: number;
}

const MAX_SEED = Number.MAX_SAFE_INTEGER;

/** The checked noise and random-routing options of `o`, with copied noise weights when `copy`. */
export function routeVariantOptions(o: Record<string, unknown>, topK: number, E: number, d: number, copy: boolean): { noise?: Required<NoiseOptions>; randomRouting?: Required<RandomRoutingOptions> } {
  const out: { noise?: Required<NoiseOptions>; randomRouting?: Required<RandomRoutingOptions> } = {};
  if (o.noise !== undefined) {
    const n = checkOptions(o.noise, 'options.noise');
    if (n.weights === undefined) throw typeError('options.noise.weights is required, got undefined');
    const c = checkTensor(n.weights, 'options.noise.weights', FLOAT_TYPES);
    // a layer keeps a private copy (the caller may reuse its arrays)
    const w: Tensor = copy ? { type: c.type, data: c.data.slice() as Tensor['data'], dims: [...c.dims] } : c;
    if (w.dims.length !== 2 || w.dims[0] !== E || w.dims[1] !== d)
      throw rangeError(`options.noise.weights.dims must be [${E},${d}] (experts, hidden size), got [${w.dims.join(',')}]`);
    out.noise = { weights: w, seed: intOption(n, 'seed', 0, 0, MAX_SEED, 'options.noise.seed') };
  }
  if (o.randomRouting !== undefined) {
    const r = checkOptions(o.randomRouting, 'options.randomRouting');
    if (topK !== 2) throw rangeError(`options.randomRouting (GShard) needs topK = 2, got topK = ${topK}`);
    out.randomRouting = { seed: intOption(r, 'seed', 0, 0, MAX_SEED, 'options.randomRouting.seed') };
  }
  return out;
}

/** The routing options of the native call (moe::RouteParams) from checked options. */
export function nativeVariants(v: { noise?: Required<NoiseOptions>; randomRouting?: Required<RandomRoutingOptions> }, wantStats: boolean): Omit<NativeRouteOptions, 'topK'> {
  const r: Omit<NativeRouteOptions, 'topK'> = { wantStats };
  if (v.noise) {
    r.noiseGate = v.noise.weights as unknown as NativeTensor;
    r.noiseSeed = v.noise.seed;
  }
  if (v.randomRouting) {
    r.randomRouting = true;
    r.randomSeed = v.randomRouting.seed;
  }
  return r;
}

/** A capacity factor: a finite number > 0, or undefined (dropless). */
export function factorOption(o: Record<string, unknown>, key: string): number | undefined {
  const v = o[key];
  if (v === undefined) return undefined;
  if (typeof v !== 'number') throw typeError(`options.${key} must be a number, got ${describe(v)}`);
  if (!Number.isFinite(v) || v <= 0) throw rangeError(`options.${key} must be a finite number > 0, got ${v}`);
  return v;
}
