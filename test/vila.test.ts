// VILA1.5 layout parity with vila-tiny's goldens (a faithful PyTorch reimplementation of VILA's
// inference path; bf16 weights, f32 math): preprocessing, VILA's tokenisation around <image>,
// SigLIP hidden states and column-mean salience, the mlp_downsample projector (its column-major
// block order), merged embeddings, logits within 1e-4 max abs and identical greedy tokens.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { TensorToWrite, readTensorF32, readTensorInt, writeSafetensors } from '../src/formats/safetensors.js';
import { Checkpoint } from '../src/formats/checkpoint.js';
import { WasmBackend } from '../src/kernels/wasm-backend.js';
import { VisionLanguageModel } from '../src/engine/vlm.js';
import { densePrefill, sparseVilaPrefill } from '../src/sparsity/method.js';
import { embedPrompt } from '../src/model/embed-prompt.js';
import { VilaModel, vilaBlocks } from '../src/model/vila/model.js';
import { SalienceRequest } from '../src/model/vit.js';
import { inspectModel } from '../src/engine/inspect.js';
import { fixture, assertClose, absRel, assertZeroSparsityIsDense, editJson, modelVariant, Rng } from './helpers.js';

const TOL = absRel(1e-4, 0);
const dir = fixture('vila-tiny');
const image = path.join(dir, 'image.png');
const QUERY = 'Please describe the image.';

describe('vila-tiny against the goldens of VILA1.5', () => {
  let be: WasmBackend, model: VisionLanguageModel, g: Checkpoint;
  before(async () => {
    be = await WasmBackend.create({ threads: 2 });
    model = await VisionLanguageModel.load(dir, { backend: be });
    g = Checkpoint.open(path.join(dir, 'golden.safetensors'));
  });
  after(async () => {
    g.close();
    await model.close();
    await be.close();
  });

  it('the registry reads the VILA layout; inspect names the family and its parts', async () => {
    assert.equal(model.family.name, 'vila');
    assert.deepEqual(model.warnings, [], 'the vicuna_v1 format is built in: no missing-template warning');
    const r = await inspectModel(dir);
    assert.deepEqual(r.problems, []);
    assert.match(r.family!, /^vila: SigLIP vision tower, mlp_downsample projector, llama decoder/);
    assert.match(r.parts!.join('\n'), /connector: +mlp_downsample: 16 tokens per image/);
    assert.ok(r.skipped.some((s) => s.name.startsWith('vision_tower.vision_model.head.')));
  });

  it('pixel values, prompt ids, vision states, column-mean salience, projector stages and token order match', async () => {
    const im = await model.preprocess(image);
    assertClose(im.tiles[0], readTensorF32(g, 'pixel_values'), absRel(1e-6, 0), 'pixel_values');
    const ids = await model.promptIds({ images: [image], prompt: QUERY });
    assert.deepEqual(ids, readTensorInt(g, 'merged.input_ids'), 'VILA ids with 16 rows of -200');
    const enc = model.encoder as VilaModel;
    // DownSampleBlock's token order: column-major blocks, zero padding at the bottom and right.
    const src = readTensorInt(g, 'projector.token_source');
    assert.deepEqual(
      vilaBlocks('mlp_downsample', 7).flatMap((b) => b.sources),
      Array.from(src),
    );
    const hs = readTensorF32(g, 'vision.hidden_states'),
      n = 49 * 64;
    enc.vision.encode(im.tiles[0], (i, x) => assertClose(be.read(x), hs.subarray(i * n, (i + 1) * n), TOL, `vision hidden state ${i}`));
    const col = readTensorF32(g, 'vision.colmean_salience');
    for (const layer of [0, 1]) {
      const req: SalienceRequest = { rows: 'mean', layer };
      enc.vision.encode(im.tiles[0], undefined, req);
      assertClose(req.result!, col.subarray(layer * 49, (layer + 1) * 49), absRel(1e-5, 0), `column-mean salience, layer ${layer}`);
    }
    const e = enc.encodeTile(im, 0, { salience: true });
    assertClose(be.read(e.units), readTensorF32(g, 'projector.layers.0'), TOL, 'downsampled units');
    const want = vilaBlocks('mlp_downsample', 7).map((b) => {
      const real = b.sources.filter((p) => p >= 0);
      return real.reduce((a, p) => a + col[49 + p], 0) / real.length;
    });
    assertClose(e.salience!, want, absRel(1e-5, 0), 'unit salience: the mean over its block');
    assertClose(be.read(enc.project(e.units)), readTensorF32(g, 'image_features'), TOL, 'image_features');
  });

  it('merged embeddings, logits at the last two positions and the 12 greedy tokens', async () => {
    const [rows] = await model.imageFeatures([image], densePrefill);
    try {
      const ids = await model.promptIds({ images: [image], prompt: QUERY });
      const d = model.decoder,
        x = be.matrix(ids.length, d.hidden),
        cache = d.newCache();
      embedPrompt(d, x, ids, -200, [rows.features]);
      assertClose(be.read(x), readTensorF32(g, 'llm.inputs_embeds'), TOL, 'inputs_embeds');
      const positions = readTensorInt(g, 'logits.positions');
      const logits = d.forward(
        x,
        cache,
        0,
        ids.map((_, i) => i),
        { logitRows: positions },
      );
      assertClose(logits, readTensorF32(g, 'logits.at_positions'), TOL, 'logits');
      d.freeCache(cache);
      be.free(x);
    } finally {
      be.free(rows.features);
    }
    const r = await model.generate({ images: [image], prompt: QUERY }, { maxNewTokens: 12, eosTokenIds: [] });
    assert.deepEqual(r.ids, readTensorInt(g, 'generate.new_tokens'));
    assert.deepEqual([r.stats.promptTokens, r.stats.imageTokens], [63, 16]);
  });

  it('SparseVILA keeps the most salient blocks in order; p = d = 0 is bit-identical to dense', async () => {
    const [half] = await model.imageFeatures([image], sparseVilaPrefill(0.5));
    try {
      assert.equal(half.features.rows, 8);
      assert.deepEqual(
        half.units,
        [...half.units].sort((a, b) => a - b),
      );
    } finally {
      be.free(half.features);
    }
    await assertZeroSparsityIsDense(model, { images: [image], prompt: QUERY });
  });
});

