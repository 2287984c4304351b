// Loading a model folder and generating text from images and a prompt: the library's main entry.
import os from 'node:os';
import path from 'node:path';
import { KernelBackend, Matrix } from '../kernels/backend.js';
import { WasmBackend, WasmBackendOptions, checkThreads } from '../kernels/wasm-backend.js';
import { Checkpoint } from '../formats/safetensors.js';
import { LlamaLikeConfig, ModelConfig } from '../formats/config.js';
import { LlavaModel } from '../model/llava.js';
import { DecoderCache, LlamaDecoder } from '../model/llama.js';
import { WeightLoader } from '../model/weights.js';
import { Workspace } from '../model/workspace.js';
import { ClipImageProcessorConfig, ImageError, ImageLimits, RgbImage, checkImageLimits, clipPreprocess, decodeImage } from '../io/image.js';
import { pixels } from '../io/image-types.js';
import { TextTokenizer, mergeEosTokenIds } from '../io/tokenizer.js';
import { ChatMessage, ChatTemplate } from '../io/chat-template.js';
import { expandImageTokens } from '../io/prompt.js';
import { PrefillReducer, densePrefill, sparseVilaDecode, sparseVilaPrefill } from '../sparsity/method.js';
import { DecodeMethod, DecodeSelector, PrunedCacheLayout } from '../sparsity/decode.js';
import { LimitError } from '../base/errors.js';
import { Problems } from '../base/problems.js';
import { yieldToEventLoop } from '../runtime/platform.js';
import { Session, SessionOptions } from './session.js';
import { writeHeatmap } from '../io/heatmap.js';
import { Sampler, SamplingOptions } from './sampling.js';
import { completeFiles, imageTokenString, readModelFiles, textConfigOf } from './model-folder.js';
import { loadWeights } from './weights-of.js';
import { GenerationError, checkGenerateOptions, checkInputIds, checkMessages, checkNoTypedPlaceholder, normaliseContent } from './request.js';

export { GenerationError } from './request.js';

export type ImageInput = string | Uint8Array | RgbImage;

export interface LoadOptions extends WasmBackendOptions {
  /** Use this backend instead of creating one (it is then not closed by `close()`). */
  backend?: KernelBackend;
  /** Progress of weight loading, in bytes. */
  onProgress?: (loadedBytes: number, totalBytes: number) => void;
  /** Weight bytes per memory place before layers continue in a new one (see PlacementOptions). */
  placeBudgetBytes?: number;
  /**
   * Said once each, as found: what the engine does in place of what the folder lacks (no chat
   * template: the plain prompt layout; no EOS token; threads capped to the cores). Default:
   * `process.emitWarning` (Node) or `console.warn`. The model keeps them in `warnings`.
   */
  onWarning?: (message: string) => void;
  /** Bounds on the images this model is given, checked before decoding (see ImageLimits). */
  imageLimits?: Partial<ImageLimits>;
}

export interface GenerateRequest {
  /** Images, in the order of their placeholders in the prompt. */
  images?: ImageInput[];
  /** A user message: rendered with the model's chat template (images first, then this text). */
  prompt?: string;
  /** A whole conversation, rendered with the model's chat template. */
  messages?: ChatMessage[];
  /** Token ids as they are (image placeholders already expanded); bypasses the template. */
  inputIds?: number[];
}

