/**
 * A validating reader (and a small writer) for the safetensors format.
 *
 * Layout of a file: an 8-byte little-endian u64 header length N, N bytes of UTF-8 JSON header, then the
 * data section. The header maps each tensor name to `{dtype, shape, data_offsets: [begin, end]}` (offsets
 * relative to the start of the data section) and may hold a `__metadata__` object of string → string.
 *
 * Every problem found in a file is reported as a {@link SafetensorsError} whose message names the file, and
 * where it applies the tensor, and says what was expected and what was found.
 *
 * This module only reads files and describes them; it knows nothing about kernels or models.
 */
import * as fs from 'node:fs';
import { InputError } from '../base/errors.js';
import { openRegularFile } from '../base/files.js';
import { describe, isPlainObject } from './json-values.js';

/** The element types of the safetensors format that this reader knows. */
export type DType = 'F64' | 'F32' | 'F16' | 'BF16' | 'I64' | 'I32' | 'I16' | 'I8' | 'U8' | 'BOOL' | 'U16' | 'U32' | 'U64' | 'F8_E4M3' | 'F8_E5M2';

/** Size in bytes of one element of each dtype. */
export const DTYPE_SIZE: Readonly<Record<DType, number>> = Object.freeze({
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U8: 1,
  BOOL: 1,
  U16: 2,
  U32: 4,
  U64: 8,
  F8_E4M3: 1,
  F8_E5M2: 1,
});

/** True when `s` is one of the dtypes in {@link DTYPE_SIZE}. */
export function isDType(s: string): s is DType {
  return Object.prototype.hasOwnProperty.call(DTYPE_SIZE, s);
}

/** Any problem with a safetensors file, a sharded checkpoint index, or a tensor lookup. */
export class SafetensorsError extends InputError {
  /** The file (or checkpoint folder) the problem is in. */
  readonly file: string;
  /** The tensor concerned, when there is one. */
  readonly tensor: string | undefined;

  constructor(file: string, message: string, tensor?: string) {
    super(tensor === undefined ? `${file}: ${message}` : `${file}: tensor "${tensor}": ${message}`);
    this.file = file;
    this.tensor = tensor;
  }
}

/** Where one tensor lives and what it holds. */
export interface TensorInfo {
  name: string;
  dtype: DType;
  shape: number[];
  /** Number of elements (product of `shape`; 1 for a scalar). */
  numel: number;
  /** Size of the stored data in bytes (`numel × DTYPE_SIZE[dtype]`). */
  byteLength: number;
  /** The file holding the tensor. */
  file: string;
  /** Absolute byte offset of the tensor's data in `file`. */
  fileOffset: number;
}

/** Something tensors can be looked up in and read from: one file or a whole checkpoint. */
export interface TensorSource {
  /** Description of tensor `name`; throws a {@link SafetensorsError} if there is none. */
  info(name: string): TensorInfo;
  /** Reads the raw bytes of tensor `name` into `dest` (exactly `byteLength` bytes). */
  readInto(name: string, dest: Uint8Array): void;
}

/** Largest header accepted; real headers are a few hundred kB at most. */
export const MAX_HEADER_BYTES = 100 * 1024 * 1024;

/** Largest single read or write request (Node rejects lengths of 2 GiB and more). */
const IO_CHUNK_BYTES = 1 << 30;

