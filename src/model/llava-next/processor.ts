/**
 * LLaVA-NeXT ("anyres") image processing and feature-packing geometry, as transformers' slow (Pillow-based)
 * `LlavaNextImageProcessor` and `LlavaNextModel.pack_image_features` compute them. Pure functions: no model,
 * no backend.
 *
 * Preprocessing ({@link llavaNextPreprocess}), in transformers' order:
 * 1. pick the best resolution `(h, w)` of `image_grid_pinpoints` for the image ({@link selectBestResolution});
 * 2. resize the uint8 image with Pillow to fit it, aspect ratio kept (`get_patch_output_size`, which rounds the
 *    scaled side up);
 * 3. pad it to the best resolution with black (zero bytes), centred, an odd extra pixel going to the bottom or
 *    right; the padding happens before rescaling, so a padded pixel ends up as `(0 - mean) / std`;
 * 4. cut tiles of the crop size in row-major order;
 * 5. the base image: the whole original image resized to a square, ignoring its aspect ratio;
 * 6. every entry of `[base, tile(0,0), tile(0,1), …]` then gets the CLIP steps ({@link clipPreprocess}).
 *
 * Packing ({@link anyresFeatureLayout}): the base tile's patch features come first; the grid tiles' features form
 * one feature grid (row = tile_row·P + patch_row, col = tile_col·P + patch_col), whose padded border is cut off
 * ({@link unpaddedGrid}); each kept row of it is followed by one `image_newline` row.
 *
 * Everything is in transformers' (height, width) order: pinpoints, `image_sizes`, best resolution and grid.
 */
import * as path from 'node:path';
import { isFolder, readJsonFile } from '../../base/files.js';
import { checkRgbImage, DEFAULT_IMAGE_LIMITS, ImageError, pixels, type RgbImage } from '../../io/image-types.js';
import { resize } from '../../io/image-resample.js';
import { clipPreprocess, parseClipImageProcessorConfig, type ClipImageProcessorConfig } from '../../io/image-processor.js';

/** The settings of a `LlavaNextImageProcessor`, with transformers' defaults filled in. */
export interface LlavaNextProcessorConfig {
  processor: 'LlavaNextImageProcessor';
  /**
   * The CLIP steps every tile and the base image go through (resize, centre crop, rescale, normalise), with
   * CLIPImageProcessor's defaults, which are LlavaNextImageProcessor's. Its `processor` field reads
   * `CLIPImageProcessor`: it names the steps, not the file's class.
   */
  clip: ClipImageProcessorConfig;
  /** Candidate resolutions `[height, width]`, in the file's order (which decides exact ties), each a multiple of {@link tileSize}. */
  imageGridPinpoints: [number, number][];
  /** The side of the square tiles cut from the padded image: `crop_size` (which must be square). */
  tileSize: number;
  /**
   * Whether a batch of images is padded to the same number of tiles (with zero tiles at the end). This does not
   * pad pixels and does nothing for one image; the black padding of step 3 always happens.
   */
  doPad: boolean;
}

/** transformers' default `image_grid_pinpoints` (the llava-v1.6 ones). */
const DEFAULT_PINPOINTS: readonly (readonly [number, number])[] = [
  [336, 672],
  [672, 336],
  [672, 672],
  [1008, 336],
  [336, 1008],
];

/** The class names accepted in `image_processor_type` (a `…Fast` or transformers 5 `…Pil` class reads as the slow one). */
const LLAVA_NEXT_TYPES: readonly string[] = ['LlavaNextImageProcessor', 'LlavaNextImageProcessorFast', 'LlavaNextImageProcessorPil'];

/** Reads `preprocessor_config.json` from a model folder, or the given JSON file. */
export function loadLlavaNextProcessorConfig(fileOrDir: string): LlavaNextProcessorConfig {
  const file = isFolder(fileOrDir) ? path.join(fileOrDir, 'preprocessor_config.json') : fileOrDir;
  return parseLlavaNextProcessorConfig(readJsonFile(file, { what: 'image processor config', error: ImageError }), file);
}

