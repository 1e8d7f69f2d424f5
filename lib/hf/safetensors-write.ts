/** Writing safetensors files (and sharded checkpoints with their index) the Hugging Face way. */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, typeError } from '../core/errors.js';
import { checkOptions } from '../core/options.js';
import { checkTensor, type Tensor } from '../core/tensor.js';
import { checkLittleEndian, checkPath, FROM_LIBRARY, INDEX_FILE, MAX_READ } from './safetensors.js';


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
