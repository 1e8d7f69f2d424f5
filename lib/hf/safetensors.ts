/**
 * Safetensors files. A file is an 8-byte little-endian header length N, N bytes of JSON ({name:
 * {dtype, shape, data_offsets: [begin, end]}, "__metadata__"?: {...}}) and the byte buffer the offsets
 * point into. The reader validates the whole header when it opens a file, then reads one tensor at a
 * time with positioned reads on a file descriptor: a file of any size (offsets are exact up to 2^53)
 * is never read whole. Writing: lib/hf/safetensors-write.ts; checkpoints: lib/hf/checkpoint.ts.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { describe, fileError, MoeError, typeError } from '../core/errors.js';
import { checkOptions } from '../core/options.js';
import { cast, FLOAT_TYPES, type DType, type FloatType, type Tensor } from '../core/tensor.js';

/** Safetensors dtype names this reader knows. Only F32, F16, BF16 and I32 load as tensors. */
export type SafetensorsDType =
  | 'F64' | 'F32' | 'F16' | 'BF16' | 'F8_E4M3' | 'F8_E5M2'
  | 'I64' | 'I32' | 'I16' | 'I8' | 'U64' | 'U32' | 'U16' | 'U8' | 'BOOL';

export const ELEM_SIZE: Record<SafetensorsDType, number> = {
  F64: 8, F32: 4, F16: 2, BF16: 2, F8_E4M3: 1, F8_E5M2: 1,
  I64: 8, I32: 4, I16: 2, I8: 1, U64: 8, U32: 4, U16: 2, U8: 1, BOOL: 1,
};
export const TO_LIBRARY: Partial<Record<SafetensorsDType, DType>> = { F32: 'float32', F16: 'float16', BF16: 'bfloat16', I32: 'int32' };
export const FROM_LIBRARY: Record<DType, SafetensorsDType> = { float32: 'F32', float16: 'F16', bfloat16: 'BF16', int32: 'I32' };

/** Bytes per element of a safetensors dtype. */
export function safetensorsElementSize(dtype: SafetensorsDType): number {
  return ELEM_SIZE[dtype];
}

/** One tensor of a file, as its header describes it. */
export interface TensorInfo {
  readonly name: string;
  /** The file that holds it (absolute path). */
  readonly file: string;
  readonly dtype: SafetensorsDType;
  /** The library type it loads as; null when the dtype has no library type (e.g. I64). */
  readonly type: DType | null;
  readonly shape: readonly number[];
  /** Absolute byte offset of the data in the file. */
  readonly offset: number;
  readonly byteLength: number;
}

export interface ReadOptions {
  /** Convert a float tensor to this type on load (round to nearest even). Default: as stored. */
  dtype?: FloatType;
}

/** The largest header accepted (the safetensors format itself caps it at 100 MB). */
export const MAX_HEADER = 100 * 1024 * 1024;
/** fs.read moves at most 2 GiB - 1 per call. */
export const MAX_READ = 0x7fff_f000;

export const headerError = (file: string, msg: string) => new MoeError(`${file}: invalid safetensors header: ${msg}`, 'ERR_SAFETENSORS_HEADER');

export function checkLittleEndian(): void {
  if (os.endianness() !== 'LE') throw new MoeError('safetensors data is little-endian; this machine is big-endian', 'ERR_UNSUPPORTED');
}

const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/**
 * The first key that appears twice at the top level of a JSON object text (which parses), or
 * null. JSON.parse keeps the last of duplicate keys silently; the format's reference reader refuses
 * them, and a tensor named twice would be read from whichever entry came last.
 */
function duplicateTopLevelKey(json: string): string | null {
  const seen = new Set<string>();
  let depth = 0;
  let expectKey = false;
  for (let i = 0; i < json.length; i++) {
    const c = json.charCodeAt(i);
    if (c === 0x22 /* " */) {
      let j = i + 1;
      let escaped = false;
      for (let cj = json.charCodeAt(j); cj !== 0x22; cj = json.charCodeAt(j)) {
        if (cj === 0x5c /* \ */) {
          escaped = true;
          j++;
        }
        j++;
      }
      if (depth === 1 && expectKey) {
        const key = escaped ? (JSON.parse(json.slice(i, j + 1)) as string) : json.slice(i + 1, j);
        if (seen.has(key)) return key;
        seen.add(key);
        expectKey = false;
      }
      i = j;
    } else if (c === 0x7b /* { */ || c === 0x5b /* [ */) {
      if (++depth === 1) expectKey = true;
    } else if (c === 0x7d /* } */ || c === 0x5d /* ] */) depth--;
    else if (c === 0x2c /* , */ && depth === 1) expectKey = true;
  }
  return null;
}

