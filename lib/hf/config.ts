/**
 * Model configs from Hugging Face `config.json`: one typed, validated shape (`MoeModelConfig`, camelCase)
 * for decoder-only MoE models. Mixtral is every layer MoE with no shared experts; Qwen2-MoE and
 * DeepSeek-MoE mix dense and MoE layers (`layerKinds`) and add shared experts, and parse into the
 * same type, so parameter counts, memory estimates and loaders take any of them.
 */
import * as fs from 'node:fs';
import { describe, fileError, MoeError } from '../core/errors.js';
import type { FloatType } from '../core/tensor.js';

/** The FFN of one decoder layer: routed experts (`'moe'`) or one dense SwiGLU FFN (`'dense'`). */
export type LayerKind = 'moe' | 'dense';

/** The model families whose config.json this module reads (`model_type`). */
export type ModelType = 'mixtral' | 'qwen2_moe' | 'deepseek';

export interface MoeModelConfig {
  modelType: ModelType;
  /** d: width of the residual stream. */
  hiddenSize: number;
  /** FFN width of a dense layer (and, for Mixtral, of each expert). */
  intermediateSize: number;
  numHiddenLayers: number;
  numAttentionHeads: number;
  numKeyValueHeads: number;
  /** Per-head size; `hidden_size / num_attention_heads` when config.json has none. */
  headDim: number;
  /** Biases on the q, k, v projections (Qwen2-MoE: true; DeepSeek-MoE: attention_bias). */
  attentionBias: boolean;
  /** A bias on the o projection (DeepSeek-MoE: attention_bias; Qwen2-MoE: false). */
  attentionOutputBias: boolean;
  vocabSize: number;
  maxPositionEmbeddings: number;
  rmsNormEps: number;
  ropeTheta: number;
  /** Sliding attention window in tokens; null: full attention. */
  slidingWindow: number | null;
  tieWordEmbeddings: boolean;
  /** `torch_dtype` / `dtype` of the checkpoint when it is a float type the library has, else null. */
  torchDtype: FloatType | null;
  /** E: routed experts per MoE layer. */
  numExperts: number;
  /** k: experts per token. */
  numExpertsPerTok: number;
  /** Width of each routed expert (Mixtral: intermediate_size). */
  moeIntermediateSize: number;
  /** Renormalise the top-k weights to sum to 1 (Mixtral: true). */
  normTopkProb: boolean;
  /** Width of the shared-expert FFN applied to every token in an MoE layer; 0: no shared expert. */
  sharedExpertIntermediateSize: number;
  /** The shared expert's output is scaled by sigmoid(x·w) with a [1,d] gate (Qwen2-MoE). */
  sharedExpertGate: boolean;
  /** The FFN kind of each layer, length numHiddenLayers. */
  layerKinds: readonly LayerKind[];
}

/** A Mixtral config: every layer MoE, no shared expert, no attention bias. */
export type MixtralConfig = MoeModelConfig & { modelType: 'mixtral' };

const configError = (where: string, msg: string) => new MoeError(`${where}: ${msg}`, 'ERR_CONFIG');

/**
 * Bounds on the counts a config.json may give, checked before anything is sized from them: far
 * above any published model (Mixtral-8x22B: 56 layers, 8 experts, d 6144; DeepSeek-V3: 256
 * experts; vocabularies up to ~256k), low enough that what a count sizes (the per-layer kinds,
 * the list of expected tensors) stays small and every parameter count fits a float64 exactly, or
 * is refused as ERR_CONFIG (params.ts).
 */
export const CONFIG_LIMITS = {
  /** num_hidden_layers: `layerKinds` has one entry per layer. */
  layers: 1 << 16,
  /** Routed and shared experts per layer. */
  experts: 1 << 16,
  /** hidden_size, intermediate sizes, head_dim. */
  width: 1 << 20,
  /** Attention and KV heads. */
  heads: 1 << 16,
  vocab: 1 << 24,
  /** Positions (max_position_embeddings, sliding_window) and layer strides: int32. */
  int32: 2 ** 31 - 1,
} as const;

