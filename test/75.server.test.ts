/**
 * The OpenAI-compatible server (lib/serve/server.ts) and `moe-kernels serve` on a tiny checkpoint
 * with a tokenizer and chat template, over loopback with fetch: completions and chat completions,
 * streamed (SSE, `data: [DONE]`) and not, the same text as the engine gives the request directly;
 * /v1/models, /health, /metrics; 400 with OpenAI's error body, 401 without the API key, 404, 413,
 * 429 when the queue is full; a client that disconnects cancels its sequence; the CLI listens on
 * 127.0.0.1, takes MOE_KERNELS_API_KEY, and on SIGTERM finishes the running stream and exits 0.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Engine, MixtralModel, MoeServer } from '../lib/index';
import { tinyMixtralRaw, tmpDir, writeTinyMixtral } from './helpers/checkpoints';
import { tinyTokenizerJson } from './helpers/tokenizers';

const RAW = tinyMixtralRaw({ head_dim: 32, vocab_size: 300, max_position_embeddings: 4096 });
const KEY = 'test-key-123';
const CHAT_TEMPLATE = "{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}[assistant]";

interface Ctx {
  dir: string;
  model: MixtralModel;
  engine: Engine;
  server: MoeServer;
  url: string;
}

const s = suite<Ctx>('server', {} as Ctx);

s.before(async (ctx) => {
  ctx.dir = tmpDir('moe-server-');
  await writeTinyMixtral(ctx.dir, { raw: RAW });
  fs.writeFileSync(path.join(ctx.dir, 'tokenizer.json'), JSON.stringify(tinyTokenizerJson()));
  fs.writeFileSync(path.join(ctx.dir, 'tokenizer_config.json'), JSON.stringify({ bos_token: '<s>', eos_token: '</s>', chat_template: CHAT_TEMPLATE }));
  ctx.model = await MixtralModel.load(ctx.dir, { backend: 'cpu', maxSeq: 1 });
  ctx.engine = await Engine.create(ctx.model, { maxSequences: 2, maxQueued: 1, maxContext: 2048 });
  ctx.server = new MoeServer(ctx.engine, { modelName: 'tiny', apiKey: KEY, bodyLimit: 4096 });
  ctx.url = (await ctx.server.listen({ port: 0 })).url;
});
s.after(async (ctx) => {
  await ctx.server?.shutdown({ graceMs: 0 });
  await ctx.engine?.close();
  ctx.model?.dispose();
  fs.rmSync(ctx.dir, { recursive: true, force: true });
});

const auth = { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' };
const post = (ctx: Ctx, route: string, body: unknown, headers: Record<string, string> = auth, signal?: AbortSignal) =>
  fetch(ctx.url + route, { method: 'POST', headers, body: typeof body === 'string' ? body : JSON.stringify(body), signal });

/** The `data:` payloads of an SSE body, parsed (but [DONE]). */
function events(text: string): { done: boolean; data: Record<string, any>[] } {
  const lines = text.split('\n\n').filter((l) => l.trim() !== '');
  for (const l of lines) assert.ok(l.startsWith('data: '), `an SSE event: ${l}`);
  const payloads = lines.map((l) => l.slice(6));
  const done = payloads.at(-1) === '[DONE]';
  return { done, data: payloads.filter((p) => p !== '[DONE]').map((p) => JSON.parse(p)) };
}

async function expectError(res: Response, status: number, pattern: RegExp, code?: string) {
  assert.is(res.status, status, `status ${res.status}`);
  const j = (await res.json()) as { error: { message: string; type: string; code: string | null; param: unknown } };
  assert.type(j.error, 'object');
  assert.type(j.error.type, 'string');
  assert.ok('param' in j.error);
  assert.match(j.error.message, pattern);
  if (code) assert.is(j.error.code, code);
}

/** Polls until `cond` holds (at most ~5 s of 10 ms waits); no timing is asserted. */
async function until(cond: () => boolean, what: string) {
  for (let i = 0; i < 500 && !cond(); i++) await new Promise((r) => setTimeout(r, 10));
  assert.ok(cond(), what);
}

