/**
 * The `moe-kernels` command (bin/moe-kernels.js runs `main`). Commands:
 *   params <config.json | dir>     parameter breakdown, total and active, and a memory estimate
 *   inspect <dir | file>           the tensors of a checkpoint, checked against config.json
 *   generate <dir>                 runs a model: token ids (or text, with tokenizer.json) in and out
 *   serve [<dir | file.gguf>]      an OpenAI-compatible HTTP server over the serving engine
 * `main` returns the exit code (0 ok, 1 failed, 2 usage error) and never exits the process.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { parseMoeConfig, type MoeModelConfig } from '../hf/config.js';
import { MoeError } from '../core/errors.js';
import { countParameters, estimateMemory, formatBytes, type MemoryEstimate } from '../hf/params.js';
import { Checkpoint } from '../hf/checkpoint.js';
import { FLOAT_TYPES, type FloatType } from '../core/tensor.js';
import { MoeCheckpoint } from '../hf/weights.js';
import { createProgressBar } from '../hf/progress.js';
import type { BackendName } from '../core/backend.js';
import type { MixtralModel as MixtralModelType } from '../model/model.js';
import type { Engine as EngineType } from '../serve/engine.js';
import { formatRoutingTable, routingHeatmapSvg } from '../moe/routing-stats.js';
import { Tokenizer } from '../hf/tokenizer.js';
import { GgufFile, isGgufPath, type GgufMetadataEntry, type GgufValue } from '../hf/gguf.js';
import { GgufCheckpoint } from '../hf/gguf-model.js';
import { GgufTokenizer } from '../hf/tokenizer-gguf.js';
import { convertToGguf, GGUF_CONVERT_TYPES, type GgufConvertType } from '../hf/gguf-convert.js';
import type { TextTokenizer } from '../model/text.js';
import { launch, LAUNCH_HELP } from './launch.js';

export interface CliIo {
  stdout: { write(s: string): unknown };
  stderr: { write(s: string): unknown };
}

const HELP: Record<string, string> = {
  launch: LAUNCH_HELP,
  main: `Usage: moe-kernels <command> [options]

Commands:
  params <config.json | checkpoint dir | file.gguf>   parameters (total, active, by part) and memory needed
  inspect <checkpoint dir | file | file.gguf>         tensors of a checkpoint, checked against its config.json;
                                                      a GGUF file's metadata and tensor types (as gguf-dump)
  generate <checkpoint dir | file.gguf>               run a model (Mixtral, Qwen2-MoE, DeepSeek-MoE): prompt in, tokens out
  convert <checkpoint dir> <out.gguf>                 write a checkpoint as a GGUF file llama.cpp reads
  serve [<checkpoint dir | file.gguf>]                an OpenAI-compatible HTTP server (many requests at once,
                                                      continuous batching); without a model: a tiny demo model
  launch -n <ranks> <app.js> [args]                   run a program as N MPI ranks (expert parallelism), via mpirun

Run 'moe-kernels <command> --help' for a command's options; 'moe-kernels --version' for the version.
`,
  params: `Usage: moe-kernels params <config.json | checkpoint dir | file.gguf> [options]

Prints the parameter breakdown of a Hugging Face MoE config (mixtral, qwen2_moe, deepseek), or of a
GGUF file's metadata: total parameters, the parameters one token uses (active), and the memory the
weights and a KV cache need (a GGUF's quantised tensors at their size in the file).

Options:
  --dtype <t>        weight type: float32, float16, bfloat16 (default: the config's torch_dtype, else bfloat16)
  --kv-dtype <t>     KV cache type (default: --dtype)
  --context <n>      tokens of context per sequence (default: max_position_embeddings)
  --batch <n>        sequences at once (default 1)
  --json             print JSON instead of tables
  -h, --help         this help
`,
  inspect: `Usage: moe-kernels inspect <checkpoint dir | model.safetensors.index.json | file.safetensors | file.gguf> [options]

Lists every tensor (name, dtype, shape, bytes) from the headers, without reading tensor data, and
when a config.json is next to the checkpoint (or given) checks that every tensor the config needs is
present with the expected shape. A GGUF file: its metadata (key, type, value; long arrays cut) and
tensors (name, ggml type, ggml dims, offset) as llama.cpp's gguf-dump lists them, then the model
check of its metadata (architecture, every tensor present with its dims and a loadable type).

Options:
  --config <path>    config.json to check against (default: the one next to the checkpoint)
  --no-check         list only
  --json             print JSON instead of a table
  -h, --help         this help
`,
  generate: `Usage: moe-kernels generate <checkpoint dir | file.gguf> (--prompt-ids <ids> | --prompt <text> | --chat <text>) [options]

Loads a Mixtral, Qwen2-MoE or DeepSeek-MoE checkpoint (config.json + safetensors; progress on
stderr) and generates tokens after the prompt, printing them as they come: token ids with
--prompt-ids, text with --prompt (the checkpoint's tokenizer.json encodes the prompt and decodes the
output). --backend places the whole model: on CUDA every weight, KV cache and activation stays on
the device.

Options:
  --prompt-ids <ids>       comma-separated token ids, e.g. 1,2,3
  --prompt <text>          text (needs tokenizer.json in the checkpoint dir, or a GGUF file's tokenizer)
  --chat <text>            a user message, through the model's chat template (tokenizer.chat_template
                           of a GGUF, chat_template of tokenizer_config.json)
  --stop <text>            stop before this text (repeatable); matched on the decoded text
  --max-new-tokens <n>     tokens to generate (default 16)
  --temperature <t>        0 (default) is greedy
  --top-p <p>              nucleus sampling threshold in (0, 1] (default 1)
  --seed <n>               seed of the draws (default 0)
  --stop-ids <ids>         stop after one of these ids (default: the tokenizer's end-of-sequence
                           token with --prompt, none with --prompt-ids)
  --dtype <t>              convert the weights as they load: float32, float16, bfloat16 (default: as stored)
  --backend <b>            where the model runs: auto (default: cuda when a GPU runs), cpu, cuda
  --max-seq <n>            KV cache positions (default: prompt + new tokens)
  --stats                  after generating, print the tokens routed to each expert, per MoE layer
                           (with each layer's routing entropy)
  --stats-svg <file>       also write them as an SVG heat map (layers x experts) to <file>
  --json                   print one JSON object at the end instead of tokens as they come:
                           {promptIds, tokens, text (with --prompt), stopReason ('stop', 'length'
                           or 'aborted'), backend, timings, routing (with --stats)}
  --no-progress            no loading progress on stderr
  -h, --help               this help

Options are checked against the checkpoint's config.json (a GGUF's metadata) before any weight is
read: a bad value is a usage error (exit 2).
`,
  serve: `Usage: moe-kernels serve [<checkpoint dir | file.gguf>] [options]

Serves a model over HTTP with OpenAI's API: POST /v1/completions, POST /v1/chat/completions
(stream: true for server-sent events), GET /v1/models, GET /health, GET /metrics (Prometheus).
Requests run at once on one engine: each step is one forward over every running sequence's next
token plus chunks of new prompts; KV caches live in a block pool. Without a model argument a tiny
demo model with random weights and a byte tokenizer runs (its text is noise). SIGTERM or SIGINT:
stop accepting, let running requests finish within --grace-seconds, then exit 0.

Options:
  --host <addr>            address to listen on (default 127.0.0.1: this machine only)
  --port <n>               port (default 8080; 0: any free port, printed at start)
  --api-key <key>          require "Authorization: Bearer <key>" (default: MOE_KERNELS_API_KEY, else none)
  --model-name <name>      the model's id in the API (default: the directory's or file's name)
  --max-sequences <n>      sequences that run at once (default 16)
  --max-queued <n>         requests that may wait beyond those; more get 429 (default 64)
  --max-batch-tokens <n>   tokens per step, decode plus prefill chunks (default 256)
  --max-context <n>        prompt plus new tokens per sequence (default min(max_position_embeddings, 4096))
  --kv-blocks <n>          KV blocks per layer (default: enough for --max-sequences full contexts, at most 1 GiB)
  --block-size <n>         positions per KV block (default 16)
  --max-tokens <n>         max_tokens of a completion that gives none (default 16)
  --body-limit <bytes>     largest request body; larger get 413 (default 1048576)
  --grace-seconds <s>      on SIGTERM, how long running requests may take (default 10)
  --dtype <t>              convert the weights as they load: float32, float16, bfloat16
  --backend <b>            auto (default), cpu, cuda
  --log                    log every request (fastify's JSON log on stdout)
  -h, --help               this help
`,
  convert: `Usage: moe-kernels convert <checkpoint dir> <out.gguf> [options]

Writes a Hugging Face checkpoint (config.json, safetensors, tokenizer.json, tokenizer_config.json)
as one GGUF file the way llama.cpp's convert_hf_to_gguf.py does: Mixtral as architecture llama with
experts, Qwen2-MoE as qwen2moe; norms, biases and routers in F32; the tokenizer and chat template in
the metadata. One layer is in memory at a time.

Options:
  --type <t>         f32, f16 (default), bf16, or q8_0, q4_0, q4_k (the matrices quantised by the package's
                     quantiser; a matrix whose rows are not whole blocks falls back to q8_0, then f16)
  --name <s>         general.name (default: the directory's name)
  -h, --help         this help
`,
};

class UsageError extends Error {}

/** The most KV cache positions a model takes (MixtralModel's maxSeq limit). */
const MAX_SEQ = 1 << 24;

