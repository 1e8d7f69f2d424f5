/**
 * The ops of a whole decoder model (Mixtral) besides the MoE layer: embedding, RMS norm, linear
 * projections, rotary embedding, causal grouped-query attention with a KV cache, the residual add
 * and token sampling. Building blocks for MixtralBlock / MixtralModel.
 *
 *   embedding   table [V,d], ids [T] int32                   -> [T,d]
 *   rmsNorm     x [T,d], weight [d]                           -> [T,d]
 *   Linear      W [out,in] packed once; forward(x [T,in])     -> [T,out]  (x W^T, no bias)
 *   rope        q [T,Hq,hd], k [T,Hkv,hd], positions [T]      -> rotated q, k
 *   attention   q [T,Hq,hd], k, v [T,Hkv,hd], KvCache         -> [T,Hq,hd]
 *   add         a, b (same dims)                              -> a + b
 *   sample      logits [V] or [T,V] float32                   -> ids [T] int32
 *
 * Tensors of any float type in, f32 math and accumulation inside. Every op has a Promise form (runs
 * off the event loop) and a Sync form (for tiny calls, e.g. one decode step); both give the same
 * bits on any thread count. Ops that produce a tensor take `out` (write into a tensor you own, to
 * avoid an allocation per call in a decode loop) and `outType` (the type of a fresh output).
 *
 * Ops run where their tensors are: host `Tensor`s on the CPU backend, `DeviceTensor`s (lib/core/device.ts)
 * on the CUDA backend, returning device tensors (sample returns host ids). A Linear or KvCache
 * created with a CUDA `backend` serves device tensors. On CUDA: rope's frequencies are f32 (HF's
 * rounding; the CPU computes angles in f64), attention needs a head dim of 32, 64, 128 or 256, add
 * needs one type for a, b and out, and linear writes float32 or the weights' type.
 */
import { binding, type NativeDeviceTensor, type NativeKvCache, type NativeKvPool, type NativeLinear, type NativeTensor } from '../core/binding.js';
import { DeviceTensor } from '../core/device.js';
import { resolveBackend, type BackendName, type ResolvedBackend } from '../core/backend.js';
import { describe, MoeError, typeError } from '../core/errors.js';
import { boolOption, checkOptions, intOption } from '../core/options.js';
import type { FloatType, Tensor } from '../core/tensor.js';
import { exactOption, isQuantType, quantize, quantizeOption, quantizeSync, type Precision, type QuantizeType, type QuantTensor, type WeightType } from '../core/quant.js';

/** Where a Linear or KvCache lives: the CPU unless a backend is asked for. */
function ownerBackend(backend: unknown): ResolvedBackend {
  return backend === undefined ? 'cpu' : resolveBackend(backend);
}
function packArgs(o: Record<string, unknown>, backend: ResolvedBackend): { backend: ResolvedBackend; bias?: NativeTensor; exactF32: boolean } {
  return { backend, ...(o.bias === undefined ? {} : { bias: nt(o.bias as Tensor) }), exactF32: exactOption(o) };
}

/** A host tensor or a device tensor: ops take tensors of one place and return that place's. */
export type AnyTensor = Tensor | DeviceTensor;
/** The result of an op on X: a DeviceTensor for device inputs, else a host Tensor. */
export type Placed<X> = X extends DeviceTensor ? DeviceTensor : Tensor;

const nt = (t: AnyTensor | null | undefined) => t as unknown as NativeTensor;

/** A native result as the caller's place: native device objects become DeviceTensors. */
function placed<R>(r: unknown): R {
  if (r && typeof r === 'object' && !(r instanceof DeviceTensor) && 'buffer' in r) return DeviceTensor.wrap(r as NativeDeviceTensor) as R;
  return r as R;
}

export interface OutOptions {
  /** Type of a fresh output tensor (default: per op). Ignored when `out` is given, except that it must match. */
  outType?: FloatType;
  /** A tensor of the result's dims to write into (a DeviceTensor for device inputs); it is returned. */
  out?: AnyTensor;
}