s('completions: text, token ids and usage; the same tokens as the engine gives the request; streamed the same', async (ctx) => {
  const body = { model: 'tiny', prompt: 'hello world', max_tokens: 6, temperature: 0.9, seed: 42, top_k: 50 };
  const res = await post(ctx, '/v1/completions', body);
  assert.is(res.status, 200);
  const j = (await res.json()) as any;
  assert.is(j.object, 'text_completion');
  assert.is(j.model, 'tiny');
  assert.match(j.id, /^cmpl-/);
  const direct = await ctx.engine.generate('hello world', { maxTokens: 6, temperature: 0.9, seed: 42, topK: 50 }).collect();
  assert.equal(j.choices[0].token_ids, direct.tokens);
  assert.is(j.choices[0].text, direct.text);
  assert.is(j.choices[0].finish_reason, direct.finishReason);
  assert.equal(j.usage, { prompt_tokens: direct.usage.promptTokens, completion_tokens: direct.usage.completionTokens, total_tokens: direct.usage.totalTokens });

  const st = await post(ctx, '/v1/completions', { ...body, stream: true, stream_options: { include_usage: true } });
  assert.is(st.status, 200);
  assert.match(st.headers.get('content-type')!, /^text\/event-stream/);
  const ev = events(await st.text());
  assert.ok(ev.done, 'ends with data: [DONE]');
  const pieces = ev.data.filter((d) => d.choices.length > 0);
  assert.is(pieces.map((d) => d.choices[0].text).join(''), direct.text);
  assert.equal(pieces.flatMap((d) => d.choices[0].token_ids ?? []), direct.tokens);
  assert.is(pieces.at(-1)!.choices[0].finish_reason, 'length');
  assert.is(ev.data.at(-1)!.usage.completion_tokens, 6);

  // token ids as the prompt, and a stop string
  const ids = await post(ctx, '/v1/completions', { prompt: [1, 5, 6, 7], max_tokens: 3 });
  assert.is(((await ids.json()) as any).usage.prompt_tokens, 4);
  const stop = direct.text.slice(2, 4);
  const cut = (await (await post(ctx, '/v1/completions', { ...body, stop })).json()) as any;
  assert.is(cut.choices[0].finish_reason, 'stop');
  assert.is(cut.choices[0].text, direct.text.slice(0, direct.text.indexOf(stop)));
});

s('chat completions: the chat template, a message; streamed as deltas after a role chunk', async (ctx) => {
  const messages = [
    { role: 'system', content: 'be brief' },
    { role: 'user', content: 'hello' },
  ];
  const res = await post(ctx, '/v1/chat/completions', { messages, max_tokens: 5, temperature: 0 });
  assert.is(res.status, 200);
  const j = (await res.json()) as any;
  assert.is(j.object, 'chat.completion');
  assert.is(j.choices[0].message.role, 'assistant');
  const direct = await ctx.engine.generate(messages, { maxTokens: 5 }).collect();
  assert.is(j.choices[0].message.content, direct.text);
  assert.is(j.usage.prompt_tokens, direct.usage.promptTokens);

  const st = await post(ctx, '/v1/chat/completions', { messages, max_tokens: 5, temperature: 0, stream: true });
  const ev = events(await st.text());
  assert.ok(ev.done);
  for (const d of ev.data) assert.is(d.object, 'chat.completion.chunk');
  assert.equal(ev.data[0].choices[0].delta, { role: 'assistant', content: '' });
  assert.is(ev.data.map((d) => d.choices[0].delta.content ?? '').join(''), direct.text);
  assert.is(ev.data.at(-1)!.choices[0].finish_reason, direct.finishReason);
  // no max_tokens: as much as the context leaves, at most the server's default
  const open = (await (await post(ctx, '/v1/chat/completions', { messages: [{ role: 'user', content: 'hi' }], temperature: 0, stop: ['\u0000'] })).json()) as any;
  assert.ok(open.usage.completion_tokens <= 512, `within the context: ${JSON.stringify(open.usage)}`);
});

s('models, health, metrics; the API key guards /v1 and /metrics', async (ctx) => {
  const models = (await (await fetch(ctx.url + '/v1/models', { headers: auth })).json()) as any;
  assert.is(models.object, 'list');
  assert.is(models.data[0].id, 'tiny');
  const health = await fetch(ctx.url + '/health');
  assert.is(health.status, 200, 'health needs no key');
  assert.is(((await health.json()) as any).status, 'ok');
  const metrics = await fetch(ctx.url + '/metrics', { headers: auth });
  assert.is(metrics.status, 200);
  const text = await metrics.text();
  for (const name of ['moe_queue_depth', 'moe_running_sequences', 'moe_tokens_per_second', 'moe_time_to_first_token_seconds_bucket', 'moe_generated_tokens_total', 'moe_requests_total'])
    assert.match(text, new RegExp(`^${name}`, 'm'));
  assert.match(text, /^moe_requests_total\{endpoint="\/v1\/completions",status="200"\} \d+/m);
  await expectError(await fetch(ctx.url + '/metrics'), 401, /API key/, 'invalid_api_key');
  await expectError(await fetch(ctx.url + '/v1/models'), 401, /API key/, 'invalid_api_key');
  await expectError(await fetch(ctx.url + '//v1/models'), 401, /API key/, 'invalid_api_key');
  await expectError(await post(ctx, '/v1/completions', { prompt: 'x' }, { authorization: 'Bearer wrong', 'content-type': 'application/json' }), 401, /Incorrect API key/);
});