/** Pads columns; numbers (right-aligned) where `right[i]`. */
function table(rows: string[][], right: boolean[] = []): string {
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
  return rows.map((r) => r.map((c, i) => (right[i] ? c.padStart(widths[i]) : c.padEnd(widths[i]))).join('  ').trimEnd()).join('\n') + '\n';
}

const num = (n: number) => n.toLocaleString('en-US');
const billions = (n: number) => (n >= 1e9 ? `${(n / 1e9).toFixed(2)}B` : n >= 1e6 ? `${(n / 1e6).toFixed(2)}M` : n >= 1e3 ? `${(n / 1e3).toFixed(2)}K` : String(n));

function positiveInt(v: string | undefined, flag: string): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new UsageError(`${flag} must be a positive integer, got '${v}'`);
  return n;
}

function floatType(v: string | undefined, flag: string): FloatType | undefined {
  if (v === undefined) return undefined;
  if (!(FLOAT_TYPES as readonly string[]).includes(v)) throw new UsageError(`${flag} must be one of ${FLOAT_TYPES.join(', ')}, got '${v}'`);
  return v as FloatType;
}

function configPath(p: string): string {
  return fs.existsSync(p) && fs.statSync(p).isDirectory() ? path.join(p, 'config.json') : p;
}

function params(args: string[], io: CliIo): number {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      dtype: { type: 'string' },
      'kv-dtype': { type: 'string' },
      context: { type: 'string' },
      batch: { type: 'string' },
      json: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) return io.stdout.write(HELP.params), 0;
  if (positionals.length !== 1) throw new UsageError('params takes one argument: a config.json, a checkpoint directory or a .gguf file');
  const memOpts = {
    dtype: floatType(values.dtype, '--dtype'),
    kvDtype: floatType(values['kv-dtype'], '--kv-dtype'),
    contextLength: positiveInt(values.context, '--context'),
    batch: positiveInt(values.batch, '--batch'),
  };
  let config: MoeModelConfig;
  let mem: MemoryEstimate;
  if (isGgufPath(positionals[0])) {
    const g = GgufCheckpoint.openSync(positionals[0], { mmap: false });
    try {
      config = g.config;
      const e = g.estimateMemory({ dtype: memOpts.dtype, kvType: memOpts.kvDtype, maxSeq: memOpts.contextLength ?? config.maxPositionEmbeddings });
      const batch = memOpts.batch ?? 1;
      mem = { ...e, batch, kvCacheBytes: e.kvCacheBytes * batch, totalBytes: e.weightsBytes + e.kvCacheBytes * batch };
    } finally {
      g.close();
    }
  } else {
    config = parseMoeConfig(configPath(positionals[0]));
    mem = estimateMemory(config, memOpts);
  }
  const counts = countParameters(config);
  if (values.json) {
    io.stdout.write(JSON.stringify({ config, parameters: counts, memory: mem }, null, 2) + '\n');
    return 0;
  }
  io.stdout.write(describeConfig(config) + '\n');
  io.stdout.write(paramsTable(counts) + '\n');
  io.stdout.write(memoryTable(mem));
  return 0;
}

