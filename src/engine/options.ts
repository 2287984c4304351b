// The public shapes of generation (requests, options, results, statistics) and the sparsity
// methods a request's options select.
import { KernelBackend, LinearCompute } from '../kernels/backend.js';
import { WasmBackendOptions } from '../kernels/wasm-backend.js';
import { RgbImage, ImageLimits } from '../io/image.js';
import { ChatMessage } from '../io/chat-template.js';
import { PrefillReducer, densePrefill, sparseVilaDecode, sparseVilaPrefill } from '../sparsity/method.js';
import { DecodeMethod } from '../sparsity/decode.js';
import { SamplingOptions } from './sampling.js';
import { GenerationError } from './request.js';

export type ImageInput = string | Uint8Array | RgbImage;

export interface LoadOptions extends WasmBackendOptions {
  /** Use this backend instead of creating one (it is then not closed by `close()`). */
  backend?: KernelBackend;
  /** Progress of weight loading, in bytes. */
  onProgress?: (loadedBytes: number, totalBytes: number) => void;
  /** Weight bytes per memory place before layers continue in a new one (see PlacementOptions). */
  placeBudgetBytes?: number;
  /**
   * Said once each, as found: what the engine does in place of what the folder lacks (no chat
   * template: the plain prompt layout; no EOS token; threads capped to the cores). Default:
   * `process.emitWarning` (Node) or `console.warn`. The model keeps them in `warnings`.
   */
  onWarning?: (message: string) => void;
  /** Bounds on the images this model is given, checked before decoding (see ImageLimits). */
  imageLimits?: Partial<ImageLimits>;
  /**
   * How the vision tower's linear layers multiply. `stored` (default): f32 math over the weights
   * as stored. `int16`: weights quantized at load per output row to 12-bit integers, activations
   * per row, integer sums: the tower encodes ~1.5x faster, its outputs differ from `stored` by
   * about 1e-3 relative (docs/BENCHMARKS.md measures both). The language model is not affected.
   */
  visionCompute?: LinearCompute;
  /**
   * 4-bit (AWQ) checkpoints: what decode quantizes each activation row to, per group, before the
   * integer products. `i16` (default, W4A16: relative error ~1e-5); `i8` (W4A8: the decode
   * matmuls ~1.6× faster where they are compute-bound, error ~1e-2 like llama.cpp's Q8
   * activations; docs/BENCHMARKS.md measures both). Prefill is not affected.
   */
  int4Activations?: 'i16' | 'i8';
}

export interface GenerateRequest {
  /** Images, in the order of their placeholders in the prompt. */
  images?: ImageInput[];
  /** A user message: rendered with the model's chat template (images first, then this text). */
  prompt?: string;
  /** A whole conversation, rendered with the model's chat template. */
  messages?: ChatMessage[];
  /** Token ids as they are (image placeholders already expanded); bypasses the template. */
  inputIds?: number[];
}

export interface GenerateOptions extends SamplingOptions {
  /** Default 256. */
  maxNewTokens?: number;
  /** Generation stops when the text contains one of these (it is not included). */
  stop?: string[];
  /** Token ids that end generation (default: the tokenizer's and generation_config.json's EOS). */
  eosTokenIds?: number[];
  /** Streams the text as it is generated: each call gets the new text and the token id. */
  onToken?: (text: string, id: number) => void;
  /**
   * SparseVILA prefill sparsity p in [0, 1): the fraction of each image's visual tokens dropped
   * before the language model, ranked by the vision tower's own attention (query-agnostic).
   * Default 0 (dense: every token, computed exactly as without this option).
   */
  prefillSparsity?: number;
  /** A prefill stage other than SparseVILA's (e.g. visionZipPrefill(64), pruMergePrefill()); not with prefillSparsity. */
  prefill?: PrefillReducer;
  /**
   * SparseVILA decode sparsity d in [0, 1): after the prompt is prefilled, each layer keeps, per KV
   * head, the top (1 - d) of the visual tokens by the attention the question (the prompt after the
   * last image) pays to them; every decode step attends to those and to all other tokens. The
   * cache keeps every visual token. Default 0 (dense decode).
   */
  decodeSparsity?: number;
  /** With decode sparsity: select the visual tokens again every N generated tokens, by the latest token's attention (default 0: once per turn). */
  reretrieveEvery?: number;
  /** A decode stage other than SparseVILA's (e.g. questDecode({ budget: 256 })); not with decodeSparsity. */
  decode?: DecodeMethod;
  /**
   * Stops the answer when aborted: checked before the images are encoded, before the prefill and
   * between generated tokens (the call yields to the event loop after each token, so a signal
   * raised by a timer, a Ctrl-C handler or a closed connection is seen). The result then holds
   * what was generated, with finishReason 'abort'.
   */
  signal?: AbortSignal;
}

