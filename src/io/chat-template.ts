/**
 * Rendering a checkpoint's chat template with `@huggingface/jinja`, the way transformers'
 * `apply_chat_template` does (`trim_blocks`, `lstrip_blocks`, one trailing newline of the template dropped).
 *
 * Template source, first found wins:
 *   1. `chat_template.jinja` (a processor's template, as transformers ≥ 4.50 saves it);
 *   2. `chat_template.json` → `{"chat_template": "..."}` (older processors);
 *   3. `tokenizer_config.json` → `chat_template`: a string, or a list of `{name, template}` (the one named
 *      `"default"` unless another name is asked for).
 *
 * Variables: `messages`, `add_generation_prompt`, the special tokens of the tokenizer config (`bos_token`,
 * `eos_token`, `unk_token`, `pad_token`, …, `additional_special_tokens`; `special_tokens_map.json` fills gaps),
 * `tools` / `documents` (none), and `raise_exception`. transformers' `{% generation %}…{% endgeneration %}`
 * markers (used to build assistant masks) render as nothing but their content.
 */
import * as path from 'node:path';
import { Template } from '@huggingface/jinja';
import { readJsonObjectFile, readTextFile, visible } from '../base/files.js';
import { DEFAULT_TEMPLATE_BUDGET, TemplateBudget, renderWithBudget } from './template-budget.js';
import { tokenContent } from './tokenizer.js';
import { InputError } from '../base/errors.js';

/** No chat template, an unreadable/invalid template file, a template syntax error, or a render failure. */
export class ChatTemplateError extends InputError {}

export type ChatContentPart = { type: 'image' } | { type: 'text'; text: string };

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant';
  content: string | ChatContentPart[];
}

export interface RenderOptions {
  /** Append the assistant-turn opener (e.g. `ASSISTANT:`). Default true (we render prompts for generation). */
  addGenerationPrompt?: boolean;
  /** More template variables; they override the defaults (special tokens, …). */
  variables?: Record<string, unknown>;
}

export interface LoadOptions {
  /** For a `tokenizer_config.json` list of named templates: which one. Default `"default"`. */
  name?: string;
}

type Json = Record<string, unknown>;

const SPECIAL_TOKEN_KEYS = ['bos_token', 'eos_token', 'unk_token', 'sep_token', 'pad_token', 'cls_token', 'mask_token'] as const;

/** Characters a chat template may have (real ones have a few thousand; the largest known, tens of thousands). */
export const MAX_TEMPLATE_CHARS = 2 ** 20;

/** Matches transformers' markers for assistant-token masks; they only delimit text. */
const GENERATION_TAG = /{%(-?)\s*(end)?generation\s*(-?)%}/g;

function readText(file: string): string | undefined {
  return readTextFile(file, { required: false, what: 'chat template', error: ChatTemplateError });
}

function readJson(file: string): Json | undefined {
  return readJsonObjectFile(file, { required: false, error: ChatTemplateError });
}

/** Picks a template out of a `chat_template` setting (string, or list of `{name, template}`, or name → template map). */
function pickTemplate(value: unknown, file: string, name: string | undefined): string {
  if (typeof value === 'string' && name === undefined) return value;
  const named = new Map<string, string>();
  if (Array.isArray(value)) {
    for (const t of value) {
      if (t !== null && typeof t === 'object' && typeof (t as Json).name === 'string' && typeof (t as Json).template === 'string') {
        named.set((t as Json).name as string, (t as Json).template as string);
      } else {
        throw new ChatTemplateError(`${file}: chat_template list entries must be {"name": string, "template": string}`);
      }
    }
  } else if (value !== null && typeof value === 'object') {
    for (const [k, t] of Object.entries(value as Json)) if (typeof t === 'string') named.set(k, t);
  } else if (typeof value === 'string') {
    named.set('default', value);
  } else {
    throw new ChatTemplateError(`${file}: chat_template must be a string or a list of {name, template}`);
  }
  const want = name ?? 'default';
  const t = named.get(want);
  if (t === undefined) {
    throw new ChatTemplateError(
      `${file}: no chat template named ${JSON.stringify(want)} (available: ${[...named.keys()].map((k) => JSON.stringify(k)).join(', ') || 'none'})`,
    );
  }
  return t;
}

/** Where a folder's chat template comes from, and its text. Throws {@link ChatTemplateError} if it has none. */
export function loadChatTemplateSource(dir: string, options: LoadOptions = {}): { source: string; file: string } {
  const found = findChatTemplateSource(dir, options);
  if (found) return found;
  throw new ChatTemplateError(
    `there is no chat template in ${dir} (looked for chat_template.jinja, chat_template.json and "chat_template" in tokenizer_config.json)`,
  );
}

/**
 * Where a folder's chat template comes from, and its text; null when the folder has none. A
 * template file that exists but cannot be read or is not valid is an error, never "none".
 */