function describeConfig(c: MoeModelConfig): string {
  const moe = c.layerKinds.filter((k) => k === 'moe').length;
  const shared = c.sharedExpertIntermediateSize > 0 ? `, shared expert ${c.sharedExpertIntermediateSize}` : '';
  return (
    `${c.modelType}: ${c.numHiddenLayers} layers (${moe} MoE), hidden ${c.hiddenSize}, heads ${c.numAttentionHeads}/${c.numKeyValueHeads} kv x ${c.headDim}, ` +
    `${c.numExperts} experts x ${c.moeIntermediateSize}, top-${c.numExpertsPerTok}${shared}, vocab ${c.vocabSize}${c.tieWordEmbeddings ? ' (tied)' : ''}\n`
  );
}

function paramsTable(p: ReturnType<typeof countParameters>): string {
  const rows: [string, number, number][] = [
    ['embeddings', p.embeddings, p.embeddings],
    ['attention', p.attention, p.attention],
    ['norms', p.norms, p.norms],
    ['router', p.router, p.router],
    ['experts', p.experts.total, p.experts.active],
  ];
  if (p.sharedExperts) rows.push(['shared experts', p.sharedExperts, p.sharedExperts]);
  if (p.denseFfn) rows.push(['dense FFN', p.denseFfn, p.denseFfn]);
  rows.push(['lm head', p.lmHead, p.lmHead]);
  const body = rows.map(([n, t, a]) => [n, num(t), billions(t), num(a), billions(a)]);
  return table(
    [['part', 'total', '', 'active', ''], ...body, ['all', num(p.total), billions(p.total), num(p.active), billions(p.active)]],
    [false, true, true, true, true],
  );
}

function memoryTable(m: MemoryEstimate): string {
  return table(
    [
      ['memory', 'bytes', ''],
      [`weights (${m.dtype})`, num(m.weightsBytes), formatBytes(m.weightsBytes)],
      [`KV cache (${m.kvDtype}, ${m.contextLength} tokens x ${m.batch})`, num(m.kvCacheBytes), formatBytes(m.kvCacheBytes)],
      ['total', num(m.totalBytes), formatBytes(m.totalBytes)],
    ],
    [false, true, true],
  );
}

function inspect(args: string[], io: CliIo): number {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      config: { type: 'string' },
      'no-check': { type: 'boolean' },
      json: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) return io.stdout.write(HELP.inspect), 0;
  if (positionals.length !== 1) throw new UsageError('inspect takes one argument: a checkpoint directory, index file, .safetensors or .gguf file');
  if (isGgufPath(positionals[0])) return inspectGguf(positionals[0], { json: values.json === true, check: !values['no-check'] }, io);
  const ckpt = Checkpoint.openSync(positionals[0]);
  try {
    const infos = ckpt.infos();
    const cfgPath = values.config ?? path.join(ckpt.dir, 'config.json');
    let check: { ok: boolean; message: string } | null = null;
    if (!values['no-check'] && (values.config !== undefined || fs.existsSync(cfgPath))) check = checkAgainst(ckpt, cfgPath);
    if (values.json) {
      const tensors = infos.map((t) => ({ name: t.name, dtype: t.dtype, shape: t.shape, bytes: t.byteLength, file: path.basename(t.file) }));
      io.stdout.write(JSON.stringify({ dir: ckpt.dir, files: ckpt.files.map((f) => path.basename(f)), totalBytes: ckpt.totalBytes, tensors, check }, null, 2) + '\n');
    } else {
      const multi = ckpt.files.length > 1;
      const rows = infos.map((t) => [t.name, t.dtype, `[${t.shape.join(',')}]`, num(t.byteLength), ...(multi ? [path.basename(t.file)] : [])]);
      io.stdout.write(table([['name', 'dtype', 'shape', 'bytes', ...(multi ? ['file'] : [])], ...rows], [false, false, false, true, false]));
      io.stdout.write(`${infos.length} tensors in ${ckpt.files.length} file${ckpt.files.length > 1 ? 's' : ''}, ${formatBytes(ckpt.totalBytes)} (${num(ckpt.totalBytes)} bytes)\n`);
      if (check) (check.ok ? io.stdout : io.stderr).write(`${check.ok ? 'ok' : 'error'}: ${check.message}\n`);
    }
    return check && !check.ok ? 1 : 0;
  } finally {
    ckpt.close();
  }
}

