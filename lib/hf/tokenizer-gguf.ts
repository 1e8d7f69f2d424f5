/**
 * The tokenizer of a GGUF file, from its metadata (tokenizer.ggml.*), as llama.cpp builds it:
 *
 *   'llama'  SentencePiece-style: spaces as '▁', a '▁' before the text (add_space_prefix, default
 *            true), then the adjacent pair whose joined text is a token of the highest score is
 *            merged, repeatedly (ties: the leftmost); a piece that is not a token falls back to its
 *            bytes <0xXX> (or the unknown token).
 *   'gpt2'   byte-level BPE: the text split by the pre-tokenizer regex of tokenizer.ggml.pre
 *            ('default', 'qwen2', 'llama-bpe'), each piece's UTF-8 bytes mapped to GPT-2's
 *            printable characters, then merged by the rank of tokenizer.ggml.merges.
 *
 * Control, user-defined and unknown tokens (tokenizer.ggml.token_type 3, 4, 2) written in the text
 * are matched first, longest first, as special tokens (as Hugging Face matches added tokens).
 * bos/eos/unknown/padding ids and add_bos_token / add_eos_token come from the metadata; the chat
 * template from tokenizer.chat_template.
 */
import { describe, MoeError, typeError } from '../core/errors.js';
import { checkOptions } from '../core/options.js';
import { renderChatTemplate, type ChatMessage, type ChatTemplateOptions } from './chat.js';
import type { GgufFile } from './gguf.js';
import type { DecodeOptions, EncodeOptions } from './tokenizer.js';

/** tokenizer.ggml.token_type values (llama.cpp's llama_token_type). */
export const TOKEN_TYPE = { normal: 1, unknown: 2, control: 3, userDefined: 4, unused: 5, byte: 6 } as const;

/** GPT-2's byte -> printable character map (bytes_to_unicode). */
function bytesToUnicode(): string[] {
  const bs: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) bs.push(b);
  for (let b = 0xa1; b <= 0xac; b++) bs.push(b);
  for (let b = 0xae; b <= 0xff; b++) bs.push(b);
  const cs = [...bs];
  let n = 0;
  for (let b = 0; b < 256; b++)
    if (!bs.includes(b)) {
      bs.push(b);
      cs.push(256 + n++);
    }
  const out = new Array<string>(256);
  bs.forEach((b, i) => (out[b] = String.fromCodePoint(cs[i])));
  return out;
}
const BYTE_CHAR = bytesToUnicode();
const CHAR_BYTE = new Map(BYTE_CHAR.map((c, b) => [c, b]));

/** Pre-tokenizer regexes of tokenizer.ggml.pre (llama.cpp's llama-vocab.cpp / the Hugging Face tokenizer.json of each family). */
export const PRE_TOKENIZERS: Readonly<Record<string, string>> = {
  default: "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+",
  qwen2: "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
  'llama-bpe': "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
};
const PRE_ALIASES: Record<string, string> = { gpt2: 'default', gpt: 'default', 'gpt-2': 'default', llama3: 'llama-bpe', qwen: 'qwen2' };

/** The tokenizer metadata of a GGUF file, as plain data (also what convert writes). */
export interface GgufTokenizerData {
  model: 'llama' | 'gpt2';
  tokens: string[];
  /** 'llama': one score per token (higher merges first). */
  scores?: ArrayLike<number>;
  /** llama.cpp token types (TOKEN_TYPE); default normal. */
  tokenTypes?: ArrayLike<number>;
  /** 'gpt2': merges "a b", highest priority first. */
  merges?: string[];
  /** 'gpt2': tokenizer.ggml.pre. */
  pre?: string;
  bosTokenId?: number | null;
  eosTokenId?: number | null;
  unknownTokenId?: number | null;
  paddingTokenId?: number | null;
  addBosToken?: boolean;
  addEosToken?: boolean;
  addSpacePrefix?: boolean;
  chatTemplate?: string | null;
}

interface Bigram {
  left: number;
  right: number;
  score: number;
  size: number;
}