function outArgs(o: Record<string, unknown>) {
  return { outType: o.outType as FloatType | undefined, out: nt(o.out as AnyTensor | undefined) };
}

function numberOption(o: Record<string, unknown>, key: string, dflt: number): number {
  const v = o[key];
  if (v === undefined) return dflt;
  if (typeof v !== 'number') throw typeError(`options.${key} must be a number, got ${describe(v)}`);
  return v; // range checked natively, with the value in the message
}

// ---- embedding ----------------------------------------------------------------------------------

/**
 * Rows of `table` [V,d] for token `ids` [T]; output type defaults to the table's (float32 for a
 * quantised table). A host table may be quantised (q8_0, q4_0, q4_k, q5_k, q6_k rows of blocks, as
 * a GGUF file's token_embd): each row is dequantised as it is read, to the values of `dequantize`.
 */
export async function embedding<X extends AnyTensor | QuantTensor>(table: X, ids: Tensor<'int32'>, options?: OutOptions): Promise<Placed<X>> {
  return placed(await binding.embedding(nt(table as AnyTensor), nt(ids), { ...outArgs(checkOptions(options)), async: true }));
}
export function embeddingSync<X extends AnyTensor | QuantTensor>(table: X, ids: Tensor<'int32'>, options?: OutOptions): Placed<X> {
  return placed(binding.embedding(nt(table as AnyTensor), nt(ids), outArgs(checkOptions(options))));
}

// ---- RMS norm -------------------------------------------------------------------------------------

export interface RmsNormOptions extends OutOptions {
  /** Added to mean(x^2); default 1e-5 (Mixtral's rms_norm_eps). */
  eps?: number;
}

/** Hugging Face MixtralRMSNorm: x * rsqrt(mean(x^2) + eps) * weight, in f32; output type defaults to x's. */
export async function rmsNorm<X extends AnyTensor>(x: X, weight: AnyTensor, options?: RmsNormOptions): Promise<Placed<X>> {
  const o = checkOptions(options);
  return placed(await binding.rms_norm(nt(x), nt(weight), { eps: numberOption(o, 'eps', 1e-5), ...outArgs(o), async: true }));
}
export function rmsNormSync<X extends AnyTensor>(x: X, weight: AnyTensor, options?: RmsNormOptions): Placed<X> {
  const o = checkOptions(options);
  return placed(binding.rms_norm(nt(x), nt(weight), { eps: numberOption(o, 'eps', 1e-5), ...outArgs(o) }));
}

// ---- linear -----------------------------------------------------------------------------------------

/** The JS owner of a native handle: dispose() frees it now; calls already running finish first. */
abstract class NativeOwner<N extends { dispose(): void }> {
  readonly #native: N;
  readonly #what: string;
  #disposed = false;
  constructor(native: N, what: string) {
    this.#native = native;
    this.#what = what;
  }
  get disposed(): boolean {
    return this.#disposed;
  }
  dispose(): void {
    this.#disposed = true;
    this.#native.dispose();
  }

