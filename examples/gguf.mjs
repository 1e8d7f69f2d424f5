// A llama.cpp GGUF file, text in and text out: the config, tokenizer and chat template come from
// its metadata; the weights are memory-mapped and packed layer by layer. F32, F16, BF16, Q8_0,
// Q4_0, Q4_K, Q5_K and Q6_K files run; make one with
// `npx moe-kernels convert <checkpoint dir> out.gguf --type q4_k`. Run: node examples/gguf.mjs /models/mixtral.f16.gguf
import { MixtralModel, GgufFile, createProgressBar } from 'moe-kernels';

const file = process.argv[2] ?? '/models/mixtral-8x7b-instruct-v0.1.f16.gguf';
const gguf = await GgufFile.open(file);                    // the header only, every offset checked
console.log(gguf.architecture, JSON.stringify(gguf.get('general.name')), `${gguf.names().length} tensors`);
gguf.close();

const bar = createProgressBar({ label: 'gguf' });
const model = await MixtralModel.load(file, { maxSeq: 512, onProgress: bar.update });
bar.done();
const chat = [{ role: 'user', content: 'Name three colours.' }]; // through tokenizer.chat_template
for await (const text of model.generateText(chat, { maxNewTokens: 24, stop: ['\n\n'] }))
  process.stdout.write(text);                              // whole characters, never half a stop string
const r = await model.generateTextAll('The capital of France is', { maxNewTokens: 8, temperature: 0.7, seed: 1 });
console.log(`\n${JSON.stringify(r.text)} (${r.tokenIds.length} tokens, ${r.stopReason})`);
model.dispose();
