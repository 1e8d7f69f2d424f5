#!/usr/bin/env node
// One call of every kernel family on a device backend, each path of the kernels that choose one
// (grouped GEMM: decode GEMV, tensor cores, SIMT; attention: one pass and split decode), through the
// package as users call it. scripts/gpu-check.sh runs it under compute-sanitizer (memcheck,
// racecheck, synccheck): a clean run of this file is a clean run of every kernel.
//
//   node scripts/gpu-kernel-tour.js [cuda|cuda-emu]      exits 0 when every call returned
'use strict';
const path = require('node:path');
const m = require(path.join(__dirname, '..', 'dist', 'index.js'));

const backend = process.argv[2] || 'cuda';
let seed = 1;
const rand = (n, scale = 1) => {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = Math.sin(++seed * 12.9898) * scale;
  return a;
};
const t = (type, n, dims, scale) => m.cast(m.tensor('float32', rand(n, scale), dims), type);

async function main() {
  const done = [];
  const step = async (name, fn) => {
    await fn();
    done.push(name);
  };
  const E = 8, d = 128, f = 256;
  for (const type of ['bfloat16', 'float32']) {
    const weights = { gate: t(type, E * d, [E, d]), w1: t(type, E * f * d, [E, f, d], 0.05), w3: t(type, E * f * d, [E, f, d], 0.05), w2: t(type, E * d * f, [E, d, f], 0.05) };
    const layer = await m.MoeLayer.create(weights, { topK: 2, backend });
    // T = 1 and 4: the decode GEMV; 96: tensor cores (bf16) or SIMT (f32)
    for (const T of [1, 4, 96]) {
      const x = t(type, T * d, [T, d]);
      await step(`moe forward ${type} T=${T} (host tensors)`, () => layer.forward(x, { returnRouting: true, returnRouterStats: true }));
      const dx = await m.DeviceTensor.from(x, { backend });
      await step(`moe forward ${type} T=${T} (device tensors)`, async () => (await layer.forward(dx, { returnRouting: true })).output.toHost());
      dx.dispose();
    }
    const x = t(type, 33 * d, [33, d]);
    const r = await m.route(x, weights.gate, { topK: 2, backend, returnLogits: true, returnRouterStats: true });
    await step(`route ${type}`, async () => r);
    const p = await m.permute(r.topkIds, E, { backend, capacity: 6 });
    await step('permute (capacity)', async () => p);
    const experts = await m.ExpertWeights.pack({ w1: weights.w1, w3: weights.w3, w2: weights.w2 }, { backend });
    const y = await m.groupedGemm(x, p.sortedRows, p.expertOffsets, experts);
    await step(`grouped GEMM ${type}`, async () => y);
    await step('combine', () => m.combine(y, p.rowOf, r.topkWeights, { backend, outType: type }));
    experts.dispose();
    const ffn = await m.DenseFfn.create({ w1: t(type, f * d, [f, d], 0.05), w3: t(type, f * d, [f, d], 0.05), w2: t(type, d * f, [d, f], 0.05) }, { backend });
    await step(`dense FFN ${type}`, () => ffn.forward(x));
    ffn.dispose();
    layer.dispose();

    // the decoder ops on device tensors
    const V = 512, H = 4, Hkv = 2, hd = 64, T = 17;
    const table = await m.DeviceTensor.from(t(type, V * d, [V, d]), { backend });
    const ids = m.tensor('int32', Array.from({ length: T }, (_, i) => (i * 37) % V), [T]);
    const h = await m.embedding(table, ids);
    await step(`embedding ${type}`, async () => h);
    const norm = await m.DeviceTensor.from(t(type, d, [d]), { backend });
    const hn = await m.rmsNorm(h, norm);
    await step(`rms_norm ${type}`, async () => hn);
    const qkv = await m.Linear.pack(t(type, (H + 2 * Hkv) * hd * d, [(H + 2 * Hkv) * hd, d], 0.05), { backend });
    const proj = await m.linear(hn, qkv, { outType: type });
    await step(`linear ${type}`, async () => proj);
    const host = await proj.toHost();
    const split = (off, heads) => {
      const a = m.zeros(type, [T, heads, hd]);
      for (let i = 0; i < T; i++) a.data.set(host.data.subarray(i * (H + 2 * Hkv) * hd + off * hd, i * (H + 2 * Hkv) * hd + (off + heads) * hd), i * heads * hd);
      return m.DeviceTensor.from(a, { backend });
    };
    const q = await split(0, H), k = await split(H, Hkv), v = await split(H + Hkv, Hkv);
    const pos = await m.DeviceTensor.from(m.tensor('int32', Array.from({ length: T }, (_, i) => i), [T]), { backend });
    const rot = await m.rope(q, k, pos, { theta: 1e6 });
    await step(`rope ${type}`, async () => rot);
    const cache = new m.KvCache({ maxSeq: 1024, numKvHeads: Hkv, headDim: hd, type }, { backend });
    await step(`attention ${type} prefill`, () => m.attention(rot.q, rot.k, v, cache));
    // one token after a long context: the split (decode) path
    for (let i = T; i < 600; i += 64) {
      const n = Math.min(64, 600 - i);
      const kk = await m.DeviceTensor.from(t(type, n * Hkv * hd, [n, Hkv, hd]), { backend });
      await m.attention(await m.DeviceTensor.from(t(type, n * H * hd, [n, H, hd]), { backend }), kk, kk, cache);
    }
    const q1 = await m.DeviceTensor.from(t(type, H * hd, [1, H, hd]), { backend });
    const k1 = await m.DeviceTensor.from(t(type, Hkv * hd, [1, Hkv, hd]), { backend });
    await step(`attention ${type} decode after 600 positions`, () => m.attention(q1, k1, k1, cache, { slidingWindow: 256 }));
    await step(`add ${type}`, () => m.add(h, hn));
    const logits = await m.DeviceTensor.from(m.tensor('float32', rand(4 * V, 4), [4, V]), { backend });
    await step('sample greedy', () => m.sample(logits));
    await step('sample top-p', () => m.sample(logits, { temperature: 0.8, topP: 0.9, seed: 7 }));
    cache.dispose();
    qkv.dispose();
  }
  console.log(`gpu-kernel-tour: ${done.length} calls on ${backend} returned:\n  ${done.join('\n  ')}`);
}

main().then(
  () => process.exit(0),
  (e) => {
    console.error(`gpu-kernel-tour: ${e && e.stack ? e.stack : e}`);
    process.exit(1);
  },
);
