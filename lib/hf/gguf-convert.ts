/**
 * Hugging Face checkpoint -> GGUF, as llama.cpp's convert_hf_to_gguf.py lays it out: Mixtral as
 * architecture `llama` with experts (q/k rows permuted the llama.cpp way), Qwen2-MoE as `qwen2moe`;
 * experts stacked (ffn_*_exps); norms, biases and routers in F32, the other matrices in the chosen
 * type; the tokenizer (tokenizer.json: SentencePiece-style BPE as `llama` with scores, byte-level
 * BPE as `gpt2` with merges) and chat template (tokenizer_config.json) in the metadata. One layer
 * is in memory at a time.
 *
 * Types: f32, f16, bf16. q8_0, q4_0 and q4_k are refused with ERR_UNSUPPORTED until the package has
 * a quantiser (issue 12): `tensorType` below is where a quantised type would be chosen per tensor.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, MoeError, typeError } from '../core/errors.js';
import { checkOptions } from '../core/options.js';
import { cast, type FloatType, type Tensor } from '../core/tensor.js';
import { floatWeight, isQuantType, quantize, QUANT_BLOCKS, type QuantizeType } from '../core/quant.js';
import type { WeightTensor } from '../moe/experts.js';
import type { MoeModelConfig } from './config.js';
import { type GgufTensor, type GgufTensorType } from './gguf.js';
import { permuteQK } from './gguf-model.js';
import { writeGguf, type GgufMetadataInput, type GgufTensorInput } from './gguf-write.js';
import { TOKEN_TYPE, PRE_TOKENIZERS } from './tokenizer-gguf.js';
import { MoeCheckpoint, type DecoderLayerWeights, type ModelGlobalWeights } from './weights.js';

export type GgufConvertType = 'f32' | 'f16' | 'bf16' | 'q8_0' | 'q4_0' | 'q4_k';
export const GGUF_CONVERT_TYPES: readonly GgufConvertType[] = ['f32', 'f16', 'bf16', 'q8_0', 'q4_0', 'q4_k'];
const FLOAT_OF: Partial<Record<GgufConvertType, FloatType>> = { f32: 'float32', f16: 'float16', bf16: 'bfloat16' };
const QUANT_OF: Partial<Record<GgufConvertType, QuantizeType>> = { q8_0: 'q8_0', q4_0: 'q4_0', q4_k: 'q4_k' };
/** llama.cpp's llama_ftype of each type (general.file_type). */
const FILE_TYPE: Record<GgufConvertType, number> = { f32: 0, f16: 1, q4_0: 2, q8_0: 7, q4_k: 15, bf16: 32 };

export interface GgufConvertOptions {
  /** Tensor type of the matrices (default 'f16'). */
  type?: GgufConvertType;
  /** general.name (default: the directory's name). */
  name?: string;
  /** Called after each tensor is written. */
  onTensor?: (name: string, index: number, count: number) => void;
}

export interface GgufConvertResult {
  architecture: string;
  tensors: number;
  bytes: number;
}

const meta = (key: string, type: GgufMetadataInput['type'], value: GgufMetadataInput['value'], arrayType?: GgufMetadataInput['arrayType']): GgufMetadataInput =>
  arrayType ? { key, type, value, arrayType } : { key, type, value };