/**
 * Validates a parsed `preprocessor_config.json` of a LLaVA-NeXT model (`source` names it in errors). The CLIP
 * fields are read by {@link parseClipImageProcessorConfig}, with the same defaults and errors. On top of those:
 * `image_processor_type` (or `feature_extractor_type`), when present, must be a LlavaNext class;
 * `image_grid_pinpoints` is a non-empty list of `[height, width]` pairs of positive integers, each a multiple of
 * the tile size (transformers does not check this, but its processor then cuts partial tiles while the model
 * counts whole ones, and the two disagree); `crop_size` must be square, since tiles are cut as
 * `crop_size.height` squares; `do_pad` is a boolean (`null` is false, as in Python).
 */
export function parseLlavaNextProcessorConfig(json: unknown, source: string): LlavaNextProcessorConfig {
  if (!isObject(json)) throw new ImageError(`${source}: expected a JSON object`);
  const fail = (field: string, expected: string): never => {
    throw new ImageError(`${source}: field "${field}": expected ${expected}, found ${JSON.stringify(json[field])}`);
  };

  const typeField = json.image_processor_type !== undefined ? 'image_processor_type' : 'feature_extractor_type';
  const typeName = json[typeField];
  if (typeName !== undefined && (typeof typeName !== 'string' || !LLAVA_NEXT_TYPES.includes(typeName))) {
    fail(typeField, `one of ${LLAVA_NEXT_TYPES.join(', ')}`);
  }

  // LlavaNextImageProcessor reads the CLIP fields as CLIPImageProcessor does, with the same defaults; it has no
  // `use_square_size` (an unknown key it ignores).
  const clipJson: Record<string, unknown> = { ...json, image_processor_type: 'CLIPImageProcessor' };
  delete clipJson.feature_extractor_type;
  delete clipJson.use_square_size;
  const clip = parseClipImageProcessorConfig(clipJson, source);

  if (clip.cropSize.height !== clip.cropSize.width) fail('crop_size', 'a square size (tiles are cut as squares)');
  const tileSize = clip.cropSize.height;

  let imageGridPinpoints: [number, number][];
  const rawPins = json.image_grid_pinpoints;
  if (rawPins === undefined || rawPins === null) {
    imageGridPinpoints = DEFAULT_PINPOINTS.map(([h, w]) => [h, w]);
  } else {
    const positiveInt = (v: unknown): v is number => Number.isSafeInteger(v) && (v as number) > 0;
    if (!Array.isArray(rawPins) || rawPins.length === 0 || !rawPins.every((p) => Array.isArray(p) && p.length === 2 && p.every(positiveInt))) {
      fail('image_grid_pinpoints', 'a non-empty list of [height, width] pairs of positive integers');
    }
    imageGridPinpoints = (rawPins as [number, number][]).map(([h, w]) => [h, w]);
  }
  const off = imageGridPinpoints.find(([h, w]) => h % tileSize !== 0 || w % tileSize !== 0);
  if (off !== undefined) {
    throw new ImageError(
      `${source}: field "image_grid_pinpoints"${rawPins == null ? " (transformers' default)" : ''}: ` +
        `every [height, width] must be a multiple of the tile size ${tileSize} (crop_size), found [${off.join(', ')}]`,
    );
  }

  let doPad = true;
  if (json.do_pad === null) doPad = false;
  else if (json.do_pad !== undefined) doPad = typeof json.do_pad === 'boolean' ? json.do_pad : fail('do_pad', 'a boolean');

  return { processor: 'LlavaNextImageProcessor', clip, imageGridPinpoints, tileSize, doPad };
}

// ---- preprocessing --------------------------------------------------------------------------------

/**
 * transformers' `select_best_resolution` for an image of `height × width`: for each candidate `[h, w]`, the
 * image scaled to fit inside it by `s = min(w / width, h / height)` keeps `effective = min(trunc(width·s) ·
 * trunc(height·s), width·height)` pixels and wastes `h·w - effective`. The candidate with the largest
 * `effective` wins; among equal ones, the smaller waste; among exact ties, the first in the list.
 * Everything is `[height, width]`.
 */
export function selectBestResolution(height: number, width: number, pinpoints: readonly (readonly [number, number])[]): [number, number] {
  if (!Number.isSafeInteger(height) || !Number.isSafeInteger(width) || height < 1 || width < 1) {
    throw new ImageError(`selectBestResolution: image size must be positive integers, found ${height}×${width} (height×width)`);
  }
  if (pinpoints.length === 0) throw new ImageError('selectBestResolution: no candidate resolutions');
  let best: [number, number] | undefined;
  let maxEffective = 0;
  let minWasted = Infinity;
  for (const [h, w] of pinpoints) {
    // The same double operations as Python: two divisions, a min, products truncated by int().
    const scale = Math.min(w / width, h / height);
    const effective = Math.min(Math.trunc(width * scale) * Math.trunc(height * scale), width * height);
    const wasted = h * w - effective;
    if (effective > maxEffective || (effective === maxEffective && wasted < minWasted)) {
      maxEffective = effective;
      minWasted = wasted;
      best = [h, w];
    }
  }
  // The first candidate always passes (effective >= 0 and wasted < Infinity), so best is set.
  return best as [number, number];
}

