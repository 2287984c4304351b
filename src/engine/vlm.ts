// Loading a model folder and generating text from images and a prompt: the library's main entry.
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { KernelBackend, Matrix } from '../kernels/backend.js';
import { WasmBackend, WasmBackendOptions } from '../kernels/wasm-backend.js';
import { Checkpoint } from '../formats/safetensors.js';
import { LlamaLikeConfig, LlavaConfig, ModelConfig, loadConfig } from '../formats/config.js';
import { LlavaModel } from '../model/llava.js';
import { DecoderCache, LlamaDecoder } from '../model/llama.js';
import { WeightLoader } from '../model/weights.js';
import { Workspace } from '../model/workspace.js';
import { ClipImageProcessorConfig, RgbImage, clipPreprocess, decodeImage, loadClipImageProcessorConfig } from '../io/image.js';
import { TextTokenizer, mergeEosTokenIds } from '../io/tokenizer.js';
import { ChatMessage, ChatTemplate, ChatTemplateError } from '../io/chat-template.js';
import { expandImageTokens } from '../io/prompt.js';
import { PrefillReducer, densePrefill, sparseVilaDecode, sparseVilaPrefill } from '../sparsity/method.js';
import { DecodeMethod, DecodeSelector, PrunedCacheLayout } from '../sparsity/decode.js';
import { Session, SessionOptions } from './session.js';
import { writeHeatmap } from '../io/heatmap.js';
import { Sampler, SamplingOptions } from './sampling.js';

export type ImageInput = string | Uint8Array | RgbImage;

export interface LoadOptions extends WasmBackendOptions {
  /** Use this backend instead of creating one (it is then not closed by `close()`). */
  backend?: KernelBackend;
  /** Progress of weight loading, in bytes. */
  onProgress?: (loadedBytes: number, totalBytes: number) => void;
  /** Weight bytes per memory place before layers continue in a new one (see PlacementOptions). */
  placeBudgetBytes?: number;
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
}

export type FinishReason = 'eos' | 'stop' | 'length' | 'context';

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

export class GenerationError extends Error {}

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
  if (!(p >= 0 && p < 1)) throw new GenerationError(`prefill sparsity ${p} must be in [0, 1)`);
  if (!(d >= 0 && d < 1)) throw new GenerationError(`decode sparsity ${d} must be in [0, 1)`);
  return { p, d };
}

