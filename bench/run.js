#!/usr/bin/env node
'use strict';
// The bench: an MoE layer against a dense SwiGLU FFN with the same total parameters (f = E·f_expert)
// and one with the same active parameters (f = k·f_expert), at several token counts T, for f32 and
// bf16 weights. The same run measures the machine's read bandwidth and FMA peak, so every row is
// also a fraction of what this machine can do. Prints tables a person can read and writes JSON a
// machine can read (bench/results/latest.json unless --json says otherwise).
//
// One driver per contender in bench/drivers/; benchmark.js times each (contender, T) as a deferred
// test. Layers are built one at a time and disposed as soon as their rows are done, so the real
// Mixtral layer (5.6 GB of f32 experts) fits next to its dense baseline's generation.
//
//   node bench/run.js [--quick] [--mixtral | --shape scaled|mixtral|tiny] [--tokens 1,8]
//                     [--dtypes float32,bfloat16] [--layers moe,dense-total,dense-active]
//                     [--json path] [--budget s] [--max-call-seconds s] [--ci] [--help]
//   node bench/run.js --model [...]   the whole-model row instead (bench/model.js)
//   node bench/run.js --variants [...]   the routing-variants rows (bench/variants.js --help)
//   node bench/run.js --expert-parallel [...]   MPI ranks against threads (bench/expert-parallel.js)
const fs = require('node:fs');
const path = require('node:path');
const { spawnSync } = require('node:child_process');

const { root, SHAPES, DTYPES, collect, forEachOption, median, note, peakRssBytes, randomInput } = require('./common');

const CONTENDERS = ['moe', 'dense-total', 'dense-active'];

const HELP = `usage: node bench/run.js [options]      (npm run bench -- [options])

  --quick                   fewer samples and shorter rows (CI-friendly, about a minute here)
  --mixtral                 the real Mixtral 8x7B layer (d=4096 f=14336 E=8 k=2), same as --shape mixtral
  --shape NAME              scaled (default: d=1024 f=3584 E=8 k=2) | mixtral | tiny
  --tokens LIST             token counts T, default 1,8,64,512,2048
  --dtypes LIST             weight types, default float32,bfloat16 (f32, bf16 accepted); quantised
                            experts: q8_0, q4_0, q4_k (ggml's blocks; with float32 and bfloat16 in the
                            same run, the quantised rows are also compared with them)
  --layers LIST             contenders, default moe,dense-total,dense-active
  --json PATH               where the JSON goes, default bench/results/latest.json
  --budget SECONDS          time per (layer, T) row; default 2, --quick 0.5
  --max-call-seconds S      skip a row whose call is predicted (from a smaller T) to take longer; default 300
  --ci                      a tiny smoke run for CI: tiny layer, T=1,8, small peak probes
  --backend NAME            auto (default: cuda when a GPU runs, else cpu) | cpu | cuda | cuda-emu
                            (cuda: the real Mixtral layer by default, T=1..4096, times from CUDA events;
                            cuda-emu: the test build's emulated backend, a smoke run of that path)
  --model                   the whole-model row instead: a scaled Mixtral (4 layers, d=1024, vocab 32000)
                            through generate, prefill and decode tokens/s (bench/model.js --help)
  --serve                   the serving row instead: the OpenAI-compatible server on loopback under
                            1, 4, 16, 64 concurrent streaming clients: tokens/s, TTFT, TPOT, errors
                            (bench/serve.js --help; --ci and --quick keep it short)
  --variants                the routing-variants bench instead (capacity, fine-grained, shared
                            expert, merged FFN): bench/variants.js, its options (--help there)
  --expert-parallel         the expert-parallel bench instead: N MPI ranks x 1 thread against 1 process x N
                            threads, all-to-all bytes and time, capacity 1.0/1.25/dropless (bench/expert-parallel.js)
  --help                    this text

Activations are float32. Targets from the issue are printed as PASS/MISS lines; the exit code does not
depend on them.`;

class UsageError extends Error {}

function parseList(v, name) {
  if (!v) throw new UsageError(`${name} needs a value`);
  return v.split(',').map((s) => s.trim()).filter(Boolean);
}

