/**
 * Layers built once from weights and called per request: the sparse MoE layer (Mixtral's
 * block-sparse MoE: router, top-k, SwiGLU experts, weighted combine) and the dense SwiGLU FFN
 * baseline. Both keep exactly one packed copy of their weights in the backend.
 */
import { binding, type NativeDeviceTensor, type NativeForwardOptions, type NativeMoeResult, type NativeTensor } from '../core/binding.js';
import { DeviceTensor } from '../core/device.js';
import { type BackendName, type ResolvedBackend } from '../core/backend.js';
import { describe, MoeError, rangeError, typeError } from '../core/errors.js';
import { ExpertWeights, nativeExperts, type ExpertWeightsInit } from './experts.js';
import { boolOption, checkOptions, intOption, required } from '../core/options.js';
import { factorOption, nativeVariants, routeVariantOptions, type NoiseOptions, type RandomRoutingOptions, type RouterStats } from './routing-variants.js';
import { checkTensor, FLOAT_TYPES, type Tensor } from '../core/tensor.js';
import { checkWeightTensor, exactOption, quantizeOption, type Precision, type QuantizeType, type WeightType } from '../core/quant.js';
import type { WeightTensor } from './experts.js';
import type { ProcessGroup } from '../parallel/process-group.js';
import { ExpertParallelMoeLayer } from '../parallel/ep-layer.js';

export interface MoeLayerWeights extends ExpertWeightsInit {
  /** Router weights [E,d] (Hugging Face `block_sparse_moe.gate.weight`). */
  gate: Tensor;
}

/**
 * Shared experts (DeepSeekMoE, Qwen2-MoE): an always-active SwiGLU FFN applied to every token and
 * added to the routed output. Several shared experts are one of intermediate size n·f_shared: stack
 * their w1/w3 rows and their w2 columns (DeepSeek-MoE stores them that way already).
 */
export interface SharedExpertsWeights {
  /** Gate projection [f_shared,d] (`mlp.shared_expert.gate_proj.weight`); float or quantised like the experts. */
  w1: WeightTensor;
  /** Up projection [f_shared,d]. */
  w3: WeightTensor;
  /** Down projection [d,f_shared]. */
  w2: WeightTensor;
  /**
   * Optional sigmoid gate [1,d] (Qwen2-MoE's `mlp.shared_expert_gate.weight`):
   * out = moe(x) + sigmoid(x·gᵀ)·shared(x). Without it out = moe(x) + shared(x).
   */
  gate?: Tensor;
}

export interface MoeLayerOptions {
  /** Experts per token. Default 2 (Mixtral). */
  topK?: number;
  /** Renormalise the top-k weights to sum to 1. Default true (Mixtral). */
  normalize?: boolean;
  /**
   * Expert capacity factor (Switch/GShard) for prefill calls: each expert keeps
   * ceil(T·k/E · capacityFactor) slots, the rest are dropped in token order (a dropped slot adds
   * nothing; a token whose every slot is dropped gets an MoE output of 0). Default: dropless.
   */
  capacityFactor?: number;
  /**
   * Capacity factor for decode calls (evaluation-time factor): a call is decode when
   * `forward(x, {phase: 'decode'})`, or with phase 'auto' (the default) when x has one token.
   * Default: capacityFactor.
   */
  evalCapacityFactor?: number;
  /** Noisy top-k gating: noise weights [E,d] (copied) and a seed. Default: no noise. */
  noise?: NoiseOptions;
  /** GShard random routing of the second expert (topK = 2). Default: off. */
  randomRouting?: RandomRoutingOptions;
  /** Shared experts added to every token's output (packed with the layer). Default: none. */
  sharedExperts?: SharedExpertsWeights;
  /**
   * Quantise the float expert weights (and shared experts) at pack time: 'q8_0', 'q4_0' or 'q4_k'
   * (d and f multiples of 32, or 256 for q4_k). Quantised tensors given are used as they are.
   * The router stays as given.
   */
  quantize?: QuantizeType;
  /**
   * 'exact': f32 activations against bf16 experts where the CPU's avx512-bf16 table would round
   * them to bf16 (see the README's kernel tables). Default 'default'.
   */
  precision?: Precision;
  /**
   * Every token's result independent of the batch it runs in (ExpertWeights' PackOptions): the
   * same bits alone or among others, and an expert-parallel layer the bits of one process created
   * with it too. Already so on the CPU; on CUDA it costs small batches the decode GEMV path.
   */
  batchInvariant?: boolean;
  /**
   * Expert parallelism: this rank holds only its slice of the experts (`expertRange`) and exchanges
   * rows with the other ranks of the group by all-to-all (MoeLayer.create only;
   * lib/parallel/ep-layer.ts). Given per-expert arrays, the entries of experts other ranks hold are
   * never read and may be null.
   */
  expertParallel?: ProcessGroup;
  backend?: BackendName;
}

