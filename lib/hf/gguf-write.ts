/**
 * A GGUF writer (version 3, little-endian; spec: ggml's docs/gguf.md), the inverse of gguf.ts:
 * typed metadata (every value type, arrays included), tensor infos with ggml's dim order (the
 * row-major `dims` reversed), `general.alignment` padding, then the tensor data in order. Tensors
 * are written one at a time: a tensor's data may be a function that makes it when its turn comes,
 * so a converter holds one tensor in memory, not the model.
 */
import * as fs from 'node:fs';
import { describe, fileError, MoeError, rangeError, typeError } from '../core/errors.js';
import { checkOptions } from '../core/options.js';
import { GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, GGUF_VALUE_TYPES, ggmlTypeOf, type GgufArrayValue, type GgufTensor, type GgufTensorType, type GgufValue, type GgufValueType } from './gguf.js';

/** One metadata entry to write: its key, value type (element type for arrays) and value. */
export interface GgufMetadataInput {
  key: string;
  type: GgufValueType;
  /** Element type of an array (type 'array'); nested arrays: 'array', with `value` an array of { arrayType, value }. */
  arrayType?: GgufValueType;
  value: GgufValue | readonly (number | bigint)[] | readonly GgufNestedArray[];
}
export interface GgufNestedArray {
  arrayType: GgufValueType;
  value: GgufArrayValue | readonly (number | bigint)[] | readonly GgufNestedArray[];
}

/** One tensor to write: name, type, row-major dims, and its data (or a function making it on its turn). */
export interface GgufTensorInput {
  name: string;
  type: GgufTensorType;
  dims: readonly number[];
  data: GgufTensor | Uint8Array | (() => GgufTensor | Uint8Array | Promise<GgufTensor | Uint8Array>);
}

export interface GgufWriteOptions {
  /** Data alignment (a power of two); written as general.alignment when not 32. Default 32. */
  alignment?: number;
  /** Called after each tensor is written. */
  onTensor?: (name: string, index: number, count: number) => void;
}

