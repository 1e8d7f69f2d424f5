/**
 * Quantised MoE problems for the tests: experts in each block format (made by the library's
 * quantiser for q8_0/q4_0/q4_k, random valid blocks for q5_k/q6_k), with the float64 values of the
 * dequantised weights from the tests' own decoder (quant-reference.ts), so a test measures the
 * kernels' error, not the quantisation's.
 */
import { quantizeSync, tensor, type QuantTensor, type QuantType, type Tensor } from '../../lib/index';
import { dequantRef, randomWeights } from './quant-reference';
import { randn, widen, type RefExperts } from './reference';

export interface QuantProblem {
  T: number;
  d: number;
  f: number;
  E: number;
  x: Tensor;
  gate: Tensor;
  w1: QuantTensor;
  w3: QuantTensor;
  w2: QuantTensor;
  xr: Float64Array;
  gr: Float64Array;
  /** float64 values of the dequantised weights */
  wr: RefExperts;
}

function matrix(type: QuantType, E: number, rows: number, cols: number, seed: number): QuantTensor {
  if (type === 'q5_k' || type === 'q6_k') {
    const w = randomWeights(type, E * rows, cols, seed);
    return { type, data: w.data, dims: [E, rows, cols] };
  }
  return quantizeSync(tensor('float32', randn(E * rows * cols, seed, 1 / Math.sqrt(cols)), [E, rows, cols]), type);
}

/** x ~ N(0,1), gate ~ N(0, 1/d), experts about N(0, 1/d) (W1, W3) and N(0, 1/f) (W2). */
export function makeQuantProblem(s: { T: number; d: number; f: number; E: number; type: QuantType; w2Type?: QuantType; seed?: number }): QuantProblem {
  const { T, d, f, E, type } = s;
  const seed = s.seed ?? 1;
  const x = tensor('float32', randn(T * d, seed), [T, d]);
  const gate = tensor('float32', randn(E * d, seed + 101, 1 / Math.sqrt(d)), [E, d]);
  const w1 = matrix(type, E, f, d, seed + 202), w3 = matrix(type, E, f, d, seed + 303), w2 = matrix(s.w2Type ?? type, E, d, f, seed + 404);
  const r = (t: QuantTensor) => Float64Array.from(dequantRef(t.type, t.data, E * t.dims[1] * t.dims[2]));
  return { T, d, f, E, x, gate, w1, w3, w2, xr: widen(x), gr: widen(gate), wr: { E, d, f, w1: r(w1), w3: r(w3), w2: r(w2) } };
}

/** Relative RMS of got - ref, and the largest |got - ref| over the RMS of ref. */
export function relErrors(got: ArrayLike<number>, ref: ArrayLike<number>): { rms: number; max: number } {
  let se = 0, ss = 0, mx = 0;
  for (let i = 0; i < ref.length; i++) {
    const e = got[i] - ref[i];
    se += e * e;
    ss += ref[i] * ref[i];
    mx = Math.max(mx, Math.abs(e));
  }
  const rms = Math.sqrt(ss / ref.length);
  return { rms: Math.sqrt(se / ss), max: mx / rms };
}
