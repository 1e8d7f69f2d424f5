/**
 * Safetensors files and Hugging Face checkpoints. A file is an 8-byte little-endian header length
 * N, N bytes of JSON ({name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__"?: {...}})
 * and the byte buffer the offsets point into. The reader validates the whole header when it opens
 * a file, then reads one tensor at a time with positioned reads on a file descriptor: a file of
 * any size (offsets are exact up to 2^53) is never read whole.
 *
 * A checkpoint is a directory with `model.safetensors`, or with `model.safetensors.index.json`
 * whose `weight_map` names the shard of each tensor.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { describe, fileError, MoeError, typeError } from '../core/errors.js';
import { checkOptions } from '../core/options.js';
import { cast, checkTensor, FLOAT_TYPES, type DType, type FloatType, type Tensor } from '../core/tensor.js';

/** Safetensors dtype names this reader knows. Only F32, F16, BF16 and I32 load as tensors. */
export type SafetensorsDType =
  | 'F64' | 'F32' | 'F16' | 'BF16' | 'F8_E4M3' | 'F8_E5M2'
  | 'I64' | 'I32' | 'I16' | 'I8' | 'U64' | 'U32' | 'U16' | 'U8' | 'BOOL';

const ELEM_SIZE: Record<SafetensorsDType, number> = {
  F64: 8, F32: 4, F16: 2, BF16: 2, F8_E4M3: 1, F8_E5M2: 1,
  I64: 8, I32: 4, I16: 2, I8: 1, U64: 8, U32: 4, U16: 2, U8: 1, BOOL: 1,
};
const TO_LIBRARY: Partial<Record<SafetensorsDType, DType>> = { F32: 'float32', F16: 'float16', BF16: 'bfloat16', I32: 'int32' };
const FROM_LIBRARY: Record<DType, SafetensorsDType> = { float32: 'F32', float16: 'F16', bfloat16: 'BF16', int32: 'I32' };

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
const MAX_HEADER = 100 * 1024 * 1024;
/** fs.read moves at most 2 GiB - 1 per call. */
const MAX_READ = 0x7fff_f000;

const headerError = (file: string, msg: string) => new MoeError(`${file}: invalid safetensors header: ${msg}`, 'ERR_SAFETENSORS_HEADER');