s('bad requests: 400 with an OpenAI error body; 404, 413, 415', async (ctx) => {
  await expectError(await post(ctx, '/v1/completions', {}), 400, /prompt/, 'invalid_request');
  await expectError(await post(ctx, '/v1/completions', { prompt: 'x', max_tokens: '5' }), 400, /max_tokens/);
  await expectError(await post(ctx, '/v1/completions', { prompt: [1, 'a'] }), 400, /prompt/);
  await expectError(await post(ctx, '/v1/completions', { prompt: [[1, 2], [3]] }), 400, /prompt/);
  await expectError(await post(ctx, '/v1/completions', { prompt: 'x', temperature: 3 }), 400, /temperature/);
  await expectError(await post(ctx, '/v1/completions', { prompt: 'x', n: 2 }), 400, /\bn\b/);
  await expectError(await post(ctx, '/v1/completions', { prompt: [1, 300] }), 400, /token id in \[0, 300\)/);
  await expectError(await post(ctx, '/v1/completions', { prompt: 'x', max_tokens: 5000 }), 400, /maxContext \(2048\)/);
  await expectError(await post(ctx, '/v1/completions', '{"prompt": '), 400, /JSON/i);
  await expectError(await post(ctx, '/v1/chat/completions', { messages: [{ role: 'wizard', content: 'x' }] }), 400, /role/);
  await expectError(await post(ctx, '/v1/chat/completions', { messages: [] }), 400, /messages/);
  await expectError(await post(ctx, '/v1/completions', { prompt: 'x'.repeat(5000) }), 413, /larger than 4096 bytes/, 'request_too_large');
  await expectError(await post(ctx, '/v1/completions', 'prompt=x', { ...auth, 'content-type': 'text/plain' }), 415, /JSON/);
  await expectError(await fetch(ctx.url + '/v1/completions', { headers: auth }), 404, /no route GET \/v1\/completions/, 'not_found');
  assert.is(ctx.engine.stats.running + ctx.engine.stats.waiting, 0, 'nothing was queued');
});

s('overload: 429 with Retry-After when the queue is full; a client that disconnects cancels its sequence', async (ctx) => {
  // maxSequences 2 + maxQueued 1: three long streams fill the engine (1500 tokens: running for
  // hundreds of steps, until the clients go away)
  const acs = [0, 1, 2].map(() => new AbortController());
  const streams = await Promise.all(acs.map((ac, i) => post(ctx, '/v1/completions', { prompt: [1, 2, 3, i], max_tokens: 1500, temperature: 0, stream: true }, auth, ac.signal)));
  for (const r of streams) assert.is(r.status, 200);
  await until(() => ctx.engine.stats.running === 2 && ctx.engine.stats.waiting === 1, 'two run, one waits');
  const over = await post(ctx, '/v1/completions', { prompt: 'x', max_tokens: 2 });
  assert.is(over.headers.get('retry-after'), '1');
  await expectError(over, 429, /the engine is full/, 'rate_limit_exceeded');
  // read a little of a running stream, then every client goes away
  const reader = streams[0].body!.getReader();
  assert.ok(!(await reader.read()).done);
  for (const ac of acs) ac.abort();
  await until(() => ctx.engine.stats.running + ctx.engine.stats.waiting === 0, 'the disconnected sequences were cancelled');
  assert.is(ctx.engine.stats.usedBlocks, 0, 'their blocks are free');
  assert.ok(ctx.engine.stats.cancelled >= 3);
  // and the server takes requests again
  assert.is((await post(ctx, '/v1/completions', { prompt: 'x', max_tokens: 2 })).status, 200);
  // a client of a non-streamed request that goes away cancels it too
  const ac = new AbortController();
  const pending = post(ctx, '/v1/chat/completions', { messages: [{ role: 'user', content: 'hi' }], max_tokens: 1500, temperature: 0 }, auth, ac.signal).catch((e: Error) => e);
  await until(() => ctx.engine.stats.running === 1, 'the request runs');
  ac.abort();
  assert.instance(await pending, Error);
  await until(() => ctx.engine.stats.running + ctx.engine.stats.waiting === 0, 'the non-streamed request was cancelled');
  assert.is(ctx.engine.stats.usedBlocks, 0);
});

