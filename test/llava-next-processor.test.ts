// LLaVA-NeXT "anyres" preprocessing and packing geometry against the llava-next-tiny goldens (transformers'
// LlavaNextImageProcessor and pack_image_features), plus hand-worked cases for ties, tall images and odd
// differences.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { decodeImage, ImageError, type RgbImage } from '../src/io/image.js';
import { readTensorF32, readTensorInt } from '../src/formats/safetensors.js';
import { Checkpoint } from '../src/formats/checkpoint.js';
import {
  anyresFeatureLayout,
  anyresGrid,
  anyresTokenCount,
  featureSourcePairs,
  llavaNextPreprocess,
  loadLlavaNextProcessorConfig,
  parseLlavaNextProcessorConfig,
  selectBestResolution,
  unpaddedGrid,
  type LlavaNextProcessorConfig,
} from '../src/model/llava-next/processor.js';
import { fixture } from './helpers.js';

const dir = fixture('llava-next-tiny');
const golden = Checkpoint.open(path.join(dir, 'golden.safetensors'));
const PINPOINTS: [number, number][] = [
  [84, 168],
  [168, 84],
  [168, 168],
  [252, 84],
  [84, 252],
];
/** The real llava-v1.6 pinpoints (tile 336, 24 patches per side). */
const REAL_PINPOINTS: [number, number][] = [
  [336, 672],
  [672, 336],
  [672, 672],
  [1008, 336],
  [336, 1008],
];
/** Patches per tile side: vision image_size 84 / patch 14. */
const P = 6;

/** A deterministic pseudo-random image. */
function noiseImage(width: number, height: number): RgbImage {
  const data = new Uint8Array(width * height * 3);
  for (let i = 0; i < data.length; i++) data[i] = Math.imul(i + 17, 2654435761) >>> 24;
  return { width, height, data };
}

/** clipPreprocess's rescale and normalise of one byte of channel c, in its float32 arithmetic. */
function normalised(cfg: LlavaNextProcessorConfig, v: number, c: number): number {
  const x = Math.fround(v * cfg.clip.rescaleFactor);
  return Math.fround(Math.fround(x - Math.fround(cfg.clip.imageMean[c])) / Math.fround(cfg.clip.imageStd[c]));
}

// ---- config ----------------------------------------------------------------------------------------

test("parseLlavaNextProcessorConfig: the fixture's preprocessor_config.json", () => {
  const cfg = loadLlavaNextProcessorConfig(dir);
  assert.equal(cfg.processor, 'LlavaNextImageProcessor');
  assert.deepEqual(cfg.imageGridPinpoints, PINPOINTS);
  assert.equal(cfg.tileSize, 84);
  assert.equal(cfg.doPad, true);
  assert.deepEqual(cfg.clip.size, { shortestEdge: 84 });
  assert.deepEqual(cfg.clip.cropSize, { height: 84, width: 84 });
  assert.equal(cfg.clip.resample, 'bicubic');
  assert.equal(cfg.clip.doResize, true);
  assert.equal(cfg.clip.doCenterCrop, true);
  assert.equal(cfg.clip.doRescale, true);
  assert.equal(cfg.clip.rescaleFactor, 1 / 255);
  assert.equal(cfg.clip.doNormalize, true);
  assert.deepEqual(cfg.clip.imageMean, [0.48145466, 0.4578275, 0.40821073]);
  assert.deepEqual(cfg.clip.imageStd, [0.26862954, 0.26130258, 0.27577711]);
});

