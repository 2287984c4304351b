// The kernel interface. Models are written against it and nothing else; the WebAssembly backend
// implements it today, and a WebGPU or native backend can implement it later.
//
// Values live on the backend (for wasm: in an arena's shared memory). The handles below describe
// them; only the backend that made a handle can use it.

/** Storage dtypes of weights. Activations are always f32. */
export type WeightDType = 'f32' | 'f16' | 'bf16';

export const WEIGHT_DTYPE_BYTES: Record<WeightDType, number> = { f32: 4, f16: 2, bf16: 2 };

/**
 * How a linear layer multiplies. `stored`: f32 math over the weight in its storage dtype (exact
 * up to f32 rounding). `int16`: the weight is quantized once, at load, per output row to 12-bit
 * integers (replacing the stored copy), activations per row as they are multiplied, and the
 * products summed in integers: about twice the f32 speed on compute-bound GEMMs, with a relative
 * error of about 1e-3 per output. Opt-in, for compute-bound layers (a vision tower's).
 */
export type LinearCompute = 'stored' | 'int16';

/** Bytes an `int4` linear weight takes: quads of rows, half a byte per weight, a scale and an offset (f32) per row and group. */
export function int4Bytes(outFeatures: number, inFeatures: number, groupSize: number): number {
  const rows = Math.ceil(outFeatures / 4) * 4;
  return rows * (inFeatures / 2) + rows * (inFeatures / groupSize) * 8;
}

/** Checks an int4 weight's shape against the kernels' needs; returns the problem or null. */
export function int4ShapeProblem(inFeatures: number, groupSize: number): string | null {
  if (!Number.isInteger(groupSize) || groupSize < 32 || groupSize % 32 !== 0 || groupSize > 8192)
    return `group size ${groupSize} is not a multiple of 32 in [32, 8192]`;
  if (inFeatures % groupSize !== 0) return `${inFeatures} inputs are not a multiple of the group size ${groupSize}`;
  return null;
}

/** Bytes an `int16` linear weight takes: 8-row panels of 16-bit pairs, and a scale per row. */
export function q16Bytes(outFeatures: number, inFeatures: number): number {
  const rows = Math.ceil(outFeatures / 8) * 8;
  return rows * Math.ceil(inFeatures / 2) * 4 + rows * 4;
}

/** An f32 matrix [rows][cols] with a row stride (`ld` >= cols, in elements). */
export interface Matrix {
  /** The memory place (see KernelBackend.addPlace) the matrix lives in. */
  readonly place: number;
  readonly rows: number;
  readonly cols: number;
  readonly ld: number;
  /** Rows [r0, r0 + n) and columns [c0, c0 + nc) of this matrix, sharing its memory. */
  view(r0: number, n: number, c0?: number, nc?: number): Matrix;
}

/** A vector of i32 (token ids, positions, key indices). */
export interface IntVector {
  readonly length: number;
}

/**
 * How a linear weight is held: a float dtype, or `int4`: 4-bit integers q with a scale s and an
 * offset m per output row and group of `groupSize` inputs, w = q * s + m (AWQ W4A16).
 */
export type LinearStorage = WeightDType | 'int4';

/**
 * A 4-bit weight in the interface's canonical form, as a weight format hands it over: `q` row-major
 * [out][in / 2] bytes (even input index in the low nibble), `scales` and `offsets` [out][in /
 * groupSize] (w = q * scale + offset).
 */
export interface Int4Parts {
  q: Uint8Array;
  scales: Float32Array;
  offsets: Float32Array;
}

/** How a 4-bit linear computes (see KernelBackend.linearInt4). */
export interface Int4Options {
  /**
   * The reference implementations dequantize in the scales' dtype (one rounding of q * s +
   * offset to f16 or bf16); many-row products (prefill) do the same, so that they compute with
   * the reference's weights. Default none (exact). One-row products (decode) use the exact q * s
   * + offset in integer arithmetic.
   */
  dequantRounding?: 'f16' | 'bf16' | 'none';
  /**
   * One-row products (decode) quantize the activation row per group of groupSize inputs: `i16`
   * (default, W4A16: 15-bit integers, relative error ~3e-5) or `i8` (W4A8: about twice the speed where the kernel
   * is compute-bound, error ~1e-2 like llama.cpp's Q8 activations; opt-in).
   */
  activations?: 'i16' | 'i8';
}

/** A linear layer's weight W [outFeatures][inFeatures], held in its storage dtype. */
export interface LinearWeight {
  readonly outFeatures: number;
  readonly inFeatures: number;
  readonly dtype: LinearStorage;
  /** int4: inputs per scale group. */
  readonly groupSize?: number;
  /** int4: the dtype many-row products round each dequantized weight to (see Int4Options). */
  readonly dequantRounding?: 'f16' | 'bf16' | 'none';
  /** int4: what one-row products quantize the activations to (see Int4Options). */
  readonly activations?: 'i16' | 'i8';
  /** How it multiplies (see LinearCompute). */
  readonly compute: LinearCompute;
  /** Bytes the weight occupies on the backend. */
  readonly byteLength: number;
}

