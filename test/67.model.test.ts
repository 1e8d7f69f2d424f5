/**
 * MixtralModel and MixtralBlock (lib/model/model.ts, block.ts) on tiny random checkpoints written with the
 * safetensors writer (both expert layouts), against the float64 whole-model reference of
 * helpers/reference-mixtral.ts: logits for f32/f16/bf16 weights, the KV cache (continuing and
 * rewinding a sequence, greedy generate equal to recomputing the whole sequence each step), seeded
 * sampling, the sliding window, cancellation, routing statistics, dispose, and load errors. The MoE
 * layers also run on every device backend this process has ('cuda' with a GPU; 'cuda-emu' when
 * scripts/run-tests.js runs this file on the test build of the addon).
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { availableBackends, deviceTransferStats, MixtralBlock, MixtralModel, MoeError, parseMixtralConfig, tensor, type FloatType, type MixtralConfig, type Tensor } from '../lib/index';
import { expectMoeError, makeMixtralWeights, tinyMixtralRaw, tmpDir, writeTinyMixtral, type TinyWeights } from './helpers/checkpoints';
import { cpuBf16Activations } from './helpers/cpu-kernel';
import { assertClose, FLOAT_TYPES, randInt, randn, tolFor, type Tol } from './helpers/reference';
import { argmaxClear, assertNoNearTies, lastRow, refMixtral, refWeights, type RefMixtralConfig } from './helpers/reference-mixtral';

/** The tiny model: 2 layers, hidden 64, 4 experts of 48, top-2, 4/2 heads of 16, vocab 97, theta 1e6. */
const RAW = tinyMixtralRaw({ head_dim: 16 });

const refConfig = (c: MixtralConfig): RefMixtralConfig => ({ ...c, slidingWindow: c.slidingWindow ?? 0 });

/**
 * Logits after 2 layers against the reference of the same weight values: the library computes in
 * f32 whatever the weight type, so the tolerance is that of f32 arithmetic for every dtype (the
 * weights themselves are the same rounded values on both sides). Looser for 16-bit weights only
 * because their rounded values make slightly larger activations.
 */
const TOL: Record<FloatType, Tol> = {
  float32: { atol: 2e-5, rtol: 2e-4 },
  float16: { atol: 2e-5, rtol: 2e-4 },
  bfloat16: { atol: 4e-5, rtol: 4e-4 },
};
/**
 * Logits of a model whose GEMMs read x rounded to bf16: every device GEMM with bf16 weights, and
 * the CPU's avx512-bf16 kernel table (helpers/cpu-kernel.ts). Errors of that rounding (~2^-9 of
 * each input), still far below the logits' scale (~0.1).
 */
const BF16_ROUNDED_TOL: Tol = { atol: 1e-3, rtol: 2e-2 };
const cpuTol = (dtype: FloatType): Tol => (cpuBf16Activations(dtype) ? BF16_ROUNDED_TOL : TOL[dtype]);

const ids = (n: number, seed: number) => Array.from(randInt(n, 97, seed));


const m = suite<{ dir: string; packed: string; weights: TinyWeights; config: MixtralConfig }>('MixtralModel', {
  dir: '',
  packed: '',
  weights: undefined as never,
  config: undefined as never,
});

m.before(async (ctx) => {
  ctx.dir = tmpDir('moe-model-');
  ctx.packed = path.join(ctx.dir, 'packed');
  ctx.weights = await writeTinyMixtral(path.join(ctx.dir, 'per-expert'), { raw: RAW });
  await writeTinyMixtral(ctx.packed, { raw: RAW, layout: 'packed' });
  ctx.config = parseMixtralConfig(RAW);
});
m.after((ctx) => fs.rmSync(ctx.dir, { recursive: true, force: true }));

