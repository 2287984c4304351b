// A chat-completions request body, checked field by field as OpenAI documents them (each problem a
// 400 naming the field), into the engine's conversation, sampling and sparsity options.
import { ChatContentPart, ChatMessage } from '../io/chat-template.js';
import { MethodChoice, MethodKnob, MethodName, METHODS } from '../sparsity/choice.js';
import { describe } from '../engine/request.js';
import { isObject } from '../formats/config.js';
import { ApiError } from './errors.js';

/** An image part: where its bytes are and the client's id for it. */
export interface ImagePart {
  url: string | null;
  uuid: string | undefined;
  /** The field, for errors: messages[1].content[0].image_url.url */
  param: string;
}

export interface ChatRequest {
  model: string;
  /** Each `{ type: 'image' }` part stands for the next of `images`. */
  messages: ChatMessage[];
  images: ImagePart[];
  mode: 'chat' | 'independent' | undefined;
  maxPixels: number | undefined;
  /** The sparsity method fields given (unset: the server's defaults). */
  method: MethodChoice;
  maxTokens: number | undefined;
  temperature: number;
  topP: number | undefined;
  seed: number | undefined;
  stop: string[];
  /** OpenAI's logit_bias: token id -> bias in [-100, 100]. */
  logitBias: Record<number, number> | undefined;
  stream: boolean;
  includeUsage: boolean;
  /** OpenAI's end-user id: requests queue fairly per user. */
  user: string | undefined;
}

const bad = (param: string, message: string, code = 'invalid_value'): ApiError => new ApiError(400, `${param}: ${message}`, param, code);

function num(body: Record<string, unknown>, key: string, lo: number, hi: number, param = key): number | undefined {
  const v = body[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'number' || !Number.isFinite(v) || v < lo || v > hi) throw bad(param, `expected a number in [${lo}, ${hi}], got ${describe(v)}`);
  return v;
}

function int(body: Record<string, unknown>, key: string, lo: number, hi: number, param = key): number | undefined {
  const v = num(body, key, lo, hi, param);
  if (v !== undefined && !Number.isInteger(v)) throw bad(param, `expected a whole number, got ${v}`);
  return v;
}

/** A message's text parts and image parts, checked. */
function content(v: unknown, param: string, role: string, images: ImagePart[]): ChatContentPart[] {
  if (typeof v === 'string') return [{ type: 'text', text: v }];
  if (!Array.isArray(v)) throw bad(param, `expected a string or an array of content parts, got ${describe(v)}`, 'invalid_type');
  return v.map((p: unknown, i): ChatContentPart => {
    const at = `${param}[${i}]`;
    if (!isObject(p)) throw bad(at, `expected a content part { type, ... }, got ${describe(p)}`, 'invalid_type');
    if (p.type === 'text') {
      if (typeof p.text !== 'string') throw bad(`${at}.text`, `expected a string, got ${describe(p.text)}`, 'invalid_type');
      return { type: 'text', text: p.text };
    }
    if (p.type === 'image_url') {
      if (role !== 'user') throw bad(at, `only user messages may hold images (this is a ${role} message)`);
      const uuid = p.uuid;
      if (uuid !== undefined && uuid !== null && (typeof uuid !== 'string' || uuid.length === 0 || uuid.length > 256))
        throw bad(`${at}.uuid`, `expected a non-empty string of at most 256 characters, got ${describe(uuid)}`, 'invalid_type');
      const iu = p.image_url;
      let url: string | null = null;
      if (isObject(iu)) {
        if (typeof iu.url !== 'string') throw bad(`${at}.image_url.url`, `expected a string, got ${describe(iu.url)}`, 'invalid_type');
        if (iu.detail !== undefined && !['auto', 'low', 'high'].includes(iu.detail as string))
          throw bad(`${at}.image_url.detail`, `expected auto, low or high, got ${describe(iu.detail)}`);
        url = iu.url === '' ? null : iu.url;
      } else if (typeof iu === 'string') {
        url = iu;
      } else if (iu !== undefined && iu !== null) {
        throw bad(`${at}.image_url`, `expected { url }, got ${describe(iu)}`, 'invalid_type');
      }
      if (url === null && typeof uuid !== 'string')
        throw bad(`${at}.image_url`, 'give the image URL, or the uuid of an image sent before', 'missing_required_parameter');
      images.push({ url, uuid: typeof uuid === 'string' ? uuid : undefined, param: `${at}.image_url.url` });
      return { type: 'image' };
    }
    throw bad(`${at}.type`, `expected text or image_url, got ${describe(p.type)} (audio, files and refusals are not supported)`);
  });
}

