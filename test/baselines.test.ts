// The baselines' selection rules on small hand-made cases, against what their papers' rules pick.
import { after, before, describe, it } from 'node:test';
import path from 'node:path';
import { readTensorF32 } from '../src/formats/safetensors.js';
import { Checkpoint } from '../src/formats/checkpoint.js';
import { WasmBackend } from '../src/kernels/wasm-backend.js';
import { VisionLanguageModel } from '../src/engine/vlm.js';
import { fastV, pruMergePrefill, pyramidDrop, questDecode, visionZipPrefill } from '../src/sparsity/method.js';
import { LayerDrop, PrunedCacheContinuation, fastVStages, pyramidDropStages } from '../src/sparsity/layerdrop.js';
import { LlavaModel } from '../src/model/llava/model.js';
import { WeightLoader } from '../src/model/weights.js';
import { loadConfig } from '../src/model/registry.js';
import { LlavaConfig } from '../src/model/llava/config.js';
import { readTensorInt } from '../src/formats/safetensors.js';
import { topKInOrder } from '../src/sparsity/select.js';
import { QuestDecode } from '../src/sparsity/quest.js';
import { LlamaDecoder } from '../src/model/llama.js';
import { fixture } from './helpers.js';

const maxAbsDiff = (a: ArrayLike<number>, b: ArrayLike<number>) => {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
};
import assert from 'node:assert/strict';
import { visionZipContextual, visionZipMerge, visionZipSelect } from '../src/sparsity/visionzip.js';
import { iqrOutlierCount, pruMergeMerge, pruMergeSelect, quantile } from '../src/sparsity/prumerge.js';

describe('VisionZip', () => {
  // 8 tokens; keys of 2 heads x 2 dims: head 0 = v + w, head 1 = v - w, so the head mean is v. The
  // large common w would dominate a cosine of the concatenated keys; VisionZip averages the heads.
  const salience = [0.05, 0.3, 0.02, 0.2, 0.01, 0.25, 0.1, 0.07];
  const v = [
    [1, 0],
    [0, 0],
    [0.9, 0.1],
    [0, 0],
    [0, 1],
    [0, 0],
    [0.2, 0.8],
    [-1, 0.1],
  ];
  const w = [5, -3];
  const keys = v.flatMap(([a, b]) => [a + w[0], b + w[1], a - w[0], b - w[1]]);

  it('keeps the top tokens by class-token attention, merges the rest into every step-th remaining token by key similarity', () => {
    const s = visionZipSelect(salience, keys, 2, 2, 3, 2);
    assert.deepEqual(s.dominant, [1, 3, 5]);
    // Remaining 0, 2, 4, 6, 7; step floor(5 / 2) = 2: targets are remaining[0] and remaining[2].
    assert.deepEqual(s.targets, [0, 4]);
    // 2 ~ (1, 0) joins 0; 6 ~ (0.2, 0.8) and 7 ~ (-1, 0.1) are closer to (0, 1): they join 4.
    assert.deepEqual(s.members, [[2], [6, 7]]);
    const out = visionZipMerge(
      Float32Array.from({ length: 8 }, (_, i) => 10 + i),
      1,
      s,
    );
    // Dominant rows in order, then each target plus the mean of its members.
    assert.deepEqual(Array.from(out), [11, 13, 15, 10 + 12, 14 + (16 + 17) / 2]);
  });

  it('splits a budget as the paper does (64 = 54 + 10) and checks its inputs', () => {
    assert.deepEqual([64, 128, 192].map(visionZipContextual), [10, 20, 30]);
    assert.throws(() => visionZipSelect(salience, keys, 2, 2, 6, 3), /6 \+ 3 tokens of 8/);
    assert.throws(() => visionZipSelect(salience, keys.slice(1), 2, 2, 3, 2), /31 key values for 8 tokens of 4/);
  });
});

