// Checking a generation request before any work: messages of the shape the API documents, images
// placed by their parts (never typed as text), content in the form the model's chat template
// expects, token ids that are ids of the model, and options in their ranges. Every problem is a
// GenerationError that names the field as the caller wrote it.
import { InputError } from '../base/errors.js';
import { ChatContentPart, ChatMessage } from '../io/chat-template.js';

/** A request or its options that cannot be run (bad shape, bad value, too long for the model). */
export class GenerationError extends InputError {}

const ROLES = ['system', 'user', 'assistant'];

/** Checks `messages` against the documented shape; returns how many image parts they hold. */
export function checkMessages(messages: unknown): number {
  if (!Array.isArray(messages)) throw new GenerationError(`messages must be an array of { role, content }, got ${describe(messages)}`);
  if (messages.length === 0) throw new GenerationError('messages is empty: give at least one message');
  let images = 0;
  messages.forEach((m: unknown, i) => {
    const at = `messages[${i}]`;
    if (typeof m !== 'object' || m === null || Array.isArray(m)) throw new GenerationError(`${at} must be an object { role, content }, got ${describe(m)}`);
    const { role, content } = m as { role?: unknown; content?: unknown };
    if (typeof role !== 'string' || !ROLES.includes(role)) throw new GenerationError(`${at}.role must be one of ${ROLES.join(', ')}, got ${describe(role)}`);
    if (typeof content === 'string') return;
    if (!Array.isArray(content))
      throw new GenerationError(`${at}.content must be a string or an array of parts ({ type: 'image' } or { type: 'text', text }), got ${describe(content)}`);
    content.forEach((p: unknown, j) => {
      const pat = `${at}.content[${j}]`;
      const type = typeof p === 'object' && p !== null ? (p as { type?: unknown }).type : undefined;
      if (type === 'image') {
        images++;
        return;
      }
      if (type === 'text') {
        const text = (p as { text?: unknown }).text;
        if (typeof text !== 'string') throw new GenerationError(`${pat}.text must be a string, got ${describe(text)}`);
        return;
      }
      throw new GenerationError(`${pat} must be { type: 'image' } or { type: 'text', text }, got ${describe(p)}`);
    });
  });
  return images;
}

/**
 * The content in the form the model's template takes: a VLM's processor template iterates over
 * parts (so a string becomes one text part, as transformers' processors do), a text model's
 * template prints a string (so text parts are joined).
 */
export function normaliseContent(messages: readonly ChatMessage[], vision: boolean): ChatMessage[] {
  return messages.map((m): ChatMessage => {
    if (vision) return { role: m.role, content: typeof m.content === 'string' ? [{ type: 'text', text: m.content }] : m.content.map((p) => ({ ...p })) };
    return { role: m.role, content: typeof m.content === 'string' ? m.content : m.content.map((p) => (p.type === 'text' ? p.text : '')).join('') };
  });
}

/**
 * Refuses text that contains the model's image placeholder: images are given as images and placed
 * by the chat template; a typed placeholder would be one more image than was given.
 */
export function checkNoTypedPlaceholder(messages: readonly ChatMessage[], placeholder: string, label?: string): void {
  messages.forEach((m, i) => {
    const parts: ChatContentPart[] = typeof m.content === 'string' ? [{ type: 'text', text: m.content }] : m.content;
    for (const p of parts) {
      if (p.type === 'text' && p.text.includes(placeholder)) {
        throw new GenerationError(
          `${label ?? `the text of messages[${i}]`} contains ${JSON.stringify(placeholder)}, the model's image placeholder, as text: ` +
            `images are placed by the chat template, one for each image given, so leave ${JSON.stringify(placeholder)} out of the text`,
        );
      }
    }
  });
}

/**
 * Checks token ids given as they are (inputIds): integers, ids of the vocabulary, and as many
 * image placeholder ids as the images give rows.
 */
export function checkInputIds(ids: unknown, vocabSize: number, image: { id: number; rows: number } | null): number[] {
  if (!Array.isArray(ids)) throw new GenerationError(`inputIds must be an array of token ids, got ${describe(ids)}`);
  let placeholders = 0;
  ids.forEach((t: unknown, i) => {
    if (image && t === image.id) {
      placeholders++;
      return;
    }
    if (typeof t !== 'number' || !Number.isInteger(t) || t < 0 || t >= vocabSize) {
      throw new GenerationError(
        `inputIds[${i}] is ${describe(t)}: token ids are integers in [0, ${vocabSize}) (vocab_size)${image ? ` or the image placeholder ${image.id}` : ''}`,
      );
    }
  });
  if (image && placeholders !== image.rows) {
    throw new GenerationError(
      `inputIds hold ${placeholders} image placeholder ids (${image.id}) but the images give ${image.rows} visual tokens: expand each image's placeholder to its tokens`,
    );
  }
  return ids as number[];
}

/** Checks the per-call options whose type the TypeScript signature cannot enforce for JS callers. */
export function checkGenerateOptions(o: { maxNewTokens?: unknown; stop?: unknown; eosTokenIds?: unknown; reretrieveEvery?: unknown }): void {
  if (o.maxNewTokens !== undefined && (typeof o.maxNewTokens !== 'number' || !Number.isInteger(o.maxNewTokens) || o.maxNewTokens < 0)) {
    throw new GenerationError(`maxNewTokens must be an integer >= 0, got ${describe(o.maxNewTokens)}`);
  }
  if (o.stop !== undefined && (!Array.isArray(o.stop) || !o.stop.every((s) => typeof s === 'string'))) {
    throw new GenerationError(`stop must be an array of strings, got ${describe(o.stop)}`);
  }
  if (o.eosTokenIds !== undefined && (!Array.isArray(o.eosTokenIds) || !o.eosTokenIds.every((x) => Number.isInteger(x) && (x as number) >= 0))) {
    throw new GenerationError(`eosTokenIds must be an array of token ids (integers >= 0), got ${describe(o.eosTokenIds)}`);
  }
  if (o.reretrieveEvery !== undefined && (typeof o.reretrieveEvery !== 'number' || !Number.isInteger(o.reretrieveEvery) || o.reretrieveEvery < 0)) {
    throw new GenerationError(`reretrieveEvery must be an integer >= 0, got ${describe(o.reretrieveEvery)}`);
  }
}

/** A short description of a value for a message. */
export function describe(v: unknown): string {
  if (v === undefined) return 'nothing';
  if (v === null) return 'null';
  if (Array.isArray(v)) return `an array of ${v.length}`;
  if (typeof v === 'string') return `the string ${JSON.stringify(v.length > 40 ? `${v.slice(0, 37)}...` : v)}`;
  if (typeof v === 'object') return 'an object';
  return `${typeof v} ${String(v)}`;
}
