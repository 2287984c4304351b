// Reading a model's parameters from a tensor source (a checkpoint) onto a backend, with the
// checks that turn a config/weights mismatch into a clear error instead of a wrong answer: every
// tensor the config implies must be there with its shape, and every tensor there must be used (or
// be one the family knowingly skips). Weights go to the backend in their storage dtype; only small
// vectors (norm weights, biases, embedding rows that are combined at load time) are widened to f32.
import { EmbeddingTable, KernelBackend, LinearCompute, LinearWeight, ParamVector, WEIGHT_DTYPE_BYTES, WeightDType } from '../kernels/backend.js';
import { DType, TensorInfo, TensorSource, readTensorF32 } from '../formats/safetensors.js';
import { InputError } from '../base/errors.js';
import { Problems } from '../base/problems.js';
import { LinearPart, TensorReader } from './weight-formats/format.js';
import { LINEAR_FORMATS } from './weight-formats/registry.js';
import { denseFormat } from './weight-formats/dense.js';

export class WeightError extends InputError {}

const WEIGHT_DTYPES: Record<string, WeightDType> = { F32: 'f32', F16: 'f16', BF16: 'bf16' };

/** A tensor a family leaves in the checkpoint on purpose, and why (shown by inspect). */
interface Skipped {
  test: (name: string) => boolean;
  why: string;
}

export interface WeightLoaderOptions {
  /**
   * Check mode (inspect): problems are reported here instead of thrown, no tensor data is read,
   * and missing or mismatched tensors stand in with the shape the config implies. Use it with a
   * backend that holds no data (MetaBackend).
   */
  check?: Problems;
  /** How the vision tower's linear layers multiply (default `stored`; see LinearCompute). */
  visionCompute?: LinearCompute;
  /** What 4-bit linears quantize activations to in decode (default `i16`; see Int4Options). */
  int4Activations?: 'i16' | 'i8';
}

export class WeightLoader {
  /** Memory place new weights go to (see KernelBackend). */
  place = 0;
  /** Bytes of parameters loaded so far. */
  loadedBytes = 0;
  /** Called after each tensor with the bytes loaded so far (progress bars). */
  onProgress?: (loadedBytes: number) => void;
  private readonly used = new Set<string>();
  /** Every tensor asked for, with the shape the config implies (e.g. to generate random weights of a family's shape). */
  readonly implied = new Map<string, number[]>();
  private readonly skipped: Skipped[] = [];
  private readonly check: Problems | undefined;
  private readonly formatsUsed = new Set<string>();
  /** How the vision tower's linear layers multiply: a tower passes it to `linear`. */
  readonly visionCompute: LinearCompute;
  /** What 4-bit linears quantize activations to in decode. */
  readonly int4Activations: 'i16' | 'i8';

  constructor(
    readonly backend: KernelBackend,
    readonly source: TensorSource,
    readonly label: string,
    opts: WeightLoaderOptions = {},
  ) {
    this.check = opts.check;
    this.visionCompute = opts.visionCompute ?? 'stored';
    this.int4Activations = opts.int4Activations ?? 'i16';
  }

  /** Whether the loader only checks (inspect) and reads no data. */
  get checking(): boolean {
    return this.check !== undefined;
  }

  has(name: string): boolean {
    try {
      this.source.info(name);
      return true;
    } catch {
      return false;
    }
  }

  private fail(e: WeightError): void {
    if (this.check) this.check.report(e);
    else throw e;
  }

  /**
   * Declares tensors the family leaves unused on purpose (layers past the one a projector reads,
   * buffers older checkpoints saved, a duplicate lm_head under tied embeddings).
   */
  skip(test: (name: string) => boolean, why: string): void {
    this.skipped.push({ test, why });
  }

  /**
   * Tensors the config implies but the model does not run (e.g. a tower's layers after the one a
   * projector reads): they must be there with their shapes, so that a config that miscounts the
   * layers is an error, but nothing is read.
   */
  expect(parts: { name: string; shape: number[] }[]): void {
    for (const p of parts) this.dtypeOf(this.info(p.name, p.shape));
  }

