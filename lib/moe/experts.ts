/**
 * Packed expert weights: the backend's one copy of an MoE layer's experts, built once from
 * Hugging Face layout weights (w1, w3: [E,f,d]; w2: [E,d,f]; or per-expert arrays of [f,d] /
 * [d,f]). After packing the caller may drop its arrays. Free with dispose(), or let the GC do it.
 */
import { binding, type NativeExpertMatrix, type NativeExperts, type NativeTensor, type NativeWeightTensor } from '../core/binding.js';
import { resolveBackend, type BackendName, type ResolvedBackend } from '../core/backend.js';
import { describe, MoeError, typeError } from '../core/errors.js';
import { boolOption, checkOptions, required } from '../core/options.js';
import type { Tensor } from '../core/tensor.js';
import { exactOption, isQuantType, quantize, quantizeOption, quantizeSync, type Precision, type QuantizeType, type QuantTensor, type WeightType } from '../core/quant.js';

/** An expert weight matrix: float, or quantised blocks (lib/core/quant.ts). */
export type WeightTensor = Tensor | QuantTensor;

export interface ExpertWeightsInit {
  /** Gate projections, [E,f,d] or E tensors of [f,d]. */
  w1: WeightTensor | readonly WeightTensor[];
  /** Up projections, [E,f,d] or E tensors of [f,d]. */
  w3: WeightTensor | readonly WeightTensor[];
  /** Down projections, [E,d,f] or E tensors of [d,f]. */
  w2: WeightTensor | readonly WeightTensor[];
}

export interface PackOptions {
  backend?: BackendName;
  /**
   * Quantise float weights to this format at pack time (quantised tensors given are used as they
   * are). d must be a multiple of the block (32, or 256 for q4_k), and so must f.
   */
  quantize?: QuantizeType;
  /** 'exact': f32 activations against bf16 weights on the avx512-bf16 table (see Precision). Default 'default'. */
  precision?: Precision;
  /**
   * Every row's result independent of how many rows a call has, so a token gets the same bits alone
   * or in any batch, and an expert-parallel layer the bits of one process. The CPU kernels are so
   * already; on CUDA it keeps float experts off the decode GEMV path (16 rows or fewer), whose
   * summation order differs from the tiles', at a cost to small batches. Default false.
   */
  batchInvariant?: boolean;
  /** @internal the router gate packed with the experts: [E,d] (an MoE layer's), or [1,d] (shared experts' sigmoid gate) */
  gate?: Tensor;
}

const handles = new WeakMap<ExpertWeights, NativeExperts>();

export class ExpertWeights {
  readonly numExperts: number;
  /** Model (hidden) size d. */
  readonly hiddenSize: number;
  /** Expert intermediate size f. */
  readonly intermediateSize: number;
  /** Weight type of W1 and W3 (and W2), as packed. */
  readonly type: WeightType;
  /** W2's type: `type`, or another block format (llama.cpp's Q4_K_M keeps some W2 in q6_k). */
  readonly w2Type: WeightType;
  /** Bytes of the weights: the packed copy, and `inPlaceBytes`. */
  readonly bytes: number;
  /**
   * Bytes read where they lie rather than copied: on the CPU backend, quantised experts that are
   * views of a GGUF file the package mapped (GgufFile, MixtralModel.load of a `.gguf`) are used in
   * place, the mapping held by the layer (no second copy; their pages are read from the file when
   * first used). 0 when everything was copied. Writing into those views afterwards would change
   * the layer; truncating the file while it is mapped is as unsafe as for any mapped file.
   */
  readonly inPlaceBytes: number;
  /** Packed with `batchInvariant` (PackOptions). */
  readonly batchInvariant: boolean;
  readonly backend: ResolvedBackend;
  #disposed = false;

  /** @internal use ExpertWeights.pack / packSync */
  constructor(native: NativeExperts, backend: ResolvedBackend) {
    const info = native.info();
    this.numExperts = info.numExperts!;
    this.hiddenSize = info.d!;
    this.intermediateSize = info.f!;
    this.type = info.type as WeightType;
    this.w2Type = (info.w2Type ?? info.type) as WeightType;
    this.inPlaceBytes = info.inPlaceBytes ?? 0;
    this.batchInvariant = info.batchInvariant ?? false;
    this.bytes = info.bytes! + this.inPlaceBytes;
    this.backend = backend;
    handles.set(this, native);
  }

