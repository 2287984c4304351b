// SparseVILA prefill pruning: the selection rule, p = 0 identity with the dense path, and the
// pruned image features against the dense ones (the projector works row by row, so each kept row
// must equal the dense row of the same token exactly).
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { Checkpoint, readTensorF32 } from '../src/formats/safetensors.js';
import { LlavaConfig, loadConfig } from '../src/formats/config.js';
import { WasmBackend } from '../src/kernels/wasm-backend.js';
import { WeightLoader } from '../src/model/weights.js';
import { LlavaModel } from '../src/model/llava.js';
import { VisionLanguageModel } from '../src/engine/vlm.js';
import { prunedImageFeatures } from '../src/sparsity/prefill.js';
import { keptCount, topKInOrder } from '../src/sparsity/select.js';
import { fixture } from './helpers.js';

describe('token selection', () => {
  it('keptCount keeps n - floor(p n), all tokens at p = 0, and rejects p outside [0, 1)', () => {
    assert.equal(keptCount(64, 0), 64);
    assert.equal(keptCount(64, 0.5), 32);
    assert.equal(keptCount(576, 0.6), 231);
    assert.equal(keptCount(196, 0.75), 49);
    assert.equal(keptCount(10, 0.99), 1);
    assert.throws(() => keptCount(10, 1), /sparsity 1 must be in \[0, 1\)/);
    assert.throws(() => keptCount(10, -0.1), /sparsity -0.1 must be in \[0, 1\)/);
  });
  it('topKInOrder keeps the highest scores in their original order, ties to the earlier token', () => {
    assert.deepEqual(topKInOrder([0.1, 0.5, 0.2, 0.9, 0.3], 3), [1, 3, 4]);
    assert.deepEqual(topKInOrder([1, 2, 2, 2, 0], 2), [1, 2]);
    assert.deepEqual(topKInOrder([3, 1, 2], 3), [0, 1, 2]);
    assert.deepEqual(topKInOrder([3, 1, 2], 0), []);
    assert.throws(() => topKInOrder([1, 2], 3), /cannot keep 3 of 2 tokens/);
  });
});

describe('prefill pruning on llava-tiny', () => {
  let be: WasmBackend;
  before(async () => { be = await WasmBackend.create({ threads: 2 }); });
  after(async () => { await be.close(); });
  const dir = fixture('llava-tiny');

  it('p = 0 computes exactly the dense image features; p = 0.5 keeps the 32 tokens the CLS attention ranks highest, rows equal to the dense rows', async () => {
    const ck = Checkpoint.open(dir), g = Checkpoint.open(path.join(dir, 'golden.safetensors'));
    const m = await LlavaModel.load(new WeightLoader(be, ck, dir), loadConfig(dir) as LlavaConfig);
    const px = readTensorF32(g, 'pixel_values');
    const dense = be.read(m.imageFeatures(px));
    const p0 = prunedImageFeatures(m, px, 0);
    assert.deepEqual(p0.kept, Array.from({ length: 64 }, (_, i) => i));
    assert.deepEqual(be.read(p0.features), dense);
    const half = prunedImageFeatures(m, px, 0.5);
    const cls = readTensorF32(g, 'vision.cls_salience_layer_m2');
    assert.deepEqual(half.kept, topKInOrder(cls, 32), 'kept tokens differ from the top 32 of the golden CLS salience');
    const got = be.read(half.features), H = got.length / 32;
    assert.equal(half.features.rows, 32);
    half.kept.forEach((t, i) => assert.deepEqual(got.subarray(i * H, (i + 1) * H), dense.subarray(t * H, (t + 1) * H), `kept row ${i} (token ${t})`));
    ck.close(); g.close();
  });

  it('generate with prefillSparsity: p = 0 gives the dense tokens; p = 0.5 puts half the visual tokens in the prompt', async () => {
    const model = await VisionLanguageModel.load(dir, { backend: be });
    const req = { images: [path.join(dir, 'image.png')], prompt: 'What is shown in this image?' };
    const dense = await model.generate(req, { maxNewTokens: 8, eosTokenIds: [] });
    const p0 = await model.generate(req, { maxNewTokens: 8, eosTokenIds: [], prefillSparsity: 0 });
    assert.deepEqual(p0.ids, dense.ids);
    assert.equal(p0.stats.imageTokens, 64);
    assert.equal(p0.stats.visualTokensIn, 64);
    const half = await model.generate(req, { maxNewTokens: 8, eosTokenIds: [], prefillSparsity: 0.5 });
    assert.equal(half.stats.imageTokens, 32);
    assert.equal(half.stats.visualTokensIn, 64);
    assert.equal(half.stats.promptTokens, dense.stats.promptTokens - 32);
    assert.equal(half.ids.length, 8);
    await assert.rejects(model.generate(req, { prefillSparsity: 1 }), /prefill sparsity 1 must be in \[0, 1\)/);
    await model.close();
  });
});
