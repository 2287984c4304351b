// SparseVILA prefill pruning: the selection rule, p = 0 identity with the dense path, and the
// pruned image features against the dense ones (the projector works row by row, so each kept row
// must equal the dense row of the same token exactly).
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { readTensorF32 } from '../src/formats/safetensors.js';
import { Checkpoint } from '../src/formats/checkpoint.js';
import { loadConfig } from '../src/model/registry.js';
import { LlavaConfig } from '../src/model/llava/config.js';
import { WasmBackend } from '../src/kernels/wasm-backend.js';
import { WeightLoader } from '../src/model/weights.js';
import { LlavaModel } from '../src/model/llava/model.js';
import { VisionLanguageModel } from '../src/engine/vlm.js';
import { prunedImageFeatures } from '../src/sparsity/prefill.js';
import { keptCount, topKInOrder } from '../src/sparsity/select.js';
import { DecodeRetrieval } from '../src/sparsity/retrieval.js';
import { readTensorInt } from '../src/formats/safetensors.js';
import sharp from 'sharp';
import { fixture, tempDir } from './helpers.js';

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
  before(async () => {
    be = await WasmBackend.create({ threads: 2 });
  });
  after(async () => {
    await be.close();
  });
  const dir = fixture('llava-tiny');

  it('p = 0 computes exactly the dense image features; p = 0.5 keeps the 32 tokens the CLS attention ranks highest, rows equal to the dense rows', async () => {
    const ck = Checkpoint.open(dir),
      g = Checkpoint.open(path.join(dir, 'golden.safetensors'));
    const m = await LlavaModel.load(new WeightLoader(be, ck, dir), loadConfig(dir).config as LlavaConfig);
    const px = readTensorF32(g, 'pixel_values');
    const dense = be.read(m.imageFeatures(px));
    const image = { tiles: [px], dense: { rows: 64, tileRows: [64] } };
    const p0 = prunedImageFeatures(m, image, 0, 0);
    assert.deepEqual(
      p0.kept,
      Array.from({ length: 64 }, (_, i) => i),
    );
    assert.deepEqual(be.read(p0.features), dense);
    const half = prunedImageFeatures(m, image, 0, 0.5);
    const cls = readTensorF32(g, 'vision.cls_salience_layer_m2');
    assert.deepEqual(half.kept, topKInOrder(cls, 32), 'kept tokens differ from the top 32 of the golden CLS salience');
    const got = be.read(half.features),
      H = got.length / 32;
    assert.equal(half.features.rows, 32);
    half.kept.forEach((t, i) => assert.deepEqual(got.subarray(i * H, (i + 1) * H), dense.subarray(t * H, (t + 1) * H), `kept row ${i} (token ${t})`));
    // The salience layer is a setting: layer 0's class-token row ranks differently.
    const att0 = readTensorF32(g, 'vision.attentions_mean').subarray(1, 65);
    assert.deepEqual(prunedImageFeatures(m, image, 0, 0.5, 0).kept, topKInOrder(att0, 32), 'salience layer 0');
    assert.notDeepEqual(topKInOrder(att0, 32), half.kept);
    assert.throws(() => prunedImageFeatures(m, image, 0, 0.5, 2), /salience layer 2 is outside the vision tower's layers 0\.\.1 that feed the connector/);
    ck.close();
    g.close();
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
    await assert.rejects(model.generate(req, { prefillSparsity: 1 }), /prefillSparsity must be a number in \[0, 1\), got 1/);
    await model.close();
  });
});

