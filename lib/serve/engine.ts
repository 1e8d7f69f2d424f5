/**
 * The serving engine: one model, many sequences at once, by continuous batching (vLLM's scheduler,
 * reduced to what a Node process needs).
 *
 *   engine.generate(prompt, options)   a Generation: an async iterator of { token, text } chunks,
 *                                      then one { finishReason, stop, usage }
 *   the scheduler loop                 one model.forwardPaged per step over every running sequence's
 *                                      next token (decode) plus chunks of the prompts of newly
 *                                      admitted ones (prefill), up to maxBatchTokens tokens; decode
 *                                      tokens go first, so a long prompt never stalls the streams
 *   the block allocator                each sequence holds the KV blocks its tokens fill, in one pool
 *                                      per layer (model.createKvPools); a new sequence is admitted
 *                                      when the blocks of its prompt are free (it waits, in arrival
 *                                      order, until they are); a sequence that needs a block when
 *                                      none is free takes one from the sequence admitted last, which
 *                                      goes back to the front of the queue and recomputes its tokens
 *                                      when readmitted (the same bits: see below); a finished,
 *                                      cancelled or failed sequence frees its blocks at once
 *   backpressure                       at most maxSequences run and maxQueued wait; past that,
 *                                      generate throws MoeError ERR_OVERLOADED and holds nothing
 *
 * Results do not depend on batching. Every op of the step is row-independent (a token's result is
 * the same bits whatever else is in the batch: embedding, RMS norm, the linear layers, rope, paged
 * attention over the token's own sequence, the MoE layer's routing, expert GEMMs and combine, the
 * LM head on gathered rows), and each sequence samples with its own parameters and the key (seed,
 * position of the new token), never its row in the batch. So a request gives the same tokens alone
 * or among 31 others, chunked or not, preempted or not. On a CUDA backend the GEMMs choose their
 * kernel by the number of rows (a GEMV below 17 rows, tiled kernels above: each row-independent,
 * but not the same bits as each other), so a device engine pads every step to `minStepTokens`
 * (default 17) rows with tokens of a scratch sequence: every step then runs the tiled kernels.
 *
 * Async all the way: the native ops run off the event loop, and the loop yields to it between
 * steps. close() cancels what runs or waits and waits for the step in flight.
 */
import { DeviceTensor } from '../core/device.js';
import { describe, MoeError, rangeError, typeError } from '../core/errors.js';
import { checkOptions, intOption } from '../core/options.js';
import { type FloatType, type Tensor, zeros } from '../core/tensor.js';
import { type ChatMessage } from '../hf/chat.js';
import { type MixtralModel } from '../model/model.js';
import { KvPool, sample, type AnyTensor, type SamplingParams } from '../model/primitives.js';
import { abortError, checkSignal, floatTypeOption, headRows, release, type AbortSignalLike } from '../model/runtime.js';
import { checkStops, encodePrompt, TextStream, type TextTokenizer } from '../model/text.js';

export interface EngineOptions {
  /** Sequences that run at once (each gets a row of every step). Default 16. */
  maxSequences?: number;
  /** Sequences that may wait for a place beyond those running; past it generate throws ERR_OVERLOADED. Default 64. */
  maxQueued?: number;
  /** Tokens one step may run (decode tokens plus prefill chunks); at least maxSequences. Default max(256, maxSequences). */
  maxBatchTokens?: number;
  /** Positions per KV block. Default 16. */
  blockSize?: number;
  /** KV blocks per layer. Default: from kvBytes, else enough for maxSequences sequences of maxContext tokens, at most 1 GiB over all layers (and at least one sequence). */
  numBlocks?: number;
  /** Bytes of KV cache over all layers (instead of numBlocks). */
  kvBytes?: number;
  /** Element type of the KV cache. Default 'float32'. */
  kvType?: FloatType;
  /** The longest sequence, prompt and new tokens (at most the pool's capacity). Default min(model.maxSeq, the pool's capacity). */
  maxContext?: number;
  /** The tokenizer for text prompts and text output. Default model.tokenizer; null: token ids only. */
  tokenizer?: TextTokenizer | null;
  /** Pad each step to this many token rows (see the file's comment). Default 17 on a CUDA backend, 0 on the CPU. */
  minStepTokens?: number;
}

/** A prompt: text (encoded with the tokenizer), chat messages (the chat template) or token ids. */
export type EnginePrompt = string | readonly ChatMessage[] | { tokens: readonly number[] | Int32Array };

