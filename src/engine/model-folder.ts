// Everything in a model folder but the weights, read and checked once: config.json, the tokenizer,
// the chat template (parsed, and rendered on a sample conversation), preprocessor_config.json,
// generation_config.json, and how they fit together. Loading stops at the first problem; inspect
// lists them all (see Problems).
import path from 'node:path';
import { Problems } from '../base/problems.js';
import { pathExists } from '../base/files.js';
import { ConfigError, LlamaLikeConfig, LlavaConfig, ModelConfig, loadConfig } from '../formats/config.js';
import { TextTokenizer, readGenerationEos } from '../io/tokenizer.js';
import { ChatMessage, ChatTemplate, ChatTemplateError } from '../io/chat-template.js';
import { ClipImageProcessorConfig, ImageError, loadClipImageProcessorConfig } from '../io/image.js';
import { DEFAULT_IMAGE_LIMITS, ImageLimits, pixels } from '../io/image-types.js';
import { normaliseContent } from './request.js';

export interface ModelFiles {
  dir: string;
  config: ModelConfig;
  tokenizer: TextTokenizer | null;
  template: ChatTemplate | null;
  imageProcessor: ClipImageProcessorConfig | null;
  /** generation_config.json's eos_token_id (empty when absent). */
  generationEos: number[];
}

/** The decoder's config of a model config (the text_config of a llava). */
export function textConfigOf(config: ModelConfig): LlamaLikeConfig | null {
  if (config.modelType === 'llava') return config.text;
  if (config.modelType === 'llama' || config.modelType === 'qwen2') return config;
  return null;
}

/** The text a template must render for each image of a VLM (null for a text-only model). */
export function imageTokenString(config: ModelConfig, tokenizer: TextTokenizer | null, dir: string): string | null {
  if (config.modelType !== 'llava') return null;
  const id = config.imageTokenIndex;
  const t = tokenizer?.idToToken(id);
  if (t === undefined) throw new ConfigError(`${path.join(dir, 'config.json')}: image_token_index ${id} is not a token of the tokenizer (tokenizer.json)`);
  if (!tokenizer!.isAddedToken(id)) {
    throw new ConfigError(`${path.join(dir, 'config.json')}: image_token_index ${id} is ${JSON.stringify(t)}, a word of the tokenizer's vocabulary, not one of its added tokens (tokenizer.json "added_tokens"), as an image placeholder is`);
  }
  return t;
}

/** A one-image conversation as a VLM's processor would render it (for checking a template). */
export function sampleConversation(images: number, turns: 1 | 2): ChatMessage[] {
  const first: ChatMessage = { role: 'user', content: [...Array.from({ length: images }, () => ({ type: 'image' as const })), { type: 'text', text: 'What is in the picture?' }] };
  if (turns === 1) return [first];
  return [first, { role: 'assistant', content: [{ type: 'text', text: 'A cat.' }] }, { role: 'user', content: [{ type: 'text', text: 'What colour is it?' }] }];
}

/** Checks the image processor against the vision tower: what it outputs must be what the tower takes. */
function checkImageProcessor(p: ClipImageProcessorConfig, c: LlavaConfig, dir: string, limits: ImageLimits): void {
  const file = path.join(dir, 'preprocessor_config.json'), px = c.vision.imageSize;
  const size = 'shortestEdge' in p.size ? { height: p.size.shortestEdge, width: p.size.shortestEdge } : p.size;
  if (p.doResize && size.height * size.width > limits.maxPixels) {
    throw new ImageError(`${file}: size resizes images to ${size.width}×${size.height} = ${pixels(size.width * size.height)}, more than the image limit maxPixels of ${pixels(limits.maxPixels)} (--max-image-pixels); the vision tower takes ${px}×${px}`);
  }
  if (p.doCenterCrop) {
    if (p.cropSize.height !== px || p.cropSize.width !== px) {
      throw new ImageError(`${file}: crop_size ${p.cropSize.width}x${p.cropSize.height} differs from the vision tower's image_size ${px} (config.json vision_config.image_size)`);
    }
  } else if (!p.doResize || 'shortestEdge' in p.size || p.size.height !== px || p.size.width !== px) {
    throw new ImageError(`${file}: without do_center_crop the resize must give the vision tower's ${px}×${px} (size {"height": ${px}, "width": ${px}}), but it is ${p.doResize ? JSON.stringify('shortestEdge' in p.size ? { shortest_edge: p.size.shortestEdge } : p.size) : 'off (do_resize false)'}`);
  }
}

/**
 * Reads every file of a model folder but the weights, reporting each problem to `problems` (which
 * throws the first when loading, or lists them all when inspecting). Returns what could be read.
 */
