// Everything in a model folder but the weights, read and checked once: config.json, the tokenizer,
// the chat template (parsed, and rendered on a sample conversation), preprocessor_config.json,
// generation_config.json, and how they fit together. Loading stops at the first problem; inspect
// lists them all (see Problems).
import path from 'node:path';
import { Problems } from '../base/problems.js';
import { pathExists } from '../base/files.js';
import { ConfigError } from '../formats/config.js';
import { TextTokenizer, readGenerationEos } from '../io/tokenizer.js';
import { ChatMessage, ChatTemplate, ChatTemplateError } from '../io/chat-template.js';
import { ImageError } from '../io/image.js';
import { DEFAULT_IMAGE_LIMITS, ImageLimits } from '../io/image-types.js';
import { AnyFamily, FamilyConfig, ImageProcessor, ProcessorFiles, PromptLayout } from '../model/family.js';
import { loadConfig } from '../model/registry.js';
import { readJsonFile } from '../base/files.js';
import { normaliseContent } from './request.js';
import { textFolderOf } from './weights-of.js';

export interface ModelFiles {
  dir: string;
  family: AnyFamily;
  config: FamilyConfig;
  tokenizer: TextTokenizer | null;
  template: ChatTemplate | null;
  imageProcessor: ImageProcessor | null;
  /** How images are laid out in prompts (a VLM with a tokenizer), else null. */
  layout: PromptLayout | null;
  /** generation_config.json's eos_token_id (empty when absent). */
  generationEos: number[];
}

/** A one-image conversation as a VLM's processor would render it (for checking a template). */
export function sampleConversation(images: number, turns: 1 | 2): ChatMessage[] {
  const first: ChatMessage = {
    role: 'user',
    content: [...Array.from({ length: images }, () => ({ type: 'image' as const })), { type: 'text', text: 'What is in the picture?' }],
  };
  if (turns === 1) return [first];
  return [first, { role: 'assistant', content: [{ type: 'text', text: 'A cat.' }] }, { role: 'user', content: [{ type: 'text', text: 'What colour is it?' }] }];
}

/**
 * Reads every file of a model folder but the weights, reporting each problem to `problems` (which
 * throws the first when loading, or lists them all when inspecting). Returns what could be read.
 */
