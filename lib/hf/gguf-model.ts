/**
 * A GGUF file as a model of the package: llama.cpp's metadata keys turned into a MoeModelConfig,
 * its tensor names and ggml dim order mapped to the Hugging Face weights the layers take, and the
 * layers loaded one at a time (the same shape as MoeCheckpoint, so MixtralModel.load takes either).
 *
 * Architectures (`general.architecture`):
 *   llama with experts (Mixtral)  llama.expert_count > 0; every layer MoE, top-k renormalised
 *   qwen2moe (Qwen1.5/Qwen2-MoE)  routed experts, a sigmoid-gated shared expert, q/k/v biases
 * Others are MoeError ERR_CONFIG naming the architecture.
 *
 * Tensor names (blk.N. per layer; GGUF ne [in, out] is the [out, in] matrix here):
 *   token_embd [V,d]; output_norm [d]; output [V,d] (absent: tied to token_embd)
 *   attn_norm, ffn_norm [d]; attn_q [Hq·hd,d], attn_k/attn_v [Hkv·hd,d], attn_output [d,Hq·hd]; attn_{q,k,v}.bias (qwen2moe)
 *   ffn_gate_inp [E,d] (router); experts stacked: ffn_gate_exps / ffn_up_exps [E,f,d], ffn_down_exps [E,d,f];
 *     or, in older Mixtral files, one per expert: ffn_gate.M / ffn_up.M [f,d], ffn_down.M [d,f]
 *   qwen2moe shared expert: ffn_gate_shexp / ffn_up_shexp [fs,d], ffn_down_shexp [d,fs], ffn_gate_inp_shexp [d] or [1,d]
 *   a dense layer (qwen2moe only): ffn_gate / ffn_up [f,d], ffn_down [d,f]
 *
 * llama.cpp's converter permutes the rows of attn_q and attn_k for the llama architecture (its RoPE
 * pairs dims (2i, 2i+1) where Hugging Face's rotate_half pairs (i, i + hd/2)); `unpermuteQK` undoes
 * it, so the same RoPE gives the Hugging Face model's logits. qwen2moe files are not permuted.
 *
 * `modelTensor` is the one seam between a GGUF tensor and what the layers accept: float tensors
 * are cast to the load type; quantised ones (q8_0, q4_0, q4_k, q5_k, q6_k) go to the projections
 * and FFN matrices as they are (the layers run those blocks), and are dequantised for the
 * embeddings, the router and the LM head. Other ggml types (Q3_K, IQ*, ...) are ERR_UNSUPPORTED.
 */
import { describe, MoeError, typeError } from '../core/errors.js';
import { checkOptions } from '../core/options.js';
import { cast, DTYPE_BYTES, FLOAT_TYPES, type FloatType, type Tensor } from '../core/tensor.js';
import { dequantize, QUANT_TYPES, type QuantTensor } from '../core/quant.js';
import type { WeightTensor } from '../moe/experts.js';
import { parseMoeConfig, type LayerKind, type MoeModelConfig } from './config.js';
import { GgufFile, ggmlBytes, type GgufOpenOptions, type GgufTensor, type GgufTensorInfo } from './gguf.js';
import { type MemoryEstimate } from './params.js';
import type { DecoderLayerWeights, LoadProgress, MoeBlockWeights, ModelGlobalWeights } from './weights.js';

/** The architectures this package runs from GGUF. */
export const GGUF_ARCHITECTURES = ['llama', 'qwen2moe'] as const;

const blk = (i: number, s: string) => `blk.${i}.${s}.weight`;
const bias = (i: number, s: string) => `blk.${i}.${s}.bias`;

// ---- metadata -> config -------------------------------------------------------------------------------

function configError(file: GgufFile, msg: string): MoeError {
  return new MoeError(`${file.path}: ${msg}`, 'ERR_CONFIG');
}

/** An integer metadata value (any integer type), or `dflt`; ERR_CONFIG naming the key otherwise. */
function intKey(file: GgufFile, key: string, dflt?: number): number {
  const e = file.entry(key);
  if (e === undefined) {
    if (dflt === undefined) throw configError(file, `GGUF metadata '${key}' is required`);
    return dflt;
  }
  if (!['uint8', 'int8', 'uint16', 'int16', 'uint32', 'int32', 'uint64', 'int64'].includes(e.type) || typeof e.value !== 'number')
    throw configError(file, `GGUF metadata '${key}' must be an integer, got a ${e.type} ${describe(e.value)}`);
  return e.value;
}

