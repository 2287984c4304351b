// SigLIP vision tower parity with the transformers goldens of siglip-tiny (SiglipVisionModel,
// float32 weights, f32 math): hidden states of every layer, post_layernorm, column-mean salience.
// Tolerance: 1e-4 max abs for activations and salience (the fixtures' suggested f32 check).
// With the opt-in int16 vision matmuls: 2e-3 of each tensor's largest magnitude (measured 5.7e-4 to
// 6.8e-4; 12-bit per-row quantization of weights and activations).
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { readTensorF32 } from '../src/formats/safetensors.js';
import { Checkpoint } from '../src/formats/checkpoint.js';
import { WasmBackend } from '../src/kernels/wasm-backend.js';
import { WeightLoader } from '../src/model/weights.js';
import { VisionTransformer, SalienceRequest } from '../src/model/vit.js';
import { loadConfig } from '../src/model/registry.js';
import { SiglipTowerConfig } from '../src/model/vision-tower/family.js';
import { clipPreprocess, decodeImage, loadClipImageProcessorConfig } from '../src/io/image.js';
import { fixture, assertClose, absRel } from './helpers.js';

describe('siglip-tiny: SigLIP tower against the transformers goldens', () => {
  let be: WasmBackend;
  before(async () => {
    be = await WasmBackend.create({ threads: 2 });
  });
  after(async () => {
    await be.close();
  });
  const dir = fixture('siglip-tiny');

  it('preprocessing, hidden states, post_layernorm and column-mean salience match; the pooling head is left unused', async () => {
    const ck = Checkpoint.open(dir),
      g = Checkpoint.open(path.join(dir, 'golden.safetensors'));
    const cfg = loadConfig(dir).config as SiglipTowerConfig;
    const px = clipPreprocess(await decodeImage(path.join(dir, 'image.png')), loadClipImageProcessorConfig(dir)).data;
    assertClose(px, readTensorF32(g, 'pixel_values'), absRel(1e-6, 0), 'pixel_values');
    const loader = new WeightLoader(be, ck, dir);
    loader.skip((n) => n.startsWith('vision_model.head.'), 'the attention-pooling head');
    const tower = VisionTransformer.load(loader, cfg, 'vision_model.', 3, { postNorm: true });
    loader.checkAllUsed(ck.names());
    assert.equal(tower.tokens, 49);
    assert.equal(tower.classToken, false);
    const hs = readTensorF32(g, 'vision.hidden_states'),
      n = 49 * 64;
    const sal: SalienceRequest = { rows: 'mean' };
    const out = tower.encode(px, (i, x) => assertClose(be.read(x), hs.subarray(i * n, (i + 1) * n), absRel(1e-4, 0), `hidden state ${i}`), sal);
    assertClose(be.read(out), readTensorF32(g, 'vision.last_hidden_state'), absRel(1e-4, 0), 'last_hidden_state (post_layernorm)');
    assertClose(sal.result!, readTensorF32(g, 'vision.colmean_salience_last'), absRel(1e-5, 0), 'column-mean salience, last layer');
    // Every layer: the column mean of the golden attention maps.
    const att = readTensorF32(g, 'vision.attentions_mean');
    for (let l = 0; l < 3; l++) {
      const req: SalienceRequest = { rows: 'mean', layer: l };
      tower.encode(px, undefined, req);
      const want = Array.from({ length: 49 }, (_, j) => {
        let s = 0;
        for (let q = 0; q < 49; q++) s += att[l * 49 * 49 + q * 49 + j];
        return s / 49;
      });
      assertClose(req.result!, want, absRel(1e-5, 0), `column-mean salience, layer ${l}`);
    }
    assert.throws(() => tower.encode(px, undefined, { rows: 'cls' }), /class-token salience asked of a tower without a class token/);
    ck.close();
    g.close();
  });

  it('int16 vision matmuls: every hidden state, post_layernorm and salience within 2e-3 of their largest value', async () => {
    const ck = Checkpoint.open(dir),
      g = Checkpoint.open(path.join(dir, 'golden.safetensors'));
    const cfg = loadConfig(dir).config as SiglipTowerConfig;
    const px = clipPreprocess(await decodeImage(path.join(dir, 'image.png')), loadClipImageProcessorConfig(dir)).data;
    const loader = new WeightLoader(be, ck, dir, { visionCompute: 'int16' });
    loader.skip((n) => n.startsWith('vision_model.head.'), 'the attention-pooling head');
    const tower = VisionTransformer.load(loader, cfg, 'vision_model.', 3, { postNorm: true });
    const hs = readTensorF32(g, 'vision.hidden_states'),
      n = 49 * 64;
    const near = (got: ArrayLike<number>, want: Float32Array, what: string) => {
      const scale = want.reduce((a, v) => Math.max(a, Math.abs(v)), 0);
      const d = assertClose(got, want, absRel(2e-3 * scale, 0), what);
      // Quantized, so not the f32 result: the test would pass a stored-weight path by accident otherwise.
      assert.ok(d.maxAbs > 1e-6 * scale, `${what}: identical to f32 (int16 not used?)`);
    };
    const sal: SalienceRequest = { rows: 'mean' };
    const out = tower.encode(px, (i, x) => near(be.read(x), hs.subarray(i * n, (i + 1) * n), `int16 hidden state ${i}`), sal);
    near(be.read(out), readTensorF32(g, 'vision.last_hidden_state'), 'int16 last_hidden_state');
    near(sal.result!, readTensorF32(g, 'vision.colmean_salience_last'), 'int16 column-mean salience');
    ck.close();
    g.close();
  });
});
