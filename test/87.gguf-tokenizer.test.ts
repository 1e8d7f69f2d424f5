// The GGUF tokenizers against Hugging Face's (@huggingface/tokenizers) built from the same
// vocabulary, the way transformers builds a tokenizer from a GGUF file:
//   'llama': vocabulary + scores -> BPE merges by transformers' SentencePieceExtractor rule (every split
//            of a piece into two pieces of the vocabulary, ordered by the piece's score), byte fallback,
//            '▁' prepended and for spaces;
//   'gpt2':  vocabulary + merges -> byte-level BPE with the pre-tokenizer's regex (qwen2's here).
// The vocabularies are learnt here by a small BPE trainer on text with accents, CJK, emoji, digits
// and runs of spaces, so that merges are real; strings outside them exercise byte fallback. Then the
// streaming of text: stop strings split over tokens, multi-byte characters split over byte tokens.
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { GgufTokenizer, MoeError, type TextTokenizer } from '../lib/index';
import { generateTextAll, generateText } from '../lib/model/text';
import { PRE_TOKENIZERS, TOKEN_TYPE } from '../lib/hf/tokenizer-gguf';
import type { MixtralModel } from '../lib/model/model';

// eslint-disable-next-line @typescript-eslint/no-require-imports
const { Tokenizer: HfTokenizer } = require('@huggingface/tokenizers') as { Tokenizer: new (json: object, config: object) => { encode(t: string, o?: object): { ids: number[] }; decode(ids: number[], o?: object): string } };

const CORPUS = [
  'The quick brown fox jumps over the lazy dog. The dog sleeps; the fox runs.',
  'Les élèves étudient à l’école près de la forêt. Où est la bibliothèque? Très bien!',
  '東京は日本の首都です。日本語の文章を書きます。東京タワー。',
  'I love pizza 🍕 and sushi 🍣 and coffee ☕ every day 🙂🙂',
  'Numbers: 2024 12345 3.14159 1,000,000 and 42 or 007.',
  '    indented code with    runs of spaces\tand\ttabs\nand new lines\n\n',
  "it's we're they've I'm you'll he'd don't CAN'T",
];
const STRINGS = [
  'Hello world',
  'The quick brown fox',
  ' leading space',
  '   three leading spaces and  two inside',
  'trailing space ',
  'café naïve résumé à l’école',
  'Ünïcödé Çà Øß',
  '東京は日本の首都です',
  '中文字符测试，未知的字',
  'emoji 🍕🙂 and unknown 🦙🧪',
  'digits 0123456789 and 3.14159 and 1,000,000',
  "it's don't WE'RE",
  'tabs\tand\nnew\n\nlines',
  'x',
  '',
];

// ---- a tiny BPE trainer ----------------------------------------------------------------------

/** Learns `n` merges over words (arrays of symbols with counts): the most frequent pair, ties by the pair's text. */
function trainMerges(words: Map<string, number>, split: (w: string) => string[], n: number): [string, string][] {
  const ws = [...words].map(([w, c]) => ({ syms: split(w), c }));
  const merges: [string, string][] = [];
  for (let k = 0; k < n; k++) {
    const counts = new Map<string, number>();
    for (const { syms, c } of ws) for (let i = 0; i + 1 < syms.length; i++) counts.set(syms[i] + '\u0000' + syms[i + 1], (counts.get(syms[i] + '\u0000' + syms[i + 1]) ?? 0) + c);
    let best: string | null = null;
    let bc = 1;
    for (const [p, c] of counts) if (c > bc || (c === bc && best !== null && p < best)) (best = p), (bc = c);
    if (best === null) break;
    const [a, b] = best.split('\u0000');
    merges.push([a, b]);
    for (const w of ws) {
      const out: string[] = [];
      for (let i = 0; i < w.syms.length; ) {
        if (i + 1 < w.syms.length && w.syms[i] === a && w.syms[i + 1] === b) {
          out.push(a + b);
          i += 2;
        } else out.push(w.syms[i++]);
      }
      w.syms = out;
    }
  }
  return merges;
}

