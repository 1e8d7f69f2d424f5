/**
 * Decoder-model weights from a Hugging Face checkpoint (Mixtral, Qwen2-MoE, DeepSeek-MoE): the
 * tensor names of each family mapped to a typed per-layer structure, every shape checked against
 * the config from the headers before any data is read, and loading one layer at a time, so a caller
 * can build its native layer and drop the arrays before the next layer is read.
 *
 * Per layer (prefix model.layers.N): input_layernorm, self_attn.{q,k,v,o}_proj, post_attention_layernorm,
 * then the FFN the config's `layerKinds[N]` says:
 *   'dense' (Qwen2-MoE, DeepSeek-MoE): mlp.{gate,up,down}_proj.weight [f,d], [f,d], [d,f] (f = intermediate_size)
 *   'moe', expert layouts:
 *     'per-expert' (checkpoints on the Hub): Mixtral block_sparse_moe.gate.weight [E,d] and
 *         block_sparse_moe.experts.M.{w1,w3}.weight [f,d], ...w2.weight [d,f]; Qwen2-MoE and DeepSeek-MoE
 *         mlp.gate.weight [E,d] and mlp.experts.M.{gate_proj,up_proj}.weight [f,d], ...down_proj.weight [d,f]
 *     'packed' (transformers 5 save_pretrained): mlp.gate.weight [E,d], mlp.experts.gate_up_proj [E,2f,d]
 *         (per expert: the f rows of w1, the gate projection, then the f rows of w3, the up
 *         projection), mlp.experts.down_proj [E,d,f]
 *   plus, when the config declares shared experts (f_s = their width):
 *     Qwen2-MoE mlp.shared_expert.{gate,up,down}_proj.weight and the sigmoid gate mlp.shared_expert_gate.weight [1,d]
 *     DeepSeek-MoE mlp.shared_experts.{gate,up,down}_proj.weight (n_shared_experts experts stacked: f_s = n·moe_intermediate_size)
 * Experts load as E tensors per projection (views into a packed tensor, no copy), the form that
 * `MoeLayer.create({ gate, w1, w3, w2 }, { sharedExperts })` takes.
 *
 * Attention biases: `self_attn.{q,k,v}_proj.bias` when the config has them (Qwen2-MoE always,
 * DeepSeek-MoE with attention_bias, which also biases o_proj); a bias the config does not declare
 * is refused with ERR_UNSUPPORTED naming the tensor.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseMixtralConfig, parseMoeConfig, type MixtralConfig, type ModelType, type MoeModelConfig } from './config.js';
import { describe, MoeError, typeError } from '../core/errors.js';
import type { DenseFfnWeights, SharedExpertsWeights } from '../moe/layers.js';
import type { WeightTensor } from '../moe/experts.js';
import { floatWeight } from '../core/quant.js';
import { checkOptions } from '../core/options.js';
import { Checkpoint } from './checkpoint.js';
import { type TensorInfo } from './safetensors.js';
import { cast, FLOAT_TYPES, type FloatType, type Tensor } from '../core/tensor.js';

export type ExpertLayout = 'per-expert' | 'packed';

export interface AttentionWeights {
  /** [heads·headDim, d]; the projections may be quantised (a GGUF file's blocks, or `quantize()`'s). */
  qProj: WeightTensor;
  /** [kvHeads·headDim, d] */
  kProj: WeightTensor;
  /** [kvHeads·headDim, d] */
  vProj: WeightTensor;
  /** [d, heads·headDim] */
  oProj: WeightTensor;
  /** Biases [heads·headDim], [kvHeads·headDim] ×2, [d]: when the config declares them. */
  qBias?: Tensor;
  kBias?: Tensor;
  vBias?: Tensor;
  oBias?: Tensor;
}

/** One sparse MoE block in the form `MoeLayer.create` takes. */
export interface MoeBlockWeights {
  /** Router [E,d]. */
  gate: Tensor;
  /** E gate projections [f,d] (float or quantised). */
  w1: WeightTensor[];
  /** E up projections [f,d]. */
  w3: WeightTensor[];
  /** E down projections [d,f]. */
  w2: WeightTensor[];
  /**
   * Shared experts applied to every token (Qwen2-MoE: with the sigmoid `gate` [1,d]; DeepSeek-MoE:
   * ungated), present when the config declares them (`sharedExpertIntermediateSize` > 0).
   */
  sharedExperts?: SharedExpertsWeights;
}

