// GGUF files as models: `convert` of a tiny checkpoint, then MixtralModel.load(file.gguf) against the
// safetensors model (f32: the same logits and greedy tokens; f16: the same as loading the
// checkpoint in f16), Qwen2-MoE, the older per-expert tensor names, llama.cpp's q/k permutation,
// and the refusals: other architectures, quantised tensors, missing and mis-shaped tensors, memory.
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { convertToGguf, dequantize, embedding, embeddingSync, ExpertWeights, MoeLayer, isQuantType, GgufCheckpoint, GgufFile, MixtralModel, MoeCheckpoint, quantize, Tokenizer, writeGguf, type GgufMetadataInput, type GgufTensorInput, type Tensor, type QuantTensor, type WeightTensor, type DecoderLayerWeights } from '../lib/index';
import { permuteQK, unpermuteQK } from '../lib/hf/gguf-model';
import { expectMoeError, tinyMixtralRaw, tinyQwen2MoeRaw, tmpDir, writeTinyMixtral, writeTinyModel } from './helpers/checkpoints';
import { tinyTokenizerJson } from './helpers/tokenizers';
import { randn } from './helpers/reference';
import * as v8 from 'node:v8';
import * as vm from 'node:vm';

v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc') as () => void;

const test = suite<{ dir: string }>('gguf models', { dir: '' });
test.before.each((ctx) => {
  ctx.dir = tmpDir('moe-ggufm-');
});
test.after.each((ctx) => {
  fs.rmSync(ctx.dir, { recursive: true, force: true });
});

const PROMPT = [1, 5, 9, 20, 33];

async function logitsOf(source: string, options: Parameters<typeof MixtralModel.load>[1] = {}) {
  const m = await MixtralModel.load(source, { maxSeq: 32, memoryCheck: false, ...options });
  try {
    const logits = await m.forward(PROMPT);
    const tokens = await m.generateAll(PROMPT, { maxNewTokens: 8 });
    return { logits: logits.data, tokens, tokenizer: m.tokenizer };
  } finally {
    m.dispose();
  }
}

const maxDiff = (a: Float32Array, b: Float32Array) => a.reduce((m, v, i) => Math.max(m, Math.abs(v - b[i])), 0);

/** Rewrites a GGUF file with its metadata and tensors edited. */
async function rewrite(src: string, out: string, edit: { metadata?: (m: GgufMetadataInput[]) => GgufMetadataInput[]; tensors?: (t: GgufTensorInput[]) => GgufTensorInput[] }) {
  const f = GgufFile.openSync(src);
  let metadata: GgufMetadataInput[] = f.entries().map((e) => ({ key: e.key, type: e.type, arrayType: e.arrayType, value: e.value }));
  let tensors: GgufTensorInput[] = f.infos().map((i) => ({ name: i.name, type: i.type!, dims: i.dims, data: f.readSync(i.name) }));
  metadata = edit.metadata?.(metadata) ?? metadata;
  tensors = edit.tensors?.(tensors) ?? tensors;
  await writeGguf(out, { metadata, tensors });
  f.close();
}

test('tiny Mixtral converted in f32: the same logits and greedy tokens as from safetensors', async ({ dir }) => {
  await writeTinyMixtral(dir, { raw: tinyMixtralRaw({ vocab_size: 277 }) });
  fs.writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify(tinyTokenizerJson()));
  fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), JSON.stringify({ bos_token: '<s>', eos_token: '</s>', chat_template: '{{ bos_token }}{% for m in messages %}[{{ m.role }}] {{ m.content }}{% endfor %}' }));
  const file = path.join(dir, 'tiny-f32.gguf');
  const r = await convertToGguf(dir, file, { type: 'f32' });
  assert.equal([r.architecture, r.tensors], ['llama', 3 + 2 * 10]);
  const a = await logitsOf(dir);
  const b = await logitsOf(file);
  assert.is(maxDiff(a.logits, b.logits), 0);
  assert.equal(b.tokens, a.tokens);
  // the tokenizer and chat template travel in the metadata
  const hf = Tokenizer.fromFile(dir);
  assert.ok(b.tokenizer);
  for (const s of ['hello world', ' hello', 'héllo wörld 1234', '']) assert.equal(b.tokenizer!.encode(s), hf.encode(s), s);
  assert.is(b.tokenizer!.applyChatTemplate([{ role: 'user', content: 'hi' }]), '<s>[user] hi');
});

