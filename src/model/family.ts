// What differs between vision-language models, as small interfaces: the image processor (pixels
// to tiles), the image encoder (vision tower with its salience hook, and the connector that turns
// tower patches into language-model tokens), the prompt layout (how an image's placeholder expands)
// and the decoder (decoder.ts). A family implements them in its own folder and is one row of the
// registry (registry.ts); the engine, sessions, heatmaps, the eval harness and the sparsity methods
// speak only to these interfaces.
import { KernelBackend, Matrix } from '../kernels/backend.js';
import { RgbImage } from '../io/image-types.js';
import { TextTokenizer } from '../io/tokenizer.js';
import { LanguageDecoder, PlacementOptions } from './decoder.js';
import { WeightLoader } from './weights.js';

// ---- configs --------------------------------------------------------------------------------

/** What loading checks before any weight is read, whatever the family. */
export interface TextFacts {
  vocabSize: number;
  /** Positions the language model supports (max_position_embeddings). */
  contextWindow: number;
  /** End-of-sequence ids the config names (empty when none). */
  eosTokenIds: number[];
  /** The config field that holds the context window, for messages (e.g. "text_config.max_position_embeddings"). */
  contextField: string;
}

/** A family's parsed config.json: its own fields, plus what every family declares. */
export interface FamilyConfig {
  /** `model_type` as written in config.json. */
  readonly modelType: string;
  /** The language model's facts; null for a vision encoder alone (not runnable). */
  readonly textFacts: TextFacts | null;
  /** The image side; null for a text-only model. */
  readonly imageFacts: {
    /** The id that marks image rows in expanded prompt ids (it may lie outside the vocabulary). */
    tokenId: number;
    /** The config field that names it, for messages. */
    tokenField: string;
    /** The fewest visual tokens one image takes in the prompt (dense): the context must hold them. */
    minTokens: number;
  } | null;
}

// ---- images ---------------------------------------------------------------------------------

/** One image after the family's image processor. */
export interface ProcessedImage {
  /** The vision tower's inputs, one per tile, each [channels][height][width] (normalised). */
  readonly tiles: readonly Float32Array[];
  /** The image's rows in the prompt without pruning (the family's added rows included, marker text not). */
  readonly dense: PromptImage;
}

/** Pixels to the tower's tiles (and, for pictures, back). */
export interface ImageProcessor {
  /** Preprocesses one decoded image; refuses (ImageError) resize targets above `maxPixels`. */
  process(image: RgbImage, maxPixels: number): ProcessedImage;
  /** Tile `tile` as RGB bytes (the tower's view of it, for heatmaps). */
  tileView(image: ProcessedImage, tile: number): RgbImage;
}

/**
 * One tile through the vision tower and the connector's merge, before the projection: the units
 * that prefill methods rank, keep and merge. A unit is one connector token: a patch for an MLP
 * projector, a block of patches for pixel shuffle or VILA's downsample.
 */
export interface EncodedTile {
  /** Connector inputs, one row per unit (reused by the encoder's next call). */
  units: Matrix;
  /**
   * Per unit, query-agnostic salience from the tower's own attention at the layer that feeds the
   * connector: the class token's attention where the tower has one, else the column mean; a unit
   * that merges patches gets the mean over them.
   */
  salience?: Float32Array;
  /** Per unit, that layer's key row (mean over merged patches), [units][heads · headDim]. */
  keys?: Float32Array;
}

/** What an encoded tile should carry besides its units. */
export interface UnitRequest {
  salience?: boolean;
  keys?: boolean;
  /**
   * The tower layer (0-based) whose attention gives salience and keys; default the last layer the
   * tower runs, the one whose output feeds the connector. A layer outside the tower is an OptionError.
   */
  layer?: number;
}

/** Where a unit of an image lies, in the pixels of one of its tiles. */
export interface UnitRegion {
  tile: number;
  x: number;
  y: number;
  width: number;
  height: number;
}

/** The image's rows for the prompt, assembled from its tiles' projected rows. */
export interface AssembledImage {
  /** [rows][text hidden], owned by the caller. */
  features: Matrix;
  /** Per row, the unit it stands for (image-level id, see ImageEncoder.unitIds), or -1 for a row the family adds (LLaVA-NeXT's image_newline). */
  units: number[];
  /** Rows each tile contributes, in tile order (prompt layouts with per-tile markers use them). */
  tileRows: number[];
}

