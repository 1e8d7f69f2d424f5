#!/usr/bin/env node
'use strict';
// The serving row of the bench: the OpenAI-compatible server (MoeServer over an Engine) on a
// loopback port, driven by a small streaming client of its own (fetch, SSE) at several
// concurrencies. Each level starts `c` clients at once, each sending `--requests` completions one
// after the other (token-id prompts, greedy, a fixed number of new tokens: no end-of-sequence).
// Prints per level: aggregate generated tokens/s (prefill time included), the decode rate of the c
// streams (c / median time per output token), time to first token p50/p95/p99, time per output
// token p50/p99, errors; and checks that one seeded request gives the same tokens at every level as
// alone. Writes JSON (bench/results/serve.json).
//
//   node bench/serve.js [--ci | --quick] [--concurrency 1,4,16,64] [--prompt 128] [--new 64]
//                       [--requests 1] [--dtype bfloat16|float32] [--backend auto|cpu|cuda] [--json path]
//   node bench/run.js --serve [same options]
const fs = require('node:fs');
const path = require('node:path');
const os = require('node:os');
const util = require('node:util');

const { root, note, collect, peakRssBytes, progress, randomMatrix, seedOf } = require('./common');
const { SHAPES, configOf, layerWeights, normWeight, UsageError } = require('./model');

const HELP = `usage: node bench/serve.js [options]      (node bench/run.js --serve [options])

  --ci                a tiny model, concurrency 1,4, 16-token prompts, 8 new tokens: a smoke run
  --quick             the scaled model, concurrency 1,8,32, 32-token prompts, 16 new tokens
  --concurrency LIST  clients at once, default 1,4,16,64
  --prompt N          prompt tokens, default 128
  --new N             new tokens per request, default 64
  --requests N        requests each client sends in turn, default 1
  --soak SECONDS      then a soak: 16 clients (at most the largest level) for SECONDS, random
                      lengths, 30% of the requests cancelled by their client at a random time;
                      RSS sampled each second, every request answered once, no block left
  --max-batch-tokens N  the engine's step budget (decode tokens + prefill chunks), default the
                      engine's: max(256, largest level); a burst of c prompts that fits one step
                      is prefilled before any of them decodes (TTFT up, TPOT p99 down)
  --dtype T           weight type: bfloat16 (default) or float32
  --backend B         auto (default), cpu, cuda, cuda-emu
  --json PATH         default bench/results/serve.json
  --help              this text`;

function parseArgs(argv) {
  let values;
  try {
    ({ values } = util.parseArgs({
      args: argv,
      options: {
        serve: { type: 'boolean' },
        ci: { type: 'boolean', default: false },
        quick: { type: 'boolean', default: false },
        concurrency: { type: 'string' },
        prompt: { type: 'string' },
        new: { type: 'string' },
        requests: { type: 'string' },
        'max-batch-tokens': { type: 'string' },
        soak: { type: 'string' },
        dtype: { type: 'string', default: 'bfloat16' },
        backend: { type: 'string', default: 'auto' },
        json: { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
    }));
  } catch (e) {
    throw new UsageError(`${e.message} (--help lists the options)`);
  }
  const int = (v, name) => {
    if (v === undefined) return null;
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1) throw new UsageError(`--${name} needs a positive integer, got ${JSON.stringify(v)}`);
    return n;
  };
  const dtype = { f32: 'float32', float32: 'float32', bf16: 'bfloat16', bfloat16: 'bfloat16' }[values.dtype.toLowerCase()];
  if (!dtype) throw new UsageError(`--dtype must be bfloat16 or float32, got ${JSON.stringify(values.dtype)}`);
  if (!['auto', 'cpu', 'cuda', 'cuda-emu'].includes(values.backend)) throw new UsageError(`--backend: ${JSON.stringify(values.backend)} is not one of auto, cpu, cuda, cuda-emu`);
  const mode = values.ci ? 'ci' : values.quick ? 'quick' : 'full';
  const preset = { ci: { c: [1, 4], prompt: 16, new: 8 }, quick: { c: [1, 8, 32], prompt: 32, new: 16 }, full: { c: [1, 4, 16, 64], prompt: 128, new: 64 } }[mode];
  const levels = values.concurrency ? values.concurrency.split(',').map((s) => int(s.trim(), 'concurrency')) : preset.c;
  return {
    help: values.help,
    mode,
    dtype,
    backend: values.backend,
    shape: SHAPES[mode === 'ci' ? 'tiny' : 'scaled'],
    levels: [...new Set(levels)].sort((a, b) => a - b),
    prompt: int(values.prompt, 'prompt') ?? preset.prompt,
    newTokens: int(values.new, 'new') ?? preset.new,
    requests: int(values.requests, 'requests') ?? 1,
    soakSeconds: int(values.soak, 'soak') ?? 0,
    maxBatchTokens: int(values['max-batch-tokens'], 'max-batch-tokens') ?? undefined,
    json: path.resolve(values.json ?? path.join(root, 'bench', 'results', 'serve.json')),
  };
}

const pct = (xs, p) => {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)];
};

