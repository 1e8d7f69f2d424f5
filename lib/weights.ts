/**
 * Mixtral weights from a Hugging Face checkpoint: the tensor names of both expert layouts mapped to
 * a typed per-layer structure, every shape checked against the config from the headers before any
 * data is read, and loading one layer at a time, so a caller can build its native layer and drop
 * the arrays before the next layer is read.
 *
 * Expert layouts:
 *   'per-expert' (checkpoints on the Hub): model.layers.N.block_sparse_moe.gate.weight [E,d],
 *       model.layers.N.block_sparse_moe.experts.M.{w1,w3}.weight [f,d], ...w2.weight [d,f]
 *   'packed' (transformers 5 save_pretrained): model.layers.N.mlp.gate.weight [E,d],
 *       model.layers.N.mlp.experts.gate_up_proj [E,2f,d] (per expert: the f rows of w1, the gate
 *       projection, then the f rows of w3, the up projection), model.layers.N.mlp.experts.down_proj [E,d,f]
 * Both load as E tensors per projection (views into the packed tensor, no copy), the form that
 * `MoeLayer.create({ gate, w1, w3, w2 })` takes.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseMixtralConfig, type MixtralConfig } from './config.js';
import { describe, MoeError, typeError } from './errors.js';
import { checkOptions } from './options.js';
import { Checkpoint, type TensorInfo } from './safetensors.js';
import { cast, FLOAT_TYPES, type FloatType, type Tensor } from './tensor.js';

export type ExpertLayout = 'per-expert' | 'packed';

export interface AttentionWeights {
  /** [heads·headDim, d] */
  qProj: Tensor;
  /** [kvHeads·headDim, d] */
  kProj: Tensor;
  /** [kvHeads·headDim, d] */
  vProj: Tensor;
  /** [d, heads·headDim] */
  oProj: Tensor;
}

/** One sparse MoE block in the form `MoeLayer.create` takes. */
export interface MoeBlockWeights {
  /** Router [E,d]. */
  gate: Tensor;
  /** E gate projections [f,d]. */
  w1: Tensor[];
  /** E up projections [f,d]. */
  w3: Tensor[];
  /** E down projections [d,f]. */
  w2: Tensor[];
}

export interface MixtralLayerWeights {
  index: number;
  /** [d] RMSNorm before attention. */
  inputLayernorm: Tensor;
  /** [d] RMSNorm before the MoE block. */
  postAttentionLayernorm: Tensor;
  attention: AttentionWeights;
  moe: MoeBlockWeights;
}

/** The weights outside the decoder layers. */
export interface MixtralGlobalWeights {
  /** [V,d] */
  embedTokens: Tensor;
  /** [d] final RMSNorm. */
  norm: Tensor;
  /** [V,d]; the embeddings tensor itself when the config ties them. */
  lmHead: Tensor;
}

export interface LoadProgress {
  /** Bytes read so far (as stored in the files) and the bytes of every tensor the model needs. */
  bytesLoaded: number;
  bytesTotal: number;
  tensorsLoaded: number;
  tensorsTotal: number;
  /** The tensor just read. */
  name: string;
}

export interface MixtralOpenOptions {
  /** The config; default: config.json next to the checkpoint. */
  config?: MixtralConfig;
  /** Convert float weights to this type as they load. Default: as stored. */
  dtype?: FloatType;
  /** Called after each tensor is read, with counts over the whole model. */
  onProgress?: (p: LoadProgress) => void;
}

/** A tensor the model needs: its checkpoint name and the shape the config implies. */
export interface ExpectedTensor {
  name: string;
  shape: readonly number[];
}

const P = (i: number) => `model.layers.${i}`;

/** The checkpoint names and shapes of layer i's tensors, in load order. */
function layerSpecs(c: MixtralConfig, layout: ExpertLayout, i: number): ExpectedTensor[] {
  const d = c.hiddenSize;
  const q = c.numAttentionHeads * c.headDim;
  const kv = c.numKeyValueHeads * c.headDim;
  const f = c.intermediateSize;
  const E = c.numExperts;
  const out: ExpectedTensor[] = [
    { name: `${P(i)}.input_layernorm.weight`, shape: [d] },
    { name: `${P(i)}.self_attn.q_proj.weight`, shape: [q, d] },
    { name: `${P(i)}.self_attn.k_proj.weight`, shape: [kv, d] },
    { name: `${P(i)}.self_attn.v_proj.weight`, shape: [kv, d] },
    { name: `${P(i)}.self_attn.o_proj.weight`, shape: [d, q] },
    { name: `${P(i)}.post_attention_layernorm.weight`, shape: [d] },
  ];
  if (layout === 'packed') {
    out.push({ name: `${P(i)}.mlp.gate.weight`, shape: [E, d] });
    out.push({ name: `${P(i)}.mlp.experts.gate_up_proj`, shape: [E, 2 * f, d] });
    out.push({ name: `${P(i)}.mlp.experts.down_proj`, shape: [E, d, f] });
  } else {
    out.push({ name: `${P(i)}.block_sparse_moe.gate.weight`, shape: [E, d] });
    for (let e = 0; e < E; e++)
      for (const [w, shape] of [['w1', [f, d]], ['w3', [f, d]], ['w2', [d, f]]] as const)
        out.push({ name: `${P(i)}.block_sparse_moe.experts.${e}.${w}.weight`, shape });
  }
  return out;
}