export interface GenerateOptions extends SamplingOptions {
  /** Default 256. */
  maxNewTokens?: number;
  /** Generation stops when the text contains one of these (it is not included). */
  stop?: string[];
  /** Token ids that end generation (default: the tokenizer's and generation_config.json's EOS). */
  eosTokenIds?: number[];
  /** Streams the text as it is generated: each call gets the new text and the token id. */
  onToken?: (text: string, id: number) => void;
  /**
   * SparseVILA prefill sparsity p in [0, 1): the fraction of each image's visual tokens dropped
   * before the language model, ranked by the vision tower's own attention (query-agnostic).
   * Default 0 (dense: every token, computed exactly as without this option).
   */
  prefillSparsity?: number;
  /** A prefill stage other than SparseVILA's (e.g. visionZipPrefill(64), pruMergePrefill()); not with prefillSparsity. */
  prefill?: PrefillReducer;
  /**
   * SparseVILA decode sparsity d in [0, 1): after the prompt is prefilled, each layer keeps, per KV
   * head, the top (1 - d) of the visual tokens by the attention the question (the prompt after the
   * last image) pays to them; every decode step attends to those and to all other tokens. The
   * cache keeps every visual token. Default 0 (dense decode).
   */
  decodeSparsity?: number;
  /** With decode sparsity: select the visual tokens again every N generated tokens, by the latest token's attention (default 0: once per turn). */
  reretrieveEvery?: number;
  /** A decode stage other than SparseVILA's (e.g. questDecode({ budget: 256 })); not with decodeSparsity. */
  decode?: DecodeMethod;
  /**
   * Stops the answer when aborted: checked before the images are encoded, before the prefill and
   * between generated tokens (the call yields to the event loop after each token, so a signal
   * raised by a timer, a Ctrl-C handler or a closed connection is seen). The result then holds
   * what was generated, with finishReason 'abort'.
   */
  signal?: AbortSignal;
}

export interface GenerationStats {
  promptTokens: number;
  /** Prompt tokens this call prefilled (fewer than promptTokens when a session reused its cache). */
  prefilledTokens: number;
  /** Visual tokens in the prompt (after prefill pruning). */
  imageTokens: number;
  /** Visual tokens the images gave before prefill pruning. */
  visualTokensIn: number;
  /** Visual tokens each decode step attends to per layer and KV head (all of them without decode sparsity; FastV/PDrop: the last layer). */
  visualTokensRetrieved: number;
  /** The same over the LLM's layers: fewest, mean and most. */
  visualTokensPerLayer: { min: number; mean: number; max: number };
  /** The images' features came from the session's cache (they were not encoded again). */
  imageCached: boolean;
  /** K and V bytes the first decode step reads from the cache, over all layers. */
  kvBytesPerStep: number;
  /** Decoding, preprocessing and encoding the images (vision tower + projector). */
  imageMs: number;
  /** The language model over the whole prompt, up to the first token's logits. */
  prefillMs: number;
  prefillTokensPerSecond: number;
  newTokens: number;
  decodeMs: number;
  /** Decode steps (one forward pass each, after the prompt) per second of their time. */
  decodeTokensPerSecond: number;
  /** Peak resident memory of the process (Node), or the backend's memory elsewhere. */
  peakMemoryBytes: number;
  /**
   * Sessions in chat mode: the oldest turns dropped before this question so that the conversation
   * (and room for the answer) fits the context window; they stay dropped. 0 elsewhere.
   */
  historyTurnsDropped: number;
}

/**
 * Why generation ended: an end-of-sequence token, a stop string, maxNewTokens, the context window
 * (the prompt and answer filled it), or the caller's AbortSignal.
 */
export type FinishReason = 'eos' | 'stop' | 'length' | 'context' | 'abort';

export interface GenerationResult {
  ids: number[];
  text: string;
  finishReason: FinishReason;
  stats: GenerationStats;
  /**
   * With images, which visual tokens the turn used: per image, the rows of its selected vision
   * features the prompt's image tokens stand for (in prompt order; a merged token: its anchor
   * row), and per image and LLM layer the rows decode retrieval
   * attended to (union over KV heads; null without decode sparsity). A row is a patch index, or
   * with vision_feature_select_strategy "full" row 0 is the class token and row r patch r - 1.
   */
  visual?: { kept: number[][]; retrieved: number[][][] | null };
}

/** Per image and layer, the feature rows a decode selection attends to (union over KV heads). */
function retrievedRows(visualSlots: number[], kept: Int32Array[], features: Matrix[], keptRows: number[][]): number[][][] {
  const where = new Map<number, [number, number]>(); // slot -> (image, row of its kept features)
  let v = 0;
  features.forEach((f, i) => { for (let j = 0; j < f.rows; j++) where.set(visualSlots[v++], [i, j]); });
  return features.map((_, i) => kept.map((slots) => {
    const rows = new Set<number>();
    for (const slot of slots) {
      const w = where.get(slot);
      if (w && w[0] === i) rows.add(keptRows[i][w[1]]);
    }
    return [...rows].sort((a, b) => a - b);
  }));
}

