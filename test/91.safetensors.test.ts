// Safetensors files and checkpoints: round trips of every dtype, headers that must be refused with
// a clear error, an offset past 4 GiB (a sparse file), sharded checkpoints, and Mixtral weights in
// both expert layouts loaded layer by layer with shape checks.
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  bfloat16ToFloat32,
  cast,
  Checkpoint,
  countParameters,
  MixtralCheckpoint,
  MoeLayer,
  parseMixtralConfig,
  SafetensorsFile,
  tensor,
  writeSafetensors,
  writeSafetensorsSync,
  writeShardedSafetensors,
  type LoadProgress,
  type Tensor,
} from '../lib/index';
import { expectMoeError, tinyMixtralRaw, tmpDir, writeTinyMixtral } from './helpers/checkpoints';
import { assertSameTensor, randn } from './helpers/reference';

const st = suite<{ dir: string }>('safetensors', { dir: '' });
st.before((ctx) => {
  ctx.dir = tmpDir();
});
st.after((ctx) => fs.rmSync(ctx.dir, { recursive: true, force: true }));

const sample = (): Record<string, Tensor> => ({
  f32: tensor('float32', randn(6, 1), [2, 3]),
  f16: tensor('float16', randn(10, 2), [5, 2]),
  bf16: tensor('bfloat16', randn(7, 3), [7]),
  i32: tensor('int32', [1, -2, 3, 2 ** 31 - 1], [2, 1, 2]),
  scalar: tensor('float32', [42], []),
  empty: tensor('bfloat16', [], [0, 4]),
});

st('every dtype round-trips bit for bit, async and sync, with metadata', async ({ dir }) => {
  const file = path.join(dir, 'all.safetensors');
  const want = sample();
  await writeSafetensors(file, want, { format: 'pt', note: 'hi' });
  const f = await SafetensorsFile.open(file);
  assert.equal(f.names(), Object.keys(want));
  assert.equal({ ...f.metadata }, { format: 'pt', note: 'hi' });
  assert.equal(f.infos().map((i) => i.dtype), ['F32', 'F16', 'BF16', 'I32', 'F32', 'BF16']);
  for (const [name, t] of Object.entries(want)) {
    assertSameTensor(await f.read(name), t, `${name} async`);
    assertSameTensor(f.readSync(name), t, `${name} sync`);
  }
  f.close();
  // the sync writer and the sync opener give the same file
  const file2 = path.join(dir, 'all-sync.safetensors');
  writeSafetensorsSync(file2, want, { format: 'pt', note: 'hi' });
  assert.ok(fs.readFileSync(file).equals(fs.readFileSync(file2)));
  const g = SafetensorsFile.openSync(file2);
  assertSameTensor(g.readSync('f16'), want.f16, 'openSync');
  g.close();
});

st('the header is padded to 8 bytes and offsets are contiguous, as the format says', async ({ dir }) => {
  const file = path.join(dir, 'layout.safetensors');
  await writeSafetensors(file, sample());
  const buf = fs.readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  assert.is(n % 8, 0);
  const header = JSON.parse(buf.subarray(8, 8 + n).toString());
  let end = 0;
  for (const [, v] of Object.entries(header) as [string, { data_offsets: number[] }][]) {
    assert.is(v.data_offsets[0], end);
    end = v.data_offsets[1];
  }
  assert.is(buf.length, 8 + n + end);
});

st('dtype conversion on load uses the library conversions', async ({ dir }) => {
  const file = path.join(dir, 'conv.safetensors');
  const bf = tensor('bfloat16', randn(33, 4), [3, 11]);
  const f32 = tensor('float32', randn(12, 5), [12]);
  await writeSafetensors(file, { bf, f32, i: tensor('int32', [1], [1]) });
  const f = await SafetensorsFile.open(file);
  const wide = await f.read('bf', { dtype: 'float32' });
  assertSameTensor(wide, tensor('float32', bfloat16ToFloat32(bf.data as Uint16Array), [3, 11]), 'bf16 -> f32');
  assertSameTensor(f.readSync('f32', { dtype: 'float16' }), cast(f32, 'float16'), 'f32 -> f16');
  assertSameTensor(await f.read('f32', { dtype: 'float32' }), f32, 'same type');
  await expectMoeError(() => f.read('i', { dtype: 'float32' }), 'ERR_TENSOR_DTYPE', "'i'", 'I32');
  let te: unknown;
  try {
    f.readSync('bf', { dtype: 'int8' as never });
  } catch (e) {
    te = e;
  }
  assert.instance(te, TypeError);
  await expectMoeError(() => f.read('nope'), 'ERR_TENSOR_MISSING', "'nope'", file);
  f.close();
  await expectMoeError(() => f.read('bf'), 'ERR_DISPOSED', file);
});

