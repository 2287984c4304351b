// Image input: decoding to RGB as Pillow's convert('RGB') does, Pillow-exact resizing, and the CLIP/SigLIP
// image processors against the fixtures' golden pixel_values.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import sharp from 'sharp';
import {
  clipPreprocess,
  decodeImage,
  ImageError,
  loadClipImageProcessorConfig,
  parseClipImageProcessorConfig,
  resize,
  type ClipImageProcessorConfig,
  type ResampleFilter,
  type RgbImage,
} from '../src/io/image.js';
import { readTensorF32 } from '../src/formats/safetensors.js';
import { Checkpoint } from '../src/formats/checkpoint.js';
import { fixture } from './helpers.js';

const tempDir = fs.mkdtempSync(path.join(os.tmpdir(), 'sparsevila-image-'));
after(() => fs.rmSync(tempDir, { recursive: true, force: true }));

/** An image whose bytes come from `f(x, y, channel)`. */
function makeImage(width: number, height: number, f: (x: number, y: number, c: number) => number): RgbImage {
  const data = new Uint8Array(width * height * 3);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) for (let c = 0; c < 3; c++) data[(y * width + x) * 3 + c] = f(x, y, c);
  }
  return { width, height, data };
}

/** A deterministic pseudo-random byte for pixel (x, y), channel c. */
const noise = (x: number, y: number, c: number): number => Math.imul((x * 73856093) ^ (y * 19349663) ^ (c * 83492791), 2654435761) >>> 24;

/** Raw pixels with `channels` bytes per pixel. */
function rawPixels(width: number, height: number, channels: number, f: (i: number, c: number) => number): Uint8Array {
  const out = new Uint8Array(width * height * channels);
  for (let i = 0; i < width * height; i++) for (let c = 0; c < channels; c++) out[i * channels + c] = f(i, c);
  return out;
}

/** Asserts that `fn` rejects with an ImageError whose message contains every needle. */
async function rejectsWith(fn: () => Promise<unknown>, ...needles: string[]): Promise<void> {
  await assert.rejects(fn, (e: unknown) => {
    assert.ok(e instanceof ImageError, `expected ImageError, got ${String(e)}`);
    for (const n of needles) assert.ok(e.message.includes(n), `message ${JSON.stringify(e.message)} lacks ${JSON.stringify(n)}`);
    return true;
  });
}

// ---- decoding ---------------------------------------------------------------------------------------

test('decodeImage: RGB PNG, from a path and from bytes', async () => {
  const px = rawPixels(7, 5, 3, (i, c) => noise(i, 0, c));
  const png = await sharp(px, { raw: { width: 7, height: 5, channels: 3 } })
    .png()
    .toBuffer();
  const file = path.join(tempDir, 'rgb.png');
  fs.writeFileSync(file, png);
  for (const img of [await decodeImage(file), await decodeImage(png)]) {
    assert.equal(img.width, 7);
    assert.equal(img.height, 5);
    assert.deepEqual(img.data, px);
  }
});

test('decodeImage: greyscale, grey+alpha and RGBA PNGs replicate grey and drop alpha (no compositing)', async () => {
  const w = 6,
    h = 4;
  const grey = rawPixels(w, h, 1, (i) => i * 10);
  const greyAlpha = rawPixels(w, h, 2, (i, c) => (c === 0 ? 255 - i * 9 : i % 2 === 0 ? 0 : 200));
  const rgba = rawPixels(w, h, 4, (i, c) => (c === 3 ? (i % 3) * 100 : noise(i, 1, c)));
  const cases: [Uint8Array, 1 | 2 | 4, (i: number, c: number) => number][] = [
    [grey, 1, (i) => grey[i]],
    [greyAlpha, 2, (i) => greyAlpha[2 * i]],
    [rgba, 4, (i, c) => rgba[4 * i + c]],
  ];
  for (const [px, channels, expected] of cases) {
    let s = sharp(px, { raw: { width: w, height: h, channels } });
    if (channels < 3) s = s.toColourspace('b-w');
    const png = await s.png().toBuffer();
    assert.equal((await sharp(png).metadata()).channels, channels, 'the PNG has the intended channel count');
    const img = await decodeImage(png);
    assert.deepEqual(img.data, rawPixels(w, h, 3, expected), `${channels} channels`);
  }
});