/**
 * One decoder layer: attention, the two norms, and the FFN of the layer's kind
 * (`config.layerKinds[index]`): `moe` for an MoE layer, `mlp` for a dense one.
 */
export interface DecoderLayerWeights {
  index: number;
  /** [d] RMSNorm before attention. */
  inputLayernorm: Tensor;
  /** [d] RMSNorm before the FFN. */
  postAttentionLayernorm: Tensor;
  attention: AttentionWeights;
  /** The MoE block of an MoE layer; absent in a dense layer. */
  moe?: MoeBlockWeights;
  /** The dense SwiGLU FFN of a dense layer (w1 gate_proj, w3 up_proj, w2 down_proj); absent in an MoE layer. */
  mlp?: DenseFfnWeights;
}

/** A Mixtral layer: always MoE. */
export interface MixtralLayerWeights extends DecoderLayerWeights {
  moe: MoeBlockWeights;
}

/** The weights outside the decoder layers. */
export interface ModelGlobalWeights {
  /**
   * [V,d]. Float, or quantised blocks (a GGUF file's `token_embd`): on the host the embedding op
   * reads the rows it needs where they lie and dequantises them; on a device it is dequantised once.
   */
  embedTokens: WeightTensor;
  /** [d] final RMSNorm. */
  norm: Tensor;
  /**
   * [V,d]; the embeddings tensor itself when the config ties them. Float, or quantised blocks (a
   * GGUF file's `output.weight`), which the LM head's Linear runs as they are.
   */
  lmHead: WeightTensor;
}

/** The weights outside the decoder layers (the same for every model family). */
export type MixtralGlobalWeights = ModelGlobalWeights;

export interface LoadProgress {
  /** Bytes read so far (as stored in the files) and the bytes of every tensor the model needs. */
  bytesLoaded: number;
  bytesTotal: number;
  tensorsLoaded: number;
  tensorsTotal: number;
  /** The tensor just read. */
  name: string;
}

export interface MoeOpenOptions {
  /** The config (`parseMoeConfig`); default: config.json next to the checkpoint. */
  config?: MoeModelConfig;
  /** Convert float weights to this type as they load. Default: as stored. */
  dtype?: FloatType;
  /** Called after each tensor is read, with counts over the whole model. */
  onProgress?: (p: LoadProgress) => void;
}

export interface MixtralOpenOptions extends MoeOpenOptions {
  /** The config (`parseMixtralConfig`); default: config.json next to the checkpoint. */
  config?: MixtralConfig;
}

/** A tensor the model needs: its checkpoint name and the shape the config implies. */
export interface ExpectedTensor {
  name: string;
  shape: readonly number[];
}

const P = (i: number) => `model.layers.${i}`;

/** Checkpoint prefix (under mlp.) of the shared experts of each family that has them. */
const SHARED_PREFIX: Partial<Record<ModelType, string>> = { qwen2_moe: 'shared_expert', deepseek: 'shared_experts' };
const PROJ = { w1: 'gate_proj', w3: 'up_proj', w2: 'down_proj' } as const;
type Mat = keyof typeof PROJ;
const MATS: readonly Mat[] = ['w1', 'w3', 'w2'];

