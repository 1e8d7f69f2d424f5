/**
 * Text in, text out: a prompt (text, or chat messages rendered by the tokenizer's chat template)
 * encoded, `model.generate` run on the ids, and the new tokens streamed as text. Text is emitted
 * only once it is final: a character whose UTF-8 bytes are split over byte-fallback tokens is held
 * until complete, and text that may be the start of a stop string is held until it is known not
 * to be one. Stop strings are matched on the decoded text, so one split over several tokens (or
 * inside one token with more after it) stops generation, and the text before it is all that is
 * emitted.
 */
import { describe, MoeError, typeError } from '../core/errors.js';
import { checkOptions } from '../core/options.js';
import { checkMessages, renderChatTemplate, type ChatMessage, type ChatTemplateOptions } from '../hf/chat.js';
import type { DecodeOptions, EncodeOptions } from '../hf/tokenizer.js';
import type { GenerateOptions, MixtralModel } from './model.js';

export type { ChatMessage };

/** What text generation needs of a tokenizer: Tokenizer (tokenizer.json) and GgufTokenizer both are. */
export interface TextTokenizer {
  readonly bosTokenId: number | null;
  readonly eosTokenId: number | null;
  /** The Jinja chat template, or null. */
  readonly chatTemplate: string | null;
  encode(text: string, options?: EncodeOptions): number[];
  decode(ids: ArrayLike<number>, options?: DecodeOptions): string;
  applyChatTemplate(messages: readonly ChatMessage[], options?: ChatTemplateOptions): string;
}

export interface GenerateTextOptions extends GenerateOptions {
  /** Default: the model's (`model.tokenizer`, set by MixtralModel.load). */
  tokenizer?: TextTokenizer;
  /** Generation ends before the first of these strings (which is not emitted). */
  stop?: readonly string[];
  /** End at the tokenizer's end-of-sequence token (default true). */
  stopAtEos?: boolean;
  /** A chat template to use instead of the tokenizer's (messages only). */
  chatTemplate?: string;
  /** Called with each piece of text as it is emitted. */
  onText?: (text: string) => void;
}

export interface GenerateTextResult {
  /** The whole new text (what was streamed). */
  text: string;
  /** The new token ids (the stop token included; with a stop string, up to the token that completed it). */
  tokenIds: number[];
  promptIds: number[];
  /** 'eos': an end token; 'stop': a stop string; 'length': maxNewTokens. */
  stopReason: 'eos' | 'stop' | 'length';
}

/** A prompt: text, chat messages, or token ids already encoded. */
export type TextPrompt = string | readonly ChatMessage[] | readonly number[] | Int32Array;

/** The prompt's token ids: text encoded with the tokenizer's special tokens, messages through the chat template, ids as they are. */
export function encodePrompt(tok: TextTokenizer, input: TextPrompt, chatTemplate?: string): number[] {
  if (typeof input === 'string') return tok.encode(input);
  if (input instanceof Int32Array || (Array.isArray(input) && typeof input[0] === 'number')) return Array.from(input as ArrayLike<number>);
  const msgs = checkMessages(input, 'input');
  const text =
    chatTemplate !== undefined
      ? renderChatTemplate(chatTemplate, msgs, {
          bosToken: tok.bosTokenId === null ? '' : tok.decode([tok.bosTokenId]),
          eosToken: tok.eosTokenId === null ? '' : tok.decode([tok.eosTokenId]),
        })
      : tok.applyChatTemplate(msgs);
  // the template writes the special tokens (bos included) itself, as transformers' apply_chat_template
  return tok.encode(text, { addSpecialTokens: false });
}

/** The longest end of `text` that is the start of one of `stops` (held back until known). */
function pendingStop(text: string, stops: readonly string[], from: number): number {
  let keep = 0;
  for (const s of stops)
    for (let n = Math.min(s.length - 1, text.length - from); n > keep; n--)
      if (text.endsWith(s.slice(0, n))) {
        keep = n;
        break;
      }
  return keep;
}