test('decodeImage: palette PNG expands to the palette colours', async () => {
  const colours = [
    [255, 0, 0],
    [0, 128, 255],
    [10, 20, 30],
    [250, 250, 250],
  ];
  const px = rawPixels(8, 3, 3, (i, c) => colours[(i * 5) % 4][c]);
  const png = await sharp(px, { raw: { width: 8, height: 3, channels: 3 } })
    .png({ palette: true, dither: 0 })
    .toBuffer();
  assert.ok((await sharp(png).metadata()).isPalette, 'the PNG is palette-based');
  assert.deepEqual((await decodeImage(png)).data, px);
});

test("decodeImage: 16-bit PNGs: greyscale clips at 255 like Pillow's I;16, RGB keeps the high byte", async () => {
  const w = 5,
    h = 2;
  const greyValues = [0, 1, 200, 255, 256, 300, 1000, 65535, 128, 77];
  const grey16 = new Uint16Array(greyValues);
  const greyPng = await sharp(grey16, { raw: { width: w, height: h, channels: 1 } })
    .toColourspace('grey16')
    .png()
    .toBuffer();
  assert.equal((await sharp(greyPng).metadata()).depth, 'ushort');
  assert.deepEqual(
    (await decodeImage(greyPng)).data,
    rawPixels(w, h, 3, (i) => Math.min(greyValues[i], 255)),
  );

  const rgb16 = new Uint16Array(w * h * 3).map((_, i) => (i * 6007 + 311) % 65536);
  const rgbPng = await sharp(rgb16, { raw: { width: w, height: h, channels: 3 } })
    .toColourspace('rgb16')
    .png()
    .toBuffer();
  assert.equal((await sharp(rgbPng).metadata()).depth, 'ushort');
  assert.deepEqual(
    (await decodeImage(rgbPng)).data,
    Uint8Array.from(rgb16, (v) => v >> 8),
  );
});

test("decodeImage: CMYK converts with Pillow's formula, not colour management", async () => {
  // A 3×2 CMYK TIFF written by Pillow 12.3, and Pillow's Image.open(...).convert('RGB') of it.
  const tiff = Buffer.from(
    'SUkqAAgAAAAKAAABBAABAAAAAwAAAAEBBAABAAAAAgAAAAIBAwAEAAAAhgAAAAMBAwABAAAAAQAAAAYBAwABAAAABQAAABEBBAABAAAAjgAAABUB' +
      'AwABAAAABAAAABYBBAABAAAAAgAAABcBBAABAAAAGAAAABwBAwABAAAAAQAAAAAAAAAIAAgACAAIAAAAAAD/AAAACmTIMgAAAP+AQCAQ////gA==',
    'base64',
  );
  const img = await decodeImage(tiff);
  assert.equal(img.width, 3);
  assert.equal(img.height, 2);
  assert.deepEqual(Array.from(img.data), [255, 255, 255, 0, 255, 255, 197, 125, 44, 0, 0, 0, 119, 179, 209, 0, 0, 0]);
});

test('decodeImage: JPEG decodes close to the source, and EXIF orientation is not applied', async () => {
  const w = 16,
    h = 8;
  const px = rawPixels(w, h, 3, (i, c) => (i % w < 8 ? [200, 40, 90] : [30, 160, 220])[c]);
  const jpeg = await sharp(px, { raw: { width: w, height: h, channels: 3 } })
    .jpeg({ quality: 100, chromaSubsampling: '4:4:4' })
    .withMetadata({ orientation: 6 })
    .toBuffer();
  assert.equal((await sharp(jpeg).metadata()).orientation, 6, 'the JPEG carries orientation 6 (rotate 90°)');
  const img = await decodeImage(jpeg);
  assert.equal(img.width, w, 'not rotated');
  assert.equal(img.height, h, 'not rotated');
  let maxDiff = 0;
  for (let i = 0; i < px.length; i++) maxDiff = Math.max(maxDiff, Math.abs(img.data[i] - px[i]));
  assert.ok(maxDiff <= 3, `max difference ${maxDiff}`);
});