/** The model metadata of a config in llama.cpp's keys. */
function modelMetadata(c: MoeModelConfig, arch: string, name: string, type: GgufConvertType): GgufMetadataInput[] {
  const k = (s: string) => `${arch}.${s}`;
  const m: GgufMetadataInput[] = [
    meta('general.architecture', 'string', arch),
    meta('general.name', 'string', name),
    meta('general.file_type', 'uint32', FILE_TYPE[type]),
    meta(k('vocab_size'), 'uint32', c.vocabSize),
    meta(k('context_length'), 'uint32', c.maxPositionEmbeddings),
    meta(k('embedding_length'), 'uint32', c.hiddenSize),
    meta(k('block_count'), 'uint32', c.numHiddenLayers),
    meta(k('feed_forward_length'), 'uint32', c.intermediateSize),
    meta(k('rope.dimension_count'), 'uint32', c.headDim),
    meta(k('attention.head_count'), 'uint32', c.numAttentionHeads),
    meta(k('attention.head_count_kv'), 'uint32', c.numKeyValueHeads),
    meta(k('rope.freq_base'), 'float32', c.ropeTheta),
    meta(k('attention.layer_norm_rms_epsilon'), 'float32', c.rmsNormEps),
    meta(k('expert_count'), 'uint32', c.numExperts),
    meta(k('expert_used_count'), 'uint32', c.numExpertsPerTok),
  ];
  if (c.headDim * c.numAttentionHeads !== c.hiddenSize) m.push(meta(k('attention.key_length'), 'uint32', c.headDim), meta(k('attention.value_length'), 'uint32', c.headDim));
  if (arch === 'qwen2moe') {
    m.push(meta(k('expert_feed_forward_length'), 'uint32', c.moeIntermediateSize));
    if (c.sharedExpertIntermediateSize > 0) m.push(meta(k('expert_shared_feed_forward_length'), 'uint32', c.sharedExpertIntermediateSize));
    if (c.normTopkProb) m.push(meta(k('expert_weights_norm'), 'bool', true));
  }
  return m;
}

// ---- the tokenizer ----------------------------------------------------------------------------------

function readJsonIfPresent(file: string): Record<string, unknown> | null {
  if (!fs.existsSync(file)) return null;
  try {
    const v = JSON.parse(fs.readFileSync(file, 'utf8'));
    if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new Error('not a JSON object');
    return v as Record<string, unknown>;
  } catch (e) {
    throw new MoeError(`${file}: cannot be used (${(e as Error).message})`, 'ERR_TOKENIZER');
  }
}

const tokenName = (v: unknown): string | null =>
  typeof v === 'string' ? v : v && typeof v === 'object' && typeof (v as { content?: unknown }).content === 'string' ? (v as { content: string }).content : null;

/** Which of PRE_TOKENIZERS a tokenizer.json's Split regex is ('default' when none matches). */
function preOf(tj: Record<string, unknown>): string {
  const text = JSON.stringify(tj.pre_tokenizer ?? null);
  for (const [name, re] of Object.entries(PRE_TOKENIZERS)) if (text.includes(JSON.stringify(re).slice(1, -1))) return name;
  return 'default';
}