export interface EngineGenerateOptions {
  /** New tokens at most. Default 16. */
  maxTokens?: number;
  /** 0 (default): greedy. */
  temperature?: number;
  /** Nucleus sampling, (0, 1]; default 1. */
  topP?: number;
  /** Keep the topK most likely tokens; 0 (default): all. */
  topK?: number;
  /** Drop tokens less likely than minP x the most likely; default 0. */
  minP?: number;
  /** CTRL / Hugging Face repetition penalty over the last penaltyWindow tokens; default 1 (off). */
  repetitionPenalty?: number;
  /** OpenAI's presence penalty over the last penaltyWindow tokens; default 0. */
  presencePenalty?: number;
  /** OpenAI's frequency penalty over the last penaltyWindow tokens; default 0. */
  frequencyPenalty?: number;
  /** Tokens of the sequence (prompt included, as llama.cpp's repeat_last_n) the penalties count. Default 64. */
  penaltyWindow?: number;
  /** Seed of the draws; default 0. Token at position p is drawn with (seed, p): the same alone or batched. */
  seed?: number;
  /** Generation ends before the first of these strings (needs a tokenizer). */
  stop?: readonly string[];
  /** Generation ends after one of these ids. */
  stopTokens?: readonly number[];
  /** End at the tokenizer's end-of-sequence token (default true). */
  stopAtEos?: boolean;
  /** A chat template instead of the tokenizer's (messages only). */
  chatTemplate?: string;
  /** Cancels the sequence: its blocks are freed at once and the iterator throws ERR_ABORTED. */
  signal?: AbortSignalLike;
}

/** One new token and the text that became final with it ('' while held back, e.g. half a character). */
export interface EngineToken {
  token: number;
  text: string;
}

export interface EngineUsage {
  promptTokens: number;
  completionTokens: number;
  totalTokens: number;
}

/** The last chunk of a generation. */
export interface EngineFinish {
  /** 'stop': the end-of-sequence token, a stop token or a stop string; 'length': maxTokens or maxContext. */
  finishReason: 'stop' | 'length';
  /** What stopped it: the stop string, the stop / end-of-sequence token id, or null ('length'). */
  stop: string | number | null;
  usage: EngineUsage;
}

export type EngineChunk = EngineToken | EngineFinish;

/** What the engine holds now and has done. */
export interface EngineStats {
  /** Sequences running (admitted, holding blocks). */
  running: number;
  /** Sequences waiting for a place or for blocks (preempted ones included). */
  waiting: number;
  blockSize: number;
  /** KV blocks per layer (including the step padding's). */
  totalBlocks: number;
  freeBlocks: number;
  usedBlocks: number;
  /** Bytes of the KV pools. */
  kvBytes: number;
  maxSequences: number;
  maxQueued: number;
  maxContext: number;
  /** Forward steps run. */
  steps: number;
  /** Prompt tokens computed (recomputations after a preemption included). */
  promptTokens: number;
  /** Tokens generated. */
  generatedTokens: number;
  /** Sequences sent back to the queue for lack of blocks. */
  preemptions: number;
  /** Generations ended: finished, cancelled, failed. */
  finished: number;
  cancelled: number;
  failed: number;
}

type State = 'waiting' | 'running' | 'done';

interface Seq {
  readonly id: number;
  readonly gen: Generation;
  readonly tokens: number[];
  readonly promptLen: number;
  computed: number;
  blocks: number[];
  admitted: number;
  state: State;
  readonly maxTokens: number;
  readonly sampling: SamplingParams;
  readonly penalties: boolean;
  readonly penaltyWindow: number;
  readonly stopTokens: ReadonlySet<number>;
  readonly text: TextStream | null;
  readonly signal: AbortSignalLike | undefined;
  onAbort: (() => void) | null;
}

interface Entry {
  seq: Seq | null; // null: padding
  from: number;
  n: number;
  logits: boolean;
}

const yieldToLoop = () => new Promise<void>((resolve) => setImmediate(resolve));

/**
 * A running request: an async iterator of EngineChunk ({ token, text } per new token, then one
 * EngineFinish). Breaking out of the loop or cancel() cancels the sequence (blocks freed at once);
 * an aborted signal makes next() reject with ERR_ABORTED.
 */
export class Generation implements AsyncIterableIterator<EngineChunk> {
  /** The engine's id of this request. */
  readonly id: number;
  /** The prompt's token ids. */
  readonly promptTokens: readonly number[];
  readonly #chunks: EngineChunk[] = [];
  #error: unknown = null;
  #ended = false;
  #waiter: (() => void) | null = null;
  readonly #cancel: () => void;