/** The vision tower and connector of a VLM. */
export interface ImageEncoder {
  readonly backend: KernelBackend;
  /** The tower's attention heads and head dimension (the shape of EncodedTile.keys rows). */
  readonly heads: number;
  readonly headDim: number;
  /** Encodes tile `tile` of an image to connector units, with salience and keys when asked (see UnitRequest). */
  encodeTile(image: ProcessedImage, tile: number, want?: UnitRequest): EncodedTile;
  /** The image-level ids of tile `tile`'s units, in row order (what results and heatmaps report). */
  unitIds(image: ProcessedImage, tile: number): number[];
  /** Where a unit lies (null for one without a place, such as a class token). */
  unitRegion(image: ProcessedImage, unit: number): UnitRegion | null;
  /** Projects unit rows into the language model's embedding space, [rows][text hidden] (reused by the next call). */
  project(units: Matrix): Matrix;
  /** A matrix holding `data` (row-major [n][cols]), reused by the next call (for merged units). */
  unitRows(data: Float32Array, cols: number): Matrix;
  /** Rows `rows` (ascending) of m, gathered into a matrix reused by the next call. */
  gather(m: Matrix, rows: readonly number[]): Matrix;
  /**
   * The image's rows in prompt order from each tile's projected rows and their units. Takes
   * ownership of the tiles' matrices (it frees those it does not return).
   */
  assemble(image: ProcessedImage, tiles: { features: Matrix; units: number[] }[]): AssembledImage;
}

// ---- prompts --------------------------------------------------------------------------------

/** An image as its prompt layout needs it. */
export interface PromptImage {
  /** Rows the image gives (after pruning), added rows included. */
  rows: number;
  /** Rows per tile, in tile order. */
  tileRows: readonly number[];
  /** Rows and columns of the image's tile grid, for layouts that mark tiles by position (Idefics3); absent for one tile. */
  grid?: readonly [number, number];
}

/** How a family lays out images in the prompt. */
export interface PromptLayout {
  /** The text a chat template renders for each image (e.g. "<image>"). */
  readonly placeholder: string;
  /** The id of image rows in expanded prompt ids. */
  readonly imageTokenId: number;
  /** The token ids of a rendered prompt, each placeholder expanded to its image's rows (and the family's markers around them). */
  encode(text: string, images: readonly PromptImage[], tokenizer: TextTokenizer): number[];
}

// ---- the registry row -----------------------------------------------------------------------

/** A loaded model of a family. */
export interface FamilyModel {
  readonly decoder: LanguageDecoder;
  /** Null for a text-only model. */
  readonly encoder: ImageEncoder | null;
}

/** JSON of the processor files a family reads (null: the file is absent). */
export type ProcessorFiles = Record<string, unknown | null>;

/** One model family: a registry row. */
export interface Family<C extends FamilyConfig = FamilyConfig> {
  /** Short name, e.g. "llava". */
  readonly name: string;
  /** `architectures` entries of config.json that select it (the first one is preferred). */
  readonly architectures: readonly string[];
  /** `model_type`s that select it (when no architecture matches). */
  readonly modelTypes: readonly string[];
  /** Parses config.json; every problem is a ConfigError naming `source` and the field. */
  parse(json: Record<string, unknown>, source: string): C;
  /** What the engine runs it as, and its parts (inspect). */
  describe(config: C): { family: string; parts: string[] };
  /** Null: the config describes something the engine cannot run alone (a vision tower). */
  readonly notRunnable?: string;
  /**
   * Where the weights are when not in the model folder itself (VILA: `llm/`, `vision_tower/`,
   * `mm_projector/`): each folder's tensors are named with its prefix.
   */
  weightFolders?(config: C): { folder: string; prefix: string }[];
  /** The folder of the tokenizer, chat template and generation config, relative to the model folder (default: the folder itself). */
  textFolder?(config: C): string;
  /** The chat template to use when the folder has none (VILA's conversation format). */
  defaultChatTemplate?(config: C): string;
  /** Processor files it reads, relative to the model folder (absent ones are passed as null). */
  processorFiles?(config: C): string[];
  /** The image processor, from the processor files; ImageError/ConfigError naming the file and field. */
  imageProcessor?(config: C, files: ProcessorFiles, dir: string, maxPixels: number): ImageProcessor;
  /** The prompt layout, given the tokenizer (a ConfigError when the image token is not one of its added tokens). */
  promptLayout?(config: C, tokenizer: TextTokenizer, dir: string): PromptLayout;
  /** Loads the weights (every tensor named, every shape checked; see WeightLoader). */
  load(loader: WeightLoader, config: C, placement: PlacementOptions): Promise<FamilyModel>;
}

/** A registry row with its config type erased (the registry holds rows of every family). */
export type AnyFamily = Family<FamilyConfig>;

/** Erases a family's config type for the registry. */
export function familyRow<C extends FamilyConfig>(f: Family<C>): AnyFamily {
  return f as unknown as AnyFamily;
}
