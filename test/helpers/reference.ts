/**
 * The test oracle: a plain float64 reference of the four MoE stages and of the whole Mixtral sparse
 * MoE block, written from the semantics in DESIGN.md ("The MoE layer, stage by stage") and Hugging
 * Face `MixtralSparseMoeBlock`. Nothing here calls the library: 16-bit inputs are widened with our
 * own decoders, so a test compares the library against values computed from the SAME rounded bits.
 *
 * Also: named inputs (`ones`, `arange`, `randn` from a seeded mulberry32 + Box-Muller) and
 * `assertClose`, which checks |got - ref| <= atol + rtol * |ref| element-wise and reports the worst
 * element.
 */
import * as assert from 'uvu/assert';

export type FloatType = 'float32' | 'float16' | 'bfloat16';
export const FLOAT_TYPES: readonly FloatType[] = ['float32', 'float16', 'bfloat16'];

// ---- named inputs ------------------------------------------------------------------------------

/** mulberry32: a tiny seeded PRNG, uniform in [0, 1). */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** n standard normal values (Box-Muller over mulberry32(seed)), times `scale`, as float32. */
export function randn(n: number, seed: number, scale = 1): Float32Array {
  const rnd = mulberry32(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i += 2) {
    const u1 = 1 - rnd(); // (0, 1]
    const u2 = rnd();
    const r = Math.sqrt(-2 * Math.log(u1));
    out[i] = r * Math.cos(2 * Math.PI * u2) * scale;
    if (i + 1 < n) out[i + 1] = r * Math.sin(2 * Math.PI * u2) * scale;
  }
  return out;
}

/** n uniform values in [lo, hi) as float32. */
export function uniform(n: number, seed: number, lo = -1, hi = 1): Float32Array {
  const rnd = mulberry32(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = lo + (hi - lo) * rnd();
  return out;
}

export function ones(n: number, value = 1): Float32Array {
  return new Float32Array(n).fill(value);
}

/** start, start + step, ... (n values) as float32. */
export function arange(n: number, start = 0, step = 1): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = start + i * step;
  return out;
}

/** n random integers in [0, hi). */
export function randInt(n: number, hi: number, seed: number): Int32Array {
  const rnd = mulberry32(seed);
  const out = new Int32Array(n);
  for (let i = 0; i < n; i++) out[i] = Math.floor(rnd() * hi);
  return out;
}

// ---- our own 16-bit decoders (independent of lib/core/tensor.ts) -------------------------------------

const scratchU32 = new Uint32Array(1);
const scratchF32 = new Float32Array(scratchU32.buffer);

export function bf16BitsToNumber(h: number): number {
  scratchU32[0] = (h & 0xffff) << 16;
  return scratchF32[0];
}

export function f16BitsToNumber(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const man = h & 0x3ff;
  if (exp === 0) return sign * man * 2 ** -24;
  if (exp === 31) return man ? NaN : sign * Infinity;
  return sign * (1 + man / 1024) * 2 ** (exp - 15);
}

/** The values of a library tensor {type, data} as float64, decoded without the library. */
export function widen(t: { type: string; data: ArrayLike<number> }): Float64Array {
  const n = t.data.length;
  const out = new Float64Array(n);
  if (t.type === 'float32' || t.type === 'int32') for (let i = 0; i < n; i++) out[i] = t.data[i];
  else if (t.type === 'bfloat16') for (let i = 0; i < n; i++) out[i] = bf16BitsToNumber(t.data[i]);
  else if (t.type === 'float16') for (let i = 0; i < n; i++) out[i] = f16BitsToNumber(t.data[i]);
  else throw new Error(`widen: unknown type ${t.type}`);
  return out;
}

// ---- the reference stages (float64) ------------------------------------------------------------

export interface RefRoute {
  /** [T,E] router logits. */
  logits: Float64Array;
  /** [T,k] ids by decreasing weight, ties to the lower index. */
  ids: Int32Array;
  /** [T,k] weights (renormalised when asked). */
  weights: Float64Array;
  /** [E] slots routed to each expert. */
  counts: Int32Array;
  /**
   * [T] the smallest gap between consecutive logits that decides this token's ids and their order
   * (positions 0..k, or 0..k-1 when k == E). Below ~1e-4 the f32 router may legitimately pick
   * differently; such tokens are "near ties". Infinity when nothing is to decide (E == 1).
   */
  margin: Float64Array;
}