function parseArgs(argv) {
  const o = { backend: 'auto', shapeGiven: false, shape: 'scaled', quick: false, ci: false, tokens: null, dtypes: null, layers: null, json: null, budget: null, maxCallSeconds: null };
  forEachOption(argv, (a, val, raw) => {
    switch (a) {
      case '--help':
      case '-h':
        o.help = true;
        break;
      case '--quick':
        o.quick = true;
        break;
      case '--ci':
        o.ci = true;
        break;
      case '--mixtral':
        o.shape = 'mixtral';
        o.shapeGiven = true;
        break;
      case '--shape':
        o.shape = val();
        o.shapeGiven = true;
        break;
      case '--backend':
        o.backend = val();
        if (!['auto', 'cpu', 'cuda', 'cuda-emu'].includes(o.backend)) throw new UsageError(`--backend: ${JSON.stringify(o.backend)} is not one of auto, cpu, cuda, cuda-emu`);
        break;
      case '--tokens':
        o.tokens = parseList(val(), '--tokens').map((s) => {
          const n = Number(s);
          if (!Number.isInteger(n) || n < 1) throw new UsageError(`--tokens: ${JSON.stringify(s)} is not a positive integer`);
          return n;
        });
        break;
      case '--dtypes':
        o.dtypes = parseList(val(), '--dtypes').map((s) => {
          const t = { f32: 'float32', fp32: 'float32', float32: 'float32', bf16: 'bfloat16', bfloat16: 'bfloat16', q8_0: 'q8_0', q4_0: 'q4_0', q4_k: 'q4_k' }[s.toLowerCase()];
          if (!t) throw new UsageError(`--dtypes: ${JSON.stringify(s)} is not one of float32, bfloat16, q8_0, q4_0, q4_k`);
          return t;
        });
        break;
      case '--layers':
        o.layers = parseList(val(), '--layers').map((s) => {
          if (!CONTENDERS.includes(s)) throw new UsageError(`--layers: ${JSON.stringify(s)} is not one of ${CONTENDERS.join(', ')}`);
          return s;
        });
        break;
      case '--json':
        o.json = val();
        if (!o.json) throw new UsageError('--json needs a path');
        break;
      case '--budget':
      case '--max-call-seconds': {
        const n = Number(val());
        if (!(n > 0)) throw new UsageError(`${a} needs a positive number of seconds`);
        if (a === '--budget') o.budget = n;
        else o.maxCallSeconds = n;
        break;
      }
      default:
        throw new UsageError(`unknown option ${JSON.stringify(raw)} (--help lists them)`);
    }
  });
  if (o.ci && o.shape === 'scaled') o.shape = 'tiny';
  if (!SHAPES[o.shape]) throw new UsageError(`--shape: ${JSON.stringify(o.shape)} is not one of ${Object.keys(SHAPES).join(', ')}`);
  const mode = o.ci ? 'ci' : o.quick ? 'quick' : 'full';
  const presets = {
    //          budget  samples  minTime  bandwidth probe        fma probe
    full: { budget: 2, samples: 5, minTime: 0.1, bwBytes: 2 ** 30, bwReps: 20, fmaSeconds: 1, pairedRounds: 7, pairedReps: 3, pairedSeconds: 0.2 },
    quick: { budget: 0.5, samples: 3, minTime: 0.05, bwBytes: 2 ** 30, bwReps: 10, fmaSeconds: 0.5, pairedRounds: 3, pairedReps: 2, pairedSeconds: 0.1 },
    ci: { budget: 0.05, samples: 2, minTime: 0.01, bwBytes: 2 ** 26, bwReps: 3, fmaSeconds: 0.1, pairedRounds: 2, pairedReps: 1, pairedSeconds: 0.01 },
  };
  const p = presets[mode];
  return {
    mode,
    backend: o.backend,
    shapeGiven: o.shapeGiven,
    tokensGiven: !!o.tokens,
    dtypesGiven: !!o.dtypes,
    shape: SHAPES[o.shape],
    tokens: o.tokens ? [...new Set(o.tokens)].sort((a, b) => a - b) : o.ci ? [1, 8] : [1, 8, 64, 512, 2048],
    dtypes: o.dtypes ? [...new Set(o.dtypes)] : ['float32', 'bfloat16'],
    layers: o.layers ? CONTENDERS.filter((c) => o.layers.includes(c)) : CONTENDERS,
    json: path.resolve(o.json ?? path.join(root, 'bench', 'results', 'latest.json')),
    budget: o.budget ?? p.budget,
    samples: p.samples,
    minTime: p.minTime,
    maxCallSeconds: o.maxCallSeconds ?? (o.ci ? 10 : 300),
    bwBytes: p.bwBytes,
    bwReps: p.bwReps,
    fmaSeconds: p.fmaSeconds,
    // the memory-bound rows' paired bandwidth (pairedBandwidth below)
    pairedMaxT: 64,
    pairedBytes: Math.min(p.bwBytes, 2 ** 29),
    pairedRounds: p.pairedRounds,
    pairedReps: p.pairedReps,
    pairedSeconds: p.pairedSeconds,
    help: o.help,
  };
}

