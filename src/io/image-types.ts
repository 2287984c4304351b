/** Types shared by the image modules (see `image.ts`, which re-exports them). */

/** An 8-bit RGB image: `data` holds 3 bytes per pixel (R, G, B), rows top to bottom, pixels left to right. */
export interface RgbImage {
  width: number;
  height: number;
  data: Uint8Array;
}

/** An unreadable or invalid image, an invalid image-processor config, or a bad argument to an image function. */
export class ImageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ImageError';
  }
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