/** Checks `stop` options: an array of non-empty strings. */
export function checkStops(v: unknown, name = 'options.stop'): string[] {
  const stops = v ?? [];
  if (!Array.isArray(stops) || !stops.every((s) => typeof s === 'string' && s !== '')) throw typeError(`${name} must be an array of non-empty strings, got ${describe(v)}`);
  return stops as string[];
}

/** What TextStream.push says of one token. */
export interface TextStep {
  /** Text that became final with this token ('' while held back). */
  text: string;
  /** The stop string that ended the text here (its text and all after it are dropped), or null. */
  stop: string | null;
}

/**
 * Incremental detokenization of a stream of token ids, with stop strings: each `push(id)` returns
 * the text that became final. A character whose UTF-8 bytes are split over byte-fallback tokens is
 * held until whole; text that may be the start of a stop string is held until it is known not to
 * be one; a stop string (matched on the text, so across token boundaries too) ends the stream, and
 * only the text before it is emitted. Each token is decoded in a short window of the tokens before
 * it (vLLM's prefix/read offsets), so the cost per token does not grow with the sequence. `context`
 * (e.g. the prompt's ids) is decoded as the start of that window but never emitted, so the first
 * new word keeps the space the tokenizer writes before it in context.
 */
export class TextStream {
  readonly #tok: TextTokenizer;
  readonly #stops: readonly string[];
  readonly #ids: number[];
  #prefix: number;
  #read: number;
  /** All final text decoded so far (emitted, or held for a possible stop string). */
  #text = '';
  #emitted = 0;
  #stopped: string | null = null;

  constructor(tokenizer: TextTokenizer, options?: { stop?: readonly string[]; context?: readonly number[] }) {
    const o = checkOptions(options);
    this.#tok = tokenizer;
    this.#stops = checkStops(o.stop);
    // a few context tokens are enough for the decoder's view of the first new one (vLLM takes 5)
    const context = (o.context as readonly number[] | undefined) ?? [];
    this.#ids = context.slice(Math.max(0, context.length - 5));
    this.#prefix = 0;
    this.#read = this.#ids.length;
  }

  /** The text emitted so far. */
  get text(): string {
    return this.#text.slice(0, this.#emitted);
  }

  /** The stop string that ended the stream, or null. */
  get stopped(): string | null {
    return this.#stopped;
  }

