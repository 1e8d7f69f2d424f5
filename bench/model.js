#!/usr/bin/env node
'use strict';
// The whole-model row of the bench: a scaled Mixtral (random weights made in memory, layer by
// layer) run as a user runs it, through MixtralModel.generate: prefill of a prompt (time to the
// first token) and decode (one token per step through the KV caches). Prints tokens/s for both and
// the decode's active-weight bandwidth (the bytes of the weights a token reads over the step time),
// the figure to hold against the machine's read bandwidth; writes JSON (bench/results/model.json).
//
//   node bench/model.js [--ci] [--dtype bfloat16|float32|q8_0|q4_0|q4_k] [--gguf] [--prompt 128]
//                       [--decode 32] [--runs 3] [--backend auto|cpu|cuda] [--json path]
//   node bench/run.js --model [same options]
const fs = require('node:fs');
const path = require('node:path');
const os = require('node:os');
const util = require('node:util');

const { root, DTYPES, collect, median, note, peakRssBytes, progress, randomMatrix, seedOf } = require('./common');

// Mixtral 8x7B scaled down 4x in width (d, f) and 8x in depth; real vocabulary and head size.
const SHAPES = {
  scaled: { title: 'scaled Mixtral', layers: 4, d: 1024, f: 3584, E: 8, k: 2, heads: 32, kvHeads: 8, vocab: 32000 },
  tiny: { title: 'tiny Mixtral (CI)', layers: 2, d: 256, f: 256, E: 8, k: 2, heads: 4, kvHeads: 2, vocab: 512 },
};

const HELP = `usage: node bench/model.js [options]      (node bench/run.js --model [options])

  --ci                a tiny model, short prompt: a smoke run (its figures mean nothing)
  --dtype T           weight type: bfloat16 (default) or float32; q8_0, q4_0, q4_k: the experts in that
                      block format (llama.cpp's), everything else bfloat16
  --gguf              load the model from a GGUF file instead of from memory: the same weights written
                      as a checkpoint and converted (convert --type bf16|f32|q8_0|q4_0|q4_k: in a block
                      format every matrix is quantised, as llama.cpp's files are, and the experts,
                      projections, embeddings and LM head run as the file's blocks; norms and router
                      load as bfloat16), timed load included
  --prompt N          prompt tokens (prefill), default 128 (--ci 16)
  --decode N          tokens generated after the first, default 32 (--ci 4)
  --runs N            generations timed (the median is reported), default 3 (--ci 1)
  --backend B         where the whole model runs: auto (default), cpu, cuda (cuda-emu: the test
                      build's emulated device, a smoke run of that path)
  --json PATH         where the JSON goes, default bench/results/model.json
  --help              this text`;

class UsageError extends Error {}