/** One streamed completion: its token ids, time to first token and gaps between tokens (seconds). */
async function streamCompletion(url, body, signal) {
  const t0 = performance.now();
  let res;
  try {
    res = await fetch(url + '/v1/completions', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ ...body, stream: true }), signal });
  } catch (e) {
    return signal?.aborted ? { aborted: true, tokens: [] } : { error: e.message };
  }
  if (res.status !== 200) return { error: `HTTP ${res.status}: ${(await res.text()).slice(0, 200)}` };
  try {
    return await readStream(res, t0);
  } catch (e) {
    return signal?.aborted ? { aborted: true, tokens: [] } : { error: e.message };
  }
}

async function readStream(res, t0) {
  if (res.status !== 200) return { error: `HTTP ${res.status}: ${(await res.text()).slice(0, 200)}` };
  const tokens = [];
  const times = [];
  let buf = '';
  let done = false;
  const dec = new TextDecoder();
  for await (const part of res.body) {
    buf += dec.decode(part, { stream: true });
    let at;
    while ((at = buf.indexOf('\n\n')) >= 0) {
      const ev = buf.slice(0, at);
      buf = buf.slice(at + 2);
      if (!ev.startsWith('data: ')) continue;
      const data = ev.slice(6);
      if (data === '[DONE]') {
        done = true;
        continue;
      }
      const j = JSON.parse(data);
      if (j.error) return { error: j.error.message };
      const ids = j.choices[0]?.token_ids ?? [];
      for (const id of ids) {
        tokens.push(id);
        times.push(performance.now());
      }
    }
  }
  if (!done) return { error: 'the stream ended without data: [DONE]' };
  const ttft = (times[0] - t0) / 1000;
  const gaps = times.slice(1).map((t, i) => (t - times[i]) / 1000);
  return { tokens, ttft, gaps };
}