const L = CONFIG_LIMITS;

/** Reads fields of a raw config.json object, each error naming the field and the value found. */
class Fields {
  constructor(
    readonly raw: Record<string, unknown>,
    readonly where: string,
  ) {}

  has(key: string): boolean {
    return this.raw[key] !== undefined && this.raw[key] !== null;
  }

  int(key: string, max: number, dflt?: number, min = 1): number {
    const v = this.raw[key] ?? dflt;
    if (v === undefined) throw configError(this.where, `${key} is required`);
    if (typeof v !== 'number' || !Number.isInteger(v)) throw configError(this.where, `${key} must be an integer, got ${describe(v)}`);
    if (v < min) throw configError(this.where, `${key} must be ${min === 1 ? 'positive' : `>= ${min}`}, got ${v}`);
    if (v > max) throw configError(this.where, `${key} must be at most ${max}, got ${v}`);
    return v;
  }

  positive(key: string, dflt?: number, raw: unknown = this.raw[key]): number {
    const v = raw ?? dflt;
    if (v === undefined) throw configError(this.where, `${key} is required`);
    if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) throw configError(this.where, `${key} must be a positive number, got ${describe(v)}`);
    return v;
  }

  bool(key: string, dflt: boolean): boolean {
    const v = this.raw[key] ?? dflt;
    if (typeof v !== 'boolean') throw configError(this.where, `${key} must be a boolean, got ${describe(v)}`);
    return v;
  }

  check(ok: boolean, msg: string): void {
    if (!ok) throw configError(this.where, msg);
  }
}

/** rope_theta at the top level, or inside `rope_parameters` (newer transformers). */
function ropeTheta(c: Fields, dflt: number): number {
  const rp = c.raw.rope_parameters;
  if (c.has('rope_theta')) return c.positive('rope_theta');
  if (rp !== undefined && rp !== null) {
    if (typeof rp !== 'object' || Array.isArray(rp)) throw configError(c.where, `rope_parameters must be an object, got ${describe(rp)}`);
    const t = (rp as Record<string, unknown>).rope_theta;
    if (t !== undefined) return c.positive('rope_parameters.rope_theta', undefined, t);
  }
  return dflt;
}

function torchDtype(c: Fields): FloatType | null {
  const v = c.raw.torch_dtype ?? c.raw.dtype;
  if (v === undefined || v === null) return null;
  if (typeof v !== 'string') throw configError(c.where, `torch_dtype must be a string, got ${describe(v)}`);
  const t = v.replace(/^torch\./, '');
  const map: Record<string, FloatType> = { float32: 'float32', float: 'float32', float16: 'float16', half: 'float16', bfloat16: 'bfloat16' };
  return map[t] ?? null;
}

/** The fields every family shares (attention, embeddings, norms). */
function common(c: Fields, defaults: { ropeTheta: number; rmsNormEps: number; maxPositions: number; tie: boolean }) {
  const hiddenSize = c.int('hidden_size', L.width);
  const numAttentionHeads = c.int('num_attention_heads', L.heads);
  const numKeyValueHeads = c.int('num_key_value_heads', L.heads, numAttentionHeads);
  c.check(numAttentionHeads % numKeyValueHeads === 0, `num_attention_heads (${numAttentionHeads}) must be a multiple of num_key_value_heads (${numKeyValueHeads})`);
  if (!c.has('head_dim'))
    c.check(hiddenSize % numAttentionHeads === 0, `hidden_size (${hiddenSize}) must be a multiple of num_attention_heads (${numAttentionHeads}) when head_dim is not given`);
  const headDim = c.int('head_dim', L.width, hiddenSize / numAttentionHeads);
  const sw = c.raw.sliding_window;
  let slidingWindow: number | null = null;
  if (sw !== undefined && sw !== null && !(c.raw.use_sliding_window === false)) slidingWindow = c.int('sliding_window', L.int32);
  return {
    hiddenSize,
    numHiddenLayers: c.int('num_hidden_layers', L.layers),
    numAttentionHeads,
    numKeyValueHeads,
    headDim,
    vocabSize: c.int('vocab_size', L.vocab),
    maxPositionEmbeddings: c.int('max_position_embeddings', L.int32, defaults.maxPositions),
    rmsNormEps: c.positive('rms_norm_eps', defaults.rmsNormEps),
    ropeTheta: ropeTheta(c, defaults.ropeTheta),
    slidingWindow,
    tieWordEmbeddings: c.bool('tie_word_embeddings', defaults.tie),
    torchDtype: torchDtype(c),
  };
}

