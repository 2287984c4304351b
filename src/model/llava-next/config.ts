// The config of a LLaVA-NeXT checkpoint (`llava_next`): LLaVA's fields plus the anyres grid
// (`image_grid_pinpoints`, each (height, width)).
import { Fields } from '../../formats/config.js';
import { LlavaConfig, parseLlava } from '../llava/config.js';

export interface LlavaNextConfig extends LlavaConfig {
  modelType: 'llava_next';
  /** Candidate resolutions [height, width] (the processor's own list decides; this one must agree). */
  imageGridPinpoints: [number, number][];
}

export function parseLlavaNext(f: Fields): LlavaNextConfig {
  const base = parseLlava(f, 'llava_next');
  if (base.visionFeatureSelectStrategy !== 'default') {
    throw f.error(
      'vision_feature_select_strategy',
      `"${base.visionFeatureSelectStrategy}" is not supported for LLaVA-NeXT (only "default": the class token is dropped from every tile)`,
    );
  }
  const raw = f.obj['image_grid_pinpoints'];
  const ok = Array.isArray(raw) && raw.length > 0 && raw.every((p) => Array.isArray(p) && p.length === 2 && p.every((v) => Number.isSafeInteger(v) && v > 0));
  if (!ok) throw f.error('image_grid_pinpoints', 'expected a non-empty list of [height, width] pairs of positive integers');
  const tile = base.vision.imageSize;
  const pins = (raw as [number, number][]).map(([h, w]) => [h, w] as [number, number]);
  const off = pins.find(([h, w]) => h % tile !== 0 || w % tile !== 0);
  if (off)
    throw f.error(
      'image_grid_pinpoints',
      `[${off.join(', ')}] is not a multiple of the tile size ${tile} (vision_config.image_size): no whole grid of tiles fits it`,
    );
  const P = tile / base.vision.patchSize;
  // The fewest tokens an image takes: the base tile, and at least one grid row with its newline.
  return { ...base, modelType: 'llava_next', imageGridPinpoints: pins, imageFacts: { ...base.imageFacts, minTokens: P * P + 2 } };
}
