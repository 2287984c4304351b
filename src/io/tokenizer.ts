/**
 * Text tokenisation for a Hugging Face model folder, on top of `@huggingface/tokenizers`.
 *
 * {@link TextTokenizer.fromDir} reads `tokenizer.json` (required) and `tokenizer_config.json`, plus
 * `special_tokens_map.json`, `added_tokens.json` and `generation_config.json` where present, and follows
 * transformers' rules for them:
 *
 * - Special tokens (`bos_token`, `eos_token`, …) come from `tokenizer_config.json`. `special_tokens_map.json`
 *   only fills the ones it lacks, or overrides them for a legacy config without `added_tokens_decoder` (as
 *   `PreTrainedTokenizerBase.from_pretrained` does).
 * - BOS/EOS on {@link TextTokenizer.encode}: whatever the `tokenizer.json` post-processor adds, unless
 *   `tokenizer_config.json` sets `add_bos_token` / `add_eos_token` explicitly (LlamaTokenizerFast rebuilds its
 *   post-processor from those flags), in which case the flag wins.
 * - `clean_up_tokenization_spaces` defaults to false (transformers ≥ 4.45); the JS library defaults it to true.
 * - Ids unknown to the tokenizer (e.g. from an embedding table padded beyond the vocabulary) are skipped on
 *   decode, like the Rust tokenizer's `id_to_token` returning None.
 *
 * This module knows nothing of models or kernels. Every problem is a {@link TokenizerError} naming the file.
 */
import * as path from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';
import { readJsonObjectFile } from '../base/files.js';
import { InputError } from '../base/errors.js';

/** A missing, unreadable, invalid or unsupported tokenizer file, or a bad argument. */
export class TokenizerError extends InputError {}

export interface EncodeOptions {
  /** Add the special tokens of a single sequence (BOS, and EOS where configured). Default true. */
  addSpecialTokens?: boolean;
}

export interface DecodeOptions {
  /** Drop special tokens (BOS, EOS, `<image>`, … — every added token marked special) from the text. Default false. */
  skipSpecialTokens?: boolean;
}

export interface FromDirOptions {
  /**
   * Read `generation_config.json` from the folder, if present, and merge its `eos_token_id` into
   * {@link TextTokenizer.eosTokenIds}. Default true.
   */
  readGenerationConfig?: boolean;
  /** More end-of-sequence ids to merge in (e.g. from a separately loaded generation config). */
  extraEosTokenIds?: number | readonly number[] | null;
}

/**
 * An incremental detokeniser: feed generated ids one at a time, get back only the text they add.
 * The concatenation of every {@link push} and a final {@link flush} equals `decode(allIds)` with the same
 * options; text is held back while it ends in an incomplete UTF-8 sequence (byte-fallback `<0xE2>` tokens,
 * byte-level BPE pieces) so a character is never emitted in halves.
 */
export interface StreamDecoder {
  /** Appends one id; returns the text it completes (possibly ""). */
  push(id: number): string;
  /** Returns any text still held back (an incomplete UTF-8 sequence at the end, as U+FFFD). */
  flush(): string;
  /** Every id pushed so far. */
  readonly ids: readonly number[];
  /** Everything returned so far, concatenated. */
  readonly text: string;
}

type Json = Record<string, unknown>;

/** The `model.type`s of the tokenizers library. */
const TOKENIZER_MODELS = ['BPE', 'WordPiece', 'WordLevel', 'Unigram'];

const SPECIAL_TOKEN_KEYS = ['bos_token', 'eos_token', 'unk_token', 'sep_token', 'pad_token', 'cls_token', 'mask_token'] as const;

/** The text of a special-token setting: a string, or an AddedToken-like `{ content }` object. */
export function tokenContent(v: unknown): string | undefined {
  if (typeof v === 'string') return v;
  if (v !== null && typeof v === 'object' && typeof (v as Json).content === 'string') return (v as Json).content as string;
  return undefined;
}

/**
 * Merges end-of-sequence ids from several sources (the tokenizer's `eos_token` id, a generation config's
 * `eos_token_id` — a number or a list —, …) into one de-duplicated list, first occurrence first.
 * `null`/`undefined` sources are ignored; anything that is not a non-negative integer throws.
 */
