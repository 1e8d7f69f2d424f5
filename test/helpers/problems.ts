/**
 * Test inputs built with the library's `tensor()` (so 16-bit inputs are rounded the way a user's
 * are), together with their float64 values widened by the reference's own decoders.
 */
import { tensor, type Tensor } from '../../lib/index';
import { randn, widen, type FloatType, type RefExperts } from './reference';

export interface MoeProblem {
  T: number;
  d: number;
  f: number;
  E: number;
  x: Tensor;
  gate: Tensor;
  w1: Tensor;
  w3: Tensor;
  w2: Tensor;
  /** float64 values of the rounded inputs */
  xr: Float64Array;
  gr: Float64Array;
  wr: RefExperts;
}

export interface ProblemSpec {
  T: number;
  d: number;
  f: number;
  E: number;
  seed?: number;
  xType?: FloatType;
  wType?: FloatType;
  gateType?: FloatType;
  /** Scale of the router weights relative to 1/sqrt(d) (larger: wider logit gaps). */
  gateScale?: number;
}

/** x ~ N(0,1); gate, w1, w3 ~ N(0, 1/d); w2 ~ N(0, 1/f): every intermediate stays O(1). */
export function makeProblem(s: ProblemSpec): MoeProblem {
  const { T, d, f, E } = s;
  const seed = s.seed ?? 1;
  const xType = s.xType ?? 'float32';
  const wType = s.wType ?? 'float32';
  const gateType = s.gateType ?? 'float32';
  const x = tensor(xType, randn(T * d, seed), [T, d]);
  const gate = tensor(gateType, randn(E * d, seed + 101, (s.gateScale ?? 1) / Math.sqrt(d)), [E, d]);
  const w1 = tensor(wType, randn(E * f * d, seed + 202, 1 / Math.sqrt(d)), [E, f, d]);
  const w3 = tensor(wType, randn(E * f * d, seed + 303, 1 / Math.sqrt(d)), [E, f, d]);
  const w2 = tensor(wType, randn(E * d * f, seed + 404, 1 / Math.sqrt(f)), [E, d, f]);
  return {
    T, d, f, E, x, gate, w1, w3, w2,
    xr: widen(x),
    gr: widen(gate),
    wr: { E, d, f, w1: widen(w1), w3: widen(w3), w2: widen(w2) },
  };
}

/** Splits an [E,r,c] tensor into E tensors of [r,c] (copies, same bits). */
export function perExpert(t: Tensor): Tensor[] {
  const [E, r, c] = t.dims;
  const out: Tensor[] = [];
  for (let e = 0; e < E; e++) {
    const data = t.data.slice(e * r * c, (e + 1) * r * c);
    out.push({ type: t.type, data, dims: [r, c] } as Tensor);
  }
  return out;
}

/** An int32 tensor from numbers. */
export function i32(data: ArrayLike<number>, dims: number[]): Tensor<'int32'> {
  return tensor('int32', Int32Array.from(data), dims);
}

/** A float32 tensor from numbers. */
export function f32(data: ArrayLike<number>, dims: number[]): Tensor<'float32'> {
  return tensor('float32', Float32Array.from(data), dims);
}

/**
 * Whether each of `tokens` gets the same output bits from `layer` alone (a T=1 call) as in the call
 * over all of p.x: the indices of the tokens that differ (empty: batch-invariant on those tokens).
 */
export async function tokensThatDependOnTheBatch(layer: { forward(x: Tensor): Promise<{ output: Tensor }> }, p: MoeProblem, tokens: number[]): Promise<number[]> {
  const all = (await layer.forward(p.x)).output;
  const d = p.x.dims[1];
  const bytes = (t: Tensor) => new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
  const rowBytes = all.data.BYTES_PER_ELEMENT * d;
  const differ: number[] = [];
  for (const t of tokens) {
    const x1 = { type: p.x.type, data: p.x.data.slice(t * d, (t + 1) * d), dims: [1, d] } as Tensor;
    const one = bytes((await layer.forward(x1)).output);
    const row = bytes(all).subarray(t * rowBytes, (t + 1) * rowBytes);
    if (Buffer.compare(Buffer.from(one), Buffer.from(row)) !== 0) differ.push(t);
  }
  return differ;
}
