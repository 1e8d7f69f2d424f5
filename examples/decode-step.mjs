// One attention step of a decode loop with the decoder ops: everything allocated once, each step
// writes into the same tensors (`out`). Tiny dims; Mixtral's are d=4096, 32 heads / 8 KV heads of
// 128. Run: node examples/decode-step.mjs
import { KvCache, Linear, ropeSync, attentionSync, sampleSync, tensor, zeros } from 'moe-kernels';

const random = (...dims) => tensor('float32', Float32Array.from({ length: dims.reduce((a, b) => a * b) }, () => Math.random() - 0.5), dims);
const d = 64, heads = 4, kvHeads = 2, hd = 16, V = 100;

const cache = new KvCache({ maxSeq: 32, numKvHeads: kvHeads, headDim: hd, type: 'bfloat16' });
const [wq, wk, wv] = await Promise.all([Linear.pack(random(heads * hd, d)), Linear.pack(random(kvHeads * hd, d)), Linear.pack(random(kvHeads * hd, d))]);
const lmHead = await Linear.pack(random(V, heads * hd));
const q = zeros('float32', [1, heads * hd]), k = zeros('float32', [1, kvHeads * hd]), v = zeros('float32', [1, kvHeads * hd]);
const attnOut = zeros('float32', [1, heads, hd]), logits = zeros('float32', [1, V]);
const view = (t, dims) => ({ ...t, dims }); // the same data, other dims: no copy

const h = random(1, d); // this step's hidden state
for (let step = 0; step < 4; step++) {
  wq.forwardSync(h, { out: q });                                       // q: [1, heads*hd] f32, reused
  wk.forwardSync(h, { out: k });
  wv.forwardSync(h, { out: v });
  const positions = tensor('int32', [step]);
  ropeSync(view(q, [1, heads, hd]), view(k, [1, kvHeads, hd]), positions, { theta: 1e6, inPlace: true });
  attentionSync(view(q, [1, heads, hd]), view(k, [1, kvHeads, hd]), view(v, [1, kvHeads, hd]), cache, { out: attnOut }); // appends at cache.length
  lmHead.forwardSync(view(attnOut, [1, heads * hd]), { out: logits });
  const next = sampleSync(logits, { temperature: 0.7, topP: 0.9, seed: 1, step });
  console.log(`step ${step}: cache holds ${cache.length} positions, sampled ${next.data[0]}`);
}
