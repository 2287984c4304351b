/**
 * Image input for vision-language models: decoding, Pillow-exact resizing, and transformers' CLIP/SigLIP
 * preprocessing (`pixel_values`).
 *
 * {@link decodeImage} decodes with sharp and converts to RGB the way Pillow's `Image.open(f).convert('RGB')`
 * does, which is what transformers' `convert_to_rgb` calls:
 *
 * - greyscale is replicated to R, G and B; palette images are looked up; alpha is dropped, never composited
 *   onto a background;
 * - EXIF orientation is ignored (Pillow does not auto-rotate), and so are embedded ICC profiles;
 * - CMYK uses Pillow's naive formula `c' = (255 - k) - (c · (255 - k)) / 255` (rounded as Pillow does), not a
 *   colour-managed conversion;
 * - 16-bit greyscale (Pillow mode `I;16`) is clipped to 255, as Pillow does, rather than scaled; other
 *   16-bit images keep the high byte, which is also what Pillow does;
 * - only the first frame of an animated or multi-page image is read.
 *
 * Known differences from Pillow: transparent pixels of a GIF decode to sharp's colour (Pillow keeps the
 * palette colour of the transparent index); JPEG decoding uses sharp's libjpeg (mozjpeg), which agrees with
 * Pillow's libjpeg-turbo on the images tested but is not guaranteed to be bit-identical; BMP and ICO are not
 * supported by sharp, while SVG, HEIF/AVIF and a few others that Pillow lacks are.
 *
 * Every problem is an {@link ImageError} naming the file (or the given name, or `<buffer>`) and the reason.
 */
import sharp, { type Sharp, type SharpOptions } from 'sharp';
import { readRegularFileAsync } from '../base/files.js';
import { ImageError, checkImageLimits, pixels, type ImageLimits, type RgbImage } from './image-types.js';

export { ImageError, DEFAULT_IMAGE_LIMITS, checkImageLimits, type ImageLimits, type RgbImage } from './image-types.js';
export { resize, PIL_RESAMPLE_FILTERS, type ResampleFilter } from './image-resample.js';
export {
  clipPreprocess,
  loadClipImageProcessorConfig,
  parseClipImageProcessorConfig,
  pixelsToRgb,
  type ClipImageProcessorConfig,
  type PixelValues,
} from './image-processor.js';

/**
 * sharp input options: no auto-rotation, no ICC transform, first frame only, and fail on corrupt or
 * truncated data but not on mere decoder warnings (Pillow tolerates those too).
 */
const SHARP_INPUT: SharpOptions = { autoOrient: false, ignoreIcc: true, failOn: 'error', pages: 1 };

/**
 * Decodes an image file (a path) or encoded bytes (PNG, JPEG, WebP, GIF, TIFF, …) into 8-bit RGB, converted
 * as Pillow's `convert('RGB')` does (see the module notes). `name` labels the input in error messages.
 * Only regular files are read; files over `limits.maxBytes` and images over `limits.maxPixels` are
 * refused before decoding.
 */
export async function decodeImage(input: string | Uint8Array, name?: string, limits: Partial<ImageLimits> = {}): Promise<RgbImage> {
  const label = name ?? (typeof input === 'string' ? input : '<buffer>');
  const lim = checkImageLimits(limits);
  let bytes: Uint8Array;
  if (typeof input === 'string') {
    try {
      bytes = await readRegularFileAsync(input, lim.maxBytes, 'image', 'the image limit maxBytes; --max-image-bytes', ImageError);
    } catch (e) {
      throw new ImageError(`${label}: ${(e as Error).message.replace(`${input}: `, '')}`);
    }
  } else {
    bytes = input;
    if (bytes.length > lim.maxBytes)
      throw new ImageError(
        `${label}: the image has ${bytes.length} bytes, more than the ${lim.maxBytes} allowed (the image limit maxBytes; --max-image-bytes)`,
      );
  }
  if (bytes.length === 0) throw new ImageError(`${label}: cannot decode an image from empty input`);

  let img: RgbImage;
  try {
    const meta = await sharp(bytes, { ...SHARP_INPUT, limitInputPixels: false }).metadata();
    const w = meta.width ?? 0,
      h = meta.height ?? 0;
    if (w * h > lim.maxPixels) {
      throw new ImageError(
        `the image is ${w}×${h} = ${pixels(w * h)}, more than the ${pixels(lim.maxPixels)} allowed (the image limit maxPixels; --max-image-pixels)`,
      );
    }
    if (meta.space === 'cmyk') img = await decodeCmyk(bytes);
    else if (meta.depth === 'ushort' && meta.channels === 1) img = await decodeGrey16(bytes);
    else img = await decodeDefault(bytes);
  } catch (e) {
    if (e instanceof ImageError) throw new ImageError(`${label}: ${e.message}`);
    throw new ImageError(`${label}: cannot decode the image: ${oneLine((e as Error).message)}`);
  }
  if (img.width < 1 || img.height < 1) throw new ImageError(`${label}: the image has no pixels (${img.width}×${img.height})`);
  return img;
}

