/**
 * Bit-exact re-implementation of Pillow's `Image.resize` for 8-bit RGB images (Pillow ≥ 7, `box` and
 * `reducing_gap` unset, as transformers calls it).
 *
 * - Same size: a copy.
 * - `nearest`: Pillow's affine nearest-neighbour scaling (`ImagingScaleAffine`): output pixel `x` reads input
 *   column `trunc(sx/2 + x·sx)` with `sx = inW / outW`, the position accumulated by repeated addition.
 * - Other filters: Pillow's separable convolution (`libImaging/Resample.c`). Per axis, the filter support is
 *   widened by the downscale factor; each output sample's weights are computed in double, normalised to sum
 *   1, and rounded to fixed point with 22 fractional bits. Sums start at ½ (in fixed point) and are floored
 *   and clamped to 0…255. The horizontal pass runs first, except for images over 100 times taller than wide
 *   (Pillow ≥ 12.2); each pass is skipped when its axis keeps its size.
 */
import { checkRgbImage, ImageError, type RgbImage } from './image-types.js';

/** Pillow's resampling filters. */
export type ResampleFilter = 'nearest' | 'bilinear' | 'bicubic' | 'lanczos' | 'box' | 'hamming';

/** Filter names indexed by Pillow's `Image.Resampling` number (0 NEAREST, 1 LANCZOS, 2 BILINEAR, 3 BICUBIC, 4 BOX, 5 HAMMING). */
export const PIL_RESAMPLE_FILTERS: readonly ResampleFilter[] = Object.freeze(['nearest', 'lanczos', 'bilinear', 'bicubic', 'box', 'hamming'] as const);

/** A convolution kernel: weight function and its support (half-width) at scale 1. */
interface Kernel {
  weight: (x: number) => number;
  support: number;
}

const sinc = (x: number): number => {
  if (x === 0) return 1;
  const t = x * Math.PI;
  return Math.sin(t) / t;
};

// The weight functions of Resample.c, with the same operation order (the weights feed a rounding step).
const KERNELS: Readonly<Record<Exclude<ResampleFilter, 'nearest'>, Kernel>> = {
  box: { support: 0.5, weight: (x) => (x > -0.5 && x <= 0.5 ? 1 : 0) },
  bilinear: {
    support: 1,
    weight: (x) => {
      const t = Math.abs(x);
      return t < 1 ? 1 - t : 0;
    },
  },
  hamming: {
    support: 1,
    weight: (x) => {
      let t = Math.abs(x);
      if (t === 0) return 1;
      if (t >= 1) return 0;
      t = t * Math.PI;
      return (Math.sin(t) / t) * (0.54 + 0.46 * Math.cos(t));
    },
  },
  bicubic: {
    // Keys cubic with a = -0.5.
    support: 2,
    weight: (x) => {
      const a = -0.5;
      const t = Math.abs(x);
      if (t < 1) return ((a + 2) * t - (a + 3)) * t * t + 1;
      if (t < 2) return (((t - 5) * t + 8) * t - 4) * a;
      return 0;
    },
  },
  lanczos: { support: 3, weight: (x) => (x >= -3 && x < 3 ? sinc(x) * sinc(x / 3) : 0) },
};

/** Fractional bits of the fixed-point weights (Pillow's PRECISION_BITS = 32 - 8 - 2). */
const PRECISION_BITS = 22;
const ONE = 1 << PRECISION_BITS;
const HALF = 1 << (PRECISION_BITS - 1);

/** Fixed-point weights of one axis: output sample `i` is Σ_j weights[i·ksize + j] · in[start[i] + j], j < count[i]. */
interface AxisWeights {
  ksize: number;
  start: Int32Array;
  count: Int32Array;
  weights: Int32Array;
}

/** Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for resampling `inSize` samples to `outSize`. */
function axisWeights(inSize: number, outSize: number, kernel: Kernel): AxisWeights {
  const scale = inSize / outSize;
  const filterScale = Math.max(scale, 1);
  const support = kernel.support * filterScale;
  const invFilterScale = 1 / filterScale;
  const ksize = Math.ceil(support) * 2 + 1;
  const start = new Int32Array(outSize);
  const count = new Int32Array(outSize);
  const weights = new Int32Array(outSize * ksize);
  const w = new Float64Array(ksize);
  for (let i = 0; i < outSize; i++) {
    const center = (i + 0.5) * scale;
    const lo = Math.max(Math.trunc(center - support + 0.5), 0);
    const n = Math.min(Math.trunc(center + support + 0.5), inSize) - lo;
    let sum = 0;
    for (let j = 0; j < n; j++) {
      w[j] = kernel.weight((j + lo - center + 0.5) * invFilterScale);
      sum += w[j];
    }
    for (let j = 0; j < n; j++) {
      const k = sum !== 0 ? w[j] / sum : w[j];
      weights[i * ksize + j] = k < 0 ? Math.trunc(-0.5 + k * ONE) : Math.trunc(0.5 + k * ONE);
    }
    start[i] = lo;
    count[i] = n;
  }
  return { ksize, start, count, weights };
}

/** A fixed-point sum back to a byte: floor by the fraction bits, clamped to 0…255 (Pillow's `clip8`). */
function clip8(acc: number): number {
  const v = acc >> PRECISION_BITS;
  return v < 0 ? 0 : v > 255 ? 255 : v;
}

