// A loaded model as the engine uses it, whatever its family: the decoder, the image side (processor,
// encoder, prompt layout), the tokenizer and chat template; prompts (text and ids) and image rows.
// The generation loop (generation.ts), sessions and the public facade (vlm.ts) build on it.
import path from 'node:path';
import { KernelBackend, LinearCompute, Matrix } from '../kernels/backend.js';
import { AnyFamily, FamilyConfig, ImageEncoder, ImageProcessor, ProcessedImage, PromptImage, PromptLayout } from '../model/family.js';
import { LanguageDecoder } from '../model/decoder.js';
import { Workspace } from '../model/workspace.js';
import { ImageError, ImageLimits, RgbImage, decodeImage } from '../io/image.js';
import { pixels } from '../io/image-types.js';
import { TextTokenizer } from '../io/tokenizer.js';
import { ChatMessage, ChatTemplate } from '../io/chat-template.js';
import { PrefillReducer } from '../sparsity/method.js';
import { GenerationError, checkInputIds, checkMessages, checkNoTypedPlaceholder, normaliseContent } from './request.js';
import { GenerateRequest, GenerationResult, ImageInput } from './options.js';

/** One image's rows for the prompt. */
export interface ImageRows extends PromptImage {
  /** [rows][text hidden], owned by whoever asked for them. */
  features: Matrix;
  /** Per row, the unit it stands for (-1: a row the family adds). */
  units: number[];
  /** Rows the image gives without pruning. */
  denseRows: number;
}

/** The parts of a loaded model (see VisionLanguageModel.load). */
export interface CoreParts {
  dir: string;
  backend: KernelBackend;
  family: AnyFamily;
  config: FamilyConfig;
  decoder: LanguageDecoder;
  encoder: ImageEncoder | null;
  imageProcessor: ImageProcessor | null;
  layout: PromptLayout | null;
  tokenizer: TextTokenizer | null;
  template: ChatTemplate | null;
  /** End-of-sequence ids of the tokenizer, the config and generation_config.json. */
  eosTokenIds: number[];
  weightBytes: number;
  warnings: readonly string[];
  imageLimits: ImageLimits;
  /** How the vision tower's linear layers were loaded (LoadOptions.visionCompute; default stored). */
  visionCompute?: LinearCompute;
}

export class ModelCore {
  readonly dir: string;
  readonly backend: KernelBackend;
  /** The registry row the config selected. */
  readonly family: AnyFamily;
  readonly config: FamilyConfig;
  readonly decoder: LanguageDecoder;
  /** The vision tower and connector; null for a text-only model. */
  readonly encoder: ImageEncoder | null;
  readonly imageProcessor: ImageProcessor | null;
  /** How images are laid out in the prompt; null for a text-only model or without a tokenizer. */
  readonly layout: PromptLayout | null;
  readonly tokenizer: TextTokenizer | null;
  readonly template: ChatTemplate | null;
  /** @internal */
  readonly eosTokenIds: number[];
  readonly weightBytes: number;
  /** What the engine said while loading (see LoadOptions.onWarning). */
  readonly warnings: readonly string[];
  readonly imageLimits: ImageLimits;
  /** How the vision tower's linear layers multiply (LoadOptions.visionCompute). */
  readonly visionCompute: LinearCompute;
  /** @internal Prompt and step rows. */
  readonly ws: Workspace;
  /** @internal Per layer, the visual slots the last turn with decode retrieval kept, [kvHeads][keep]. */
  lastRetrieved: Int32Array[] = [];

  protected constructor(p: CoreParts) {
    this.dir = p.dir;
    this.backend = p.backend;
    this.family = p.family;
    this.config = p.config;
    this.decoder = p.decoder;
    this.encoder = p.encoder;
    this.imageProcessor = p.imageProcessor;
    this.layout = p.layout;
    this.tokenizer = p.tokenizer;
    this.template = p.template;
    this.eosTokenIds = p.eosTokenIds;
    this.weightBytes = p.weightBytes;
    this.warnings = p.warnings;
    this.imageLimits = p.imageLimits;
    this.visionCompute = p.visionCompute ?? 'stored';
    this.ws = new Workspace(p.backend, p.decoder.place);
  }

  /** Tokens of context the model supports (max_position_embeddings). */
  get contextWindow(): number {
    return this.decoder.contextWindow;
  }

  /** Whether the model takes images. */
  get takesImages(): boolean {
    return this.encoder !== null;
  }

  /** A VLM's image placeholder text (e.g. "<image>"); null for a text model or without a tokenizer. */
  get imagePlaceholder(): string | null {
    return this.layout?.placeholder ?? null;
  }

