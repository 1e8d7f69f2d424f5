'use strict';
// The expert-parallel bench (node bench/run.js --expert-parallel): the MoE layer on N MPI ranks of
// one compute thread each against one process of N threads, on the same total tokens (each rank
// routes T tokens, the single process N·T), for capacity factors 1.0, 1.25 and dropless. Per call
// it reports the time, the tokens per second, and the all-to-all traffic of a rank: bytes sent to
// the other ranks and the time spent in the three all-to-all calls (counts, rows out, rows back).
//
// The parent spawns the two workers one after the other (never both at once): the single process
// with MOE_NUM_THREADS=N, and `mpirun -np N` with MOE_NUM_THREADS=1 on each rank. Each EP rank makes
// only its own experts' weights (the layer reads nothing else), so memory per rank is its share.
//
//   node bench/run.js --expert-parallel [--ci] [--shape scaled|tiny] [--tokens 64,512] [--ranks 2]
//                     [--dtype float32|bfloat16] [--budget s] [--json path]
const fs = require('node:fs');
const path = require('node:path');
const { spawnSync } = require('node:child_process');
const { root, SHAPES, forEachOption, lib, note, randomMatrix, seedOf } = require('./common');

const HELP = `usage: node bench/run.js --expert-parallel [options]

  --ranks N          MPI ranks, each with one compute thread, against one process of N threads (default 2)
  --shape NAME       scaled (default: d=1024 f=3584 E=8 k=2) | tiny
  --tokens LIST      tokens per rank T (the single process gets N*T), default 16,128,512
  --dtype T          weight type, float32 (default) or bfloat16
  --budget SECONDS   time per row, default 1.5 (--ci 0.1)
  --json PATH        where the JSON goes, default bench/results/expert-parallel.json
  --model            also the whole-model row: the scaled Mixtral of bench/model.js (4 layers, d=1024,
                     vocab 32000), each rank generating its own sequence (--prompt tokens, then --decode)
                     against one process generating the same sequences one after the other
  --prompt N         prompt tokens of the model row, default 64 (--ci 8)
  --decode N         decode steps of the model row, default 16 (--ci 2)
  --ci               a smoke run: tiny layer, T=1,8
  --help             this text

Needs Open MPI (mpirun); without it the bench says so and exits 0.`;

class UsageError extends Error {}

function parseArgs(argv) {
  const o = { ranks: 2, shape: 'scaled', tokens: null, dtype: 'float32', budget: null, json: null, ci: false, help: false, worker: null, config: null, model: false, prompt: null, decode: null };
  forEachOption(argv, (a, val) => {
    switch (a) {
      case '--expert-parallel': break;
      case '--ranks': o.ranks = Number(val()); if (!Number.isInteger(o.ranks) || o.ranks < 1 || o.ranks > 64) throw new UsageError('--ranks must be an integer in [1, 64]'); break;
      case '--shape': o.shape = val(); if (!['scaled', 'tiny'].includes(o.shape)) throw new UsageError(`--shape must be scaled or tiny, got ${o.shape}`); break;
      case '--tokens': o.tokens = val().split(',').map(Number); if (o.tokens.some((t) => !Number.isInteger(t) || t < 1)) throw new UsageError('--tokens must be positive integers'); break;
      case '--dtype': o.dtype = val(); if (!['float32', 'bfloat16'].includes(o.dtype)) throw new UsageError(`--dtype must be float32 or bfloat16, got ${o.dtype}`); break;
      case '--budget': o.budget = Number(val()); if (!(o.budget > 0)) throw new UsageError('--budget must be > 0'); break;
      case '--json': o.json = val(); break;
      case '--ci': o.ci = true; break;
      case '--model': o.model = true; break;
      case '--prompt': o.prompt = Number(val()); if (!Number.isInteger(o.prompt) || o.prompt < 1) throw new UsageError('--prompt must be a positive integer'); break;
      case '--decode': o.decode = Number(val()); if (!Number.isInteger(o.decode) || o.decode < 1) throw new UsageError('--decode must be a positive integer'); break;
      case '--help': case '-h': o.help = true; break;
      case '--worker': o.worker = val(); break;
      case '--config': o.config = JSON.parse(val()); break;
      default: throw new UsageError(`unknown option ${a}`);
    }
  });
  return o;
}

