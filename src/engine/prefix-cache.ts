// Conversations across stateless requests (an OpenAI-style server resends the whole conversation,
// images included, every turn): images are keyed by a hash of their decoded pixels (or a client's
// id for them), their rows and the KV caches of earlier requests are kept under a memory budget,
// and a request reuses the longest cached prefix of its prompt, images included. Only the new part
// is prefilled; SparseVILA's decode retrieval scores the new question as in a session.
import { DecoderCache } from '../model/decoder.js';
import { ChatContentPart, ChatMessage } from '../io/chat-template.js';
import { RgbImage, resize } from '../io/image.js';
import { PrefillReducer } from '../sparsity/method.js';
import { GenerateOptions, GenerationResult, ImageInput, decodeMethodOf, prefillReducerOf } from './options.js';
import { ImageRows, ModelCore } from './core.js';
import { runTurn } from './generation.js';
import { GenerationError, checkGenerateOptions, checkMessages } from './request.js';

/** An image of a request: its data, a client's id for it, or both. */
export interface CachedImageInput {
  /** A file path, encoded bytes or decoded pixels. Without it, `uuid` must name an image the cache holds. */
  data?: ImageInput;
  /**
   * The client's id for this image. With data, later requests may send the id alone; without,
   * the image is the one last sent with this id (refused when the cache no longer holds it).
   */
  uuid?: string;
}

export interface ConversationRequest {
  /** The conversation; each `{ type: 'image' }` part stands for the next image of `images`. */
  messages: ChatMessage[];
  images: CachedImageInput[];
  /**
   * `chat` (default): the whole conversation. `independent`: the leading system messages and the
   * last user message's text, with every image of the conversation before it (earlier turns are
   * not seen; as a session's independent mode).
   */
  mode?: 'chat' | 'independent';
  /** A pixel budget: larger images are first scaled down (aspect kept, bicubic) to at most this many pixels. */
  maxPixels?: number;
}

/** How a request used the cache. */
export interface CacheUse {
  /** Prompt tokens whose K/V came from the cache (not prefilled again). */
  cachedTokens: number;
  /** Images whose rows came from the cache (not encoded again), and images encoded. */
  imagesCached: number;
  imagesEncoded: number;
  /** `extend`: an earlier conversation's cache continued; `branch`: a copy of its prefix; `new`: nothing reused. */
  reuse: 'extend' | 'branch' | 'new';
  /** Cached conversations and images evicted (least recently used) to stay within the budget after this request. */
  evictions: number;
}

export interface CachedGenerationResult extends GenerationResult {
  cache: CacheUse;
}

export interface PrefixCacheOptions {
  /** Bytes of K/V caches and image rows kept between requests; least recently used go first. Default 1 GiB. */
  budgetBytes?: number;
  /** Client image ids remembered (least recently used go first). Default 4096. */
  maxUuids?: number;
}

/** The cache's state and counters since it was made. */
export interface PrefixCacheStats {
  /** Cached conversations and images (idle or in use), and the bytes they hold. */
  entries: number;
  images: number;
  bytes: number;
  /** Bytes of the K/V caches requests are running on now (in the budget once they finish). */
  activeBytes: number;
  budgetBytes: number;
  /** Requests that reused a cached prefix, and those that did not. */
  prefixHits: number;
  prefixMisses: number;
  imageHits: number;
  /** Images decoded from their bytes (a resent image is known by its bytes' hash and not decoded again). */
  imagesDecoded: number;
  imagesEncoded: number;
  evictions: number;
  cachedTokens: number;
  prefilledTokens: number;
  /** Requests aborted or failed, whose K/V was freed. */
  released: number;
}

interface Entry {
  cache: DecoderCache;
  /** The tokens whose K/V the cache holds, in slot order (while busy: the prefix the running request keeps). */
  ids: number[];
  /** The image keys of its image tokens, in order. */
  imageKeys: string[];
  /** Slots where a turn may start without changing what a decode method scores: 0, each image's end, each turn's end. */
  cuts: number[];
  /** A request is running on it (it is not evicted; its K/V past `ids` is the request's). */
  busy: boolean;
  tick: number;
}

interface ImageItem {
  key: string;
  rows: ImageRows;
  pins: number;
  tick: number;
}