function messagesOf(v: unknown, images: ImagePart[]): ChatMessage[] {
  if (!Array.isArray(v))
    throw bad('messages', `expected an array of messages, got ${describe(v)}`, v === undefined ? 'missing_required_parameter' : 'invalid_type');
  if (v.length === 0) throw bad('messages', 'expected at least one message');
  const out = v.map((m: unknown, i): ChatMessage => {
    const at = `messages[${i}]`;
    if (!isObject(m)) throw bad(at, `expected { role, content }, got ${describe(m)}`, 'invalid_type');
    const role = m.role === 'developer' ? 'system' : m.role;
    if (role !== 'system' && role !== 'user' && role !== 'assistant')
      throw bad(`${at}.role`, `expected system, developer, user or assistant, got ${describe(m.role)} (tools are not supported)`);
    if (m.tool_calls !== undefined && m.tool_calls !== null) throw bad(`${at}.tool_calls`, 'tool calls are not supported');
    if (role === 'assistant' && (m.content === null || m.content === undefined)) return { role, content: [{ type: 'text', text: '' }] };
    return { role, content: content(m.content, `${at}.content`, role, images) };
  });
  if (out[out.length - 1].role === 'assistant')
    throw bad(`messages[${out.length - 1}].role`, "the last message must not be the assistant's: there is nothing to answer");
  return out;
}

function logitBiasOf(v: unknown, vocab: number): Record<number, number> | undefined {
  if (v === undefined || v === null) return undefined;
  if (!isObject(v)) throw bad('logit_bias', `expected an object of token id -> bias, got ${describe(v)}`, 'invalid_type');
  const out: Record<number, number> = {};
  for (const [k, b] of Object.entries(v)) {
    const id = Number(k);
    if (!/^\d+$/.test(k) || id >= vocab) throw bad('logit_bias', `${JSON.stringify(k)} is not a token id of this model (0..${vocab - 1})`);
    if (typeof b !== 'number' || !(b >= -100 && b <= 100)) throw bad(`logit_bias.${k}`, `expected a number in [-100, 100], got ${describe(b)}`);
    out[id] = b;
  }
  return out;
}

function stopOf(v: unknown): string[] {
  if (v === undefined || v === null) return [];
  const list = typeof v === 'string' ? [v] : v;
  if (!Array.isArray(list) || list.length > 4 || list.some((s) => typeof s !== 'string' || s.length === 0 || s.length > 256))
    throw bad('stop', `expected a string or up to 4 non-empty strings, got ${describe(v)}`, 'invalid_type');
  return list as string[];
}

/** The `sparsevila` extension object: { method, prefill_sparsity, decode_sparsity, visual_budget, mode }. */
function sparsevilaOf(v: unknown): { method: MethodChoice; mode: 'chat' | 'independent' | undefined } {
  if (v === undefined || v === null) return { method: {}, mode: undefined };
  if (!isObject(v)) throw bad('sparsevila', `expected an object, got ${describe(v)}`, 'invalid_type');
  const known = ['method', 'prefill_sparsity', 'decode_sparsity', 'visual_budget', 'mode'];
  for (const k of Object.keys(v)) if (!known.includes(k)) throw bad(`sparsevila.${k}`, `unknown field: use ${known.join(', ')}`);
  const method: MethodChoice = {};
  if (v.method !== undefined) {
    if (!METHODS.includes(v.method as MethodName)) throw bad('sparsevila.method', `expected one of ${METHODS.join(', ')}, got ${describe(v.method)}`);
    method.method = v.method as MethodName;
  }
  const frac = (k: string) => {
    const x = num(v, k, 0, 1, `sparsevila.${k}`);
    if (x === 1) throw bad(`sparsevila.${k}`, 'expected a number in [0, 1)');
    return x;
  };
  method.prefillSparsity = frac('prefill_sparsity');
  method.decodeSparsity = frac('decode_sparsity');
  method.visualBudget = int(v, 'visual_budget', 1, 1 << 20, 'sparsevila.visual_budget');
  if (v.mode !== undefined && v.mode !== 'chat' && v.mode !== 'independent')
    throw bad('sparsevila.mode', `expected chat or independent, got ${describe(v.mode)}`);
  return { method, mode: v.mode as 'chat' | 'independent' | undefined };
}

