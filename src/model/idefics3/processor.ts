/**
 * The Idefics3 / SmolVLM image processor (transformers' slow, Pillow-based `Idefics3ImageProcessor`, the
 * `…Pil` class of transformers 5), the text the `Idefics3Processor` puts in place of one `<image>`, and the
 * connector's pixel shuffle. All pure functions over one image or one tile.
 *
 * The pipeline for one image, in transformers' order and arithmetic (every resize is Pillow's, on 8-bit RGB):
 * 1. `do_resize`: the longest edge becomes `size.longest_edge` (also when that enlarges the image); the other
 *    side is `trunc(longest / aspect)`, plus one when odd; both sides are then capped at 4096 (transformers'
 *    `MAX_IMAGE_SIZE`, keeping the aspect ratio). `size` `{height, width}` is an exact size instead.
 * 2. With `do_image_splitting`: both sides grow to multiples of the tile side `m = max_image_size.longest_edge`
 *    (the long side to `ceil(long / m)·m`, the short side to `ceil(trunc(long' / aspect) / m)·m`, so the aspect
 *    ratio is only roughly kept). When that is larger than `m × m`, it is cut into a `rows × cols` grid of
 *    `m × m` tiles, row-major, followed by the global image: the whole resized picture resized to `m × m`.
 *    Otherwise it is one `m × m` image and rows = cols = 0.
 *    Without splitting: the image is resized to `m × m` (the aspect ratio is dropped), rows = cols = 0.
 * 3. rescale `float32(float64(x) · rescale_factor)`, normalise in float32 with mean and std rounded to float32
 *    (the same arithmetic as `clipPreprocess`).
 * 4. `do_pad`: every tile is zero-padded at the bottom and right to the largest height and width among the
 *    tiles, and `pixel_attention_mask` marks the real pixels. For one image every tile is `m × m`, so this
 *    never pads; without `do_pad` transformers returns no mask and the model uses all ones, which is what
 *    {@link TiledImage.pixelAttentionMask} then holds.
 */
import * as path from 'node:path';
import { isFolder, readJsonFile } from '../../base/files.js';
import { checkRgbImage, DEFAULT_IMAGE_LIMITS, ImageError, pixels, type RgbImage } from '../../io/image-types.js';
import { PIL_RESAMPLE_FILTERS, resize, type ResampleFilter } from '../../io/image-resample.js';

/** The settings of an Idefics3 (or SmolVLM) image processor and processor, with transformers' defaults filled in. */
export interface Idefics3ProcessorConfig {
  doResize: boolean;
  /** First resize: the longest edge (aspect ratio kept, see the module doc), or an exact size. */
  size: { longestEdge: number } | { height: number; width: number };
  doImageSplitting: boolean;
  /** `max_image_size.longest_edge`: the side of every tile and of the global image. */
  maxImageSize: number;
  /** Pillow filter, from the `resample` enum number (LANCZOS by default). */
  resample: ResampleFilter;
  doRescale: boolean;
  rescaleFactor: number;
  doNormalize: boolean;
  imageMean: [number, number, number];
  imageStd: [number, number, number];
  doPad: boolean;
  /** Informational: `decodeImage` always produces RGB. */
  doConvertRgb: boolean;
  /** `processor_config.json` `image_seq_len`: image tokens per tile after the connector. */
  imageSeqLen: number;
}

/** One image as the vision tower receives it: its tiles, their grid, and their masks. */
export interface TiledImage {
  /** Per tile `[3][tileSize][tileSize]`, channel-major, normalised: `pixel_values[0][i]`. Global image last when split. */
  tiles: Float32Array[];
  /** Height = width of every tile (after padding). */
  tileSize: number;
  /** The grid of split tiles (`image_rows`, `image_cols`); 0, 0 when the image was not split. */
  rows: number;
  cols: number;
  /** Per tile `[tileSize · tileSize]`, row-major, 1 = real pixel, 0 = padding: `pixel_attention_mask[0][i]`. */
  pixelAttentionMask: Uint8Array[];
  /**
   * The size after the resize steps, before splitting: with splitting, the size that was cut into the grid
   * (`rows · m × cols · m` when split); without, the size after the `size` resize (or the input size when
   * `do_resize` is off), before the final resize to `m × m`.
   */
  resized: { height: number; width: number };
}