/** A min-heap on a comparator. */
class Heap<T> {
  #a: T[] = [];
  constructor(readonly before: (x: T, y: T) => boolean) {}
  get size() {
    return this.#a.length;
  }
  push(v: T) {
    const a = this.#a;
    a.push(v);
    let i = a.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!this.before(a[i], a[p])) break;
      [a[i], a[p]] = [a[p], a[i]];
      i = p;
    }
  }
  pop(): T | undefined {
    const a = this.#a;
    if (a.length === 0) return undefined;
    const top = a[0];
    const last = a.pop()!;
    if (a.length > 0) {
      a[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < a.length && this.before(a[l], a[m])) m = l;
        if (r < a.length && this.before(a[r], a[m])) m = r;
        if (m === i) break;
        [a[i], a[m]] = [a[m], a[i]];
        i = m;
      }
    }
    return top;
  }
}

const utf8 = new TextEncoder();
const utf8Decode = new TextDecoder('utf-8', { fatal: false, ignoreBOM: true });

export class GgufTokenizer {
  /** 'llama' (SentencePiece-style) or 'gpt2' (byte-level BPE). */
  readonly model: 'llama' | 'gpt2';
  /** The pre-tokenizer used ('gpt2' model only). */
  readonly pre: string | null;
  readonly bosTokenId: number | null;
  readonly eosTokenId: number | null;
  readonly unknownTokenId: number | null;
  readonly paddingTokenId: number | null;
  readonly addBosToken: boolean;
  readonly addEosToken: boolean;
  readonly addSpacePrefix: boolean;
  /** tokenizer.chat_template (Jinja), or null. */
  readonly chatTemplate: string | null;
  readonly vocabSize: number;
  readonly #tokens: string[];
  readonly #ids: Map<string, number>;
  readonly #scores: Float32Array;
  readonly #types: Uint8Array;
  readonly #ranks: Map<string, number>;
  readonly #byteIds: Int32Array;
  readonly #special: { text: string; id: number }[];
  readonly #regex: RegExp | null;
  readonly #cache = new Map<string, number[]>();

