// The language-model side of every family, as the engine, sessions and sparsity methods see it: a
// decoder over input embeddings with a KV cache and per-layer hooks. LlamaDecoder (Llama, Qwen2)
// implements it; a family with another decoder implements the same interface.
import { AttentionKeys, KVCache, KernelBackend, Matrix } from '../kernels/backend.js';

/** A decoder's KV cache: one part per memory place the layers span. */
export class DecoderCache {
  constructor(readonly parts: KVCache[]) {}
  /** Slots stored (the same in every layer after a complete forward pass). */
  get length(): number {
    return this.parts[0].length;
  }
  /** Bytes its K and V blocks take (whole blocks, every layer). */
  get bytes(): number {
    let b = 0;
    for (const p of this.parts) b += Math.ceil(p.length / p.blockSize) * p.blockSize * p.layers * p.kvHeads * p.headDim * 4 * 2;
    return b;
  }
}

export interface ForwardOptions {
  /** Rows of the input whose logits are returned (default: the last row). */
  logitRows?: number[];
  /** When given, receives each layer's output (the residual stream) as it is computed. */
  onHidden?: (layer: number, x: Matrix) => void;
  /**
   * The keys a layer's attention reads, for one-row (decode) calls (default: every slot up to the
   * row's own), given the row's query (after RoPE; its own K/V are already in the cache). This is
   * how decode-time methods attend to a subset of the cache in place.
   */
  attentionKeys?: (layer: number, slot0: number, q: Matrix, part: KVCache, layerInPart: number) => AttentionKeys | undefined;
  /**
   * Called after each layer's attention with its query rows [n][heads * headDim] (after RoPE), the
   * cache part holding the layer and the layer's index in it (e.g. to score keys by a question).
   */
  onQueries?: (layer: number, q: Matrix, part: KVCache, layerInPart: number) => void;
  /**
   * Token dropping inside the stack (FastV, PyramidDrop): called after a layer's attention with its
   * query rows; returning row indices (ascending) keeps only those rows from the next layer on
   * (their K/V go to the next layers' cache slots slot0.. in that order, with their own positions).
   */
  keepRows?: (layer: number, q: Matrix, part: KVCache, layerInPart: number, slot0: number) => number[] | null;
  /**
   * Called with the input rows of each linear group of a layer (see LinearGroup: the index of the
   * group within the layer, in linearGroups() order) just before its matmul (calibration for
   * quantizers).
   */
  onLinearInput?: (layer: number, group: number, x: Matrix) => void;
  /** The cache slot a layer writes the first row to, given the call's slot0 (default: slot0). */
  layerSlot0?: (layer: number, slot0: number) => number;
}

/** Options for placing a decoder in memory. */
export interface PlacementOptions {
  /**
   * Weight bytes one memory place may take before the next layers go to a new place (the rest of
   * the place is left to the KV cache and activations). Default: 3/4 of a place.
   */
  placeBudgetBytes?: number;
}

/**
 * A set of linear layers that read the same input, and what produces that input: a norm (whose
 * weight a per-input-channel scale can be folded into) or another linear (whose output rows can
 * be divided by it). AWQ's scale search and every 4-bit quantizer work on these groups.
 */
export interface LinearGroup {
  layer: number;
  /** null: nothing a scale can be folded into (o_proj under grouped-query attention). */
  prev: { kind: 'norm'; weight: string } | { kind: 'linear'; base: string } | null;
  /** Tensor name prefixes ("...q_proj": its tensors are "<base>.weight", "<base>.bias"), with [out, in]. */
  linears: { base: string; out: number; in: number }[];
}

/** What the engine and the sparsity methods use of a language model. */
export interface LanguageDecoder {
  readonly backend: KernelBackend;
  /** Decoder layers. */
  readonly layers: number;
  /** Query heads, KV heads (grouped-query attention: query heads k·r … k·r+r−1 share KV head k) and their dimension. */
  readonly heads: number;
  readonly kvHeads: number;
  readonly headDim: number;
  /** Width of the residual stream (and of the input embeddings). */
  readonly hidden: number;
  readonly vocabSize: number;
  /** Positions the model supports (max_position_embeddings). */
  readonly contextWindow: number;
  /** End-of-sequence ids its config names. */
  readonly eosTokenIds: readonly number[];
  /** The memory place of the first layers (where input embeddings should be). */
  readonly place: number;
  /** Where layer `layer` lives: its memory place, the index of its cache part, and its index there. */
  layerPart(layer: number): { place: number; part: number; layerInPart: number };
  /** The decoder layers' linears in groups by shared input (see LinearGroup), layer by layer. */
  linearGroups(): LinearGroup[];
  newCache(): DecoderCache;
  /** Drops cache slots past `length`. */
  truncateCache(cache: DecoderCache, length: number): void;
  /** A new cache holding a copy of `cache`'s slots [0, length) (a branch: writing one leaves the other as it was). */
  copyCache(cache: DecoderCache, length: number): DecoderCache;
  freeCache(cache: DecoderCache): void;
  /** Token embeddings of `ids` into out [ids.length][hidden]. */
  embed(out: Matrix, ids: readonly number[]): void;
  /**
   * Runs the decoder over input embeddings x [n][hidden] at cache slots [slot0, slot0 + n) with
   * RoPE positions `positions` (x may be modified). Returns the logits of the requested rows,
   * [rows][vocab], in a buffer the next call overwrites.
   */
  forward(x: Matrix, cache: DecoderCache, slot0: number, positions: readonly number[] | Int32Array, opts?: ForwardOptions): Float32Array;
}
