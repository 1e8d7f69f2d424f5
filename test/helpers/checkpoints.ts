/**
 * Tiny checkpoints written on the fly: a config.json object, random weights, and a writer for
 * either expert layout, single-file or sharded; Mixtral, and Qwen2-MoE / DeepSeek-MoE (dense layers,
 * shared experts) in their Hugging Face names. The weights are kept, so a test can compare what
 * the loader returns with what was written.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import {
  decoderLayerTensors,
  MoeError,
  parseMixtralConfig,
  parseMoeConfig,
  tensor,
  writeSafetensors,
  writeShardedSafetensors,
  type ExpertLayout,
  type FloatType,
  type MixtralConfig,
  type MixtralGlobalWeights,
  type MixtralLayerWeights,
  type DecoderLayerWeights,
  type ModelGlobalWeights,
  type MoeModelConfig,
  type Tensor,
} from '../../lib/index';
import { randn } from './reference';

/** 2 layers, hidden 64, 4 experts of 48, top-2, 4 heads / 2 kv heads, vocab 97. */
export function tinyMixtralRaw(over: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    architectures: ['MixtralForCausalLM'],
    model_type: 'mixtral',
    hidden_size: 64,
    intermediate_size: 48,
    num_hidden_layers: 2,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    num_local_experts: 4,
    num_experts_per_tok: 2,
    vocab_size: 97,
    max_position_embeddings: 128,
    rms_norm_eps: 1e-5,
    rope_theta: 1e6,
    sliding_window: null,
    tie_word_embeddings: false,
    torch_dtype: 'float32',
    ...over,
  };
}

/** The Mixtral-8x7B config.json as published. */
export function mixtral8x7bRaw(): Record<string, unknown> {
  return {
    architectures: ['MixtralForCausalLM'],
    attention_dropout: 0.0,
    bos_token_id: 1,
    eos_token_id: 2,
    hidden_act: 'silu',
    hidden_size: 4096,
    initializer_range: 0.02,
    intermediate_size: 14336,
    max_position_embeddings: 32768,
    model_type: 'mixtral',
    num_attention_heads: 32,
    num_experts_per_tok: 2,
    num_hidden_layers: 32,
    num_key_value_heads: 8,
    num_local_experts: 8,
    output_router_logits: false,
    rms_norm_eps: 1e-5,
    rope_theta: 1e6,
    router_aux_loss_coef: 0.02,
    sliding_window: null,
    tie_word_embeddings: false,
    torch_dtype: 'bfloat16',
    transformers_version: '4.36.0.dev0',
    use_cache: true,
    vocab_size: 32000,
  };
}

export interface TinyWeights {
  config: MixtralConfig;
  globals: MixtralGlobalWeights;
  layers: MixtralLayerWeights[];
}

/** Random weights of a Mixtral config (seeded), in `dtype`: makeModelWeights. */
export function makeMixtralWeights(config: MixtralConfig, seed = 1, dtype: FloatType = 'float32'): TinyWeights {
  return makeModelWeights(config, seed, dtype) as TinyWeights;
}

/** Every tensor of the weights under its checkpoint name, in `layout`: modelCheckpointTensors. */
export function checkpointTensors(w: TinyWeights, layout: ExpertLayout): Record<string, Tensor> {
  return modelCheckpointTensors(w, layout);
}

export interface TinyCheckpointOptions {
  layout?: ExpertLayout;
  /** Shard size limit in bytes; undefined: one model.safetensors. */
  maxShardBytes?: number;
  dtype?: FloatType;
  raw?: Record<string, unknown>;
  /** Edit the tensors before writing (drop or reshape one). */
  edit?: (t: Record<string, Tensor>) => void;
  seed?: number;
}

/** Writes config.json and the weights into `dir`; returns the weights. */
export async function writeTinyMixtral(dir: string, o: TinyCheckpointOptions = {}): Promise<TinyWeights> {
  const raw = o.raw ?? tinyMixtralRaw();
  parseMixtralConfig(raw); // a Mixtral config, or the error here
  return (await writeTinyModel(dir, { ...o, raw })) as TinyWeights;
}

/** A fresh temporary directory; remove with fs.rmSync(dir, { recursive: true }). */
export function tmpDir(prefix = 'moe-ckpt-'): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

/**
 * Runs fn (sync or async) and checks it fails with a MoeError of `code` whose message matches
 * every pattern (strings are matched literally).
 */
export async function expectMoeError(fn: () => unknown, code: string, ...patterns: (string | RegExp)[]): Promise<Error> {
  let err: unknown;
  try {
    await fn();
  } catch (e) {
    err = e;
  }
  if (!(err instanceof MoeError)) throw new Error(`expected a MoeError ${code}, got ${err === undefined ? 'no error' : String((err as Error)?.stack ?? err)}`);
  if (err.code !== code) throw new Error(`expected code ${code}, got ${err.code}: ${err.message}`);
  for (const p of patterns)
    if (typeof p === 'string' ? !err.message.includes(p) : !p.test(err.message)) throw new Error(`message ${JSON.stringify(err.message)} does not contain ${String(p)}`);
  return err;
}

// ---- Qwen2-MoE and DeepSeek-MoE ----------------------------------------------------------------

/**
 * Qwen2-MoE, 4 layers alternating dense / MoE (decoder_sparse_step 2: layers 1 and 3 are MoE),
 * hidden 64, dense FFN 80, 6 experts of 32, top-2 without renormalising, a gated shared expert of
 * 48, 4 / 2 heads, vocab 97.
 */
