/**
 * The four stages of an MoE layer as separate ops, so users can assemble their own variants.
 * Layouts are those of DESIGN.md; every intermediate is float32 whatever the activation type.
 *
 *   route        x [T,d], gate [E,d]          -> topkIds [T,k], topkWeights [T,k], tokensPerExpert [E]
 *   permute      topkIds [T,k]               -> expertOffsets [E+1], sortedRows [T*k], rowOf [T,k]
 *                (an id of -1 means "no expert": random routing's dropped second slot)
 *   groupedGemm  x, sortedRows, expertOffsets, experts -> y [R,d] (R = expertOffsets[E])
 *   combine      y, rowOf, topkWeights       -> out [T,d]
 *
 * Each op has a Promise form (runs off the event loop) and a Sync form (for tiny calls).
 *
 * route, groupedGemm and combine also run on device tensors (DeviceTensor, a CUDA backend): the
 * backend is then the tensors', and their outputs stay on the device. Index tensors (groupedGemm's
 * sortedRows and expertOffsets, combine's rowOf) are host tensors in every case: they are checked
 * before a kernel reads them. permute is host-only. Router losses (returnRouterStats) need host
 * tensors.
 */
import { binding, type NativeDeviceTensor, type NativeRouteResult, type NativeTensor } from '../core/binding.js';
import { DeviceTensor } from '../core/device.js';
import { resolveBackend, type BackendName, type ResolvedBackend } from '../core/backend.js';
import { nativeExperts, type ExpertWeights } from './experts.js';
import { boolOption, checkOptions, intOption } from '../core/options.js';
import { isFloatType, type FloatType, type Tensor } from '../core/tensor.js';
import { describe, typeError } from '../core/errors.js';
import { nativeVariants, routeVariantOptions, type NoiseOptions, type RandomRoutingOptions, type RouterStats } from './routing-variants.js';

export interface RouteOptions {
  /** Experts per token, 1 <= topK <= E. Default 2. */
  topK?: number;
  /** Renormalise the k kept probabilities to sum to 1 (Mixtral: true). Default true. */
  normalize?: boolean;
  /** Also return the router logits [T,E] (float32). Default false. */
  returnLogits?: boolean;
  /** Noisy top-k gating: noise weights [E,d] and a seed. Default: no noise. */
  noise?: NoiseOptions;
  /** GShard random routing of the second expert (topK = 2). Default: off. */
  randomRouting?: RandomRoutingOptions;
  /** Also return `routerStats` (load-balancing loss, z-loss). Default false. */
  returnRouterStats?: boolean;
  backend?: BackendName;
}
export interface RouteResult {
  /** [T,k] expert ids, by decreasing weight; ties go to the lower expert index. */
  topkIds: Tensor<'int32'>;
  /** [T,k] routing weights (float32). */
  topkWeights: Tensor<'float32'>;
  /** [E] tokens routed to each expert (slots with id -1, dropped by random routing, count nowhere). */
  tokensPerExpert: Tensor<'int32'>;
  logits?: Tensor<'float32'>;
  routerStats?: RouterStats;
}

/** route's result on device tensors: every output on the device. */
export interface DeviceRouteResult {
  topkIds: DeviceTensor<'int32'>;
  topkWeights: DeviceTensor<'float32'>;
  tokensPerExpert: DeviceTensor<'int32'>;
  logits?: DeviceTensor<'float32'>;
}

export interface PermuteOptions {
  /** Rows each expert keeps (the rest are dropped in token order); undefined: dropless. */
  capacity?: number;
  backend?: BackendName;
}
export interface PermuteResult {
  /** [E+1] exclusive prefix sum of the rows of each expert. */
  expertOffsets: Tensor<'int32'>;
  /** [T*k] source token of each sorted row (-1 past expertOffsets[E]). */
  sortedRows: Tensor<'int32'>;
  /** [T,k] sorted row of each routing slot, -1 when dropped. */
  rowOf: Tensor<'int32'>;
  /** [E] slots dropped by each expert's capacity. */
  dropped: Tensor<'int32'>;
}

export interface CombineOptions {
  /** Output type; default 'float32'. */
  outType?: FloatType;
  backend?: BackendName;
}

const nt = (t: Tensor | DeviceTensor) => t as unknown as NativeTensor;

/** A host tensor or a device tensor (route, groupedGemm and combine take either). */
type AnyTensor = Tensor | DeviceTensor;
/** options.backend, resolved; for device tensors only what the caller gave (the tensors' backend runs it). */
function backendFor(x: unknown, backend: unknown): ResolvedBackend | undefined {
  return x instanceof DeviceTensor && (backend === undefined || backend === 'auto') ? undefined : resolveBackend(backend);
}
function placed<R>(r: unknown): R {
  return (r && typeof r === 'object' && !(r instanceof DeviceTensor) && 'buffer' in r ? DeviceTensor.wrap(r as NativeDeviceTensor) : r) as R;
}

