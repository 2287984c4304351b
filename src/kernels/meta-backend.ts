// A backend of shapes only (PyTorch's "meta" device): it hands out handles that record what would
// be allocated and where, and holds no data. Loading a model onto it runs exactly the checks of a
// real load (every tensor's name, shape and dtype against the config, the memory places the layers
// take) without reading a weight byte or computing anything: `inspect` uses it.
import {
  AttentionOptions,
  EmbeddingTable,
  IntVector,
  KVCache,
  KernelBackend,
  KeyScoreOptions,
  Int4Options,
  Int4Parts,
  LinearCompute,
  LinearWeight,
  Matrix,
  ParamVector,
  RopeTable,
  WEIGHT_DTYPE_BYTES,
  WeightDType,
  int4Bytes,
  int4ShapeProblem,
  q16Bytes,
} from './backend.js';

/** What a meta backend is asked to compute (it cannot). */
export class MetaBackendError extends Error {}

class MetaMatrix implements Matrix {
  constructor(
    readonly place: number,
    readonly rows: number,
    readonly cols: number,
    readonly ld: number,
  ) {}
  view(r0: number, n: number, c0 = 0, nc = this.cols - c0): Matrix {
    if (r0 < 0 || n < 0 || r0 + n > this.rows || c0 < 0 || nc < 0 || c0 + nc > this.cols) {
      throw new MetaBackendError(`view rows [${r0}, ${r0 + n}) cols [${c0}, ${c0 + nc}) is outside a ${this.rows}x${this.cols} matrix`);
    }
    return new MetaMatrix(this.place, n, nc, this.ld);
  }
}

type Sized = { bytes: number; place: number };

export class MetaBackend implements KernelBackend {
  readonly name = 'meta';
  readonly threads = 1;
  private readonly used: number[] = [0];
  private readonly sizes = new WeakMap<object, Sized>();

  /** The limits of the backend it stands for (default: the wasm backend's 4 GiB places and head dim 256). */
  constructor(
    readonly placeCapacity = 2 ** 32,
    readonly maxHeadDim = 256,
  ) {}

  get places(): number {
    return this.used.length;
  }
  async addPlace(): Promise<number> {
    this.used.push(0);
    return this.used.length - 1;
  }
  placeUsage(place: number): number {
    return this.used[place] ?? 0;
  }
  async close(): Promise<void> {}

  private take<T extends object>(h: T, bytes: number, place: number): T {
    if (place < 0 || place >= this.used.length) throw new MetaBackendError(`no memory place ${place}`);
    this.used[place] += bytes;
    this.sizes.set(h, { bytes, place });
    return h;
  }

  matrix(rows: number, cols: number, place = 0): Matrix {
    return this.take(new MetaMatrix(place, rows, cols, cols), rows * cols * 4, place);
  }
  ints(length: number, place = 0): IntVector {
    return this.take({ length }, length * 4, place);
  }
  write(): void {}
  read(m: Matrix, out?: Float32Array): Float32Array {
    return out ?? new Float32Array(m.rows * m.cols);
  }
  writeInts(): void {}
  readInts(v: IntVector): Int32Array {
    return new Int32Array(v.length);
  }
  copy(): void {}
  free(x: object): void {
    const s = this.sizes.get(x);
    if (s) {
      this.used[s.place] -= s.bytes;
      this.sizes.delete(x);
    }
  }

  linear(
    outFeatures: number,
    inFeatures: number,
    dtype: WeightDType,
    _fill: (dest: Uint8Array) => void,
    place = 0,
    compute: LinearCompute = 'stored',
  ): LinearWeight {
    const byteLength = compute === 'int16' ? q16Bytes(outFeatures, inFeatures) : outFeatures * inFeatures * WEIGHT_DTYPE_BYTES[dtype];
    return this.take({ outFeatures, inFeatures, dtype, compute, byteLength }, byteLength, place);
  }
  linearInt4(outFeatures: number, inFeatures: number, groupSize: number, _fill: (dest: Int4Parts) => void, place = 0, opts: Int4Options = {}): LinearWeight {
    const dequantRounding = opts.dequantRounding ?? 'none',
      activations = opts.activations ?? 'i16';
    if (activations !== 'i16' && activations !== 'i8') throw new MetaBackendError(`linearInt4: activations must be i16 or i8, got ${String(activations)}`);
    const problem = int4ShapeProblem(inFeatures, groupSize);
    if (problem) throw new MetaBackendError(`linearInt4: ${problem}`);
    const byteLength = int4Bytes(outFeatures, inFeatures, groupSize);
    return this.take({ outFeatures, inFeatures, dtype: 'int4', groupSize, dequantRounding, activations, compute: 'stored', byteLength }, byteLength, place);
  }
  embedding(rows: number, dim: number, dtype: WeightDType, _fill: (dest: Uint8Array) => void, place = 0): EmbeddingTable {
    return this.take({ rows, dim, dtype }, rows * dim * WEIGHT_DTYPE_BYTES[dtype], place);
  }
  params(data: Float32Array, place = 0): ParamVector {
    return this.take({ length: data.length }, data.length * 4, place);
  }
  ropeTable(rotaryDim: number, _theta: number, maxPositions: number, place = 0): RopeTable {
    return this.take({ rotaryDim, maxPositions }, maxPositions * rotaryDim * 4, place);
  }
  kvCache(layers: number, kvHeads: number, headDim: number, opts: { blockSize?: number; place?: number } = {}): KVCache {
    return this.take({ layers, kvHeads, headDim, blockSize: opts.blockSize ?? 256, length: 0 }, 0, opts.place ?? 0);
  }
  kvReserve(): void {}
  kvTruncate(): void {}
  kvCopy(): void {
    this.compute('kvCopy');
  }

  private compute(op: string): never {
    throw new MetaBackendError(`${op}: the meta backend describes shapes and holds no data; it cannot compute`);
  }
  matmul(): void {
    this.compute('matmul');
  }
  embed(): void {
    this.compute('embed');
  }
  embedFromLinear(): void {
    this.compute('embedFromLinear');
  }
  rmsNorm(): void {
    this.compute('rmsNorm');
  }
  addRmsNorm(): void {
    this.compute('addRmsNorm');
  }
  layerNorm(): void {
    this.compute('layerNorm');
  }
  activation(): void {
    this.compute('activation');
  }
  gatedActivation(): void {
    this.compute('gatedActivation');
  }
  add(): void {
    this.compute('add');
  }
  mul(): void {
    this.compute('mul');
  }
  softmax(): void {
    this.compute('softmax');
  }
  rope(): void {
    this.compute('rope');
  }
  kvWrite(): void {
    this.compute('kvWrite');
  }
  attention(_out: Matrix, _q: Matrix, _cache: KVCache, _layer: number, _opts: AttentionOptions): void {
    this.compute('attention');
  }
  keyScores(_out: Matrix, _q: Matrix, _cache: KVCache, _layer: number, _opts: KeyScoreOptions): void {
    this.compute('keyScores');
  }
  pageBounds(): void {
    this.compute('pageBounds');
  }
  pageScores(): void {
    this.compute('pageScores');
  }
}
