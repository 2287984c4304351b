// Visual-sparsity methods as strategies: what an image contributes to the prompt (prefill stage)
// and which cached visual tokens each decode step reads (decode stage). Dense, SparseVILA and the
// baselines all run on the same model through these.
import { Matrix } from '../kernels/backend.js';
import { ImageEncoder, ProcessedImage } from '../model/family.js';
import { prunedImageFeatures } from './prefill.js';
import { pruMergeMerge, pruMergeSelect } from './prumerge.js';
import { visionZipContextual, visionZipMerge, visionZipSelect } from './visionzip.js';
import { DecodeMethod, DecodeSelector, TurnContext } from './decode.js';
import { DecodeRetrieval } from './retrieval.js';
import { QuestDecode, QuestOptions } from './quest.js';
import { DropStage, LayerDrop, PrunedCacheContinuation, fastVStages, pyramidDropStages } from './layerdrop.js';
import { OptionError } from '../base/errors.js';

/** An image's rows for the language model. */
export interface ReducedImage {
  /** Projected rows [n][text hidden] (reused by the model's next call). */
  features: Matrix;
  /** For each output row, the unit (row of the encoded tile) it stands for (a merged row: its anchor). */
  kept: number[];
}

/**
 * The prefill stage of a method: reduces the visual tokens of one tile of an image before the
 * language model (each tile on its own; the family lays the tiles out, with its markers).
 */
export interface PrefillReducer {
  readonly name: string;
  reduce(encoder: ImageEncoder, image: ProcessedImage, tile: number): ReducedImage;
}

/** Every visual token (the dense path, exactly). */
export const densePrefill: PrefillReducer = { name: 'dense', reduce: (e, im, t) => prunedImageFeatures(e, im, t, 0) };

/**
 * SparseVILA's query-agnostic pruning with prefill sparsity p (per tile), ranked by the attention
 * of the tower layer `salienceLayer` (default: the one that feeds the connector).
 */
export function sparseVilaPrefill(p: number, opts: { salienceLayer?: number } = {}): PrefillReducer {
  const layer = opts.salienceLayer;
  if (layer !== undefined && (!Number.isInteger(layer) || layer < 0)) throw new OptionError(`salience layer ${layer} must be a whole number >= 0`);
  return {
    name: layer === undefined ? `sparsevila(p=${p})` : `sparsevila(p=${p}, salience layer ${layer})`,
    reduce: (e, im, t) => prunedImageFeatures(e, im, t, p, layer),
  };
}

/** VisionZip with a budget of output tokens per image (its paper's 64 = 54 dominant + 10 contextual). */
export function visionZipPrefill(budget = 64): PrefillReducer {
  if (!Number.isInteger(budget) || budget < 2) throw new OptionError(`VisionZip budget ${budget} must be a whole number >= 2`);
  return {
    name: `visionzip(${budget})`,
    reduce: (e, im, t) => {
      const { units, salience, keys } = e.encodeTile(im, t, { salience: true, keys: true });
      const n = salience!.length;
      if (budget >= n) return prunedImageFeatures(e, im, t, 0);
      const contextual = visionZipContextual(budget);
      const sel = visionZipSelect(salience!, keys!, e.heads, e.headDim, budget - contextual, contextual);
      const merged = visionZipMerge(e.backend.read(units), units.cols, sel);
      return { features: e.project(e.unitRows(merged, units.cols)), kept: [...sel.dominant, ...sel.targets] };
    },
  };
}

/** PruMerge: the IQR outliers of the class-token attention (or a fixed budget), merged with their key-nearest tokens. */
export function pruMergePrefill(budget?: number): PrefillReducer {
  if (budget !== undefined && (!Number.isInteger(budget) || budget < 1)) throw new OptionError(`PruMerge budget ${budget} must be a whole number >= 1`);
  return {
    name: budget === undefined ? 'prumerge' : `prumerge(${budget})`,
    reduce: (e, im, t) => {
      const { units, salience, keys } = e.encodeTile(im, t, { salience: true, keys: true });
      const sel = pruMergeSelect(salience!, keys!, e.heads * e.headDim, { budget: budget === undefined ? undefined : Math.min(budget, salience!.length) });
      const merged = pruMergeMerge(e.backend.read(units), units.cols, salience!, sel);
      return { features: e.project(e.unitRows(merged, units.cols)), kept: sel.kept };
    },
  };
}

/**
 * SparseVILA's query-aware decode retrieval with decode sparsity d, selecting again every
 * `reretrieveEvery` generated tokens (0: once per turn).
 */
export function sparseVilaDecode(d: number, reretrieveEvery = 0): DecodeMethod {
  if (!(d >= 0 && d < 1)) throw new OptionError(`decode sparsity ${d} must be in [0, 1)`);
  return {
    name: `sparsevila(d=${d})`,
    create: (t: TurnContext): DecodeSelector | null => {
      if (d === 0 || t.visualSlots.length === 0) return null;
      const r = new DecodeRetrieval(t.decoder, t.visualSlots, d, t.questionSlot0, t.maxSteps);
      return {
        prefillOptions: (slot0, rows) => r.prefillOptions(slot0, rows),
        decodeOptions: () => r.decodeOptions(reretrieveEvery),
        rowsPerStep: (slot) => r.rowsPerStep(slot),
        visualPerStep: r.keep,
        visualPerLayer: () => new Array<number>(t.decoder.layers).fill(r.keep),
        get keptVisual() {
          return r.kept;
        },
        free: () => r.free(),
      };
    },
  };
}

/** Quest with a per-step token budget (16-token pages, the first two layers dense). */
export function questDecode(opts: QuestOptions): DecodeMethod {
  return {
    name: `quest(${opts.budget})`,
    create: (t: TurnContext) => new QuestDecode(t.decoder, opts, t.promptLength + t.maxSteps),
  };
}

/** FastV: after layer k - 1, the visual tokens the last prompt token attends to least (a fraction r) are dropped. */
export function fastV(k = 2, r = 0.5): DecodeMethod {
  const stages = fastVStages(k, r);
  return {
    name: `fastv(K=${k}, R=${r})`,
    prunesCache: true,
    create: (t) => {
      const L = t.decoder.layers;
      if (k > L - 1)
        throw new OptionError(`FastV K = ${k}: tokens are dropped after layer K, and the language model has ${L} layers, so K must be in 1..${L - 1}`);
      return layerDrop(t, stages);
    },
  };
}

/** PyramidDrop: after layers L/4, L/2 and 3L/4, keep lambda of the visual tokens left, by the last token's attention. */
export function pyramidDrop(lambda = 0.5): DecodeMethod {
  return {
    name: `pdrop(lambda=${lambda})`,
    prunesCache: true,
    create: (t) => layerDrop(t, pyramidDropStages(t.decoder.layers, lambda)),
  };
}

/** The first turn drops tokens by its question; later turns of a session continue the pruned cache. */
function layerDrop(t: TurnContext, stages: DropStage[]): DecodeSelector | null {
  if (t.layout) return new PrunedCacheContinuation(t.layout);
  return t.visualSlots.length ? new LayerDrop(t.decoder, t.visualSlots, stages, t.promptLength) : null;
}