export function mergeEosTokenIds(...sources: (number | readonly number[] | null | undefined)[]): number[] {
  const out: number[] = [];
  for (const s of sources) {
    if (s === null || s === undefined) continue;
    for (const id of typeof s === 'number' ? [s] : s) {
      if (!Number.isInteger(id) || id < 0) throw new TokenizerError(`invalid EOS token id ${String(id)}`);
      if (!out.includes(id)) out.push(id);
    }
  }
  return out;
}

/**
 * The `eos_token_id` of a folder's `generation_config.json` (an id or a list of ids); undefined
 * when the file or the field is absent. Anything else is an error naming the file and the field.
 */
export function readGenerationEos(dir: string): number[] | undefined {
  const file = path.join(dir, 'generation_config.json');
  const v = readJsonObjectFile(file, { required: false, what: 'generation config', error: TokenizerError })?.eos_token_id;
  if (v === undefined || v === null) return undefined;
  const ok = (x: unknown): x is number => typeof x === 'number' && Number.isSafeInteger(x) && x >= 0;
  if (ok(v)) return [v];
  if (Array.isArray(v) && v.every(ok)) return v;
  const found =
    typeof v === 'string'
      ? `the string ${JSON.stringify(v.slice(0, 40))}`
      : Array.isArray(v)
        ? `the list ${JSON.stringify(v).slice(0, 60)}`
        : `${typeof v} ${JSON.stringify(v)?.slice(0, 40)}`;
  throw new TokenizerError(`${file}: eos_token_id: expected a token id (a non-negative integer) or a list of them, found ${found}`);
}

/** Reads and parses a JSON object file; undefined if the file does not exist and is optional. */
function readJsonObject(file: string, required: boolean): Json | undefined {
  return readJsonObjectFile(file, { required, what: 'tokenizer file', error: TokenizerError });
}

/** A Hugging Face tokenizer loaded from a model folder. */
export class TextTokenizer {
  /** The id of the beginning-of-sequence token (`bos_token`), if the checkpoint has one. */
  readonly bosTokenId: number | undefined;
  /** The id of the padding token, if any. */
  readonly padTokenId: number | undefined;
  /** End-of-sequence ids: the tokenizer's `eos_token`, then a generation config's `eos_token_id`s. */
  readonly eosTokenIds: readonly number[];
  /** Number of ids the tokenizer knows: largest id + 1, added tokens included (the model's embedding may be larger). */
  readonly vocabSize: number;
  /** The normalised special-token strings (`bos_token`, `eos_token`, …, `additional_special_tokens`). */
  readonly specialTokens: Readonly<Record<string, string | string[]>>;

  private readonly tok: Tokenizer;
  private readonly cleanUpSpaces: boolean;
  private readonly specialIds: ReadonlySet<number>;
  /** What to do after the library's `add_special_tokens: true` encode: +1 prepend BOS, −1 drop it, 0 keep. */
  private readonly bosFix: -1 | 0 | 1;
  private readonly eosFix: -1 | 0 | 1;
  private readonly eosTokenId: number | undefined;

  private constructor(tok: Tokenizer, config: Json, specialTokens: Record<string, string | string[]>, extraEos: number[], source: string) {
    this.tok = tok;
    this.specialTokens = specialTokens;
    this.cleanUpSpaces = config.clean_up_tokenization_spaces === true;

    const idOf = (key: string): number | undefined => {
      const s = specialTokens[key];
      return typeof s === 'string' ? tok.token_to_id(s) : undefined;
    };
    this.bosTokenId = idOf('bos_token');
    this.eosTokenId = idOf('eos_token');
    this.padTokenId = idOf('pad_token');
    this.eosTokenIds = mergeEosTokenIds(this.eosTokenId, extraEos);

    const vocab = tok.model?.vocab ?? [];
    let size = vocab.length;
    for (const id of tok.get_added_tokens_decoder().keys()) size = Math.max(size, id + 1);
    this.vocabSize = size;

    const special = new Set<number>();
    for (const [id, t] of tok.get_added_tokens_decoder()) if (t.special) special.add(id);
    for (const v of Object.values(specialTokens)) {
      for (const s of typeof v === 'string' ? [v] : v) {
        const id = tok.token_to_id(s);
        if (id !== undefined) special.add(id);
      }
    }
    this.specialIds = special;

    // What the post-processor adds around a single sequence, probed on an empty text.
    let probe: number[];
    try {
      probe = tok.encode('', { add_special_tokens: true }).ids;
    } catch (e) {
      throw new TokenizerError(`${source}: the tokenizer cannot encode: ${(e as Error).message}`);
    }
    const ppBos = this.bosTokenId !== undefined && probe.length > 0 && probe[0] === this.bosTokenId;
    const ppEos = this.eosTokenId !== undefined && probe.length > 0 && probe[probe.length - 1] === this.eosTokenId && !(ppBos && probe.length === 1);
    const wantBos = typeof config.add_bos_token === 'boolean' ? config.add_bos_token : ppBos;
    const wantEos = typeof config.add_eos_token === 'boolean' ? config.add_eos_token : ppEos;
    this.bosFix = wantBos === ppBos || this.bosTokenId === undefined ? 0 : wantBos ? 1 : -1;
    this.eosFix = wantEos === ppEos || this.eosTokenId === undefined ? 0 : wantEos ? 1 : -1;
  }

