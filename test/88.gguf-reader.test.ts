// The GGUF reader and writer: a file made byte by byte from the spec (ggml's docs/gguf.md), so that
// reader and writer cannot drift together; every metadata value type, arrays nested; alignment;
// versions 2 and 3; ggml's block sizes; the mapped and the positioned-read paths; and every lie a
// header can tell (truncation at each byte, offsets past the end, overlaps, bad alignment, unknown
// types) refused with ERR_GGUF naming the byte offset.
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { GgufFile, MoeError, writeGguf, type GgufMetadataInput, type GgufTensorInput, type QuantTensor, type Tensor } from '../lib/index';
import { ggufHeaderBytes } from '../lib/hf/gguf-write';
import { expectMoeError, tmpDir } from './helpers/checkpoints';

const test = suite<{ dir: string }>('gguf reader', { dir: '' });
test.before.each((ctx) => {
  ctx.dir = tmpDir('moe-gguf-');
});
test.after.each((ctx) => {
  fs.rmSync(ctx.dir, { recursive: true, force: true });
});

// ---- the spec, by hand ------------------------------------------------------------------------

const le = (n: number, v: number | bigint) => {
  const b = Buffer.alloc(n);
  if (n === 1) b.writeUInt8(Number(v));
  else if (n === 4) b.writeUInt32LE(Number(v));
  else b.writeBigUInt64LE(BigInt(v));
  return [...b];
};
const u32 = (v: number) => le(4, v);
const u64 = (v: number | bigint) => le(8, v);
const str = (s: string) => [...u64(Buffer.byteLength(s)), ...Buffer.from(s)];
const f32 = (v: number) => {
  const b = Buffer.alloc(4);
  b.writeFloatLE(v);
  return [...b];
};
const i32 = (v: number) => {
  const b = Buffer.alloc(4);
  b.writeInt32LE(v);
  return [...b];
};

/**
 * A GGUF v3 file, field by field as docs/gguf.md lays it out: 3 metadata entries (a string, an
 * int32 array, a float32), 2 tensors ('a': F32 ne [3,2]; 'b': Q8_0 ne [32], one 34-byte block),
 * the default alignment of 32.
 */
function handMade(version = 3): Uint8Array {
  const bytes: number[] = [
    0x47, 0x47, 0x55, 0x46, // magic "GGUF"
    ...u32(version),
    ...u64(2), // tensor_count
    ...u64(3), // metadata_kv_count
    ...str('general.architecture'), ...u32(8), ...str('llama'), // 8: string
    ...str('x.arr'), ...u32(9), ...u32(5), ...u64(3), ...i32(-1), ...i32(2), ...i32(3), // 9: array of 5: int32
    ...str('x.f'), ...u32(6), ...f32(0.5), // 6: float32
    ...str('a'), ...u32(2), ...u64(3), ...u64(2), ...u32(0), ...u64(0), // F32, ne [3,2], offset 0
    ...str('b'), ...u32(1), ...u64(32), ...u32(8), ...u64(32), // Q8_0, ne [32], offset 32
  ];
  while (bytes.length % 32 !== 0) bytes.push(0); // padding to the alignment
  for (const v of [1, 2, 3, 4, 5, 6]) bytes.push(...f32(v)); // 'a': 24 bytes
  while (bytes.length % 32 !== 0) bytes.push(0);
  bytes.push(0x00, 0x3c); // 'b': the block's f16 scale 1.0, then 32 int8 quants
  for (let i = 0; i < 32; i++) bytes.push(i);
  while (bytes.length % 32 !== 0) bytes.push(0);
  return Uint8Array.from(bytes);
}

const HAND_META: GgufMetadataInput[] = [
  { key: 'general.architecture', type: 'string', value: 'llama' },
  { key: 'x.arr', type: 'array', arrayType: 'int32', value: [-1, 2, 3] },
  { key: 'x.f', type: 'float32', value: 0.5 },
];
const q8Block = () => Uint8Array.from([0x00, 0x3c, ...Array.from({ length: 32 }, (_, i) => i)]);
const HAND_TENSORS = (): GgufTensorInput[] => [
  { name: 'a', type: 'float32', dims: [2, 3], data: { type: 'float32', data: Float32Array.from([1, 2, 3, 4, 5, 6]), dims: [2, 3] } },
  { name: 'b', type: 'q8_0', dims: [32], data: { type: 'q8_0', data: q8Block(), dims: [32] } },
];

