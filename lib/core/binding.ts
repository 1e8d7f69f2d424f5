/**
 * The native module: its one hand-written type, and its loading with node-gyp-build (a prebuilt
 * binary from prebuilds/ when one fits, else build/Release from a source build).
 * Native names are snake_case; every op takes a trailing `async` flag (true: a Promise).
 */
import * as path from 'node:path';
import { MoeError } from './errors.js';

export type NativeDType = 'float32' | 'float16' | 'bfloat16' | 'int32';
export interface NativeTensor {
  type: NativeDType;
  data: Float32Array | Uint16Array | Int32Array;
  dims: number[];
}
/** Expert weights: one [E,rows,cols] tensor or E tensors of [rows,cols]. */
export type NativeExpertMatrix = NativeTensor | NativeTensor[];

export interface NativeExpertsInfo {
  disposed: boolean;
  numExperts?: number;
  d?: number;
  f?: number;
  type?: NativeDType;
  bytes?: number;
}
/** Packed expert weights held by the backend (one copy per layer). */
export interface NativeExperts {
  dispose(): void;
  info(): NativeExpertsInfo;
}

/** Router statistics from the clean f32 logits (see lib/moe/stages.ts RouterStats). */
export interface NativeRouterStats {
  auxLoss: number;
  zLoss: number;
}
/** Routing variants: the optional trailing argument of route and moe_forward. */
export interface NativeRouteVariants {
  noiseGate?: NativeTensor;
  noiseSeed?: number;
  randomRouting?: boolean;
  randomSeed?: number;
  wantStats?: boolean;
}
export interface NativeForwardVariants extends NativeRouteVariants {
  capacityFactor?: number;
  evalCapacityFactor?: number;
  /** -1: auto (T == 1), 0: prefill, 1: decode. */
  decode?: number;
  wantLogits?: boolean;
  /** Shared experts packed as one expert (same backend and type as the experts). */
  sharedExperts?: NativeExperts;
  /** Sigmoid gate of the shared experts, [1,d]. */
  sharedGate?: NativeTensor;
  /** Device x with wantRouting: the device int32 [E] to write the expert counts into. */
  countsOut?: NativeDeviceTensor;
}
export interface NativeRouteResult {
  topkIds: NativeTensor;
  topkWeights: NativeTensor;
  expertCounts: NativeTensor;
  logits?: NativeTensor;
  stats?: NativeRouterStats;
}
export interface NativePermuteResult {
  expertOffsets: NativeTensor;
  sortedRows: NativeTensor;
  rowOf: NativeTensor;
  dropped: NativeTensor;
}
export interface NativeMoeResult {
  /** A device tensor when x was one (and expertCounts too). */
  out: NativeTensor | NativeDeviceTensor;
  topkIds?: NativeTensor;
  topkWeights?: NativeTensor;
  expertCounts?: NativeTensor;
  dropped?: NativeTensor;
  logits?: NativeTensor;
  stats?: NativeRouterStats;
}
export interface NativeBackendInfo {
  cpu: {
    kernel: string;
    threads: number;
    avx2: boolean;
    fma: boolean;
    f16c: boolean;
    avx512f: boolean;
    avx512bf16: boolean;
  };
  cuda: {
    /** 'cuda', 'cuda-emu' (test builds: kernels on the CPU emulator) or 'none'. */
    name: 'cuda' | 'cuda-emu' | 'none';
    compiled: boolean;
    available: boolean;
    emulated: boolean;
    reason: string;
    device?: {
      ordinal: number;
      name: string;
      computeCapability: string;
      smCount: number;
      totalMemory: number;
      /** DRAM bandwidth from the memory clock and bus width, GB/s (0: unknown). */
      peakGBps: number;
      /** Dense f16/bf16 tensor-core peak with f32 accumulation, TFLOP/s (datasheet rate per SM). */
      peakTensorTflops: number;
      peakFmaTflops: number;
    };
  };
}

export interface NativeLinearInfo {
  disposed: boolean;
  inFeatures?: number;
  outFeatures?: number;
  bias?: boolean;
  type?: NativeDType;
  bytes?: number;
}
/** Packed weights of one linear layer W [out,in] (pack_linear). */
export interface NativeLinear {
  dispose(): void;
  info(): NativeLinearInfo;
}
export interface NativeKvCacheInfo {
  disposed: boolean;
  maxSeq?: number;
  numKvHeads?: number;
  headDim?: number;
  type?: NativeDType;
  bytes?: number;
  /** positions written by the calls made so far */
  length?: number;
}
/** One layer's keys and values, each [numKvHeads, maxSeq, headDim] (create_kv_cache). */
export interface NativeKvCache {
  dispose(): void;
  info(): NativeKvCacheInfo;
  /** Forgets the positions from `length` on (length <= the current length). */
  truncate(length: number): void;
}
/** Device memory of the CUDA backend (native/napi/bind_device.cc). */
export interface NativeDeviceBuffer {
  dispose(): void;
  info(): { disposed: boolean; bytes: number };
}
/** A device tensor: `buffer` from byteOffset on, of type and dims. */
export interface NativeDeviceTensor {
  type: NativeDType;
  dims: number[];
  buffer: NativeDeviceBuffer;
  byteOffset: number;
}
/** Ops take host tensors, or device tensors (all of one place). */
export type AnyT = NativeTensor | NativeDeviceTensor;
type Maybe<T> = T | null | undefined;

type Ret<T, A extends boolean> = A extends true ? Promise<T> : T;

