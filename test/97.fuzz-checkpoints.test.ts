// A bounded fuzz of the checkpoint readers: valid files (a safetensors file of every dtype, config.json
// of each model family, a sharded checkpoint's index) mutated by bit flips, truncation, junk, size
// fields set to extremes and JSON values swapped for hostile ones, then opened and read the way a
// user would. Every failure must be one of the package's typed errors (a MoeError with a
// documented code, or a TypeError / RangeError with a code); anything else (a raw EISDIR, a stack
// overflow, an uncoded RangeError, a hang) fails the test, naming the seed and the mutation.
//
// Seeded and deterministic. MOE_FUZZ_ITERATIONS=n (default 1000 per reader) and MOE_FUZZ_SEED=s run
// longer or other campaigns by hand.
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  Checkpoint,
  convertToGguf,
  GgufCheckpoint,
  GgufFile,
  GgufTokenizer,
  countParameters,
  estimateMemory,
  MoeCheckpoint,
  MoeError,
  parseMoeConfig,
  SafetensorsFile,
  tensor,
  writeSafetensorsSync,
  writeShardedSafetensors,
  type MoeModelConfig,
} from '../lib/index';
import { MOE_ERROR_CODES } from '../lib/core/errors';
import { tinyDeepseekRaw, tinyMixtralRaw, tinyQwen2MoeRaw, tmpDir, writeTinyMixtral } from './helpers/checkpoints';
import { mulberry32, randn } from './helpers/reference';

const ITERATIONS = Number(process.env.MOE_FUZZ_ITERATIONS ?? 1000);
const SEED = Number(process.env.MOE_FUZZ_SEED ?? 20240611);

/** Whether an error is one the package documents; returns a description of it when it is not. */
function untyped(e: unknown): string | null {
  if (e instanceof MoeError) return (MOE_ERROR_CODES as readonly string[]).includes(e.code) ? null : `MoeError with undocumented code ${e.code}: ${e.message}`;
  const code = (e as { code?: unknown })?.code;
  if ((e instanceof TypeError || e instanceof RangeError) && (code === 'ERR_INVALID_ARG_TYPE' || code === 'ERR_OUT_OF_RANGE')) return null;
  return e instanceof Error ? `${e.name} (code ${String(code)}): ${e.message}\n${e.stack}` : `a thrown ${typeof e}: ${String(e)}`;
}

type Rng = () => number;
const int = (rnd: Rng, n: number) => Math.floor(rnd() * n);
const pick = <T>(rnd: Rng, xs: readonly T[]): T => xs[int(rnd, xs.length)];

/** Values that have broken readers: extremes of every numeric range, wrong types, deep nesting. */
const HOSTILE = [
  '-1', '0', '1', '2', '-0', '0.5', '1e308', '-1e308', '1e-320', '4294967296', '9007199254740991', '9007199254740992',
  '18446744073709551615', '1e400', 'null', 'true', '"x"', '""', '[]', '{}', '[1,2,3]', '{"a":1}',
  `${'['.repeat(5000)}${']'.repeat(5000)}`, `"${'a'.repeat(10000)}"`, '"\\u0000"', '"__proto__"',
];

// ---- byte-level mutations ------------------------------------------------------------------

function flipBits(rnd: Rng, b: Buffer): [Buffer, string] {
  const out = Buffer.from(b);
  const n = 1 + int(rnd, 8);
  const where: number[] = [];
  for (let i = 0; i < n; i++) {
    const at = int(rnd, out.length);
    out[at] ^= 1 << int(rnd, 8);
    where.push(at);
  }
  return [out, `flip bits at ${where.join(',')}`];
}

function truncate(rnd: Rng, b: Buffer): [Buffer, string] {
  const at = int(rnd, b.length);
  return [b.subarray(0, at), `truncate to ${at} bytes`];
}

function junk(rnd: Rng, b: Buffer): [Buffer, string] {
  const out = Buffer.from(b);
  const at = int(rnd, out.length);
  const n = 1 + int(rnd, 16);
  for (let i = at; i < Math.min(out.length, at + n); i++) out[i] = int(rnd, 256);
  return [out, `random bytes at ${at}..${at + n}`];
}

function extend(rnd: Rng, b: Buffer): [Buffer, string] {
  const n = 1 + int(rnd, 64);
  return [Buffer.concat([b, Buffer.alloc(n, int(rnd, 256))]), `append ${n} bytes`];
}