describe('PruMerge', () => {
  const salience = [0.02, 0.03, 0.02, 0.025, 0.5, 0.02, 0.03, 0.022, 0.028, 0.02, 0.4, 0.03, 0.021, 0.027, 0.024, 0.026];
  const keys = salience.flatMap((_, i) => (i === 4 ? [1, 0] : i === 10 ? [0, 1] : i === 0 ? [0.9, 0.1] : i === 1 ? [0.8, 0.3] : [-1, -0.5]));

  it('keeps the outliers above Q3 + 1.5 IQR of the class-token attention (numpy percentiles)', () => {
    assert.equal(quantile(salience, 0.25), 0.02075);
    assert.ok(Math.abs(quantile(salience, 0.75) - 0.03) < 1e-15);
    assert.equal(iqrOutlierCount(salience), 2);
    const s = pruMergeSelect(salience, keys, 2, { k: 2 });
    assert.deepEqual(s.kept, [4, 10]);
    // The two most key-similar other tokens of each kept token, most similar first.
    assert.deepEqual(s.neighbours, [
      [0, 1],
      [1, 0],
    ]);
    const out = pruMergeMerge(
      Float32Array.from({ length: 16 }, (_, i) => i),
      1,
      salience,
      s,
    );
    // x_i + sum_j a_j x_j over the neighbours.
    assert.deepEqual(
      Array.from(out).map((x) => Math.round(x * 1e6) / 1e6),
      [4 + 0.02 * 0 + 0.03 * 1, 10 + 0.03 * 1 + 0.02 * 0],
    );
  });

  it('a fixed budget replaces the outlier count (ties to the earlier token)', () => {
    assert.deepEqual(pruMergeSelect(salience, keys, 2, { budget: 3, k: 2 }).kept, [1, 4, 10]);
  });
});

describe('baselines on llava-tiny, through generate()', () => {
  let be: WasmBackend;
  before(async () => {
    be = await WasmBackend.create({ threads: 2 });
  });
  after(async () => {
    await be.close();
  });
  const dir = fixture('llava-tiny');
  const req = { images: [path.join(dir, 'image.png')], prompt: 'What is shown in this image?' };

  it('VisionZip with a budget of 16: 13 dominant tokens by CLS attention, then 3 contextual tokens anchored at every 17th remaining token', async () => {
    const model = await VisionLanguageModel.load(dir, { backend: be });
    const g = Checkpoint.open(path.join(dir, 'golden.safetensors'));
    const cls = readTensorF32(g, 'vision.cls_salience_layer_m2');
    g.close();
    const dense = await model.generate(req, { maxNewTokens: 3, eosTokenIds: [] });
    const r = await model.generate(req, { maxNewTokens: 3, eosTokenIds: [], prefill: visionZipPrefill(16) });
    assert.equal(r.stats.imageTokens, 16);
    assert.equal(r.stats.promptTokens, dense.stats.promptTokens - 48);
    const kept = r.visual!.kept[0];
    assert.deepEqual(kept.slice(0, 13), topKInOrder(cls, 13));
    // Targets: every floor(51 / 3) = 17th of the 51 remaining tokens.
    const remaining = Array.from({ length: 64 }, (_, i) => i).filter((i) => !kept.slice(0, 13).includes(i));
    assert.deepEqual(kept.slice(13), [remaining[0], remaining[17], remaining[34]]);
    assert.throws(() => visionZipPrefill(1), /VisionZip budget 1 must be a whole number >= 2/);
    await assert.rejects(
      model.generate(req, { prefill: visionZipPrefill(16), prefillSparsity: 0.5 }),
      /give either a prefill method \(visionzip\(16\)\) or prefillSparsity, not both/,
    );
    await model.close();
  });

  it('Quest: a budget holding every page is the dense decode exactly; a small one reads fewer KV bytes per step', async () => {
    const model = await VisionLanguageModel.load(dir, { backend: be });
    const dense = await model.generate(req, { maxNewTokens: 8, eosTokenIds: [] });
    const all = await model.generate(req, { maxNewTokens: 8, eosTokenIds: [], decode: questDecode({ budget: 1024 }) });
    assert.deepEqual(all.ids, dense.ids);
    const small = await model.generate(req, { maxNewTokens: 8, eosTokenIds: [], decode: questDecode({ budget: 32 }) });
    assert.equal(small.ids.length, 8);
    // 3 layers: the first two dense (83 slots at the first step), the third 16 + 3 slots (page 5 holds slots 80..82).
    assert.equal(small.stats.kvBytesPerStep, Math.round(((2 * 83 + 19) / 3) * 3 * 2 * 16 * 4 * 2));
    assert.ok(small.stats.kvBytesPerStep < dense.stats.kvBytesPerStep);
    await assert.rejects(
      model.generate(req, { decode: questDecode({ budget: 32 }), decodeSparsity: 0.5 }),
      /give either a decode method \(quest\(32\)\) or decodeSparsity, not both/,
    );
    await model.close();
  });

  it('PruMerge keeps the IQR outliers of the CLS attention; with a budget, the top tokens', async () => {
    const model = await VisionLanguageModel.load(dir, { backend: be });
    const g = Checkpoint.open(path.join(dir, 'golden.safetensors'));
    const cls = readTensorF32(g, 'vision.cls_salience_layer_m2');
    g.close();
    const outliers = Array.from(cls).filter((a, _, all) => {
      const s = [...all].sort((x, y) => x - y),
        q = (f: number) => {
          const p = (s.length - 1) * f,
            lo = Math.floor(p);
          return s[lo] + (s[Math.ceil(p)] - s[lo]) * (p - lo);
        };
      return a > q(0.75) + 1.5 * (q(0.75) - q(0.25));
    }).length;
    const r = await model.generate(req, { maxNewTokens: 3, eosTokenIds: [], prefill: pruMergePrefill() });
    assert.equal(r.stats.imageTokens, Math.max(1, outliers));
    assert.deepEqual(r.visual!.kept[0], topKInOrder(cls, Math.max(1, outliers)));
    const b = await model.generate(req, { maxNewTokens: 3, eosTokenIds: [], prefill: pruMergePrefill(20) });
    assert.deepEqual(b.visual!.kept[0], topKInOrder(cls, 20));
    await model.close();
  });
});