/** f32 metadata as the shortest decimal that rounds to the same f32 (1e-5, not 9.99999974737875e-6). */
function shortestF32(v: number): number {
  for (let p = 1; p <= 9; p++) {
    const s = Number(v.toPrecision(p));
    if (Math.fround(s) === v) return s;
  }
  return v;
}

function floatKey(file: GgufFile, key: string, dflt?: number): number {
  const e = file.entry(key);
  if (e === undefined) {
    if (dflt === undefined) throw configError(file, `GGUF metadata '${key}' is required`);
    return dflt;
  }
  if ((e.type !== 'float32' && e.type !== 'float64') || typeof e.value !== 'number')
    throw configError(file, `GGUF metadata '${key}' must be a float, got a ${e.type} ${describe(e.value)}`);
  return e.type === 'float32' ? shortestF32(e.value) : e.value;
}

function boolKey(file: GgufFile, key: string, dflt: boolean): boolean {
  const e = file.entry(key);
  if (e === undefined) return dflt;
  if (e.type !== 'bool') throw configError(file, `GGUF metadata '${key}' must be a bool, got a ${e.type} ${describe(e.value)}`);
  return e.value as boolean;
}

/** The architecture of a GGUF file, checked: 'llama' (with experts) or 'qwen2moe'. */
export function ggufArchitecture(file: GgufFile): (typeof GGUF_ARCHITECTURES)[number] {
  const a = file.get('general.architecture');
  if (typeof a !== 'string') throw configError(file, `GGUF metadata 'general.architecture' is required (a string), got ${describe(a)}`);
  if (!(GGUF_ARCHITECTURES as readonly string[]).includes(a))
    throw configError(file, `architecture '${a}' is not supported from GGUF (supported: llama with experts, i.e. Mixtral; qwen2moe)`);
  if (a === 'llama' && intKey(file, 'llama.expert_count', 0) === 0)
    throw configError(file, "architecture 'llama' without experts (llama.expert_count is 0 or absent): a dense model, not a Mixture of Experts");
  return a as (typeof GGUF_ARCHITECTURES)[number];
}

/**
 * The model config of a GGUF file, from its metadata (and its tensors where the metadata is silent:
 * tied embeddings, biases, dense layers). Validated by the same rules as config.json (parseMoeConfig).
 */
export function ggufConfig(file: GgufFile): MoeModelConfig {
  const arch = ggufArchitecture(file);
  const k = (s: string) => `${arch}.${s}`;
  const d = intKey(file, k('embedding_length'));
  const layers = intKey(file, k('block_count'));
  const heads = intKey(file, k('attention.head_count'));
  const kvHeads = intKey(file, k('attention.head_count_kv'), heads);
  const headDim = intKey(file, k('attention.key_length'), file.has(k('rope.dimension_count')) ? intKey(file, k('rope.dimension_count')) : heads > 0 ? Math.floor(d / heads) : 0);
  const embd = file.hasTensor('token_embd.weight') ? file.info('token_embd.weight') : null;
  if (!embd) throw new MoeError(`${file.path}: tensor 'token_embd.weight' is missing`, 'ERR_TENSOR_MISSING');
  const vocab = embd.dims[0];
  const tokens = file.get('tokenizer.ggml.tokens');
  if (file.has(k('vocab_size')) && intKey(file, k('vocab_size')) !== vocab)
    throw configError(file, `${k('vocab_size')} is ${intKey(file, k('vocab_size'))} but token_embd has ${vocab} rows`);
  if (Array.isArray(tokens) && tokens.length > vocab) throw configError(file, `tokenizer.ggml.tokens has ${tokens.length} tokens but token_embd has only ${vocab} rows`);
  const stored = embd.type === 'float32' || embd.type === 'float16' || embd.type === 'bfloat16' ? embd.type : null;
  const common = {
    hidden_size: d,
    num_hidden_layers: layers,
    num_attention_heads: heads,
    num_key_value_heads: kvHeads,
    head_dim: headDim,
    vocab_size: vocab,
    max_position_embeddings: intKey(file, k('context_length'), 4096),
    rms_norm_eps: floatKey(file, k('attention.layer_norm_rms_epsilon'), 1e-5),
    rope_theta: floatKey(file, k('rope.freq_base'), 10000),
    tie_word_embeddings: !file.hasTensor('output.weight'),
    torch_dtype: stored,
  };
  let raw: Record<string, unknown>;
  if (arch === 'llama') {
    raw = {
      ...common,
      model_type: 'mixtral',
      intermediate_size: intKey(file, k('feed_forward_length')),
      num_local_experts: intKey(file, k('expert_count')),
      num_experts_per_tok: intKey(file, k('expert_used_count')),
      sliding_window: null,
    };
  } else {
    // dense layers are the ones with ffn_gate_inp absent
    const kinds: LayerKind[] = Array.from({ length: Math.min(layers, 1 << 16) }, (_, i) => (file.hasTensor(blk(i, 'ffn_gate_inp')) ? 'moe' : 'dense'));
    const dense = kinds.flatMap((kd, i) => (kd === 'dense' ? [i] : []));
    const expertFf = intKey(file, k('expert_feed_forward_length'), 0);
    raw = {
      ...common,
      model_type: 'qwen2_moe',
      intermediate_size: intKey(file, k('feed_forward_length'), expertFf || 1),
      moe_intermediate_size: expertFf || undefined,
      shared_expert_intermediate_size: file.hasTensor(blk(kinds.indexOf('moe'), 'ffn_up_shexp')) ? intKey(file, k('expert_shared_feed_forward_length')) : 0,
      num_experts: intKey(file, k('expert_count')),
      num_experts_per_tok: intKey(file, k('expert_used_count')),
      decoder_sparse_step: 1,
      mlp_only_layers: dense,
      norm_topk_prob: boolKey(file, k('expert_weights_norm'), false),
      use_sliding_window: false,
    };
  }
  try {
    return parseMoeConfig(raw);
  } catch (e) {
    if (e instanceof MoeError) throw configError(file, `the GGUF metadata gives a config that does not hold (${e.message.replace(/^config: /, '')})`);
    throw e;
  }
}