export function findChatTemplateSource(dir: string, options: LoadOptions = {}): { source: string; file: string } | null {
  const jinjaFile = path.join(dir, 'chat_template.jinja');
  const jinja = readText(jinjaFile);
  if (jinja !== undefined && options.name === undefined) return { source: jinja, file: jinjaFile };

  const jsonFile = path.join(dir, 'chat_template.json');
  const json = readJson(jsonFile);
  if (json !== undefined && json.chat_template !== undefined && json.chat_template !== null) {
    return { source: pickTemplate(json.chat_template, jsonFile, options.name), file: jsonFile };
  }

  const configFile = path.join(dir, 'tokenizer_config.json');
  const config = readJson(configFile);
  if (config !== undefined && config.chat_template !== undefined && config.chat_template !== null) {
    return { source: pickTemplate(config.chat_template, configFile, options.name), file: configFile };
  }
  return null;
}

/** The special-token template variables of a folder: tokenizer_config.json, gaps filled by special_tokens_map.json. */
export function loadSpecialTokenVariables(dir: string): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  for (const file of ['tokenizer_config.json', 'special_tokens_map.json']) {
    const j = readJson(path.join(dir, file));
    if (!j) continue;
    for (const key of SPECIAL_TOKEN_KEYS) {
      const s = tokenContent(j[key]);
      if (s !== undefined && out[key] === undefined) out[key] = s;
    }
    if (Array.isArray(j.additional_special_tokens) && out.additional_special_tokens === undefined) {
      out.additional_special_tokens = j.additional_special_tokens.map(tokenContent).filter((s): s is string => s !== undefined);
    }
  }
  return out;
}

/** A parsed chat template plus the default variables of its checkpoint. */
export class ChatTemplate {
  /** The template text (as found, before any preprocessing). */
  readonly source: string;
  /** The file it came from (for messages). */
  readonly file: string;
  private readonly template: Template;
  private readonly defaults: Record<string, unknown>;

  constructor(
    source: string,
    file = '<chat template>',
    defaults: Record<string, unknown> = {},
    readonly budget: TemplateBudget = DEFAULT_TEMPLATE_BUDGET,
  ) {
    if (source.length > MAX_TEMPLATE_CHARS) {
      throw new ChatTemplateError(`${file}: the chat template has ${source.length} characters, more than the ${MAX_TEMPLATE_CHARS} allowed`);
    }
    this.source = source;
    this.file = file;
    this.defaults = defaults;
    // transformers' {% generation %}…{% endgeneration %} is a block tag that only marks text. Rewrite it as
    // {% if true %}…{% endif %}, which keeps the whitespace control (`-`, trim_blocks, lstrip_blocks) identical.
    // (@huggingface/jinja 0.5 also strips these tags itself, but by its own whitespace rules.)
    const text = source.replace(GENERATION_TAG, (_m: string, l: string, end: string | undefined, r: string) => `{%${l} ${end ? 'endif' : 'if true'} ${r}%}`);
    try {
      this.template = new Template(text);
    } catch (e) {
      // The parser reads past the last token of an unfinished template (an unclosed block) as a TypeError.
      const why =
        e instanceof RangeError
          ? 'it is nested too deeply'
          : e instanceof TypeError
            ? 'it ends inside an unfinished block or expression (a missing {% endfor %}, {% endif %} or }}?)'
            : visible((e as Error).message);
      throw new ChatTemplateError(`${file}: cannot parse the chat template: ${why}`);
    }
  }

  /** Loads the chat template of a model folder; {@link ChatTemplateError} if it has none. */
  static fromDir(dir: string, options: LoadOptions = {}): ChatTemplate {
    const { source, file } = loadChatTemplateSource(dir, options);
    return new ChatTemplate(source, file, loadSpecialTokenVariables(dir));
  }

  /** The folder's chat template, or null when it has none (a broken one is an error). */
  static fromDirIfAny(dir: string, options: LoadOptions = {}): ChatTemplate | null {
    const found = findChatTemplateSource(dir, options);
    return found ? new ChatTemplate(found.source, found.file, loadSpecialTokenVariables(dir)) : null;
  }

  /** Renders `messages` to the prompt text (not tokenised; special tokens appear as text). */
  render(messages: readonly ChatMessage[], options: RenderOptions = {}): string {
    const vars: Record<string, unknown> = {
      tools: null,
      documents: null,
      ...this.defaults,
      ...options.variables,
      messages: messages.map((m) => ({
        role: m.role,
        content: typeof m.content === 'string' ? m.content : m.content.map((p) => ({ ...p })),
      })),
      add_generation_prompt: options.addGenerationPrompt ?? true,
      // raise_exception, range and strftime_now are globals of the renderer (template-budget.ts).
    };
    // Output may hold the conversation several times over (e.g. a system copy); the budget scales with it.
    const inputChars = messages.reduce(
      (a, m) => a + (typeof m.content === 'string' ? m.content.length : m.content.reduce((b, p) => b + (p.type === 'text' ? p.text.length : 0), 0)),
      0,
    );
    const budget = { ...this.budget, maxChars: Math.max(this.budget.maxChars, 4 * inputChars) };
    try {
      return renderWithBudget(this.template.parsed, vars, budget);
    } catch (e) {
      // Includes the template's own raise_exception('...') calls, whose message is kept.
      throw new ChatTemplateError(`${this.file}: cannot render the chat template: ${visible((e as Error).message)}`);
    }
  }
}

/** Shorthand: load a folder's chat template and render `messages` with it. */
export function applyChatTemplate(dir: string, messages: readonly ChatMessage[], options: RenderOptions & LoadOptions = {}): string {
  return ChatTemplate.fromDir(dir, options).render(messages, options);
}
