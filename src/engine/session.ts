// Multi-turn sessions: the images are encoded and prefilled once; each question reuses their KV
// cache and, with decode sparsity, retrieves its own visual tokens. With FastV or PyramidDrop the
// first question prunes the cache for good and the later ones continue the pruned cache.
import { DecoderCache } from '../model/decoder.js';
import { ChatContentPart, ChatMessage } from '../io/chat-template.js';
import { PrefillReducer } from '../sparsity/method.js';
import { PrunedCacheLayout } from '../sparsity/decode.js';
import { GenerateOptions, GenerationResult, ImageInput, decodeMethodOf, prefillReducerOf } from './options.js';
import { ImageRows, ModelCore } from './core.js';
import { runTurn } from './generation.js';
import { GenerationError, checkGenerateOptions, checkNoTypedPlaceholder } from './request.js';

export interface SessionOptions {
  /**
   * `chat`: the history accumulates, each question sees the earlier turns (when it no longer fits
   * the context window, the oldest turns after the images are dropped). `independent`: before
   * each question the cache is truncated back to the end of the visual context, so no earlier
   * answer leaks into a later one (each answer equals asking in a fresh session). Default `chat`.
   */
  mode?: 'chat' | 'independent';
  /** SparseVILA prefill sparsity for the session's images (fixed once they are encoded). */
  prefillSparsity?: number;
  /** Or another prefill method (e.g. visionZipPrefill(64)); not with prefillSparsity. */
  prefill?: PrefillReducer;
}

/** A conversation about a fixed set of images. */
export class Session {
  readonly mode: 'chat' | 'independent';
  readonly prefillSparsity: number;
  private readonly reducer: PrefillReducer;
  /** The images' rows once encoded (owned by the session). */
  private features: ImageRows[] | null = null;
  private cache: DecoderCache | null;
  /** The tokens whose K/V the cache holds, in slot order. */
  private cached: number[] = [];
  /** The conversation so far as text (user, assistant, ...); the images join the first user message when it is rendered. */
  private history: ChatMessage[] = [];
  /** End of the visual context: the slot after the last image token (0 before the first turn). */
  private visualEnd = 0;
  /**
   * Set when the first question's prefill pruned the cache for good (FastV, PyramidDrop): the later
   * questions continue that cache and see only the visual tokens it kept.
   */
  private layout: PrunedCacheLayout | null = null;
  /** Questions run one at a time, in the order asked. */
  private queue: Promise<unknown> = Promise.resolve();
  /** How many times the images were encoded (once per session). */
  encodes = 0;
  private closed = false;

  constructor(
    readonly model: ModelCore,
    readonly images: ImageInput[],
    opts: SessionOptions = {},
  ) {
    this.mode = opts.mode ?? 'chat';
    if (this.mode !== 'chat' && this.mode !== 'independent') throw new GenerationError(`session mode ${String(this.mode)} is not chat or independent`);
    if (!Array.isArray(images)) throw new GenerationError(`a session's images must be an array, got ${typeof images}`);
    this.prefillSparsity = opts.prefillSparsity ?? 0;
    this.reducer = prefillReducerOf(opts);
    if (images.length > 0 && !model.takesImages) throw model.noImages();
    this.cache = model.decoder.newCache();
  }

  /** Slots the session's cache holds (the visual context plus what the turns added and kept). */
  get cacheLength(): number {
    return this.cache?.length ?? 0;
  }
  /** The slot after the session's last image token. */
  get visualContextEnd(): number {
    return this.visualEnd;
  }
  /** Turns (question and answer) the chat history holds now. */
  get turns(): number {
    return this.history.length / 2;
  }

  /**
   * Asks a question and streams the answer (opts as for generate; prefillSparsity is the
   * session's). The first question encodes the images and prefills them with it; later ones reuse
   * the cached prefix and prefill only what is new. Questions asked before the last one is
   * answered wait their turn. A refused question (too long, bad options) changes nothing.
   */
  ask(question: string, opts: GenerateOptions = {}): Promise<GenerationResult> {
    const run = this.queue.then(() => this.askNow(question, opts));
    this.queue = run.catch(() => undefined);
    return run;
  }

  /** The messages of a question with the history (chat mode, from turn `start` on); the images join the first user message. */
  private messagesFor(user: ChatMessage, start: number): ChatMessage[] {
    const messages = this.mode === 'chat' ? [...this.history.slice(start), user] : [user];
    const images: ChatContentPart[] = this.images.map(() => ({ type: 'image' }));
    const first = messages[0];
    messages[0] = { role: first.role, content: [...images, ...(first.content as ChatContentPart[])] };
    return messages;
  }

