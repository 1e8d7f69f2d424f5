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
 */
import { binding, type NativeRouteResult, type NativeTensor } from '../core/binding.js';
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

const nt = (t: Tensor) => t as unknown as NativeTensor;

function routeArgs(x: Tensor, gate: Tensor, options?: RouteOptions) {
  const o = checkOptions(options);
  const backend = resolveBackend(o.backend);
  const k = intOption(o, 'topK', 2, 1);
  const dims = (t: Tensor) => (t && Array.isArray(t.dims) ? t.dims : []);
  const variants = routeVariantOptions(o, k, dims(gate)[0], dims(x)[1], false);
  return { topK: k, normalize: boolOption(o, 'normalize', true), wantLogits: boolOption(o, 'returnLogits', false), ...nativeVariants(variants, boolOption(o, 'returnRouterStats', false)), backend };
}
function routeResult(r: NativeRouteResult): RouteResult {
  const out: RouteResult = {
    topkIds: r.topkIds as Tensor<'int32'>,
    topkWeights: r.topkWeights as Tensor<'float32'>,
    tokensPerExpert: r.expertCounts as Tensor<'int32'>,
  };
  if (r.logits) out.logits = r.logits as Tensor<'float32'>;
  if (r.stats) out.routerStats = { auxLoss: r.stats.auxLoss, zLoss: r.stats.zLoss };
  return out;
}

export async function route(x: Tensor, gate: Tensor, options?: RouteOptions): Promise<RouteResult> {
  return routeResult(await binding.route(nt(x), nt(gate), { ...routeArgs(x, gate, options), async: true }));
}
export function routeSync(x: Tensor, gate: Tensor, options?: RouteOptions): RouteResult {
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

export async function groupedGemm(x: Tensor, sortedRows: Tensor<'int32'>, expertOffsets: Tensor<'int32'>, experts: ExpertWeights): Promise<Tensor<'float32'>> {
  const w = nativeExperts(experts, 'experts');
  return (await binding.grouped_gemm(nt(x), nt(sortedRows), nt(expertOffsets), w, { async: true })) as Tensor<'float32'>;
}
export function groupedGemmSync(x: Tensor, sortedRows: Tensor<'int32'>, expertOffsets: Tensor<'int32'>, experts: ExpertWeights): Tensor<'float32'> {
  const w = nativeExperts(experts, 'experts');
  return binding.grouped_gemm(nt(x), nt(sortedRows), nt(expertOffsets), w) as Tensor<'float32'>;
}

function combineArgs(options?: CombineOptions): { outType: FloatType; backend: ResolvedBackend } {
  const o = checkOptions(options);
  const backend = resolveBackend(o.backend);
  const t = o.outType ?? 'float32';
  if (!isFloatType(t)) throw typeError(`options.outType must be 'float32', 'float16' or 'bfloat16', got ${describe(t)}`);
  return { outType: t, backend };
}
export async function combine(y: Tensor<'float32'>, rowOf: Tensor<'int32'>, topkWeights: Tensor<'float32'>, options?: CombineOptions): Promise<Tensor> {
  return (await binding.combine(nt(y), nt(rowOf), nt(topkWeights), { ...combineArgs(options), async: true })) as Tensor;
}
export function combineSync(y: Tensor<'float32'>, rowOf: Tensor<'int32'>, topkWeights: Tensor<'float32'>, options?: CombineOptions): Tensor {
  return binding.combine(nt(y), nt(rowOf), nt(topkWeights), combineArgs(options)) as Tensor;
}
