// SmolVLM (Idefics3) parity with the transformers goldens of smolvlm-tiny (bf16 weights, f32 math):
// image splitting, prompt ids with tile markers, per-tile vision states, post_layernorm and
// column-mean salience, pixel shuffle and projection, logits within 1e-4 max abs and identical greedy
// tokens; SparseVILA prunes per tile at connector-token granularity and keeps every marker.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { readTensorF32, readTensorInt } from '../src/formats/safetensors.js';
import { Checkpoint } from '../src/formats/checkpoint.js';
import { WasmBackend } from '../src/kernels/wasm-backend.js';
import { VisionLanguageModel } from '../src/engine/vlm.js';
import { densePrefill, sparseVilaPrefill } from '../src/sparsity/method.js';
import { embedPrompt } from '../src/model/embed-prompt.js';
import { Idefics3Model } from '../src/model/idefics3/model.js';
import { SalienceRequest } from '../src/model/vit.js';
import { inspectModel } from '../src/engine/inspect.js';
import { fixture, assertClose, absRel, assertZeroSparsityIsDense } from './helpers.js';

const TOL = absRel(1e-4, 0);
const dir = fixture('smolvlm-tiny');
const image = path.join(dir, 'image.png');
const PROMPT = 'What is in this image?';
const IMAGE_ID = 49190;

describe('smolvlm-tiny against the transformers goldens', () => {
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

  it('the registry picks idefics3; inspect names its parts', async () => {
    assert.equal(model.family.name, 'idefics3');
    const r = await inspectModel(dir);
    assert.deepEqual(r.problems, []);
    assert.match(r.family!, /^idefics3: SigLIP vision tower on image tiles, pixel-shuffle connector, llama decoder/);
    assert.match(r.parts!.join('\n'), /pixel shuffle ×2 \+ linear: 4 tokens per tile/);
  });

  it('tiles, prompt ids, per-tile vision states, salience, pixel shuffle and projection match', async () => {
    const im = await model.preprocess(image);
    assert.equal(im.tiles.length, 5);
    assert.deepEqual(im.dense, { rows: 20, tileRows: [4, 4, 4, 4, 4], grid: [2, 2] });
    assertClose(
      im.tiles.flatMap((t) => Array.from(t)),
      readTensorF32(g, 'pixel_values'),
      absRel(1e-6, 0),
      'pixel_values',
    );
    assert.deepEqual(await model.promptIds({ images: [image], prompt: PROMPT }), readTensorInt(g, 'input_ids'));
    const enc = model.encoder as Idefics3Model;
    const hs = readTensorF32(g, 'vision.hidden_states'),
      last = readTensorF32(g, 'vision.last_hidden_state'),
      col = readTensorF32(g, 'vision.colmean_salience_last');
    const shuffle = readTensorF32(g, 'connector.pixel_shuffle'),
      proj = readTensorF32(g, 'connector.output');
    const n = 16 * 64;
    for (let t = 0; t < 5; t++) {
      const req: SalienceRequest = { rows: 'mean' };
      const out = enc.vision.encode(
        im.tiles[t],
        (i, x) => assertClose(be.read(x), hs.subarray((i * 5 + t) * n, (i * 5 + t + 1) * n), TOL, `tile ${t}: hidden state ${i}`),
        req,
      );
      assertClose(be.read(out), last.subarray(t * n, (t + 1) * n), TOL, `tile ${t}: post_layernorm`);
      assertClose(req.result!, col.subarray(t * 16, (t + 1) * 16), absRel(1e-5, 0), `tile ${t}: column-mean salience`);
      const e = enc.encodeTile(im, t, { salience: true });
      assertClose(be.read(e.units), shuffle.subarray(t * 4 * 256, (t + 1) * 4 * 256), TOL, `tile ${t}: pixel shuffle`);
      const want = enc.sources.map((s) => s.reduce((a, p) => a + col[t * 16 + p], 0) / s.length);
      assertClose(e.salience!, want, absRel(1e-5, 0), `tile ${t}: unit salience, the mean over its 2×2 patches`);
      assertClose(be.read(enc.project(e.units)), proj.subarray(t * 4 * 64, (t + 1) * 4 * 64), TOL, `tile ${t}: connector output`);
    }
  });

  it('image rows, logits at the last two positions and the 12 greedy tokens', async () => {
    const [rows] = await model.imageFeatures([image], densePrefill);
    try {
      assertClose(be.read(rows.features), readTensorF32(g, 'connector.output'), TOL, 'image rows in prompt order');
      const ids = await model.promptIds({ images: [image], prompt: PROMPT });
      const d = model.decoder,
        x = be.matrix(ids.length, d.hidden),
        cache = d.newCache();
      embedPrompt(d, x, ids, IMAGE_ID, [rows.features]);
      assertClose(be.read(x), readTensorF32(g, 'llm.inputs_embeds'), TOL, 'inputs_embeds');
      const logits = d.forward(
        x,
        cache,
        0,
        ids.map((_, i) => i),
        { logitRows: readTensorInt(g, 'logits.positions') },
      );
      assertClose(logits, readTensorF32(g, 'logits.at_positions'), TOL, 'logits');
      d.freeCache(cache);
      be.free(x);
    } finally {
      be.free(rows.features);
    }
    const r = await model.generate({ images: [image], prompt: PROMPT }, { maxNewTokens: 12, eosTokenIds: [] });
    assert.deepEqual(r.ids, readTensorInt(g, 'generate.new_tokens'));
    assert.deepEqual([r.stats.promptTokens, r.stats.imageTokens], [47, 20]);
  });

  it('SparseVILA keeps the top units of each tile in order and every tile marker; p = d = 0 equals dense', async () => {
    const [half] = await model.imageFeatures([image], sparseVilaPrefill(0.5));
    try {
      assert.deepEqual(half.tileRows, [2, 2, 2, 2, 2]);
      assert.deepEqual(
        half.units,
        [...half.units].sort((a, b) => a - b),
      );
      const ids = await model.promptIds({ images: [image], prompt: PROMPT }, [half]);
      const dense = readTensorInt(g, 'input_ids');
      assert.equal(ids.length, dense.length - 10);
      assert.deepEqual(
        ids.filter((t) => t !== IMAGE_ID),
        dense.filter((t) => t !== IMAGE_ID),
        'markers, row/col tokens and text are all kept',
      );
    } finally {
      be.free(half.features);
    }
    await assertZeroSparsityIsDense(model, { images: [image], prompt: PROMPT });
  });
});