m('load (both expert layouts, f32/f16/bf16 weights): logits of forward equal the float64 reference', async (ctx) => {
  const seq = ids(11, 3);
  for (const [layout, dir] of [['per-expert', path.join(ctx.dir, 'per-expert')], ['packed', ctx.packed]] as const)
    for (const dtype of FLOAT_TYPES) {
      const progress: number[] = [];
      const model = await MixtralModel.load(dir, { dtype, onProgress: (p) => progress.push(p.tensorsLoaded) });
      assert.is(progress.at(-1), layout === 'packed' ? 21 : 41, 'progress reaches every tensor');
      assert.is(model.blocks.length, 2);
      assert.is(model.blocks[0].moe!.weightType, dtype);
      const ref = refMixtral(refConfig(ctx.config), refWeights(refConfig(ctx.config), ctx.weights, dtype), seq);
      assertNoNearTies(ref.routes, `${layout} ${dtype}`);
      const logits = await model.forward(seq);
      assert.is(logits.type, 'float32');
      assert.equal([...logits.dims], [11, 97]);
      assertClose(logits.data, ref.logits, cpuTol(dtype), `${layout} ${dtype}`);
      model.dispose();
    }
});

const DEVICES = availableBackends().filter((b) => b !== 'cpu');
/** The device attention takes head dims of 32, 64, 128, 256: the same tiny model with heads of 32. */
const RAW_DEV = tinyMixtralRaw({ head_dim: 32, sliding_window: 6 });

m('the whole model on each device backend: weights, caches and activations on the device; logits against the reference, decode as recompute, greedy as the CPU', async (ctx) => {
  const required = process.env.MOE_TEST_REQUIRE_BACKEND;
  if (required) assert.ok((DEVICES as string[]).includes(required), `backend ${required} is required but not available (${availableBackends().join(', ')})`);
  if (DEVICES.length === 0) return;
  const dir = path.join(ctx.dir, 'device');
  const weights = await writeTinyMixtral(dir, { raw: RAW_DEV, layout: 'packed' });
  const config = parseMixtralConfig(RAW_DEV);
  const seq = ids(9, 31);
  for (const backend of DEVICES)
    for (const dtype of FLOAT_TYPES) {
      const model = await MixtralModel.load(dir, { dtype, backend });
      assert.is(model.backend, backend);
      assert.ok(model.blocks.every((b) => b.moe!.backend === backend && b.cache.backend === backend), 'every layer and cache on the device');
      const ref = refMixtral(refConfig(config), refWeights(refConfig(config), weights, dtype), seq);
      assertNoNearTies(ref.routes, `${backend} ${dtype}`);
      // with 16-bit weights every device GEMM (q, k, v, o, the two expert GEMMs per layer, the LM
      // head: 13 in this model) reads x rounded to the weights' type (README, Backends): errors of
      // that rounding (~2^-9 of each input for bf16, 2^-12 for f16), not of f32 arithmetic; still
      // far below the logits' scale (~0.1)
      const tol = dtype === 'float32' ? TOL.float32 : dtype === 'float16' ? { atol: 2e-4, rtol: 4e-3 } : BF16_ROUNDED_TOL;
      const full = await model.forward(seq);
      assert.is(full.type, 'float32');
      assert.equal([...full.dims], [9, 97]);
      assertClose(full.data, ref.logits, tol, `${backend} ${dtype}`);
      // decoding through the device caches (sliding window 6 < 9) gives the full forward's logits
      await model.forward(seq.slice(0, 5));
      for (let p = 5; p < 9; p++) {
        const step = await model.forward([seq[p]], { startPos: p });
        assertClose(step.data, full.data.subarray(p * 97, (p + 1) * 97), TOL.float32, `${backend} ${dtype}: decode at ${p}`);
      }
      // what one decode step moves between host and device: the token id and positions in; the
      // logits and the layers' routing counts out; no activation crosses (a row is 256 bytes)
      const before = deviceTransferStats();
      await model.forward([seq[8]], { startPos: 8 });
      const after = deviceTransferStats();
      const L = config.numHiddenLayers, E = config.numExperts;
      assert.is(after.toHost.calls - before.toHost.calls, 2, 'copies to the host: the logits, and every layer\'s counts at once');
      assert.is(after.toHost.bytes - before.toHost.bytes, 4 * 97 + 4 * L * E, 'bytes to the host');
      // in: the token id and its position, each once for all layers (a copy from pageable memory
      // waits for the stream, so one per layer would stall the device)
      assert.is(after.toDevice.calls - before.toDevice.calls, 2, 'copies to the device: the id and the position');
      assert.is(after.toDevice.bytes - before.toDevice.bytes, 8, 'bytes to the device');
      const stats = model.routingStats();
      assert.is(stats.tokens, 9 + 5 + 4 + 1);
      for (const layer of stats.tokensPerExpert) assert.is(layer.reduce((a, b) => a + b, 0), stats.tokens * 2, 'routing counts come back from the device');
      if (dtype === 'float32') {
        const cpu = await MixtralModel.load(dir, { backend: 'cpu' });
        assert.equal(await model.generateAll(seq, { maxNewTokens: 4 }), await cpu.generateAll(seq, { maxNewTokens: 4 }), `${backend}: greedy tokens`);
        // one sampling rule (moe/sampling_rule.h, Philox) on both backends: a seed gives the same tokens
        for (const seed of [1, 2, 3]) {
          const o = { maxNewTokens: 6, temperature: 1.2, topP: 0.95, seed };
          assert.equal(await model.generateAll(seq, o), await cpu.generateAll(seq, o), `${backend}: sampled tokens, seed ${seed}`);
        }
        cpu.dispose();
      }
      model.dispose();
    }
});