const SPECIALS = ['<unk>', '<s>', '</s>'];

/** A SentencePiece-style vocabulary: specials, 256 byte tokens, characters of part of the corpus, merged pieces with scores. */
function spmVocab() {
  const words = new Map<string, number>();
  // part of the corpus only: some characters (later CJK, emoji) stay out of the vocabulary
  for (const line of CORPUS.slice(0, 5))
    for (const w of ('▁' + line.replaceAll(' ', '▁')).split(/(?=▁)/)) words.set(w, (words.get(w) ?? 0) + 1);
  const tokens = [...SPECIALS];
  const types: number[] = [TOKEN_TYPE.unknown, TOKEN_TYPE.control, TOKEN_TYPE.control];
  for (let b = 0; b < 256; b++) {
    tokens.push(`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`);
    types.push(TOKEN_TYPE.byte);
  }
  const scores = new Array<number>(tokens.length).fill(0);
  const chars = [...new Set([...words.keys()].flatMap((w) => Array.from(w)))].sort();
  for (const c of chars) {
    tokens.push(c);
    types.push(TOKEN_TYPE.normal);
    scores.push(-1e6); // single characters never score against merges
  }
  const merges = trainMerges(words, (w) => Array.from(w), 300);
  merges.forEach(([a, b], i) => {
    if (tokens.includes(a + b)) return;
    tokens.push(a + b);
    types.push(TOKEN_TYPE.normal);
    scores.push(-i);
  });
  return { tokens, scores, types };
}

/** transformers' SentencePieceExtractor.generate_merges: every split of each piece, ordered by (score, len(left), len(right)) descending. */
function extractorMerges(tokens: string[], scores: number[]): string[] {
  const id = new Map(tokens.map((t, i) => [t, i]));
  const out: [string, string, number][] = [];
  tokens.forEach((piece, pi) => {
    const local: [string, string, number][] = [];
    const cps = Array.from(piece);
    for (let k = 1; k < cps.length; k++) {
      const l = cps.slice(0, k).join('');
      const r = cps.slice(k).join('');
      if (id.has(l) && id.has(r)) local.push([l, r, scores[pi]]);
    }
    local.sort((x, y) => id.get(x[0])! - id.get(y[0])! || id.get(x[1])! - id.get(y[1])!);
    out.push(...local);
  });
  // python's sorted(reverse=True) is stable on ties, as this stable sort
  out.sort((x, y) => y[2] - x[2] || Array.from(y[0]).length - Array.from(x[0]).length || Array.from(y[1]).length - Array.from(x[1]).length);
  return out.map(([l, r]) => `${l} ${r}`);
}

const added = (tokens: string[], types: number[]) =>
  tokens.flatMap((t, i) => (types[i] === TOKEN_TYPE.control || types[i] === TOKEN_TYPE.unknown ? [{ id: i, content: t, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true }] : []));

function hfSpm(v: ReturnType<typeof spmVocab>) {
  return new HfTokenizer(
    {
      version: '1.0',
      added_tokens: added(v.tokens, v.types),
      normalizer: { type: 'Sequence', normalizers: [{ type: 'Prepend', prepend: '▁' }, { type: 'Replace', pattern: { String: ' ' }, content: '▁' }] },
      pre_tokenizer: null,
      post_processor: { type: 'TemplateProcessing', single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }], pair: [], special_tokens: { '<s>': { id: '<s>', ids: [1], tokens: ['<s>'] } } },
      decoder: { type: 'Sequence', decoders: [{ type: 'Replace', pattern: { String: '▁' }, content: ' ' }, { type: 'ByteFallback' }, { type: 'Fuse' }, { type: 'Strip', content: ' ', start: 1, stop: 0 }] },
      model: { type: 'BPE', dropout: null, unk_token: '<unk>', continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: true, byte_fallback: true, vocab: Object.fromEntries(v.tokens.map((t, i) => [t, i])), merges: extractorMerges(v.tokens, v.scores) },
    },
    { bos_token: '<s>', eos_token: '</s>' },
  );
}

