// Clear errors for tile and grid settings a family cannot meet: each names the file and the field.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { VisionLanguageModel } from '../src/engine/vlm.js';
import { MetaBackend } from '../src/kernels/meta-backend.js';
import { editJson, fixture, modelVariant } from './helpers.js';

/** Loading the folder (on the shape-only backend) fails with a message matching every needle. */
async function refuses(dir: string, ...needles: (string | RegExp)[]): Promise<void> {
  await assert.rejects(VisionLanguageModel.load(dir, { backend: new MetaBackend() }), (e: Error) => {
    for (const n of needles) assert.ok(typeof n === 'string' ? e.message.includes(n) : n.test(e.message), `${e.message} lacks ${String(n)}`);
    return true;
  });
}

describe('tile and grid settings a family cannot meet', () => {
  it('llava-next: pinpoints that are not whole tiles, or that differ between config and processor', async () => {
    const dir = fixture('llava-next-tiny');
    await refuses(
      modelVariant(dir, (d) => editJson(d, 'config.json', (j) => (j.image_grid_pinpoints = [[84, 100]]))),
      path.join('config.json'),
      'image_grid_pinpoints: [84, 100] is not a multiple of the tile size 84',
    );
    await refuses(
      modelVariant(dir, (d) => editJson(d, 'preprocessor_config.json', (j) => (j.image_grid_pinpoints = [[168, 168]]))),
      'preprocessor_config.json: image_grid_pinpoints [[168,168]] differ from config.json',
    );
  });

  it('smolvlm: a tile size, token count or scale factor the tower does not have', async () => {
    const dir = fixture('smolvlm-tiny');
    await refuses(
      modelVariant(dir, (d) => editJson(d, 'preprocessor_config.json', (j) => (j.max_image_size = { longest_edge: 128 }))),
      "preprocessor_config.json: max_image_size.longest_edge 128 differs from the vision tower's tile of 64",
    );
    await refuses(
      modelVariant(dir, (d) => editJson(d, 'processor_config.json', (j) => (j.image_seq_len = 16))),
      'processor_config.json: image_seq_len 16 differs from the 4 tokens a tile gives',
    );
    await refuses(
      modelVariant(dir, (d) => editJson(d, 'config.json', (j) => (j.scale_factor = 3))),
      "scale_factor: 3 does not divide the tile's 4×4 patch grid",
    );
  });

  it('vila: a projector or feature selection VILA cannot lay out', async () => {
    const dir = fixture('vila-tiny');
    await refuses(
      modelVariant(dir, (d) => editJson(d, 'config.json', (j) => (j.mm_vision_select_feature = 'patch'))),
      'mm_vision_select_feature: "patch" drops the first SigLIP token',
    );
    await refuses(
      modelVariant(dir, (d) => editJson(d, 'config.json', (j) => (j.mm_projector_cfg.mm_projector_type = 'ldpnet'))),
      'mm_projector_cfg.mm_projector_type: "ldpnet" is not supported; supported here: mlp_downsample, mlp_downsample_3x3_fix, mlp2x_gelu, linear',
    );
    await refuses(
      modelVariant(dir, (d) => editJson(d, 'config.json', (j) => (j.mm_vision_select_layer = 7))),
      /mm_vision_select_layer: expected an integer in \[-3, 3\] other than 0/,
    );
  });
});