function globalSpecs(c: MixtralConfig): ExpectedTensor[] {
  const out: ExpectedTensor[] = [
    { name: 'model.embed_tokens.weight', shape: [c.vocabSize, c.hiddenSize] },
    { name: 'model.norm.weight', shape: [c.hiddenSize] },
  ];
  if (!c.tieWordEmbeddings) out.push({ name: 'lm_head.weight', shape: [c.vocabSize, c.hiddenSize] });
  return out;
}

/** Which expert layout a checkpoint uses, judged by its first layer. */
export function detectExpertLayout(names: { has(name: string): boolean }): ExpertLayout {
  return names.has(`${P(0)}.mlp.experts.gate_up_proj`) || names.has(`${P(0)}.mlp.gate.weight`) ? 'packed' : 'per-expert';
}

/** Every tensor a Mixtral model of this config needs in this layout, globals first, then by layer. */
export function mixtralTensorSpecs(config: MixtralConfig, layout: ExpertLayout): ExpectedTensor[] {
  const out = globalSpecs(config);
  for (let i = 0; i < config.numHiddenLayers; i++) out.push(...layerSpecs(config, layout, i));
  return out;
}

const sameShape = (a: readonly number[], b: readonly number[]) => a.length === b.length && a.every((x, i) => x === b[i]);

/**
 * Checks one expected tensor against a checkpoint's header: present, float, the expected shape.
 * Throws MoeError ERR_TENSOR_MISSING / ERR_TENSOR_SHAPE / ERR_TENSOR_DTYPE naming the tensor.
 */
function checkExpected(ckpt: Checkpoint, spec: ExpectedTensor, layout: ExpertLayout): TensorInfo {
  if (!ckpt.has(spec.name))
    throw new MoeError(
      `checkpoint ${ckpt.dir}: tensor '${spec.name}' is missing (expected shape [${spec.shape.join(',')}], ${layout} expert layout)`,
      'ERR_TENSOR_MISSING',
    );
  const info = ckpt.info(spec.name);
  if (!sameShape(info.shape, spec.shape))
    throw new MoeError(
      `${info.file}: tensor '${spec.name}' has shape [${info.shape.join(',')}], expected [${spec.shape.join(',')}] from the config`,
      'ERR_TENSOR_SHAPE',
    );
  if (info.type === null || info.type === 'int32')
    throw new MoeError(`${info.file}: tensor '${spec.name}' has dtype ${info.dtype}, expected F32, F16 or BF16`, 'ERR_TENSOR_DTYPE');
  return info;
}

/** config.json next to a checkpoint (the directory, or the directory of a file). */
function configNextTo(ckpt: Checkpoint): MixtralConfig {
  const p = path.join(ckpt.dir, 'config.json');
  if (!fs.existsSync(p)) throw new MoeError(`checkpoint ${ckpt.dir}: no config.json; pass options.config`, 'ERR_CONFIG');
  return parseMixtralConfig(p);
}

const view = (t: Tensor, start: number, dims: number[]): Tensor => {
  const n = dims.reduce((a, b) => a * b, 1);
  return { type: t.type, data: t.data.subarray(start, start + n), dims } as Tensor;
};

/**
 * A Mixtral checkpoint opened for loading. `open` reads config.json (unless given) and every
 * header, and checks that each tensor the config implies is present with its shape; nothing is
 * read until `loadGlobals` / `loadLayer` / `layers()`.
 *
 *   const m = await MixtralCheckpoint.open(dir, { dtype: 'bfloat16', onProgress });
 *   const globals = await m.loadGlobals();
 *   for await (const layer of m.layers()) blocks.push(await MoeLayer.create(layer.moe));
 *   m.close();
 */
export class MixtralCheckpoint {
  readonly config: MixtralConfig;
  readonly checkpoint: Checkpoint;
  readonly layout: ExpertLayout;
  /** Bytes (as stored) of every tensor the model needs. */
  readonly bytesTotal: number;
  readonly tensorsTotal: number;
  readonly #dtype: FloatType | undefined;
  readonly #onProgress: ((p: LoadProgress) => void) | undefined;
  #bytesLoaded = 0;
  #tensorsLoaded = 0;