  /**
   * Loads the tokenizer of a Hugging Face model folder. Throws {@link TokenizerError} if `tokenizer.json` is
   * missing, not JSON, or not a tokenizer the library supports, or another present file is invalid.
   */
  static fromDir(dir: string, options: FromDirOptions = {}): TextTokenizer {
    const tokenizerFile = path.join(dir, 'tokenizer.json');
    const configFile = path.join(dir, 'tokenizer_config.json');
    const tokJson = readJsonObject(tokenizerFile, true)!;
    const rawConfig = readJsonObject(configFile, false) ?? {};
    const specialMap = readJsonObject(path.join(dir, 'special_tokens_map.json'), false);
    const addedTokensFile = path.join(dir, 'added_tokens.json');
    const addedTokens = readJsonObject(addedTokensFile, false);

    if (tokJson.model === null || typeof tokJson.model !== 'object') {
      throw new TokenizerError(`${tokenizerFile}: no "model" object; is this a tokenizers-library tokenizer.json?`);
    }
    // The library would read an unknown type as a legacy vocabulary and tokenise something else.
    const modelType = (tokJson.model as Json).type;
    if (modelType !== undefined && !TOKENIZER_MODELS.includes(modelType as string)) {
      throw new TokenizerError(`${tokenizerFile}: model.type ${JSON.stringify(modelType)} is not a tokenizer model (${TOKENIZER_MODELS.join(', ')})`);
    }

    // Special tokens: tokenizer_config first; special_tokens_map fills gaps (or overrides, for legacy configs).
    const legacy = !('added_tokens_decoder' in rawConfig);
    const special: Record<string, string | string[]> = {};
    const take = (src: Json | undefined, override: boolean): void => {
      if (!src) return;
      for (const key of SPECIAL_TOKEN_KEYS) {
        const s = tokenContent(src[key]);
        if (s !== undefined && (override || special[key] === undefined)) special[key] = s;
      }
      const extra = src.additional_special_tokens;
      if (Array.isArray(extra)) {
        const list = (special.additional_special_tokens as string[] | undefined) ?? [];
        for (const x of extra) {
          const s = tokenContent(x);
          if (s !== undefined && !list.includes(s)) list.push(s);
        }
        special.additional_special_tokens = list;
      }
    };
    take(rawConfig, false);
    take(specialMap, legacy);

    // The config handed to the library: special tokens as plain strings, transformers' cleanup default.
    const config: Json = { ...rawConfig };
    for (const [k, v] of Object.entries(special)) config[k] = v;
    config.clean_up_tokenization_spaces = rawConfig.clean_up_tokenization_spaces === true;
    delete config.chat_template; // not the tokenizer's business here, and may be a list

    // added_tokens.json (legacy): tokens missing from tokenizer.json become added tokens.
    const tokenizerJson: Json = { ...tokJson };
    if (tokJson.added_tokens !== undefined && tokJson.added_tokens !== null && !Array.isArray(tokJson.added_tokens)) {
      throw new TokenizerError(`${tokenizerFile}: "added_tokens" must be a list of tokens, found ${typeof tokJson.added_tokens}`);
    }
    const added = Array.isArray(tokJson.added_tokens) ? [...(tokJson.added_tokens as Json[])] : [];
    if (addedTokens) {
      const haveIds = new Set(added.map((t) => t.id));
      const specialStrings = new Set(Object.values(special).flat());
      for (const [content, id] of Object.entries(addedTokens)) {
        if (!Number.isInteger(id) || (id as number) < 0) {
          throw new TokenizerError(`${addedTokensFile}: id of ${JSON.stringify(content)} is not a non-negative integer`);
        }
        if (haveIds.has(id)) continue;
        added.push({
          id,
          content,
          single_word: false,
          lstrip: false,
          rstrip: false,
          normalized: false,
          special: specialStrings.has(content),
        });
      }
    }
    tokenizerJson.added_tokens = added;

    let tok: Tokenizer;
    try {
      tok = new Tokenizer(tokenizerJson, config);
    } catch (e) {
      throw new TokenizerError(`${tokenizerFile}: unsupported or invalid tokenizer: ${(e as Error).message}`);
    }

    const genEos = (options.readGenerationConfig ?? true) ? readGenerationEos(dir) : undefined;
    const extra = mergeEosTokenIds(genEos, options.extraEosTokenIds);
    return new TextTokenizer(tok, config, special, extra, tokenizerFile);
  }