/** A metadata value as gguf-dump shows it: strings quoted, long arrays cut after a few elements. */
function showValue(e: GgufMetadataEntry): string {
  const one = (v: GgufValue | unknown): string => (typeof v === 'string' ? JSON.stringify(v.length > 60 ? v.slice(0, 60) + '...' : v) : typeof v === 'bigint' ? v.toString() : String(v));
  if (e.type !== 'array') return one(e.value);
  const list = Array.from(e.value as ArrayLike<unknown>);
  const shown = list.slice(0, 5).map((v) => (Array.isArray(v) || ArrayBuffer.isView(v) ? `[${(v as ArrayLike<unknown>).length} items]` : one(v)));
  return `[${shown.join(', ')}${list.length > 5 ? `, ... (${list.length} items)` : ''}]`;
}

function jsonValue(v: unknown): unknown {
  if (typeof v === 'bigint') return v.toString();
  if (ArrayBuffer.isView(v)) return Array.from(v as unknown as ArrayLike<number | bigint>, jsonValue);
  if (Array.isArray(v)) return v.map(jsonValue);
  return v;
}

function inspectGguf(file: string, o: { json: boolean; check: boolean }, io: CliIo): number {
  const f = GgufFile.openSync(file, { mmap: false });
  try {
    let check: { ok: boolean; message: string } | null = null;
    if (o.check) {
      try {
        const g = GgufCheckpoint.openSync(file, { mmap: false });
        const unused = g.unusedTensors();
        check = {
          ok: true,
          message:
            `architecture ${g.architecture}: all ${g.tensorsTotal} tensors the metadata implies are present with the expected dims (${g.config.numHiddenLayers} layers, ${g.config.numExperts} experts, top-${g.config.numExpertsPerTok}; experts ${g.layout})` +
            (unused.length ? `; ${unused.length} unused: ${unused.slice(0, 5).join(', ')}${unused.length > 5 ? ', ...' : ''}` : ''),
        };
        g.close();
      } catch (e) {
        if (!(e instanceof MoeError)) throw e;
        check = { ok: false, message: e.message };
      }
    }
    const entries = f.entries();
    const infos = f.infos();
    if (o.json) {
      const metadata = entries.map((e) => ({ key: e.key, type: e.type, ...(e.arrayType ? { arrayType: e.arrayType } : {}), value: jsonValue(e.value) }));
      const tensors = infos.map((t) => ({ name: t.name, type: t.typeName, ne: t.ne, dims: t.dims, offset: t.offset, bytes: t.byteLength }));
      io.stdout.write(JSON.stringify({ file: f.path, version: f.version, alignment: f.alignment, dataOffset: f.dataOffset, size: f.size, metadata, tensors, check }, null, 2) + '\n');
    } else {
      io.stdout.write(`* File ${f.path}: GGUF version ${f.version}, ${entries.length + 3} key/value pairs, ${infos.length} tensors, ${formatBytes(f.size)}\n`);
      const meta: string[][] = [['', 'type', 'key', 'value'], ['1', 'uint32', 'GGUF.version', String(f.version)], ['2', 'uint64', 'GGUF.tensor_count', String(infos.length)], ['3', 'uint64', 'GGUF.kv_count', String(entries.length)]];
      entries.forEach((e, i) => meta.push([String(i + 4), e.type === 'array' ? `[${e.arrayType}]` : e.type, e.key, showValue(e)]));
      io.stdout.write(table(meta, [true, false, false, false]));
      const rows = infos.map((t, i) => [String(i + 1), t.name, t.typeName, t.ne.join(' x '), num(t.elements), num(t.byteLength), String(t.offset)]);
      io.stdout.write(`* Tensors (ggml dims: innermost first):\n`);
      io.stdout.write(table([['', 'name', 'type', 'ne', 'elements', 'bytes', 'offset'], ...rows], [true, false, false, false, true, true, true]));
      const byType = new Map<string, number>();
      for (const t of infos) byType.set(t.typeName, (byType.get(t.typeName) ?? 0) + 1);
      io.stdout.write(`${infos.length} tensors (${[...byType].map(([t, n]) => `${n} ${t}`).join(', ')}), ${formatBytes(f.tensorBytes)} of tensor data\n`);
      if (check) (check.ok ? io.stdout : io.stderr).write(`${check.ok ? 'ok' : 'error'}: ${check.message}\n`);
    }
    return check && !check.ok ? 1 : 0;
  } finally {
    f.close();
  }
}

