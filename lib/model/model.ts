/**
 * Decoder blocks and whole models of Mixtral, Qwen2-MoE and DeepSeek-MoE, composed from the native
 * ops (lib/model/primitives.ts) and the FFN layers (lib/moe/layers.ts, chosen per layer by lib/model/block-ffn.ts). Thin:
 * the classes hold packed weights, KV caches and scratch tensors, and call ops; no math happens
 * here beyond shapes.
 *
 *   MixtralBlock   h += o_proj(attention(rope(q,k), v; KV cache, sliding window)) of rmsNorm(h)
 *   (DecoderBlock) h += ffn(rmsNorm(h))                                     (h: [T,d] float32)
 *                  ffn: the MoE layer (+ shared experts) or a dense SwiGLU FFN, by config.layerKinds
 *   MixtralModel   embed_tokens -> blocks -> norm -> lm_head: token ids [T] -> logits [T,V] float32
 *   (MoeModel)
 *
 * The residual stream, q/k/v and logits are float32 whatever the weight type; the KV caches are
 * float32 unless `kvType` says otherwise. `backend` places the whole model: on 'cpu' the tensors
 * are host tensors; on a CUDA backend every weight, KV cache and activation is on the device
 * (DeviceTensor), the ops enqueue on one stream, and only the logits (forward) or the sampled ids
 * (generate) and the routing counts come back to the host. One model holds one sequence (one KV
 * cache per block): calls on a model must not overlap.
 */
import { quantizeOption, type QuantizeType } from '../core/quant.js';
import { backendInfo, resolveBackend, type BackendName, type ResolvedBackend } from '../core/backend.js';
import { createBlockFfn, NO_EXPERTS, type BlockFfn } from './block-ffn.js';
import { type LayerKind, type MoeModelConfig } from '../hf/config.js';
import { DeviceTensor } from '../core/device.js';
import { describe, MoeError, rangeError, typeError } from '../core/errors.js';
import { type DenseFfn, type MoeLayer } from '../moe/layers.js';
import { add, attention, embedding, KvCache, Linear, rmsNorm, rope, sample, type AnyTensor } from './primitives.js';
import { boolOption, checkOptions, intOption } from '../core/options.js';
import { checkMemory, estimateMemory, type MemoryEstimate } from '../hf/params.js';
import { cast, checkTensor, FLOAT_TYPES, type FloatType, type Tensor, zeros } from '../core/tensor.js';
import { MoeCheckpoint, type DecoderLayerWeights, type LoadProgress, type ModelGlobalWeights } from '../hf/weights.js';

/** Options shared by blocks and models. */
export interface MixtralRuntimeOptions {
  /**
   * Where the model runs ('auto' default: CUDA when a device is available, else the CPU). On a CUDA
   * backend all weights, caches and activations live on the device.
   */
  backend?: BackendName;
  /** Positions each KV cache holds (the longest sequence). Default min(max_position_embeddings, 4096). */
  maxSeq?: number;
  /** Element type of the KV caches. Default 'float32'. */
  kvType?: FloatType;
  /**
   * Quantise the FFN weights (routed and shared experts, dense FFNs) as each layer is packed:
   * 'q8_0', 'q4_0' or 'q4_k'. With `load`, tensor by tensor as the checkpoint is read, so the peak
   * memory stays near the quantised size plus one layer. Default: as given.
   */
  quantize?: QuantizeType;
  /** Quantise the attention projections and the LM head too, to this format. Default: as given. */
  quantizeLinear?: QuantizeType;
}

const DEFAULT_MAX_SEQ = 4096;

/** The same data with other dims (no copy), on the host or the device. */
function view<T extends AnyTensor>(t: T, dims: number[]): T {
  if (t instanceof DeviceTensor) return t.reshape(dims) as T;
  return { type: t.type, data: (t as Tensor).data, dims } as unknown as T;
}

/** Where a model's tensors live: the host, or the device of a CUDA backend. */
type Place = { device: false } | { device: true; backend: ResolvedBackend };

function placeOf(backend: BackendName | undefined): Place {
  const r = resolveBackend(backend ?? 'auto');
  return r === 'cpu' ? { device: false } : { device: true, backend: r };
}

/** A zeroed float32 activation tensor of the place. */
function activation(place: Place, dims: number[]): AnyTensor {
  return place.device ? DeviceTensor.zeros('float32', dims, { backend: place.backend }) : zeros('float32', dims);
}

/**
 * A copy of a host tensor kept by a layer, on the place (on a device the upload is the copy). On the
 * host the copy is an op's output (the embedding of every row), so that it lives in the package's
 * own memory: async ops then read it in place, where a JS array would be copied by every call that
 * reads it (the embedding table: a 65 MB copy, and its page faults, per decode step).
 */
async function keep(place: Place, t: Tensor): Promise<AnyTensor> {
  if (place.device) return DeviceTensor.from(t, { backend: place.backend });
  const cols = t.dims[t.dims.length - 1] ?? 0, rows = cols ? t.data.length / cols : 0;
  if (rows === 0 || rows > 2 ** 31 - 1) return { type: t.type, data: t.data.slice(), dims: [...t.dims] } as Tensor;
  const ids = zeros('int32', [rows]);
  for (let i = 0; i < rows; i++) ids.data[i] = i;
  const copy = await embedding({ type: t.type, data: t.data, dims: [rows, cols] } as Tensor, ids, { outType: t.type as FloatType });
  return { type: t.type, data: (copy as Tensor).data, dims: [...t.dims] } as Tensor;
}