  constructor(data: GgufTokenizerData, where = 'tokenizer') {
    const d = checkOptions(data, 'data') as unknown as GgufTokenizerData;
    const bad = (msg: string) => new MoeError(`${where}: ${msg}`, 'ERR_TOKENIZER');
    if (d.model !== 'llama' && d.model !== 'gpt2') throw bad(`tokenizer.ggml.model ${describe(d.model)} is not supported ('llama' and 'gpt2' are)`);
    if (!Array.isArray(d.tokens) || d.tokens.length === 0 || !d.tokens.every((t) => typeof t === 'string')) throw bad('tokenizer.ggml.tokens must be a non-empty array of strings');
    const V = d.tokens.length;
    this.model = d.model;
    this.vocabSize = V;
    this.#tokens = d.tokens;
    this.#ids = new Map();
    // the first id of a text wins, as in llama.cpp (duplicates: later ids are reachable by id only)
    d.tokens.forEach((t, i) => {
      if (!this.#ids.has(t)) this.#ids.set(t, i);
    });
    const arr = (v: ArrayLike<number> | undefined, name: string) => {
      if (v === undefined) return undefined;
      if (typeof v !== 'object' || v === null || v.length !== V) throw bad(`${name} must have one entry per token (${V}), got ${describe(v)}`);
      return v;
    };
    const scores = arr(d.scores, 'tokenizer.ggml.scores');
    this.#scores = scores ? Float32Array.from(scores) : new Float32Array(V);
    const types = arr(d.tokenTypes, 'tokenizer.ggml.token_type');
    this.#types = types ? Uint8Array.from(types, (t) => (t >= 1 && t <= 6 ? t : TOKEN_TYPE.normal)) : new Uint8Array(V).fill(TOKEN_TYPE.normal);
    const id = (v: unknown, name: string): number | null => {
      if (v === undefined || v === null) return null;
      if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v >= V) throw bad(`${name} must be a token id in [0, ${V}), got ${describe(v)}`);
      return v;
    };
    this.bosTokenId = id(d.bosTokenId, 'tokenizer.ggml.bos_token_id');
    this.eosTokenId = id(d.eosTokenId, 'tokenizer.ggml.eos_token_id');
    this.unknownTokenId = id(d.unknownTokenId, 'tokenizer.ggml.unknown_token_id');
    this.paddingTokenId = id(d.paddingTokenId, 'tokenizer.ggml.padding_token_id');
    this.addBosToken = d.addBosToken ?? (d.model === 'llama' && this.bosTokenId !== null);
    this.addEosToken = d.addEosToken ?? false;
    this.addSpacePrefix = d.addSpacePrefix ?? d.model === 'llama';
    this.chatTemplate = typeof d.chatTemplate === 'string' ? d.chatTemplate : null;
    this.#byteIds = new Int32Array(256).fill(-1);
    if (d.model === 'llama') {
      for (let b = 0; b < 256; b++) {
        const t = this.#ids.get(`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`);
        if (t !== undefined) this.#byteIds[b] = t;
      }
      this.#ranks = new Map();
      this.pre = null;
      this.#regex = null;
    } else {
      if (!Array.isArray(d.merges) || !d.merges.every((m) => typeof m === 'string')) throw bad('tokenizer.ggml.merges must be an array of strings for a gpt2 tokenizer');
      this.#ranks = new Map(d.merges.map((m, i) => [m, i] as [string, number]).reverse());
      const pre = d.pre ?? 'default';
      const name = PRE_ALIASES[pre] ?? pre;
      this.pre = Object.hasOwn(PRE_TOKENIZERS, name) ? name : `default (tokenizer.ggml.pre '${pre}' is not known here)`;
      this.#regex = new RegExp(PRE_TOKENIZERS[Object.hasOwn(PRE_TOKENIZERS, name) ? name : 'default'], 'gu');
    }
    this.#special = [];
    for (let i = 0; i < V; i++) {
      const t = this.#types[i];
      if ((t === TOKEN_TYPE.control || t === TOKEN_TYPE.userDefined || t === TOKEN_TYPE.unknown) && this.#tokens[i] !== '') this.#special.push({ text: this.#tokens[i], id: i });
    }
    this.#special.sort((a, b) => b.text.length - a.text.length || a.id - b.id);
  }

  /** The tokenizer of a GGUF file's metadata; ERR_TOKENIZER naming the key when it is unusable. */
  static fromGguf(file: GgufFile): GgufTokenizer {
    const where = file.path;
    const g = (k: string) => file.get(`tokenizer.ggml.${k}`);
    const num = (k: string) => {
      const v = g(k);
      return typeof v === 'number' ? v : undefined;
    };
    const bool = (k: string) => {
      const v = g(k);
      return typeof v === 'boolean' ? v : undefined;
    };
    const tmpl = file.get('tokenizer.chat_template');
    return new GgufTokenizer(
      {
        model: g('model') as 'llama',
        tokens: g('tokens') as string[],
        scores: g('scores') as Float32Array | undefined,
        tokenTypes: g('token_type') as Int32Array | undefined,
        merges: g('merges') as string[] | undefined,
        pre: typeof g('pre') === 'string' ? (g('pre') as string) : undefined,
        bosTokenId: num('bos_token_id'),
        eosTokenId: num('eos_token_id'),
        unknownTokenId: num('unknown_token_id'),
        paddingTokenId: num('padding_token_id'),
        addBosToken: bool('add_bos_token'),
        addEosToken: bool('add_eos_token'),
        addSpacePrefix: bool('add_space_prefix'),
        chatTemplate: typeof tmpl === 'string' ? tmpl : null,
      },
      where,
    );
  }

  tokenToId(token: string): number | null {
    return this.#ids.get(token) ?? null;
  }

  idToToken(id: number): string | null {
    return Number.isInteger(id) && id >= 0 && id < this.vocabSize ? this.#tokens[id] : null;
  }

  /** Token ids of `text`: bos first when add_bos_token (and eos last when add_eos_token), unless addSpecialTokens is false. */
  encode(text: string, options?: EncodeOptions): number[] {
    if (typeof text !== 'string') throw typeError(`text must be a string, got ${describe(text)}`);
    const o = checkOptions(options);
    const special = o.addSpecialTokens !== false;
    const out: number[] = [];
    if (special && this.addBosToken && this.bosTokenId !== null) out.push(this.bosTokenId);
    for (const part of this.#partition(text)) {
      if (typeof part === 'number') out.push(part);
      else if (this.model === 'llama') this.#spm(this.addSpacePrefix ? ' ' + part : part, out);
      else this.#bpe(part, out);
    }
    if (special && this.addEosToken && this.eosTokenId !== null) out.push(this.eosTokenId);
    return out;
  }

  /** The token strings of `text` (for display). */
  tokenize(text: string, options?: EncodeOptions): string[] {
    return this.encode(text, options).map((i) => this.#tokens[i]);
  }

  /**
   * The text of token ids: byte tokens joined into UTF-8 (an incomplete sequence becomes U+FFFD),
   * '▁' as spaces ('llama': one leading space dropped, as SentencePiece does); control tokens as
   * their text unless skipSpecialTokens.
   */
  decode(ids: ArrayLike<number>, options?: DecodeOptions): string {
    if (ids === null || typeof ids !== 'object' || typeof (ids as ArrayLike<number>).length !== 'number')
      throw typeError(`ids must be an array of token ids, got ${describe(ids)}`);
    const o = checkOptions(options);
    const skip = o.skipSpecialTokens === true;
    const bytes: number[] = [];
    const pushText = (s: string) => {
      for (const b of utf8.encode(s)) bytes.push(b);
    };
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i];
      if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) throw typeError(`ids[${i}] must be a token id in [0, ${this.vocabSize}), got ${describe(id)}`);
      const t = this.#types[id];
      const text = this.#tokens[id];
      if (t === TOKEN_TYPE.control || t === TOKEN_TYPE.unknown) {
        if (!skip) pushText(text);
        continue;
      }
      if (t === TOKEN_TYPE.userDefined) {
        pushText(text);
        continue;
      }
      if (this.model === 'llama') {
        const m = t === TOKEN_TYPE.byte ? /^<0x([0-9A-Fa-f]{2})>$/.exec(text) : null;
        if (m) bytes.push(parseInt(m[1], 16));
        else pushText(text.replaceAll('▁', ' '));
      } else {
        for (const ch of text) {
          const b = CHAR_BYTE.get(ch);
          if (b !== undefined) bytes.push(b);
          else pushText(ch);
        }
      }
    }
    let s = utf8Decode.decode(Uint8Array.from(bytes));
    if (this.model === 'llama' && this.addSpacePrefix && s.startsWith(' ')) s = s.slice(1);
    return s;
  }

  /** The chat template rendered for `messages` (tokenizer.chat_template, with bos_token and eos_token). */
  applyChatTemplate(messages: readonly ChatMessage[], options?: ChatTemplateOptions): string {
    if (this.chatTemplate === null) throw new MoeError('the tokenizer has no chat template (tokenizer.chat_template); pass options.chatTemplate', 'ERR_TOKENIZER');
    const tok = (id: number | null) => (id === null ? '' : this.#tokens[id]);
    return renderChatTemplate(this.chatTemplate, messages, { bosToken: tok(this.bosTokenId), eosToken: tok(this.eosTokenId), ...checkOptions(options) });
  }

  // ---- internals ----

  /** The text split into raw fragments and special-token ids. */
  #partition(text: string): (string | number)[] {
    if (this.#special.length === 0 || text === '') return text === '' ? [] : [text];
    const out: (string | number)[] = [];
    let start = 0;
    let i = 0;
    while (i < text.length) {
      let hit: { text: string; id: number } | undefined;
      for (const s of this.#special) {
        if (text.startsWith(s.text, i)) {
          hit = s;
          break;
        }
      }
      if (!hit) {
        i++;
        continue;
      }
      if (i > start) out.push(text.slice(start, i));
      out.push(hit.id);
      i += hit.text.length;
      start = i;
    }
    if (start < text.length) out.push(text.slice(start));
    return out;
  }

  /** llama.cpp's llm_tokenizer_spm: merge by score, then resegment with byte fallback. */
  #spm(raw: string, out: number[]): void {
    const text = raw.replaceAll(' ', '▁');
    const sym = Array.from(text); // code points
    const n = sym.length;
    if (n === 0) return;
    const prev = Int32Array.from({ length: n }, (_, i) => i - 1);
    const next = Int32Array.from({ length: n }, (_, i) => (i + 1 < n ? i + 1 : -1));
    const textOf = [...sym];
    const heap = new Heap<Bigram>((a, b) => a.score > b.score || (a.score === b.score && a.left < b.left));
    const tryAdd = (l: number, r: number) => {
      if (l < 0 || r < 0) return;
      const id = this.#ids.get(textOf[l] + textOf[r]);
      if (id === undefined) return;
      heap.push({ left: l, right: r, score: this.#scores[id], size: textOf[l].length + textOf[r].length });
    };
    for (let i = 1; i < n; i++) tryAdd(i - 1, i);
    while (heap.size > 0) {
      const b = heap.pop()!;
      const l = b.left;
      const r = b.right;
      // stale: one side already merged into something else
      if (textOf[l] === '' || textOf[r] === '' || textOf[l].length + textOf[r].length !== b.size || next[l] !== r) continue;
      textOf[l] += textOf[r];
      textOf[r] = '';
      next[l] = next[r];
      if (next[r] >= 0) prev[next[r]] = l;
      tryAdd(prev[l], l);
      tryAdd(l, next[l]);
    }
    for (let i = 0; i >= 0 && i < n; i = next[i]) {
      const id = this.#ids.get(textOf[i]);
      if (id !== undefined) {
        out.push(id);
        continue;
      }
      for (const b of utf8.encode(textOf[i])) {
        const t = this.#byteIds[b];
        if (t >= 0) out.push(t);
        else if (this.unknownTokenId !== null) out.push(this.unknownTokenId);
      }
    }
  }

  /** Byte-level BPE over each pre-tokenizer piece. */
  #bpe(text: string, out: number[]): void {
    for (const m of text.matchAll(this.#regex!)) {
      const piece = m[0];
      if (piece === '') continue;
      let ids = this.#cache.get(piece);
      if (!ids) {
        ids = this.#bpeWord(Array.from(utf8.encode(piece), (b) => BYTE_CHAR[b]));
        if (this.#cache.size < 100_000) this.#cache.set(piece, ids);
      }
      for (const id of ids) out.push(id);
    }
  }

  #bpeWord(word: string[]): number[] {
    const parts = [...word];
    for (;;) {
      let best = -1;
      let bestRank = Infinity;
      for (let i = 0; i + 1 < parts.length; i++) {
        const r = this.#ranks.get(`${parts[i]} ${parts[i + 1]}`);
        if (r !== undefined && r < bestRank) {
          bestRank = r;
          best = i;
        }
      }
      if (best < 0) break;
      const a = parts[best];
      const b = parts[best + 1];
      // merge every occurrence of the pair, left to right (as the reference BPE does)
      const merged: string[] = [];
      for (let i = 0; i < parts.length; ) {
        if (i + 1 < parts.length && parts[i] === a && parts[i + 1] === b) {
          merged.push(a + b);
          i += 2;
        } else merged.push(parts[i++]);
      }
      parts.splice(0, parts.length, ...merged);
    }
    const ids: number[] = [];
    for (const p of parts) {
      const id = this.#ids.get(p);
      if (id !== undefined) ids.push(id);
      else if (this.unknownTokenId !== null) ids.push(this.unknownTokenId);
    }
    return ids;
  }
}