export interface ForwardOptions {
  /** Also return the routing: ids, weights, tokens per expert and dropped slots. Default false. */
  returnRouting?: boolean;
  /** Also return `routerStats`: losses, tokens per expert, dropped slots. Default false. */
  returnRouterStats?: boolean;
  /** Also return the clean router logits [T,E] in `routerStats.logits` (implies returnRouterStats). */
  returnLogits?: boolean;
  /** Which capacity factor applies: 'auto' (default: decode when T == 1), 'prefill' or 'decode'. */
  phase?: 'auto' | 'prefill' | 'decode';
  /**
   * Device x with returnRouting: write the tokens per expert into this device int32 [E] (e.g. a row
   * of one [layers, E] tensor that a model reads back once) instead of a fresh one.
   */
  countsOut?: DeviceTensor<'int32'>;
}

export interface Routing {
  /** [T,k] experts chosen for each token, by decreasing weight. */
  topkIds: Tensor<'int32'>;
  /** [T,k] their weights (float32). */
  topkWeights: Tensor<'float32'>;
  /** [E] tokens routed to each expert (before capacity; random routing's -1 slots count nowhere). */
  tokensPerExpert: Tensor<'int32'>;
  /** [E] slots each expert dropped for its capacity. */
  dropped: Tensor<'int32'>;
}

export interface MoeRouterStats extends RouterStats {
  /** [E] tokens routed to each expert (before capacity). */
  tokensPerExpert: Tensor<'int32'>;
  /** [E] slots each expert dropped for its capacity. */
  dropped: Tensor<'int32'>;
  /** [T,E] clean router logits (float32), with `returnLogits`. */
  logits?: Tensor<'float32'>;
}

export interface MoeOutput {
  /** [T,d], the type of the input. */
  output: Tensor;
  routing?: Routing;
  routerStats?: MoeRouterStats;
}

/**
 * The result of forward(x, options) for host x: `routing` is there (not possibly undefined) when
 * options say `returnRouting: true`, `routerStats` when they say `returnRouterStats: true` or
 * `returnLogits: true` (with `logits` then).
 */
export type MoeResult<O extends ForwardOptions | undefined = ForwardOptions> = MoeOutput &
  (O extends { returnRouting: true } ? { routing: Routing } : unknown) &
  (O extends { returnLogits: true }
    ? { routerStats: MoeRouterStats & { logits: Tensor<'float32'> } }
    : O extends { returnRouterStats: true }
      ? { routerStats: MoeRouterStats }
      : unknown);
/** The result of forward(x, options) for a DeviceTensor x. */
export type DeviceMoeResult<O extends ForwardOptions | undefined = ForwardOptions> = DeviceMoeOutput &
  (O extends { returnRouting: true } ? { routing: { tokensPerExpert: DeviceTensor<'int32'> } } : unknown);

/** The MoE layer's result for a DeviceTensor input: device tensors, the routing counts only. */
export interface DeviceMoeOutput {
  /** [T,d] on the device, the type of the input. */
  output: DeviceTensor;
  /** With returnRouting: the slots routed to each expert, [E] int32 on the device. */
  routing?: { tokensPerExpert: DeviceTensor<'int32'> };
}

const nt = (t: Tensor | DeviceTensor) => t as unknown as NativeTensor;

/** A private copy of a float tensor the layer keeps (the caller may reuse its arrays). */
function copyTensor(t: unknown, name: string): Tensor {
  const c = checkTensor(t, name, FLOAT_TYPES);
  return { type: c.type, data: c.data.slice() as Tensor['data'], dims: [...c.dims] };
}

/**
 * A sparse MoE layer. Create it once (weights are copied and packed; the caller may drop its
 * arrays), then call `forward` per request: concurrent calls are safe and return the same bits as
 * serial ones.
 */