  /** @internal */
  constructor(id: number, promptTokens: readonly number[], cancel: () => void) {
    this.id = id;
    this.promptTokens = promptTokens;
    this.#cancel = cancel;
  }

  /** @internal */
  push(c: EngineChunk, last = false): void {
    this.#chunks.push(c);
    if (last) this.#ended = true;
    this.#wake();
  }
  /** @internal */
  fail(e: unknown): void {
    if (this.#ended) return;
    this.#error = e;
    this.#ended = true;
    this.#wake();
  }
  /** @internal the consumer is gone: nothing more is queued */
  close(): void {
    this.#ended = true;
    this.#chunks.length = 0;
    this.#wake();
  }
  #wake(): void {
    const w = this.#waiter;
    this.#waiter = null;
    w?.();
  }

  async next(): Promise<IteratorResult<EngineChunk, undefined>> {
    for (;;) {
      const c = this.#chunks.shift();
      if (c !== undefined) return { value: c, done: false };
      if (this.#ended) {
        if (this.#error !== null) {
          const e = this.#error;
          this.#error = null;
          throw e;
        }
        return { value: undefined, done: true };
      }
      await new Promise<void>((resolve) => (this.#waiter = resolve));
    }
  }

  /** Stops the generation (for-await's break calls it): the sequence is cancelled. */
  async return(): Promise<IteratorResult<EngineChunk, undefined>> {
    this.cancel();
    return { value: undefined, done: true };
  }

  /** Cancels the sequence: its KV blocks are freed now; the iterator ends. */
  cancel(): void {
    if (!this.#ended) this.#cancel();
    this.close();
  }

  [Symbol.asyncIterator](): this {
    return this;
  }

  /** Runs the generation to its end: the text, the token ids, why it ended and the usage. */
  async collect(): Promise<{ text: string; tokens: number[] } & EngineFinish> {
    let text = '';
    const tokens: number[] = [];
    for await (const c of this) {
      if ('finishReason' in c) return { text, tokens, ...c };
      text += c.text;
      tokens.push(c.token);
    }
    throw new MoeError('the generation was cancelled before it finished', 'ERR_ABORTED');
  }
}

/** Many sequences on one model: see the file's comment. */
export class Engine {
  readonly model: MixtralModel;
  /** The tokenizer of text prompts and output, or null (token ids only). */
  readonly tokenizer: TextTokenizer | null;
  readonly maxSequences: number;
  readonly maxQueued: number;
  readonly maxBatchTokens: number;
  readonly maxContext: number;
  readonly blockSize: number;
  readonly numBlocks: number;
  readonly minStepTokens: number;
  readonly #pools: KvPool[];
  readonly #free: number[];
  readonly #padBlocks: number[];
  readonly #waiting: Seq[] = [];
  readonly #running: Seq[] = [];
  readonly #logits: AnyTensor;
  #loop: Promise<void> | null = null;
  #idle: (() => void)[] = [];
  #closed = false;
  #nextId = 1;
  #admissions = 0;
  readonly #stats = { steps: 0, promptTokens: 0, generatedTokens: 0, preemptions: 0, finished: 0, cancelled: 0, failed: 0 };

  private constructor(model: MixtralModel, o: { tokenizer: TextTokenizer | null; maxSequences: number; maxQueued: number; maxBatchTokens: number; maxContext: number; blockSize: number; numBlocks: number; minStepTokens: number; pools: KvPool[] }) {
    this.model = model;
    this.tokenizer = o.tokenizer;
    this.maxSequences = o.maxSequences;
    this.maxQueued = o.maxQueued;
    this.maxBatchTokens = o.maxBatchTokens;
    this.maxContext = o.maxContext;
    this.blockSize = o.blockSize;
    this.numBlocks = o.numBlocks;
    this.minStepTokens = o.minStepTokens;
    this.#pools = o.pools;
    const padCount = o.minStepTokens > 0 ? Math.ceil(o.minStepTokens / o.blockSize) : 0;
    this.#padBlocks = Array.from({ length: padCount }, (_, i) => o.numBlocks - 1 - i);
    // lower block ids first (pop from the end)
    this.#free = Array.from({ length: o.numBlocks - padCount }, (_, i) => o.numBlocks - padCount - 1 - i);
    const V = model.config.vocabSize;
    this.#logits = model.backend === 'cpu' ? zeros('float32', [o.maxSequences, V]) : DeviceTensor.zeros('float32', [o.maxSequences, V], { backend: model.backend });
  }

  /**
   * An engine over `model` (which it uses, and does not dispose): KV pools on the model's place (the
   * device for a device model) and the scheduler. While sequences run, the engine's steps are the
   * model's calls: a forward or generate of the model's own at the same time is refused (ERR_BUSY),
   * and a step it collides with fails the sequences of that step. The model's KV caches are not used.
   */
  static async create(model: MixtralModel, options?: EngineOptions): Promise<Engine> {
    if (model === null || typeof model !== 'object' || typeof (model as MixtralModel).forwardPaged !== 'function' || !Array.isArray((model as MixtralModel).blocks))
      throw typeError(`model must be a MixtralModel, got ${describe(model)}`);
    if (model.disposed) throw new MoeError('the model was disposed', 'ERR_DISPOSED');
    const o = checkOptions(options);
    const known = ['maxSequences', 'maxQueued', 'maxBatchTokens', 'blockSize', 'numBlocks', 'kvBytes', 'kvType', 'maxContext', 'tokenizer', 'minStepTokens'];
    for (const k of Object.keys(o)) if (!known.includes(k)) throw typeError(`options.${k} is not an engine option (${known.join(', ')})`);
    const maxSequences = intOption(o, 'maxSequences', 16, 1, 4096);
    const maxQueued = intOption(o, 'maxQueued', 64, 0, 1 << 20);
    const maxBatchTokens = intOption(o, 'maxBatchTokens', Math.max(256, maxSequences), maxSequences, 1 << 20);
    const blockSize = intOption(o, 'blockSize', 16, 1, 1 << 16);
    const kvType = floatTypeOption(o, 'kvType', 'float32');
    const device = model.backend !== 'cpu';
    const minStepTokens = intOption(o, 'minStepTokens', device ? 17 : 0, 0, 1 << 16);
    const c = model.config;
    const perBlock = 2 * c.numHiddenLayers * c.numKeyValueHeads * c.headDim * blockSize * (kvType === 'float32' ? 4 : 2);
    const padBlocks = minStepTokens > 0 ? Math.ceil(minStepTokens / blockSize) : 0;
    const wantContext = o.maxContext === undefined ? model.maxSeq : intOption(o, 'maxContext', 1, 1, 1 << 24);
    if (o.numBlocks !== undefined && o.kvBytes !== undefined) throw typeError('give options.numBlocks or options.kvBytes, not both');
    let numBlocks: number;
    if (o.numBlocks !== undefined) numBlocks = intOption(o, 'numBlocks', 1, 1, 1 << 30);
    else if (o.kvBytes !== undefined) {
      const bytes = o.kvBytes;
      if (typeof bytes !== 'number' || !(bytes > 0) || !Number.isFinite(bytes)) throw rangeError(`options.kvBytes must be a positive number of bytes, got ${describe(bytes)}`);
      numBlocks = Math.floor(bytes / perBlock);
      if (numBlocks < 1) throw rangeError(`options.kvBytes (${bytes}) must hold at least one block of ${perBlock} bytes (blockSize ${blockSize} positions, every layer)`);
    } else {
      const perSeq = Math.ceil(wantContext / blockSize);
      numBlocks = Math.max(perSeq, Math.min(maxSequences * perSeq, Math.floor(2 ** 30 / perBlock))) + padBlocks;
    }
    if (numBlocks <= padBlocks) throw rangeError(`the pool must have more than the ${padBlocks} blocks of the step padding (minStepTokens ${minStepTokens}), got ${numBlocks}`);
    const capacity = (numBlocks - padBlocks) * blockSize;
    if (o.maxContext !== undefined && wantContext > capacity)
      throw rangeError(`options.maxContext (${wantContext}) must fit the pool: ${numBlocks - padBlocks} blocks of ${blockSize} positions hold ${capacity}`);
    const maxContext = Math.min(wantContext, capacity);
    let tokenizer: TextTokenizer | null = model.tokenizer;
    if (o.tokenizer !== undefined) {
      const t = o.tokenizer as TextTokenizer | null;
      if (t !== null && (typeof t !== 'object' || typeof t.encode !== 'function' || typeof t.decode !== 'function'))
        throw typeError(`options.tokenizer must be a Tokenizer, a GgufTokenizer or null, got ${describe(t)}`);
      tokenizer = t;
    }
    await yieldToLoop();
    const pools = model.createKvPools({ numBlocks, blockSize, kvType });
    try {
      return new Engine(model, { tokenizer, maxSequences, maxQueued, maxBatchTokens, maxContext, blockSize, numBlocks, minStepTokens, pools });
    } catch (e) {
      for (const p of pools) p.dispose();
      throw e;
    }
  }

  /** What the engine holds now and has done so far. */
  get stats(): EngineStats {
    const total = this.numBlocks;
    return {
      running: this.#running.length,
      waiting: this.#waiting.length,
      blockSize: this.blockSize,
      totalBlocks: total,
      freeBlocks: this.#free.length,
      usedBlocks: total - this.#padBlocks.length - this.#free.length,
      kvBytes: this.#pools.reduce((n, p) => n + p.bytes, 0),
      maxSequences: this.maxSequences,
      maxQueued: this.maxQueued,
      maxContext: this.maxContext,
      ...this.#stats,
    };
  }

  get closed(): boolean {
    return this.#closed;
  }

  /**
   * Starts generating after `prompt` and returns at once: a Generation to iterate. Throws (before
   * anything is queued) a TypeError / RangeError for bad arguments, MoeError ERR_OVERLOADED when
   * maxSequences run and maxQueued wait already, ERR_TOKENIZER for text without a tokenizer,
   * ERR_DISPOSED after close().
   */
  generate(prompt: EnginePrompt, options?: EngineGenerateOptions): Generation {
    if (this.#closed) throw new MoeError('the engine was closed', 'ERR_DISPOSED');
    const o = checkOptions(options);
    const known = ['maxTokens', 'temperature', 'topP', 'topK', 'minP', 'repetitionPenalty', 'presencePenalty', 'frequencyPenalty', 'penaltyWindow', 'seed', 'stop', 'stopTokens', 'stopAtEos', 'chatTemplate', 'signal'];
    for (const k of Object.keys(o)) if (!known.includes(k)) throw typeError(`options.${k} is not a generate option (${known.join(', ')})`);
    const ids = this.#promptIds(prompt, o.chatTemplate);
    const maxTokens = intOption(o, 'maxTokens', 16, 1, 1 << 24);
    if (ids.length + maxTokens - 1 > this.maxContext)
      throw rangeError(`the prompt (${ids.length} tokens) and options.maxTokens (${maxTokens}) must fit the engine's maxContext (${this.maxContext}): prompt + maxTokens - 1 <= ${this.maxContext}`);
    const sampling = samplingOptions(o);
    const penaltyWindow = intOption(o, 'penaltyWindow', 64, 0, 1 << 24);
    const stops = checkStops(o.stop);
    if (stops.length > 0 && !this.tokenizer) throw new MoeError('options.stop matches text: the engine has no tokenizer (options.tokenizer of Engine.create)', 'ERR_TOKENIZER');
    const stopTokens = o.stopTokens ?? [];
    const V = this.model.config.vocabSize;
    if (!Array.isArray(stopTokens) || !stopTokens.every((t) => Number.isInteger(t) && t >= 0 && t < V)) throw typeError(`options.stopTokens must be an array of token ids in [0, ${V}), got ${describe(stopTokens)}`);
    const stopAtEos = o.stopAtEos ?? true;
    if (typeof stopAtEos !== 'boolean') throw typeError(`options.stopAtEos must be a boolean, got ${describe(stopAtEos)}`);
    const signal = checkSignal(o.signal);
    if (signal?.aborted) throw abortError(signal);
    if (this.#running.length + this.#waiting.length >= this.maxSequences + this.maxQueued)
      throw new MoeError(
        `the engine is full: ${this.#running.length} sequences run and ${this.#waiting.length} wait (maxSequences ${this.maxSequences}, maxQueued ${this.maxQueued}); try again later`,
        'ERR_OVERLOADED',
      );
    const stopSet = new Set<number>(stopTokens as number[]);
    const eos = this.tokenizer?.eosTokenId ?? null;
    if (stopAtEos && eos !== null) stopSet.add(eos);
    const id = this.#nextId++;
    const seq: Seq = {
      id,
      gen: null as unknown as Generation,
      tokens: ids,
      promptLen: ids.length,
      computed: 0,
      blocks: [],
      admitted: 0,
      state: 'waiting',
      maxTokens,
      sampling,
      penalties: sampling.repetitionPenalty !== 1 || sampling.presencePenalty !== 0 || sampling.frequencyPenalty !== 0,
      penaltyWindow,
      stopTokens: stopSet,
      text: this.tokenizer ? new TextStream(this.tokenizer, { stop: stops, context: ids }) : null,
      signal,
      onAbort: null,
    };
    (seq as { gen: Generation }).gen = new Generation(id, ids.slice(), () => this.#end(seq, 'cancelled', null));
    if (signal) {
      seq.onAbort = () => this.#end(seq, 'cancelled', abortError(signal));
      (signal as AbortSignal).addEventListener('abort', seq.onAbort, { once: true });
    }
    this.#waiting.push(seq);
    this.#kick();
    return seq.gen;
  }

  /**
   * The token ids of a prompt as generate reads it: text through the tokenizer, chat messages through
   * the chat template (options.chatTemplate, else the tokenizer's), { tokens } checked against the
   * vocabulary. generate({ tokens: ids }) then runs it without encoding it again.
   */
  encode(prompt: EnginePrompt, options?: { chatTemplate?: string }): number[] {
    return this.#promptIds(prompt, checkOptions(options).chatTemplate);
  }

  /** Resolves when no sequence runs or waits (e.g. to drain before close). */
  drain(): Promise<void> {
    if (this.#running.length === 0 && this.#waiting.length === 0 && !this.#loop) return Promise.resolve();
    return new Promise((resolve) => this.#idle.push(resolve));
  }

  /**
   * Stops the engine: generate throws ERR_DISPOSED from now on, every sequence running or waiting
   * is cancelled (its iterator throws ERR_ABORTED), the step in flight finishes, then the KV pools
   * are freed. The model is the caller's. Safe to call twice.
   */
  async close(): Promise<void> {
    if (!this.#closed) {
      this.#closed = true;
      const e = new MoeError('the engine was closed', 'ERR_ABORTED');
      for (const s of [...this.#running, ...this.#waiting]) this.#end(s, 'cancelled', e);
    }
    await this.#loop;
    if (this.#pools.length) {
      for (const p of this.#pools) p.dispose();
      this.#pools.length = 0;
      release(this.#logits);
    }
    this.#settleIdle();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  // ---- internals ----

  #promptIds(prompt: unknown, chatTemplate: unknown): number[] {
    const V = this.model.config.vocabSize;
    let ids: number[];
    if (prompt !== null && typeof prompt === 'object' && !Array.isArray(prompt) && 'tokens' in prompt) {
      const t = (prompt as { tokens: unknown }).tokens;
      if (!Array.isArray(t) && !(t instanceof Int32Array)) throw typeError(`prompt.tokens must be an array of token ids, got ${describe(t)}`);
      ids = Array.from(t as ArrayLike<number>);
      ids.forEach((v, i) => {
        if (!Number.isInteger(v) || v < 0 || v >= V) throw rangeError(`prompt.tokens[${i}] must be a token id in [0, ${V}), got ${describe((t as ArrayLike<unknown>)[i])}`);
      });
    } else {
      if (typeof prompt !== 'string' && !Array.isArray(prompt)) throw typeError(`prompt must be a string, chat messages [{role, content}] or { tokens: number[] }, got ${describe(prompt)}`);
      if (!this.tokenizer) throw new MoeError('a text or chat prompt needs a tokenizer: the engine has none (give { tokens } or options.tokenizer of Engine.create)', 'ERR_TOKENIZER');
      if (Array.isArray(prompt) && prompt.some((m) => typeof m === 'number')) throw typeError('prompt: give token ids as { tokens: [...] }, not a bare array');
      if (chatTemplate !== undefined && typeof chatTemplate !== 'string') throw typeError(`options.chatTemplate must be a string, got ${describe(chatTemplate)}`);
      ids = encodePrompt(this.tokenizer, prompt as string | readonly ChatMessage[], chatTemplate as string | undefined);
      const bad = ids.findIndex((v) => v >= V);
      if (bad >= 0) throw rangeError(`the tokenizer gave token id ${ids[bad]}, outside the model's vocabulary (${V})`);
    }
    if (ids.length === 0) throw rangeError('the prompt must have at least one token, got none');
    return ids;
  }

  #kick(): void {
    if (this.#loop || this.#closed) return;
    this.#loop = this.#run().finally(() => {
      this.#loop = null;
      if (!this.#closed && (this.#running.length > 0 || this.#waiting.length > 0)) this.#kick();
      else this.#settleIdle();
    });
  }

  #settleIdle(): void {
    if (this.#running.length > 0 || this.#waiting.length > 0 || this.#loop) return;
    const w = this.#idle;
    this.#idle = [];
    for (const f of w) f();
  }

  async #run(): Promise<void> {
    while (!this.#closed) {
      this.#admit();
      const plan = this.#plan();
      if (plan.length === 0) return;
      await this.#step(plan);
      await yieldToLoop();
    }
  }

  #blocksFor(positions: number): number {
    return Math.ceil(positions / this.blockSize);
  }

  /** Moves waiting sequences (in order) to running while there is a place and blocks for their tokens. */
  #admit(): void {
    while (this.#waiting.length > 0 && this.#running.length < this.maxSequences) {
      const s = this.#waiting[0];
      const need = this.#blocksFor(s.tokens.length);
      if (need > this.#free.length) return;
      this.#waiting.shift();
      for (let i = 0; i < need; i++) s.blocks.push(this.#free.pop()!);
      s.state = 'running';
      s.admitted = ++this.#admissions;
      this.#running.push(s);
    }
  }

  /** Gives `s` the blocks for positions [0, upTo); false when it was itself preempted for them. */
  #grow(s: Seq, upTo: number, plan: Entry[]): boolean {
    while (s.blocks.length < this.#blocksFor(upTo)) {
      if (this.#free.length === 0) {
        // the sequence admitted last goes back to the queue and frees its blocks
        let victim = this.#running[0];
        for (const r of this.#running) if (r.admitted > victim.admitted) victim = r;
        this.#preempt(victim);
        const at = plan.findIndex((e) => e.seq === victim);
        if (at >= 0) plan.splice(at, 1);
        if (victim === s) return false;
        continue;
      }
      s.blocks.push(this.#free.pop()!);
    }
    return true;
  }

  #preempt(s: Seq): void {
    this.#releaseBlocks(s);
    s.computed = 0;
    s.state = 'waiting';
    this.#running.splice(this.#running.indexOf(s), 1);
    this.#waiting.unshift(s);
    this.#stats.preemptions++;
  }

  #releaseBlocks(s: Seq): void {
    for (let i = s.blocks.length - 1; i >= 0; i--) this.#free.push(s.blocks[i]);
    s.blocks = [];
  }

  /** This step's tokens: every decode first, then prefill chunks in admission order, up to maxBatchTokens. */
  #plan(): Entry[] {
    const plan: Entry[] = [];
    let budget = this.maxBatchTokens;
    for (const s of [...this.#running]) {
      if (s.state !== 'running' || s.computed !== s.tokens.length - 1) continue;
      if (!this.#grow(s, s.tokens.length, plan)) continue;
      plan.push({ seq: s, from: s.computed, n: 1, logits: true });
      budget--;
    }
    for (const s of [...this.#running]) {
      if (budget <= 0) break;
      if (s.state !== 'running' || s.tokens.length - s.computed <= 1 || plan.some((e) => e.seq === s)) continue;
      const n = Math.min(s.tokens.length - s.computed, budget);
      plan.push({ seq: s, from: s.computed, n, logits: s.computed + n === s.tokens.length });
      budget -= n;
    }
    return plan;
  }

  async #step(plan: Entry[]): Promise<void> {
    let T = plan.reduce((a, e) => a + e.n, 0);
    if (T < this.minStepTokens) {
      plan.push({ seq: null, from: 0, n: this.minStepTokens - T, logits: false });
      T = this.minStepTokens;
    }
    const S = plan.length;
    const width = Math.max(1, ...plan.map((e) => (e.seq ? e.seq.blocks.length : this.#padBlocks.length)));
    const tables = new Int32Array(S * width).fill(-1);
    const ids = new Int32Array(T);
    const positions = new Int32Array(T);
    const seqOf = new Int32Array(T);
    const logitsRows: number[] = [];
    const sampled: Seq[] = [];
    let t = 0;
    plan.forEach((e, row) => {
      const blocks = e.seq ? e.seq.blocks : this.#padBlocks;
      tables.set(blocks, row * width);
      for (let j = 0; j < e.n; j++, t++) {
        ids[t] = e.seq ? e.seq.tokens[e.from + j] : 0;
        positions[t] = e.from + j;
        seqOf[t] = row;
      }
      if (e.logits && e.seq) {
        logitsRows.push(t - 1);
        sampled.push(e.seq);
      }
    });
    const R = logitsRows.length;
    let next: Int32Array | null = null;
    try {
      const blockTables: Tensor<'int32'> = { type: 'int32', data: tables, dims: [S, width] };
      const out = R > 0 ? headRows(this.#logits, R) : undefined;
      const logits = await this.model.forwardPaged(ids, { positions, seqOf, blockTables, pools: this.#pools, logitsRows, out });
      if (R > 0) {
        const rows: SamplingParams[] = sampled.map((s) => ({
          ...s.sampling,
          ...(s.penalties ? { penaltyTokens: s.tokens.slice(Math.max(0, s.tokens.length - s.penaltyWindow)) } : {}),
          step: s.tokens.length,
        }));
        next = (await sample(logits as Tensor<'float32'>, { rows })).data;
      }
    } catch (e) {
      for (const entry of plan) if (entry.seq && entry.seq.state === 'running') this.#end(entry.seq, 'failed', e);
      return;
    } finally {
      this.#stats.steps++;
    }
    for (const e of plan) {
      const s = e.seq;
      if (!s || s.state !== 'running') continue; // padding, or cancelled during the step
      s.computed += e.n;
      this.#stats.promptTokens += Math.max(0, Math.min(e.from + e.n, s.promptLen) - e.from);
    }
    sampled.forEach((s, i) => {
      if (s.state === 'running') this.#accept(s, next![i]);
    });
  }

  /** A new token of `s`: its chunk, and the end of the sequence when it stops. */
  #accept(s: Seq, token: number): void {
    s.tokens.push(token);
    this.#stats.generatedTokens++;
    const generated = s.tokens.length - s.promptLen;
    let finish: EngineFinish['finishReason'] | null = null;
    let stop: string | number | null = null;
    let text = '';
    if (s.stopTokens.has(token)) [finish, stop] = ['stop', token];
    if (s.text) {
      const step = s.text.push(token);
      text = step.text;
      if (step.stop !== null) [finish, stop] = ['stop', step.stop];
    }
    if (finish === null && (generated >= s.maxTokens || s.tokens.length >= this.maxContext)) finish = 'length';
    if (finish !== null && s.text && typeof stop !== 'string') text += s.text.flush();
    s.gen.push({ token, text });
    if (finish === null) return;
    const usage = { promptTokens: s.promptLen, completionTokens: generated, totalTokens: s.tokens.length };
    s.gen.push({ finishReason: finish, stop, usage }, true);
    this.#end(s, 'finished', null);
  }

  /** Ends a sequence: its blocks are freed now; `error` goes to its consumer (null: it ended normally or was cancelled by it). */
  #end(s: Seq, how: 'finished' | 'cancelled' | 'failed', error: unknown): void {
    if (s.state === 'done') return;
    if (s.state === 'running') this.#running.splice(this.#running.indexOf(s), 1);
    else this.#waiting.splice(this.#waiting.indexOf(s), 1);
    this.#releaseBlocks(s);
    s.state = 'done';
    if (s.onAbort) (s.signal as AbortSignal).removeEventListener('abort', s.onAbort);
    this.#stats[how]++;
    if (error !== null) s.gen.fail(error);
    else if (how === 'cancelled') s.gen.close();
    this.#settleIdle();
  }
}

/** The sampling options of a request, checked, with their defaults. */
function samplingOptions(o: Record<string, unknown>): Required<Omit<SamplingParams, 'penaltyTokens' | 'step'>> {
  const num = (k: string, dflt: number, ok: (v: number) => boolean, range: string) => {
    const v = o[k] ?? dflt;
    if (typeof v !== 'number' || Number.isNaN(v)) throw typeError(`options.${k} must be a number, got ${describe(v)}`);
    if (!ok(v)) throw rangeError(`options.${k} must be ${range}, got ${v}`);
    return v;
  };
  return {
    temperature: num('temperature', 0, (v) => v >= 0 && Number.isFinite(v), 'a finite number >= 0'),
    topP: num('topP', 1, (v) => v > 0 && v <= 1, 'in (0, 1]'),
    topK: num('topK', 0, (v) => Number.isInteger(v) && v >= 0, 'an integer >= 0'),
    minP: num('minP', 0, (v) => v >= 0 && v <= 1, 'in [0, 1]'),
    repetitionPenalty: num('repetitionPenalty', 1, (v) => v > 0 && Number.isFinite(v), 'a finite number > 0'),
    presencePenalty: num('presencePenalty', 0, Number.isFinite, 'finite'),
    frequencyPenalty: num('frequencyPenalty', 0, Number.isFinite, 'finite'),
    seed: num('seed', 0, (v) => Number.isInteger(v) && v >= 0 && v <= Number.MAX_SAFE_INTEGER, 'an integer in [0, 2^53)'),
  };
}