  private constructor(checkpoint: Checkpoint, options: MixtralOpenOptions | undefined) {
    const o = checkOptions(options);
    if (o.dtype !== undefined && !(FLOAT_TYPES as readonly unknown[]).includes(o.dtype))
      throw typeError(`options.dtype must be one of ${FLOAT_TYPES.map((t) => `'${t}'`).join(', ')}, got ${describe(o.dtype)}`);
    if (o.onProgress !== undefined && typeof o.onProgress !== 'function') throw typeError(`options.onProgress must be a function, got ${describe(o.onProgress)}`);
    this.checkpoint = checkpoint;
    if (o.config !== undefined && (o.config as MixtralConfig | null)?.modelType !== 'mixtral')
      throw typeError(`options.config must be a MixtralConfig (parseMixtralConfig), got ${describe((o.config as MixtralConfig | null)?.modelType ?? o.config)}`);
    this.config = (o.config as MixtralConfig | undefined) ?? configNextTo(checkpoint);
    this.layout = detectExpertLayout(checkpoint);
    this.#dtype = o.dtype as FloatType | undefined;
    this.#onProgress = o.onProgress as MixtralOpenOptions['onProgress'];
    const specs = mixtralTensorSpecs(this.config, this.layout);
    this.bytesTotal = specs.reduce((n, s) => n + checkExpected(checkpoint, s, this.layout).byteLength, 0);
    this.tensorsTotal = specs.length;
  }

  /**
   * Opens a checkpoint directory, index file or single .safetensors file (or takes an open
   * Checkpoint, which `close()` then closes) and validates it.
   */
  static async open(source: string | Checkpoint, options?: MixtralOpenOptions): Promise<MixtralCheckpoint> {
    const ckpt = source instanceof Checkpoint ? source : await Checkpoint.open(source);
    try {
      return new MixtralCheckpoint(ckpt, options);
    } catch (e) {
      ckpt.close();
      throw e;
    }
  }

  static openSync(source: string | Checkpoint, options?: MixtralOpenOptions): MixtralCheckpoint {
    const ckpt = source instanceof Checkpoint ? source : Checkpoint.openSync(source);
    try {
      return new MixtralCheckpoint(ckpt, options);
    } catch (e) {
      ckpt.close();
      throw e;
    }
  }

  get numLayers(): number {
    return this.config.numHiddenLayers;
  }

  /** Names in the checkpoint that this model does not use (e.g. rotary buffers, extra experts). */
  unusedTensors(): string[] {
    const used = new Set(mixtralTensorSpecs(this.config, this.layout).map((s) => s.name));
    return this.checkpoint.names().filter((n) => !used.has(n));
  }

  async loadGlobals(): Promise<MixtralGlobalWeights> {
    const t = await this.#readAll(globalSpecs(this.config));
    return this.#globals(t);
  }

  loadGlobalsSync(): MixtralGlobalWeights {
    return this.#globals(this.#readAllSync(globalSpecs(this.config)));
  }

  /** Loads decoder layer i (0-based). */
  async loadLayer(i: number): Promise<MixtralLayerWeights> {
    const specs = layerSpecs(this.config, this.layout, this.#layerIndex(i));
    return this.#layer(i, await this.#readAll(specs));
  }

  loadLayerSync(i: number): MixtralLayerWeights {
    const specs = layerSpecs(this.config, this.layout, this.#layerIndex(i));
    return this.#layer(i, this.#readAllSync(specs));
  }

  /** The decoder layers in order, each read only when the iteration asks for it. */
  async *layers(): AsyncGenerator<MixtralLayerWeights, void, undefined> {
    for (let i = 0; i < this.config.numHiddenLayers; i++) yield await this.loadLayer(i);
  }

  close(): void {
    this.checkpoint.close();
  }

  #layerIndex(i: unknown): number {
    if (typeof i !== 'number' || !Number.isInteger(i) || i < 0 || i >= this.config.numHiddenLayers)
      throw Object.assign(new RangeError(`layer index must be an integer in [0, ${this.config.numHiddenLayers}), got ${describe(i)}`), { code: 'ERR_OUT_OF_RANGE' });
    return i;
  }

  #progress(name: string, bytes: number): void {
    this.#bytesLoaded += bytes;
    this.#tensorsLoaded++;
    this.#onProgress?.({ bytesLoaded: this.#bytesLoaded, bytesTotal: this.bytesTotal, tensorsLoaded: this.#tensorsLoaded, tensorsTotal: this.tensorsTotal, name });
  }