/** The prefill stage a request asks for: opts.prefill, else SparseVILA's with prefillSparsity (dense at 0). */
export function prefillReducerOf(opts: Pick<GenerateOptions, 'prefill' | 'prefillSparsity' | 'decodeSparsity'>): PrefillReducer {
  const { p } = checkSparsity(opts);
  if (opts.prefill) {
    if (opts.prefillSparsity !== undefined && opts.prefillSparsity !== 0) throw new GenerationError(`give either a prefill method (${opts.prefill.name}) or prefillSparsity, not both`);
    return opts.prefill;
  }
  return p > 0 ? sparseVilaPrefill(p) : densePrefill;
}

/** The decode stage a request asks for: opts.decode, else SparseVILA's with decodeSparsity (null: dense). */
export function decodeMethodOf(opts: Pick<GenerateOptions, 'decode' | 'decodeSparsity' | 'prefillSparsity' | 'reretrieveEvery'>): DecodeMethod | null {
  const { d } = checkSparsity(opts);
  if (opts.decode) {
    if (d !== 0) throw new GenerationError(`give either a decode method (${opts.decode.name}) or decodeSparsity, not both`);
    return opts.decode;
  }
  return d > 0 ? sparseVilaDecode(d, opts.reretrieveEvery ?? 0) : null;
}

function spread(v: number[]): { min: number; mean: number; max: number } {
  return { min: Math.min(...v), mean: v.reduce((a, b) => a + b, 0) / v.length, max: Math.max(...v) };
}

function checkSparsity(opts: GenerateOptions): { p: number; d: number } {
  const p = opts.prefillSparsity ?? 0, d = opts.decodeSparsity ?? 0;
  if (typeof p !== 'number' || !(p >= 0 && p < 1)) throw new GenerationError(`prefillSparsity must be a number in [0, 1), got ${String(p)}`);
  if (typeof d !== 'number' || !(d >= 0 && d < 1)) throw new GenerationError(`decodeSparsity must be a number in [0, 1), got ${String(d)}`);
  return { p, d };
}

/** Where the engine's warnings go when the caller gives no onWarning. */
function defaultWarning(message: string): void {
  if (typeof process !== 'undefined' && typeof process.emitWarning === 'function') process.emitWarning(message, { type: 'SparsevilaWarning' });
  else console.warn(`sparsevila: ${message}`);
}

/** Refuses weights larger than the machine's memory before reading any of them. */
function checkMachineMemory(bytes: number, dir: string): void {
  const total = os.totalmem();
  if (bytes > total) {
    throw new LimitError(`${dir}: the weights take ${(bytes / 2 ** 30).toFixed(1)} GiB but this machine has ${(total / 2 ** 30).toFixed(1)} GiB of memory`);
  }
}

export class VisionLanguageModel {
  private readonly ws: Workspace;

  private constructor(
    readonly dir: string,
    readonly backend: KernelBackend,
    private readonly ownsBackend: boolean,
    readonly config: ModelConfig,
    readonly decoder: LlamaDecoder,
    readonly llava: LlavaModel | null,
    readonly tokenizer: TextTokenizer | null,
    readonly template: ChatTemplate | null,
    readonly imageProcessor: ClipImageProcessorConfig | null,
    private readonly generationEos: number[],
    readonly weightBytes: number,
    /** What the engine said while loading (see LoadOptions.onWarning). */
    readonly warnings: readonly string[],
    readonly imageLimits: ImageLimits,
    /** The image placeholder text of a VLM's prompts (e.g. "<image>"). */
    private readonly imageToken: string | null,
  ) {
    this.ws = new Workspace(backend, decoder.place);
  }