async function convert(args: string[], io: CliIo): Promise<number> {
  const { values, positionals } = parseArgs({ args, allowPositionals: true, options: { type: { type: 'string' }, name: { type: 'string' }, help: { type: 'boolean', short: 'h' } } });
  if (values.help) return io.stdout.write(HELP.convert), 0;
  if (positionals.length !== 2) throw new UsageError('convert takes two arguments: a checkpoint directory and the .gguf file to write');
  const type = values.type ?? 'f16';
  if (!(GGUF_CONVERT_TYPES as readonly string[]).includes(type)) throw new UsageError(`--type must be one of ${GGUF_CONVERT_TYPES.join(', ')}, got '${type}'`);
  const [src, out] = positionals;
  if (!isGgufPath(out)) throw new UsageError(`the output file must end in .gguf, got '${out}'`);
  const t0 = Date.now();
  const r = await convertToGguf(src, out, { type: type as GgufConvertType, name: values.name });
  io.stderr.write(`wrote ${out}: ${r.architecture}, ${r.tensors} tensors, ${formatBytes(r.bytes)} in ${((Date.now() - t0) / 1000).toFixed(1)} s\n`);
  return 0;
}

/** Checks a checkpoint against a config: every tensor the config implies, with its shape. */
function checkAgainst(ckpt: Checkpoint, cfgPath: string): { ok: boolean; message: string } {
  let config: MoeModelConfig;
  try {
    config = parseMoeConfig(cfgPath);
  } catch (e) {
    if (e instanceof MoeError) return { ok: false, message: e.message };
    throw e;
  }
  try {
    const m = MoeCheckpoint.openSync(ckpt, { config }); // the caller closes ckpt
    const unused = m.unusedTensors();
    return {
      ok: true,
      message:
        `all ${m.tensorsTotal} tensors that ${path.basename(cfgPath)} implies are present with the expected shapes (expert layout: ${m.layout}; ${formatBytes(m.bytesTotal)})` +
        (unused.length ? `; ${unused.length} unused: ${unused.slice(0, 5).join(', ')}${unused.length > 5 ? ', ...' : ''}` : ''),
    };
  } catch (e) {
    if (e instanceof MoeError) return { ok: false, message: e.message };
    throw e;
  }
}

function idList(v: string, flag: string): number[] {
  const ids = v.split(',').map((x) => x.trim()).filter((x) => x !== '').map(Number);
  if (ids.length === 0 || !ids.every((n) => Number.isInteger(n) && n >= 0)) throw new UsageError(`${flag} must be comma-separated token ids, got '${v}'`);
  return ids;
}

function numberFlag(v: string | undefined, flag: string): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (v.trim() === '' || Number.isNaN(n)) throw new UsageError(`${flag} must be a number, got '${v}'`);
  return n;
}

/** Token ids must be ids of the model: checked against config.json's vocab_size before loading. */
function checkIds(ids: readonly number[], vocabSize: number, flag: string): void {
  const bad = ids.find((id) => id >= vocabSize);
  if (bad !== undefined) throw new UsageError(`${flag}: ${bad} is not a token id of this model (vocab_size ${vocabSize})`);
}

/** The file --stats-svg names must be writable in an existing directory: checked before loading. */
function checkOutputFile(file: string, flag: string): void {
  const abs = path.resolve(file);
  const parent = path.dirname(abs);
  let st: fs.Stats | undefined;
  try {
    st = fs.statSync(parent);
  } catch {
    throw new UsageError(`${flag}: the directory ${parent} does not exist`);
  }
  if (!st.isDirectory()) throw new UsageError(`${flag}: ${parent} is not a directory`);
  if (fs.existsSync(abs) && fs.statSync(abs).isDirectory()) throw new UsageError(`${flag}: ${abs} is a directory`);
}