test('f16 and bf16: the same logits as the checkpoint loaded in that type (norms and router kept in F32 in the file)', async ({ dir }) => {
  await writeTinyMixtral(dir);
  for (const [type, dtype] of [['f16', 'float16'], ['bf16', 'bfloat16']] as const) {
    const file = path.join(dir, `tiny-${type}.gguf`);
    await convertToGguf(dir, file, { type });
    const f = GgufFile.openSync(file);
    assert.equal([f.info('blk.0.attn_norm.weight').typeName, f.info('blk.0.ffn_gate_inp.weight').typeName, f.info('blk.0.ffn_up_exps.weight').typeName], ['F32', 'F32', type.toUpperCase()]);
    f.close();
    const a = await logitsOf(dir, { dtype });
    const b = await logitsOf(file);
    assert.ok(maxDiff(a.logits, b.logits) < 1e-5, `${type}: ${maxDiff(a.logits, b.logits)}`);
    assert.equal(b.tokens, a.tokens);
  }
});

test('Qwen2-MoE (qwen2moe: dense and MoE layers, gated shared expert, q/k/v biases) round-trips', async ({ dir }) => {
  await writeTinyModel(dir, { raw: tinyQwen2MoeRaw() });
  const file = path.join(dir, 'qwen.gguf');
  assert.is((await convertToGguf(dir, file, { type: 'f32' })).architecture, 'qwen2moe');
  const g = await GgufCheckpoint.open(file);
  assert.equal([g.config.modelType, g.config.layerKinds, g.config.sharedExpertIntermediateSize, g.config.attentionBias], ['qwen2_moe', ['dense', 'moe', 'dense', 'moe'], 48, true]);
  assert.equal(g.file.info('blk.1.ffn_gate_inp_shexp.weight').dims, [64]);
  g.close();
  const a = await logitsOf(dir);
  const b = await logitsOf(file);
  assert.is(maxDiff(a.logits, b.logits), 0);
  assert.equal(b.tokens, a.tokens);
});

test("older Mixtral files: one tensor per expert (blk.N.ffn_gate.M) load the same", async ({ dir }) => {
  await writeTinyMixtral(dir);
  const stacked = path.join(dir, 'stacked.gguf');
  await convertToGguf(dir, stacked, { type: 'f32' });
  const old = path.join(dir, 'per-expert.gguf');
  await rewrite(stacked, old, {
    tensors: (ts) =>
      ts.flatMap((t) => {
        const m = /^blk\.(\d+)\.ffn_(gate|up|down)_exps\.weight$/.exec(t.name);
        if (!m) return [t];
        const full = t.data as Tensor;
        const [E, rows, cols] = t.dims;
        return Array.from({ length: E }, (_, e) => ({ name: `blk.${m[1]}.ffn_${m[2]}.${e}.weight`, type: t.type, dims: [rows, cols], data: { type: full.type, data: full.data.slice(e * rows * cols, (e + 1) * rows * cols), dims: [rows, cols] } as Tensor<'float32'> }));
      }),
  });
  const g = GgufCheckpoint.openSync(old);
  assert.is(g.layout, 'per-expert');
  g.close();
  const a = await logitsOf(stacked);
  const b = await logitsOf(old);
  assert.is(maxDiff(a.logits, b.logits), 0);
});

test("llama.cpp's q/k permutation: rows (half, i) of each head go to (i, half); undone on load", () => {
  // one head of 4 rows: llama.cpp's reshape(1, 2, 2, in).swapaxes(1, 2) orders them r0, r2, r1, r3
  const w: Tensor = { type: 'float32', data: Float32Array.from([0, 0, 1, 1, 2, 2, 3, 3]), dims: [4, 2] };
  assert.equal(Array.from(permuteQK(w, 1).data), [0, 0, 2, 2, 1, 1, 3, 3]);
  const two: Tensor = { type: 'float32', data: Float32Array.from({ length: 8 }, (_, i) => i), dims: [8, 1] };
  assert.equal(Array.from(permuteQK(two, 2).data), [0, 2, 1, 3, 4, 6, 5, 7]);
  assert.equal(Array.from(unpermuteQK(permuteQK(two, 2), 2).data), Array.from(two.data));
});