// The library is imported from the built package; build dist/ when it is missing.
function ensureBuilt() {
  const index = path.join(root, 'dist', 'index.js');
  if (!fs.existsSync(index)) {
    note('bench: dist/ is missing, running npm run build:ts');
    const r = spawnSync('npm', ['run', 'build:ts'], { cwd: root, stdio: 'inherit', shell: process.platform === 'win32' });
    if (r.status !== 0) throw new Error('npm run build:ts failed; run npm run build');
  } else {
    const libDir = path.join(root, 'lib');
    const built = fs.statSync(index).mtimeMs;
    const stale = fs.existsSync(libDir) && fs.readdirSync(libDir, { recursive: true }).some((f) => String(f).endsWith('.ts') && fs.statSync(path.join(libDir, String(f))).mtimeMs > built);
    if (stale) note('bench: note: lib/ is newer than dist/ (npm run build:ts to bench the current sources)');
  }
  try {
    return require('./common').lib();
  } catch (e) {
    throw new Error(`could not load the library (${e.message.split('\n')[0]}); build it with npm run build`);
  }
}

async function main() {
  const argv = process.argv.slice(2);
  // --expert-parallel: N MPI ranks against one process of N threads (bench/expert-parallel.js; its --model too)
  if (argv.includes('--expert-parallel')) {
    ensureBuilt();
    return require('./expert-parallel').main(argv);
  }
  if (argv.includes('--model')) {
    ensureBuilt();
    return require('./model').runModel(argv);
  }
  // --serve: the server under load (bench/serve.js) with the remaining options
  if (argv.includes('--serve')) {
    ensureBuilt();
    return require('./serve').runServe(argv);
  }
  // --variants: the routing-variants bench (bench/variants.js) with the remaining options
  if (argv.includes('--variants')) {
    ensureBuilt();
    return require('./variants').main(argv);
  }
  const opts = parseArgs(argv);
  if (opts.help) {
    console.log(HELP);
    return;
  }
  const started = Date.now();
  const lib = ensureBuilt();
  const report = require('./report');
  const { measurePeaks, probe, bandwidthNow } = require('./peaks');
  const { timeRow } = require('./measure');
  const drivers = Object.fromEntries(CONTENDERS.map((c) => [c, require(`./drivers/${c}`)]));

  const info = lib.backendInfo();
  const backend = opts.backend === 'auto' ? info.backend : opts.backend;
  if (backend !== 'cpu') {
    const avail = lib.availableBackends();
    if (!avail.includes(backend))
      throw new UsageError(`backend ${backend} is not available here: ${info.reason}` +
        (backend === 'cuda-emu' ? ' (build it with MOE_CUDA_EMU=1 npm run build:native, load it with MOE_KERNELS_ADDON=build-emu/Release/moe_kernels.node)' : ''));
    const result = await require('./cuda').runCuda(opts, lib, backend);
    const json = { schema: 'moe-kernels-bench-cuda/1', date: new Date().toISOString(), wallSeconds: (Date.now() - started) / 1000, ...result };
    fs.mkdirSync(path.dirname(opts.json), { recursive: true });
    fs.writeFileSync(opts.json, JSON.stringify(json, null, 2) + '\n');
    console.log(`JSON: ${path.relative(process.cwd(), opts.json)}`);
    return;
  }
  report.printHeader(opts, info);
  const peaks = measurePeaks(opts, info);

  const inputs = new Map(opts.tokens.map((T) => [T, randomInput(T, opts.shape.d)]));
  const rows = [];
  const memory = []; // RSS after each layer is built and after it is disposed
  for (const dtype of opts.dtypes) {
    for (const name of opts.layers) {
      const driver = drivers[name](opts.shape, dtype);
      await driver.setup();
      collect(); // the generated arrays are unreachable now: give their memory back
      memory.push({ after: `${dtype} ${name} built`, rssBytes: process.memoryUsage().rss, peakRssBytes: peakRssBytes() });
      try {
        await runRows(driver, dtype, name);
      } finally {
        driver.teardown();
        collect();
      }
      memory.push({ after: `${dtype} ${name} disposed`, rssBytes: process.memoryUsage().rss, peakRssBytes: peakRssBytes() });
    }
  }

  async function runRows(driver, dtype, name) {
    let prev = null; // the last measured row of this layer, to predict the next call's time
    for (const T of opts.tokens) {
      const base = { dtype, T, layer: name, label: driver.label, fDense: driver.fDense };
      // Compute-bound calls grow linearly with T: an upper bound for the memory-bound ones.
      const predicted = prev ? prev.timeS * (T / prev.T) : null;
      if (predicted != null && predicted > opts.maxCallSeconds) {
        const skipped = `predicted ${predicted.toFixed(0)} s per call (from T=${prev.T}) > --max-call-seconds ${opts.maxCallSeconds}`;
        rows.push({ ...base, skipped });
        note(`${DTYPES[dtype].short} ${name} T=${T}: skipped, ${skipped}`);
        continue;
      }
      const plan = { budget: opts.budget, samples: opts.samples, minTime: opts.minTime, predicted };
      const r = await timeRow(`${dtype} ${name} T=${T}`, driver.fn, inputs.get(T), plan);
      const row = report.makeRow(base, r, driver.cost(T));
      if (T <= opts.pairedMaxT && !peaks.missing) row.bwPaired = await pairedBandwidth(driver.fn, inputs.get(T), row.bytes);
      rows.push(row);
      prev = row;
      note(report.progressLine(row));
    }
  }

  // A memory-bound row against the bandwidth of the same minute: rounds of one short probe, then
  // the row's calls for pairedSeconds (at least 2 calls); each round's ratio is the row's GB/s
  // over its probe's, and the row's paired fraction is their median. The host's drift between
  // rounds cancels; a drift within a round (a second or two) does not, hence the median.
  async function pairedBandwidth(fn, x, bytes) {
    const rounds = [];
    for (let i = 0; i < opts.pairedRounds; i++) {
      const probeGBs = bandwidthNow(opts);
      let calls = 0;
      const t0 = process.hrtime.bigint();
      let s = 0;
      while (calls < 2 || s < opts.pairedSeconds) {
        await fn(x);
        calls++;
        s = Number(process.hrtime.bigint() - t0) / 1e9;
      }
      const gbs = (bytes * calls) / s / 1e9;
      rounds.push({ probeGBs, gbs, fraction: gbs / probeGBs });
    }
    return { fraction: median(rounds.map((r) => r.fraction)), rounds, probeBytes: opts.pairedBytes, probeReps: opts.pairedReps, seconds: opts.pairedSeconds };
  }

  probe(peaks, opts, 'after the rows');
  report.addFractions(rows, peaks);
  report.addRatios(rows);
  report.printPeaks(peaks);
  report.printTables(opts, rows, peaks);
  const targets = report.evaluateTargets(opts, rows, peaks);
  report.printTargets(targets);
  const result = report.toJson({ opts, info, peaks, rows, targets, memory, peakRssBytes: peakRssBytes(), wallSeconds: (Date.now() - started) / 1000 });
  report.printFooter(result);
  fs.mkdirSync(path.dirname(opts.json), { recursive: true });
  fs.writeFileSync(opts.json, JSON.stringify(result, null, 2) + '\n');
  const rel = path.relative(process.cwd(), opts.json);
  console.log(`JSON: ${rel && !rel.startsWith('..') ? rel : opts.json}`);
}

main().catch((e) => {
  const usage = e instanceof UsageError || e instanceof require('./model').UsageError;
  console.error(usage ? `bench: ${e.message}` : `bench: ${e && e.stack ? e.stack : e}`);
  process.exit(1);
});
