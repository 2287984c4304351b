/**
 * transformers' slow (Pillow-based) `CLIPImageProcessor` and `SiglipImageProcessor`: parsing of
 * `preprocessor_config.json`, and the `pixel_values` of one image.
 *
 * The pipeline, in transformers' order and arithmetic:
 * 1. resize with Pillow ({@link resize}): CLIP's `{shortest_edge: s}` makes the short side `s` and the long side
 *    `trunc(s · long / short)`; `{height, width}` (SigLIP's only form) ignores the aspect ratio;
 * 2. centre crop (CLIP only) at offset `floor((size - crop) / 2)` per axis, zero-padding a smaller image;
 * 3. rescale: `float32(float64(x) · rescale_factor)`;
 * 4. normalise in float32: `(x - mean) / std` with mean and std rounded to float32;
 * 5. channel-first layout `[3][H][W]`.
 */
import * as path from 'node:path';
import { isFolder, readJsonFile } from '../base/files.js';
import { checkRgbImage, DEFAULT_IMAGE_LIMITS, ImageError, pixels, type RgbImage } from './image-types.js';
import { PIL_RESAMPLE_FILTERS, resize, type ResampleFilter } from './image-resample.js';

/** The settings of a CLIP or SigLIP image processor, with transformers' defaults filled in. */
export interface ClipImageProcessorConfig {
  /** The transformers class the settings are for (a `…Fast` variant maps to its slow class). */
  processor: 'CLIPImageProcessor' | 'SiglipImageProcessor';
  doResize: boolean;
  /** Resize target: the short side (aspect ratio kept), or an exact size. */
  size: { shortestEdge: number } | { height: number; width: number };
  /** Pillow filter, from the `resample` enum number. */
  resample: ResampleFilter;
  /** Always false for SigLIP. */
  doCenterCrop: boolean;
  cropSize: { height: number; width: number };
  doRescale: boolean;
  rescaleFactor: number;
  doNormalize: boolean;
  imageMean: [number, number, number];
  imageStd: [number, number, number];
  /** Informational: `decodeImage` always produces RGB, which is what this setting asks for. */
  doConvertRgb: boolean;
}

/** One preprocessed image: `data[c·height·width + y·width + x]`, like `pixel_values[0]`. */
export interface PixelValues {
  data: Float32Array;
  width: number;
  height: number;
}

const OPENAI_CLIP_MEAN: [number, number, number] = [0.48145466, 0.4578275, 0.40821073];
const OPENAI_CLIP_STD: [number, number, number] = [0.26862954, 0.26130258, 0.27577711];
const IMAGENET_STANDARD: [number, number, number] = [0.5, 0.5, 0.5];

const PROCESSOR_TYPES: Readonly<Record<string, ClipImageProcessorConfig['processor']>> = {
  CLIPImageProcessor: 'CLIPImageProcessor',
  CLIPImageProcessorFast: 'CLIPImageProcessor',
  CLIPFeatureExtractor: 'CLIPImageProcessor',
  SiglipImageProcessor: 'SiglipImageProcessor',
  SiglipImageProcessorFast: 'SiglipImageProcessor',
};

/** Reads `preprocessor_config.json` from a model folder, or the given JSON file. */
export function loadClipImageProcessorConfig(fileOrDir: string): ClipImageProcessorConfig {
  const file = isFolder(fileOrDir) ? path.join(fileOrDir, 'preprocessor_config.json') : fileOrDir;
  return parseClipImageProcessorConfig(readJsonFile(file, { what: 'image processor config', error: ImageError }), file);
}

/**
 * Validates a parsed `preprocessor_config.json` (`source` names it in errors). Absent fields, and `null`
 * sizes, means and stds, take the defaults of the processor class (`image_processor_type`, or
 * `feature_extractor_type`; CLIP when neither is given; a `…Fast` class reads as its slow one, other classes
 * are rejected). A `null` flag is false, as in Python.
 */
