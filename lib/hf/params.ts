/**
 * Parameter and memory maths from a model config, before anything is loaded: how many parameters a
 * model has and how many each token touches (the top-k routed experts only), the bytes of its
 * weights and of its KV cache, and a check against the memory the machine has.
 */
import * as os from 'node:os';
import type { MoeModelConfig } from './config.js';
import { describe, MoeError, typeError } from '../core/errors.js';
import { checkOptions, intOption } from '../core/options.js';
import { DTYPE_BYTES, FLOAT_TYPES, type FloatType } from '../core/tensor.js';
import { bitsPerWeight, QUANT_TYPES, type QuantType } from '../core/quant.js';

export interface ParameterCounts {
  /** Every parameter of the model. */
  total: number;
  /** Parameters a token uses: everything but the routed experts it is not sent to. */
  active: number;
  /** Token embeddings [V,d]. */
  embeddings: number;
  /** Output projection [V,d]; 0 when tied to the embeddings. */
  lmHead: number;
  /** q, k, v, o projections (and their biases where the model has them), all layers. */
  attention: number;
  /** RMSNorm weights: two per layer and the final one. */
  norms: number;
  /** Routers [E,d], all MoE layers. */
  router: number;
  /** Routed experts, all MoE layers: all of them (total) and the k a token uses (active). */
  experts: { total: number; active: number };
  /** Shared experts (and their gates), all MoE layers; every token uses them. */
  sharedExperts: number;
  /** FFNs of dense layers. */
  denseFfn: number;
}

const swiglu = (d: number, f: number) => 3 * d * f;

/** Counts a model's parameters from its config, exactly (integers). */
export function countParameters(config: MoeModelConfig): ParameterCounts {
  const c = config;
  const d = c.hiddenSize;
  const q = c.numAttentionHeads * c.headDim;
  const kv = c.numKeyValueHeads * c.headDim;
  const attnLayer = d * q + 2 * d * kv + q * d + (c.attentionBias ? q + 2 * kv : 0) + (c.attentionOutputBias ? d : 0);
  const moeLayers = c.layerKinds.filter((k) => k === 'moe').length;
  const denseLayers = c.layerKinds.length - moeLayers;
  const expert = swiglu(d, c.moeIntermediateSize);
  const shared = c.sharedExpertIntermediateSize > 0 ? swiglu(d, c.sharedExpertIntermediateSize) + (c.sharedExpertGate ? d : 0) : 0;
  const r: Omit<ParameterCounts, 'total' | 'active'> = {
    embeddings: c.vocabSize * d,
    lmHead: c.tieWordEmbeddings ? 0 : c.vocabSize * d,
    attention: c.numHiddenLayers * attnLayer,
    norms: (2 * c.numHiddenLayers + 1) * d,
    router: moeLayers * c.numExperts * d,
    experts: { total: moeLayers * c.numExperts * expert, active: moeLayers * c.numExpertsPerTok * expert },
    sharedExperts: moeLayers * shared,
    denseFfn: denseLayers * swiglu(d, c.intermediateSize),
  };
  const rest = r.embeddings + r.lmHead + r.attention + r.norms + r.router + r.sharedExperts + r.denseFfn;
  const total = rest + r.experts.total;
  // Every part is a sum of products of integers no larger than the total, so all are exact when
  // the total is at most 2^53; past that a count would be silently rounded.
  if (!(total <= Number.MAX_SAFE_INTEGER))
    throw new MoeError(`the config implies ${total.toExponential(3)} parameters, more than 2^53, so they cannot be counted exactly`, 'ERR_CONFIG');
  return { total, active: rest + r.experts.active, ...r };
}


export interface MemoryOptions {
  /** Weight type. Default: the config's torch_dtype, else 'bfloat16'. */
  dtype?: FloatType;
  /** KV cache type. Default: `dtype`. */
  kvDtype?: FloatType;
  /** Tokens of context the KV cache holds per sequence. Default: max_position_embeddings. */
  contextLength?: number;
  /** Sequences at once. Default 1. */
  batch?: number;
  /**
   * The FFN weights (routed and shared experts, dense FFNs) in a block format: 'q8_0', 'q4_0',
   * 'q4_k', 'q5_k', 'q6_k'. Default: `dtype`.
   */
  quantize?: QuantType;
  /** The attention projections and the LM head in a block format. Default: `dtype`. */
  quantizeLinear?: QuantType;
}

export interface MemoryEstimate {
  dtype: FloatType;
  /** The FFNs' format, when quantised. */
  quantize?: QuantType;
  /** The projections' and LM head's format, when quantised. */
  quantizeLinear?: QuantType;
  /** Bytes of the FFN weights (experts, shared experts, dense FFNs), in `quantize` or `dtype`. */
  ffnBytes: number;
  kvDtype: FloatType;
  contextLength: number;
  batch: number;
  /** All parameters at `dtype`. */
  weightsBytes: number;
  /** 2 (K and V) · layers · kvHeads · headDim · contextLength · batch · element size. */
  kvCacheBytes: number;
  totalBytes: number;
}