st('close() while reads run: they finish with the right data, later reads are ERR_DISPOSED', async ({ dir }) => {
  const file = path.join(dir, 'close-race.safetensors');
  const want: Record<string, Tensor> = {};
  for (let i = 0; i < 8; i++) want[`t${i}`] = tensor('float32', randn(50_000, 100 + i), [50_000]);
  await writeSafetensors(file, want);
  const f = await SafetensorsFile.open(file);
  const reads = Object.keys(want).map((n) => f.read(n));
  f.close();
  assert.ok(f.closed);
  const got = await Promise.all(reads);
  got.forEach((t, i) => assertSameTensor(t, want[`t${i}`], `t${i}`));
  await expectMoeError(() => f.read('t0'), 'ERR_DISPOSED');
  await expectMoeError(() => f.readSync('t0'), 'ERR_DISPOSED');
  f.close(); // twice is fine
});

st('odd tensor names (__proto__, dots, unicode) round-trip', async ({ dir }) => {
  const file = path.join(dir, 'names.safetensors');
  const want: Record<string, Tensor> = Object.create(null);
  want['__proto__'] = tensor('float32', [1, 2], [2]);
  want['a.b.c'] = tensor('float16', [3], [1]);
  want['wörld ▁'] = tensor('int32', [4], [1]);
  await writeSafetensors(file, want);
  const f = SafetensorsFile.openSync(file);
  assert.equal(f.names(), ['__proto__', 'a.b.c', 'wörld ▁']);
  for (const n of f.names()) assertSameTensor(f.readSync(n), want[n], n);
  f.close();
});

/** A file from a raw header object and a byte buffer of `dataLen` bytes. */
function rawFile(file: string, header: unknown, dataLen: number, headerText?: string): string {
  const json = Buffer.from(headerText ?? JSON.stringify(header));
  const out = Buffer.alloc(8 + json.length + dataLen);
  out.writeBigUInt64LE(BigInt(json.length), 0);
  json.copy(out, 8);
  fs.writeFileSync(file, out);
  return file;
}