const imageBytes = (im: ImageItem): number => im.rows.features.rows * im.rows.features.ld * 4;

/** The tail of an entry that a request may cut off instead of branching (tokens). */
const TRUNCATE_TAIL = 32;

/** SHA-256 in hex (WebCrypto: Node and browsers). */
async function sha256(data: Uint8Array): Promise<string> {
  const own = (data.buffer instanceof ArrayBuffer ? data : data.slice()) as Uint8Array<ArrayBuffer>; // not a shared buffer
  const digest = new Uint8Array(await globalThis.crypto.subtle.digest('SHA-256', own));
  return Array.from(digest, (b) => b.toString(16).padStart(2, '0')).join('');
}

/** An image's key: its size and the SHA-256 of its pixels. */
async function pixelKey(img: RgbImage): Promise<string> {
  return `${img.width}x${img.height}:${await sha256(img.data)}`;
}

/** Sets a key of a bounded map as the most recent, dropping the oldest beyond `max`. */
function remember(map: Map<string, string>, key: string, value: string, max: number): void {
  map.delete(key);
  map.set(key, value);
  while (map.size > max) map.delete(map.keys().next().value!);
}

/** The size an image of w×h takes under a pixel budget (aspect kept, each side at least 1). */
export function sizeWithin(w: number, h: number, maxPixels: number): { width: number; height: number } {
  if (w * h <= maxPixels) return { width: w, height: h };
  const s = Math.sqrt(maxPixels / (w * h));
  let width = Math.max(1, Math.floor(w * s)),
    height = Math.max(1, Math.floor(h * s));
  while (width * height > maxPixels) {
    if (width >= height) width--;
    else height--;
  }
  return { width, height };
}

/** The messages a request renders: the conversation (chat), or its images and last question (independent). */
function messagesOf(req: ConversationRequest): ChatMessage[] {
  if ((req.mode ?? 'chat') === 'chat') return req.messages;
  const lastUser = [...req.messages].reverse().find((m) => m.role === 'user');
  if (!lastUser) throw new GenerationError('independent mode answers the last user message, and the messages have none');
  const images: ChatContentPart[] = [];
  for (const m of req.messages) if (typeof m.content !== 'string') for (const p of m.content) if (p.type === 'image') images.push(p);
  const text: ChatContentPart[] =
    typeof lastUser.content === 'string' ? [{ type: 'text', text: lastUser.content }] : lastUser.content.filter((p) => p.type === 'text');
  const systems: ChatMessage[] = [];
  for (const m of req.messages) {
    if (m.role !== 'system') break;
    systems.push(m);
  }
  return [...systems, { role: 'user', content: [...images, ...text] }];
}

export class PrefixCache {
  readonly budgetBytes: number;
  private readonly maxUuids: number;
  private readonly entries = new Set<Entry>();
  private readonly images = new Map<string, ImageItem>();
  /** Images being encoded: one encode per key however many requests ask (each waiter pinned when it lands). */
  private readonly encoding = new Map<string, { done: Promise<ImageItem>; waiters: number }>();
  /** Client id (and pixel budget) -> the pixel key of the image last sent with it. */
  private readonly uuids = new Map<string, string>();
  /**
   * SHA-256 of encoded bytes (and pixel budget) -> the pixel key they decode to: a resent image
   * (the same bytes every turn) is not decoded again to find its key.
   */
  private readonly encoded = new Map<string, string>();
  private ticks = 0;
  private closed = false;
  private readonly counters = {
    prefixHits: 0,
    prefixMisses: 0,
    imageHits: 0,
    imagesDecoded: 0,
    imagesEncoded: 0,
    evictions: 0,
    cachedTokens: 0,
    prefilledTokens: 0,
    released: 0,
  };

  constructor(
    readonly model: ModelCore,
    opts: PrefixCacheOptions = {},
  ) {
    const budget = opts.budgetBytes ?? 2 ** 30;
    if (typeof budget !== 'number' || !Number.isFinite(budget) || budget < 0)
      throw new GenerationError(`budgetBytes must be a number >= 0, got ${String(budget)}`);
    this.budgetBytes = budget;
    this.maxUuids = opts.maxUuids ?? 4096;
  }