  /** Adds one token (a special token adds no text). After a stop, pushing is a no-op. */
  push(id: number): TextStep {
    if (this.#stopped !== null) return { text: '', stop: this.#stopped };
    this.#ids.push(id);
    this.#advance(false);
    return this.#emit(false);
  }

  /** The end of the stream: whatever was held back (an incomplete character, a stop string's start). */
  flush(): string {
    if (this.#stopped !== null) return '';
    this.#advance(true);
    return this.#emit(true).text;
  }

  #advance(force: boolean): void {
    const ids = this.#ids;
    if (this.#read === ids.length) return;
    const opts = { skipSpecialTokens: true };
    // (the tokenizer refuses to decode no ids)
    const before = this.#read > this.#prefix ? this.#tok.decode(ids.slice(this.#prefix, this.#read), opts) : '';
    const after = this.#tok.decode(ids.slice(this.#prefix), opts);
    // an incomplete UTF-8 character decodes as U+FFFD: wait for the rest of its bytes
    if (!force && after.endsWith('\ufffd')) return;
    if (after.length > before.length) this.#text += after.slice(before.length);
    this.#prefix = this.#read;
    this.#read = ids.length;
  }

  #emit(final: boolean): TextStep {
    const text = this.#text;
    // a stop string anywhere past what could already have been emitted ends it here
    let cut = -1;
    let which: string | null = null;
    for (const s of this.#stops) {
      const at = text.indexOf(s, Math.max(0, this.#emitted - s.length + 1));
      if (at >= 0 && (cut < 0 || at < cut)) [cut, which] = [at, s];
    }
    if (cut >= 0) {
      const piece = text.slice(this.#emitted, Math.max(cut, this.#emitted));
      this.#emitted = Math.max(cut, this.#emitted);
      this.#text = text.slice(0, this.#emitted);
      this.#stopped = which;
      return { text: piece, stop: which };
    }
    const upTo = final ? text.length : text.length - pendingStop(text, this.#stops, this.#emitted);
    const piece = upTo > this.#emitted ? text.slice(this.#emitted, upTo) : '';
    this.#emitted = Math.max(this.#emitted, upTo);
    return { text: piece, stop: null };
  }
}

/**
 * Streams the text `model` generates after `input` (a string, or chat messages for the chat
 * template). The generator's return value (for `next()` callers; `generateTextAll` resolves to it)
 * says why it ended.
 */
export async function* generateText(
  model: MixtralModel,
  input: TextPrompt,
  options?: GenerateTextOptions,
): AsyncGenerator<string, GenerateTextResult, undefined> {
  const o = checkOptions(options);
  const tok = (o.tokenizer as TextTokenizer | undefined) ?? model.tokenizer;
  if (!tok) throw new MoeError('the model has no tokenizer (no tokenizer.json beside the checkpoint, no tokenizer in the GGUF): pass options.tokenizer', 'ERR_TOKENIZER');
  if (typeof tok.encode !== 'function' || typeof tok.decode !== 'function') throw typeError(`options.tokenizer must be a Tokenizer or GgufTokenizer, got ${describe(tok)}`);
  if (typeof input !== 'string' && !Array.isArray(input) && !(input instanceof Int32Array)) throw typeError(`input must be a string, an array of chat messages or token ids, got ${describe(input)}`);
  const stops = checkStops(o.stop);
  if (o.onText !== undefined && typeof o.onText !== 'function') throw typeError(`options.onText must be a function, got ${describe(o.onText)}`);
  if (o.chatTemplate !== undefined && typeof o.chatTemplate !== 'string') throw typeError(`options.chatTemplate must be a string, got ${describe(o.chatTemplate)}`);
  const stopAtEos = o.stopAtEos ?? true;
  if (typeof stopAtEos !== 'boolean') throw typeError(`options.stopAtEos must be a boolean, got ${describe(stopAtEos)}`);
  const promptIds = encodePrompt(tok, input, o.chatTemplate as string | undefined);
  const stopTokens = [...((o.stopTokens as number[] | undefined) ?? [])];
  if (stopAtEos && tok.eosTokenId !== null) stopTokens.push(tok.eosTokenId);
  const { tokenizer: _t, stop: _s, stopAtEos: _e, chatTemplate: _c, onText, ...gen } = o;
  const onTextFn = onText as ((t: string) => void) | undefined;
  const ids: number[] = [];
  const stream = new TextStream(tok, { stop: stops });
  let stopReason: GenerateTextResult['stopReason'] = 'length';
  const stopSet = new Set(stopTokens);
  for await (const id of model.generate(promptIds, { ...(gen as GenerateOptions), stopTokens })) {
    ids.push(id);
    const step = stream.push(id);
    if (step.text) {
      onTextFn?.(step.text);
      yield step.text;
    }
    if (step.stop !== null) return { text: stream.text, tokenIds: ids, promptIds, stopReason: 'stop' };
    if (stopSet.has(id)) {
      stopReason = 'eos';
      break;
    }
  }
  const rest = stream.flush();
  if (rest) {
    onTextFn?.(rest);
    yield rest;
  }
  return { text: stream.text, tokenIds: ids, promptIds, stopReason };
}

/** `generateText` run to its end. */
export async function generateTextAll(model: MixtralModel, input: TextPrompt, options?: GenerateTextOptions): Promise<GenerateTextResult> {
  const it = generateText(model, input, options);
  for (;;) {
    const r = await it.next();
    if (r.done) return r.value;
  }
}
