/**
 * A float64 reference of a whole decoder model (Hugging Face MixtralForCausalLM, eager attention;
 * also Qwen2MoeForCausalLM and DeepSeek-MoE without attention biases: dense SwiGLU layers, shared
 * experts with or without Qwen2-MoE's sigmoid gate, top-k weights renormalised or not), composed
 * from the op references of reference-model.ts, the MoE block and dense FFN of reference.ts and
 * the shared experts of shared-experts.ts; it never calls the library. Weights come in as float64 arrays of the values the library holds (16-bit
 * weights widened from their bits, or f32 values rounded with `roundAll`), so a comparison measures
 * the library's f32 arithmetic only.
 */
import { refDense, refMoe, widen, type RefExperts, type RefRoute } from './reference';
import * as assert from 'uvu/assert';
import { refArgmax, refAttention, refEmbedding, refLinear, refRmsNorm, refRope, roundAll, type FloatType } from './reference-model';
import { refMoeShared, type RefShared } from './shared-experts';

export interface RefMixtralConfig {
  hiddenSize: number;
  intermediateSize: number;
  numAttentionHeads: number;
  numKeyValueHeads: number;
  headDim: number;
  numExperts: number;
  numExpertsPerTok: number;
  vocabSize: number;
  rmsNormEps: number;
  ropeTheta: number;
  /** 0: full attention. */
  slidingWindow: number;
  /** Width of each routed expert; default intermediateSize (Mixtral). */
  moeIntermediateSize?: number;
  /** Renormalise the top-k weights; default true (Mixtral). */
  normTopkProb?: boolean;
}

export interface RefLayer {
  inputLayernorm: Float64Array;
  postAttentionLayernorm: Float64Array;
  qProj: Float64Array;
  kProj: Float64Array;
  vProj: Float64Array;
  oProj: Float64Array;
  /** Projection biases, when the model has them. */
  qBias?: Float64Array;
  kBias?: Float64Array;
  vBias?: Float64Array;
  oBias?: Float64Array;
  /** MoE layers: router and experts (and shared experts when the model has them). */
  gate?: Float64Array;
  experts?: RefExperts;
  shared?: RefShared;
  /** Dense layers: the SwiGLU FFN as one expert. */
  dense?: RefExperts;
}

export interface RefMixtralWeights {
  embedTokens: Float64Array;
  norm: Float64Array;
  lmHead: Float64Array;
  layers: RefLayer[];
}

type T16 = { type: string; data: ArrayLike<number>; dims: readonly number[] };

/** The float64 values of a tensor as the library holds it after loading with `dtype` (undefined: as given). */
function values(t: T16, dtype: FloatType | undefined): Float64Array {
  const v = widen(t);
  return dtype === undefined || dtype === t.type ? v : roundAll(dtype, v);
}

function cat(parts: T16[], dtype: FloatType | undefined): Float64Array {
  const all = parts.map((p) => values(p, dtype));
  const out = new Float64Array(all.reduce((n, a) => n + a.length, 0));
  let o = 0;
  for (const a of all) {
    out.set(a, o);
    o += a.length;
  }
  return out;
}

interface LayerLike {
  inputLayernorm: T16;
  postAttentionLayernorm: T16;
  attention: { qProj: T16; kProj: T16; vProj: T16; oProj: T16; qBias?: T16; kBias?: T16; vBias?: T16; oBias?: T16 };
  moe?: { gate: T16; w1: T16[]; w3: T16[]; w2: T16[]; sharedExperts?: { w1: T16; w3: T16; w2: T16; gate?: T16 } };
  mlp?: { w1: T16; w3: T16; w2: T16 };
}

/** y [T,n] + bias [n] on every row (in place), or y when there is no bias. */
function withBias(y: Float64Array, bias: Float64Array | undefined): Float64Array {
  if (!bias) return y;
  for (let i = 0; i < y.length; i++) y[i] += bias[i % bias.length];
  return y;
}

/** One SwiGLU FFN [f,d] as a single expert. */
function oneExpert(m: { w1: T16; w3: T16; w2: T16 }, d: number, f: number, dtype: FloatType | undefined): RefExperts {
  return { E: 1, d, f, w1: values(m.w1, dtype), w3: values(m.w3, dtype), w2: values(m.w2, dtype) };
}

