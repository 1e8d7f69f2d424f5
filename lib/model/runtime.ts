/**
 * What blocks and models share at run time: where their tensors live (the host or a device backend),
 * the scratch tensors of one forward (Workspace), the checks of their options and configs, and the
 * AbortSignal helpers.
 */
import { exactOption, quantizeOption, type Precision, type QuantizeType } from '../core/quant.js';
import { resolveBackend, type BackendName, type ResolvedBackend } from '../core/backend.js';
import { type MoeModelConfig } from '../hf/config.js';
import { DeviceTensor } from '../core/device.js';
import { describe, MoeError, typeError } from '../core/errors.js';
import { embedding, type AnyTensor } from './primitives.js';
import { boolOption, checkOptions, intOption } from '../core/options.js';
import { FLOAT_TYPES, type FloatType, type Tensor, zeros } from '../core/tensor.js';
import { ProcessGroup } from '../parallel/process-group.js';

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
  /**
   * 'exact': f32 activations against bf16 weights (experts, projections, LM head) where the CPU's
   * avx512-bf16 table would round them to bf16. Default 'default'. CPU only (ERR_UNSUPPORTED with
   * 16-bit weights on CUDA).
   */
  precision?: Precision;
  /**
   * Expert parallelism: each MoE layer keeps only this rank's experts and exchanges tokens with the
   * group's other ranks (lib/parallel/ep-layer.ts); attention, norms and dense layers run
   * data-parallel, each rank on its own sequences. Every rank must make the same calls (forward,
   * generate steps) in the same order. On a CUDA backend the MoE layers' rows go through host
   * memory (the MPI transport; NCCL on device memory is not built). Default: none.
   */
  expertParallel?: ProcessGroup;
  /**
   * The MoE layers batch-invariant (MoeLayer.create's `batchInvariant`): a token's result does not
   * depend on the batch it runs in. An expert-parallel model on CUDA needs it, on every rank and in
   * the single-process model, to give the bits of one process. Default false.
   */
  batchInvariant?: boolean;
}

export const DEFAULT_MAX_SEQ = 4096;

/** The same data with other dims (no copy), on the host or the device. */
export function view<T extends AnyTensor>(t: T, dims: number[]): T {
  if (t instanceof DeviceTensor) return t.reshape(dims) as T;
  return { type: t.type, data: (t as Tensor).data, dims } as unknown as T;
}

/** Where a model's tensors live: the host, or the device of a CUDA backend. */
export type Place = { device: false } | { device: true; backend: ResolvedBackend };

export function placeOf(backend: BackendName | undefined): Place {
  const r = resolveBackend(backend ?? 'auto');
  return r === 'cpu' ? { device: false } : { device: true, backend: r };
}

/** A zeroed float32 activation tensor of the place. */
export function activation(place: Place, dims: number[]): AnyTensor {
  return place.device ? DeviceTensor.zeros('float32', dims, { backend: place.backend }) : zeros('float32', dims);
}

/**
 * A copy of a host tensor kept by a layer, on the place (on a device the upload is the copy). On the
 * host the copy is an op's output (the embedding of every row), so that it lives in the package's
 * own memory: async ops then read it in place, where a JS array would be copied by every call that
 * reads it (the embedding table: a 65 MB copy, and its page faults, per decode step).
 */
export async function keep(place: Place, t: Tensor): Promise<AnyTensor> {
  if (place.device) return DeviceTensor.from(t, { backend: place.backend });
  const cols = t.dims[t.dims.length - 1] ?? 0, rows = cols ? t.data.length / cols : 0;
  if (rows === 0 || rows > 2 ** 31 - 1) return { type: t.type, data: t.data.slice(), dims: [...t.dims] } as Tensor;
  const ids = zeros('int32', [rows]);
  for (let i = 0; i < rows; i++) ids.data[i] = i;
  const copy = await embedding({ type: t.type, data: t.data, dims: [rows, cols] } as Tensor, ids, { outType: t.type as FloatType });
  return { type: t.type, data: (copy as Tensor).data, dims: [...t.dims] } as Tensor;
}

export const bytesOf = (t: AnyTensor) => (t instanceof DeviceTensor ? t.bytes : (t as Tensor).data.byteLength);
export const release = (t: AnyTensor | undefined | null) => {
  if (t instanceof DeviceTensor) t.dispose();
};

/** What a block's forward reads and writes besides h: a Workspace, or its first T rows (Workspace.head). */
export interface Scratch {
  readonly T: number;
  readonly positions: Tensor<'int32'>;
  readonly positionsDevice: DeviceTensor<'int32'> | null;
  readonly normed: AnyTensor;
  readonly q: AnyTensor;
  readonly k: AnyTensor;
  readonly v: AnyTensor;
  readonly attn: AnyTensor;
  readonly proj: AnyTensor;
}