/** Validates a header against the file size; returns the tensors (by name) and metadata. */
function parseHeader(file: string, bytes: Uint8Array, headerLen: number, fileSize: number): { tensors: Map<string, TensorInfo>; metadata: Record<string, string> } {
  let json: string;
  try {
    json = utf8.decode(bytes);
  } catch {
    throw headerError(file, 'the header is not valid UTF-8');
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(json);
  } catch (e) {
    throw headerError(file, `the JSON does not parse (${(e as Error).message})`);
  }
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) throw headerError(file, `the JSON must be an object, got ${describe(parsed)}`);
  const dup = duplicateTopLevelKey(json);
  if (dup !== null)
    throw headerError(file, dup === '__metadata__' ? '__metadata__ appears twice' : `tensor '${dup}' appears twice (a name must be unique)`);
  const dataStart = 8 + headerLen;
  const dataLen = fileSize - dataStart;
  const tensors = new Map<string, TensorInfo>();
  let metadata: Record<string, string> = {};
  for (const [name, entry] of Object.entries(parsed as Record<string, unknown>)) {
    if (name === '__metadata__') {
      if (entry === null || typeof entry !== 'object' || Array.isArray(entry)) throw headerError(file, `__metadata__ must be an object of strings, got ${describe(entry)}`);
      for (const [k, v] of Object.entries(entry)) if (typeof v !== 'string') throw headerError(file, `__metadata__.${k} must be a string, got ${describe(v)}`);
      metadata = entry as Record<string, string>;
      continue;
    }
    const where = `tensor '${name}'`;
    if (entry === null || typeof entry !== 'object' || Array.isArray(entry)) throw headerError(file, `${where} must be an object {dtype, shape, data_offsets}, got ${describe(entry)}`);
    const { dtype, shape, data_offsets: offsets } = entry as Record<string, unknown>;
    if (typeof dtype !== 'string' || !Object.hasOwn(ELEM_SIZE, dtype)) throw headerError(file, `${where} has unknown dtype ${describe(dtype)}`);
    if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) throw headerError(file, `${where} has shape ${describe(shape)}; it must be an array of non-negative integers`);
    if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every((o) => Number.isSafeInteger(o) && o >= 0) || offsets[0] > offsets[1])
      throw headerError(file, `${where} has data_offsets ${describe(offsets)}; they must be [begin, end] with 0 <= begin <= end`);
    const [begin, end] = offsets as [number, number];
    if (end > dataLen) throw headerError(file, `${where} has data_offsets [${begin},${end}] past the end of the data (${dataLen} bytes after the header)`);
    const st = dtype as SafetensorsDType;
    const bytes = (shape as number[]).reduce((a, b) => a * b, 1) * ELEM_SIZE[st];
    if (bytes !== end - begin)
      throw headerError(file, `${where} (${st} [${(shape as number[]).join(',')}]) needs ${bytes} bytes but data_offsets [${begin},${end}] hold ${end - begin}`);
    tensors.set(name, { name, file, dtype: st, type: TO_LIBRARY[st] ?? null, shape: [...(shape as number[])], offset: dataStart + begin, byteLength: end - begin });
  }
  const sorted = [...tensors.values()].filter((t) => t.byteLength > 0).sort((a, b) => a.offset - b.offset);
  for (let i = 1; i < sorted.length; i++) {
    const a = sorted[i - 1];
    const b = sorted[i];
    if (b.offset < a.offset + a.byteLength)
      throw headerError(file, `tensors '${a.name}' and '${b.name}' overlap (bytes [${a.offset - dataStart},${a.offset - dataStart + a.byteLength}) and [${b.offset - dataStart},${b.offset - dataStart + b.byteLength}))`);
  }
  return { tensors, metadata };
}

export function checkReadOptions(options: ReadOptions | undefined): FloatType | undefined {
  const o = checkOptions(options);
  const dtype = o.dtype;
  if (dtype !== undefined && !(FLOAT_TYPES as readonly unknown[]).includes(dtype))
    throw typeError(`options.dtype must be one of ${FLOAT_TYPES.map((t) => `'${t}'`).join(', ')}, got ${describe(dtype)}`);
  return dtype as FloatType | undefined;
}