test('a file made by hand from the spec reads back field by field (v3 and v2)', () => {
  for (const version of [3, 2]) {
    const f = GgufFile.fromBytes(handMade(version));
    assert.is(f.version, version);
    assert.is(f.alignment, 32);
    assert.equal(f.keys(), ['general.architecture', 'x.arr', 'x.f']);
    assert.is(f.architecture, 'llama');
    assert.equal(f.entry('x.arr')?.arrayType, 'int32');
    assert.equal(Array.from(f.get('x.arr') as Int32Array), [-1, 2, 3]);
    assert.is(f.get('x.f'), 0.5);
    const a = f.info('a');
    assert.equal([a.ne, a.dims, a.typeName, a.byteLength], [[3, 2], [2, 3], 'F32', 24]);
    assert.is(a.offset, f.dataOffset);
    const ta = f.readSync('a') as Tensor;
    assert.equal([ta.type, ta.dims, Array.from(ta.data)], ['float32', [2, 3], [1, 2, 3, 4, 5, 6]]);
    const b = f.readSync('b') as QuantTensor;
    assert.equal([b.type, b.dims, b.data.length, f.info('b').offset - f.dataOffset], ['q8_0', [32], 34, 32]);
    assert.equal(Array.from(b.data), Array.from(q8Block()));
  }
});

test('the writer writes the hand-made file byte for byte', async ({ dir }) => {
  const file = path.join(dir, 'hand.gguf');
  await writeGguf(file, { metadata: HAND_META, tensors: HAND_TENSORS() });
  assert.equal([...fs.readFileSync(file)], [...handMade()]);
});

test('every metadata value type round-trips, arrays of each type and nested arrays included', async ({ dir }) => {
  const big = 2n ** 60n + 3n;
  const metadata: GgufMetadataInput[] = [
    { key: 'u8', type: 'uint8', value: 255 }, { key: 'i8', type: 'int8', value: -128 },
    { key: 'u16', type: 'uint16', value: 65535 }, { key: 'i16', type: 'int16', value: -32768 },
    { key: 'u32', type: 'uint32', value: 4294967295 }, { key: 'i32', type: 'int32', value: -2147483648 },
    { key: 'f32', type: 'float32', value: 1.5 }, { key: 'f64', type: 'float64', value: Math.PI },
    { key: 'b', type: 'bool', value: true }, { key: 's', type: 'string', value: 'héllo 世界 🙂' },
    { key: 'u64', type: 'uint64', value: big }, { key: 'i64', type: 'int64', value: -5 },
    { key: 'au8', type: 'array', arrayType: 'uint8', value: [1, 2] }, { key: 'ai8', type: 'array', arrayType: 'int8', value: [-1] },
    { key: 'au16', type: 'array', arrayType: 'uint16', value: [7] }, { key: 'ai16', type: 'array', arrayType: 'int16', value: [-7] },
    { key: 'au32', type: 'array', arrayType: 'uint32', value: [9] }, { key: 'af32', type: 'array', arrayType: 'float32', value: [0.25, -2] },
    { key: 'af64', type: 'array', arrayType: 'float64', value: [1e-300] }, { key: 'ab', type: 'array', arrayType: 'bool', value: [true, false] },
    { key: 'as', type: 'array', arrayType: 'string', value: ['', 'a', '▁b'] }, { key: 'au64', type: 'array', arrayType: 'uint64', value: [big] },
    { key: 'ai64', type: 'array', arrayType: 'int64', value: [-1n] }, { key: 'empty', type: 'array', arrayType: 'int32', value: [] },
    { key: 'nested', type: 'array', arrayType: 'array', value: [{ arrayType: 'string', value: ['x'] }, { arrayType: 'int32', value: [1, 2] }] },
  ];
  const file = path.join(dir, 'types.gguf');
  await writeGguf(file, { metadata, tensors: [] });
  for (const mmap of [true, false]) {
    const f = GgufFile.openSync(file, { mmap });
    const v = (k: string) => f.get(k);
    const arr = (k: string) => Array.from(v(k) as ArrayLike<unknown>);
    assert.equal([v('u8'), v('i8'), v('u16'), v('i16'), v('u32'), v('i32'), v('f32'), v('f64'), v('b'), v('s'), v('u64'), v('i64')], [255, -128, 65535, -32768, 4294967295, -2147483648, 1.5, Math.PI, true, 'héllo 世界 🙂', big, -5]);
    assert.equal([arr('au8'), arr('ai8'), arr('au16'), arr('ai16'), arr('au32'), arr('af32'), arr('af64'), arr('ab'), arr('as'), arr('au64'), arr('ai64'), arr('empty')],
      [[1, 2], [-1], [7], [-7], [9], [0.25, -2], [1e-300], [true, false], ['', 'a', '▁b'], [big], [-1n], []]);
    assert.ok(v('af32') instanceof Float32Array && v('au64') instanceof BigUint64Array);
    const nested = v('nested') as unknown[];
    assert.equal([nested[0], Array.from(nested[1] as Int32Array)], [['x'], [1, 2]]);
    assert.equal(f.entry('nested')?.arrayType, 'array');
    assert.equal([f.names(), f.dataOffset % 32], [[], 0]);
    f.close();
  }
});

