/**
 * Prompt-text utilities that run between the chat template and the tokenizer.
 */
import { InputError } from '../base/errors.js';

/** A prompt that does not fit its images, or a bad argument. */
export class PromptError extends InputError {}

/**
 * Replaces the i-th occurrence of `imageToken` in `text` with `countPerImage[i]` copies of it, as
 * LlavaProcessor does before tokenising (one placeholder per image becomes one token per image feature).
 * Throws {@link PromptError} if the number of placeholders differs from the number of images, naming both counts.
 */
export function expandImageTokens(text: string, imageToken: string, countPerImage: readonly number[]): string {
  if (imageToken.length === 0) throw new PromptError('expandImageTokens: the image token is empty');
  for (const [i, n] of countPerImage.entries()) {
    if (!Number.isInteger(n) || n < 0) {
      throw new PromptError(`expandImageTokens: token count for image ${i} must be a non-negative integer, got ${String(n)}`);
    }
  }
  return replacePlaceholders(
    text,
    imageToken,
    countPerImage.map((n) => imageToken.repeat(n)),
  );
}

/**
 * Replaces the i-th `placeholder` of `text` with `replacements[i]`, as a VLM processor expands each
 * image's placeholder; the counts must agree (PromptError naming both otherwise).
 */
export function replacePlaceholders(text: string, placeholder: string, replacements: readonly string[]): string {
  const pieces = text.split(placeholder);
  const placeholders = pieces.length - 1;
  if (placeholders !== replacements.length) {
    throw new PromptError(
      `the prompt has ${placeholders} ${JSON.stringify(placeholder)} placeholder${placeholders === 1 ? '' : 's'} ` +
        `but ${replacements.length} image${replacements.length === 1 ? ' was' : 's were'} given`,
    );
  }
  let out = pieces[0];
  for (let i = 0; i < placeholders; i++) out += replacements[i] + pieces[i + 1];
  return out;
}
