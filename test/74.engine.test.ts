/**
 * The serving engine (lib/serve/engine.ts) on a tiny checkpoint with a tokenizer: continuous
 * batching gives a request the same tokens alone or among 31 others (greedy and seeded, prompts
 * chunked over steps), the paged forward against the model's own forward, cancellation frees the KV
 * blocks at once, a full pool makes sequences wait (and preempts) without changing their tokens,
 * maxQueued refuses with ERR_OVERLOADED, text streaming with stop strings, bad arguments as typed
 * errors. The batching cases also run on every device backend this process has ('cuda' with a
 * GPU; 'cuda-emu' when scripts/run-tests.js runs this file on the test build of the addon).
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { availableBackends, Engine, MixtralModel, MoeError, TextStream, Tokenizer, type EngineChunk, type EngineGenerateOptions, type Generation, type Tensor } from '../lib/index';
import { expectMoeError, tinyMixtralRaw, tmpDir, writeTinyMixtral } from './helpers/checkpoints';
import { assertClose } from './helpers/reference';
import { tinyTokenizerJson } from './helpers/tokenizers';

/** head_dim 32: the device attention's smallest; vocab 300 holds the tiny tokenizer's 277 ids. */
const RAW = tinyMixtralRaw({ head_dim: 32, vocab_size: 300, max_position_embeddings: 256 });
const DEVICES = availableBackends().filter((b) => b !== 'cpu');
const BACKENDS = ['cpu', ...DEVICES] as const;

const seqIds = (n: number, seed: number) => Array.from({ length: n }, (_, j) => (j * 7919 + seed * 131 + 3) % 300);

/** The target request of the batching test and 31 others of other lengths and options. */
const TARGET = { tokens: seqIds(21, 99) };
const others = (n: number) =>
  Array.from({ length: n }, (_, i) => ({
    prompt: { tokens: seqIds(1 + ((i * 5) % 29), i) },
    options: { maxTokens: 2 + (i % 7), temperature: i % 3 === 0 ? 0 : 0.7 + (i % 4) / 10, topK: i % 2 ? 0 : 40, seed: i } as EngineGenerateOptions,
  }));

const e = suite<{ dir: string }>('Engine', { dir: '' });
e.before(async (ctx) => {
  ctx.dir = tmpDir('moe-engine-');
  await writeTinyMixtral(ctx.dir, { raw: RAW });
  fs.writeFileSync(path.join(ctx.dir, 'tokenizer.json'), JSON.stringify(tinyTokenizerJson()));
});
e.after((ctx) => fs.rmSync(ctx.dir, { recursive: true, force: true }));

e('backends: the device cases run where required', () => {
  const required = process.env.MOE_TEST_REQUIRE_BACKEND;
  if (required) assert.ok((DEVICES as string[]).includes(required), `backend ${required} is required but not available (${availableBackends().join(', ')})`);
});

for (const backend of BACKENDS)
  e(`${backend}: a request gives the same tokens alone as among 31 others (greedy and seeded; prompts chunked over steps)`, async (ctx) => {
    const model = await MixtralModel.load(ctx.dir, { backend });
    // maxBatchTokens 40: the 32 prompts (and the target's 21 tokens) are split over several steps
    const engine = await Engine.create(model, { maxSequences: 32, maxBatchTokens: 40 });
    try {
      for (const opts of [{ maxTokens: 6 }, { maxTokens: 6, temperature: 0.9, topK: 50, topP: 0.95, seed: 1234, repetitionPenalty: 1.3 }] as EngineGenerateOptions[]) {
        const alone = await engine.generate(TARGET, opts).collect();
        assert.is(alone.tokens.length, 6);
        assert.is(alone.finishReason, 'length');
        assert.equal(alone.usage, { promptTokens: 21, completionTokens: 6, totalTokens: 27 });
        const rest = others(31);
        const gens: Generation[] = rest.map((r) => engine.generate(r.prompt, r.options));
        gens.splice(13, 0, engine.generate(TARGET, opts)); // in the middle of the batch
        const all = await Promise.all(gens.map((g) => g.collect()));
        assert.equal(all[13].tokens, alone.tokens, `${JSON.stringify(opts)}: batched as alone`);
        // and each of the others as it runs alone
        for (const i of [0, 7, 30]) {
          const solo = await engine.generate(rest[i].prompt, rest[i].options).collect();
          assert.equal(all[i < 13 ? i : i + 1].tokens, solo.tokens, `request ${i} alone`);
        }
        const st = engine.stats;
        assert.is(st.running + st.waiting, 0);
        assert.is(st.usedBlocks, 0, 'every block is back');
        assert.ok(st.steps > 0);
      }
      // greedy through the engine is the model's own greedy generate
      const ref = await model.generateAll(TARGET.tokens, { maxNewTokens: 6 });
      assert.equal((await engine.generate(TARGET, { maxTokens: 6 }).collect()).tokens, ref);
    } finally {
      await engine.close();
      model.dispose();
    }
  });