const corrupt: [string, (f: string) => void, (string | RegExp)[]][] = [
  ['too short for the length', (f) => fs.writeFileSync(f, Buffer.from([1, 2, 3])), ['fewer than the 8-byte header length']],
  ['header length past the end', (f) => {
    const b = Buffer.alloc(16);
    b.writeBigUInt64LE(1000n, 0);
    fs.writeFileSync(f, b);
  }, ['header length 1000 is past the end of the file (16 bytes)']],
  ['header length of 2^63', (f) => {
    const b = Buffer.alloc(16);
    b.writeBigUInt64LE(2n ** 63n, 0);
    fs.writeFileSync(f, b);
  }, ['past the end of the file']],
  ['JSON that does not parse', (f) => rawFile(f, null, 0, '{"a": '), ['the JSON does not parse']],
  ['JSON that is not an object', (f) => rawFile(f, [1, 2], 0), ['must be an object']],
  ['unknown dtype', (f) => rawFile(f, { w: { dtype: 'F13', shape: [1], data_offsets: [0, 4] } }, 4), ["tensor 'w'", 'unknown dtype "F13"']],
  ['negative shape', (f) => rawFile(f, { w: { dtype: 'F32', shape: [-1], data_offsets: [0, 4] } }, 4), ["tensor 'w'", 'shape [-1]']],
  ['offsets reversed', (f) => rawFile(f, { w: { dtype: 'F32', shape: [1], data_offsets: [4, 0] } }, 4), ["tensor 'w'", 'data_offsets [4,0]']],
  ['offsets past the end', (f) => rawFile(f, { w: { dtype: 'F32', shape: [2], data_offsets: [0, 8] } }, 4), ["tensor 'w'", 'past the end of the data (4 bytes']],
  ['size not product(shape) x elemsize', (f) => rawFile(f, { w: { dtype: 'BF16', shape: [3], data_offsets: [0, 8] } }, 8), ["tensor 'w'", 'needs 6 bytes', 'hold 8']],
  ['overlapping tensors', (f) => rawFile(f, {
    a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] },
    b: { dtype: 'F32', shape: [2], data_offsets: [4, 12] },
  }, 12), ["'a' and 'b' overlap"]],
  ['metadata that is not strings', (f) => rawFile(f, { __metadata__: { n: 1 } }, 0), ['__metadata__.n must be a string']],
  // JSON.parse keeps the last of duplicate keys: the reference reader refuses them, and so must this one
  ['a tensor named twice', (f) => rawFile(f, null, 8, `{"w":${W4(0)},"w":${W4(4)}}`), ["tensor 'w' appears twice"]],
  ['a tensor named twice, once with an escape', (f) => rawFile(f, null, 8, `{"w":${W4(0)},"\\u0077":${W4(4)}}`), ["tensor 'w' appears twice"]],
  ['__metadata__ twice', (f) => rawFile(f, null, 0, '{"__metadata__":{"a":"1"},"__metadata__":{"b":"2"}}'), ['__metadata__ appears twice']],
  ['a header that is not UTF-8', (f) => rawBytes(f, Buffer.concat([Buffer.from('{"__metadata__":{"a":"'), Buffer.from([0xff, 0xfe]), Buffer.from('"}}')])), ['not valid UTF-8']],
  ['a lone surrogate half in UTF-8 (CESU)', (f) => rawBytes(f, Buffer.concat([Buffer.from('{"__metadata__":{"a":"'), Buffer.from([0xed, 0xa0, 0x80]), Buffer.from('"}}')])), ['not valid UTF-8']],
  // describe() of the bad value used to recurse without a limit: Maximum call stack size exceeded
  ['a shape nested 20,000 deep', (f) => rawFile(f, null, 4, `{"w":{"dtype":"F32","shape":${'['.repeat(20_000)}${']'.repeat(20_000)},"data_offsets":[0,4]}}`), ["tensor 'w' has shape [[[[...]]]]"]],
  ['metadata nested 20,000 deep', (f) => rawFile(f, null, 0, `{"__metadata__":{"a":${'['.repeat(20_000)}${']'.repeat(20_000)}}}`), ['__metadata__.a must be a string, got [[[[...]]]]']],
];

/** A tensor entry of 4 bytes at `begin`. */
function W4(begin: number): string {
  return JSON.stringify({ dtype: 'F32', shape: [1], data_offsets: [begin, begin + 4] });
}

/** A file from raw header bytes (no data). */
function rawBytes(file: string, header: Buffer): string {
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(header.length), 0);
  fs.writeFileSync(file, Buffer.concat([len, header]));
  return file;
}

for (const [name, make, patterns] of corrupt)
  st(`refused header: ${name}`, async ({ dir }) => {
    const file = path.join(dir, `bad-${name.replace(/\W+/g, '-')}.safetensors`);
    make(file);
    await expectMoeError(() => SafetensorsFile.open(file), 'ERR_SAFETENSORS_HEADER', file, ...patterns);
    await expectMoeError(() => SafetensorsFile.openSync(file), 'ERR_SAFETENSORS_HEADER', file, ...patterns);
  });

st('names with quotes, braces and commas are not mistaken for duplicates', async ({ dir }) => {
  const file = path.join(dir, 'punct.safetensors');
  const want: Record<string, Tensor> = { 'a"{,}[': tensor('float32', [1], [1]), 'a': tensor('float32', [2], [1]), '\\': tensor('float32', [3], [1]) };
  await writeSafetensors(file, want, { 'k"': 'v,}' });
  const f = SafetensorsFile.openSync(file);
  assert.equal(f.names(), Object.keys(want));
  f.close();
});

