/**
 * The demo model `moe-kernels serve` runs when no checkpoint is given: a tiny Mixtral (2 layers,
 * hidden 128, 8 experts of 256, top-2, 4/2 heads of 32) with seeded random weights made in memory,
 * and a byte-level tokenizer (<unk> <s> </s> and the 256 bytes) with a plain chat template. Its text
 * is noise; it exists to try the server, the client code and the package's plumbing in seconds
 * without a download.
 */
import { parseMixtralConfig } from '../hf/config.js';
import { Tokenizer } from '../hf/tokenizer.js';
import type { FloatType, Tensor } from '../core/tensor.js';
import type { DecoderLayerWeights } from '../hf/weights.js';
import { MixtralModel } from '../model/model.js';
import type { MixtralRuntimeOptions } from '../model/runtime.js';

export const DEMO_MODEL_NAME = 'moe-kernels-demo';

const SHAPE = { layers: 2, d: 128, f: 256, E: 8, k: 2, heads: 4, kvHeads: 2, vocab: 259 };

/** A byte-level BPE tokenizer.json (byte fallback, no merges): ids 0-2 specials, 3 + b for byte b. */
function byteTokenizerJson(): object {
  const vocab: Record<string, number> = { '<unk>': 0, '<s>': 1, '</s>': 2 };
  for (let b = 0; b < 256; b++) vocab[`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`] = 3 + b;
  const special = (id: number, content: string) => ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true });
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: [special(0, '<unk>'), special(1, '<s>'), special(2, '</s>')],
    normalizer: null,
    pre_tokenizer: null,
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [],
      special_tokens: { '<s>': { id: '<s>', ids: [1], tokens: ['<s>'] } },
    },
    decoder: { type: 'Sequence', decoders: [{ type: 'ByteFallback' }, { type: 'Fuse' }] },
    model: { type: 'BPE', dropout: null, unk_token: '<unk>', continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: true, byte_fallback: true, vocab, merges: [] },
  };
}

const CHAT_TEMPLATE = "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:";

/** The demo tokenizer (see the file's comment). */
export function demoTokenizer(): Tokenizer {
  return new Tokenizer(byteTokenizerJson(), { bos_token: '<s>', eos_token: '</s>', chat_template: CHAT_TEMPLATE }, 'the demo tokenizer');
}

/** Seeded uniform values in (-scale, scale) (mulberry32). */
function random(n: number, scale: number, seed: number, offset = 0): Float32Array {
  const out = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = Math.imul(s ^ (s >>> 15), 1 | s);
    t ^= t + Math.imul(t ^ (t >>> 7), 61 | t);
    out[i] = offset + ((((t ^ (t >>> 14)) >>> 0) / 4294967296) * 2 - 1) * scale;
  }
  return out;
}

/** The demo model with its tokenizer (model.tokenizer), on the backend the options name. */
export async function demoModel(options?: MixtralRuntimeOptions): Promise<MixtralModel> {
  const s = SHAPE;
  const config = parseMixtralConfig({
    model_type: 'mixtral',
    hidden_size: s.d,
    intermediate_size: s.f,
    num_hidden_layers: s.layers,
    num_attention_heads: s.heads,
    num_key_value_heads: s.kvHeads,
    num_local_experts: s.E,
    num_experts_per_tok: s.k,
    vocab_size: s.vocab,
    max_position_embeddings: 2048,
    rope_theta: 1e6,
    rms_norm_eps: 1e-5,
    sliding_window: null,
    tie_word_embeddings: false,
  });
  let seed = 1;
  const m = (rows: number, cols: number): Tensor<FloatType> => ({ type: 'float32', data: random(rows * cols, 1 / Math.sqrt(cols), seed++), dims: [rows, cols] });
  const norm = (): Tensor<FloatType> => ({ type: 'float32', data: random(s.d, 0.1, seed++, 1), dims: [s.d] });
  const hd = s.d / s.heads;
  const layers: DecoderLayerWeights[] = Array.from({ length: s.layers }, (_, index) => ({
    index,
    inputLayernorm: norm(),
    postAttentionLayernorm: norm(),
    attention: { qProj: m(s.heads * hd, s.d), kProj: m(s.kvHeads * hd, s.d), vProj: m(s.kvHeads * hd, s.d), oProj: m(s.d, s.heads * hd) },
    moe: {
      gate: m(s.E, s.d),
      w1: Array.from({ length: s.E }, () => m(s.f, s.d)),
      w3: Array.from({ length: s.E }, () => m(s.f, s.d)),
      w2: Array.from({ length: s.E }, () => m(s.d, s.f)),
    },
  }));
  const globals = { embedTokens: m(s.vocab, s.d), norm: norm(), lmHead: m(s.vocab, s.d) };
  const model = await MixtralModel.fromWeights(config, { globals, layers }, options);
  model.tokenizer = demoTokenizer();
  return model;
}
