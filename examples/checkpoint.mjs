// A Hugging Face Mixtral checkpoint read layer by layer: every header is checked against
// config.json first, then one layer's arrays are in memory at a time.
// Run: node examples/checkpoint.mjs /models/Mixtral-8x7B-v0.1
import { MixtralCheckpoint, MoeLayer, createProgressBar } from 'moe-kernels';

const dir = process.argv[2] ?? '/models/Mixtral-8x7B-v0.1';
const bar = createProgressBar({ label: 'mixtral' });
const ckpt = await MixtralCheckpoint.open(dir, { dtype: 'bfloat16', onProgress: bar.update });
const { embedTokens, norm, lmHead } = await ckpt.loadGlobals();
for await (const layer of ckpt.layers()) {              // one layer in memory at a time
  const moe = await MoeLayer.create(layer.moe, { topK: ckpt.config.numExpertsPerTok });
  // layer.attention.{qProj,kProj,vProj,oProj}, layer.inputLayernorm, layer.postAttentionLayernorm
  moe.dispose();
}
bar.done();
console.log(`${ckpt.numLayers} layers; embeddings ${embedTokens.dims}, norm ${norm.dims}, lm_head ${lmHead.dims}`);
ckpt.close();