/** Horizontal pass over input rows `y0 … y0 + rows - 1` of a `inW`-wide image into a `outW × rows` image. */
function resampleRows(src: Uint8Array, inW: number, y0: number, rows: number, outW: number, ax: AxisWeights): Uint8Array {
  const out = new Uint8Array(outW * rows * 3);
  const { ksize, start, count, weights } = ax;
  for (let y = 0; y < rows; y++) {
    const rowBase = (y0 + y) * inW * 3;
    let o = y * outW * 3;
    for (let x = 0; x < outW; x++) {
      let r = HALF,
        g = HALF,
        b = HALF;
      let p = rowBase + start[x] * 3;
      const k0 = x * ksize;
      for (let j = 0, n = count[x]; j < n; j++, p += 3) {
        const k = weights[k0 + j];
        r += src[p] * k;
        g += src[p + 1] * k;
        b += src[p + 2] * k;
      }
      out[o++] = clip8(r);
      out[o++] = clip8(g);
      out[o++] = clip8(b);
    }
  }
  return out;
}

/** Vertical pass: a `w`-wide image to `outH` rows; `rowOffset` is subtracted from the weights' start rows. */
function resampleColumns(src: Uint8Array, w: number, outH: number, ax: AxisWeights, rowOffset: number): Uint8Array {
  const stride = w * 3;
  const out = new Uint8Array(stride * outH);
  const { ksize, start, count, weights } = ax;
  for (let y = 0; y < outH; y++) {
    const k0 = y * ksize;
    const n = count[y];
    const first = (start[y] - rowOffset) * stride;
    const o = y * stride;
    for (let i = 0; i < stride; i++) {
      let acc = HALF;
      for (let j = 0, p = first + i; j < n; j++, p += stride) acc += src[p] * weights[k0 + j];
      out[o + i] = clip8(acc);
    }
  }
  return out;
}

/** Pillow's nearest-neighbour scaling (`ImagingScaleAffine`; source positions outside the image read black). */
function resizeNearest(img: RgbImage, outW: number, outH: number): Uint8Array {
  const { width: inW, height: inH, data } = img;
  const out = new Uint8Array(outW * outH * 3);
  const colOf = new Int32Array(outW);
  const sx = inW / outW;
  let xo = sx * 0.5;
  for (let x = 0; x < outW; x++, xo += sx) colOf[x] = xo < 0 ? -1 : Math.trunc(xo);
  const sy = inH / outH;
  let yo = sy * 0.5;
  for (let y = 0; y < outH; y++, yo += sy) {
    const yi = yo < 0 ? -1 : Math.trunc(yo);
    if (yi < 0 || yi >= inH) continue;
    const rowBase = yi * inW * 3;
    for (let x = 0; x < outW; x++) {
      const xi = colOf[x];
      if (xi < 0 || xi >= inW) continue;
      const p = rowBase + xi * 3;
      const o = (y * outW + x) * 3;
      out[o] = data[p];
      out[o + 1] = data[p + 1];
      out[o + 2] = data[p + 2];
    }
  }
  return out;
}

/**
 * Pillow's `ImagingResampleInner`: the horizontal pass (over only the input rows the vertical pass reads)
 * into an 8-bit intermediate image, then the vertical pass; each pass is skipped when its axis keeps its size.
 */
function resampleSeparable(img: RgbImage, width: number, height: number, kernel: Kernel): RgbImage {
  let data = img.data;
  if (width !== img.width) {
    const vert = axisWeights(img.height, height, kernel);
    const y0 = height !== img.height ? vert.start[0] : 0;
    const y1 = height !== img.height ? vert.start[height - 1] + vert.count[height - 1] : img.height;
    data = resampleRows(data, img.width, y0, y1 - y0, width, axisWeights(img.width, width, kernel));
    if (height !== img.height) data = resampleColumns(data, width, height, vert, y0);
  } else if (height !== img.height) {
    data = resampleColumns(data, width, height, axisWeights(img.height, height, kernel), 0);
  }
  return { width, height, data };
}

/** Resizes `img` to `width × height` exactly as Pillow's `Image.resize(size, filter)` does for an RGB image. */
export function resize(img: RgbImage, width: number, height: number, filter: ResampleFilter): RgbImage {
  checkRgbImage(img, 'resize');
  if (!Number.isInteger(width) || !Number.isInteger(height) || width < 1 || height < 1) {
    throw new ImageError(`resize: target size must be positive integers, found ${width}×${height}`);
  }
  if (filter !== 'nearest' && !Object.hasOwn(KERNELS, filter)) {
    throw new ImageError(`resize: unknown filter ${JSON.stringify(filter)}`);
  }
  if (width === img.width && height === img.height) return { width, height, data: img.data.slice() };
  if (filter === 'nearest') return { width, height, data: resizeNearest(img, width, height) };
  const kernel = KERNELS[filter];
  // Pillow ≥ 12.2: an image over 100 times taller than wide whose height shrinks is resized in two calls,
  // height first.
  if (img.height > img.width * 100 && height < img.height) {
    return resampleSeparable(resampleSeparable(img, img.width, height, kernel), width, height, kernel);
  }
  return resampleSeparable(img, width, height, kernel);
}