/**
 * transformers' `get_patch_output_size`: the `[height, width]` the image is resized to inside `[th, tw]`, aspect
 * ratio kept. The side that limits the scale takes the target size; the other is `ceil(side · scale)`, at most
 * its target.
 */
export function anyresResizedSize(height: number, width: number, th: number, tw: number): [number, number] {
  const scaleW = tw / width;
  const scaleH = th / height;
  return scaleW < scaleH ? [Math.min(Math.ceil(height * scaleW), th), tw] : [th, Math.min(Math.ceil(width * scaleH), tw)];
}

/** One image after anyres preprocessing: the `pixel_values` of one `image_sizes` entry, and how they were made. */
export interface AnyresImage {
  /** `[base, grid tiles row-major]`, each `[3][tileSize][tileSize]` channel-first, like `pixel_values[0][i]`. */
  tiles: Float32Array[];
  /** The side of each entry of `tiles` (after the CLIP steps). */
  tileSize: number;
  /** The chosen pinpoint `[height, width]`. */
  bestResolution: [number, number];
  /** Tile rows, tile cols: `bestResolution / tileSize`. */
  grid: [number, number];
  /** `[height, width]` of the aspect-preserving resize before padding. */
  resized: [number, number];
  /** Black padding `[top, bottom, left, right]`, in pixels, up to `bestResolution`. */
  padding: [number, number, number, number];
  /** The original `[height, width]` (`image_sizes`), which the model needs for unpadding. */
  imageSize: [number, number];
}

/**
 * The `pixel_values` of one RGB image under `cfg`, exactly as transformers' slow `LlavaNextImageProcessor`
 * computes them (steps 1–6 of this module's description). Every resize is Pillow's, on the uint8 image. Refuses
 * (ImageError) to resize or pad to more than `maxPixels` pixels.
 */
export function llavaNextPreprocess(img: RgbImage, cfg: LlavaNextProcessorConfig, maxPixels = DEFAULT_IMAGE_LIMITS.maxPixels): AnyresImage {
  checkRgbImage(img, 'llavaNextPreprocess');
  const { height, width } = img;
  // Sizes in messages are width×height, as in clipPreprocess's.
  const limit = (what: string, w: number, h: number): void => {
    if (w * h > maxPixels) {
      throw new ImageError(
        `LLaVA-NeXT preprocessing of the ${width}×${height} image: ${what} gives ${w}×${h}, more than the ${pixels(maxPixels)} allowed ` +
          '(the image limit maxPixels; --max-image-pixels)',
      );
    }
  };

  const T = cfg.tileSize;
  const bestResolution = selectBestResolution(height, width, cfg.imageGridPinpoints);
  const [bh, bw] = bestResolution;
  const resized = anyresResizedSize(height, width, bh, bw);
  const [rh, rw] = resized;
  limit(`resizing to fit the anyres best resolution ${bw}×${bh}`, rw, rh);
  limit('padding to the anyres best resolution', bw, bh);
  // divmod(target - new, 2): the odd pixel goes to the bottom / right.
  const top = Math.floor((bh - rh) / 2);
  const left = Math.floor((bw - rw) / 2);
  const padding: [number, number, number, number] = [top, bh - rh - top, left, bw - rw - left];
  const canvas = padImage(resize(img, rw, rh, cfg.clip.resample), bh, bw, top, left);

  // The base image: a square of the `size` short side (or of min(height, width) for a {height, width} size).
  const size = cfg.clip.size;
  const baseSide = 'shortestEdge' in size ? size.shortestEdge : Math.min(size.height, size.width);
  limit('resizing to the square base image', baseSide, baseSide);
  const entries = [resize(img, baseSide, baseSide, cfg.clip.resample)];
  const grid: [number, number] = [bh / T, bw / T];
  for (let r = 0; r < grid[0]; r++) {
    for (let c = 0; c < grid[1]; c++) entries.push(cropImage(canvas, r * T, c * T, T, T));
  }

  const tiles: Float32Array[] = [];
  let tileSize = 0;
  for (const e of entries) {
    const pv = clipPreprocess(e, cfg.clip, maxPixels);
    // transformers stacks the entries into one array: they must come out as squares of one size.
    if (pv.width !== pv.height || (tileSize !== 0 && pv.width !== tileSize)) {
      throw new ImageError(
        `llavaNextPreprocess: the processor settings make tiles of different or non-square sizes ` +
          `(${tileSize}×${tileSize} and ${pv.width}×${pv.height}); check size, crop_size, do_resize and do_center_crop`,
      );
    }
    tileSize = pv.width;
    tiles.push(pv.data);
  }
  return { tiles, tileSize, bestResolution, grid, resized, padding, imageSize: [height, width] };
}

