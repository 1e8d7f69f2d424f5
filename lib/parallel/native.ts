/**
 * The native module's process-group functions (native/napi/bind_dist.cc), typed here rather than in
 * lib/core/binding.ts so that the distributed part stays in one folder.
 */
import { binding, type NativeDeviceTensor } from '../core/binding.js';

/** The typed arrays a collective carries (element type from the class). */
export type CommArray = Uint8Array | Uint16Array | Int32Array | Float32Array | Float64Array;

export interface NativeDist {
  dist_mpi_info(): { available: boolean; reason: string };
  dist_init(): Promise<{ rank: number; size: number; library: string }>;
  dist_all_to_all_v<T extends CommArray>(data: T, sendCounts: Int32Array, recvCounts?: Int32Array): Promise<{ data: T; recvCounts: Int32Array }>;
  dist_all_reduce<T extends Int32Array | Float32Array | Float64Array>(data: T, op: 'sum' | 'max' | 'min'): Promise<T>;
  dist_broadcast<T extends CommArray>(data: T, root: number): Promise<T>;
  dist_barrier(): Promise<void>;
  dist_finalize(): Promise<void>;
  dist_abandon(): void;
  dist_state(): { initialized: boolean; finalized: boolean; broken: boolean; rank: number; size: number; pending: number };
  nccl_info(): { available: boolean; reason: string; version: number };
  nccl_unique_id(): Uint8Array;
  nccl_comm_init(id: Uint8Array, rank: number, size: number, options: { backend: string }): Promise<NativeDeviceComm>;
  device_all_to_all(comm: NativeDeviceComm, rows: NativeDeviceTensor, sendRows: Int32Array, recvRows: Int32Array): Promise<NativeDeviceTensor>;
  nccl_comm_abort(comm: NativeDeviceComm): void;
}

/** A native NCCL communicator (DeviceComm handle). */
export interface NativeDeviceComm {
  dispose(): void;
  info(): { disposed: boolean; rank?: number; size?: number };
}

export const dist = binding as unknown as NativeDist;
