/**
 * An OpenAI-compatible HTTP server over an Engine (`moe-kernels serve`, or embedded with
 * createServer): fastify for routing, JSON-schema validation and body limits; prom-client for the
 * metrics.
 *
 *   POST /v1/completions       prompt: text, token ids, or a one-element array of either; stream: SSE
 *   POST /v1/chat/completions  messages through the chat template; stream: SSE chunks with deltas
 *   GET  /v1/models            the one model served
 *   GET  /health               200 {status: 'ok'} while serving, 503 while shutting down
 *   GET  /metrics              Prometheus text: queue depth, running sequences, KV blocks in use,
 *                              tokens, tokens/s over the last 10 s, time to first token, requests
 *
 * Errors have OpenAI's body, { error: { message, type, param, code } }: 400 for a bad request (schema,
 * a prompt too long for the context, a text prompt without a tokenizer), 401 without the API key
 * (when one is set: `Authorization: Bearer <key>` on every route but /health), 404 for an unknown route,
 * 413 for a body over bodyLimit, 429 when the engine's queue is full (ERR_OVERLOADED, with
 * Retry-After), 503 while shutting down. A client that disconnects cancels its sequence (its KV
 * blocks are freed at once). shutdown() stops accepting, lets the running requests finish within a
 * grace period, then cancels what is left (streams end with an error event and `data: [DONE]`).
 * Besides OpenAI's sampling fields the bodies take vLLM's top_k, min_p and repetition_penalty.
 */
import { randomBytes, timingSafeEqual } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type * as Prom from 'prom-client';
import { describe, MoeError, typeError } from '../core/errors.js';
import { checkOptions, intOption } from '../core/options.js';
import type { ChatMessage } from '../hf/chat.js';
import type { Engine, EngineGenerateOptions, EnginePrompt, Generation } from './engine.js';

export interface ServerOptions {
  /** The model's name in responses and /v1/models. Default 'moe-kernels'. */
  modelName?: string;
  /** Required as `Authorization: Bearer <key>` on every route but /health when set. Default: none. */
  apiKey?: string | null;
  /** Largest request body in bytes (larger: 413). Default 1 MiB. */
  bodyLimit?: number;
  /** max_tokens when a completions request gives none (OpenAI's default is 16). Default 16. */
  defaultMaxTokens?: number;
  /** max_tokens when a chat request gives none: at most this, and what the context leaves. Default 512. */
  defaultChatMaxTokens?: number;
  /** fastify's logger (pino) options, or false (default). */
  logger?: boolean | Record<string, unknown>;
}

export interface ListenOptions {
  /** Default 127.0.0.1 (loopback only). */
  host?: string;
  /** Default 8080; 0: any free port. */
  port?: number;
}

export interface ShutdownOptions {
  /** How long running requests may take to finish before they are cancelled. Default 10000 ms. */
  graceMs?: number;
}

interface Metrics {
  registry: Prom.Registry;
  requests: Prom.Counter<'endpoint' | 'status'>;
  promptTokens: Prom.Counter;
  generatedTokens: Prom.Counter;
  ttft: Prom.Histogram;
  tpot: Prom.Histogram;
  recent: Map<number, number>;
}

/** An HTTP error with OpenAI's error body. */
class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly type: string,
    readonly code: string | null = null,
    readonly param: string | null = null,
  ) {
    super(message);
  }
}

const errorBody = (e: HttpError) => ({ error: { message: e.message, type: e.type, param: e.param, code: e.code } });

/** An engine error as the HTTP error a client should see. */
function toHttpError(e: unknown): HttpError {
  if (e instanceof HttpError) return e;
  const err = e as Error & { code?: string };
  if (err?.code === 'ERR_OVERLOADED') return new HttpError(429, err.message, 'rate_limit_error', 'rate_limit_exceeded');
  if (err?.code === 'ERR_TOKENIZER') return new HttpError(400, err.message, 'invalid_request_error', 'tokenizer_required');
  if (err?.code === 'ERR_ABORTED' || err?.code === 'ERR_DISPOSED') return new HttpError(503, 'the server is shutting down', 'server_error', 'shutting_down');
  if (e instanceof TypeError || e instanceof RangeError) return new HttpError(400, err.message, 'invalid_request_error', err.code ?? null);
  return new HttpError(500, `internal error: ${err?.message ?? String(e)}`, 'server_error', err?.code ?? null);
}