/** transformers' `MAX_IMAGE_SIZE`: no side of the first resize exceeds it. */
const MAX_IMAGE_SIDE = 4096;
const DEFAULT_LONGEST_EDGE = 4 * 364;
const DEFAULT_MAX_IMAGE_SIZE = 364;
const DEFAULT_IMAGE_SEQ_LEN = 169;
/** `IMAGENET_STANDARD_MEAN` and `_STD`. */
const IMAGENET_STANDARD: [number, number, number] = [0.5, 0.5, 0.5];
/** Pillow's `Image.Resampling.LANCZOS`. */
const LANCZOS = 1;

/** Image processor classes with this pipeline (SmolVLM's is generated from Idefics3's; `…Fast` reads as its slow class). */
const PROCESSOR_TYPES: ReadonlySet<string> = new Set([
  'Idefics3ImageProcessor',
  'Idefics3ImageProcessorFast',
  'Idefics3ImageProcessorPil',
  'SmolVLMImageProcessor',
  'SmolVLMImageProcessorFast',
  'SmolVLMImageProcessorPil',
]);

/**
 * Reads `preprocessor_config.json` and, when present, `processor_config.json` from a model folder (or the
 * given preprocessor file and the `processor_config.json` next to it).
 */
export function loadIdefics3ProcessorConfig(fileOrDir: string): Idefics3ProcessorConfig {
  const dir = isFolder(fileOrDir) ? fileOrDir : path.dirname(fileOrDir);
  const file = isFolder(fileOrDir) ? path.join(fileOrDir, 'preprocessor_config.json') : fileOrDir;
  const processorFile = path.join(dir, 'processor_config.json');
  const preprocessor = readJsonFile(file, { what: 'image processor config', error: ImageError });
  const processor = readJsonFile(processorFile, { what: 'processor config', error: ImageError, required: false });
  return parseIdefics3ProcessorConfig(preprocessor, processor ?? null, file, processorFile);
}

/**
 * Validates parsed `preprocessor_config.json` and `processor_config.json` (`null` when the model has none).
 * `source` names the first in errors, `processorSource` the second (by default the `processor_config.json`
 * next to `source`). Absent fields, and `null` sizes, means and stds, take transformers' defaults: longest edge
 * 1456, tiles of 364, LANCZOS, 1/255, mean = std = 0.5, `image_seq_len` 169; a `null` flag is false, as in Python.
 * A wrong value is an {@link ImageError} naming the file and the field.
 */