test('alignment: general.alignment is honoured; data offsets are multiples of it', async ({ dir }) => {
  const file = path.join(dir, 'al.gguf');
  const t = (n: number, name: string): GgufTensorInput => ({ name, type: 'float32', dims: [n], data: { type: 'float32', data: Float32Array.from({ length: n }, (_, i) => i + n), dims: [n] } });
  await writeGguf(file, { metadata: [], tensors: [t(3, 'x'), t(5, 'y'), t(1, 'z')] }, { alignment: 64 });
  const f = GgufFile.openSync(file);
  assert.is(f.alignment, 64);
  assert.is(f.get('general.alignment'), 64);
  for (const n of f.names()) assert.is(f.info(n).offset % 64, 0);
  assert.equal(Array.from((f.readSync('y') as Tensor).data), [5, 6, 7, 8, 9]);
  // a non-power of two is refused, when written and when read
  assert.throws(() => ggufHeaderBytes([], [], 48), /power of two/);
  const bad = Buffer.from(fs.readFileSync(file));
  const at = bad.indexOf(Buffer.from('general.alignment')) + 'general.alignment'.length + 4;
  bad.writeUInt32LE(48, at);
  const e = await expectMoeError(() => GgufFile.fromBytes(bad), 'ERR_GGUF', 'power of two');
  assert.match(e.message, /at byte \d+/);
});

test('ggml block sizes: Q8_0 34 bytes / 32 values, Q4_0 18 / 32, Q4_K 144 / 256, Q5_K 176 / 256, Q6_K 210 / 256; other types are sized, not loaded', () => {
  const types: [number, string, number, number][] = [[8, 'q8_0', 32, 34], [2, 'q4_0', 32, 18], [12, 'q4_k', 256, 144], [13, 'q5_k', 256, 176], [14, 'q6_k', 256, 210], [11, 'Q3_K', 256, 110]];
  for (const [id, name, block, size] of types) {
    // a [3, 2·block] matrix: rows of two blocks
    const head = [0x47, 0x47, 0x55, 0x46, ...u32(3), ...u64(1), ...u64(0), ...str('w'), ...u32(2), ...u64(2 * block), ...u64(3), ...u32(id), ...u64(0)];
    while (head.length % 32) head.push(0);
    const body = Array.from({ length: 6 * size }, (_, i) => i & 0xff);
    const f = GgufFile.fromBytes(Uint8Array.from([...head, ...body]));
    const info = f.info('w');
    assert.equal([info.dims, info.byteLength, info.elements], [[3, 2 * block], 6 * size, 6 * block]);
    if (name === 'Q3_K') {
      assert.is(info.type, null);
      assert.throws(() => f.readSync('w'), (e: MoeError) => e.code === 'ERR_TENSOR_DTYPE' && /Q3_K/.test(e.message));
    } else {
      const t = f.readSync('w') as QuantTensor;
      assert.equal([t.type, t.dims, t.data.length, t.data[5]], [name, [3, 2 * block], 6 * size, 5]);
    }
    // a row that is not whole blocks is a lie
    const bad = Uint8Array.from([...head, ...body]);
    new DataView(bad.buffer).setBigUint64(4 + 4 + 8 + 8 + 8 + 1 + 4, BigInt(2 * block + 1), true);
    assert.throws(() => GgufFile.fromBytes(bad), (e: MoeError) => e.code === 'ERR_GGUF' && /block size/.test(e.message));
  }
});