m('a device backend refuses what its kernels cannot run, with a clear error', async (ctx) => {
  for (const backend of DEVICES)
    await expectMoeError(() => MixtralModel.load(ctx.packed, { backend }), 'ERR_UNSUPPORTED', 'head dim of 32, 64, 128 or 256, got 16');
});

m('the KV cache: continuing a sequence and rewinding it give the logits of one full forward', async (ctx) => {
  const model = await MixtralModel.load(path.join(ctx.dir, 'per-expert'));
  const seq = ids(12, 5);
  const full = await model.forward(seq);
  const V = 97;
  const a = await model.forward(seq.slice(0, 7));
  assert.is(model.length, 7);
  const b = await model.forward(seq.slice(7), { startPos: 7 });
  assert.is(model.length, 12);
  assertClose(a.data, full.data.subarray(0, 7 * V), TOL.float32, 'prefix');
  assertClose(b.data, full.data.subarray(7 * V), TOL.float32, 'continued');
  // one token at a time from position 9, after rewinding there
  for (let p = 9; p < 12; p++) {
    const step = await model.forward([seq[p]], { startPos: p });
    assertClose(step.data, full.data.subarray(p * V, (p + 1) * V), TOL.float32, `decode at ${p}`);
  }
  // a fresh forward (startPos 0) starts over
  const again = await model.forward(seq.slice(0, 3));
  assert.is(model.length, 3);
  assertClose(again.data, full.data.subarray(0, 3 * V), TOL.float32, 'restart');
  model.dispose();
});

m('greedy generate with the KV cache equals the argmax of a full forward recomputed each step', async (ctx) => {
  const model = await MixtralModel.load(path.join(ctx.dir, 'per-expert'), { dtype: 'bfloat16' });
  const prompt = ids(5, 9);
  const seen: [number, number][] = [];
  const out = await model.generateAll(prompt, { maxNewTokens: 10, onToken: (id, i) => seen.push([id, i]) });
  assert.is(out.length, 10);
  assert.equal(seen, out.map((id, i) => [id, i]));
  const seq = [...prompt];
  for (let i = 0; i < out.length; i++) {
    const logits = await model.forward(seq);
    assert.is(out[i], argmaxClear(lastRow(logits, 97), `step ${i}`), `token ${i}`);
    seq.push(out[i]);
  }
  // the iterator form gives the same tokens
  const it: number[] = [];
  for await (const id of model.generate(prompt, { maxNewTokens: 10 })) it.push(id);
  assert.equal(it, out);
  // stop tokens end the generation after yielding the stop token
  const stopped = await model.generateAll(prompt, { maxNewTokens: 10, stopTokens: [out[3]] });
  assert.equal(stopped, out.slice(0, out.indexOf(out[3]) + 1));
  model.dispose();
});