export interface GenerationStats {
  promptTokens: number;
  /** Prompt tokens this call prefilled (fewer than promptTokens when a session reused its cache). */
  prefilledTokens: number;
  /** Visual tokens in the prompt (after prefill pruning). */
  imageTokens: number;
  /** Visual tokens the images gave before prefill pruning. */
  visualTokensIn: number;
  /** Visual tokens each decode step attends to per layer and KV head (all of them without decode sparsity; FastV/PDrop: the last layer). */
  visualTokensRetrieved: number;
  /** The same over the LLM's layers: fewest, mean and most. */
  visualTokensPerLayer: { min: number; mean: number; max: number };
  /** The images' features came from the session's cache (they were not encoded again). */
  imageCached: boolean;
  /** K and V bytes the first decode step reads from the cache, over all layers. */
  kvBytesPerStep: number;
  /** Decoding, preprocessing and encoding the images (vision tower + projector). */
  imageMs: number;
  /** The language model over the whole prompt, up to the first token's logits. */
  prefillMs: number;
  prefillTokensPerSecond: number;
  newTokens: number;
  decodeMs: number;
  /** Decode steps (one forward pass each, after the prompt) per second of their time. */
  decodeTokensPerSecond: number;
  /** Peak resident memory of the process (Node), or the backend's memory elsewhere. */
  peakMemoryBytes: number;
  /**
   * Sessions in chat mode: the oldest turns dropped before this question so that the conversation
   * (and room for the answer) fits the context window; they stay dropped. 0 elsewhere.
   */
  historyTurnsDropped: number;
}

/**
 * Why generation ended: an end-of-sequence token, a stop string, maxNewTokens, the context window
 * (the prompt and answer filled it), or the caller's AbortSignal.
 */
export type FinishReason = 'eos' | 'stop' | 'length' | 'context' | 'abort';

export interface GenerationResult {
  ids: number[];
  text: string;
  finishReason: FinishReason;
  stats: GenerationStats;
  /**
   * With images, which visual tokens the turn used: per image, the units (connector tokens, by
   * their image-level id: see ImageEncoder.unitIds) the prompt's image tokens stand for, in prompt
   * order (a merged token: its anchor unit; -1: a row the family adds, such as LLaVA-NeXT's
   * image_newline), and per image and LLM layer the units decode retrieval attended to (union
   * over KV heads; null without decode sparsity). For LLaVA a unit is a patch index, or with
   * vision_feature_select_strategy "full" unit 0 is the class token and unit u patch u - 1.
   */
  visual?: { kept: number[][]; retrieved: number[][][] | null };
}

/** The prefill stage a request asks for: opts.prefill, else SparseVILA's with prefillSparsity (dense at 0). */
export function prefillReducerOf(opts: Pick<GenerateOptions, 'prefill' | 'prefillSparsity' | 'decodeSparsity'>): PrefillReducer {
  const { p } = checkSparsity(opts);
  if (opts.prefill) {
    if (opts.prefillSparsity !== undefined && opts.prefillSparsity !== 0)
      throw new GenerationError(`give either a prefill method (${opts.prefill.name}) or prefillSparsity, not both`);
    return opts.prefill;
  }
  return p > 0 ? sparseVilaPrefill(p) : densePrefill;
}

/** The decode stage a request asks for: opts.decode, else SparseVILA's with decodeSparsity (null: dense). */
export function decodeMethodOf(opts: Pick<GenerateOptions, 'decode' | 'decodeSparsity' | 'prefillSparsity' | 'reretrieveEvery'>): DecodeMethod | null {
  const { d } = checkSparsity(opts);
  if (opts.decode) {
    if (d !== 0) throw new GenerationError(`give either a decode method (${opts.decode.name}) or decodeSparsity, not both`);
    return opts.decode;
  }
  return d > 0 ? sparseVilaDecode(d, opts.reretrieveEvery ?? 0) : null;
}

function checkSparsity(opts: GenerateOptions): { p: number; d: number } {
  const p = opts.prefillSparsity ?? 0,
    d = opts.decodeSparsity ?? 0;
  if (typeof p !== 'number' || !(p >= 0 && p < 1)) throw new GenerationError(`prefillSparsity must be a number in [0, 1), got ${String(p)}`);
  if (typeof d !== 'number' || !(d >= 0 && d < 1)) throw new GenerationError(`decodeSparsity must be a number in [0, 1), got ${String(d)}`);
  return { p, d };
}