/** An embedding table [rows][dim] in its storage dtype. */
export interface EmbeddingTable {
  readonly rows: number;
  readonly dim: number;
  readonly dtype: WeightDType;
}

/** An f32 vector of parameters (norm weights, biases). */
export interface ParamVector {
  readonly length: number;
}

/** Rotary tables: cos and sin of position * inv_freq, for positions [0, maxPositions). */
export interface RopeTable {
  readonly rotaryDim: number;
  readonly maxPositions: number;
}

/**
 * A KV cache: for each layer and KV head, K and V rows of `headDim` f32 per token slot. It grows
 * in blocks of `blockSize` slots without moving what is already stored, and can be truncated.
 */
export interface KVCache {
  readonly layers: number;
  readonly kvHeads: number;
  readonly headDim: number;
  readonly blockSize: number;
  /** Slots in use (the same for every layer once a forward pass is complete). */
  readonly length: number;
}

export type Activation = 'gelu' | 'gelu_pytorch_tanh' | 'quick_gelu' | 'silu' | 'identity';

/** Which keys an attention call reads. */
export interface AttentionKeys {
  /** Keys are cache slots [0, count). */
  count: number;
  /**
   * Decode only: attend to these cache slots instead (one list per KV head of `count` entries each
   * when `perKvHead`, else one list shared by every head). K/V rows are read in place.
   */
  indices?: IntVector;
  perKvHead?: boolean;
  /**
   * With perKvHead: entries from one KV head's list to the next (default `count`). A larger stride
   * lets lists grow in place (a decode step appends one slot to each) without rewriting them.
   */
  stride?: number;
}

/** Options of KernelBackend.keyScores. */
export interface KeyScoreOptions {
  /** Number of query heads (q.cols = heads * headDim). */
  heads: number;
  /** Softmax scale, usually 1 / sqrt(headDim). */
  scale: number;
  /** The cache slots scored (e.g. the visual tokens), in any order. */
  keys: IntVector;
}

export interface AttentionOptions {
  /** Number of query heads (q.cols = heads * headDim). */
  heads: number;
  /** Cache slot of the first query row (its own K/V must already be written). */
  qSlot0: number;
  causal: boolean;
  /** Softmax scale, usually 1 / sqrt(headDim). */
  scale: number;
  keys: AttentionKeys;
  /** Also measure how much attention chosen query rows pay to each key (see KeySalience). */
  salience?: KeySalience;
}

/**
 * Key salience from one attention call: out[j] = (1 / heads) * sum over query heads h and query
 * rows r of rowWeights[r] * P_h[r, j], where P_h is the call's attention probabilities. Rows of
 * weight 0 cost nothing. Weight 1 on one row gives that row's head-averaged attention (CLIP's
 * [CLS] row), 1 / rows on every row the mean attention each key receives (the column mean). It is
 * computed in a second streaming pass over the keys from each row's softmax statistics, never as
 * a rows x keys matrix. Not with key index lists.
 */
export interface KeySalience {
  /** 1 x q.rows. */
  rowWeights: Matrix;
  /** 1 x keys.count, written. */
  out: Matrix;
}

export interface KernelBackend {
  readonly name: string;
  readonly threads: number;

  // ---- memory places ----
  // A place is a separately addressed memory region (for wasm: one 4 GiB memory). All operands
  // of one operation must be in the same place; `copy` moves data between places. A model larger
  // than a place puts contiguous ranges of layers in successive places.
  /** Number of places; indices 0..places-1 are valid `place` arguments. */
  readonly places: number;
  /** Adds a place and returns its index. */
  addPlace(): Promise<number>;
  /** Bytes allocated in a place. */
  placeUsage(place: number): number;
  /** Bytes one place can hold at most. */
  readonly placeCapacity: number;
  /** Largest head dimension the attention kernels take (a multiple of 4). */
  readonly maxHeadDim: number;
  /** Releases the backend's threads and memory. */
  close(): Promise<void>;

  // ---- memory ----
  /** A new f32 matrix (contents undefined). `place` selects the memory region (see arenas). */
  matrix(rows: number, cols: number, place?: number): Matrix;
  ints(length: number, place?: number): IntVector;
  write(m: Matrix, data: Float32Array): void;
  /** The matrix's values; into `out` (which must hold rows * cols) when given, else a new array. */
  read(m: Matrix, out?: Float32Array): Float32Array;
  writeInts(v: IntVector, data: Int32Array | readonly number[]): void;
  readInts(v: IntVector): Int32Array;
  /** Copies src into dst (same shape; may be in different regions). */
  copy(dst: Matrix, src: Matrix): void;
  free(x: Matrix | IntVector | LinearWeight | EmbeddingTable | ParamVector | KVCache | RopeTable): void;

