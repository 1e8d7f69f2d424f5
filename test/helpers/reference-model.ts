/**
 * Float64 references of the decoder-model ops (lib/model/primitives.ts), written from their semantics (Hugging
 * Face Mixtral: MixtralRMSNorm, rotate_half RoPE, eager causal GQA attention, nn.Linear without
 * bias) and never calling the library. Inputs are float64 arrays of the values the library sees
 * (16-bit inputs widened by `widen` of reference.ts); where the library stores an intermediate in a
 * 16-bit type (the KV cache) or rounds an output, `roundTo` rounds the same way with its own code.
 */

export type FloatType = 'float32' | 'float16' | 'bfloat16';

/** Round half to even of x to a multiple of 2^e (exact in float64 for the ranges used here). */
function roundToMultiple(x: number, e: number): number {
  const s = x * 2 ** -e;
  let r = Math.round(s);
  if (Math.abs(s - Math.trunc(s)) === 0.5) r = 2 * Math.round(s / 2); // tie: to even
  return r * 2 ** e;
}

/** x rounded to a float with `mant` fraction bits, minimum normal exponent `emin` and max finite `max`. */
function roundFloat(x: number, mant: number, emin: number, max: number): number {
  if (!Number.isFinite(x) || x === 0) return x;
  const a = Math.abs(x);
  let e = Math.floor(Math.log2(a));
  if (2 ** e > a) e--; // Math.log2 may be off by one next to a power of two
  if (2 ** (e + 1) <= a) e++;
  const r = roundToMultiple(x, Math.max(e, emin) - mant);
  return Math.abs(r) > max ? Math.sign(x) * Infinity : r;
}

/** A float64 value rounded (nearest even) to a float type, as the library stores it. */
export function roundTo(type: FloatType, x: number): number {
  if (type === 'float32') return Math.fround(x);
  const f = Math.fround(x); // the library rounds from f32
  if (type === 'bfloat16') return roundFloat(f, 7, -126, 3.3895313892515355e38);
  return roundFloat(f, 10, -14, 65504);
}

export function roundAll(type: FloatType, x: ArrayLike<number>): Float64Array {
  return Float64Array.from(x, (v) => roundTo(type, v));
}

/** out[t] = table[ids[t]] ([V,d] -> [T,d]). */
export function refEmbedding(table: Float64Array, d: number, ids: ArrayLike<number>): Float64Array {
  const out = new Float64Array(ids.length * d);
  for (let t = 0; t < ids.length; t++) out.set(table.subarray(ids[t] * d, (ids[t] + 1) * d), t * d);
  return out;
}

/** y = x / sqrt(mean(x^2) + eps) * w per row of x [T,d]. */
export function refRmsNorm(x: Float64Array, w: Float64Array, T: number, d: number, eps: number): Float64Array {
  const out = new Float64Array(T * d);
  for (let t = 0; t < T; t++) {
    let ss = 0;
    for (let i = 0; i < d; i++) ss += x[t * d + i] ** 2;
    const r = 1 / Math.sqrt(ss / d + eps);
    for (let i = 0; i < d; i++) out[t * d + i] = x[t * d + i] * r * w[i];
  }
  return out;
}

/** y [T,n] = x [T,k] W^T, W [n,k]. */
export function refLinear(x: Float64Array, w: Float64Array, T: number, k: number, n: number): Float64Array {
  const out = new Float64Array(T * n);
  for (let t = 0; t < T; t++)
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let i = 0; i < k; i++) s += x[t * k + i] * w[j * k + i];
      out[t * n + j] = s;
    }
  return out;
}

/** rotate_half RoPE of x [T,H,hd] at positions [T]: pairs (i, i + hd/2), angle = pos * theta^(-2i/hd). */
export function refRope(x: Float64Array, T: number, H: number, hd: number, positions: ArrayLike<number>, theta: number): Float64Array {
  const out = new Float64Array(x.length);
  const half = hd / 2;
  for (let t = 0; t < T; t++)
    for (let h = 0; h < H; h++) {
      const o = (t * H + h) * hd;
      for (let i = 0; i < half; i++) {
        const a = positions[t] * theta ** (-(2 * i) / hd);
        const [c, s] = [Math.cos(a), Math.sin(a)];
        out[o + i] = x[o + i] * c - x[o + i + half] * s;
        out[o + i + half] = x[o + i + half] * c + x[o + i] * s;
      }
    }
  return out;
}

/**
 * Causal GQA attention. q [T,Hq,hd] for positions start..start+T-1; keys and values [S,Hkv,hd] for
 * positions 0..S-1 (S >= start + T), as stored (already rounded to the cache type).
 */
export function refAttention(q: Float64Array, keys: Float64Array, values: Float64Array, T: number, Hq: number, Hkv: number, hd: number, start: number, window = 0): Float64Array {
  const out = new Float64Array(T * Hq * hd);
  const group = Hq / Hkv;
  const scale = 1 / Math.sqrt(hd);
  for (let t = 0; t < T; t++)
    for (let h = 0; h < Hq; h++) {
      const p = start + t;
      const kvh = Math.floor(h / group);
      const lo = window > 0 ? Math.max(0, p - window + 1) : 0;
      const scores: number[] = [];
      for (let j = lo; j <= p; j++) {
        let s = 0;
        for (let i = 0; i < hd; i++) s += q[(t * Hq + h) * hd + i] * keys[(j * Hkv + kvh) * hd + i];
        scores.push(s * scale);
      }
      const mx = Math.max(...scores);
      const e = scores.map((s) => Math.exp(s - mx));
      const sum = e.reduce((a, b) => a + b, 0);
      for (let j = lo; j <= p; j++)
        for (let i = 0; i < hd; i++) out[(t * Hq + h) * hd + i] += (e[j - lo] / sum) * values[(j * Hkv + kvh) * hd + i];
    }
  return out;
}