export class MoeLayer {
  readonly numExperts: number;
  readonly hiddenSize: number;
  readonly intermediateSize: number;
  readonly topK: number;
  readonly normalize: boolean;
  /** Capacity factor of prefill calls; undefined: dropless. */
  readonly capacityFactor: number | undefined;
  /** Capacity factor of decode calls; undefined: that of prefill. */
  readonly evalCapacityFactor: number | undefined;
  readonly backend: ResolvedBackend;
  /** Type of the packed expert weights (W1/W3; see ExpertWeights.w2Type). */
  readonly weightType: WeightType;
  readonly #gate: Tensor;
  readonly #experts: ExpertWeights;
  readonly #variants: ReturnType<typeof routeVariantOptions>;
  readonly #shared: ExpertWeights | undefined;
  readonly #sharedGate: Tensor | undefined;
  /** Intermediate size of the shared experts; 0 without them. */
  readonly sharedIntermediateSize: number;

  /** Packs the weights synchronously; prefer `MoeLayer.create` for large layers. */
  constructor(weights: MoeLayerWeights, options?: MoeLayerOptions, /** @internal */ packed?: ExpertWeights, /** @internal */ packedShared?: ExpertWeights) {
    const o = checkOptions(options);
    if (o.expertParallel !== undefined) throw typeError('options.expertParallel needs MoeLayer.create (an async, collective call), not new MoeLayer()');
    const gate = copyTensor(required<unknown>(weights, 'gate', 'weights'), 'weights.gate');
    const quantize = quantizeOption(o);
    const precision: Precision = exactOption(o) ? 'exact' : 'default';
    const batchInvariant = boolOption(o, 'batchInvariant', false);
    const experts = packed ?? ExpertWeights.packSync(weights, { backend: o.backend as BackendName, gate, quantize, precision, batchInvariant });
    let shared = packedShared;
    try {
      const s = sharedOptions(o, experts, quantize);
      if (s && !shared) shared = ExpertWeights.packSync(s.weights, { backend: o.backend as BackendName, gate: s.gate, quantize, precision, batchInvariant });
      if (shared) checkShared(shared, experts);
      this.#shared = shared;
      this.#sharedGate = s?.gate;
      this.sharedIntermediateSize = shared?.intermediateSize ?? 0;
      const E = experts.numExperts;
      if (gate.dims.length !== 2 || gate.dims[0] !== E || gate.dims[1] !== experts.hiddenSize)
        throw rangeError(`weights.gate.dims must be [${E},${experts.hiddenSize}] (experts, hidden size), got [${gate.dims.join(',')}]`);
      this.topK = intOption(o, 'topK', Math.min(2, E), 1, E);
      this.normalize = boolOption(o, 'normalize', true);
      this.capacityFactor = factorOption(o, 'capacityFactor');
      this.evalCapacityFactor = factorOption(o, 'evalCapacityFactor');
      this.#variants = routeVariantOptions(o, this.topK, E, experts.hiddenSize, true);
    } catch (e) {
      if (!packed) experts.dispose();
      if (!packedShared) shared?.dispose();
      throw e;
    }
    this.numExperts = experts.numExperts;
    this.hiddenSize = experts.hiddenSize;
    this.intermediateSize = experts.intermediateSize;
    this.weightType = experts.type;
    this.backend = experts.backend;
    this.#gate = gate;
    this.#experts = experts;
  }

  /**
   * Creates a layer, packing the weights off the event loop. With `expertParallel: group` it is an
   * ExpertParallelMoeLayer holding this rank's experts only.
   */
  static async create(weights: MoeLayerWeights, options: MoeLayerOptions & { expertParallel: ProcessGroup }): Promise<ExpertParallelMoeLayer>;
  static async create(weights: MoeLayerWeights, options?: MoeLayerOptions): Promise<MoeLayer>;
  static async create(weights: MoeLayerWeights, options?: MoeLayerOptions): Promise<MoeLayer | ExpertParallelMoeLayer> {
    const o = checkOptions(options);
    if (o.expertParallel !== undefined) return ExpertParallelMoeLayer.create(weights, o as unknown as MoeLayerOptions & { expertParallel: ProcessGroup });
    const gate = checkTensor(required<unknown>(weights, 'gate', 'weights'), 'weights.gate', FLOAT_TYPES); // fail before packing
    const quantize = quantizeOption(o);
    const precision: Precision = exactOption(o) ? 'exact' : 'default';
    const batchInvariant = boolOption(o, 'batchInvariant', false);
    const packed = await ExpertWeights.pack(weights, { backend: o.backend as BackendName, gate, quantize, precision, batchInvariant });
    let shared: ExpertWeights | undefined;
    try {
      const s = sharedOptions(o, packed, quantize);
      if (s) shared = await ExpertWeights.pack(s.weights, { backend: o.backend as BackendName, gate: s.gate, quantize, precision, batchInvariant });
      return new MoeLayer(weights, options, packed, shared);
    } catch (e) {
      packed.dispose();
      shared?.dispose();
      throw e;
    }
  }