export function tinyQwen2MoeRaw(over: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    architectures: ['Qwen2MoeForCausalLM'],
    model_type: 'qwen2_moe',
    hidden_size: 64,
    intermediate_size: 80,
    moe_intermediate_size: 32,
    shared_expert_intermediate_size: 48,
    num_experts: 6,
    num_experts_per_tok: 2,
    decoder_sparse_step: 2,
    mlp_only_layers: [],
    norm_topk_prob: false,
    num_hidden_layers: 4,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    vocab_size: 97,
    max_position_embeddings: 128,
    rms_norm_eps: 1e-6,
    rope_theta: 10000,
    use_sliding_window: false,
    sliding_window: 4096,
    tie_word_embeddings: false,
    torch_dtype: 'float32',
    ...over,
  };
}

/**
 * DeepSeek-MoE, 3 layers: layer 0 dense (first_k_dense_replace 1, FFN 96), layers 1-2 MoE with 8
 * routed experts of 24, top-3 without renormalising, 2 shared experts (one ungated FFN of 48),
 * 4 heads (no GQA), biases on q/k/v/o (attention_bias), vocab 97.
 */
export function tinyDeepseekRaw(over: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    architectures: ['DeepseekForCausalLM'],
    model_type: 'deepseek',
    hidden_size: 64,
    intermediate_size: 96,
    moe_intermediate_size: 24,
    n_routed_experts: 8,
    n_shared_experts: 2,
    num_experts_per_tok: 3,
    first_k_dense_replace: 1,
    moe_layer_freq: 1,
    norm_topk_prob: false,
    scoring_func: 'softmax',
    num_hidden_layers: 3,
    num_attention_heads: 4,
    num_key_value_heads: 4,
    vocab_size: 97,
    max_position_embeddings: 128,
    rms_norm_eps: 1e-6,
    rope_theta: 10000,
    attention_bias: true,
    tie_word_embeddings: false,
    torch_dtype: 'float32',
    ...over,
  };
}

export interface TinyModelWeights {
  config: MoeModelConfig;
  globals: ModelGlobalWeights;
  layers: DecoderLayerWeights[];
}

/** Random weights of any family's config (seeded), in `dtype`: `mlp` for dense layers, `moe` (+ shared experts) for MoE ones. */
export function makeModelWeights(config: MoeModelConfig, seed = 1, dtype: FloatType = 'float32'): TinyModelWeights {
  let s = seed * 1000;
  const t = (dims: number[]): Tensor => tensor(dtype, randn(dims.reduce((a, b) => a * b, 1), s++, 0.1), dims);
  const { hiddenSize: d, numExperts: E, vocabSize: V } = config;
  const q = config.numAttentionHeads * config.headDim;
  const kv = config.numKeyValueHeads * config.headDim;
  const swiglu = (f: number) => ({ w1: t([f, d]), w3: t([f, d]), w2: t([d, f]) });
  const embedTokens = t([V, d]);
  const globals = { embedTokens, norm: t([d]), lmHead: config.tieWordEmbeddings ? embedTokens : t([V, d]) };
  const layers = config.layerKinds.map((kind, index): DecoderLayerWeights => {
    const l: DecoderLayerWeights = {
      index,
      inputLayernorm: t([d]),
      postAttentionLayernorm: t([d]),
      attention: { qProj: t([q, d]), kProj: t([kv, d]), vProj: t([kv, d]), oProj: t([d, q]) },
    };
    if (config.attentionBias) Object.assign(l.attention, { qBias: t([q]), kBias: t([kv]), vBias: t([kv]) });
    if (config.attentionOutputBias) l.attention.oBias = t([d]);
    if (kind === 'dense') l.mlp = swiglu(config.intermediateSize);
    else {
      const f = config.moeIntermediateSize;
      // drawn router first, then every expert's w1, every w3, every w2 (the tests' seeds assume it)
      const gate = t([E, d]);
      const many = (dims: number[]) => Array.from({ length: E }, () => t(dims));
      l.moe = { gate, w1: many([f, d]), w3: many([f, d]), w2: many([d, f]) };
      if (config.sharedExpertIntermediateSize > 0)
        l.moe.sharedExperts = { ...swiglu(config.sharedExpertIntermediateSize), ...(config.sharedExpertGate ? { gate: t([1, d]) } : {}) };
    }
    return l;
  });
  return { config, globals, layers };
}

/** Every tensor of any family's weights under its checkpoint name, in `layout`. */
export function modelCheckpointTensors(w: TinyModelWeights, layout: ExpertLayout): Record<string, Tensor> {
  const out: Record<string, Tensor> = { 'model.embed_tokens.weight': w.globals.embedTokens as Tensor };
  for (const l of w.layers) Object.assign(out, decoderLayerTensors(w.config.modelType, l, layout));
  out['model.norm.weight'] = w.globals.norm;
  if (!w.config.tieWordEmbeddings) out['lm_head.weight'] = w.globals.lmHead as Tensor; // float in the tiny models
  return out;
}

/** Writes config.json (`o.raw`, required) and the weights of any family into `dir`; returns the weights. */
export async function writeTinyModel(dir: string, o: TinyCheckpointOptions & { raw: Record<string, unknown> }): Promise<TinyModelWeights> {
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(o.raw, null, 2));
  const w = makeModelWeights(parseMoeConfig(o.raw), o.seed ?? 1, o.dtype ?? 'float32');
  const tensors = modelCheckpointTensors(w, o.layout ?? 'per-expert');
  o.edit?.(tensors);
  if (o.maxShardBytes !== undefined) await writeShardedSafetensors(dir, tensors, { maxShardBytes: o.maxShardBytes });
  else await writeSafetensors(path.join(dir, 'model.safetensors'), tensors, { format: 'pt' });
  return w;
}