export interface NativeBinding {
  set_error_class(cls: new (message: string, code: string) => Error): void;
  backend_info(): NativeBackendInfo;
  /** backend: 'cpu' (default) or this build's CUDA backend; gate: uploaded with CUDA experts. */
  pack_experts<A extends boolean>(w1: NativeExpertMatrix, w3: NativeExpertMatrix, w2: NativeExpertMatrix, async: A, backend?: string, gate?: NativeTensor): Ret<NativeExperts, A>;
  route<A extends boolean>(x: NativeTensor, gate: NativeTensor, topK: number, normalize: boolean, wantLogits: boolean, async: A, variants?: NativeRouteVariants, backend?: string): Ret<NativeRouteResult, A>;
  permute<A extends boolean>(topkIds: NativeTensor, numExperts: number, capacity: number, async: A, backend?: string): Ret<NativePermuteResult, A>;
  grouped_gemm<A extends boolean>(x: NativeTensor, sortedRows: NativeTensor, expertOffsets: NativeTensor, experts: NativeExperts, async: A): Ret<NativeTensor, A>;
  combine<A extends boolean>(y: NativeTensor, rowOf: NativeTensor, topkWeights: NativeTensor, outType: NativeDType, async: A, backend?: string): Ret<NativeTensor, A>;
  moe_forward<A extends boolean>(x: AnyT, gate: NativeTensor, experts: NativeExperts, topK: number, normalize: boolean, capacity: number, wantRouting: boolean, async: A, variants?: NativeForwardVariants): Ret<NativeMoeResult, A>;
  dense_ffn<A extends boolean>(x: AnyT, weights: NativeExperts, async: A): Ret<AnyT, A>;
  /** Weighted average of the experts' W1/W3/W2 (distribution normalised natively), in their type. */
  merge_experts<A extends boolean>(w1: NativeExpertMatrix, w3: NativeExpertMatrix, w2: NativeExpertMatrix, distribution: number[], async: A): Ret<{ w1: NativeTensor; w3: NativeTensor; w2: NativeTensor }, A>;
  // ---- decoder-model ops (native/napi/bind_decoder.cc); outType/out may be null ----
  embedding<A extends boolean>(table: AnyT, ids: NativeTensor, outType: Maybe<NativeDType>, out: Maybe<AnyT>, async: A): Ret<AnyT, A>;
  rms_norm<A extends boolean>(x: AnyT, weight: AnyT, eps: number, outType: Maybe<NativeDType>, out: Maybe<AnyT>, async: A): Ret<AnyT, A>;
  pack_linear<A extends boolean>(w: NativeTensor, async: A, backend?: string, bias?: NativeTensor): Ret<NativeLinear, A>;
  linear<A extends boolean>(x: AnyT, w: NativeLinear, outType: Maybe<NativeDType>, out: Maybe<AnyT>, async: A): Ret<AnyT, A>;
  rope<A extends boolean>(q: AnyT, k: Maybe<AnyT>, positions: AnyT, theta: number, qOut: Maybe<AnyT>, kOut: Maybe<AnyT>, async: A): Ret<{ q: AnyT; k: AnyT | null }, A>;
  create_kv_cache(maxSeq: number, numKvHeads: number, headDim: number, type: NativeDType, backend?: string): NativeKvCache;
  attention<A extends boolean>(q: AnyT, k: AnyT, v: AnyT, cache: NativeKvCache, startPos: number, slidingWindow: number, outType: Maybe<NativeDType>, out: Maybe<AnyT>, async: A): Ret<AnyT, A>;
  add<A extends boolean>(a: AnyT, b: AnyT, outType: Maybe<NativeDType>, out: Maybe<AnyT>, async: A): Ret<AnyT, A>;
  sample<A extends boolean>(logits: AnyT, temperature: number, topP: number, seed: number, step: number, out: Maybe<NativeTensor>, async: A): Ret<NativeTensor, A>;
  // ---- device tensors (native/napi/bind_device.cc) ----
  device_alloc(type: NativeDType, dims: number[]): NativeDeviceTensor;
  device_upload<A extends boolean>(dst: NativeDeviceTensor, src: NativeTensor, async: A): Ret<NativeDeviceTensor, A>;
  device_download<A extends boolean>(src: NativeDeviceTensor, out: NativeTensor | null, async: A): Ret<NativeTensor, A>;
  cuda_transfer_stats(): { toDevice: { calls: number; bytes: number }; toHost: { calls: number; bytes: number } };
  /** Machine peaks for the bench, measured with the same instruction set as the kernels. */
  measure_read_bandwidth?(bytes: number, reps: number): number;
  measure_fma_peak?(seconds: number): number;
  /** CUDA bench: ms per call between CUDA events, inputs already on the device. */
  cuda_time_moe_forward?(experts: NativeExperts, T: number, topK: number, iters: number): number;
  cuda_time_dense_ffn?(weights: NativeExperts, T: number, iters: number): number;
}

function load(): NativeBinding {
  // MOE_KERNELS_ADDON: a path to another build of the addon, e.g. the test build with the emulated
  // CUDA backend (build-emu/Release/moe_kernels.node).
  const override = process.env.MOE_KERNELS_ADDON;
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const nodeGypBuild = require('node-gyp-build') as (dir: string) => unknown;
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const native = (override ? require(path.resolve(override)) : nodeGypBuild(path.join(__dirname, '..', '..'))) as NativeBinding;
  native.set_error_class(MoeError);
  return native;
}

export const binding: NativeBinding = load();
