/**
 * The float64 reference of the routing variants (issue #5), written from their definitions, on top
 * of the plain reference in ./reference.ts:
 *   - capacity:        ceil(T·k/E · factor) slots per expert, overflow dropped in token order;
 *   - noisy top-k:     H = x·Wgᵀ + N(0,1)·softplus(x·W_noiseᵀ), top-k and softmax over H;
 *   - random routing:  GShard, the second of two experts kept when 2·g2 > u, g2 = w2/(w1+w2);
 *   - router stats:    Switch loss E·Σ f_e·P_e (f_e = slots to e / T, HF's top-k definition) and
 *                      the ST-MoE z-loss mean(logsumexp(logits)²), from the clean logits.
 * The random draws replay the library's counter-based generator (native/include/moe/route_rng.h:
 * splitmix64's finaliser over (seed, token, expert, stream)) in BigInt arithmetic, so the reference
 * draws the same numbers; the Gaussian is then computed in float64.
 */
import { refExpert, refPermute, type RefExperts } from './reference';

const M64 = (1n << 64n) - 1n;

function mix64(z: bigint): bigint {
  z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & M64;
  z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & M64;
  return z ^ (z >> 31n);
}

/** 64 random bits for (seed, token, expert, stream), as route_hash in route_rng.h. */
export function routeHash(seed: number, token: number, expert: number, stream: number): bigint {
  let h = mix64((BigInt(seed) + 0x9e3779b97f4a7c15n) & M64);
  h = mix64(h ^ BigInt(token));
  h = mix64(h ^ ((BigInt(stream) << 32n) | BigInt(expert)));
  return h;
}

export const STREAM_NOISE = 1;
export const STREAM_RANDOM_ROUTING = 2;

/** Uniform in [0, 1): the top 24 bits times 2^-24. */
export function routeUniform(seed: number, token: number, expert: number, stream: number): number {
  return Number(routeHash(seed, token, expert, stream) >> 40n) / 16777216;
}

/** N(0,1) of (token, expert) by Box-Muller from the same two 24-bit uniforms, in float64. */
export function routeNormal(seed: number, token: number, expert: number): number {
  const h = routeHash(seed, token, expert, STREAM_NOISE);
  const u1 = (Number(h >> 40n) + 1) / 16777216;
  const u2 = Number((h >> 16n) & 0xffffffn) / 16777216;
  return Math.sqrt(-2 * Math.log(u1)) * Math.cos(2 * Math.PI * u2);
}

const softplus = (v: number) => (v > 20 ? v : Math.log1p(Math.exp(v)));

export interface VariantOptions {
  normalize: boolean;
  /** W_noise [E,d] as float64 and the seed. */
  noise?: { w: Float64Array; seed: number };
  /** GShard random routing (k = 2). */
  randomSeed?: number;
}

export interface RefVariantRoute {
  /** [T,E] clean logits. */
  logits: Float64Array;
  /** [T,E] routing logits (H with noise, else the clean ones). */
  h: Float64Array;
  ids: Int32Array;
  weights: Float64Array;
  /** [E] slots routed to each expert (-1 slots not counted). */
  counts: Int32Array;
  /** [T] true when the token's routing hinges on a difference below 1e-4 (f32 may decide otherwise). */
  nearTie: boolean[];
  auxLoss: number;
  zLoss: number;
}

