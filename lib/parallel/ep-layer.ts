/**
 * The expert-parallel MoE layer: `MoeLayer.create(weights, { topK, expertParallel: group })`.
 *
 * Each rank of the process group holds a contiguous slice of the experts (rank r of N holds
 * `expertRange(E, N, r)`: E/N experts, the first E mod N ranks one more), routes its own tokens, and
 * runs, per call:
 *   1. route and permute (the existing stage ops), with the capacity of the rank's own T applied per
 *      expert before anything is sent, so dropped rows are never sent;
 *   2. all-to-all-v of the kept row counts per expert (plus one flag word, below), then of the rows
 *      themselves: sorted by expert, and experts sliced by rank, a rank's rows for rank p are one
 *      contiguous run, sent as is in the input's type;
 *   3. the grouped GEMM (the existing op) over the rows received, grouped by local expert;
 *   4. all-to-all-v of the result rows back, which then lie in the sender's sorted order, and
 *      combine (the existing op) in its fixed order.
 * Each row's GEMM depends on that row alone and combine sums in fixed slot order, so a rank's output
 * has the bits the single-process layer gives for the same tokens (test/110 checks it).
 *
 * Shared experts (DeepSeekMoE, Qwen2-MoE) run on every rank for its own tokens, data-parallel: a
 * local MoeLayer with the shared experts and one all-zero routed expert of width 1 gives exactly the
 * shared term the single-process layer adds (its routed sum is +0, and its gate math is the same
 * native code), in f32; the routed sum (combine in f32) plus that term is one f32 addition, as in
 * the native combine, then rounded to the output type as the native store does.
 *
 * On device tensors (a layer on a CUDA backend, x a DeviceTensor) the rows stay on the device and
 * travel by the group's NCCL communicator (group.nccl()): route on the device, the routing ids
 * ([T,k] int32) to the host for permute and the counts (MPI), the rows gathered on the device
 * (the embedding op as a row gather), sent by NCCL, the grouped GEMM over them, gathered back into
 * the senders' order, returned by NCCL, and combined on the device. Only index arrays cross to
 * the host. Every rank passes device tensors in the same call, or every rank host tensors: the
 * flag word carries which, and a mix fails on every rank.
 *
 * Every rank must call forward the same number of times, in the same order (T may differ, and may
 * be 0). `returnRouterStats` adds an all-reduce and must agree on all ranks: the flag word carries
 * it, and every rank fails with the same error when they differ instead of hanging.
 */
import { describe, MoeError, rangeError, typeError } from '../core/errors.js';
import { DeviceTensor } from '../core/device.js';
import { add, embedding } from '../model/primitives.js';
import { checkOptions, boolOption, intOption, required } from '../core/options.js';
import { bfloat16ToFloat32, checkTensor, float16ToFloat32, float32ToBfloat16, float32ToFloat16, FLOAT_TYPES, type FloatType, type Tensor } from '../core/tensor.js';
import { type BackendName, type ResolvedBackend } from '../core/backend.js';
import { exactOption, quantizeOption } from '../core/quant.js';
import { ExpertWeights } from '../moe/experts.js';
import { combine, groupedGemm, permute, route, type RouteOptions } from '../moe/stages.js';
import { factorOption, routeVariantOptions, type NoiseOptions, type RandomRoutingOptions } from '../moe/routing-variants.js';
import { MoeLayer, type ForwardOptions, type MoeLayerOptions, type MoeLayerWeights, type MoeRouterStats, type Routing } from '../moe/layers.js';
import { ProcessGroup } from './process-group.js';

/** Experts [start, end) that rank `rank` of `size` holds: contiguous, E/size each, the first E mod size ranks one more. */
export function expertRange(numExperts: number, size: number, rank: number): [number, number] {
  const base = Math.floor(numExperts / size), extra = numExperts % size;
  const start = rank * base + Math.min(rank, extra);
  return [start, start + base + (rank < extra ? 1 : 0)];
}

