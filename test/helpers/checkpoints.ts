/**
 * Tiny Mixtral checkpoints written on the fly: a config.json object, random weights, and a writer
 * for either expert layout, single-file or sharded. The weights are kept, so a test can compare
 * what the loader returns with what was written.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import {
  mixtralLayerTensors,
  MoeError,
  parseMixtralConfig,
  tensor,
  writeSafetensors,
  writeShardedSafetensors,
  type ExpertLayout,
  type FloatType,
  type MixtralConfig,
  type MixtralGlobalWeights,
  type MixtralLayerWeights,
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

/** Random weights of a config (seeded), in `dtype`. */
export function makeMixtralWeights(config: MixtralConfig, seed = 1, dtype: FloatType = 'float32'): TinyWeights {
  let s = seed * 1000;
  const t = (dims: number[]): Tensor => tensor(dtype, randn(dims.reduce((a, b) => a * b, 1), s++, 0.1), dims);
  const { hiddenSize: d, intermediateSize: f, numExperts: E, vocabSize: V } = config;
  const q = config.numAttentionHeads * config.headDim;
  const kv = config.numKeyValueHeads * config.headDim;
  const embedTokens = t([V, d]);
  const globals = { embedTokens, norm: t([d]), lmHead: config.tieWordEmbeddings ? embedTokens : t([V, d]) };
  const layers = Array.from({ length: config.numHiddenLayers }, (_, index) => ({
    index,
    inputLayernorm: t([d]),
    postAttentionLayernorm: t([d]),
    attention: { qProj: t([q, d]), kProj: t([kv, d]), vProj: t([kv, d]), oProj: t([d, q]) },
    moe: {
      gate: t([E, d]),
      w1: Array.from({ length: E }, () => t([f, d])),
      w3: Array.from({ length: E }, () => t([f, d])),
      w2: Array.from({ length: E }, () => t([d, f])),
    },
  }));
  return { config, globals, layers };
}

/** Every tensor of the weights under its checkpoint name, in `layout`. */
export function checkpointTensors(w: TinyWeights, layout: ExpertLayout): Record<string, Tensor> {
  const out: Record<string, Tensor> = { 'model.embed_tokens.weight': w.globals.embedTokens };
  for (const l of w.layers) Object.assign(out, mixtralLayerTensors(l, layout));
  out['model.norm.weight'] = w.globals.norm;
  if (!w.config.tieWordEmbeddings) out['lm_head.weight'] = w.globals.lmHead;
  return out;
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
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(raw, null, 2));
  const w = makeMixtralWeights(parseMixtralConfig(raw), o.seed ?? 1, o.dtype ?? 'float32');
  const tensors = checkpointTensors(w, o.layout ?? 'per-expert');
  o.edit?.(tensors);
  if (o.maxShardBytes !== undefined) await writeShardedSafetensors(dir, tensors, { maxShardBytes: o.maxShardBytes });
  else await writeSafetensors(path.join(dir, 'model.safetensors'), tensors, { format: 'pt' });
  return w;
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