const FACTORS = [1.0, 1.25, undefined]; // undefined: dropless

/** Median seconds per call of fn over `budget` seconds (at least 3 calls), after one warm-up. */
async function timeIt(fn, budget) {
  await fn();
  const t = [];
  const end = process.hrtime.bigint() + BigInt(Math.round(budget * 1e9));
  do {
    const t0 = process.hrtime.bigint();
    await fn();
    t.push(Number(process.hrtime.bigint() - t0) / 1e9);
  } while (t.length < 3 || process.hrtime.bigint() < end);
  return { seconds: t.sort((a, b) => a - b)[t.length >> 1], calls: t.length + 1 };
}

/** The layer's weights; with `only` = [start, end), the other experts are null (never read). */
function weights(c, only) {
  const { d, f, E } = c.shape;
  const gate = randomMatrix(c.dtype, E, d, seedOf('ep', 'gate'));
  const w1 = [], w3 = [], w2 = [];
  for (let e = 0; e < E; e++) {
    const mine = !only || (e >= only[0] && e < only[1]);
    w1.push(mine ? randomMatrix(c.dtype, f, d, seedOf('ep', 'w1', e)) : null);
    w3.push(mine ? randomMatrix(c.dtype, f, d, seedOf('ep', 'w3', e)) : null);
    w2.push(mine ? randomMatrix(c.dtype, d, f, seedOf('ep', 'w2', e)) : null);
  }
  return { gate, w1, w3, w2 };
}

/** Activations of one rank (different per rank, ~U(-1,1)). */
function input(T, d, rank) {
  const x = randomMatrix('float32', T, d, seedOf('ep', 'x', T, rank));
  const s = Math.sqrt(d); // randomMatrix scales by 1/sqrt(cols)
  for (let i = 0; i < x.data.length; i++) x.data[i] *= s;
  return x;
}

/** The scaled Mixtral of bench/model.js, its layers made on demand; experts outside `only` are null. */
function modelWeights(c, only) {
  const M = require('./model');
  const s = M.SHAPES[c.modelShape];
  const config = M.configOf(s);
  const dt = c.dtype;
  const { hiddenSize: d, intermediateSize: f, numExperts: E, headDim: hd } = config;
  const q = config.numAttentionHeads * hd, kv = config.numKeyValueHeads * hd;
  function* layers() {
    for (let i = 0; i < config.numHiddenLayers; i++) {
      const m = (name, rows, cols) => randomMatrix(dt, rows, cols, seedOf('model', i, name));
      const experts = (name, rows, cols) => Array.from({ length: E }, (_, e) => (!only || (e >= only[0] && e < only[1]) ? m(`${name}.${e}`, rows, cols) : null));
      yield {
        index: i,
        inputLayernorm: M.normWeight(dt, d, seedOf('model', i, 'in')),
        postAttentionLayernorm: M.normWeight(dt, d, seedOf('model', i, 'post')),
        attention: { qProj: m('q', q, d), kProj: m('k', kv, d), vProj: m('v', kv, d), oProj: m('o', d, q) },
        moe: { gate: m('gate', E, d), w1: experts('w1', f, d), w3: experts('w3', f, d), w2: experts('w2', d, f) },
      };
    }
  }
  const globals = {
    embedTokens: randomMatrix(dt, s.vocab, s.d, seedOf('model', 'embed')),
    norm: M.normWeight(dt, s.d, seedOf('model', 'norm')),
    lmHead: randomMatrix(dt, s.vocab, s.d, seedOf('model', 'lm_head')),
  };
  return { config, shape: s, globals, layers: layers() };
}

/** Rank r's prompt: different per rank. */
const promptOf = (c, r, vocab) => Array.from({ length: c.prompt }, (_, i) => (i * 7919 + 13 + 101 * r) % vocab);

async function generate(model, prompt, decode) {
  const t0 = process.hrtime.bigint();
  let n = 0;
  for await (const _ of model.generate(prompt, { maxNewTokens: decode + 1 })) n++;
  return { seconds: Number(process.hrtime.bigint() - t0) / 1e9, tokens: n };
}