export class VisionLanguageModel {
  private readonly ws: Workspace;
  private imageMatrices: Matrix[] = [];
  /** Rows of the selected features each image of imageMatrices kept. */
  private imageKept: number[][] = [];

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
  ) {
    this.ws = new Workspace(backend, decoder.place);
  }

  /** Loads a Hugging Face model folder: llava (CLIP + projector + Llama/Qwen2), llama or qwen2. */
  static async load(dir: string, opts: LoadOptions = {}): Promise<VisionLanguageModel> {
    const config = loadConfig(dir);
    if (config.modelType === 'clip_vision_model') {
      throw new GenerationError(`${dir}: a clip_vision_model is a vision encoder alone; load a llava checkpoint that contains it`);
    }
    const ck = Checkpoint.open(dir);
    const backend = opts.backend ?? await WasmBackend.create(opts);
    try {
      const loader = new WeightLoader(backend, ck, dir);
      const total = ck.names().reduce((a, n) => a + ck.info(n).byteLength, 0);
      if (opts.onProgress) loader.onProgress = (b) => opts.onProgress!(Math.min(b, total), total);
      const placement = { placeBudgetBytes: opts.placeBudgetBytes };
      let decoder: LlamaDecoder, llava: LlavaModel | null = null, imageProcessor: ClipImageProcessorConfig | null = null;
      if (config.modelType === 'llava') {
        llava = await LlavaModel.load(loader, config, placement);
        decoder = llava.language;
        imageProcessor = loadClipImageProcessorConfig(dir);
        const px = config.vision.imageSize;
        if (imageProcessor.cropSize && (imageProcessor.cropSize.height !== px || imageProcessor.cropSize.width !== px)) {
          throw new GenerationError(`${path.join(dir, 'preprocessor_config.json')}: crop_size ${imageProcessor.cropSize.width}x${imageProcessor.cropSize.height} differs from the vision tower's image_size ${px}`);
        }
      } else {
        const lmHead = loader.has('lm_head.weight') ? 'lm_head.weight' : null;
        decoder = await LlamaDecoder.load(loader, config, { prefix: 'model.', lmHead }, placement);
      }
      const tokenizer = existsSync(path.join(dir, 'tokenizer.json')) ? TextTokenizer.fromDir(dir, { readGenerationConfig: false }) : null; // generation_config.json is read below
      let template: ChatTemplate | null = null;
      try { template = ChatTemplate.fromDir(dir); } catch (e) { if (!(e instanceof ChatTemplateError)) throw e; }
      const text = config.modelType === 'llava' ? config.text : config;
      return new VisionLanguageModel(dir, backend, !opts.backend, config, decoder, llava, tokenizer, template, imageProcessor,
        mergeEosTokenIds(text.eosTokenId, readGenerationEos(dir)), loader.loadedBytes);
    } catch (e) {
      if (!opts.backend) await backend.close();
      throw e;
    } finally {
      ck.close();
    }
  }

  private get text(): LlamaLikeConfig {
    return this.config.modelType === 'llava' ? (this.config as LlavaConfig).text : this.config as LlamaLikeConfig;
  }

  /** Tokens of context the model supports (max_position_embeddings). */
  get contextWindow(): number { return this.text.maxPositionEmbeddings; }

  /** The prompt text for a request (chat template, or a plain layout when the model has none). */
  promptText(req: GenerateRequest): string {
    const nImages = req.images?.length ?? 0;
    let messages = req.messages;
    if (!messages) {
      if (req.prompt === undefined) throw new GenerationError('a request needs a prompt, messages or inputIds');
      messages = [{ role: 'user', content: [...Array.from({ length: nImages }, () => ({ type: 'image' as const })), { type: 'text' as const, text: req.prompt }] }];
    }
    if (this.template) return this.template.render(messages, { addGenerationPrompt: true });
    // No chat template: placeholders, then the text of each message.
    const imageToken = this.imageTokenString();
    return messages.map((m) => typeof m.content === 'string' ? m.content
      : m.content.map((p) => p.type === 'image' ? `${imageToken}\n` : p.text).join('')).join('\n');
  }

  private imageTokenString(): string {
    if (!this.llava) return '<image>';
    const t = this.tokenizer?.idToToken(this.llava.config.imageTokenIndex);
    if (t === undefined) throw new GenerationError(`${this.dir}: the tokenizer has no token for image_token_index ${this.llava.config.imageTokenIndex}`);
    return t;
  }

  /** Token ids of a request, image placeholders expanded to one id per image feature row. */
  promptIds(req: GenerateRequest, perImage: number | readonly number[] = this.llava?.imageTokens ?? 0): number[] {
    if (req.inputIds) return req.inputIds;
    if (!this.tokenizer) throw new GenerationError(`${this.dir}: the model folder has no tokenizer.json; pass inputIds instead of text`);
    let text = this.promptText(req);
    const n = req.images?.length ?? 0;
    if (this.llava) text = expandImageTokens(text, this.imageTokenString(), typeof perImage === 'number' ? new Array<number>(n).fill(perImage) : perImage);
    else if (n > 0) throw new GenerationError(`${this.dir}: a ${this.config.modelType} model takes no images`);
    return this.tokenizer.encode(text);
  }

  /** Preprocesses an image as the checkpoint's image processor does: pixel values [3][H][W]. */
  async pixelValues(image: ImageInput): Promise<Float32Array> {
    if (!this.imageProcessor) throw new GenerationError(`${this.dir}: a ${this.config.modelType} model takes no images`);
    const rgb = typeof image === 'string' || image instanceof Uint8Array ? await decodeImage(image) : image;
    return clipPreprocess(rgb, this.imageProcessor).data;
  }

  /** Projected features of each image, kept until the next call. */
  private encodeImages(pixels: Float32Array[], reducer: PrefillReducer): Matrix[] {
    const llava = this.llava!;
    for (const m of this.imageMatrices) this.backend.free(m);
    this.imageKept = [];
    this.imageMatrices = pixels.map((px) => {
      const r = reducer.reduce(llava, px);
      this.imageKept.push(r.kept);
      const f = r.features;
      const keep = this.backend.matrix(f.rows, f.cols, f.place);
      this.backend.copy(keep, f);
      return keep;
    });
    return this.imageMatrices;
  }

  async generate(req: GenerateRequest, opts: GenerateOptions = {}): Promise<GenerationResult> {
    const t0 = now();
    const reducer = prefillReducerOf(opts);
    const pixels = await Promise.all((req.images ?? []).map((im) => this.pixelValues(im)));
    const features = this.llava ? this.encodeImages(pixels, reducer) : [];
    const ids = this.promptIds(req, features.map((f) => f.rows));
    this.checkPromptLength(ids.length);
    const t1 = now();
    const cache = this.decoder.newCache();
    try {
      return this.runTurn({ ids, features, keptRows: this.imageKept, cache, slot0: 0, opts, t0, t1, visualIn: this.llava ? this.llava.imageTokens * features.length : 0, imageCached: false });
    } finally {
      this.decoder.freeCache(cache);
    }
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
  runTurn(a: {
    ids: number[]; features: Matrix[]; keptRows: number[][]; cache: DecoderCache; slot0: number; opts: GenerateOptions; t0: number; t1: number; visualIn: number; imageCached: boolean;
    /** The cache's layout when an earlier turn pruned it for good (FastV, PyramidDrop), and a callback for the one this turn leaves. */
    layout?: PrunedCacheLayout; onLayout?: (l: PrunedCacheLayout) => void;
  }): GenerationResult {
    const { ids, features, cache, slot0, opts } = a;
    const S = ids.length;
    this.checkPromptLength(S);
    if (slot0 < 0 || slot0 >= S || cache.length !== slot0) throw new GenerationError(`internal: turn from slot ${slot0} over a cache of ${cache.length} slots and a prompt of ${S}`);
    if (a.layout && slot0 < a.layout.end) throw new GenerationError(`internal: a turn from slot ${slot0} cannot continue a cache pruned up to slot ${a.layout.end}`);
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
      selector = method?.create({ decoder: this.decoder, visualSlots: visual, questionSlot0: q0, promptLength: S, maxSteps: opts.maxNewTokens ?? 256, layout: a.layout }) ?? null;
      if (a.layout && !selector?.layout) {
        throw new GenerationError(`this session's cache was pruned inside the first question's prefill (FastV / PyramidDrop): every later question must use such a method too (got ${method?.name ?? 'dense'})`);
      }
      const imageTokens = features.reduce((n, f) => n + f.rows, 0);
      const r = this.decodeLoop(x.view(slot0, S - slot0), ids, slot0, cache, opts, a.t0, a.t1, imageTokens, a.visualIn, selector);
      r.stats.imageCached = a.imageCached;
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
    const features = pixels.map((px) => {
      const r = reducer.reduce(this.llava!, px);
      kept.push(r.kept);
      const own = this.backend.matrix(r.features.rows, r.features.cols, r.features.place);
      this.backend.copy(own, r.features);
      return own;
    });
    return { features, kept };
  }

  private decodeLoop(x: Matrix, ids: number[], slot0: number, cache: DecoderCache, opts: GenerateOptions, t0: number, t1: number, imageTokens: number, visualTokensIn: number,
    selector: DecodeSelector | null): GenerationResult {
    const S = ids.length, maxNew = opts.maxNewTokens ?? 256;
    if (!Number.isInteger(maxNew) || maxNew < 0) throw new RangeError(`maxNewTokens must be an integer >= 0, got ${opts.maxNewTokens}`);
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
      const tok = sampler.sample(logits);
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

function readGenerationEos(dir: string): number | number[] | undefined {
  const f = path.join(dir, 'generation_config.json');
  if (!existsSync(f)) return undefined;
  try {
    return (JSON.parse(readFileSync(f, 'utf8')) as { eos_token_id?: number | number[] }).eos_token_id;
  } catch (e) {
    throw new GenerationError(`${f}: cannot read: ${(e as Error).message}`);
  }
}