/** Starts `moe-kernels serve` (through tsx) and resolves to the child and the URL it prints. */
function startCli(args: string[], env: Record<string, string> = {}): Promise<{ child: ChildProcess; url: string; err: () => string }> {
  const root = path.join(__dirname, '..');
  const child = spawn(process.execPath, ['-r', 'tsx/cjs', '-e', `require('./lib/cli/cli.ts').main(process.argv.slice(1)).then((c) => { process.exitCode = c; })`, 'serve', ...args], {
    cwd: root,
    env: { ...process.env, ...env },
  });
  let out = '';
  let err = '';
  child.stderr!.on('data', (b) => (err += b));
  return new Promise((resolve, reject) => {
    child.stdout!.on('data', (b) => {
      out += b;
      const m = out.match(/listening on (http:\/\/[^ ]+) /);
      if (m) resolve({ child, url: m[1], err: () => err });
    });
    child.on('exit', (code) => reject(new Error(`serve exited with ${code}: ${out}${err}`)));
  });
}

s('moe-kernels serve: 127.0.0.1 by default, MOE_KERNELS_API_KEY; SIGTERM finishes the running stream, refuses new connections and exits 0', async (ctx) => {
  const { child, url, err } = await startCli([ctx.dir, '--port', '0', '--max-context', '200', '--backend', 'cpu'], { MOE_KERNELS_API_KEY: 'env-key' });
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  try {
    assert.match(url, /^http:\/\/127\.0\.0\.1:\d+$/);
    const headers = { authorization: 'Bearer env-key', 'content-type': 'application/json' };
    assert.is((await fetch(url + '/v1/models', { headers: { authorization: 'Bearer nope' } })).status, 401);
    const models = (await (await fetch(url + '/v1/models', { headers })).json()) as any;
    assert.is(models.data[0].id, path.basename(ctx.dir));
    // a stream long enough to be running when SIGTERM comes
    const res = await fetch(url + '/v1/completions', { method: 'POST', headers, body: JSON.stringify({ prompt: [1, 2, 3], max_tokens: 150, temperature: 0, stream: true }) });
    const reader = res.body!.getReader();
    let text = new TextDecoder().decode((await reader.read()).value);
    child.kill('SIGTERM');
    for (;;) {
      const r = await reader.read();
      if (r.done) break;
      text += new TextDecoder().decode(r.value);
    }
    const ev = events(text);
    assert.ok(ev.done, 'the stream ends with [DONE]');
    assert.is(ev.data.at(-1)!.choices[0].finish_reason, 'length', 'it ran to its end within the grace period');
    assert.is(ev.data.flatMap((d) => d.choices[0].token_ids ?? []).length, 150);
    assert.is(await exited, 0, err());
    assert.match(err(), /SIGTERM: no new requests/);
    await fetch(url + '/health').then(
      () => assert.unreachable('the server still listens'),
      (e: Error) => assert.instance(e, TypeError),
    );
  } finally {
    if (child.exitCode === null) child.kill('SIGKILL');
  }
});

s('moe-kernels serve: bad flags are usage errors (exit 2)', async () => {
  const root = path.join(__dirname, '..');
  const run = (args: string[]) =>
    new Promise<{ code: number | null; err: string }>((resolve) => {
      const c = spawn(process.execPath, ['-r', 'tsx/cjs', '-e', `require('./lib/cli/cli.ts').main(process.argv.slice(1)).then((c) => { process.exitCode = c; })`, 'serve', ...args], { cwd: root });
      let err = '';
      c.stderr.on('data', (b) => (err += b));
      c.on('exit', (code) => resolve({ code, err }));
    });
  const bad = await run(['--port', '70000']);
  assert.is(bad.code, 2);
  assert.match(bad.err, /--port must be at most 65535/);
  const two = await run(['a', 'b']);
  assert.is(two.code, 2);
  assert.match(two.err, /at most one argument/);
});

s.run();