function isNonNegativeSafeInt(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

/** Product of a shape; throws `err(...)` when it is not a safe integer. */
function shapeNumel(shape: number[], err: (msg: string) => Error): number {
  let n = 1;
  for (const d of shape) {
    n *= d;
    if (!Number.isSafeInteger(n)) throw err(`shape ${JSON.stringify(shape)} has more elements than 2^53`);
  }
  return n;
}

/** Reads exactly `length` bytes at `position` into `dest[offset..]`, looping over short reads. */
export function readFully(fd: number, dest: Uint8Array, offset: number, length: number, position: number, err: (msg: string) => Error): void {
  let done = 0;
  while (done < length) {
    const want = Math.min(length - done, IO_CHUNK_BYTES);
    const got = fs.readSync(fd, dest, offset + done, want, position + done);
    if (got === 0) throw err(`unexpected end of file at byte ${position + done} (needed ${length - done} more bytes)`);
    done += got;
  }
}

/** One open weight file of a checkpoint: a safetensors file or a PyTorch `.pt` archive. */
export interface WeightFile extends TensorSource {
  readonly path: string;
  readonly tensors: Map<string, TensorInfo>;
  has(name: string): boolean;
  close(): void;
}

/**
 * A weight file read through an open descriptor, its tensors pointing at byte ranges in it (a
 * safetensors file, or a `.pt` archive whose entries are stored). `error` makes the file kind's
 * errors, naming the file and the tensor.
 */
export class OpenWeightFile implements WeightFile {
  private fd: number | null;

  protected constructor(
    /** The path the file was opened with. */
    readonly path: string,
    fd: number,
    /** All tensors, in file order. */
    readonly tensors: Map<string, TensorInfo>,
    private readonly error: (file: string, message: string, tensor?: string) => Error,
  ) {
    this.fd = fd;
  }

  /** Whether the file holds a tensor called `name`. */
  has(name: string): boolean {
    return this.tensors.has(name);
  }

  /** Description of tensor `name`; throws an error naming the file and tensor if absent. */
  info(name: string): TensorInfo {
    const t = this.tensors.get(name);
    if (t === undefined) throw this.error(this.path, 'no such tensor in this file', name);
    return t;
  }

  /**
   * Reads the tensor's raw bytes (storage dtype, little-endian, no conversion) into `dest`, which must be
   * exactly `byteLength` bytes long. `dest` may be a view on a `WebAssembly.Memory` or `SharedArrayBuffer`.
   * Short reads are retried, and reads of 2 GiB or more are split into chunks.
   */
  readInto(name: string, dest: Uint8Array): void {
    const t = this.info(name);
    if (this.fd === null) throw this.error(this.path, 'file is closed', name);
    if (dest.byteLength !== t.byteLength) {
      throw this.error(this.path, `destination has ${dest.byteLength} bytes, expected ${t.byteLength} (${t.dtype} ${JSON.stringify(t.shape)})`, name);
    }
    readFully(this.fd, dest, 0, t.byteLength, t.fileOffset, (msg) => this.error(this.path, msg, name));
  }

  /** Closes the file descriptor. Later reads throw; closing twice is harmless. */
  close(): void {
    if (this.fd !== null) {
      fs.closeSync(this.fd);
      this.fd = null;
    }
  }
}

/**
 * One open safetensors file. {@link SafetensorsFile.open} reads and validates the whole header and keeps the
 * file descriptor open for {@link SafetensorsFile.readInto} until {@link SafetensorsFile.close}.
 */
export class SafetensorsFile extends OpenWeightFile {
  private constructor(
    filePath: string,
    fd: number,
    /** Absolute byte offset of the data section (8 + header length). */
    readonly dataOffset: number,
    /** The `__metadata__` entries (empty when the header has none). */
    readonly metadata: Record<string, string>,
    tensors: Map<string, TensorInfo>,
  ) {
    super(filePath, fd, tensors, (file, message, tensor) => new SafetensorsError(file, message, tensor));
  }

  /** Opens `filePath`, parses and validates its header. Throws a {@link SafetensorsError} on any problem. */
  static open(filePath: string): SafetensorsFile {
    let fd: number;
    try {
      fd = openRegularFile(filePath, 'safetensors file').fd;
    } catch (e) {
      throw new SafetensorsError(filePath, (e as Error).message.replace(`${filePath}: `, ''));
    }
    try {
      const { dataOffset, metadata, tensors } = parseHeader(fd, filePath);
      return new SafetensorsFile(filePath, fd, dataOffset, metadata, tensors);
    } catch (e) {
      fs.closeSync(fd);
      throw e;
    }
  }
}

/** Reads and validates the header of the open file `fd`. */
function parseHeader(
  fd: number,
  filePath: string,
): {
  dataOffset: number;
  metadata: Record<string, string>;
  tensors: Map<string, TensorInfo>;
} {
  const err = (msg: string, tensor?: string) => new SafetensorsError(filePath, msg, tensor);
  const fileSize = fs.fstatSync(fd).size;
  if (fileSize < 8) throw err(`truncated file: ${fileSize} bytes, too short for the 8-byte header length`);

  const lenBytes = new Uint8Array(8);
  readFully(fd, lenBytes, 0, 8, 0, err);
  const headerLen = new DataView(lenBytes.buffer).getBigUint64(0, true);
  if (headerLen > BigInt(MAX_HEADER_BYTES)) {
    throw err(`header length ${headerLen} exceeds the limit of ${MAX_HEADER_BYTES} bytes (not a safetensors file?)`);
  }
  const n = Number(headerLen);
  if (8 + n > fileSize) throw err(`header length ${n} runs past the end of the file (${fileSize} bytes)`);

  const headerBytes = new Uint8Array(n);
  readFully(fd, headerBytes, 0, n, 8, err);
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(headerBytes);
  } catch {
    throw err('header is not valid UTF-8');
  }
  let header: unknown;
  try {
    header = JSON.parse(text);
  } catch (e) {
    throw err(`header is not valid JSON: ${(e as Error).message}`);
  }
  if (!isPlainObject(header)) throw err(`header must be a JSON object, found ${describe(header)}`);

  const dataOffset = 8 + n;
  const dataSize = fileSize - dataOffset;
  const metadata: Record<string, string> = {};
  const tensors = new Map<string, TensorInfo>();
  const ranges: { name: string; begin: number; end: number }[] = [];

  for (const [name, entry] of Object.entries(header)) {
    if (name === '__metadata__') {
      if (!isPlainObject(entry)) throw err(`"__metadata__" must be an object of strings, found ${describe(entry)}`);
      for (const [k, v] of Object.entries(entry)) {
        if (typeof v !== 'string') throw err(`"__metadata__"."${k}" must be a string, found ${describe(v)}`);
        metadata[k] = v;
      }
      continue;
    }
    const errT = (msg: string) => err(msg, name);
    if (!isPlainObject(entry)) throw errT(`entry must be an object, found ${describe(entry)}`);
    const { dtype, shape, data_offsets: offsets } = entry;
    if (typeof dtype !== 'string') throw errT(`"dtype" must be a string, found ${describe(dtype)}`);
    if (!isDType(dtype)) throw errT(`unknown dtype "${dtype}" (known: ${Object.keys(DTYPE_SIZE).join(', ')})`);
    if (!Array.isArray(shape) || !shape.every(isNonNegativeSafeInt)) {
      throw errT(`"shape" must be an array of non-negative integers, found ${describe(shape)}`);
    }
    if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isNonNegativeSafeInt)) {
      throw errT(`"data_offsets" must be an array of two non-negative integers, found ${describe(offsets)}`);
    }
    const [begin, end] = offsets as [number, number];
    if (begin > end) throw errT(`"data_offsets" [${begin}, ${end}]: begin is after end`);

    const dims = shape as number[];
    const numel = shapeNumel(dims, errT);
    const byteLength = numel * DTYPE_SIZE[dtype];
    if (byteLength !== end - begin) {
      throw errT(
        `shape ${JSON.stringify(dims)} × ${dtype} (${DTYPE_SIZE[dtype]} bytes) needs ${byteLength} bytes, ` +
          `but data_offsets [${begin}, ${end}] span ${end - begin}`,
      );
    }
    if (end > dataSize) {
      throw errT(`data_offsets [${begin}, ${end}] run past the end of the data section (${dataSize} bytes; ` + `file truncated or offsets out of range)`);
    }
    tensors.set(name, { name, dtype, shape: dims, numel, byteLength, file: filePath, fileOffset: dataOffset + begin });
    ranges.push({ name, begin, end });
  }

  // Overlap check: sweep the non-empty ranges in order of start, remembering the one reaching furthest.
  ranges.sort((a, b) => a.begin - b.begin || a.end - b.end);
  let furthest: { name: string; begin: number; end: number } | null = null;
  for (const r of ranges) {
    if (r.begin === r.end) continue;
    if (furthest !== null && r.begin < furthest.end) {
      throw err(`data of tensor "${r.name}" [${r.begin}, ${r.end}] overlaps tensor "${furthest.name}" ` + `[${furthest.begin}, ${furthest.end}]`);
    }
    if (furthest === null || r.end > furthest.end) furthest = r;
  }
  return { dataOffset, metadata, tensors };
}