async function generate(args: string[], io: CliIo): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      'prompt-ids': { type: 'string' },
      prompt: { type: 'string' },
      chat: { type: 'string' },
      stop: { type: 'string', multiple: true },
      'max-new-tokens': { type: 'string' },
      temperature: { type: 'string' },
      'top-p': { type: 'string' },
      seed: { type: 'string' },
      'stop-ids': { type: 'string' },
      dtype: { type: 'string' },
      backend: { type: 'string' },
      'max-seq': { type: 'string' },
      stats: { type: 'boolean' },
      'stats-svg': { type: 'string' },
      json: { type: 'boolean' },
      'no-progress': { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) return io.stdout.write(HELP.generate), 0;
  // Every option is checked here, before a byte of the weights is read (Mixtral: 93 GB).
  if (positionals.length !== 1) throw new UsageError('generate takes one argument: a checkpoint directory or a .gguf file');
  if ([values['prompt-ids'], values.prompt, values.chat].filter((v) => v !== undefined).length !== 1) throw new UsageError('give one of --prompt-ids, --prompt and --chat');
  const stopStrings = values.stop ?? [];
  if (stopStrings.some((s) => s === '')) throw new UsageError('--stop must not be empty');
  if (stopStrings.length > 0 && values['prompt-ids'] !== undefined) throw new UsageError('--stop matches text: use it with --prompt or --chat');
  const backend = values.backend;
  if (backend !== undefined && !['auto', 'cpu', 'cuda', 'cuda-emu'].includes(backend)) throw new UsageError(`--backend must be one of auto, cpu, cuda, got '${backend}'`);
  const maxNewTokens = positiveInt(values['max-new-tokens'], '--max-new-tokens') ?? 16;
  const seed = numberFlag(values.seed, '--seed');
  if (seed !== undefined && (!Number.isInteger(seed) || seed < 0)) throw new UsageError(`--seed must be a non-negative integer, got '${values.seed}'`);
  const temperature = numberFlag(values.temperature, '--temperature');
  if (temperature !== undefined && !(temperature >= 0 && Number.isFinite(temperature)))
    throw new UsageError(`--temperature must be a finite number >= 0, got '${values.temperature}'`);
  const topP = numberFlag(values['top-p'], '--top-p');
  if (topP !== undefined && !(topP > 0 && topP <= 1)) throw new UsageError(`--top-p must be in (0, 1], got '${values['top-p']}'`);
  const opts = { maxNewTokens, temperature, topP, seed };
  const dtype = floatType(values.dtype, '--dtype');
  const svgFile = values['stats-svg'];
  if (svgFile !== undefined) checkOutputFile(svgFile, '--stats-svg');
  const dir = positionals[0];
  // config.json alone (a few kB; a GGUF's header) says which token ids exist and what the caches can hold
  const gguf = isGgufPath(dir);
  let config: MoeModelConfig;
  let tokenizer: TextTokenizer | null = null;
  if (gguf) {
    const g = GgufCheckpoint.openSync(dir, { mmap: false });
    try {
      config = g.config;
      if (values['prompt-ids'] === undefined) {
        if (!g.file.has('tokenizer.ggml.model')) throw new MoeError(`${dir}: the GGUF file has no tokenizer (tokenizer.ggml.model); give token ids with --prompt-ids`, 'ERR_TOKENIZER');
        tokenizer = GgufTokenizer.fromGguf(g.file);
      }
    } finally {
      g.close();
    }
  } else {
    config = parseMoeConfig(path.join(dir, 'config.json'));
    if (values['prompt-ids'] === undefined) {
      const tj = path.join(dir, 'tokenizer.json');
      if (!fs.existsSync(tj)) throw new MoeError(`${dir}: no tokenizer.json for --prompt or --chat; give token ids with --prompt-ids`, 'ERR_FILE_NOT_FOUND');
      tokenizer = Tokenizer.fromFile(tj);
    }
  }
  let promptIds: number[];
  if (values.chat !== undefined) {
    const { encodePrompt } = require('../model/text.js') as typeof import('../model/text.js');
    promptIds = encodePrompt(tokenizer!, [{ role: 'user', content: values.chat }]);
  } else if (values.prompt !== undefined) promptIds = tokenizer!.encode(values.prompt);
  else promptIds = idList(values['prompt-ids']!, '--prompt-ids');
  checkIds(promptIds, config.vocabSize, values['prompt-ids'] === undefined ? '--prompt (encoded)' : '--prompt-ids');
  const stop = values['stop-ids'] !== undefined ? idList(values['stop-ids'], '--stop-ids') : tokenizer?.eosTokenId != null ? [tokenizer.eosTokenId] : [];
  checkIds(stop, config.vocabSize, '--stop-ids');
  // the last new token is not fed back: the caches hold the prompt and maxNewTokens - 1 more
  const needed = promptIds.length + maxNewTokens - 1;
  const maxSeq = positiveInt(values['max-seq'], '--max-seq') ?? needed;
  if (maxSeq < needed)
    throw new UsageError(`--max-seq ${maxSeq} is too small for ${promptIds.length} prompt tokens and ${maxNewTokens} new tokens (needs ${needed})`);
  if (maxSeq > MAX_SEQ) throw new UsageError(`--max-seq must be at most ${MAX_SEQ}, got ${maxSeq} (prompt and new tokens)`);

  // the model loads the native addon: only here, so that params and inspect run without it
  const { MixtralModel } = require('../model/model.js') as { MixtralModel: typeof MixtralModelType };
  const bar = values['no-progress'] ? null : createProgressBar({ stream: io.stderr, label: 'loading' });
  const t0 = Date.now();
  const model = await MixtralModel.load(dir, { dtype, backend: backend as BackendName | undefined, maxSeq, onProgress: bar?.update });
  if (tokenizer) model.tokenizer = tokenizer;
  bar?.done();
  const ac = new AbortController();
  const onSigint = () => ac.abort();
  process.once('SIGINT', onSigint);
  try {
    const loaded = Date.now();
    io.stderr.write(`loaded in ${((loaded - t0) / 1000).toFixed(1)} s; prompt: ${promptIds.length} tokens\n`);
    const out: number[] = [];
    let firstAt = 0;
    let shown = '';
    // --json: nothing on stdout until the one object at the end
    const stream = (s: string) => void (values.json ? undefined : io.stdout.write(s));
    const stopSet = new Set(stop);
    let stopReason: 'stop' | 'length' | 'aborted' = 'length';
    try {
      if (tokenizer) {
        // text streams as it becomes final (whole characters, never the start of a --stop string)
        const onToken = (id: number) => {
          if (out.length === 0) firstAt = Date.now();
          out.push(id);
          if (stopSet.has(id)) stopReason = 'stop';
        };
        const it = model.generateText(promptIds, { ...opts, stopTokens: stop, stopAtEos: false, stop: stopStrings, signal: ac.signal, onToken, tokenizer });
        for (;;) {
          const r = await it.next();
          if (r.done) {
            if (r.value.stopReason === 'stop') stopReason = 'stop';
            shown = r.value.text;
            break;
          }
          stream(r.value);
        }
      } else
        for await (const id of model.generate(promptIds, { ...opts, stopTokens: stop, signal: ac.signal })) {
          if (out.length === 0) firstAt = Date.now();
          out.push(id);
          if (stopSet.has(id)) stopReason = 'stop';
          stream(`${out.length > 1 ? ' ' : ''}${id}`);
        }
    } catch (e) {
      if ((e as { code?: string }).code !== 'ERR_ABORTED') throw e;
      stopReason = 'aborted';
    }
    const end = Date.now();
    // with --stop the text ends before the stop string; else it is the decoded tokens
    const text = tokenizer ? (stopStrings.length > 0 ? shown : tokenizer.decode(out, { skipSpecialTokens: true })) : undefined;
    const rs = model.routingStats();
    if (values.json) {
      const timings = {
        loadSeconds: (loaded - t0) / 1000,
        prefillSeconds: out.length > 0 ? (firstAt - loaded) / 1000 : null,
        decodeTokensPerSecond: out.length > 1 && end > firstAt ? ((out.length - 1) * 1000) / (end - firstAt) : null,
      };
      const routing = values.stats ? { tokens: rs.tokens, layers: rs.layers, tokensPerExpert: rs.tokensPerExpert } : undefined;
      io.stdout.write(JSON.stringify({ promptIds, tokens: out, text, stopReason, backend: model.backend, timings, routing }) + '\n');
    }
    if (stopReason === 'aborted') {
      stream('\n');
      io.stderr.write(`aborted after ${out.length} tokens\n`);
      return 130;
    }
    if (text !== undefined && text.startsWith(shown)) stream(text.slice(shown.length));
    stream('\n');
    const decodeRate = out.length > 1 && end > firstAt ? `, decode ${(((out.length - 1) * 1000) / (end - firstAt)).toFixed(1)} tokens/s` : '';
    io.stderr.write(`${out.length} tokens; prefill ${promptIds.length} tokens in ${((firstAt - loaded) / 1000).toFixed(2)} s${decodeRate}\n`);
    // one row per MoE layer, labelled with its decoder-layer index (dense layers have no experts)
    const layerLabels = rs.layers.map((i) => `layer ${i}`);
    if (values.stats && !values.json)
      io.stdout.write(
        rs.layers.length === 0
          ? 'tokens per expert: the model has no MoE layers\n'
          : `tokens per expert (${rs.tokens} tokens through the model):\n` + formatRoutingTable(rs.tokensPerExpert, { layerLabels }),
      );
    if (values['stats-svg'] !== undefined) {
      if (rs.layers.length === 0) throw new MoeError('--stats-svg: the model has no MoE layers to draw', 'ERR_UNSUPPORTED');
      fs.writeFileSync(values['stats-svg'], routingHeatmapSvg(rs.tokensPerExpert, { title: `${path.basename(path.resolve(dir))}: tokens per expert over ${rs.tokens} tokens`, layerLabels }));
      io.stderr.write(`routing heat map: ${values['stats-svg']}\n`);
    }
    return 0;
  } finally {
    process.removeListener('SIGINT', onSigint);
    model.dispose();
  }
}