function checkRouting(c: Fields, E: number, k: number, eKey: string): void {
  c.check(k <= E, `num_experts_per_tok (${k}) must be at most ${eKey} (${E})`);
}

function parseMixtral(c: Fields): MixtralConfig {
  const base = common(c, { ropeTheta: 1e6, rmsNormEps: 1e-5, maxPositions: 4096 * 32, tie: false });
  const intermediateSize = c.int('intermediate_size', L.width);
  const numExperts = c.int('num_local_experts', L.experts, 8);
  const numExpertsPerTok = c.int('num_experts_per_tok', L.experts, 2);
  checkRouting(c, numExperts, numExpertsPerTok, 'num_local_experts');
  return {
    modelType: 'mixtral',
    ...base,
    intermediateSize,
    attentionBias: false,
    attentionOutputBias: false,
    numExperts,
    numExpertsPerTok,
    moeIntermediateSize: intermediateSize,
    normTopkProb: true,
    sharedExpertIntermediateSize: 0,
    sharedExpertGate: false,
    layerKinds: new Array<LayerKind>(base.numHiddenLayers).fill('moe'),
  };
}

/** Qwen2-MoE: MoE where (i+1) % decoder_sparse_step == 0 and i is not in mlp_only_layers; a gated shared expert. */
function parseQwen2Moe(c: Fields): MoeModelConfig {
  const base = common(c, { ropeTheta: 10000, rmsNormEps: 1e-6, maxPositions: 32768, tie: false });
  const numExperts = c.int('num_experts', L.experts, 60, 0);
  const numExpertsPerTok = c.int('num_experts_per_tok', L.experts, 4);
  if (numExperts > 0) checkRouting(c, numExperts, numExpertsPerTok, 'num_experts');
  const step = c.int('decoder_sparse_step', L.int32, 1);
  const only = c.raw.mlp_only_layers ?? [];
  if (!Array.isArray(only) || !only.every((i) => Number.isInteger(i) && i >= 0 && i < base.numHiddenLayers))
    throw configError(c.where, `mlp_only_layers must be a list of layer indices in [0, ${base.numHiddenLayers}), got ${describe(only)}`);
  const dense = new Set<number>(only);
  const layerKinds = Array.from({ length: base.numHiddenLayers }, (_, i): LayerKind =>
    numExperts > 0 && !dense.has(i) && (i + 1) % step === 0 ? 'moe' : 'dense');
  return {
    modelType: 'qwen2_moe',
    ...base,
    intermediateSize: c.int('intermediate_size', L.width),
    attentionBias: true,
    attentionOutputBias: false,
    numExperts,
    numExpertsPerTok,
    moeIntermediateSize: c.int('moe_intermediate_size', L.width),
    normTopkProb: c.bool('norm_topk_prob', false),
    sharedExpertIntermediateSize: c.int('shared_expert_intermediate_size', L.width, 0, 0),
    sharedExpertGate: true,
    layerKinds,
  };
}