/** Router: logits = x gate^T, softmax over E, top-k (ties to the lower index), optional renorm. */
export function refRoute(x: Float64Array, gate: Float64Array, T: number, d: number, E: number, k: number, normalize: boolean): RefRoute {
  const logits = new Float64Array(T * E);
  const ids = new Int32Array(T * k);
  const weights = new Float64Array(T * k);
  const counts = new Int32Array(E);
  const margin = new Float64Array(T);
  const order = new Array<number>(E);
  for (let t = 0; t < T; t++) {
    const lg = logits.subarray(t * E, (t + 1) * E);
    for (let e = 0; e < E; e++) {
      let s = 0;
      for (let i = 0; i < d; i++) s += x[t * d + i] * gate[e * d + i];
      lg[e] = s;
    }
    let mx = -Infinity;
    for (let e = 0; e < E; e++) mx = Math.max(mx, lg[e]);
    let sum = 0;
    for (let e = 0; e < E; e++) sum += Math.exp(lg[e] - mx);
    for (let e = 0; e < E; e++) order[e] = e;
    order.sort((a, b) => (lg[b] - lg[a]) || a - b); // decreasing logit, then increasing index
    let kept = 0;
    for (let j = 0; j < k; j++) {
      ids[t * k + j] = order[j];
      weights[t * k + j] = Math.exp(lg[order[j]] - mx) / sum;
      kept += weights[t * k + j];
      counts[order[j]]++;
    }
    if (normalize) for (let j = 0; j < k; j++) weights[t * k + j] /= kept;
    let m = Infinity;
    const last = Math.min(k, E - 1); // gaps (j, j+1) for j < last decide the ids and their order
    for (let j = 0; j < last; j++) m = Math.min(m, lg[order[j]] - lg[order[j + 1]]);
    margin[t] = m;
  }
  return { logits, ids, weights, counts, margin };
}

export interface RefPermute {
  offsets: Int32Array;
  sortedRows: Int32Array;
  rowOf: Int32Array;
  dropped: Int32Array;
}

/** Stable counting sort of the T*k slots by expert; capacity < 0 (or undefined): dropless. Id -1: no expert. */
export function refPermute(ids: ArrayLike<number>, T: number, k: number, E: number, capacity = -1): RefPermute {
  const S = T * k;
  // Build per expert the list of slots in slot order (token ascending, then j).
  const lists: number[][] = Array.from({ length: E }, () => []);
  for (let s = 0; s < S; s++) if (ids[s] !== -1) lists[ids[s]].push(s); // -1: no expert (random routing)
  const offsets = new Int32Array(E + 1);
  const sortedRows = new Int32Array(S).fill(-1);
  const rowOf = new Int32Array(S).fill(-1);
  const dropped = new Int32Array(E);
  let row = 0;
  for (let e = 0; e < E; e++) {
    offsets[e] = row;
    lists[e].forEach((s, i) => {
      if (capacity >= 0 && i >= capacity) {
        dropped[e]++;
        return;
      }
      sortedRows[row] = Math.floor(s / k);
      rowOf[s] = row;
      row++;
    });
  }
  offsets[E] = row;
  return { offsets, sortedRows, rowOf, dropped };
}

export interface RefExperts {
  E: number;
  d: number;
  f: number;
  /** [E,f,d] */
  w1: Float64Array;
  /** [E,f,d] */
  w3: Float64Array;
  /** [E,d,f] */
  w2: Float64Array;
}

const silu = (a: number) => a / (1 + Math.exp(-a));

/** One expert on one row: W2 (silu(W1 x) * (W3 x)). Writes d values into out at outOff. */
export function refExpert(w: RefExperts, e: number, x: Float64Array, xOff: number, out: Float64Array, outOff: number, bf16Activations = false): void {
  const { d, f } = w;
  const h = new Float64Array(f);
  const b1 = e * f * d;
  const xs = bf16Activations ? Float64Array.from(x.subarray(xOff, xOff + d), roundBf16) : x.subarray(xOff, xOff + d);
  for (let j = 0; j < f; j++) {
    let a = 0;
    let b = 0;
    for (let i = 0; i < d; i++) {
      a += w.w1[b1 + j * d + i] * xs[i];
      b += w.w3[b1 + j * d + i] * xs[i];
    }
    h[j] = bf16Activations ? roundBf16(silu(a) * b) : silu(a) * b;
  }
  const b2 = e * d * f;
  for (let i = 0; i < d; i++) {
    let s = 0;
    for (let j = 0; j < f; j++) s += w.w2[b2 + i * f + j] * h[j];
    out[outOff + i] = s;
  }
}

/**
 * v rounded to bf16 (through f32, nearest even), as the CPU's avx512-bf16 table rounds activations
 * (x and the SwiGLU output h) before multiplying them with bf16 weights.
 */
export function roundBf16(v: number): number {
  const f = new Float32Array([v]);
  const u = new Uint32Array(f.buffer);
  if (Number.isFinite(f[0])) u[0] = (u[0] + 0x7fff + ((u[0] >>> 16) & 1)) & 0xffff0000;
  return f[0];
}

