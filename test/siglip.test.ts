// SigLIP vision tower parity with the transformers goldens of siglip-tiny (SiglipVisionModel,
// float32 weights, f32 math): hidden states of every layer, post_layernorm, column-mean salience.
// Tolerance: 1e-4 max abs for activations and salience (the fixtures' suggested f32 check).
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { Checkpoint, readTensorF32 } from '../src/formats/safetensors.js';
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
});
