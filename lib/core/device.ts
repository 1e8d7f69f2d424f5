/**
 * Device-resident tensors: a model forward on CUDA keeps its activations on the device. A
 * `DeviceTensor` holds device memory of the build's CUDA backend ('cuda', or 'cuda-emu' in the test
 * build); the ops of lib/model/primitives.ts and the MoE layer run on the device when given device tensors, and
 * return device tensors. Ops enqueue their kernels in call order on one stream and return at once;
 * `toHost()` waits for the work before it and copies the data back.
 *
 *   const x = await DeviceTensor.from(hostTensor, { backend: 'cuda' });
 *   const y = await rmsNorm(x, normWeight);          // a DeviceTensor
 *   const host = await y.toHost();                   // a Tensor
 *
 * An op's tensors live in one place: all on the host or all on the device (a TypeError names the
 * argument otherwise). Device memory is freed by `dispose()` or, failing that, when the object is
 * garbage collected; views (`reshape`, `rows`) share their tensor's memory.
 */
import { binding, type NativeDeviceBuffer, type NativeDeviceTensor, type NativeTensor } from './binding.js';
import { deviceBackendName, resolveBackend, type BackendName, type ResolvedBackend } from './backend.js';
import { describe, MoeError, rangeError, typeError } from './errors.js';
import { checkOptions } from './options.js';
import { checkDims, checkTensor, checkType, DTYPE_BYTES, FLOAT_TYPES, type DType, type FloatType, type Tensor } from './tensor.js';

export interface DeviceOptions {
  /** A CUDA backend: 'auto' (default) means this build's CUDA backend, which must be available. */
  backend?: BackendName;
}

/** The device backend of options.backend: ERR_BACKEND_UNAVAILABLE when there is none. */
export function deviceBackend(backend: unknown): ResolvedBackend {
  if (backend === undefined || backend === 'auto') {
    const name = deviceBackendName();
    if (name === null) throw new MoeError(`device tensors need a CUDA backend: ${binding.backend_info().cuda.reason}`, 'ERR_BACKEND_UNAVAILABLE');
    return name;
  }
  const r = resolveBackend(backend);
  if (r === 'cpu') throw typeError(`options.backend must be a CUDA backend for device tensors, got 'cpu'`);
  return r;
}

export class DeviceTensor<T extends DType = DType> {
  readonly type: T;
  readonly dims: readonly number[];
  readonly backend: ResolvedBackend;
  /** @internal the native device memory (shared by views) */
  readonly buffer: NativeDeviceBuffer;
  /** @internal where this tensor starts in `buffer` */
  readonly byteOffset: number;

  /** @internal use DeviceTensor.zeros / from */
  constructor(n: NativeDeviceTensor, backend: ResolvedBackend) {
    this.type = n.type as T;
    this.dims = Object.freeze([...n.dims]);
    this.buffer = n.buffer;
    this.byteOffset = n.byteOffset;
    this.backend = backend;
  }

  /** A zeroed device tensor. */
  static zeros<T extends DType>(type: T, dims: readonly number[], options?: DeviceOptions): DeviceTensor<T> {
    const backend = deviceBackend(checkOptions(options).backend);
    checkType(type, 'type');
    checkDims(dims, 'dims');
    return new DeviceTensor<T>(binding.device_alloc(type, [...dims], { backend }), backend);
  }

  /** A device copy of a host tensor (the copy runs off the event loop). */
  static async from<T extends DType>(t: Tensor<T>, options?: DeviceOptions): Promise<DeviceTensor<T>> {
    const c = checkTensor(t, 'tensor');
    const d = DeviceTensor.zeros(c.type, c.dims, options);
    await binding.device_upload(d.native(), c as unknown as NativeTensor, { async: true });
    return d as DeviceTensor<T>;
  }
  static fromSync<T extends DType>(t: Tensor<T>, options?: DeviceOptions): DeviceTensor<T> {
    const c = checkTensor(t, 'tensor');
    const d = DeviceTensor.zeros(c.type, c.dims, options);
    binding.device_upload(d.native(), c as unknown as NativeTensor);
    return d as DeviceTensor<T>;
  }