function floatOption(o: Record<string, unknown>, key: string, dflt: FloatType): FloatType {
  const v = o[key] ?? dflt;
  if (!(FLOAT_TYPES as readonly unknown[]).includes(v))
    throw typeError(`options.${key} must be one of ${FLOAT_TYPES.map((t) => `'${t}'`).join(', ')}, got ${describe(v)}`);
  return v as FloatType;
}

/** Bytes a model needs for its weights and a KV cache of `contextLength` tokens × `batch`. */
export function estimateMemory(config: MoeModelConfig, options?: MemoryOptions): MemoryEstimate {
  const o = checkOptions(options);
  const dtype = floatOption(o, 'dtype', config.torchDtype ?? 'bfloat16');
  const kvDtype = floatOption(o, 'kvDtype', dtype);
  const contextLength = intOption(o, 'contextLength', config.maxPositionEmbeddings, 1);
  const batch = intOption(o, 'batch', 1, 1);
  const quant = (key: string) => {
    const v = o[key];
    if (v !== undefined && !(QUANT_TYPES as readonly unknown[]).includes(v))
      throw typeError(`options.${key} must be one of ${QUANT_TYPES.map((t) => `'${t}'`).join(', ')}, got ${describe(v)}`);
    return v as QuantType | undefined;
  };
  const quantize = quant('quantize'), quantizeLinear = quant('quantizeLinear');
  const p = countParameters(config);
  const bytesAt = (n: number, q: QuantType | undefined) => (q ? (n * bitsPerWeight(q)) / 8 : n * DTYPE_BYTES[dtype]);
  // the shared-expert gate ([1,d] per layer) is not quantised: a vector
  const sharedGates = config.sharedExpertGate && config.sharedExpertIntermediateSize > 0 ? config.layerKinds.filter((k) => k === 'moe').length * config.hiddenSize : 0;
  const ffn = p.experts.total + p.sharedExperts - sharedGates + p.denseFfn;
  const linear = p.attention + p.lmHead - (config.attentionBias ? config.numHiddenLayers * (config.numAttentionHeads + 2 * config.numKeyValueHeads) * config.headDim : 0) -
    (config.attentionOutputBias ? config.numHiddenLayers * config.hiddenSize : 0);
  const ffnBytes = bytesAt(ffn, quantize);
  const weightsBytes = ffnBytes + bytesAt(linear, quantizeLinear) + (p.total - ffn - linear) * DTYPE_BYTES[dtype];
  const kvCacheBytes = 2 * config.numHiddenLayers * config.numKeyValueHeads * config.headDim * contextLength * batch * DTYPE_BYTES[kvDtype];
  return {
    dtype, ...(quantize ? { quantize } : {}), ...(quantizeLinear ? { quantizeLinear } : {}), kvDtype, contextLength, batch,
    ffnBytes, weightsBytes, kvCacheBytes, totalBytes: weightsBytes + kvCacheBytes,
  };
}

/** 1234567 -> "1.23 MB" (powers of 1000, as disk and model sizes are usually given). */
export function formatBytes(n: number): string {
  const units = ['B', 'kB', 'MB', 'GB', 'TB', 'PB'];
  let i = 0;
  let v = n;
  while (Math.abs(v) >= 1000 && i < units.length - 1) {
    v /= 1000;
    i++;
  }
  return i === 0 ? `${n} B` : `${v.toFixed(v < 10 ? 2 : v < 100 ? 1 : 0)} ${units[i]}`;
}

export interface MemoryCheckOptions {
  /** Bytes available. Default: the free memory of this machine (os.freemem()). */
  availableBytes?: number;
}

/**
 * Throws MoeError ERR_OUT_OF_MEMORY, before anything is loaded, when an estimate does not fit in
 * the memory available (by default this machine's free memory). Returns the bytes available.
 */
export function checkMemory(estimate: MemoryEstimate, options?: MemoryCheckOptions): number {
  const o = checkOptions(options);
  const available = o.availableBytes ?? os.freemem();
  if (typeof available !== 'number' || !(available >= 0)) throw typeError(`options.availableBytes must be a non-negative number, got ${describe(available)}`);
  if (estimate.totalBytes > available) {
    const e = estimate;
    const of = o.availableBytes === undefined ? ` of memory is free (${formatBytes(os.totalmem())} in all)` : ' is available';
    throw new MoeError(
      `the model needs ${formatBytes(e.totalBytes)} (weights ${formatBytes(e.weightsBytes)} in ${e.dtype}${e.quantize ? ` with ${e.quantize} FFNs` : ''}, KV cache ${formatBytes(e.kvCacheBytes)} ` +
        `for ${e.contextLength} tokens x batch ${e.batch} in ${e.kvDtype}) but ${formatBytes(available)}${of}; ` +
        'use a smaller dtype, quantize, context or batch',
      'ERR_OUT_OF_MEMORY',
    );
  }
  return available;
}