  /**
   * Loads a Hugging Face model folder: llava (CLIP + projector + Llama/Qwen2), llama or qwen2.
   * Every file is checked first (config, tokenizer, chat template rendered on a sample,
   * preprocessor and generation configs), then every tensor against the config in both
   * directions: a problem is an InputError naming the file, field or tensor.
   */
  static async load(dir: string, opts: LoadOptions = {}): Promise<VisionLanguageModel> {
    const problems = new Problems(false, opts.onWarning ?? defaultWarning);
    const imageLimits = checkImageLimits(opts.imageLimits);
    const files = completeFiles(readModelFiles(dir, problems, imageLimits));
    const ck = Checkpoint.open(dir);
    try {
      const names = ck.names();
      const total = names.reduce((a, n) => a + ck.info(n).byteLength, 0);
      checkMachineMemory(total, dir);
      if (!opts.backend && opts.threads !== undefined) {
        const threads = checkThreads(opts.threads);
        if (threads < opts.threads) problems.warn(`threads ${opts.threads} is more than this machine's ${threads} cores: using ${threads} (more threads than cores only wait for each other)`);
      }
      const backend = opts.backend ?? await WasmBackend.create(opts);
      try {
        const loader = new WeightLoader(backend, ck, dir);
        if (opts.onProgress) loader.onProgress = (b) => opts.onProgress!(Math.min(b, total), total);
        const { decoder, llava } = await loadWeights(loader, files.config, names, { placeBudgetBytes: opts.placeBudgetBytes });
        const text = textConfigOf(files.config)!;
        return new VisionLanguageModel(dir, backend, !opts.backend, files.config, decoder, llava, files.tokenizer, files.template, files.imageProcessor,
          mergeEosTokenIds(text.eosTokenId, files.generationEos), loader.loadedBytes, problems.warnings, imageLimits,
          files.tokenizer ? imageTokenString(files.config, files.tokenizer, dir) : null);
      } catch (e) {
        if (!opts.backend) await backend.close();
        throw e;
      }
    } finally {
      ck.close();
    }
  }

  private get text(): LlamaLikeConfig {
    return textConfigOf(this.config)!;
  }

  /** Tokens of context the model supports (max_position_embeddings). */
  get contextWindow(): number { return this.text.maxPositionEmbeddings; }

  /** The messages of a request, checked (see GenerateRequest). */
  private messagesOf(req: GenerateRequest): { messages: ChatMessage[]; fromPrompt: boolean } {
    const nImages = req.images?.length ?? 0;
    if (req.messages !== undefined) {
      if (req.prompt !== undefined) throw new GenerationError('give a prompt or messages, not both');
      const parts = checkMessages(req.messages);
      if (parts !== nImages) {
        throw new GenerationError(`messages hold ${parts} image part${parts === 1 ? '' : 's'} ({ type: 'image' }) but ${nImages} image${nImages === 1 ? ' was' : 's were'} given: each image part stands for the next image, in order`);
      }
      return { messages: req.messages, fromPrompt: false };
    }
    if (req.prompt === undefined) throw new GenerationError('a request needs a prompt, messages or inputIds');
    if (typeof req.prompt !== 'string') throw new GenerationError(`prompt must be a string, got ${typeof req.prompt}`);
    return { messages: [{ role: 'user', content: [...Array.from({ length: nImages }, () => ({ type: 'image' as const })), { type: 'text' as const, text: req.prompt }] }], fromPrompt: true };
  }

  /** The prompt text for a request (chat template, or a plain layout when the model has none). */
  promptText(req: GenerateRequest): string {
    const { messages: raw, fromPrompt } = this.messagesOf(req);
    const vision = this.llava !== null;
    if (vision) checkNoTypedPlaceholder(raw, this.imageTokenString(), fromPrompt ? 'the prompt' : undefined);
    else if ((req.images?.length ?? 0) > 0) throw new GenerationError(`${this.dir}: a ${this.config.modelType} model takes no images`);
    const messages = normaliseContent(raw, vision);
    if (this.template) return this.template.render(messages, { addGenerationPrompt: true });
    // No chat template (said once at load): placeholders, then the text of each message.
    const imageToken = vision ? this.imageTokenString() : '';
    return messages.map((m) => typeof m.content === 'string' ? m.content
      : m.content.map((p) => p.type === 'image' ? `${imageToken}\n` : p.text).join('')).join('\n');
  }