/** tokenizer.json (+ tokenizer_config.json) as GGUF tokenizer metadata; [] when the checkpoint has none. */
export function tokenizerMetadata(dir: string): GgufMetadataInput[] {
  const file = path.join(dir, 'tokenizer.json');
  const tj = readJsonIfPresent(file);
  const cfg = readJsonIfPresent(path.join(dir, 'tokenizer_config.json')) ?? {};
  const out: GgufMetadataInput[] = [];
  if (tj) {
    const model = tj.model as { type?: unknown; vocab?: unknown; merges?: unknown; byte_fallback?: unknown; unk_token?: unknown } | undefined;
    if (!model || model.type !== 'BPE' || model.vocab === null || typeof model.vocab !== 'object')
      throw new MoeError(`${file}: only BPE tokenizers convert to GGUF (model.type ${describe(model?.type)})`, 'ERR_TOKENIZER');
    const vocab = model.vocab as Record<string, number>;
    const added = (Array.isArray(tj.added_tokens) ? tj.added_tokens : []) as { id: number; content: string; special?: boolean }[];
    let n = 0;
    for (const id of Object.values(vocab)) n = Math.max(n, id + 1);
    for (const a of added) n = Math.max(n, a.id + 1);
    const tokens = new Array<string>(n).fill('');
    const types = new Int32Array(n).fill(TOKEN_TYPE.unused);
    for (const [t, id] of Object.entries(vocab)) {
      tokens[id] = t;
      types[id] = /^<0x[0-9A-F]{2}>$/.test(t) && model.byte_fallback === true ? TOKEN_TYPE.byte : TOKEN_TYPE.normal;
    }
    for (let i = 0; i < n; i++) if (tokens[i] === '') tokens[i] = `[PAD${i}]`;
    for (const a of added) {
      tokens[a.id] = a.content;
      types[a.id] = a.special ? TOKEN_TYPE.control : TOKEN_TYPE.userDefined;
    }
    const unk = typeof model.unk_token === 'string' ? vocab[model.unk_token] : undefined;
    if (unk !== undefined) types[unk] = TOKEN_TYPE.unknown;
    const merges = (Array.isArray(model.merges) ? model.merges : []).map((m) => (Array.isArray(m) ? m.join(' ') : String(m)));
    const byteLevel = JSON.stringify(tj.pre_tokenizer ?? null).includes('"ByteLevel"');
    const id = (v: unknown) => {
      const name = tokenName(v);
      if (name === null) return undefined;
      const i = tokens.indexOf(name);
      return i >= 0 ? i : undefined;
    };
    const post = JSON.stringify(tj.post_processor ?? null);
    const bos = id(cfg.bos_token);
    if (byteLevel) {
      out.push(meta('tokenizer.ggml.model', 'string', 'gpt2'), meta('tokenizer.ggml.pre', 'string', preOf(tj)));
      out.push(meta('tokenizer.ggml.tokens', 'array', tokens, 'string'), meta('tokenizer.ggml.token_type', 'array', types, 'int32'), meta('tokenizer.ggml.merges', 'array', merges, 'string'));
    } else {
      // SentencePiece-style: a merged piece scores minus the rank of the first merge that makes it
      // (earlier merges first, as the scores of the SentencePiece model they were made from)
      const scores = new Float32Array(n);
      const seen = new Set<string>();
      merges.forEach((m, r) => {
        const t = m.replace(' ', '');
        if (!seen.has(t) && vocab[t] !== undefined) {
          seen.add(t);
          scores[vocab[t]] = -r;
        }
      });
      out.push(meta('tokenizer.ggml.model', 'string', 'llama'), meta('tokenizer.ggml.pre', 'string', 'default'));
      out.push(meta('tokenizer.ggml.tokens', 'array', tokens, 'string'), meta('tokenizer.ggml.scores', 'array', scores, 'float32'), meta('tokenizer.ggml.token_type', 'array', types, 'int32'));
      const norm = JSON.stringify(tj.normalizer ?? null) + JSON.stringify(tj.pre_tokenizer ?? null);
      out.push(meta('tokenizer.ggml.add_space_prefix', 'bool', norm.includes('"Prepend"') || (norm.includes('"Metaspace"') && !norm.includes('"never"'))));
    }
    if (bos !== undefined) out.push(meta('tokenizer.ggml.bos_token_id', 'uint32', bos));
    const eos = id(cfg.eos_token);
    if (eos !== undefined) out.push(meta('tokenizer.ggml.eos_token_id', 'uint32', eos));
    if (unk !== undefined) out.push(meta('tokenizer.ggml.unknown_token_id', 'uint32', unk));
    const pad = id(cfg.pad_token);
    if (pad !== undefined) out.push(meta('tokenizer.ggml.padding_token_id', 'uint32', pad));
    const addBos = typeof cfg.add_bos_token === 'boolean' ? cfg.add_bos_token : bos !== undefined && post.includes(`"${tokens[bos]}"`) && post.includes('SpecialToken');
    out.push(meta('tokenizer.ggml.add_bos_token', 'bool', addBos));
    out.push(meta('tokenizer.ggml.add_eos_token', 'bool', cfg.add_eos_token === true));
  }
  const tmpl = cfg.chat_template;
  const named = Array.isArray(tmpl) ? (tmpl as { name?: unknown; template?: unknown }[]).find((x) => x?.name === 'default')?.template : tmpl;
  if (typeof named === 'string') out.push(meta('tokenizer.chat_template', 'string', named));
  return out;
}

// ---- tensors ------------------------------------------------------------------------------------------

