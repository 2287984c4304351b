// The generation loop: one turn over a decoder cache (prefill of the turn's new rows, with the
// decode method's hooks, then sampling token by token with stop strings, streaming, the context
// window and aborts), shared by generate() and sessions.
import { Matrix } from '../kernels/backend.js';
import { DecoderCache, LanguageDecoder } from '../model/decoder.js';
import { embedPrompt } from '../model/embed-prompt.js';
import { DecodeSelector, PrunedCacheLayout } from '../sparsity/decode.js';
import { yieldToEventLoop } from '../runtime/platform.js';
import { Sampler } from './sampling.js';
import { GenerationError } from './request.js';
import { FinishReason, GenerateOptions, GenerationResult, decodeMethodOf } from './options.js';
import { ImageRows, ModelCore, peakMemory } from './core.js';

/** An image of a turn: its rows may be gone (null) when all its tokens are in the cache before slot0. */
export type TurnImage = Omit<ImageRows, 'features'> & { features: Matrix | null };

/** A turn: the cache holds ids[0, slot0); the turn prefills ids[slot0, S) and decodes. */
export interface TurnArgs {
  ids: number[];
  /** The images of `ids`' image tokens, in order. */
  images: TurnImage[];
  cache: DecoderCache;
  slot0: number;
  opts: GenerateOptions;
  /** When the call started, and when its images were ready. */
  t0: number;
  t1: number;
  /** Visual tokens the images gave before prefill pruning. */
  visualIn: number;
  imageCached: boolean;
  /** The cache's layout when an earlier turn pruned it for good (FastV, PyramidDrop), and a callback for the one this turn leaves. */
  layout?: PrunedCacheLayout;
  onLayout?: (l: PrunedCacheLayout) => void;
  /** Sessions: turns dropped from the history before this one (for the stats). */
  historyTurnsDropped?: number;
}

/**
 * One turn, shared by generate() and Session: the cache holds ids[0, slot0); prefills
 * ids[slot0, S) (with SparseVILA's decode retrieval scoring when opts.decodeSparsity > 0), then
 * decodes. `images` are the images' rows for the placeholders of `ids`.
 */
export async function runTurn(m: ModelCore, a: TurnArgs): Promise<GenerationResult> {
  const { ids, images, cache, slot0, opts } = a;
  const S = ids.length;
  m.checkPromptLength(S);
  if (slot0 < 0 || slot0 >= S || cache.length !== slot0)
    throw new RangeError(`internal: turn from slot ${slot0} over a cache of ${cache.length} slots and a prompt of ${S}`);
  if (a.layout && slot0 < a.layout.end) throw new RangeError(`internal: a turn from slot ${slot0} cannot continue a cache pruned up to slot ${a.layout.end}`);
  if (opts.signal?.aborted) return m.abortedResult(a.t0);
  // The answer has at most what the context window leaves after the prompt.
  const maxNew = Math.min(opts.maxNewTokens ?? 256, m.contextWindow - S);
  // Only the new rows are embedded: the images' rows from the first image token at or after slot0.
  const x = m.ws.matrix('prompt', S - slot0, m.decoder.hidden);
  const imageId = m.config.imageFacts?.tokenId;
  if (imageId !== undefined) embedPrompt(m.decoder, x, ids.slice(slot0), imageId, imageRowsFrom(images, ids, slot0, imageId));
  else m.decoder.embed(x, ids.slice(slot0));
  const method = decodeMethodOf(opts);
  let selector: DecodeSelector | null = null;
  try {
    const visual = imageId === undefined ? [] : ids.flatMap((t, i) => (t === imageId ? [i] : []));
    // The question: the turn's new rows after the last image (the last row if none).
    const q0 = Math.min(Math.max(slot0, visual.length ? visual[visual.length - 1] + 1 : 0), S - 1);
    selector = method?.create({ decoder: m.decoder, visualSlots: visual, questionSlot0: q0, promptLength: S, maxSteps: maxNew, layout: a.layout }) ?? null;
    if (a.layout && !selector?.layout) {
      throw new GenerationError(
        `this session's cache was pruned inside the first question's prefill (FastV / PyramidDrop): every later question must use such a method too (got ${method?.name ?? 'dense'})`,
      );
    }
    const imageTokens = images.reduce((n, f) => n + f.rows, 0);
    const r = await decodeLoop(m, x, ids, slot0, cache, opts, maxNew, a.t0, a.t1, imageTokens, a.visualIn, selector);
    r.stats.imageCached = a.imageCached;
    r.stats.historyTurnsDropped = a.historyTurnsDropped ?? 0;
    if (selector?.layout) a.onLayout?.(selector.layout);
    const kept = selector?.keptVisual;
    if (kept) m.lastRetrieved = kept.map((k) => k.slice());
    if (images.length) r.visual = { kept: images.map((i) => i.units.slice()), retrieved: kept ? retrievedUnits(visual, kept, images) : null };
    return r;
  } finally {
    selector?.free();
  }
}

