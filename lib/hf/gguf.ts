/**
 * A reader of GGUF files (llama.cpp's format; versions 2 and 3, little-endian), spec: ggml's
 * docs/gguf.md. Layout:
 *
 *   u32 magic 'GGUF' | u32 version | u64 tensor_count | u64 metadata_kv_count
 *   metadata_kv_count x { string key | u32 value_type | value }          (string: u64 length + UTF-8)
 *   tensor_count x { string name | u32 n_dims | u64 ne[n_dims] | u32 ggml_type | u64 offset }
 *   padding to `general.alignment` (default 32) | tensor data (each offset relative to here, aligned)
 *
 * Every length, count, offset and size is checked against the file before anything is read or a
 * view is made: a truncated or lying file is a MoeError ERR_GGUF naming the file and the byte
 * offset, never a read out of bounds. ggml lists dims innermost first (ne[0] is a row's length);
 * `dims` here are the row-major dims the rest of the package uses (ne reversed): a GGUF matrix of
 * ne [in, out] is a [out, in] tensor, the Hugging Face layout.
 *
 * Tensor data comes from the file memory-mapped by the addon (`map_file`: no copy; the mapping
 * lives while any view of it does, async jobs included), or, without the addon or with
 * `{ mmap: false }`, from positioned reads, one tensor at a time.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { describe, fileError, MoeError, typeError } from '../core/errors.js';
import { checkOptions } from '../core/options.js';
import { type FloatType, type Tensor } from '../core/tensor.js';
import { type QuantTensor, type QuantType } from '../core/quant.js';

export const GGUF_MAGIC = 0x46554747; // 'GGUF' read as a little-endian u32
export const GGUF_DEFAULT_ALIGNMENT = 32;
/** The most bytes of header (metadata and tensor infos) read into memory: far above real files (a 150k-token vocabulary with merges is ~6 MB). */
export const GGUF_MAX_HEADER = 256 * 1024 * 1024;
/** ggml's GGML_MAX_DIMS. */
const MAX_DIMS = 4;

// ---- metadata value types --------------------------------------------------------------------

export type GgufValueType = 'uint8' | 'int8' | 'uint16' | 'int16' | 'uint32' | 'int32' | 'float32' | 'bool' | 'string' | 'array' | 'uint64' | 'int64' | 'float64';
/** The value_type ids of the spec, in order (0 = uint8 ... 12 = float64). */
export const GGUF_VALUE_TYPES: readonly GgufValueType[] = ['uint8', 'int8', 'uint16', 'int16', 'uint32', 'int32', 'float32', 'bool', 'string', 'array', 'uint64', 'int64', 'float64'];
const SCALAR_BYTES: Partial<Record<GgufValueType, number>> = { uint8: 1, int8: 1, uint16: 2, int16: 2, uint32: 4, int32: 4, float32: 4, bool: 1, uint64: 8, int64: 8, float64: 8 };

/** A numeric array: the typed array of its element type (64-bit integers as BigInt arrays). */
export type GgufNumericArray = Uint8Array | Int8Array | Uint16Array | Int16Array | Uint32Array | Int32Array | Float32Array | Float64Array | BigUint64Array | BigInt64Array;
/** An array value: numbers as a typed array, bools and strings as arrays, arrays of arrays nested. */
export type GgufArrayValue = GgufNumericArray | boolean[] | string[] | GgufArrayValue[];
/**
 * A metadata value. 64-bit integers are numbers when they are safe integers (|v| <= 2^53 - 1) and
 * bigints otherwise; in arrays they are always BigInt64Array / BigUint64Array.
 */
export type GgufValue = number | bigint | boolean | string | GgufArrayValue;

export interface GgufMetadataEntry {
  key: string;
  type: GgufValueType;
  /** Element type, for arrays (nested arrays: 'array'). */
  arrayType?: GgufValueType;
  value: GgufValue;
  /** Byte offset of the entry (its key) in the file. */
  offset: number;
}

// ---- tensor types --------------------------------------------------------------------------------

/** The quantised block formats the package carries (raw blocks, ggml's layouts): core/quant's QuantType. */
export type GgufQuantType = QuantType;
export const GGUF_QUANT_TYPES: readonly GgufQuantType[] = ['q8_0', 'q4_0', 'q4_k', 'q5_k', 'q6_k'];
/** What a GGUF tensor loads as: a float tensor of the package, or raw quantised blocks. */
export type GgufTensorType = FloatType | GgufQuantType;

