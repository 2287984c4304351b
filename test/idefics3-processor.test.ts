// The Idefics3 / SmolVLM image processor, its prompt string and the connector's pixel shuffle, against the
// smolvlm-tiny goldens (transformers' slow, Pillow-based Idefics3ImageProcessor) and against sizes reasoned
// out from transformers' source for inputs the fixture does not cover.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { decodeImage, ImageError, resize, type RgbImage } from '../src/io/image.js';
import { readTensorF32, readTensorInt } from '../src/formats/safetensors.js';
import { Checkpoint } from '../src/formats/checkpoint.js';
import {
  idefics3ImageString,
  idefics3Preprocess,
  loadIdefics3ProcessorConfig,
  parseIdefics3ProcessorConfig,
  pixelShuffle,
  pixelShuffleSources,
  type Idefics3ProcessorConfig,
} from '../src/model/idefics3/processor.js';
import { fixture } from './helpers.js';

const dir = fixture('smolvlm-tiny');
const readJson = (name: string): unknown => JSON.parse(fs.readFileSync(path.join(dir, name), 'utf8'));
let golden: Checkpoint;
before(() => {
  golden = Checkpoint.open(path.join(dir, 'golden.safetensors'));
});
after(() => golden.close());

/** The fixture's config: longest edge 128, tiles of 64, splitting, LANCZOS, mean = std = 0.5, 4 tokens per tile. */
const fixtureConfig = (): Idefics3ProcessorConfig =>
  parseIdefics3ProcessorConfig(readJson('preprocessor_config.json'), readJson('processor_config.json'), 'preprocessor_config.json');

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

/** `[3][h][w]` of an RGB image, rescaled by 1/255 and normalised with mean = std = 0.5 in float32. */
function normalised(img: RgbImage): Float32Array {
  const plane = img.width * img.height;
  const out = new Float32Array(3 * plane);
  const half = Math.fround(0.5);
  for (let c = 0; c < 3; c++) {
    for (let i = 0; i < plane; i++) out[c * plane + i] = Math.fround(Math.fround(Math.fround(img.data[3 * i + c] * (1 / 255)) - half) / half);
  }
  return out;
}

function cropOf(img: RgbImage, x0: number, y0: number, w: number, h: number): RgbImage {
  const data = new Uint8Array(w * h * 3);
  for (let y = 0; y < h; y++) data.set(img.data.subarray(((y0 + y) * img.width + x0) * 3, ((y0 + y) * img.width + x0 + w) * 3), y * w * 3);
  return { width: w, height: h, data };
}

// ---- config -----------------------------------------------------------------------------------------

test("parseIdefics3ProcessorConfig: the fixture's preprocessor_config.json and processor_config.json", () => {
  const expected: Idefics3ProcessorConfig = {
    doResize: true,
    size: { longestEdge: 128 },
    doImageSplitting: true,
    maxImageSize: 64,
    resample: 'lanczos',
    doRescale: true,
    rescaleFactor: 0.00392156862745098,
    doNormalize: true,
    imageMean: [0.5, 0.5, 0.5],
    imageStd: [0.5, 0.5, 0.5],
    doPad: true,
    doConvertRgb: true,
    imageSeqLen: 4,
  };
  assert.deepEqual(fixtureConfig(), expected);
  assert.deepEqual(loadIdefics3ProcessorConfig(dir), expected, 'from the folder');
  assert.deepEqual(loadIdefics3ProcessorConfig(path.join(dir, 'preprocessor_config.json')), expected, 'from the file');
});

test("parseIdefics3ProcessorConfig: transformers' defaults for absent fields and no processor_config.json", () => {
  assert.deepEqual(parseIdefics3ProcessorConfig({}, null, 'p.json'), {
    doResize: true,
    size: { longestEdge: 4 * 364 },
    doImageSplitting: true,
    maxImageSize: 364,
    resample: 'lanczos',
    doRescale: true,
    rescaleFactor: 1 / 255,
    doNormalize: true,
    imageMean: [0.5, 0.5, 0.5],
    imageStd: [0.5, 0.5, 0.5],
    doPad: true,
    doConvertRgb: true,
    imageSeqLen: 169,
  });
  const c = parseIdefics3ProcessorConfig(
    {
      image_processor_type: 'SmolVLMImageProcessor',
      size: { height: 30, width: 40 },
      resample: 3,
      do_pad: false,
      do_image_splitting: null,
      image_mean: 0.25,
    },
    { processor_class: 'SmolVLMProcessor' },
    'p.json',
  );
  assert.deepEqual(c.size, { height: 30, width: 40 });
  assert.equal(c.resample, 'bicubic');
  assert.equal(c.doPad, false);
  assert.equal(c.doImageSplitting, false, 'a null flag is false, as in Python');
  assert.deepEqual(c.imageMean, [0.25, 0.25, 0.25]);
  assert.equal(c.imageSeqLen, 169);
});