/** The image rows for the image tokens of ids[slot0, S): each image's rows after those whose tokens lie before slot0. */
function imageRowsFrom(images: TurnImage[], ids: number[], slot0: number, imageId: number): Matrix[] {
  let skip = 0;
  for (let i = 0; i < slot0; i++) if (ids[i] === imageId) skip++;
  const out: Matrix[] = [];
  for (const im of images) {
    if (skip >= im.rows) {
      skip -= im.rows;
      continue;
    }
    if (!im.features) throw new RangeError(`internal: an image with tokens after slot ${slot0} has no rows`);
    out.push(skip > 0 ? im.features.view(skip, im.rows - skip) : im.features);
    skip = 0;
  }
  return out;
}

/** Per image and layer, the units a decode selection attends to (union over KV heads; rows the family adds are left out). */
function retrievedUnits(visualSlots: number[], kept: Int32Array[], images: TurnImage[]): number[][][] {
  const where = new Map<number, [number, number]>(); // slot -> (image, row of its features)
  let v = 0;
  images.forEach((im, i) => {
    for (let j = 0; j < im.rows; j++) where.set(visualSlots[v++], [i, j]);
  });
  return images.map((im, i) =>
    kept.map((slots) => {
      const units = new Set<number>();
      for (const slot of slots) {
        const w = where.get(slot);
        if (w && w[0] === i && im.units[w[1]] >= 0) units.add(im.units[w[1]]);
      }
      return [...units].sort((a, b) => a - b);
    }),
  );
}

/** K and V bytes one decode step reads when it attends to `rows` cache slots in every layer. */
function kvBytesPerStep(d: LanguageDecoder, rows: number): number {
  return Math.round(rows * d.layers * d.kvHeads * d.headDim * 4 * 2);
}

function spread(v: number[]): { min: number; mean: number; max: number } {
  return { min: Math.min(...v), mean: v.reduce((a, b) => a + b, 0) / v.length, max: Math.max(...v) };
}