describe('Quest', () => {
  let be: WasmBackend;
  before(async () => {
    be = await WasmBackend.create({ threads: 2 });
  });
  after(async () => {
    await be.close();
  });

  // One KV head of dimension 4, two query heads sharing it; pages of 4 slots; 18 slots written, so
  // page 4 (slots 16, 17) is the page being written. Page keys (first component; the rest 0):
  // page 0: 0, page 1: 1, page 2: 5, page 3: 2 and -3 (min -3, max 2), page 4: 0.
  const firsts = [0, 0, 0, 0, 1, 1, 1, 1, 5, 5, 5, 5, 2, -3, 2, -3, 0, 0];
  const setup = () => {
    const cache = be.kvCache(1, 1, 4, { blockSize: 8 });
    const k = be.matrix(18, 4);
    be.write(
      k,
      Float32Array.from({ length: 72 }, (_, i) => (i % 4 === 0 ? firsts[i / 4] : 0)),
    );
    be.kvWrite(cache, 0, k, k, 0);
    be.free(k);
    const decoder = {
      backend: be,
      kvHeads: 1,
      heads: 2,
      headDim: 4,
      config: { numHiddenLayers: 3 },
      layerPart: () => ({ place: 0, part: 0, layerInPart: 0 }),
    } as unknown as LlamaDecoder;
    return { cache, decoder };
  };
  const pick = (qFirst: [number, number], budget: number) => {
    const { cache, decoder } = setup();
    const quest = new QuestDecode(decoder, { budget, pageSize: 4, denseLayers: 1 }, 32);
    const q = be.matrix(1, 8);
    be.write(q, Float32Array.from([qFirst[0], 0, 0, 0, qFirst[1], 0, 0, 0]));
    const hook = quest.decodeOptions().attentionKeys!;
    assert.equal(hook(0, 17, q, cache, 0), undefined, 'the first layer stays dense');
    const keys = hook(1, 17, q, cache, 0)!;
    const list = Array.from(be.readInts(keys.indices!)).slice(0, keys.count);
    quest.free();
    be.free(q);
    be.free(cache);
    return list;
  };

  it("scores pages by sum_d max(q_d min_d, q_d max_d), summed over the group's heads, and attends to the top pages and the page being written", () => {
    // q . k bounds with q = (1, 0, 0, 0) per head: page 2 (5) beats page 3 (2), page 1 (1), page 0 (0).
    assert.deepEqual(pick([1, 1], 8), [8, 9, 10, 11, 16, 17]);
    // q = (-1, 0, 0, 0): the bound of page 3 is max(3, -2) = 3, although its mean key is negative.
    assert.deepEqual(pick([-1, -1], 8), [12, 13, 14, 15, 16, 17]);
    // The heads of a group add their scores: (2, -1) gives page 2: 10 - 5 = 5, page 3: 4 + 3 = 7.
    assert.deepEqual(pick([2, -1], 8), [12, 13, 14, 15, 16, 17]);
    // Three pages: the two best and the current one, in slot order.
    assert.deepEqual(pick([1, 1], 12), [8, 9, 10, 11, 12, 13, 14, 15, 16, 17]);
  });

  it('page bounds and scores match a plain computation', () => {
    const { cache } = setup();
    const b = be.matrix(8, 8);
    be.pageBounds(b, cache, 0, { pageSize: 4, page0: 0, nPages: 5 });
    const got = be.read(b);
    for (let p = 0; p < 5; p++) {
      const vals = firsts.slice(p * 4, Math.min(18, p * 4 + 4));
      assert.deepEqual([got[p * 8], got[p * 8 + 4]], [Math.min(...vals), Math.max(...vals)], `page ${p}`);
    }
    const q = be.matrix(1, 8),
      out = be.matrix(1, 5);
    be.write(q, Float32Array.from([2, 0, 0, 0, -1, 0, 0, 0]));
    be.pageScores(out, q, b, { heads: 2, kvHeads: 1, nPages: 5 });
    assert.deepEqual(Array.from(be.read(out)), [0, 1, 5, 7, 0]);
    assert.throws(() => be.pageScores(be.matrix(1, 9), q, b, { heads: 2, kvHeads: 1, nPages: 9 }), /pageScores: bounds are 8x8, not 1 x at least 9 pages/);
    be.free(b);
    be.free(q);
    be.free(out);
    be.free(cache);
  });
});