  /** The tensor's description, checked against the shape the config implies. */
  info(name: string, shape: number[]): TensorInfo {
    this.used.add(name);
    this.implied.set(name, shape);
    let info: TensorInfo;
    try {
      info = this.source.info(name);
    } catch (e) {
      this.fail(
        new WeightError(`${this.label}: the config needs tensor "${name}" [${shape.join(', ')}], but the weights do not have it (${(e as Error).message})`),
      );
      return this.standIn(name, shape, 'F32');
    }
    const same = info.shape.length === shape.length && info.shape.every((d, i) => d === shape[i]);
    if (!same) {
      this.fail(
        new WeightError(
          `${this.label}: tensor "${name}" has shape [${info.shape.join(', ')}], but the config implies [${shape.join(', ')}] (config.json and the weights do not match)`,
        ),
      );
      return this.standIn(name, shape, info.dtype);
    }
    return info;
  }

  /** In check mode, what a missing or mismatched tensor stands in as: the config's shape (no file: see isStandIn). */
  private standIn(name: string, shape: number[], dtype: DType): TensorInfo {
    const numel = shape.reduce((a, b) => a * b, 1);
    return { name, dtype, shape, numel, byteLength: numel * (WEIGHT_DTYPES[dtype] ? WEIGHT_DTYPE_BYTES[WEIGHT_DTYPES[dtype]] : 4), file: '', fileOffset: 0 };
  }

  private dtypeOf(info: TensorInfo): WeightDType {
    const d = WEIGHT_DTYPES[info.dtype];
    if (!d) {
      this.fail(new WeightError(`${this.label}: tensor "${info.name}" is ${info.dtype}; weights must be F32, F16 or BF16`));
      return 'f32';
    }
    return d;
  }

  /** Throws (or reports) when `bytes` more do not fit the current memory place. */
  private room(bytes: number, names: string): void {
    const be = this.backend,
      free = be.placeCapacity - be.placeUsage(this.place);
    if (bytes > free) {
      this.fail(
        new WeightError(
          `${this.label}: ${names} (${bytes} bytes) does not fit: memory place ${this.place} has ${free} of its ${be.placeCapacity} bytes free (one tensor must fit one ${be.placeCapacity / 2 ** 30} GiB memory)`,
        ),
      );
    }
  }

  private done(bytes: number): void {
    this.loadedBytes += bytes;
    this.onProgress?.(this.loadedBytes);
  }

  /**
   * A linear weight [out][in], asked for by its float tensor names ("...q_proj.weight"). Several
   * parts (e.g. q, k, v projections) are stacked along the output dimension into one weight, so
   * one matmul computes them all. The checkpoint decides how each is stored (a float weight, or
   * a 4-bit AWQ format: see weight-formats/); fused parts must share it. `compute`: how a float
   * weight multiplies (default `stored`).
   */
  linear(parts: { name: string; shape: number[] }[], compute: LinearCompute = 'stored'): LinearWeight {
    const lp: LinearPart[] = parts.map((p) => ({ base: p.name.replace(/\.weight$/, ''), shape: p.shape }));
    const r = this.reader;
    const formats = lp.map((p) => LINEAR_FORMATS.find((f) => f.detect(r, p.base)) ?? denseFormat);
    const format = formats[0];
    formats.forEach((f, i) => {
      if (f !== format)
        this.fail(
          new WeightError(
            `${this.label}: "${lp[0].base}" (${format.name}) and "${lp[i].base}" (${f.name}) are fused into one matmul and must be stored the same way`,
          ),
        );
    });
    const names = lp.flatMap((p) => format.tensorNames(p.base));
    const srcBytes = names.reduce((a, n) => a + (this.has(n) ? this.source.info(n).byteLength : 0), 0);
    this.room(srcBytes, names.map((n) => `"${n}"`).join(' + '));
    const w = format.load(r, lp, compute);
    this.formatsUsed.add(format.name);
    return w;
  }

  /** The weight formats the linears loaded so far were stored in ("dense", "awq-gemm", ...). */
  get formats(): string[] {
    return [...this.formatsUsed];
  }

