// The VILA1.5 family (NVlabs/VILA LlavaLlamaModel, model_type "llava_llama"): the folder layout
// with `llm/`, `vision_tower/` and `mm_projector/`, the image squashed (or padded) to the tower's
// size, VILA's tokenisation around `<image>` and its vicuna_v1 conversation format.
import path from 'node:path';
import { Fields } from '../../formats/config.js';
import { ImageError, clipPreprocess, parseClipImageProcessorConfig, pixelsToRgb } from '../../io/image.js';
import { RgbImage, checkRgbImage } from '../../io/image-types.js';
import { replacePlaceholders } from '../../io/prompt.js';
import { Family, PromptLayout, familyRow } from '../family.js';
import { VILA_IMAGE_TOKEN_INDEX, VilaConfig, parseVila } from './config.js';
import { VilaModel } from './model.js';

/** VILA's `expand2square`: the image centred on a square of `background` (offsets rounded down). */
export function expandToSquare(img: RgbImage, background: readonly [number, number, number]): RgbImage {
  checkRgbImage(img, 'expandToSquare');
  const { width: w, height: h } = img;
  if (w === h) return img;
  const S = Math.max(w, h);
  const data = new Uint8Array(S * S * 3);
  for (let i = 0; i < S * S; i++) data.set(background, i * 3);
  const x0 = Math.floor((S - w) / 2),
    y0 = Math.floor((S - h) / 2);
  for (let y = 0; y < h; y++) data.set(img.data.subarray(y * w * 3, (y + 1) * w * 3), ((y0 + y) * S + x0) * 3);
  return { width: S, height: S, data };
}

/**
 * VILA's `tokenizer_image_token`: the prompt is cut at each `<image>`, every chunk tokenised on
 * its own (so each starts with SentencePiece's "▁"), the BOS of every chunk but the first
 * dropped, and the chunks joined by the image's rows of IMAGE_TOKEN_INDEX.
 */
export function vilaPromptLayout(): PromptLayout {
  const placeholder = '<image>';
  return {
    placeholder,
    imageTokenId: VILA_IMAGE_TOKEN_INDEX,
    encode: (text, images, tokenizer) => {
      // Checks the count (one placeholder per image) with the shared message.
      replacePlaceholders(
        text,
        placeholder,
        images.map(() => ''),
      );
      const chunks = text.split(placeholder);
      const ids: number[] = [];
      chunks.forEach((chunk, i) => {
        const t = tokenizer.encode(chunk);
        ids.push(...(i > 0 && t[0] === tokenizer.bosTokenId ? t.slice(1) : t));
        if (i < images.length) for (let r = 0; r < images[i].rows; r++) ids.push(VILA_IMAGE_TOKEN_INDEX);
      });
      return ids;
    },
  };
}

/**
 * conv_vicuna_v1 (SeparatorStyle.TWO) as a chat template: the system text (VILA's default unless a
 * system message gives one) and a space, then "USER: " + message + " " and "ASSISTANT: " +
 * message + "</s>", ending with "ASSISTANT:" for the answer. Images are "<image>\n" before the
 * text, as run_vila.py puts them.
 */
export const VICUNA_V1_TEMPLATE = [
  "{%- if messages[0]['role'] == 'system' -%}",
  "{%- if messages[0]['content'] is string -%}{{ messages[0]['content'] }}{%- else -%}{%- for p in messages[0]['content'] -%}{%- if p['type'] == 'text' -%}{{ p['text'] }}{%- endif -%}{%- endfor -%}{%- endif -%}",
  '{%- else -%}{{ "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user\'s questions." }}{%- endif -%}',
  "{{ ' ' }}",
  '{%- for m in messages -%}',
  "{%- if m['role'] != 'system' -%}",
  "{%- if m['role'] == 'user' -%}{{ 'USER: ' }}{%- else -%}{{ 'ASSISTANT: ' }}{%- endif -%}",
  "{%- if m['content'] is string -%}{{ m['content'] }}{%- else -%}{%- for p in m['content'] -%}{%- if p['type'] == 'image' -%}{{ '<image>\\n' }}{%- else -%}{{ p['text'] }}{%- endif -%}{%- endfor -%}{%- endif -%}",
  "{%- if m['role'] == 'user' -%}{{ ' ' }}{%- else -%}{{ '</s>' }}{%- endif -%}",
  '{%- endif -%}',
  '{%- endfor -%}',
  "{%- if add_generation_prompt -%}{{ 'ASSISTANT:' }}{%- endif -%}",
].join('');