test('decodeImage: failures are ImageErrors naming the input', async () => {
  const missing = path.join(tempDir, 'no-such-image.png');
  await rejectsWith(() => decodeImage(missing), missing, 'cannot open the image: no such file');
  const text = path.join(tempDir, 'notes.png');
  fs.writeFileSync(text, 'this is not an image\n');
  await rejectsWith(() => decodeImage(text), text, 'cannot decode');
  await rejectsWith(() => decodeImage(new Uint8Array(0)), '<buffer>', 'empty');
  await rejectsWith(() => decodeImage(new Uint8Array([1, 2, 3, 4]), 'upload.jpg'), 'upload.jpg', 'cannot decode');
  const png = await sharp(
    rawPixels(40, 40, 3, (i, c) => noise(i, 2, c)),
    { raw: { width: 40, height: 40, channels: 3 } },
  )
    .png()
    .toBuffer();
  await rejectsWith(() => decodeImage(png.subarray(0, png.length >> 1), 'truncated.png'), 'truncated.png');
});

// ---- resizing ---------------------------------------------------------------------------------------

const FILTERS: ResampleFilter[] = ['nearest', 'bilinear', 'bicubic', 'lanczos', 'box', 'hamming'];

test('resize: same size returns an equal copy', () => {
  const img = makeImage(9, 4, noise);
  for (const f of FILTERS) {
    const out = resize(img, 9, 4, f);
    assert.deepEqual(out, img);
    assert.notEqual(out.data, img.data);
  }
});

test('resize: box 2× downscale averages pairs per pass, rounding half up into 8 bits each time', () => {
  const img = makeImage(10, 6, noise);
  const out = resize(img, 5, 3, 'box');
  const at = (x: number, y: number, c: number): number => img.data[(y * 10 + x) * 3 + c];
  const half = (a: number, b: number): number => (a + b + 1) >> 1; // weights ½, ½; the sum starts at ½
  // Horizontal pass into an 8-bit image first, then the vertical pass.
  const expected = makeImage(5, 3, (x, y, c) =>
    half(half(at(2 * x, 2 * y, c), at(2 * x + 1, 2 * y, c)), half(at(2 * x, 2 * y + 1, c), at(2 * x + 1, 2 * y + 1, c))),
  );
  assert.deepEqual(out, expected);
});

test('resize: a constant image stays constant, up or down, with every filter', () => {
  const img = makeImage(13, 7, (_x, _y, c) => [17, 128, 254][c]);
  for (const f of FILTERS) {
    for (const [w, h] of [
      [29, 3],
      [4, 20],
      [1, 1],
      [13, 30],
    ]) {
      assert.deepEqual(
        resize(img, w, h, f),
        makeImage(w, h, (_x, _y, c) => [17, 128, 254][c]),
        `${f} ${w}×${h}`,
      );
    }
  }
});

test('resize: nearest samples pixel centres', () => {
  const img = makeImage(3, 2, (x, y, c) => 10 * x + 100 * y + c);
  // 3 → 2 columns: centres 0.75 and 2.25 → columns 0 and 2; 2 → 4 rows: rows 0, 0, 1, 1.
  const out = resize(img, 2, 4, 'nearest');
  assert.deepEqual(
    out,
    makeImage(2, 4, (x, y, c) => 10 * (2 * x) + 100 * (y >> 1) + c),
  );
});