export function parseClipImageProcessorConfig(json: unknown, source: string): ClipImageProcessorConfig {
  if (!isObject(json)) throw new ImageError(`${source}: expected a JSON object`);
  const fail = (field: string, expected: string): never => {
    throw new ImageError(`${source}: field "${field}": expected ${expected}, found ${JSON.stringify(json[field])}`);
  };

  const typeField = json.image_processor_type !== undefined ? 'image_processor_type' : 'feature_extractor_type';
  const typeName = json[typeField] ?? 'CLIPImageProcessor';
  if (typeof typeName !== 'string' || !Object.hasOwn(PROCESSOR_TYPES, typeName)) {
    fail(typeField, `one of ${Object.keys(PROCESSOR_TYPES).join(', ')}`);
  }
  const processor = PROCESSOR_TYPES[typeName as string];
  const siglip = processor === 'SiglipImageProcessor';

  const flag = (field: string, dflt: boolean): boolean => {
    const v = json[field];
    if (v === undefined) return dflt;
    if (v === null) return false;
    return typeof v === 'boolean' ? v : fail(field, 'a boolean');
  };
  const positiveInt = (v: unknown): v is number => Number.isInteger(v) && (v as number) > 0;
  const triple = (field: string, dflt: [number, number, number], nonZero: boolean): [number, number, number] => {
    const v = json[field];
    if (v === undefined || v === null) return [...dflt];
    const ok = (x: unknown): x is number => typeof x === 'number' && Number.isFinite(x) && (!nonZero || x !== 0);
    if (ok(v)) return [v, v, v];
    if (Array.isArray(v) && v.length === 3 && v.every(ok)) return [v[0], v[1], v[2]];
    return fail(field, `a${nonZero ? ' non-zero' : ''} number or a list of 3${nonZero ? ' non-zero' : ''} numbers`);
  };

  // size: [height, width] or {height, width}; CLIP also takes an int (the short side) or
  // {shortest_edge[, longest_edge]} (its resize ignores longest_edge).
  let size: ClipImageProcessorConfig['size'];
  const rawSize = json.size;
  const sizeForms = siglip
    ? '[height, width] or {"height", "width"} of positive integers'
    : 'a positive integer, [height, width], {"shortest_edge"} or {"height", "width"} of positive integers';
  if (rawSize === undefined || rawSize === null) {
    size = siglip ? { height: 224, width: 224 } : { shortestEdge: 224 };
  } else if (!siglip && positiveInt(rawSize)) {
    size = { shortestEdge: rawSize };
  } else if (Array.isArray(rawSize) && rawSize.length === 2 && rawSize.every(positiveInt)) {
    size = { height: rawSize[0], width: rawSize[1] };
  } else if (isObject(rawSize)) {
    const keys = Object.keys(rawSize).sort().join(',');
    if (keys === 'height,width' && positiveInt(rawSize.height) && positiveInt(rawSize.width)) {
      size = { height: rawSize.height, width: rawSize.width };
    } else if (
      !siglip &&
      (keys === 'shortest_edge' || (keys === 'longest_edge,shortest_edge' && positiveInt(rawSize.longest_edge))) &&
      positiveInt(rawSize.shortest_edge)
    ) {
      size = { shortestEdge: rawSize.shortest_edge };
    } else {
      return fail('size', sizeForms);
    }
  } else {
    return fail('size', sizeForms);
  }
  if (!siglip && json.use_square_size === true && 'shortestEdge' in size) {
    size = { height: size.shortestEdge, width: size.shortestEdge };
  }

  // crop_size (CLIP only; SigLIP ignores it): an int (square), [height, width] or {height, width}.
  let cropSize = { height: 224, width: 224 };
  const rawCrop = json.crop_size;
  if (!siglip && rawCrop !== undefined && rawCrop !== null) {
    if (positiveInt(rawCrop)) cropSize = { height: rawCrop, width: rawCrop };
    else if (Array.isArray(rawCrop) && rawCrop.length === 2 && rawCrop.every(positiveInt)) {
      cropSize = { height: rawCrop[0], width: rawCrop[1] };
    } else if (isObject(rawCrop) && Object.keys(rawCrop).sort().join(',') === 'height,width' && positiveInt(rawCrop.height) && positiveInt(rawCrop.width)) {
      cropSize = { height: rawCrop.height, width: rawCrop.width };
    } else {
      fail('crop_size', 'a positive integer, [height, width] or {"height", "width"} of positive integers');
    }
  }

  const rawResample = json.resample === undefined ? 3 : json.resample;
  if (!Number.isInteger(rawResample) || (rawResample as number) < 0 || (rawResample as number) >= PIL_RESAMPLE_FILTERS.length) {
    fail('resample', 'a Pillow filter number 0…5');
  }
  const rescaleFactor = json.rescale_factor === undefined ? 1 / 255 : json.rescale_factor;
  if (typeof rescaleFactor !== 'number' || !Number.isFinite(rescaleFactor)) fail('rescale_factor', 'a finite number');

  return {
    processor,
    doResize: flag('do_resize', true),
    size,
    resample: PIL_RESAMPLE_FILTERS[rawResample as number],
    doCenterCrop: siglip ? false : flag('do_center_crop', true),
    cropSize,
    doRescale: flag('do_rescale', true),
    rescaleFactor: rescaleFactor as number,
    doNormalize: flag('do_normalize', true),
    imageMean: triple('image_mean', siglip ? IMAGENET_STANDARD : OPENAI_CLIP_MEAN, false),
    imageStd: triple('image_std', siglip ? IMAGENET_STANDARD : OPENAI_CLIP_STD, true),
    doConvertRgb: flag('do_convert_rgb', !siglip),
  };
}