  stats(): PrefixCacheStats {
    let activeBytes = 0;
    for (const e of this.entries) if (e.busy) activeBytes += e.cache.bytes;
    return { entries: this.entries.size, images: this.images.size, bytes: this.idleBytes(), activeBytes, budgetBytes: this.budgetBytes, ...this.counters };
  }

  /** Bytes of what requests are not running on: idle conversations and image rows. */
  private idleBytes(): number {
    let bytes = 0;
    for (const e of this.entries) if (!e.busy) bytes += e.cache.bytes;
    for (const im of this.images.values()) bytes += imageBytes(im);
    return bytes;
  }

  /**
   * Answers the last turn of a conversation, reusing the longest prefix of its prompt that an
   * earlier request left cached (its images' tokens only where they are the same images, by
   * pixels, prefill method and budget). opts as for generate().
   */
  async generate(req: ConversationRequest, opts: GenerateOptions = {}): Promise<CachedGenerationResult> {
    if (this.closed) throw new GenerationError('the prefix cache is closed');
    const m = this.model,
      t0 = performance.now();
    checkGenerateOptions(opts);
    const reducer = prefillReducerOf(opts);
    const method = decodeMethodOf(opts);
    const mode = req.mode ?? 'chat';
    if (mode !== 'chat' && mode !== 'independent') throw new GenerationError(`mode ${String(mode)} is not chat or independent`);
    if (!Array.isArray(req.images)) throw new GenerationError(`images must be an array, got ${typeof req.images}`);
    if (req.maxPixels !== undefined && !(Number.isInteger(req.maxPixels) && req.maxPixels >= 1))
      throw new GenerationError(`maxPixels must be a whole number >= 1, got ${String(req.maxPixels)}`);
    checkMessages(req.messages);
    const messages = messagesOf(req);
    // The conversation renders before any image is decoded (the template's checks, the image count).
    const text = m.promptText({ images: req.images.map(() => ''), messages });
    const none: CacheUse = { cachedTokens: 0, imagesCached: 0, imagesEncoded: 0, reuse: 'new', evictions: 0 };
    if (opts.signal?.aborted) return { ...m.abortedResult(t0), cache: none };
    const items: ImageItem[] = [];
    let imagesCached = 0;
    try {
      for (const [i, im] of req.images.entries()) {
        const { item, cached } = await this.image(im, i, reducer, req.maxPixels);
        items.push(item); // pinned
        if (cached) imagesCached++;
      }
      if (opts.signal?.aborted) return { ...m.abortedResult(t0), cache: { ...none, imagesCached, imagesEncoded: items.length - imagesCached } };
      const rows = items.map((it) => it.rows);
      const ids = m.idsOfText(text, rows);
      m.checkPromptLength(ids.length);
      const keys = items.map((it) => it.key);
      const ends = this.imageEnds(ids, rows);
      const starts = ends.map((e, j) => e - rows[j].rows);
      // The longest cached prefix (never the whole prompt: the last row gives the logits). With a
      // decode method that scores the turn's rows, the turn starts at a cut (an image's end, a
      // turn's end), so that it scores the question as a fresh session would. Methods that prune
      // the cache for good (FastV, PyramidDrop) run on a cache of their own.
      let best: Entry | null = null,
        common = 0;
      if (!method?.prunesCache) {
        for (const e of this.entries) {
          let c = this.match(e, ids, keys, starts);
          if (method) c = e.cuts.filter((x) => x <= c).pop() ?? 0;
          if (c > common || (c === common && c > 0 && best?.busy && !e.busy)) {
            best = e;
            common = c;
          }
        }
      }
      let entry: Entry, reuse: CacheUse['reuse'];
      if (best && common > 0 && !best.busy && best.ids.length - common <= TRUNCATE_TAIL) {
        entry = best;
        reuse = 'extend';
        m.decoder.truncateCache(entry.cache, common);
      } else if (best && common > 0) {
        entry = { cache: m.decoder.copyCache(best.cache, common), ids: [], imageKeys: [], cuts: [], busy: false, tick: 0 };
        reuse = 'branch';
      } else {
        entry = { cache: m.decoder.newCache(), ids: [], imageKeys: [], cuts: [], busy: false, tick: 0 };
        reuse = 'new';
        common = 0;
      }
      const owned = reuse !== 'extend';
      entry.busy = true;
      entry.ids = ids.slice(0, common);
      entry.cuts = (best?.cuts ?? []).filter((x) => x <= common);
      entry.imageKeys = keys;
      this.entries.add(entry);
      const t1 = performance.now();
      let r: GenerationResult;
      try {
        r = await runTurn(m, {
          ids,
          images: rows,
          cache: entry.cache,
          slot0: common,
          opts: { ...opts, prefillSparsity: undefined, prefill: undefined },
          t0,
          t1,
          visualIn: rows.reduce((a, f) => a + f.denseRows, 0),
          imageCached: items.length > 0 && imagesCached === items.length,
        });
      } catch (e) {
        this.release(entry, owned, common);
        throw e;
      }
      if (r.finishReason === 'abort') {
        this.release(entry, owned, common);
      } else {
        entry.ids = [...ids, ...r.ids].slice(0, entry.cache.length);
        entry.cuts = [...new Set([0, ...entry.cuts, ...ends.filter((x) => x > common), entry.cache.length])].sort((a, b) => a - b);
        entry.busy = false;
        entry.tick = ++this.ticks;
        if (method?.prunesCache) this.drop(entry);
      }
      this.counters.cachedTokens += common;
      this.counters.prefilledTokens += r.stats.prefilledTokens;
      if (common > 0) this.counters.prefixHits++;
      else this.counters.prefixMisses++;
      const imagesEncoded = items.length - imagesCached;
      for (const it of items) {
        it.tick = ++this.ticks;
        it.pins--;
      }
      items.length = 0;
      const evictions = this.evict();
      return { ...r, cache: { cachedTokens: common, imagesCached, imagesEncoded, reuse, evictions } };
    } finally {
      for (const it of items) it.pins--;
      this.evict();
    }
  }

