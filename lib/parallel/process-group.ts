/**
 * A process group over an existing communication library, for expert parallelism across processes.
 *
 *   const group = await ProcessGroup.init();          // under `mpirun -np N node app.js`
 *   const { data, recvCounts } = await group.allToAllV(rows, sendCounts);
 *   await group.close();
 *
 * MPI (Open MPI) is loaded at run time (libmpi.so.40); every MPI call runs on one native comm
 * thread, so a collective never blocks the event loop. Collectives must be called by every rank in
 * the same order (MPI's rule); a call that a peer never joins, or that a dead peer leaves hanging,
 * is rejected after `timeoutMs` with ERR_DIST_TIMEOUT, and the group is then broken (MPI cannot
 * recover): every later call fails with ERR_DIST_BROKEN, and the process should exit.
 *
 * NCCL (one GPU per rank) is loaded the same way; `ProcessGroup.available()` reports it, and
 * `group.nccl()` makes the group's NCCL communicator (rank 0's unique id broadcast over MPI, then
 * ncclCommInitRank on every rank): an all-to-all of device rows that never leave the GPU. It runs
 * here only against a test stand-in over MPI on emulated CUDA ranks; it is not verified on a GPU
 * (see docs/expert-parallel.md).
 */
import { describe, MoeError, rangeError, typeError } from '../core/errors.js';
import { checkOptions } from '../core/options.js';
import { DTYPE_BYTES, type DType, type Tensor } from '../core/tensor.js';
import type { BackendName, ResolvedBackend } from '../core/backend.js';
import { DeviceTensor, deviceBackend } from '../core/device.js';
import { dist, type CommArray, type NativeDeviceComm } from './native.js';

export type { CommArray } from './native.js';

export interface ProcessGroupOptions {
  /** The transport: 'mpi' (CPU ranks). Default 'mpi'. */
  backend?: 'mpi';
  /**
   * Milliseconds a collective may take before it is rejected with ERR_DIST_TIMEOUT (a watchdog
   * against a peer that died or never joins). Default: MOE_DIST_TIMEOUT_MS from the environment,
   * else 120000.
   */
  timeoutMs?: number;
}

export interface TransportInfo {
  available: boolean;
  /** Why it is or is not available (the loader's message). */
  reason: string;
}

/** Bytes and time of the all-to-all calls of a group, since it started (see ProcessGroup.stats). */
export interface CommStats {
  allToAllCalls: number;
  /** Bytes this rank sent to other ranks (its own share to itself not counted). */
  bytesSent: number;
  bytesReceived: number;
  /** Wall time spent waiting on all-to-all calls, ms. */
  allToAllMs: number;
  /** Of allToAllCalls, those made by the group's NCCL communicators (device rows). */
  ncclCalls: number;
}

const DEFAULT_TIMEOUT_MS = 120_000;

function isCommArray(v: unknown): v is CommArray {
  return v instanceof Uint8Array || v instanceof Uint16Array || v instanceof Int32Array || v instanceof Float32Array || v instanceof Float64Array;
}

function countsArray(v: unknown, name: string, size: number): Int32Array {
  if (!(v instanceof Int32Array) && !Array.isArray(v)) throw typeError(`${name} must be an Int32Array or an array of numbers, got ${describe(v)}`);
  const a = v as ArrayLike<number>;
  if (a.length !== size) throw rangeError(`${name} must have one count per rank (${size}), got ${a.length}`);
  const out = new Int32Array(size);
  for (let p = 0; p < size; p++) {
    const c = a[p];
    if (typeof c !== 'number' || !Number.isInteger(c) || c < 0 || c > 2 ** 31 - 1) throw rangeError(`${name}[${p}] must be an integer in [0, 2^31), got ${describe(c)}`);
    out[p] = c;
  }
  return out;
}

let current: ProcessGroup | undefined;
let starting: Promise<ProcessGroup> | undefined;