  /** @internal a native result object as a DeviceTensor */
  static wrap<T extends DType = DType>(n: NativeDeviceTensor): DeviceTensor<T> {
    return new DeviceTensor<T>(n, deviceBackendName()!);
  }

  get numel(): number {
    return this.dims.reduce((a, b) => a * b, 1);
  }
  get bytes(): number {
    return this.numel * DTYPE_BYTES[this.type];
  }
  get disposed(): boolean {
    return this.buffer.info().disposed;
  }

  /** Copies the data to the host after the work enqueued before this call (into `out` when given). */
  async toHost(out?: Tensor<T>): Promise<Tensor<T>> {
    return (await binding.device_download(this.native(), { out: out as NativeTensor | undefined, async: true })) as unknown as Tensor<T>;
  }
  toHostSync(out?: Tensor<T>): Tensor<T> {
    return binding.device_download(this.native(), { out: out as NativeTensor | undefined }) as unknown as Tensor<T>;
  }
  /** Overwrites the data with a host tensor of the same type and dims. */
  async copyFrom(src: Tensor<T>): Promise<this> {
    await binding.device_upload(this.native(), checkTensor(src, 'src') as unknown as NativeTensor, { async: true });
    return this;
  }

  /** A new device tensor of this one's values converted to `type` (round to nearest even), on the device. */
  async cast<U extends FloatType>(type: U): Promise<DeviceTensor<U>> {
    checkType(type, 'type', FLOAT_TYPES);
    return DeviceTensor.wrap<U>((await binding.cast(this.native(), { outType: type, async: true })) as NativeDeviceTensor);
  }
  castSync<U extends FloatType>(type: U): DeviceTensor<U> {
    checkType(type, 'type', FLOAT_TYPES);
    return DeviceTensor.wrap<U>(binding.cast(this.native(), { outType: type }) as NativeDeviceTensor);
  }

  /** The same memory with other dims (same number of elements). */
  reshape(dims: readonly number[]): DeviceTensor<T> {
    const n = checkDims(dims, 'dims');
    if (n !== this.numel) throw rangeError(`dims [${dims.join(',')}] hold ${n} elements, the tensor has ${this.numel} ([${this.dims.join(',')}])`);
    return new DeviceTensor<T>({ ...this.native(), dims: [...dims] }, this.backend);
  }

  /** Rows start .. start+count-1 along the first dim, sharing the memory. */
  rows(start: number, count: number): DeviceTensor<T> {
    const n = this.dims[0] ?? 0;
    if (!Number.isInteger(start) || !Number.isInteger(count) || start < 0 || count < 0 || start + count > n)
      throw rangeError(`rows(${describe(start)}, ${describe(count)}) must lie within the ${n} rows of dim 0`);
    const row = this.dims.slice(1).reduce((a, b) => a * b, 1) * DTYPE_BYTES[this.type];
    return new DeviceTensor<T>({ type: this.type, dims: [count, ...this.dims.slice(1)], buffer: this.buffer, byteOffset: this.byteOffset + start * row }, this.backend);
  }

  /** Frees the device memory now (of every view of it); work already enqueued finishes first. */
  dispose(): void {
    this.buffer.dispose();
  }

  /** `using layer = ...`: dispose() at the end of the scope. */
  [Symbol.dispose](): void {
    this.dispose();
  }
  /** `await using`: the same (calls already running finish first either way). */
  async [Symbol.asyncDispose](): Promise<void> {
    this.dispose();
  }

  /** @internal */
  native(): NativeDeviceTensor {
    return { type: this.type, dims: [...this.dims], buffer: this.buffer, byteOffset: this.byteOffset };
  }
}

/** Host <-> device copies, each way: how many and how many bytes. */
export interface TransferStats {
  toDevice: { calls: number; bytes: number };
  toHost: { calls: number; bytes: number };
}

/**
 * The host <-> device copies the CUDA backend's ops made since the process started (inputs,
 * results; not the one-time weight uploads when layers are packed): take the difference around a
 * call to see what it moved. All zero without a CUDA backend.
 */
export function deviceTransferStats(): TransferStats {
  return binding.transfer_stats();
}

/** True for a DeviceTensor. */
export function isDeviceTensor(t: unknown): t is DeviceTensor {
  return t instanceof DeviceTensor;
}