// ---- request schemas (fastify validates the bodies with them before a handler runs) ----

const num = (o: Record<string, unknown>) => ({ type: ['number', 'null'], ...o });
const SAMPLING = {
  model: { type: 'string' },
  max_tokens: { type: ['integer', 'null'], minimum: 1 },
  max_completion_tokens: { type: ['integer', 'null'], minimum: 1 },
  temperature: num({ minimum: 0, maximum: 2 }),
  top_p: num({ exclusiveMinimum: 0, maximum: 1 }),
  top_k: { type: ['integer', 'null'], minimum: -1 },
  min_p: num({ minimum: 0, maximum: 1 }),
  presence_penalty: num({ minimum: -2, maximum: 2 }),
  frequency_penalty: num({ minimum: -2, maximum: 2 }),
  repetition_penalty: num({ exclusiveMinimum: 0, maximum: 10 }),
  seed: { type: ['integer', 'null'], minimum: 0, maximum: Number.MAX_SAFE_INTEGER },
  stop: { anyOf: [{ type: 'string', minLength: 1 }, { type: 'array', items: { type: 'string', minLength: 1 }, maxItems: 16 }, { type: 'null' }] },
  stream: { type: ['boolean', 'null'] },
  stream_options: { anyOf: [{ type: 'object', properties: { include_usage: { type: 'boolean' } } }, { type: 'null' }] },
  n: { type: ['integer', 'null'], minimum: 1, maximum: 1 },
  user: { type: 'string' },
} as const;
const TOKEN_IDS = { type: 'array', items: { type: 'integer', minimum: 0 }, minItems: 1 } as const;
const COMPLETIONS_BODY = {
  type: 'object',
  required: ['prompt'],
  properties: {
    ...SAMPLING,
    prompt: { anyOf: [{ type: 'string' }, TOKEN_IDS, { type: 'array', items: { type: 'string' }, minItems: 1, maxItems: 1 }, { type: 'array', items: TOKEN_IDS, minItems: 1, maxItems: 1 }] },
    echo: { type: ['boolean', 'null'], enum: [false, null] },
    logprobs: { type: 'null' },
  },
} as const;
const CHAT_BODY = {
  type: 'object',
  required: ['messages'],
  properties: {
    ...SAMPLING,
    messages: {
      type: 'array',
      minItems: 1,
      items: {
        type: 'object',
        required: ['role', 'content'],
        properties: {
          role: { type: 'string', enum: ['system', 'user', 'assistant', 'developer', 'tool'] },
          content: { anyOf: [{ type: 'string' }, { type: 'array', items: { type: 'object', required: ['type', 'text'], properties: { type: { const: 'text' }, text: { type: 'string' } } } }] },
        },
      },
    },
    logprobs: { type: ['boolean', 'null'], enum: [false, null] },
  },
} as const;

type Body = Record<string, unknown>;

/**
 * An OpenAI-compatible server over `engine` (see the file's comment). The engine and its model stay
 * the caller's: shutdown() closes the HTTP side only.
 */
export class MoeServer {
  readonly engine: Engine;
  readonly modelName: string;
  /** The fastify instance (private: its types would tie the package's types to @types/node). */
  readonly #app: FastifyInstance;
  readonly #apiKey: Buffer | null;
  readonly #metrics: Metrics;
  readonly #inflight = new Set<AbortController>();
  readonly #defaultMaxTokens: number;
  readonly #defaultChatMaxTokens: number;
  readonly #created = Math.floor(Date.now() / 1000);
  #draining = false;
  #shutdown: Promise<void> | null = null;