// Outputs of Pillow 12.3's Image.fromarray(a).resize((3, 6), resample=f) for the 5×4 image `pattern` below.
const pattern = makeImage(5, 4, (x, y, c) => [(x * 53 + y * 97) % 256, (x * y * 20) % 256, (x + y) % 2 ? 255 : 0][c]);
const PILLOW_3X6: Record<ResampleFilter, number[]> = {
  nearest: [
    0, 0, 0, 106, 0, 0, 212, 0, 0, 97, 0, 255, 203, 40, 255, 53, 80, 255, 97, 0, 255, 203, 40, 255, 53, 80, 255, 194, 0, 0, 44, 80, 0, 150, 160, 0, 194, 0, 0,
    44, 80, 0, 150, 160, 0, 35, 0, 255, 141, 120, 255, 247, 240, 255,
  ],
  lanczos: [
    10, 0, 95, 100, 0, 144, 214, 0, 95, 53, 2, 131, 132, 15, 126, 110, 28, 131, 160, 7, 151, 146, 48, 116, 11, 88, 151, 236, 12, 104, 101, 72, 139, 87, 133,
    104, 137, 17, 124, 115, 105, 129, 194, 193, 124, 33, 19, 160, 147, 123, 111, 237, 226, 160,
  ],
  bilinear: [
    23, 0, 109, 106, 0, 113, 189, 0, 109, 72, 5, 128, 126, 20, 128, 110, 36, 128, 136, 10, 140, 138, 47, 137, 46, 83, 140, 201, 16, 115, 109, 73, 118, 111, 131,
    115, 138, 22, 128, 121, 100, 128, 176, 179, 128, 58, 26, 146, 141, 120, 142, 224, 214, 146,
  ],
  bicubic: [
    12, 0, 103, 103, 0, 126, 204, 0, 103, 63, 3, 129, 129, 16, 128, 109, 30, 129, 144, 8, 146, 145, 47, 129, 27, 85, 146, 220, 13, 109, 102, 73, 126, 103, 134,
    109, 138, 18, 126, 118, 104, 127, 184, 189, 126, 43, 21, 152, 144, 123, 129, 235, 224, 152,
  ],
  box: [
    27, 0, 128, 106, 0, 0, 186, 0, 128, 124, 10, 128, 203, 40, 255, 27, 70, 128, 124, 10, 128, 203, 40, 255, 27, 70, 128, 221, 20, 128, 44, 80, 0, 124, 140,
    128, 62, 30, 128, 141, 120, 255, 221, 210, 128, 62, 30, 128, 141, 120, 255, 221, 210, 128,
  ],
  hamming: [
    20, 0, 96, 106, 0, 73, 192, 0, 96, 69, 4, 128, 136, 20, 128, 113, 36, 128, 120, 8, 157, 164, 41, 179, 36, 74, 157, 211, 15, 98, 83, 79, 76, 127, 143, 98,
    135, 19, 128, 111, 100, 128, 179, 181, 128, 55, 23, 159, 141, 120, 182, 227, 217, 159,
  ],
};

test('resize: matches Pillow on a 5×4 → 3×6 resize with every filter', () => {
  for (const f of FILTERS) assert.deepEqual(Array.from(resize(pattern, 3, 6, f).data), PILLOW_3X6[f], f);
});

test('resize: an image over 100× taller than wide is resized height first, as Pillow ≥ 12.2 does', () => {
  const tall = makeImage(2, 201, (x, y, c) => [(y * 7 + x * 100) % 256, Math.floor(y / 10) % 2 ? 255 : 0, (y * y) % 256][c]);
  // Pillow 12.3: Image.fromarray(tall).resize((3, 2), resample=BICUBIC).
  assert.deepEqual(Array.from(resize(tall, 3, 2, 'bicubic').data), [124, 123, 109, 127, 123, 109, 130, 123, 109, 126, 131, 102, 127, 131, 102, 128, 131, 102]);
});

test('resize: rejects bad arguments', () => {
  const img = makeImage(4, 4, noise);
  assert.throws(() => resize(img, 0, 4, 'bicubic'), ImageError);
  assert.throws(() => resize(img, 2.5, 4, 'bicubic'), ImageError);
  assert.throws(() => resize(img, 2, 2, 'cubic' as ResampleFilter), ImageError);
  assert.throws(() => resize({ width: 4, height: 4, data: new Uint8Array(47) }, 2, 2, 'box'), ImageError);
});

test('resize: a 1000×1000 image to 224×224 bicubic takes well under 100 ms', () => {
  const img = makeImage(1000, 1000, noise);
  resize(img, 224, 224, 'bicubic'); // warm-up
  const times: number[] = [];
  for (let i = 0; i < 3; i++) {
    const t0 = performance.now();
    resize(img, 224, 224, 'bicubic');
    times.push(performance.now() - t0);
  }
  const median = times.sort((a, b) => a - b)[1];
  assert.ok(median < 100, `median ${median.toFixed(1)} ms`);
});

// ---- image processor config ---------------------------------------------------------------------------