const test = suite('gguf tokenizers');

test("'llama' (SentencePiece-style, scores, byte fallback) encodes and decodes as Hugging Face's tokenizer of the same vocabulary", () => {
  const v = spmVocab();
  const ours = new GgufTokenizer({ model: 'llama', tokens: v.tokens, scores: v.scores, tokenTypes: v.types, bosTokenId: 1, eosTokenId: 2, unknownTokenId: 0 });
  const hf = hfSpm(v);
  let merged = 0;
  for (const s of [...STRINGS, ...CORPUS]) {
    const ids = ours.encode(s);
    assert.equal(ids, hf.encode(s).ids, `encode ${JSON.stringify(s)}`);
    merged += ids.filter((i) => i >= 259 && Array.from(v.tokens[i]).length > 1).length;
    assert.equal(ours.decode(ids, { skipSpecialTokens: true }), hf.decode(ids, { skip_special_tokens: true }), `decode ${JSON.stringify(s)}`);
    assert.equal(ours.decode(ids), hf.decode(ids, { skip_special_tokens: false }), `decode with specials ${JSON.stringify(s)}`);
    assert.is(ours.decode(ids, { skipSpecialTokens: true }), s, `round trip ${JSON.stringify(s)}`);
  }
  assert.ok(merged > 50, `the vocabulary merges (${merged} multi-character tokens used)`);
  // byte fallback: a character outside the vocabulary is its UTF-8 bytes
  assert.equal(ours.tokenize('🦙', { addSpecialTokens: false }).slice(-4), ['<0xF0>', '<0x9F>', '<0xA6>', '<0x99>']);
  // special tokens in the text are matched as such
  assert.equal(ours.encode('a</s>b', { addSpecialTokens: false }), hf.encode('a</s>b', { add_special_tokens: false }).ids);
});

test("'gpt2' (byte-level BPE with merges, qwen2 pre-tokenizer) encodes and decodes as Hugging Face's", () => {
  const re = new RegExp(PRE_TOKENIZERS.qwen2, 'gu');
  const b2u = (() => {
    const bs: number[] = [];
    for (let b = 0x21; b <= 0x7e; b++) bs.push(b);
    for (let b = 0xa1; b <= 0xac; b++) bs.push(b);
    for (let b = 0xae; b <= 0xff; b++) bs.push(b);
    const cs = [...bs];
    let n = 0;
    for (let b = 0; b < 256; b++) if (!bs.includes(b)) bs.push(b), cs.push(256 + n++);
    const m: string[] = [];
    bs.forEach((b, i) => (m[b] = String.fromCodePoint(cs[i])));
    return m;
  })();
  const enc = (s: string) => Array.from(new TextEncoder().encode(s), (b) => b2u[b]).join('');
  const words = new Map<string, number>();
  for (const line of CORPUS) for (const m of line.matchAll(re)) words.set(enc(m[0]), (words.get(enc(m[0])) ?? 0) + 1);
  const merges = trainMerges(words, (w) => Array.from(w), 400);
  const tokens = [...b2u];
  for (const [a, b] of merges) if (!tokens.includes(a + b)) tokens.push(a + b);
  const specials = ['<|endoftext|>', '<|im_start|>', '<|im_end|>'];
  const types = [...tokens.map(() => TOKEN_TYPE.normal), ...specials.map(() => TOKEN_TYPE.control)];
  tokens.push(...specials);
  const mergeText = merges.map(([a, b]) => `${a} ${b}`);
  const ours = new GgufTokenizer({ model: 'gpt2', tokens, tokenTypes: types, merges: mergeText, pre: 'qwen2', eosTokenId: tokens.length - 3, addBosToken: false });
  const hf = new HfTokenizer(
    {
      version: '1.0',
      added_tokens: specials.map((content, i) => ({ id: tokens.length - 3 + i, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true })),
      normalizer: null,
      pre_tokenizer: { type: 'Sequence', pretokenizers: [{ type: 'Split', pattern: { Regex: PRE_TOKENIZERS.qwen2 }, behavior: 'Isolated', invert: false }, { type: 'ByteLevel', add_prefix_space: false, trim_offsets: false, use_regex: false }] },
      post_processor: null,
      decoder: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: false, use_regex: false },
      model: { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: '', end_of_word_suffix: '', fuse_unk: false, byte_fallback: false, vocab: Object.fromEntries(tokens.map((t, i) => [t, i])), merges: mergeText },
    },
    {},
  );
  let merged = 0;
  for (const s of [...STRINGS, ...CORPUS, '<|im_start|>user\nhi<|im_end|>']) {
    const ids = ours.encode(s);
    assert.equal(ids, hf.encode(s).ids, `encode ${JSON.stringify(s)}`);
    merged += ids.filter((i) => i >= 256 && i < tokens.length - 3).length;
    assert.is(ours.decode(ids), s, `decode ${JSON.stringify(s)}`);
    if (ids.length > 0) assert.equal(ours.decode(ids), hf.decode(ids, { skip_special_tokens: false }));
  }
  assert.ok(merged > 50, `the vocabulary merges (${merged})`);
});