  /** Bytes the checkpoint stores for linear `name` ("...weight"), in whichever format it has. */
  linearBytes(name: string): number {
    const base = name.replace(/\.weight$/, '');
    const format = LINEAR_FORMATS.find((f) => f.detect(this.reader, base));
    if (!format) return 0;
    return format.tensorNames(base).reduce((a, n) => a + (this.has(n) ? this.source.info(n).byteLength : 0), 0);
  }

  /** The checked view of the checkpoint that weight formats read through. */
  private get reader(): TensorReader {
    return {
      backend: this.backend,
      place: this.place,
      label: this.label,
      checking: this.checking,
      int4Activations: this.int4Activations,
      has: (n) => this.has(n),
      peek: (n) => (this.has(n) ? this.source.info(n) : null),
      info: (n, shape) => this.info(n, shape),
      readInto: (info, dest) => {
        this.source.readInto(info.name, dest);
        this.done(info.byteLength);
      },
      bytes: (info) => {
        const out = new Uint8Array(info.byteLength);
        this.source.readInto(info.name, out);
        this.done(info.byteLength);
        return out;
      },
      f32: (info) => {
        this.done(info.byteLength);
        return readTensorF32(this.source, info.name);
      },
      fail: (m) => this.fail(new WeightError(m)),
    };
  }

  /** An f32 parameter vector: one tensor, or several concatenated (fused biases). */
  params(parts: { name: string; shape: number[] }[]): ParamVector {
    const data = this.f32(parts);
    return this.backend.params(data, this.place);
  }

  /**
   * Tensors widened to one f32 array (small tensors only: norms, biases, embeddings rows). In
   * check mode nothing is read and the array is empty.
   */
  f32(parts: { name: string; shape: number[] }[]): Float32Array {
    const infos = parts.map((p) => this.info(p.name, p.shape));
    for (const i of infos) this.dtypeOf(i);
    if (this.checking) return new Float32Array(0);
    const arrays = infos.map((info) => {
      this.done(info.byteLength);
      return readTensorF32(this.source, info.name);
    });
    const out = new Float32Array(arrays.reduce((a, x) => a + x.length, 0));
    let off = 0;
    for (const a of arrays) {
      out.set(a, off);
      off += a.length;
    }
    return out;
  }

  /** An embedding table [rows][dim] in its storage dtype. */
  embedding(name: string, shape: [number, number]): EmbeddingTable {
    const info = this.info(name, shape);
    const dtype = this.dtypeOf(info);
    this.room(shape[0] * shape[1] * WEIGHT_DTYPE_BYTES[dtype], `"${name}"`);
    const t = this.backend.embedding(
      shape[0],
      shape[1],
      dtype,
      (dest) => {
        if (!this.checking) this.source.readInto(name, dest);
      },
      this.place,
    );
    this.done(info.byteLength);
    return t;
  }

  /** Tensors of the source that nothing read and no family skips on purpose (names given: all of them). */
  unused(allNames: readonly string[]): string[] {
    return allNames.filter((n) => !this.used.has(n) && !this.skipped.some((s) => s.test(n)));
  }

  /** Why each skipped tensor of `allNames` is left unused (for inspect). */
  skippedTensors(allNames: readonly string[]): { name: string; why: string }[] {
    return allNames.flatMap((n) => {
      if (this.used.has(n)) return [];
      const s = this.skipped.find((x) => x.test(n));
      return s ? [{ name: n, why: s.why }] : [];
    });
  }

  /**
   * After a model is loaded: every tensor of the checkpoint must be used or skipped on purpose,
   * else config.json and the weights disagree (e.g. fewer layers declared than stored).
   */
  checkAllUsed(allNames: readonly string[]): void {
    const extra = this.unused(allNames);
    if (extra.length === 0) return;
    const shown = extra
      .slice(0, 8)
      .map((n) => `"${n}"`)
      .join(', ');
    this.fail(
      new WeightError(
        `${this.label}: ${extra.length} tensor${extra.length === 1 ? '' : 's'} of the weights ${extra.length === 1 ? 'is' : 'are'} not used by the model config.json describes: ` +
          `${shown}${extra.length > 8 ? `, ... (${extra.length - 8} more)` : ''} (config.json and the weights do not match: check num_hidden_layers and the architecture)`,
      ),
    );
  }
}