/** Converts IEEE half-precision bits to the bits of the equal float32 (exact, NaN payloads kept). */
export function f16BitsToF32Bits(h: number): number {
  const sign = (h & 0x8000) << 16;
  const exp = (h >> 10) & 0x1f;
  let mant = h & 0x3ff;
  if (exp === 0x1f) return (sign | 0x7f800000 | (mant << 13)) >>> 0; // inf / NaN
  if (exp !== 0) return (sign | ((exp + 112) << 23) | (mant << 13)) >>> 0; // normal: rebias 15 → 127
  if (mant === 0) return sign >>> 0; // ±0
  // Subnormal: value = mant × 2^-24. Normalise so the leading 1 becomes the implicit bit.
  let e = 113; // biased f32 exponent of 2^-14
  while ((mant & 0x400) === 0) {
    mant <<= 1;
    e--;
  }
  return (sign | (e << 23) | ((mant & 0x3ff) << 13)) >>> 0;
}

/** Converts bfloat16 bits to the bits of the equal float32. */
export function bf16BitsToF32Bits(b: number): number {
  return (b << 16) >>> 0;
}

/** Reads a whole tensor into a fresh, exactly sized byte buffer. */
function readBytes(src: TensorSource, name: string): { info: TensorInfo; bytes: Uint8Array } {
  const info = src.info(name);
  const bytes = new Uint8Array(info.byteLength);
  src.readInto(name, bytes);
  return { info, bytes };
}