test('refused: other architectures and dense llama (ERR_CONFIG), quantised tensors (ERR_UNSUPPORTED), missing and mis-shaped tensors', async ({ dir }) => {
  await writeTinyMixtral(dir);
  const file = path.join(dir, 'm.gguf');
  await convertToGguf(dir, file, { type: 'f32' });
  const arch = path.join(dir, 'gemma.gguf');
  await rewrite(file, arch, { metadata: (m) => m.map((e) => (e.key === 'general.architecture' ? { ...e, value: 'gemma' } : e)) });
  await expectMoeError(() => MixtralModel.load(arch), 'ERR_CONFIG', "architecture 'gemma' is not supported");
  const dense = path.join(dir, 'dense.gguf');
  await rewrite(file, dense, { metadata: (m) => m.filter((e) => e.key !== 'llama.expert_count') });
  await expectMoeError(() => MixtralModel.load(dense), 'ERR_CONFIG', 'without experts');
  // an IQ4_NL expert tensor (a ggml type the package does not run): sized and listed, refused
  // before anything is read. Written as Q4_0 (the same 18 bytes per 32 values), then its type id
  // patched to IQ4_NL's (20).
  const quant = path.join(dir, 'iq4.gguf');
  await rewrite(file, quant, {
    tensors: (ts) => ts.map((t) => (t.name === 'blk.1.ffn_up_exps.weight' ? { ...t, type: 'q4_0', data: new Uint8Array((t.dims.reduce((a, b) => a * b) / 32) * 18) } : t)),
  });
  const qf = GgufFile.openSync(quant);
  const info = qf.info('blk.1.ffn_up_exps.weight');
  const typeAt = info.infoOffset + 8 + Buffer.byteLength(info.name) + 4 + 8 * info.dims.length;
  qf.close();
  const bytes = fs.readFileSync(quant);
  assert.is(bytes.readUInt32LE(typeAt), 2);
  bytes.writeUInt32LE(20, typeAt);
  fs.writeFileSync(quant, bytes);
  let progressed = 0;
  await expectMoeError(() => MixtralModel.load(quant, { onProgress: () => progressed++ }), 'ERR_TENSOR_DTYPE', "'blk.1.ffn_up_exps.weight'", 'IQ4_NL');
  assert.is(progressed, 0, 'refused before reading anything');
  const missing = path.join(dir, 'missing.gguf');
  await rewrite(file, missing, { tensors: (ts) => ts.filter((t) => t.name !== 'blk.1.attn_k.weight') });
  await expectMoeError(() => MixtralModel.load(missing), 'ERR_TENSOR_MISSING', "'blk.1.attn_k.weight'");
  const shape = path.join(dir, 'shape.gguf');
  await rewrite(file, shape, { tensors: (ts) => ts.map((t) => (t.name === 'output_norm.weight' ? { ...t, dims: [32], data: { type: 'float32', data: new Float32Array(32), dims: [32] } as Tensor<'float32'> } : t)) });
  await expectMoeError(() => MixtralModel.load(shape), 'ERR_TENSOR_SHAPE', "'output_norm.weight'", '[32]', '[64]');
});