test('mapped and positioned reads give the same tensors; views of the mapping outlive close()', async ({ dir }) => {
  const file = path.join(dir, 'hand.gguf');
  fs.writeFileSync(file, handMade());
  const mapped = await GgufFile.open(file, { mmap: true });
  const plain = await GgufFile.open(file, { mmap: false });
  assert.is(mapped.mapped, true);
  assert.is(plain.mapped, false);
  for (const n of ['a', 'b']) assert.equal(Array.from((await mapped.read(n)).data), Array.from((await plain.read(n)).data));
  const a = (await mapped.read('a')) as Tensor;
  mapped.close();
  plain.close();
  assert.equal(Array.from(a.data), [1, 2, 3, 4, 5, 6]);
  // a store into a view lands in a private page: the file is unchanged, nothing faults
  (a.data as Float32Array)[0] = 42;
  assert.is(fs.readFileSync(file).readFloatLE(GgufFile.fromBytes(handMade()).dataOffset), 1);
  await expectMoeError(() => mapped.read('a'), 'ERR_DISPOSED');
  await expectMoeError(() => plain.readSync('a'), 'ERR_DISPOSED');
});

test('truncated at every byte: ERR_GGUF naming the offset, never a read past the end', () => {
  const full = handMade();
  const last = GgufFile.fromBytes(full).info('b');
  for (let n = 0; n < last.offset + last.byteLength; n++) {
    const e = (() => {
      try {
        GgufFile.fromBytes(full.subarray(0, n));
        return null;
      } catch (err) {
        return err as MoeError;
      }
    })();
    assert.ok(e instanceof MoeError && e.code === 'ERR_GGUF', `truncated to ${n} bytes: ${e}`);
    assert.match(e!.message, /at byte \d+/);
  }
});

test('lying headers: each refused with ERR_GGUF and what was wrong', () => {
  const full = handMade();
  const f = GgufFile.fromBytes(full);
  const patch = (fn: (dv: DataView, b: Uint8Array) => void) => {
    const b = Uint8Array.from(full);
    fn(new DataView(b.buffer), b);
    return b;
  };
  const aInfo = f.info('a').infoOffset;
  const aOffsetField = aInfo + 8 + 1 + 4 + 16 + 4; // name, n_dims, ne[2], type
  const cases: [Uint8Array, RegExp][] = [
    [patch((dv) => dv.setUint32(0, 0x46554748, true)), /not "GGUF"/],
    [patch((dv) => dv.setUint32(4, 1, true)), /version 1/],
    [patch((dv) => dv.setUint32(4, 0x03000000, true)), /big-endian/],
    [patch((dv) => dv.setUint32(4, 4, true)), /version 4 is not supported/],
    [patch((dv) => dv.setBigUint64(8, 2n ** 40n, true)), /tensor count/],
    [patch((dv) => dv.setBigUint64(16, 2n ** 62n, true)), /larger than any file|metadata count/],
    [patch((dv) => dv.setBigUint64(24, 2n ** 50n, true)), /past the end of the file/], // the first key's length
    [patch((dv) => dv.setBigUint64(aOffsetField, 2n ** 20n, true)), /past the end of the file/],
    [patch((dv) => dv.setBigUint64(aOffsetField, 33n, true)), /not a multiple of the alignment/],
    [patch((dv) => dv.setBigUint64(aOffsetField, 32n, true)), /overlaps/],
    [patch((dv) => dv.setUint32(aOffsetField - 4, 77, true)), /ggml type 77/],
    [patch((dv) => dv.setUint32(aInfo + 9, 9, true)), /dims \(1 to 4 allowed\)/],
    [Uint8Array.from([0x47, 0x47, 0x55, 0x46, ...u32(3), ...u64(0), ...u64(2), ...str('k'), ...u32(0), 1, ...str('k'), ...u32(0), 2]), /'k' appears twice/],
    [Uint8Array.from([0x47, 0x47, 0x55, 0x46, ...u32(3), ...u64(0), ...u64(1), ...str('k'), ...u32(13), 1]), /not a GGUF value type/],
    [Uint8Array.from([0x47, 0x47, 0x55, 0x46, ...u32(3), ...u64(0), ...u64(1), ...str('k'), ...u32(7), 2]), /bool of value 2/],
    [Uint8Array.from([0x47, 0x47, 0x55, 0x46, ...u32(3), ...u64(0), ...u64(1), ...str('k'), ...u32(9), ...u32(4), ...u64(2n ** 40n)]), /more than the rest of the file holds/],
  ];
  for (const [bytes, re] of cases) {
    let err: unknown;
    try {
      GgufFile.fromBytes(bytes);
    } catch (e) {
      err = e;
    }
    assert.ok(err instanceof MoeError && err.code === 'ERR_GGUF', `expected ERR_GGUF for ${re}, got ${err}`);
    assert.match((err as Error).message, re);
    assert.match((err as Error).message, /^<memory>: invalid GGUF file at byte \d+: /);
  }
});