export function refRouteVariants(x: Float64Array, gate: Float64Array, T: number, d: number, E: number, k: number, o: VariantOptions): RefVariantRoute {
  const logits = new Float64Array(T * E);
  const h = new Float64Array(T * E);
  const ids = new Int32Array(T * k);
  const weights = new Float64Array(T * k);
  const counts = new Int32Array(E);
  const nearTie: boolean[] = [];
  const probSum = new Float64Array(E);
  let zSum = 0;
  for (let t = 0; t < T; t++) {
    for (let e = 0; e < E; e++) {
      let s = 0;
      let n = 0;
      for (let i = 0; i < d; i++) {
        s += x[t * d + i] * gate[e * d + i];
        if (o.noise) n += x[t * d + i] * o.noise.w[e * d + i];
      }
      logits[t * E + e] = s;
      h[t * E + e] = o.noise ? s + routeNormal(o.noise.seed, t, e) * softplus(n) : s;
    }
    // stats from the clean logits
    let cmx = -Infinity;
    for (let e = 0; e < E; e++) cmx = Math.max(cmx, logits[t * E + e]);
    let csum = 0;
    for (let e = 0; e < E; e++) csum += Math.exp(logits[t * E + e] - cmx);
    for (let e = 0; e < E; e++) probSum[e] += Math.exp(logits[t * E + e] - cmx) / csum;
    zSum += (cmx + Math.log(csum)) ** 2;
    // routing from h
    const r = h.subarray(t * E, (t + 1) * E);
    let mx = -Infinity;
    for (let e = 0; e < E; e++) mx = Math.max(mx, r[e]);
    let sum = 0;
    for (let e = 0; e < E; e++) sum += Math.exp(r[e] - mx);
    const order = Array.from({ length: E }, (_, e) => e).sort((a, b) => r[b] - r[a] || a - b);
    let kept = 0;
    for (let j = 0; j < k; j++) {
      ids[t * k + j] = order[j];
      weights[t * k + j] = Math.exp(r[order[j]] - mx) / sum;
      kept += weights[t * k + j];
    }
    if (o.normalize) for (let j = 0; j < k; j++) weights[t * k + j] /= kept;
    let margin = Infinity;
    for (let j = 0; j < Math.min(k, E - 1); j++) margin = Math.min(margin, r[order[j]] - r[order[j + 1]]);
    let tie = margin < 1e-4;
    if (o.randomSeed !== undefined) {
      const g2 = weights[t * k + 1] / (weights[t * k] + weights[t * k + 1]);
      const u = routeUniform(o.randomSeed, t, 0, STREAM_RANDOM_ROUTING);
      if (Math.abs(2 * g2 - u) < 1e-5) tie = true;
      if (!(2 * g2 > u)) {
        ids[t * k + 1] = -1;
        weights[t * k + 1] = 0;
      }
    }
    nearTie.push(tie);
    for (let j = 0; j < k; j++) if (ids[t * k + j] >= 0) counts[ids[t * k + j]]++;
  }
  let aux = 0;
  if (T > 0) for (let e = 0; e < E; e++) aux += (counts[e] / T) * (probSum[e] / T);
  return { logits, h, ids, weights, counts, nearTie, auxLoss: T > 0 ? E * aux : 0, zLoss: T > 0 ? zSum / T : 0 };
}

/** Slots per expert for a capacity factor (undefined or <= 0: dropless, -1). */
export function refCapacity(T: number, k: number, E: number, factor?: number): number {
  return factor !== undefined && factor > 0 ? Math.ceil(((T * k) / E) * factor) : -1;
}

/** The MoE block with the variants: route, capacity drops in token order, weighted expert sum. */
export function refMoeVariants(x: Float64Array, gate: Float64Array, w: RefExperts, T: number, k: number, o: VariantOptions & { capacity?: number }) {
  const { d, E } = w;
  const route = refRouteVariants(x, gate, T, d, E, k, o);
  const perm = refPermute(route.ids, T, k, E, o.capacity ?? -1);
  const out = new Float64Array(T * d);
  const tmp = new Float64Array(d);
  for (let t = 0; t < T; t++)
    for (let j = 0; j < k; j++) {
      if (perm.rowOf[t * k + j] < 0) continue; // dropped by capacity or no expert
      refExpert(w, route.ids[t * k + j], x, t * d, tmp, 0);
      const wt = route.weights[t * k + j];
      for (let i = 0; i < d; i++) out[t * d + i] += wt * tmp[i];
    }
  return { out, route, perm };
}