st('a directory where a file should be is ERR_FILE_READ naming it, not a raw EISDIR', async ({ dir }) => {
  const d = path.join(dir, 'dir-as-file');
  fs.mkdirSync(path.join(d, 'model.safetensors'), { recursive: true });
  const single = path.join(d, 'model.safetensors');
  await expectMoeError(() => SafetensorsFile.open(single), 'ERR_FILE_READ', single, 'is a directory');
  await expectMoeError(() => SafetensorsFile.openSync(single), 'ERR_FILE_READ', single, 'is a directory');
  await expectMoeError(() => Checkpoint.open(d), 'ERR_FILE_READ', single, 'is a directory');
  await expectMoeError(() => Checkpoint.openSync(d), 'ERR_FILE_READ', single, 'is a directory');
  // an index whose shard is a directory
  const s = path.join(dir, 'shard-dir');
  await writeShardedSafetensors(s, { a: tensor('float32', [1], [1]), b: tensor('float32', [2], [1]) }, { maxShardBytes: 4 });
  const shard = path.join(s, 'model-00002-of-00002.safetensors');
  fs.rmSync(shard);
  fs.mkdirSync(shard);
  await expectMoeError(() => Checkpoint.open(s), 'ERR_FILE_READ', shard, 'is a directory');
  await expectMoeError(() => Checkpoint.openSync(s), 'ERR_FILE_READ', shard, 'is a directory');
  // an index that is a directory
  const i = path.join(dir, 'index-dir');
  fs.mkdirSync(path.join(i, 'model.safetensors.index.json'), { recursive: true });
  await expectMoeError(() => Checkpoint.open(i), 'ERR_FILE_READ', 'model.safetensors.index.json', 'is a directory');
});

st('an index naming 200,000 shards fails at the first missing one without a quadratic scan', async ({ dir }) => {
  // Before: readIndex deduplicated the shard list with Array.includes, O(n^2): 60,000 shards took
  // 70 s, 200,000 take many minutes. The child's limit only stops a hung run; it is no timing.
  const d = path.join(dir, 'many-shards');
  fs.mkdirSync(d);
  const weightMap: Record<string, string> = {};
  for (let i = 0; i < 200_000; i++) weightMap[`t${i}`] = `shard-${i}.safetensors`;
  fs.writeFileSync(path.join(d, 'model.safetensors.index.json'), JSON.stringify({ weight_map: weightMap }));
  const script = `
    const { Checkpoint } = require('./lib/index');
    try { Checkpoint.openSync(${JSON.stringify(d)}); console.log('opened'); } catch (e) { console.log(e.code + ' ' + e.message); }`;
  const r = spawnSync(process.execPath, ['-r', 'tsx/cjs', '-e', script], { cwd: path.join(__dirname, '..'), encoding: 'utf8', timeout: 300_000 });
  assert.is(r.signal, null, 'the child hung (killed after 300 s)');
  assert.is(r.status, 0, r.stderr);
  assert.match(r.stdout, /^ERR_FILE_NOT_FOUND .*shard-0\.safetensors/);
});

st('using / await using close files, checkpoints and MoeCheckpoints (Symbol.dispose, Symbol.asyncDispose)', async ({ dir }) => {
  const d = path.join(dir, 'using');
  await writeTinyMixtral(d);
  let f: SafetensorsFile;
  {
    using g = SafetensorsFile.openSync(path.join(d, 'model.safetensors'));
    f = g;
    assert.not.ok(g.closed);
  }
  assert.ok(f.closed);
  await expectMoeError(() => f.readSync('model.norm.weight'), 'ERR_DISPOSED');
  // asyncDispose waits for reads in flight, then the descriptor is closed
  let pending: Promise<unknown>;
  {
    await using g = await SafetensorsFile.open(path.join(d, 'model.safetensors'));
    f = g;
    pending = g.read('model.embed_tokens.weight');
  }
  assert.ok(f.closed);
  assert.equal((await pending as { dims: number[] }).dims, [97, 64]);
  let c: Checkpoint;
  {
    using g = Checkpoint.openSync(d);
    c = g;
  }
  await expectMoeError(() => c.readSync('model.norm.weight'), 'ERR_DISPOSED');
  {
    await using g = await Checkpoint.open(d);
    c = g;
  }
  await expectMoeError(() => c.readSync('model.norm.weight'), 'ERR_DISPOSED');
  let m: MixtralCheckpoint;
  {
    using g = MixtralCheckpoint.openSync(d);
    m = g;
  }
  await expectMoeError(() => m.loadGlobalsSync(), 'ERR_DISPOSED');
  {
    await using g = await MixtralCheckpoint.open(d);
    m = g;
  }
  await expectMoeError(() => m.loadGlobals(), 'ERR_DISPOSED');
});

st('a missing file is ERR_FILE_NOT_FOUND naming it', async ({ dir }) => {
  const file = path.join(dir, 'nope.safetensors');
  await expectMoeError(() => SafetensorsFile.open(file), 'ERR_FILE_NOT_FOUND', file);
  await expectMoeError(() => Checkpoint.open(path.join(dir, 'nope')), 'ERR_FILE_NOT_FOUND', 'nope');
});

