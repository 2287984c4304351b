// LLaVA-NeXT (anyres) parity with the transformers goldens of llava-next-tiny (f16 weights, f32
// math): per-tile vision states and class-token salience, projected and packed features (with
// unpadding and image_newline), prompt ids, logits within 1e-4 max abs, identical greedy tokens;
// SparseVILA per tile keeps newline rows.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { readTensorF32, readTensorInt } from '../src/formats/safetensors.js';
import { Checkpoint } from '../src/formats/checkpoint.js';
import { WasmBackend } from '../src/kernels/wasm-backend.js';
import { VisionLanguageModel } from '../src/engine/vlm.js';
import { densePrefill, sparseVilaPrefill } from '../src/sparsity/method.js';
import { embedPrompt } from '../src/model/embed-prompt.js';
import { LlavaNextModel } from '../src/model/llava-next/model.js';
import { fixture, assertClose, absRel, assertZeroSparsityIsDense } from './helpers.js';
import { ChatMessage } from '../src/io/chat-template.js';

const TOL = absRel(1e-4, 0);
const dir = fixture('llava-next-tiny');
const image = path.join(dir, 'image.png');
const SYSTEM =
  "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the human's questions.";
const messages: ChatMessage[] = [
  { role: 'system', content: [{ type: 'text', text: SYSTEM }] },
  { role: 'user', content: [{ type: 'image' }, { type: 'text', text: 'What is shown in this image?' }] },
];

describe('llava-next-tiny against the transformers goldens', () => {
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

  it('the registry picks llava-next; tiles, salience per tile and projected tile features match', async () => {
    assert.equal(model.family.name, 'llava-next');
    const enc = model.encoder as LlavaNextModel;
    const im = await model.preprocess(image);
    assertClose(
      im.tiles.flatMap((t) => Array.from(t)),
      readTensorF32(g, 'pixel_values'),
      absRel(1e-6, 0),
      'pixel_values',
    );
    assert.equal(im.dense.rows, 166);
    const cls = readTensorF32(g, 'vision.cls_salience_layer_m2'),
      proj = readTensorF32(g, 'image_features_projected');
    for (let t = 0; t < 5; t++) {
      const patches = (im as unknown as { tilePatches: number[][] }).tilePatches[t];
      const e = enc.encodeTile(im, t, { salience: true });
      const want = patches.map((p) => cls[t * 36 + p]);
      assertClose(e.salience!, want, absRel(1e-5, 0), `class-token salience, tile ${t}`);
      const got = be.read(enc.project(e.units));
      const wantRows = patches.flatMap((p) => Array.from(proj.subarray((t * 36 + p) * 48, (t * 36 + p + 1) * 48)));
      assertClose(got, wantRows, TOL, `projected features, tile ${t}`);
    }
  });

  it('packed image features, prompt ids, logits at the last two positions and the greedy tokens', async () => {
    const [rows] = await model.imageFeatures([image], densePrefill);
    try {
      assert.equal(rows.features.rows, 166);
      assertClose(be.read(rows.features), readTensorF32(g, 'image_features'), TOL, 'image_features (packed)');
      const src = readTensorInt(g, 'image_features.source');
      assert.deepEqual(
        rows.units,
        Array.from({ length: 166 }, (_, i) => (src[2 * i] < 0 ? -1 : src[2 * i] * 36 + src[2 * i + 1])),
      );
      const ids = await model.promptIds({ images: [image], messages });
      assert.deepEqual(ids, readTensorInt(g, 'input_ids'));
      const d = model.decoder,
        x = be.matrix(ids.length, d.hidden),
        cache = d.newCache();
      embedPrompt(d, x, ids, 32000, [rows.features]);
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
    const r = await model.generate({ images: [image], messages }, { maxNewTokens: 12, eosTokenIds: [] });
    assert.deepEqual(r.ids, readTensorInt(g, 'generate.new_tokens'));
    assert.deepEqual([r.stats.promptTokens, r.stats.imageTokens, r.stats.visualTokensIn], [214, 166, 166]);
  });

  it('SparseVILA prunes each tile by its class token and keeps every newline row; p = d = 0 is bit-identical to dense', async () => {
    const [sparse] = await model.imageFeatures([image], sparseVilaPrefill(0.5));
    try {
      const newlines = sparse.units.filter((u) => u < 0).length;
      assert.equal(newlines, 10, 'one newline per unpadded grid row');
      // Base 36 → 18, grid tiles: each tile's units in the window halved.
      assert.equal(sparse.features.rows, 18 + 4 * 15 + 10);
      // Kept units keep the dense packing order (a subsequence of it).
      const [dense] = await model.imageFeatures([image], densePrefill);
      be.free(dense.features);
      let j = 0;
      const inOrder = sparse.units.every((u) => {
        while (j < dense.units.length && dense.units[j] !== u) j++;
        return j++ < dense.units.length;
      });
      assert.ok(inOrder, 'kept rows out of the dense order');
    } finally {
      be.free(sparse.features);
    }
    await assertZeroSparsityIsDense(model, { images: [image], messages });
    const sv = await model.generate({ images: [image], messages }, { maxNewTokens: 4, eosTokenIds: [], prefillSparsity: 0.5, decodeSparsity: 0.5 });
    assert.equal(sv.stats.imageTokens, 88);
    assert.equal(sv.ids.length, 4);
  });
});