async function runServe(argv) {
  const opts = parseArgs(argv);
  if (opts.help) {
    console.log(HELP);
    return;
  }
  const lib = require('./common').lib();
  const started = Date.now();
  const s = opts.shape;
  const config = configOf(s);
  const info = lib.backendInfo();
  const maxC = Math.max(...opts.levels);
  console.log(`# serving: ${s.title}: ${s.layers} layers, d=${s.d}, f=${s.f}, E=${s.E}, k=${s.k}, heads ${s.heads}/${s.kvHeads}, vocab ${s.vocab}; ${opts.dtype} weights`);
  console.log(`# ${os.cpus()[0].model.trim()}, ${info.cpu.threads} compute threads; backend: ${opts.backend}; ${info.reason}`);
  console.log(`# ${opts.prompt}-token prompts, ${opts.newTokens} new tokens (greedy), ${opts.requests} request(s) per client; server on 127.0.0.1, client: fetch + SSE in the same process`);
  const p = progress('serve: weights', s.layers);
  const globals = {
    embedTokens: randomMatrix(opts.dtype, s.vocab, s.d, seedOf('model', 'embed')),
    norm: normWeight(opts.dtype, s.d, seedOf('model', 'norm')),
    lmHead: randomMatrix(opts.dtype, s.vocab, s.d, seedOf('model', 'lm_head')),
  };
  const model = await lib.MixtralModel.fromWeights(config, { globals, layers: layerWeights(config, opts.dtype, (i) => p.tick(i, `layer ${i}/${s.layers}`)) }, { backend: opts.backend, maxSeq: 1 });
  p.done(`${s.layers} layers built on ${model.backend}, ${(model.bytes / 1e9).toFixed(2)} GB`);
  collect();
  const maxContext = opts.prompt + opts.newTokens;
  const engine = await lib.Engine.create(model, { maxSequences: maxC, maxQueued: maxC, maxContext, numBlocks: Math.ceil(maxContext / 16) * maxC + 2, ...(opts.maxBatchTokens ? { maxBatchTokens: opts.maxBatchTokens } : {}) });
  console.log(`# engine: maxSequences ${engine.maxSequences}, maxBatchTokens ${engine.maxBatchTokens}`);
  const server = new lib.MoeServer(engine, { modelName: 'bench' });
  const { url } = await server.listen({ port: 0 });
  const promptOf = (i) => Array.from({ length: opts.prompt }, (_, j) => (j * 7919 + i * 104729 + 13) % s.vocab);
  const body = (i) => ({ prompt: promptOf(i), max_tokens: opts.newTokens, temperature: 0 });
  // the probe: one seeded request, sampled, whose tokens must not depend on the level
  const probeBody = { prompt: promptOf(999), max_tokens: opts.newTokens, temperature: 0.8, top_k: 40, seed: 7 };
  try {
    await streamCompletion(url, { ...body(0), max_tokens: 2 }); // warm-up
    const alone = await streamCompletion(url, probeBody);
    if (alone.error) throw new Error(`the probe request failed: ${alone.error}`);
    const levels = [];
    for (const c of opts.levels) {
      const before = engine.stats;
      const t0 = performance.now();
      const results = [];
      let probe = null;
      await Promise.all(
        Array.from({ length: c }, async (_, w) => {
          for (let r = 0; r < opts.requests; r++) {
            // client 0's first request is the probe (seeded): at this level, among c - 1 others
            const isProbe = w === 0 && r === 0;
            const out = await streamCompletion(url, isProbe ? probeBody : body(1 + w * opts.requests + r));
            if (isProbe) probe = out;
            results.push(out);
          }
        }),
      );
      const wall = (performance.now() - t0) / 1000;
      const ok = results.filter((x) => !x.error);
      const generated = ok.reduce((n, x) => n + x.tokens.length, 0);
      const ttfts = ok.map((x) => x.ttft);
      const gaps = ok.flatMap((x) => x.gaps);
      const tpots = ok.filter((x) => x.gaps.length > 0).map((x) => x.gaps.reduce((a, b) => a + b, 0) / x.gaps.length);
      const row = {
        concurrency: c,
        requests: results.length,
        errors: results.length - ok.length,
        errorSamples: results.filter((x) => x.error).slice(0, 3).map((x) => x.error),
        wallSeconds: wall,
        generatedTokens: generated,
        tokensPerSecond: generated / wall,
        // the decode rate of c streams at once: c / the median time per output token
        decodeTokensPerSecond: c / pct(tpots, 50),
        ttftP50: pct(ttfts, 50),
        ttftP95: pct(ttfts, 95),
        ttftP99: pct(ttfts, 99),
        tpotP50: pct(tpots, 50),
        tpotP99: pct(tpots, 99),
        interTokenP99: pct(gaps, 99),
        // the stream with the longest time per output token: its first token, and its longest gap
        // (the steps that prefilled the others' prompts while it decoded)
        slowest: (() => {
          const x = ok.filter((r) => r.gaps.length > 0).sort((a, b) => b.gaps.reduce((m, g) => m + g, 0) / b.gaps.length - a.gaps.reduce((m, g) => m + g, 0) / a.gaps.length)[0];
          return x ? { ttft: x.ttft, tpot: x.gaps.reduce((m, g) => m + g, 0) / x.gaps.length, longestGap: Math.max(...x.gaps) } : null;
        })(),
        steps: engine.stats.steps - before.steps,
        sameAsAlone: !!probe && !probe.error && probe.tokens.join(',') === alone.tokens.join(','),
      };
      levels.push(row);
      note(`c=${c}: ${row.requests} requests in ${wall.toFixed(2)} s, ${row.tokensPerSecond.toFixed(1)} tokens/s, ${row.errors} errors`);
    }
    const fmt = (x, d = 1) => (Number.isFinite(x) ? x.toFixed(d) : '-');
    const head = ['concurrency', 'requests', 'tokens/s', 'x c=1', 'decode tokens/s', 'x c=1', 'TTFT p50', 'TTFT p95', 'TTFT p99', 'TPOT p50', 'TPOT p99', 'errors', 'same as alone'];
    const base = levels[0];
    const rows = levels.map((r) => [
      String(r.concurrency),
      String(r.requests),
      fmt(r.tokensPerSecond),
      fmt(r.tokensPerSecond / base.tokensPerSecond, 2),
      fmt(r.decodeTokensPerSecond),
      fmt(r.decodeTokensPerSecond / base.decodeTokensPerSecond, 2),
      `${fmt(r.ttftP50 * 1000, 0)} ms`,
      `${fmt(r.ttftP95 * 1000, 0)} ms`,
      `${fmt(r.ttftP99 * 1000, 0)} ms`,
      `${fmt(r.tpotP50 * 1000)} ms`,
      `${fmt(r.tpotP99 * 1000)} ms`,
      String(r.errors),
      r.sameAsAlone ? 'yes' : 'NO',
    ]);
    const widths = head.map((_, i) => Math.max(...[head, ...rows].map((r) => r[i].length)));
    for (const r of [head, ...rows]) console.log(r.map((x, i) => (i === 0 ? x.padEnd(widths[i]) : x.padStart(widths[i]))).join('  '));
    for (const r of levels.filter((l) => l.concurrency > 1 && l.slowest))
      console.log(`c=${r.concurrency}: slowest stream: TTFT ${fmt(r.slowest.ttft * 1000, 0)} ms, TPOT ${fmt(r.slowest.tpot * 1000)} ms, longest gap ${fmt(r.slowest.longestGap * 1000, 0)} ms`);
    // the targets, where the levels were run (base: concurrency 1)
    const at16 = levels.find((r) => r.concurrency === 16);
    const targets = [];
    if (base.concurrency === 1 && at16) {
      targets.push({ name: 'decode tokens/s at concurrency 16 >= 4x concurrency 1', value: at16.decodeTokensPerSecond / base.decodeTokensPerSecond, pass: at16.decodeTokensPerSecond >= 4 * base.decodeTokensPerSecond });
      targets.push({ name: 'p99 TPOT at concurrency 16 <= 3x concurrency 1', value: at16.tpotP99 / base.tpotP99, pass: at16.tpotP99 <= 3 * base.tpotP99 });
    }
    targets.push({ name: 'no errors below maxQueued', value: levels.reduce((n, r) => n + r.errors, 0), pass: levels.every((r) => r.errors === 0) });
    targets.push({ name: 'the seeded probe gives the same tokens at every level as alone', value: levels.filter((r) => !r.sameAsAlone).length, pass: levels.every((r) => r.sameAsAlone) });
    for (const t of targets) console.log(`${t.pass ? 'PASS' : 'MISS'}  ${t.name} (${typeof t.value === 'number' && !Number.isInteger(t.value) ? t.value.toFixed(2) : t.value})`);
    const soak = opts.soakSeconds > 0 ? await runSoak(url, engine, opts, promptOf, Math.min(16, maxC)) : null;
    if (soak) targets.push({ name: 'soak: every request answered once, none lost, no KV block left', value: soak.lost + soak.duplicated, pass: soak.lost === 0 && soak.duplicated === 0 && soak.blocksLeft === 0 && soak.errors === 0 });
    const result = {
      schema: 'moe-kernels-bench-serve/1',
      date: new Date().toISOString(),
      mode: opts.mode,
      shape: s,
      dtype: opts.dtype,
      backend: model.backend,
      cpu: { model: os.cpus()[0].model.trim(), ...info.cpu },
      promptTokens: opts.prompt,
      newTokens: opts.newTokens,
      requestsPerClient: opts.requests,
      levels,
      soak,
      targets,
      engine: engine.stats,
      peakRssBytes: peakRssBytes(),
      wallSeconds: (Date.now() - started) / 1000,
    };
    fs.mkdirSync(path.dirname(opts.json), { recursive: true });
    fs.writeFileSync(opts.json, JSON.stringify(result, null, 2) + '\n');
    const rel = path.relative(process.cwd(), opts.json);
    console.log(`JSON: ${rel && !rel.startsWith('..') ? rel : opts.json}`);
  } finally {
    await server.shutdown({ graceMs: 0 });
    await engine.close();
    model.dispose();
  }
}

