/**
 * Decoder blocks and whole models of Mixtral, Qwen2-MoE and DeepSeek-MoE, composed from the native
 * ops (lib/model/primitives.ts) and the FFN layers (lib/moe/layers.ts, chosen per layer by lib/model/block-ffn.ts). Thin:
 * the classes hold packed weights, KV caches and scratch tensors, and call ops; no math happens
 * here beyond shapes.
 *
 *   MixtralBlock   (lib/model/block.ts) h += attention(rmsNorm(h)); h += ffn(rmsNorm(h))
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
import { checkQuantTensor, dequantize, isQuantType, type Precision, type QuantizeType, type QuantTensor } from '../core/quant.js';
import { backendInfo, type ResolvedBackend } from '../core/backend.js';
import { type MoeModelConfig } from '../hf/config.js';
import { DeviceTensor } from '../core/device.js';
import { describe, MoeError, rangeError, typeError } from '../core/errors.js';
import { embedding, KvPool, Linear, rmsNorm, sample, type AnyTensor } from './primitives.js';
import { boolOption, checkOptions, intOption } from '../core/options.js';
import { checkMemory, estimateMemory, type MemoryEstimate } from '../hf/params.js';
import { checkTensor, FLOAT_TYPES, type FloatType, type Tensor, zeros } from '../core/tensor.js';
import { MoeCheckpoint, type DecoderLayerWeights, type LoadProgress, type ModelGlobalWeights } from '../hf/weights.js';
import { activation, keep, checkAborted, checkSignal, checkConfig, floatTypeOption, headRows, runtimeOptions, setPositionsOf, Workspace, bytesOf, release, type Place, type MixtralRuntimeOptions, type AbortSignalLike, type Scratch } from './runtime.js';
import { MixtralBlock, type PagedBatch } from './block.js';
import { isGgufPath } from '../hf/gguf.js';
import { GgufCheckpoint } from '../hf/gguf-model.js';
import { GgufTokenizer } from '../hf/tokenizer-gguf.js';
import { Tokenizer } from '../hf/tokenizer.js';
import { generateText, generateTextAll, type GenerateTextOptions, type GenerateTextResult, type TextPrompt, type TextTokenizer } from './text.js';
import { expertRange } from '../parallel/ep-layer.js';
import { expertShareEstimate } from '../parallel/memory.js';
import type { ProcessGroup } from '../parallel/process-group.js';


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

export interface KvPoolsOptions {
  /** Blocks in each layer's pool. */
  numBlocks: number;
  /** Positions per block; default 16. */
  blockSize?: number;
  /** Element type of the keys and values; default 'float32'. */
  kvType?: FloatType;
}

/**
 * A forward over tokens of many sequences at once (the serving engine's step; see lib/serve/engine.ts):
 * which sequence each token is of, its position there, the blocks of each sequence in the pools.
 */