st('a tensor at an offset past 4 GiB reads back (sparse file, nothing written in between)', async ({ dir }) => {
  const file = path.join(dir, 'big.safetensors');
  const gap = 5 * 2 ** 30; // 5 GiB of hole before the tensor
  const t = tensor('float32', randn(16, 9), [4, 4]);
  const header = JSON.stringify({
    __metadata__: { format: 'pt' },
    head: { dtype: 'F32', shape: [1], data_offsets: [0, 4] },
    far: { dtype: 'F32', shape: [4, 4], data_offsets: [gap, gap + 64] },
  });
  const fd = fs.openSync(file, 'w');
  try {
    const h = Buffer.alloc(8);
    h.writeBigUInt64LE(BigInt(header.length), 0);
    fs.writeSync(fd, h, 0, 8, 0);
    fs.writeSync(fd, header, 8);
    fs.writeSync(fd, new Uint8Array(new Float32Array([7]).buffer), 0, 4, 8 + header.length);
    fs.ftruncateSync(fd, 8 + header.length + gap + 64);
    fs.writeSync(fd, new Uint8Array(t.data.buffer), 0, 64, 8 + header.length + gap);
  } finally {
    fs.closeSync(fd);
  }
  const f = await SafetensorsFile.open(file);
  assert.is(f.info('far').offset, 8 + header.length + gap);
  assert.ok(f.info('far').offset > 2 ** 32);
  assertSameTensor(await f.read('far'), t, 'far async');
  assertSameTensor(f.readSync('far'), t, 'far sync');
  assert.is((await f.read('head')).data[0], 7);
  f.close();
  fs.rmSync(file);
});

st('checkpoint: a directory with model.safetensors', async ({ dir }) => {
  const d = path.join(dir, 'single');
  fs.mkdirSync(d);
  const want = sample();
  await writeSafetensors(path.join(d, 'model.safetensors'), want);
  for (const ckpt of [await Checkpoint.open(d), Checkpoint.openSync(path.join(d, 'model.safetensors'))]) {
    assert.is(ckpt.dir, d);
    assert.equal(ckpt.names(), Object.keys(want));
    assert.is(ckpt.totalBytes, Object.values(want).reduce((n, t) => n + t.data.byteLength, 0));
    assert.equal(ckpt.info('f16').shape, [5, 2]);
    assertSameTensor(await ckpt.read('bf16'), want.bf16, 'bf16');
    assertSameTensor(ckpt.readSync('i32'), want.i32, 'i32');
    await expectMoeError(() => ckpt.read('missing'), 'ERR_TENSOR_MISSING', "'missing'");
    ckpt.close();
  }
});

st('checkpoint: sharded with an index; every tensor from its shard', async ({ dir }) => {
  const d = path.join(dir, 'sharded');
  const want: Record<string, Tensor> = {};
  for (let i = 0; i < 7; i++) want[`t${i}`] = tensor('float32', randn(25, 10 + i), [5, 5]);
  const shards = await writeShardedSafetensors(d, want, { maxShardBytes: 250 });
  assert.is(shards.length, 4); // 100 bytes each, two to a shard
  assert.is(shards[0], 'model-00001-of-00004.safetensors');
  const index = JSON.parse(fs.readFileSync(path.join(d, 'model.safetensors.index.json'), 'utf8'));
  assert.is(index.metadata.total_size, 700);
  assert.is(index.weight_map.t6, 'model-00004-of-00004.safetensors');
  for (const ckpt of [await Checkpoint.open(d), Checkpoint.openSync(path.join(d, 'model.safetensors.index.json'))]) {
    assert.is(ckpt.files.length, 4);
    assert.equal(ckpt.names().sort(), Object.keys(want).sort());
    assert.is(ckpt.totalBytes, 700);
    assert.is(path.basename(ckpt.info('t3').file), 'model-00002-of-00004.safetensors');
    for (const [name, t] of Object.entries(want)) assertSameTensor(await ckpt.read(name), t, name);
    ckpt.close();
  }
});