  /** Bytes held by the layer's weights. */
  get bytes(): number {
    return this.#experts.bytes + this.#gate.data.byteLength + (this.#shared?.bytes ?? 0) + (this.#sharedGate?.data.byteLength ?? 0);
  }

  get disposed(): boolean {
    return this.#experts.disposed;
  }

  /**
   * Runs the layer on x [T,d] off the event loop. A DeviceTensor x (a layer on a CUDA backend) keeps
   * the work on the device and gives device tensors; router logits and losses need host tensors.
   */
  async forward<O extends ForwardOptions | undefined = undefined>(x: Tensor, options?: O): Promise<MoeResult<O>>;
  async forward<O extends ForwardOptions | undefined = undefined>(x: DeviceTensor, options?: O): Promise<DeviceMoeResult<O>>;
  async forward(x: Tensor | DeviceTensor, options?: ForwardOptions): Promise<MoeOutput | DeviceMoeOutput> {
    const [w, routing, opts, stats] = this.#args(options);
    const r = await binding.moe_forward(nt(x), w, { ...opts, async: true });
    return x instanceof DeviceTensor ? deviceOutput(r, routing) : output(r, routing, stats);
  }

  /** Runs the layer on the calling thread (for tiny calls). */
  forwardSync<O extends ForwardOptions | undefined = undefined>(x: Tensor, options?: O): MoeResult<O>;
  forwardSync<O extends ForwardOptions | undefined = undefined>(x: DeviceTensor, options?: O): DeviceMoeResult<O>;
  forwardSync(x: Tensor | DeviceTensor, options?: ForwardOptions): MoeOutput | DeviceMoeOutput {
    const [w, routing, opts, stats] = this.#args(options);
    const r = binding.moe_forward(nt(x), w, opts);
    return x instanceof DeviceTensor ? deviceOutput(r, routing) : output(r, routing, stats);
  }

  /** Frees the packed weights; calls already running finish first. */
  dispose(): void {
    this.#experts.dispose();
    this.#shared?.dispose();
  }

  /** `using layer = ...`: dispose() at the end of the scope. */
  [Symbol.dispose](): void {
    this.dispose();
  }
  /** `await using`: the same (calls already running finish first either way). */
  async [Symbol.asyncDispose](): Promise<void> {
    this.dispose();
  }

