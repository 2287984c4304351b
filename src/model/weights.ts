// Reading a model's parameters from a tensor source (a checkpoint) onto a backend, with the
// checks that turn a config/weights mismatch into a clear error instead of a wrong answer.
// Weights go to the backend in their storage dtype; only small vectors (norm weights, biases,
// embedding rows that are combined at load time) are widened to f32.
import { EmbeddingTable, KernelBackend, LinearWeight, ParamVector, WeightDType } from '../kernels/backend.js';
import { TensorInfo, TensorSource, readTensorF32 } from '../formats/safetensors.js';

export class WeightError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'WeightError';
  }
}

const WEIGHT_DTYPES: Record<string, WeightDType> = { F32: 'f32', F16: 'f16', BF16: 'bf16' };

export class WeightLoader {
  /** Memory place new weights go to (see KernelBackend). */
  place = 0;
  /** Bytes of parameters loaded so far. */
  loadedBytes = 0;
  /** Called after each tensor with the bytes loaded so far (progress bars). */
  onProgress?: (loadedBytes: number) => void;

  constructor(readonly backend: KernelBackend, readonly source: TensorSource, readonly label: string) {}

  has(name: string): boolean {
    try { this.source.info(name); return true; } catch { return false; }
  }

  /** The tensor's description, checked against the shape the config implies. */
  info(name: string, shape: number[]): TensorInfo {
    let info: TensorInfo;
    try {
      info = this.source.info(name);
    } catch (e) {
      throw new WeightError(`${this.label}: the config needs tensor "${name}" [${shape.join(', ')}], but the weights do not have it (${(e as Error).message})`);
    }
    const same = info.shape.length === shape.length && info.shape.every((d, i) => d === shape[i]);
    if (!same) {
      throw new WeightError(`${this.label}: tensor "${name}" has shape [${info.shape.join(', ')}], but the config implies [${shape.join(', ')}] (config.json and the weights do not match)`);
    }
    return info;
  }

  private dtypeOf(info: TensorInfo): WeightDType {
    const d = WEIGHT_DTYPES[info.dtype];
    if (!d) throw new WeightError(`${this.label}: tensor "${info.name}" is ${info.dtype}; weights must be F32, F16 or BF16`);
    return d;
  }

  private done(bytes: number): void {
    this.loadedBytes += bytes;
    this.onProgress?.(this.loadedBytes);
  }

  /**
   * A linear weight [out][in]. Several tensors (e.g. q, k, v projections) are stacked along the
   * output dimension into one weight, so one matmul computes them all.
   */
  linear(parts: { name: string; shape: number[] }[]): LinearWeight {
    const infos = parts.map((p) => this.info(p.name, p.shape));
    const dtype = this.dtypeOf(infos[0]);
    for (const i of infos) {
      if (this.dtypeOf(i) !== dtype) throw new WeightError(`${this.label}: tensors "${infos[0].name}" (${infos[0].dtype}) and "${i.name}" (${i.dtype}) are fused into one matmul and must share a dtype`);
    }
    // A convolution kernel [out][c][kh][kw] is a linear weight [out][c*kh*kw] in the same bytes.
    const inFeatures = infos[0].shape.slice(1).reduce((a, b) => a * b, 1);
    const out = infos.reduce((a, i) => a + i.shape[0], 0);
    const w = this.backend.linear(out, inFeatures, dtype, (dest) => {
      let off = 0;
      for (const i of infos) {
        this.source.readInto(i.name, dest.subarray(off, off + i.byteLength));
        off += i.byteLength;
      }
    }, this.place);
    this.done(infos.reduce((a, i) => a + i.byteLength, 0));
    return w;
  }

  /** An f32 parameter vector: one tensor, or several concatenated (fused biases). */
  params(parts: { name: string; shape: number[] }[]): ParamVector {
    const data = this.f32(parts);
    return this.backend.params(data, this.place);
  }

  /** Tensors widened to one f32 array (small tensors only: norms, biases, embeddings rows). */
  f32(parts: { name: string; shape: number[] }[]): Float32Array {
    const arrays = parts.map((p) => {
      const info = this.info(p.name, p.shape);
      this.dtypeOf(info);
      this.done(info.byteLength);
      return readTensorF32(this.source, p.name);
    });
    const out = new Float32Array(arrays.reduce((a, x) => a + x.length, 0));
    let off = 0;
    for (const a of arrays) { out.set(a, off); off += a.length; }
    return out;
  }

  /** An embedding table [rows][dim] in its storage dtype. */
  embedding(name: string, shape: [number, number]): EmbeddingTable {
    const info = this.info(name, shape);
    const t = this.backend.embedding(shape[0], shape[1], this.dtypeOf(info), (dest) => this.source.readInto(name, dest), this.place);
    this.done(info.byteLength);
    return t;
  }
}
