/**
 * The `moe-kernels` command (bin/moe-kernels.js runs `main`). Commands:
 *   params <config.json | dir>     parameter breakdown, total and active, and a memory estimate
 *   inspect <dir | file>           the tensors of a checkpoint, checked against config.json
 * `main` returns the exit code (0 ok, 1 failed, 2 usage error) and never exits the process.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { parseMoeConfig, type MixtralConfig, type MoeModelConfig } from './config.js';
import { MoeError } from './errors.js';
import { countParameters, estimateMemory, formatBytes, type MemoryEstimate } from './params.js';
import { Checkpoint } from './safetensors.js';
import { FLOAT_TYPES, type FloatType } from './tensor.js';
import { MixtralCheckpoint } from './weights.js';

export interface CliIo {
  stdout: { write(s: string): unknown };
  stderr: { write(s: string): unknown };
}

const HELP: Record<string, string> = {
  main: `Usage: moe-kernels <command> [options]

Commands:
  params <config.json | checkpoint dir>   parameters (total, active, by part) and memory needed
  inspect <checkpoint dir | file>         tensors of a checkpoint, checked against its config.json

Run 'moe-kernels <command> --help' for a command's options.
`,
  params: `Usage: moe-kernels params <config.json | checkpoint dir> [options]

Prints the parameter breakdown of a Hugging Face MoE config (mixtral, qwen2_moe, deepseek): total
parameters, the parameters one token uses (active), and the memory the weights and a KV cache need.

Options:
  --dtype <t>        weight type: float32, float16, bfloat16 (default: the config's torch_dtype, else bfloat16)
  --kv-dtype <t>     KV cache type (default: --dtype)
  --context <n>      tokens of context per sequence (default: max_position_embeddings)
  --batch <n>        sequences at once (default 1)
  --json             print JSON instead of tables
  -h, --help         this help
`,
  inspect: `Usage: moe-kernels inspect <checkpoint dir | model.safetensors.index.json | file.safetensors> [options]

Lists every tensor (name, dtype, shape, bytes) from the headers, without reading tensor data, and
when a config.json is next to the checkpoint (or given) checks that every tensor the config needs is
present with the expected shape.

Options:
  --config <path>    config.json to check against (default: the one next to the checkpoint)
  --no-check         list only
  --json             print JSON instead of a table
  -h, --help         this help
`,
};

class UsageError extends Error {}

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
  if (positionals.length !== 1) throw new UsageError('params takes one argument: a config.json or a checkpoint directory');
  const config = parseMoeConfig(configPath(positionals[0]));
  const counts = countParameters(config);
  const mem = estimateMemory(config, {
    dtype: floatType(values.dtype, '--dtype'),
    kvDtype: floatType(values['kv-dtype'], '--kv-dtype'),
    contextLength: positiveInt(values.context, '--context'),
    batch: positiveInt(values.batch, '--batch'),
  });
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
  if (positionals.length !== 1) throw new UsageError('inspect takes one argument: a checkpoint directory, index file or .safetensors file');
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

/** Checks a checkpoint against a config: every tensor the config implies, with its shape. */
function checkAgainst(ckpt: Checkpoint, cfgPath: string): { ok: boolean; message: string } {
  let config: MoeModelConfig;
  try {
    config = parseMoeConfig(cfgPath);
  } catch (e) {
    if (e instanceof MoeError) return { ok: false, message: e.message };
    throw e;
  }
  if (config.modelType !== 'mixtral') return { ok: true, message: `config is ${config.modelType}: tensor names are only checked for mixtral so far` };
  try {
    const m = MixtralCheckpoint.openSync(ckpt, { config: config as MixtralConfig }); // the caller closes ckpt
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

const COMMANDS: Record<string, (args: string[], io: CliIo) => number> = { params, inspect };

/** Runs the CLI on `argv` (without node and the script); resolves to the exit code. */
export async function main(argv: string[], io: CliIo = { stdout: process.stdout, stderr: process.stderr }): Promise<number> {
  const [cmd, ...rest] = argv;
  if (cmd === undefined || cmd === '--help' || cmd === '-h' || cmd === 'help') {
    io.stdout.write(HELP.main);
    return cmd === undefined ? 2 : 0;
  }
  const run = COMMANDS[cmd];
  if (!run) {
    io.stderr.write(`moe-kernels: unknown command '${cmd}'\n\n${HELP.main}`);
    return 2;
  }
  try {
    return run(rest, io);
  } catch (e) {
    const err = e as Error & { code?: string };
    if (e instanceof UsageError || err.code?.startsWith('ERR_PARSE_ARGS')) {
      io.stderr.write(`moe-kernels ${cmd}: ${err.message}\n\n${HELP[cmd]}`);
      return 2;
    }
    if (e instanceof MoeError) {
      io.stderr.write(`moe-kernels ${cmd}: ${err.message} (${err.code})\n`);
      return 1;
    }
    throw e;
  }
}