test('quantised GGUF: convert q8_0/q4_0/q4_k writes the blocks of the quantiser; the model runs them as they are, close to f32', async ({ dir }) => {
  await writeTinyMixtral(dir, { raw: tinyMixtralRaw({ hidden_size: 256, intermediate_size: 256 }) });
  const ckpt = await MoeCheckpoint.open(dir);
  const L1 = await ckpt.loadLayer(1);
  const g0 = await ckpt.loadGlobals();
  ckpt.close();
  const f32 = await logitsOf(dir);
  const scale = f32.logits.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
  const same = (a: Uint8Array, b: Uint8Array) => a.length === b.length && Buffer.compare(Buffer.from(a), Buffer.from(b)) === 0;
  for (const [type, tol] of [['q8_0', 0.03], ['q4_0', 0.35], ['q4_k', 0.35]] as const) {
    const file = path.join(dir, `m-${type}.gguf`);
    await convertToGguf(dir, file, { type });
    const g = await GgufCheckpoint.open(file);
    assert.equal(['token_embd.weight', 'blk.1.attn_q.weight', 'blk.1.ffn_down_exps.weight', 'blk.1.ffn_gate_inp.weight', 'blk.1.attn_norm.weight'].map((n) => g.file.info(n).type), [type, type, type, 'float32', 'float32']);
    const e = g.estimateMemory({ maxSeq: 32 });
    assert.ok(e.ffnBytes > 0 && e.ffnBytes < e.weightsBytes, `ffnBytes ${e.ffnBytes} of ${e.weightsBytes}`);
    const l = await g.loadLayer(1);
    // the experts and projections are the file's blocks, which are the quantiser's blocks of the
    // checkpoint's weights (llama.cpp's q/k row permutation undone on whole rows of blocks)
    for (const [got, w] of [[l.moe!.w3[2], L1.moe!.w3[2]], [l.moe!.w2[3], L1.moe!.w2[3]], [l.attention.qProj, L1.attention.qProj], [l.attention.kProj, L1.attention.kProj]] as const) {
      assert.is(got.type, type);
      assert.ok(same(got.data as Uint8Array, (await quantize(w as Tensor, type)).data), `${type} blocks`);
    }
    // the embeddings and the LM head stay the file's blocks (as llama.cpp runs them): the embedding
    // op dequantises the rows it looks up, to the values of dequantize
    const globals = await g.loadGlobals();
    const qe = await quantize(g0.embedTokens as Tensor, type);
    assert.equal([globals.embedTokens.type, globals.lmHead.type], [type, type]);
    assert.ok(same(globals.embedTokens.data as Uint8Array, qe.data), `${type}: token_embd blocks`);
    const V = g.config.vocabSize, d = g.config.hiddenSize;
    const ids = { type: 'int32' as const, data: Int32Array.from([0, V - 1, 7, 7, 3]), dims: [5] };
    const full = (await dequantize(qe)).data as Float32Array;
    const rows = Float32Array.from([...ids.data].flatMap((id) => Array.from(full.subarray(id * d, (id + 1) * d))));
    assert.equal(Array.from((await embedding(globals.embedTokens, ids)).data), Array.from(rows), `${type}: embedding rows`);
    const bf = (await dequantize(qe, { type: 'bfloat16' })).data as Uint16Array;
    const bfRows = Uint16Array.from([...ids.data].flatMap((id) => Array.from(bf.subarray(id * d, (id + 1) * d))));
    assert.equal(Array.from(embeddingSync(globals.embedTokens, ids, { outType: 'bfloat16' }).data), Array.from(bfRows), `${type}: bf16 rows`);
    // the dequantised model: the file's blocks widened to f32 once, run by the float kernels
    const deq = async (t: WeightTensor) => (isQuantType(t.type) ? dequantize(t as QuantTensor) : (t as Tensor));
    const layers: DecoderLayerWeights[] = [];
    for (let i = 0; i < g.config.numHiddenLayers; i++) {
      const li = await g.loadLayer(i);
      const at = li.attention;
      li.attention = { ...at, qProj: await deq(at.qProj), kProj: await deq(at.kProj), vProj: await deq(at.vProj), oProj: await deq(at.oProj) };
      const mo = li.moe!;
      li.moe = { ...mo, w1: await Promise.all(mo.w1.map(deq)), w3: await Promise.all(mo.w3.map(deq)), w2: await Promise.all(mo.w2.map(deq)) };
      layers.push(li);
    }
    const dm = await MixtralModel.fromWeights(g.config, { globals, layers }, { maxSeq: 32 });
    const dequantTokens = await dm.generateAll(PROMPT, { maxNewTokens: 8 });
    dm.dispose();
    g.close();
    const q = await logitsOf(file);
    const err = maxDiff(f32.logits, q.logits) / scale;
    assert.ok(err > 0 && err < tol, `${type}: logits off by ${err} of their scale`);
    assert.equal(q.tokens, dequantTokens, `${type}: the greedy tokens of the dequantised model`);
  }
});