describe('vila: the NVILA-era mlp_downsample_3x3_fix projector', () => {
  it('lays 3×3 blocks out row-major with zero padding, and runs end to end', async () => {
    // 7×7 patches, padded to 9×9: 9 blocks; block (0, 2) covers columns 6..8 of rows 0..2 (only column 6 real).
    const blocks = vilaBlocks('mlp_downsample_3x3_fix', 7);
    assert.equal(blocks.length, 9);
    assert.deepEqual(blocks[0].sources, [0, 1, 2, 7, 8, 9, 14, 15, 16]);
    assert.deepEqual(blocks[2].sources, [6, -1, -1, 13, -1, -1, 20, -1, -1]);
    assert.deepEqual(blocks[8].sources, [48, -1, -1, -1, -1, -1, -1, -1, -1]);
    // A copy of vila-tiny with a 3×3 projector of random weights (layers 1, 2, 4, 5, 7).
    const D = 64,
      Ht = 48,
      rng = new Rng(7);
    const t = (name: string, shape: number[], one = false): TensorToWrite => {
      const n = shape.reduce((a, b) => a * b, 1);
      const data = new Float32Array(n).map(() => (one ? 1 : 0) + (rng.next() - 0.5) * 0.1);
      return { name, dtype: 'F32', shape, data: new Uint8Array(data.buffer) };
    };
    const variant = modelVariant(dir, (d) => {
      editJson(d, 'config.json', (j) => (j.mm_projector_cfg.mm_projector_type = 'mlp_downsample_3x3_fix'));
      // The variant links the fixture's folders: mm_projector/ becomes a folder of its own.
      const proj = path.join(d, 'mm_projector');
      fs.rmSync(proj);
      fs.mkdirSync(proj);
      fs.copyFileSync(path.join(dir, 'mm_projector', 'config.json'), path.join(proj, 'config.json'));
      writeSafetensors(path.join(proj, 'model.safetensors'), [
        t('layers.1.weight', [9 * D], true),
        t('layers.1.bias', [9 * D]),
        t('layers.2.weight', [3 * D, 9 * D]),
        t('layers.2.bias', [3 * D]),
        t('layers.4.weight', [3 * D], true),
        t('layers.4.bias', [3 * D]),
        t('layers.5.weight', [Ht, 3 * D]),
        t('layers.5.bias', [Ht]),
        t('layers.7.weight', [Ht, Ht]),
        t('layers.7.bias', [Ht]),
      ]);
    });
    const be = await WasmBackend.create({ threads: 1 });
    try {
      const m = await VisionLanguageModel.load(variant, { backend: be });
      const r = await m.generate({ images: [path.join(dir, 'image.png')], prompt: QUERY }, { maxNewTokens: 2, eosTokenIds: [], prefillSparsity: 0.5 });
      assert.deepEqual([r.stats.visualTokensIn, r.stats.imageTokens, r.ids.length], [9, 5, 2]);
      await m.close();
    } finally {
      await be.close();
    }
  });
});