/** `img` placed at (`top`, `left`) on a black `h × w` canvas. */
function padImage(img: RgbImage, h: number, w: number, top: number, left: number): RgbImage {
  const out = new Uint8Array(h * w * 3);
  const rowBytes = img.width * 3;
  for (let y = 0; y < img.height; y++) {
    out.set(img.data.subarray(y * rowBytes, (y + 1) * rowBytes), ((top + y) * w + left) * 3);
  }
  return { width: w, height: h, data: out };
}

/** The `h × w` window of `img` whose top-left pixel is (`y0`, `x0`); it must lie inside the image. */
function cropImage(img: RgbImage, y0: number, x0: number, h: number, w: number): RgbImage {
  const out = new Uint8Array(h * w * 3);
  for (let y = 0; y < h; y++) {
    const from = ((y0 + y) * img.width + x0) * 3;
    out.set(img.data.subarray(from, from + w * 3), y * w * 3);
  }
  return { width: w, height: h, data: out };
}

// ---- packing geometry -----------------------------------------------------------------------------

/** transformers' `get_anyres_image_grid_shape`: tile rows and cols for an image, `best // tileSize` per axis. */
export function anyresGrid(height: number, width: number, pinpoints: readonly (readonly [number, number])[], tileSize: number): [number, number] {
  const [bh, bw] = selectBestResolution(height, width, pinpoints);
  return [Math.floor(bh / tileSize), Math.floor(bw / tileSize)];
}

/** Half-open `[start, end)` ranges of feature-grid rows and cols. */
export interface GridWindow {
  rows: [number, number];
  cols: [number, number];
}

/**
 * Python's `int(round(x, 7))` for finite `x >= 0`. `toFixed(7)` rounds the exact binary value to 7 decimals like
 * Python's `round`; they differ only on exact decimal ties (Python picks the even digit), and no tie lies within
 * 5e-8 of an integer (it would have to be `n - 5e-8`, which is not a binary fraction), so the integer part agrees.
 */
function intRound7(x: number): number {
  return Math.trunc(Number(x.toFixed(7)));
}

/**
 * transformers' `unpad_image` on a `currentH × currentW` feature grid of an image of `imageH × imageW`
 * (`image_sizes`): the part of the grid that is not padding. When the image is wider than the grid
 * (`imageW / imageH > currentW / currentH`) rows are cut, else columns: the image's extent on that axis is
 * `int(round(side · scale, 7))`, and `(current - extent) // 2` is removed from **both** ends, so an odd
 * difference keeps one extra row or column.
 */
export function unpaddedGrid(currentH: number, currentW: number, imageH: number, imageW: number): GridWindow {
  for (const [name, v] of [
    ['currentH', currentH],
    ['currentW', currentW],
    ['imageH', imageH],
    ['imageW', imageW],
  ] as const) {
    if (!Number.isSafeInteger(v) || v < 1) throw new ImageError(`unpaddedGrid: ${name} must be a positive integer, found ${v}`);
  }
  if (imageW / imageH > currentW / currentH) {
    const newH = intRound7(imageH * (currentW / imageW));
    const pad = Math.floor((currentH - newH) / 2);
    return { rows: [pad, currentH - pad], cols: [0, currentW] };
  }
  const newW = intRound7(imageW * (currentH / imageH));
  const pad = Math.floor((currentW - newW) / 2);
  return { rows: [0, currentH], cols: [pad, currentW - pad] };
}

/** The origin of one packed image-feature row: a patch of a tile, or the learned `image_newline` vector. */
export type FeatureSource = { tile: number; patch: number } | 'newline';