/**
 * `clients` loops of requests for opts.soakSeconds: random prompt and output lengths, 30% aborted
 * by the client after a random delay. Every request must end exactly once (done, aborted, or an
 * error), the server must end as many sequences as it accepted, and no KV block may stay in use.
 */
async function runSoak(url, engine, opts, promptOf, clients) {
  const before = engine.stats;
  const rss = [];
  const sample = setInterval(() => rss.push(process.memoryUsage().rss), 1000);
  const deadline = Date.now() + opts.soakSeconds * 1000;
  let rnd = 12345;
  const rand = () => ((rnd = (Math.imul(rnd, 1103515245) + 12345) >>> 0) / 4294967296);
  const outcomes = new Map(); // request number -> how many times it ended
  const counts = { done: 0, aborted: 0, errors: 0 };
  let n = 0;
  note(`soak: ${clients} clients for ${opts.soakSeconds} s`);
  try {
    await Promise.all(
      Array.from({ length: clients }, async () => {
        while (Date.now() < deadline) {
          const id = n++;
          const ac = new AbortController();
          const cancel = rand() < 0.3;
          const timer = cancel ? setTimeout(() => ac.abort(), Math.floor(rand() * 400)) : null;
          const body = { prompt: promptOf(id).slice(0, 1 + Math.floor(rand() * opts.prompt)), max_tokens: 1 + Math.floor(rand() * opts.newTokens), temperature: 0.8, seed: id };
          const out = await streamCompletion(url, body, ac.signal);
          if (timer) clearTimeout(timer);
          outcomes.set(id, (outcomes.get(id) ?? 0) + 1);
          if (out.aborted) counts.aborted++;
          else if (out.error) counts.errors++;
          else counts.done++;
        }
      }),
    );
  } finally {
    clearInterval(sample);
  }
  await engine.drain();
  const after = engine.stats;
  const ended = after.finished + after.cancelled + after.failed - (before.finished + before.cancelled + before.failed);
  const lost = [...Array(n).keys()].filter((i) => !outcomes.has(i)).length;
  const duplicated = [...outcomes.values()].filter((v) => v > 1).length;
  const warm = rss.slice(Math.floor(rss.length / 4)); // after the first quarter: caches and pools warm
  const mb = (b) => b / 1e6;
  const result = {
    seconds: opts.soakSeconds,
    clients,
    requests: n,
    ...counts,
    serverEnded: ended,
    lost,
    duplicated,
    blocksLeft: after.usedBlocks,
    rssMB: { first: mb(warm[0] ?? 0), last: mb(warm.at(-1) ?? 0), max: mb(Math.max(...warm, 0)), min: mb(Math.min(...warm, Infinity)) },
  };
  console.log(
    `soak: ${n} requests in ${opts.soakSeconds} s (${counts.done} done, ${counts.aborted} cancelled by their client, ${counts.errors} errors); ` +
      `server ended ${ended} sequences; lost ${lost}, answered twice ${duplicated}, KV blocks left ${after.usedBlocks}; ` +
      `RSS after warm-up ${result.rssMB.first.toFixed(0)} -> ${result.rssMB.last.toFixed(0)} MB (min ${result.rssMB.min.toFixed(0)}, max ${result.rssMB.max.toFixed(0)})`,
  );
  return result;
}

module.exports = { runServe };

if (require.main === module)
  runServe(process.argv.slice(2)).catch((e) => {
    console.error(e instanceof UsageError ? `bench: ${e.message}` : `bench: ${e && e.stack ? e.stack : e}`);
    process.exit(1);
  });