/** Router statistics of an expert-parallel call, over every rank's tokens of that call. */
export interface ExpertParallelStats {
  rank: number;
  size: number;
  /** [E] slots routed to each expert by all ranks (before capacity). */
  globalTokensPerExpert: Int32Array;
  /** [size] rows each rank's experts computed in this call (after capacity): the per-rank load. */
  rankLoads: Int32Array;
  /** [size] rows this rank sent to each rank (its own included). */
  sentRows: Int32Array;
  /** [size] rows this rank received from each rank (its own included). */
  receivedRows: Int32Array;
  /**
   * DeepSeekMoE's device-level balance loss Σ_i f'_i·P'_i over the ranks i (without its α₂):
   * f'_i = mean over rank i's experts of f_j, f_j = E/(k·T)·(slots routed to j), P'_i = Σ of P_j over
   * rank i's experts, P_j = mean router probability of j; T and the sums over every rank's tokens.
   * Even routing gives 1.
   */
  deviceBalanceLoss: number;
}

export interface ExpertParallelRouterStats extends MoeRouterStats {
  expertParallel: ExpertParallelStats;
}

export interface ExpertParallelOutput {
  /** [T,d], the type of the input. */
  output: Tensor;
  routing?: Routing;
  routerStats?: ExpertParallelRouterStats;
}

export type ExpertParallelForwardOptions = Omit<ForwardOptions, 'countsOut'>;

export type ExpertParallelResult<O extends ExpertParallelForwardOptions | undefined = ExpertParallelForwardOptions> = ExpertParallelOutput &
  (O extends { returnRouting: true } ? { routing: Routing } : unknown) &
  (O extends { returnLogits: true }
    ? { routerStats: ExpertParallelRouterStats & { logits: Tensor<'float32'> } }
    : O extends { returnRouterStats: true }
      ? { routerStats: ExpertParallelRouterStats }
      : unknown);

type Variants = { noise?: Required<NoiseOptions>; randomRouting?: Required<RandomRoutingOptions> };

/** The expert matrices of experts [start, end) as per-expert [rows, cols] tensors (views, no copies). */
function sliceExperts(weights: MoeLayerWeights, key: 'w1' | 'w3' | 'w2', E: number, start: number, end: number): Tensor[] {
  const v = required<unknown>(weights, key, 'weights');
  if (Array.isArray(v)) {
    if (v.length !== E) throw rangeError(`weights.${key} must hold one tensor per expert (${E}, the gate's rows), got ${v.length}`);
    const out: Tensor[] = [];
    for (let e = start; e < end; e++) {
      if (v[e] === undefined || v[e] === null) throw typeError(`weights.${key}[${e}] is required on rank holding experts [${start}, ${end}), got ${describe(v[e])}`);
      out.push(checkTensor(v[e], `weights.${key}[${e}]`, FLOAT_TYPES));
    }
    return out;
  }
  const t = checkTensor(v, `weights.${key}`, FLOAT_TYPES);
  if (t.dims.length !== 3 || t.dims[0] !== E) throw rangeError(`weights.${key}.dims must be [${E},rows,cols] (one matrix per expert), got [${t.dims.join(',')}]`);
  const n = t.dims[1] * t.dims[2];
  const out: Tensor[] = [];
  for (let e = start; e < end; e++) out.push({ type: t.type, data: t.data.subarray(e * n, (e + 1) * n) as Tensor['data'], dims: [t.dims[1], t.dims[2]] });
  return out;
}

/** Bits of the flag word that leads each rank's count message. */
const FLAG_STATS = 1, FLAG_DEVICE = 2;

/**
 * The rows received (in arrival order: rank by rank, each rank's run sorted by expert) grouped by
 * local expert: localRows[i] is the arrival index of the i-th row of expert order, localOffsets the
 * start of each local expert's rows. counts is [N][1 + El] (flag word, rows per local expert).
 */
function localOrder(counts: Int32Array, receivedRows: Int32Array, El: number): { localRows: Int32Array; localOffsets: Int32Array } {
  const N = receivedRows.length;
  const Rr = receivedRows.reduce((a, b) => a + b, 0);
  const srcBase = new Int32Array(N);
  for (let p = 1; p < N; p++) srcBase[p] = srcBase[p - 1] + receivedRows[p - 1];
  const localRows = new Int32Array(Rr), localOffsets = new Int32Array(El + 1);
  const within = new Int32Array(N);  // rows of rank p's run before expert j
  let i = 0;
  for (let j = 0; j < El; j++) {
    localOffsets[j] = i;
    for (let p = 0; p < N; p++) {
      const c = counts[p * (1 + El) + 1 + j];
      for (let q = 0; q < c; q++) localRows[i++] = srcBase[p] + within[p] + q;
      within[p] += c;
    }
  }
  localOffsets[El] = i;
  return { localRows, localOffsets };
}