export const vila: Family<VilaConfig> = {
  name: 'vila',
  architectures: ['LlavaLlamaModel'],
  modelTypes: ['llava_llama'],
  parse: (json, source) => parseVila(new Fields(json, source, '')),
  describe: (c) => ({
    family: `vila: SigLIP vision tower, ${c.projector} projector, ${c.text.modelType} decoder (VILA1.5 layout)`,
    parts: [
      `vision:       SigLIP ${c.vision.numHiddenLayers} layers (hidden state ${c.selectLayer} read), hidden ${c.vision.hiddenSize}, ${c.vision.numAttentionHeads} heads, image ${c.vision.imageSize}, patch ${c.vision.patchSize}, column-mean salience`,
      `connector:    ${c.projector}: ${c.imageFacts.minTokens} tokens per image`,
      `language:     ${c.text.modelType} ${c.text.numHiddenLayers} layers, hidden ${c.text.hiddenSize}, ${c.text.numAttentionHeads} heads / ${c.text.numKeyValueHeads} KV heads, vocab ${c.text.vocabSize}, context ${c.text.maxPositionEmbeddings}`,
    ],
  }),
  weightFolders: () => [
    { folder: 'llm', prefix: 'llm.' },
    { folder: 'vision_tower', prefix: 'vision_tower.' },
    { folder: 'mm_projector', prefix: 'mm_projector.' },
  ],
  textFolder: () => 'llm',
  defaultChatTemplate: () => VICUNA_V1_TEMPLATE,
  processorFiles: () => ['vision_tower/preprocessor_config.json'],
  imageProcessor: (c, files, dir, maxPixels) => {
    const file = path.join(dir, 'vision_tower', 'preprocessor_config.json');
    const json = files['vision_tower/preprocessor_config.json'];
    if (json === null || json === undefined)
      throw new ImageError(`${file}: no such file (a VILA model folder needs its vision tower's image processor config)`);
    const cfg = parseClipImageProcessorConfig(json, file);
    const S = c.vision.imageSize;
    if (S * S > maxPixels)
      throw new ImageError(`${file}: the tower's ${S}×${S} images are more than the image limit maxPixels of ${maxPixels} (--max-image-pixels)`);
    // VILA resizes with PIL's default (bicubic) to the tower's size; the processor's own resize is then a no-op.
    const squash = { ...cfg, doResize: true, size: { height: S, width: S }, resample: 'bicubic' as const, doCenterCrop: false };
    const background = cfg.imageMean.map((m) => Math.trunc(m * 255)) as [number, number, number];
    const tokens = c.imageFacts.minTokens;
    return {
      process: (image, limit) => {
        const side = Math.max(image.width, image.height);
        if (c.imageAspectRatio === 'pad' && side * side > limit) {
          throw new ImageError(
            `padding the ${image.width}×${image.height} image to a ${side}×${side} square (image_aspect_ratio "pad") is more than the image limit maxPixels of ${limit}`,
          );
        }
        const square = c.imageAspectRatio === 'pad' ? expandToSquare(image, background) : image;
        return { tiles: [clipPreprocess(square, squash, limit).data], dense: { rows: tokens, tileRows: [tokens] } };
      },
      tileView: (image, tile) => pixelsToRgb(image.tiles[tile], S, S, cfg),
    };
  },
  promptLayout: () => vilaPromptLayout(),
  load: async (loader, c, placement) => {
    const m = await VilaModel.load(loader, c, placement);
    return { decoder: m.language, encoder: m };
  },
};

export default familyRow(vila);
