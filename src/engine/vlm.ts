// The library's main entry: loading a model folder of any registered family, generating text from
// images and a prompt, sessions, and heatmaps of what a sparse turn looked at.
import os from 'node:os';
import { KernelBackend } from '../kernels/backend.js';
import { WasmBackend, checkThreads } from '../kernels/wasm-backend.js';
import { WeightLoader } from '../model/weights.js';
import { checkImageLimits } from '../io/image.js';
import { mergeEosTokenIds } from '../io/tokenizer.js';
import { LimitError, OptionError } from '../base/errors.js';
import { Problems } from '../base/problems.js';
import { Session, SessionOptions } from './session.js';
import { completeFiles, readModelFiles } from './model-folder.js';
import { loadWeights, openWeights } from './weights-of.js';
import { GenerationError, checkGenerateOptions } from './request.js';
import { GenerateOptions, GenerateRequest, GenerationResult, ImageInput, LoadOptions, decodeMethodOf, prefillReducerOf } from './options.js';
import { CoreParts, ImageRows, ModelCore } from './core.js';
import { runTurn } from './generation.js';
import { writeHeatmaps } from './heatmaps.js';

export { GenerationError } from './request.js';
export { prefillReducerOf, decodeMethodOf } from './options.js';
export type { LoadOptions, GenerateRequest, GenerateOptions, GenerationResult, GenerationStats, FinishReason, ImageInput } from './options.js';

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

export class VisionLanguageModel extends ModelCore {
  private constructor(
    parts: CoreParts,
    private readonly ownsBackend: boolean,
  ) {
    super(parts);
  }

  /**
   * Loads a Hugging Face model folder of any registered family (see `src/model/registry.ts`; an
   * unknown one is refused with the list of supported ones). Every file is checked first (config,
   * tokenizer, chat template rendered on a sample, processor and generation configs), then every
   * tensor against the config in both directions: a problem is an InputError naming the file,
   * field or tensor.
   */
  static async load(dir: string, opts: LoadOptions = {}): Promise<VisionLanguageModel> {
    const problems = new Problems(false, opts.onWarning ?? defaultWarning);
    const imageLimits = checkImageLimits(opts.imageLimits);
    const visionCompute = opts.visionCompute ?? 'stored';
    if (visionCompute !== 'stored' && visionCompute !== 'int16')
      throw new OptionError(`visionCompute must be "stored" or "int16", got ${JSON.stringify(visionCompute)}`);
    const int4Activations = opts.int4Activations ?? 'i16';
    if (int4Activations !== 'i16' && int4Activations !== 'i8')
      throw new OptionError(`int4Activations must be "i16" or "i8", got ${JSON.stringify(int4Activations)}`);
    const files = completeFiles(readModelFiles(dir, problems, imageLimits));
    const ck = openWeights(dir, files.family, files.config);
    try {
      const names = ck.names();
      const total = names.reduce((a, n) => a + ck.info(n).byteLength, 0);
      checkMachineMemory(total, dir);
      if (!opts.backend && opts.threads !== undefined) {
        const threads = checkThreads(opts.threads);
        if (threads < opts.threads)
          problems.warn(
            `threads ${opts.threads} is more than this machine's ${threads} cores: using ${threads} (more threads than cores only wait for each other)`,
          );
      }
      const backend: KernelBackend = opts.backend ?? (await WasmBackend.create(opts));
      try {
        const loader = new WeightLoader(backend, ck, dir, { visionCompute, int4Activations });
        if (opts.onProgress) loader.onProgress = (b) => opts.onProgress!(Math.min(b, total), total);
        const { decoder, encoder } = await loadWeights(loader, files.family, files.config, names, { placeBudgetBytes: opts.placeBudgetBytes });
        return new VisionLanguageModel(
          {
            dir,
            backend,
            family: files.family,
            config: files.config,
            decoder,
            encoder,
            imageProcessor: files.imageProcessor,
            layout: files.layout,
            tokenizer: files.tokenizer,
            template: files.template,
            eosTokenIds: mergeEosTokenIds(decoder.eosTokenIds, files.generationEos),
            weightBytes: loader.loadedBytes,
            warnings: problems.warnings,
            imageLimits,
            visionCompute,
          },
          !opts.backend,
        );
      } catch (e) {
        if (!opts.backend) await backend.close();
        throw e;
      }
    } finally {
      ck.close();
    }
  }

  async generate(req: GenerateRequest, opts: GenerateOptions = {}): Promise<GenerationResult> {
    const t0 = performance.now();
    checkGenerateOptions(opts);
    const reducer = prefillReducerOf(opts);
    decodeMethodOf(opts); // checked before any work
    const images = req.images ?? [];
    if (!Array.isArray(images)) throw new GenerationError(`images must be an array, got ${typeof images}`);
    // The prompt is checked and rendered before the images are encoded; their token counts come after.
    const text = req.inputIds === undefined ? this.promptText(req) : null;
    if (text === null && images.length > 0 && !this.encoder) throw this.noImages();
    if (opts.signal?.aborted) return this.abortedResult(t0);
    const rows: ImageRows[] = images.length && this.encoder ? await this.imageFeatures(images, reducer) : [];
    const cache = this.decoder.newCache();
    try {
      const ids = text === null ? this.idsFor(req, rows) : this.idsOfText(text, rows);
      this.checkPromptLength(ids.length);
      const t1 = performance.now();
      return await runTurn(this, { ids, images: rows, cache, slot0: 0, opts, t0, t1, visualIn: rows.reduce((a, r) => a + r.denseRows, 0), imageCached: false });
    } finally {
      this.decoder.freeCache(cache);
      for (const r of rows) this.backend.free(r.features);
    }
  }

  /**
   * Writes one heatmap PNG per image of a result: the units kept in prefill and those retrieved
   * at decode, over the image's tiles as the vision tower saw them (see writeHeatmaps). The first
   * image goes to `file`, image i > 0 to `file` with `-{i + 1}` before its extension. Returns the
   * file names.
   */
  async writeHeatmaps(file: string, images: ImageInput[], result: GenerationResult): Promise<string[]> {
    if (!this.encoder || !this.imageProcessor || !result.visual) throw new GenerationError('heatmap: the result has no images');
    const processed = await Promise.all(images.map((im) => this.preprocess(im)));
    return writeHeatmaps(file, this.encoder, this.imageProcessor, processed, result.visual);
  }

  /** A multi-turn session about `images`: they are encoded and prefilled once, each question reuses them. */
  session(images: ImageInput[], opts: SessionOptions = {}): Session {
    return new Session(this, images, opts);
  }

  async close(): Promise<void> {
    if (this.ownsBackend) await this.backend.close();
  }
}