/** forward's options for a DeviceTensor x: no router stats (they need host tensors). */
export type ExpertParallelDeviceForwardOptions = Omit<ExpertParallelForwardOptions, 'returnRouterStats' | 'returnLogits'>;

/** The result of an expert-parallel forward on a DeviceTensor: the output on the device, the routing on the host. */
export interface ExpertParallelDeviceOutput {
  /** [T,d] on the device, the type of the input. */
  output: DeviceTensor;
  routing?: Routing;
}
export type ExpertParallelDeviceResult<O extends ExpertParallelDeviceForwardOptions | undefined = ExpertParallelDeviceForwardOptions> = ExpertParallelDeviceOutput &
  (O extends { returnRouting: true } ? { routing: Routing } : unknown);

/** What route + permute give for T = 0 tokens: no ids, no rows, every expert empty. */
function emptyPermutation(E: number, k: number) {
  return {
    ids: { type: 'int32', data: new Int32Array(0), dims: [0, k] } as Tensor<'int32'>,
    rowOf: { type: 'int32', data: new Int32Array(0), dims: [0, k] } as Tensor<'int32'>,
    dropped: { type: 'int32', data: new Int32Array(E), dims: [E] } as Tensor<'int32'>,
    offsets: new Int32Array(E + 1),
    sortedRows: new Int32Array(0),
  };
}

export class ExpertParallelMoeLayer {
  readonly numExperts: number;
  readonly hiddenSize: number;
  readonly intermediateSize: number;
  readonly topK: number;
  readonly normalize: boolean;
  readonly capacityFactor: number | undefined;
  readonly evalCapacityFactor: number | undefined;
  readonly backend: ResolvedBackend;
  readonly group: ProcessGroup;
  /** Experts this rank holds: [start, end). */
  readonly localExperts: readonly [number, number];
  readonly #gate: Tensor;
  readonly #variants: Variants;
  readonly #local: ExpertWeights | undefined;
  readonly #shared: MoeLayer | undefined;
  /** Intermediate size of the shared experts; 0 without them. */
  readonly sharedIntermediateSize: number;
  readonly #backendOption: BackendName | undefined;
  /** The gate on the device, uploaded at the first device forward. */
  #deviceGate: Promise<DeviceTensor> | undefined;
  #disposed = false;

  /** @internal use MoeLayer.create(weights, { expertParallel: group }) */
  constructor(group: ProcessGroup, gate: Tensor, local: ExpertWeights | undefined, range: [number, number], d: number, f: number, o: Record<string, unknown>, shared?: MoeLayer) {
    this.group = group;
    this.#shared = shared;
    this.sharedIntermediateSize = shared?.sharedIntermediateSize ?? 0;
    this.#gate = gate;
    this.#local = local;
    this.localExperts = range;
    this.numExperts = gate.dims[0];
    this.hiddenSize = d;
    this.intermediateSize = f;
    this.topK = intOption(o, 'topK', Math.min(2, this.numExperts), 1, this.numExperts);
    this.normalize = boolOption(o, 'normalize', true);
    this.capacityFactor = factorOption(o, 'capacityFactor');
    this.evalCapacityFactor = factorOption(o, 'evalCapacityFactor');
    this.#variants = routeVariantOptions(o, this.topK, this.numExperts, d, true);
    this.#backendOption = o.backend as BackendName | undefined;
    this.backend = local?.backend ?? (o.backend === undefined || o.backend === 'auto' ? 'cpu' : (o.backend as ResolvedBackend));
  }

