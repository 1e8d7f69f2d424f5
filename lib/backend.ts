/**
 * Backend selection. `'auto'` picks CUDA when the driver loads and a device exists, else the CPU;
 * `backendInfo()` says which one runs and why.
 */
import { binding, type NativeBackendInfo } from './binding.js';
import { describe, MoeError, typeError } from './errors.js';

export type BackendName = 'auto' | 'cpu' | 'cuda';
export type ResolvedBackend = 'cpu' | 'cuda';

export interface BackendInfo {
  /** The backend that `'auto'` uses. */
  backend: ResolvedBackend;
  /** Why: e.g. "cuda: this build has no CUDA backend, using cpu". */
  reason: string;
  /** CPU kernel family in use ('avx2-fma' or 'portable'), compute pool threads, CPU features. */
  cpu: NativeBackendInfo['cpu'];
  /** Whether this build has CUDA code, whether a device can run it, and why not. */
  cuda: NativeBackendInfo['cuda'];
}

export function backendInfo(): BackendInfo {
  const n = binding.backend_info();
  const backend: ResolvedBackend = n.cuda.available ? 'cuda' : 'cpu';
  const reason = n.cuda.available ? 'cuda: device found' : `cuda: ${n.cuda.reason}, using cpu`;
  return { backend, reason, cpu: { ...n.cpu }, cuda: { ...n.cuda } };
}

/** Resolves a user's backend option; throws when 'cuda' is asked for and cannot run. */
export function resolveBackend(backend: unknown = 'auto'): ResolvedBackend {
  if (backend !== 'auto' && backend !== 'cpu' && backend !== 'cuda')
    throw typeError(`options.backend must be 'auto', 'cpu' or 'cuda', got ${describe(backend)}`);
  if (backend === 'cpu') return 'cpu';
  const info = binding.backend_info();
  if (backend === 'cuda' && !info.cuda.available)
    throw new MoeError(`backend 'cuda' is not available: ${info.cuda.reason}`, 'ERR_BACKEND_UNAVAILABLE');
  return info.cuda.available ? 'cuda' : 'cpu';
}