test('metadata errors are ERR_TOKENIZER naming the key', () => {
  const bad = (d: object, re: RegExp) =>
    assert.throws(() => new GgufTokenizer({ model: 'llama', tokens: ['a'], ...d } as never), (e: MoeError) => e.code === 'ERR_TOKENIZER' && re.test(e.message));
  bad({ model: 'bert' }, /bert.*not supported/);
  bad({ tokens: [] }, /tokenizer\.ggml\.tokens/);
  bad({ scores: [1, 2] }, /tokenizer\.ggml\.scores/);
  bad({ bosTokenId: 5 }, /bos_token_id/);
  bad({ model: 'gpt2' }, /merges/);
});

// ---- streaming text ----------------------------------------------------------------------------

/** A stand-in for a model: generate() yields the given ids (what generateText asks of a model). */
function fakeModel(ids: number[], tokenizer: TextTokenizer): MixtralModel {
  return {
    tokenizer,
    async *generate(_prompt: readonly number[], o: { stopTokens?: number[]; onToken?: (id: number, i: number) => void }) {
      for (let i = 0; i < ids.length; i++) {
        o.onToken?.(ids[i], i);
        yield ids[i];
        if (o.stopTokens?.includes(ids[i])) return;
      }
    },
  } as unknown as MixtralModel;
}