e('cpu: forwardPaged logits of interleaved sequences equal the model forward of each sequence', async (ctx) => {
  const model = await MixtralModel.load(ctx.dir, { backend: 'cpu' });
  const pools = model.createKvPools({ numBlocks: 8, blockSize: 4 });
  try {
    const a = seqIds(7, 1);
    const b = seqIds(5, 2);
    // a in blocks 0,1; b in 5,2 (out of order); tokens interleaved a0 b0 a1 b1 ...
    const order: [number, number][] = [];
    for (let i = 0; i < 7; i++) {
      order.push([0, i]);
      if (i < 5) order.push([1, i]);
    }
    const ids = order.map(([s, p]) => (s === 0 ? a : b)[p]);
    const blockTables = { type: 'int32' as const, data: Int32Array.from([0, 1, 5, 2]), dims: [2, 2] };
    const logits = await model.forwardPaged(ids, { positions: order.map(([, p]) => p), seqOf: order.map(([s]) => s), blockTables, pools, logitsRows: [order.length - 1, 9] }); // a6, b4
    const V = model.config.vocabSize;
    const ra = await model.forward(a);
    model.reset();
    const rb = await model.forward(b);
    assert.equal([...logits.dims], [2, V]);
    const data = (logits as Tensor<'float32'>).data;
    assertClose(data.subarray(0, V), ra.data.subarray(6 * V), { atol: 1e-5, rtol: 1e-4 }, 'a');
    assertClose(data.subarray(V), rb.data.subarray(4 * V), { atol: 1e-5, rtol: 1e-4 }, 'b');
    await model.forwardPaged(ids, { positions: [0], seqOf: [0], blockTables, pools, logitsRows: [] }).then(
      () => assert.unreachable('one position for 12 tokens'),
      (err: Error) => assert.ok(err instanceof RangeError && /options\.positions must have 12 entries/.test(err.message), err.message),
    );
  } finally {
    for (const p of pools) p.dispose();
    model.dispose();
  }
});

e('cancel: break, cancel() and an aborted signal free the blocks at once; a waiting sequence leaves the queue', async (ctx) => {
  const model = await MixtralModel.load(ctx.dir, { backend: 'cpu' });
  const engine = await Engine.create(model, { maxSequences: 2, maxQueued: 4, blockSize: 4 });
  try {
    // break out of for-await after two tokens
    const g1 = engine.generate({ tokens: seqIds(20, 1) }, { maxTokens: 100 });
    let n = 0;
    for await (const c of g1) {
      assert.ok('token' in c);
      if (++n === 2) {
        assert.ok(engine.stats.usedBlocks >= 6, `blocks held while running (${engine.stats.usedBlocks})`);
        break;
      }
    }
    assert.is(engine.stats.usedBlocks, 0, 'break freed the blocks');
    assert.is(engine.stats.running, 0);
    assert.is(engine.stats.cancelled, 1);

    // an AbortSignal: the iterator throws ERR_ABORTED, the blocks are free the moment it aborts
    const ac = new AbortController();
    const g2 = engine.generate({ tokens: seqIds(9, 2) }, { maxTokens: 100, signal: ac.signal });
    const first = await g2.next();
    assert.ok(!first.done && 'token' in first.value);
    ac.abort();
    assert.is(engine.stats.usedBlocks, 0, 'abort freed the blocks synchronously');
    await expectMoeError(async () => {
      for (;;) if ((await g2.next()).done) break;
    }, 'ERR_ABORTED');

    // two run, two wait: cancelling a waiting one removes it from the queue and the rest finish
    const gens = [0, 1, 2, 3].map((i) => engine.generate({ tokens: seqIds(5, i) }, { maxTokens: 3 }));
    assert.is(engine.stats.waiting + engine.stats.running, 4);
    gens[3].cancel();
    assert.is(engine.stats.waiting + engine.stats.running, 3);
    const done = await Promise.all(gens.slice(0, 3).map((g) => g.collect()));
    for (const d of done) assert.is(d.tokens.length, 3);
    assert.is((await gens[3].next()).done, true, 'a cancelled generation ends');
    await engine.drain();
    assert.is(engine.stats.usedBlocks, 0);
    // an already aborted signal is refused before anything is queued
    await expectMoeError(() => engine.generate({ tokens: [1] }, { signal: AbortSignal.abort() }), 'ERR_ABORTED');
  } finally {
    await engine.close();
    model.dispose();
  }
});