export function parseIdefics3ProcessorConfig(
  preprocessor: unknown,
  processor: unknown | null,
  source: string,
  processorSource = siblingProcessorFile(source),
): Idefics3ProcessorConfig {
  if (!isObject(preprocessor)) throw new ImageError(`${source}: expected a JSON object, got ${describe(preprocessor)}`);
  const json = preprocessor;
  const fail = (field: string, expected: string, value: unknown, src = source): never => {
    throw new ImageError(`${src}: ${field} must be ${expected}, got ${describe(value)}`);
  };

  const typeName = json.image_processor_type;
  if (typeName !== undefined && (typeof typeName !== 'string' || !PROCESSOR_TYPES.has(typeName))) {
    fail('image_processor_type', `one of ${[...PROCESSOR_TYPES].join(', ')}`, typeName);
  }

  const flag = (field: string): boolean => {
    const v = json[field];
    if (v === undefined) return true; // every flag of this processor defaults to true
    if (v === null) return false;
    return typeof v === 'boolean' ? v : fail(field, 'a boolean', v);
  };
  const triple = (field: string, nonZero: boolean): [number, number, number] => {
    const v = json[field];
    if (v === undefined || v === null) return [...IMAGENET_STANDARD];
    const ok = (x: unknown): x is number => typeof x === 'number' && Number.isFinite(x) && (!nonZero || x !== 0);
    if (ok(v)) return [v, v, v];
    if (Array.isArray(v) && v.length === 3 && v.every(ok)) return [v[0], v[1], v[2]];
    const what = nonZero ? 'non-zero numbers' : 'numbers';
    return fail(field, `a list of 3 ${what} (or one number for all channels)`, v);
  };

  // size: {longest_edge} (a shortest_edge beside it is ignored, as transformers does) or {height, width}.
  let size: Idefics3ProcessorConfig['size'] = { longestEdge: DEFAULT_LONGEST_EDGE };
  const rawSize = json.size;
  if (rawSize !== undefined && rawSize !== null) {
    if (isObject(rawSize) && 'longest_edge' in rawSize) {
      if (!positiveInt(rawSize.longest_edge)) fail('size.longest_edge', 'a positive integer', rawSize.longest_edge);
      size = { longestEdge: rawSize.longest_edge as number };
    } else if (isObject(rawSize) && 'height' in rawSize && 'width' in rawSize) {
      if (!positiveInt(rawSize.height)) fail('size.height', 'a positive integer', rawSize.height);
      if (!positiveInt(rawSize.width)) fail('size.width', 'a positive integer', rawSize.width);
      size = { height: rawSize.height as number, width: rawSize.width as number };
    } else {
      fail('size', '{"longest_edge": n} or {"height": h, "width": w}', rawSize);
    }
  }

  let maxImageSize = DEFAULT_MAX_IMAGE_SIZE;
  const rawMax = json.max_image_size;
  if (rawMax !== undefined && rawMax !== null) {
    if (!isObject(rawMax) || !('longest_edge' in rawMax)) fail('max_image_size', '{"longest_edge": n}', rawMax);
    const m = (rawMax as Record<string, unknown>).longest_edge;
    if (!positiveInt(m)) fail('max_image_size.longest_edge', 'a positive integer', m);
    maxImageSize = m as number;
  }

  const rawResample = json.resample === undefined ? LANCZOS : json.resample;
  if (!Number.isInteger(rawResample) || (rawResample as number) < 0 || (rawResample as number) >= PIL_RESAMPLE_FILTERS.length) {
    fail('resample', `a Pillow filter number 0…${PIL_RESAMPLE_FILTERS.length - 1}`, rawResample);
  }
  const rescaleFactor = json.rescale_factor === undefined ? 1 / 255 : json.rescale_factor;
  if (typeof rescaleFactor !== 'number' || !Number.isFinite(rescaleFactor)) fail('rescale_factor', 'a finite number', rescaleFactor);

  let imageSeqLen = DEFAULT_IMAGE_SEQ_LEN;
  if (processor !== null && processor !== undefined) {
    if (!isObject(processor)) throw new ImageError(`${processorSource}: expected a JSON object, got ${describe(processor)}`);
    const v = processor.image_seq_len;
    if (v !== undefined && v !== null) {
      if (!positiveInt(v)) fail('image_seq_len', 'a positive integer', v, processorSource);
      imageSeqLen = v as number;
    }
  }

  return {
    doResize: flag('do_resize'),
    size,
    doImageSplitting: flag('do_image_splitting'),
    maxImageSize,
    resample: PIL_RESAMPLE_FILTERS[rawResample as number],
    doRescale: flag('do_rescale'),
    rescaleFactor: rescaleFactor as number,
    doNormalize: flag('do_normalize'),
    imageMean: triple('image_mean', false),
    imageStd: triple('image_std', true),
    doPad: flag('do_pad'),
    doConvertRgb: flag('do_convert_rgb'),
    imageSeqLen,
  };
}

/** The `processor_config.json` that sits next to a `preprocessor_config.json` (or in a folder). */
function siblingProcessorFile(source: string): string {
  return path.basename(source) === 'preprocessor_config.json' ? path.join(path.dirname(source), 'processor_config.json') : `${source} (processor_config.json)`;
}

