// The Idefics3 / SmolVLM family (Idefics3ForConditionalGeneration; SmolVLM-256M/500M/2.2B-Instruct
// as downloaded): image splitting into max_image_size tiles plus the global image, the SigLIP-style
// tower, the pixel-shuffle connector, and the prompt layout with <fake_token_around_image>,
// <row_r_col_c> and <global-img> around each tile's image tokens.
import path from 'node:path';
import { Fields } from '../../formats/config.js';
import { ImageError, pixelsToRgb } from '../../io/image.js';
import { pixels } from '../../io/image-types.js';
import { replacePlaceholders } from '../../io/prompt.js';
import { Family, ProcessedImage, familyRow } from '../family.js';
import { imagePlaceholder } from '../prompt-layout.js';
import { Idefics3Config, parseIdefics3 } from './config.js';
import { Idefics3Model } from './model.js';
import { idefics3ImageString, idefics3Preprocess, parseIdefics3ProcessorConfig } from './processor.js';

export const idefics3: Family<Idefics3Config> = {
  name: 'idefics3',
  architectures: ['Idefics3ForConditionalGeneration', 'SmolVLMForConditionalGeneration'],
  modelTypes: ['idefics3', 'smolvlm'],
  parse: (json, source) => parseIdefics3(new Fields(json, source, '')),
  describe: (c) => {
    const g = c.vision.imageSize / c.vision.patchSize;
    return {
      family: `idefics3: SigLIP vision tower on image tiles, pixel-shuffle connector, ${c.text.modelType} decoder`,
      parts: [
        `vision:       SigLIP ${c.vision.numHiddenLayers} layers, hidden ${c.vision.hiddenSize}, ${c.vision.numAttentionHeads} heads, tile ${c.vision.imageSize}, patch ${c.vision.patchSize}, column-mean salience`,
        `connector:    pixel shuffle ×${c.scaleFactor} + linear: ${(g / c.scaleFactor) ** 2} tokens per tile (a grid of tiles plus the global image)`,
        `language:     ${c.text.modelType} ${c.text.numHiddenLayers} layers, hidden ${c.text.hiddenSize}, ${c.text.numAttentionHeads} heads / ${c.text.numKeyValueHeads} KV heads, vocab ${c.text.vocabSize}, context ${c.text.maxPositionEmbeddings}`,
      ],
    };
  },
  processorFiles: () => ['preprocessor_config.json', 'processor_config.json'],
  imageProcessor: (c, files, dir, maxPixels) => {
    const file = path.join(dir, 'preprocessor_config.json');
    const json = files['preprocessor_config.json'];
    if (json === null || json === undefined) throw new ImageError(`${file}: no such file (an Idefics3 model folder needs its image processor config)`);
    const cfg = parseIdefics3ProcessorConfig(json, files['processor_config.json'] ?? null, file, path.join(dir, 'processor_config.json'));
    const S = c.vision.imageSize,
      perTile = c.imageFacts.minTokens;
    if (cfg.maxImageSize !== S) {
      throw new ImageError(
        `${file}: max_image_size.longest_edge ${cfg.maxImageSize} differs from the vision tower's tile of ${S} (config.json vision_config.image_size)`,
      );
    }
    if (cfg.imageSeqLen !== perTile) {
      throw new ImageError(
        `${path.join(dir, 'processor_config.json')}: image_seq_len ${cfg.imageSeqLen} differs from the ${perTile} tokens a tile gives ((image_size / patch_size / scale_factor)² in config.json)`,
      );
    }
    const longest = 'longestEdge' in cfg.size ? cfg.size.longestEdge : Math.max(cfg.size.height, cfg.size.width);
    if (longest * longest > maxPixels) {
      throw new ImageError(
        `${file}: size resizes images up to ${longest}×${longest} = ${pixels(longest * longest)}, more than the image limit maxPixels of ${pixels(maxPixels)} (--max-image-pixels)`,
      );
    }
    return {
      process: (image, limit): ProcessedImage => {
        const t = idefics3Preprocess(image, cfg, limit);
        if (t.tileSize !== S || t.pixelAttentionMask.some((m) => m.some((v) => v === 0))) {
          throw new ImageError(
            `the Idefics3 processor padded a tile of the ${image.width}×${image.height} image, which the engine does not run (every tile must be ${S}×${S})`,
          );
        }
        const n = t.tiles.length;
        return {
          tiles: t.tiles,
          dense: { rows: n * perTile, tileRows: new Array<number>(n).fill(perTile), grid: t.rows > 0 ? [t.rows, t.cols] : undefined },
        };
      },
      tileView: (image, tile) => pixelsToRgb(image.tiles[tile], S, S, cfg),
    };
  },
  promptLayout: (c, tokenizer, dir) => {
    const placeholder = imagePlaceholder(c.imageTokenId, 'image_token_id', tokenizer, dir);
    const marks = { image: placeholder, fake: '<fake_token_around_image>', global: '<global-img>' };
    return {
      placeholder,
      imageTokenId: c.imageTokenId,
      encode: (text, images, tok) =>
        tok.encode(
          replacePlaceholders(
            text,
            placeholder,
            images.map((im) => idefics3ImageString(im.grid?.[0] ?? 0, im.grid?.[1] ?? 0, im.tileRows, marks)),
          ),
        ),
    };
  },
  load: async (loader, c, placement) => {
    const m = await Idefics3Model.load(loader, c, placement);
    return { decoder: m.language, encoder: m };
  },
};

export default familyRow(idefics3);