test('files: missing, a directory, empty; bad arguments are typed errors', async ({ dir }) => {
  await expectMoeError(() => GgufFile.open(path.join(dir, 'none.gguf')), 'ERR_FILE_NOT_FOUND', 'none.gguf');
  await expectMoeError(() => GgufFile.openSync(dir), 'ERR_FILE_READ', 'directory');
  fs.writeFileSync(path.join(dir, 'empty.gguf'), '');
  for (const mmap of [true, false]) await expectMoeError(() => GgufFile.open(path.join(dir, 'empty.gguf'), { mmap }), 'ERR_GGUF');
  assert.throws(() => GgufFile.openSync(42 as never), TypeError);
  assert.throws(() => GgufFile.openSync('x.gguf', { mmap: 'yes' as never }), TypeError);
  assert.throws(() => GgufFile.fromBytes([1, 2] as never), TypeError);
  const f = GgufFile.fromBytes(handMade());
  await expectMoeError(() => f.readSync('nope'), 'ERR_TENSOR_MISSING', "'nope'");
});

test('the writer refuses bad input with typed errors, and leaves no file behind', async ({ dir }) => {
  const file = path.join(dir, 'w.gguf');
  const t = HAND_TENSORS()[0];
  const bad: [() => Promise<unknown>, RegExp][] = [
    [() => writeGguf(file, { metadata: [{ key: 'k', type: 'uint8', value: 256 }], tensors: [] }), /uint8/],
    [() => writeGguf(file, { metadata: [{ key: 'k', type: 'nope' as never, value: 1 }], tensors: [] }), /type must be one of/],
    [() => writeGguf(file, { metadata: [HAND_META[0], HAND_META[0]], tensors: [] }), /twice/],
    [() => writeGguf(file, { metadata: [], tensors: [{ ...t, dims: [2, 4] }] }), /need 32/],
    [() => writeGguf(file, { metadata: [], tensors: [{ ...t, type: 'q4_0', dims: [2, 3] }] }), /block size 32/],
    [() => writeGguf(file, { metadata: [], tensors: [{ ...t, type: 'float16' }] }), /declared 'float16'/],
  ];
  for (const [fn, re] of bad) {
    let err: unknown;
    try {
      await fn();
    } catch (e) {
      err = e;
    }
    assert.ok((err instanceof TypeError || err instanceof RangeError) && /^ERR_/.test((err as unknown as { code: string }).code), `expected a typed error for ${re}, got ${err}`);
    assert.match((err as Error).message, re);
  }
  assert.equal(fs.readdirSync(dir), []);
});

test.run();