/** Where every packed image-feature row of one image comes from. */
export interface AnyresFeatureLayout {
  /** Patch features per tile side (`vision image_size / patch_size`). */
  patchesPerSide: number;
  /** Rows, cols of the grid tiles' joint feature grid before unpadding: `grid · patchesPerSide`. */
  featureGrid: [number, number];
  /** The part of the feature grid unpadding keeps. */
  unpadded: GridWindow;
  /**
   * The packed rows in prompt order: the base tile's patches (tile 0, no newline), then each kept row of the
   * feature grid followed by one newline. `tile` indexes {@link AnyresImage.tiles}; `patch` is row-major inside
   * that tile. Its length is {@link anyresTokenCount}.
   */
  rows: FeatureSource[];
}

/** The image's original size and its tile grid, as in {@link AnyresImage}: `[height, width]`, `[rows, cols]`. */
export interface AnyresGeometry {
  imageSize: readonly [number, number];
  grid: readonly [number, number];
}

/** The unpadded window of an image's feature grid, with argument checks. */
function windowOf(image: AnyresGeometry, patchesPerSide: number): { featureGrid: [number, number]; unpadded: GridWindow } {
  const P = patchesPerSide;
  const [gr, gc] = image.grid;
  if (!Number.isSafeInteger(P) || P < 1) throw new ImageError(`anyres layout: patchesPerSide must be a positive integer, found ${P}`);
  if (!Number.isSafeInteger(gr) || !Number.isSafeInteger(gc) || gr < 1 || gc < 1) {
    throw new ImageError(`anyres layout: the tile grid must be positive integers, found ${gr}×${gc}`);
  }
  const featureGrid: [number, number] = [gr * P, gc * P];
  return { featureGrid, unpadded: unpaddedGrid(featureGrid[0], featureGrid[1], image.imageSize[0], image.imageSize[1]) };
}

/**
 * The packing of `pack_image_features` for one image, as indices: which tile and patch (or newline) each packed
 * feature row comes from. Feature-grid cell (row, col) is patch `(row % P)·P + col % P` of grid tile
 * `floor(row / P)·cols + floor(col / P)`, which is entry `1 + …` of `tiles` (entry 0 is the base image).
 * Assumes the "default" feature selection (the CLS row dropped, P² features per tile).
 */
export function anyresFeatureLayout(image: AnyresGeometry, patchesPerSide: number): AnyresFeatureLayout {
  const P = patchesPerSide;
  const { featureGrid, unpadded } = windowOf(image, P);
  const cols = image.grid[1];
  const rows: FeatureSource[] = [];
  for (let patch = 0; patch < P * P; patch++) rows.push({ tile: 0, patch });
  for (let r = unpadded.rows[0]; r < unpadded.rows[1]; r++) {
    for (let c = unpadded.cols[0]; c < unpadded.cols[1]; c++) {
      rows.push({ tile: 1 + Math.floor(r / P) * cols + Math.floor(c / P), patch: (r % P) * P + (c % P) });
    }
    rows.push('newline');
  }
  return { patchesPerSide: P, featureGrid, unpadded, rows };
}

/**
 * The number of image tokens of one image: `P²` base features plus `(cols + 1)` per kept row. Equals
 * `LlavaNextProcessor._get_number_of_features` less the CLS token (the "default" strategy), i.e. the number of
 * `<image>` tokens the processor expands one placeholder to, and the length of {@link anyresFeatureLayout}'s rows.
 */
export function anyresTokenCount(image: AnyresGeometry, patchesPerSide: number): number {
  const { unpadded } = windowOf(image, patchesPerSide);
  const keptRows = unpadded.rows[1] - unpadded.rows[0];
  const keptCols = unpadded.cols[1] - unpadded.cols[0];
  return patchesPerSide * patchesPerSide + keptRows * (keptCols + 1);
}

/** The layout's rows as `[n][2]` (tile, patch) pairs, `(-1, -1)` for a newline: the form of the golden `image_features.source`. */
export function featureSourcePairs(rows: readonly FeatureSource[]): Int32Array {
  const out = new Int32Array(rows.length * 2);
  rows.forEach((s, i) => {
    out[2 * i] = s === 'newline' ? -1 : s.tile;
    out[2 * i + 1] = s === 'newline' ? -1 : s.patch;
  });
  return out;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