/**
 * y [R,d] with R = offsets[E]: row r is the expert owning r applied to x[sortedRows[r]].
 * bf16Activations: x and h rounded to bf16 as the avx512-bf16 table does (roundBf16).
 */
export function refGroupedGemm(x: Float64Array, sortedRows: ArrayLike<number>, offsets: ArrayLike<number>, w: RefExperts, bf16Activations = false): Float64Array {
  const R = offsets[w.E];
  const y = new Float64Array(R * w.d);
  for (let e = 0; e < w.E; e++)
    for (let r = offsets[e]; r < offsets[e + 1]; r++) refExpert(w, e, x, sortedRows[r] * w.d, y, r * w.d, bf16Activations);
  return y;
}

/** out[t] = sum_j w[t,j] y[rowOf[t,j]], rowOf = -1 skipped. */
export function refCombine(y: ArrayLike<number>, rowOf: ArrayLike<number>, weights: ArrayLike<number>, T: number, k: number, d: number): Float64Array {
  const out = new Float64Array(T * d);
  for (let t = 0; t < T; t++)
    for (let j = 0; j < k; j++) {
      const r = rowOf[t * k + j];
      if (r < 0) continue;
      const wt = weights[t * k + j];
      for (let i = 0; i < d; i++) out[t * d + i] += wt * y[r * d + i];
    }
  return out;
}

/** The whole Mixtral sparse MoE block, computed directly per token (no permute). */
export function refMoe(x: Float64Array, gate: Float64Array, w: RefExperts, T: number, k: number, normalize: boolean): { out: Float64Array; route: RefRoute } {
  const { d, E } = w;
  const route = refRoute(x, gate, T, d, E, k, normalize);
  const out = new Float64Array(T * d);
  const tmp = new Float64Array(d);
  for (let t = 0; t < T; t++)
    for (let j = 0; j < k; j++) {
      refExpert(w, route.ids[t * k + j], x, t * d, tmp, 0);
      const wt = route.weights[t * k + j];
      for (let i = 0; i < d; i++) out[t * d + i] += wt * tmp[i];
    }
  return { out, route };
}

/** Dense SwiGLU FFN: one expert applied to every row. */
export function refDense(x: Float64Array, w: RefExperts, T: number): Float64Array {
  const out = new Float64Array(T * w.d);
  for (let t = 0; t < T; t++) refExpert(w, 0, x, t * w.d, out, t * w.d);
  return out;
}

// ---- comparisons -------------------------------------------------------------------------------

export interface Tol {
  atol: number;
  rtol: number;
  /** Added to atol, times the largest |ref| of the comparison (errors that scale with the output). */
  atolOfMax?: number;
}

/**
 * Tolerances for an output of type `outType` after reductions of length `n` (the longest dot
 * product on the way, e.g. max(d, f)), against a reference computed from the same rounded inputs.
 * f32 accumulation error grows ~sqrt(n) * 2^-24 per O(1) term; we allow a wide margin over that.
 * 16-bit outputs add the final rounding: up to one ulp, 2^-7 (bf16) or 2^-10 (f16) relative.
 */
export function tolFor(outType: FloatType, n: number): Tol {
  const grow = Math.max(1, Math.sqrt(n / 64));
  const f32: Tol = { atol: 1e-5 * grow, rtol: 1e-4 * grow };
  if (outType === 'float32') return f32;
  if (outType === 'float16') return { atol: f32.atol + 2e-5, rtol: 2e-3 };
  return { atol: f32.atol + 2e-4, rtol: 1e-2 };
}

/**
 * Tolerances for an op whose activations are rounded to bf16 before the multiply-adds (the CPU's
 * avx512-bf16 kernel table with bf16 weights: x and the SwiGLU output h, each rounded to nearest
 * even, then vdpbf16ps with f32 accumulation). Each rounding is up to 2^-9 relative, so the error of
 * a dot product is up to 2^-9 sum |w x|: it scales with the size of the terms, not with |ref|, and
 * a near-zero output of large terms keeps it. Random test data puts the worst error near 2^-8 of
 * max |ref| (two roundings in an expert); we allow 2^-6 of max |ref| on top of the bf16-output
 * tolerance. A wrong index or a lost term still costs O(max |ref|).
 */
export function tolForBf16Activations(outType: FloatType, n: number): Tol {
  const bf = tolFor('bfloat16', n);
  const out = tolFor(outType, n);
  return { atol: out.atol, rtol: Math.max(out.rtol, bf.rtol), atolOfMax: 2 ** -6 };
}

