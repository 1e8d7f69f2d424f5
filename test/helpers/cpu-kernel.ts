/**
 * Which CPU kernel table this process runs (backendInfo().cpu.kernel, chosen once at load time:
 * the widest the CPU can run, or MOE_CPU_KERNEL=portable|avx2|avx512|avx512-bf16), and the
 * tolerance that follows from it. scripts/run-tests.js runs the kernel suites once per table the
 * machine can execute.
 *
 * The avx512-bf16 table multiplies bf16 weights with activations rounded to bf16 (reference.ts,
 * tolForBf16Activations); every other table and weight type multiplies with f32 activations.
 */
import { backendInfo } from '../../lib/index';
import { tolFor, tolForBf16Activations, type FloatType, type Tol } from './reference';

export const CPU_KERNEL: string = backendInfo().cpu.kernel;

/** Whether the CPU rounds activations to bf16 for weights of type wType. */
export function cpuBf16Activations(wType: FloatType): boolean {
  return wType === 'bfloat16' && CPU_KERNEL === 'avx512-bf16';
}

/**
 * tolFor(outType, n) for an op on the CPU whose weights are wType: widened to the bf16-activation
 * tolerance where the kernel table rounds the activations.
 */
export function tolForWeights(outType: FloatType, n: number, wType: FloatType): Tol {
  return cpuBf16Activations(wType) ? tolForBf16Activations(outType, n) : tolFor(outType, n);
}