// ---- sizes ------------------------------------------------------------------------------------------

/**
 * The size of the first resize: transformers' `_resize_output_size_rescale_to_max_len` (longest edge to `longest`,
 * the other `trunc(…)` rounded up to even, at least 1) then `_resize_output_size_scale_below_upper_bound` (cap at
 * 4096). The divisions are the same doubles as Python's, so the truncations agree.
 */
function longestEdgeSize(width: number, height: number, longest: number): { width: number; height: number } {
  let w: number, h: number;
  const aspect = width / height;
  if (width >= height) {
    w = longest;
    h = Math.trunc(w / aspect);
    if (h % 2 !== 0) h += 1;
  } else {
    h = longest;
    w = Math.trunc(h * aspect);
    if (w % 2 !== 0) w += 1;
  }
  h = Math.max(h, 1);
  w = Math.max(w, 1);
  const aspect2 = w / h;
  if (w >= h && w > MAX_IMAGE_SIDE) {
    w = MAX_IMAGE_SIDE;
    h = Math.trunc(w / aspect2);
  } else if (h > w && h > MAX_IMAGE_SIDE) {
    h = MAX_IMAGE_SIDE;
    w = Math.trunc(h * aspect2);
  }
  return { width: Math.max(w, 1), height: Math.max(h, 1) };
}

/** transformers' `resize_for_vision_encoder`: both sides up to multiples of `m`, the short one via the aspect ratio. */
function visionEncoderSize(width: number, height: number, m: number): { width: number; height: number } {
  const aspect = width / height;
  let w: number, h: number;
  if (width >= height) {
    w = Math.ceil(width / m) * m;
    h = Math.ceil(Math.trunc(w / aspect) / m) * m;
  } else {
    h = Math.ceil(height / m) * m;
    w = Math.ceil(Math.trunc(h * aspect) / m) * m;
  }
  return { width: w, height: h };
}

/** Rows `y0…y0+h-1`, columns `x0…x0+w-1` of `img` (inside it). */
function crop(img: RgbImage, x0: number, y0: number, w: number, h: number): RgbImage {
  const out = new Uint8Array(w * h * 3);
  for (let y = 0; y < h; y++) {
    const from = ((y0 + y) * img.width + x0) * 3;
    out.set(img.data.subarray(from, from + w * 3), y * w * 3);
  }
  return { width: w, height: h, data: out };
}

// ---- preprocessing ----------------------------------------------------------------------------------

/**
 * The tiles of one RGB image under `cfg`, exactly as transformers' slow Idefics3 image processor computes
 * `pixel_values[0]`, `pixel_attention_mask[0]`, `rows[0][0]` and `cols[0][0]` (see the module doc). A resize
 * to more than `maxPixels` pixels is refused with an {@link ImageError}.
 */