  /** @internal The error for images given to a model that takes none. */
  noImages(): GenerationError {
    return new GenerationError(`${this.dir}: a ${this.config.modelType} model takes no images`);
  }

  /** The messages of a request, checked (see GenerateRequest). */
  private messagesOf(req: GenerateRequest): { messages: ChatMessage[]; fromPrompt: boolean } {
    const nImages = req.images?.length ?? 0;
    if (req.messages !== undefined) {
      if (req.prompt !== undefined) throw new GenerationError('give a prompt or messages, not both');
      const parts = checkMessages(req.messages);
      if (parts !== nImages) {
        throw new GenerationError(
          `messages hold ${parts} image part${parts === 1 ? '' : 's'} ({ type: 'image' }) but ${nImages} image${nImages === 1 ? ' was' : 's were'} given: each image part stands for the next image, in order`,
        );
      }
      return { messages: req.messages, fromPrompt: false };
    }
    if (req.prompt === undefined) throw new GenerationError('a request needs a prompt, messages or inputIds');
    if (typeof req.prompt !== 'string') throw new GenerationError(`prompt must be a string, got ${typeof req.prompt}`);
    return {
      messages: [
        { role: 'user', content: [...Array.from({ length: nImages }, () => ({ type: 'image' as const })), { type: 'text' as const, text: req.prompt }] },
      ],
      fromPrompt: true,
    };
  }

  /** The prompt text for a request (chat template, or a plain layout when the model has none). */
  promptText(req: GenerateRequest): string {
    const { messages: raw, fromPrompt } = this.messagesOf(req);
    const vision = this.takesImages;
    if (vision) checkNoTypedPlaceholder(raw, this.placeholder(), fromPrompt ? 'the prompt' : undefined);
    else if ((req.images?.length ?? 0) > 0) throw this.noImages();
    const messages = normaliseContent(raw, vision);
    if (this.template) return this.template.render(messages, { addGenerationPrompt: true });
    // No chat template (said once at load): placeholders, then the text of each message.
    const imageToken = vision ? this.placeholder() : '';
    return messages
      .map((m) => (typeof m.content === 'string' ? m.content : m.content.map((p) => (p.type === 'image' ? `${imageToken}\n` : p.text)).join('')))
      .join('\n');
  }

  private placeholder(): string {
    if (this.layout === null) throw new GenerationError(`${this.dir}: the model folder has no tokenizer.json; pass inputIds instead of text`);
    return this.layout.placeholder;
  }

  /**
   * Token ids of a request, each image placeholder expanded to its image's rows (without
   * `images`: the images are preprocessed and count densely, as a prompt without pruning).
   */
  async promptIds(req: GenerateRequest, images?: readonly PromptImage[]): Promise<number[]> {
    if (images === undefined) {
      const list = req.images ?? [];
      if (list.length > 0 && !this.takesImages) throw this.noImages();
      images = await Promise.all(list.map(async (im) => (await this.preprocess(im)).dense));
    }
    return this.idsFor(req, images);
  }

  /** @internal promptIds with the images' rows known. */
  idsFor(req: GenerateRequest, images: readonly PromptImage[]): number[] {
    const n = req.images?.length ?? 0;
    if (req.inputIds !== undefined) {
      if (req.prompt !== undefined || req.messages !== undefined) throw new GenerationError('give inputIds alone, without a prompt or messages');
      if (n > 0 && !this.encoder) throw this.noImages();
      const image = this.config.imageFacts ? { id: this.config.imageFacts.tokenId, rows: images.reduce((a, b) => a + b.rows, 0) } : null;
      return checkInputIds(req.inputIds, this.decoder.vocabSize, image);
    }
    return this.idsOfText(this.promptText(req), images);
  }

  /** @internal The ids of a rendered prompt, each image placeholder expanded by the family's layout. */
  idsOfText(text: string, images: readonly PromptImage[]): number[] {
    if (!this.tokenizer) throw new GenerationError(`${this.dir}: the model folder has no tokenizer.json; pass inputIds instead of text`);
    const ids = this.layout ? this.layout.encode(text, images, this.tokenizer) : this.tokenizer.encode(text);
    const vocab = this.decoder.vocabSize,
      imageId = this.layout?.imageTokenId;
    for (const t of ids) {
      if (t >= vocab && t !== imageId) {
        throw new GenerationError(
          `the prompt encodes to token id ${t} (${JSON.stringify(this.tokenizer.idToToken(t))}), outside the model's vocabulary of ${vocab} (vocab_size in ${path.join(this.dir, 'config.json')})`,
        );
      }
    }
    return ids;
  }