test('parseIdefics3ProcessorConfig: a bad field is an ImageError naming the file and the field', () => {
  const cases: [Record<string, unknown>, unknown, string[]][] = [
    [{ max_image_size: { longest_edge: -3 } }, null, ['p.json: max_image_size.longest_edge must be a positive integer, got -3']],
    [{ max_image_size: 364 }, null, ['p.json: max_image_size', 'got 364']],
    [{ size: { longest_edge: 'big' } }, null, ['p.json: size.longest_edge must be a positive integer, got "big"']],
    [{ size: { longest_edge: 0 } }, null, ['size.longest_edge', 'got 0']],
    [{ size: { height: 10, width: 2.5 } }, null, ['size.width', 'got 2.5']],
    [{ size: { shortest_edge: 10 } }, null, ['p.json: size must be', 'shortest_edge']],
    [{ image_mean: [0.5, 0.5] }, null, ['p.json: image_mean must be a list of 3 numbers', 'got [0.5,0.5]']],
    [{ image_std: [0.5, 0, 0.5] }, null, ['image_std must be a list of 3 non-zero numbers']],
    [{ image_std: 'x' }, null, ['image_std', 'got "x"']],
    [{ resample: 9 }, null, ['p.json: resample must be a Pillow filter number 0…5, got 9']],
    [{ resample: null }, null, ['resample', 'got null']],
    [{ rescale_factor: '1/255' }, null, ['rescale_factor must be a finite number']],
    [{ do_pad: 'yes' }, null, ['p.json: do_pad must be a boolean, got "yes"']],
    [{ do_image_splitting: 1 }, null, ['do_image_splitting must be a boolean']],
    [{ image_processor_type: 'CLIPImageProcessor' }, null, ['image_processor_type', 'Idefics3ImageProcessor', 'got "CLIPImageProcessor"']],
    [{}, { image_seq_len: 0 }, ['p.json (processor_config.json): image_seq_len must be a positive integer, got 0']],
    [{}, { image_seq_len: 4.5 }, ['image_seq_len', 'got 4.5']],
    [{}, [4], ['p.json (processor_config.json): expected a JSON object']],
  ];
  for (const [pre, proc, needles] of cases) {
    assert.throws(
      () => parseIdefics3ProcessorConfig(pre, proc, 'p.json'),
      (e: unknown) => {
        assert.ok(e instanceof ImageError, `expected ImageError, got ${String(e)}`);
        for (const n of needles) assert.ok(e.message.includes(n), `message ${JSON.stringify(e.message)} lacks ${JSON.stringify(n)}`);
        return true;
      },
      JSON.stringify([pre, proc]),
    );
  }
  assert.throws(() => parseIdefics3ProcessorConfig([1], null, 'p.json'), /p\.json: expected a JSON object/);
  // The processor file is named next to a preprocessor_config.json source.
  assert.throws(
    () => parseIdefics3ProcessorConfig({}, { image_seq_len: -1 }, path.join('m', 'preprocessor_config.json')),
    (e: unknown) => e instanceof ImageError && e.message.startsWith(`${path.join('m', 'processor_config.json')}: image_seq_len`),
  );
});

// ---- preprocessing ------------------------------------------------------------------------------------