async function decodeLoop(
  m: ModelCore,
  x: Matrix,
  ids: number[],
  slot0: number,
  cache: DecoderCache,
  opts: GenerateOptions,
  maxNew: number,
  t0: number,
  t1: number,
  imageTokens: number,
  visualTokensIn: number,
  selector: DecodeSelector | null,
): Promise<GenerationResult> {
  const S = ids.length;
  const sampler = new Sampler(opts);
  const eos = new Set(opts.eosTokenIds ?? [...(m.tokenizer?.eosTokenIds ?? []), ...m.eosTokenIds]);
  const stops = (opts.stop ?? []).filter((s) => s.length > 0);
  const stream = m.tokenizer?.createStreamDecoder({ skipSpecialTokens: true }) ?? null;
  let logits = m.decoder.forward(
    x,
    cache,
    slot0,
    Array.from({ length: S - slot0 }, (_, i) => slot0 + i),
    selector?.prefillOptions(slot0, S - slot0),
  );
  const stepOptions = selector?.decodeOptions();
  const t2 = now();
  const out: number[] = [];
  let text = '',
    emitted = 0,
    finish: FinishReason = 'length';
  const y = m.ws.matrix('step', 1, m.decoder.hidden);
  let decodeMs = 0,
    decodeSteps = 0;
  while (out.length < maxNew) {
    // The logits are the decoder's shared buffer: sample before yielding to anyone else.
    const tok = sampler.sample(logits);
    if (!Number.isFinite(logits[tok])) {
      throw new GenerationError(
        `the model's logits are not finite (${logits[tok]}): the weights in ${m.dir} hold NaN or infinite values, or overflow in their dtype`,
      );
    }
    if (eos.has(tok)) {
      finish = 'eos';
      break;
    }
    out.push(tok);
    if (stream) text += stream.push(tok);
    // Stop strings: cut at the first one; hold back text that may be the start of one.
    const cut = firstStop(text, stops);
    if (cut >= 0) {
      text = text.slice(0, cut);
      finish = 'stop';
    }
    const safe = finish === 'stop' ? text.length : text.length - heldBack(text, stops);
    if (safe > emitted) {
      opts.onToken?.(text.slice(emitted, safe), tok);
      emitted = safe;
    } else if (!stream) {
      opts.onToken?.('', tok);
    }
    if (finish === 'stop') break;
    if (S + out.length >= m.contextWindow) {
      finish = 'context';
      break;
    }
    if (out.length >= maxNew) break;
    // Let timers, I/O and aborts run between tokens (a long answer stays interruptible).
    await yieldToEventLoop();
    if (opts.signal?.aborted) {
      finish = 'abort';
      break;
    }
    const ts = now();
    m.decoder.embed(y, [tok]);
    const pos = S + out.length - 1;
    logits = m.decoder.forward(y, cache, pos, [pos], stepOptions);
    decodeMs += now() - ts;
    decodeSteps++;
  }
  if (finish !== 'stop' && stream) {
    text += stream.flush();
    if (text.length > emitted) opts.onToken?.(text.slice(emitted), out[out.length - 1]);
  }
  return {
    ids: out,
    text,
    finishReason: finish,
    stats: {
      promptTokens: S,
      prefilledTokens: S - slot0,
      imageTokens,
      visualTokensIn,
      visualTokensRetrieved: selector?.visualPerStep ?? imageTokens,
      visualTokensPerLayer: spread(selector?.visualPerLayer?.() ?? [selector?.visualPerStep ?? imageTokens]),
      imageCached: false,
      kvBytesPerStep: kvBytesPerStep(m.decoder, selector ? selector.rowsPerStep(S) : S + 1),
      imageMs: t1 - t0,
      prefillMs: t2 - t1,
      prefillTokensPerSecond: (S - slot0) / ((t2 - t1) / 1000),
      newTokens: out.length,
      decodeMs,
      decodeTokensPerSecond: decodeSteps > 0 && decodeMs > 0 ? decodeSteps / (decodeMs / 1000) : 0,
      peakMemoryBytes: peakMemory(m.backend),
      historyTurnsDropped: 0,
    },
  };
}

function now(): number {
  return performance.now();
}

function firstStop(text: string, stops: string[]): number {
  let best = -1;
  for (const s of stops) {
    const i = text.indexOf(s);
    if (i >= 0 && (best < 0 || i < best)) best = i;
  }
  return best;
}

/** Length of the longest suffix of text that is a proper prefix of a stop string. */
function heldBack(text: string, stops: string[]): number {
  let n = 0;
  for (const s of stops) {
    for (let k = Math.min(s.length - 1, text.length); k > n; k--) {
      if (text.endsWith(s.slice(0, k))) {
        n = k;
        break;
      }
    }
  }
  return n;
}
