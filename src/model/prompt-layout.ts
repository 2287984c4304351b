// Prompt layouts shared by families: the image placeholder a tokenizer must know, one placeholder
// token per image row (LLaVA's processors).
import path from 'node:path';
import { ConfigError } from '../formats/config.js';
import { expandImageTokens } from '../io/prompt.js';
import { TextTokenizer } from '../io/tokenizer.js';
import { PromptLayout } from './family.js';

/**
 * The text of an image token id, checked: it must be one of the tokenizer's added tokens (a
 * placeholder that is a word of the vocabulary would be split or merged by the tokenizer).
 */
export function imagePlaceholder(id: number, field: string, tokenizer: TextTokenizer, dir: string): string {
  const t = tokenizer.idToToken(id);
  if (t === undefined) throw new ConfigError(`${path.join(dir, 'config.json')}: ${field} ${id} is not a token of the tokenizer (tokenizer.json)`);
  if (!tokenizer.isAddedToken(id)) {
    throw new ConfigError(
      `${path.join(dir, 'config.json')}: ${field} ${id} is ${JSON.stringify(t)}, a word of the tokenizer's vocabulary, not one of its added tokens (tokenizer.json "added_tokens"), as an image placeholder is`,
    );
  }
  return t;
}

/** One placeholder token per image row, as LlavaProcessor expands it before tokenising. */
export function repeatedPlaceholderLayout(placeholder: string, imageTokenId: number): PromptLayout {
  return {
    placeholder,
    imageTokenId,
    encode: (text, images, tokenizer) =>
      tokenizer.encode(
        expandImageTokens(
          text,
          placeholder,
          images.map((i) => i.rows),
        ),
      ),
  };
}