st('checkpoint: a bad index is refused naming the index and the tensor', async ({ dir }) => {
  const d = path.join(dir, 'badindex');
  await writeShardedSafetensors(d, { a: tensor('float32', [1], [1]), b: tensor('float32', [2], [1]) }, { maxShardBytes: 4 });
  const idx = path.join(d, 'model.safetensors.index.json');
  const good = JSON.parse(fs.readFileSync(idx, 'utf8'));
  fs.writeFileSync(idx, JSON.stringify({ weight_map: { ...good.weight_map, c: good.weight_map.a } }));
  await expectMoeError(() => Checkpoint.open(d), 'ERR_TENSOR_MISSING', "tensor 'c'", 'model-00001-of-00002.safetensors', idx);
  fs.writeFileSync(idx, JSON.stringify({ weight_map: { a: 'model-00009-of-00009.safetensors' } }));
  await expectMoeError(() => Checkpoint.open(d), 'ERR_FILE_NOT_FOUND', 'model-00009-of-00009.safetensors');
  fs.writeFileSync(idx, JSON.stringify({ weight_map: { a: '../escape.safetensors' } }));
  await expectMoeError(() => Checkpoint.openSync(d), 'ERR_SAFETENSORS_INDEX', 'outside the checkpoint directory');
  fs.writeFileSync(idx, JSON.stringify({ metadata: {} }));
  await expectMoeError(() => Checkpoint.open(d), 'ERR_SAFETENSORS_INDEX', 'weight_map must be an object', idx);
});

// ---- Mixtral weights -------------------------------------------------------------------------

for (const layout of ['per-expert', 'packed'] as const)
  for (const sharded of [false, true])
    st(`Mixtral ${layout}${sharded ? ', sharded' : ''}: layers load with the weights that were written`, async ({ dir }) => {
      const d = path.join(dir, `mixtral-${layout}-${sharded}`);
      const w = await writeTinyMixtral(d, { layout, maxShardBytes: sharded ? 200_000 : undefined, seed: 3 });
      const events: LoadProgress[] = [];
      const m = await MixtralCheckpoint.open(d, { onProgress: (p) => events.push(p) });
      assert.is(m.layout, layout);
      assert.is(m.checkpoint.files.length > 1, sharded);
      assert.equal(m.unusedTensors(), []);
      const g = await m.loadGlobals();
      assertSameTensor(g.embedTokens, w.globals.embedTokens, 'embed');
      assertSameTensor(g.lmHead, w.globals.lmHead, 'lm_head');
      assertSameTensor(g.norm, w.globals.norm, 'norm');
      let n = 0;
      for await (const layer of m.layers()) {
        const want = w.layers[n++];
        assert.is(layer.index, want.index);
        assertSameTensor(layer.inputLayernorm, want.inputLayernorm, 'input_layernorm');
        assertSameTensor(layer.postAttentionLayernorm, want.postAttentionLayernorm, 'post_attention_layernorm');
        for (const k of ['qProj', 'kProj', 'vProj', 'oProj'] as const) assertSameTensor(layer.attention[k], want.attention[k], k);
        assertSameTensor(layer.moe.gate, want.moe.gate, 'gate');
        for (const k of ['w1', 'w3', 'w2'] as const) {
          assert.is(layer.moe[k].length, 4);
          layer.moe[k].forEach((t, e) => assertSameTensor(t, want.moe[k][e], `layer ${layer.index} ${k}[${e}]`));
        }
      }
      assert.is(n, 2);
      // progress: one event per tensor, counts over the whole model, ending at the totals
      assert.is(events.length, m.tensorsTotal);
      assert.is(m.tensorsTotal, 3 + 2 * (layout === 'packed' ? 9 : 7 + 12));
      const last = events[events.length - 1];
      assert.equal([last.bytesLoaded, last.tensorsLoaded], [m.bytesTotal, m.tensorsTotal]);
      assert.is(m.bytesTotal, m.checkpoint.totalBytes);
      assert.is(countParameters(m.config).total * 4, m.bytesTotal); // the parameter count is the tensors' f32 size
      assert.ok(events.every((p, i) => i === 0 || p.bytesLoaded > events[i - 1].bytesLoaded));
      m.close();
    });

st('Mixtral: both layouts give the same MoE layer output (gate/up order inside gate_up_proj)', async ({ dir }) => {
  const outs: Float32Array[] = [];
  for (const layout of ['per-expert', 'packed'] as const) {
    const d = path.join(dir, `same-${layout}`);
    await writeTinyMixtral(d, { layout, seed: 5 });
    const m = MixtralCheckpoint.openSync(d);
    const layer = m.loadLayerSync(1);
    const moe = await MoeLayer.create(layer.moe, { topK: m.config.numExpertsPerTok });
    const x = tensor('float32', randn(3 * 64, 11), [3, 64]);
    outs.push((await moe.forward(x)).output.data as Float32Array);
    moe.dispose();
    m.close();
  }
  assert.equal(Array.from(outs[0]), Array.from(outs[1]));
});