  constructor(engine: Engine, options?: ServerOptions) {
    if (engine === null || typeof engine !== 'object' || typeof (engine as Engine).generate !== 'function' || typeof (engine as Engine).drain !== 'function')
      throw typeError(`engine must be an Engine (Engine.create), got ${describe(engine)}`);
    const o = checkOptions(options);
    const known = ['modelName', 'apiKey', 'bodyLimit', 'defaultMaxTokens', 'defaultChatMaxTokens', 'logger'];
    for (const k of Object.keys(o)) if (!known.includes(k)) throw typeError(`options.${k} is not a server option (${known.join(', ')})`);
    if (o.modelName !== undefined && (typeof o.modelName !== 'string' || o.modelName === '')) throw typeError(`options.modelName must be a non-empty string, got ${describe(o.modelName)}`);
    if (o.apiKey != null && (typeof o.apiKey !== 'string' || o.apiKey === '')) throw typeError(`options.apiKey must be a non-empty string or null, got ${describe(o.apiKey)}`);
    this.engine = engine;
    this.modelName = (o.modelName as string | undefined) ?? 'moe-kernels';
    this.#apiKey = o.apiKey ? Buffer.from(o.apiKey as string) : null;
    const bodyLimit = intOption(o, 'bodyLimit', 1 << 20, 1, 1 << 30);
    this.#defaultMaxTokens = intOption(o, 'defaultMaxTokens', 16, 1, 1 << 24);
    this.#defaultChatMaxTokens = intOption(o, 'defaultChatMaxTokens', 512, 1, 1 << 24);
    const fastify = require('fastify') as typeof import('fastify');
    this.#app = fastify.fastify({
      bodyLimit,
      logger: (o.logger as boolean | Record<string, unknown> | undefined) ?? false,
      return503OnClosing: true,
      // no type coercion ("5" is not 5) and no silent removal: a bad field is a 400
      ajv: { customOptions: { coerceTypes: false, removeAdditional: false, allErrors: false } },
    });
    // JSON only: a text/plain body is a 415, not a string that fails the schema
    this.#app.removeContentTypeParser('text/plain');
    this.#metrics = this.#makeMetrics();
    this.#routes();
  }

  /** Starts listening (127.0.0.1:8080 by default); resolves to the address. */
  async listen(options?: ListenOptions): Promise<{ host: string; port: number; url: string }> {
    const o = checkOptions(options);
    if (o.host !== undefined && (typeof o.host !== 'string' || o.host === '')) throw typeError(`options.host must be a non-empty string, got ${describe(o.host)}`);
    const host = (o.host as string | undefined) ?? '127.0.0.1';
    const port = intOption(o, 'port', 8080, 0, 65535);
    await this.#app.listen({ host, port });
    const a = this.#app.server.address() as AddressInfo;
    const shown = a.family === 'IPv6' ? `[${a.address}]` : a.address;
    return { host: a.address, port: a.port, url: `http://${shown}:${a.port}` };
  }

  /** Requests running now (streams and not). */
  get inflight(): number {
    return this.#inflight.size;
  }

  get draining(): boolean {
    return this.#draining;
  }

  /**
   * Stops accepting (the listening socket closes; requests on open connections get 503), waits up
   * to graceMs for the running requests to finish, cancels the rest, and resolves when every
   * connection is closed. Safe to call twice.
   */
  shutdown(options?: ShutdownOptions): Promise<void> {
    const graceMs = intOption(checkOptions(options), 'graceMs', 10_000, 0, 1 << 30);
    return (this.#shutdown ??= this.#doShutdown(graceMs));
  }

  async #doShutdown(graceMs: number): Promise<void> {
    this.#draining = true;
    const closed = this.#app.close();
    const deadline = Date.now() + graceMs;
    while (this.#inflight.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, Math.min(50, Math.max(1, deadline - Date.now()))));
    for (const ac of this.#inflight) ac.abort(new MoeError('the server is shutting down', 'ERR_ABORTED'));
    // the cancelled streams end at once; then no connection should be left open
    const t = setTimeout(() => this.#app.server.closeAllConnections(), 1000);
    try {
      await closed;
    } finally {
      clearTimeout(t);
    }
  }

  // ---- routes ----

  #routes(): void {
    const app = this.#app;
    app.addHook('onRequest', async (req, reply) => {
      // every route but /health (unknown ones too: no route list for a client without the key)
      if (!this.#apiKey || req.routeOptions.url === '/health') return;
      const h = req.headers.authorization ?? '';
      const m = /^Bearer\s+(.+)$/i.exec(h);
      const given = m ? Buffer.from(m[1].trim()) : Buffer.alloc(0);
      if (given.length !== this.#apiKey.length || !timingSafeEqual(given, this.#apiKey)) {
        const e = new HttpError(401, m ? 'Incorrect API key provided.' : 'You did not provide an API key: send it as "Authorization: Bearer <key>".', 'invalid_request_error', 'invalid_api_key');
        return reply.code(401).send(errorBody(e));
      }
    });
    app.setErrorHandler((err: Error & { validation?: unknown; statusCode?: number; code?: string; validationContext?: string }, _req, reply) => {
      let e: HttpError;
      if (err.validation) e = new HttpError(400, `${err.message}`, 'invalid_request_error', 'invalid_request');
      else if (err.code === 'FST_ERR_CTP_BODY_TOO_LARGE') e = new HttpError(413, `the request body is larger than ${app.initialConfig.bodyLimit} bytes`, 'invalid_request_error', 'request_too_large');
      else if (err.statusCode === 415 || err.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE') e = new HttpError(415, `${err.message}: send JSON (Content-Type: application/json)`, 'invalid_request_error', 'unsupported_media_type');
      else if (err.statusCode !== undefined && err.statusCode >= 400 && err.statusCode < 500) e = new HttpError(err.statusCode, err.message, 'invalid_request_error', err.code ?? null);
      else e = toHttpError(err);
      if (e.status === 429) reply.header('retry-after', '1');
      return reply.code(e.status).send(errorBody(e));
    });
    app.setNotFoundHandler((req, reply) => {
      reply.code(404).send(errorBody(new HttpError(404, `no route ${req.method} ${req.url.split('?')[0]} (POST /v1/completions, POST /v1/chat/completions, GET /v1/models, GET /health, GET /metrics)`, 'invalid_request_error', 'not_found')));
    });

    app.get('/health', async (_req, reply) => {
      const s = this.engine.stats;
      const body = { status: this.#draining ? 'shutting_down' : 'ok', running: s.running, waiting: s.waiting };
      return reply.code(this.#draining ? 503 : 200).send(body);
    });
    app.get('/v1/models', async () => ({
      object: 'list',
      data: [{ id: this.modelName, object: 'model', created: this.#created, owned_by: 'moe-kernels', max_model_len: this.engine.maxContext }],
    }));
    app.get('/metrics', async (_req, reply) => {
      reply.header('content-type', this.#metrics.registry.contentType);
      return this.#metrics.registry.metrics();
    });
    app.post('/v1/completions', { schema: { body: COMPLETIONS_BODY } }, (req, reply) => this.#generate(req, reply, 'completions'));
    app.post('/v1/chat/completions', { schema: { body: CHAT_BODY } }, (req, reply) => this.#generate(req, reply, 'chat'));
  }

  #prompt(body: Body, kind: 'completions' | 'chat'): EnginePrompt {
    if (kind === 'chat') {
      const msgs = (body.messages as { role: string; content: string | { text: string }[] }[]).map((m) => ({
        role: m.role,
        content: typeof m.content === 'string' ? m.content : m.content.map((p) => p.text).join(''),
      }));
      return msgs as ChatMessage[];
    }
    let p = body.prompt as string | number[] | string[] | number[][];
    if (Array.isArray(p) && p.length === 1 && (typeof p[0] === 'string' || Array.isArray(p[0]))) p = p[0] as string | number[];
    return typeof p === 'string' ? p : { tokens: p as number[] };
  }

  #options(body: Body, kind: 'completions' | 'chat', prompt: { tokens: readonly number[] }, signal: AbortSignal): EngineGenerateOptions {
    const v = <T>(k: string): T | undefined => (body[k] ?? undefined) as T | undefined;
    let maxTokens = v<number>('max_completion_tokens') ?? v<number>('max_tokens');
    if (maxTokens === undefined) {
      if (kind === 'completions') maxTokens = this.#defaultMaxTokens;
      else {
        // what the context leaves after the prompt, at most defaultChatMaxTokens
        const n = 'tokens' in prompt ? prompt.tokens.length : 1;
        maxTokens = Math.max(1, Math.min(this.#defaultChatMaxTokens, this.engine.maxContext - n + 1));
      }
    }
    const stop = v<string | string[]>('stop');
    const topK = v<number>('top_k');
    const temperature = v<number>('temperature') ?? 1;
    return {
      maxTokens,
      temperature,
      topP: v<number>('top_p'),
      topK: topK === undefined || topK < 0 ? 0 : topK,
      minP: v<number>('min_p'),
      presencePenalty: v<number>('presence_penalty'),
      frequencyPenalty: v<number>('frequency_penalty'),
      repetitionPenalty: v<number>('repetition_penalty'),
      // no seed: a fresh one per request, as OpenAI's sampling is not reproducible without one
      seed: v<number>('seed') ?? (temperature > 0 ? randomBytes(6).readUIntBE(0, 6) : 0),
      stop: stop === undefined ? undefined : typeof stop === 'string' ? [stop] : stop,
      signal,
    };
  }

  async #generate(req: FastifyRequest, reply: FastifyReply, kind: 'completions' | 'chat'): Promise<unknown> {
    const endpoint = kind === 'chat' ? '/v1/chat/completions' : '/v1/completions';
    const m = this.#metrics;
    if (this.#draining) {
      m.requests.inc({ endpoint, status: '503' });
      return reply.code(503).send(errorBody(new HttpError(503, 'the server is shutting down', 'server_error', 'shutting_down')));
    }
    const body = req.body as Body;
    const started = process.hrtime.bigint();
    const ac = new AbortController();
    let gen: Generation;
    try {
      // encoded once here: a chat request's default max_tokens depends on the prompt's length
      const prompt = { tokens: this.engine.encode(this.#prompt(body, kind)) };
      gen = this.engine.generate(prompt, this.#options(body, kind, prompt, ac.signal));
    } catch (e) {
      const h = toHttpError(e);
      m.requests.inc({ endpoint, status: String(h.status) });
      if (h.status === 429) reply.header('retry-after', '1');
      return reply.code(h.status).send(errorBody(h));
    }
    this.#inflight.add(ac);
    const res = reply.raw;
    // the client went away before the answer was written: cancel the sequence (blocks freed now)
    const onClose = () => {
      if (!res.writableFinished) ac.abort(new MoeError('the client disconnected', 'ERR_ABORTED'));
    };
    res.on('close', onClose);
    const id = `${kind === 'chat' ? 'chatcmpl' : 'cmpl'}-${randomBytes(12).toString('hex')}`;
    const created = Math.floor(Date.now() / 1000);
    const stream = body.stream === true;
    const includeUsage = stream && (body.stream_options as { include_usage?: boolean } | null)?.include_usage === true;
    let last = 0n;
    let text = '';
    const tokens: number[] = [];
    const onToken = (t: { token: number; text: string }) => {
      const now = process.hrtime.bigint();
      if (tokens.length === 0) m.ttft.observe(Number(now - started) / 1e9);
      else m.tpot.observe(Number(now - last) / 1e9);
      last = now;
      tokens.push(t.token);
      text += t.text;
      m.generatedTokens.inc();
      const sec = Math.floor(Date.now() / 1000);
      m.recent.set(sec, (m.recent.get(sec) ?? 0) + 1);
    };
    try {
      m.promptTokens.inc(gen.promptTokens.length);
      if (!stream) {
        let finish: { finishReason: string; usage: { promptTokens: number; completionTokens: number; totalTokens: number } } | null = null;
        for await (const c of gen) {
          if ('finishReason' in c) finish = c;
          else onToken(c);
        }
        if (!finish) throw new MoeError('the generation was cancelled', 'ERR_ABORTED');
        const usage = { prompt_tokens: finish.usage.promptTokens, completion_tokens: finish.usage.completionTokens, total_tokens: finish.usage.totalTokens };
        const choice =
          kind === 'chat'
            ? { index: 0, message: { role: 'assistant', content: text }, logprobs: null, finish_reason: finish.finishReason }
            : { index: 0, text, logprobs: null, finish_reason: finish.finishReason, token_ids: tokens };
        m.requests.inc({ endpoint, status: '200' });
        return reply.send({ id, object: kind === 'chat' ? 'chat.completion' : 'text_completion', created, model: this.modelName, choices: [choice], usage });
      }
      // SSE: the handler writes the stream itself
      reply.hijack();
      res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache', 'x-accel-buffering': 'no' });
      res.flushHeaders(); // the client sees its 200 now, also while the request waits for a place
      const send = (o: unknown) => res.write(`data: ${JSON.stringify(o)}\n\n`);
      const object = kind === 'chat' ? 'chat.completion.chunk' : 'text_completion';
      const chunk = (choice: Record<string, unknown>, extra: Record<string, unknown> = {}) => send({ id, object, created, model: this.modelName, choices: [choice], ...extra });
      if (kind === 'chat') chunk({ index: 0, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null });
      try {
        for await (const c of gen) {
          if ('finishReason' in c) {
            if (kind === 'chat') chunk({ index: 0, delta: {}, logprobs: null, finish_reason: c.finishReason });
            else chunk({ index: 0, text: '', logprobs: null, finish_reason: c.finishReason });
            if (includeUsage)
              send({ id, object, created, model: this.modelName, choices: [], usage: { prompt_tokens: c.usage.promptTokens, completion_tokens: c.usage.completionTokens, total_tokens: c.usage.totalTokens } });
            continue;
          }
          onToken(c);
          if (kind === 'chat') {
            if (c.text) chunk({ index: 0, delta: { content: c.text }, logprobs: null, finish_reason: null });
          } else chunk({ index: 0, text: c.text, logprobs: null, finish_reason: null, token_ids: [c.token] });
        }
        m.requests.inc({ endpoint, status: '200' });
      } catch (e) {
        // headers are out: the error goes into the stream
        const h = toHttpError(ac.signal.aborted && ac.signal.reason instanceof Error ? ac.signal.reason : e);
        m.requests.inc({ endpoint, status: ac.signal.aborted && res.destroyed ? 'disconnected' : String(h.status) });
        if (!res.destroyed) send(errorBody(h));
      }
      if (!res.destroyed) res.end('data: [DONE]\n\n');
      return reply;
    } catch (e) {
      const h = toHttpError(ac.signal.aborted && ac.signal.reason instanceof MoeError && this.#draining ? ac.signal.reason : e);
      m.requests.inc({ endpoint, status: res.destroyed ? 'disconnected' : String(h.status) });
      if (res.destroyed) {
        reply.hijack(); // nothing can be sent: fastify must not wait for a reply
        return reply;
      }
      return reply.code(h.status).send(errorBody(h));
    } finally {
      gen.cancel(); // a no-op when it ended; frees the blocks when the handler left early
      res.off('close', onClose);
      this.#inflight.delete(ac);
    }
  }

  #makeMetrics(): Metrics {
    const prom = require('prom-client') as typeof Prom;
    const registry = new prom.Registry();
    const engine = this.engine;
    const recent = new Map<number, number>();
    const gauge = (name: string, help: string, get: () => number) =>
      new prom.Gauge({
        name,
        help,
        registers: [registry],
        collect() {
          this.set(get());
        },
      });
    gauge('moe_queue_depth', 'Sequences waiting for a place or for KV blocks', () => engine.stats.waiting);
    gauge('moe_running_sequences', 'Sequences running (holding KV blocks)', () => engine.stats.running);
    gauge('moe_kv_blocks_used', 'KV blocks in use (per layer)', () => engine.stats.usedBlocks);
    gauge('moe_kv_blocks_total', 'KV blocks of the pool (per layer)', () => engine.stats.totalBlocks);
    gauge('moe_engine_steps', 'Forward steps the engine has run', () => engine.stats.steps);
    gauge('moe_preemptions', 'Sequences sent back to the queue for lack of KV blocks', () => engine.stats.preemptions);
    gauge('moe_tokens_per_second', 'Tokens generated per second over the last 10 s', () => {
      const now = Math.floor(Date.now() / 1000);
      let n = 0;
      for (const [sec, c] of recent) {
        if (sec < now - 10) recent.delete(sec);
        else if (sec < now) n += c;
      }
      return n / 10;
    });
    return {
      registry,
      recent,
      requests: new prom.Counter({ name: 'moe_requests_total', help: 'Generation requests by endpoint and status', labelNames: ['endpoint', 'status'] as const, registers: [registry] }),
      promptTokens: new prom.Counter({ name: 'moe_prompt_tokens_total', help: 'Prompt tokens of accepted requests', registers: [registry] }),
      generatedTokens: new prom.Counter({ name: 'moe_generated_tokens_total', help: 'Tokens generated', registers: [registry] }),
      ttft: new prom.Histogram({ name: 'moe_time_to_first_token_seconds', help: 'From the request to its first token', buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30], registers: [registry] }),
      tpot: new prom.Histogram({ name: 'moe_time_per_output_token_seconds', help: 'Between two tokens of a request', buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5], registers: [registry] }),
    };
  }
}

/** `new MoeServer(engine, options)`: see MoeServer. */
export function createServer(engine: Engine, options?: ServerOptions): MoeServer {
  return new MoeServer(engine, options);
}