/** The checkpoint names of layer i's FFN tensors. */
function ffnNames(c: MoeModelConfig, layout: ExpertLayout, i: number) {
  const p = P(i);
  if (c.layerKinds[i] === 'dense') return { kind: 'dense' as const, mlp: (m: Mat) => `${p}.mlp.${PROJ[m]}.weight` };
  const mixtralPerExpert = c.modelType === 'mixtral' && layout === 'per-expert';
  const sp = SHARED_PREFIX[c.modelType];
  const shared = c.sharedExpertIntermediateSize > 0 && sp !== undefined;
  return {
    kind: 'moe' as const,
    gate: mixtralPerExpert ? `${p}.block_sparse_moe.gate.weight` : `${p}.mlp.gate.weight`,
    expert:
      layout === 'packed'
        ? null
        : mixtralPerExpert
          ? (e: number, m: Mat) => `${p}.block_sparse_moe.experts.${e}.${m}.weight`
          : (e: number, m: Mat) => `${p}.mlp.experts.${e}.${PROJ[m]}.weight`,
    gateUp: `${p}.mlp.experts.gate_up_proj`,
    down: `${p}.mlp.experts.down_proj`,
    shared: shared ? (m: Mat) => `${p}.mlp.${sp}.${PROJ[m]}.weight` : null,
    sharedGate: shared && c.sharedExpertGate ? `${p}.mlp.${sp}_gate.weight` : null,
  };
}

/**
 * The checkpoint names and shapes of layer i's tensors, in load order, one at a time: a config may
 * imply billions of them (65536 experts x 65536 layers), and a check against a checkpoint stops
 * at the first one that is missing or mis-shaped without making the rest.
 */
function* layerSpecIter(c: MoeModelConfig, layout: ExpertLayout, i: number): Generator<ExpectedTensor, void, undefined> {
  const d = c.hiddenSize;
  const q = c.numAttentionHeads * c.headDim;
  const kv = c.numKeyValueHeads * c.headDim;
  const E = c.numExperts;
  yield { name: `${P(i)}.input_layernorm.weight`, shape: [d] };
  yield { name: `${P(i)}.self_attn.q_proj.weight`, shape: [q, d] };
  yield { name: `${P(i)}.self_attn.k_proj.weight`, shape: [kv, d] };
  yield { name: `${P(i)}.self_attn.v_proj.weight`, shape: [kv, d] };
  yield { name: `${P(i)}.self_attn.o_proj.weight`, shape: [d, q] };
  yield { name: `${P(i)}.post_attention_layernorm.weight`, shape: [d] };
  if (c.attentionBias) {
    yield { name: `${P(i)}.self_attn.q_proj.bias`, shape: [q] };
    yield { name: `${P(i)}.self_attn.k_proj.bias`, shape: [kv] };
    yield { name: `${P(i)}.self_attn.v_proj.bias`, shape: [kv] };
  }
  if (c.attentionOutputBias) yield { name: `${P(i)}.self_attn.o_proj.bias`, shape: [d] };
  const swiglu = (name: (m: Mat) => string, f: number) => MATS.map((m): ExpectedTensor => ({ name: name(m), shape: m === 'w2' ? [d, f] : [f, d] }));
  const n = ffnNames(c, layout, i);
  if (n.kind === 'dense') {
    yield* swiglu(n.mlp, c.intermediateSize);
    return;
  }
  const f = c.moeIntermediateSize;
  yield { name: n.gate, shape: [E, d] };
  if (n.expert === null) {
    yield { name: n.gateUp, shape: [E, 2 * f, d] };
    yield { name: n.down, shape: [E, d, f] };
  } else {
    const x = n.expert;
    for (let e = 0; e < E; e++) yield* swiglu((m) => x(e, m), f);
  }
  if (n.shared) yield* swiglu(n.shared, c.sharedExpertIntermediateSize);
  if (n.sharedGate) yield { name: n.sharedGate, shape: [1, d] };
}

/** How many tensors layerSpecIter gives for layer i, in closed form. */
function layerTensorCount(c: MoeModelConfig, layout: ExpertLayout, i: number): number {
  const attn = 6 + (c.attentionBias ? 3 : 0) + (c.attentionOutputBias ? 1 : 0);
  const n = ffnNames(c, layout, i);
  if (n.kind === 'dense') return attn + 3;
  return attn + 1 + (n.expert === null ? 2 : 3 * c.numExperts) + (n.shared ? 3 : 0) + (n.sharedGate ? 1 : 0);
}

/** The checkpoint names and shapes of layer i's tensors, in load order. */
function layerSpecs(c: MoeModelConfig, layout: ExpertLayout, i: number): ExpectedTensor[] {
  return [...layerSpecIter(c, layout, i)];
}