  /** A VLM's image placeholder text (e.g. "<image>"); null for a text model or without a tokenizer. */
  get imagePlaceholder(): string | null { return this.imageToken; }

  private imageTokenString(): string {
    if (this.imageToken === null) throw new GenerationError(`${this.dir}: the model folder has no tokenizer.json; pass inputIds instead of text`);
    return this.imageToken;
  }

  /** Token ids of a request, image placeholders expanded to one id per image feature row. */
  promptIds(req: GenerateRequest, perImage: number | readonly number[] = this.llava?.imageTokens ?? 0): number[] {
    const n = req.images?.length ?? 0;
    const counts = typeof perImage === 'number' ? new Array<number>(n).fill(perImage) : perImage;
    if (req.inputIds !== undefined) {
      if (req.prompt !== undefined || req.messages !== undefined) throw new GenerationError('give inputIds alone, without a prompt or messages');
      if (n > 0 && !this.llava) throw new GenerationError(`${this.dir}: a ${this.config.modelType} model takes no images`);
      const image = this.llava ? { id: this.llava.config.imageTokenIndex, rows: counts.reduce((a, b) => a + b, 0) } : null;
      return checkInputIds(req.inputIds, this.text.vocabSize, image);
    }
    return this.idsOfText(this.promptText(req), counts);
  }

  /** The ids of a rendered prompt, each image placeholder expanded to its count of visual tokens. */
  private idsOfText(text: string, counts: readonly number[]): number[] {
    if (!this.tokenizer) throw new GenerationError(`${this.dir}: the model folder has no tokenizer.json; pass inputIds instead of text`);
    if (this.llava) text = expandImageTokens(text, this.imageTokenString(), counts);
    const ids = this.tokenizer.encode(text);
    const vocab = this.text.vocabSize, imageId = this.llava?.config.imageTokenIndex;
    for (const t of ids) {
      if (t >= vocab && t !== imageId) {
        throw new GenerationError(`the prompt encodes to token id ${t} (${JSON.stringify(this.tokenizer.idToToken(t))}), outside the model's vocabulary of ${vocab} (vocab_size in ${path.join(this.dir, 'config.json')})`);
      }
    }
    return ids;
  }

  /** Preprocesses an image as the checkpoint's image processor does: pixel values [3][H][W]. */
  async pixelValues(image: ImageInput): Promise<Float32Array> {
    if (!this.imageProcessor) throw new GenerationError(`${this.dir}: a ${this.config.modelType} model takes no images`);
    let rgb: RgbImage;
    if (typeof image === 'string' || image instanceof Uint8Array) {
      rgb = await decodeImage(image, undefined, this.imageLimits);
    } else if (image && typeof image === 'object' && 'data' in image) {
      rgb = image;
      if (rgb.width * rgb.height > this.imageLimits.maxPixels) {
        throw new ImageError(`an RgbImage of ${rgb.width}×${rgb.height} is more than the ${pixels(this.imageLimits.maxPixels)} allowed (the image limit maxPixels)`);
      }
    } else {
      throw new GenerationError(`an image must be a file path, encoded bytes (Uint8Array) or an RgbImage, got ${image === null ? 'null' : typeof image}`);
    }
    try {
      return clipPreprocess(rgb, this.imageProcessor, this.imageLimits.maxPixels).data;
    } catch (e) {
      if (e instanceof ImageError && typeof image === 'string') throw new ImageError(`${image}: ${e.message}`);
      throw e;
    }
  }