test('quantised experts in a mapped GGUF file are used in place (no copy): the same bits as a copy, and they outlive close()', async ({ dir }) => {
  await writeTinyMixtral(dir, { raw: tinyMixtralRaw({ hidden_size: 256, intermediate_size: 256 }) });
  for (const type of ['q8_0', 'q4_k'] as const) {
    const file = path.join(dir, `m-${type}.gguf`);
    await convertToGguf(dir, file, { type });
    const g = await GgufCheckpoint.open(file);
    assert.is(g.file.mapped, true);
    const moe = (await g.loadLayer(1)).moe!;
    const expertBytes = [...moe.w1, ...moe.w3, ...moe.w2].reduce((n, t) => n + t.data.byteLength, 0);
    const copies = (ts: WeightTensor[]) => ts.map((t) => ({ ...t, data: (t.data as Uint8Array).slice() }) as WeightTensor);
    const inPlace = await ExpertWeights.pack({ w1: moe.w1, w3: moe.w3, w2: moe.w2 });
    const copied = await ExpertWeights.pack({ w1: copies(moe.w1), w3: copies(moe.w3), w2: copies(moe.w2) });
    assert.equal([inPlace.inPlaceBytes, inPlace.bytes], [expertBytes, expertBytes]);
    assert.equal([copied.inPlaceBytes, copied.bytes], [0, expertBytes]);
    inPlace.dispose();
    copied.dispose();
    // a layer over the mapping and one over copies: the same bits, decode (T=3) and prefill (T=40) paths
    const a = await MoeLayer.create({ gate: moe.gate, w1: moe.w1, w3: moe.w3, w2: moe.w2 });
    const b = await MoeLayer.create({ gate: moe.gate, w1: copies(moe.w1), w3: copies(moe.w3), w2: copies(moe.w2) });
    const xs = [3, 40].map((T, i) => ({ type: 'float32' as const, data: randn(T * 256, 7 + i), dims: [T, 256] }));
    const before: Float32Array[] = [];
    for (const x of xs) {
      const ya = (await a.forward(x)).output.data as Float32Array;
      assert.ok(Buffer.from(ya.buffer).equals(Buffer.from(((await b.forward(x)).output.data as Float32Array).buffer)), `${type}: in place = copy`);
      before.push(ya);
    }
    // the file closed and every JS view gone: the layer holds the mapping
    g.close();
    for (const k of ['gate', 'w1', 'w3', 'w2'] as const) (moe as Partial<typeof moe>)[k] = undefined;
    const collect = async () => {
      for (let i = 0; i < 3; i++) {
        gc();
        await new Promise((r) => setImmediate(r));
      }
    };
    const mapsFile = () => fs.readFileSync('/proc/self/maps', 'utf8').includes(fs.realpathSync(file));
    await collect();
    assert.is(mapsFile(), true, `${type}: the layer holds the mapping`);
    for (const [i, x] of xs.entries()) assert.ok(Buffer.from(((await a.forward(x)).output.data as Float32Array).buffer).equals(Buffer.from(before[i].buffer)), `${type}: after close()`);
    a.dispose();
    b.dispose();
    await collect();
    assert.is(mapsFile(), false, `${type}: unmapped with its last holder`);
  }
});

test('memory: refused up front by the estimate, with the numbers; progress reports every tensor', async ({ dir }) => {
  await writeTinyMixtral(dir);
  const file = path.join(dir, 'm.gguf');
  await convertToGguf(dir, file, { type: 'f16' });
  const g = await GgufCheckpoint.open(file);
  const e = g.estimateMemory({ maxSeq: 32 });
  assert.equal([e.dtype, e.weightsBytes], ['float16', 2 * (97 * 64 * 2 + 64 + 2 * (2 * 64 + 64 * 64 + 2 * 32 * 64 + 64 * 64 + 4 * 64 + 3 * 4 * 48 * 64))]);
  g.close();
  let calls = 0;
  await expectMoeError(() => MixtralModel.load(file, { availableBytes: 1000, onProgress: () => calls++ }), 'ERR_OUT_OF_MEMORY', 'needs', 'but 1.00 kB is available');
  assert.is(calls, 0);
  const seen: number[] = [];
  const m = await MixtralModel.load(file, { maxSeq: 16, onProgress: (p) => seen.push(p.tensorsLoaded === p.tensorsTotal ? p.bytesLoaded : -1) });
  assert.is(seen.length, 23);
  assert.is(seen[22], fs.statSync(file).size - GgufFile.openSync(file).dataOffset - (seen.length > 0 ? paddingOf(file) : 0));
  m.dispose();
});

/** Bytes of alignment padding between tensors in a file. */
function paddingOf(file: string): number {
  const f = GgufFile.openSync(file);
  const end = f.size - f.dataOffset;
  const n = end - f.tensorBytes;
  f.close();
  return n;
}

test.run();