function routeArgs(x: AnyTensor, gate: AnyTensor, options?: RouteOptions) {
  const o = checkOptions(options);
  const backend = backendFor(x, o.backend);
  const k = intOption(o, 'topK', 2, 1);
  const dims = (t: AnyTensor) => (t && Array.isArray(t.dims) ? t.dims : []);
  const variants = routeVariantOptions(o, k, dims(gate)[0], dims(x)[1], false);
  return { topK: k, normalize: boolOption(o, 'normalize', true), wantLogits: boolOption(o, 'returnLogits', false), ...nativeVariants(variants, boolOption(o, 'returnRouterStats', false)), backend };
}
function routeResult(r: NativeRouteResult): RouteResult {
  const out: RouteResult = {
    topkIds: placed(r.topkIds),
    topkWeights: placed(r.topkWeights),
    tokensPerExpert: placed(r.expertCounts),
  };
  if (r.logits) out.logits = placed(r.logits);
  if (r.stats) out.routerStats = { auxLoss: r.stats.auxLoss, zLoss: r.stats.zLoss };
  return out;
}

export async function route(x: DeviceTensor, gate: DeviceTensor, options?: RouteOptions): Promise<DeviceRouteResult>;
export async function route(x: Tensor, gate: Tensor, options?: RouteOptions): Promise<RouteResult>;
export async function route(x: AnyTensor, gate: AnyTensor, options?: RouteOptions): Promise<RouteResult | DeviceRouteResult> {
  return routeResult(await binding.route(nt(x), nt(gate), { ...routeArgs(x, gate, options), async: true }));
}
export function routeSync(x: DeviceTensor, gate: DeviceTensor, options?: RouteOptions): DeviceRouteResult;
export function routeSync(x: Tensor, gate: Tensor, options?: RouteOptions): RouteResult;
export function routeSync(x: AnyTensor, gate: AnyTensor, options?: RouteOptions): RouteResult | DeviceRouteResult {
  return routeResult(binding.route(nt(x), nt(gate), routeArgs(x, gate, options)));
}

function permuteArgs(numExperts: number, options?: PermuteOptions): { numExperts: number; capacity: number; backend: ResolvedBackend } {
  const o = checkOptions(options);
  const backend = resolveBackend(o.backend);
  intOption({ numExperts }, 'numExperts', 0, 1, 65536, 'numExperts');
  return { numExperts, capacity: intOption(o, 'capacity', -1, 0, 2 ** 31 - 1), backend };
}
export async function permute(topkIds: Tensor<'int32'>, numExperts: number, options?: PermuteOptions): Promise<PermuteResult> {
  return (await binding.permute(nt(topkIds), { ...permuteArgs(numExperts, options), async: true })) as unknown as PermuteResult;
}
export function permuteSync(topkIds: Tensor<'int32'>, numExperts: number, options?: PermuteOptions): PermuteResult {
  return binding.permute(nt(topkIds), permuteArgs(numExperts, options)) as unknown as PermuteResult;
}

/** The output of an op on X: a float32 DeviceTensor for a device X, else a host tensor. */
type PlacedF32<X> = X extends DeviceTensor ? DeviceTensor<'float32'> : Tensor<'float32'>;

export async function groupedGemm<X extends AnyTensor>(x: X, sortedRows: Tensor<'int32'>, expertOffsets: Tensor<'int32'>, experts: ExpertWeights): Promise<PlacedF32<X>> {
  const w = nativeExperts(experts, 'experts');
  return placed(await binding.grouped_gemm(nt(x), nt(sortedRows), nt(expertOffsets), w, { async: true }));
}
export function groupedGemmSync<X extends AnyTensor>(x: X, sortedRows: Tensor<'int32'>, expertOffsets: Tensor<'int32'>, experts: ExpertWeights): PlacedF32<X> {
  const w = nativeExperts(experts, 'experts');
  return placed(binding.grouped_gemm(nt(x), nt(sortedRows), nt(expertOffsets), w));
}

function combineArgs(y: AnyTensor, options?: CombineOptions): { outType: FloatType; backend: ResolvedBackend | undefined } {
  const o = checkOptions(options);
  const backend = backendFor(y, o.backend);
  const t = o.outType ?? 'float32';
  if (!isFloatType(t)) throw typeError(`options.outType must be 'float32', 'float16' or 'bfloat16', got ${describe(t)}`);
  return { outType: t, backend };
}
/** The output of combine on Y: a DeviceTensor for a device Y, else a host tensor. */
type PlacedOut<Y> = Y extends DeviceTensor ? DeviceTensor : Tensor;

export async function combine<Y extends Tensor<'float32'> | DeviceTensor<'float32'>>(y: Y, rowOf: Tensor<'int32'>, topkWeights: Tensor<'float32'> | DeviceTensor<'float32'>, options?: CombineOptions): Promise<PlacedOut<Y>> {
  return placed(await binding.combine(nt(y), nt(rowOf), nt(topkWeights), { ...combineArgs(y, options), async: true }));
}
export function combineSync<Y extends Tensor<'float32'> | DeviceTensor<'float32'>>(y: Y, rowOf: Tensor<'int32'>, topkWeights: Tensor<'float32'> | DeviceTensor<'float32'>, options?: CombineOptions): PlacedOut<Y> {
  return placed(binding.combine(nt(y), nt(rowOf), nt(topkWeights), combineArgs(y, options)));
}