m('seeded sampling is reproducible (step = position); another seed differs; breaking out leaves the model usable', async (ctx) => {
  const model = await MixtralModel.load(ctx.packed);
  const prompt = ids(4, 11);
  const opts = { maxNewTokens: 12, temperature: 1.5, topP: 0.95, seed: 7 };
  const a = await model.generateAll(prompt, opts);
  const b = await model.generateAll(prompt, opts);
  assert.equal(a, b);
  const c = await model.generateAll(prompt, { ...opts, seed: 8 });
  assert.not.equal(a, c);
  const first: number[] = [];
  for await (const id of model.generate(prompt, opts)) {
    first.push(id);
    if (first.length === 3) break;
  }
  assert.equal(first, a.slice(0, 3));
  assert.equal(await model.generateAll(prompt, opts), a);
  model.dispose();
});

m('sliding window smaller than the sequence: forward and decode against the reference', async (ctx) => {
  const raw = { ...RAW, sliding_window: 4 };
  const dir = path.join(ctx.dir, 'window');
  const w = await writeTinyMixtral(dir, { raw });
  const config = parseMixtralConfig(raw);
  assert.is(config.slidingWindow, 4);
  const model = await MixtralModel.load(dir);
  const seq = ids(10, 13);
  const ref = refMixtral(refConfig(config), refWeights(refConfig(config), w), seq);
  assertNoNearTies(ref.routes, 'window');
  assertClose((await model.forward(seq)).data, ref.logits, TOL.float32, 'window 4, T = 10');
  const full = refMixtral({ ...refConfig(config), slidingWindow: 0 }, refWeights(refConfig(config), w), seq);
  let diff = 0;
  for (let i = 0; i < full.logits.length; i++) diff = Math.max(diff, Math.abs(full.logits[i] - ref.logits[i]));
  assert.ok(diff > 1e-3, 'the window changes the logits');
  await model.forward(seq.slice(0, 6));
  for (let p = 6; p < 10; p++) {
    const step = await model.forward([seq[p]], { startPos: p });
    assertClose(step.data, ref.logits.subarray(p * 97, (p + 1) * 97), TOL.float32, `decode at ${p}`);
  }
  model.dispose();
});

m('AbortSignal cancels generation mid-way with ERR_ABORTED; the model stays usable', async (ctx) => {
  const model = await MixtralModel.load(path.join(ctx.dir, 'per-expert'));
  const prompt = ids(6, 17);
  const want = await model.generateAll(prompt, { maxNewTokens: 8 });
  const ac = new AbortController();
  const got: number[] = [];
  const err = await expectMoeError(
    () => model.generateAll(prompt, { maxNewTokens: 8, signal: ac.signal, onToken: (id, i) => (got.push(id), i === 2 && ac.abort(new Error('user'))) }),
    'ERR_ABORTED',
  );
  assert.is(err.name, 'AbortError');
  assert.is(((err as { cause?: Error }).cause as Error).message, 'user');
  assert.equal(got, want.slice(0, 3));
  // already aborted: nothing is generated
  await expectMoeError(() => model.generateAll(prompt, { signal: AbortSignal.abort() }), 'ERR_ABORTED');
  // an abort while a step is computing ends the iteration at the next check
  const ac2 = new AbortController();
  const it = model.generate(prompt, { maxNewTokens: 8, signal: ac2.signal });
  assert.is((await it.next()).value, want[0]);
  const pending = it.next();
  ac2.abort();
  await expectMoeError(() => pending, 'ERR_ABORTED');
  assert.equal(await model.generateAll(prompt, { maxNewTokens: 8 }), want);
  model.dispose();
});