export function idefics3Preprocess(img: RgbImage, cfg: Idefics3ProcessorConfig, maxPixels = DEFAULT_IMAGE_LIMITS.maxPixels): TiledImage {
  checkRgbImage(img, 'idefics3Preprocess');
  const m = cfg.maxImageSize;
  if (!positiveInt(m)) throw new ImageError(`idefics3Preprocess: maxImageSize must be a positive integer, got ${describe(m)}`);
  const resizeTo = (im: RgbImage, width: number, height: number, why: string): RgbImage => {
    if (width * height > maxPixels) {
      throw new ImageError(
        `resizing the ${img.width}×${img.height} image as ${why} gives ${width}×${height}, ` +
          `more than the ${pixels(maxPixels)} allowed (the image limit maxPixels; --max-image-pixels)`,
      );
    }
    return resize(im, width, height, cfg.resample);
  };

  let im = img;
  if (cfg.doResize) {
    const t = 'longestEdge' in cfg.size ? longestEdgeSize(im.width, im.height, cfg.size.longestEdge) : cfg.size;
    im = resizeTo(im, t.width, t.height, 'the processor\'s "size" asks');
  }
  const resized = { height: im.height, width: im.width };

  const frames: RgbImage[] = [];
  let rows = 0,
    cols = 0;
  if (cfg.doImageSplitting) {
    const t = visionEncoderSize(im.width, im.height, m);
    im = resizeTo(im, t.width, t.height, 'image splitting (multiples of max_image_size) asks');
    resized.height = im.height;
    resized.width = im.width;
    if (im.height > m || im.width > m) {
      // Both sides are multiples of m here, so transformers 4.x's ceil-sized crops and 5.x's m-sized ones agree.
      rows = im.height / m;
      cols = im.width / m;
      for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) frames.push(crop(im, c * m, r * m, m, m));
      frames.push(resizeTo(im, m, m, 'the global image (max_image_size) asks'));
    } else {
      frames.push(im);
    }
  } else {
    frames.push(resizeTo(im, m, m, 'max_image_size asks'));
  }

  // Pad to the largest tile (with or without do_pad: without it transformers returns no mask, and the model
  // then takes every pixel as real; its tiles are all the same size then too).
  const padH = frames.reduce((a, f) => Math.max(a, f.height), 0);
  const padW = frames.reduce((a, f) => Math.max(a, f.width), 0);
  if (padH !== padW || (!cfg.doPad && frames.some((f) => f.height !== padH || f.width !== padW))) {
    // Unreachable for one image (every tile is m × m); kept as a guard on the invariant.
    throw new Error(`idefics3Preprocess: tiles of unequal or non-square size (${frames.map((f) => `${f.width}×${f.height}`).join(', ')})`);
  }
  const tiles: Float32Array[] = [];
  const pixelAttentionMask: Uint8Array[] = [];
  for (const f of frames) {
    tiles.push(normalise(f, padH, padW, cfg));
    const mask = new Uint8Array(padH * padW);
    for (let y = 0; y < f.height; y++) mask.fill(1, y * padW, y * padW + f.width);
    pixelAttentionMask.push(mask);
  }
  return { tiles, tileSize: padH, rows, cols, pixelAttentionMask, resized };
}

/** Rescale and normalise one tile into `[3][padH][padW]`, zero at the padding (the arithmetic of `clipPreprocess`). */
function normalise(img: RgbImage, padH: number, padW: number, cfg: Idefics3ProcessorConfig): Float32Array {
  const { width, height, data } = img;
  const plane = padH * padW;
  const out = new Float32Array(3 * plane);
  for (let c = 0; c < 3; c++) {
    const mean = Math.fround(cfg.imageMean[c]);
    const std = Math.fround(cfg.imageStd[c]);
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        let v = data[3 * (y * width + x) + c];
        if (cfg.doRescale) v = Math.fround(v * cfg.rescaleFactor);
        // float32 operands: the double result of each step rounds to the float32 result.
        if (cfg.doNormalize) v = Math.fround(Math.fround(v - mean) / std);
        out[c * plane + y * padW + x] = v;
      }
    }
  }
  return out;
}

// ---- prompt -----------------------------------------------------------------------------------------

/** The special tokens of the Idefics3 prompt layout. */
export interface Idefics3ImageTokens {
  image: string;
  fake: string;
  global: string;
}

const DEFAULT_TOKENS: Readonly<Idefics3ImageTokens> = Object.freeze({
  image: '<image>',
  fake: '<fake_token_around_image>',
  global: '<global-img>',
});

/**
 * The text the Idefics3 processor puts in place of one `<image>` placeholder (transformers'
 * `get_image_prompt_string`). Split (rows, cols > 0): per tile `<fake><row_r_col_c>` and its image tokens, a
 * `\n` after each row of tiles, then `\n<fake><global-img>`, the global image's tokens and `<fake>`. Not split
 * (rows = cols = 0): `<fake><global-img>`, the tokens, `<fake>`.
 *
 * `tokensPerTile` is the image-token count of every tile (`image_seq_len`), or one count per tile in tile order
 * (length rows·cols + 1, the global image last), for a caller that keeps fewer tokens of some tiles.
 */