/** transformers' `get_resize_output_image_size` for `{shortest_edge}`, or the exact size. */
function resizeTarget(img: RgbImage, size: ClipImageProcessorConfig['size']): { width: number; height: number } {
  if (!('shortestEdge' in size)) return size;
  const s = size.shortestEdge;
  const { width, height } = img;
  // Python's int(s * long / short): s * long is an exact integer, the division is a correctly rounded double.
  return width <= height ? { width: s, height: Math.trunc((s * height) / width) } : { width: Math.trunc((s * width) / height), height: s };
}

/**
 * transformers' `center_crop` to `ch × cw`: the window starts at `floor((size - crop) / 2)` on each axis, and
 * parts of it outside the image are black (zero) padding.
 */
function centerCrop(img: RgbImage, ch: number, cw: number): RgbImage {
  const { width, height, data } = img;
  const top = Math.floor((height - ch) / 2);
  const left = Math.floor((width - cw) / 2);
  const out = new Uint8Array(ch * cw * 3);
  const x0 = Math.max(0, -left);
  const x1 = Math.min(cw, width - left);
  for (let y = 0; y < ch; y++) {
    const sy = y + top;
    if (sy < 0 || sy >= height || x1 <= x0) continue;
    const from = (sy * width + left + x0) * 3;
    out.set(data.subarray(from, from + (x1 - x0) * 3), (y * cw + x0) * 3);
  }
  return { width: cw, height: ch, data: out };
}

/** The `pixel_values` of one RGB image under `cfg`, exactly as transformers' slow image processor computes them. */
export function clipPreprocess(img: RgbImage, cfg: ClipImageProcessorConfig, maxPixels = DEFAULT_IMAGE_LIMITS.maxPixels): PixelValues {
  checkRgbImage(img, 'clipPreprocess');
  let im = img;
  if (cfg.doResize) {
    const { width, height } = resizeTarget(im, cfg.size);
    if (width * height > maxPixels) {
      throw new ImageError(
        `resizing the ${img.width}×${img.height} image as the processor's "size" asks gives ${width}×${height}, ` +
          `more than the ${pixels(maxPixels)} allowed (the image limit maxPixels; --max-image-pixels)`,
      );
    }
    im = resize(im, width, height, cfg.resample);
  }
  if (cfg.doCenterCrop) im = centerCrop(im, cfg.cropSize.height, cfg.cropSize.width);

  const { width, height, data } = im;
  const plane = width * height;
  const out = new Float32Array(3 * plane);
  for (let c = 0; c < 3; c++) {
    const mean = Math.fround(cfg.imageMean[c]);
    const std = Math.fround(cfg.imageStd[c]);
    for (let i = 0; i < plane; i++) {
      let v = data[3 * i + c];
      if (cfg.doRescale) v = Math.fround(v * cfg.rescaleFactor);
      // float32 operands: the double result of each step rounds to the float32 result.
      if (cfg.doNormalize) v = Math.fround(Math.fround(v - mean) / std);
      out[c * plane + i] = v;
    }
  }
  return { data: out, width, height };
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/**
 * Normalised pixel values [3][height][width] back to RGB bytes (undoing normalise and rescale),
 * for pictures of what a vision tower saw.
 */
export function pixelsToRgb(
  pixels: Float32Array,
  width: number,
  height: number,
  cfg: Pick<ClipImageProcessorConfig, 'doRescale' | 'rescaleFactor' | 'doNormalize' | 'imageMean' | 'imageStd'>,
): RgbImage {
  const plane = width * height;
  if (pixels.length !== 3 * plane) throw new ImageError(`expected 3x${height}x${width} pixel values, got ${pixels.length}`);
  const data = new Uint8Array(3 * plane);
  for (let i = 0; i < plane; i++) {
    for (let c = 0; c < 3; c++) {
      let v = pixels[c * plane + i];
      if (cfg.doNormalize) v = v * cfg.imageStd[c] + cfg.imageMean[c];
      if (cfg.doRescale) v = v / cfg.rescaleFactor;
      data[i * 3 + c] = Math.round(Math.max(0, Math.min(255, v)));
    }
  }
  return { width, height, data };
}