export interface PagedForwardOptions {
  /** [T]: each token's position in its sequence. */
  positions: ArrayLike<number>;
  /** [T]: each token's sequence, a row of blockTables. */
  seqOf: ArrayLike<number>;
  /** [S, maxBlocks] int32: each sequence's blocks in position order (-1: none); see pagedAttention. */
  blockTables: Tensor<'int32'>;
  /** One KvPool per decoder layer, from model.createKvPools. */
  pools: readonly KvPool[];
  /** The tokens (indices into tokenIds) whose logits are wanted, in the order of the result's rows. */
  logitsRows: ArrayLike<number>;
  /** A float32 [R, V] tensor of the model's place (R = logitsRows.length) to write the logits into. */
  out?: AnyTensor;
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
  /**
   * The tokenizer `load` found: a GGUF file's (from its metadata), or a checkpoint directory's
   * tokenizer.json; null when there is none (then generateText needs one in its options).
   */
  tokenizer: TextTokenizer | null = null;
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
  /** The paged forward's scratch: a Workspace and hidden states of `cap` tokens, grown on demand. */
  #paged: { cap: number; ws: Workspace; hidden: AnyTensor; picked: AnyTensor } | null = null;
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
   *
   * A path ending in `.gguf` loads a llama.cpp GGUF file instead (lib/hf/gguf-model.ts: Mixtral as
   * `llama` with experts, `qwen2moe`): memory-mapped, each layer packed from views of the mapping
   * and its pages dropped after; `dtype` defaults to the type of its token embeddings; the
   * tokenizer and chat template come from its metadata (`model.tokenizer`).
   */
  static async load(dir: string, options?: MixtralLoadOptions): Promise<MixtralModel> {
    const o = checkOptions(options);
    const gguf = isGgufPath(dir);
    const ckpt = gguf
      ? await GgufCheckpoint.open(dir, { dtype: o.dtype as FloatType | undefined, onProgress: o.onProgress as MixtralLoadOptions['onProgress'] })
      : await MoeCheckpoint.open(dir, { dtype: o.dtype as FloatType | undefined, onProgress: o.onProgress as MixtralLoadOptions['onProgress'] });
    try {
      const config = ckpt.config;
      const { maxSeq, kvType, place, quantize, quantizeLinear, precision } = runtimeOptions(config, o);
      let estimate: MemoryEstimate;
      if (ckpt instanceof GgufCheckpoint) {
        ckpt.checkRunnable();
        estimate = ckpt.estimateMemory({ kvType, maxSeq });
      } else {
        const stored = ckpt.checkpoint.info('model.embed_tokens.weight').type as FloatType;
        estimate = MixtralModel.estimateMemory(config, { dtype: (o.dtype as FloatType | undefined) ?? stored, kvType, maxSeq, quantize, quantizeLinear });
      }
      // on a device the weights and caches must fit its memory (emulated devices: the host's)
      const deviceBytes = place.device && !backendInfo().cuda.emulated ? backendInfo().cuda.device?.totalMemory : undefined;
      const available = o.availableBytes ?? deviceBytes;
      // expert parallelism: this rank holds and reads only its share of the experts
      const ep = o.expertParallel as ProcessGroup | undefined;
      const share = ep ? expertRange(config.numExperts, ep.size, ep.rank) : undefined;
      if (share) estimate = expertShareEstimate(config, estimate, share);
      if (boolOption(o, 'memoryCheck', true)) checkMemory(estimate, available === undefined ? undefined : { availableBytes: available as number });
      const globals = await ckpt.loadGlobals();
      const blocks: MixtralBlock[] = [];
      try {
        const layers = ckpt instanceof MoeCheckpoint ? ckpt.layers(share ? { experts: share } : undefined) : ckpt.layers();
        for await (const layer of layers) blocks.push(await MixtralBlock.create(config, layer, o));
        const gguf = ckpt instanceof GgufCheckpoint ? ckpt : null;
        const model = await MixtralModel.#assemble(config, globals, blocks, maxSeq, place, quantizeLinear, precision, gguf ? () => gguf.releaseGlobals() : undefined, gguf ? (t) => gguf.owns(t) : undefined);
        if (gguf) {
          model.tokenizer = gguf.file.has('tokenizer.ggml.model') ? GgufTokenizer.fromGguf(gguf.file) : null;
        } else model.tokenizer = Tokenizer.fromDirIfPresent(dir);
        return model;
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
    const { maxSeq, place, quantizeLinear, precision } = runtimeOptions(config, options);
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
      return await MixtralModel.#assemble(config, checkOptions(w.globals, 'weights.globals') as unknown as ModelGlobalWeights, blocks, maxSeq, place, quantizeLinear, precision);
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

  // released(): called after the LM head is packed and after the embedding table is copied (the
  // GGUF loader drops the globals' mapped pages there, so that they never sit beside the copies).
  // owned(t): t was made for the model alone (a GGUF loader's dequantised table or quantised view of
  // its mapping): kept as it is, not copied.
  static async #assemble(config: MoeModelConfig, g: ModelGlobalWeights, blocks: MixtralBlock[], maxSeq: number, place: Place, quantizeLinear?: QuantizeType, precision: Precision = 'default', released?: () => void, owned?: (t: object) => boolean): Promise<MixtralModel> {
    const { vocabSize: V, hiddenSize: d } = config;
    // a float tensor, or (blocks: the embeddings and LM head of a GGUF file) quantised blocks
    const check = (t: unknown, name: string, dims: number[], blocks = false): Tensor | QuantTensor => {
      const c = blocks && isQuantType((t as { type?: unknown } | undefined)?.type) ? checkQuantTensor(t, name) : checkTensor(t, name, FLOAT_TYPES);
      if (c.dims.length !== dims.length || c.dims.some((x, i) => x !== dims[i])) throw rangeError(`${name}.dims must be [${dims.join(',')}], got [${c.dims.join(',')}]`);
      return c;
    };
    const embed = check(g.embedTokens, 'weights.globals.embedTokens', [V, d], true);
    const norm = check(g.norm, 'weights.globals.norm', [d]);
    const head = check(config.tieWordEmbeddings ? g.embedTokens : g.lmHead, 'weights.globals.lmHead', [V, d], true);
    const lmHead = await Linear.pack(head, { ...(place.device ? { backend: place.backend } : {}), ...(quantizeLinear ? { quantize: quantizeLinear } : {}), precision });
    released?.();
    // the embedding table and the norm are read in place by the ops: keep private copies
    const kept: AnyTensor[] = [];
    try {
      // on the host a table the loader made for the model alone is kept as it is (a quantised one's
      // rows are read where they lie: the GGUF mapping, held by the view); a quantised table goes to
      // a device dequantised once
      if (!place.device && owned?.(g.embedTokens)) kept.push(embed as unknown as Tensor);
      else if (isQuantType(embed.type)) {
        const q = embed as QuantTensor;
        kept.push(place.device ? await keep(place, await dequantize(q)) : ({ ...q, data: q.data.slice(), dims: [...q.dims] } as unknown as Tensor));
      } else kept.push(await keep(place, embed as Tensor));
      released?.();
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

  /**
   * Generates text after `input` (a string, chat messages rendered by the tokenizer's chat
   * template, or token ids) and streams it as it becomes final: see lib/model/text.ts. Takes generate's options
   * plus `stop` (strings that end generation, matched on the decoded text), `tokenizer` (default
   * `model.tokenizer`), `stopAtEos` (default true), `chatTemplate` and `onText`.
   */
  generateText(input: TextPrompt, options?: GenerateTextOptions): AsyncGenerator<string, GenerateTextResult, undefined> {
    return generateText(this, input, options);
  }

  /** `generateText` run to its end: the text, the new ids and why it stopped. */
  generateTextAll(input: TextPrompt, options?: GenerateTextOptions): Promise<GenerateTextResult> {
    return generateTextAll(this, input, options);
  }

  /**
   * One KvPool per decoder layer on the model's place (the device for a device model), for
   * forwardPaged: many sequences' keys and values in `numBlocks` blocks of `blockSize` positions
   * each. The caller owns them (dispose()); which blocks a sequence holds is the caller's table.
   */
  createKvPools(options: KvPoolsOptions): KvPool[] {
    this.#check();
    const o = checkOptions(options);
    if (o.numBlocks === undefined) throw typeError('options.numBlocks is required, got undefined');
    const numBlocks = intOption(o, 'numBlocks', 1, 1, 1 << 30);
    const blockSize = intOption(o, 'blockSize', 16, 1, 1 << 16);
    const type = floatTypeOption(o, 'kvType', 'float32');
    const c = this.config;
    const pools: KvPool[] = [];
    try {
      for (let i = 0; i < this.blocks.length; i++)
        pools.push(new KvPool({ numBlocks, blockSize, numKvHeads: c.numKeyValueHeads, headDim: c.headDim, type }, this.#place.device ? { backend: this.#place.backend } : undefined));
    } catch (e) {
      for (const p of pools) p.dispose();
      throw e;
    }
    return pools;
  }

  /**
   * A forward over tokens of many sequences at once, with their keys and values in paged pools (the
   * serving engine's step: decode tokens of running sequences beside prefill chunks of new ones).
   * Each token is embedded, run through every block with its own position and the keys of its own
   * sequence (pagedAttention), and only the rows `logitsRows` go through the final norm and the LM
   * head: logits [R, V] float32 on the model's place (a DeviceTensor on a device model, which the
   * caller disposes unless it passed `out`). Every op on the way is row-independent, so a token's
   * logits are the same bits whatever else is in the batch. Routing counts add to routingStats().
   * The model's own KV caches (forward, generate) are untouched.
   */
  async forwardPaged(tokenIds: Int32Array | readonly number[], options: PagedForwardOptions): Promise<AnyTensor> {
    const o = checkOptions(options) as unknown as PagedForwardOptions;
    const ids = this.#ids(tokenIds, 'tokenIds');
    const T = ids.length;
    const len = (v: unknown, name: string, n: number) => {
      if (v == null || typeof (v as ArrayLike<number>).length !== 'number') throw typeError(`options.${name} must be an array of integers, got ${describe(v)}`);
      if ((v as ArrayLike<number>).length !== n) throw rangeError(`options.${name} must have ${n} entries (one per token), got ${(v as ArrayLike<number>).length}`);
      return v as ArrayLike<number>;
    };
    const positions = len(o.positions, 'positions', T);
    const seqOf = Int32Array.from(len(o.seqOf, 'seqOf', T));
    const pools = o.pools;
    if (!Array.isArray(pools) || pools.length !== this.blocks.length || !pools.every((p) => p instanceof KvPool))
      throw typeError(`options.pools must be ${this.blocks.length} KvPools (one per layer, model.createKvPools), got ${describe(pools)}`);
    const rows = o.logitsRows;
    if (rows == null || typeof rows.length !== 'number') throw typeError(`options.logitsRows must be an array of token indices, got ${describe(rows)}`);
    const R = rows.length;
    const pick = new Int32Array(R);
    for (let i = 0; i < R; i++) {
      if (!Number.isInteger(rows[i]) || rows[i] < 0 || rows[i] >= T) throw rangeError(`options.logitsRows[${i}] must be a token index in [0, ${T}), got ${describe(rows[i])}`);
      pick[i] = rows[i];
    }
    this.#enter();
    try {
      const p = this.#pagedScratch(T, R);
      const ws = p.ws.head(T);
      const h = headRows(p.hidden, T);
      await setPositionsOf(ws, positions);
      await embedding(this.#embed, { type: 'int32', data: ids, dims: [T] }, { outType: 'float32', out: h });
      const batch: PagedBatch = { seqOf: { type: 'int32', data: seqOf, dims: [T] }, blockTables: o.blockTables };
      await this.#runBlocks(ws, (b, i, counts) => b.runPaged(h, ws, pools[i], batch, counts));
      if (R === 0) return o.out ?? zeros('float32', [0, this.config.vocabSize]);
      // the rows whose logits are wanted, gathered (h as an embedding table), then norm and LM head
      const sel = headRows(p.picked, R);
      await embedding(h, { type: 'int32', data: pick, dims: [R] }, { out: sel });
      await rmsNorm(sel, this.#norm, { eps: this.config.rmsNormEps, out: sel });
      return await this.#lmHead.forward(sel, o.out === undefined ? undefined : { out: o.out });
    } finally {
      this.#busy = false;
    }
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
    this.#releasePaged();
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
  async #decodeStep(id: number, pos: number, signal: AbortSignalLike | undefined): Promise<AnyTensor> {
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
  async #forward(ids: Int32Array, start: number, lastOnly: boolean, signal: AbortSignalLike | undefined): Promise<AnyTensor> {
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

  async #blocks(h: AnyTensor, ws: Workspace, start: number, signal: AbortSignalLike | undefined): Promise<void> {
    // a failed or aborted call leaves the caches mid-sequence: keep `length` at the last good state
    this.#length = Math.min(this.#length, start);
    await this.#runBlocks(ws, (b, _i, counts) => b.run(h, ws, start, counts), signal);
    this.#length = start + ws.T;
  }

  /** Every block in turn (`run` calls one), with the routing counts gathered into routingStats(). */
  async #runBlocks(
    ws: Scratch,
    run: (b: MixtralBlock, i: number, countsOut: DeviceTensor<'int32'> | undefined) => Promise<Tensor<'int32'> | DeviceTensor<'int32'>>,
    signal?: AbortSignalLike,
  ): Promise<void> {
    const E = this.config.numExperts;
    // on a device the MoE layers write their counts into rows of one tensor, copied back once
    const rows = this.#place.device && E > 0 ? (this.#deviceCounts ??= DeviceTensor.zeros('int32', [this.blocks.length, E], { backend: this.#place.backend })) : null;
    for (let i = 0; i < this.blocks.length; i++) {
      checkAborted(signal);
      const moe = this.blocks[i].kind === 'moe';
      const counts = await run(this.blocks[i], i, rows && moe ? (rows.rows(i, 1).reshape([E]) as DeviceTensor<'int32'>) : undefined);
      if (!(counts instanceof DeviceTensor)) this.#count(i, counts.data);
    }
    if (rows) {
      const all = (await rows.toHost()).data;
      for (let i = 0; i < this.blocks.length; i++) if (this.blocks[i].kind === 'moe') this.#count(i, all.subarray(i * E, (i + 1) * E));
    }
    this.#statTokens += ws.T;
  }

  /** The paged forward's scratch for T tokens and R logit rows (grown in steps of 64 tokens). */
  #pagedScratch(T: number, R: number) {
    const need = Math.max(T, R);
    if (!this.#paged || this.#paged.cap < need) {
      this.#releasePaged();
      const cap = Math.ceil(need / 64) * 64;
      const d = this.config.hiddenSize;
      this.#paged = { cap, ws: new Workspace(this.config, cap, this.#place), hidden: activation(this.#place, [cap, d]), picked: activation(this.#place, [cap, d]) };
    }
    return this.#paged;
  }

  #releasePaged(): void {
    if (!this.#paged) return;
    this.#paged.ws.dispose();
    release(this.#paged.hidden);
    release(this.#paged.picked);
    this.#paged = null;
  }

  #count(layer: number, counts: ArrayLike<number>): void {
    const s = this.#stats[layer];
    for (let e = 0; e < s.length; e++) s[e] += counts[e];
  }
}

/** MixtralModel under a family-neutral name: it runs Mixtral, Qwen2-MoE and DeepSeek-MoE. */
export { MixtralModel as MoeModel };
export type { AbortSignalLike };
