/**
 * Text to token ids and back with a Hugging Face `tokenizer.json` (and `tokenizer_config.json` when
 * present), through @huggingface/tokenizers: pure JavaScript, no native code, nothing fetched; it
 * reads the JSON given to it. Mixtral's tokenizer (BPE with byte fallback, '▁' for spaces, <s>
 * prepended) is one it implements.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, MoeError, typeError } from '../core/errors.js';
import { checkOptions } from '../core/options.js';
import { renderChatTemplate, type ChatMessage, type ChatTemplateOptions } from './chat.js';

/** The part of @huggingface/tokenizers' Tokenizer used here. */
interface HfTokenizerImpl {
  encode(text: string, options?: { add_special_tokens?: boolean }): { ids: number[]; tokens: string[] };
  decode(ids: number[], options?: { skip_special_tokens?: boolean }): string;
  token_to_id(token: string): number | undefined;
  id_to_token(id: number): string | undefined;
}
type HfTokenizerCtor = new (tokenizer: object, config: object) => HfTokenizerImpl;

let ctor: HfTokenizerCtor | undefined;
function tokenizerClass(): HfTokenizerCtor {
  // loaded on first use: the package's other entry points never pay for it
  ctor ??= (require('@huggingface/tokenizers') as { Tokenizer: HfTokenizerCtor }).Tokenizer;
  return ctor;
}

export interface EncodeOptions {
  /** Add the special tokens of the tokenizer's post-processor (Mixtral: <s> first). Default true. */
  addSpecialTokens?: boolean;
}

export interface DecodeOptions {
  /** Leave out special tokens (<s>, </s>, ...). Default false. */
  skipSpecialTokens?: boolean;
}

function readJson(file: string): object {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new MoeError(`${file}: cannot read (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`, 'ERR_FILE_NOT_FOUND');
  }
  try {
    return checkObject(JSON.parse(text), file);
  } catch (e) {
    if (e instanceof MoeError) throw e;
    throw new MoeError(`${file}: the JSON does not parse (${(e as Error).message})`, 'ERR_TOKENIZER');
  }
}

function checkObject(v: unknown, where: string): object {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new MoeError(`${where}: must be a JSON object, got ${describe(v)}`, 'ERR_TOKENIZER');
  return v;
}

/** A token given in tokenizer_config.json as a string or as {content}. */
function tokenName(v: unknown): string | null {
  if (typeof v === 'string') return v;
  if (v && typeof v === 'object' && typeof (v as { content?: unknown }).content === 'string') return (v as { content: string }).content;
  return null;
}

export class Tokenizer {
  /** Id of the beginning-of-sequence token, when the config names one that the vocabulary has. */
  readonly bosTokenId: number | null;
  /** Id of the end-of-sequence token (generation stops there). */
  readonly eosTokenId: number | null;
  /** tokenizer_config.json's chat_template (Jinja), or null. */
  readonly chatTemplate: string | null;
  readonly #impl: HfTokenizerImpl;
  readonly #bos: string;
  readonly #eos: string;

  /** From the parsed tokenizer.json and (optional) tokenizer_config.json objects. */
  constructor(tokenizerJson: object, config: object = {}, where = 'tokenizer.json') {
    checkObject(tokenizerJson, where);
    checkObject(config, 'tokenizer config');
    const model = (tokenizerJson as { model?: unknown }).model;
    if (model === null || typeof model !== 'object') throw new MoeError(`${where}: has no "model" object; is it a Hugging Face tokenizer.json?`, 'ERR_TOKENIZER');
    try {
      this.#impl = new (tokenizerClass())(tokenizerJson, config);
    } catch (e) {
      throw new MoeError(`${where}: cannot build the tokenizer (${(e as Error).message})`, 'ERR_TOKENIZER');
    }
    const c = config as Record<string, unknown>;
    const id = (v: unknown) => {
      const name = tokenName(v);
      return name === null ? null : (this.#impl.token_to_id(name) ?? null);
    };
    this.bosTokenId = id(c.bos_token);
    this.eosTokenId = id(c.eos_token);
    this.#bos = tokenName(c.bos_token) ?? '';
    this.#eos = tokenName(c.eos_token) ?? '';
    // a list of named templates (tokenizer_config.json of some models): the 'default' one
    const t = c.chat_template;
    const named = Array.isArray(t) ? (t as { name?: unknown; template?: unknown }[]).find((x) => x?.name === 'default')?.template : t;
    this.chatTemplate = typeof named === 'string' ? named : null;
  }

  /** Tokenizer.fromFile(dir) when dir (a checkpoint directory) has a tokenizer.json, else null. */
  static fromDirIfPresent(dir: string): Tokenizer | null {
    const file = path.join(dir, 'tokenizer.json');
    return fs.existsSync(file) ? Tokenizer.fromFile(file) : null;
  }

  /** The chat template rendered for `messages` (with bos_token and eos_token from tokenizer_config.json). */
  applyChatTemplate(messages: readonly ChatMessage[], options?: ChatTemplateOptions): string {
    if (this.chatTemplate === null) throw new MoeError('the tokenizer has no chat template (tokenizer_config.json chat_template); pass options.chatTemplate', 'ERR_TOKENIZER');
    return renderChatTemplate(this.chatTemplate, messages, { bosToken: this.#bos, eosToken: this.#eos, ...checkOptions(options) });
  }

  /**
   * Loads `tokenizer.json` (and `tokenizer_config.json` beside it, when present) from a checkpoint
   * directory or the path of a tokenizer.json.
   */
  static fromFile(source: string): Tokenizer {
    if (typeof source !== 'string' || source === '') throw typeError(`source must be a non-empty string, got ${describe(source)}`);
    const isDir = fs.existsSync(source) && fs.statSync(source).isDirectory();
    const file = isDir ? path.join(source, 'tokenizer.json') : source;
    const cfgFile = path.join(path.dirname(file), 'tokenizer_config.json');
    const config = fs.existsSync(cfgFile) ? readJson(cfgFile) : {};
    return new Tokenizer(readJson(file), config, file);
  }

  /** Token ids of `text`. */
  encode(text: string, options?: EncodeOptions): number[] {
    if (typeof text !== 'string') throw typeError(`text must be a string, got ${describe(text)}`);
    const o = checkOptions(options);
    return this.#impl.encode(text, { add_special_tokens: o.addSpecialTokens !== false }).ids;
  }

  /** The token strings of `text` (for display). */
  tokenize(text: string, options?: EncodeOptions): string[] {
    if (typeof text !== 'string') throw typeError(`text must be a string, got ${describe(text)}`);
    const o = checkOptions(options);
    return this.#impl.encode(text, { add_special_tokens: o.addSpecialTokens !== false }).tokens;
  }

  /** The text of token ids. */
  decode(ids: ArrayLike<number>, options?: DecodeOptions): string {
    if (ids === null || typeof ids !== 'object' || typeof (ids as ArrayLike<number>).length !== 'number')
      throw typeError(`ids must be an array of token ids, got ${describe(ids)}`);
    const o = checkOptions(options);
    const list = Array.from(ids);
    list.forEach((v, i) => {
      if (!Number.isInteger(v) || v < 0) throw typeError(`ids[${i}] must be a non-negative integer, got ${describe(v)}`);
    });
    return this.#impl.decode(list, { skip_special_tokens: o.skipSpecialTokens === true });
  }

  tokenToId(token: string): number | null {
    return this.#impl.token_to_id(token) ?? null;
  }

  idToToken(id: number): string | null {
    return this.#impl.id_to_token(id) ?? null;
  }
}