/** A tensor of a GGUF file: a float tensor, or a quantised one (its raw blocks as in the file, and its logical row-major dims). */
export type GgufTensor = Tensor<FloatType> | QuantTensor;

interface GgmlType {
  id: number;
  name: string;
  /** Values per block (1 for plain types) and bytes per block. */
  blockSize: number;
  typeSize: number;
  /** How the package carries it; undefined: parsed and sized, but not loadable. */
  as?: GgufTensorType;
}

/** ggml's types (ggml.h ggml_type) with their block sizes: enough to size and check every tensor. */
const GGML_TYPES: readonly GgmlType[] = [
  { id: 0, name: 'F32', blockSize: 1, typeSize: 4, as: 'float32' },
  { id: 1, name: 'F16', blockSize: 1, typeSize: 2, as: 'float16' },
  { id: 2, name: 'Q4_0', blockSize: 32, typeSize: 18, as: 'q4_0' },
  { id: 3, name: 'Q4_1', blockSize: 32, typeSize: 20 },
  { id: 6, name: 'Q5_0', blockSize: 32, typeSize: 22 },
  { id: 7, name: 'Q5_1', blockSize: 32, typeSize: 24 },
  { id: 8, name: 'Q8_0', blockSize: 32, typeSize: 34, as: 'q8_0' },
  { id: 9, name: 'Q8_1', blockSize: 32, typeSize: 40 },
  { id: 10, name: 'Q2_K', blockSize: 256, typeSize: 84 },
  { id: 11, name: 'Q3_K', blockSize: 256, typeSize: 110 },
  { id: 12, name: 'Q4_K', blockSize: 256, typeSize: 144, as: 'q4_k' },
  { id: 13, name: 'Q5_K', blockSize: 256, typeSize: 176, as: 'q5_k' },
  { id: 14, name: 'Q6_K', blockSize: 256, typeSize: 210, as: 'q6_k' },
  { id: 15, name: 'Q8_K', blockSize: 256, typeSize: 292 },
  { id: 16, name: 'IQ2_XXS', blockSize: 256, typeSize: 66 },
  { id: 17, name: 'IQ2_XS', blockSize: 256, typeSize: 74 },
  { id: 18, name: 'IQ3_XXS', blockSize: 256, typeSize: 98 },
  { id: 19, name: 'IQ1_S', blockSize: 256, typeSize: 50 },
  { id: 20, name: 'IQ4_NL', blockSize: 32, typeSize: 18 },
  { id: 21, name: 'IQ3_S', blockSize: 256, typeSize: 110 },
  { id: 22, name: 'IQ2_S', blockSize: 256, typeSize: 82 },
  { id: 23, name: 'IQ4_XS', blockSize: 256, typeSize: 136 },
  { id: 24, name: 'I8', blockSize: 1, typeSize: 1 },
  { id: 25, name: 'I16', blockSize: 1, typeSize: 2 },
  { id: 26, name: 'I32', blockSize: 1, typeSize: 4 },
  { id: 27, name: 'I64', blockSize: 1, typeSize: 8 },
  { id: 28, name: 'F64', blockSize: 1, typeSize: 8 },
  { id: 29, name: 'IQ1_M', blockSize: 256, typeSize: 56 },
  { id: 30, name: 'BF16', blockSize: 1, typeSize: 2, as: 'bfloat16' },
  { id: 34, name: 'TQ1_0', blockSize: 256, typeSize: 54 },
  { id: 35, name: 'TQ2_0', blockSize: 256, typeSize: 66 },
  { id: 39, name: 'MXFP4', blockSize: 32, typeSize: 17 },
];
const TYPE_BY_ID = new Map(GGML_TYPES.map((t) => [t.id, t]));
const TYPE_BY_AS = new Map(GGML_TYPES.filter((t) => t.as).map((t) => [t.as!, t]));

/** ggml's type id, name and block layout of a type the package carries. */
export function ggmlTypeOf(type: GgufTensorType): { id: number; name: string; blockSize: number; typeSize: number } {
  const t = TYPE_BY_AS.get(type);
  if (!t) throw typeError(`type must be one of ${[...TYPE_BY_AS.keys()].map((k) => `'${k}'`).join(', ')}, got ${describe(type)}`);
  return { id: t.id, name: t.name, blockSize: t.blockSize, typeSize: t.typeSize };
}

/** The name of a ggml type id ('Q4_K'), or 'type N' for an id ggml does not have. */
export function ggmlTypeName(id: number): string {
  return TYPE_BY_ID.get(id)?.name ?? `type ${id}`;
}