/** The specs without the per-expert tensors of experts outside [start, end). */
function onlyExperts(specs: ExpectedTensor[], range: readonly [number, number] | undefined): ExpectedTensor[] {
  if (range === undefined) return specs;
  return specs.filter((s) => {
    const m = /\.experts\.(\d+)\./.exec(s.name);
    return m === null || (Number(m[1]) >= range[0] && Number(m[1]) < range[1]);
  });
}

function* specIter(c: MoeModelConfig, layout: ExpertLayout): Generator<ExpectedTensor, void, undefined> {
  yield* globalSpecs(c);
  for (let i = 0; i < c.numHiddenLayers; i++) yield* layerSpecIter(c, layout, i);
}

/** The most tensors `moeTensorSpecs` lists (a checkpoint of more would be a 1 GB+ header alone). */
const MAX_SPECS = 1 << 24;

function globalSpecs(c: MoeModelConfig): ExpectedTensor[] {
  const out: ExpectedTensor[] = [
    { name: 'model.embed_tokens.weight', shape: [c.vocabSize, c.hiddenSize] },
    { name: 'model.norm.weight', shape: [c.hiddenSize] },
  ];
  if (!c.tieWordEmbeddings) out.push({ name: 'lm_head.weight', shape: [c.vocabSize, c.hiddenSize] });
  return out;
}

/**
 * Which expert layout a checkpoint uses, judged by its first MoE layer. Without a config the
 * checkpoint is taken for Mixtral's (where `mlp.gate.weight` only exists in the packed layout).
 */
export function detectExpertLayout(names: { has(name: string): boolean }, config?: MoeModelConfig): ExpertLayout {
  if (config === undefined || config.modelType === 'mixtral')
    return names.has(`${P(0)}.mlp.experts.gate_up_proj`) || names.has(`${P(0)}.mlp.gate.weight`) ? 'packed' : 'per-expert';
  const i = Math.max(0, config.layerKinds.indexOf('moe'));
  return names.has(`${P(i)}.mlp.experts.gate_up_proj`) ? 'packed' : 'per-expert';
}

/** How many tensors a model of this config needs in this layout (closed form per layer). */
export function moeTensorCount(config: MoeModelConfig, layout: ExpertLayout): number {
  let n = globalSpecs(config).length;
  for (let i = 0; i < config.numHiddenLayers; i++) n += layerTensorCount(config, layout, i);
  return n;
}

/**
 * Every tensor a model of this config needs in this layout, globals first, then by layer. A config
 * that implies more than 2^24 tensors is MoeError ERR_CONFIG (counted first, nothing built).
 */
export function moeTensorSpecs(config: MoeModelConfig, layout: ExpertLayout): ExpectedTensor[] {
  const n = moeTensorCount(config, layout);
  if (n > MAX_SPECS)
    throw new MoeError(`this ${config.modelType} config implies ${n.toLocaleString('en-US')} tensors in the ${layout} layout, more than the ${MAX_SPECS.toLocaleString('en-US')} a checkpoint can list`, 'ERR_CONFIG');
  return [...specIter(config, layout)];
}

/** Every tensor a Mixtral model needs (`moeTensorSpecs`, which takes any family's config). */
export const mixtralTensorSpecs: (config: MoeModelConfig, layout: ExpertLayout) => ExpectedTensor[] = moeTensorSpecs;

const sameShape = (a: readonly number[], b: readonly number[]) => a.length === b.length && a.every((x, i) => x === b[i]);

/**
 * Checks one expected tensor against a checkpoint's header: present, float, the expected shape.
 * Throws MoeError ERR_TENSOR_MISSING / ERR_TENSOR_SHAPE / ERR_TENSOR_DTYPE naming the tensor.
 */