/**
 * The GGUF type of a tensor: vectors (norms, biases) and routers stay F32, as llama.cpp's converter
 * keeps them; matrices take `type`. A quantised type needs rows of whole blocks: a matrix whose
 * rows are not (q4_k: 256 values) falls back to q8_0 (32 values), then to F16, as llama.cpp does.
 */
function tensorType(name: string, dims: readonly number[], type: GgufConvertType): GgufTensorType {
  if (dims.length === 1 || /\.ffn_gate_inp(_shexp)?\.weight$/.test(name)) return 'float32';
  const ft = FLOAT_OF[type];
  if (ft) return ft;
  const cols = dims[dims.length - 1];
  const q = QUANT_OF[type]!;
  if (cols % QUANT_BLOCKS[q].values === 0) return q;
  return cols % QUANT_BLOCKS.q8_0.values === 0 ? 'q8_0' : 'float16';
}

function stack(weights: readonly WeightTensor[], what: string): Tensor {
  const parts = weights.map((w, e) => floatWeight(w, `${what} expert ${e}`));
  const [rows, cols] = parts[0].dims;
  const t0 = parts[0].type;
  const data = new (parts[0].data.constructor as new (n: number) => Tensor['data'])(parts.length * rows * cols);
  parts.forEach((p, e) => (data as Float32Array).set((p.type === t0 ? p : cast(p, t0 as FloatType)).data as Float32Array, e * rows * cols));
  return { type: t0, data, dims: [parts.length, rows, cols] } as Tensor;
}

/**
 * Converts a Hugging Face checkpoint directory (config.json, safetensors, tokenizer files) to one
 * GGUF file that llama.cpp and MixtralModel.load read.
 */