  async generate(req: GenerateRequest, opts: GenerateOptions = {}): Promise<GenerationResult> {
    const t0 = now();
    checkGenerateOptions(opts);
    const reducer = prefillReducerOf(opts);
    decodeMethodOf(opts); // checked before any work
    const images = req.images ?? [];
    if (!Array.isArray(images)) throw new GenerationError(`images must be an array, got ${typeof images}`);
    // The prompt is checked and rendered before the images are encoded; their token counts come after.
    const text = req.inputIds === undefined ? this.promptText(req) : null;
    if (text === null && images.length > 0 && !this.llava) throw new GenerationError(`${this.dir}: a ${this.config.modelType} model takes no images`);
    if (opts.signal?.aborted) return this.abortedResult(t0);
    const { features, kept } = images.length && this.llava ? await this.imageFeatures(images, reducer) : { features: [] as Matrix[], kept: [] as number[][] };
    const cache = this.decoder.newCache();
    try {
      const counts = features.map((f) => f.rows);
      const ids = text === null ? this.promptIds(req, counts) : this.idsOfText(text, counts);
      this.checkPromptLength(ids.length);
      const t1 = now();
      return await this.runTurn({ ids, features, keptRows: kept, cache, slot0: 0, opts, t0, t1, visualIn: this.llava ? this.llava.imageTokens * features.length : 0, imageCached: false });
    } finally {
      this.decoder.freeCache(cache);
      for (const f of features) this.backend.free(f);
    }
  }

  /** @internal The result of a call aborted before it generated anything (nothing was changed). */
  abortedResult(t0: number): GenerationResult {
    const ms = now() - t0;
    return {
      ids: [], text: '', finishReason: 'abort',
      stats: {
        promptTokens: 0, prefilledTokens: 0, imageTokens: 0, visualTokensIn: 0, visualTokensRetrieved: 0, visualTokensPerLayer: { min: 0, mean: 0, max: 0 },
        imageCached: false, kvBytesPerStep: 0, imageMs: ms, prefillMs: 0, prefillTokensPerSecond: 0, newTokens: 0, decodeMs: 0, decodeTokensPerSecond: 0,
        peakMemoryBytes: peakMemory(this.backend), historyTurnsDropped: 0,
      },
    };
  }

  /**
   * Writes one heatmap PNG per image of a result (see writeHeatmap): the patches kept in prefill
   * and those retrieved at decode over the image as the vision tower saw it. The first image goes
   * to `file`, image i > 0 to `file` with `-{i + 1}` before its extension. Returns the file names.
   */
  async writeHeatmaps(file: string, images: ImageInput[], result: GenerationResult): Promise<string[]> {
    const llava = this.llava, proc = this.imageProcessor;
    if (!llava || !proc || !result.visual) throw new GenerationError('heatmap: the result has no images');
    const full = llava.config.visionFeatureSelectStrategy !== 'default';
    const toPatches = (rows: readonly number[]) => rows.flatMap((r) => (full ? (r > 0 ? [r - 1] : []) : [r]));
    const ext = path.extname(file), stem = file.slice(0, file.length - ext.length);
    const names: string[] = [];
    for (let i = 0; i < images.length; i++) {
      const name = i === 0 ? file : `${stem}-${i + 1}${ext}`;
      await writeHeatmap(name, {
        pixels: await this.pixelValues(images[i]), size: llava.config.vision.imageSize, patch: llava.config.vision.patchSize, processor: proc,
        kept: toPatches(result.visual.kept[i]), retrieved: result.visual.retrieved ? result.visual.retrieved[i].map(toPatches) : null,
      });
      names.push(name);
    }
    return names;
  }

  /** A multi-turn session about `images`: they are encoded and prefilled once, each question reuses them. */
  session(images: ImageInput[], opts: SessionOptions = {}): Session {
    return new Session(this, images, opts);
  }

  /** @internal Throws when a prompt of `n` tokens cannot be run. */
  checkPromptLength(n: number): void {
    if (n === 0) throw new GenerationError('the prompt is empty');
    if (n >= this.contextWindow) {
      throw new GenerationError(`the prompt has ${n} tokens, but the model's context window is ${this.contextWindow} tokens (max_position_embeddings in ${path.join(this.dir, 'config.json')})`);
    }
  }