const bytesOf = (t: AnyTensor) => (t instanceof DeviceTensor ? t.bytes : (t as Tensor).data.byteLength);
const release = (t: AnyTensor | undefined | null) => {
  if (t instanceof DeviceTensor) t.dispose();
};

/** The scratch tensors of one forward of T tokens; a decode loop (T = 1) reuses one set. */
class Workspace {
  readonly T: number;
  readonly positions: Tensor<'int32'>;
  /** On a device: the positions, uploaded once per forward (setPositions) for every layer's rope. */
  readonly positionsDevice: DeviceTensor<'int32'> | null;
  readonly normed: AnyTensor;
  readonly q: AnyTensor;
  readonly k: AnyTensor;
  readonly v: AnyTensor;
  readonly attn: AnyTensor;
  readonly proj: AnyTensor;

  constructor(c: MoeModelConfig, T: number, place: Place) {
    const { hiddenSize: d, numAttentionHeads: hq, numKeyValueHeads: hkv, headDim: hd } = c;
    this.T = T;
    this.positions = zeros('int32', [T]);
    this.positionsDevice = place.device ? DeviceTensor.zeros('int32', [T], { backend: place.backend }) : null;
    this.normed = activation(place, [T, d]);
    this.q = activation(place, [T, hq * hd]);
    this.k = activation(place, [T, hkv * hd]);
    this.v = activation(place, [T, hkv * hd]);
    this.attn = activation(place, [T, hq, hd]);
    this.proj = activation(place, [T, d]);
  }

  /** Frees the device tensors now (host ones are left to the GC). */
  dispose(): void {
    for (const t of [this.normed, this.q, this.k, this.v, this.attn, this.proj, this.positionsDevice]) release(t);
  }

  /** Positions start .. start+T-1 (on the device too, for a device model). */
  async setPositions(start: number): Promise<void> {
    const p = this.positions.data;
    for (let t = 0; t < p.length; t++) p[t] = start + t;
    await this.positionsDevice?.copyFrom(this.positions);
  }

}

function checkAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw abortError(signal);
}

function abortError(signal: AbortSignal): MoeError {
  const e = new MoeError('the operation was aborted', 'ERR_ABORTED');
  e.name = 'AbortError';
  (e as { cause?: unknown }).cause = signal.reason;
  return e;
}

function checkSignal(v: unknown): AbortSignal | undefined {
  if (v === undefined) return undefined;
  if (!(v instanceof AbortSignal)) throw typeError(`options.signal must be an AbortSignal, got ${describe(v)}`);
  return v;
}

function floatTypeOption(o: Record<string, unknown>, key: string, dflt: FloatType): FloatType {
  const v = o[key] ?? dflt;
  if (!(FLOAT_TYPES as readonly unknown[]).includes(v))
    throw typeError(`options.${key} must be one of ${FLOAT_TYPES.map((t) => `'${t}'`).join(', ')}, got ${describe(v)}`);
  return v as FloatType;
}

const MODEL_TYPES: readonly string[] = ['mixtral', 'qwen2_moe', 'deepseek'];

/** A config from parseMoeConfig / parseMixtralConfig (any supported family). */
function checkConfig(config: unknown): MoeModelConfig {
  const c = config as MoeModelConfig | null | undefined;
  if (!MODEL_TYPES.includes(c?.modelType as string) || !Array.isArray(c?.layerKinds) || c.layerKinds.length !== c.numHiddenLayers)
    throw typeError(`config must be a MoeModelConfig (parseMoeConfig or parseMixtralConfig), got ${describe(c?.modelType ?? config)}`);
  return c;
}

function runtimeOptions(config: MoeModelConfig, options: unknown) {
  const o = checkOptions(options);
  const maxSeq = intOption(o, 'maxSeq', Math.min(config.maxPositionEmbeddings, DEFAULT_MAX_SEQ), 1, 1 << 24);
  const quantize = quantizeOption(o);
  const quantizeLinear = quantizeOption({ quantize: o.quantizeLinear }, 'options.quantizeLinear');
  return {
    o, maxSeq, kvType: floatTypeOption(o, 'kvType', 'float32'), backend: o.backend as BackendName | undefined, place: placeOf(o.backend as BackendName | undefined),
    quantize, quantizeLinear,
  };
}

// ---- block -------------------------------------------------------------------------------------------

export interface BlockForwardOptions {
  /** Position of the first token; default the KV cache's length (append). 0 starts a new sequence. */
  startPos?: number;
  /** Update x in place (x must be float32) instead of returning a fresh tensor. Default false. */
  inPlace?: boolean;
}

export interface BlockOutput {
  /** [T,d] float32. */
  output: Tensor<'float32'>;
  /** [E] tokens the MoE layer routed to each expert in this call; [0] (no experts) for a dense block. */
  tokensPerExpert: Tensor<'int32'>;
}

/**
 * One decoder layer with its KV cache: input RMSNorm, q/k/v projections, rotary embedding (the
 * config's rope_theta), causal grouped-query attention (sliding window from the config), o
 * projection, residual add, post-attention RMSNorm, the FFN, residual add. The FFN follows
 * `config.layerKinds[index]`: the sparse MoE layer (with the shared experts the config declares,
 * top-k weights renormalised when `normTopkProb`) or a dense SwiGLU FFN. Every Mixtral layer is MoE.
 */
export class MixtralBlock {
  readonly index: number;
  readonly config: MoeModelConfig;
  readonly cache: KvCache;
  /** 'moe' or 'dense': which FFN the block has. */
  readonly kind: LayerKind;
  /** The FFN: `ffn.moe` or `ffn.dense`. */
  readonly ffn: BlockFfn;
  /** The MoE layer of an MoE block; null in a dense block. */
  readonly moe: MoeLayer | null;
  /** The dense FFN of a dense block; null in an MoE block. */
  readonly dense: DenseFfn | null;
  /** @internal where the block's tensors live */
  readonly place: Place;
  readonly #inputNorm: AnyTensor;
  readonly #postNorm: AnyTensor;
  readonly #wq: Linear;
  readonly #wk: Linear;
  readonly #wv: Linear;
  readonly #wo: Linear;
  #disposed = false;