/** libvips' multi-line, often repetitive messages as one line of distinct parts. */
function oneLine(message: string): string {
  return [
    ...new Set(
      message
        .split('\n')
        .map((l) => l.trim())
        .filter((l) => l !== ''),
    ),
  ].join('; ');
}

/** Pixels as a sharp pipeline outputs them: interleaved, `channels` samples per pixel. */
interface RawPixels {
  data: Uint8Array;
  width: number;
  height: number;
  channels: number;
}

/** Runs `pipeline` to raw pixels of the given sample type (ushort samples are native-endian byte pairs). */
async function raw(pipeline: Sharp, depth: 'uchar' | 'ushort' = 'uchar'): Promise<RawPixels> {
  const { data, info } = await pipeline.raw({ depth }).toBuffer({ resolveWithObject: true });
  return { data, width: info.width, height: info.height, channels: info.channels };
}

/** sharp's 8-bit output (1–4 channels: grey, grey+alpha, RGB, RGBA) to RGB, replicating grey and dropping alpha. */
async function decodeDefault(bytes: Uint8Array): Promise<RgbImage> {
  const { data, width, height, channels } = await raw(sharp(bytes, SHARP_INPUT));
  const n = width * height;
  const out = new Uint8Array(n * 3);
  if (channels === 3) {
    out.set(data.subarray(0, n * 3));
  } else if (channels === 4) {
    for (let i = 0; i < n; i++) {
      out[3 * i] = data[4 * i];
      out[3 * i + 1] = data[4 * i + 1];
      out[3 * i + 2] = data[4 * i + 2];
    }
  } else if (channels === 1 || channels === 2) {
    for (let i = 0; i < n; i++) out.fill(data[channels * i], 3 * i, 3 * i + 3);
  } else {
    throw new ImageError(`unsupported image with ${channels} channels`);
  }
  return { width, height, data: out };
}

/** 16-bit greyscale the way Pillow converts mode `I;16` to RGB: values above 255 become 255. */
async function decodeGrey16(bytes: Uint8Array): Promise<RgbImage> {
  const px = await raw(sharp(bytes, SHARP_INPUT).toColourspace('grey16'), 'ushort');
  const { width, height, channels } = px;
  const grey = new Uint16Array(px.data.buffer, px.data.byteOffset, px.data.length >> 1);
  const n = width * height;
  const out = new Uint8Array(n * 3);
  for (let i = 0; i < n; i++) out.fill(Math.min(grey[channels * i], 255), 3 * i, 3 * i + 3);
  return { width, height, data: out };
}

/** CMYK the way Pillow's `cmyk2rgb` converts it: each of R, G, B is `(255 - k) - MULDIV255(c, 255 - k)`. */
async function decodeCmyk(bytes: Uint8Array): Promise<RgbImage> {
  const { data, width, height, channels } = await raw(sharp(bytes, SHARP_INPUT).pipelineColourspace('cmyk').toColourspace('cmyk'));
  if (channels < 4) throw new ImageError(`CMYK image decoded to ${channels} channels`);
  const n = width * height;
  const out = new Uint8Array(n * 3);
  for (let i = 0; i < n; i++) {
    const p = channels * i;
    const nk = 255 - data[p + 3];
    for (let c = 0; c < 3; c++) {
      // Pillow's MULDIV255(a, b): (t + (t >> 8)) >> 8 with t = a·b + 128, a rounded a·b/255.
      const t = data[p + c] * nk + 128;
      out[3 * i + c] = nk - ((t + (t >> 8)) >> 8);
    }
  }
  return { width, height, data: out };
}