st('Mixtral: bf16 checkpoint converted to float32 on load; tied embeddings need no lm_head', async ({ dir }) => {
  const d = path.join(dir, 'tied-bf16');
  const w = await writeTinyMixtral(d, { dtype: 'bfloat16', raw: tinyMixtralRaw({ tie_word_embeddings: true, torch_dtype: 'bfloat16' }) });
  const m = await MixtralCheckpoint.open(d, { dtype: 'float32' });
  assert.not.ok(m.checkpoint.has('lm_head.weight'));
  const g = await m.loadGlobals();
  assert.is(g.lmHead, g.embedTokens);
  assertSameTensor(g.embedTokens as Tensor, cast(w.globals.embedTokens as Tensor, 'float32'), 'embed widened');
  const l0 = m.loadLayerSync(0);
  assert.is(l0.moe.w2[3].type, 'float32');
  assertSameTensor(l0.moe.w2[3], cast(w.layers[0].moe.w2[3] as Tensor, 'float32'), 'w2[3] widened');
  let re: unknown;
  try {
    m.loadLayerSync(2);
  } catch (e) {
    re = e;
  }
  assert.instance(re, RangeError);
  m.close();
});

st('Mixtral: a missing tensor is refused at open, naming it and its expected shape', async ({ dir }) => {
  const d = path.join(dir, 'missing');
  await writeTinyMixtral(d, { edit: (t) => delete t['model.layers.1.block_sparse_moe.experts.2.w3.weight'] });
  await expectMoeError(() => MixtralCheckpoint.open(d), 'ERR_TENSOR_MISSING', "'model.layers.1.block_sparse_moe.experts.2.w3.weight'", 'expected shape [48,64]');
  const d2 = path.join(dir, 'missing-lm-head');
  await writeTinyMixtral(d2, { layout: 'packed', maxShardBytes: 100_000, edit: (t) => delete t['lm_head.weight'] });
  await expectMoeError(() => MixtralCheckpoint.openSync(d2), 'ERR_TENSOR_MISSING', "'lm_head.weight'", 'expected shape [97,64]');
});

st('Mixtral: a mis-shaped tensor is refused naming the tensor, found and expected shapes and the file', async ({ dir }) => {
  const d = path.join(dir, 'misshaped');
  await writeTinyMixtral(d, {
    layout: 'packed',
    edit: (t) => {
      const g = t['model.layers.0.mlp.experts.gate_up_proj'];
      t['model.layers.0.mlp.experts.gate_up_proj'] = { ...g, dims: [4, 48, 128] };
    },
  });
  await expectMoeError(() => MixtralCheckpoint.open(d), 'ERR_TENSOR_SHAPE', "'model.layers.0.mlp.experts.gate_up_proj'", 'shape [4,48,128]', 'expected [4,96,64]', 'model.safetensors');
  // a config that disagrees with the checkpoint: k/v heads
  const d2 = path.join(dir, 'wrong-config');
  await writeTinyMixtral(d2);
  const config = parseMixtralConfig(tinyMixtralRaw({ num_key_value_heads: 4 }));
  await expectMoeError(() => MixtralCheckpoint.open(d2, { config }), 'ERR_TENSOR_SHAPE', "'model.layers.0.self_attn.k_proj.weight'", 'shape [32,64]', 'expected [64,64]');
  // an int tensor where floats belong
  const d3 = path.join(dir, 'int-norm');
  await writeTinyMixtral(d3, { edit: (t) => (t['model.norm.weight'] = tensor('int32', new Int32Array(64), [64])) });
  await expectMoeError(() => MixtralCheckpoint.open(d3), 'ERR_TENSOR_DTYPE', "'model.norm.weight'", 'I32');
});

st('Mixtral: no config.json and no config option is a clear error', async ({ dir }) => {
  const d = path.join(dir, 'noconfig');
  await writeTinyMixtral(d);
  fs.rmSync(path.join(d, 'config.json'));
  await expectMoeError(() => MixtralCheckpoint.open(d), 'ERR_CONFIG', 'no config.json');
  const m = await MixtralCheckpoint.open(d, { config: parseMixtralConfig(tinyMixtralRaw()) });
  assert.is(m.numLayers, 2);
  m.close();
});

st.run();
