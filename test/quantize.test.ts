// `sparsevila quantize` (round to nearest, AutoAWQ's quantizer and GEMM packing).
//
// - fp16 rounding as torch does it (round to nearest even, subnormals included): exact.
// - packing: AutoAWQ's own packed tensors of awq-gemm-linear are reproduced byte for byte from
//   their unpacked values.
// - the quantizer: every q in 0..15, |w - w^| <= scale / 2, plus one fp16 rounding of w^ and the
//   roundings of w / scale and of the scale itself: s / 64 bounds them).
// - round trip on the default model: the written checkpoint holds exactly the tensors computed in
//   memory; reloaded, its prefill logits are bit-identical to those of the same model with the
//   dequantized weights stored densely in f32 (the int4 GEMM computes with exactly those weights),
//   a decode step within 1e-3 (15-bit activations; measured 2e-4), and generation picks the same
//   tokens.
import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { Checkpoint } from '../src/formats/checkpoint.js';
import { TensorToWrite, readTensorF32, readTensorInt, writeSafetensors } from '../src/formats/safetensors.js';
import { dequantizeInt4, fakeQuantizeInt4, packAwqGemm, quantizeInt4, roundF16 } from '../src/quantize/int4.js';
import { CalibrationSample, awqFor, checkpointTensors, decoderLinearGroups, quantizeModel } from '../src/quantize/quantize-model.js';
import { clipSearch } from '../src/quantize/awq.js';
import { WasmBackend } from '../src/kernels/wasm-backend.js';
import { makeScene, renderScene, splitSeeds } from '../src/data/scenes.js';
import { VisionLanguageModel } from '../src/engine/vlm.js';
import { DEFAULT_MODEL_DIR } from '../src/default-model.js';
import { Rng, assertClose, absRel, f16ToNumber, f32ToF16, fixture, tempDir } from './helpers.js';

const cli = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));

/** The logits of every row of a prefill of `rows` (token ids) from an empty cache. */
function logits(m: VisionLanguageModel, rows: number[]): Float32Array {
  const d = m.decoder;
  const x = m.backend.matrix(rows.length, d.hidden, d.place);
  const cache = d.newCache();
  try {
    d.embed(x, rows);
    const all = rows.map((_, i) => i);
    return Float32Array.from(d.forward(x, cache, 0, all, { logitRows: all }));
  } finally {
    d.freeCache(cache);
    m.backend.free(x);
  }
}

describe('quantize: the 4-bit quantizer and AutoAWQ GEMM packing', () => {
  it('rounds to fp16 as torch does (ties to even, subnormals, overflow)', () => {
    const rng = new Rng(7);
    const values = [0, -0, 1, 65504, 65519.9, 65520, 2 ** -14, 2 ** -24, 2 ** -25, 3 * 2 ** -25, 1 + 2 ** -11, 1 + 3 * 2 ** -11, 6.1e-5, -7.7e-6];
    for (let i = 0; i < 20000; i++) values.push(Math.fround(rng.uniform(-1, 1) * 2 ** rng.int(30) * 2 ** -20));
    for (const v of values) {
      const want = f16ToNumber(f32ToF16(Math.fround(v)));
      const got = roundF16(Math.fround(v));
      if (!Object.is(got, want) && !(got === want)) assert.fail(`roundF16(${v}) = ${got}, fp16 gives ${want}`);
    }
  });

  it("packing reproduces AutoAWQ's own qweight, qzeros and scales of awq-gemm-linear byte for byte", () => {
    const dir = fixture('awq/awq-gemm-linear');
    const ck = Checkpoint.open(dir),
      g = Checkpoint.open(path.join(dir, 'golden.safetensors'));
    const N = 192,
      K = 256,
      G = 128;
    const q = Uint8Array.from(readTensorInt(g, 'q')),
      zeros = Uint8Array.from(readTensorInt(g, 'zeros'));
    const sc = readTensorF32(ck, 'scales'); // [K/G][N]
    const scales = new Float32Array(N * 2);
    for (let n = 0; n < N; n++) for (let gg = 0; gg < 2; gg++) scales[n * 2 + gg] = sc[gg * N + n];
    const p = packAwqGemm({ N, K, G, q, zeros, scales });
    const raw = (name: string) => {
      const b = new Uint8Array(ck.info(name).byteLength);
      ck.readInto(name, b);
      return b;
    };
    assert.deepEqual(p.qweight, raw('qweight'));
    assert.deepEqual(p.qzeros, raw('qzeros'));
    assert.deepEqual(p.scales, raw('scales'));
    // And its dequantized weights are AutoAWQ's fp16 ones.
    assert.deepEqual(dequantizeInt4({ N, K, G, q, zeros, scales }), readTensorF32(g, 'weight_dequant'));
    ck.close();
    g.close();
  });

  it('quantizes every group within half a step (plus an fp16 rounding); q stays in 0..15', () => {
    const rng = new Rng(11);
    const N = 24,
      K = 256,
      G = 64;
    const w = rng.f32(N * K).map((v, i) => (i % 97 === 0 ? v * 8 : v * 0.05)); // outliers
    const t = quantizeInt4(w, N, K, G);
    const wh = dequantizeInt4(t);
    for (let i = 0; i < N * K; i++) {
      assert.ok(t.q[i] <= 15);
      const s = t.scales[Math.floor(i / K) * (K / G) + Math.floor((i % K) / G)];
      const err = Math.abs(roundF16(w[i]) - wh[i]);
      assert.ok(err <= s / 2 + s / 64 + Math.abs(wh[i]) * 2 ** -11, `w[${i}]: |${w[i]} - ${wh[i]}| = ${err} > half a step ${s / 2}`);
    }
  });
});