async function serve(args: string[], io: CliIo): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      host: { type: 'string' },
      port: { type: 'string' },
      'api-key': { type: 'string' },
      'model-name': { type: 'string' },
      'max-sequences': { type: 'string' },
      'max-queued': { type: 'string' },
      'max-batch-tokens': { type: 'string' },
      'max-context': { type: 'string' },
      'kv-blocks': { type: 'string' },
      'block-size': { type: 'string' },
      'max-tokens': { type: 'string' },
      'body-limit': { type: 'string' },
      'grace-seconds': { type: 'string' },
      dtype: { type: 'string' },
      backend: { type: 'string' },
      log: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) return io.stdout.write(HELP.serve), 0;
  if (positionals.length > 1) throw new UsageError('serve takes at most one argument: a checkpoint directory or a .gguf file');
  const backend = values.backend;
  if (backend !== undefined && !['auto', 'cpu', 'cuda', 'cuda-emu'].includes(backend)) throw new UsageError(`--backend must be one of auto, cpu, cuda, got '${backend}'`);
  const nonNegInt = (v: string | undefined, flag: string) => {
    if (v === undefined) return undefined;
    const n = Number(v);
    if (v.trim() === '' || !Number.isInteger(n) || n < 0) throw new UsageError(`${flag} must be a non-negative integer, got '${v}'`);
    return n;
  };
  const port = nonNegInt(values.port, '--port') ?? 8080;
  if (port > 65535) throw new UsageError(`--port must be at most 65535, got ${port}`);
  const grace = numberFlag(values['grace-seconds'], '--grace-seconds') ?? 10;
  if (!(grace >= 0 && Number.isFinite(grace))) throw new UsageError(`--grace-seconds must be a number >= 0, got '${values['grace-seconds']}'`);
  const apiKey = values['api-key'] ?? (process.env.MOE_KERNELS_API_KEY || undefined);
  if (apiKey !== undefined && apiKey === '') throw new UsageError('--api-key must not be empty');
  const engineOptions = {
    maxSequences: positiveInt(values['max-sequences'], '--max-sequences'),
    maxQueued: nonNegInt(values['max-queued'], '--max-queued'),
    maxBatchTokens: positiveInt(values['max-batch-tokens'], '--max-batch-tokens'),
    numBlocks: positiveInt(values['kv-blocks'], '--kv-blocks'),
    blockSize: positiveInt(values['block-size'], '--block-size'),
  };
  const maxContextFlag = positiveInt(values['max-context'], '--max-context');
  const dtype = floatType(values.dtype, '--dtype');
  const dir = positionals[0];
  let config: MoeModelConfig | null = null;
  if (dir !== undefined) {
    if (isGgufPath(dir)) {
      const g = GgufCheckpoint.openSync(dir, { mmap: false });
      try {
        config = g.config;
      } finally {
        g.close();
      }
    } else config = parseMoeConfig(path.join(dir, 'config.json'));
  }
  const maxContext = maxContextFlag ?? Math.min(config?.maxPositionEmbeddings ?? 2048, 4096);
  if (config && maxContext > config.maxPositionEmbeddings)
    throw new UsageError(`--max-context ${maxContext} is more than the model's max_position_embeddings (${config.maxPositionEmbeddings})`);

  // the addon, the engine and fastify load only here
  const { MixtralModel } = require('../model/model.js') as { MixtralModel: typeof MixtralModelType };
  const { Engine } = require('../serve/engine.js') as typeof import('../serve/engine.js');
  const { MoeServer } = require('../serve/server.js') as typeof import('../serve/server.js');
  const { demoModel, DEMO_MODEL_NAME } = require('../serve/demo.js') as typeof import('../serve/demo.js');
  const t0 = Date.now();
  // the engine keeps the KV caches in its own pools: the model's own caches need one position
  const model =
    dir === undefined
      ? await demoModel({ backend: backend as BackendName | undefined, maxSeq: 1 })
      : await MixtralModel.load(dir, { dtype, backend: backend as BackendName | undefined, maxSeq: 1 });
  let engine: EngineType | null = null;
  let onSignal: ((sig: string) => void) | null = null;
  try {
    engine = await Engine.create(model, { ...engineOptions, maxContext });
    const modelName = values['model-name'] ?? (dir === undefined ? DEMO_MODEL_NAME : path.basename(path.resolve(dir)).replace(/\.gguf$/i, ''));
    const server = new MoeServer(engine, {
      modelName,
      apiKey: apiKey ?? null,
      bodyLimit: positiveInt(values['body-limit'], '--body-limit'),
      defaultMaxTokens: positiveInt(values['max-tokens'], '--max-tokens'),
      logger: values.log === true,
    });
    const done = new Promise<string>((resolve) => (onSignal = resolve));
    process.once('SIGTERM', onSignal!);
    process.once('SIGINT', onSignal!);
    const { url } = await server.listen({ host: values.host, port });
    const s = engine.stats;
    io.stderr.write(
      `${dir === undefined ? 'the demo model (random weights: its text is noise)' : dir} on ${model.backend}, loaded in ${((Date.now() - t0) / 1000).toFixed(1)} s; ` +
        `${engine.maxSequences} sequences at once, ${engine.maxQueued} queued, context ${engine.maxContext}, ${s.totalBlocks} KV blocks of ${s.blockSize} (${formatBytes(s.kvBytes)})` +
        `${apiKey ? '; API key required' : ''}\n`,
    );
    io.stdout.write(`moe-kernels serve: listening on ${url} (model ${modelName})\n`);
    const signal = await done;
    io.stderr.write(`${signal}: no new requests; finishing ${server.inflight} running within ${grace} s\n`);
    await server.shutdown({ graceMs: Math.round(grace * 1000) });
    io.stderr.write('stopped\n');
    return 0;
  } finally {
    if (onSignal) for (const sig of ['SIGTERM', 'SIGINT']) process.removeListener(sig, onSignal);
    await engine?.close();
    model.dispose();
  }
}

