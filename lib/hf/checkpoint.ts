/**
 * Hugging Face checkpoints: a directory with `model.safetensors`, or with
 * `model.safetensors.index.json` whose `weight_map` names the shard of each tensor.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, MoeError } from '../core/errors.js';
import { type Tensor } from '../core/tensor.js';
import { checkPath, INDEX_FILE, openError, SafetensorsFile, SINGLE_FILE, type TensorInfo, type ReadOptions } from './safetensors.js';

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