async function modelWorker(o, group) {
  const L = lib();
  const c = o.config;
  const maxSeq = c.prompt + c.decode + 2;
  if (!group) {
    const w = modelWeights(c);
    const model = await L.MixtralModel.fromWeights(w.config, { globals: w.globals, layers: w.layers }, { maxSeq, backend: 'cpu' });
    await generate(model, promptOf(c, 0, w.shape.vocab).slice(0, 4), 1); // warm-up
    const t0 = process.hrtime.bigint();
    for (let r = 0; r < c.ranks; r++) await generate(model, promptOf(c, r, w.shape.vocab), c.decode);
    const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
    const bytes = model.bytes;
    model.dispose();
    return { mode: 'single', seconds, sequences: c.ranks, bytes };
  }
  const w = modelWeights(c, L.expertRange(require('./model').SHAPES[c.modelShape].E, group.size, group.rank));
  const model = await L.MixtralModel.fromWeights(w.config, { globals: w.globals, layers: w.layers }, { maxSeq, expertParallel: group });
  await generate(model, promptOf(c, 0, w.shape.vocab).slice(0, 4), 1); // warm-up, every rank alike
  await group.barrier();
  const s0 = group.stats;
  const r = await generate(model, promptOf(c, group.rank, w.shape.vocab), c.decode);
  const s1 = group.stats;
  const max = await group.allReduce(new Float64Array([r.seconds, model.bytes]), 'max');
  const sum = await group.allReduce(new Float64Array([s1.bytesSent - s0.bytesSent, (s1.allToAllMs - s0.allToAllMs) / 1e3]), 'sum');
  model.dispose();
  return { mode: 'ep', seconds: max[0], sequences: group.size, bytes: max[1], bytesSentPerRank: sum[0] / group.size, allToAllSeconds: sum[1] / group.size };
}

async function worker(o) {
  const L = lib();
  const c = o.config;
  if (c.onlyModel) {
    if (o.worker === 'single') console.log('EPBENCH ' + JSON.stringify({ rows: [], model: await modelWorker(o, null) }));
    else {
      const group = await L.ProcessGroup.init();
      const m = await modelWorker(o, group);
      if (group.rank === 0) console.log('EPBENCH ' + JSON.stringify({ rows: [], model: m, library: group.library }));
      await group.close();
    }
    return;
  }
  const rows = [];
  if (o.worker === 'single') {
    const w = weights(c);
    for (const factor of FACTORS) {
      const layer = await L.MoeLayer.create(w, { topK: c.shape.k, ...(factor ? { capacityFactor: factor } : {}) });
      for (const T of c.tokens) {
        // the same tokens as the N ranks together: rank r's T rows, in rank order
        const xs = Array.from({ length: c.ranks }, (_, r) => input(T, c.shape.d, r));
        const x = { type: 'float32', data: new Float32Array(c.ranks * T * c.shape.d), dims: [c.ranks * T, c.shape.d] };
        xs.forEach((p, r) => x.data.set(p.data, r * T * c.shape.d));
        const { seconds } = await timeIt(() => layer.forward(x), c.budget);
        rows.push({ mode: 'single', factor: factor ?? null, T, tokens: c.ranks * T, seconds });
      }
      layer.dispose();
    }
    console.log('EPBENCH ' + JSON.stringify({ rows }));
    return;
  }
  const group = await L.ProcessGroup.init();
  const range = L.expertRange(c.shape.E, group.size, group.rank);
  const w = weights(c, range);
  for (const factor of FACTORS) {
    const layer = await L.MoeLayer.create(w, { topK: c.shape.k, expertParallel: group, ...(factor ? { capacityFactor: factor } : {}) });
    for (const T of c.tokens) {
      const x = input(T, c.shape.d, group.rank);
      await layer.forward(x); // warm-up, also of the comm paths
      // every rank makes the same number of calls: rank 0 decides how many from its first ones
      const p0 = process.hrtime.bigint();
      for (let i = 0; i < 2; i++) await layer.forward(x);
      const probe = Number(process.hrtime.bigint() - p0) / 2e9;
      const n = (await group.broadcast(new Int32Array([Math.min(10000, Math.max(3, Math.round(c.budget / Math.max(probe, 1e-6))))]), 0))[0];
      await group.barrier();
      const s0 = group.stats;
      const t = [];
      for (let i = 0; i < n; i++) {
        const t0 = process.hrtime.bigint();
        await layer.forward(x);
        t.push(Number(process.hrtime.bigint() - t0) / 1e9);
      }
      const s1 = group.stats;
      const mean = t.reduce((a, b) => a + b, 0) / n;
      const mine = new Float64Array([t.sort((a, b) => a - b)[t.length >> 1], (s1.bytesSent - s0.bytesSent) / n, (s1.allToAllMs - s0.allToAllMs) / n / 1e3, mean]);
      const max = await group.allReduce(mine, 'max');
      const sum = await group.allReduce(mine, 'sum');
      rows.push({ mode: 'ep', factor: factor ?? null, T, tokens: group.size * T, seconds: max[0], bytesSentPerRank: sum[1] / group.size, allToAllSeconds: sum[2] / group.size, allToAllSecondsMax: max[2], meanSeconds: sum[3] / group.size });
    }
    layer.dispose();
  }
  if (group.rank === 0) console.log('EPBENCH ' + JSON.stringify({ rows, library: group.library }));
  await group.close();
}