/**
 * Reads an F32, F16, BF16 or F64 tensor into a fresh Float32Array (F64 is rounded to nearest f32; the others
 * convert exactly). Meant for tests and tiny tensors such as goldens: models must not load weights through
 * it, since it copies and widens the whole tensor on the JS heap.
 */
export function readTensorF32(src: TensorSource, name: string): Float32Array {
  const { info, bytes } = readBytes(src, name);
  const view = new DataView(bytes.buffer);
  const out = new Float32Array(info.numel);
  const outBits = new Uint32Array(out.buffer);
  switch (info.dtype) {
    case 'F32':
      for (let i = 0; i < info.numel; i++) outBits[i] = view.getUint32(4 * i, true);
      break;
    case 'F16':
      for (let i = 0; i < info.numel; i++) outBits[i] = f16BitsToF32Bits(view.getUint16(2 * i, true));
      break;
    case 'BF16':
      for (let i = 0; i < info.numel; i++) outBits[i] = bf16BitsToF32Bits(view.getUint16(2 * i, true));
      break;
    case 'F64':
      for (let i = 0; i < info.numel; i++) out[i] = view.getFloat64(8 * i, true);
      break;
    default:
      throw new SafetensorsError(info.file, `readTensorF32 needs F32, F16, BF16 or F64, found ${info.dtype}`, name);
  }
  return out;
}

/** A reader of element `i` of an integer or BOOL tensor held in `view`, or undefined for other dtypes. */
function intElementReader(view: DataView, dtype: DType): ((i: number) => number | bigint) | undefined {
  switch (dtype) {
    case 'I8':
      return (i) => view.getInt8(i);
    case 'U8':
    case 'BOOL':
      return (i) => view.getUint8(i);
    case 'I16':
      return (i) => view.getInt16(2 * i, true);
    case 'U16':
      return (i) => view.getUint16(2 * i, true);
    case 'I32':
      return (i) => view.getInt32(4 * i, true);
    case 'U32':
      return (i) => view.getUint32(4 * i, true);
    case 'I64':
      return (i) => view.getBigInt64(8 * i, true);
    case 'U64':
      return (i) => view.getBigUint64(8 * i, true);
    default:
      return undefined;
  }
}