/** DeepSeek-MoE: dense for i < first_k_dense_replace, then MoE every moe_layer_freq layers; ungated shared experts. */
function parseDeepseek(c: Fields): MoeModelConfig {
  const base = common(c, { ropeTheta: 10000, rmsNormEps: 1e-6, maxPositions: 2048, tie: false });
  const numExperts = c.has('n_routed_experts') ? c.int('n_routed_experts', L.experts) : 0;
  const numExpertsPerTok = c.has('num_experts_per_tok') ? c.int('num_experts_per_tok', L.experts) : 0;
  if (numExperts > 0) {
    c.check(numExpertsPerTok > 0, 'num_experts_per_tok is required when n_routed_experts is set');
    checkRouting(c, numExperts, numExpertsPerTok, 'n_routed_experts');
  }
  const firstDense = c.int('first_k_dense_replace', L.int32, 0, 0);
  const freq = c.int('moe_layer_freq', L.int32, 1);
  const moeIntermediateSize = c.int('moe_intermediate_size', L.width, numExperts > 0 ? undefined : 1);
  const shared = c.has('n_shared_experts') ? c.int('n_shared_experts', L.experts, 0, 0) : 0;
  c.check(shared * moeIntermediateSize <= L.width, `n_shared_experts x moe_intermediate_size (${shared} x ${moeIntermediateSize}) must be at most ${L.width}`);
  const layerKinds = Array.from({ length: base.numHiddenLayers }, (_, i): LayerKind =>
    numExperts > 0 && i >= firstDense && i % freq === 0 ? 'moe' : 'dense');
  return {
    modelType: 'deepseek',
    ...base,
    intermediateSize: c.int('intermediate_size', L.width),
    attentionBias: c.bool('attention_bias', false),
    attentionOutputBias: c.bool('attention_bias', false),
    numExperts,
    numExpertsPerTok,
    moeIntermediateSize,
    normTopkProb: c.bool('norm_topk_prob', false),
    sharedExpertIntermediateSize: shared * moeIntermediateSize,
    sharedExpertGate: false,
    layerKinds,
  };
}

const PARSERS: Record<ModelType, (c: Fields) => MoeModelConfig> = { mixtral: parseMixtral, qwen2_moe: parseQwen2Moe, deepseek: parseDeepseek };

function rawConfig(source: unknown): { raw: Record<string, unknown>; where: string } {
  if (typeof source === 'string') {
    let text: string;
    try {
      text = fs.readFileSync(source, 'utf8');
    } catch (e) {
      throw fileError(source, 'cannot read config', e);
    }
    try {
      return { raw: checkObject(JSON.parse(text), source), where: source };
    } catch (e) {
      if (e instanceof MoeError) throw e;
      throw configError(source, `the JSON does not parse (${(e as Error).message})`);
    }
  }
  return { raw: checkObject(source, 'config'), where: 'config' };
}

function checkObject(v: unknown, where: string): Record<string, unknown> {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) throw configError(where, `must be a JSON object, got ${describe(v)}`);
  return v as Record<string, unknown>;
}

/**
 * Parses a Hugging Face config.json (a path or the parsed object) of a supported MoE family,
 * chosen by `model_type` (Mixtral when absent). MoeError ERR_CONFIG names the field and value.
 */
export function parseMoeConfig(source: string | Record<string, unknown>): MoeModelConfig {
  const { raw, where } = rawConfig(source);
  const type = raw.model_type ?? 'mixtral';
  if (typeof type !== 'string' || !Object.hasOwn(PARSERS, type))
    throw configError(where, `model_type ${describe(type)} is not supported (supported: ${Object.keys(PARSERS).join(', ')})`);
  return PARSERS[type as ModelType](new Fields(raw, where));
}

/** Parses a Mixtral config.json (a path or the parsed object); another model_type is an error. */
export function parseMixtralConfig(source: string | Record<string, unknown>): MixtralConfig {
  const { raw, where } = rawConfig(source);
  if (raw.model_type !== undefined && raw.model_type !== 'mixtral')
    throw configError(where, `model_type must be 'mixtral', got ${describe(raw.model_type)}`);
  return parseMixtral(new Fields(raw, where));
}