export async function convertToGguf(src: string, out: string, options?: GgufConvertOptions): Promise<GgufConvertResult> {
  if (typeof src !== 'string' || src === '') throw typeError(`src must be a checkpoint directory, got ${describe(src)}`);
  if (typeof out !== 'string' || out === '') throw typeError(`out must be a file path, got ${describe(out)}`);
  const o = checkOptions(options);
  const type = (o.type ?? 'f16') as GgufConvertType;
  if (!GGUF_CONVERT_TYPES.includes(type)) throw typeError(`options.type must be one of ${GGUF_CONVERT_TYPES.join(', ')}, got ${describe(o.type)}`);
  if (o.name !== undefined && typeof o.name !== 'string') throw typeError(`options.name must be a string, got ${describe(o.name)}`);
  const ckpt = await MoeCheckpoint.open(src);
  try {
    const c = ckpt.config;
    if (c.modelType === 'deepseek') throw new MoeError(`${src}: DeepSeek-MoE is not written to GGUF by this converter (llama with experts, i.e. Mixtral, and qwen2moe are)`, 'ERR_UNSUPPORTED');
    const arch = c.modelType === 'mixtral' ? 'llama' : 'qwen2moe';
    const metadata = [...modelMetadata(c, arch, (o.name as string | undefined) ?? path.basename(path.resolve(src)), type), ...tokenizerMetadata(ckpt.checkpoint.dir)];
    const tensors: GgufTensorInput[] = [];
    let globals: ModelGlobalWeights | null = null;
    const g = async () => (globals ??= await ckpt.loadGlobals());
    let layer: DecoderLayerWeights | null = null;
    const L = async (i: number) => {
      if (layer?.index !== i) {
        layer = null; // the previous layer's arrays go before the next is read
        layer = await ckpt.loadLayer(i);
      }
      return layer;
    };
    const add = (name: string, dims: number[], get: () => Promise<WeightTensor>) => {
      const t = tensorType(name, dims, type);
      tensors.push({
        name, type: t, dims,
        data: async (): Promise<GgufTensor> => {
          const w = floatWeight(await get(), name); // a checkpoint's tensors are float
          return isQuantType(t) ? quantize(w, t as QuantizeType) : (cast(w, t as FloatType) as Tensor<FloatType>);
        },
      });
    };
    const { hiddenSize: d, vocabSize: V } = c;
    // the globals first, so that their arrays are dropped before the layers are read
    add('token_embd.weight', [V, d], async () => (await g()).embedTokens);
    add('output_norm.weight', [d], async () => {
      const n = (await g()).norm;
      if (c.tieWordEmbeddings) globals = null;
      return n;
    });
    if (!c.tieWordEmbeddings)
      add('output.weight', [V, d], async () => {
        const h = (await g()).lmHead;
        globals = null;
        return h;
      });
    const q = c.numAttentionHeads * c.headDim;
    const kv = c.numKeyValueHeads * c.headDim;
    for (let i = 0; i < c.numHiddenLayers; i++) {
      const b = (s: string) => `blk.${i}.${s}.weight`;
      add(b('attn_norm'), [d], async () => (await L(i)).inputLayernorm);
      add(b('attn_q'), [q, d], async () => {
        const w = (await L(i)).attention.qProj;
        return arch === 'llama' ? permuteQK(floatWeight(w, b('attn_q')), c.numAttentionHeads) : w;
      });
      add(b('attn_k'), [kv, d], async () => {
        const w = (await L(i)).attention.kProj;
        return arch === 'llama' ? permuteQK(floatWeight(w, b('attn_k')), c.numKeyValueHeads) : w;
      });
      add(b('attn_v'), [kv, d], async () => (await L(i)).attention.vProj);
      add(b('attn_output'), [d, q], async () => (await L(i)).attention.oProj);
      if (c.attentionBias) {
        add(`blk.${i}.attn_q.bias`, [q], async () => (await L(i)).attention.qBias!);
        add(`blk.${i}.attn_k.bias`, [kv], async () => (await L(i)).attention.kBias!);
        add(`blk.${i}.attn_v.bias`, [kv], async () => (await L(i)).attention.vBias!);
      }
      add(b('ffn_norm'), [d], async () => (await L(i)).postAttentionLayernorm);
      if (c.layerKinds[i] === 'dense') {
        const f = c.intermediateSize;
        add(b('ffn_gate'), [f, d], async () => (await L(i)).mlp!.w1);
        add(b('ffn_up'), [f, d], async () => (await L(i)).mlp!.w3);
        add(b('ffn_down'), [d, f], async () => (await L(i)).mlp!.w2);
        continue;
      }
      const E = c.numExperts;
      const f = c.moeIntermediateSize;
      add(b('ffn_gate_inp'), [E, d], async () => (await L(i)).moe!.gate);
      add(b('ffn_gate_exps'), [E, f, d], async () => stack((await L(i)).moe!.w1, b('ffn_gate_exps')));
      add(b('ffn_up_exps'), [E, f, d], async () => stack((await L(i)).moe!.w3, b('ffn_up_exps')));
      add(b('ffn_down_exps'), [E, d, f], async () => stack((await L(i)).moe!.w2, b('ffn_down_exps')));
      const fs = c.sharedExpertIntermediateSize;
      if (fs > 0) {
        add(b('ffn_gate_shexp'), [fs, d], async () => (await L(i)).moe!.sharedExperts!.w1);
        add(b('ffn_up_shexp'), [fs, d], async () => (await L(i)).moe!.sharedExperts!.w3);
        add(b('ffn_down_shexp'), [d, fs], async () => (await L(i)).moe!.sharedExperts!.w2);
        // llama.cpp takes the shared expert's gate as a vector [d]
        if (c.sharedExpertGate)
          add(b('ffn_gate_inp_shexp'), [d], async () => {
            const t = (await L(i)).moe!.sharedExperts!.gate!;
            return { ...t, dims: [d] } as Tensor;
          });
      }
    }
    await writeGguf(out, { metadata, tensors }, { onTensor: o.onTensor as GgufConvertOptions['onTensor'] });
    return { architecture: arch, tensors: tensors.length, bytes: fs.statSync(out).size };
  } finally {
    ckpt.close();
  }
}