test("parseClipImageProcessorConfig: the fixtures' CLIP and SigLIP configs", () => {
  assert.deepEqual(loadClipImageProcessorConfig(fixture('llava-tiny')), {
    processor: 'CLIPImageProcessor',
    doResize: true,
    size: { shortestEdge: 112 },
    resample: 'bicubic',
    doCenterCrop: true,
    cropSize: { height: 112, width: 112 },
    doRescale: true,
    rescaleFactor: 1 / 255,
    doNormalize: true,
    imageMean: [0.48145466, 0.4578275, 0.40821073],
    imageStd: [0.26862954, 0.26130258, 0.27577711],
    doConvertRgb: true,
  } satisfies ClipImageProcessorConfig);
  const siglip = loadClipImageProcessorConfig(path.join(fixture('siglip-tiny'), 'preprocessor_config.json'));
  assert.equal(siglip.processor, 'SiglipImageProcessor');
  assert.deepEqual(siglip.size, { height: 112, width: 112 });
  assert.equal(siglip.doCenterCrop, false);
  assert.deepEqual(
    [siglip.imageMean, siglip.imageStd],
    [
      [0.5, 0.5, 0.5],
      [0.5, 0.5, 0.5],
    ],
  );
});

test("parseClipImageProcessorConfig: transformers' defaults and the other size forms", () => {
  const clip = parseClipImageProcessorConfig({}, 'p.json');
  assert.deepEqual(clip.size, { shortestEdge: 224 });
  assert.deepEqual(clip.cropSize, { height: 224, width: 224 });
  assert.equal(clip.resample, 'bicubic');
  assert.equal(clip.rescaleFactor, 1 / 255);
  assert.deepEqual(clip.imageMean, [0.48145466, 0.4578275, 0.40821073]);
  const siglip = parseClipImageProcessorConfig({ image_processor_type: 'SiglipImageProcessor', do_center_crop: true }, 'p.json');
  assert.deepEqual(siglip.size, { height: 224, width: 224 });
  assert.equal(siglip.doCenterCrop, false, 'SigLIP never crops');
  assert.deepEqual(siglip.imageStd, [0.5, 0.5, 0.5]);
  assert.deepEqual(parseClipImageProcessorConfig({ image_processor_type: 'SiglipImageProcessor', size: [64, 96] }, 'p.json').size, { height: 64, width: 96 });

  const forms = parseClipImageProcessorConfig({ size: 336, crop_size: 300, resample: 1, image_mean: 0.25, do_normalize: null }, 'p.json');
  assert.deepEqual(forms.size, { shortestEdge: 336 });
  assert.deepEqual(forms.cropSize, { height: 300, width: 300 });
  assert.equal(forms.resample, 'lanczos');
  assert.deepEqual(forms.imageMean, [0.25, 0.25, 0.25]);
  assert.equal(forms.doNormalize, false, 'null is false, as in Python');
  assert.deepEqual(parseClipImageProcessorConfig({ size: [30, 40], crop_size: [10, 20] }, 'p.json').size, { height: 30, width: 40 });
});

test('parseClipImageProcessorConfig: invalid settings are ImageErrors naming the file and the field', () => {
  const bad: [unknown, string][] = [
    [[], 'JSON object'],
    [{ image_processor_type: 'Idefics3ImageProcessor' }, 'image_processor_type'],
    [{ size: { shortest_edge: 0 } }, 'size'],
    [{ size: { width: 10 } }, 'size'],
    [{ image_processor_type: 'SiglipImageProcessor', size: { shortest_edge: 224 } }, 'size'],
    [{ crop_size: { height: 10 } }, 'crop_size'],
    [{ image_processor_type: 'SiglipImageProcessor', size: 224 }, 'size'],
    [{ resample: 7 }, 'resample'],
    [{ resample: null }, 'resample'],
    [{ rescale_factor: '1/255' }, 'rescale_factor'],
    [{ image_std: [0.2, 0, 0.2] }, 'image_std'],
    [{ image_mean: [0.5, 0.5] }, 'image_mean'],
    [{ do_resize: 'yes' }, 'do_resize'],
  ];
  for (const [json, field] of bad) {
    assert.throws(
      () => parseClipImageProcessorConfig(json, 'models/x/preprocessor_config.json'),
      (e: unknown) => {
        assert.ok(e instanceof ImageError);
        assert.ok(e.message.includes('models/x/preprocessor_config.json') && e.message.includes(field), e.message);
        return true;
      },
      JSON.stringify(json),
    );
  }
  assert.throws(() => loadClipImageProcessorConfig(path.join(tempDir, 'absent')), ImageError);
});

// ---- preprocessing --------------------------------------------------------------------------------------

/** A config that only resizes and/or crops, leaving the bytes as floats. */
function rawConfig(over: Partial<ClipImageProcessorConfig>): ClipImageProcessorConfig {
  return { ...parseClipImageProcessorConfig({}, 'test'), doRescale: false, doNormalize: false, ...over };
}