  /** @internal MoeLayer.create's expert-parallel path. */
  static async create(weights: MoeLayerWeights, options: MoeLayerOptions & { expertParallel: ProcessGroup }): Promise<ExpertParallelMoeLayer> {
    const o = checkOptions(options);
    const group = o.expertParallel;
    if (!(group instanceof ProcessGroup)) throw typeError(`options.expertParallel must be a ProcessGroup from ProcessGroup.init(), got ${describe(group)}`);
    if (group.closed) throw new MoeError('options.expertParallel: the process group was closed', 'ERR_DISPOSED');
    const g = checkTensor(required<unknown>(weights, 'gate', 'weights'), 'weights.gate', FLOAT_TYPES);
    if (g.dims.length !== 2) throw rangeError(`weights.gate.dims must be [E,d] (experts, hidden size), got [${g.dims.join(',')}]`);
    const gate: Tensor = { type: g.type, data: g.data.slice() as Tensor['data'], dims: [...g.dims] };
    const [E, d] = gate.dims;
    const range = expertRange(E, group.size, group.rank);
    let local: ExpertWeights | undefined;
    let f: number;
    if (range[1] > range[0]) {
      const w = { w1: sliceExperts(weights, 'w1', E, ...range), w3: sliceExperts(weights, 'w3', E, ...range), w2: sliceExperts(weights, 'w2', E, ...range) };
      local = await ExpertWeights.pack(w, { backend: o.backend as BackendName, quantize: quantizeOption(o), precision: exactOption(o) ? 'exact' : 'default', batchInvariant: boolOption(o, 'batchInvariant', false) });
      f = local.intermediateSize;
      if (local.hiddenSize !== d) {
        local.dispose();
        throw rangeError(`weights.gate.dims[1] (${d}) differs from the experts' hidden size ${local.hiddenSize}`);
      }
    } else {
      // a rank with no experts (E < ranks) still routes its tokens; f from any expert, for the record
      const w1 = required<unknown>(weights, 'w1', 'weights');
      const t = (Array.isArray(w1) ? w1.find((x) => x) : w1) as Tensor | undefined;
      f = t && Array.isArray(t.dims) ? t.dims[t.dims.length - 2] : 0;
    }
    let shared: MoeLayer | undefined;
    try {
      if (o.sharedExperts !== undefined) {
        // the shared experts beside one all-zero routed expert of width 1 (see the file comment)
        const sw = checkOptions(o.sharedExperts, 'options.sharedExperts');
        const st = checkTensor(required<unknown>(sw, 'w1', 'options.sharedExperts'), 'options.sharedExperts.w1', FLOAT_TYPES).type;
        const zeros = (dims: number[]): Tensor => ({ type: st, data: st === 'float32' ? new Float32Array(dims[0] * dims[1] * dims[2]) : new Uint16Array(dims[0] * dims[1] * dims[2]), dims }) as Tensor;
        shared = await MoeLayer.create(
          { gate: { type: 'float32', data: new Float32Array(d), dims: [1, d] }, w1: zeros([1, 1, d]), w3: zeros([1, 1, d]), w2: zeros([1, d, 1]) },
          { topK: 1, sharedExperts: o.sharedExperts as MoeLayerOptions['sharedExperts'], backend: o.backend as BackendName, batchInvariant: boolOption(o, 'batchInvariant', false) },
        );
      }
      return new ExpertParallelMoeLayer(group, gate, local, range, d, f, o, shared);
    } catch (e) {
      local?.dispose();
      shared?.dispose();
      throw e;
    }
  }