export function idefics3ImageString(
  rows: number,
  cols: number,
  tokensPerTile: number | readonly number[],
  tokens: Idefics3ImageTokens = DEFAULT_TOKENS,
): string {
  if (!Number.isInteger(rows) || !Number.isInteger(cols) || rows < 0 || cols < 0 || (rows === 0) !== (cols === 0)) {
    throw new RangeError(`idefics3ImageString: rows and cols must be both 0 or both positive integers, got ${rows}, ${cols}`);
  }
  const n = rows * cols + 1;
  const counts = typeof tokensPerTile === 'number' ? new Array<number>(n).fill(tokensPerTile) : tokensPerTile;
  if (counts.length !== n) {
    throw new RangeError(`idefics3ImageString: ${rows}×${cols} tiles need ${n} token counts (the global image last), got ${counts.length}`);
  }
  for (const k of counts) {
    if (!Number.isInteger(k) || k < 0) throw new RangeError(`idefics3ImageString: token counts must be non-negative integers, got ${k}`);
  }
  const { image, fake, global } = tokens;
  let s = '';
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) s += `${fake}<row_${r + 1}_col_${c + 1}>${image.repeat(counts[r * cols + c])}`;
    s += '\n';
  }
  if (rows > 0) s += '\n';
  return `${s}${fake}${global}${image.repeat(counts[n - 1])}${fake}`;
}

// ---- connector --------------------------------------------------------------------------------------

function checkShuffle(grid: number, scale: number): void {
  if (!positiveInt(grid) || !positiveInt(scale) || grid % scale !== 0) {
    throw new RangeError(`pixel shuffle: the patch grid (${grid}) must be a positive multiple of the scale factor (${scale})`);
  }
}

/**
 * The Idefics3 connector's pixel shuffle of one tile: `x` is `[grid·grid][dim]` (patches row-major), the result
 * `[(grid/scale)²][scale·scale·dim]`. Output token `t = I·(grid/scale) + J` concatenates the `scale × scale`
 * block of patches at block row I, column J, row by row inside the block:
 * `out[t][(di·scale + dj)·dim + d] = x[(I·scale + di)·grid + J·scale + dj][d]`. A permutation of `x`.
 */
export function pixelShuffle(x: Float32Array, grid: number, dim: number, scale: number): Float32Array {
  checkShuffle(grid, scale);
  if (!positiveInt(dim)) throw new RangeError(`pixelShuffle: dim must be a positive integer, got ${dim}`);
  if (x.length !== grid * grid * dim) {
    throw new RangeError(`pixelShuffle: a ${grid}×${grid} grid of ${dim}-vectors has ${grid * grid * dim} values, got ${x.length}`);
  }
  const out = new Float32Array(x.length);
  let o = 0;
  for (const sources of pixelShuffleSources(grid, scale)) {
    for (const p of sources) {
      out.set(x.subarray(p * dim, (p + 1) * dim), o);
      o += dim;
    }
  }
  return out;
}

/**
 * For each output token of {@link pixelShuffle}, the patch indices (row-major in the `grid × grid` tile) it
 * concatenates, in the order of its channel blocks.
 */
export function pixelShuffleSources(grid: number, scale: number): number[][] {
  checkShuffle(grid, scale);
  const g = grid / scale;
  const out: number[][] = [];
  for (let I = 0; I < g; I++) {
    for (let J = 0; J < g; J++) {
      const sources: number[] = [];
      for (let di = 0; di < scale; di++) for (let dj = 0; dj < scale; dj++) sources.push((I * scale + di) * grid + J * scale + dj);
      out.push(sources);
    }
  }
  return out;
}

// ---- helpers ----------------------------------------------------------------------------------------

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function positiveInt(v: unknown): v is number {
  return Number.isInteger(v) && (v as number) > 0;
}

/** A config value for a message: its JSON, shortened. */
function describe(v: unknown): string {
  if (v === undefined) return 'nothing';
  const s = JSON.stringify(v) ?? String(v);
  return s.length > 80 ? `${s.slice(0, 77)}...` : s;
}