/** Bytes of `elements` values of a type (elements a multiple of its block size). */
export function ggmlBytes(type: GgufTensorType, elements: number): number {
  const t = ggmlTypeOf(type);
  return (elements / t.blockSize) * t.typeSize;
}

export interface GgufTensorInfo {
  name: string;
  /** ggml type id and name ('F16', 'Q4_K'). */
  ggmlType: number;
  typeName: string;
  /** What it loads as; null for a ggml type the package does not carry (Q3_K, IQ2_XS, I32, ...). */
  type: GgufTensorType | null;
  /** ggml's dims, innermost first. */
  ne: readonly number[];
  /** Row-major dims (ne reversed): a matrix is [rows, cols]. */
  dims: readonly number[];
  elements: number;
  /** Absolute byte offset of the data in the file, and its length. */
  offset: number;
  byteLength: number;
  /** Byte offset of the tensor's info entry in the file (for messages). */
  infoOffset: number;
}

// ---- parsing ---------------------------------------------------------------------------------------

const ggufError = (file: string, offset: number, msg: string) => new MoeError(`${file}: invalid GGUF file at byte ${offset}: ${msg}`, 'ERR_GGUF');

/** Thrown by the parser when the bytes read so far end before the header does (the caller reads more). */
class NeedMore {
  constructor(readonly upTo: number) {}
}

const utf8 = new TextDecoder('utf-8', { fatal: false, ignoreBOM: true });

interface ParsedHeader {
  version: number;
  metadata: Map<string, GgufMetadataEntry>;
  tensors: Map<string, GgufTensorInfo>;
  alignment: number;
  dataOffset: number;
  headerBytes: number;
}

/**
 * Parses the header from `bytes` (the file's first bytes; `fileSize` its full size). Throws
 * NeedMore when the header goes past `bytes` but not past the file.
 */