  // ---- parameters ----
  /**
   * A linear weight from its raw little-endian bytes in storage dtype, row-major [out][in] (as in a
   * safetensors file). `fill` receives a staging area on the backend to write those bytes into, so
   * the weight never exists as f32. `compute` (default `stored`) picks how it multiplies.
   */
  linear(outFeatures: number, inFeatures: number, dtype: WeightDType, fill: (dest: Uint8Array) => void, place?: number, compute?: LinearCompute): LinearWeight;
  /**
   * A 4-bit linear weight (`int4`): `fill` writes the canonical parts (see Int4Parts) into staging
   * areas on the backend, which repacks them into its kernels' layout. inFeatures must be a
   * multiple of groupSize, and groupSize a multiple of 32. See Int4Options.
   */
  linearInt4(outFeatures: number, inFeatures: number, groupSize: number, fill: (dest: Int4Parts) => void, place?: number, opts?: Int4Options): LinearWeight;
  embedding(rows: number, dim: number, dtype: WeightDType, fill: (dest: Uint8Array) => void, place?: number): EmbeddingTable;
  params(data: Float32Array, place?: number): ParamVector;
  ropeTable(rotaryDim: number, theta: number, maxPositions: number, place?: number): RopeTable;
  kvCache(layers: number, kvHeads: number, headDim: number, opts?: { blockSize?: number; place?: number }): KVCache;

  // ---- compute ----
  /** out = x W^T (+ bias). One-row inputs take the weight-streaming path, others the blocked GEMM. */
  matmul(out: Matrix, x: Matrix, w: LinearWeight, bias?: ParamVector): void;
  /** out[r] = table[ids[r]] */
  embed(out: Matrix, table: EmbeddingTable, ids: IntVector): void;
  /** out[r] = row ids[r] of a linear weight (embedding lookup through a tied lm_head). */
  embedFromLinear(out: Matrix, w: LinearWeight, ids: IntVector): void;
  rmsNorm(out: Matrix, x: Matrix, weight: ParamVector, eps: number): void;
  /** x += residual, then out = RMSNorm(x) (the residual step of a pre-norm block, fused). */
  addRmsNorm(out: Matrix, x: Matrix, residual: Matrix, weight: ParamVector, eps: number): void;
  layerNorm(out: Matrix, x: Matrix, weight: ParamVector, bias: ParamVector, eps: number): void;
  activation(out: Matrix, x: Matrix, act: Activation): void;
  /** out = act(a) * b */
  gatedActivation(out: Matrix, a: Matrix, b: Matrix, act: Activation): void;
  add(out: Matrix, a: Matrix, b: Matrix): void;
  mul(out: Matrix, a: Matrix, b: Matrix): void;
  softmax(out: Matrix, x: Matrix): void;
  /** Rotates x in place: x.cols = heads * headDim, the first table.rotaryDim dims of each head. */
  rope(x: Matrix, heads: number, headDim: number, positions: IntVector, table: RopeTable): void;
  /** Ensures the cache has slots for [0, length) and sets its length. */
  kvReserve(cache: KVCache, length: number): void;
  /** Writes K and V rows [n][kvHeads * headDim] of `layer` into slots [slot0, slot0 + n). */
  kvWrite(cache: KVCache, layer: number, k: Matrix, v: Matrix, slot0: number): void;
  /** Drops slots past `length` (their blocks are returned). */
  kvTruncate(cache: KVCache, length: number): void;
  /**
   * Makes `dst` hold a copy of `src`'s slots [0, length) and nothing else (a new branch of a cached
   * prefix: writing one leaves the other as it was). Same shape and place.
   */
  kvCopy(dst: KVCache, src: KVCache, length: number): void;
  attention(out: Matrix, q: Matrix, cache: KVCache, layer: number, opts: AttentionOptions): void;
  /**
   * Query-aware key scores (SparseVILA's decode retrieval): out [kvHeads][keys.length], out[g][j]
   * = the mean over KV group g's query heads h of sum_r P_h[r, j], P_h[r, .] being query row r's
   * softmax over the given keys only. q: the question's rows [n][heads * headDim] after RoPE.
   */
  keyScores(out: Matrix, q: Matrix, cache: KVCache, layer: number, opts: KeyScoreOptions): void;
  /**
   * Quest's page summaries: for pages [page0, page0 + nPages) of `pageSize` slots (below the
   * cache length), the element-wise min and max of each KV head's K rows. bounds is
   * [kvHeads * pageStride][2 * headDim] (row h * pageStride + p: min, then max), whole.
   */
  pageBounds(bounds: Matrix, cache: KVCache, layer: number, opts: { pageSize: number; page0: number; nPages: number }): void;
  /**
   * Quest's page scores of one query row q [1][heads * headDim]: out[h][p] = sum over KV group h's
   * query heads of sum_d max(q_d min_d, q_d max_d) for pages [0, nPages). out is [kvHeads][nPages].
   */
  pageScores(out: Matrix, q: Matrix, bounds: Matrix, opts: { heads: number; kvHeads: number; nPages: number }): void;
}