  /** Token ids of `text`. Special-token strings in the text (`<image>`, `<|im_start|>`, …) map to their ids. */
  encode(text: string, options: EncodeOptions = {}): number[] {
    const add = options.addSpecialTokens ?? true;
    const ids = this.tok.encode(text, { add_special_tokens: add }).ids;
    if (!add) return ids;
    if (this.bosFix === 1) ids.unshift(this.bosTokenId!);
    else if (this.bosFix === -1 && ids[0] === this.bosTokenId) ids.shift();
    if (this.eosFix === 1) ids.push(this.eosTokenId!);
    else if (this.eosFix === -1 && ids[ids.length - 1] === this.eosTokenId) ids.pop();
    return ids;
  }

  /** The text of `ids`. Ids the tokenizer does not know are skipped. */
  decode(ids: readonly number[], options: DecodeOptions = {}): string {
    const known = ids.filter((id) => Number.isInteger(id) && id >= 0 && this.tok.id_to_token(id) !== undefined);
    const skip = options.skipSpecialTokens ?? false;
    const kept = skip ? known.filter((id) => !this.specialIds.has(id)) : known;
    if (kept.length === 0) return '';
    return this.tok.decode(kept, { skip_special_tokens: skip, clean_up_tokenization_spaces: this.cleanUpSpaces });
  }

  /** The id of a token string (vocabulary or added token), or undefined. */
  tokenToId(token: string): number | undefined {
    return this.tok.token_to_id(token);
  }

  /** The token string of an id, or undefined. */
  idToToken(id: number): string | undefined {
    return Number.isInteger(id) && id >= 0 ? this.tok.id_to_token(id) : undefined;
  }

  /** Whether `id` is an added token (special tokens, `<image>`, ...), not a word of the model's vocabulary. */
  isAddedToken(id: number): boolean {
    return this.tok.get_added_tokens_decoder().has(id);
  }

  /** Whether `id` is a special token (skipped by `skipSpecialTokens`). */
  isSpecialId(id: number): boolean {
    return this.specialIds.has(id);
  }

  /** Whether `id` ends generation (one of {@link eosTokenIds}). */
  isEos(id: number): boolean {
    return this.eosTokenIds.includes(id);
  }

  /**
   * An incremental detokeniser (see {@link StreamDecoder}). It re-decodes only a short window of ids: from
   * the token before the last emitted text (so context-dependent rules such as SentencePiece's leading-space
   * strip apply identically to both sides of the difference) to the end, and emits the new part once it no
   * longer ends in U+FFFD.
   */
  createStreamDecoder(options: DecodeOptions = {}): StreamDecoder {
    const opts: DecodeOptions = { skipSpecialTokens: options.skipSpecialTokens ?? false };
    const ids: number[] = [];
    let text = '';
    let prefixOffset = 0; // start of the decoding window
    let readOffset = 0; // ids before this are accounted for in `text`
    const emit = (final: boolean): string => {
      const prefixText = this.decode(ids.slice(prefixOffset, readOffset), opts);
      const newText = this.decode(ids.slice(prefixOffset), opts);
      if (newText.length > prefixText.length && (final || !newText.endsWith('\uFFFD'))) {
        const delta = newText.slice(prefixText.length);
        prefixOffset = readOffset;
        readOffset = ids.length;
        text += delta;
        return delta;
      }
      return '';
    };
    return {
      push: (id: number): string => {
        ids.push(id);
        return emit(false);
      },
      flush: (): string => (readOffset < ids.length ? emit(true) : ''),
      get ids() {
        return ids;
      },
      get text() {
        return text;
      },
    };
  }
}