function run(cmd, args, env) {
  const r = spawnSync(cmd, args, { cwd: root, encoding: 'utf8', env: { ...process.env, ...env }, maxBuffer: 1 << 26, timeout: 30 * 60 * 1000 });
  const line = (r.stdout || '').split('\n').find((l) => l.startsWith('EPBENCH '));
  if (r.status !== 0 || !line) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status}${r.signal ? ', ' + r.signal : ''}):\n${r.stdout}\n${r.stderr}`);
  return JSON.parse(line.slice(8));
}

const fmtMs = (s) => (s < 1e-3 ? `${(s * 1e6).toFixed(0)} us` : `${(s * 1e3).toFixed(s < 0.01 ? 2 : 1)} ms`);
const fmtBytes = (b) => (b >= 1 << 20 ? `${(b / (1 << 20)).toFixed(2)} MiB` : b >= 1024 ? `${(b / 1024).toFixed(1)} KiB` : `${Math.round(b)} B`);

async function main(argv) {
  const o = parseArgs(argv);
  if (o.worker) return worker(o);
  if (o.help) return console.log(HELP);
  const mpirun = spawnSync('sh', ['-c', 'command -v mpirun'], { encoding: 'utf8' }).stdout.trim();
  if (!mpirun) {
    console.log('expert-parallel bench: skipped, mpirun not found (apt-get install openmpi-bin libopenmpi-dev)');
    return;
  }
  const shape = o.ci ? SHAPES.tiny : SHAPES[o.shape];
  const config = { shape, dtype: o.dtype, ranks: o.ranks, tokens: o.tokens ?? (o.ci ? [1, 8] : [16, 128, 512]), budget: o.budget ?? (o.ci ? 0.1 : 1.5) };
  const self = path.join(__dirname, 'expert-parallel.js');
  const workerArgs = [self, '--worker', '', '--config', JSON.stringify(config)];
  console.log(`expert-parallel bench: ${shape.title} d=${shape.d} f=${shape.f} E=${shape.E} k=${shape.k}, ${o.dtype} weights; ` +
    `${o.ranks} ranks x 1 thread vs 1 process x ${o.ranks} threads; T tokens per rank (the single process gets ${o.ranks}*T)`);
  note('expert-parallel: the single process');
  workerArgs[2] = 'single';
  const single = run(process.execPath, workerArgs, { MOE_NUM_THREADS: String(o.ranks) });
  note(`expert-parallel: mpirun -np ${o.ranks}`);
  workerArgs[2] = 'ep';
  const isRoot = process.getuid?.() === 0;
  const ep = run(mpirun, ['--oversubscribe', '--bind-to', 'none', ...(isRoot ? ['--allow-run-as-root'] : []), '-x', 'MOE_NUM_THREADS=1', '-np', String(o.ranks), process.execPath, ...workerArgs], {});
  let modelRow = null;
  if (o.model) {
    const mc = { ...config, onlyModel: true, modelShape: o.ci ? 'tiny' : 'scaled', prompt: o.prompt ?? (o.ci ? 8 : 64), decode: o.decode ?? (o.ci ? 2 : 16) };
    const margs = [self, '--worker', 'single', '--config', JSON.stringify(mc)];
    note('expert-parallel: model, the single process');
    const ms = run(process.execPath, margs, { MOE_NUM_THREADS: String(o.ranks) }).model;
    note(`expert-parallel: model, mpirun -np ${o.ranks}`);
    margs[2] = 'ep';
    const me = run(mpirun, ['--oversubscribe', '--bind-to', 'none', ...(isRoot ? ['--allow-run-as-root'] : []), '-x', 'MOE_NUM_THREADS=1', '-np', String(o.ranks), process.execPath, ...margs], {}).model;
    const tokens = o.ranks * (mc.decode + 1);
    modelRow = { shape: mc.modelShape, prompt: mc.prompt, decode: mc.decode, single: ms, ep: me };
    console.log(`\nmodel (${mc.modelShape} Mixtral, ${o.ranks} sequences of ${mc.prompt} prompt + ${mc.decode + 1} new tokens, ${o.dtype}):`);
    console.log('| run | wall time | new tokens/s | weights per process | a2a bytes sent per rank | a2a time per rank |');
    console.log('|---|---:|---:|---:|---:|---:|');
    console.log(`| 1 process x ${o.ranks} threads, sequences one after the other | ${ms.seconds.toFixed(2)} s | ${(tokens / ms.seconds).toFixed(1)} | ${(ms.bytes / 1e9).toFixed(2)} GB | | |`);
    console.log(`| ${o.ranks} ranks x 1 thread, one sequence each | ${me.seconds.toFixed(2)} s | ${(tokens / me.seconds).toFixed(1)} | ${(me.bytes / 1e9).toFixed(2)} GB | ${fmtBytes(me.bytesSentPerRank)} | ${me.allToAllSeconds.toFixed(2)} s |`);
  }
  const rows = [];
  console.log('');
  console.log('| capacity | T/rank | 1 proc x N thr | N ranks x 1 thr | EP/single | a2a bytes sent/rank/call | a2a time/call (mean, max rank) | a2a share |');
  console.log('|---|---:|---:|---:|---:|---:|---:|---:|');
  for (const e of ep.rows) {
    const s = single.rows.find((r) => r.factor === e.factor && r.T === e.T);
    const row = { factor: e.factor, T: e.T, tokens: e.tokens, singleSeconds: s.seconds, epSeconds: e.seconds, bytesSentPerRank: e.bytesSentPerRank, allToAllSeconds: e.allToAllSeconds, allToAllSecondsMax: e.allToAllSecondsMax, epMeanSeconds: e.meanSeconds };
    rows.push(row);
    console.log(`| ${e.factor === null ? 'dropless' : e.factor.toFixed(2)} | ${e.T} | ${fmtMs(s.seconds)} | ${fmtMs(e.seconds)} | ${(e.seconds / s.seconds).toFixed(2)}x | ${fmtBytes(e.bytesSentPerRank)} | ${fmtMs(e.allToAllSeconds)}, ${fmtMs(e.allToAllSecondsMax)} | ${((100 * e.allToAllSeconds) / e.meanSeconds).toFixed(0)}% |`);
  }
  console.log('\na2a time is the wall time of the three all-to-all calls of a forward, waiting included (a rank that');
  console.log('finishes its GEMM first waits there for the slowest one), so it bounds the transfer cost from above;');
  console.log('a2a share is that time over the mean time of a call. Times are medians (EP: of the slowest rank).');
  const out = o.json ?? path.join(root, 'bench', 'results', 'expert-parallel.json');
  fs.mkdirSync(path.dirname(out), { recursive: true });
  fs.writeFileSync(out, JSON.stringify({ bench: 'expert-parallel', config, mpi: ep.library, rows, model: modelRow }, null, 2) + '\n');
  note(`expert-parallel: JSON in ${path.relative(process.cwd(), out)}`);
}

module.exports = { main, UsageError };

if (require.main === module)
  main(process.argv.slice(2)).catch((e) => {
    console.error(e instanceof UsageError ? `bench: ${e.message}\n\n${HELP}` : e.stack || String(e));
    process.exitCode = e instanceof UsageError ? 2 : 1;
  });