  /** `using layer = ...`: dispose() at the end of the scope. */
  [Symbol.dispose](): void {
    this.dispose();
  }
  /** `await using`: the same (calls already running finish first either way). */
  async [Symbol.asyncDispose](): Promise<void> {
    this.dispose();
  }
  /** The native handle; throws ERR_DISPOSED after dispose(). */
  protected handle(): N {
    if (this.#disposed) throw new MoeError(`${this.#what} was disposed and cannot be used again`, 'ERR_DISPOSED');
    return this.#native;
  }
}

export interface LinearPackOptions {
  /** A bias [out] (any float type, kept as f32): y = x W^T + bias. */
  bias?: Tensor;
  /**
   * Quantise a float W at pack time: 'q8_0', 'q4_0' or 'q4_k' (in a multiple of 32, or 256).
   * A quantised W (lib/core/quant.ts) is used as it is.
   */
  quantize?: QuantizeType;
  /** 'exact': f32 activations against bf16 W on the CPU's avx512-bf16 table (see Precision). Default 'default'. */
  precision?: Precision;
  /** Where the weights live: 'cpu' (default), or a CUDA backend to serve device tensors ('auto': CUDA when available). */
  backend?: BackendName;
}

/**
 * A linear layer without bias, y = x W^T, with W [out,in] in Hugging Face layout (q/k/v/o
 * projections, the LM head). The weights are copied and packed once; the caller may drop its
 * arrays. Output type defaults to float32.
 */
export class Linear extends NativeOwner<NativeLinear> {
  readonly inFeatures: number;
  readonly outFeatures: number;
  /** Weight type, as packed. */
  readonly type: WeightType;
  /** Bytes of the packed copy. */
  readonly bytes: number;
  readonly backend: ResolvedBackend;
  /** Whether the layer adds a bias. */
  readonly hasBias: boolean;

  /** @internal use Linear.pack / packSync */
  constructor(native: NativeLinear, backend: ResolvedBackend) {
    super(native, 'Linear');
    const info = native.info();
    this.inFeatures = info.inFeatures!;
    this.outFeatures = info.outFeatures!;
    this.type = info.type as WeightType;
    this.bytes = info.bytes!;
    this.backend = backend;
    this.hasBias = info.bias === true;
  }

  /** Packs W [out,in] (and its bias) off the event loop. */
  static async pack(w: Tensor | QuantTensor, options?: LinearPackOptions): Promise<Linear> {
    const o = checkOptions(options);
    const backend = ownerBackend(o.backend);
    const q = quantizeOption(o);
    const wq = q && !isQuantType(w?.type) ? await quantize(w as Tensor, q) : w;
    return new Linear(await binding.pack_linear(wq as unknown as NativeTensor, { ...packArgs(o, backend), async: true }), backend);
  }
  static packSync(w: Tensor | QuantTensor, options?: LinearPackOptions): Linear {
    const o = checkOptions(options);
    const backend = ownerBackend(o.backend);
    const q = quantizeOption(o);
    const wq = q && !isQuantType(w?.type) ? quantizeSync(w as Tensor, q) : w;
    return new Linear(binding.pack_linear(wq as unknown as NativeTensor, packArgs(o, backend)), backend);
  }