/**
 * Reads an integer (I8/I16/I32/I64, U8/U16/U32/U64) or BOOL tensor into a plain array of numbers, e.g. token
 * ids stored as I64 in goldens. Throws if a 64-bit value is not a safe integer. For small tensors only.
 */
export function readTensorInt(src: TensorSource, name: string): number[] {
  const { info, bytes } = readBytes(src, name);
  const get = intElementReader(new DataView(bytes.buffer), info.dtype);
  if (get === undefined) {
    throw new SafetensorsError(info.file, `readTensorInt needs an integer or BOOL dtype, found ${info.dtype}`, name);
  }
  const out = new Array<number>(info.numel);
  for (let i = 0; i < info.numel; i++) {
    const v = get(i);
    if (typeof v === 'bigint' && (v > BigInt(Number.MAX_SAFE_INTEGER) || v < BigInt(Number.MIN_SAFE_INTEGER))) {
      throw new SafetensorsError(info.file, `element ${i} (${v}) is not a safe integer`, name);
    }
    out[i] = Number(v);
  }
  return out;
}

/** One tensor to write with {@link writeSafetensors}. */
export interface TensorToWrite {
  name: string;
  dtype: DType;
  shape: number[];
  /** Raw little-endian bytes, exactly `numel × DTYPE_SIZE[dtype]` of them. */
  data: Uint8Array;
}

/**
 * Writes a safetensors file. Like the reference writer, it orders the data largest element size first (then
 * by name), so that each tensor starts at a multiple of its element size, and pads the header with spaces
 * to a multiple of 8 bytes. Throws a {@link SafetensorsError} for duplicate names, unknown dtypes or data
 * whose length does not match the shape.
 */
export function writeSafetensors(filePath: string, tensors: TensorToWrite[], metadata?: Record<string, string>): void {
  const seen = new Set<string>(['__metadata__']);
  for (const t of tensors) {
    const err = (msg: string) => new SafetensorsError(filePath, msg, t.name);
    if (seen.has(t.name)) throw err('duplicate or reserved tensor name');
    seen.add(t.name);
    if (!isDType(t.dtype)) throw err(`unknown dtype "${t.dtype as string}"`);
    if (!t.shape.every(isNonNegativeSafeInt)) {
      throw err(`shape must hold non-negative integers, found ${JSON.stringify(t.shape)}`);
    }
    const byteLength = shapeNumel(t.shape, err) * DTYPE_SIZE[t.dtype];
    if (t.data.byteLength !== byteLength) {
      throw err(`shape ${JSON.stringify(t.shape)} × ${t.dtype} needs ${byteLength} bytes, data has ${t.data.byteLength}`);
    }
  }
  const ordered = [...tensors].sort((a, b) => DTYPE_SIZE[b.dtype] - DTYPE_SIZE[a.dtype] || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const header: Record<string, unknown> = {};
  if (metadata !== undefined) header['__metadata__'] = metadata;
  let offset = 0;
  for (const t of ordered) {
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + t.data.byteLength] };
    offset += t.data.byteLength;
  }
  const json = new TextEncoder().encode(JSON.stringify(header));
  const headerLen = Math.ceil(json.length / 8) * 8;
  const prefix = new Uint8Array(8 + headerLen).fill(0x20);
  new DataView(prefix.buffer).setBigUint64(0, BigInt(headerLen), true);
  prefix.set(json, 8);

  const fd = fs.openSync(filePath, 'w');
  try {
    writeFully(fd, prefix);
    for (const t of ordered) writeFully(fd, t.data);
  } finally {
    fs.closeSync(fd);
  }
}

/** Writes all of `data` at the current position, looping over partial writes and in chunks under 2 GiB. */
function writeFully(fd: number, data: Uint8Array): void {
  let done = 0;
  while (done < data.byteLength) {
    done += fs.writeSync(fd, data, done, Math.min(data.byteLength - done, IO_CHUNK_BYTES));
  }
}