m('routing statistics: tokens per expert per layer over a run, reset', async (ctx) => {
  const model = await MixtralModel.load(path.join(ctx.dir, 'per-expert'));
  const seq = ids(9, 19);
  await model.forward(seq);
  let s = model.routingStats();
  assert.is(s.tokens, 9);
  assert.is(s.tokensPerExpert.length, 2);
  const ref = refMixtral(refConfig(ctx.config), refWeights(refConfig(ctx.config), ctx.weights), seq);
  assert.equal(s.tokensPerExpert, ref.routes.map((r) => Array.from(r.counts)));
  await model.generateAll(seq.slice(0, 2), { maxNewTokens: 4 });
  s = model.routingStats();
  assert.is(s.tokens, 9 + 2 + 3);
  for (const layer of s.tokensPerExpert) assert.is(layer.reduce((a, b) => a + b, 0), s.tokens * 2);
  model.resetRoutingStats();
  assert.equal(model.routingStats(), { tokens: 0, tokensPerExpert: [[0, 0, 0, 0], [0, 0, 0, 0]], layers: [0, 1] });
  model.dispose();
});

m('fromWeights and one MixtralBlock on its own; tied embeddings', async (ctx) => {
  const model = await MixtralModel.fromWeights(ctx.config, ctx.weights, { maxSeq: 32, kvType: 'bfloat16' });
  assert.is(model.maxSeq, 32);
  assert.is(model.blocks[0].cache.type, 'bfloat16');
  model.dispose();
  // layers made on demand by a generator; the wrong number of layers is an error
  const lazy = await MixtralModel.fromWeights(ctx.config, { globals: ctx.weights.globals, layers: (function* () { yield* ctx.weights.layers; })() });
  assert.is(lazy.blocks.length, 2);
  lazy.dispose();
  for (const layers of [ctx.weights.layers.slice(0, 1), [...ctx.weights.layers, ctx.weights.layers[0]]])
    try {
      await MixtralModel.fromWeights(ctx.config, { globals: ctx.weights.globals, layers });
      assert.unreachable('no error');
    } catch (e) {
      assert.instance(e, RangeError);
      assert.match((e as Error).message, /weights\.layers must give 2 layers \(num_hidden_layers\), got (1|more)/);
    }
  // a block: its output after the first layer, compared through a one-layer model's reference
  const cfg1 = parseMixtralConfig({ ...RAW, num_hidden_layers: 1 });
  const block = await MixtralBlock.create(cfg1, ctx.weights.layers[0]);
  const x = tensor('float32', randn(5 * 64, 23, 1), [5, 64]);
  const { output, tokensPerExpert } = await block.forward(x);
  assert.ok(output !== x && output.data !== x.data);
  assert.equal([...output.dims], [5, 64]);
  assert.is(tokensPerExpert.data.reduce((a, b) => a + b, 0), 10);
  const inPlace = await block.forward(x, { startPos: 0, inPlace: true });
  assert.ok(inPlace.output === x);
  assertClose(x.data, output.data, { atol: 0, rtol: 0 }, 'in place = fresh');
  block.dispose();
  // tied: the LM head is the embedding table
  const tiedRaw = { ...RAW, tie_word_embeddings: true };
  const tied = makeMixtralWeights(parseMixtralConfig(tiedRaw), 4);
  const tc = parseMixtralConfig(tiedRaw);
  const tm = await MixtralModel.fromWeights(tc, tied);
  const seq = ids(6, 29);
  const ref = refMixtral(refConfig(tc), refWeights(refConfig(tc), tied), seq);
  assertClose((await tm.forward(seq)).data, ref.logits, TOL.float32, 'tied');
  tm.dispose();
});

m('dispose frees everything; later calls throw ERR_DISPOSED', async (ctx) => {
  const model = await MixtralModel.load(path.join(ctx.dir, 'per-expert'));
  await model.forward([1, 2, 3]);
  assert.ok(model.bytes > 0);
  model.dispose();
  assert.ok(model.disposed);
  assert.ok(model.blocks.every((b) => b.disposed && b.moe!.disposed && b.cache.disposed));
  await expectMoeError(() => model.forward([1]), 'ERR_DISPOSED');
  await expectMoeError(() => model.generateAll([1]), 'ERR_DISPOSED');
  model.dispose(); // twice is fine
});