// AWQ's clip search computes each candidate's error as a quadratic form of the group's Gram
// matrix on the backend (f32). Reference: the direct error sum_t (x_t · (q(clamp(w)) - w))^2 in
// doubles for every shrink. The shrink chosen for each row and group must be the reference's best,
// or within 1e-4 (relative) of its error: a near tie that f32 sums may order either way.
describe('quantize: AWQ clip search', () => {
  it("picks each row and group's best shrink, as the direct search in doubles does", async () => {
    const be = await WasmBackend.create({ threads: 2 });
    try {
      for (const [N, K, G, T] of [
        [24, 256, 64, 96],
        [10, 384, 128, 200],
      ]) {
        const rng = new Rng(N * 7919 + K * 31 + G);
        const w = rng.f32(N * K).map((v, i) => (i % 53 === 0 ? v * 0.6 : v * 0.05)); // outliers: clipping pays
        const X = rng.f32(T * K).map((v, i) => ((i % K) % 7 === 0 ? v * 4 : v));
        const clipped = Float32Array.from(w);
        clipSearch(clipped, N, K, G, X, be);
        let shrunk = 0;
        for (let n = 0; n < N; n++)
          for (let g0 = 0; g0 < K; g0 += G) {
            const wg = w.subarray(n * K + g0, n * K + g0 + G);
            const maxAbs = wg.reduce((a, v) => Math.max(a, Math.abs(v)), 0);
            const errOf = (mv: number) => {
              const q = dequantizeInt4(
                quantizeInt4(
                  wg.map((v) => Math.min(mv, Math.max(-mv, v))),
                  1,
                  G,
                  G,
                ),
              );
              let e = 0;
              for (let t = 0; t < T; t++) {
                let a = 0;
                for (let i = 0; i < G; i++) a += X[t * K + g0 + i] * (q[i] - wg[i]);
                e += a * a;
              }
              return e;
            };
            const errs = Array.from({ length: 10 }, (_, r) => errOf(maxAbs * (1 - r / 20)));
            const best = Math.min(...errs);
            const got = clipped.subarray(n * K + g0, n * K + g0 + G).reduce((a, v) => Math.max(a, Math.abs(v)), 0);
            const r = Math.round((1 - got / maxAbs) * 20);
            assert.ok(Math.abs(got - maxAbs * (1 - r / 20)) <= maxAbs * 1e-6, `row ${n} group ${g0 / G}: max ${got} is no shrink of ${maxAbs}`);
            assert.ok(errs[r] <= best * (1 + 1e-4), `row ${n} group ${g0 / G}: shrink ${r}/20 errs ${errs[r]}, best ${best} at ${errs.indexOf(best)}/20`);
            if (r > 0) shrunk++;
          }
        assert.ok(shrunk > 0 && shrunk < (N * K) / G, `${shrunk} of ${(N * K) / G} groups shrunk: the data should make some, not all, pay`);
      }
    } finally {
      await be.close();
    }
  });
});