/** The channel-first float planes of an RGB image. */
function planes(img: RgbImage): Float32Array {
  const n = img.width * img.height;
  return Float32Array.from({ length: 3 * n }, (_, i) => img.data[(i % n) * 3 + Math.floor(i / n)]);
}

test('clipPreprocess: shortest_edge keeps the aspect ratio, truncating the long side', () => {
  const cfg = rawConfig({ size: { shortestEdge: 112 }, doCenterCrop: false });
  for (const [w, h, ew, eh] of [
    [160, 120, 149, 112],
    [120, 160, 112, 149],
    [50, 50, 112, 112],
    [300, 7, 4800, 112],
  ]) {
    const out = clipPreprocess(makeImage(w, h, noise), cfg);
    assert.deepEqual([out.width, out.height], [ew, eh], `${w}×${h}`);
  }
});

test('clipPreprocess: centre crop at floor((size - crop) / 2), zero-padding a smaller image', () => {
  const img = makeImage(7, 5, (x, y, c) => 1 + x + 10 * y + 100 * c);
  const crop = clipPreprocess(img, rawConfig({ doResize: false, cropSize: { height: 2, width: 4 } }));
  assert.deepEqual(crop.data, planes(makeImage(4, 2, (x, y, c) => img.data[((y + 1) * 7 + x + 1) * 3 + c])));
  // Crop 6×10 of 7×5: rows start at floor(-1/2) = -1, columns at floor(-3/2) = -2.
  const pad = clipPreprocess(img, rawConfig({ doResize: false, cropSize: { height: 6, width: 10 } }));
  assert.deepEqual(
    pad.data,
    planes(
      makeImage(10, 6, (x, y, c) => {
        const sx = x - 2,
          sy = y - 1;
        return sx >= 0 && sx < 7 && sy >= 0 && sy < 5 ? img.data[(sy * 7 + sx) * 3 + c] : 0;
      }),
    ),
  );
});

test("clipPreprocess: rescale and CLIP normalisation give numpy's float32 values", () => {
  // transformers 4.57 rescale() then normalize() of the bytes 0, 1, 77, 128, 200, 255 with the CLIP defaults.
  const bytes = [0, 1, 77, 128, 200, 255];
  const img = makeImage(6, 1, (x) => bytes[x]);
  const cfg = rawConfig({ doResize: false, doCenterCrop: false, doRescale: true });
  const rescaled = [0, 0.003921568859368563, 0.3019607961177826, 0.501960813999176, 0.7843137383460999, 1];
  assert.deepEqual(clipPreprocess(img, cfg).data, Float32Array.from([...rescaled, ...rescaled, ...rescaled]));
  const normalised = [
    -1.7922625541687012, -1.777664065361023, -0.6681836247444153, 0.07633614540100098, 1.12742280960083, 1.9303361177444458, -1.7520971298217773,
    -1.7370892763137817, -0.5964989066123962, 0.16889731585979462, 1.249456524848938, 2.0748836994171143, -1.480219841003418, -1.465999722480774,
    -0.38527464866638184, 0.33994877338409424, 1.3637934923171997, 2.1458969116210938,
  ];
  assert.deepEqual(clipPreprocess(img, { ...cfg, doNormalize: true }).data, Float32Array.from(normalised));
});

for (const name of ['llava-tiny', 'siglip-tiny']) {
  test(`clipPreprocess: ${name} image.png matches the golden pixel_values`, async (t) => {
    const dir = fixture(name);
    const cfg = loadClipImageProcessorConfig(dir);
    const out = clipPreprocess(await decodeImage(path.join(dir, 'image.png')), cfg);
    const golden = readTensorF32(Checkpoint.open(path.join(dir, 'golden.safetensors')), 'pixel_values');
    assert.deepEqual([out.width, out.height], [112, 112]);
    assert.equal(out.data.length, golden.length);
    let maxDiff = 0;
    for (let i = 0; i < golden.length; i++) maxDiff = Math.max(maxDiff, Math.abs(out.data[i] - golden[i]));
    t.diagnostic(`max abs diff ${maxDiff}`);
    assert.ok(maxDiff <= 1e-6, `max abs diff ${maxDiff}`);
  });
}