  /** y [T,out] = x [T,in] W^T (device tensors for a Linear on a CUDA backend). */
  async forward<X extends AnyTensor>(x: X, options?: OutOptions): Promise<Placed<X>> {
    return placed(await binding.linear(nt(x), this.handle(), { ...outArgs(checkOptions(options)), async: true }));
  }
  forwardSync<X extends AnyTensor>(x: X, options?: OutOptions): Placed<X> {
    return placed(binding.linear(nt(x), this.handle(), outArgs(checkOptions(options))));
  }

}

function checkLinear(w: unknown): Linear {
  if (!(w instanceof Linear)) throw typeError(`w must be a Linear from Linear.pack(), got ${describe(w)}`);
  return w;
}
/** y = x W^T with packed weights (the same as w.forward(x)). */
export async function linear<X extends AnyTensor>(x: X, w: Linear, options?: OutOptions): Promise<Placed<X>> {
  return checkLinear(w).forward(x, options);
}
export function linearSync<X extends AnyTensor>(x: X, w: Linear, options?: OutOptions): Placed<X> {
  return checkLinear(w).forwardSync(x, options);
}

// ---- rotary position embedding ---------------------------------------------------------------------

export interface RopeOptions {
  /** Base of the frequencies; default 10000 (Hugging Face's default; Mixtral's config says 1e6). */
  theta?: number;
  /** Rotate q and k in place (returns the same tensors). Default false: fresh tensors of their types. */
  inPlace?: boolean;
}
export interface RopeResult<X extends AnyTensor = Tensor> {
  q: Placed<X>;
  k: Placed<X> | null;
}

function ropeArgs(q: AnyTensor, k: AnyTensor | null | undefined, options?: RopeOptions) {
  const o = checkOptions(options);
  const inPlace = boolOption(o, 'inPlace', false);
  return { theta: numberOption(o, 'theta', 10000), qOut: inPlace ? nt(q) : null, kOut: inPlace ? nt(k) : null };
}

/**
 * Rotary embedding, Hugging Face rotate_half convention (pairs i, i + hd/2; inv_freq =
 * theta^(-2i/hd)); angles, cosines and sines in f64, rotation in f32. q [T,Hq,hd] and k [T,Hkv,hd]
 * (k may be null), positions [T] int32 (on the device for device q, k: a device positions tensor
 * costs no copy per call, where host positions are copied in each time).
 */
export async function rope<X extends AnyTensor>(q: X, k: X | null, positions: Tensor<'int32'> | DeviceTensor<'int32'>, options?: RopeOptions): Promise<RopeResult<X>> {
  const r = await binding.rope(nt(q), nt(k), nt(positions), { ...ropeArgs(q, k, options), async: true });
  return { q: placed(r.q), k: placed(r.k) };
}
export function ropeSync<X extends AnyTensor>(q: X, k: X | null, positions: Tensor<'int32'> | DeviceTensor<'int32'>, options?: RopeOptions): RopeResult<X> {
  const r = binding.rope(nt(q), nt(k), nt(positions), ropeArgs(q, k, options));
  return { q: placed(r.q), k: placed(r.k) };
}

// ---- KV cache and attention ---------------------------------------------------------------------------

export interface KvCacheInit {
  /** Positions the cache can hold (the whole sequence: there is no ring buffer). */
  maxSeq: number;
  numKvHeads: number;
  headDim: number;
  /** Element type of the stored keys and values; default 'float32'. */
  type?: FloatType;
}
export interface KvCacheOptions {
  /** Where the keys and values live: 'cpu' (default), or a CUDA backend for device tensors. */
  backend?: BackendName;
}

/**
 * One attention layer's keys and values, each [numKvHeads, maxSeq, headDim] in the backend, and
 * the sequence length written so far. `attention` appends at `startPos` (default: the length);
 * `reset()` starts a new sequence, `truncate(n)` rewinds to n positions (e.g. to re-use a prompt
 * prefix). Keep one cache per layer and sequence.
 */
export class KvCache extends NativeOwner<NativeKvCache> {
  readonly maxSeq: number;
  readonly numKvHeads: number;
  readonly headDim: number;
  readonly type: FloatType;
  readonly bytes: number;
  readonly backend: ResolvedBackend;

  constructor(init: KvCacheInit, options?: KvCacheOptions) {
    const i = checkOptions(init, 'init');
    const backend = ownerBackend(checkOptions(options).backend);
    const n = (k: string) => {
      if (i[k] === undefined) throw typeError(`init.${k} is required, got undefined`);
      return intOption(i, k, 0, 1, Number.MAX_SAFE_INTEGER, `init.${k}`);
    };
    const [maxSeq, heads, hd] = [n('maxSeq'), n('numKvHeads'), n('headDim')];
    const native = binding.create_kv_cache({ maxSeq, numKvHeads: heads, headDim: hd, type: (i.type ?? 'float32') as FloatType }, { backend });
    super(native, 'KvCache');
    const info = native.info();
    this.maxSeq = info.maxSeq!;
    this.numKvHeads = info.numKvHeads!;
    this.headDim = info.headDim!;
    this.type = info.type as FloatType;
    this.bytes = info.bytes!;
    this.backend = backend;
  }