/** Reference weights from the library-shaped weights (as written to a checkpoint), converted to `dtype`. */
export function refWeights(
  c: RefMixtralConfig,
  w: { globals: { embedTokens: T16; norm: T16; lmHead: T16 }; layers: LayerLike[] },
  dtype?: FloatType,
): RefMixtralWeights {
  return {
    embedTokens: values(w.globals.embedTokens, dtype),
    norm: values(w.globals.norm, dtype),
    lmHead: values(w.globals.lmHead, dtype),
    layers: w.layers.map((l): RefLayer => {
      const d = c.hiddenSize;
      const out: RefLayer = {
        inputLayernorm: values(l.inputLayernorm, dtype),
        postAttentionLayernorm: values(l.postAttentionLayernorm, dtype),
        qProj: values(l.attention.qProj, dtype),
        kProj: values(l.attention.kProj, dtype),
        vProj: values(l.attention.vProj, dtype),
        oProj: values(l.attention.oProj, dtype),
      };
      // biases: kept in f32 by the library, from the values loaded (converted to dtype like the rest)
      for (const k of ['qBias', 'kBias', 'vBias', 'oBias'] as const) if (l.attention[k]) out[k] = values(l.attention[k]!, dtype);
      if (l.mlp) out.dense = oneExpert(l.mlp, d, l.mlp.w1.dims[0], dtype);
      if (l.moe) {
        const f = c.moeIntermediateSize ?? c.intermediateSize;
        out.gate = values(l.moe.gate, dtype);
        out.experts = { E: c.numExperts, d, f, w1: cat(l.moe.w1, dtype), w3: cat(l.moe.w3, dtype), w2: cat(l.moe.w2, dtype) };
        const s = l.moe.sharedExperts;
        if (s) out.shared = { w: oneExpert(s, d, s.w1.dims[0], dtype), gate: s.gate && values(s.gate, dtype) };
      }
      return out;
    }),
  };
}

export interface RefMixtralResult {
  /** [T,V] */
  logits: Float64Array;
  /** Per MoE layer, the routing (with its near-tie margins). */
  routes: RefRoute[];
  /** The decoder-layer index of each of `routes` (dense layers have none). */
  moeLayers: number[];
}

/** Logits [T,V] of token ids at positions 0..T-1 (a fresh sequence). */
export function refMixtral(c: RefMixtralConfig, w: RefMixtralWeights, ids: ArrayLike<number>): RefMixtralResult {
  const T = ids.length;
  const { hiddenSize: d, numAttentionHeads: hq, numKeyValueHeads: hkv, headDim: hd } = c;
  const positions = Array.from({ length: T }, (_, t) => t);
  const h = refEmbedding(w.embedTokens, d, ids);
  const routes: RefRoute[] = [];
  const moeLayers: number[] = [];
  const addInto = (a: Float64Array, b: Float64Array) => {
    for (let i = 0; i < a.length; i++) a[i] += b[i];
  };
  for (const [i, l] of w.layers.entries()) {
    const n = refRmsNorm(h, l.inputLayernorm, T, d, c.rmsNormEps);
    const q = refRope(withBias(refLinear(n, l.qProj, T, d, hq * hd), l.qBias), T, hq, hd, positions, c.ropeTheta);
    const k = refRope(withBias(refLinear(n, l.kProj, T, d, hkv * hd), l.kBias), T, hkv, hd, positions, c.ropeTheta);
    const v = withBias(refLinear(n, l.vProj, T, d, hkv * hd), l.vBias);
    const a = refAttention(q, k, v, T, hq, hkv, hd, 0, c.slidingWindow);
    addInto(h, withBias(refLinear(a, l.oProj, T, hq * hd, d), l.oBias));
    const n2 = refRmsNorm(h, l.postAttentionLayernorm, T, d, c.rmsNormEps);
    if (l.dense) {
      addInto(h, refDense(n2, l.dense, T));
      continue;
    }
    const normalize = c.normTopkProb ?? true;
    const moe = refMoe(n2, l.gate!, l.experts!, T, c.numExpertsPerTok, normalize);
    routes.push(moe.route);
    moeLayers.push(i);
    addInto(h, l.shared ? refMoeShared(n2, l.gate!, l.experts!, T, c.numExpertsPerTok, normalize, l.shared) : moe.out);
  }
  const hn = refRmsNorm(h, w.norm, T, d, c.rmsNormEps);
  return { logits: refLinear(hn, w.lmHead, T, d, c.vocabSize), routes, moeLayers };
}

/** Checks the reference routes have no near tie (which f32 could legitimately decide otherwise). */
export function assertNoNearTies(routes: { margin: Float64Array }[], label: string): void {
  for (const [i, r] of routes.entries()) assert.ok(Math.min(...r.margin) > 1e-4, `${label}: MoE layer ${i} has a near tie in its routing; pick another seed`);
}

/** Argmax of a logits row, asserting the top two are not a near tie. */
export function argmaxClear(row: ArrayLike<number>, label: string): number {
  const best = refArgmax(row);
  let second = -Infinity;
  for (let i = 0; i < row.length; i++) if (i !== best) second = Math.max(second, row[i]);
  assert.ok(row[best] - second > 1e-4, `${label}: argmax near tie (${row[best]} vs ${second})`);
  return best;
}

/** The last row of logits [T,V]. */
export const lastRow = (t: { data: ArrayLike<number> & { subarray(a: number): ArrayLike<number> } }, V: number) => (t.data as Float32Array).subarray(t.data.length - V);