describe('FastV and PyramidDrop', () => {
  let be: WasmBackend;
  before(async () => {
    be = await WasmBackend.create({ threads: 2 });
  });
  after(async () => {
    await be.close();
  });
  const dir = fixture('llava-tiny');
  const req = { images: [path.join(dir, 'image.png')], prompt: 'What is shown in this image?' };

  it('FastV keeps, after layer K - 1 = 1, the half of the visual tokens the last token attends to most (against the head-mean attention goldens)', async () => {
    const ck = Checkpoint.open(dir),
      g = Checkpoint.open(path.join(dir, 'golden.safetensors'));
    const cfg = loadConfig(dir).config as LlavaConfig;
    const m = await LlavaModel.load(new WeightLoader(be, ck, dir), cfg);
    const dec = m.language;
    const ids = Array.from(readTensorInt(g, 'input_ids')),
      S = ids.length;
    const visual = ids.flatMap((t, i) => (t === cfg.imageTokenIndex ? [i] : []));
    const x = be.matrix(S, cfg.text.hiddenSize);
    be.write(x, readTensorF32(g, 'llm.inputs_embeds'));
    const cache = dec.newCache();
    const drop = new LayerDrop(dec, visual, fastVStages(2, 0.5), S);
    dec.forward(
      x,
      cache,
      0,
      ids.map((_, i) => i),
      drop.prefillOptions(0, S),
    );
    const att = readTensorF32(g, 'llm.last_token_attention_mean').subarray(S, 2 * S); // layer 1
    const want = topKInOrder(
      visual.map((j) => att[j]),
      32,
    ).map((i) => visual[i]);
    assert.deepEqual(drop.keptAt.get(1), want);
    assert.equal(drop.visualPerStep, 32);
    // Layers 0 and 1 hold all 82 prompt rows, layer 2 the 50 kept: a step at slot 82 reads (83 + 83 + 51) / 3.
    assert.equal(drop.rowsPerStep(S), (83 + 83 + 51) / 3);
    dec.freeCache(cache);
    be.free(x);
    ck.close();
    g.close();
  });

  it('PyramidDrop stages at L/4, L/2, 3L/4 keeping lambda of what is left; FastV checks its settings', () => {
    const st = pyramidDropStages(32);
    assert.deepEqual(
      st.map((s) => s.layer),
      [7, 15, 23],
    );
    let n = 576;
    n = st.reduce((a, s) => s.keep(a), n);
    assert.equal(n, 72);
    assert.deepEqual(
      pyramidDropStages(3).map((s) => s.layer),
      [0, 1],
    );
    assert.throws(() => fastVStages(2, 1), /FastV ratio 1 must be in \[0, 1\)/);
  });

  it('a later turn continues the pruned cache: the same logits as one prefill of both turns that drops the same tokens', async () => {
    const ck = Checkpoint.open(dir),
      g = Checkpoint.open(path.join(dir, 'golden.safetensors'));
    const cfg = loadConfig(dir).config as LlavaConfig;
    const m = await LlavaModel.load(new WeightLoader(be, ck, dir), cfg);
    const dec = m.language,
      H = cfg.text.hiddenSize;
    const ids = Array.from(readTensorInt(g, 'input_ids')),
      S = ids.length,
      T = 5;
    const visual = ids.flatMap((t, i) => (t === cfg.imageTokenIndex ? [i] : []));
    const embeds = readTensorF32(g, 'llm.inputs_embeds');
    const x = be.matrix(S, H),
      y = be.matrix(T, H),
      xy = be.matrix(S + T, H);
    be.write(x, embeds);
    be.write(y, embeds.subarray((S - T) * H, S * H)); // the next turn's rows: any text rows will do
    be.write(xy, Float32Array.from([...embeds.subarray(0, S * H), ...embeds.subarray((S - T) * H, S * H)]));
    const range = (a: number, n: number) => Array.from({ length: n }, (_, i) => a + i);
    // Turn 1 prunes; turn 2 is prefilled over the pruned cache in one pass.
    const c1 = dec.newCache();
    const drop = new LayerDrop(dec, visual, fastVStages(2, 0.5), S);
    dec.forward(x, c1, 0, range(0, S), drop.prefillOptions(0, S));
    assert.deepEqual(drop.layout.dropped, [0, 0, 32]);
    assert.equal(drop.layout.end, visual[visual.length - 1] + 1);
    const cont = new PrunedCacheContinuation(drop.layout);
    const got = dec.forward(y, c1, S, range(S, T), cont.prefillOptions()).slice();
    // Reference: both turns in one prefill, dropping after layer 1 exactly the visual rows turn 1 dropped.
    const kept = new Set(drop.keptAt.get(1)),
      isVisual = new Set(visual);
    const c2 = dec.newCache();
    const want = dec
      .forward(xy, c2, 0, range(0, S + T), { keepRows: (layer) => (layer === 1 ? range(0, S + T).filter((i) => !isVisual.has(i) || kept.has(i)) : null) })
      .slice();
    assert.ok(maxAbsDiff(got, want) < 1e-4, `one-pass continuation vs reference: ${maxAbsDiff(got, want)}`);
    // And the same rows fed one decode step at a time over another pruned cache.
    const c3 = dec.newCache();
    be.write(x, embeds); // forward() used x and y as its residual stream
    be.write(y, embeds.subarray((S - T) * H, S * H));
    const drop3 = new LayerDrop(dec, visual, fastVStages(2, 0.5), S);
    dec.forward(x, c3, 0, range(0, S), drop3.prefillOptions(0, S));
    const cont3 = new PrunedCacheContinuation(drop3.layout);
    let step = new Float32Array(0);
    for (let i = 0; i < T; i++) step = dec.forward(y.view(i, 1), c3, S + i, [S + i], cont3.decodeOptions()).slice();
    assert.ok(maxAbsDiff(step, want) < 1e-4, `step by step vs reference: ${maxAbsDiff(step, want)}`);
    assert.deepEqual(cont.visualPerLayer(), [64, 64, 32]);
    for (const c of [c1, c2, c3]) dec.freeCache(c);
    for (const mm of [x, y, xy]) be.free(mm);
    ck.close();
    g.close();
  });

  it('through generate() and sessions: R = 0 is the dense path exactly; R = 0.5 prunes, and later questions see only what the first kept', async () => {
    const model = await VisionLanguageModel.load(dir, { backend: be });
    const dense = await model.generate(req, { maxNewTokens: 8, eosTokenIds: [] });
    const keepAll = await model.generate(req, { maxNewTokens: 8, eosTokenIds: [], decode: fastV(2, 0) });
    assert.deepEqual(keepAll.ids, dense.ids);
    const half = await model.generate(req, { maxNewTokens: 8, eosTokenIds: [], decode: fastV() });
    assert.equal(half.ids.length, 8);
    assert.equal(half.stats.visualTokensRetrieved, 32);
    assert.ok(half.stats.kvBytesPerStep < dense.stats.kvBytesPerStep);
    const pd = await model.generate(req, { maxNewTokens: 4, eosTokenIds: [], decode: pyramidDrop() });
    assert.equal(pd.stats.visualTokensRetrieved, 16);
    const image = [path.join(dir, 'image.png')];
    const questions = ['What is shown in this image?', 'What colour is it?', 'Is it big?'];
    for (const mode of ['chat', 'independent'] as const) {
      // Keeping everything: a FastV session answers as a dense one, turn by turn.
      const sd = model.session(image, { mode }),
        sk = model.session(image, { mode });
      for (const q of questions) {
        const a = await sd.ask(q, { maxNewTokens: 6, eosTokenIds: [] });
        const b = await sk.ask(q, { maxNewTokens: 6, eosTokenIds: [], decode: fastV(2, 0) });
        assert.deepEqual(b.ids, a.ids, `${mode}: ${q}`);
      }
      sd.close();
      sk.close();
      // Dropping half: the first question prunes, the later ones continue the pruned cache.
      const s = model.session(image, { mode });
      const first = await s.ask(questions[0], { maxNewTokens: 6, eosTokenIds: [], decode: fastV() });
      assert.deepEqual(first.ids, half.ids.slice(0, 6));
      const later = await s.ask(questions[1], { maxNewTokens: 6, eosTokenIds: [], decode: fastV() });
      assert.deepEqual(later.stats.visualTokensPerLayer, { min: 32, mean: (64 + 64 + 32) / 3, max: 64 });
      assert.equal(later.stats.imageCached, true);
      await assert.rejects(
        s.ask(questions[2], { maxNewTokens: 2 }),
        /cache was pruned inside the first question's prefill \(FastV \/ PyramidDrop\): every later question must use such a method too \(got dense\)/,
      );
      // The refused question leaves the session usable.
      const again = await s.ask(questions[2], { maxNewTokens: 2, decode: fastV() });
      assert.equal(again.stats.imageCached, true);
      s.close();
    }
    const late = model.session(image);
    await late.ask('hi', { maxNewTokens: 2 });
    await assert.rejects(
      late.ask('and?', { maxNewTokens: 2, decode: fastV() }),
      /fastv\(K=2, R=0.5\) drops tokens inside the prefill: it must prune the session's first question, not a later one/,
    );
    late.close();
    await model.close();
  });
});