function allocate(info: TensorInfo): { bytes: Uint8Array; finish: (dtype?: FloatType) => Tensor } {
  const type = info.type;
  if (type === null)
    throw new MoeError(`${info.file}: tensor '${info.name}' has dtype ${info.dtype}, which does not load as a library tensor (F32, F16, BF16, I32 do)`, 'ERR_TENSOR_DTYPE');
  let buffer: ArrayBuffer;
  try {
    buffer = new ArrayBuffer(info.byteLength);
  } catch {
    throw new MoeError(`${info.file}: tensor '${info.name}' needs ${info.byteLength} bytes, which could not be allocated`, 'ERR_OUT_OF_MEMORY');
  }
  const bytes = new Uint8Array(buffer);
  const finish = (dtype?: FloatType): Tensor => {
    const data = type === 'float32' ? new Float32Array(buffer) : type === 'int32' ? new Int32Array(buffer) : new Uint16Array(buffer);
    const t = { type, data, dims: [...info.shape] } as Tensor;
    if (dtype === undefined || dtype === type) return t;
    if (type === 'int32') throw new MoeError(`${info.file}: tensor '${info.name}' is I32 and cannot be converted to '${dtype}'`, 'ERR_TENSOR_DTYPE');
    return cast(t, dtype);
  };
  return { bytes, finish };
}

const readAsync = promisify(fs.read);
const shortRead = (info: TensorInfo, got: number) =>
  new MoeError(`${info.file}: tensor '${info.name}': the file ended after ${got} of its ${info.byteLength} bytes (truncated file?)`, 'ERR_SAFETENSORS_HEADER');

// Descriptors of files the caller forgot to close are closed when the reader is collected.
const closer = new FinalizationRegistry<number>((fd) => fs.close(fd, () => {}));

/**
 * One open safetensors file. `open` / `openSync` read and validate the header only; `read` /
 * `readSync` load one tensor. Close it with `close()` (a forgotten one is closed by the GC).
 */
export class SafetensorsFile {
  /** Absolute path. */
  readonly path: string;
  readonly size: number;
  /** The header's `__metadata__` (string values). */
  readonly metadata: Readonly<Record<string, string>>;
  readonly #tensors: Map<string, TensorInfo>;
  #fd: number | null;
  /** Async reads in flight: close() waits for them, so the descriptor is never reused under one. */
  #pending = 0;
  #closing = false;
  /** asyncDispose() calls waiting for the descriptor to close. */
  #onClosed: (() => void)[] = [];

  private constructor(file: string, fd: number, size: number, header: ReturnType<typeof parseHeader>) {
    this.path = file;
    this.size = size;
    this.metadata = header.metadata;
    this.#tensors = header.tensors;
    this.#fd = fd;
    closer.register(this, fd, this);
  }

  static async open(file: string): Promise<SafetensorsFile> {
    checkLittleEndian();
    const abs = checkPath(file);
    const fd = await promisify(fs.open)(abs, 'r').catch((e) => Promise.reject(openError(abs, e)));
    try {
      const st = await promisify(fs.fstat)(fd);
      checkRegular(abs, st);
      const size = st.size;
      const head = Buffer.alloc(8);
      const n = size >= 8 ? (await readAsync(fd, head, 0, 8, 0)).bytesRead : 0;
      const len = headerLength(abs, head, n, size);
      const json = Buffer.alloc(len);
      if ((await readAsync(fd, json, 0, len, 8)).bytesRead !== len) throw headerError(abs, 'the file ended inside the header');
      return new SafetensorsFile(abs, fd, size, parseHeader(abs, json, len, size));
    } catch (e) {
      fs.closeSync(fd);
      throw e;
    }
  }

  static openSync(file: string): SafetensorsFile {
    checkLittleEndian();
    const abs = checkPath(file);
    let fd: number;
    try {
      fd = fs.openSync(abs, 'r');
    } catch (e) {
      throw openError(abs, e);
    }
    try {
      const st = fs.fstatSync(fd);
      checkRegular(abs, st);
      const size = st.size;
      const head = Buffer.alloc(8);
      const n = size >= 8 ? fs.readSync(fd, head, 0, 8, 0) : 0;
      const len = headerLength(abs, head, n, size);
      const json = Buffer.alloc(len);
      if (fs.readSync(fd, json, 0, len, 8) !== len) throw headerError(abs, 'the file ended inside the header');
      return new SafetensorsFile(abs, fd, size, parseHeader(abs, json, len, size));
    } catch (e) {
      fs.closeSync(fd);
      throw e;
    }
  }