describe('decode retrieval on llava-tiny', () => {
  let be: WasmBackend;
  before(async () => {
    be = await WasmBackend.create({ threads: 2 });
  });
  after(async () => {
    await be.close();
  });
  const dir = fixture('llava-tiny');

  it("scores the visual tokens by the question's attention (softmax over visual keys, GQA group mean), against the per-head attention goldens", async () => {
    const ck = Checkpoint.open(dir),
      g = Checkpoint.open(path.join(dir, 'golden.safetensors'));
    const cfg = loadConfig(dir).config as LlavaConfig;
    const m = await LlavaModel.load(new WeightLoader(be, ck, dir), cfg);
    const dec = m.language;
    const ids = readTensorInt(g, 'input_ids'),
      S = ids.length;
    const visual = Array.from(ids).flatMap((t, i) => (t === cfg.imageTokenIndex ? [i] : []));
    assert.equal(visual.length, 64);
    const x = be.matrix(S, cfg.text.hiddenSize);
    be.write(x, readTensorF32(g, 'llm.inputs_embeds'));
    const cache = dec.newCache();
    // The question is the last row, whose per-head attention the goldens hold.
    const r = new DecodeRetrieval(dec, visual, 0.75, S - 1, 4);
    dec.forward(
      x,
      cache,
      0,
      Array.from({ length: S }, (_, i) => i),
      r.prefillOptions(0, S),
    );
    const att = readTensorF32(g, 'llm.last_token_attention'); // [layer][head][key]
    const heads = cfg.text.numAttentionHeads,
      kvHeads = cfg.text.numKeyValueHeads,
      group = heads / kvHeads,
      n = visual.length;
    for (let l = 0; l < cfg.text.numHiddenLayers; l++) {
      const want = new Float64Array(kvHeads * n);
      for (let h = 0; h < heads; h++) {
        const row = att.subarray((l * heads + h) * S, (l * heads + h + 1) * S);
        const mass = visual.reduce((a, j) => a + row[j], 0);
        visual.forEach((j, i) => {
          want[Math.floor(h / group) * n + i] += row[j] / mass / group;
        });
      }
      const got = r.visualScores[l];
      let d = 0;
      for (let i = 0; i < want.length; i++) d = Math.max(d, Math.abs(got[i] - want[i]));
      assert.ok(d < 1e-5, `layer ${l}: visual scores differ from the goldens by ${d}`);
      for (let k = 0; k < kvHeads; k++) {
        assert.deepEqual(
          Array.from(r.kept[l].subarray(k * 16, (k + 1) * 16)),
          topKInOrder(got.subarray(k * n, (k + 1) * n), 16).map((i) => visual[i]),
        );
      }
    }
    // Decode steps with re-retrieval every 2 steps: steps 2 and 4 select again by their own query.
    const before = r.kept.map((k) => Array.from(k));
    const y = be.matrix(1, cfg.text.hiddenSize),
      step = r.decodeOptions(2);
    for (let i = 0; i < 4; i++) {
      dec.embed(y, [1 + i]);
      dec.forward(y, cache, S + i, [S + i], step);
    }
    assert.equal(r.reretrievals, 2);
    assert.notDeepEqual(
      r.kept.map((k) => Array.from(k)),
      before,
      'a new query selected the same tokens in every layer',
    );
    assert.throws(() => dec.forward(y, cache, S + 4, [S + 4], step), /decode retrieval: slot 86 is not one of the turn's 4 decode steps from 82/);
    assert.throws(() => r.decodeOptions(-1), /re-retrieval interval -1 is not a whole number >= 0/);
    r.free();
    dec.freeCache(cache);
    be.free(x);
    be.free(y);
    ck.close();
    g.close();
  });

  it('generate with decodeSparsity: keeping every visual token gives the dense tokens exactly; d = 0.75 attends to a quarter, the cache keeps all', async () => {
    const model = await VisionLanguageModel.load(dir, { backend: be });
    const req = { images: [path.join(dir, 'image.png')], prompt: 'What is shown in this image?' };
    const dense = await model.generate(req, { maxNewTokens: 10, eosTokenIds: [] });
    assert.equal(dense.stats.visualTokensRetrieved, 64);
    // keptCount(64, 0.01) = 64: every decode step reads all slots through the index lists.
    const all = await model.generate(req, { maxNewTokens: 10, eosTokenIds: [], decodeSparsity: 0.01 });
    assert.equal(all.stats.visualTokensRetrieved, 64);
    assert.deepEqual(all.ids, dense.ids);
    const sparse = await model.generate(req, { maxNewTokens: 10, eosTokenIds: [], decodeSparsity: 0.75 });
    assert.equal(sparse.stats.visualTokensRetrieved, 16);
    assert.equal(sparse.stats.promptTokens, dense.stats.promptTokens);
    assert.equal(sparse.ids.length, 10);
    // Re-retrieving every step while keeping everything changes nothing.
    const again = await model.generate(req, { maxNewTokens: 10, eosTokenIds: [], decodeSparsity: 0.01, reretrieveEvery: 1 });
    assert.deepEqual(again.ids, dense.ids);
    const both = await model.generate(req, { maxNewTokens: 6, eosTokenIds: [], prefillSparsity: 0.5, decodeSparsity: 0.75 });
    assert.deepEqual([both.stats.imageTokens, both.stats.visualTokensRetrieved], [32, 8]);
    await assert.rejects(model.generate(req, { decodeSparsity: 1 }), /decodeSparsity must be a number in \[0, 1\), got 1/);
    await model.close();
  });
});

describe('heatmap', () => {
  let be: WasmBackend;
  before(async () => {
    be = await WasmBackend.create({ threads: 2 });
  });
  after(async () => {
    await be.close();
  });
  const dir = fixture('llava-tiny');

  it('the result says which patches were kept and retrieved; the heatmap draws them over the image with one grid per layer', async () => {
    const model = await VisionLanguageModel.load(dir, { backend: be });
    const img = path.join(dir, 'image.png');
    const r = await model.generate(
      { images: [img], prompt: 'What is shown in this image?' },
      { maxNewTokens: 4, eosTokenIds: [], prefillSparsity: 0.5, decodeSparsity: 0.75 },
    );
    const v = r.visual!;
    assert.equal(v.kept.length, 1);
    assert.equal(v.kept[0].length, 32);
    assert.equal(v.retrieved!.length, 1);
    assert.equal(v.retrieved![0].length, 3, 'one list per LLM layer');
    for (const rows of v.retrieved![0]) {
      assert.ok(rows.length >= 8 && rows.length <= 16, `${rows.length} rows: 8 per KV head, 2 KV heads`);
      for (const row of rows) assert.ok(v.kept[0].includes(row), 'retrieved a token dropped in prefill');
    }
    const file = path.join(tempDir(), 'heat.png');
    assert.deepEqual(await model.writeHeatmaps(file, [img], r), [file]);
    const { data, info } = await sharp(file).raw().toBuffer({ resolveWithObject: true });
    // 112 px image, 14 px patches: an 8 x 8 grid, scaled 3x; below it 3 grids of 8 x 8 cells of 4 px.
    assert.deepEqual([info.width, info.height, info.channels], [336, 336 + 6 + 32 + 6, 3]);
    const px = (x: number, y: number) => [data[(y * info.width + x) * 3], data[(y * info.width + x) * 3 + 1], data[(y * info.width + x) * 3 + 2]];
    const centre = (k: number) => px((k % 8) * 42 + 21, Math.floor(k / 8) * 42 + 21);
    const dropped = Array.from({ length: 64 }, (_, k) => k).filter((k) => !v.kept[0].includes(k));
    for (const k of dropped) assert.ok(Math.max(...centre(k)) <= 0.15 * 255 + 0.15 * 200 + 1, `dropped patch ${k} is not darkened: ${centre(k)}`);
    const union = new Set(v.retrieved![0].flat());
    for (const k of union) assert.ok(centre(k)[1] >= 66, `retrieved patch ${k} is not tinted green: ${centre(k)}`);
    // Layer 0's grid: cell k of a patch it retrieved is pure green.
    const k0 = v.retrieved![0][0][0];
    assert.deepEqual(px((k0 % 8) * 4 + 1, 336 + 6 + Math.floor(k0 / 8) * 4 + 1), [40, 220, 90]);
    await model.close();
  });
});

describe('sessions on llava-tiny', () => {
  let be: WasmBackend;
  before(async () => {
    be = await WasmBackend.create({ threads: 2 });
  });
  after(async () => {
    await be.close();
  });
  const dir = fixture('llava-tiny');
  const Q1 = 'What is shown in this image?',
    Q2 = 'Which colour is in the top left corner of the picture?';

  it('independent mode: the image is encoded once, each question retrieves its own visual tokens, the visual KV stays whole, answers equal fresh sessions', async () => {
    const model = await VisionLanguageModel.load(dir, { backend: be });
    const img = path.join(dir, 'image.png');
    const opts = { maxNewTokens: 8, eosTokenIds: [], decodeSparsity: 0.75 };
    const s = model.session([img], { mode: 'independent', prefillSparsity: 0.5 });
    const a1 = await s.ask(Q1, opts);
    const kept1 = model.lastRetrieved.map((k) => Array.from(k));
    const end = s.visualContextEnd;
    assert.ok(end > 32 && s.cacheLength >= end);
    const a2 = await s.ask(Q2, opts);
    const kept2 = model.lastRetrieved.map((k) => Array.from(k));
    const a1again = await s.ask(Q1, opts);
    assert.equal(s.encodes, 1, 'the image was encoded more than once');
    assert.deepEqual([a1.stats.imageCached, a2.stats.imageCached, a1again.stats.imageCached], [false, true, true]);
    assert.equal(a1.stats.prefilledTokens, a1.stats.promptTokens);
    assert.equal(a2.stats.prefilledTokens, a2.stats.promptTokens - end, 'the second question prefilled more than its own tokens');
    assert.deepEqual([a1.stats.imageTokens, a1.stats.visualTokensRetrieved], [32, 8]);
    assert.ok(s.cacheLength >= end, 'the visual KV shrank');
    assert.notDeepEqual(kept2, kept1, 'two different questions retrieved the same visual tokens in every layer');
    for (const k of [...kept1, ...kept2]) for (const slot of k) assert.ok(slot < end, 'retrieved a slot outside the visual context');
    // Each answer equals asking in a fresh session, and the repeated question its first answer.
    for (const [q, a] of [
      [Q1, a1],
      [Q2, a2],
      [Q1, a1again],
    ] as const) {
      const fresh = model.session([img], { mode: 'independent', prefillSparsity: 0.5 });
      const f = await fresh.ask(q, opts);
      assert.deepEqual(a.ids, f.ids, `"${q}" answered differently in a fresh session`);
      fresh.close();
    }
    s.close();
    await assert.rejects(s.ask(Q1), /the session is closed/);
    await model.close();
  });

  it('chat mode: the history accumulates and the cached prefix is reused; p = d = 0 equals generate() on the same conversation', async () => {
    const model = await VisionLanguageModel.load(dir, { backend: be });
    const img = path.join(dir, 'image.png');
    const opts = { maxNewTokens: 6, eosTokenIds: [] };
    const s = model.session([img]);
    const a1 = await s.ask(Q1, opts);
    const a2 = await s.ask(Q2, opts);
    assert.ok(a2.stats.promptTokens > a1.stats.promptTokens + 6, 'the second prompt does not contain the first turn');
    assert.ok(a2.stats.prefilledTokens < a2.stats.promptTokens - 64, 'the second turn prefilled the image again');
    const direct = await model.generate(
      {
        images: [img],
        messages: [
          { role: 'user', content: [{ type: 'image' }, { type: 'text', text: Q1 }] },
          { role: 'assistant', content: [{ type: 'text', text: a1.text }] },
          { role: 'user', content: [{ type: 'text', text: Q2 }] },
        ],
      },
      opts,
    );
    assert.deepEqual(a2.ids, direct.ids);
    s.close();
    await model.close();
  });
});
