// DeepSeekMoE / Qwen2-MoE: an always-active shared expert added to the routed ones, here with
// Qwen2-MoE's sigmoid gate. Run: node examples/shared-experts.mjs
import { MoeLayer, tensor } from 'moe-kernels';

const random = (...dims) => tensor('float32', Float32Array.from({ length: dims.reduce((a, b) => a * b) }, () => Math.random() - 0.5), dims);

const d = 64, f = 32, fs = 96, E = 16;
const layer = await MoeLayer.create({ gate: random(E, d), w1: random(E, f, d), w3: random(E, f, d), w2: random(E, d, f) }, {
  topK: 4, normalize: false,
  sharedExperts: { w1: random(fs, d), w3: random(fs, d), w2: random(d, fs), gate: random(1, d) }, // gate optional
});
const { output } = await layer.forward(random(3, d));
console.log(output.dims, 'shared expert width', layer.sharedIntermediateSize);
