/**
 * The native module: its one hand-written type, and its loading with node-gyp-build (a prebuilt
 * binary from prebuilds/ when one fits, else build/Release from a source build).
 * Native names are snake_case; every op takes its tensors, then one options object (`async: true`
 * returns a Promise).
 */
import * as path from 'node:path';
import { MoeError } from './errors.js';

export type NativeDType = 'float32' | 'float16' | 'bfloat16' | 'int32';
/** ggml's block formats (lib/core/quant.ts): raw blocks in a Uint8Array, logical dims. */
export type NativeQuantType = 'q8_0' | 'q4_0' | 'q4_k' | 'q5_k' | 'q6_k';
export interface NativeTensor {
  type: NativeDType;
  data: Float32Array | Uint16Array | Int32Array;
  dims: number[];
}
export interface NativeQuantTensor {
  type: NativeQuantType;
  data: Uint8Array;
  dims: number[];
}
/** A weight matrix given to a packer: float, or quantised blocks. */
export type NativeWeightTensor = NativeTensor | NativeQuantTensor;
/** Expert weights: one [E,rows,cols] tensor or E tensors of [rows,cols]. */
export type NativeExpertMatrix = NativeWeightTensor | NativeWeightTensor[];

export interface NativeExpertsInfo {
  disposed: boolean;
  numExperts?: number;
  d?: number;
  f?: number;
  type?: NativeDType | NativeQuantType;
  /** W2's type (differs from `type` only for quantised experts, e.g. Q4_K_M's q6_k W2). */
  w2Type?: NativeDType | NativeQuantType;
  inPlaceBytes?: number;
  batchInvariant?: boolean;
  bytes?: number;
  backend?: string;
  hasGate?: boolean;
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
/** Every call takes one options object; `async: true` returns a Promise. */
interface Async<A extends boolean> {
  async?: A;
}
/** Which backend runs an op without packed weights: 'cpu' (default) or a device backend of this build. */
interface OnBackend {
  backend?: string;
}
/** The routing options of route and moe_forward (moe::RouteParams in native/include/moe/moe_params.h). */
export interface NativeRouteOptions {
  topK: number;
  normalize?: boolean;
  noiseGate?: NativeTensor;
  noiseSeed?: number;
  randomRouting?: boolean;
  randomSeed?: number;
  wantStats?: boolean;
}
export interface NativeForwardOptions extends NativeRouteOptions {
  /** Slots per expert; -1 (default): from the factors. */
  capacity?: number;
  capacityFactor?: number;
  evalCapacityFactor?: number;
  /** -1: auto (T == 1), 0: prefill, 1: decode. */
  decode?: number;
  wantRouting?: boolean;
  wantLogits?: boolean;
  /** Shared experts packed as one expert with their optional gate [1,d] (same backend and type as the experts). */
  sharedExperts?: NativeExperts;
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
/** What a backend of the build says of itself (native/include/moe/backend.h, Capabilities). */
interface NativeBackendStatus {
  /** 'cpu'; 'cuda', 'cuda-emu' (test builds: kernels on the CPU emulator) or 'none'. */
  name: string;
  compiled: boolean;
  available: boolean;
  emulated: boolean;
  reason: string;
}
export interface NativeBackendInfo {
  cpu: NativeBackendStatus & {
    /** The CPU kernel table in use: 'avx512-bf16', 'avx512', 'avx2-fma' or 'portable'. */
    kernel: string;
    /** Why that table: "widest usable", "forced by MOE_CPU_KERNEL=...", or why a forced one fell back. */
    kernelNote: string;
    threads: number;
    avx2: boolean;
    fma: boolean;
    f16c: boolean;
    avx512f: boolean;
    avx512bw: boolean;
    avx512vl: boolean;
    avx512dq: boolean;
    avx512bf16: boolean;
    /** The kernel table of quantised weights in use, and every one this CPU can run (comma-separated). */
    quantKernel: string;
    quantKernels: string;
  };
  cuda: NativeBackendStatus & {
    name: 'cuda' | 'cuda-emu' | 'none';
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
  type?: NativeDType | NativeQuantType;
  bytes?: number;
  backend?: string;
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
  backend?: string;
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
export interface NativeKvPoolInfo {
  disposed: boolean;
  numBlocks?: number;
  blockSize?: number;
  numKvHeads?: number;
  headDim?: number;
  type?: NativeDType;
  bytes?: number;
  backend?: string;
}
/** A paged pool of KV blocks shared by sequences (create_kv_pool). */
export interface NativeKvPool {
  dispose(): void;
  info(): NativeKvPoolInfo;
}
/** Device memory of a device backend (a moe::Buffer). */
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
/** The result type of an op and its output options. */
interface Out {
  outType?: Maybe<NativeDType>;
  out?: Maybe<AnyT>;
}

type Ret<T, A extends boolean> = A extends true ? Promise<T> : T;

export interface NativeBinding {
  set_error_class(cls: new (message: string, code: string) => Error): void;
  backend_info(): NativeBackendInfo;
  /** gate: the router gate [E,d] packed with the experts (moe_forward needs it). */
  pack_experts<A extends boolean = false>(weights: { w1: NativeExpertMatrix; w3: NativeExpertMatrix; w2: NativeExpertMatrix; gate?: NativeTensor }, options?: OnBackend & { exactF32?: boolean; batchInvariant?: boolean } & Async<A>): Ret<NativeExperts, A>;
  route<A extends boolean = false>(x: NativeTensor, gate: NativeTensor, options: NativeRouteOptions & { wantLogits?: boolean } & OnBackend & Async<A>): Ret<NativeRouteResult, A>;
  permute<A extends boolean = false>(topkIds: NativeTensor, options: { numExperts: number; capacity?: number } & OnBackend & Async<A>): Ret<NativePermuteResult, A>;
  grouped_gemm<A extends boolean = false>(x: NativeTensor, sortedRows: NativeTensor, expertOffsets: NativeTensor, experts: NativeExperts, options?: Async<A>): Ret<NativeTensor, A>;
  combine<A extends boolean = false>(y: NativeTensor, rowOf: NativeTensor, topkWeights: NativeTensor, options?: { outType?: NativeDType } & OnBackend & Async<A>): Ret<NativeTensor, A>;
  moe_forward<A extends boolean = false>(x: AnyT, experts: NativeExperts, options: NativeForwardOptions & Async<A>): Ret<NativeMoeResult, A>;
  dense_ffn<A extends boolean = false>(x: AnyT, weights: NativeExperts, options?: Async<A>): Ret<AnyT, A>;
  /** Weighted average of the experts' W1/W3/W2 (distribution normalised natively), in their type. */
  merge_experts<A extends boolean = false>(weights: { w1: NativeExpertMatrix; w3: NativeExpertMatrix; w2: NativeExpertMatrix }, distribution: number[], options?: Async<A>): Ret<{ w1: NativeTensor; w3: NativeTensor; w2: NativeTensor }, A>;
  // ---- decoder-model ops (native/napi/bind_decoder.cc) ----
  embedding<A extends boolean = false>(table: AnyT, ids: NativeTensor, options?: Out & Async<A>): Ret<AnyT, A>;
  rms_norm<A extends boolean = false>(x: AnyT, weight: AnyT, options?: { eps?: number } & Out & Async<A>): Ret<AnyT, A>;
  pack_linear<A extends boolean = false>(w: NativeWeightTensor, options?: { bias?: NativeTensor; exactF32?: boolean } & OnBackend & Async<A>): Ret<NativeLinear, A>;
  linear<A extends boolean = false>(x: AnyT, w: NativeLinear, options?: Out & Async<A>): Ret<AnyT, A>;
  rope<A extends boolean = false>(q: AnyT, k: Maybe<AnyT>, positions: AnyT, options?: { theta?: number; qOut?: Maybe<AnyT>; kOut?: Maybe<AnyT> } & Async<A>): Ret<{ q: AnyT; k: AnyT | null }, A>;
  create_kv_cache(shape: { maxSeq: number; numKvHeads: number; headDim: number; type?: NativeDType }, options?: OnBackend): NativeKvCache;
  attention<A extends boolean = false>(q: AnyT, k: AnyT, v: AnyT, cache: NativeKvCache, options?: { startPos?: number; slidingWindow?: number } & Out & Async<A>): Ret<AnyT, A>;
  create_kv_pool(shape: { numBlocks: number; blockSize: number; numKvHeads: number; headDim: number; type?: NativeDType }, options?: OnBackend): NativeKvPool;
  /** positions, seqOf [T] and blockTables [S, maxBlocks]: host int32 tensors. */
  paged_attention<A extends boolean = false>(q: AnyT, k: AnyT, v: AnyT, pool: NativeKvPool, options: { positions: NativeTensor; seqOf: NativeTensor; blockTables: NativeTensor; slidingWindow?: number } & Out & Async<A>): Ret<AnyT, A>;
  add<A extends boolean = false>(a: AnyT, b: AnyT, options?: Out & Async<A>): Ret<AnyT, A>;
  /** x converted to outType (or out's type), on the backend of x's memory. */
  cast<A extends boolean = false>(x: AnyT, options: Out & Async<A>): Ret<AnyT, A>;
  sample<A extends boolean = false>(logits: AnyT, options?: Record<string, unknown> & { out?: Maybe<NativeTensor> } & Async<A>): Ret<NativeTensor, A>;
  // ---- weight formats (native/napi/bind_quant.cc) ----
  quantize<A extends boolean = false>(x: NativeTensor, options: { type: 'q8_0' | 'q4_0' | 'q4_k' } & Async<A>): Ret<NativeQuantTensor, A>;
  dequantize<A extends boolean = false>(x: NativeQuantTensor, options?: { outType?: NativeDType } & Async<A>): Ret<NativeTensor, A>;
  // ---- device tensors (native/napi/bind_device.cc) ----
  device_alloc(type: NativeDType, dims: number[], options?: OnBackend): NativeDeviceTensor;
  device_upload<A extends boolean = false>(dst: NativeDeviceTensor, src: NativeTensor, options?: Async<A>): Ret<NativeDeviceTensor, A>;
  device_download<A extends boolean = false>(src: NativeDeviceTensor, options?: { out?: Maybe<NativeTensor> } & Async<A>): Ret<NativeTensor, A>;
  transfer_stats(): { toDevice: { calls: number; bytes: number }; toHost: { calls: number; bytes: number } };
  // ---- the bench's measurements (native/napi/bind_bench.cc) ----
  /** Machine peaks, measured with the same instruction set as the kernels. */
  measure_read_bandwidth(bytes: number, reps: number, options?: OnBackend): number;
  measure_fma_peak(seconds: number, options?: OnBackend): number;
  /** ms per call between device events, inputs already in the backend's memory. */
  time_moe_forward(experts: NativeExperts, options: { T: number; topK: number; iters: number }): number;
  time_dense_ffn(weights: NativeExperts, options: { T: number; iters: number }): number;
  // ---- files read in place (native/napi/bind_file.cc) ----
  /** The whole file mapped private (never written; stores land in private pages), held by every view and job. */
  map_file(path: string): ArrayBuffer;
  /** 'dontneed': drop a byte range's pages from this process (re-read from the page cache if touched). */
  advise_file(buffer: ArrayBuffer, offset: number, length: number, advice: 'dontneed' | 'willneed'): void;
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