m('argument errors: token ids, startPos, maxSeq, overlapping calls', async (ctx) => {
  const model = await MixtralModel.load(path.join(ctx.dir, 'per-expert'), { maxSeq: 16 });
  const rejects = async (p: () => Promise<unknown>, ctor: ErrorConstructor, re: RegExp) => {
    try {
      await p();
    } catch (e) {
      assert.instance(e, ctor);
      assert.match((e as Error).message, re);
      return;
    }
    assert.unreachable('no error');
  };
  await rejects(() => model.forward([1, 97]), RangeError, /tokenIds\[1\] must be a token id in \[0, 97\), got 97/);
  await rejects(() => model.forward([]), RangeError, /tokenIds must not be empty/);
  await rejects(() => model.forward('abc' as never), TypeError, /tokenIds must be an array of token ids/);
  await rejects(() => model.forward([1], { startPos: 1 }), RangeError, /options.startPos must be in \[0, 0\], got 1/);
  await rejects(() => model.forward(ids(17, 1)), RangeError, /must not exceed the model's maxSeq \(16\)/);
  await rejects(() => model.generateAll([1, 2], { maxNewTokens: 16 }), RangeError, /\(0 \+ 17\) must not exceed the model's maxSeq \(16\)/);
  await rejects(() => model.generateAll([1], { topP: 0 }), RangeError, /options.topP must be in \(0, 1\], got 0/);
  await rejects(() => model.generateAll([1], { signal: {} as never }), TypeError, /options.signal must be an AbortSignal/);
  assert.equal((await model.generateAll([1, 2], { maxNewTokens: 15 })).length, 15);
  const p = model.forward([1, 2, 3]);
  await expectMoeError(() => model.forward([4]), 'ERR_BUSY', 'must not overlap');
  await p;
  // a generation interrupted by another call ends with ERR_BUSY at its next step
  const it = model.generate([1, 2], { maxNewTokens: 5 });
  await it.next();
  await model.forward([5]);
  await expectMoeError(() => it.next(), 'ERR_BUSY');
  model.dispose();
});

m('load errors: a missing tensor is named; bad config; not enough memory fails before loading', async (ctx) => {
  const missing = path.join(ctx.dir, 'missing');
  await writeTinyMixtral(missing, { raw: RAW, edit: (t) => delete t['model.layers.1.block_sparse_moe.experts.2.w3.weight'] });
  await expectMoeError(() => MixtralModel.load(missing), 'ERR_TENSOR_MISSING', "'model.layers.1.block_sparse_moe.experts.2.w3.weight' is missing", '[48,64]');
  const badCfg = path.join(ctx.dir, 'bad-config');
  await writeTinyMixtral(badCfg, { raw: RAW });
  fs.writeFileSync(path.join(badCfg, 'config.json'), JSON.stringify({ ...RAW, num_key_value_heads: 3 }));
  await expectMoeError(() => MixtralModel.load(badCfg), 'ERR_CONFIG', 'num_attention_heads (4) must be a multiple of num_key_value_heads (3)');
  let loaded = 0;
  await expectMoeError(
    () => MixtralModel.load(ctx.packed, { availableBytes: 100_000, onProgress: () => loaded++ }),
    'ERR_OUT_OF_MEMORY',
    'but 100 kB is available',
  );
  assert.is(loaded, 0, 'nothing was read');
  const est = MixtralModel.estimateMemory(ctx.config, { dtype: 'float32', maxSeq: 128 });
  assert.is(est.kvCacheBytes, 2 * 2 * 2 * 16 * 128 * 4);
  const ok = await MixtralModel.load(ctx.packed, { availableBytes: est.totalBytes });
  ok.dispose();
  await expectMoeError(() => MixtralModel.load(path.join(ctx.dir, 'nope')), 'ERR_FILE_NOT_FOUND');
  assert.ok(MoeError);
});

m.run();