e('overload: past maxSequences + maxQueued generate throws ERR_OVERLOADED and holds nothing; a full pool makes sequences wait, not fail', async (ctx) => {
  const model = await MixtralModel.load(ctx.dir, { backend: 'cpu' });
  const engine = await Engine.create(model, { maxSequences: 2, maxQueued: 1 });
  try {
    const gens = [0, 1, 2].map((i) => engine.generate({ tokens: seqIds(4, i) }, { maxTokens: 4 }));
    await expectMoeError(() => engine.generate({ tokens: [1, 2] }), 'ERR_OVERLOADED', 'maxQueued 1');
    assert.is(engine.stats.running + engine.stats.waiting, 3);
    for (const g of gens) assert.is((await g.collect()).tokens.length, 4);
    // room again
    assert.is((await engine.generate({ tokens: [1, 2] }, { maxTokens: 2 }).collect()).tokens.length, 2);
  } finally {
    await engine.close();
    model.dispose();
  }
  await expectMoeError(() => engine.generate({ tokens: [1] }), 'ERR_DISPOSED');

  // 6 blocks of 4 positions: room for about two sequences of 10 at once; 6 requests wait for blocks
  // (and decode growth preempts the latest admitted); every one ends with the tokens it has alone
  const m2 = await MixtralModel.load(ctx.dir, { backend: 'cpu' });
  const small = await Engine.create(m2, { maxSequences: 8, numBlocks: 6, blockSize: 4 });
  try {
    assert.is(small.maxContext, 24);
    const reqs = [0, 1, 2, 3, 4, 5].map((i) => ({ prompt: { tokens: seqIds(5 + i, i) }, options: { maxTokens: 6, temperature: 0.8, seed: i } }));
    const alone: number[][] = [];
    for (const r of reqs) alone.push((await small.generate(r.prompt, r.options).collect()).tokens);
    const together = await Promise.all(reqs.map((r) => small.generate(r.prompt, r.options).collect()));
    assert.equal(
      together.map((t) => t.tokens),
      alone,
    );
    assert.ok(small.stats.preemptions > 0, 'the pool was short and sequences were preempted');
    assert.is(small.stats.usedBlocks, 0);
    // a prompt that cannot ever fit is a RangeError at once
    assert.throws(() => small.generate({ tokens: seqIds(20, 1) }, { maxTokens: 8 }), (err: Error) => err instanceof RangeError && /maxContext \(24\)/.test(err.message));
  } finally {
    await small.close();
    m2.dispose();
  }
});

e('text: streamed pieces join to the text, stop strings end it (across tokens), chat prompts, usage', async (ctx) => {
  const model = await MixtralModel.load(ctx.dir, { backend: 'cpu' });
  const engine = await Engine.create(model, { maxSequences: 4 });
  try {
    const chunks: EngineChunk[] = [];
    for await (const c of engine.generate('hello world', { maxTokens: 12, temperature: 1, seed: 5 })) chunks.push(c);
    const last = chunks.at(-1)!;
    assert.ok('finishReason' in last);
    const toks = chunks.filter((c): c is { token: number; text: string } => 'token' in c);
    const text = toks.map((c) => c.text).join('');
    assert.is(text, model.tokenizer!.decode(toks.map((c) => c.token), { skipSpecialTokens: true }));
    assert.is(last.usage.promptTokens, model.tokenizer!.encode('hello world').length);
    // stop on a piece of that text that starts inside it: the output ends right before it
    const stop = text.slice(3, 5);
    const cut = await engine.generate('hello world', { maxTokens: 12, temperature: 1, seed: 5, stop: [stop] }).collect();
    assert.is(cut.finishReason, 'stop');
    assert.is(cut.stop, stop);
    assert.is(cut.text, text.slice(0, text.indexOf(stop)));
    // stop tokens
    const byId = await engine.generate('hello world', { maxTokens: 12, temperature: 1, seed: 5, stopTokens: [toks[2].token] }).collect();
    assert.is(byId.finishReason, 'stop');
    assert.is(byId.stop, toks[2].token);
    assert.equal(byId.tokens, toks.slice(0, 3).map((c) => c.token));
    // chat messages through a template
    const chat = await engine.generate([{ role: 'user', content: 'hello' }], { maxTokens: 2, chatTemplate: '{% for m in messages %}[{{ m.role }}] {{ m.content }}{% endfor %}' }).collect();
    assert.is(chat.tokens.length, 2);
    assert.ok(chat.usage.promptTokens > model.tokenizer!.encode('hello', { addSpecialTokens: false }).length, 'the template adds text');
  } finally {
    await engine.close();
    model.dispose();
  }
});