export interface CloseOptions extends Partial<Tol> {
  /** Element indices to skip (e.g. near-tie tokens' rows). */
  skip?: (i: number) => boolean;
}

/** |got - ref| <= atol + rtol * |ref| everywhere; NaN must match NaN. Reports the worst element. */
export function assertClose(got: ArrayLike<number>, ref: ArrayLike<number>, opts: CloseOptions, label = ''): void {
  let atol = opts.atol ?? 1e-5;
  const rtol = opts.rtol ?? 1e-4;
  if (opts.atolOfMax) {
    let max = 0;
    for (let i = 0; i < ref.length; i++) if (!opts.skip?.(i) && Number.isFinite(ref[i])) max = Math.max(max, Math.abs(ref[i]));
    atol += opts.atolOfMax * max;
  }
  assert.is(got.length, ref.length, `${label}: length ${got.length} != reference length ${ref.length}`);
  let worst = -1;
  let worstRatio = 0;
  let bad = 0;
  for (let i = 0; i < ref.length; i++) {
    if (opts.skip?.(i)) continue;
    const g = got[i];
    const r = ref[i];
    if (Number.isNaN(r) || Number.isNaN(g)) {
      if (Number.isNaN(r) !== Number.isNaN(g)) {
        bad++;
        if (worstRatio !== Infinity) (worst = i), (worstRatio = Infinity);
      }
      continue;
    }
    if (g === r) continue; // also equal infinities
    const ratio = Math.abs(g - r) / (atol + rtol * Math.abs(r));
    if (!(ratio <= 1)) bad++;
    if (!(ratio <= worstRatio)) (worst = i), (worstRatio = ratio);
  }
  if (bad > 0) {
    const g = got[worst];
    const r = ref[worst];
    assert.unreachable(
      `${label}: ${bad} of ${ref.length} elements out of tolerance (atol ${atol}, rtol ${rtol}); worst at [${worst}]: ` +
        `got ${g}, ref ${r}, |diff| ${Math.abs(g - r)} > ${atol + rtol * Math.abs(r)}`,
    );
  }
}

/** Same bits, element by element (typed arrays of equal kind); reports the first difference. */
export function assertSameBits(got: ArrayLike<number>, want: ArrayLike<number>, label = ''): void {
  assert.is(got.length, want.length, `${label}: length ${got.length} != ${want.length}`);
  for (let i = 0; i < want.length; i++) {
    const a = got[i];
    const b = want[i];
    if (!(Object.is(a, b) || (Number.isNaN(a) && Number.isNaN(b))))
      assert.unreachable(`${label}: first difference at [${i}]: ${a} vs ${b}`);
  }
}

/** Compare two tensors' type, dims and raw data bits. */
export function assertSameTensor(got: { type: string; dims: readonly number[]; data: ArrayBufferView & ArrayLike<number> }, want: { type: string; dims: readonly number[]; data: ArrayBufferView & ArrayLike<number> }, label = ''): void {
  assert.is(got.type, want.type, `${label}: type`);
  assert.equal([...got.dims], [...want.dims], `${label}: dims`);
  const a = new Uint8Array(got.data.buffer, got.data.byteOffset, got.data.byteLength);
  const b = new Uint8Array(want.data.buffer, want.data.byteOffset, want.data.byteLength);
  assert.is(a.length, b.length, `${label}: byte length`);
  for (let i = 0; i < a.length; i++)
    if (a[i] !== b[i]) {
      const el = Math.floor(i / (got.data as unknown as { BYTES_PER_ELEMENT: number }).BYTES_PER_ELEMENT);
      assert.unreachable(`${label}: bits differ first at element ${el}: ${got.data[el]} vs ${want.data[el]}`);
    }
}

/** Row mask from per-token flags: skip(i) for element i of a [T,d] array when token i/d is flagged. */
export function skipTokens(flagged: ArrayLike<boolean>, d: number): (i: number) => boolean {
  return (i) => flagged[Math.floor(i / d)];
}

/** Tokens whose routing is a near tie in the reference (margin below `eps`). */
export function nearTies(route: RefRoute, eps = 1e-4): boolean[] {
  return Array.from(route.margin, (m) => m < eps);
}

/** Random ids [T,k] with k distinct experts per token (as route produces). */
export function distinctIds(T: number, k: number, E: number, seed: number): Int32Array {
  const rnd = mulberry32(seed);
  const out = new Int32Array(T * k);
  for (let t = 0; t < T; t++) {
    const pool = Array.from({ length: E }, (_, e) => e);
    for (let j = 0; j < k; j++) {
      const i = j + Math.floor(rnd() * (E - j));
      [pool[j], pool[i]] = [pool[i], pool[j]];
      out[t * k + j] = pool[j];
    }
  }
  return out;
}
