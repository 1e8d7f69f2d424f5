// An MoE layer from CommonJS: the experts are packed once, then each forward runs off the event
// loop. (The same as an ES module: moe-layer.mjs.) Run: node examples/moe-layer.cjs
const { MoeLayer, tensor, backendInfo } = require('moe-kernels');

const random = (...dims) => tensor('float32', Float32Array.from({ length: dims.reduce((a, b) => a * b) }, () => Math.random() - 0.5), dims);

async function main() {
  const d = 64, f = 128, E = 8, T = 5;
  // Hugging Face layout: gate [E,d]; w1, w3 [E,f,d] (or arrays of E [f,d]); w2 [E,d,f]
  const weights = { gate: random(E, d), w1: random(E, f, d), w3: random(E, f, d), w2: random(E, d, f) };
  const layer = await MoeLayer.create(weights, { topK: 2, normalize: true });
  const { output, routing } = await layer.forward(random(T, d), { returnRouting: true });
  // output: [T,d] in x's type; routing: { topkIds [T,k], topkWeights [T,k], tokensPerExpert [E] }
  console.log(output.dims, routing.topkIds.dims, Array.from(routing.tokensPerExpert.data), backendInfo().reason);
  layer.dispose(); // or let the GC free it
}

main().catch((e) => {
  console.error(e);
  process.exitCode = 1;
});
