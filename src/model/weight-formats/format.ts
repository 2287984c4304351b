// Weight formats: how a linear layer's tensors are stored in a checkpoint (a float `weight`, or
// AWQ's packed 4-bit tensors) and how they reach the backend. Models ask the loader for a linear by
// its float tensor name ("...q_proj.weight") and never name a format: the loader looks at which
// tensors the checkpoint holds for that layer and lets the matching format read them (as vLLM's
// quantization methods do). Adding a format is a file here and a row in registry.ts.
import { KernelBackend, LinearCompute, LinearWeight } from '../../kernels/backend.js';
import { TensorInfo } from '../../formats/safetensors.js';

/** Whether a tensor description is a check-mode stand-in for a tensor already reported (no file). */
export const isStandIn = (i: TensorInfo): boolean => i.file === '';

/** What a format may do with the checkpoint: the loader's checked view of it. */
export interface TensorReader {
  readonly backend: KernelBackend;
  readonly place: number;
  /** The checkpoint, for messages. */
  readonly label: string;
  /** Check mode (inspect): tensors are checked but not read; fills write nothing. */
  readonly checking: boolean;
  /** What 4-bit linears quantize activations to in one-row products (see Int4Options). */
  readonly int4Activations: 'i16' | 'i8';
  has(name: string): boolean;
  /** The tensor's description without checking or claiming it (format detection). */
  peek(name: string): TensorInfo | null;
  /** The tensor's description, its shape checked against `shape`; the tensor counts as used. */
  info(name: string, shape: number[]): TensorInfo;
  /** A tensor's raw little-endian bytes, into dest (its byteLength). */
  readInto(info: TensorInfo, dest: Uint8Array): void;
  /** A tensor's raw little-endian bytes (a fresh, aligned copy). */
  bytes(info: TensorInfo): Uint8Array;
  /** A float tensor widened to f32 (F32, F16 or BF16). */
  f32(info: TensorInfo): Float32Array;
  /** Throws the error (or, in check mode, reports it and goes on). */
  fail(message: string): void;
}

/**
 * One linear of a fused weight: its tensor name prefix ("model.layers.0.self_attn.q_proj") and
 * the float weight's shape as the config implies it ([out][in], or a convolution's
 * [out][c][kh][kw], which is [out][c*kh*kw]).
 */
export interface LinearPart {
  base: string;
  shape: number[];
}

export const outFeatures = (p: LinearPart): number => p.shape[0];
export const inFeatures = (p: LinearPart): number => p.shape.slice(1).reduce((a, b) => a * b, 1);

export interface LinearFormat {
  /** As in inspect's output and messages ("dense", "awq-gemm", ...). */
  readonly name: string;
  /** Whether the checkpoint holds linear `base` in this format. */
  detect(r: TensorReader, base: string): boolean;
  /** The tensor names this format reads for `base` (for placement sizes and messages). */
  tensorNames(base: string): string[];
  /**
   * Loads the parts, stacked along the output dimension, as one weight on the reader's backend
   * and place. `compute`: how a float weight multiplies (formats that are already integer ignore it).
   */
  load(r: TensorReader, parts: LinearPart[], compute: LinearCompute): LinearWeight;
}