  /**
   * @internal One turn, shared by generate() and Session: the cache holds ids[0, slot0); prefills
   * ids[slot0, S) (with SparseVILA's decode retrieval scoring when opts.decodeSparsity > 0), then
   * decodes. `features` are the images' projected rows for the placeholders of `ids`.
   */
  async runTurn(a: {
    ids: number[]; features: Matrix[]; keptRows: number[][]; cache: DecoderCache; slot0: number; opts: GenerateOptions; t0: number; t1: number; visualIn: number; imageCached: boolean;
    /** The cache's layout when an earlier turn pruned it for good (FastV, PyramidDrop), and a callback for the one this turn leaves. */
    layout?: PrunedCacheLayout; onLayout?: (l: PrunedCacheLayout) => void;
    /** Sessions: turns dropped from the history before this one (for the stats). */
    historyTurnsDropped?: number;
  }): Promise<GenerationResult> {
    const { ids, features, cache, slot0, opts } = a;
    const S = ids.length;
    this.checkPromptLength(S);
    if (slot0 < 0 || slot0 >= S || cache.length !== slot0) throw new RangeError(`internal: turn from slot ${slot0} over a cache of ${cache.length} slots and a prompt of ${S}`);
    if (a.layout && slot0 < a.layout.end) throw new RangeError(`internal: a turn from slot ${slot0} cannot continue a cache pruned up to slot ${a.layout.end}`);
    if (opts.signal?.aborted) return this.abortedResult(a.t0);
    // The answer has at most what the context window leaves after the prompt.
    const maxNew = Math.min(opts.maxNewTokens ?? 256, this.contextWindow - S);
    const x = this.ws.matrix('prompt', S, this.text.hiddenSize);
    if (this.llava) this.llava.embedPrompt(x, ids, features);
    else this.decoder.embed(x, ids);
    const method = decodeMethodOf(opts);
    let selector: DecodeSelector | null = null;
    try {
      const imageId = this.llava?.config.imageTokenIndex;
      const visual = imageId === undefined ? [] : ids.flatMap((t, i) => (t === imageId ? [i] : []));
      // The question: the turn's new rows after the last image (the last row if none).
      const q0 = Math.min(Math.max(slot0, visual.length ? visual[visual.length - 1] + 1 : 0), S - 1);
      selector = method?.create({ decoder: this.decoder, visualSlots: visual, questionSlot0: q0, promptLength: S, maxSteps: maxNew, layout: a.layout }) ?? null;
      if (a.layout && !selector?.layout) {
        throw new GenerationError(`this session's cache was pruned inside the first question's prefill (FastV / PyramidDrop): every later question must use such a method too (got ${method?.name ?? 'dense'})`);
      }
      const imageTokens = features.reduce((n, f) => n + f.rows, 0);
      const r = await this.decodeLoop(x.view(slot0, S - slot0), ids, slot0, cache, opts, maxNew, a.t0, a.t1, imageTokens, a.visualIn, selector);
      r.stats.imageCached = a.imageCached;
      r.stats.historyTurnsDropped = a.historyTurnsDropped ?? 0;
      if (selector?.layout) a.onLayout?.(selector.layout);
      const kept = selector?.keptVisual;
      if (kept) this.lastRetrieved = kept.map((k) => k.slice());
      if (features.length) r.visual = { kept: a.keptRows.map((k) => k.slice()), retrieved: kept ? retrievedRows(visual, kept, features, a.keptRows) : null };
      return r;
    } finally {
      selector?.free();
    }
  }

  /** K and V bytes one decode step reads when it attends to `rows` cache slots in every layer. */
  private kvBytesPerStep(rows: number): number {
    const t = this.text;
    return Math.round(rows * t.numHiddenLayers * t.numKeyValueHeads * this.decoder.headDim * 4 * 2);
  }

  /** @internal Per layer, the visual slots the last turn with decode retrieval kept, [kvHeads][keep]. */
  lastRetrieved: Int32Array[] = [];

