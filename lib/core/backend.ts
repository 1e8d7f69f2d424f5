/**
 * Backend selection. `'auto'` picks CUDA when the driver loads and a device exists, else the CPU;
 * `backendInfo()` says which one runs and why. `'cuda-emu'` exists only in the test build of the
 * addon (MOE_CUDA_EMU=1), where the CUDA kernels run on the CPU emulator of native/emu; `'auto'`
 * never picks it.
 */
import { binding, type NativeBackendInfo } from './binding.js';
import { describe, MoeError, typeError } from './errors.js';

export type BackendName = 'auto' | 'cpu' | 'cuda' | 'cuda-emu';
export type ResolvedBackend = 'cpu' | 'cuda' | 'cuda-emu';

export interface BackendInfo {
  /** The backend that `'auto'` uses. */
  backend: 'cpu' | 'cuda';
  /** Why: e.g. "cuda: no usable NVIDIA driver or device (...), using cpu". */
  reason: string;
  /** CPU kernel table in use ('avx512-bf16', 'avx512', 'avx2-fma' or 'portable') and why, compute pool threads, CPU features. */
  cpu: NativeBackendInfo['cpu'];
  /**
   * This build's CUDA backend (`name`: 'cuda', 'cuda-emu' in test builds, 'none' without one),
   * whether a device can run it and why not, and the device with its peaks.
   */
  cuda: NativeBackendInfo['cuda'];
}

// The native answer never changes in a process (the device is probed once, the pool is sized once),
// and resolveBackend runs on every op call: ask once.
let cachedInfo: NativeBackendInfo | undefined;
const nativeInfo = (): NativeBackendInfo => (cachedInfo ??= binding.backend_info());

const realCuda = (n: NativeBackendInfo) => n.cuda.name === 'cuda' && n.cuda.available;

export function backendInfo(): BackendInfo {
  const n = nativeInfo();
  const backend = realCuda(n) ? 'cuda' : 'cpu';
  const reason = realCuda(n) ? `cuda: ${n.cuda.reason}` : `cuda: ${n.cuda.reason}, using cpu`;
  const cuda = { ...n.cuda, ...(n.cuda.device ? { device: { ...n.cuda.device } } : {}) };
  return { backend, reason, cpu: { ...n.cpu }, cuda };
}

/** The backends this process can run, CPU first (e.g. ['cpu'], ['cpu', 'cuda'], ['cpu', 'cuda-emu']). */
export function availableBackends(): ResolvedBackend[] {
  const n = nativeInfo();
  return n.cuda.available && (n.cuda.name === 'cuda' || n.cuda.name === 'cuda-emu') ? ['cpu', n.cuda.name] : ['cpu'];
}

/** Resolves a user's backend option; throws ERR_BACKEND_UNAVAILABLE when the one asked for cannot run. */
export function resolveBackend(backend: unknown = 'auto'): ResolvedBackend {
  if (backend !== 'auto' && backend !== 'cpu' && backend !== 'cuda' && backend !== 'cuda-emu')
    throw typeError(`options.backend must be 'auto', 'cpu', 'cuda' or 'cuda-emu', got ${describe(backend)}`);
  if (backend === 'cpu') return 'cpu';
  const n = nativeInfo();
  if (backend === 'auto') return realCuda(n) ? 'cuda' : 'cpu';
  if (n.cuda.name !== backend) {
    const has = n.cuda.name === 'none' ? n.cuda.reason : `its CUDA backend is '${n.cuda.name}'`;
    const hint = backend === 'cuda-emu' ? " ('cuda-emu' is in the test build only: MOE_CUDA_EMU=1 npm run build:native)" : '';
    throw new MoeError(`backend '${backend}' is not in this build: ${has}${hint}`, 'ERR_BACKEND_UNAVAILABLE');
  }
  if (!n.cuda.available) throw new MoeError(`backend '${backend}' is not available: ${n.cuda.reason}`, 'ERR_BACKEND_UNAVAILABLE');
  return backend;
}

/** This build's CUDA backend when it can run ('cuda' or 'cuda-emu'), else null: where device tensors live. */
export function deviceBackendName(): 'cuda' | 'cuda-emu' | null {
  const n = nativeInfo();
  return n.cuda.available && (n.cuda.name === 'cuda' || n.cuda.name === 'cuda-emu') ? n.cuda.name : null;
}