describe('quantize: fake quantization for the searches', () => {
  it('fakeQuantizeInt4 is dequantizeInt4(quantizeInt4(w)) bit for bit (outliers, ties, subnormal scales)', () => {
    const rng = new Rng(23);
    const N = 40,
      K = 256,
      G = 64;
    // Outliers, tiny groups (subnormal fp16 scales) and values on exact steps (ties after / scale).
    const w = rng
      .f32(N * K)
      .map((v, i) => (i % 97 === 0 ? v * 8 : Math.floor(i / K) % 5 === 0 ? v * 1e-4 : Math.floor(i / K) % 7 === 0 ? Math.round(v * 30) / 60 : v * 0.05));
    const want = dequantizeInt4(quantizeInt4(w, N, K, G));
    const got = fakeQuantizeInt4(w, N, K, G);
    for (let i = 0; i < N * K; i++) assert.ok(Object.is(got[i], want[i]), `w[${i}] = ${w[i]}: ${got[i]}, expected ${want[i]}`);
    const inPlace = Float32Array.from(w);
    fakeQuantizeInt4(inPlace, N, K, G, inPlace);
    assert.deepEqual(inPlace, want);
  });
});

describe('quantize: a whole model, written and reloaded', () => {
  const models: VisionLanguageModel[] = [];
  after(async () => {
    for (const m of models) await m.close();
  });

  it('the default model round-trips: written tensors as computed, prefill logits bit-identical to its dequantized f32 twin, same tokens', async () => {
    const out = path.join(tempDir('sparsevila-q-'), 'q');
    const warnings: string[] = [];
    const r = await quantizeModel(DEFAULT_MODEL_DIR, out, { method: 'rtn', groupSize: 128, onWarning: (m) => warnings.push(m) });
    // down_proj reads 688 inputs: no group size divides them, so it stays bf16 (and says so).
    assert.equal(r.linears, 24);
    assert.equal(r.keptLinears, 4);
    assert.match(warnings.join('\n'), /4 of 28 decoder linears stay as stored: down_proj \(688 inputs, 256 outputs\)/);
    const config = JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8')) as { quantization_config: Record<string, unknown> };
    assert.deepEqual(config.quantization_config, {
      quant_method: 'awq',
      version: 'gemm',
      bits: 4,
      group_size: 128,
      zero_point: true,
      modules_to_not_convert: ['multi_modal_projector', 'vision_tower', ...[0, 1, 2, 3].map((l) => `language_model.model.layers.${l}.mlp.down_proj`)],
    });
    for (const f of ['tokenizer.json', 'chat_template.jinja', 'preprocessor_config.json']) assert.ok(fs.existsSync(path.join(out, f)), f);

    // The written tensors are the ones computed in memory.
    const { groups, ck } = await decoderLinearGroups(DEFAULT_MODEL_DIR);
    const quantized = new Map(
      groups
        .flatMap((g) => g.linears)
        .filter((l) => l.in % 128 === 0)
        .map((l) => [l.base, quantizeInt4(readTensorF32(ck, `${l.base}.weight`), l.out, l.in, 128)] as const),
    );
    const mem = checkpointTensors(ck, quantized);
    const written = Checkpoint.open(out);
    assert.deepEqual(written.names().sort(), mem.map((t) => t.name).sort());
    for (const t of mem) {
      const b = new Uint8Array(t.data.byteLength);
      written.readInto(t.name, b);
      assert.deepEqual(b, t.data, t.name);
    }
    written.close();

    // The in-memory quantized model as a dense twin: each 4-bit linear's dequantized weights in f32.
    const twin = path.join(tempDir('sparsevila-q-'), 'twin');
    fs.mkdirSync(twin);
    for (const f of fs.readdirSync(DEFAULT_MODEL_DIR)) if (f !== 'model.safetensors') fs.copyFileSync(path.join(DEFAULT_MODEL_DIR, f), path.join(twin, f));
    const twinTensors: TensorToWrite[] = ck.names().map((n) => {
      const q = quantized.get(n.replace(/\.weight$/, ''));
      if (q) return { name: n, dtype: 'F32', shape: [q.N, q.K], data: new Uint8Array(dequantizeInt4(q).buffer) };
      const data = new Uint8Array(ck.info(n).byteLength);
      ck.readInto(n, data);
      return { name: n, dtype: ck.info(n).dtype, shape: ck.info(n).shape, data };
    });
    writeSafetensors(path.join(twin, 'model.safetensors'), twinTensors);
    ck.close();

    const a = await VisionLanguageModel.load(out, { threads: 2 }),
      b = await VisionLanguageModel.load(twin, { threads: 2 });
    models.push(a, b);
    const ids = [1, 5, 9, 12, 20, 33, 41, 7, 3, 60, 2, 11];
    assert.deepEqual(logits(a, ids), logits(b, ids), 'prefill logits (int4 GEMM vs its dequantized f32 twin)');
    assertClose(logits(a, [ids[0]]), logits(b, [ids[0]]), absRel(1e-3, 0), 'one-row logits (int4 GEMV, 15-bit activations)');
    const img = path.join(fileURLToPath(new URL('../../samples/scenes', import.meta.url)), '3000000.png');
    const req = { images: [img], prompt: 'Which is further up, the red square or the orange square?' };
    const ra = await a.generate(req, { maxNewTokens: 6 }),
      rb = await b.generate(req, { maxNewTokens: 6 });
    assert.deepEqual(ra.ids, rb.ids);
    assert.equal(ra.text, 'red square');
  });

  it('a VILA folder (llm/, vision_tower/, mm_projector/) is written in its own layout, the config in llm/', async () => {
    const out = path.join(tempDir('sparsevila-q-'), 'vila');
    const warnings: string[] = [];
    // vila-tiny's hidden size is 48: only down_proj (128 inputs) can be grouped.
    const r = await quantizeModel(fixture('vila-tiny'), out, { method: 'rtn', groupSize: 32, onWarning: (m) => warnings.push(m) });
    assert.equal(r.linears, 3);
    assert.equal(r.keptLinears, 18);
    for (const f of ['config.json', 'llm/model.safetensors', 'llm/tokenizer.json', 'vision_tower/model.safetensors', 'mm_projector/model.safetensors'])
      assert.ok(fs.existsSync(path.join(out, f)), f);
    const llm = Checkpoint.open(path.join(out, 'llm'));
    assert.ok(llm.has('model.layers.0.mlp.down_proj.qweight') && !llm.has('model.layers.0.mlp.down_proj.weight'));
    assert.ok(llm.has('model.layers.0.self_attn.q_proj.weight'));
    llm.close();
    const qc = (JSON.parse(fs.readFileSync(path.join(out, 'llm', 'config.json'), 'utf8')) as { quantization_config: { modules_to_not_convert: string[] } })
      .quantization_config;
    assert.equal(qc.modules_to_not_convert.length, 18);
    assert.ok(qc.modules_to_not_convert.includes('model.layers.0.self_attn.q_proj'));
    const q = await VisionLanguageModel.load(out, { threads: 1 }),
      o = await VisionLanguageModel.load(fixture('vila-tiny'), { threads: 1 });
    models.push(q, o);
    const req = { images: [path.join(fixture('vila-tiny'), 'image.png')], prompt: 'What is this?' };
    const a = await q.generate(req, { maxNewTokens: 5 }),
      b = await o.generate(req, { maxNewTokens: 5 });
    assert.deepEqual(a.ids, b.ids);
  });

  it('the CLI writes a checkpoint inspect recognises; refuses an already quantized model and --out = --model', () => {
    const out = path.join(tempDir('sparsevila-q-'), 'cli');
    const r = spawnSync(process.execPath, [cli, 'quantize', '--method', 'rtn', '--out', out, '--group-size', '64'], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /wrote .*: 24 decoder linears in 4 bits \(rtn, group 64\), 4 kept as stored/);
    const i = spawnSync(process.execPath, [cli, 'inspect', out], { encoding: 'utf8' });
    assert.equal(i.status, 0, i.stderr);
    assert.match(i.stdout, /linears: +awq-gemm, dense/);
    const again = spawnSync(process.execPath, [cli, 'quantize', '--method', 'rtn', '--model', out, '--out', `${out}-2`], { encoding: 'utf8' });
    assert.equal(again.status, 1);
    assert.match(again.stderr, /"language_model\.model\.layers\.0\.self_attn\.q_proj" is already quantized/);
    const same = spawnSync(process.execPath, [cli, 'quantize', '--method', 'rtn', '--model', out, '--out', out], { encoding: 'utf8' });
    assert.equal(same.status, 1);
    assert.match(same.stderr, /--out must be another folder than --model/);
    const noCalib = spawnSync(process.execPath, [cli, 'quantize', '--model', DEFAULT_MODEL_DIR, '--out', `${out}-3`], { encoding: 'utf8' });
    assert.equal(noCalib.status, 1);
    assert.match(noCalib.stderr, /--method awq needs --calib FILE/);
  });

  // AWQ: folding the searched scales (before rounding, without clipping) must not change what the
  // model computes: the norm's weight (or the previous linear's rows) divided by s, the linears'
  // columns multiplied by it. Logits within 1e-4 of the model as stored.
  it('AWQ scale folding preserves the model before rounding; awq writes a checkpoint that answers', async () => {
    const calibration: CalibrationSample[] = [];
    for (const seed of splitSeeds('train', 4)) {
      const sc = makeScene(seed);
      const png = await renderScene(sc);
      calibration.push({ images: [png], prompt: sc.episode[0].question });
    }
    const { groups, ck } = await decoderLinearGroups(DEFAULT_MODEL_DIR);
    const r = await awqFor(DEFAULT_MODEL_DIR, groups, 128, ck, { calibration, maxRows: 1024, threads: 2, clip: false });
    assert.ok(
      r.alphas.some((a) => a !== null && a > 0),
      `the scale search chose alpha 0 everywhere: ${r.alphas.join(' ')}`,
    );
    const twin = path.join(tempDir('sparsevila-q-'), 'scaled');
    fs.mkdirSync(twin);
    for (const f of fs.readdirSync(DEFAULT_MODEL_DIR)) if (f !== 'model.safetensors') fs.copyFileSync(path.join(DEFAULT_MODEL_DIR, f), path.join(twin, f));
    const overrides = new Map(r.tensors);
    for (const [base, w] of r.weights) overrides.set(`${base}.weight`, w);
    writeSafetensors(path.join(twin, 'model.safetensors'), checkpointTensors(ck, new Map(), overrides));
    ck.close();
    const a = await VisionLanguageModel.load(DEFAULT_MODEL_DIR, { threads: 2 }),
      b = await VisionLanguageModel.load(twin, { threads: 2 });
    models.push(a, b);
    const ids = [1, 5, 9, 12, 20, 33, 41, 7, 3, 60, 2, 11];
    assertClose(logits(b, ids), logits(a, ids), absRel(1e-4, 0), 'logits with the AWQ scales folded in (no rounding)');

    const out = path.join(tempDir('sparsevila-q-'), 'awq');
    const q = await quantizeModel(DEFAULT_MODEL_DIR, out, { method: 'awq', groupSize: 128, calibration, maxRows: 1024, threads: 2 });
    assert.equal(q.linears, 24);
    const m = await VisionLanguageModel.load(out, { threads: 2 });
    models.push(m);
    const img = path.join(fileURLToPath(new URL('../../samples/scenes', import.meta.url)), '3000000.png');
    const res = await m.generate({ images: [img], prompt: 'Which is further up, the red square or the orange square?' }, { maxNewTokens: 6 });
    assert.equal(res.text, 'red square');
  });
});
