/**
 * One decoder block of Mixtral, Qwen2-MoE and DeepSeek-MoE (see lib/model/model.ts for the model):
 *
 *   MixtralBlock   h += o_proj(attention(rope(q,k), v; KV cache, sliding window)) of rmsNorm(h)
 *   (DecoderBlock) h += ffn(rmsNorm(h))                                     (h: [T,d] float32)
 *                  ffn: the MoE layer (+ shared experts) or a dense SwiGLU FFN, by config.layerKinds
 */
import { createBlockFfn, NO_EXPERTS, type BlockFfn } from './block-ffn.js';
import { type LayerKind, type MoeModelConfig } from '../hf/config.js';
import { DeviceTensor } from '../core/device.js';
import { MoeError, rangeError, typeError } from '../core/errors.js';
import { type DenseFfn, type MoeLayer } from '../moe/layers.js';
import { add, attention, KvCache, KvPool, Linear, pagedAttention, rmsNorm, rope, type AnyTensor } from './primitives.js';
import { boolOption, checkOptions, intOption } from '../core/options.js';
import { cast, checkTensor, FLOAT_TYPES, type Tensor } from '../core/tensor.js';
import { type DecoderLayerWeights } from '../hf/weights.js';
import { checkWeightTensor } from '../core/quant.js';
import { type WeightTensor } from '../moe/experts.js';
import { view, keep, checkConfig, runtimeOptions, Workspace, bytesOf, release, type Place, type MixtralRuntimeOptions, type Scratch } from './runtime.js';

// ---- block -------------------------------------------------------------------------------------------

export interface BlockForwardOptions {
  /** Position of the first token; default the KV cache's length (append). 0 starts a new sequence. */
  startPos?: number;
  /** Update x in place (x must be float32) instead of returning a fresh tensor. Default false. */
  inPlace?: boolean;
}

/** Which sequence each token of a paged forward is of, and each sequence's blocks (see pagedAttention). */
export interface PagedBatch {
  /** [T] int32: each token's row of blockTables. */
  seqOf: Tensor<'int32'>;
  /** [S, maxBlocks] int32: each sequence's blocks in position order (-1: none). */
  blockTables: Tensor<'int32'>;
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
    const { maxSeq, kvType, backend, place, quantize, quantizeLinear, precision, expertParallel, batchInvariant } = runtimeOptions(config, options);
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
      const lin = async (t: WeightTensor, name: string, rows: number, cols: number, bias: { name: string; t: Tensor | undefined; declared: boolean }) => {
        const c = checkWeightTensor(t, `weights.attention.${name}`);
        if (c.dims.length !== 2 || c.dims[0] !== rows || c.dims[1] !== cols)
          throw rangeError(`weights.attention.${name}.dims must be [${rows},${cols}], got [${c.dims.join(',')}]`);
        const bn = `weights.attention.${bias.name}`;
        if (bias.declared !== (bias.t !== undefined))
          throw rangeError(bias.declared ? `${bn} is required: this ${config.modelType} config has projection biases` : `${bn} is given but this ${config.modelType} config has no such bias`);
        const b = bias.t === undefined ? undefined : checkTensor(bias.t, bn, FLOAT_TYPES);
        if (b && (b.dims.length !== 1 || b.dims[0] !== rows)) throw rangeError(`${bn}.dims must be [${rows}], got [${b.dims.join(',')}]`);
        const l = await Linear.pack(c, { ...dev, ...(b ? { bias: b } : {}), ...(quantizeLinear ? { quantize: quantizeLinear } : {}), precision });
        owned.push(l);
        return l;
      };
      const qkvBias = config.attentionBias;
      const wq = await lin(a.qProj, 'qProj', q, d, { name: 'qBias', t: a.qBias, declared: qkvBias });
      const wk = await lin(a.kProj, 'kProj', kv, d, { name: 'kBias', t: a.kBias, declared: qkvBias });
      const wv = await lin(a.vProj, 'vProj', kv, d, { name: 'vBias', t: a.vBias, declared: qkvBias });
      const wo = await lin(a.oProj, 'oProj', d, q, { name: 'oBias', t: a.oBias, declared: config.attentionOutputBias });
      const ffn = await createBlockFfn(config, w, index, backend, quantize, precision, expertParallel, batchInvariant);
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
  async run(h: AnyTensor, ws: Scratch, start: number, countsOut?: DeviceTensor<'int32'>): Promise<Tensor<'int32'> | DeviceTensor<'int32'>> {
    const window = this.config.slidingWindow ?? 0;
    return this.#run(h, ws, countsOut, (q3, k3, v3) => attention(q3, k3, v3, this.cache, { startPos: start, slidingWindow: window, out: ws.attn }));
  }

  /**
   * @internal The block over tokens of many sequences at once, with their keys and values in a paged
   * pool (the serving engine's step): h [T,d] float32 updated in place; ws.positions holds each
   * token's position in its sequence (rope); `paged` says which sequence each token is of and the
   * blocks of each sequence (see pagedAttention). Every op is row-independent, so a token's result
   * does not depend on the other tokens of the call (the same bits as the sequence alone).
   */
  async runPaged(h: AnyTensor, ws: Scratch, pool: KvPool, paged: PagedBatch, countsOut?: DeviceTensor<'int32'>): Promise<Tensor<'int32'> | DeviceTensor<'int32'>> {
    const window = this.config.slidingWindow ?? 0;
    return this.#run(h, ws, countsOut, (q3, k3, v3) =>
      pagedAttention(q3, k3, v3, pool, { positions: ws.positions, seqOf: paged.seqOf, blockTables: paged.blockTables, slidingWindow: window, out: ws.attn }),
    );
  }

  async #run(h: AnyTensor, ws: Scratch, countsOut: DeviceTensor<'int32'> | undefined, attend: (q: AnyTensor, k: AnyTensor, v: AnyTensor) => Promise<unknown>): Promise<Tensor<'int32'> | DeviceTensor<'int32'>> {
    const c = this.config;
    const [T, hq, hkv, hd] = [ws.T, c.numAttentionHeads, c.numKeyValueHeads, c.headDim];
    const eps = c.rmsNormEps;
    await rmsNorm(h, this.#inputNorm, { eps, out: ws.normed });
    await Promise.all([this.#wq.forward(ws.normed, { out: ws.q }), this.#wk.forward(ws.normed, { out: ws.k }), this.#wv.forward(ws.normed, { out: ws.v })]);
    const q3 = view(ws.q, [T, hq, hd]);
    const k3 = view(ws.k, [T, hkv, hd]);
    await rope(q3, k3, ws.positionsDevice ?? ws.positions, { theta: c.ropeTheta, inPlace: true });
    await attend(q3, k3, view(ws.v, [T, hkv, hd]));
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

/** MixtralBlock under a family-neutral name. */
export { MixtralBlock as DecoderBlock };