export function readModelFiles(dir: string, problems: Problems, limits: ImageLimits = DEFAULT_IMAGE_LIMITS): Partial<ModelFiles> & { dir: string } {
  const out: Partial<ModelFiles> & { dir: string } = { dir };
  const config = problems.attempt(() => loadConfig(dir));
  if (config?.modelType === 'clip_vision_model') {
    problems.report(new ConfigError(`${path.join(dir, 'config.json')}: model_type "clip_vision_model" is a vision encoder alone; load a llava checkpoint that contains it`));
  }
  if (config) out.config = config;
  const text = config ? textConfigOf(config) : null;

  // Tokenizer: without one, only token-id requests work.
  if (pathExists(path.join(dir, 'tokenizer.json'))) {
    out.tokenizer = problems.attempt(() => TextTokenizer.fromDir(dir, { readGenerationConfig: false })) ?? null;
  } else {
    out.tokenizer = null;
    problems.warn(`${dir}: no tokenizer.json: requests must give token ids (inputIds), not text`);
  }
  const tokenizer = out.tokenizer;

  out.generationEos = problems.attempt(() => readGenerationEos(dir)) ?? [];

  // Chat template: none is allowed (said once); one that exists must parse.
  const template = problems.attempt(() => ChatTemplate.fromDirIfAny(dir));
  out.template = template ?? null;
  if (template === null && tokenizer) {
    problems.warn(`${dir}: no chat template (chat_template.jinja, chat_template.json or tokenizer_config.json): prompts use the plain layout, ` +
      `${config?.modelType === 'llava' ? 'one image placeholder and a newline per image, then ' : ''}the text of each message on its own line`);
  }

  if (config?.modelType === 'llava') {
    const grid = config.vision.imageSize / config.vision.patchSize;
    const perImage = grid * grid + (config.visionFeatureSelectStrategy === 'full' ? 1 : 0);
    if (config.text.maxPositionEmbeddings <= perImage) {
      problems.report(new ConfigError(`${path.join(dir, 'config.json')}: text_config.max_position_embeddings ${config.text.maxPositionEmbeddings} cannot hold one image: it takes ${perImage} visual tokens (vision_config image_size / patch_size)`));
    }
    const proc = problems.attempt(() => loadClipImageProcessorConfig(dir));
    if (proc && problems.attempt(() => { checkImageProcessor(proc, config, dir, limits); return true; })) out.imageProcessor = proc;
  } else {
    out.imageProcessor = null;
  }

  if (config && text && tokenizer) {
    const configFile = path.join(dir, 'config.json');
    const imageToken = problems.attempt(() => imageTokenString(config, tokenizer, dir));
    // End of sequence: every id must be a row of the embedding, or generation never stops on it.
    const eos = [...tokenizer.eosTokenIds, ...text.eosTokenId, ...(out.generationEos ?? [])];
    for (const id of new Set(eos)) {
      if (id >= text.vocabSize) {
        problems.report(new ConfigError(`${dir}: end-of-sequence id ${id} (eos_token_id in config.json, generation_config.json or the tokenizer's eos_token) is outside the vocabulary of ${text.vocabSize} (vocab_size in ${configFile})`));
      }
    }
    if (eos.length === 0) problems.warn(`${dir}: no end-of-sequence token (eos_token_id): answers run until maxNewTokens or the context window`);
    if (tokenizer.vocabSize > text.vocabSize + (imageToken !== undefined && imageToken !== null ? 1 : 0)) {
      problems.warn(`${dir}: the tokenizer knows ${tokenizer.vocabSize} ids but the model's vocabulary has ${text.vocabSize} (vocab_size): a prompt that uses the ids past it is refused`);
    }
    // The template must render a conversation, and place each image once.
    if (template && imageToken !== undefined) {
      const images = imageToken === null ? 0 : 1;
      // Content in the form requests give it (a text model's template prints a string).
      const sample = (turns: 1 | 2) => normaliseContent(sampleConversation(images, turns), config.modelType === 'llava');
      const single = problems.attempt(() => template.render(sample(1), { addGenerationPrompt: true }));
      if (single !== undefined && imageToken !== null) {
        const n = single.split(imageToken).length - 1;
        if (n !== 1) {
          problems.report(new ChatTemplateError(`${template.file}: the chat template placed ${n} image placeholders ${JSON.stringify(imageToken)} ` +
            `(the token of image_token_index ${(config as LlavaConfig).imageTokenIndex} in config.json) for one image ` +
            `(a user message with one image part and one text part renders as ${JSON.stringify(single.slice(0, 200))})`));
        }
      }
      if (single !== undefined) {
        try {
          template.render(sample(2), { addGenerationPrompt: true });
        } catch (e) {
          if (!(e instanceof ChatTemplateError)) throw e;
          problems.warn(`${template.file}: the chat template cannot render a two-turn conversation, so chat sessions will fail (${e.message.replace(`${template.file}: `, '')})`);
        }
      }
    }
  }
  return out;
}

/** The files of a folder that loading must have: all present after readModelFiles without problems. */
export function completeFiles(f: Partial<ModelFiles> & { dir: string }): ModelFiles {
  if (!f.config) throw new Error(`internal: ${f.dir} was read without a config and without an error`);
  return { dir: f.dir, config: f.config, tokenizer: f.tokenizer ?? null, template: f.template ?? null, imageProcessor: f.imageProcessor ?? null, generationEos: f.generationEos ?? [] };
}