/** Rows [0, n) of a tensor, sharing its memory (host or device). */
export function headRows<T extends AnyTensor>(t: T, n: number): T {
  if (t instanceof DeviceTensor) return t.rows(0, n) as T;
  const h = t as Tensor;
  const per = h.dims.slice(1).reduce((a, b) => a * b, 1);
  return { type: h.type, data: h.data.subarray(0, n * per), dims: [n, ...h.dims.slice(1)] } as unknown as T;
}

/** Sets a scratch's positions (one per token, any order) on the host and, for a device model, the device. */
export async function setPositionsOf(ws: Scratch, positions: ArrayLike<number>): Promise<void> {
  ws.positions.data.set(positions);
  await ws.positionsDevice?.copyFrom(ws.positions);
}

/** The scratch tensors of one forward of T tokens; a decode loop (T = 1) reuses one set. */
export class Workspace implements Scratch {
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

  /**
   * The first n rows of every tensor (n <= T), sharing their memory: one Workspace sized for the
   * largest batch serves every smaller one. Set the positions with setPositionsOf.
   */
  head(n: number): Scratch {
    if (n === this.T) return this;
    return {
      T: n,
      positions: headRows(this.positions, n),
      positionsDevice: this.positionsDevice ? headRows(this.positionsDevice, n) : null,
      normed: headRows(this.normed, n),
      q: headRows(this.q, n),
      k: headRows(this.k, n),
      v: headRows(this.v, n),
      attn: headRows(this.attn, n),
      proj: headRows(this.proj, n),
    };
  }

  /** Positions start .. start+T-1 (on the device too, for a device model). */
  async setPositions(start: number): Promise<void> {
    const p = this.positions.data;
    for (let t = 0; t < p.length; t++) p[t] = start + t;
    await this.positionsDevice?.copyFrom(this.positions);
  }

}

/**
 * An AbortSignal (Node's global one, or the DOM's): declared by shape so that the package's types
 * compile without @types/node or lib.dom. At run time `signal` must be a real AbortSignal.
 */
export interface AbortSignalLike {
  readonly aborted: boolean;
  readonly reason?: unknown;
}

export function checkAborted(signal: AbortSignalLike | undefined): void {
  if (signal?.aborted) throw abortError(signal);
}

export function abortError(signal: AbortSignalLike): MoeError {
  const e = new MoeError('the operation was aborted', 'ERR_ABORTED');
  e.name = 'AbortError';
  (e as { cause?: unknown }).cause = signal.reason;
  return e;
}

export function checkSignal(v: unknown): AbortSignalLike | undefined {
  if (v === undefined) return undefined;
  if (!(v instanceof AbortSignal)) throw typeError(`options.signal must be an AbortSignal, got ${describe(v)}`);
  return v;
}

export function floatTypeOption(o: Record<string, unknown>, key: string, dflt: FloatType): FloatType {
  const v = o[key] ?? dflt;
  if (!(FLOAT_TYPES as readonly unknown[]).includes(v))
    throw typeError(`options.${key} must be one of ${FLOAT_TYPES.map((t) => `'${t}'`).join(', ')}, got ${describe(v)}`);
  return v as FloatType;
}

export const MODEL_TYPES: readonly string[] = ['mixtral', 'qwen2_moe', 'deepseek'];

/** A config from parseMoeConfig / parseMixtralConfig (any supported family). */
export function checkConfig(config: unknown): MoeModelConfig {
  const c = config as MoeModelConfig | null | undefined;
  if (!MODEL_TYPES.includes(c?.modelType as string) || !Array.isArray(c?.layerKinds) || c.layerKinds.length !== c.numHiddenLayers)
    throw typeError(`config must be a MoeModelConfig (parseMoeConfig or parseMixtralConfig), got ${describe(c?.modelType ?? config)}`);
  return c;
}

export function runtimeOptions(config: MoeModelConfig, options: unknown) {
  const o = checkOptions(options);
  const maxSeq = intOption(o, 'maxSeq', Math.min(config.maxPositionEmbeddings, DEFAULT_MAX_SEQ), 1, 1 << 24);
  const quantize = quantizeOption(o);
  const quantizeLinear = quantizeOption({ quantize: o.quantizeLinear }, 'options.quantizeLinear');
  const expertParallel = o.expertParallel as ProcessGroup | undefined;
  if (expertParallel !== undefined && !(expertParallel instanceof ProcessGroup))
    throw typeError(`options.expertParallel must be a ProcessGroup from ProcessGroup.init(), got ${describe(expertParallel)}`);
  const place = placeOf(o.backend as BackendName | undefined);
  return {
    o, maxSeq, kvType: floatTypeOption(o, 'kvType', 'float32'), backend: o.backend as BackendName | undefined, place,
    quantize, quantizeLinear, precision: (exactOption(o) ? 'exact' : 'default') as Precision, expertParallel,
    batchInvariant: boolOption(o, 'batchInvariant', false),
  };
}