  /** After an abort or a failure: an entry taken over keeps its cached prefix; a cache made for the request is freed. */
  private release(entry: Entry, owned: boolean, common: number): void {
    this.counters.released++;
    entry.busy = false;
    if (owned) this.drop(entry);
    else this.model.decoder.truncateCache(entry.cache, common); // entry.ids is that prefix already
  }

  /** Frees a conversation or an image. */
  private drop(victim: Entry | ImageItem): void {
    if ('cache' in victim) {
      this.entries.delete(victim);
      this.model.decoder.freeCache(victim.cache);
    } else {
      this.images.delete(victim.key);
      this.model.backend.free(victim.rows.features);
    }
  }

  /** Slots after each image's last token in ids (images in order). */
  private imageEnds(ids: number[], rows: ImageRows[]): number[] {
    const id = this.model.config.imageFacts?.tokenId;
    const ends: number[] = [];
    if (id === undefined) return ends;
    let j = 0,
      seen = 0;
    for (let i = 0; i < ids.length && j < rows.length; i++) {
      if (ids[i] !== id) continue;
      if (++seen === rows[j].rows) {
        ends.push(i + 1);
        j++;
        seen = 0;
      }
    }
    return ends;
  }

  /** The prefix of ids an entry holds: same tokens, and its images the same images up to there. */
  private match(e: Entry, ids: number[], keys: string[], starts: number[]): number {
    const n = Math.min(e.ids.length, ids.length - 1);
    let c = 0;
    while (c < n && e.ids[c] === ids[c]) c++;
    for (let j = 0; j < starts.length && starts[j] < c; j++) {
      if (e.imageKeys[j] !== keys[j]) return starts[j];
    }
    return c;
  }