// ---- the q/k permutation ---------------------------------------------------------------------------

/**
 * Undoes llama.cpp's `permute(w, n_head)` of a q or k projection [heads·hd, in]: the converter
 * reorders each head's rows from (half, i) to (i, half), i < hd/2. Returns a new tensor.
 */
export function unpermuteQK<T extends Tensor | QuantTensor>(w: T, heads: number): T {
  return permuteRows(w, heads, false);
}

/** llama.cpp's permutation itself (the writer applies it, so llama.cpp reads our files right). */
export function permuteQK<T extends Tensor>(w: T, heads: number): T {
  return permuteRows(w, heads, true);
}

function permuteRows<T extends Tensor | QuantTensor>(w: T, heads: number, forward: boolean): T {
  const rows = w.dims[0];
  // elements of a row, or its bytes for quantised blocks (each row is whole blocks)
  const cols = w.data.length / rows;
  const hd = rows / heads;
  if (!Number.isInteger(hd) || hd % 2 !== 0) throw typeError(`a q/k projection of ${rows} rows does not split into ${heads} heads of an even size`);
  const half = hd / 2;
  const src = w.data;
  const out = new (src.constructor as new (n: number) => typeof src)(src.length);
  for (let h = 0; h < heads; h++)
    for (let two = 0; two < 2; two++)
      for (let i = 0; i < half; i++) {
        const hf = h * hd + two * half + i; // Hugging Face row
        const gg = h * hd + 2 * i + two; // llama.cpp row
        const [from, to] = forward ? [hf, gg] : [gg, hf];
        out.set(src.subarray(from * cols, (from + 1) * cols) as never, to * cols);
      }
  return { type: w.type, data: out, dims: [...w.dims] } as unknown as T;
}

// ---- the seam: a GGUF tensor to what the layers take ---------------------------------------------------

const QUANTISED_WEIGHT = /(\.(attn_(q|k|v|output)|ffn_(gate|up|down)(_exps|_shexp)?(\.\d+)?)|^output|^token_embd)\.weight$/;

/**
 * Whether the model takes GGUF tensor `name` in its quantised blocks: the attention projections,
 * the FFN matrices (experts, shared experts, dense FFNs), the LM head (`output`) and the token
 * embeddings (their rows dequantised as they are looked up), as llama.cpp runs them. The rest (the
 * router, norms) is dequantised to the load type.
 */
export function takesQuantised(name: string): boolean {
  return QUANTISED_WEIGHT.test(name);
}

const isFloatType = (t: string | null) => t === 'float32' || t === 'float16' || t === 'bfloat16';