  /** Positions written so far (including calls still running). */
  get length(): number {
    return this.handle().info().length!;
  }
  /** Starts a new sequence. */
  reset(): void {
    this.handle().truncate(0);
  }
  /** Keeps the first `length` positions (0 <= length <= this.length). */
  truncate(length: number): void {
    this.handle().truncate(length);
  }
  /** @internal */
  static native(c: unknown): NativeKvCache {
    if (!(c instanceof KvCache)) throw typeError(`cache must be a KvCache, got ${describe(c)}`);
    return c.handle();
  }
}

export interface AttentionOptions extends OutOptions {
  /** Position of the first of the T tokens; default the cache's length (append). */
  startPos?: number;
  /** 0 (default): full causal attention; w: a query at p sees keys j with p - w < j <= p. */
  slidingWindow?: number;
}

function attentionArgs(cache: KvCache, options?: AttentionOptions) {
  const o = checkOptions(options);
  const native = KvCache.native(cache);
  const start = o.startPos === undefined ? native.info().length! : (o.startPos as number);
  return [native, { startPos: start, slidingWindow: (o.slidingWindow ?? 0) as number, ...outArgs(o) }] as const;
}

/**
 * Causal grouped-query attention: writes k, v [T,Hkv,hd] into the cache at startPos.., then
 * returns softmax(q K^T / sqrt(hd)) V for q [T,Hq,hd] over the visible positions (query head h uses
 * kv head h / (Hq/Hkv)). Output type defaults to q's. Async calls on one cache run in call order;
 * a Sync call while an async one on the same cache is running throws ERR_BUSY.
 */
// ---- paged KV pool (many sequences, vLLM's paged cache) -------------------------------------------------

export interface KvPoolInit {
  /** Blocks in the pool. */
  numBlocks: number;
  /** Positions per block (vLLM uses 16). */
  blockSize: number;
  numKvHeads: number;
  headDim: number;
  /** Element type of the stored keys and values; default 'float32'. */
  type?: FloatType;
}

/**
 * One attention layer's keys and values for many sequences at once, in fixed-size blocks: a sequence
 * owns the blocks its block table lists (in position order), so memory follows the tokens actually
 * in use. Which blocks belong to whom is the caller's bookkeeping (the serving engine's); the pool
 * holds data only. On a CUDA backend it lives on the device and serves device tensors.
 */
export class KvPool extends NativeOwner<NativeKvPool> {
  readonly numBlocks: number;
  readonly blockSize: number;
  readonly numKvHeads: number;
  readonly headDim: number;
  readonly type: FloatType;
  readonly bytes: number;
  readonly backend: ResolvedBackend;