function parseHeader(file: string, bytes: Uint8Array, fileSize: number): ParsedHeader {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let pos = 0;
  const limit = Math.min(fileSize, GGUF_MAX_HEADER);
  /** Checks that n bytes at pos are there, for `what`. */
  const need = (n: number, what: string) => {
    if (n > limit - pos) {
      if (pos + n > fileSize) throw ggufError(file, pos, `${what} needs ${n} bytes but the file ends at byte ${fileSize} (truncated file?)`);
      throw ggufError(file, pos, `${what} needs ${n} bytes, past the ${GGUF_MAX_HEADER}-byte limit on a GGUF header`);
    }
    if (pos + n > bytes.length) throw new NeedMore(pos + n);
  };
  const u32 = (what: string) => {
    need(4, what);
    const v = dv.getUint32(pos, true);
    pos += 4;
    return v;
  };
  /** A u64 as a number; past 2^53 it cannot be a count or an offset of a real file. */
  const u64 = (what: string) => {
    need(8, what);
    const v = dv.getBigUint64(pos, true);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw ggufError(file, pos, `${what} is ${v}, larger than any file`);
    pos += 8;
    return Number(v);
  };
  const str = (what: string) => {
    const at = pos;
    const n = u64(`the length of ${what}`);
    if (n > fileSize - pos) throw ggufError(file, at, `${what} has length ${n}, past the end of the file (${fileSize} bytes)`);
    need(n, what);
    const s = utf8.decode(bytes.subarray(pos, pos + n));
    pos += n;
    return s;
  };
  const valueType = (what: string) => {
    const at = pos;
    const t = u32(what);
    if (t >= GGUF_VALUE_TYPES.length) throw ggufError(file, at, `${what} is ${t}, not a GGUF value type (0-12)`);
    return GGUF_VALUE_TYPES[t];
  };
  const safe = (v: bigint) => (v >= -BigInt(Number.MAX_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v);
  const scalar = (t: GgufValueType, what: string): GgufValue => {
    if (t === 'string') return str(what);
    const n = SCALAR_BYTES[t]!;
    need(n, what);
    let v: GgufValue;
    switch (t) {
      case 'uint8': v = dv.getUint8(pos); break;
      case 'int8': v = dv.getInt8(pos); break;
      case 'uint16': v = dv.getUint16(pos, true); break;
      case 'int16': v = dv.getInt16(pos, true); break;
      case 'uint32': v = dv.getUint32(pos, true); break;
      case 'int32': v = dv.getInt32(pos, true); break;
      case 'float32': v = dv.getFloat32(pos, true); break;
      case 'float64': v = dv.getFloat64(pos, true); break;
      case 'uint64': v = safe(dv.getBigUint64(pos, true)); break;
      case 'int64': v = safe(dv.getBigInt64(pos, true)); break;
      case 'bool': {
        const b = dv.getUint8(pos);
        if (b > 1) throw ggufError(file, pos, `${what} is a bool of value ${b}, not 0 or 1`);
        v = b === 1;
        break;
      }
      default:
        throw ggufError(file, pos, `${what}: unexpected type ${t}`);
    }
    pos += n;
    return v;
  };
  const array = (what: string, depth: number): { arrayType: GgufValueType; value: GgufArrayValue } => {
    const at = pos;
    const et = valueType(`the element type of ${what}`);
    const count = u64(`the length of ${what}`);
    // every element takes at least one byte (strings 8): a count the rest of the file cannot hold is a lie
    const least = et === 'string' || et === 'array' ? 8 : SCALAR_BYTES[et]!;
    if (count > (fileSize - pos) / least) throw ggufError(file, at, `${what} claims ${count} elements of ${et}, more than the rest of the file holds`);
    if (et === 'array') {
      if (depth >= 8) throw ggufError(file, at, `${what} nests arrays more than 8 deep`);
      const out: GgufArrayValue[] = [];
      for (let i = 0; i < count; i++) out.push(array(`${what}[${i}]`, depth + 1).value);
      return { arrayType: et, value: out };
    }
    if (et === 'string') {
      const out: string[] = new Array(count);
      for (let i = 0; i < count; i++) out[i] = str(`${what}[${i}]`);
      return { arrayType: et, value: out };
    }
    if (et === 'bool') {
      const out: boolean[] = new Array(count);
      for (let i = 0; i < count; i++) out[i] = scalar('bool', `${what}[${i}]`) as boolean;
      return { arrayType: et, value: out };
    }
    const n = count * least;
    need(n, what);
    const ctor = {
      uint8: Uint8Array, int8: Int8Array, uint16: Uint16Array, int16: Int16Array, uint32: Uint32Array, int32: Int32Array,
      float32: Float32Array, float64: Float64Array, uint64: BigUint64Array, int64: BigInt64Array,
    }[et as 'uint8']!;
    // a copy: aligned, and independent of the header buffer
    const copy = new Uint8Array(n);
    copy.set(bytes.subarray(pos, pos + n));
    pos += n;
    return { arrayType: et, value: new ctor(copy.buffer) as GgufNumericArray };
  };

  // header
  need(4, 'the magic');
  const magic = dv.getUint32(0, true);
  if (magic !== GGUF_MAGIC) {
    const shown = [...bytes.subarray(0, 4)].map((b) => (b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : `\\x${b.toString(16).padStart(2, '0')}`)).join('');
    throw ggufError(file, 0, `the magic is "${shown}", not "GGUF": not a GGUF file`);
  }
  pos = 4;
  const version = u32('the version');
  if (version === 1) throw ggufError(file, 4, 'GGUF version 1 (32-bit counts, from before August 2023) is not supported: convert the file again with a current llama.cpp');
  if (version !== 2 && version !== 3) {
    const swapped = ((version & 0xff) << 24) | ((version & 0xff00) << 8) | ((version >>> 8) & 0xff00) | (version >>> 24);
    if (swapped === 2 || swapped === 3) throw ggufError(file, 4, `a big-endian GGUF file (version ${swapped}): only little-endian files are supported`);
    throw ggufError(file, 4, `GGUF version ${version} is not supported (2 and 3 are)`);
  }
  const tensorCount = u64('the tensor count');
  const kvCount = u64('the metadata count');
  // each entry is at least a 8-byte length and a 4-byte type; each tensor info at least 8+4+8+4+8
  if (kvCount > (fileSize - pos) / 12) throw ggufError(file, 16, `the metadata count ${kvCount} is more than the file can hold`);
  if (tensorCount > (fileSize - pos) / 32) throw ggufError(file, 8, `the tensor count ${tensorCount} is more than the file can hold`);

  const metadata = new Map<string, GgufMetadataEntry>();
  for (let i = 0; i < kvCount; i++) {
    const offset = pos;
    const key = str(`the key of metadata entry ${i}`);
    if (metadata.has(key)) throw ggufError(file, offset, `metadata key '${key}' appears twice`);
    const type = valueType(`the value type of '${key}'`);
    if (type === 'array') {
      const { arrayType, value } = array(`'${key}'`, 0);
      metadata.set(key, { key, type, arrayType, value, offset });
    } else metadata.set(key, { key, type, value: scalar(type, `the value of '${key}'`), offset });
  }

  let alignment = GGUF_DEFAULT_ALIGNMENT;
  const al = metadata.get('general.alignment');
  if (al !== undefined) {
    if (al.type !== 'uint32') throw ggufError(file, al.offset, `general.alignment must be a uint32, got a ${al.type}`);
    const a = al.value as number;
    if (a === 0 || (a & (a - 1)) !== 0) throw ggufError(file, al.offset, `general.alignment must be a power of two, got ${a}`);
    alignment = a;
  }

  const infos: GgufTensorInfo[] = [];
  const tensors = new Map<string, GgufTensorInfo>();
  for (let i = 0; i < tensorCount; i++) {
    const infoOffset = pos;
    const name = str(`the name of tensor ${i}`);
    if (tensors.has(name)) throw ggufError(file, infoOffset, `tensor '${name}' appears twice`);
    const nd = u32(`the dim count of tensor '${name}'`);
    if (nd < 1 || nd > MAX_DIMS) throw ggufError(file, pos - 4, `tensor '${name}' has ${nd} dims (1 to ${MAX_DIMS} allowed)`);
    const ne: number[] = [];
    let elements = 1;
    for (let j = 0; j < nd; j++) {
      const at = pos;
      const n = u64(`dim ${j} of tensor '${name}'`);
      ne.push(n);
      elements *= n;
      if (elements > Number.MAX_SAFE_INTEGER) throw ggufError(file, at, `tensor '${name}' has more than 2^53 elements`);
    }
    const typeAt = pos;
    const id = u32(`the type of tensor '${name}'`);
    const t = TYPE_BY_ID.get(id);
    if (!t) throw ggufError(file, typeAt, `tensor '${name}' has ggml type ${id}, which this reader does not know`);
    if (ne[0] % t.blockSize !== 0)
      throw ggufError(file, typeAt, `tensor '${name}' of type ${t.name} has rows of ${ne[0]} values, not a multiple of its block size ${t.blockSize}`);
    const offAt = pos;
    const rel = u64(`the data offset of tensor '${name}'`);
    if (rel % alignment !== 0) throw ggufError(file, offAt, `tensor '${name}' has data offset ${rel}, not a multiple of the alignment ${alignment}`);
    const byteLength = (elements / t.blockSize) * t.typeSize;
    const info: GgufTensorInfo = {
      name, ggmlType: id, typeName: t.name, type: t.as ?? null, ne, dims: [...ne].reverse(), elements, offset: rel, byteLength, infoOffset,
    };
    tensors.set(name, info);
    infos.push(info);
  }
  const headerBytes = pos;
  const dataOffset = Math.ceil(pos / alignment) * alignment;
  if (tensorCount > 0 && dataOffset > fileSize) throw ggufError(file, pos, `the tensor data would start at byte ${dataOffset}, past the end of the file (${fileSize} bytes)`);
  // offsets are relative to the data section: make them absolute, and check each against the file
  // and against the others (no two tensors share bytes)
  for (const t of infos) {
    t.offset += dataOffset;
    if (t.offset + t.byteLength > fileSize)
      throw ggufError(file, t.infoOffset, `tensor '${t.name}' (${t.typeName} [${t.ne.join(',')}]) takes bytes ${t.offset}..${t.offset + t.byteLength}, past the end of the file (${fileSize} bytes; truncated file?)`);
  }
  const sorted = [...infos].sort((a, b) => a.offset - b.offset);
  for (let i = 1; i < sorted.length; i++) {
    const a = sorted[i - 1];
    const b = sorted[i];
    if (b.byteLength > 0 && a.offset + a.byteLength > b.offset)
      throw ggufError(file, b.infoOffset, `tensor '${b.name}' (bytes ${b.offset}..${b.offset + b.byteLength}) overlaps tensor '${a.name}' (bytes ${a.offset}..${a.offset + a.byteLength})`);
  }
  return { version, metadata, tensors, alignment, dataOffset, headerBytes };
}

/** Parses with more and more of the file read by `readAt` (sync or async), until the header fits. */
function* parseSteps(file: string, size: number): Generator<number, ParsedHeader, Uint8Array> {
  let want = Math.min(size, 1 << 20);
  for (;;) {
    const bytes: Uint8Array = yield want;
    try {
      return parseHeader(file, bytes, size);
    } catch (e) {
      if (!(e instanceof NeedMore)) throw e;
      want = Math.min(size, GGUF_MAX_HEADER, Math.max(e.upTo, want * 2));
    }
  }
}

// ---- the file ---------------------------------------------------------------------------------------

export interface GgufOpenOptions {
  /**
   * Map the file with the addon (tensors are views of the mapping, nothing is copied): 'auto'
   * (default) when the addon loads, true to require it, false for positioned reads.
   */
  mmap?: boolean | 'auto';
}

const readAsync = promisify(fs.read);
const MAX_READ = 0x7fff_f000;

interface Native {
  map_file(path: string): ArrayBuffer;
  advise_file(buffer: ArrayBuffer, offset: number, length: number, advice: 'dontneed' | 'willneed'): void;
}
function native(required: boolean): Native | null {
  try {
    // loaded on demand: reading a header (inspect, params) works without the addon
    return (require('../core/binding.js') as { binding: Native }).binding;
  } catch (e) {
    if (required) throw new MoeError(`options.mmap is true but the native addon does not load (${(e as Error).message})`, 'ERR_BACKEND_UNAVAILABLE');
    return null;
  }
}

const closer = new FinalizationRegistry<number>((fd) => fs.close(fd, () => {}));

/**
 * One open GGUF file: the header is parsed and checked at open; tensors are read (or viewed in
 * the mapping) one at a time. `close()` ends reads; views already handed out stay valid (they hold
 * the mapping).
 */
export class GgufFile {
  /** Absolute path ('<memory>' for fromBytes). */
  readonly path: string;
  readonly size: number;
  readonly version: number;
  readonly alignment: number;
  /** Absolute offset of the tensor data section. */
  readonly dataOffset: number;
  /** Bytes of header (magic to the last tensor info, before the padding). */
  readonly headerBytes: number;
  /** Whether tensors are views of a memory mapping (or of the bytes given to fromBytes). */
  readonly mapped: boolean;
  readonly #metadata: Map<string, GgufMetadataEntry>;
  readonly #tensors: Map<string, GgufTensorInfo>;
  /** The mapping or the in-memory bytes; null with positioned reads. */
  #bytes: Uint8Array | null;
  #buffer: ArrayBuffer | null;
  #fd: number | null;
  #closed = false;
  #pending = 0;

  private constructor(file: string, size: number, h: ParsedHeader, src: { bytes?: Uint8Array; buffer?: ArrayBuffer; fd?: number }) {
    this.path = file;
    this.size = size;
    this.version = h.version;
    this.alignment = h.alignment;
    this.dataOffset = h.dataOffset;
    this.headerBytes = h.headerBytes;
    this.#metadata = h.metadata;
    this.#tensors = h.tensors;
    this.#bytes = src.bytes ?? null;
    this.#buffer = src.buffer ?? null;
    this.#fd = src.fd ?? null;
    this.mapped = this.#bytes !== null;
    if (this.#fd !== null) closer.register(this, this.#fd, this);
  }

  /** Opens and checks a file (off the event loop for the reads). */
  static async open(file: string, options?: GgufOpenOptions): Promise<GgufFile> {
    const abs = checkFile(file);
    const n = mmapOption(options);
    if (n) return GgufFile.#mapped(abs, n);
    const fd = await promisify(fs.open)(abs, 'r').catch((e) => Promise.reject(fileError(abs, 'cannot open', e)));
    try {
      const st = await promisify(fs.fstat)(fd);
      checkRegular(abs, st);
      const steps = parseSteps(abs, st.size);
      let r = steps.next();
      while (!r.done) {
        const buf = Buffer.alloc(r.value);
        let got = 0;
        while (got < r.value) {
          const k = (await readAsync(fd, buf, got, r.value - got, got)).bytesRead;
          if (k === 0) break;
          got += k;
        }
        r = steps.next(buf.subarray(0, got));
      }
      return new GgufFile(abs, st.size, r.value, { fd });
    } catch (e) {
      fs.closeSync(fd);
      throw e;
    }
  }

  static openSync(file: string, options?: GgufOpenOptions): GgufFile {
    const abs = checkFile(file);
    const n = mmapOption(options);
    if (n) return GgufFile.#mapped(abs, n);
    let fd: number;
    try {
      fd = fs.openSync(abs, 'r');
    } catch (e) {
      throw fileError(abs, 'cannot open', e);
    }
    try {
      const st = fs.fstatSync(fd);
      checkRegular(abs, st);
      const steps = parseSteps(abs, st.size);
      let r = steps.next();
      while (!r.done) {
        const buf = Buffer.alloc(r.value);
        let got = 0;
        while (got < r.value) {
          const k = fs.readSync(fd, buf, got, r.value - got, got);
          if (k === 0) break;
          got += k;
        }
        r = steps.next(buf.subarray(0, got));
      }
      return new GgufFile(abs, st.size, r.value, { fd });
    } catch (e) {
      fs.closeSync(fd);
      throw e;
    }
  }

  /** A GGUF held in memory (tests, fuzzing, files fetched by other means): tensors are views of `bytes`. */
  static fromBytes(bytes: Uint8Array, name = '<memory>'): GgufFile {
    if (!(bytes instanceof Uint8Array)) throw typeError(`bytes must be a Uint8Array, got ${describe(bytes)}`);
    if (typeof name !== 'string') throw typeError(`name must be a string, got ${describe(name)}`);
    return new GgufFile(name, bytes.length, parseHeader(name, bytes, bytes.length), { bytes });
  }

  static #mapped(abs: string, n: Native): GgufFile {
    // a directory or a missing file is named by the same errors as an unmapped open
    let st: fs.Stats;
    try {
      st = fs.statSync(abs);
    } catch (e) {
      throw fileError(abs, 'cannot open', e);
    }
    checkRegular(abs, st);
    if (st.size === 0) throw ggufError(abs, 0, 'the file is empty');
    const buffer = n.map_file(abs);
    const bytes = new Uint8Array(buffer);
    return new GgufFile(abs, bytes.length, parseHeader(abs, bytes, bytes.length), { bytes, buffer });
  }

  // ---- metadata ----

  /** Metadata keys in file order. */
  keys(): string[] {
    return [...this.#metadata.keys()];
  }

  has(key: string): boolean {
    return this.#metadata.has(key);
  }

  /** A metadata entry (type, value, offset), or undefined. */
  entry(key: string): GgufMetadataEntry | undefined {
    return this.#metadata.get(key);
  }

  /** Every metadata entry, in file order. */
  entries(): GgufMetadataEntry[] {
    return [...this.#metadata.values()];
  }

  /** A metadata value, or undefined. */
  get(key: string): GgufValue | undefined {
    return this.#metadata.get(key)?.value;
  }

  /** `general.architecture` ('llama', 'qwen2moe', ...), or null when absent. */
  get architecture(): string | null {
    const a = this.get('general.architecture');
    return typeof a === 'string' ? a : null;
  }

  // ---- tensors ----

  /** Tensor names in file order. */
  names(): string[] {
    return [...this.#tensors.keys()];
  }

  hasTensor(name: string): boolean {
    return this.#tensors.has(name);
  }

  /** A tensor's info; MoeError ERR_TENSOR_MISSING when the file has none of that name. */
  info(name: string): GgufTensorInfo {
    const t = this.#tensors.get(name);
    if (!t) throw new MoeError(`${this.path}: no tensor '${name}' in this GGUF file`, 'ERR_TENSOR_MISSING');
    return t;
  }

  infos(): GgufTensorInfo[] {
    return [...this.#tensors.values()];
  }

  /** Bytes of tensor data (sum over tensors). */
  get tensorBytes(): number {
    let n = 0;
    for (const t of this.#tensors.values()) n += t.byteLength;
    return n;
  }

  /**
   * A tensor as the package carries it: float types as Tensors (Float32Array, or Uint16Array bits
   * for float16/bfloat16), quantised ones as QuantTensors of raw blocks. Mapped: a view of the
   * mapping, no copy (a copy only when a float tensor's offset is not aligned to its element size).
   * A ggml type the package does not carry is MoeError ERR_TENSOR_DTYPE naming the tensor and type.
   */
  async read(name: string): Promise<GgufTensor> {
    const info = this.#loadable(name);
    if (this.#bytes) return wrap(info, this.#view(info));
    return wrap(info, await this.#readBytes(info));
  }

  readSync(name: string): GgufTensor {
    const info = this.#loadable(name);
    return wrap(info, this.#bytes ? this.#view(info) : this.#readBytesSync(info));
  }

  /** The raw bytes of any tensor (any ggml type), as stored. */
  async readBytes(name: string): Promise<Uint8Array> {
    const info = this.info(name);
    this.#check();
    return this.#bytes ? this.#view(info) : this.#readBytes(info);
  }

  /**
   * Memory advice for a tensor's pages in the mapping (no-op without one): 'dontneed' drops them
   * from this process after their data was packed elsewhere (the loader's way of keeping RSS near
   * one copy of the model); they are read back from the page cache if touched again.
   */
  advise(name: string, advice: 'dontneed' | 'willneed'): void {
    const info = this.info(name);
    if (this.#buffer && !this.#closed) native(false)?.advise_file(this.#buffer, info.offset, info.byteLength, advice);
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Closes the file: later reads throw ERR_DISPOSED; tensors already read stay valid. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#bytes = null;
    this.#buffer = null;
    if (this.#pending === 0) this.#closeFd();
  }

  [Symbol.dispose](): void {
    this.close();
  }

  #closeFd(): void {
    if (this.#fd === null) return;
    closer.unregister(this);
    fs.closeSync(this.#fd);
    this.#fd = null;
  }

  #check(): void {
    if (this.#closed) throw new MoeError(`${this.path}: the GGUF file is closed`, 'ERR_DISPOSED');
  }

  #loadable(name: string): GgufTensorInfo {
    const info = this.info(name);
    this.#check();
    if (info.type === null)
      throw new MoeError(
        `${this.path}: tensor '${name}' has ggml type ${info.typeName}, which this package does not load (F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q5_K, Q6_K)`,
        'ERR_TENSOR_DTYPE',
      );
    return info;
  }

  #view(info: GgufTensorInfo): Uint8Array {
    const b = this.#bytes!;
    return b.subarray(info.offset, info.offset + info.byteLength);
  }

  async #readBytes(info: GgufTensorInfo): Promise<Uint8Array> {
    const out = allocate(this.path, info);
    this.#pending++;
    try {
      for (let done = 0; done < info.byteLength; ) {
        const n = (await readAsync(this.#fd!, out, done, Math.min(MAX_READ, info.byteLength - done), info.offset + done)).bytesRead;
        if (n === 0) throw shortRead(this.path, info, done);
        done += n;
      }
    } finally {
      if (--this.#pending === 0 && this.#closed) this.#closeFd();
    }
    return out;
  }

  #readBytesSync(info: GgufTensorInfo): Uint8Array {
    const out = allocate(this.path, info);
    for (let done = 0; done < info.byteLength; ) {
      const n = fs.readSync(this.#fd!, out, done, Math.min(MAX_READ, info.byteLength - done), info.offset + done);
      if (n === 0) throw shortRead(this.path, info, done);
      done += n;
    }
    return out;
  }
}

function allocate(file: string, info: GgufTensorInfo): Uint8Array {
  try {
    return new Uint8Array(info.byteLength);
  } catch {
    throw new MoeError(`${file}: tensor '${info.name}' needs ${info.byteLength} bytes, which could not be allocated`, 'ERR_OUT_OF_MEMORY');
  }
}

const shortRead = (file: string, info: GgufTensorInfo, got: number) =>
  new MoeError(`${file}: tensor '${info.name}': the file ended after ${got} of its ${info.byteLength} bytes at byte ${info.offset + got} (truncated since it was opened?)`, 'ERR_GGUF');

/** Bytes of a tensor as the package's tensor (a view when aligned, else a copy). */
function wrap(info: GgufTensorInfo, bytes: Uint8Array): GgufTensor {
  const type = info.type!;
  const dims = [...info.dims];
  if (type !== 'float32' && type !== 'float16' && type !== 'bfloat16') return { type, data: bytes, dims };
  const size = type === 'float32' ? 4 : 2;
  const b = bytes.byteOffset % size === 0 ? bytes : bytes.slice();
  const data = type === 'float32' ? new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4) : new Uint16Array(b.buffer, b.byteOffset, b.byteLength / 2);
  return { type, data, dims } as Tensor<FloatType>;
}

function checkFile(file: unknown): string {
  if (typeof file !== 'string' || file === '') throw typeError(`path must be a non-empty string, got ${describe(file)}`);
  if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1) throw new MoeError('GGUF files are little-endian: this machine is big-endian', 'ERR_UNSUPPORTED');
  return path.resolve(file);
}

function mmapOption(options: GgufOpenOptions | undefined): Native | null {
  const o = checkOptions(options);
  const m = o.mmap ?? 'auto';
  if (m !== true && m !== false && m !== 'auto') throw typeError(`options.mmap must be true, false or 'auto', got ${describe(m)}`);
  if (m === false) return null;
  return native(m === true);
}

function checkRegular(file: string, st: { isDirectory(): boolean; isFile(): boolean }): void {
  if (st.isDirectory()) throw new MoeError(`${file}: cannot open: it is a directory, not a GGUF file`, 'ERR_FILE_READ');
  if (!st.isFile()) throw new MoeError(`${file}: cannot open: it is not a regular file`, 'ERR_FILE_READ');
}

/** Whether a path names a GGUF file (by its extension). */
export function isGgufPath(p: unknown): p is string {
  return typeof p === 'string' && /\.gguf$/i.test(p);
}