  private constructor(index: number, config: MoeModelConfig, place: Place, parts: { inputNorm: AnyTensor; postNorm: AnyTensor; wq: Linear; wk: Linear; wv: Linear; wo: Linear; ffn: BlockFfn; cache: KvCache }) {
    this.index = index;
    this.place = place;
    this.config = config;
    this.#inputNorm = parts.inputNorm;
    this.#postNorm = parts.postNorm;
    this.#wq = parts.wq;
    this.#wk = parts.wk;
    this.#wv = parts.wv;
    this.#wo = parts.wo;
    this.ffn = parts.ffn;
    this.kind = parts.ffn.kind;
    this.moe = parts.ffn.moe;
    this.dense = parts.ffn.dense;
    this.cache = parts.cache;
  }

  /**
   * Packs one layer's weights (Hugging Face layout, as `MoeCheckpoint.loadLayer` gives them: `moe`
   * for an MoE layer, `mlp` for a dense one, by `config.layerKinds[weights.index]`); the caller
   * may drop its arrays afterwards. The norm weights are copied.
   */
  static async create(config: MoeModelConfig, weights: DecoderLayerWeights, options?: MixtralRuntimeOptions): Promise<MixtralBlock> {
    checkConfig(config);
    const { maxSeq, kvType, backend, place, quantize, quantizeLinear } = runtimeOptions(config, options);
    const w = checkOptions(weights, 'weights') as unknown as DecoderLayerWeights;
    const index = intOption(w as unknown as Record<string, unknown>, 'index', 0, 0, config.numHiddenLayers - 1, 'weights.index');
    const a = checkOptions(w.attention, 'weights.attention') as unknown as DecoderLayerWeights['attention'];
    const { hiddenSize: d } = config;
    const norm = (t: unknown, name: string) => {
      const c = checkTensor(t, name, FLOAT_TYPES);
      if (c.dims.length !== 1 || c.dims[0] !== d) throw rangeError(`${name}.dims must be [${d}], got [${c.dims.join(',')}]`);
      return c as Tensor;
    };
    const inputNorm0 = norm(w.inputLayernorm, 'weights.inputLayernorm');
    const postNorm0 = norm(w.postAttentionLayernorm, 'weights.postAttentionLayernorm');
    const q = config.numAttentionHeads * config.headDim;
    const kv = config.numKeyValueHeads * config.headDim;
    const owned: { dispose(): void }[] = [];
    const dev = place.device ? { backend: place.backend } : undefined;
    try {
      const inputNorm = await keep(place, inputNorm0);
      if (inputNorm instanceof DeviceTensor) owned.push(inputNorm);
      const postNorm = await keep(place, postNorm0);
      if (postNorm instanceof DeviceTensor) owned.push(postNorm);
      const lin = async (t: Tensor, name: string, rows: number, cols: number, bias: { name: string; t: Tensor | undefined; declared: boolean }) => {
        const c = checkTensor(t, `weights.attention.${name}`, FLOAT_TYPES);
        if (c.dims.length !== 2 || c.dims[0] !== rows || c.dims[1] !== cols)
          throw rangeError(`weights.attention.${name}.dims must be [${rows},${cols}], got [${c.dims.join(',')}]`);
        const bn = `weights.attention.${bias.name}`;
        if (bias.declared !== (bias.t !== undefined))
          throw rangeError(bias.declared ? `${bn} is required: this ${config.modelType} config has projection biases` : `${bn} is given but this ${config.modelType} config has no such bias`);
        const b = bias.t === undefined ? undefined : checkTensor(bias.t, bn, FLOAT_TYPES);
        if (b && (b.dims.length !== 1 || b.dims[0] !== rows)) throw rangeError(`${bn}.dims must be [${rows}], got [${b.dims.join(',')}]`);
        const l = await Linear.pack(c, { ...dev, ...(b ? { bias: b } : {}), ...(quantizeLinear ? { quantize: quantizeLinear } : {}) });
        owned.push(l);
        return l;
      };
      const qkvBias = config.attentionBias;
      const wq = await lin(a.qProj, 'qProj', q, d, { name: 'qBias', t: a.qBias, declared: qkvBias });
      const wk = await lin(a.kProj, 'kProj', kv, d, { name: 'kBias', t: a.kBias, declared: qkvBias });
      const wv = await lin(a.vProj, 'vProj', kv, d, { name: 'vBias', t: a.vBias, declared: qkvBias });
      const wo = await lin(a.oProj, 'oProj', d, q, { name: 'oBias', t: a.oBias, declared: config.attentionOutputBias });
      const ffn = await createBlockFfn(config, w, index, backend, quantize);
      owned.push(ffn);
      const cache = new KvCache({ maxSeq, numKvHeads: config.numKeyValueHeads, headDim: config.headDim, type: kvType }, dev);
      return new MixtralBlock(index, config, place, { inputNorm, postNorm, wq, wk, wv, wo, ffn, cache });
    } catch (e) {
      for (const o of owned) o.dispose();
      throw e;
    }
  }