  /**
   * Decodes an image input (a path or encoded bytes; decoded pixels pass as they are) within the
   * model's image limits, checked before decoding. `name` labels bytes in errors.
   */
  async decodeInput(image: ImageInput, name?: string): Promise<RgbImage> {
    if (typeof image === 'string' || image instanceof Uint8Array) return decodeImage(image, name, this.imageLimits);
    if (image && typeof image === 'object' && 'data' in image) {
      if (image.width * image.height > this.imageLimits.maxPixels) {
        throw new ImageError(
          `${name === undefined ? '' : `${name}: `}an RgbImage of ${image.width}×${image.height} is more than the ${pixels(this.imageLimits.maxPixels)} allowed (the image limit maxPixels)`,
        );
      }
      return image;
    }
    throw new GenerationError(`an image must be a file path, encoded bytes (Uint8Array) or an RgbImage, got ${image === null ? 'null' : typeof image}`);
  }

  /** Decodes and preprocesses an image as the checkpoint's image processor does (its tiles). */
  async preprocess(image: ImageInput): Promise<ProcessedImage> {
    if (!this.imageProcessor) throw this.noImages();
    const rgb = await this.decodeInput(image);
    try {
      return this.imageProcessor.process(rgb, this.imageLimits.maxPixels);
    } catch (e) {
      if (e instanceof ImageError && typeof image === 'string') throw new ImageError(`${image}: ${e.message}`);
      throw e;
    }
  }

  /**
   * @internal Each image's rows for the prompt, reduced tile by tile by `reducer` and assembled
   * by the family; owned by the caller.
   */
  async imageFeatures(images: ImageInput[], reducer: PrefillReducer): Promise<ImageRows[]> {
    const enc = this.encoder;
    if (!enc) throw this.noImages();
    const processed = await Promise.all(images.map((im) => this.preprocess(im)));
    const out: ImageRows[] = [];
    try {
      for (const image of processed) {
        const tiles: { features: Matrix; units: number[] }[] = [];
        try {
          for (let t = 0; t < image.tiles.length; t++) {
            const r = reducer.reduce(enc, image, t);
            const ids = enc.unitIds(image, t);
            const own = this.backend.matrix(r.features.rows, r.features.cols, r.features.place);
            tiles.push({ features: own, units: r.kept.map((k) => ids[k]) });
            this.backend.copy(own, r.features);
          }
        } catch (e) {
          for (const t of tiles) this.backend.free(t.features);
          throw e;
        }
        const a = enc.assemble(image, tiles);
        out.push({ features: a.features, units: a.units, rows: a.features.rows, tileRows: a.tileRows, grid: image.dense.grid, denseRows: image.dense.rows });
      }
    } catch (e) {
      for (const f of out) this.backend.free(f.features);
      throw e;
    }
    return out;
  }

  /** @internal Throws when a prompt of `n` tokens cannot be run. */
  checkPromptLength(n: number): void {
    if (n === 0) throw new GenerationError('the prompt is empty');
    if (n >= this.contextWindow) {
      throw new GenerationError(
        `the prompt has ${n} tokens, but the model's context window is ${this.contextWindow} tokens (max_position_embeddings in ${path.join(this.dir, 'config.json')})`,
      );
    }
  }

  /** @internal The result of a call aborted before it generated anything (nothing was changed). */
  abortedResult(t0: number): GenerationResult {
    const ms = performance.now() - t0;
    return {
      ids: [],
      text: '',
      finishReason: 'abort',
      stats: {
        promptTokens: 0,
        prefilledTokens: 0,
        imageTokens: 0,
        visualTokensIn: 0,
        visualTokensRetrieved: 0,
        visualTokensPerLayer: { min: 0, mean: 0, max: 0 },
        imageCached: false,
        kvBytesPerStep: 0,
        imageMs: ms,
        prefillMs: 0,
        prefillTokensPerSecond: 0,
        newTokens: 0,
        decodeMs: 0,
        decodeTokensPerSecond: 0,
        peakMemoryBytes: peakMemory(this.backend),
        historyTurnsDropped: 0,
      },
    };
  }
}

/** Bytes allocated on a backend, over its memory places. */
export function allocatedBytes(backend: KernelBackend): number {
  let b = 0;
  for (let p = 0; p < backend.places; p++) b += backend.placeUsage(p);
  return b;
}

/** Peak resident memory of the process (Node), or the backend's memory elsewhere. */
export function peakMemory(backend: KernelBackend): number {
  if (typeof process !== 'undefined' && typeof process.resourceUsage === 'function') return process.resourceUsage().maxRSS * 1024;
  return allocatedBytes(backend);
}