// ---- sampling ----------------------------------------------------------------------------------
// Written from the rule in native/include/moe/sampling_rule.h's header comment, in BigInt integers
// and by its definition (a sort), not by the library's threshold search.

const M32 = 0xffffffffn;
const ONE = 1n << 40n; // the weight of the row's maximum

/**
 * Philox4x32-10 (Salmon et al. SC'11, the Random123 constants) of counter c [4] and key k [2], in
 * BigInt 32-bit words.
 */
export function philox4x32(c: readonly bigint[], k: readonly bigint[]): bigint[] {
  let [c0, c1, c2, c3] = c;
  let [k0, k1] = k;
  for (let round = 0; round < 10; round++) {
    const p0 = 0xd2511f53n * c0, p1 = 0xcd9e8d57n * c2;
    [c0, c1, c2, c3] = [((p1 >> 32n) ^ c1 ^ k0) & M32, p1 & M32, ((p0 >> 32n) ^ c3 ^ k1) & M32, p0 & M32];
    k0 = (k0 + 0x9e3779b9n) & M32;
    k1 = (k1 + 0xbb67ae85n) & M32;
  }
  return [c0, c1, c2, c3];
}

/** The sampler's 64 random bits of (seed, step, row): counter (row, step), key seed, words 1:0. */
export function philoxDraw(seed: number, step: number, row: number): bigint {
  const [s, t, r] = [BigInt(seed), BigInt(step), BigInt(row)];
  const v = philox4x32([r & M32, r >> 32n, t & M32, t >> 32n], [s & M32, s >> 32n]);
  return (v[1] << 32n) | v[0];
}

/** The integer weight of one logit given the row maximum m: floor(expf((l - m) / T) * 2^40) in f32 steps. */
export function sampleWeight(l: number, m: number, temperature: number): bigint {
  if (Number.isNaN(l)) return 0n;
  if (m === Infinity) return l === Infinity ? ONE : 0n;
  if (m === -Infinity) return 0n;
  const f = Math.fround;
  const e = f(Math.exp(f(f(l - m) / f(temperature))));
  return e > 0 ? BigInt(Math.floor(e * 2 ** 40)) : 0n;
}

export interface RefSample {
  id: number;
  /**
   * How near the row is to a decision boundary, relative to the weight total: below ~1e-6 a last-bit
   * difference between the C library's expf and Math.exp could pick a neighbour (Infinity for greedy).
   */
  margin: number;
}

/** argmax, ties to the lower index, NaN never wins; 0 if all NaN. */
export function refArgmax(l: ArrayLike<number>): number {
  let best = -1;
  for (let i = 0; i < l.length; i++) if (!Number.isNaN(l[i]) && (best < 0 || l[i] > l[best])) best = i;
  return Math.max(best, 0);
}

/**
 * One row: temperature 0 -> argmax; else integer weights q (sampleWeight), P = max(1, ceil(Q *
 * round(topP * 2^32) / 2^32)), the nucleus = the shortest prefix of the ids sorted by decreasing q
 * (ties: lower index first) with sum >= P, target = floor(philoxDraw * Qn / 2^64) (Qn: the
 * nucleus's sum), and the id is the first nucleus id in index order whose running sum exceeds target.
 * A row whose weights are all 0 (every logit NaN or -inf) gives the argmax.
 */
export function refSample(l: ArrayLike<number>, temperature: number, topP: number, seed: number, step: number, row: number): RefSample {
  const am = refArgmax(l);
  if (temperature === 0) return { id: am, margin: Infinity };
  const V = l.length;
  const q = Array.from(l, (v) => sampleWeight(v, l[am], temperature));
  const total = q.reduce((a, b) => a + b, 0n);
  if (total === 0n) return { id: am, margin: Infinity };
  const rel = (x: bigint) => Math.abs(Number(x)) / Number(total);
  const tp = BigInt(Math.floor(Math.fround(topP) * 2 ** 32 + 0.5));
  let mass = (total * tp + M32) >> 32n;
  if (mass < 1n) mass = 1n;
  const order = Array.from({ length: V }, (_, i) => i).sort((a, b) => (q[a] === q[b] ? a - b : q[a] > q[b] ? -1 : 1));
  const kept = new Array<boolean>(V).fill(false);
  let acc = 0n;
  let n = 0;
  while (acc < mass) {
    kept[order[n]] = true;
    acc += q[order[n++]];
  }
  // the cut (unless the nucleus holds every weight): the prefix sums on both sides of P, and the
  // gap to the first weight left out (equal logits give equal weights in any implementation)
  let margin = Infinity;
  if (acc < total) {
    margin = Math.min(rel(mass - (acc - q[order[n - 1]])), rel(acc - mass));
    if (q[order[n - 1]] !== q[order[n]]) margin = Math.min(margin, rel(q[order[n - 1]] - q[order[n]]));
  }
  const target = (philoxDraw(seed, step, row) * acc) >> 64n;
  let run = 0n;
  for (let i = 0; i < V; i++) {
    if (!kept[i]) continue;
    const before = run;
    run += q[i];
    if (run > target) return { id: i, margin: Math.min(margin, rel(target - before), rel(run - target)) };
  }
  throw new Error('refSample: the target lies past the nucleus');
}