test('streamed text: characters split over byte tokens are held until whole; stop strings split over tokens stop it', async () => {
  const tokens = ['<unk>', '<s>', '</s>', ...Array.from({ length: 256 }, (_, b) => `<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`), '▁Hello', '▁wor', 'ld', '!', '▁##', '#', 'END', '▁more'];
  const types = tokens.map((t, i) => (i === 0 ? TOKEN_TYPE.unknown : i < 3 ? TOKEN_TYPE.control : i < 259 ? TOKEN_TYPE.byte : TOKEN_TYPE.normal));
  const tok = new GgufTokenizer({ model: 'llama', tokens, tokenTypes: types, bosTokenId: 1, eosTokenId: 2 });
  const id = (t: string) => tokens.indexOf(t);
  const bytes = (s: string) => Array.from(new TextEncoder().encode(s), (b) => 3 + b);
  // 🙂 is 4 byte tokens: no piece may end inside it
  const pieces: string[] = [];
  const r1 = await generateTextAll(fakeModel([id('▁Hello'), ...bytes(' 🙂'), id('▁wor'), id('ld'), 2, id('!')], tok), 'x', { onText: (t) => pieces.push(t) });
  assert.equal([r1.text, r1.stopReason], ['Hello 🙂 world', 'eos']);
  assert.ok(pieces.every((p) => !p.includes('\ufffd')), JSON.stringify(pieces));
  assert.is(pieces.join(''), r1.text);
  // the stop string '###END' spans three tokens ('▁##', '#', 'END'): nothing of it is emitted
  const seen: string[] = [];
  for await (const p of generateText(fakeModel([id('▁Hello'), id('▁##'), id('#'), id('END'), id('▁more')], tok), 'x', { stop: ['###END'] })) seen.push(p);
  assert.is(seen.join(''), 'Hello ');
  const r2 = await generateTextAll(fakeModel([id('▁Hello'), id('▁##'), id('#'), id('END'), id('▁more')], tok), 'x', { stop: ['###END'] });
  assert.equal([r2.text, r2.stopReason, r2.tokenIds.length], ['Hello ', 'stop', 4]);
  // a stop string's start that does not complete is emitted in the end
  const r3 = await generateTextAll(fakeModel([id('▁Hello'), id('▁##'), id('!')], tok), 'x', { stop: ['###END'] });
  assert.equal([r3.text, r3.stopReason], ['Hello ##!', 'length']);
  // a stop string inside a multi-byte run: 'é' is two byte tokens
  const r4 = await generateTextAll(fakeModel([id('▁Hello'), ...bytes('é'), id('!'), id('▁more')], tok), 'x', { stop: ['é!'] });
  assert.equal([r4.text, r4.stopReason], ['Hello', 'stop']);
  // errors: no tokenizer, bad stop
  const noTok = { tokenizer: null, generate: fakeModel([], tok).generate } as unknown as MixtralModel;
  let err: unknown;
  try {
    await generateTextAll(noTok, 'x');
  } catch (e) {
    err = e;
  }
  assert.ok(err instanceof MoeError && err.code === 'ERR_TOKENIZER');
  err = undefined;
  try {
    await generateTextAll(fakeModel([], tok), 'x', { stop: [''] });
  } catch (e) {
    err = e;
  }
  assert.ok(err instanceof TypeError);
});

test('chat messages go through the chat template; its special tokens are tokens', () => {
  const tokens = ['<unk>', '<s>', '</s>', '[INST]', '[/INST]', '▁', 'h', 'i'];
  const types = [TOKEN_TYPE.unknown, TOKEN_TYPE.control, TOKEN_TYPE.control, TOKEN_TYPE.control, TOKEN_TYPE.control, 1, 1, 1];
  const tok = new GgufTokenizer({
    model: 'llama', tokens, tokenTypes: types, bosTokenId: 1, eosTokenId: 2,
    chatTemplate: "{{ bos_token }}{% for m in messages %}{% if m.role == 'user' %}[INST] {{ m.content }} [/INST]{% else %}{{ m.content }}{{ eos_token }}{% endif %}{% endfor %}",
  });
  const text = tok.applyChatTemplate([{ role: 'user', content: 'hi' }, { role: 'assistant', content: 'hi' }, { role: 'user', content: 'hi' }]);
  assert.is(text, '<s>[INST] hi [/INST]hi</s>[INST] hi [/INST]');
  // a '▁' is prefixed to each text fragment (after a special token too), as llama.cpp and the legacy Hugging Face normalizer do
  const frag = ['▁', '▁', 'h', 'i', '▁'];
  assert.equal(tok.tokenize(text, { addSpecialTokens: false }), ['<s>', '[INST]', ...frag, '[/INST]', '▁', 'h', 'i', '</s>', '[INST]', ...frag, '[/INST]']);
  assert.throws(() => tok.applyChatTemplate([{ role: 'user' }] as never), TypeError);
  const broken = new GgufTokenizer({ model: 'llama', tokens, chatTemplate: '{% for %}' });
  assert.throws(() => broken.applyChatTemplate([{ role: 'user', content: 'x' }]), (e: MoeError) => e.code === 'ERR_TOKENIZER');
});

test.run();