/**
 * A GGUF tensor in the form the layers take (MoeLayer, Linear, the norms): a float tensor cast to
 * `dtype` (the same array when it already is); a quantised one as it is (a view of the file's
 * blocks) where `takesQuantised(name)`, else dequantised to `dtype`.
 */
export async function modelTensor(file: GgufFile, name: string, t: GgufTensor, dtype: FloatType): Promise<WeightTensor> {
  if (isFloatType(t.type)) return cast(t as Tensor, dtype);
  if (!(QUANT_TYPES as readonly string[]).includes(t.type))
    throw new MoeError(`${file.path}: tensor '${name}' is ${String(t.type).toUpperCase()}, which this package cannot run`, 'ERR_UNSUPPORTED');
  return takesQuantised(name) ? (t as QuantTensor) : dequantize(t as QuantTensor, { type: dtype });
}

// ---- expected tensors --------------------------------------------------------------------------------

interface Spec {
  name: string;
  dims: number[];
  /** Accepted alternative dims (ffn_gate_inp_shexp: [d] or [1,d]). */
  alt?: number[];
}

/** 'stacked' (ffn_*_exps [E,...]) or 'per-expert' (ffn_gate.M, older Mixtral files). */
export type GgufExpertLayout = 'stacked' | 'per-expert';

function layerSpecs(c: MoeModelConfig, i: number, layout: GgufExpertLayout): Spec[] {
  const d = c.hiddenSize;
  const q = c.numAttentionHeads * c.headDim;
  const kv = c.numKeyValueHeads * c.headDim;
  const s: Spec[] = [
    { name: blk(i, 'attn_norm'), dims: [d] },
    { name: blk(i, 'attn_q'), dims: [q, d] },
    { name: blk(i, 'attn_k'), dims: [kv, d] },
    { name: blk(i, 'attn_v'), dims: [kv, d] },
    { name: blk(i, 'attn_output'), dims: [d, q] },
    { name: blk(i, 'ffn_norm'), dims: [d] },
  ];
  if (c.attentionBias) s.push({ name: bias(i, 'attn_q'), dims: [q] }, { name: bias(i, 'attn_k'), dims: [kv] }, { name: bias(i, 'attn_v'), dims: [kv] });
  if (c.layerKinds[i] === 'dense') {
    const f = c.intermediateSize;
    s.push({ name: blk(i, 'ffn_gate'), dims: [f, d] }, { name: blk(i, 'ffn_up'), dims: [f, d] }, { name: blk(i, 'ffn_down'), dims: [d, f] });
    return s;
  }
  const E = c.numExperts;
  const f = c.moeIntermediateSize;
  s.push({ name: blk(i, 'ffn_gate_inp'), dims: [E, d] });
  if (layout === 'stacked')
    s.push({ name: blk(i, 'ffn_gate_exps'), dims: [E, f, d] }, { name: blk(i, 'ffn_up_exps'), dims: [E, f, d] }, { name: blk(i, 'ffn_down_exps'), dims: [E, d, f] });
  else
    for (let e = 0; e < E; e++)
      s.push({ name: `blk.${i}.ffn_gate.${e}.weight`, dims: [f, d] }, { name: `blk.${i}.ffn_up.${e}.weight`, dims: [f, d] }, { name: `blk.${i}.ffn_down.${e}.weight`, dims: [d, f] });
  const fs = c.sharedExpertIntermediateSize;
  if (fs > 0) {
    s.push({ name: blk(i, 'ffn_gate_shexp'), dims: [fs, d] }, { name: blk(i, 'ffn_up_shexp'), dims: [fs, d] }, { name: blk(i, 'ffn_down_shexp'), dims: [d, fs] });
    if (c.sharedExpertGate) s.push({ name: blk(i, 'ffn_gate_inp_shexp'), dims: [d], alt: [1, d] });
  }
  return s;
}

function globalSpecs(c: MoeModelConfig): Spec[] {
  const s: Spec[] = [
    { name: 'token_embd.weight', dims: [c.vocabSize, c.hiddenSize] },
    { name: 'output_norm.weight', dims: [c.hiddenSize] },
  ];
  if (!c.tieWordEmbeddings) s.push({ name: 'output.weight', dims: [c.vocabSize, c.hiddenSize] });
  return s;
}

const same = (a: readonly number[], b: readonly number[]) => a.length === b.length && a.every((x, i) => x === b[i]);