  /** Packs off the event loop. */
  static async pack(weights: ExpertWeightsInit, options?: PackOptions): Promise<ExpertWeights> {
    const [w, backend, q, flags] = args(weights, options);
    if (q) for (const k of ['w1', 'w3', 'w2'] as const) w[k] = await quantizeMatrix(w[k], q, k);
    return new ExpertWeights(await binding.pack_experts(w, { backend, ...flags, async: true }), backend);
  }

  static packSync(weights: ExpertWeightsInit, options?: PackOptions): ExpertWeights {
    const [w, backend, q, flags] = args(weights, options);
    if (q) for (const k of ['w1', 'w3', 'w2'] as const) w[k] = quantizeMatrixSync(w[k], q, k);
    return new ExpertWeights(binding.pack_experts(w, { backend, ...flags }), backend);
  }

  get disposed(): boolean {
    return this.#disposed;
  }

  /** Frees the packed weights now; calls still running finish first. */
  dispose(): void {
    this.#disposed = true;
    handles.get(this)?.dispose();
  }

  /** `using layer = ...`: dispose() at the end of the scope. */
  [Symbol.dispose](): void {
    this.dispose();
  }
  /** `await using`: the same (calls already running finish first either way). */
  async [Symbol.asyncDispose](): Promise<void> {
    this.dispose();
  }
}

type NativeWeights = { w1: NativeExpertMatrix; w3: NativeExpertMatrix; w2: NativeExpertMatrix; gate?: NativeTensor };
function args(weights: ExpertWeightsInit, options?: PackOptions): [NativeWeights, ResolvedBackend, QuantizeType | undefined, { exactF32: boolean; batchInvariant: boolean }] {
  const o = checkOptions(options);
  const backend = resolveBackend(o.backend);
  const q = quantizeOption(o);
  const flags = { exactF32: exactOption(o), batchInvariant: boolOption(o, 'batchInvariant', false) };
  const m = (k: 'w1' | 'w3' | 'w2') => required<NativeExpertMatrix>(weights, k, 'weights');
  const w: NativeWeights = { w1: m('w1'), w3: m('w3'), w2: m('w2') };
  if (o.gate !== undefined) w.gate = o.gate as NativeTensor;
  return [w, backend, q, flags];
}

// A matrix (one tensor or one per expert) with its float tensors quantised; quantised ones kept.
function quantizeMatrixSync(m: NativeExpertMatrix, q: QuantizeType, name: string): NativeExpertMatrix {
  const one = (t: unknown, n: string) =>
    isQuantType((t as { type?: unknown })?.type) ? (t as NativeExpertMatrix) : (quantizeSyncNamed(t, q, n) as unknown as NativeExpertMatrix);
  return Array.isArray(m) ? m.map((t, i) => one(t, `weights.${name}[${i}]`) as never) : one(m, `weights.${name}`);
}
async function quantizeMatrix(m: NativeExpertMatrix, q: QuantizeType, name: string): Promise<NativeExpertMatrix> {
  const one = async (t: unknown, n: string) =>
    isQuantType((t as { type?: unknown })?.type) ? (t as NativeExpertMatrix) : ((await quantizeNamed(t, q, n)) as unknown as NativeExpertMatrix);
  if (!Array.isArray(m)) return one(m, `weights.${name}`);
  const out: NativeWeightTensor[] = [];
  for (let i = 0; i < m.length; i++) out.push((await one(m[i], `weights.${name}[${i}]`)) as never);
  return out;
}
/** quantize() with errors that name the weight. */
function nameError(e: unknown, n: string): never {
  if (e instanceof Error) e.message = e.message.replace(/^tensor\b/, n).replace(/^a (q\w+) tensor's last dim/, `${n}: a $1 tensor's last dim`);
  throw e;
}
function quantizeSyncNamed(t: unknown, q: QuantizeType, n: string) {
  try {
    return quantizeSync(t as Tensor, q);
  } catch (e) {
    return nameError(e, n);
  }
}
async function quantizeNamed(t: unknown, q: QuantizeType, n: string) {
  try {
    return await quantize(t as Tensor, q);
  } catch (e) {
    return nameError(e, n);
  }
}
/** @internal The native handle; throws ERR_DISPOSED after dispose(). */
export function nativeExperts(e: unknown, name: string): NativeExperts {
  const n = e instanceof ExpertWeights ? handles.get(e) : undefined;
  if (!n) throw typeError(`${name} must be ExpertWeights from ExpertWeights.pack(), got ${describe(e)}`);
  if ((e as ExpertWeights).disposed) throw new MoeError(`${name} was disposed and cannot be used again`, 'ERR_DISPOSED');
  return n;
}