test('idefics3Preprocess: image.png matches the golden pixel_values, pixel_attention_mask and image_rows_cols', async (t) => {
  const out = idefics3Preprocess(await decodeImage(path.join(dir, 'image.png')), fixtureConfig());
  assert.deepEqual(golden.info('pixel_values').shape, [5, 3, 64, 64]);
  assert.deepEqual(golden.info('pixel_attention_mask').shape, [5, 64, 64]);
  assert.deepEqual([out.rows, out.cols], readTensorInt(golden, 'image_rows_cols'));
  assert.deepEqual([out.rows, out.cols], [2, 2]);
  assert.equal(out.tileSize, 64);
  assert.deepEqual(out.resized, { height: 128, width: 128 }, '160×120 → 128×96 → multiples of 64: 128×128');
  assert.equal(out.tiles.length, 5);

  const pv = readTensorF32(golden, 'pixel_values');
  const mask = readTensorInt(golden, 'pixel_attention_mask');
  const per = 3 * 64 * 64;
  // Resizing is Pillow-exact and the arithmetic is transformers' float32, so the tolerance is float32 noise
  // (the fixtures README: PIL-based re-implementations match to ≤ 3e-7); we expect 0.
  let maxDiff = 0;
  for (let k = 0; k < 5; k++) {
    assert.equal(out.tiles[k].length, per);
    for (let i = 0; i < per; i++) maxDiff = Math.max(maxDiff, Math.abs(out.tiles[k][i] - pv[k * per + i]));
    assert.deepEqual(Array.from(out.pixelAttentionMask[k]), mask.slice(k * 64 * 64, (k + 1) * 64 * 64), `mask of tile ${k}`);
  }
  t.diagnostic(`pixel_values max abs diff ${maxDiff}`);
  assert.ok(maxDiff <= 1e-6, `max abs diff ${maxDiff}`);
});

test("idefics3Preprocess: a 200×90 image, split and not split, gives transformers' shapes", () => {
  const img = makeImage(200, 90, noise);
  const cfg = fixtureConfig();

  // Split. Longest edge: w = 128, h = trunc(128 / (200/90)) = trunc(57.6) = 57, odd, so 58. Multiples of 64:
  // w = ceil(128/64)·64 = 128, h = ceil(trunc(128 / (128/58)) / 64)·64 = ceil(58/64)·64 = 64. So a 1 × 2
  // grid of 64×64 tiles and the global image: 3 tiles, nothing padded.
  const split = idefics3Preprocess(img, cfg);
  assert.deepEqual([split.rows, split.cols, split.tileSize, split.tiles.length], [1, 2, 64, 3]);
  assert.deepEqual(split.resized, { height: 64, width: 128 });
  for (const m of split.pixelAttentionMask) assert.ok(m.length === 64 * 64 && m.every((v) => v === 1));
  const big = resize(resize(img, 128, 58, 'lanczos'), 128, 64, 'lanczos');
  assert.deepEqual(split.tiles[0], normalised(cropOf(big, 0, 0, 64, 64)), 'tile (1,1) is the left half');
  assert.deepEqual(split.tiles[1], normalised(cropOf(big, 64, 0, 64, 64)), 'tile (1,2) is the right half');
  assert.deepEqual(split.tiles[2], normalised(resize(big, 64, 64, 'lanczos')), 'the global image, last');

  // The same image standing up (90×200): h = 128, w = 58, then 64 wide × 128 high: 2 rows × 1 col.
  const tall = idefics3Preprocess(makeImage(90, 200, noise), cfg);
  assert.deepEqual([tall.rows, tall.cols, tall.tiles.length], [2, 1, 3]);
  assert.deepEqual(tall.resized, { height: 128, width: 64 });

  // Not split: transformers (4.5x slow processor, 5.x Pil backend) resizes the 128×58 image to
  // max_image_size × max_image_size, ignoring the aspect ratio: one 64×64 tile, rows = cols = 0, all-ones mask.
  const single = idefics3Preprocess(img, { ...cfg, doImageSplitting: false });
  assert.deepEqual([single.rows, single.cols, single.tileSize, single.tiles.length], [0, 0, 64, 1]);
  assert.deepEqual(single.resized, { height: 58, width: 128 });
  assert.ok(single.pixelAttentionMask[0].length === 64 * 64 && single.pixelAttentionMask[0].every((v) => v === 1));
  assert.deepEqual(single.tiles[0], normalised(resize(resize(img, 128, 58, 'lanczos'), 64, 64, 'lanczos')));

  // Splitting on, no first resize, a small image: 50×30 grows to 64 × ceil(trunc(64 / (50/30)) / 64)·64 =
  // 64×64, which is not larger than a tile: one image, rows = cols = 0 (the prompt then uses the
  // single-image layout).
  const small = idefics3Preprocess(makeImage(50, 30, noise), { ...cfg, doResize: false });
  assert.deepEqual([small.rows, small.cols, small.tiles.length], [0, 0, 1]);
  assert.deepEqual(small.resized, { height: 64, width: 64 });

  // Without do_pad the tiles and the (all-ones) masks are the same.
  assert.deepEqual(idefics3Preprocess(img, { ...cfg, doPad: false }), split);
});

