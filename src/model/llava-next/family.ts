// The LLaVA-NeXT family (LlavaNextForConditionalGeneration, llava-hf layout): anyres tiles through
// LLaVA's tower and projector, unpadding and image_newline rows; one placeholder token per row.
import path from 'node:path';
import { Fields } from '../../formats/config.js';
import { ImageError, pixelsToRgb } from '../../io/image.js';
import { Family, familyRow } from '../family.js';
import { imagePlaceholder, repeatedPlaceholderLayout } from '../prompt-layout.js';
import { LlavaNextConfig, parseLlavaNext } from './config.js';
import { LlavaNextImage, LlavaNextModel, anyresLayoutOf } from './model.js';
import { anyresTokenCount, llavaNextPreprocess, parseLlavaNextProcessorConfig } from './processor.js';

export const llavaNext: Family<LlavaNextConfig> = {
  name: 'llava-next',
  architectures: ['LlavaNextForConditionalGeneration'],
  modelTypes: ['llava_next'],
  parse: (json, source) => parseLlavaNext(new Fields(json, source, '')),
  describe: (c) => {
    const P = c.vision.imageSize / c.vision.patchSize;
    return {
      family: `llava-next: CLIP vision tower on anyres tiles, MLP projector, image_newline, ${c.text.modelType} decoder`,
      parts: [
        `vision:       CLIP ${c.vision.numHiddenLayers} layers, hidden ${c.vision.hiddenSize}, ${c.vision.numAttentionHeads} heads, tile ${c.vision.imageSize}, patch ${c.vision.patchSize}, class-token salience per tile`,
        `tiles:        base image + grid of the best of ${c.imageGridPinpoints.map(([h, w]) => `${h}×${w}`).join(', ')} (height × width)`,
        `connector:    MLP projector (${c.projectorHiddenAct}), ${P * P} tokens per tile, unpadded, image_newline after each grid row`,
        `language:     ${c.text.modelType} ${c.text.numHiddenLayers} layers, hidden ${c.text.hiddenSize}, ${c.text.numAttentionHeads} heads / ${c.text.numKeyValueHeads} KV heads, vocab ${c.text.vocabSize}, context ${c.text.maxPositionEmbeddings}`,
      ],
    };
  },
  processorFiles: () => ['preprocessor_config.json'],
  imageProcessor: (c, files, dir, maxPixels) => {
    const file = path.join(dir, 'preprocessor_config.json');
    const json = files['preprocessor_config.json'];
    if (json === null || json === undefined) throw new ImageError(`${file}: no such file (a LLaVA-NeXT model folder needs its image processor config)`);
    const cfg = parseLlavaNextProcessorConfig(json, file);
    const S = c.vision.imageSize,
      P = S / c.vision.patchSize;
    if (cfg.tileSize !== S)
      throw new ImageError(`${file}: crop_size ${cfg.tileSize} differs from the vision tower's image_size ${S} (config.json vision_config.image_size)`);
    if (JSON.stringify(cfg.imageGridPinpoints) !== JSON.stringify(c.imageGridPinpoints)) {
      throw new ImageError(
        `${file}: image_grid_pinpoints ${JSON.stringify(cfg.imageGridPinpoints)} differ from config.json's ${JSON.stringify(c.imageGridPinpoints)}: the processor would cut a grid the model does not expect`,
      );
    }
    const biggest = Math.max(...cfg.imageGridPinpoints.map(([h, w]) => h * w));
    if (biggest > maxPixels) {
      throw new ImageError(`${file}: image_grid_pinpoints reach ${biggest} pixels, more than the image limit maxPixels of ${maxPixels} (--max-image-pixels)`);
    }
    return {
      process: (image, limit): LlavaNextImage => {
        const a = llavaNextPreprocess(image, cfg, limit);
        const geometry = anyresLayoutOf(a, P);
        return { ...a, ...geometry, dense: { rows: anyresTokenCount(a, P), tileRows: geometry.tilePatches.map((t) => t.length) } };
      },
      tileView: (image, tile) => pixelsToRgb(image.tiles[tile], S, S, cfg.clip),
    };
  },
  promptLayout: (c, tokenizer, dir) =>
    repeatedPlaceholderLayout(imagePlaceholder(c.imageTokenIndex, c.imageFacts.tokenField, tokenizer, dir), c.imageTokenIndex),
  load: async (loader, c, placement) => {
    const m = await LlavaNextModel.load(loader, c, placement);
    return { decoder: m.language, encoder: m };
  },
};

export default familyRow(llavaNext);