  #args(options?: ForwardOptions) {
    if (this.#experts.disposed) throw new MoeError('MoeLayer was disposed and cannot be used again', 'ERR_DISPOSED');
    const o = checkOptions(options);
    const logits = boolOption(o, 'returnLogits', false);
    const stats = boolOption(o, 'returnRouterStats', false) || logits;
    const phase = o.phase ?? 'auto';
    if (phase !== 'auto' && phase !== 'prefill' && phase !== 'decode')
      throw typeError(`options.phase must be 'auto', 'prefill' or 'decode', got ${describe(phase)}`);
    const routing = boolOption(o, 'returnRouting', false);
    const variants: NativeForwardOptions = {
      topK: this.topK,
      normalize: this.normalize,
      wantRouting: routing || stats,
      ...nativeVariants(this.#variants, stats),
      capacityFactor: this.capacityFactor ?? 0,
      evalCapacityFactor: this.evalCapacityFactor ?? 0,
      decode: phase === 'auto' ? -1 : phase === 'decode' ? 1 : 0,
      wantLogits: logits,
    };
    if (o.countsOut !== undefined) {
      if (!(o.countsOut instanceof DeviceTensor)) throw typeError(`options.countsOut must be a DeviceTensor, got ${describe(o.countsOut)}`);
      variants.countsOut = o.countsOut as unknown as NativeDeviceTensor;
    }
    if (this.#shared) variants.sharedExperts = nativeExperts(this.#shared, 'sharedExperts');  // its gate packed with it
    return [nativeExperts(this.#experts, 'experts'), routing, variants, stats] as const;
  }
}

/** The checked shared-expert weights of the options (gate copied), or undefined. */
function sharedOptions(o: Record<string, unknown>, experts: ExpertWeights, quantize?: QuantizeType): { weights: ExpertWeightsInit; gate?: Tensor } | undefined {
  if (o.sharedExperts === undefined) return undefined;
  const s = checkOptions(o.sharedExperts, 'options.sharedExperts');
  const m = (k: 'w1' | 'w3' | 'w2'): WeightTensor[] => {
    const t = checkWeightTensor(required<unknown>(s, k, 'options.sharedExperts'), `options.sharedExperts.${k}`);
    if (t.dims.length !== 2) throw rangeError(`options.sharedExperts.${k} must be 2-D, got dims [${t.dims.join(',')}]`);
    // float shared experts of a quantised layer are quantised with it (options.quantize)
    const floatOfQuantized = quantize !== undefined && (FLOAT_TYPES as readonly string[]).includes(t.type);
    if (t.type !== experts.type && !floatOfQuantized && k !== 'w2')
      throw typeError(`options.sharedExperts.${k}.type '${t.type}' differs from the experts' '${experts.type}'`);
    return [t];
  };
  const weights = { w1: m('w1'), w3: m('w3'), w2: m('w2') };
  let gate: Tensor | undefined;
  if (s.gate !== undefined) {
    gate = copyTensor(s.gate, 'options.sharedExperts.gate');
    if (gate.dims.length !== 2 || gate.dims[0] !== 1 || gate.dims[1] !== experts.hiddenSize)
      throw rangeError(`options.sharedExperts.gate.dims must be [1,${experts.hiddenSize}], got [${gate.dims.join(',')}]`);
  }
  return { weights, gate };
}

function checkShared(shared: ExpertWeights, experts: ExpertWeights): void {
  if (shared.hiddenSize !== experts.hiddenSize)
    throw rangeError(`options.sharedExperts hidden size ${shared.hiddenSize} differs from the experts' ${experts.hiddenSize}`);
}

function deviceOutput(r: NativeMoeResult, routing: boolean): DeviceMoeOutput {
  const res: DeviceMoeOutput = { output: DeviceTensor.wrap(r.out as NativeDeviceTensor) };
  if (routing && r.expertCounts) res.routing = { tokensPerExpert: DeviceTensor.wrap<'int32'>(r.expertCounts as unknown as NativeDeviceTensor) };
  return res;
}

function output(r: NativeMoeResult, routing: boolean, stats: boolean): MoeOutput {
  const res: MoeOutput = { output: r.out as Tensor };
  if (routing && r.topkIds)
    res.routing = {
      topkIds: r.topkIds as Tensor<'int32'>,
      topkWeights: r.topkWeights as Tensor<'float32'>,
      tokensPerExpert: r.expertCounts as Tensor<'int32'>,
      dropped: r.dropped as Tensor<'int32'>,
    };
  if (stats && r.stats) {
    res.routerStats = {
      auxLoss: r.stats.auxLoss,
      zLoss: r.stats.zLoss,
      tokensPerExpert: r.expertCounts as Tensor<'int32'>,
      dropped: r.dropped as Tensor<'int32'>,
    };
    if (r.logits) res.routerStats.logits = r.logits as Tensor<'float32'>;
  }
  return res;
}

/**
 * One MoE forward. With raw weights the layer is packed for this call and freed after it; pass a
 * `MoeLayer` to pack once and serve many calls.
 */
export async function moeForward<O extends (MoeLayerOptions & ForwardOptions) | undefined = undefined>(
  x: Tensor,
  weights: MoeLayerWeights | MoeLayer,
  options?: O,
): Promise<MoeResult<O>> {
  const o = checkOptions(options);
  if (weights instanceof MoeLayer) {
    for (const k of ['topK', 'normalize', 'capacityFactor', 'evalCapacityFactor'] as const)
      if (o[k] !== undefined && o[k] !== weights[k])
        throw rangeError(`options.${k} (${describe(o[k])}) differs from the layer's ${k} (${weights[k]}); it is fixed when the layer is created`);
    for (const k of ['noise', 'randomRouting', 'sharedExperts', 'quantize', 'precision'] as const)
      if (o[k] !== undefined) throw rangeError(`options.${k} cannot be given with a MoeLayer; it is fixed when the layer is created`);
    return weights.forward(x, options) as Promise<MoeResult<O>>;
  }
  const layer = await MoeLayer.create(weights, options);
  try {
    return (await layer.forward(x, options)) as MoeResult<O>;
  } finally {
    layer.dispose();
  }
}

// ---- dense SwiGLU FFN ------------------------------------------------------------------------

export interface DenseFfnWeights {
  /** Gate projection [f,d] (float or quantised). */
  w1: WeightTensor;
  /** Up projection [f,d]. */
  w3: WeightTensor;
  /** Down projection [d,f]. */
  w2: WeightTensor;
}

export interface DenseFfnOptions {
  backend?: BackendName;
  /** Quantise float weights at pack time ('q8_0', 'q4_0', 'q4_k'); quantised ones are used as they are. */
  quantize?: QuantizeType;
  /** 'exact': f32 activations against bf16 weights on the avx512-bf16 table. Default 'default'. */
  precision?: Precision;
}

function denseAsExperts(weights: DenseFfnWeights): ExpertWeightsInit {
  const m = (k: 'w1' | 'w3' | 'w2') => {
    const t = required<WeightTensor>(weights, k, 'weights');
    if (Array.isArray(t)) throw typeError(`weights.${k} must be one 2-D tensor, got an array`);
    return [t];
  };
  return { w1: m('w1'), w3: m('w3'), w2: m('w2') };
}

/** A dense SwiGLU FFN, out = W2 (silu(W1 x) * (W3 x)): the baseline an MoE layer is measured against. */
export class DenseFfn {
  readonly hiddenSize: number;
  readonly intermediateSize: number;
  readonly weightType: WeightType;
  readonly backend: ResolvedBackend;
  readonly #w: ExpertWeights;

  constructor(weights: DenseFfnWeights, options?: DenseFfnOptions, /** @internal */ packed?: ExpertWeights) {
    const o = checkOptions(options);
    const w = packed ?? ExpertWeights.packSync(denseAsExperts(weights), { backend: o.backend as BackendName, quantize: quantizeOption(o), precision: exactOption(o) ? 'exact' : 'default' });
    this.hiddenSize = w.hiddenSize;
    this.intermediateSize = w.intermediateSize;
    this.weightType = w.type;
    this.backend = w.backend;
    this.#w = w;
  }

  static async create(weights: DenseFfnWeights, options?: DenseFfnOptions): Promise<DenseFfn> {
    const o = checkOptions(options);
    return new DenseFfn(weights, options, await ExpertWeights.pack(denseAsExperts(weights), { backend: o.backend as BackendName, quantize: quantizeOption(o), precision: exactOption(o) ? 'exact' : 'default' }));
  }

  get bytes(): number {
    return this.#w.bytes;
  }
  get disposed(): boolean {
    return this.#w.disposed;
  }

  /** out [T,d] = FFN(x); a DeviceTensor x (an FFN on a CUDA backend) gives a DeviceTensor. */
  async forward(x: Tensor): Promise<Tensor>;
  async forward(x: DeviceTensor): Promise<DeviceTensor>;
  async forward(x: Tensor | DeviceTensor): Promise<Tensor | DeviceTensor> {
    const r = await binding.dense_ffn(nt(x), this.#native(), { async: true });
    return x instanceof DeviceTensor ? DeviceTensor.wrap(r as NativeDeviceTensor) : (r as Tensor);
  }
  forwardSync(x: Tensor): Tensor;
  forwardSync(x: DeviceTensor): DeviceTensor;
  forwardSync(x: Tensor | DeviceTensor): Tensor | DeviceTensor {
    const r = binding.dense_ffn(nt(x), this.#native());
    return x instanceof DeviceTensor ? DeviceTensor.wrap(r as NativeDeviceTensor) : (r as Tensor);
  }
  dispose(): void {
    this.#w.dispose();
  }

  /** `using layer = ...`: dispose() at the end of the scope. */
  [Symbol.dispose](): void {
    this.dispose();
  }
  /** `await using`: the same (calls already running finish first either way). */
  async [Symbol.asyncDispose](): Promise<void> {
    this.dispose();
  }

  #native() {
    if (this.#w.disposed) throw new MoeError('DenseFfn was disposed and cannot be used again', 'ERR_DISPOSED');
    return nativeExperts(this.#w, 'weights');
  }
}

/** One dense FFN forward; with raw weights they are packed for this call only. */
export async function denseFfnForward(x: Tensor, weights: DenseFfnWeights | DenseFfn, options?: DenseFfnOptions): Promise<Tensor> {
  if (weights instanceof DenseFfn) return weights.forward(x);
  const ffn = await DenseFfn.create(weights, options);
  try {
    return await ffn.forward(x);
  } finally {
    ffn.dispose();
  }
}