  /** Tensor names in header order. */
  names(): string[] {
    return [...this.#tensors.keys()];
  }

  has(name: string): boolean {
    return this.#tensors.has(name);
  }

  /** The header entry of a tensor; MoeError ERR_TENSOR_MISSING when the file has none. */
  info(name: string): TensorInfo {
    const t = this.#tensors.get(name);
    if (!t) throw new MoeError(`${this.path}: no tensor '${name}' in this file`, 'ERR_TENSOR_MISSING');
    return t;
  }

  /** Every header entry, in header order. */
  infos(): TensorInfo[] {
    return [...this.#tensors.values()];
  }

  /** Loads one tensor off the event loop. */
  async read(name: string, options?: ReadOptions): Promise<Tensor> {
    const dtype = checkReadOptions(options);
    const info = this.info(name);
    const { bytes, finish } = allocate(info);
    const fd = this.#open();
    this.#pending++;
    try {
      for (let done = 0; done < info.byteLength; ) {
        const n = (await readAsync(fd, bytes, done, Math.min(MAX_READ, info.byteLength - done), info.offset + done)).bytesRead;
        if (n === 0) throw shortRead(info, done);
        done += n;
      }
    } finally {
      if (--this.#pending === 0 && this.#closing) this.#closeNow();
    }
    return finish(dtype);
  }

  readSync(name: string, options?: ReadOptions): Tensor {
    const dtype = checkReadOptions(options);
    const info = this.info(name);
    const { bytes, finish } = allocate(info);
    const fd = this.#open();
    for (let done = 0; done < info.byteLength; ) {
      const n = fs.readSync(fd, bytes, done, Math.min(MAX_READ, info.byteLength - done), info.offset + done);
      if (n === 0) throw shortRead(info, done);
      done += n;
    }
    return finish(dtype);
  }

  get closed(): boolean {
    return this.#closing;
  }

  /**
   * Closes the file; later reads throw ERR_DISPOSED. Reads already running finish first (the
   * descriptor is closed after the last one). Closing twice is fine.
   */
  close(): void {
    if (this.#closing) return;
    this.#closing = true;
    if (this.#pending === 0) this.#closeNow();
  }

  /** `using f = SafetensorsFile.openSync(path)`: close() at the end of the scope. */
  [Symbol.dispose](): void {
    this.close();
  }

  /** `await using f = await SafetensorsFile.open(path)`: close(), resolved once reads in flight finish. */
  [Symbol.asyncDispose](): Promise<void> {
    this.close();
    return this.#fd === null ? Promise.resolve() : new Promise((resolve) => this.#onClosed.push(resolve));
  }

  #closeNow(): void {
    if (this.#fd === null) return;
    closer.unregister(this);
    fs.closeSync(this.#fd);
    this.#fd = null;
    for (const resolve of this.#onClosed.splice(0)) resolve();
  }

  #open(): number {
    if (this.#closing || this.#fd === null) throw new MoeError(`${this.path}: the file is closed`, 'ERR_DISPOSED');
    return this.#fd;
  }
}

export function checkPath(file: unknown): string {
  if (typeof file !== 'string' || file === '') throw typeError(`path must be a non-empty string, got ${describe(file)}`);
  return path.resolve(file);
}

export function openError(file: string, e: unknown): MoeError {
  return fileError(file, 'cannot open', e);
}

/** A directory (or a device, a FIFO) opens for reading on Linux and fails at the first read. */
export function checkRegular(file: string, st: { isDirectory(): boolean; isFile(): boolean }): void {
  if (st.isDirectory()) throw new MoeError(`${file}: cannot open: it is a directory, not a safetensors file`, 'ERR_FILE_READ');
  if (!st.isFile()) throw new MoeError(`${file}: cannot open: it is not a regular file`, 'ERR_FILE_READ');
}

function headerLength(file: string, head: Buffer, got: number, size: number): number {
  if (got < 8) throw headerError(file, `the file has ${size} bytes, fewer than the 8-byte header length`);
  const len = head.readBigUInt64LE(0);
  if (len > BigInt(size - 8)) throw headerError(file, `the header length ${len} is past the end of the file (${size} bytes)`);
  if (len > BigInt(MAX_HEADER)) throw headerError(file, `the header length ${len} is over the ${MAX_HEADER}-byte limit`);
  if (len < 2n) throw headerError(file, `the header length ${len} is too short for a JSON object`);
  return Number(len);
}

/** The file names of a Hugging Face checkpoint: one file, or shards listed by an index. */
export const SINGLE_FILE = 'model.safetensors';
export const INDEX_FILE = 'model.safetensors.index.json';