  private async askNow(question: string, opts: GenerateOptions): Promise<GenerationResult> {
    if (this.closed || !this.cache) throw new GenerationError('the session is closed');
    if (typeof question !== 'string') throw new GenerationError(`a question must be a string, got ${typeof question}`);
    if (opts.prefillSparsity !== undefined && opts.prefillSparsity !== this.prefillSparsity) {
      throw new GenerationError(`prefill sparsity is fixed for a session (${this.prefillSparsity}); got ${opts.prefillSparsity}`);
    }
    checkGenerateOptions(opts);
    decodeMethodOf({ ...opts, prefillSparsity: undefined });
    const m = this.model,
      t0 = performance.now();
    const user: ChatMessage = { role: 'user', content: [{ type: 'text', text: question }] };
    // The question is checked before the images are encoded (a typed placeholder, a template error);
    // once they are, rendering the conversation below checks it.
    if (m.imagePlaceholder !== null) checkNoTypedPlaceholder([user], m.imagePlaceholder, 'the question');
    if (!this.features) m.promptText({ images: this.images, messages: this.messagesFor(user, this.history.length) });
    const imageCached = this.features !== null;
    if (!this.features) {
      if (opts.signal?.aborted) return m.abortedResult(t0);
      if (this.images.length) {
        this.features = await m.imageFeatures(this.images, this.reducer);
      } else {
        this.features = [];
      }
      this.encodes++;
    }
    const t1 = performance.now();
    const counts = this.features;
    // Chat mode: when the conversation and room for the answer no longer fit the context window,
    // drop the oldest turns after the images (for good) until a quarter of the window is free
    // besides, so that the next questions reuse the cache again instead of shifting it each time.
    const reserve = Math.min(opts.maxNewTokens ?? 256, Math.floor(m.contextWindow / 4));
    let start = 0;
    let ids = m.idsFor({ images: this.images, messages: this.messagesFor(user, start) }, counts);
    if (this.mode === 'chat' && ids.length + reserve > m.contextWindow) {
      const target = m.contextWindow - reserve - Math.floor(m.contextWindow / 4);
      while (start < this.history.length && (ids.length + reserve > m.contextWindow || ids.length > target)) {
        start += 2;
        ids = m.idsFor({ images: this.images, messages: this.messagesFor(user, start) }, counts);
      }
    }
    m.checkPromptLength(ids.length);
    if (start > 0 && this.layout) {
      throw new GenerationError(
        `the conversation no longer fits the context window of ${m.contextWindow} tokens, and this session's cache was pruned by its first question (FastV / PyramidDrop), so its oldest turns cannot be dropped: start a new session`,
      );
    }
    // Reuse the longest cached prefix; independent questions never reuse past the visual context.
    let common = 0;
    while (common < this.cached.length && common < ids.length && this.cached[common] === ids[common]) common++;
    if (this.mode === 'independent' && this.visualEnd > 0) common = Math.min(common, this.visualEnd);
    common = Math.min(common, ids.length - 1);
    if (m.config.imageFacts && this.images.length) {
      const last = ids.lastIndexOf(m.config.imageFacts.tokenId);
      if (last < 0) throw new GenerationError('the rendered prompt has no image tokens');
      this.visualEnd = last + 1;
    }
    if (opts.decode?.prunesCache && !this.layout && common > 0) {
      throw new GenerationError(`${opts.decode.name} drops tokens inside the prefill: it must prune the session's first question, not a later one`);
    }
    if (this.layout && common < this.layout.end) {
      throw new GenerationError(
        `this question changes the conversation before the end of the first question, which FastV / PyramidDrop pruned for good: start a new session`,
      );
    }
    if (start > 0) this.history = this.history.slice(start);
    m.decoder.truncateCache(this.cache, common);
    this.cached = this.cached.slice(0, common); // stays true if the turn fails
    const r = await runTurn(m, {
      ids,
      images: this.features,
      cache: this.cache,
      slot0: common,
      opts: { ...opts, prefillSparsity: undefined, prefill: undefined },
      t0,
      t1,
      visualIn: this.features.reduce((a, f) => a + f.denseRows, 0),
      imageCached,
      historyTurnsDropped: start / 2,
      layout: this.layout ?? undefined,
      onLayout: (l) => {
        this.layout = l;
      },
    });
    this.cached = [...ids, ...r.ids].slice(0, this.cache.length);
    if (this.mode === 'chat') this.history.push(user, { role: 'assistant', content: [{ type: 'text', text: r.text }] });
    return r;
  }

  /** Releases the session's cache and image features. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.cache) this.model.decoder.freeCache(this.cache);
    for (const f of this.features ?? []) this.model.backend.free(f.features);
    this.cache = null;
    this.features = null;
  }
}