test('idefics3Preprocess: a resize target over maxPixels is refused, naming the limit', () => {
  const img = makeImage(200, 90, noise);
  // 128×58 = 7424 pixels for the first resize.
  assert.throws(
    () => idefics3Preprocess(img, fixtureConfig(), 7000),
    (e: unknown) => e instanceof ImageError && e.message.includes('128×58') && e.message.includes('maxPixels'),
  );
  // 7424 passes; the 128×64 = 8192 of the split does not.
  assert.throws(
    () => idefics3Preprocess(img, fixtureConfig(), 8000),
    (e: unknown) => e instanceof ImageError && e.message.includes('128×64') && e.message.includes('maxPixels'),
  );
  assert.equal(idefics3Preprocess(img, fixtureConfig(), 8192).tiles.length, 3);
});

// ---- prompt -----------------------------------------------------------------------------------------

test('idefics3ImageString: the golden expanded prompt, and per-tile counts', () => {
  const prompt = (readJson('golden.json') as { prompt: { chat_template_output: string; expanded_text: string } }).prompt;
  assert.equal(prompt.chat_template_output, '<|im_start|>User:<image>What is in this image?<end_of_utterance>\nAssistant:');
  assert.equal(prompt.chat_template_output.replace('<image>', idefics3ImageString(2, 2, 4)), prompt.expanded_text);
  assert.equal(idefics3ImageString(2, 2, [4, 4, 4, 4, 4]), idefics3ImageString(2, 2, 4));

  const I = '<image>',
    F = '<fake_token_around_image>';
  assert.equal(
    idefics3ImageString(2, 2, [1, 0, 2, 3, 4]),
    `${F}<row_1_col_1>${I}${F}<row_1_col_2>\n` + `${F}<row_2_col_1>${I}${I}${F}<row_2_col_2>${I}${I}${I}\n` + `\n${F}<global-img>${I}${I}${I}${I}${F}`,
  );
  assert.equal(idefics3ImageString(1, 3, 1, { image: 'i', fake: 'f', global: 'g' }), 'f<row_1_col_1>if<row_1_col_2>if<row_1_col_3>i\n\nfgif');
  // Not split: transformers' _prompt_single_image.
  assert.equal(idefics3ImageString(0, 0, 3), `${F}<global-img>${I}${I}${I}${F}`);
  assert.equal(idefics3ImageString(0, 0, [2]), `${F}<global-img>${I}${I}${F}`);

  assert.throws(() => idefics3ImageString(2, 2, [4, 4, 4, 4]), RangeError);
  assert.throws(() => idefics3ImageString(2, 0, 4), RangeError);
  assert.throws(() => idefics3ImageString(1, 1, -1), RangeError);
});

// ---- pixel shuffle ------------------------------------------------------------------------------------

test('pixelShuffle: golden vision.last_hidden_state per tile gives connector.pixel_shuffle exactly', () => {
  assert.deepEqual(golden.info('vision.last_hidden_state').shape, [5, 16, 64]);
  assert.deepEqual(golden.info('connector.pixel_shuffle').shape, [5, 4, 256]);
  const x = readTensorF32(golden, 'vision.last_hidden_state');
  const want = readTensorF32(golden, 'connector.pixel_shuffle');
  for (let k = 0; k < 5; k++) {
    const got = pixelShuffle(x.subarray(k * 16 * 64, (k + 1) * 16 * 64), 4, 64, 2);
    assert.deepEqual(got, want.subarray(k * 4 * 256, (k + 1) * 4 * 256), `tile ${k}`);
  }
});

test('pixelShuffleSources: the patches of each output token, in channel-block order', () => {
  assert.deepEqual(pixelShuffleSources(4, 2), [
    [0, 1, 4, 5],
    [2, 3, 6, 7],
    [8, 9, 12, 13],
    [10, 11, 14, 15],
  ]);
  assert.deepEqual(pixelShuffleSources(3, 1), [[0], [1], [2], [3], [4], [5], [6], [7], [8]]);
  // Consistent with pixelShuffle: shuffling the patch indices themselves (dim 1) lists the sources.
  const ids = Float32Array.from({ length: 36 }, (_, i) => i);
  assert.deepEqual(Array.from(pixelShuffle(ids, 6, 1, 3)), pixelShuffleSources(6, 3).flat());
  assert.throws(() => pixelShuffleSources(5, 2), RangeError);
  assert.throws(() => pixelShuffle(new Float32Array(25 * 2), 5, 2, 2), RangeError);
  assert.throws(() => pixelShuffle(new Float32Array(10), 4, 2, 2), RangeError);
});