  /** Bytes held by this rank's share of the weights (its experts and the whole gate). */
  get bytes(): number {
    return (this.#local?.bytes ?? 0) + this.#gate.data.byteLength + (this.#shared?.bytes ?? 0);
  }

  get disposed(): boolean {
    return this.#disposed;
  }

  /** Frees this rank's experts. */
  dispose(): void {
    this.#disposed = true;
    this.#local?.dispose();
    this.#shared?.dispose();
    this.#deviceGate?.then((g) => g.dispose(), () => undefined);
  }
  [Symbol.dispose](): void {
    this.dispose();
  }
  async [Symbol.asyncDispose](): Promise<void> {
    this.dispose();
  }

  /** Not available: a forward is a collective call and always async. */
  forwardSync(): never {
    throw new MoeError('an expert-parallel MoeLayer has no forwardSync: its forward is a collective call; use await layer.forward(x)', 'ERR_UNSUPPORTED');
  }

  /**
   * Runs the layer on this rank's tokens x [T,d] (T may be 0); a collective call, made by every rank
   * in the same order. Host tensors only.
   */
  async forward<O extends ExpertParallelForwardOptions | undefined = undefined>(x: Tensor, options?: O): Promise<ExpertParallelResult<O>>;
  async forward<O extends ExpertParallelDeviceForwardOptions | undefined = undefined>(x: DeviceTensor, options?: O): Promise<ExpertParallelDeviceResult<O>>;
  async forward(x: Tensor | DeviceTensor, options?: ExpertParallelForwardOptions): Promise<ExpertParallelOutput | ExpertParallelDeviceOutput> {
    if (this.#disposed) throw new MoeError('MoeLayer was disposed and cannot be used again', 'ERR_DISPOSED');
    const o = checkOptions(options);
    if (o.countsOut !== undefined) throw typeError('options.countsOut is not an option of an expert-parallel layer (its routing is returned with returnRouting)');
    const wantLogits = boolOption(o, 'returnLogits', false);
    const wantStats = boolOption(o, 'returnRouterStats', false) || wantLogits;
    const wantRouting = boolOption(o, 'returnRouting', false);
    const phase = o.phase ?? 'auto';
    if (phase !== 'auto' && phase !== 'prefill' && phase !== 'decode') throw typeError(`options.phase must be 'auto', 'prefill' or 'decode', got ${describe(phase)}`);
    if (x instanceof DeviceTensor) {
      if (wantStats)
        throw new MoeError('router stats and logits of an expert-parallel layer are returned for host tensors only: pass x on the host (toHost()), or leave returnRouterStats/returnLogits off', 'ERR_UNSUPPORTED');
      return this.#forwardDevice(x, wantRouting, phase);
    }
    const xt = checkTensor(x, 'x', FLOAT_TYPES);
    this.#checkRows(xt.dims);

    const g = this.group, E = this.numExperts, k = this.topK, d = this.hiddenSize;
    const T = xt.dims[0];
    const [ls, le] = this.localExperts;
    const El = le - ls;
    const backend = this.#backendOption;

    // 1. route and permute this rank's tokens
    let topkIds: Tensor<'int32'>, topkWeights: Tensor<'float32'>, tokensPerExpert: Tensor<'int32'>;
    let logits: Tensor<'float32'> | undefined, auxLoss = 0, zLoss = 0;
    let offsets: Int32Array, sortedRows: Int32Array, rowOf: Tensor<'int32'>, dropped: Tensor<'int32'>;
    if (T > 0) {
      const ro: RouteOptions = { topK: k, normalize: this.normalize, returnRouterStats: wantStats, returnLogits: wantStats, backend };
      if (this.#variants.noise) ro.noise = this.#variants.noise;
      if (this.#variants.randomRouting) ro.randomRouting = this.#variants.randomRouting;
      const r = await route(xt, this.#gate, ro);
      ({ topkIds, topkWeights, tokensPerExpert } = r);
      logits = r.logits;
      auxLoss = r.routerStats?.auxLoss ?? 0;
      zLoss = r.routerStats?.zLoss ?? 0;
      const cap = this.#capacity(T, phase);
      const p = await permute(topkIds, E, cap >= 0 ? { capacity: cap, backend } : { backend });
      offsets = p.expertOffsets.data;
      sortedRows = p.sortedRows.data;
      rowOf = p.rowOf;
      dropped = p.dropped;
    } else {
      ({ ids: topkIds, rowOf, dropped, offsets, sortedRows } = emptyPermutation(E, k));
      topkWeights = { type: 'float32', data: new Float32Array(0), dims: [0, k] };
      tokensPerExpert = { type: 'int32', data: new Int32Array(E), dims: [E] };
      if (wantStats) logits = { type: 'float32', data: new Float32Array(0), dims: [0, E] };
    }
    const R = offsets[E];

    // 2a. the kept rows per expert to the rank that holds it, after one flag word
    const { counts, sentRows, receivedRows } = await this.#exchangeCounts(offsets, wantStats ? FLAG_STATS : 0);

    // 2b. the rows: this rank's sorted rows, runs by destination rank, in the input's type
    const xs = new (xt.data.constructor as Float32ArrayConstructor | Uint16ArrayConstructor)(R * d);
    for (let r = 0; r < R; r++) {
      const t = sortedRows[r];
      xs.set(xt.data.subarray(t * d, (t + 1) * d), r * d);
    }
    const rowsIn = await g.allToAllV(xs, sentRows.map((c) => c * d), receivedRows.map((c) => c * d));

    // 3. the local experts' grouped GEMM over the rows received, grouped by expert
    const Rr = receivedRows.reduce((a, b) => a + b, 0);
    const yBack = new Float32Array(Rr * d);
    if (Rr > 0 && this.#local) {
      const { localRows, localOffsets } = localOrder(counts, receivedRows, El);
      const xr: Tensor = { type: xt.type, data: rowsIn.data, dims: [Rr, d] };
      const y = await groupedGemm(xr, { type: 'int32', data: localRows, dims: [Rr] }, { type: 'int32', data: localOffsets, dims: [El + 1] }, this.#local);
      for (let r = 0; r < Rr; r++) yBack.set(y.data.subarray(r * d, (r + 1) * d), localRows[r] * d);
    }

    // 4. the results back (they arrive in this rank's sorted order), then combine in fixed order
    const rowsOut = await g.allToAllV(yBack, receivedRows.map((c) => c * d), sentRows.map((c) => c * d));
    let output: Tensor;
    if (T > 0 && this.#shared) {
      // routed sum in f32, plus the shared term in f32 (one f32 addition), then the output type
      const routed = await combine({ type: 'float32', data: rowsOut.data, dims: [R, d] }, rowOf, topkWeights, { outType: 'float32', backend });
      const x32: Tensor = xt.type === 'float32' ? xt : { type: 'float32', data: xt.type === 'bfloat16' ? bfloat16ToFloat32(xt.data as Uint16Array) : float16ToFloat32(xt.data as Uint16Array), dims: xt.dims };
      const sh = (await this.#shared.forward(x32)).output.data as Float32Array;
      const sum = routed.data as Float32Array;
      for (let i = 0; i < sum.length; i++) sum[i] = sum[i] + sh[i];  // a Float32Array store rounds once: an f32 addition
      output = xt.type === 'float32' ? routed : { type: xt.type, data: xt.type === 'bfloat16' ? float32ToBfloat16(sum) : float32ToFloat16(sum), dims: [T, d] };
    } else if (T > 0) {
      output = await combine({ type: 'float32', data: rowsOut.data, dims: [R, d] }, rowOf, topkWeights, { outType: xt.type as FloatType, backend });
    } else {
      output = { type: xt.type, data: new (xt.data.constructor as Float32ArrayConstructor)(0), dims: [0, d] } as Tensor;
    }

    const res: ExpertParallelOutput = { output };
    if (wantRouting) res.routing = { topkIds, topkWeights, tokensPerExpert, dropped };
    if (wantStats) {
      res.routerStats = {
        auxLoss,
        zLoss,
        tokensPerExpert,
        dropped,
        expertParallel: await this.#globalStats(T, tokensPerExpert.data, logits!, offsets, sentRows, receivedRows),
      };
      if (wantLogits) res.routerStats.logits = logits!;
    }
    return res;
  }

  /**
   * Sends each rank p [flag word, kept rows of each of p's experts] (from this rank's expert
   * offsets) and gets the same from each: counts [N][1 + El], and the rows this rank sends to and
   * receives from each rank. Every rank fails with the same error when the flag words differ.
   */
  async #exchangeCounts(offsets: Int32Array, flag: number): Promise<{ counts: Int32Array; sentRows: Int32Array; receivedRows: Int32Array }> {
    const N = this.group.size, E = this.numExperts, El = this.localExperts[1] - this.localExperts[0];
    const ranges = Array.from({ length: N }, (_, p) => expertRange(E, N, p));
    const sendCounts = new Int32Array(N), recvCounts = new Int32Array(N).fill(1 + El);
    const countMsg = new Int32Array(N + E);
    let at = 0;
    for (let p = 0; p < N; p++) {
      const [s, e] = ranges[p];
      countMsg[at++] = flag;
      for (let j = s; j < e; j++) countMsg[at++] = offsets[j + 1] - offsets[j];
      sendCounts[p] = 1 + e - s;
    }
    const { data: counts } = await this.group.allToAllV(countMsg, sendCounts, recvCounts);
    const flags = Array.from({ length: N }, (_, p) => counts[p * (1 + El)]);
    const ranks = (bit: number) => flags.map((v, p) => (v & bit ? p : -1)).filter((p) => p >= 0).join(',');
    if (flags.some((v) => (v ^ flags[0]) & FLAG_DEVICE))
      throw typeError(`x must be a host tensor on every rank of an expert-parallel call or a DeviceTensor on every rank; ranks passing device tensors: [${ranks(FLAG_DEVICE)}]`);
    if (flags.some((v) => (v ^ flags[0]) & FLAG_STATS))
      throw rangeError(`options.returnRouterStats/returnLogits must be the same on every rank of an expert-parallel call (it adds a collective); ranks asking: [${ranks(FLAG_STATS)}]`);
    const sentRows = new Int32Array(N), receivedRows = new Int32Array(N);
    for (let p = 0; p < N; p++) {
      sentRows[p] = offsets[ranges[p][1]] - offsets[ranges[p][0]];
      for (let j = 0; j < El; j++) receivedRows[p] += counts[p * (1 + El) + 1 + j];
    }
    return { counts, sentRows, receivedRows };
  }

  /** x.dims: [T, hiddenSize]. */
  #checkRows(dims: readonly number[]) {
    if (dims.length !== 2 || dims[1] !== this.hiddenSize) throw rangeError(`x.dims must be [T,${this.hiddenSize}], got [${dims.join(',')}]`);
  }

  /** forward on a DeviceTensor: the rows stay on the device and travel by NCCL (see the file comment). */
  async #forwardDevice(x: DeviceTensor, wantRouting: boolean, phase: string): Promise<ExpertParallelDeviceOutput> {
    if (!FLOAT_TYPES.includes(x.type as FloatType)) throw typeError(`x.type must be one of ${FLOAT_TYPES.join(', ')}, got '${x.type}'`);
    this.#checkRows(x.dims);
    if (x.backend !== this.backend)
      throw typeError(`x is a device tensor of '${x.backend}', but this rank's experts live on '${this.backend}': create the layer with backend '${x.backend}'`);
    const g = this.group, E = this.numExperts, k = this.topK, d = this.hiddenSize;
    const T = x.dims[0];
    const [ls, le] = this.localExperts;
    const El = le - ls;
    const type = x.type as FloatType;
    const temps: DeviceTensor[] = [];  // freed when the call is done (the ops before have run by then)
    const keep = <T extends DeviceTensor>(t: T) => (temps.push(t), t);
    try {
      // 1. route on the device; the ids to the host, where permute applies the capacity
      let ids: Tensor<'int32'>, weights: DeviceTensor<'float32'> | undefined, perExpert: DeviceTensor<'int32'> | undefined;
      let offsets: Int32Array, sortedRows: Int32Array, rowOf: Tensor<'int32'>, dropped: Tensor<'int32'>;
      if (T > 0) {
        this.#deviceGate ??= DeviceTensor.from(this.#gate, { backend: this.backend });
        const ro: RouteOptions = { topK: k, normalize: this.normalize };
        if (this.#variants.noise) ro.noise = this.#variants.noise;
        if (this.#variants.randomRouting) ro.randomRouting = this.#variants.randomRouting;
        const r = await route(x, await this.#deviceGate, ro);
        keep(r.topkIds), (weights = keep(r.topkWeights)), (perExpert = keep(r.tokensPerExpert));
        ids = await r.topkIds.toHost();
        const cap = this.#capacity(T, phase);
        const p = await permute(ids, E, cap >= 0 ? { capacity: cap } : {});
        offsets = p.expertOffsets.data;
        sortedRows = p.sortedRows.data;
        rowOf = p.rowOf;
        dropped = p.dropped;
      } else {
        ({ ids, rowOf, dropped, offsets, sortedRows } = emptyPermutation(E, k));
      }
      const R = offsets[E];

      // 2a. the counts, over MPI, as on the host path
      const { counts, sentRows, receivedRows } = await this.#exchangeCounts(offsets, FLAG_DEVICE);
      const comm = await g.nccl({ backend: this.backend });
      const Rr = receivedRows.reduce((a, b) => a + b, 0);

      // 2b. the kept rows, gathered in sorted order on the device, to the ranks of their experts
      const rowsOf = (t: DeviceTensor, idx: Int32Array, ty: FloatType) =>
        idx.length > 0 ? embedding(t, { type: 'int32', data: idx, dims: [idx.length] }) : Promise.resolve(DeviceTensor.zeros(ty, [0, d], { backend: this.backend }));
      const xs = keep(await rowsOf(x, sortedRows.subarray(0, R), type));
      const rowsIn = keep((await comm.allToAllVRows(xs, sentRows, receivedRows)).rows);

      // 3. the local experts over the rows received (grouped by expert), back in arrival order
      let yBack: DeviceTensor;
      if (Rr > 0 && this.#local) {
        const { localRows, localOffsets } = localOrder(counts, receivedRows, El);
        const y = keep(await groupedGemm(rowsIn, { type: 'int32', data: localRows, dims: [Rr] }, { type: 'int32', data: localOffsets, dims: [El + 1] }, this.#local));
        const inv = new Int32Array(Rr);
        for (let i = 0; i < Rr; i++) inv[localRows[i]] = i;
        yBack = keep(await rowsOf(y, inv, 'float32'));
      } else {
        yBack = keep(DeviceTensor.zeros('float32', [Rr, d], { backend: this.backend }));
      }

      // 4. the results back, in this rank's sorted order, and combine on the device
      const rowsOut = keep((await comm.allToAllVRows(yBack, receivedRows, sentRows)).rows) as DeviceTensor<'float32'>;
      let output: DeviceTensor;
      if (T > 0 && this.#shared) {
        const routed = keep(await combine(rowsOut, rowOf, weights!, { outType: 'float32' }));
        const x32 = type === 'float32' ? x : keep(await x.cast('float32'));
        const sh = keep((await this.#shared.forward(x32)).output);
        // one f32 addition, then rounded to the output type (the CUDA add keeps one type)
        const sum = await add(routed, sh);
        output = type === 'float32' ? sum : (keep(sum), await sum.cast(type));
      } else if (T > 0) {
        output = await combine(rowsOut, rowOf, weights!, { outType: type });
      } else {
        output = DeviceTensor.zeros(type, [0, d], { backend: this.backend });
      }
      const res: ExpertParallelDeviceOutput = { output };
      if (wantRouting) {
        const topkWeights: Tensor<'float32'> = weights ? await weights.toHost() : { type: 'float32', data: new Float32Array(0), dims: [0, k] };
        const tokensPerExpert: Tensor<'int32'> = perExpert ? await perExpert.toHost() : { type: 'int32', data: new Int32Array(E), dims: [E] };
        res.routing = { topkIds: ids, topkWeights, tokensPerExpert, dropped };
      }
      return res;
    } finally {
      for (const t of temps) t.dispose();
    }
  }

  /** The capacity this call applies (-1: dropless), by the rule of moe_params.h forward_capacity. */
  #capacity(T: number, phase: string): number {
    const decode = phase === 'decode' || (phase === 'auto' && T === 1);
    const factor = decode && this.evalCapacityFactor !== undefined ? this.evalCapacityFactor : this.capacityFactor;
    if (factor === undefined) return -1;
    const c = Math.ceil(((T * this.topK) / this.numExperts) * factor);
    return Math.min(c, 2147483647);
  }

  /** One all-reduce of [routed per expert, probability sums per expert, kept per expert, T]. */
  async #globalStats(T: number, routed: Int32Array, logits: Tensor<'float32'>, offsets: Int32Array, sentRows: Int32Array, receivedRows: Int32Array): Promise<ExpertParallelStats> {
    const E = this.numExperts, N = this.group.size, k = this.topK;
    const buf = new Float64Array(3 * E + 1);
    for (let e = 0; e < E; e++) {
      buf[e] = routed[e];
      buf[2 * E + e] = offsets[e + 1] - offsets[e];
    }
    const lg = logits.data;
    for (let t = 0; t < T; t++) {  // P: softmax of the clean logits, in f64
      let m = -Infinity;
      for (let e = 0; e < E; e++) m = Math.max(m, lg[t * E + e]);
      let s = 0;
      for (let e = 0; e < E; e++) s += Math.exp(lg[t * E + e] - m);
      for (let e = 0; e < E; e++) buf[E + e] += Math.exp(lg[t * E + e] - m) / s;
    }
    buf[3 * E] = T;
    const sum = await this.group.allReduce(buf, 'sum');
    const Tg = sum[3 * E];
    const globalTokensPerExpert = new Int32Array(E), rankLoads = new Int32Array(N);
    let loss = 0;
    for (let p = 0; p < N; p++) {
      const [s, e] = expertRange(E, N, p);
      let fSum = 0, pSum = 0;
      for (let j = s; j < e; j++) {
        globalTokensPerExpert[j] = sum[j];
        rankLoads[p] += sum[2 * E + j];
        fSum += Tg > 0 ? (E / (k * Tg)) * sum[j] : 0;
        pSum += Tg > 0 ? sum[E + j] / Tg : 0;
      }
      if (e > s) loss += (fSum / (e - s)) * pSum;
    }
    return { rank: this.group.rank, size: N, globalTokensPerExpert, rankLoads, sentRows, receivedRows, deviceBalanceLoss: loss };
  }
}