function checkSpec(file: GgufFile, s: Spec): GgufTensorInfo {
  if (!file.hasTensor(s.name)) throw new MoeError(`${file.path}: tensor '${s.name}' is missing (expected [${s.dims.join(',')}] from the GGUF metadata)`, 'ERR_TENSOR_MISSING');
  const info = file.info(s.name);
  if (!same(info.dims, s.dims) && !(s.alt && same(info.dims, s.alt)))
    throw new MoeError(`${file.path}: tensor '${s.name}' has dims [${info.dims.join(',')}] (GGUF ne [${info.ne.join(',')}]), expected [${s.dims.join(',')}] from the GGUF metadata`, 'ERR_TENSOR_SHAPE');
  if (info.type === null)
    throw new MoeError(`${file.path}: tensor '${s.name}' has ggml type ${info.typeName}, which this package does not load (F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q5_K, Q6_K)`, 'ERR_TENSOR_DTYPE');
  return info;
}

// ---- the checkpoint ----------------------------------------------------------------------------------

export interface GgufOpenModelOptions extends GgufOpenOptions {
  /** Load the float weights as this type. Default: the type of the token embeddings when float, else float32. */
  dtype?: FloatType;
  /** Called after each tensor is read, with counts over the whole model. */
  onProgress?: (p: LoadProgress) => void;
}

/**
 * A GGUF model file opened for loading: the config from its metadata, every tensor the config
 * implies checked (present, dims, a loadable type) before anything is read, then globals and
 * layers one at a time. With the file mapped, a float tensor already of the load type is a view of
 * the mapping (no copy); after a layer is packed, `layers()` drops its pages from the process.
 */
export class GgufCheckpoint {
  readonly file: GgufFile;
  readonly config: MoeModelConfig;
  readonly architecture: string;
  readonly layout: GgufExpertLayout;
  /** The type the float weights load as. */
  readonly dtype: FloatType;
  /** Bytes (as stored) of every tensor the model needs, and their count. */
  readonly bytesTotal: number;
  readonly tensorsTotal: number;
  readonly #onProgress: ((p: LoadProgress) => void) | undefined;
  #bytesLoaded = 0;
  #tensorsLoaded = 0;
  readonly #owned = new WeakSet<object>();

  private constructor(file: GgufFile, o: Record<string, unknown>) {
    if (o.dtype !== undefined && !(FLOAT_TYPES as readonly unknown[]).includes(o.dtype))
      throw typeError(`options.dtype must be one of ${FLOAT_TYPES.map((t) => `'${t}'`).join(', ')}, got ${describe(o.dtype)}`);
    if (o.onProgress !== undefined && typeof o.onProgress !== 'function') throw typeError(`options.onProgress must be a function, got ${describe(o.onProgress)}`);
    this.file = file;
    this.architecture = ggufArchitecture(file);
    this.config = ggufConfig(file);
    const first = this.config.layerKinds.indexOf('moe');
    this.layout = first >= 0 && !file.hasTensor(blk(first, 'ffn_gate_exps')) && file.hasTensor(`blk.${first}.ffn_gate.0.weight`) ? 'per-expert' : 'stacked';
    const embd = file.info('token_embd.weight').type;
    this.dtype = (o.dtype as FloatType | undefined) ?? (embd === 'float16' || embd === 'bfloat16' ? embd : 'float32');
    this.#onProgress = o.onProgress as GgufOpenModelOptions['onProgress'];
    let bytes = 0;
    let count = 0;
    for (const s of this.#specs()) {
      bytes += checkSpec(file, s).byteLength;
      count++;
    }
    this.bytesTotal = bytes;
    this.tensorsTotal = count;
  }

  static async open(path: string, options?: GgufOpenModelOptions): Promise<GgufCheckpoint> {
    const o = checkOptions(options);
    const file = await GgufFile.open(path, { mmap: o.mmap as GgufOpenOptions['mmap'] });
    try {
      return new GgufCheckpoint(file, o);
    } catch (e) {
      file.close();
      throw e;
    }
  }

  static openSync(path: string, options?: GgufOpenModelOptions): GgufCheckpoint {
    const o = checkOptions(options);
    const file = GgufFile.openSync(path, { mmap: o.mmap as GgufOpenOptions['mmap'] });
    try {
      return new GgufCheckpoint(file, o);
    } catch (e) {
      file.close();
      throw e;
    }
  }