export class ProcessGroup {
  /** This process's rank, 0 <= rank < size. */
  readonly rank: number;
  /** Processes in the group. */
  readonly size: number;
  readonly backend = 'mpi' as const;
  /** The MPI library's version string. */
  readonly library: string;
  /** The watchdog's limit per collective, ms. */
  readonly timeoutMs: number;
  #closed = false;
  #stats: CommStats = { allToAllCalls: 0, bytesSent: 0, bytesReceived: 0, allToAllMs: 0, ncclCalls: 0 };
  #nccl = new Map<ResolvedBackend, Promise<NcclCommunicator>>();

  /** @internal use ProcessGroup.init() */
  constructor(rank: number, size: number, library: string, timeoutMs: number) {
    this.rank = rank;
    this.size = size;
    this.library = library;
    this.timeoutMs = timeoutMs;
  }

  /** Which transports load on this machine (nothing is initialised). */
  static available(): { mpi: TransportInfo; nccl: TransportInfo & { version: number } } {
    return { mpi: dist.dist_mpi_info(), nccl: dist.nccl_info() };
  }

  /**
   * The NCCL unique id (128 bytes) that rank 0 makes and broadcasts before ncclCommInitRank.
   * ERR_DIST_UNAVAILABLE when libnccl.so.2 cannot be loaded.
   */
  static ncclUniqueId(): Uint8Array {
    return dist.nccl_unique_id();
  }