  /** Bytes of the packed weights and the KV cache. */
  get bytes(): number {
    const lin = this.#wq.bytes + this.#wk.bytes + this.#wv.bytes + this.#wo.bytes;
    return lin + this.ffn.bytes + this.cache.bytes + bytesOf(this.#inputNorm) + bytesOf(this.#postNorm);
  }

  get disposed(): boolean {
    return this.#disposed;
  }

  /** Runs the block on x [T,d] (any float type; float32 for inPlace). */
  async forward(x: Tensor, options?: BlockForwardOptions): Promise<BlockOutput> {
    this.#check();
    const o = checkOptions(options);
    const c = checkTensor(x, 'x', FLOAT_TYPES);
    const d = this.config.hiddenSize;
    if (c.dims.length !== 2 || c.dims[1] !== d) throw rangeError(`x.dims must be [T,${d}], got [${c.dims.join(',')}]`);
    const inPlace = boolOption(o, 'inPlace', false);
    if (inPlace && c.type !== 'float32') throw typeError(`x must be float32 for inPlace, got ${c.type}`);
    const length = this.cache.length;
    const start = intOption(o, 'startPos', length, 0, length);
    const h = (inPlace ? c : c.type === 'float32' ? { type: 'float32', data: c.data.slice(), dims: [...c.dims] } : cast(c, 'float32')) as Tensor<'float32'>;
    const ws = new Workspace(this.config, c.dims[0], this.place);
    await ws.setPositions(start);
    if (!this.place.device) return { output: h, tokensPerExpert: (await this.run(h, ws, start)) as Tensor<'int32'> };
    // on the device: the block's input up, its output and counts down
    const hd = await DeviceTensor.from(h, { backend: this.place.backend });
    try {
      const counts = await this.run(hd, ws, start);
      await hd.toHost(h);
      if (!(counts instanceof DeviceTensor)) return { output: h, tokensPerExpert: counts }; // dense: [0]
      const tokensPerExpert = await counts.toHost();
      counts.dispose();
      return { output: h, tokensPerExpert };
    } finally {
      hd.dispose();
      ws.dispose();
    }
  }

  /** Starts a new sequence (empties the KV cache). */
  reset(): void {
    this.#check();
    this.cache.reset();
  }

  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    for (const l of [this.#wq, this.#wk, this.#wv, this.#wo]) l.dispose();
    this.ffn.dispose();
    this.cache.dispose();
    release(this.#inputNorm);
    release(this.#postNorm);
  }

  /** `using block = await MixtralBlock.create(...)`: dispose() at the end of the scope. */
  [Symbol.dispose](): void {
    this.dispose();
  }

  /**
   * @internal h [T,d] float32 updated in place (a DeviceTensor on a device block); ws holds the
   * scratch tensors and the positions of the T tokens, the first at `start`. Returns the MoE layer's
   * tokens per expert ([0] when dense; on the device for a device block: read it after the forward).
   */
  async run(h: AnyTensor, ws: Workspace, start: number, countsOut?: DeviceTensor<'int32'>): Promise<Tensor<'int32'> | DeviceTensor<'int32'>> {
    const c = this.config;
    const [T, hq, hkv, hd] = [ws.T, c.numAttentionHeads, c.numKeyValueHeads, c.headDim];
    const eps = c.rmsNormEps;
    await rmsNorm(h, this.#inputNorm, { eps, out: ws.normed });
    await Promise.all([this.#wq.forward(ws.normed, { out: ws.q }), this.#wk.forward(ws.normed, { out: ws.k }), this.#wv.forward(ws.normed, { out: ws.v })]);
    const q3 = view(ws.q, [T, hq, hd]);
    const k3 = view(ws.k, [T, hkv, hd]);
    await rope(q3, k3, ws.positionsDevice ?? ws.positions, { theta: c.ropeTheta, inPlace: true });
    await attention(q3, k3, view(ws.v, [T, hkv, hd]), this.cache, { startPos: start, slidingWindow: c.slidingWindow ?? 0, out: ws.attn });
    await this.#wo.forward(view(ws.attn, [T, hq * hd]), { out: ws.proj });
    await add(h, ws.proj, { inPlace: true });
    await rmsNorm(h, this.#postNorm, { eps, out: ws.normed });
    const { output, tokensPerExpert } = await this.ffn.forward(ws.normed as Tensor | DeviceTensor, countsOut);
    await add(h, output as AnyTensor, { inPlace: true });
    release(output); // on the device: stream-ordered, after the add
    return tokensPerExpert ?? NO_EXPERTS;
  }

  #check(): void {
    if (this.#disposed) throw new MoeError('MixtralBlock was disposed and cannot be used again', 'ERR_DISPOSED');
  }
}

// ---- model -------------------------------------------------------------------------------------------

export interface MixtralLoadOptions extends MixtralRuntimeOptions {
  /** Convert the weights to this type as they load. Default: as stored. */
  dtype?: FloatType;
  /** Loading progress (bytes and tensors), e.g. `createProgressBar().update`. */
  onProgress?: (p: LoadProgress) => void;
  /** Check the memory estimate against the free memory before loading (default true). */
  memoryCheck?: boolean;
  /** Bytes available for the memory check. Default: this machine's free memory. */
  availableBytes?: number;
}

export interface ModelForwardOptions {
  /**
   * Position of the first token. Default 0: a new sequence (the KV caches restart). n > 0 appends
   * to (or rewinds) the cached sequence: it must be at most `model.length`.
   */
  startPos?: number;
}

/**
 * An AbortSignal (Node's global one, or the DOM's): declared by shape so that the package's types
 * compile without @types/node or lib.dom. At run time `signal` must be a real AbortSignal.
 */
export interface AbortSignalLike {
  readonly aborted: boolean;
  readonly reason?: unknown;
}

export interface GenerateOptions {
  /** Tokens to generate (at most). Default 16. */
  maxNewTokens?: number;
  /** 0 (default): greedy. */
  temperature?: number;
  /** Nucleus sampling threshold in (0, 1]; default 1. */
  topP?: number;
  /** Seed of the draws; default 0. Token i is drawn with step = its position (prompt length + i). */
  seed?: number;
  /** Stops generation with ERR_ABORTED (the model stays usable). */
  signal?: AbortSignalLike;
  /** Called with each new token id and its index among the new tokens. */
  onToken?: (id: number, index: number) => void;
  /** Generation ends after one of these ids (which is yielded). */
  stopTokens?: readonly number[];
}

/** Tokens routed to each expert, per MoE layer, since the last resetRoutingStats(). */
export interface RoutingStats {
  /** Tokens that went through the model (each counts topK times in a layer's counts). */
  tokens: number;
  /** [MoE layer][expert] counts: one row per MoE layer (dense layers have no experts and no row). */
  tokensPerExpert: number[][];
  /** The decoder-layer index of each row of tokensPerExpert (Mixtral: 0, 1, ... every layer). */
  layers: number[];
}

/**
 * A whole decoder model (Mixtral, Qwen2-MoE or DeepSeek-MoE; also exported as `MoeModel`):
 * embeddings, decoder blocks with KV caches, final norm, LM head.
 */
export class MixtralModel {
  readonly config: MoeModelConfig;
  readonly blocks: readonly MixtralBlock[];
  /** Positions each KV cache holds. */
  readonly maxSeq: number;
  /** Where the model runs: 'cpu', or the CUDA backend holding every weight, cache and activation. */
  readonly backend: ResolvedBackend;
  readonly #place: Place;
  readonly #embed: AnyTensor;
  readonly #norm: AnyTensor;
  readonly #lmHead: Linear;
  readonly #stats: Float64Array[];
  #statTokens = 0;
  #length = 0;
  #busy = false;
  #sequence = 0;
  #disposed = false;
  #decode: { ws: Workspace; hidden: AnyTensor; normed: AnyTensor; logits: AnyTensor; ids: Tensor<'int32'>; next: Tensor<'int32'> } | null = null;
  /** On a device: every layer's routing counts of one forward, [layers, E], read back at once. */
  #deviceCounts: DeviceTensor<'int32'> | null = null;

  private constructor(config: MoeModelConfig, place: Place, embed: AnyTensor, norm: AnyTensor, lmHead: Linear, blocks: MixtralBlock[], maxSeq: number) {
    this.config = config;
    this.#place = place;
    this.backend = place.device ? place.backend : 'cpu';
    this.#embed = embed;
    this.#norm = norm;
    this.#lmHead = lmHead;
    this.blocks = blocks;
    this.maxSeq = maxSeq;
    // a dense block reports no experts ([0]): its row stays empty and routingStats leaves it out
    this.#stats = blocks.map((b) => new Float64Array(b.kind === 'moe' ? config.numExperts : 0));
  }

  /**
   * Loads a Hugging Face checkpoint (directory with config.json and safetensors) of Mixtral,
   * Qwen2-MoE or DeepSeek-MoE (`model_type`; see MoeCheckpoint for the tensor names) layer by
   * layer: each layer's tensors are read, packed into native layers and dropped before the next
   * is read, so the peak host memory stays near one copy of the model. Before reading anything the
   * memory estimate (weights at `dtype` and the KV caches of `maxSeq` positions) is checked against
   * the free memory: ERR_OUT_OF_MEMORY when it does not fit.
   */
  static async load(dir: string, options?: MixtralLoadOptions): Promise<MixtralModel> {
    const o = checkOptions(options);
    const ckpt = await MoeCheckpoint.open(dir, { dtype: o.dtype as FloatType | undefined, onProgress: o.onProgress as MixtralLoadOptions['onProgress'] });
    try {
      const config = ckpt.config;
      const { maxSeq, kvType, place, quantize, quantizeLinear } = runtimeOptions(config, o);
      const stored = ckpt.checkpoint.info('model.embed_tokens.weight').type as FloatType;
      const estimate = MixtralModel.estimateMemory(config, { dtype: (o.dtype as FloatType | undefined) ?? stored, kvType, maxSeq, quantize, quantizeLinear });
      // on a device the weights and caches must fit its memory (emulated devices: the host's)
      const deviceBytes = place.device && !backendInfo().cuda.emulated ? backendInfo().cuda.device?.totalMemory : undefined;
      const available = o.availableBytes ?? deviceBytes;
      if (boolOption(o, 'memoryCheck', true)) checkMemory(estimate, available === undefined ? undefined : { availableBytes: available as number });
      const globals = await ckpt.loadGlobals();
      const blocks: MixtralBlock[] = [];
      try {
        for await (const layer of ckpt.layers()) blocks.push(await MixtralBlock.create(config, layer, o));
        return await MixtralModel.#assemble(config, globals, blocks, maxSeq, place, quantizeLinear);
      } catch (e) {
        for (const b of blocks) b.dispose();
        throw e;
      }
    } finally {
      ckpt.close();
    }
  }

  /**
   * A model from weights in memory (tests, benchmarks): `globals` and `layers` as MoeCheckpoint
   * loads them (layer i: `moe` or `mlp` by `config.layerKinds[i]`; its `index`, when given, must
   * be i). `layers` may be an array or an (async) iterable that makes each layer on demand: each is
   * packed and dropped before the next is asked for.
   */
  static async fromWeights(
    config: MoeModelConfig,
    weights: { globals: ModelGlobalWeights; layers: Iterable<DecoderLayerWeights> | AsyncIterable<DecoderLayerWeights> },
    options?: MixtralRuntimeOptions,
  ): Promise<MixtralModel> {
    checkConfig(config);
    const w = checkOptions(weights, 'weights');
    const layers = w.layers as Iterable<DecoderLayerWeights> | AsyncIterable<DecoderLayerWeights> | undefined;
    if (layers == null || (typeof (layers as Iterable<unknown>)[Symbol.iterator] !== 'function' && typeof (layers as AsyncIterable<unknown>)[Symbol.asyncIterator] !== 'function'))
      throw typeError(`weights.layers must be an array or an iterable of layer weights, got ${describe(layers)}`);
    const { maxSeq, place, quantizeLinear } = runtimeOptions(config, options);
    const blocks: MixtralBlock[] = [];
    try {
      for await (const l of layers) {
        if (blocks.length === config.numHiddenLayers)
          throw rangeError(`weights.layers must give ${config.numHiddenLayers} layers (num_hidden_layers), got more`);
        const i = blocks.length;
        const layer = checkOptions(l, `weights.layers[${i}]`) as unknown as DecoderLayerWeights;
        if (layer.index !== undefined && layer.index !== i) throw rangeError(`weights.layers[${i}].index must be ${i}, got ${describe(layer.index)}`);
        blocks.push(await MixtralBlock.create(config, layer.index === undefined ? { ...layer, index: i } : layer, options));
      }
      if (blocks.length !== config.numHiddenLayers)
        throw rangeError(`weights.layers must give ${config.numHiddenLayers} layers (num_hidden_layers), got ${blocks.length}`);
      return await MixtralModel.#assemble(config, checkOptions(w.globals, 'weights.globals') as unknown as ModelGlobalWeights, blocks, maxSeq, place, quantizeLinear);
    } catch (e) {
      for (const b of blocks) b.dispose();
      throw e;
    }
  }

  /**
   * Memory of a model: weights at `dtype` (the FFNs in `quantize`, the projections and LM head in
   * `quantizeLinear`, when given) and KV caches of `maxSeq` positions in `kvType`.
   */
  static estimateMemory(config: MoeModelConfig, options?: { dtype?: FloatType; kvType?: FloatType; maxSeq?: number; quantize?: QuantizeType; quantizeLinear?: QuantizeType }): MemoryEstimate {
    const { maxSeq, kvType, quantize, quantizeLinear } = runtimeOptions(config, options);
    return estimateMemory(config, { dtype: checkOptions(options).dtype as FloatType | undefined, kvDtype: kvType, contextLength: maxSeq, quantize, quantizeLinear });
  }

  static async #assemble(config: MoeModelConfig, g: ModelGlobalWeights, blocks: MixtralBlock[], maxSeq: number, place: Place, quantizeLinear?: QuantizeType): Promise<MixtralModel> {
    const { vocabSize: V, hiddenSize: d } = config;
    const check = (t: unknown, name: string, dims: number[]) => {
      const c = checkTensor(t, name, FLOAT_TYPES);
      if (c.dims.length !== dims.length || c.dims.some((x, i) => x !== dims[i])) throw rangeError(`${name}.dims must be [${dims.join(',')}], got [${c.dims.join(',')}]`);
      return c;
    };
    const embed = check(g.embedTokens, 'weights.globals.embedTokens', [V, d]);
    const norm = check(g.norm, 'weights.globals.norm', [d]);
    const head = check(config.tieWordEmbeddings ? g.embedTokens : g.lmHead, 'weights.globals.lmHead', [V, d]);
    const lmHead = await Linear.pack(head, { ...(place.device ? { backend: place.backend } : {}), ...(quantizeLinear ? { quantize: quantizeLinear } : {}) });
    // the embedding table and the norm are read in place by the ops: keep private copies
    const kept: AnyTensor[] = [];
    try {
      kept.push(await keep(place, embed as Tensor));
      kept.push(await keep(place, norm as Tensor));
    } catch (e) {
      lmHead.dispose();
      kept.forEach(release);
      throw e;
    }
    return new MixtralModel(config, place, kept[0], kept[1], lmHead, blocks, maxSeq);
  }

  /** Positions in the KV caches (the sequence so far). */
  get length(): number {
    return this.#length;
  }

  get disposed(): boolean {
    return this.#disposed;
  }

  /** Bytes of the packed weights, the embedding table and the KV caches. */
  get bytes(): number {
    return this.blocks.reduce((n, b) => n + b.bytes, 0) + this.#lmHead.bytes + bytesOf(this.#embed) + bytesOf(this.#norm);
  }

  /**
   * Logits [T,V] float32 of token ids [T]. Default startPos 0 starts a new sequence; a later call
   * with startPos = model.length continues it from the KV caches (one token at a time to decode).
   */
  async forward(tokenIds: readonly number[] | Int32Array, options?: ModelForwardOptions): Promise<Tensor<'float32'>> {
    const o = checkOptions(options);
    const ids = this.#ids(tokenIds, 'tokenIds');
    const start = intOption(o, 'startPos', 0, 0, this.#length);
    this.#checkRoom(start, ids.length);
    this.#enter();
    try {
      this.#sequence++;
      const logits = await this.#forward(ids, start, false, undefined);
      if (!(logits instanceof DeviceTensor)) return logits as Tensor<'float32'>;
      try {
        return (await logits.toHost()) as Tensor<'float32'>;
      } finally {
        logits.dispose();
      }
    } finally {
      this.#busy = false;
    }
  }

  /**
   * Generates up to maxNewTokens tokens after `promptIds`: a new sequence (prefill of the prompt
   * once, then one token per step through the KV caches). Each token is drawn by `sample` from the
   * last position's logits with step = that token's position, so a seed gives the same tokens on
   * every run. Aborting through `signal` ends the iteration with a MoeError ERR_ABORTED; breaking
   * out of the loop ends it too. Another forward/generate on the model while this one is paused
   * (between two tokens) ends this one with ERR_BUSY at its next step.
   */
  async *generate(promptIds: readonly number[] | Int32Array, options?: GenerateOptions): AsyncGenerator<number, void, undefined> {
    const g = this.#generateArgs(promptIds, options);
    this.#enter();
    let mine: number;
    let pos = 0;
    let next: number;
    try {
      mine = ++this.#sequence;
      checkAborted(g.signal);
      const logits = await this.#forward(g.ids, 0, true, g.signal);
      pos = g.ids.length;
      next = await this.#pick(logits, g, pos);
    } finally {
      this.#busy = false;
    }
    for (let i = 0; ; i++) {
      g.onToken?.(next, i);
      yield next;
      if (i + 1 >= g.maxNewTokens || g.stop.has(next)) return;
      if (this.#sequence !== mine)
        throw new MoeError('the model ran another forward or generate during this generation; one sequence per model at a time', 'ERR_BUSY');
      this.#enter();
      try {
        checkAborted(g.signal);
        const logits = await this.#decodeStep(next, pos, g.signal);
        pos++;
        next = await this.#pick(logits, g, pos);
      } finally {
        this.#busy = false;
      }
    }
  }

  /** `generate` run to its end: resolves to the new token ids (onToken sees each as it comes). */
  async generateAll(promptIds: readonly number[] | Int32Array, options?: GenerateOptions): Promise<number[]> {
    const out: number[] = [];
    for await (const id of this.generate(promptIds, options)) out.push(id);
    return out;
  }

  /** Starts a new sequence (empties the KV caches). */
  reset(): void {
    this.#check();
    if (this.#busy) throw new MoeError('the model is running a forward or generate step; await it first', 'ERR_BUSY');
    for (const b of this.blocks) b.reset();
    this.#length = 0;
    this.#sequence++;
  }

  /**
   * Tokens each MoE layer routed to each expert since the model was built or resetRoutingStats():
   * one row per MoE layer, `layers` giving its decoder-layer index (dense layers have no row).
   */
  routingStats(): RoutingStats {
    const moe = this.blocks.flatMap((b, i) => (b.kind === 'moe' ? [i] : []));
    return { tokens: this.#statTokens, tokensPerExpert: moe.map((i) => Array.from(this.#stats[i])), layers: moe };
  }

  resetRoutingStats(): void {
    for (const s of this.#stats) s.fill(0);
    this.#statTokens = 0;
  }

  /** Frees every native layer and cache now; calls already running finish first. */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    for (const b of this.blocks) b.dispose();
    this.#lmHead.dispose();
    release(this.#embed);
    release(this.#norm);
    this.#deviceCounts?.dispose();
    this.#deviceCounts = null;
    if (this.#decode) {
      this.#decode.ws.dispose();
      for (const t of [this.#decode.hidden, this.#decode.normed, this.#decode.logits]) release(t);
    }
    this.#decode = null;
  }
  /** `using model = await MixtralModel.load(dir)`: dispose() at the end of the scope. */
  [Symbol.dispose](): void {
    this.dispose();
  }

  /** `await using model = ...`: the same as dispose() (native calls still running finish first). */
  async [Symbol.asyncDispose](): Promise<void> {
    this.dispose();
  }


  // ---- internals ----

  #check(): void {
    if (this.#disposed) throw new MoeError('MixtralModel was disposed and cannot be used again', 'ERR_DISPOSED');
  }

  #enter(): void {
    this.#check();
    if (this.#busy) throw new MoeError('the model is running another forward or generate step; calls on one model must not overlap (one sequence per model)', 'ERR_BUSY');
    this.#busy = true;
  }

  #ids(tokenIds: unknown, name: string): Int32Array {
    if (!(Array.isArray(tokenIds) || tokenIds instanceof Int32Array)) throw typeError(`${name} must be an array of token ids or an Int32Array, got ${describe(tokenIds)}`);
    if (tokenIds.length === 0) throw rangeError(`${name} must not be empty`);
    const V = this.config.vocabSize;
    const ids = Int32Array.from(tokenIds as ArrayLike<number>);
    for (let i = 0; i < ids.length; i++) {
      const v = (tokenIds as ArrayLike<number>)[i];
      if (!Number.isInteger(v) || v < 0 || v >= V) throw rangeError(`${name}[${i}] must be a token id in [0, ${V}), got ${describe(v)}`);
    }
    return ids;
  }

  #checkRoom(start: number, T: number): void {
    if (start + T > this.maxSeq)
      throw rangeError(`startPos + tokens (${start} + ${T}) must not exceed the model's maxSeq (${this.maxSeq}); load the model with a larger maxSeq`);
  }

  #generateArgs(promptIds: unknown, options: unknown) {
    const o = checkOptions(options);
    const ids = this.#ids(promptIds, 'promptIds');
    const maxNewTokens = intOption(o, 'maxNewTokens', 16, 1);
    // the last new token is not fed back: the caches hold the prompt and maxNewTokens - 1 more
    this.#checkRoom(0, ids.length + maxNewTokens - 1);
    const num = (k: string, dflt: number) => {
      const v = o[k] ?? dflt;
      if (typeof v !== 'number' || Number.isNaN(v)) throw typeError(`options.${k} must be a number, got ${describe(v)}`);
      return v;
    };
    const temperature = num('temperature', 0);
    const topP = num('topP', 1);
    if (!(temperature >= 0) || !Number.isFinite(temperature)) throw rangeError(`options.temperature must be a finite number >= 0, got ${temperature}`);
    if (!(topP > 0 && topP <= 1)) throw rangeError(`options.topP must be in (0, 1], got ${topP}`);
    const seed = intOption(o, 'seed', 0, 0);
    if (o.onToken !== undefined && typeof o.onToken !== 'function') throw typeError(`options.onToken must be a function, got ${describe(o.onToken)}`);
    const stopTokens = o.stopTokens ?? [];
    if (!Array.isArray(stopTokens) || !stopTokens.every((t) => Number.isInteger(t))) throw typeError(`options.stopTokens must be an array of token ids, got ${describe(stopTokens)}`);
    return {
      ids,
      maxNewTokens,
      temperature,
      topP,
      seed,
      signal: checkSignal(o.signal),
      onToken: o.onToken as GenerateOptions['onToken'],
      stop: new Set<number>(stopTokens as number[]),
    };
  }

  async #pick(logits: AnyTensor, g: { temperature: number; topP: number; seed: number }, position: number): Promise<number> {
    const dec = this.#decodeBuffers();
    await sample(logits as Tensor<'float32'>, { temperature: g.temperature, topP: g.topP, seed: g.seed, step: position, out: dec.next });
    return dec.next.data[0];
  }

  #decodeBuffers() {
    if (!this.#decode) {
      const { hiddenSize: d, vocabSize: V } = this.config;
      const place = this.#place;
      this.#decode = {
        ws: new Workspace(this.config, 1, place),
        hidden: activation(place, [1, d]),
        normed: activation(place, [1, d]),
        logits: activation(place, [1, V]),
        ids: zeros('int32', [1]),
        next: zeros('int32', [1]),
      };
    }
    return this.#decode;
  }

  /** One token at `pos` through the caches: logits [1,V] in the reused decode buffer. */
  async #decodeStep(id: number, pos: number, signal: AbortSignal | undefined): Promise<AnyTensor> {
    const dec = this.#decodeBuffers();
    dec.ids.data[0] = id;
    await dec.ws.setPositions(pos);
    await embedding(this.#embed, dec.ids, { outType: 'float32', out: dec.hidden });
    await this.#blocks(dec.hidden, dec.ws, pos, signal);
    await rmsNorm(dec.hidden, this.#norm, { eps: this.config.rmsNormEps, out: dec.normed });
    return this.#lmHead.forward(dec.normed, { out: dec.logits });
  }

  /**
   * T tokens from `start`: logits [T,V] (a fresh tensor, on the model's place), or only the last
   * position's [1,V] (in the reused decode buffer) when `lastOnly`.
   */
  async #forward(ids: Int32Array, start: number, lastOnly: boolean, signal: AbortSignal | undefined): Promise<AnyTensor> {
    const T = ids.length;
    if (T === 1 && lastOnly) return this.#decodeStep(ids[0], start, signal);
    const ws = T === 1 ? this.#decodeBuffers().ws : new Workspace(this.config, T, this.#place);
    await ws.setPositions(start);
    const h = await embedding(this.#embed, { type: 'int32', data: ids, dims: [T] }, { outType: 'float32' });
    try {
      await this.#blocks(h, ws, start, signal);
      const d = this.config.hiddenSize;
      const eps = this.config.rmsNormEps;
      if (lastOnly) {
        const dec = this.#decodeBuffers();
        const last = h instanceof DeviceTensor ? h.rows(T - 1, 1) : ({ type: 'float32', data: (h as Tensor).data.subarray((T - 1) * d), dims: [1, d] } as Tensor);
        await rmsNorm(last, this.#norm, { eps, out: dec.normed });
        return await this.#lmHead.forward(dec.normed, { out: dec.logits });
      }
      await rmsNorm(h, this.#norm, { eps, out: h });
      return await this.#lmHead.forward(h);
    } finally {
      release(h); // stream-ordered on a device: after the work that reads it
      if (ws !== this.#decode?.ws) ws.dispose();
    }
  }

  async #blocks(h: AnyTensor, ws: Workspace, start: number, signal: AbortSignal | undefined): Promise<void> {
    // a failed or aborted call leaves the caches mid-sequence: keep `length` at the last good state
    this.#length = Math.min(this.#length, start);
    const E = this.config.numExperts;
    // on a device the MoE layers write their counts into rows of one tensor, copied back once
    const rows = this.#place.device && E > 0 ? (this.#deviceCounts ??= DeviceTensor.zeros('int32', [this.blocks.length, E], { backend: this.#place.backend })) : null;
    for (let i = 0; i < this.blocks.length; i++) {
      checkAborted(signal);
      const moe = this.blocks[i].kind === 'moe';
      const counts = await this.blocks[i].run(h, ws, start, rows && moe ? (rows.rows(i, 1).reshape([E]) as DeviceTensor<'int32'>) : undefined);
      if (!(counts instanceof DeviceTensor)) this.#count(i, counts.data);
    }
    if (rows) {
      const all = (await rows.toHost()).data;
      for (let i = 0; i < this.blocks.length; i++) if (this.blocks[i].kind === 'moe') this.#count(i, all.subarray(i * E, (i + 1) * E));
    }
    this.#statTokens += ws.T;
    this.#length = start + ws.T;
  }

  #count(layer: number, counts: ArrayLike<number>): void {
    const s = this.#stats[layer];
    for (let e = 0; e < s.length; e++) s[e] += counts[e];
  }
}

/** MixtralModel under a family-neutral name: it runs Mixtral, Qwen2-MoE and DeepSeek-MoE. */
export { MixtralModel as MoeModel, MixtralBlock as DecoderBlock };