  /** An image's rows, from the cache or encoded; pinned until the request ends. */
  private async image(im: CachedImageInput, i: number, reducer: PrefillReducer, maxPixels: number | undefined): Promise<{ item: ImageItem; cached: boolean }> {
    const label = `image ${i + 1}`;
    if (!im || typeof im !== 'object') throw new GenerationError(`${label}: expected { data, uuid }`);
    if (im.uuid !== undefined && (typeof im.uuid !== 'string' || im.uuid.length === 0 || im.uuid.length > 256))
      throw new GenerationError(`${label}: uuid must be a non-empty string of at most 256 characters`);
    const uuidKey = im.uuid === undefined ? undefined : `${im.uuid}\u0000${maxPixels ?? ''}`;
    let key0: string;
    let rgb: RgbImage | null = null;
    if (im.data === undefined) {
      if (uuidKey === undefined) throw new GenerationError(`${label}: give the image data or the uuid of an image sent before`);
      const known = this.uuids.get(uuidKey);
      if (known === undefined) throw new GenerationError(`${label}: no image with uuid ${JSON.stringify(im.uuid)} is cached: send the image again`);
      key0 = known;
    } else if (im.data instanceof Uint8Array) {
      const bytesKey = `${await sha256(im.data)}\u0000${maxPixels ?? ''}`;
      const known = this.encoded.get(bytesKey);
      if (known === undefined) {
        rgb = await this.decode(im.data, label, maxPixels);
        key0 = await pixelKey(rgb);
      } else key0 = known;
      remember(this.encoded, bytesKey, key0, this.maxUuids);
    } else {
      rgb = await this.decode(im.data, label, maxPixels);
      key0 = await pixelKey(rgb);
    }
    if (uuidKey !== undefined) remember(this.uuids, uuidKey, key0, this.maxUuids);
    const key = `${key0}\u0000${reducer.name}`;
    const have = this.images.get(key);
    if (have) {
      have.pins++;
      have.tick = ++this.ticks;
      this.counters.imageHits++;
      return { item: have, cached: true };
    }
    if (!rgb && im.data !== undefined) rgb = await this.decode(im.data, label, maxPixels);
    if (!rgb)
      throw new GenerationError(`${label}: the image with uuid ${JSON.stringify(im.uuid)} is no longer cached with this prefill method: send the image again`);
    let pending = this.encoding.get(key);
    const mine = !pending;
    if (!pending) {
      const source = rgb;
      const rec: { done: Promise<ImageItem>; waiters: number } = {
        waiters: 0,
        done: this.model.imageFeatures([source], reducer).then(
          ([rows]) => {
            this.encoding.delete(key);
            const item: ImageItem = { key, rows, pins: rec.waiters, tick: ++this.ticks };
            this.images.set(key, item);
            return item;
          },
          (e: unknown) => {
            this.encoding.delete(key);
            throw e;
          },
        ),
      };
      pending = rec;
      this.encoding.set(key, rec);
    }
    pending.waiters++;
    const item = await pending.done;
    if (mine) this.counters.imagesEncoded++;
    else this.counters.imageHits++;
    return { item, cached: !mine };
  }

  /** Decodes an image (the model's limits) and scales it within the request's pixel budget. */
  private async decode(data: ImageInput, label: string, maxPixels: number | undefined): Promise<RgbImage> {
    this.counters.imagesDecoded++;
    const rgb = await this.model.decodeInput(data, typeof data === 'string' ? undefined : label);
    if (maxPixels === undefined || rgb.width * rgb.height <= maxPixels) return rgb;
    const { width, height } = sizeWithin(rgb.width, rgb.height, maxPixels);
    return resize(rgb, width, height, 'bicubic');
  }

  /**
   * Evicts the least recently used idle conversations and unpinned images until the cache is
   * within its budget (images still referenced by a kept conversation's tokens may go: they are
   * encoded again only if a request needs their rows). Returns how many went.
   */
  private evict(): number {
    let n = 0;
    for (let bytes = this.idleBytes(); bytes > this.budgetBytes; n++) {
      let victim: Entry | ImageItem | null = null;
      for (const e of this.entries) if (!e.busy && (!victim || e.tick < victim.tick)) victim = e;
      for (const im of this.images.values()) if (im.pins === 0 && (!victim || im.tick < victim.tick)) victim = im;
      if (!victim) break;
      bytes -= 'cache' in victim ? victim.cache.bytes : imageBytes(victim);
      this.drop(victim);
      this.counters.evictions++;
    }
    return n;
  }

  /** Frees every idle conversation and image (requests running keep theirs until they end). */
  clear(): void {
    for (const e of [...this.entries]) if (!e.busy) this.drop(e);
    for (const im of [...this.images.values()]) if (im.pins === 0) this.drop(im);
  }

  /** Frees what is idle and refuses new requests. */
  close(): void {
    this.closed = true;
    this.clear();
  }
}