function checkLittleEndian(): void {
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

function checkReadOptions(options: ReadOptions | undefined): FloatType | undefined {
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

function checkPath(file: unknown): string {
  if (typeof file !== 'string' || file === '') throw typeError(`path must be a non-empty string, got ${describe(file)}`);
  return path.resolve(file);
}

function openError(file: string, e: unknown): MoeError {
  return fileError(file, 'cannot open', e);
}

/** A directory (or a device, a FIFO) opens for reading on Linux and fails at the first read. */
function checkRegular(file: string, st: fs.Stats): void {
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

// ---- writing ------------------------------------------------------------------------------------

/** The bytes of a safetensors file's header for these tensors (offsets in the given order). */
function buildHeader(tensors: Record<string, Tensor>, metadata: Record<string, string> | undefined, file: string): { header: Buffer; entries: [string, Tensor][] } {
  if (tensors === null || typeof tensors !== 'object') throw typeError(`tensors must be an object of name -> tensor, got ${describe(tensors)}`);
  const head: Record<string, unknown> = Object.create(null); // a tensor may be named __proto__
  if (metadata !== undefined) {
    for (const [k, v] of Object.entries(checkOptions(metadata, 'metadata')))
      if (typeof v !== 'string') throw typeError(`metadata.${k} must be a string, got ${describe(v)}`);
    head.__metadata__ = metadata;
  }
  const entries = Object.entries(tensors);
  let offset = 0;
  for (const [name, t] of entries) {
    if (name === '__metadata__') throw typeError(`${file}: '__metadata__' is reserved and cannot name a tensor`);
    checkTensor(t, `tensors['${name}']`);
    const bytes = t.data.byteLength;
    head[name] = { dtype: FROM_LIBRARY[t.type], shape: [...t.dims], data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  let json = JSON.stringify(head);
  json += ' '.repeat((8 - (Buffer.byteLength(json) % 8)) % 8); // the format pads the header to 8 bytes
  const body = Buffer.from(json, 'utf8');
  const header = Buffer.alloc(8 + body.length);
  header.writeBigUInt64LE(BigInt(body.length), 0);
  body.copy(header, 8);
  return { header, entries };
}

const bytesOf = (t: Tensor) => new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);

/**
 * Writes tensors (in the object's key order) and optional string metadata to a safetensors file.
 */
export async function writeSafetensors(file: string, tensors: Record<string, Tensor>, metadata?: Record<string, string>): Promise<void> {
  checkLittleEndian();
  const abs = checkPath(file);
  const { header, entries } = buildHeader(tensors, metadata, abs);
  const fh = await fs.promises.open(abs, 'w');
  try {
    await fh.write(header);
    for (const [, t] of entries) {
      const b = bytesOf(t);
      for (let done = 0; done < b.length; ) done += (await fh.write(b, done, Math.min(MAX_READ, b.length - done))).bytesWritten;
    }
  } finally {
    await fh.close();
  }
}

export function writeSafetensorsSync(file: string, tensors: Record<string, Tensor>, metadata?: Record<string, string>): void {
  checkLittleEndian();
  const abs = checkPath(file);
  const { header, entries } = buildHeader(tensors, metadata, abs);
  const fd = fs.openSync(abs, 'w');
  try {
    fs.writeSync(fd, header);
    for (const [, t] of entries) {
      const b = bytesOf(t);
      for (let done = 0; done < b.length; ) done += fs.writeSync(fd, b, done, Math.min(MAX_READ, b.length - done));
    }
  } finally {
    fs.closeSync(fd);
  }
}

export interface ShardOptions {
  /** Start a new shard when the next tensor would take the current one past this. Default 5 GB. */
  maxShardBytes?: number;
  /** Metadata written into every shard's header. */
  metadata?: Record<string, string>;
}

/**
 * Writes a sharded checkpoint into `dir` as Hugging Face does: `model-00001-of-0000N.safetensors`
 * ... and `model.safetensors.index.json` ({metadata: {total_size}, weight_map}). Returns the shard
 * file names.
 */
export async function writeShardedSafetensors(dir: string, tensors: Record<string, Tensor>, options?: ShardOptions): Promise<string[]> {
  const o = checkOptions(options);
  const max = o.maxShardBytes ?? 5e9;
  if (typeof max !== 'number' || !(max > 0)) throw typeError(`options.maxShardBytes must be a positive number, got ${describe(max)}`);
  if (tensors === null || typeof tensors !== 'object') throw typeError(`tensors must be an object of name -> tensor, got ${describe(tensors)}`);
  const shards: Record<string, Tensor>[] = [];
  let size = Infinity;
  let total = 0;
  for (const [name, t] of Object.entries(tensors)) {
    const bytes = checkTensor(t, `tensors['${name}']`).data.byteLength;
    if (size + bytes > max || shards.length === 0) {
      shards.push({});
      size = 0;
    }
    shards[shards.length - 1][name] = t;
    size += bytes;
    total += bytes;
  }
  await fs.promises.mkdir(dir, { recursive: true });
  const pad = (i: number) => String(i).padStart(5, '0');
  const names = shards.map((_, i) => `model-${pad(i + 1)}-of-${pad(shards.length)}.safetensors`);
  const weightMap: Record<string, string> = Object.create(null);
  for (let i = 0; i < shards.length; i++) {
    await writeSafetensors(path.join(dir, names[i]), shards[i], o.metadata as Record<string, string> | undefined);
    for (const name of Object.keys(shards[i])) weightMap[name] = names[i];
  }
  const index = { metadata: { total_size: total }, weight_map: weightMap };
  await fs.promises.writeFile(path.join(dir, INDEX_FILE), JSON.stringify(index, null, 2) + '\n');
  return names;
}

// ---- checkpoints --------------------------------------------------------------------------------

export const SINGLE_FILE = 'model.safetensors';
export const INDEX_FILE = 'model.safetensors.index.json';

/**
 * A Hugging Face checkpoint: one safetensors file, or the shards of an index. Opening reads every
 * header (never the data) and checks that each tensor of the index is in its shard.
 */
export class Checkpoint {
  /** The directory of the checkpoint (where config.json would be). */
  readonly dir: string;
  /** The safetensors files, absolute paths, in shard order. */
  readonly files: readonly string[];
  readonly #byName: Map<string, { info: TensorInfo; file: SafetensorsFile }>;
  readonly #files: SafetensorsFile[];

  private constructor(dir: string, files: SafetensorsFile[], byName: Map<string, { info: TensorInfo; file: SafetensorsFile }>) {
    this.dir = dir;
    this.#files = files;
    this.files = files.map((f) => f.path);
    this.#byName = byName;
  }

  /**
   * Opens a checkpoint from a directory (`model.safetensors.index.json` wins over
   * `model.safetensors`), an index file, or one `.safetensors` file.
   */
  static async open(source: string): Promise<Checkpoint> {
    const { dir, index, single } = locate(source);
    if (single !== undefined) {
      const f = await SafetensorsFile.open(single);
      return new Checkpoint(dir, [f], byNameOf([f]));
    }
    const { weightMap, shardFiles } = readIndex(index!, dir);
    const files: SafetensorsFile[] = [];
    try {
      for (const s of shardFiles) files.push(await SafetensorsFile.open(s));
      return new Checkpoint(dir, files, byNameOfIndex(index!, weightMap, files));
    } catch (e) {
      files.forEach((f) => f.close());
      throw e;
    }
  }

  static openSync(source: string): Checkpoint {
    const { dir, index, single } = locate(source);
    if (single !== undefined) {
      const f = SafetensorsFile.openSync(single);
      return new Checkpoint(dir, [f], byNameOf([f]));
    }
    const { weightMap, shardFiles } = readIndex(index!, dir);
    const files: SafetensorsFile[] = [];
    try {
      for (const s of shardFiles) files.push(SafetensorsFile.openSync(s));
      return new Checkpoint(dir, files, byNameOfIndex(index!, weightMap, files));
    } catch (e) {
      files.forEach((f) => f.close());
      throw e;
    }
  }

  /** Tensor names, in file then header order. */
  names(): string[] {
    return [...this.#byName.keys()];
  }

  has(name: string): boolean {
    return this.#byName.has(name);
  }

  /** The header entry of a tensor (with its file); MoeError ERR_TENSOR_MISSING when absent. */
  info(name: string): TensorInfo {
    return this.#entry(name).info;
  }

  infos(): TensorInfo[] {
    return [...this.#byName.values()].map((e) => e.info);
  }

  /** Bytes of tensor data over all files. */
  get totalBytes(): number {
    let n = 0;
    for (const e of this.#byName.values()) n += e.info.byteLength;
    return n;
  }

  read(name: string, options?: ReadOptions): Promise<Tensor> {
    try {
      const e = this.#entry(name);
      return e.file.read(name, options);
    } catch (err) {
      return Promise.reject(err);
    }
  }

  readSync(name: string, options?: ReadOptions): Tensor {
    return this.#entry(name).file.readSync(name, options);
  }

  /** Closes every file. */
  close(): void {
    this.#files.forEach((f) => f.close());
  }

  /** `using ckpt = Checkpoint.openSync(dir)`: close() at the end of the scope. */
  [Symbol.dispose](): void {
    this.close();
  }

  /** `await using ckpt = await Checkpoint.open(dir)`: close(), resolved once reads in flight finish. */
  async [Symbol.asyncDispose](): Promise<void> {
    await Promise.all(this.#files.map((f) => f[Symbol.asyncDispose]()));
  }

  #entry(name: string) {
    const e = this.#byName.get(name);
    if (!e) throw new MoeError(`checkpoint ${this.dir}: no tensor '${name}' (in ${this.files.map((f) => path.basename(f)).join(', ')})`, 'ERR_TENSOR_MISSING');
    return e;
  }
}

function locate(source: unknown): { dir: string; index?: string; single?: string } {
  const abs = checkPath(source);
  let st: fs.Stats;
  try {
    st = fs.statSync(abs);
  } catch (e) {
    throw openError(abs, e);
  }
  if (st.isDirectory()) {
    if (fs.existsSync(path.join(abs, INDEX_FILE))) return { dir: abs, index: path.join(abs, INDEX_FILE) };
    if (fs.existsSync(path.join(abs, SINGLE_FILE))) return { dir: abs, single: path.join(abs, SINGLE_FILE) };
    throw new MoeError(`${abs}: no ${INDEX_FILE} or ${SINGLE_FILE} in this directory`, 'ERR_FILE_NOT_FOUND');
  }
  if (abs.endsWith('.json')) return { dir: path.dirname(abs), index: abs };
  return { dir: path.dirname(abs), single: abs };
}

function readIndex(index: string, dir: string): { weightMap: Record<string, string>; shardFiles: string[] } {
  let text: string;
  try {
    text = fs.readFileSync(index, 'utf8');
  } catch (e) {
    throw openError(index, e);
  }
  const bad = (msg: string) => new MoeError(`${index}: invalid checkpoint index: ${msg}`, 'ERR_SAFETENSORS_INDEX');
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (e) {
    throw bad(`the JSON does not parse (${(e as Error).message})`);
  }
  const wm = (parsed as Record<string, unknown> | null)?.weight_map;
  if (wm === null || typeof wm !== 'object' || Array.isArray(wm)) throw bad(`weight_map must be an object of tensor name -> file, got ${describe(wm)}`);
  // a Set, in first-seen order: an index names each shard once per tensor (thousands of times)
  const shardFiles = new Set<string>();
  for (const [name, f] of Object.entries(wm as Record<string, unknown>)) {
    if (typeof f !== 'string' || f === '') throw bad(`weight_map['${name}'] must be a file name, got ${describe(f)}`);
    const p = path.resolve(dir, f);
    const rel = path.relative(dir, p);
    if (rel === '..' || rel.startsWith(`..${path.sep}`) || path.isAbsolute(f)) throw bad(`weight_map['${name}'] = ${describe(f)} is outside the checkpoint directory`);
    shardFiles.add(p);
  }
  if (shardFiles.size === 0) throw bad('weight_map is empty');
  return { weightMap: wm as Record<string, string>, shardFiles: [...shardFiles] };
}

function byNameOf(files: SafetensorsFile[]) {
  const m = new Map<string, { info: TensorInfo; file: SafetensorsFile }>();
  for (const file of files) for (const info of file.infos()) m.set(info.name, { info, file });
  return m;
}

function byNameOfIndex(index: string, weightMap: Record<string, string>, files: SafetensorsFile[]) {
  const byPath = new Map(files.map((f) => [f.path, f]));
  const m = new Map<string, { info: TensorInfo; file: SafetensorsFile }>();
  for (const [name, f] of Object.entries(weightMap)) {
    const file = byPath.get(path.resolve(path.dirname(index), f))!;
    if (!file.has(name))
      throw new MoeError(`${index}: weight_map puts tensor '${name}' in ${f}, but that file has no such tensor`, 'ERR_TENSOR_MISSING');
    m.set(name, { info: file.info(name), file });
  }
  return m;
}
