/** Types shared by the image modules (see `image.ts`, which re-exports them). */
import { InputError } from '../base/errors.js';

/** An 8-bit RGB image: `data` holds 3 bytes per pixel (R, G, B), rows top to bottom, pixels left to right. */
export interface RgbImage {
  width: number;
  height: number;
  data: Uint8Array;
}

/** An unreadable or invalid image, an invalid image-processor config, or a bad argument to an image function. */
export class ImageError extends InputError {}

/**
 * Bounds on an image, checked before it is decoded: the encoded bytes, and the pixels its header
 * declares (a small file can declare a huge image). Also the size a preprocessor may resize to.
 */
export interface ImageLimits {
  /** Bytes of the encoded image (default 128 MiB). */
  maxBytes: number;
  /** Width × height (default 2^26 = 67 megapixels, e.g. 8192 × 8192). */
  maxPixels: number;
}

export const DEFAULT_IMAGE_LIMITS: Readonly<ImageLimits> = Object.freeze({ maxBytes: 128 * 2 ** 20, maxPixels: 2 ** 26 });

/** A pixel count for a message: megapixels when large. */
export function pixels(n: number): string {
  return n >= 1e6 ? `${(n / 1e6).toFixed(1)} megapixels` : `${n} pixels`;
}

/** Checks user-given limits (positive integers). */
export function checkImageLimits(l: Partial<ImageLimits> | undefined): ImageLimits {
  const out = { ...DEFAULT_IMAGE_LIMITS, ...l };
  for (const k of ['maxBytes', 'maxPixels'] as const) {
    if (!Number.isSafeInteger(out[k]) || out[k] < 1) throw new ImageError(`image limit ${k} must be a positive integer, got ${String(out[k])}`);
  }
  return out;
}

/** Throws unless `img` is a non-empty RGB image whose buffer has exactly `width · height · 3` bytes. */
export function checkRgbImage(img: RgbImage, what: string): void {
  const { width, height, data } = img;
  if (!Number.isInteger(width) || !Number.isInteger(height) || width < 1 || height < 1) {
    throw new ImageError(`${what}: image size must be positive integers, found ${width}×${height}`);
  }
  if (data.length !== width * height * 3) {
    throw new ImageError(`${what}: a ${width}×${height} RGB image needs ${width * height * 3} bytes, found ${data.length}`);
  }
}