// ---- safetensors ---------------------------------------------------------------------------

const LENGTHS = [0n, 1n, 2n, 7n, 8n, 2n ** 31n, 2n ** 32n, 2n ** 53n - 1n, 2n ** 53n, 2n ** 63n, 2n ** 64n - 1n];

function headerLength(rnd: Rng, b: Buffer): [Buffer, string] {
  const out = Buffer.from(b);
  const real = out.readBigUInt64LE(0);
  const size = BigInt(out.length);
  const v = pick(rnd, [...LENGTHS, real - 1n, real + 1n, size - 8n, size - 7n, size]);
  out.writeBigUInt64LE(v < 0n ? 0n : v, 0);
  return [out, `header length ${v}`];
}

/** Swaps one JSON value (a number, or any token after a colon) of the header for a hostile one. */
function headerValue(rnd: Rng, b: Buffer): [Buffer, string] {
  const len = Number(b.readBigUInt64LE(0));
  const header = b.subarray(8, 8 + len).toString('utf8');
  const tokens = [...header.matchAll(/-?\d+(\.\d+)?([eE][-+]?\d+)?|"[^"]*"|\[[^\[\]]*\]|\{[^{}]*\}/g)];
  const t = pick(rnd, tokens);
  const v = pick(rnd, HOSTILE);
  const text = header.slice(0, t.index) + v + header.slice(t.index! + t[0].length);
  const json = Buffer.from(text);
  const out = Buffer.alloc(8 + json.length + (b.length - 8 - len));
  out.writeBigUInt64LE(BigInt(json.length), 0);
  json.copy(out, 8);
  b.copy(out, 8 + json.length, 8 + len);
  return [out, `header token ${JSON.stringify(t[0].slice(0, 40))} -> ${v.slice(0, 40)}`];
}

/** Duplicates or drops a top-level entry, or adds a second __metadata__. */
function headerEntries(rnd: Rng, b: Buffer): [Buffer, string] {
  const len = Number(b.readBigUInt64LE(0));
  const header = b.subarray(8, 8 + len).toString('utf8').trimEnd();
  const entries = Object.entries(JSON.parse(header) as Record<string, unknown>).map(([k, v]) => `${JSON.stringify(k)}:${JSON.stringify(v)}`);
  const i = int(rnd, entries.length);
  const op = int(rnd, 3);
  if (op === 0) entries.splice(i, 0, entries[i]);
  else if (op === 1) entries.splice(i, 1);
  else entries.push('"__metadata__":{"x":"y"}');
  const json = Buffer.from(`{${entries.join(',')}}`);
  const out = Buffer.alloc(8 + json.length + (b.length - 8 - len));
  out.writeBigUInt64LE(BigInt(json.length), 0);
  json.copy(out, 8);
  b.copy(out, 8 + json.length, 8 + len);
  return [out, ['duplicate', 'drop', 'second __metadata__ for'][op] + ` entry ${i}`];
}

const BYTE_MUTATIONS = [flipBits, truncate, junk, extend, headerLength, headerValue, headerValue, headerEntries];

function readWhole(f: SafetensorsFile): void {
  for (const name of f.names()) {
    const info = f.info(name);
    if (info.type === null) continue;
    f.readSync(name);
    if (info.type !== 'int32') f.readSync(name, { dtype: info.type === 'float32' ? 'bfloat16' : 'float32' });
  }
}

async function readWholeAsync(f: SafetensorsFile): Promise<void> {
  for (const name of f.names()) if (f.info(name).type !== null) await f.read(name);
}

// ---- config.json ---------------------------------------------------------------------------

/** Sets one field of a config to a hostile value (or deletes it). */
function configField(rnd: Rng, raw: Record<string, unknown>): [string, string] {
  const keys = Object.keys(raw);
  const k = pick(rnd, keys);
  if (rnd() < 0.1) {
    const { [k]: _, ...rest } = raw;
    return [JSON.stringify(rest), `delete ${k}`];
  }
  const v = pick(rnd, HOSTILE);
  return [JSON.stringify({ ...raw, [k]: '\u0000HOSTILE\u0000' }).replace('"\\u0000HOSTILE\\u0000"', v), `${k} = ${v.slice(0, 40)}`];
}

const fuzz = suite<{ dir: string }>('fuzz: checkpoint readers', { dir: '' });
fuzz.before((ctx) => {
  ctx.dir = tmpDir('moe-fuzz-');
});
fuzz.after((ctx) => fs.rmSync(ctx.dir, { recursive: true, force: true }));

/** Runs `attempt` on each mutation; collects the failures that are not typed errors. */
async function campaign(label: string, seed: number, n: number, make: (rnd: Rng, i: number) => [string, () => unknown]): Promise<void> {
  const rnd = mulberry32(seed);
  const bad: string[] = [];
  let refused = 0;
  for (let i = 0; i < n; i++) {
    const [what, attempt] = make(rnd, i);
    try {
      await attempt();
    } catch (e) {
      refused++;
      const u = untyped(e);
      if (u !== null) bad.push(`${label} #${i} (seed ${seed}): ${what}: ${u}`);
    }
  }
  assert.equal(bad.slice(0, 5), [], `${bad.length} of ${n} mutations escaped as untyped errors`);
  // the mutations must reach the checks: most files are refused, some still open
  assert.ok(refused > n / 4 && refused < n, `${label}: ${refused} of ${n} refused; the mutations do not exercise the reader`);
}

fuzz('safetensors: mutated files open and read, or fail with a typed error', async ({ dir }) => {
  const base = path.join(dir, 'base.safetensors');
  writeSafetensorsSync(base, {
    f32: tensor('float32', randn(12, 1), [3, 4]),
    f16: tensor('float16', randn(6, 2), [6]),
    bf16: tensor('bfloat16', randn(8, 3), [2, 2, 2]),
    i32: tensor('int32', [1, -2, 3], [3]),
    scalar: tensor('float32', [7], []),
    empty: tensor('float16', [], [0, 3]),
  }, { format: 'pt' });
  const good = fs.readFileSync(base);
  const file = path.join(dir, 'mutant.safetensors');
  await campaign('safetensors', SEED, ITERATIONS, (rnd, i) => {
    const m = pick(rnd, BYTE_MUTATIONS);
    const [bytes, what] = m(rnd, good);
    return [what, async () => {
      fs.writeFileSync(file, bytes);
      const f = i % 4 === 0 ? await SafetensorsFile.open(file) : SafetensorsFile.openSync(file);
      try {
        if (i % 4 === 0) await readWholeAsync(f);
        else readWhole(f);
      } finally {
        f.close();
      }
    }];
  });
});

fuzz('config.json: mutated configs parse, count and check a checkpoint, or fail with a typed error', async ({ dir }) => {
  const ckpt = path.join(dir, 'tiny');
  await writeTinyMixtral(ckpt);
  const file = path.join(dir, 'config.json');
  const bases = [tinyMixtralRaw(), tinyQwen2MoeRaw(), tinyDeepseekRaw()];
  await campaign('config.json', SEED + 1, ITERATIONS, (rnd) => {
    const raw = pick(rnd, bases);
    let text: string;
    let what: string;
    if (rnd() < 0.7) [text, what] = configField(rnd, raw);
    else {
      const [b, w] = pick(rnd, [flipBits, truncate, junk])(rnd, Buffer.from(JSON.stringify(raw)));
      [text, what] = [b.toString('latin1'), w];
    }
    return [`${raw.model_type}: ${what}`, () => {
      fs.writeFileSync(file, text);
      const config: MoeModelConfig = parseMoeConfig(file);
      countParameters(config);
      estimateMemory(config);
      MoeCheckpoint.openSync(ckpt, { config }).close();
    }];
  });
});

fuzz('model.safetensors.index.json: mutated indexes open, or fail with a typed error', async ({ dir }) => {
  const d = path.join(dir, 'sharded');
  await writeShardedSafetensors(d, { a: tensor('float32', [1, 2], [2]), b: tensor('bfloat16', [3], [1]), c: tensor('int32', [4], [1]) }, { maxShardBytes: 8 });
  const index = path.join(d, 'model.safetensors.index.json');
  const good = fs.readFileSync(index);
  const raw = JSON.parse(good.toString('utf8'));
  await campaign('index', SEED + 2, ITERATIONS, (rnd) => {
    let text: Buffer;
    let what: string;
    const r = rnd();
    if (r < 0.4) [text, what] = pick(rnd, [flipBits, truncate, junk])(rnd, good);
    else if (r < 0.7) {
      const k = pick(rnd, Object.keys(raw.weight_map));
      const v = pick(rnd, [...HOSTILE, '"../x.safetensors"', '"/etc/passwd"', '"."', '".."', '"model-00001-of-00002.safetensors"']);
      text = Buffer.from(JSON.stringify({ ...raw, weight_map: { ...raw.weight_map, [k]: '\u0000H\u0000' } }).replace('"\\u0000H\\u0000"', v));
      what = `weight_map.${k} = ${v.slice(0, 40)}`;
    } else {
      const v = pick(rnd, HOSTILE);
      text = Buffer.from(JSON.stringify({ ...raw, weight_map: '\u0000H\u0000' }).replace('"\\u0000H\\u0000"', v));
      what = `weight_map = ${v.slice(0, 40)}`;
    }
    return [what, () => {
      fs.writeFileSync(index, text);
      const c = Checkpoint.openSync(d);
      try {
        for (const n of c.names()) c.readSync(n);
      } finally {
        c.close();
      }
    }];
  });
  fs.writeFileSync(index, good);
});

// ---- GGUF ------------------------------------------------------------------------------------

/** Sets one u64 or u32 field of a GGUF header (a count, a length, a dim, a type, an offset) to an extreme. */
function ggufField(rnd: Rng, b: Buffer, headerEnd: number): [Buffer, string] {
  const out = Buffer.from(b);
  const at = int(rnd, Math.max(1, headerEnd - 8));
  if (rnd() < 0.5) {
    const v = pick(rnd, LENGTHS);
    out.writeBigUInt64LE(v >= 2n ** 64n ? 2n ** 64n - 1n : v, at);
    return [out, `u64 at ${at} = ${v}`];
  }
  const v = pick(rnd, [0, 1, 2, 4, 9, 12, 13, 30, 31, 0xffffffff, 0x80000000]);
  out.writeUInt32LE(v, at);
  return [out, `u32 at ${at} = ${v}`];
}

fuzz('gguf: mutated files open (mapped, in memory, by positioned reads), map to a model and read, or fail with a typed error', async ({ dir }) => {
  await writeTinyMixtral(path.join(dir, 'gg'), { raw: tinyMixtralRaw({ num_hidden_layers: 1, vocab_size: 40, hidden_size: 32, intermediate_size: 32 }) });
  const base = path.join(dir, 'base.gguf');
  await convertToGguf(path.join(dir, 'gg'), base, { type: 'f16' });
  // a metadata section with every value type too
  const good = fs.readFileSync(base);
  const headerEnd = GgufFile.fromBytes(good).headerBytes;
  const file = path.join(dir, 'mutant.gguf');
  const mutations = [flipBits, truncate, junk, extend, (r: Rng, b: Buffer) => ggufField(r, b, headerEnd), (r: Rng, b: Buffer) => ggufField(r, b, headerEnd)];
  await campaign('gguf', SEED + 4, ITERATIONS, (rnd, i) => {
    const m = pick(rnd, mutations);
    const [bytes, what] = m(rnd, good);
    const mode = i % 3;
    return [
      `${m.name}: ${what} (${['mapped', 'positioned reads', 'in memory'][mode]})`,
      async () => {
        let f: GgufFile;
        if (mode === 2) f = GgufFile.fromBytes(bytes);
        else {
          fs.writeFileSync(file, bytes);
          f = await GgufFile.open(file, { mmap: mode === 0 });
        }
        for (const name of f.names()) if (f.info(name).type !== null) await f.read(name);
        f.close();
        if (mode !== 2) {
          const g = await GgufCheckpoint.open(file, { mmap: mode === 0 });
          try {
            g.checkRunnable();
            g.estimateMemory();
            await g.loadGlobals();
            for await (const _ of g.layers());
            if (g.file.has('tokenizer.ggml.model')) GgufTokenizer.fromGguf(g.file).encode('hello wörld 🙂');
          } finally {
            g.close();
          }
        }
      },
    ];
  });
});

fuzz('the harness can fail: an untyped error is reported', () => {
  assert.is(untyped(new MoeError('x', 'ERR_CONFIG')), null);
  assert.is(untyped(Object.assign(new RangeError('x'), { code: 'ERR_OUT_OF_RANGE' })), null);
  assert.ok(untyped(new RangeError('Maximum call stack size exceeded')));
  assert.ok(untyped(Object.assign(new Error('EISDIR'), { code: 'EISDIR' })));
  assert.ok(untyped(new MoeError('x', 'ERR_NOT_DOCUMENTED')));
});

fuzz.run();
