// The LLaVA family (LlavaForConditionalGeneration, llava-hf layout): a CLIP tower whose selected
// hidden state goes through a two-layer MLP projector; one image is one tile, each selected feature
// row one image token.
import path from 'node:path';
import { ClipImageProcessorConfig, ImageError, clipPreprocess, parseClipImageProcessorConfig, pixelsToRgb } from '../../io/image.js';
import { pixels } from '../../io/image-types.js';
import { Family, ImageProcessor, ProcessedImage, familyRow } from '../family.js';
import { imagePlaceholder, repeatedPlaceholderLayout } from '../prompt-layout.js';
import { LlavaConfig, parseLlava } from './config.js';
import { LlavaModel } from './model.js';
import { Fields } from '../../formats/config.js';

/** The processor must output what the tower takes (and resize within the pixel limit). */
function checkImageProcessor(p: ClipImageProcessorConfig, c: LlavaConfig, file: string, maxPixels: number): void {
  const px = c.vision.imageSize;
  const size = 'shortestEdge' in p.size ? { height: p.size.shortestEdge, width: p.size.shortestEdge } : p.size;
  if (p.doResize && size.height * size.width > maxPixels) {
    throw new ImageError(
      `${file}: size resizes images to ${size.width}×${size.height} = ${pixels(size.width * size.height)}, more than the image limit maxPixels of ${pixels(maxPixels)} (--max-image-pixels); the vision tower takes ${px}×${px}`,
    );
  }
  if (p.doCenterCrop) {
    if (p.cropSize.height !== px || p.cropSize.width !== px) {
      throw new ImageError(
        `${file}: crop_size ${p.cropSize.width}x${p.cropSize.height} differs from the vision tower's image_size ${px} (config.json vision_config.image_size)`,
      );
    }
  } else if (!p.doResize || 'shortestEdge' in p.size || p.size.height !== px || p.size.width !== px) {
    throw new ImageError(
      `${file}: without do_center_crop the resize must give the vision tower's ${px}×${px} (size {"height": ${px}, "width": ${px}}), but it is ${p.doResize ? JSON.stringify('shortestEdge' in p.size ? { shortest_edge: p.size.shortestEdge } : p.size) : 'off (do_resize false)'}`,
    );
  }
}

/** A CLIP/SigLIP-preprocessed image as one tile (LLaVA, and any single-tile family). */
export function singleTileProcessor(cfg: ClipImageProcessorConfig, size: number, tokens: number): ImageProcessor {
  return {
    process: (image, maxPixels): ProcessedImage => ({ tiles: [clipPreprocess(image, cfg, maxPixels).data], dense: { rows: tokens, tileRows: [tokens] } }),
    tileView: (image, tile) => pixelsToRgb(image.tiles[tile], size, size, cfg),
  };
}

export const llava: Family<LlavaConfig> = {
  name: 'llava',
  architectures: ['LlavaForConditionalGeneration'],
  modelTypes: ['llava'],
  parse: (json, source) => parseLlava(new Fields(json, source, '')),
  describe: (c) => ({
    family: `llava: CLIP vision tower, MLP projector, ${c.text.modelType} decoder`,
    parts: [
      `vision:       CLIP ${c.vision.numHiddenLayers} layers, hidden ${c.vision.hiddenSize}, ${c.vision.numAttentionHeads} heads, image ${c.vision.imageSize}, patch ${c.vision.patchSize}, class-token salience`,
      `connector:    MLP projector (${c.projectorHiddenAct}), one token per ${c.visionFeatureSelectStrategy === 'full' ? 'token (class token kept)' : 'patch'}: ${c.imageFacts.minTokens} per image`,
      `language:     ${c.text.modelType} ${c.text.numHiddenLayers} layers, hidden ${c.text.hiddenSize}, ${c.text.numAttentionHeads} heads / ${c.text.numKeyValueHeads} KV heads, vocab ${c.text.vocabSize}, context ${c.text.maxPositionEmbeddings}`,
    ],
  }),
  processorFiles: () => ['preprocessor_config.json'],
  imageProcessor: (c, files, dir, maxPixels) => {
    const file = path.join(dir, 'preprocessor_config.json');
    const json = files['preprocessor_config.json'];
    if (json === null || json === undefined) throw new ImageError(`${file}: no such file (a llava model folder needs its image processor config)`);
    const cfg = parseClipImageProcessorConfig(json, file);
    checkImageProcessor(cfg, c, file, maxPixels);
    return singleTileProcessor(cfg, c.vision.imageSize, c.imageFacts.minTokens);
  },
  promptLayout: (c, tokenizer, dir) =>
    repeatedPlaceholderLayout(imagePlaceholder(c.imageTokenIndex, c.imageFacts.tokenField, tokenizer, dir), c.imageTokenIndex),
  load: async (loader, c, placement) => {
    const m = await LlavaModel.load(loader, c, placement);
    return { decoder: m.language, encoder: m };
  },
};

export default familyRow(llava);