const COMMANDS: Record<string, (args: string[], io: CliIo) => number | Promise<number>> = { params, inspect, generate, convert, serve, launch };

/** The package's version, from its package.json (lib/cli and dist/cli are both two levels down). */
export function version(): string {
  return (JSON.parse(fs.readFileSync(path.join(__dirname, '..', '..', 'package.json'), 'utf8')) as { version: string }).version;
}

/** A Node system error (fs, net): `code` like ENOENT and a `syscall`; its message is one line. */
const isSystemError = (e: unknown): e is Error & { code: string } =>
  e instanceof Error && typeof (e as { code?: unknown }).code === 'string' && typeof (e as { syscall?: unknown }).syscall === 'string';

/** Runs the CLI on `argv` (without node and the script); resolves to the exit code. */
export async function main(argv: string[], io: CliIo = { stdout: process.stdout, stderr: process.stderr }): Promise<number> {
  const [cmd, ...rest] = argv;
  if (cmd === undefined || cmd === '--help' || cmd === '-h' || cmd === 'help') {
    io.stdout.write(HELP.main);
    return cmd === undefined ? 2 : 0;
  }
  if (cmd === '--version' || cmd === '-v') {
    io.stdout.write(`${version()}\n`);
    return 0;
  }
  const run = COMMANDS[cmd];
  if (!run) {
    io.stderr.write(`moe-kernels: unknown command '${cmd}'\n\n${HELP.main}`);
    return 2;
  }
  try {
    return await run(rest, io);
  } catch (e) {
    const err = e as Error & { code?: string };
    if (e instanceof UsageError || err.code?.startsWith('ERR_PARSE_ARGS')) {
      io.stderr.write(`moe-kernels ${cmd}: ${err.message}\n\n${HELP[cmd]}`);
      return 2;
    }
    if (e instanceof MoeError || ((e instanceof RangeError || e instanceof TypeError) && err.code?.startsWith('ERR_'))) {
      io.stderr.write(`moe-kernels ${cmd}: ${err.message} (${err.code})\n`);
      return 1;
    }
    // e.g. ENOENT, EACCES or ENOSPC writing --stats-svg: the message names the call and the path
    if (isSystemError(e)) {
      io.stderr.write(`moe-kernels ${cmd}: ${err.message}\n`);
      return 1;
    }
    throw e; // a defect: bin/moe-kernels.js prints the stack
  }
}