  constructor(init: KvPoolInit, options?: KvCacheOptions) {
    const i = checkOptions(init, 'init');
    const backend = ownerBackend(checkOptions(options).backend);
    const n = (k: string) => {
      if (i[k] === undefined) throw typeError(`init.${k} is required, got undefined`);
      return intOption(i, k, 0, 1, Number.MAX_SAFE_INTEGER, `init.${k}`);
    };
    const shape = { numBlocks: n('numBlocks'), blockSize: n('blockSize'), numKvHeads: n('numKvHeads'), headDim: n('headDim'), type: (i.type ?? 'float32') as FloatType };
    const native = binding.create_kv_pool(shape, { backend });
    super(native, 'KvPool');
    const info = native.info();
    this.numBlocks = info.numBlocks!;
    this.blockSize = info.blockSize!;
    this.numKvHeads = info.numKvHeads!;
    this.headDim = info.headDim!;
    this.type = info.type as FloatType;
    this.bytes = info.bytes!;
    this.backend = backend;
  }
  /** @internal */
  static native(p: unknown): NativeKvPool {
    if (!(p instanceof KvPool)) throw typeError(`pool must be a KvPool, got ${describe(p)}`);
    return p.handle();
  }
}

export interface PagedAttentionOptions extends OutOptions {
  /** [T] int32: the position of each token in its sequence. */
  positions: Tensor<'int32'>;
  /** [T] int32: each token's sequence, a row of blockTables. */
  seqOf: Tensor<'int32'>;
  /** [S, maxBlocks] int32: the blocks of each sequence in position order (-1: none yet). */
  blockTables: Tensor<'int32'>;
  /** 0 (default): full causal attention; w: a query at p sees keys j with p - w < j <= p. */
  slidingWindow?: number;
}

function pagedArgs(pool: KvPool, options: PagedAttentionOptions) {
  const o = checkOptions(options);
  for (const k of ['positions', 'seqOf', 'blockTables'])
    if (o[k] === undefined) throw typeError(`options.${k} is required, got undefined`);
  return [KvPool.native(pool), {
    positions: nt(o.positions as Tensor),
    seqOf: nt(o.seqOf as Tensor),
    blockTables: nt(o.blockTables as Tensor),
    slidingWindow: (o.slidingWindow ?? 0) as number,
    ...outArgs(o),
  }] as const;
}

/**
 * Causal grouped-query attention for a batch of tokens from many sequences over a paged pool: writes
 * each token's k, v [T,Hkv,hd] at its position in its sequence's blocks, then returns every query's
 * attention over the keys of its own sequence up to its position. A token's result is exactly what
 * `attention` over a KvCache holding its sequence gives (same bits), whatever else is in the batch:
 * the decode steps of 16 sequences, or one sequence's prefill chunk beside them. (sequence, position)
 * pairs must be distinct within a call; every block a position reaches must be in the table.
 */
export async function pagedAttention<X extends AnyTensor>(q: X, k: X, v: X, pool: KvPool, options: PagedAttentionOptions): Promise<Placed<X>> {
  const [p, opts] = pagedArgs(pool, options);
  return placed(await binding.paged_attention(nt(q), nt(k), nt(v), p, { ...opts, async: true }));
}
export function pagedAttentionSync<X extends AnyTensor>(q: X, k: X, v: X, pool: KvPool, options: PagedAttentionOptions): Placed<X> {
  const [p, opts] = pagedArgs(pool, options);
  return placed(binding.paged_attention(nt(q), nt(k), nt(v), p, opts));
}

export async function attention<X extends AnyTensor>(q: X, k: X, v: X, cache: KvCache, options?: AttentionOptions): Promise<Placed<X>> {
  const [c, opts] = attentionArgs(cache, options);
  return placed(await binding.attention(nt(q), nt(k), nt(v), c, { ...opts, async: true }));
}
export function attentionSync<X extends AnyTensor>(q: X, k: X, v: X, cache: KvCache, options?: AttentionOptions): Placed<X> {
  const [c, opts] = attentionArgs(cache, options);
  return placed(binding.attention(nt(q), nt(k), nt(v), c, opts));
}

// ---- residual add ---------------------------------------------------------------------------------------

export interface AddOptions extends OutOptions {
  /** Write the sum into a (returns a). Default false. */
  inPlace?: boolean;
}

function addArgs(a: AnyTensor, options?: AddOptions) {
  const o = checkOptions(options);
  const { outType, out } = outArgs(o);
  return { outType, out: boolOption(o, 'inPlace', false) ? nt(a) : out };
}

/** a + b element-wise in f32 (same dims); output type defaults to a's. */
export async function add<X extends AnyTensor>(a: X, b: X, options?: AddOptions): Promise<Placed<X>> {
  return placed(await binding.add(nt(a), nt(b), { ...addArgs(a, options), async: true }));
}
export function addSync<X extends AnyTensor>(a: X, b: X, options?: AddOptions): Placed<X> {
  return placed(binding.add(nt(a), nt(b), addArgs(a, options)));
}

// ---- sampling --------------------------------------------------------------------------------------------

/**
 * How one row is sampled. Every field is optional; the defaults are greedy with no filter and no
 * penalty. The same parameters give the same id on every backend (one integer rule, see `sample`).
 */
export interface SamplingParams {
  /** 0 (default): greedy argmax, ties to the lower index, NaN never wins. */
  temperature?: number;
  /** Nucleus: keep the fewest most likely tokens whose probability reaches topP; (0, 1], default 1. */
  topP?: number;
  /** Keep the topK most likely tokens only (ties: lower id first); 0 (default): all. */
  topK?: number;
  /** Drop tokens less likely than minP x the most likely one; [0, 1], default 0. */
  minP?: number;
  /**
   * Repetition penalty (CTRL / Hugging Face's): logits of tokens in `penaltyTokens` are divided by it
   * when positive and multiplied when negative; > 0, default 1 (off).
   */
  repetitionPenalty?: number;
  /** Subtracted once from the logit of each token in `penaltyTokens` (OpenAI's presence_penalty). */
  presencePenalty?: number;
  /** Subtracted from a token's logit per occurrence in `penaltyTokens` (OpenAI's frequency_penalty). */
  frequencyPenalty?: number;
  /** The history the penalties count (e.g. the last 64 tokens of the sequence): ids in [0, V). */
  penaltyTokens?: readonly number[] | Int32Array;
  /** Integer in [0, 2^53); default 0. */
  seed?: number;
  /** Integer in [0, 2^53), e.g. the position being sampled; default 0. */
  step?: number;
}

export interface SampleOptions extends SamplingParams {
  /**
   * One SamplingParams per row of the logits, instead of the top-level ones: rows of different
   * sequences in one call, each drawing with its own (seed, step) whatever its position in the call,
   * so a sequence samples the same ids alone or batched. (With the top-level parameters, row t draws
   * from (seed, step, t).)
   */
  rows?: readonly SamplingParams[];
  /** An int32 tensor [T] to write the ids into. */
  out?: Tensor<'int32'>;
}

const SAMPLING_NUMBERS = ['temperature', 'topP', 'topK', 'minP', 'repetitionPenalty', 'presencePenalty', 'frequencyPenalty', 'seed', 'step'] as const;

function samplingParams(o: Record<string, unknown>, name = 'options'): Record<string, unknown> {
  for (const k of SAMPLING_NUMBERS) {
    const v = o[k];
    if (v !== undefined && typeof v !== 'number') throw typeError(`${name}.${k} must be a number, got ${describe(v)}`);
  }
  return o; // ranges, penaltyTokens and unknown keys are checked natively, with the value in the message
}

function sampleArgs(options?: SampleOptions) {
  const o = checkOptions(options);
  const rows = o.rows;
  if (rows !== undefined) {
    if (!Array.isArray(rows)) throw typeError(`options.rows must be an array of SamplingParams, got ${describe(rows)}`);
    return { ...o, rows: rows.map((r, i) => samplingParams(checkOptions(r, `options.rows[${i}]`), `options.rows[${i}]`)), out: nt(o.out as Tensor) };
  }
  return { ...o, ...samplingParams(o), out: nt(o.out as Tensor) };
}

/**
 * Token ids [T] from float32 logits [V] or [T,V] (V <= 2^23), by the exact rule of
 * native/include/moe/sampling_rule.h: first the penalties on the logits of `penaltyTokens`
 * (repetition, then frequency x count + presence, in double, rounded to float once); then argmax at
 * temperature 0 (ties to the lower index, NaN never wins). Otherwise integer weights
 * floor(exp((l - max) / temperature) * 2^40) in f32, filtered by minP (weights below
 * round(minP * 2^32) * 2^8), topK (the k largest, ties lower id first) and topP (the fewest largest
 * weights whose sum reaches topP of the total), then one Philox4x32-10 draw scaled to the kept sum
 * and the first kept id in index order whose running sum passes it. The same logits and options give
 * the same token on the CPU and the CUDA backend and on any thread count.
 */
export async function sample(logits: Tensor<'float32'> | DeviceTensor<'float32'>, options?: SampleOptions): Promise<Tensor<'int32'>> {
  return (await binding.sample(nt(logits), { ...sampleArgs(options), async: true })) as Tensor<'int32'>;
}
export function sampleSync(logits: Tensor<'float32'> | DeviceTensor<'float32'>, options?: SampleOptions): Tensor<'int32'> {
  return binding.sample(nt(logits), sampleArgs(options)) as Tensor<'int32'>;
}