test("parseLlavaNextProcessorConfig: defaults are transformers' (CLIP settings, v1.6 pinpoints, do_pad)", () => {
  const cfg = parseLlavaNextProcessorConfig({ image_processor_type: 'LlavaNextImageProcessorFast', crop_size: 336 }, 'p.json');
  assert.deepEqual(cfg.imageGridPinpoints, REAL_PINPOINTS);
  assert.equal(cfg.tileSize, 336);
  assert.equal(cfg.doPad, true);
  assert.deepEqual(cfg.clip.size, { shortestEdge: 224 });
  assert.equal(parseLlavaNextProcessorConfig({ crop_size: 336, do_pad: null }, 'p.json').doPad, false);
  // transformers' own defaults disagree (crop 224, pinpoints in multiples of 336): refused, and said so.
  assert.throws(() => parseLlavaNextProcessorConfig({}, 'p.json'), /image_grid_pinpoints.*transformers' default.*multiple of the tile size 224/);
});

test('parseLlavaNextProcessorConfig: bad fields are ImageErrors naming the file and the field', () => {
  const source = 'models/next/preprocessor_config.json';
  const base = { image_processor_type: 'LlavaNextImageProcessor', crop_size: { height: 84, width: 84 }, image_grid_pinpoints: PINPOINTS };
  const cases: [Record<string, unknown>, string][] = [
    [{ image_grid_pinpoints: [] }, 'image_grid_pinpoints'],
    [{ image_grid_pinpoints: [[84]] }, 'image_grid_pinpoints'],
    [{ image_grid_pinpoints: [[84, 0]] }, 'image_grid_pinpoints'],
    [{ image_grid_pinpoints: [[84, 168.5]] }, 'image_grid_pinpoints'],
    [{ image_grid_pinpoints: '(1x1),...,(3x3)' }, 'image_grid_pinpoints'],
    [
      {
        image_grid_pinpoints: [
          [84, 168],
          [84, 100],
        ],
      },
      'image_grid_pinpoints',
    ], // 100 is not a multiple of 84
    [{ do_pad: 'yes' }, 'do_pad'],
    [{ crop_size: { height: 84, width: 112 } }, 'crop_size'],
    [{ image_processor_type: 'CLIPImageProcessor' }, 'image_processor_type'],
    [{ image_processor_type: undefined, feature_extractor_type: 'SiglipImageProcessor' }, 'feature_extractor_type'],
    // The CLIP fields are checked by parseClipImageProcessorConfig.
    [{ size: -1 }, 'size'],
    [{ resample: 9 }, 'resample'],
    [{ image_std: [1, 0, 1] }, 'image_std'],
  ];
  for (const [edit, field] of cases) {
    assert.throws(
      () => parseLlavaNextProcessorConfig({ ...base, ...edit }, source),
      (e: unknown) => {
        assert.ok(e instanceof ImageError, `${field}: expected ImageError, got ${String(e)}`);
        assert.ok(e.message.includes(source) && e.message.includes(`"${field}"`), `${field}: ${e.message}`);
        return true;
      },
    );
  }
  assert.throws(() => parseLlavaNextProcessorConfig([1, 2], source), ImageError);
});

// ---- best resolution -------------------------------------------------------------------------------

test('selectBestResolution: the fixture, ties and (height, width) order', () => {
  // The fixture (README step 1): 120×160 (h×w). (168,168) scales by 1.05 to 168×126, capped at all 19200 pixels.
  assert.deepEqual(selectBestResolution(120, 160, PINPOINTS), [168, 168]);

  // (height, width): for h 120, w 160, (84,168) scales by min(168/160, 84/120) = 0.7 to 112×84 = 9408 pixels,
  // (168,84) by min(84/160, 168/120) = 0.525 to 84×63 = 5292. The tall image (h 160, w 120) is the mirror.
  // Reading the pairs (or the size) as (width, height) would swap both answers.
  assert.deepEqual(
    selectBestResolution(120, 160, [
      [84, 168],
      [168, 84],
    ]),
    [84, 168],
  );
  assert.deepEqual(
    selectBestResolution(160, 120, [
      [84, 168],
      [168, 84],
    ]),
    [168, 84],
  );

  // Exact tie: a 100×100 image fits both (200,100) and (100,200) at scale 1, 10000 pixels kept and 10000
  // wasted each: the first candidate wins, whichever it is.
  assert.deepEqual(
    selectBestResolution(100, 100, [
      [200, 100],
      [100, 200],
    ]),
    [200, 100],
  );
  assert.deepEqual(
    selectBestResolution(100, 100, [
      [100, 200],
      [200, 100],
    ]),
    [100, 200],
  );

  // Equal effective pixels, different waste: a 50×50 image keeps all 2500 pixels in both; (84,84) wastes
  // 7056 - 2500 = 4556, (168,168) wastes 25724, so (84,84) wins although it comes second.
  assert.deepEqual(
    selectBestResolution(50, 50, [
      [168, 168],
      [84, 84],
    ]),
    [84, 84],
  );
  // Likewise (84,168) and (84,252) both keep 9408 pixels of the fixture image; the fixture list has the first
  // (less waste) first. Listed alone in the other order, (84,168) still wins on waste.
  assert.deepEqual(
    selectBestResolution(120, 160, [
      [84, 252],
      [84, 168],
    ]),
    [84, 168],
  );

  // A wide 50×300 image: (84,252) scales by 0.84 to 252×42 = 10584 pixels; (84,168) and (168,168) by 0.56 to
  // 168×28 = 4704; the tall ones by 0.28 to 84×14.
  assert.deepEqual(selectBestResolution(50, 300, PINPOINTS), [84, 252]);

  assert.throws(() => selectBestResolution(120, 160, []), ImageError);
  assert.throws(() => selectBestResolution(0, 160, PINPOINTS), ImageError);
});

// ---- preprocessing ---------------------------------------------------------------------------------

test('llavaNextPreprocess: image.png matches the golden pixel_values and anyres geometry', async (t) => {
  const cfg = loadLlavaNextProcessorConfig(dir);
  const out = llavaNextPreprocess(await decodeImage(path.join(dir, 'image.png')), cfg);
  const int = (name: string): number[] => readTensorInt(golden, name);
  assert.deepEqual(out.imageSize, int('image_sizes'));
  assert.deepEqual(out.bestResolution, int('anyres.best_resolution'));
  assert.deepEqual(out.grid, int('anyres.grid'));
  assert.deepEqual(out.resized, int('anyres.resized_hw'));
  assert.deepEqual(out.padding, int('anyres.pad_tblr'));
  assert.equal(out.tileSize, 84);
  assert.equal(out.tiles.length, 5);

  const want = readTensorF32(golden, 'pixel_values');
  const plane = 3 * 84 * 84;
  assert.equal(want.length, 5 * plane);
  let maxDiff = 0;
  for (let k = 0; k < 5; k++) {
    assert.equal(out.tiles[k].length, plane);
    for (let i = 0; i < plane; i++) maxDiff = Math.max(maxDiff, Math.abs(out.tiles[k][i] - want[k * plane + i]));
  }
  // Tolerance 1e-6: the resize is Pillow-exact, so only float rounding could differ.
  t.diagnostic(`pixel_values max abs diff ${maxDiff}`);
  assert.ok(maxDiff <= 1e-6, `pixel_values max abs diff ${maxDiff}`);
});

test('llavaNextPreprocess: a tall image is padded left and right, an odd difference puts the extra pixel at the bottom', () => {
  const cfg = loadLlavaNextProcessorConfig(dir);

  // 120 wide × 160 tall: best (168,168) (by 1.05 to 126×168, all 19200 pixels); scale_w 1.4 > scale_h 1.05, so
  // height 168 and width min(ceil(120·1.05), 168) = 126; (168 - 126) / 2 = 21 black columns on each side.
  const tall = noiseImage(120, 160);
  const a = llavaNextPreprocess(tall, cfg);
  assert.deepEqual(
    [a.bestResolution, a.grid, a.resized, a.padding],
    [
      [168, 168],
      [2, 2],
      [168, 126],
      [0, 0, 21, 21],
    ],
  );

  // 160 wide × 119 tall: best (168,168); width 168, height min(ceil(119·1.05) = ceil(124.95), 168) = 125;
  // 168 - 125 = 43 = 21 on top + 22 at the bottom.
  const odd = noiseImage(160, 119);
  const b = llavaNextPreprocess(odd, cfg);
  assert.deepEqual(
    [b.bestResolution, b.grid, b.resized, b.padding],
    [
      [168, 168],
      [2, 2],
      [125, 168],
      [21, 22, 0, 0],
    ],
  );

  // Which pixels are padding. Tile k ≥ 1 is grid tile (r, c) = divmod(k - 1, 2); its pixel (y, x) is pixel
  // (84r + y, 84c + x) of the padded 168×168 image. A padded pixel is the normalised 0, not 0.
  const S = 84;
  const at = (img: ReturnType<typeof llavaNextPreprocess>, k: number, ch: number, y: number, x: number): number => img.tiles[k][ch * S * S + y * S + x];
  for (let ch = 0; ch < 3; ch++) {
    const zero = normalised(cfg, 0, ch);
    assert.notEqual(zero, 0);
    // Tall: padded columns 0…20 and 147…167; column 21 is the first resized column.
    assert.equal(at(a, 1, ch, 0, 20), zero);
    assert.equal(at(a, 3, ch, 83, 0), zero);
    assert.equal(at(a, 2, ch, 10, 83 - 20), zero); // padded column 147 = tile column 63
    // Odd: padded rows 0…20 and 146…167 (168 - 22).
    assert.equal(at(b, 1, ch, 20, 5), zero);
    assert.equal(at(b, 3, ch, 146 - S, 5), zero);
    assert.equal(at(b, 4, ch, 83, 83), zero);
  }
  // Some resized pixel is not black, so the row just inside each border is image, not padding.
  let inside = 0;
  for (let x = 0; x < S; x++) if (at(b, 1, 0, 21, x) !== normalised(cfg, 0, 0)) inside++;
  assert.ok(inside > 0, 'row 21 holds image pixels');
  inside = 0;
  for (let x = 0; x < S; x++) if (at(b, 3, 0, 145 - S, x) !== normalised(cfg, 0, 0)) inside++;
  assert.ok(inside > 0, 'row 145 holds image pixels');
});

test('llavaNextPreprocess: refuses resize targets over maxPixels', async () => {
  const cfg = loadLlavaNextProcessorConfig(dir);
  const img = await decodeImage(path.join(dir, 'image.png'));
  // The largest buffer is the padded 168×168 image.
  assert.equal(llavaNextPreprocess(img, cfg, 168 * 168).tiles.length, 5);
  assert.throws(
    () => llavaNextPreprocess(img, cfg, 168 * 168 - 1),
    (e: unknown) => e instanceof ImageError && e.message.includes('maxPixels') && e.message.includes('168×168'),
  );
  assert.throws(
    () => llavaNextPreprocess(img, cfg, 126 * 168 - 1),
    (e: unknown) => e instanceof ImageError && e.message.includes('maxPixels') && e.message.includes('168×126'),
  );
  assert.throws(() => llavaNextPreprocess({ width: 2, height: 2, data: new Uint8Array(5) }, cfg), ImageError);
});

// ---- packing layout --------------------------------------------------------------------------------

test('anyresFeatureLayout: the fixture matches the golden image_features.source, feature grid and unpadded grid', () => {
  const image = { imageSize: [120, 160] as [number, number], grid: anyresGrid(120, 160, PINPOINTS, 84) };
  assert.deepEqual(image.grid, readTensorInt(golden, 'anyres.grid'));
  const layout = anyresFeatureLayout(image, P);
  assert.deepEqual(layout.featureGrid, readTensorInt(golden, 'anyres.feature_grid'));
  // Rows are cut: int(round(120·12/160, 7)) = 9, (12 - 9) // 2 = 1 from both ends: rows 1…10, all 12 columns.
  assert.deepEqual(layout.unpadded, { rows: [1, 11], cols: [0, 12] });
  assert.deepEqual(unpaddedGrid(12, 12, 120, 160), layout.unpadded);
  const { rows, cols } = layout.unpadded;
  assert.deepEqual([rows[1] - rows[0], cols[1] - cols[0]], readTensorInt(golden, 'anyres.unpadded_grid'));

  const want = readTensorInt(golden, 'image_features.source');
  assert.equal(want.length, 166 * 2);
  assert.deepEqual(Array.from(featureSourcePairs(layout.rows)), want);
  // The processor's count: 36 + 1 (CLS) + 10·12 + 10 - 1 ("default" strategy).
  assert.equal(anyresTokenCount(image, P), 36 + 1 + 10 * 12 + 10 - 1);
  assert.equal(anyresTokenCount(image, P), 166);
  assert.equal(layout.rows.length, 166);
  assert.equal(readTensorInt(golden, 'input_ids').filter((id) => id === 32000).length, 166, 'the prompt holds 166 image tokens');
});

test('anyresFeatureLayout: a tall image loses columns', () => {
  // 160 tall × 120 wide: best (168,168), a 2×2 grid, a 12×12 feature grid. 120/160 < 12/12, so columns are
  // cut: int(round(120·(12/160), 7)) = 9 and (12 - 9) // 2 = 1 from each side: columns 1…10, all 12 rows.
  const image = { imageSize: [160, 120] as [number, number], grid: anyresGrid(160, 120, PINPOINTS, 84) };
  assert.deepEqual(image.grid, [2, 2]);
  const layout = anyresFeatureLayout(image, P);
  assert.deepEqual(layout.unpadded, { rows: [0, 12], cols: [1, 11] });
  assert.equal(anyresTokenCount(image, P), 36 + 12 * (10 + 1));
  assert.equal(layout.rows.length, 168);
  const r = layout.rows;
  // After the 36 base rows: feature row 0 starts at column 1 (tile 1, patch 1); column 6 is tile 2's patch 0;
  // column 10 is tile 2's patch 4; then a newline; row 1 starts at tile 1's patch 7; row 6 (the second tile row)
  // starts at tile 3's patch 1.
  assert.deepEqual(
    r.slice(0, 36),
    Array.from({ length: 36 }, (_, patch) => ({ tile: 0, patch })),
  );
  assert.deepEqual(r[36], { tile: 1, patch: 1 });
  assert.deepEqual(r[36 + 5], { tile: 2, patch: 0 });
  assert.deepEqual(r[36 + 9], { tile: 2, patch: 4 });
  assert.equal(r[36 + 10], 'newline');
  assert.deepEqual(r[36 + 11], { tile: 1, patch: 7 });
  assert.deepEqual(r[36 + 6 * 11], { tile: 3, patch: 1 });
  assert.equal(r[r.length - 1], 'newline');
  assert.equal(r.filter((s) => s === 'newline').length, 12);
});

test('unpaddedGrid: odd differences keep the extra row or column, and the round(x, 7) rule', () => {
  // An 82×205 image: best (84,252) (by 84/82 to 210×84, all 16810 pixels), a 1×3 grid, a 6×18 feature grid.
  // 205/82 = 2.5 < 18/6 = 3, so columns are cut. 205·(6/82) is 14.999999999999998 in doubles: round(·, 7)
  // makes it 15 (plain int() would say 14), and (18 - 15) // 2 = 1 from each end keeps 16 columns, not 15.
  assert.deepEqual(anyresGrid(82, 205, PINPOINTS, 84), [1, 3]);
  assert.deepEqual(unpaddedGrid(6, 18, 82, 205), { rows: [0, 6], cols: [1, 17] });
  assert.equal(anyresTokenCount({ imageSize: [82, 205], grid: [1, 3] }, P), 36 + 6 * 17);

  // Real scale (tile 336, 24 patches): a 55×176 image gets best (336,672), a 24×48 feature grid; 176/55 = 3.2 > 2,
  // so rows are cut: 55·(48/176) = 14.999999999999998 → 15, (24 - 15) // 2 = 4 from each end: rows 4…19 (16 rows).
  assert.deepEqual(anyresGrid(55, 176, REAL_PINPOINTS, 336), [1, 2]);
  assert.deepEqual(unpaddedGrid(24, 48, 55, 176), { rows: [4, 20], cols: [0, 48] });
  assert.equal(anyresTokenCount({ imageSize: [55, 176], grid: [1, 2] }, 24), 576 + 16 * 49);

  // Rows with an odd difference: a 75×300 image on a 6×18 grid: 300/75 = 4 > 3; 75·(18/300) = 4.5 → 4,
  // (6 - 4) // 2 = 1: rows 1…4. On a 6×12 grid: 75·(12/300) = 3, (6 - 3) // 2 = 1 keeps 4 rows, not 3.
  assert.deepEqual(unpaddedGrid(6, 18, 75, 300), { rows: [1, 5], cols: [0, 18] });
  assert.deepEqual(unpaddedGrid(6, 12, 75, 300), { rows: [1, 5], cols: [0, 12] });
  // Equal aspect ratios cut columns by nothing (the else branch): 168×84 image on a 12×6 grid.
  assert.deepEqual(unpaddedGrid(12, 6, 168, 84), { rows: [0, 12], cols: [0, 6] });

  // Every layout row count equals anyresTokenCount.
  for (const [h, w] of [
    [120, 160],
    [160, 120],
    [82, 205],
    [50, 300],
    [300, 50],
    [119, 160],
    [84, 84],
  ]) {
    const image = { imageSize: [h, w] as [number, number], grid: anyresGrid(h, w, PINPOINTS, 84) };
    assert.equal(anyresFeatureLayout(image, P).rows.length, anyresTokenCount(image, P), `${h}×${w}`);
  }
  assert.throws(() => unpaddedGrid(0, 12, 120, 160), ImageError);
  assert.throws(() => anyresFeatureLayout({ imageSize: [120, 160], grid: [2, 2] }, 0), ImageError);
});