  get numLayers(): number {
    return this.config.numHiddenLayers;
  }

  *#specs(): Generator<Spec> {
    yield* globalSpecs(this.config);
    for (let i = 0; i < this.config.numHiddenLayers; i++) yield* layerSpecs(this.config, i, this.layout);
  }

  /** Names in the file that the model does not use (rope_freqs, extra tensors). */
  unusedTensors(): string[] {
    const used = new Set<string>();
    for (const s of this.#specs()) used.add(s.name);
    return this.file.names().filter((n) => !used.has(n));
  }

  /**
   * Memory the model needs: float weights at `dtype` (default: the load type), quantised ones at
   * their size in the file, and the KV caches of `maxSeq` positions in `kvType` (default float32).
   */
  estimateMemory(options?: { dtype?: FloatType; kvType?: FloatType; maxSeq?: number }): MemoryEstimate {
    const o = checkOptions(options);
    const dtype = (o.dtype as FloatType | undefined) ?? this.dtype;
    const kvDtype = (o.kvType as FloatType | undefined) ?? 'float32';
    const c = this.config;
    const contextLength = (o.maxSeq as number | undefined) ?? Math.min(c.maxPositionEmbeddings, 4096);
    let weightsBytes = 0;
    let ffnBytes = 0;
    for (const s of this.#specs()) {
      const info = this.file.info(s.name);
      const kept = !isFloatType(info.type) && info.type !== null && takesQuantised(s.name) ? ggmlBytes(info.type, info.elements) : info.elements * DTYPE_BYTES[dtype];
      weightsBytes += kept;
      if (/\.ffn_(gate|up|down)(_exps|_shexp)?(\.\d+)?\.weight$/.test(s.name)) ffnBytes += kept;
    }
    // tied embeddings: the LM head is a second packed copy of token_embd
    if (c.tieWordEmbeddings) weightsBytes += c.vocabSize * c.hiddenSize * DTYPE_BYTES[dtype];
    const kvCacheBytes = 2 * c.numHiddenLayers * c.numKeyValueHeads * c.headDim * contextLength * DTYPE_BYTES[kvDtype];
    return { dtype, kvDtype, contextLength, batch: 1, ffnBytes, weightsBytes, kvCacheBytes, totalBytes: weightsBytes + kvCacheBytes };
  }

  async loadGlobals(): Promise<ModelGlobalWeights> {
    const embedTokens = await this.#read('token_embd.weight');
    const norm = await this.#readFloat('output_norm.weight');
    const lmHead = this.config.tieWordEmbeddings ? embedTokens : await this.#read('output.weight');
    return { embedTokens, norm, lmHead };
  }

  /**
   * Whether `t` is a tensor this checkpoint made for the model alone: a copy converted to the load
   * type (dequantised, cast), or a quantised view of the mapped file's blocks. Nothing else writes
   * it, so a model may keep it as it is instead of copying it.
   */
  owns(t: object): boolean {
    return this.#owned.has(t);
  }

  /** Loads decoder layer i (0-based) in the Hugging Face form (`moe` or `mlp` by its kind). */
  async loadLayer(i: number): Promise<DecoderLayerWeights> {
    const c = this.config;
    if (typeof i !== 'number' || !Number.isInteger(i) || i < 0 || i >= c.numHiddenLayers)
      throw Object.assign(new RangeError(`layer index must be an integer in [0, ${c.numHiddenLayers}), got ${describe(i)}`), { code: 'ERR_OUT_OF_RANGE' });
    const r = (s: string) => this.#read(blk(i, s));
    let qProj = await r('attn_q');
    let kProj = await r('attn_k');
    if (this.architecture === 'llama') {
      qProj = unpermuteQK(qProj, c.numAttentionHeads);
      kProj = unpermuteQK(kProj, c.numKeyValueHeads);
    }
    const out: DecoderLayerWeights = {
      index: i,
      inputLayernorm: await this.#readFloat(blk(i, 'attn_norm')),
      postAttentionLayernorm: await this.#readFloat(blk(i, 'ffn_norm')),
      attention: { qProj, kProj, vProj: await r('attn_v'), oProj: await r('attn_output') },
    };
    if (c.attentionBias) {
      out.attention.qBias = await this.#readFloat(bias(i, 'attn_q'));
      out.attention.kBias = await this.#readFloat(bias(i, 'attn_k'));
      out.attention.vBias = await this.#readFloat(bias(i, 'attn_v'));
    }
    if (c.layerKinds[i] === 'dense') {
      out.mlp = { w1: await r('ffn_gate'), w3: await r('ffn_up'), w2: await r('ffn_down') };
      return out;
    }
    const E = c.numExperts;
    const ids = [...Array(E).keys()];
    let moe: MoeBlockWeights;
    if (this.layout === 'stacked') {
      // expert e's [rows, cols] of a stacked [E, rows, cols] (elements, or bytes of whole blocks)
      const split = (t: WeightTensor) => {
        const [, rows, cols] = t.dims;
        const per = t.data.length / E;
        return ids.map((e) => ({ type: t.type, data: t.data.subarray(e * per, (e + 1) * per), dims: [rows, cols] }) as WeightTensor);
      };
      moe = { gate: await this.#readFloat(blk(i, 'ffn_gate_inp')), w1: split(await r('ffn_gate_exps')), w3: split(await r('ffn_up_exps')), w2: split(await r('ffn_down_exps')) };
    } else {
      const each = async (s: string) => {
        const list: WeightTensor[] = [];
        for (const e of ids) list.push(await this.#read(`blk.${i}.${s}.${e}.weight`));
        return list;
      };
      moe = { gate: await this.#readFloat(blk(i, 'ffn_gate_inp')), w1: await each('ffn_gate'), w3: await each('ffn_up'), w2: await each('ffn_down') };
    }
    if (c.sharedExpertIntermediateSize > 0) {
      moe.sharedExperts = { w1: await r('ffn_gate_shexp'), w3: await r('ffn_up_shexp'), w2: await r('ffn_down_shexp') };
      if (c.sharedExpertGate) {
        const g = await this.#readFloat(blk(i, 'ffn_gate_inp_shexp'));
        moe.sharedExperts.gate = { ...g, dims: [1, c.hiddenSize] } as Tensor;
      }
    }
    out.moe = moe;
    return out;
  }

  /**
   * The decoder layers in order, each read when asked for. When the iteration resumes (the caller
   * has packed the layer), the layer's pages are dropped from the process: the packed copy is
   * what stays resident.
   */
  async *layers(): AsyncGenerator<DecoderLayerWeights, void, undefined> {
    for (let i = 0; i < this.config.numHiddenLayers; i++) {
      yield await this.loadLayer(i);
      this.releaseLayer(i);
    }
  }

  /**
   * Throws what loading would throw at the first tensor the model cannot run (a ggml type the
   * package does not carry: ERR_TENSOR_DTYPE, as GgufFile.read), before anything is read.
   */
  checkRunnable(): void {
    for (const s of this.#specs()) {
      const info = this.file.info(s.name);
      if (info.type === null)
        throw new MoeError(
          `${this.file.path}: tensor '${s.name}' has ggml type ${info.typeName}, which this package does not load (F32, F16, BF16, ${QUANT_TYPES.map((q) => q.toUpperCase()).join(', ')})`,
          'ERR_TENSOR_DTYPE',
        );
    }
  }

  /** Drops layer i's mapped pages from the process (they were packed): see GgufFile.advise. */
  releaseLayer(i: number): void {
    for (const s of layerSpecs(this.config, i, this.layout)) this.file.advise(s.name, 'dontneed');
  }

  /** Drops the globals' mapped pages (after the model packed or copied them). */
  releaseGlobals(): void {
    for (const s of globalSpecs(this.config)) this.file.advise(s.name, 'dontneed');
  }

  close(): void {
    this.file.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }

  /** A tensor the layers take as float (modelTensor dequantises it when quantised). */
  async #readFloat(name: string): Promise<Tensor> {
    return (await this.#read(name)) as Tensor;
  }

  async #read(name: string): Promise<WeightTensor> {
    const raw = await this.file.read(name);
    const t = await modelTensor(this.file, name, raw, this.dtype);
    if (t.data.buffer !== raw.data.buffer || (this.file.mapped && t === raw && !isFloatType(raw.type))) this.#owned.add(t);
    const info = this.file.info(name);
    this.#bytesLoaded += info.byteLength;
    this.#tensorsLoaded++;
    this.#onProgress?.({ bytesLoaded: this.#bytesLoaded, bytesTotal: this.bytesTotal, tensorsLoaded: this.#tensorsLoaded, tensorsTotal: this.tensorsTotal, name });
    return t;
  }
}