e('TextStream: a character split over byte tokens is held until whole; a stop string across tokens ends the text before it', () => {
  const tok = new Tokenizer(tinyTokenizerJson());
  const byte = (b: number) => 3 + b;
  // 'é' is C3 A9, '€' is E2 82 AC: byte-fallback tokens, one byte each
  const t = new TextStream(tok);
  assert.equal(t.push(byte(0xc3)), { text: '', stop: null });
  assert.equal(t.push(byte(0xa9)), { text: 'é', stop: null });
  assert.is(t.push(byte(0xe2)).text + t.push(byte(0x82)).text, '');
  assert.is(t.push(byte(0xac)).text, '€');
  assert.is(t.flush(), '');
  assert.is(t.text, 'é€');
  // stop 'lo w' over the tokens of 'hel', 'lo', ' w', 'orld'
  const s = new TextStream(tok, { stop: ['lo w'] });
  const ids = tok.encode('hello world', { addSpecialTokens: false });
  let out = '';
  let stop: string | null = null;
  for (const id of ids) {
    const step = s.push(id);
    out += step.text;
    if ((stop = step.stop) !== null) break;
  }
  assert.is(stop, 'lo w');
  assert.is(out, 'hel');
  assert.is(s.text, 'hel');
});

e('bad arguments: typed errors before anything is queued', async (ctx) => {
  const model = await MixtralModel.load(ctx.dir, { backend: 'cpu' });
  await Engine.create(null as never).then(
    () => assert.unreachable('null model'),
    (err: Error) => assert.ok(err instanceof TypeError && /model must be a MixtralModel/.test(err.message), err.message),
  );
  await Engine.create(model, { maxSequences: 0 }).then(
    () => assert.unreachable('maxSequences 0'),
    (err: Error) => assert.instance(err, RangeError),
  );
  await Engine.create(model, { bogus: 1 } as never).then(
    () => assert.unreachable('bogus'),
    (err: Error) => assert.match(err.message, /options\.bogus is not an engine option/),
  );
  const engine = await Engine.create(model, { tokenizer: null });
  try {
    const throwsType = (fn: () => unknown, re: RegExp, cls: ErrorConstructor = TypeError) =>
      assert.throws(fn, (err: Error) => err instanceof cls && re.test(err.message));
    throwsType(() => engine.generate(42 as never), /prompt must be a string/);
    throwsType(() => engine.generate({ tokens: [1, 'a'] } as never), /prompt\.tokens\[1\]/, RangeError);
    throwsType(() => engine.generate({ tokens: [300] }), /prompt\.tokens\[0\] must be a token id in \[0, 300\)/, RangeError);
    throwsType(() => engine.generate({ tokens: [] }), /at least one token/, RangeError);
    throwsType(() => engine.generate({ tokens: [1] }, { temperature: -1 }), /options\.temperature/, RangeError);
    throwsType(() => engine.generate({ tokens: [1] }, { topP: 'x' } as never), /options\.topP must be a number/);
    throwsType(() => engine.generate({ tokens: [1] }, { maxTokens: 1.5 }), /options\.maxTokens must be an integer/);
    throwsType(() => engine.generate({ tokens: [1] }, { maxTokens: 0 }), /options\.maxTokens must be in/, RangeError);
    throwsType(() => engine.generate({ tokens: [1] }, { stopTokens: [999] }), /stopTokens/);
    throwsType(() => engine.generate({ tokens: [1] }, { nope: 1 } as never), /options\.nope is not a generate option/);
    const noTok = (fn: () => unknown) => {
      try {
        fn();
      } catch (x) {
        assert.instance(x, MoeError);
        assert.is((x as MoeError).code, 'ERR_TOKENIZER');
        return;
      }
      assert.unreachable('no ERR_TOKENIZER');
    };
    noTok(() => engine.generate('hello'));
    noTok(() => engine.generate({ tokens: [1] }, { stop: ['x'] }));
    assert.is(engine.stats.running + engine.stats.waiting, 0, 'nothing queued');
  } finally {
    await engine.close();
    await engine.close(); // twice is fine
    model.dispose();
  }
});

e.run();