function checkExpected(ckpt: Checkpoint, spec: ExpectedTensor, c: MoeModelConfig, layout: ExpertLayout): TensorInfo {
  if (!ckpt.has(spec.name))
    throw new MoeError(
      `checkpoint ${ckpt.dir}: tensor '${spec.name}' is missing (expected shape [${spec.shape.join(',')}] from the config; ${c.modelType}, ${layout} expert layout)`,
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

/** Refuses attention biases the config does not declare (they would be silently ignored). */
function checkNoAttentionBias(ckpt: Checkpoint, c: MoeModelConfig): void {
  for (let i = 0; i < c.numHiddenLayers; i++)
    for (const p of ['q', 'k', 'v', 'o']) {
      const name = `${P(i)}.self_attn.${p}_proj.bias`;
      const declared = p === 'o' ? c.attentionOutputBias : c.attentionBias;
      if (!declared && ckpt.has(name))
        throw new MoeError(
          `${ckpt.info(name).file}: tensor '${name}' (shape [${ckpt.info(name).shape.join(',')}]): this ${c.modelType} config declares no ${p}_proj bias`,
          'ERR_UNSUPPORTED',
        );
    }
}

/** config.json next to a checkpoint (the directory, or the directory of a file). */
function configNextTo(ckpt: Checkpoint, parse: (p: string) => MoeModelConfig): MoeModelConfig {
  const p = path.join(ckpt.dir, 'config.json');
  if (!fs.existsSync(p)) throw new MoeError(`checkpoint ${ckpt.dir}: no config.json; pass options.config`, 'ERR_CONFIG');
  return parse(p);
}

const view = (t: Tensor, start: number, dims: number[]): Tensor => {
  const n = dims.reduce((a, b) => a * b, 1);
  return { type: t.type, data: t.data.subarray(start, start + n), dims } as Tensor;
};

const MODEL_TYPES: readonly ModelType[] = ['mixtral', 'qwen2_moe', 'deepseek'];

/**
 * A checkpoint of any supported family (Mixtral, Qwen2-MoE, DeepSeek-MoE) opened for loading.
 * `open` reads config.json (unless given; `parseMoeConfig`) and every header, and checks that each
 * tensor the config implies is present with its shape; nothing is read until `loadGlobals` /
 * `loadLayer` / `layers()`.
 *
 *   const m = await MoeCheckpoint.open(dir, { dtype: 'bfloat16', onProgress });
 *   const globals = await m.loadGlobals();
 *   for await (const layer of m.layers())   // layer.moe (an MoE layer) or layer.mlp (a dense one)
 *     if (layer.moe) blocks.push(await MoeLayer.create(layer.moe, { sharedExperts: layer.moe.sharedExperts }));
 *   m.close();
 */
export class MoeCheckpoint {
  readonly config: MoeModelConfig;
  readonly checkpoint: Checkpoint;
  /** Expert layout of the MoE layers. */
  readonly layout: ExpertLayout;
  /** Bytes (as stored) of every tensor the model needs. */
  readonly bytesTotal: number;
  readonly tensorsTotal: number;
  readonly #dtype: FloatType | undefined;
  readonly #onProgress: ((p: LoadProgress) => void) | undefined;
  #bytesLoaded = 0;
  #tensorsLoaded = 0;

  /** @internal `mixtral`: only Mixtral configs (MixtralCheckpoint). */
  protected constructor(checkpoint: Checkpoint, options: MoeOpenOptions | undefined, mixtral = false) {
    const o = checkOptions(options);
    if (o.dtype !== undefined && !(FLOAT_TYPES as readonly unknown[]).includes(o.dtype))
      throw typeError(`options.dtype must be one of ${FLOAT_TYPES.map((t) => `'${t}'`).join(', ')}, got ${describe(o.dtype)}`);
    if (o.onProgress !== undefined && typeof o.onProgress !== 'function') throw typeError(`options.onProgress must be a function, got ${describe(o.onProgress)}`);
    this.checkpoint = checkpoint;
    if (o.config !== undefined) {
      const t = (o.config as MoeModelConfig | null)?.modelType;
      if (mixtral ? t !== 'mixtral' : !MODEL_TYPES.includes(t as ModelType))
        throw typeError(
          mixtral
            ? `options.config must be a MixtralConfig (parseMixtralConfig), got ${describe(t ?? o.config)}`
            : `options.config must be a MoeModelConfig (parseMoeConfig), got ${describe(t ?? o.config)}`,
        );
    }
    this.config = (o.config as MoeModelConfig | undefined) ?? configNextTo(checkpoint, mixtral ? parseMixtralConfig : parseMoeConfig);
    this.layout = detectExpertLayout(checkpoint, this.config);
    this.#dtype = o.dtype as FloatType | undefined;
    this.#onProgress = o.onProgress as MoeOpenOptions['onProgress'];
    // one expected tensor at a time: a config implying billions fails at the first absent one
    let bytes = 0;
    let count = 0;
    for (const spec of specIter(this.config, this.layout)) {
      bytes += checkExpected(checkpoint, spec, this.config, this.layout).byteLength;
      count++;
    }
    this.bytesTotal = bytes;
    this.tensorsTotal = count;
    checkNoAttentionBias(checkpoint, this.config);
  }

  /**
   * Opens a checkpoint directory, index file or single .safetensors file (or takes an open
   * Checkpoint, which `close()` then closes) and validates it.
   */
  static async open(source: string | Checkpoint, options?: MoeOpenOptions): Promise<MoeCheckpoint> {
    return withCheckpoint(source instanceof Checkpoint ? source : await Checkpoint.open(source), (c) => new MoeCheckpoint(c, options));
  }

  static openSync(source: string | Checkpoint, options?: MoeOpenOptions): MoeCheckpoint {
    return withCheckpoint(source instanceof Checkpoint ? source : Checkpoint.openSync(source), (c) => new MoeCheckpoint(c, options));
  }

  get numLayers(): number {
    return this.config.numHiddenLayers;
  }

  /** Names in the checkpoint that this model does not use (e.g. rotary buffers, extra experts). */
  unusedTensors(): string[] {
    const used = new Set<string>();
    for (const s of specIter(this.config, this.layout)) used.add(s.name); // all present: open checked
    return this.checkpoint.names().filter((n) => !used.has(n));
  }

  async loadGlobals(): Promise<ModelGlobalWeights> {
    const t = await this.#readAll(globalSpecs(this.config));
    return this.#globals(t);
  }

  loadGlobalsSync(): ModelGlobalWeights {
    return this.#globals(this.#readAllSync(globalSpecs(this.config)));
  }

  /**
   * Loads decoder layer i (0-based): `moe` set for an MoE layer, `mlp` for a dense one. With
   * `experts: [start, end)` (an expert-parallel rank's share) the other experts of a per-expert
   * checkpoint are not read and their entries of w1/w3/w2 are null; a packed-layout checkpoint
   * stores them in one tensor and is read whole.
   */
  async loadLayer(i: number, options?: { experts?: readonly [number, number] }): Promise<DecoderLayerWeights> {
    const specs = onlyExperts(layerSpecs(this.config, this.layout, this.#layerIndex(i)), options?.experts);
    return this.#layer(i, await this.#readAll(specs));
  }

  loadLayerSync(i: number): DecoderLayerWeights {
    const specs = layerSpecs(this.config, this.layout, this.#layerIndex(i));
    return this.#layer(i, this.#readAllSync(specs));
  }

  /** The decoder layers in order, each read only when the iteration asks for it (options: loadLayer's). */
  async *layers(options?: { experts?: readonly [number, number] }): AsyncGenerator<DecoderLayerWeights, void, undefined> {
    for (let i = 0; i < this.config.numHiddenLayers; i++) yield await this.loadLayer(i, options);
  }

  close(): void {
    this.checkpoint.close();
  }

  /** `using m = MoeCheckpoint.openSync(dir)`: close() at the end of the scope. */
  [Symbol.dispose](): void {
    this.close();
  }

  /** `await using m = await MoeCheckpoint.open(dir)`: close(), resolved once reads in flight finish. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.checkpoint[Symbol.asyncDispose]();
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

  #globals(t: Map<string, Tensor>): ModelGlobalWeights {
    const embedTokens = t.get('model.embed_tokens.weight')!;
    return { embedTokens, norm: t.get('model.norm.weight')!, lmHead: this.config.tieWordEmbeddings ? embedTokens : t.get('lm_head.weight')! };
  }

  #layer(i: number, t: Map<string, Tensor>): DecoderLayerWeights {
    const g = (name: string) => t.get(name)!;
    const a = (s: string) => g(`${P(i)}.${s}`);
    const out: DecoderLayerWeights = {
      index: i,
      inputLayernorm: a('input_layernorm.weight'),
      postAttentionLayernorm: a('post_attention_layernorm.weight'),
      attention: { qProj: a('self_attn.q_proj.weight'), kProj: a('self_attn.k_proj.weight'), vProj: a('self_attn.v_proj.weight'), oProj: a('self_attn.o_proj.weight') },
    };
    if (this.config.attentionBias) Object.assign(out.attention, { qBias: a('self_attn.q_proj.bias'), kBias: a('self_attn.k_proj.bias'), vBias: a('self_attn.v_proj.bias') });
    if (this.config.attentionOutputBias) out.attention.oBias = a('self_attn.o_proj.bias');
    const n = ffnNames(this.config, this.layout, i);
    if (n.kind === 'dense') {
      out.mlp = { w1: g(n.mlp('w1')), w3: g(n.mlp('w3')), w2: g(n.mlp('w2')) };
      return out;
    }
    const { numExperts: E, moeIntermediateSize: f, hiddenSize: d } = this.config;
    const ids = [...Array(E).keys()];
    let moe: MoeBlockWeights;
    if (n.expert === null) {
      const gateUp = g(n.gateUp);
      const down = g(n.down);
      moe = {
        gate: g(n.gate),
        w1: ids.map((e) => view(gateUp, e * 2 * f * d, [f, d])),
        w3: ids.map((e) => view(gateUp, (e * 2 + 1) * f * d, [f, d])),
        w2: ids.map((e) => view(down, e * d * f, [d, f])),
      };
    } else {
      const x = n.expert;
      // experts not read (another rank's, loadLayer's `experts`) are null
      const m = (e: number, w: Mat) => (t.get(x(e, w)) ?? null) as Tensor;
      moe = { gate: g(n.gate), w1: ids.map((e) => m(e, 'w1')), w3: ids.map((e) => m(e, 'w3')), w2: ids.map((e) => m(e, 'w2')) };
    }
    if (n.shared) {
      moe.sharedExperts = { w1: g(n.shared('w1')), w3: g(n.shared('w3')), w2: g(n.shared('w2')) };
      if (n.sharedGate) moe.sharedExperts.gate = g(n.sharedGate);
    }
    out.moe = moe;
    return out;
  }
}

function withCheckpoint<T>(ckpt: Checkpoint, make: (c: Checkpoint) => T): T {
  try {
    return make(ckpt);
  } catch (e) {
    ckpt.close();
    throw e;
  }
}

/**
 * A Mixtral checkpoint: a MoeCheckpoint that takes only Mixtral configs (config.json parsed with
 * `parseMixtralConfig`, so another model_type is an ERR_CONFIG), with Mixtral's types.
 *
 *   const m = await MixtralCheckpoint.open(dir, { dtype: 'bfloat16', onProgress });
 *   const globals = await m.loadGlobals();
 *   for await (const layer of m.layers()) blocks.push(await MoeLayer.create(layer.moe));
 *   m.close();
 */
export class MixtralCheckpoint extends MoeCheckpoint {
  declare readonly config: MixtralConfig;

  private constructor(checkpoint: Checkpoint, options: MixtralOpenOptions | undefined) {
    super(checkpoint, options, true);
  }

  static override async open(source: string | Checkpoint, options?: MixtralOpenOptions): Promise<MixtralCheckpoint> {
    return withCheckpoint(source instanceof Checkpoint ? source : await Checkpoint.open(source), (c) => new MixtralCheckpoint(c, options));
  }

  static override openSync(source: string | Checkpoint, options?: MixtralOpenOptions): MixtralCheckpoint {
    return withCheckpoint(source instanceof Checkpoint ? source : Checkpoint.openSync(source), (c) => new MixtralCheckpoint(c, options));
  }

  override async loadGlobals(): Promise<MixtralGlobalWeights> {
    return super.loadGlobals();
  }

  override async loadLayer(i: number, options?: { experts?: readonly [number, number] }): Promise<MixtralLayerWeights> {
    return (await super.loadLayer(i, options)) as MixtralLayerWeights;
  }

  override loadLayerSync(i: number): MixtralLayerWeights {
    return super.loadLayerSync(i) as MixtralLayerWeights;
  }

  override async *layers(options?: { experts?: readonly [number, number] }): AsyncGenerator<MixtralLayerWeights, void, undefined> {
    for await (const l of super.layers(options)) yield l as MixtralLayerWeights;
  }
}

/**
 * Converts one decoder layer's weights to a checkpoint's tensor names for a model family, in the
 * given expert layout (used to write checkpoints, e.g. in tests): the inverse of loading. Packed
 * layout stacks the experts (copies).
 */
export function decoderLayerTensors(modelType: ModelType, layer: DecoderLayerWeights, layout: ExpertLayout): Record<string, Tensor> {
  const p = P(layer.index);
  const out: Record<string, Tensor> = {
    [`${p}.input_layernorm.weight`]: layer.inputLayernorm,
    [`${p}.self_attn.q_proj.weight`]: floatWeight(layer.attention.qProj, `layer ${layer.index} qProj`),
    [`${p}.self_attn.k_proj.weight`]: floatWeight(layer.attention.kProj, `layer ${layer.index} kProj`),
    [`${p}.self_attn.v_proj.weight`]: floatWeight(layer.attention.vProj, `layer ${layer.index} vProj`),
    [`${p}.self_attn.o_proj.weight`]: floatWeight(layer.attention.oProj, `layer ${layer.index} oProj`),
    [`${p}.post_attention_layernorm.weight`]: layer.postAttentionLayernorm,
  };
  for (const [k, name] of [['qBias', 'q'], ['kBias', 'k'], ['vBias', 'v'], ['oBias', 'o']] as const) {
    const b = layer.attention[k];
    if (b) out[`${p}.self_attn.${name}_proj.bias`] = b;
  }
  if (layer.mlp) {
    for (const m of MATS) out[`${p}.mlp.${PROJ[m]}.weight`] = floatWeight(layer.mlp[m], `layer ${layer.index} mlp.${m}`);
    return out;
  }
  if (!layer.moe) throw typeError(`layer ${layer.index} has neither moe nor mlp weights`);
  const { gate, sharedExperts } = layer.moe;
  const floats = (ts: readonly WeightTensor[], m: string) => ts.map((t, e) => floatWeight(t, `layer ${layer.index} expert ${e} ${m}`));
  const [w1, w3, w2] = [floats(layer.moe.w1, 'w1'), floats(layer.moe.w3, 'w3'), floats(layer.moe.w2, 'w2')];
  const mixtralPerExpert = modelType === 'mixtral' && layout === 'per-expert';
  if (layout === 'packed') {
    out[`${p}.mlp.gate.weight`] = gate;
    out[`${p}.mlp.experts.gate_up_proj`] = stack(w1.flatMap((t, e) => [t, w3[e]]), [w1.length, 2 * w1[0].dims[0], w1[0].dims[1]]);
    out[`${p}.mlp.experts.down_proj`] = stack(w2, [w2.length, ...w2[0].dims]);
  } else {
    out[mixtralPerExpert ? `${p}.block_sparse_moe.gate.weight` : `${p}.mlp.gate.weight`] = gate;
    const mats = { w1, w3, w2 };
    w1.forEach((_, e) => {
      for (const m of MATS) out[mixtralPerExpert ? `${p}.block_sparse_moe.experts.${e}.${m}.weight` : `${p}.mlp.experts.${e}.${PROJ[m]}.weight`] = mats[m][e];
    });
  }
  const sp = SHARED_PREFIX[modelType];
  if (sharedExperts) {
    if (sp === undefined) throw typeError(`${modelType} layers have no shared experts`);
    for (const m of MATS) out[`${p}.mlp.${sp}.${PROJ[m]}.weight`] = floatWeight(sharedExperts[m], `layer ${layer.index} sharedExperts.${m}`);
    if (sharedExperts.gate) out[`${p}.mlp.${sp}_gate.weight`] = sharedExperts.gate;
  }
  return out;
}

/** `decoderLayerTensors` of a Mixtral layer. */
export function mixtralLayerTensors(layer: MixtralLayerWeights, layout: ExpertLayout): Record<string, Tensor> {
  return decoderLayerTensors('mixtral', layer, layout);
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