/** A growing little-endian byte buffer. */
class Bytes {
  #buf = new Uint8Array(1 << 16);
  #dv = new DataView(this.#buf.buffer);
  length = 0;
  #room(n: number) {
    if (this.length + n <= this.#buf.length) return;
    let cap = this.#buf.length * 2;
    while (cap < this.length + n) cap *= 2;
    const b = new Uint8Array(cap);
    b.set(this.#buf.subarray(0, this.length));
    this.#buf = b;
    this.#dv = new DataView(b.buffer);
  }
  u8(v: number) { this.#room(1); this.#dv.setUint8(this.length, v); this.length += 1; }
  i8(v: number) { this.#room(1); this.#dv.setInt8(this.length, v); this.length += 1; }
  u16(v: number) { this.#room(2); this.#dv.setUint16(this.length, v, true); this.length += 2; }
  i16(v: number) { this.#room(2); this.#dv.setInt16(this.length, v, true); this.length += 2; }
  u32(v: number) { this.#room(4); this.#dv.setUint32(this.length, v, true); this.length += 4; }
  i32(v: number) { this.#room(4); this.#dv.setInt32(this.length, v, true); this.length += 4; }
  f32(v: number) { this.#room(4); this.#dv.setFloat32(this.length, v, true); this.length += 4; }
  f64(v: number) { this.#room(8); this.#dv.setFloat64(this.length, v, true); this.length += 8; }
  u64(v: number | bigint) { this.#room(8); this.#dv.setBigUint64(this.length, BigInt(v), true); this.length += 8; }
  i64(v: number | bigint) { this.#room(8); this.#dv.setBigInt64(this.length, BigInt(v), true); this.length += 8; }
  raw(b: Uint8Array) { this.#room(b.length); this.#buf.set(b, this.length); this.length += b.length; }
  str(s: string) { const b = new TextEncoder().encode(s); this.u64(b.length); this.raw(b); }
  pad(align: number) { while (this.length % align !== 0) this.u8(0); }
  bytes() { return this.#buf.subarray(0, this.length); }
}

const INT_RANGE: Partial<Record<GgufValueType, [number, number]>> = {
  uint8: [0, 0xff], int8: [-0x80, 0x7f], uint16: [0, 0xffff], int16: [-0x8000, 0x7fff], uint32: [0, 0xffffffff], int32: [-0x80000000, 0x7fffffff],
};

function writeScalar(b: Bytes, t: GgufValueType, v: unknown, what: string): void {
  const r = INT_RANGE[t];
  if (r) {
    if (typeof v !== 'number' || !Number.isInteger(v) || v < r[0] || v > r[1]) throw rangeError(`${what} must be a ${t} (an integer in [${r[0]}, ${r[1]}]), got ${describe(v)}`);
  }
  switch (t) {
    case 'uint8': return b.u8(v as number);
    case 'int8': return b.i8(v as number);
    case 'uint16': return b.u16(v as number);
    case 'int16': return b.i16(v as number);
    case 'uint32': return b.u32(v as number);
    case 'int32': return b.i32(v as number);
    case 'float32':
    case 'float64':
      if (typeof v !== 'number') throw typeError(`${what} must be a number for ${t}, got ${describe(v)}`);
      return t === 'float32' ? b.f32(v) : b.f64(v);
    case 'uint64':
    case 'int64': {
      const ok = typeof v === 'bigint' || (typeof v === 'number' && Number.isSafeInteger(v));
      const big = ok ? BigInt(v as number) : 0n;
      const [lo, hi] = t === 'uint64' ? [0n, (1n << 64n) - 1n] : [-(1n << 63n), (1n << 63n) - 1n];
      if (!ok || big < lo || big > hi) throw rangeError(`${what} must be a ${t} (a safe integer or a bigint in range), got ${describe(v)}`);
      return t === 'uint64' ? b.u64(big) : b.i64(big);
    }
    case 'bool':
      if (typeof v !== 'boolean') throw typeError(`${what} must be a boolean, got ${describe(v)}`);
      return b.u8(v ? 1 : 0);
    case 'string':
      if (typeof v !== 'string') throw typeError(`${what} must be a string, got ${describe(v)}`);
      return b.str(v);
    default:
      throw typeError(`${what}: type must be one of ${GGUF_VALUE_TYPES.join(', ')}, got ${describe(t)}`);
  }
}

function writeArray(b: Bytes, et: unknown, v: unknown, what: string, depth: number): void {
  if (!(GGUF_VALUE_TYPES as readonly unknown[]).includes(et)) throw typeError(`${what}.arrayType must be one of ${GGUF_VALUE_TYPES.join(', ')}, got ${describe(et)}`);
  const list = v as ArrayLike<unknown>;
  if (!(Array.isArray(v) || ArrayBuffer.isView(v))) throw typeError(`${what} must be an array, got ${describe(v)}`);
  b.u32(GGUF_VALUE_TYPES.indexOf(et as GgufValueType));
  b.u64(list.length);
  for (let i = 0; i < list.length; i++) {
    if (et === 'array') {
      if (depth >= 8) throw rangeError(`${what} nests arrays more than 8 deep`);
      const e = list[i] as GgufNestedArray;
      writeArray(b, e?.arrayType, e?.value, `${what}[${i}]`, depth + 1);
    } else writeScalar(b, et as GgufValueType, typeof list[i] === 'bigint' && et !== 'uint64' && et !== 'int64' ? Number(list[i]) : list[i], `${what}[${i}]`);
  }
}

/** The bytes of a GGUF header: magic to the last tensor info, padded to the alignment. */
export function ggufHeaderBytes(metadata: readonly GgufMetadataInput[], tensors: readonly { name: string; type: GgufTensorType; dims: readonly number[] }[], alignment = GGUF_DEFAULT_ALIGNMENT): { header: Uint8Array; offsets: number[]; sizes: number[] } {
  if (!Number.isInteger(alignment) || alignment < 1 || (alignment & (alignment - 1)) !== 0) throw rangeError(`options.alignment must be a power of two, got ${describe(alignment)}`);
  const b = new Bytes();
  b.u32(GGUF_MAGIC);
  b.u32(3);
  b.u64(tensors.length);
  const meta = [...metadata];
  const hasAlign = meta.some((m) => m.key === 'general.alignment');
  if (alignment !== GGUF_DEFAULT_ALIGNMENT && !hasAlign) meta.push({ key: 'general.alignment', type: 'uint32', value: alignment });
  b.u64(meta.length);
  const keys = new Set<string>();
  meta.forEach((m, i) => {
    if (m === null || typeof m !== 'object') throw typeError(`metadata[${i}] must be {key, type, value}, got ${describe(m)}`);
    if (typeof m.key !== 'string' || m.key === '') throw typeError(`metadata[${i}].key must be a non-empty string, got ${describe(m.key)}`);
    if (keys.has(m.key)) throw rangeError(`metadata key '${m.key}' is given twice`);
    keys.add(m.key);
    if (m.key === 'general.alignment' && (m.type !== 'uint32' || m.value !== alignment)) throw rangeError(`metadata 'general.alignment' must be the uint32 ${alignment} (options.alignment)`);
    if (!(GGUF_VALUE_TYPES as readonly unknown[]).includes(m.type)) throw typeError(`metadata '${m.key}'.type must be one of ${GGUF_VALUE_TYPES.join(', ')}, got ${describe(m.type)}`);
    b.str(m.key);
    b.u32(GGUF_VALUE_TYPES.indexOf(m.type));
    if (m.type === 'array') writeArray(b, m.arrayType, m.value, `metadata '${m.key}'`, 0);
    else writeScalar(b, m.type, m.value, `metadata '${m.key}'`);
  });
  const offsets: number[] = [];
  const sizes: number[] = [];
  const names = new Set<string>();
  let off = 0;
  tensors.forEach((t, i) => {
    if (typeof t?.name !== 'string' || t.name === '') throw typeError(`tensors[${i}].name must be a non-empty string, got ${describe(t?.name)}`);
    if (names.has(t.name)) throw rangeError(`tensor '${t.name}' is given twice`);
    names.add(t.name);
    const g = ggmlTypeOf(t.type);
    const dims = t.dims;
    if (!Array.isArray(dims) || dims.length < 1 || dims.length > 4 || !dims.every((d) => Number.isInteger(d) && d >= 0))
      throw typeError(`tensors[${i}] ('${t.name}').dims must be 1 to 4 non-negative integers, got ${describe(dims)}`);
    const ne = [...dims].reverse();
    if (ne[0] % g.blockSize !== 0) throw rangeError(`tensor '${t.name}' of type ${t.type}: rows of ${ne[0]} values are not a multiple of the block size ${g.blockSize}`);
    const elements = dims.reduce((a, d) => a * d, 1);
    const size = (elements / g.blockSize) * g.typeSize;
    b.str(t.name);
    b.u32(ne.length);
    for (const n of ne) b.u64(n);
    b.u32(g.id);
    b.u64(off);
    offsets.push(off);
    sizes.push(size);
    off += Math.ceil(size / alignment) * alignment;
  });
  b.pad(alignment);
  return { header: b.bytes().slice(), offsets, sizes };
}

function dataBytes(t: GgufTensorInput, got: GgufTensor | Uint8Array, size: number): Uint8Array {
  let bytes: Uint8Array;
  if (got instanceof Uint8Array) bytes = got;
  else {
    if (got === null || typeof got !== 'object' || !ArrayBuffer.isView(got.data)) throw typeError(`tensor '${t.name}': data must be a tensor or a Uint8Array, got ${describe(got)}`);
    if (got.type !== t.type) throw typeError(`tensor '${t.name}': data is of type '${got.type}' but the tensor is declared '${t.type}'`);
    bytes = new Uint8Array(got.data.buffer, got.data.byteOffset, got.data.byteLength);
  }
  if (bytes.byteLength !== size) throw rangeError(`tensor '${t.name}': data has ${bytes.byteLength} bytes, its type and dims need ${size}`);
  return bytes;
}

/**
 * Writes a GGUF file: the header (metadata, then tensor infos), then each tensor's data in order,
 * padded to the alignment. `data` functions are called one at a time, when their tensor is
 * written. The file is written to `<file>.tmp-<pid>` and renamed when complete.
 */
export async function writeGguf(file: string, contents: { metadata: readonly GgufMetadataInput[]; tensors: readonly GgufTensorInput[] }, options?: GgufWriteOptions): Promise<void> {
  if (typeof file !== 'string' || file === '') throw typeError(`path must be a non-empty string, got ${describe(file)}`);
  const c = checkOptions(contents, 'contents');
  const o = checkOptions(options);
  if (!Array.isArray(c.metadata)) throw typeError(`contents.metadata must be an array of {key, type, value}, got ${describe(c.metadata)}`);
  if (!Array.isArray(c.tensors)) throw typeError(`contents.tensors must be an array of {name, type, dims, data}, got ${describe(c.tensors)}`);
  if (o.onTensor !== undefined && typeof o.onTensor !== 'function') throw typeError(`options.onTensor must be a function, got ${describe(o.onTensor)}`);
  const alignment = (o.alignment as number | undefined) ?? GGUF_DEFAULT_ALIGNMENT;
  const tensors = c.tensors as GgufTensorInput[];
  const { header, sizes } = ggufHeaderBytes(c.metadata as GgufMetadataInput[], tensors, alignment);
  const tmp = `${file}.tmp-${process.pid}`;
  let fh: fs.promises.FileHandle;
  try {
    fh = await fs.promises.open(tmp, 'w');
  } catch (e) {
    throw fileError(file, 'cannot write', e);
  }
  let ok = false;
  try {
    await fh.write(header);
    const zeros = new Uint8Array(alignment);
    for (let i = 0; i < tensors.length; i++) {
      const t = tensors[i];
      const got = typeof t.data === 'function' ? await t.data() : t.data;
      const bytes = dataBytes(t, got, sizes[i]);
      for (let done = 0; done < bytes.length; ) done += (await fh.write(bytes, done, Math.min(bytes.length - done, 1 << 30))).bytesWritten;
      const pad = (alignment - (sizes[i] % alignment)) % alignment;
      if (pad > 0) await fh.write(zeros, 0, pad); // after every tensor, the last too, as ggml writes
      (o.onTensor as GgufWriteOptions['onTensor'])?.(t.name, i, tensors.length);
    }
    ok = true;
  } catch (e) {
    if (e instanceof MoeError || e instanceof TypeError || e instanceof RangeError) throw e;
    throw fileError(file, 'cannot write', e);
  } finally {
    await fh.close();
    if (ok) await fs.promises.rename(tmp, file).catch((e) => Promise.reject(fileError(file, 'cannot write', e)));
    else await fs.promises.rm(tmp, { force: true });
  }
}
