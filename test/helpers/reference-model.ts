/**
 * Float64 references of the decoder-model ops (lib/ops.ts), written from their semantics (Hugging
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

const M64 = (1n << 64n) - 1n;

/** splitmix64 output for state z (z + golden gamma, then the finaliser). */
export function splitmix64(z: bigint): bigint {
  z = (z + 0x9e3779b97f4a7c15n) & M64;
  z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & M64;
  z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & M64;
  return z ^ (z >> 31n);
}

/** The sampler's uniform number of (seed, step, row): top 24 bits of mix(mix(mix(seed) ^ step) ^ row). */
export function rngUniform(seed: number, step: number, row: number): number {
  const u = splitmix64(splitmix64(splitmix64(BigInt(seed)) ^ BigInt(step)) ^ BigInt(row));
  return Number(u >> 40n) / 2 ** 24;
}

export interface RefSample {
  id: number;
  /**
   * How far the draw is from a decision boundary, relative to the total: below ~1e-5 an f32
   * implementation may legitimately pick a neighbour (Infinity for greedy).
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
 * One row: temperature 0 -> argmax; else p ~ exp((l - max) / temperature), keep the fewest most
 * probable (ties to the lower index) reaching topP, then the first kept index (in index order)
 * whose running probability exceeds u * (kept total), u = rngUniform(seed, step, row).
 */
export function refSample(l: ArrayLike<number>, temperature: number, topP: number, seed: number, step: number, row: number): RefSample {
  const am = refArgmax(l);
  if (temperature === 0 || !Number.isFinite(l[am])) return { id: am, margin: Infinity };
  const V = l.length;
  const e = Array.from(l, (v) => (Number.isNaN(v) ? 0 : Math.exp((v - l[am]) / temperature)));
  const total = e.reduce((a, b) => a + b, 0);
  let kept = new Array<boolean>(V).fill(true);
  let topMargin = Infinity;
  if (topP < 1) {
    const order = Array.from({ length: V }, (_, i) => i).sort((a, b) => e[b] - e[a] || a - b);
    kept = new Array<boolean>(V).fill(false);
    let cum = 0;
    for (const i of order) {
      if (cum >= topP * total) break;
      // a cut right at a cumulative boundary is decided by rounding: report it
      topMargin = Math.min(topMargin, Math.abs(cum - topP * total) / total);
      cum += e[i];
      kept[i] = true;
    }
    topMargin = Math.min(topMargin, Math.abs(cum - topP * total) / total);
  }
  const keptTotal = e.reduce((a, v, i) => a + (kept[i] ? v : 0), 0);
  const target = rngUniform(seed, step, row) * keptTotal;
  let cum = 0;
  let last = am;
  for (let i = 0; i < V; i++) {
    if (!kept[i] || e[i] <= 0) continue;
    const before = cum;
    cum += e[i];
    last = i;
    if (cum > target) return { id: i, margin: Math.min(topMargin, (target - before) / keptTotal, (cum - target) / keptTotal) };
  }
  return { id: last, margin: 0 };
}