function topPOf(body: Record<string, unknown>): number | undefined {
  const p = num(body, 'top_p', 0, 1);
  if (p === 0) throw bad('top_p', 'expected a number in (0, 1]');
  return p;
}

/** How the server names a method knob in a request (sparsevila.prefill_sparsity). */
export const fieldName = (k: MethodKnob | 'method'): string => `sparsevila.${k.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`)}`;

/** Checks a chat-completions body; throws ApiError 400 naming the field. */
export function parseChatRequest(body: unknown, vocab: number): ChatRequest {
  if (!isObject(body)) throw bad('body', `expected a JSON object, got ${describe(body)}`, 'invalid_type');
  if (typeof body.model !== 'string' || body.model.length === 0) throw bad('model', `expected the model's id, got ${describe(body.model)}`, 'invalid_type');
  const images: ImagePart[] = [];
  const messages = messagesOf(body.messages, images);
  const n = int(body, 'n', 1, 1);
  void n;
  for (const k of ['tools', 'functions', 'audio', 'prediction']) {
    if (body[k] !== undefined && body[k] !== null && !(Array.isArray(body[k]) && (body[k] as unknown[]).length === 0))
      throw bad(k, 'not supported by this server', 'unsupported_parameter');
  }
  if (body.logprobs === true) throw bad('logprobs', 'not supported by this server', 'unsupported_parameter');
  if (body.response_format !== undefined && body.response_format !== null) {
    if (!isObject(body.response_format) || body.response_format.type !== 'text')
      throw bad('response_format', 'only { type: "text" } is supported', 'unsupported_parameter');
  }
  const stream = body.stream ?? false;
  if (typeof stream !== 'boolean' && stream !== null) throw bad('stream', `expected a boolean, got ${describe(stream)}`, 'invalid_type');
  let includeUsage = false;
  if (body.stream_options !== undefined && body.stream_options !== null) {
    if (!isObject(body.stream_options)) throw bad('stream_options', `expected an object, got ${describe(body.stream_options)}`, 'invalid_type');
    if (!stream) throw bad('stream_options', 'only allowed when stream is true');
    const iu = body.stream_options.include_usage;
    if (iu !== undefined && typeof iu !== 'boolean') throw bad('stream_options.include_usage', `expected a boolean, got ${describe(iu)}`, 'invalid_type');
    includeUsage = iu === true;
  }
  const maxTokens = int(body, 'max_completion_tokens', 0, 1 << 30) ?? int(body, 'max_tokens', 0, 1 << 30);
  const seed = int(body, 'seed', -(2 ** 53), 2 ** 53);
  const { method, mode } = sparsevilaOf(body.sparsevila);
  const maxPixels = int(body, 'max_pixels', 1, 2 ** 40);
  if (body.user !== undefined && body.user !== null && typeof body.user !== 'string')
    throw bad('user', `expected a string, got ${describe(body.user)}`, 'invalid_type');
  return {
    model: body.model,
    messages,
    images,
    mode,
    maxPixels,
    method,
    maxTokens,
    temperature: num(body, 'temperature', 0, 2) ?? 1,
    topP: topPOf(body),
    logitBias: logitBiasOf(body.logit_bias, vocab),
    seed,
    stop: stopOf(body.stop),
    stream: stream === true,
    includeUsage,
    user: typeof body.user === 'string' ? body.user : undefined,
  };
}