  /**
   * Joins the process group of this job (MPI_COMM_WORLD): one per process; a second call returns
   * the same group. Run the processes with `mpirun -np N node app.js` or
   * `npx moe-kernels launch -n N app.js`; a process started alone is a group of size 1.
   */
  static async init(options?: ProcessGroupOptions): Promise<ProcessGroup> {
    const o = checkOptions(options);
    if (o.backend !== undefined && o.backend !== 'mpi') throw typeError(`options.backend must be 'mpi', got ${describe(o.backend)}`);
    let timeoutMs = DEFAULT_TIMEOUT_MS;
    const envTimeout = process.env.MOE_DIST_TIMEOUT_MS;
    if (envTimeout !== undefined && envTimeout !== '') {
      const v = Number(envTimeout);
      if (!Number.isFinite(v) || v <= 0) throw rangeError(`MOE_DIST_TIMEOUT_MS must be a number of milliseconds > 0, got ${JSON.stringify(envTimeout)}`);
      timeoutMs = v;
    }
    if (o.timeoutMs !== undefined) {
      if (typeof o.timeoutMs !== 'number' || !Number.isFinite(o.timeoutMs) || o.timeoutMs <= 0)
        throw rangeError(`options.timeoutMs must be a number > 0, got ${describe(o.timeoutMs)}`);
      timeoutMs = o.timeoutMs;
    }
    if (current && !current.#closed) return current;
    if (starting) return starting;
    starting = (async () => {
      try {
        const r = await guard(dist.dist_init(), 'MPI_Init_thread', timeoutMs, -1, 0);
        current = new ProcessGroup(r.rank, r.size, r.library, timeoutMs);
        return current;
      } finally {
        starting = undefined;
      }
    })();
    return starting;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Bytes and time of the all-to-all calls so far. */
  get stats(): CommStats {
    return { ...this.#stats };
  }

  /**
   * All-to-all-v: sends data[sum(sendCounts[0..p)) ..][..sendCounts[p]] to rank p and returns what
   * every rank sent here, in rank order, with the counts (elements). Without recvCounts the counts
   * are exchanged first, in the same call.
   */
  async allToAllV<T extends CommArray>(data: T, sendCounts: ArrayLike<number>, recvCounts?: ArrayLike<number>): Promise<{ data: T; recvCounts: Int32Array }> {
    this.#check();
    if (!isCommArray(data)) throw typeError(`data must be a Uint8Array, Uint16Array, Int32Array, Float32Array or Float64Array, got ${describe(data)}`);
    const sc = countsArray(sendCounts, 'sendCounts', this.size);
    const rc = recvCounts === undefined ? undefined : countsArray(recvCounts, 'recvCounts', this.size);
    const t0 = performance.now();
    const r = await this.#guard(dist.dist_all_to_all_v(data, sc, rc), 'all-to-all-v');
    const es = data.BYTES_PER_ELEMENT;
    let sent = 0, received = 0;
    for (let p = 0; p < this.size; p++)
      if (p !== this.rank) {
        sent += sc[p] * es;
        received += r.recvCounts[p] * es;
      }
    this._record(sent, received, performance.now() - t0);
    return r;
  }

  /**
   * All-to-all-v of tensor rows: rows [R, ...] (the first dim), sendRows[p] of them to rank p, in
   * order. Returns the rows received [sum(recvRows), ...] in rank order, of the same type, and how
   * many came from each rank.
   */
  async allToAllVRows<T extends Tensor>(rows: T, sendRows: ArrayLike<number>, recvRows?: ArrayLike<number>): Promise<{ rows: T; recvRows: Int32Array }> {
    this.#check();
    if (!rows || typeof rows !== 'object' || !Array.isArray(rows.dims) || rows.dims.length < 1 || !isCommArray(rows.data))
      throw typeError(`rows must be a tensor {type, data, dims} with at least one dim, got ${describe(rows)}`);
    const width = rows.dims.slice(1).reduce((a, b) => a * b, 1);
    const sr = countsArray(sendRows, 'sendRows', this.size);
    const total = sr.reduce((a, b) => a + b, 0);
    if (total !== rows.dims[0]) throw rangeError(`sendRows sum to ${total} rows, but rows.dims[0] is ${rows.dims[0]}`);
    const sc = sr.map((c) => c * width);
    const rc = recvRows === undefined ? undefined : countsArray(recvRows, 'recvRows', this.size).map((c) => c * width);
    const r = await this.allToAllV(rows.data.subarray(0, total * width) as CommArray, sc, rc);
    const recv = r.recvCounts.map((c) => (width === 0 ? 0 : c / width));
    const n = recv.reduce((a, b) => a + b, 0);
    return { rows: { type: rows.type, data: r.data, dims: [n, ...rows.dims.slice(1)] } as unknown as T, recvRows: recv };
  }

  /**
   * The group's NCCL communicator on a CUDA backend (made once per backend; later calls return the
   * same one): a collective call, made by every rank. Every rank must be able to load NCCL
   * (libnccl.so.2, or MOE_NCCL_LIBRARY); when one cannot, every rank fails with
   * ERR_DIST_UNAVAILABLE naming the ranks, instead of some ranks waiting in ncclCommInitRank (and
   * later calls give the same answer at once, on every rank).
   */
  nccl(options?: NcclOptions): Promise<NcclCommunicator> {
    this.#check();
    const backend = deviceBackend(checkOptions(options).backend);
    let p = this.#nccl.get(backend);
    if (!p) {
      p = this.#makeNccl(backend);
      this.#nccl.set(backend, p);
      // a rank without NCCL stays without it (the library is loaded once per process): that answer
      // is kept, so that asking again costs no collective; any other failure may be retried
      p.catch((e: { code?: string }) => e?.code !== 'ERR_DIST_UNAVAILABLE' && this.#nccl.delete(backend));
    }
    return p;
  }

  async #makeNccl(backend: ResolvedBackend): Promise<NcclCommunicator> {
    const info = dist.nccl_info();
    const missing = new Int32Array(this.size);
    missing[this.rank] = info.available ? 0 : 1;
    const all = await this.allReduce(missing, 'sum');
    const lacking = Array.from(all.keys()).filter((p) => all[p] > 0);
    if (lacking.length > 0)
      throw new MoeError(
        `NCCL is not available on rank${lacking.length > 1 ? 's' : ''} ${lacking.join(', ')} of ${this.size}` + (info.available ? '' : `: ${info.reason}`),
        'ERR_DIST_UNAVAILABLE',
      );
    const id = await this.broadcast(this.rank === 0 ? dist.nccl_unique_id() : new Uint8Array(128), 0);
    const handle = await this.#guard(dist.nccl_comm_init(id, this.rank, this.size, { backend }), 'ncclCommInitRank');
    return new NcclCommunicator(this, handle, backend, info.version);
  }

  /** @internal counts an all-to-all of a transport of this group (bytes to and from other ranks). */
  _record(sent: number, received: number, ms: number, nccl = false): void {
    const s = this.#stats;
    s.allToAllCalls++;
    if (nccl) s.ncclCalls++;
    s.bytesSent += sent;
    s.bytesReceived += received;
    s.allToAllMs += ms;
  }

  /** @internal the watchdog of this group's calls; onTimeout runs when it fires */
  _guard<R>(p: Promise<R>, what: string, onTimeout?: () => void): Promise<R> {
    return guard(p, what, this.timeoutMs, this.rank, this.size, onTimeout);
  }

  /** Each rank's value for every other: counts[p] goes to rank p; returns one value from each rank. */
  async allToAll(counts: ArrayLike<number>): Promise<Int32Array> {
    const c = countsArray(counts, 'counts', this.size);
    const ones = new Int32Array(this.size).fill(1);
    return (await this.allToAllV(c, ones, ones)).data;
  }

  /** Element-wise reduction over the ranks; every rank gets the result. */
  async allReduce<T extends Int32Array | Float32Array | Float64Array>(data: T, op: 'sum' | 'max' | 'min' = 'sum'): Promise<T> {
    this.#check();
    if (!(data instanceof Int32Array || data instanceof Float32Array || data instanceof Float64Array))
      throw typeError(`data must be an Int32Array, Float32Array or Float64Array, got ${describe(data)}`);
    return this.#guard(dist.dist_all_reduce(data, op), 'all-reduce');
  }

  /** Root's data on every rank (every rank passes an array of the same type and length). */
  async broadcast<T extends CommArray>(data: T, root = 0): Promise<T> {
    this.#check();
    if (!isCommArray(data)) throw typeError(`data must be a Uint8Array, Uint16Array, Int32Array, Float32Array or Float64Array, got ${describe(data)}`);
    if (!Number.isInteger(root) || root < 0 || root >= this.size) throw rangeError(`root must be a rank in [0, ${this.size}), got ${describe(root)}`);
    return this.#guard(dist.dist_broadcast(data, root), 'broadcast');
  }

  async barrier(): Promise<void> {
    this.#check();
    return this.#guard(dist.dist_barrier(), 'barrier');
  }

  /**
   * Leaves the group (MPI_Finalize, collective: every rank calls it). The group, and MPI in this
   * process, cannot be used again.
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#check();
    this.#closed = true;
    for (const p of this.#nccl.values()) (await p.catch(() => undefined))?.dispose();
    await this.#guard(dist.dist_finalize(), 'MPI_Finalize');
  }

  #check(): void {
    if (this.#closed) throw new MoeError('the process group was closed and cannot be used again', 'ERR_DISPOSED');
  }

  #guard<R>(p: Promise<R>, what: string): Promise<R> {
    return guard(p, what, this.timeoutMs, this.rank, this.size);
  }
}

export interface NcclOptions {
  /** The CUDA backend whose device memory the rows live in: 'auto' (default) is this build's. */
  backend?: BackendName;
}

/**
 * A process group's NCCL communicator (from `group.nccl()`): rows of device tensors to and from
 * every rank, GPU to GPU. Each call is an op of the CUDA backend, enqueued on its stream in order
 * with the ops before it. Every rank makes the same calls in the same order, as for the group.
 */
export class NcclCommunicator {
  readonly rank: number;
  readonly size: number;
  readonly backend: ResolvedBackend;
  /** NCCL's version code (e.g. 21803 for 2.18.3). */
  readonly version: number;
  readonly group: ProcessGroup;
  readonly #handle: NativeDeviceComm;

  /** @internal use group.nccl() */
  constructor(group: ProcessGroup, handle: NativeDeviceComm, backend: ResolvedBackend, version: number) {
    this.group = group;
    this.rank = group.rank;
    this.size = group.size;
    this.#handle = handle;
    this.backend = backend;
    this.version = version;
  }

  get disposed(): boolean {
    return this.#handle.info().disposed;
  }

  /**
   * All-to-all-v of device rows: rows [R, ...], sendRows[p] consecutive rows to rank p (in rank
   * order). Returns the rows received, [sum(recvRows), ...] in rank order, on the device. Without
   * recvRows the counts are exchanged first, over MPI.
   */
  async allToAllVRows<T extends DType>(rows: DeviceTensor<T>, sendRows: ArrayLike<number>, recvRows?: ArrayLike<number>): Promise<{ rows: DeviceTensor<T>; recvRows: Int32Array }> {
    if (this.disposed) throw new MoeError('the NCCL communicator was disposed and cannot be used again', 'ERR_DISPOSED');
    if (!(rows instanceof DeviceTensor)) throw typeError(`rows must be a DeviceTensor (NCCL moves device memory), got ${describe(rows)}`);
    if (rows.dims.length < 1) throw rangeError(`rows must have at least one dim, got [${rows.dims.join(',')}]`);
    const sr = countsArray(sendRows, 'sendRows', this.size);
    const total = sr.reduce((a, b) => a + b, 0);
    if (total !== rows.dims[0]) throw rangeError(`sendRows sum to ${total} rows, but rows.dims[0] is ${rows.dims[0]}`);
    const rr = recvRows === undefined ? await this.group.allToAll(sr) : countsArray(recvRows, 'recvRows', this.size);
    const t0 = performance.now();
    // a peer that never joins leaves NCCL's kernels waiting on the stream: on timeout the
    // communicator is aborted, which ends them, so the device and the process can still be left
    const out = await this.group._guard(dist.device_all_to_all(this.#handle, rows.native(), sr, rr), 'NCCL all-to-all-v', () => dist.nccl_comm_abort(this.#handle));
    const rowBytes = rows.dims.slice(1).reduce((a, b) => a * b, 1) * DTYPE_BYTES[rows.type];
    let sent = 0, received = 0;
    for (let p = 0; p < this.size; p++)
      if (p !== this.rank) {
        sent += sr[p] * rowBytes;
        received += rr[p] * rowBytes;
      }
    this.group._record(sent, received, performance.now() - t0, true);
    return { rows: new DeviceTensor<T>(out, rows.backend), recvRows: rr };
  }

  /** Frees the communicator (ncclCommDestroy once the calls in flight are done). */
  dispose(): void {
    this.#handle.dispose();
  }
}

/**
 * The watchdog: p, or ERR_DIST_TIMEOUT after ms (the group is then broken, and onTimeout runs). A failed collective
 * breaks the group too: MPI's state after an error is undefined.
 */
function guard<R>(p: Promise<R>, what: string, ms: number, rank: number, size: number, onTimeout?: () => void): Promise<R> {
  return new Promise<R>((resolve, reject) => {
    const who = rank >= 0 ? `rank ${rank} of ${size}` : `this process`;
    const timer = setTimeout(() => {
      dist.dist_abandon();
      onTimeout?.();
      reject(
        new MoeError(
          `${what} did not complete within ${ms} ms on ${who}: a peer rank has exited, crashed or is not making the same collective call. ` +
            'The process group is now broken; exit this process (mpirun then ends the job).',
          'ERR_DIST_TIMEOUT',
        ),
      );
    }, ms);
    p.then(
      (v) => {
        clearTimeout(timer);
        resolve(v);
      },
      (e: unknown) => {
        clearTimeout(timer);
        if ((e as { code?: string }).code === 'ERR_DIST') dist.dist_abandon();
        if (e instanceof Error && rank >= 0) e.message = `${e.message} [${who}]`;
        reject(e);
      },
    );
  });
}
