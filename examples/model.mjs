// A whole model from a Hugging Face checkpoint (Mixtral, Qwen2-MoE, DeepSeek-MoE): logits, then
// tokens as they come, stoppable with Ctrl-C. Run: node examples/model.mjs /models/Mixtral-8x7B-v0.1
import { MixtralModel, createProgressBar } from 'moe-kernels';

const dir = process.argv[2] ?? '/models/Mixtral-8x7B-v0.1';
const bar = createProgressBar({ label: 'mixtral' });
const model = await MixtralModel.load(dir, { dtype: 'bfloat16', maxSeq: 4096, onProgress: bar.update });
bar.done();

const logits = await model.forward([1, 415, 2936]);       // [T, V] float32, a new sequence
const more = await model.forward([9060], { startPos: 3 }); // continues from the KV caches
console.log(logits.dims, more.dims);

const prompt = [1, 415, 2936];                             // token ids (a tokenizer.json gives them: Tokenizer)
const ac = new AbortController();                          // ac.abort() stops generation
process.once('SIGINT', () => ac.abort());
for await (const id of model.generate(prompt, { maxNewTokens: 32, temperature: 0.7, topP: 0.9, seed: 1, signal: ac.signal, stopTokens: [2] }))
  process.stdout.write(`${id} `);
const ids = await model.generateAll(prompt, { maxNewTokens: 8, onToken: (id, i) => {} }); // callback form
console.log('\n', ids, model.routingStats().tokensPerExpert.length); // [MoE layer][expert] counts
model.dispose();
process.removeAllListeners('SIGINT');