  async #readAll(specs: ExpectedTensor[]): Promise<Map<string, Tensor>> {
    const out = new Map<string, Tensor>();
    for (const s of specs) {
      out.set(s.name, await this.checkpoint.read(s.name, { dtype: this.#dtype }));
      this.#progress(s.name, this.checkpoint.info(s.name).byteLength);
    }
    return out;
  }

  #readAllSync(specs: ExpectedTensor[]): Map<string, Tensor> {
    const out = new Map<string, Tensor>();
    for (const s of specs) {
      out.set(s.name, this.checkpoint.readSync(s.name, { dtype: this.#dtype }));
      this.#progress(s.name, this.checkpoint.info(s.name).byteLength);
    }
    return out;
  }

  #globals(t: Map<string, Tensor>): MixtralGlobalWeights {
    const embedTokens = t.get('model.embed_tokens.weight')!;
    return { embedTokens, norm: t.get('model.norm.weight')!, lmHead: this.config.tieWordEmbeddings ? embedTokens : t.get('lm_head.weight')! };
  }

  #layer(i: number, t: Map<string, Tensor>): MixtralLayerWeights {
    const g = (s: string) => t.get(`${P(i)}.${s}`)!;
    const { numExperts: E, intermediateSize: f, hiddenSize: d } = this.config;
    let moe: MoeBlockWeights;
    if (this.layout === 'packed') {
      const gateUp = g('mlp.experts.gate_up_proj');
      const down = g('mlp.experts.down_proj');
      const ids = [...Array(E).keys()];
      moe = {
        gate: g('mlp.gate.weight'),
        w1: ids.map((e) => view(gateUp, e * 2 * f * d, [f, d])),
        w3: ids.map((e) => view(gateUp, (e * 2 + 1) * f * d, [f, d])),
        w2: ids.map((e) => view(down, e * d * f, [d, f])),
      };
    } else {
      const x = (e: number, w: string) => g(`block_sparse_moe.experts.${e}.${w}.weight`);
      const ids = [...Array(E).keys()];
      moe = { gate: g('block_sparse_moe.gate.weight'), w1: ids.map((e) => x(e, 'w1')), w3: ids.map((e) => x(e, 'w3')), w2: ids.map((e) => x(e, 'w2')) };
    }
    return {
      index: i,
      inputLayernorm: g('input_layernorm.weight'),
      postAttentionLayernorm: g('post_attention_layernorm.weight'),
      attention: { qProj: g('self_attn.q_proj.weight'), kProj: g('self_attn.k_proj.weight'), vProj: g('self_attn.v_proj.weight'), oProj: g('self_attn.o_proj.weight') },
      moe,
    };
  }
}

/**
 * Converts Mixtral layer weights to a checkpoint's tensor names in the given layout (used to write
 * checkpoints, e.g. in tests): the inverse of loading. Packed layout stacks the experts (copies).
 */
export function mixtralLayerTensors(layer: MixtralLayerWeights, layout: ExpertLayout): Record<string, Tensor> {
  const p = P(layer.index);
  const out: Record<string, Tensor> = {
    [`${p}.input_layernorm.weight`]: layer.inputLayernorm,
    [`${p}.self_attn.q_proj.weight`]: layer.attention.qProj,
    [`${p}.self_attn.k_proj.weight`]: layer.attention.kProj,
    [`${p}.self_attn.v_proj.weight`]: layer.attention.vProj,
    [`${p}.self_attn.o_proj.weight`]: layer.attention.oProj,
    [`${p}.post_attention_layernorm.weight`]: layer.postAttentionLayernorm,
  };
  const { gate, w1, w3, w2 } = layer.moe;
  if (layout === 'packed') {
    out[`${p}.mlp.gate.weight`] = gate;
    out[`${p}.mlp.experts.gate_up_proj`] = stack(w1.flatMap((t, e) => [t, w3[e]]), [w1.length, 2 * w1[0].dims[0], w1[0].dims[1]]);
    out[`${p}.mlp.experts.down_proj`] = stack(w2, [w2.length, ...w2[0].dims]);
  } else {
    out[`${p}.block_sparse_moe.gate.weight`] = gate;
    w1.forEach((_, e) => {
      out[`${p}.block_sparse_moe.experts.${e}.w1.weight`] = w1[e];
      out[`${p}.block_sparse_moe.experts.${e}.w3.weight`] = w3[e];
      out[`${p}.block_sparse_moe.experts.${e}.w2.weight`] = w2[e];
    });
  }
  return out;
}

function stack(parts: Tensor[], dims: number[]): Tensor {
  const type = parts[0].type;
  const all = parts.map((t) => (t.type === type ? t : cast(t, type as FloatType)));
  const n = all.reduce((a, t) => a + t.data.length, 0);
  const data = new (all[0].data.constructor as new (n: number) => Tensor['data'])(n);
  let o = 0;
  for (const t of all) {
    (data as Float32Array).set(t.data as Float32Array, o);
    o += t.data.length;
  }
  return { type, data, dims } as Tensor;
}