function parseArgs(argv) {
  let values;
  try {
    ({ values } = util.parseArgs({
      args: argv,
      options: {
        model: { type: 'boolean' }, // when run through bench/run.js
        ci: { type: 'boolean', default: false },
        dtype: { type: 'string', default: 'bfloat16' },
        gguf: { type: 'boolean', default: false },
        prompt: { type: 'string' },
        decode: { type: 'string' },
        runs: { type: 'string' },
        backend: { type: 'string', default: 'auto' },
        json: { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
    }));
  } catch (e) {
    throw new UsageError(`${e.message} (--help lists the options)`);
  }
  const int = (name) => {
    if (values[name] === undefined) return null;
    const n = Number(values[name]);
    if (!Number.isInteger(n) || n < 1) throw new UsageError(`--${name} needs a positive integer, got ${JSON.stringify(values[name])}`);
    return n;
  };
  const dtype = { f32: 'float32', float32: 'float32', bf16: 'bfloat16', bfloat16: 'bfloat16', q8_0: 'q8_0', q4_0: 'q4_0', q4_k: 'q4_k' }[values.dtype.toLowerCase()];
  if (!dtype) throw new UsageError(`--dtype must be bfloat16, float32, q8_0, q4_0 or q4_k, got ${JSON.stringify(values.dtype)}`);
  if (!['auto', 'cpu', 'cuda', 'cuda-emu'].includes(values.backend)) throw new UsageError(`--backend: ${JSON.stringify(values.backend)} is not one of auto, cpu, cuda, cuda-emu`);
  const o = { ...values, dtype, prompt: int('prompt'), decode: int('decode'), runs: int('runs') };
  return {
    ...o,
    shape: SHAPES[o.ci ? 'tiny' : 'scaled'],
    prompt: o.prompt ?? (o.ci ? 16 : 128),
    decode: o.decode ?? (o.ci ? 4 : 32),
    runs: o.runs ?? (o.ci ? 1 : 3),
    json: path.resolve(o.json ?? path.join(root, 'bench', 'results', 'model.json')),
  };
}

function configOf(s) {
  const { parseMixtralConfig } = require('./common').lib();
  return parseMixtralConfig(rawConfigOf(s));
}

/** config.json of a shape. */
function rawConfigOf(s) {
  return {
    model_type: 'mixtral',
    hidden_size: s.d,
    intermediate_size: s.f,
    num_hidden_layers: s.layers,
    num_attention_heads: s.heads,
    num_key_value_heads: s.kvHeads,
    num_local_experts: s.E,
    num_experts_per_tok: s.k,
    vocab_size: s.vocab,
    max_position_embeddings: 32768,
    rope_theta: 1e6,
    rms_norm_eps: 1e-5,
    sliding_window: null,
    tie_word_embeddings: false,
  };
}

const GGUF_TYPE = { bfloat16: 'bf16', float32: 'f32', q8_0: 'q8_0', q4_0: 'q4_0', q4_k: 'q4_k' };

/**
 * The model of `globals` and the layers of `layerWeights(config, base)` written as a safetensors
 * checkpoint in a temporary folder, converted to GGUF (`type`), and loaded from the file. Returns the
 * model and the seconds of the load alone.
 */
async function modelFromGguf(lib, s, config, globals, base, dtype, opts, tick) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-bench-gguf-'));
  try {
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(rawConfigOf(s)));
    const tensors = { 'model.embed_tokens.weight': globals.embedTokens, 'model.norm.weight': globals.norm, 'lm_head.weight': globals.lmHead };
    for (const l of layerWeights(config, base, tick)) Object.assign(tensors, lib.decoderLayerTensors('mixtral', l, 'per-expert'));
    await lib.writeSafetensors(path.join(dir, 'model.safetensors'), tensors);
    const file = path.join(dir, `model-${GGUF_TYPE[dtype]}.gguf`);
    await lib.convertToGguf(dir, file, { type: GGUF_TYPE[dtype] });
    fs.rmSync(path.join(dir, 'model.safetensors'));
    collect();
    const t0 = process.hrtime.bigint();
    const model = await lib.MixtralModel.load(file, { backend: opts.backend, maxSeq: opts.maxSeq, dtype: 'bfloat16' });
    const loadS = Number(process.hrtime.bigint() - t0) / 1e9;
    note(`GGUF ${GGUF_TYPE[dtype]}: ${(fs.statSync(file).size / 1e9).toFixed(2)} GB, loaded in ${loadS.toFixed(2)} s`);
    return { model, loadS };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** Norm weights near 1 (random matrices are ~U(-1,1)/sqrt(cols): 1 + that keeps the scale). */
function normWeight(dtype, d, seed) {
  const t = randomMatrix('float32', 1, d, seed);
  for (let i = 0; i < d; i++) t.data[i] = 1 + t.data[i];
  const { cast } = require('./common').lib();
  return cast({ type: 'float32', data: t.data, dims: [d] }, dtype);
}

/** Layer i's weights, made when the model asks for them (one layer's arrays alive at a time). */
function* layerWeights(c, expertType, tick) {
  const { hiddenSize: d, intermediateSize: f, numExperts: E, headDim: hd } = c;
  const q = c.numAttentionHeads * hd;
  const kv = c.numKeyValueHeads * hd;
  const dtype = baseType(expertType);
  for (let i = 0; i < c.numHiddenLayers; i++) {
    const m = (name, rows, cols, t = dtype) => randomMatrix(t, rows, cols, seedOf('model', i, name));
    const experts = (name, rows, cols) => Array.from({ length: E }, (_, e) => m(`${name}.${e}`, rows, cols, expertType));
    yield {
      index: i,
      inputLayernorm: normWeight(dtype, d, seedOf('model', i, 'in')),
      postAttentionLayernorm: normWeight(dtype, d, seedOf('model', i, 'post')),
      attention: { qProj: m('q', q, d), kProj: m('k', kv, d), vProj: m('v', kv, d), oProj: m('o', d, q) },
      moe: { gate: m('gate', E, d), w1: experts('w1', f, d), w3: experts('w3', f, d), w2: experts('w2', d, f) },
    };
    tick(i + 1);
  }
}

/** The type of everything but the experts: the expert type, or bfloat16 when it is a block format. */
const baseType = (t) => (DTYPES[t].block ? 'bfloat16' : t);


async function runModel(argv) {
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
  // from GGUF in a block format the projections are quantised too (the embeddings and LM head not)
  const bpw = DTYPES[opts.dtype].bytes, baseBpw = DTYPES[baseType(opts.dtype)].bytes;
  console.log(`# ${s.title}: ${s.layers} layers, d=${s.d}, f=${s.f}, E=${s.E}, k=${s.k}, heads ${s.heads}/${s.kvHeads} x ${config.headDim}, vocab ${s.vocab}; ${opts.dtype} weights${opts.gguf ? `, loaded from a GGUF file (convert --type ${GGUF_TYPE[opts.dtype]})` : ''}`);
  console.log(`# ${os.cpus()[0].model.trim()}, ${info.cpu.threads} compute threads (${info.cpu.kernel}); backend: ${opts.backend}; ${info.reason}`);
  console.log('# the whole model runs on the backend (on CUDA: weights, KV caches and activations on the device); activations and KV caches are float32');

  const p = progress('model: weights', s.layers);
  const maxSeq = opts.prompt + opts.decode + 1;
  const globals = {
    embedTokens: randomMatrix(baseType(opts.dtype), s.vocab, s.d, seedOf('model', 'embed')),
    norm: normWeight(baseType(opts.dtype), s.d, seedOf('model', 'norm')),
    lmHead: randomMatrix(baseType(opts.dtype), s.vocab, s.d, seedOf('model', 'lm_head')),
  };
  const tick = (i) => p.tick(i, `layer ${i}/${s.layers}`);
  let loadS = null;
  let model;
  if (opts.gguf) ({ model, loadS } = await modelFromGguf(lib, s, config, globals, baseType(opts.dtype), opts.dtype, { backend: opts.backend, maxSeq }, tick));
  else model = await lib.MixtralModel.fromWeights(config, { globals, layers: layerWeights(config, opts.dtype, tick) }, { backend: opts.backend, maxSeq });
  p.done(`${s.layers} layers built on ${model.backend}, ${(model.bytes / 1e9).toFixed(2)} GB`);
  // the memory roof of decode: the device's DRAM bandwidth on CUDA (from its clocks), else none here
  const peakGBps = model.backend === 'cuda' ? info.cuda.device?.peakGBps ?? 0 : 0;
  collect();

  const counts = lib.countParameters(config);
  // bytes a decode step reads: every active parameter but the embedding table (one row of it)
  // (the experts at the experts' bytes per weight, the rest at the base type's)
  const activeBytes = counts.experts.active * bpw + (counts.active - counts.experts.active - counts.embeddings + s.d) * baseBpw;
  const prompt = Array.from({ length: opts.prompt }, (_, i) => (i * 7919 + 13) % s.vocab);
  const runs = [];
  // one untimed warm-up generation (page faults, thread pool start-up)
  await model.generateAll(prompt.slice(0, Math.min(8, prompt.length)), { maxNewTokens: 2 });
  for (let r = 0; r < opts.runs; r++) {
    const t0 = process.hrtime.bigint();
    let first = 0n;
    let n = 0;
    for await (const _id of model.generate(prompt, { maxNewTokens: opts.decode + 1 })) {
      if (n++ === 0) first = process.hrtime.bigint();
    }
    const end = process.hrtime.bigint();
    const prefillS = Number(first - t0) / 1e9;
    const decodeS = Number(end - first) / 1e9;
    runs.push({ prefillS, decodeS, decodeTokens: n - 1 });
    note(`run ${r + 1}/${opts.runs}: prefill ${opts.prompt} tokens in ${prefillS.toFixed(3)} s, ${n - 1} decode steps in ${decodeS.toFixed(3)} s`);
  }
  const prefillS = median(runs.map((x) => x.prefillS));
  const decodeStepS = median(runs.map((x) => x.decodeS / x.decodeTokens));
  const rows = [
    ['prefill', `${opts.prompt} tokens`, `${(prefillS * 1000).toFixed(1)} ms`, `${(opts.prompt / prefillS).toFixed(1)}`, `${((2 * counts.active * opts.prompt) / prefillS / 1e9).toFixed(1)} GFLOP/s (active params)`],
    ['decode', `1 token at ${opts.prompt}..${opts.prompt + opts.decode}`, `${(decodeStepS * 1000).toFixed(2)} ms`, `${(1 / decodeStepS).toFixed(1)}`, `${(activeBytes / decodeStepS / 1e9).toFixed(1)} GB/s of active weights${peakGBps ? ` (${((100 * activeBytes) / decodeStepS / 1e9 / peakGBps).toFixed(0)}% of the device's ${peakGBps.toFixed(0)} GB/s)` : ''}`],
  ];
  const widths = [0, 1, 2, 3, 4].map((i) => Math.max(...[['phase', 'tokens', 'time', 'tokens/s', 'rate'], ...rows].map((r) => r[i].length)));
  for (const r of [['phase', 'tokens', 'time', 'tokens/s', 'rate'], ...rows]) console.log(r.map((c, i) => (i === 3 ? c.padStart(widths[i]) : c.padEnd(widths[i]))).join('  ').trimEnd());
  const stats = model.routingStats();
  model.dispose();

  const result = {
    schema: 'moe-kernels-bench-model/1',
    date: new Date().toISOString(),
    mode: opts.ci ? 'ci' : 'full',
    shape: s,
    dtype: opts.dtype,
    source: opts.gguf ? `gguf ${GGUF_TYPE[opts.dtype]}` : 'memory',
    ggufLoadSeconds: loadS,
    backend: model.backend,
    cpu: { model: os.cpus()[0].model.trim(), ...info.cpu },
    parameters: { total: counts.total, active: counts.active },
    promptTokens: opts.prompt,
    decodeTokens: opts.decode,
    runs,
    prefillTokensPerSecond: opts.prompt / prefillS,
    decodeTokensPerSecond: 1 / decodeStepS,
    decodeActiveWeightGBs: activeBytes / decodeStepS / 1e9,
    tokensPerExpert: stats.tokensPerExpert,
    peakRssBytes: peakRssBytes(),
    wallSeconds: (Date.now() - started) / 1000,
  };
  fs.mkdirSync(path.dirname(opts.json), { recursive: true });
  fs.writeFileSync(opts.json, JSON.stringify(result, null, 2) + '\n');
  const rel = path.relative(process.cwd(), opts.json);
  console.log(`JSON: ${rel && !rel.startsWith('..') ? rel : opts.json}`);
}

module.exports = { runModel, UsageError, SHAPES, configOf, layerWeights, normWeight };

if (require.main === module)
  runModel(process.argv.slice(2)).catch((e) => {
    console.error(e instanceof UsageError ? `bench: ${e.message}` : `bench: ${e && e.stack ? e.stack : e}`);
    process.exit(1);
  });