export function readModelFiles(dir: string, problems: Problems, limits: ImageLimits = DEFAULT_IMAGE_LIMITS): Partial<ModelFiles> & { dir: string } {
  const out: Partial<ModelFiles> & { dir: string } = { dir };
  const parsed = problems.attempt(() => loadConfig(dir));
  const family = parsed?.family,
    config = parsed?.config;
  if (family?.notRunnable) {
    problems.report(new ConfigError(`${path.join(dir, 'config.json')}: model_type "${config!.modelType}" ${family.notRunnable}`));
  }
  if (family && config) {
    out.family = family;
    out.config = config;
  }
  const text = config?.textFacts ?? null;
  const image = config?.imageFacts ?? null;

  // Tokenizer, generation config and chat template: in the model folder, or where the family keeps them.
  const textDir = textFolderOf(dir, family, config);
  // Tokenizer: without one, only token-id requests work.
  if (pathExists(path.join(textDir, 'tokenizer.json'))) {
    out.tokenizer = problems.attempt(() => TextTokenizer.fromDir(textDir, { readGenerationConfig: false })) ?? null;
  } else {
    out.tokenizer = null;
    problems.warn(`${textDir}: no tokenizer.json: requests must give token ids (inputIds), not text`);
  }
  const tokenizer = out.tokenizer;

  out.generationEos = problems.attempt(() => readGenerationEos(textDir)) ?? [];

  // Chat template: none is allowed (said once, unless the family has its own); one that exists must parse.
  let template = problems.attempt(() => ChatTemplate.fromDirIfAny(textDir));
  const builtIn = family && config ? family.defaultChatTemplate?.(config) : undefined;
  if (template === null && builtIn !== undefined) template = new ChatTemplate(builtIn, `the ${family!.name} conversation format`);
  out.template = template ?? null;
  if (template === null && tokenizer) {
    problems.warn(
      `${textDir}: no chat template (chat_template.jinja, chat_template.json or tokenizer_config.json): prompts use the plain layout, ` +
        `${image ? 'one image placeholder and a newline per image, then ' : ''}the text of each message on its own line`,
    );
  }

  out.imageProcessor = null;
  if (family && config && image && text) {
    if (text.contextWindow <= image.minTokens) {
      problems.report(
        new ConfigError(
          `${path.join(dir, 'config.json')}: ${text.contextField} ${text.contextWindow} cannot hold one image: it takes ${image.minTokens} visual tokens`,
        ),
      );
    }
    const files = problems.attempt(() => readProcessorFiles(dir, family.processorFiles?.(config) ?? []));
    if (files && family.imageProcessor) out.imageProcessor = problems.attempt(() => family.imageProcessor!(config, files, dir, limits.maxPixels)) ?? null;
  }

  out.layout = null;
  if (family && config && text && tokenizer) {
    const configFile = path.join(dir, 'config.json');
    const layout = image && family.promptLayout ? problems.attempt(() => family.promptLayout!(config, tokenizer, dir)) : null;
    if (layout) out.layout = layout;
    const imageToken = layout === undefined ? undefined : (layout?.placeholder ?? null);
    // End of sequence: every id must be a row of the embedding, or generation never stops on it.
    const eos = [...tokenizer.eosTokenIds, ...text.eosTokenIds, ...(out.generationEos ?? [])];
    for (const id of new Set(eos)) {
      if (id >= text.vocabSize) {
        problems.report(
          new ConfigError(
            `${dir}: end-of-sequence id ${id} (eos_token_id in config.json, generation_config.json or the tokenizer's eos_token) is outside the vocabulary of ${text.vocabSize} (vocab_size in ${configFile})`,
          ),
        );
      }
    }
    if (eos.length === 0) problems.warn(`${dir}: no end-of-sequence token (eos_token_id): answers run until maxNewTokens or the context window`);
    if (tokenizer.vocabSize > text.vocabSize + (imageToken !== undefined && imageToken !== null ? 1 : 0)) {
      problems.warn(
        `${dir}: the tokenizer knows ${tokenizer.vocabSize} ids but the model's vocabulary has ${text.vocabSize} (vocab_size): a prompt that uses the ids past it is refused`,
      );
    }
    // The template must render a conversation, and place each image once.
    if (template && imageToken !== undefined) {
      const images = imageToken === null ? 0 : 1;
      // Content in the form requests give it (a text model's template prints a string).
      const sample = (turns: 1 | 2) => normaliseContent(sampleConversation(images, turns), image !== null);
      const single = problems.attempt(() => template.render(sample(1), { addGenerationPrompt: true }));
      if (single !== undefined && imageToken !== null) {
        const n = single.split(imageToken).length - 1;
        if (n !== 1) {
          problems.report(
            new ChatTemplateError(
              `${template.file}: the chat template placed ${n} image placeholders ${JSON.stringify(imageToken)} ` +
                `(the token of ${image!.tokenField} ${image!.tokenId} in config.json) for one image ` +
                `(a user message with one image part and one text part renders as ${JSON.stringify(single.slice(0, 200))})`,
            ),
          );
        }
      }
      if (single !== undefined) {
        try {
          template.render(sample(2), { addGenerationPrompt: true });
        } catch (e) {
          if (!(e instanceof ChatTemplateError)) throw e;
          problems.warn(
            `${template.file}: the chat template cannot render a two-turn conversation, so chat sessions will fail (${e.message.replace(`${template.file}: `, '')})`,
          );
        }
      }
    }
  }
  return out;
}

/** The files of a folder that loading must have: all present after readModelFiles without problems. */
export function completeFiles(f: Partial<ModelFiles> & { dir: string }): ModelFiles {
  if (!f.config || !f.family) throw new Error(`internal: ${f.dir} was read without a config and without an error`);
  return {
    dir: f.dir,
    family: f.family,
    config: f.config,
    tokenizer: f.tokenizer ?? null,
    template: f.template ?? null,
    imageProcessor: f.imageProcessor ?? null,
    layout: f.layout ?? null,
    generationEos: f.generationEos ?? [],
  };
}

/** The JSON of a family's processor files (null for an absent one). */
function readProcessorFiles(dir: string, names: readonly string[]): ProcessorFiles {
  const out: ProcessorFiles = {};
  for (const n of names) {
    const file = path.join(dir, n);
    out[n] = pathExists(file) ? readJsonFile(file, { what: 'image processor config', error: ImageError }) : null;
  }
  return out;
}
