/**
 * Packed expert weights: the backend's one copy of an MoE layer's experts, built once from
 * Hugging Face layout weights (w1, w3: [E,f,d]; w2: [E,d,f]; or per-expert arrays of [f,d] /
 * [d,f]). After packing the caller may drop its arrays. Free with dispose(), or let the GC do it.
 */
import { binding, type NativeExpertMatrix, type NativeExperts, type NativeTensor } from '../core/binding.js';
import { resolveBackend, type BackendName, type ResolvedBackend } from '../core/backend.js';
import { describe, MoeError, typeError } from '../core/errors.js';
import { checkOptions, required } from '../core/options.js';
import type { FloatType, Tensor } from '../core/tensor.js';

export interface ExpertWeightsInit {
  /** Gate projections, [E,f,d] or E tensors of [f,d]. */
  w1: Tensor | readonly Tensor[];
  /** Up projections, [E,f,d] or E tensors of [f,d]. */
  w3: Tensor | readonly Tensor[];
  /** Down projections, [E,d,f] or E tensors of [d,f]. */
  w2: Tensor | readonly Tensor[];
}

export interface PackOptions {
  backend?: BackendName;
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
  /** Weight type, as packed. */
  readonly type: FloatType;
  /** Bytes of the packed copy. */
  readonly bytes: number;
  readonly backend: ResolvedBackend;
  #disposed = false;

  /** @internal use ExpertWeights.pack / packSync */
  constructor(native: NativeExperts, backend: ResolvedBackend) {
    const info = native.info();
    this.numExperts = info.numExperts!;
    this.hiddenSize = info.d!;
    this.intermediateSize = info.f!;
    this.type = info.type as FloatType;
    this.bytes = info.bytes!;
    this.backend = backend;
    handles.set(this, native);
  }

  /** Packs off the event loop. */
  static async pack(weights: ExpertWeightsInit, options?: PackOptions): Promise<ExpertWeights> {
    const [w, backend] = args(weights, options);
    return new ExpertWeights(await binding.pack_experts(w, { backend, async: true }), backend);
  }

  static packSync(weights: ExpertWeightsInit, options?: PackOptions): ExpertWeights {
    const [w, backend] = args(weights, options);
    return new ExpertWeights(binding.pack_experts(w, { backend }), backend);
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
function args(weights: ExpertWeightsInit, options?: PackOptions): [NativeWeights, ResolvedBackend] {
  const o = checkOptions(options);
  const backend = resolveBackend(o.backend);
  const m = (k: 'w1' | 'w3' | 'w2') => required<NativeExpertMatrix>(weights, k, 'weights');
  const w: NativeWeights = { w1: m('w1'), w3: m('w3'), w2: m('w2') };
  if (o.gate !== undefined) w.gate = o.gate as NativeTensor;
  return [w, backend];
}

/** @internal The native handle; throws ERR_DISPOSED after dispose(). */
export function nativeExperts(e: unknown, name: string): NativeExperts {
  const n = e instanceof ExpertWeights ? handles.get(e) : undefined;
  if (!n) throw typeError(`${name} must be ExpertWeights from ExpertWeights.pack(), got ${describe(e)}`);
  if ((e as ExpertWeights).disposed) throw new MoeError(`${name} was disposed and cannot be used again`, 'ERR_DISPOSED');
  return n;
}