  /**
   * @internal Projected features of each image (pruned with prefill sparsity p), owned by the
   * caller, and the rows of the selected features each kept.
   */
  async imageFeatures(images: ImageInput[], reducer: PrefillReducer): Promise<{ features: Matrix[]; kept: number[][] }> {
    if (!this.llava) throw new GenerationError(`${this.dir}: a ${this.config.modelType} model takes no images`);
    const pixels = await Promise.all(images.map((im) => this.pixelValues(im)));
    const kept: number[][] = [];
    const features: Matrix[] = [];
    try {
      for (const px of pixels) {
        const r = reducer.reduce(this.llava, px);
        kept.push(r.kept);
        const own = this.backend.matrix(r.features.rows, r.features.cols, r.features.place);
        features.push(own);
        this.backend.copy(own, r.features);
      }
    } catch (e) {
      for (const f of features) this.backend.free(f);
      throw e;
    }
    return { features, kept };
  }

  private async decodeLoop(x: Matrix, ids: number[], slot0: number, cache: DecoderCache, opts: GenerateOptions, maxNew: number, t0: number, t1: number, imageTokens: number, visualTokensIn: number,
    selector: DecodeSelector | null): Promise<GenerationResult> {
    const S = ids.length;
    const sampler = new Sampler(opts);
    const eos = new Set(opts.eosTokenIds ?? [...(this.tokenizer?.eosTokenIds ?? []), ...this.generationEos]);
    const stops = (opts.stop ?? []).filter((s) => s.length > 0);
    const stream = this.tokenizer?.createStreamDecoder({ skipSpecialTokens: true }) ?? null;
    let logits = this.decoder.forward(x, cache, slot0, Array.from({ length: S - slot0 }, (_, i) => slot0 + i), selector?.prefillOptions(slot0, S - slot0));
    const stepOptions = selector?.decodeOptions();
    const t2 = now();
    const out: number[] = [];
    let text = '', emitted = 0, finish: FinishReason = 'length';
    const y = this.ws.matrix('step', 1, this.text.hiddenSize);
    let decodeMs = 0, decodeSteps = 0;
    while (out.length < maxNew) {
      // The logits are the decoder's shared buffer: sample before yielding to anyone else.
      const tok = sampler.sample(logits);
      if (!Number.isFinite(logits[tok])) {
        throw new GenerationError(`the model's logits are not finite (${logits[tok]}): the weights in ${this.dir} hold NaN or infinite values, or overflow in their dtype`);
      }
      if (eos.has(tok)) { finish = 'eos'; break; }
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
      if (S + out.length >= this.contextWindow) { finish = 'context'; break; }
      if (out.length >= maxNew) break;
      // Let timers, I/O and aborts run between tokens (a long answer stays interruptible).
      await yieldToEventLoop();
      if (opts.signal?.aborted) { finish = 'abort'; break; }
      const ts = now();
      this.decoder.embed(y, [tok]);
      const pos = S + out.length - 1;
      logits = this.decoder.forward(y, cache, pos, [pos], stepOptions);
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
        kvBytesPerStep: this.kvBytesPerStep(selector ? selector.rowsPerStep(S) : S + 1),
        imageMs: t1 - t0,
        prefillMs: t2 - t1,
        prefillTokensPerSecond: (S - slot0) / ((t2 - t1) / 1000),
        newTokens: out.length,
        decodeMs,
        decodeTokensPerSecond: decodeSteps > 0 && decodeMs > 0 ? decodeSteps / (decodeMs / 1000) : 0,
        peakMemoryBytes: peakMemory(this.backend),
        historyTurnsDropped: 0,
      },
    };
  }

  async close(): Promise<void> {
    if (this.ownsBackend) await this.backend.close();
  }
}

function now(): number { return performance.now(); }

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
      if (text.endsWith(s.slice(0, k))) { n = k; break; }
    }
  }
  return n;
}

function peakMemory(backend: KernelBackend): number {
  if (typeof process !== 'undefined' && typeof process.resourceUsage === 'function') return process.resourceUsage().maxRSS * 1024;
  let b = 0;
  for (let p = 0; p < backend.places; p++) b += backend.placeUsage(p);
  return b;
}
