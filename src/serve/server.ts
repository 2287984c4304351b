// The OpenAI-compatible server (Fastify): POST /v1/chat/completions (JSON or SSE), GET /v1/models,
// /health and /metrics. Requests go through the fair queue, then the prefix cache, which reuses the
// K/V of earlier requests' images and turns; each request may choose its sparsity method.
import { timingSafeEqual } from 'node:crypto';
import { ServerResponse } from 'node:http';
import { fastify, FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { VisionLanguageModel, GenerateOptions } from '../engine/vlm.js';
import { CachedGenerationResult, CachedImageInput, PrefixCache } from '../engine/prefix-cache.js';
import { allocatedBytes } from '../engine/core.js';
import { ChosenMethod, MethodChoice, checkMethodForModel, chooseMethod, knobFlag, methodChoiceOf, methodStages } from '../sparsity/choice.js';
import { ApiError, apiErrorOf } from './errors.js';
import { ChatRequest, fieldName, parseChatRequest } from './chat-request.js';
import { MediaOptions, fetchMedia } from './media.js';
import { Metrics } from './metrics.js';
import { Scheduler } from './scheduler.js';

export interface ServeOptions {
  /** The id clients name in `model` (default: the model folder's name). */
  modelId: string;
  /** Required as `Authorization: Bearer <key>` on every route but /health, when set. */
  apiKey?: string;
  /** The real path file URLs may read under; null: no file URLs. */
  allowedMediaRoot: string | null;
  allowRemoteMedia: boolean;
  /** Most bytes of a request body (images as data URLs included). Default 64 MiB. */
  maxBodyBytes?: number;
  /** Most images in one request. Default 16. */
  maxImages?: number;
  /** Bytes of K/V and image rows kept between requests. Default 1 GiB. */
  cacheBytes?: number;
  /** Requests generating at once (their steps interleave). Default 2. */
  parallel?: number;
  /** Requests waiting beyond those; more get 429. Default 64. */
  maxQueue?: number;
  /** The sparsity method of requests that name none (default dense). */
  method?: MethodChoice;
  /** max_tokens when a request gives none. Default 256. */
  defaultMaxTokens?: number;
  /** Where internal errors are logged (default console.error). */
  log?: (message: string) => void;
}

const created = Math.floor(Date.now() / 1000);

type Usage = ReturnType<typeof usageOf>;

function usageOf(r: CachedGenerationResult, m: ChosenMethod, queueMs: number, ttftMs: number | null, totalMs: number) {
  const s = r.stats;
  return {
    prompt_tokens: s.promptTokens,
    completion_tokens: s.newTokens,
    total_tokens: s.promptTokens + s.newTokens,
    prompt_tokens_details: { cached_tokens: r.cache.cachedTokens },
    completion_tokens_details: { reasoning_tokens: 0 },
    sparsevila: {
      method: m.label,
      prefill_sparsity: m.prefill,
      decode_sparsity: m.decode,
      visual_tokens_in: s.visualTokensIn,
      visual_tokens_kept: s.imageTokens,
      visual_tokens_retrieved: s.visualTokensRetrieved,
      prefilled_tokens: s.prefilledTokens,
      cache: { reuse: r.cache.reuse, images_cached: r.cache.imagesCached, images_encoded: r.cache.imagesEncoded, evictions: r.cache.evictions },
      timings: {
        queue_ms: round(queueMs),
        image_ms: round(s.imageMs),
        prefill_ms: round(s.prefillMs),
        decode_ms: round(s.decodeMs),
        ttft_ms: ttftMs === null ? null : round(ttftMs),
        total_ms: round(totalMs),
        decode_tokens_per_second: round(s.decodeTokensPerSecond),
      },
    },
  };
}

const round = (x: number): number => Math.round(x * 100) / 100;

const finishReason = (r: CachedGenerationResult): 'stop' | 'length' => (r.finishReason === 'eos' || r.finishReason === 'stop' ? 'stop' : 'length');

export class SparsevilaServer {
  readonly app: FastifyInstance;
  readonly cache: PrefixCache;
  readonly scheduler: Scheduler;
  readonly metrics = new Metrics();
  private readonly running = new Set<AbortController>();
  private closing = false;
  private readonly media: MediaOptions;
  private readonly log: (message: string) => void;
  private ids = 0;

  constructor(
    readonly model: VisionLanguageModel,
    readonly opts: ServeOptions,
  ) {
    this.cache = new PrefixCache(model, { budgetBytes: opts.cacheBytes ?? 2 ** 30 });
    this.scheduler = new Scheduler(opts.parallel ?? 2, opts.maxQueue ?? 64);
    this.media = { allowedMediaRoot: opts.allowedMediaRoot, allowRemoteMedia: opts.allowRemoteMedia, maxImageBytes: model.imageLimits.maxBytes };
    this.log = opts.log ?? ((m) => console.error(m));
    // The server's default method is checked now, as a flag.
    chooseMethod(opts.method ?? {}, knobFlag);
    this.defineMetrics();
    this.app = fastify({ bodyLimit: opts.maxBodyBytes ?? 64 * 2 ** 20, logger: false, forceCloseConnections: 'idle', return503OnClosing: true });
    this.routes();
  }

  private defineMetrics(): void {
    const m = this.metrics;
    // One snapshot of the cache's counters per scrape.
    let stats = this.cache.stats();
    m.onScrape(() => {
      stats = this.cache.stats();
    });
    m.counter('sparsevila_requests_total', 'Chat completion requests answered, by HTTP status.');
    m.counter('sparsevila_requests_cancelled_total', 'Requests whose client went away before the answer was complete.');
    m.counter('sparsevila_prompt_tokens_total', 'Prompt tokens of answered requests.');
    m.counter('sparsevila_completion_tokens_total', 'Tokens generated.');
    m.counter('sparsevila_cached_tokens_total', 'Prompt tokens whose K/V came from the prefix cache.', () => stats.cachedTokens);
    m.counter('sparsevila_prefilled_tokens_total', 'Prompt tokens prefilled.', () => stats.prefilledTokens);
    m.counter('sparsevila_prefix_cache_hits_total', 'Requests that reused a cached prefix.', () => stats.prefixHits);
    m.counter('sparsevila_prefix_cache_misses_total', 'Requests that reused no cached prefix.', () => stats.prefixMisses);
    m.counter('sparsevila_image_cache_hits_total', 'Images whose rows came from the cache.', () => stats.imageHits);
    m.counter(
      'sparsevila_images_decoded_total',
      'Images decoded from their bytes (a resent image is known by the hash of its bytes).',
      () => stats.imagesDecoded,
    );
    m.counter('sparsevila_images_encoded_total', 'Images encoded by the vision tower.', () => stats.imagesEncoded);
    m.counter('sparsevila_cache_evictions_total', 'Cached conversations and images evicted to stay within the budget.', () => stats.evictions);
    m.counter('sparsevila_kv_released_total', 'Requests aborted or failed whose K/V was freed.', () => stats.released);
    m.gauge('sparsevila_cache_bytes', 'Bytes of K/V and image rows kept between requests.', () => stats.bytes);
    m.gauge('sparsevila_cache_budget_bytes', 'The budget of the prefix cache.', () => this.cache.budgetBytes);
    m.gauge('sparsevila_cache_entries', 'Cached conversations.', () => stats.entries);
    m.gauge('sparsevila_cache_images', 'Cached images.', () => stats.images);
    m.gauge('sparsevila_kv_active_bytes', 'Bytes of K/V held by running requests.', () => stats.activeBytes);
    m.gauge('sparsevila_queue_depth', 'Requests waiting for a turn.', () => this.scheduler.queueDepth);
    m.gauge('sparsevila_requests_running', 'Requests generating now.', () => this.scheduler.active);
    m.gauge('sparsevila_wasm_used_bytes', "Bytes allocated in the kernels' WebAssembly memories.", () => allocatedBytes(this.model.backend));
    m.gauge('process_resident_memory_bytes', 'Resident memory of the process.', () => process.memoryUsage.rss());
    m.gauge('nodejs_heap_used_bytes', 'JavaScript heap in use.', () => process.memoryUsage().heapUsed);
  }

  private routes(): void {
    const app = this.app;
    app.addHook('onRequest', async (req, reply) => {
      const key = this.opts.apiKey;
      if (!key || req.url === '/health') return;
      const given = /^Bearer (.+)$/.exec(req.headers.authorization ?? '')?.[1] ?? '';
      const a = Buffer.from(given),
        b = Buffer.from(key);
      if (a.length !== b.length || !timingSafeEqual(a, b)) {
        const e = new ApiError(401, 'a valid API key is required: Authorization: Bearer <key>', null, 'invalid_api_key');
        return reply.code(401).send(e.body());
      }
    });
    app.setErrorHandler((err: FastifyError, _req, reply) => {
      const status = err.statusCode && err.statusCode >= 400 && err.statusCode < 500 ? err.statusCode : 500;
      if (status === 500) this.log(`sparsevila serve: internal error: ${err.stack ?? err.message}`);
      const e = status === 500 ? apiErrorOf(err) : new ApiError(status, this.frameworkMessage(err), null, err.code ?? null);
      this.metrics.inc('sparsevila_requests_total', 1, { status: String(e.status) });
      void reply.code(e.status).send(e.body());
    });
    app.setNotFoundHandler((req, reply) => {
      const e = new ApiError(
        404,
        `no route ${req.method} ${req.url.split('?')[0]}: this server has POST /v1/chat/completions, GET /v1/models, /health and /metrics`,
        null,
        'not_found',
      );
      void reply.code(404).send(e.body());
    });
    app.get('/health', async (_req, reply) => {
      if (this.closing) return reply.code(503).send({ status: 'shutting_down' });
      return { status: 'ok', model: this.opts.modelId, running: this.scheduler.active, queued: this.scheduler.queueDepth };
    });
    app.get('/metrics', async (_req, reply) => reply.type('text/plain; version=0.0.4').send(this.metrics.render()));
    const card = () => ({ id: this.opts.modelId, object: 'model', created, owned_by: 'sparsevila' });
    app.get('/v1/models', async () => ({ object: 'list', data: [card()] }));
    app.get('/v1/models/:id', async (req: FastifyRequest<{ Params: { id: string } }>, reply) => {
      if (req.params.id !== this.opts.modelId) return reply.code(404).send(this.unknownModel(req.params.id).body());
      return card();
    });
    app.post('/v1/chat/completions', (req, reply) => this.chat(req, reply));
  }

  /** Fastify's own refusals (bad JSON, too large, wrong content type) in words a client can act on. */
  private frameworkMessage(err: FastifyError): string {
    if (err.code === 'FST_ERR_CTP_BODY_TOO_LARGE')
      return `the request body is larger than the ${this.app.initialConfig.bodyLimit} bytes allowed (--max-body-bytes)`;
    if (err.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE') return 'the request body must be JSON (Content-Type: application/json)';
    if (err.code === 'FST_ERR_CTP_EMPTY_JSON_BODY') return 'the request body is empty: expected a JSON object';
    if (err instanceof SyntaxError || err.code === 'FST_ERR_CTP_INVALID_JSON_BODY') return `the request body is not valid JSON: ${err.message}`;
    return err.message;
  }

  private unknownModel(id: string): ApiError {
    return new ApiError(
      404,
      `the model ${JSON.stringify(id)} does not exist: this server serves ${JSON.stringify(this.opts.modelId)}`,
      'model',
      'model_not_found',
    );
  }

  /** The method a request asks for: its own fields over the server's default (a method named by the request takes only its own knobs). */
  private methodOf(r: ChatRequest): ChosenMethod {
    const given = methodChoiceOf(r.method);
    const choice: MethodChoice = given.method ? given : { ...(this.opts.method ?? {}), ...given };
    const chosen = chooseMethod(choice, fieldName);
    checkMethodForModel(choice, this.model.decoder.layers, fieldName);
    return chosen;
  }

  private async chat(req: FastifyRequest, reply: FastifyReply): Promise<void> {
    const t0 = performance.now();
    const ac = new AbortController();
    const raw: ServerResponse = reply.raw;
    const onClose = () => {
      if (!raw.writableFinished) ac.abort(new ApiError(499, 'the client went away'));
    };
    raw.on('close', onClose);
    let started = false; // SSE headers sent
    try {
      const r = parseChatRequest(req.body, this.model.decoder.vocabSize);
      if (r.model !== this.opts.modelId) throw this.unknownModel(r.model);
      const maxImages = this.opts.maxImages ?? 16;
      if (r.images.length > maxImages)
        throw new ApiError(400, `messages: ${r.images.length} images, more than the ${maxImages} allowed (--max-images)`, 'messages', 'too_many_images');
      const ctx = this.model.contextWindow;
      if (r.maxTokens !== undefined && r.maxTokens >= ctx)
        throw new ApiError(400, `max_tokens ${r.maxTokens}: the model's context window is ${ctx} tokens`, 'max_tokens', 'context_length_exceeded');
      const method = this.methodOf(r);
      const images: CachedImageInput[] = [];
      for (const im of r.images) images.push({ data: im.url === null ? undefined : await fetchMedia(im.url, this.media, im.param), uuid: im.uuid });
      if (ac.signal.aborted) return this.cancelled(reply);
      const client = r.user ?? req.ip;
      const tq = performance.now();
      const release = await this.scheduler.acquire(client, ac.signal).catch((e: unknown) => {
        if (ac.signal.aborted) return null;
        throw e;
      });
      if (!release) return this.cancelled(reply);
      this.running.add(ac);
      const queueMs = performance.now() - tq;
      let ttft: number | null = null;
      const id = `chatcmpl-${Date.now().toString(36)}${(++this.ids).toString(36)}`;
      const chunk = (delta: Record<string, unknown>, finish: string | null, extra: Record<string, unknown> = {}) =>
        `data: ${JSON.stringify({ id, object: 'chat.completion.chunk', created: Math.floor(Date.now() / 1000), model: this.opts.modelId, system_fingerprint: null, choices: [{ index: 0, delta, logprobs: null, finish_reason: finish }], ...(r.includeUsage ? { usage: null } : {}), ...extra })}\n\n`;
      const startStream = () => {
        if (started) return;
        started = true;
        reply.hijack();
        raw.writeHead(200, {
          'content-type': 'text/event-stream; charset=utf-8',
          'cache-control': 'no-cache',
          connection: 'keep-alive',
          'x-accel-buffering': 'no',
        });
        raw.write(chunk({ role: 'assistant', content: '' }, null));
      };
      let result: CachedGenerationResult;
      try {
        const gen: GenerateOptions = {
          maxNewTokens: r.maxTokens ?? Math.min(this.opts.defaultMaxTokens ?? 256, ctx - 1),
          temperature: r.temperature,
          topP: r.topP,
          seed: r.seed ?? (r.temperature > 0 ? Math.floor(Math.random() * 2 ** 31) : 0),
          stop: r.stop,
          logitBias: r.logitBias,
          ...methodStages(method),
          signal: ac.signal,
          onToken: (text) => {
            ttft ??= performance.now() - t0;
            if (!r.stream) return;
            startStream();
            if (text && !raw.destroyed) raw.write(chunk({ content: text }, null));
          },
        };
        result = await this.cache.generate({ messages: r.messages, images, mode: r.mode, maxPixels: r.maxPixels }, gen);
      } finally {
        this.running.delete(ac);
        release();
      }
      if (result.finishReason === 'abort') return this.cancelled(reply);
      const usage: Usage = usageOf(result, method, queueMs, ttft, performance.now() - t0);
      this.metrics.inc('sparsevila_prompt_tokens_total', usage.prompt_tokens);
      this.metrics.inc('sparsevila_completion_tokens_total', usage.completion_tokens);
      this.metrics.inc('sparsevila_requests_total', 1, { status: '200' });
      if (r.stream) {
        startStream();
        raw.write(chunk({}, finishReason(result)));
        if (r.includeUsage)
          raw.write(
            `data: ${JSON.stringify({ id, object: 'chat.completion.chunk', created: Math.floor(Date.now() / 1000), model: this.opts.modelId, system_fingerprint: null, choices: [], usage })}\n\n`,
          );
        raw.end('data: [DONE]\n\n');
        return;
      }
      void reply.send({
        id,
        object: 'chat.completion',
        created: Math.floor(Date.now() / 1000),
        model: this.opts.modelId,
        system_fingerprint: null,
        choices: [{ index: 0, message: { role: 'assistant', content: result.text, refusal: null }, logprobs: null, finish_reason: finishReason(result) }],
        usage,
      });
    } catch (e) {
      if (ac.signal.aborted) return this.cancelled(reply);
      const err = apiErrorOf(e);
      if (err.status >= 500) this.log(`sparsevila serve: internal error: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
      this.metrics.inc('sparsevila_requests_total', 1, { status: String(err.status) });
      if (started) {
        // The stream has begun: the error is its last event.
        if (!raw.destroyed) raw.end(`data: ${JSON.stringify(err.body())}\n\n`);
        return;
      }
      if (err.status === 429) void reply.header('retry-after', String(this.scheduler.retryAfterSeconds()));
      void reply.code(err.status).send(err.body());
    } finally {
      raw.off('close', onClose);
    }
  }

  /** The client went away: nothing to send; the connection is closed. */
  private cancelled(reply: FastifyReply): void {
    this.metrics.inc('sparsevila_requests_cancelled_total');
    if (!reply.sent) reply.hijack();
    if (!reply.raw.destroyed) reply.raw.destroy();
  }

  /** Listens; returns the base URL. */
  async listen(host: string, port: number): Promise<string> {
    return this.app.listen({ host, port });
  }

  /**
   * Graceful shutdown: new requests and those waiting get 503, running ones finish (aborted after
   * `graceMs`), then the cache is freed.
   */
  async close(graceMs = 30_000): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    this.scheduler.close();
    const timer = setTimeout(() => {
      for (const ac of this.running) ac.abort(new ApiError(503, 'the server is shutting down'));
    }, graceMs);
    try {
      await this.app.close();
      while (this.running.size > 0) await new Promise((r) => setTimeout(r, 20));
    } finally {
      clearTimeout(timer);
      this.cache.close();
    }
  }
}
