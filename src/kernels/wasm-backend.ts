// The WebAssembly SIMD backend: kernels from assembly/ run on a pool of threads over shared
// memories ("arenas", one per 4 GiB). Handles carry their arena and byte offset.
import { Arena, MAX_ARENA_BYTES } from '../runtime/arena.js';
import { KernelModule, SimdLevel, loadKernelModule } from '../runtime/kernel-module.js';
import { hardwareThreads } from '../runtime/platform.js';
import { OptionError } from '../base/errors.js';
import { ThreadPool } from '../runtime/pool.js';
import {
  Activation,
  AttentionOptions,
  KeyScoreOptions,
  EmbeddingTable,
  IntVector,
  KVCache,
  KernelBackend,
  Int4Options,
  Int4Parts,
  LinearCompute,
  LinearStorage,
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

const DTYPE_CODE: Record<WeightDType, number> = { f32: 0, f16: 1, bf16: 2 };
const ACT_CODE: Record<Activation, number> = { gelu: 0, gelu_pytorch_tanh: 1, quick_gelu: 2, silu: 3, identity: 4 };
const MAX_HEAD_DIM = 256;
const ROUNDING_CODE = { none: 0, f16: 1, bf16: 2 } as const;
/** gemm_q4's f16 rounding without the subnormal path, for weights none of which needs it. */
const F16_NORMAL_ONLY = 3;

/**
 * Whether every dequantized weight q * s + m (q in 0..15) of these groups is 0 or at least 2^-13
 * in magnitude, so that rounding it to f16 never meets a subnormal. |q * s + m| is smallest at
 * the integer q nearest -m / s; q * s + m is exact in doubles (f32 operands). A weight that is 0
 * only counts when q * s is exact in f32 as well (then the kernel's sum is 0 too, fused or not).
 */
function f16NormalOnly(scales: Float32Array, offsets: Float32Array): boolean {
  const min = 2 ** -13;
  for (let i = 0; i < scales.length; i++) {
    const s = scales[i],
      m = offsets[i];
    const q0 = s === 0 ? 0 : Math.min(15, Math.max(0, Math.floor(-m / s)));
    for (let q = q0; q <= Math.min(15, q0 + 1); q++) {
      const v = Math.abs(q * s + m);
      if (v === 0 ? Math.fround(q * s) !== q * s : v < min) return false;
    }
  }
  return true;
}

export class BackendError extends Error {}

class WMatrix implements Matrix {
  constructor(
    readonly arena: Arena,
    readonly ptr: number,
    readonly rows: number,
    readonly cols: number,
    readonly ld: number,
    readonly owned: boolean,
  ) {}
  get place(): number {
    return this.arena.id;
  }
  view(r0: number, n: number, c0 = 0, nc = this.cols - c0): Matrix {
    if (r0 < 0 || n < 0 || r0 + n > this.rows || c0 < 0 || nc < 0 || c0 + nc > this.cols) {
      throw new BackendError(`view rows [${r0}, ${r0 + n}) cols [${c0}, ${c0 + nc}) is outside a ${this.rows}x${this.cols} matrix`);
    }
    return new WMatrix(this.arena, this.ptr + (r0 * this.ld + c0) * 4, n, nc, this.ld, false);
  }
}
class WInts implements IntVector {
  constructor(
    readonly arena: Arena,
    readonly ptr: number,
    readonly length: number,
  ) {}
}
class WLinear implements LinearWeight {
  constructor(
    readonly arena: Arena,
    readonly ptr: number,
    readonly outFeatures: number,
    readonly inFeatures: number,
    readonly dtype: LinearStorage,
    readonly byteLength: number,
    readonly compute: LinearCompute = 'stored',
    /** int16: the row scales (8 per panel), after the panels; int4: the scale and offset block. */
    readonly scalePtr = 0,
    readonly groupSize?: number,
    readonly dequantRounding?: 'f16' | 'bf16' | 'none',
    readonly activations?: 'i16' | 'i8',
    /** int4: the GEMM's rounding code (ROUNDING_CODE, or F16_NORMAL_ONLY). */
    readonly roundingCode = 0,
  ) {}
}
class WEmbedding implements EmbeddingTable {
  constructor(
    readonly arena: Arena,
    readonly ptr: number,
    readonly rows: number,
    readonly dim: number,
    readonly dtype: WeightDType,
  ) {}
}
class WParams implements ParamVector {
  constructor(
    readonly arena: Arena,
    readonly ptr: number,
    readonly length: number,
  ) {}
}
class WRope implements RopeTable {
  constructor(
    readonly arena: Arena,
    readonly cosPtr: number,
    readonly sinPtr: number,
    readonly rotaryDim: number,
    readonly maxPositions: number,
  ) {}
}
class WKVCache implements KVCache {
  length = 0;
  /** Block pointers per layer. */
  readonly blocks: number[][];
  /** Per layer: page table (u32 block pointers) and its capacity in entries. */
  pageTables: number[];
  pageCapacity = 0;
  constructor(
    readonly arena: Arena,
    readonly layers: number,
    readonly kvHeads: number,
    readonly headDim: number,
    readonly blockSize: number,
    readonly logB: number,
  ) {
    this.blocks = Array.from({ length: layers }, () => []);
    this.pageTables = new Array<number>(layers).fill(0);
  }
  get blockBytes(): number {
    return 2 * this.kvHeads * this.blockSize * this.headDim * 4;
  }
}

export interface WasmBackendOptions {
  /** Threads (default: all cores; more than the cores is capped to them: extra threads only contend). */
  threads?: number;
  /** Kernel build: relaxed SIMD (FMA) where available, or plain SIMD128. */
  simd?: 'auto' | SimdLevel;
}

/**
 * The threads a backend starts: `threads` (an integer >= 1; default all cores), at most the
 * cores this machine has, since kernel threads that share a core only wait for each other.
 */
export function checkThreads(threads: number | undefined): number {
  const cores = hardwareThreads();
  if (threads === undefined) return cores;
  if (typeof threads !== 'number' || !Number.isInteger(threads) || threads < 1)
    throw new OptionError(`threads must be an integer >= 1, got ${String(threads)}`);
  return Math.min(threads, cores);
}

export class WasmBackend implements KernelBackend {
  readonly name: string;
  private readonly arenas: Arena[] = [];
  private readonly scratch = new Map<Arena, number>();
  private readonly workspaces = new Map<Arena, Map<string, { ptr: number; size: number }>>();

  private constructor(
    readonly kernels: KernelModule,
    readonly pool: ThreadPool,
  ) {
    this.name = `wasm-${kernels.level}`;
  }

  static async create(opts: WasmBackendOptions = {}): Promise<WasmBackend> {
    const threads = checkThreads(opts.threads);
    const kernels = await loadKernelModule(opts.simd ?? 'auto');
    const pool = await ThreadPool.create(kernels, threads);
    const b = new WasmBackend(kernels, pool);
    await b.addPlace();
    return b;
  }

  get threads(): number {
    return this.pool.threads;
  }
  /** Parallel calls so far in which a descheduled worker held the caller up (see ThreadPool). */
  get stalls(): number {
    return this.pool.stalls;
  }
  get simdLevel(): SimdLevel {
    return this.kernels.level;
  }
  /** Number of memory regions (arenas); `place` arguments index them. */
  get places(): number {
    return this.arenas.length;
  }

  /** Adds an arena (a new 4 GiB address space) and returns its place index. */
  async addPlace(): Promise<number> {
    const arena = new Arena(this.arenas.length, this.kernels.module);
    await this.pool.attach(arena);
    this.scratch.set(arena, arena.alloc(this.kernels.scratchBytes * this.pool.threads));
    this.workspaces.set(arena, new Map());
    this.arenas.push(arena);
    return arena.id;
  }

  placeUsage(place: number): number {
    return this.arena(place).usedBytes;
  }
  get placeCapacity(): number {
    return MAX_ARENA_BYTES;
  }
  get maxHeadDim(): number {
    return MAX_HEAD_DIM;
  }

  /** Bytes allocated in each arena. */
  memoryUsage(): { place: number; usedBytes: number; committedBytes: number }[] {
    return this.arenas.map((a) => ({ place: a.id, usedBytes: a.usedBytes, committedBytes: a.committedBytes }));
  }

  async close(): Promise<void> {
    await this.pool.close();
  }

  // ---- machine probes (for benchmarks: the limits each figure is compared with) -------------------

  /** Read bandwidth of plain SIMD loads over `bytes` of memory on all threads, GB/s (best of reps). */
  probeReadBandwidth(bytes = 256 * 2 ** 20, reps = 7): number {
    const a = this.arena(0);
    const chunk = 1 << 20;
    const units = Math.ceil(bytes / chunk);
    const ptr = a.alloc(units * chunk);
    try {
      a.u8.fill(1, ptr, ptr + units * chunk);
      let best = Infinity;
      for (let r = 0; r < reps; r++) {
        const t0 = performance.now();
        this.pool.run(a, 'probe_read', units, this.grain(units, 8), [ptr, chunk, this.scratch.get(a)!]);
        best = Math.min(best, performance.now() - t0);
      }
      return (units * chunk) / best / 1e6;
    } finally {
      a.release(ptr);
    }
  }

  /** f32 SIMD multiply-add throughput on all threads (register-only chains), GFLOPS (best of reps). */
  probePeakFlops(reps = 5): number {
    const a = this.arena(0);
    const units = this.threads * 8,
      iters = 200_000;
    let best = Infinity;
    for (let r = 0; r < reps; r++) {
      const t0 = performance.now();
      this.pool.run(a, 'probe_fma', units, 1, [iters, this.scratch.get(a)!]);
      best = Math.min(best, performance.now() - t0);
    }
    return (units * iters * 80) / best / 1e6;
  }

  // ---- memory ------------------------------------------------------------------------------------

  private arena(place = 0): Arena {
    const a = this.arenas[place];
    if (!a) throw new BackendError(`no memory place ${place} (have ${this.arenas.length}; add one with addPlace())`);
    return a;
  }

  private workspace(arena: Arena, key: string, bytes: number): number {
    const ws = this.workspaces.get(arena)!;
    const cur = ws.get(key);
    if (cur && cur.size >= bytes) return cur.ptr;
    if (cur) arena.release(cur.ptr);
    const size = Math.max(bytes, cur ? cur.size * 2 : 0);
    const ptr = arena.alloc(size);
    ws.set(key, { ptr, size });
    return ptr;
  }

  matrix(rows: number, cols: number, place = 0): Matrix {
    checkDims('matrix', rows, cols);
    const a = this.arena(place);
    return new WMatrix(a, a.alloc(Math.max(1, rows * cols) * 4), rows, cols, cols, true);
  }

  ints(length: number, place = 0): IntVector {
    checkDims('ints', length, 1);
    const a = this.arena(place);
    return new WInts(a, a.alloc(Math.max(1, length) * 4), length);
  }

  write(m: Matrix, data: Float32Array): void {
    const x = asMatrix(m);
    if (data.length !== x.rows * x.cols) throw new BackendError(`write: ${data.length} values for a ${x.rows}x${x.cols} matrix`);
    const f = x.arena.f32,
      base = x.ptr / 4;
    if (x.ld === x.cols) {
      f.set(data, base);
      return;
    }
    for (let r = 0; r < x.rows; r++) f.set(data.subarray(r * x.cols, (r + 1) * x.cols), base + r * x.ld);
  }

  read(m: Matrix, into?: Float32Array): Float32Array {
    const x = asMatrix(m);
    if (into && into.length !== x.rows * x.cols) throw new BackendError(`read: ${into.length} values for a ${x.rows}x${x.cols} matrix`);
    const out = into ?? new Float32Array(x.rows * x.cols);
    const f = x.arena.f32,
      base = x.ptr / 4;
    for (let r = 0; r < x.rows; r++) out.set(f.subarray(base + r * x.ld, base + r * x.ld + x.cols), r * x.cols);
    return out;
  }

  writeInts(v: IntVector, data: Int32Array | readonly number[]): void {
    const x = asInts(v);
    if (data.length !== x.length) throw new BackendError(`writeInts: ${data.length} values for a vector of ${x.length}`);
    x.arena.i32.set(data, x.ptr / 4);
  }

  readInts(v: IntVector): Int32Array {
    const x = asInts(v);
    return x.arena.i32.slice(x.ptr / 4, x.ptr / 4 + x.length);
  }

  copy(dst: Matrix, src: Matrix): void {
    const d = asMatrix(dst),
      s = asMatrix(src);
    if (d.rows !== s.rows || d.cols !== s.cols) throw new BackendError(`copy: ${s.rows}x${s.cols} into ${d.rows}x${d.cols}`);
    // Row by row between the memories' views (the same or two places): no intermediate array.
    const from = s.arena.f32,
      to = d.arena.f32;
    if (from === to && d.ld === d.cols && s.ld === s.cols) {
      to.copyWithin(d.ptr / 4, s.ptr / 4, s.ptr / 4 + s.rows * s.cols);
      return;
    }
    for (let r = 0; r < s.rows; r++) {
      const a = s.ptr / 4 + r * s.ld;
      to.set(from.subarray(a, a + s.cols), d.ptr / 4 + r * d.ld);
    }
  }

  free(x: Matrix | IntVector | LinearWeight | EmbeddingTable | ParamVector | KVCache | RopeTable): void {
    if (x instanceof WMatrix) {
      if (!x.owned) throw new BackendError('free: a view cannot be freed (free the matrix it views)');
      x.arena.release(x.ptr);
    } else if (x instanceof WInts || x instanceof WLinear || x instanceof WEmbedding || x instanceof WParams) {
      x.arena.release(x.ptr);
    } else if (x instanceof WRope) {
      x.arena.release(x.cosPtr);
      x.arena.release(x.sinPtr);
    } else if (x instanceof WKVCache) {
      for (let l = 0; l < x.layers; l++) {
        for (const b of x.blocks[l]) x.arena.release(b);
        x.blocks[l].length = 0;
        if (x.pageTables[l]) x.arena.release(x.pageTables[l]);
        x.pageTables[l] = 0;
      }
      x.pageCapacity = 0;
      x.length = 0;
    } else {
      throw new BackendError('free: not a handle of this backend');
    }
  }

  // ---- parameters --------------------------------------------------------------------------------

  linear(
    outFeatures: number,
    inFeatures: number,
    dtype: WeightDType,
    fill: (dest: Uint8Array) => void,
    place = 0,
    compute: LinearCompute = 'stored',
  ): LinearWeight {
    checkDims('linear', outFeatures, inFeatures);
    const a = this.arena(place);
    const esz = WEIGHT_DTYPE_BYTES[dtype];
    if (esz === undefined) throw new BackendError(`linear: unsupported weight dtype ${dtype}`);
    if (compute !== 'stored' && compute !== 'int16') throw new BackendError(`linear: unknown compute "${String(compute)}" (expected stored or int16)`);
    const panels = Math.ceil(outFeatures / 8);
    const q16 = compute === 'int16';
    const bytes = q16 ? q16Bytes(outFeatures, inFeatures) : panels * inFeatures * 8 * esz;
    const ptr = a.alloc(bytes);
    const scalePtr = q16 ? ptr + panels * Math.ceil(inFeatures / 2) * 32 : 0;
    // Stage the raw rows above the packed weight, pack, then free the staging area.
    const rawBytes = outFeatures * inFeatures * esz;
    const staging = a.alloc(rawBytes);
    try {
      fill(a.u8At(staging, rawBytes));
      const grain = Math.max(1, Math.ceil(panels / (this.threads * 4)));
      if (q16) this.pool.run(a, 'pack_w_q16', panels, grain, [staging, DTYPE_CODE[dtype], ptr, scalePtr, outFeatures, inFeatures]);
      else this.pool.run(a, esz === 4 ? 'pack_w32' : 'pack_w16', panels, grain, [staging, ptr, outFeatures, inFeatures]);
    } catch (e) {
      a.release(staging);
      a.release(ptr);
      throw e;
    }
    a.release(staging);
    return new WLinear(a, ptr, outFeatures, inFeatures, dtype, bytes, compute, scalePtr);
  }

  linearInt4(outFeatures: number, inFeatures: number, groupSize: number, fill: (dest: Int4Parts) => void, place = 0, opts: Int4Options = {}): LinearWeight {
    const dequantRounding = opts.dequantRounding ?? 'none',
      activations = opts.activations ?? 'i16';
    if (activations !== 'i16' && activations !== 'i8') throw new BackendError(`linearInt4: activations must be i16 or i8, got ${String(activations)}`);
    checkDims('linearInt4', outFeatures, inFeatures);
    const problem = int4ShapeProblem(inFeatures, groupSize);
    if (problem) throw new BackendError(`linearInt4: ${problem}`);
    const a = this.arena(place);
    const quads = Math.ceil(outFeatures / 4),
      groups = inFeatures / groupSize;
    const bytes = int4Bytes(outFeatures, inFeatures, groupSize);
    const ptr = a.alloc(bytes);
    const smPtr = ptr + quads * (inFeatures / 32) * 64;
    const qBytes = (outFeatures * inFeatures) / 2,
      sBytes = outFeatures * groups * 4;
    const staging = a.alloc(qBytes + 2 * sBytes);
    let roundingCode: number = ROUNDING_CODE[dequantRounding];
    try {
      const sPtr = staging + qBytes; // qBytes is a multiple of 16 (inFeatures of 32)
      const scales = new Float32Array(a.f32.buffer, sPtr, outFeatures * groups),
        offsets = new Float32Array(a.f32.buffer, sPtr + sBytes, outFeatures * groups);
      fill({ q: a.u8At(staging, qBytes), scales, offsets });
      if (dequantRounding === 'f16' && f16NormalOnly(scales, offsets)) roundingCode = F16_NORMAL_ONLY;
      this.pool.run(a, 'pack_q4', quads, this.grain(quads), [staging, sPtr, sPtr + sBytes, ptr, smPtr, outFeatures, inFeatures, groupSize]);
    } catch (e) {
      a.release(staging);
      a.release(ptr);
      throw e;
    }
    a.release(staging);
    return new WLinear(a, ptr, outFeatures, inFeatures, 'int4', bytes, 'stored', smPtr, groupSize, dequantRounding, activations, roundingCode);
  }

  embedding(rows: number, dim: number, dtype: WeightDType, fill: (dest: Uint8Array) => void, place = 0): EmbeddingTable {
    checkDims('embedding', rows, dim);
    const a = this.arena(place);
    const bytes = rows * dim * WEIGHT_DTYPE_BYTES[dtype];
    const ptr = a.alloc(bytes);
    try {
      fill(a.u8At(ptr, bytes));
    } catch (e) {
      a.release(ptr);
      throw e;
    }
    return new WEmbedding(a, ptr, rows, dim, dtype);
  }

  params(data: Float32Array, place = 0): ParamVector {
    const a = this.arena(place);
    const ptr = a.alloc(Math.max(1, data.length) * 4);
    a.f32.set(data, ptr / 4);
    return new WParams(a, ptr, data.length);
  }

  /**
   * cos/sin of position * inv_freq as Hugging Face computes them in f32:
   * inv_freq[i] = 1 / theta^(2i / rotaryDim), angle = f32(position * inv_freq[i]).
   */
  ropeTable(rotaryDim: number, theta: number, maxPositions: number, place = 0): RopeTable {
    if (rotaryDim % 2 !== 0 || rotaryDim <= 0) throw new BackendError(`ropeTable: rotary dim ${rotaryDim} must be even and positive`);
    checkDims('ropeTable', maxPositions, rotaryDim);
    const a = this.arena(place);
    const half = rotaryDim / 2;
    const cosPtr = a.alloc(maxPositions * half * 4),
      sinPtr = a.alloc(maxPositions * half * 4);
    const f = a.f32;
    const inv = new Float32Array(half);
    for (let i = 0; i < half; i++) inv[i] = Math.fround(1 / Math.fround(Math.pow(theta, Math.fround((2 * i) / rotaryDim))));
    for (let p = 0; p < maxPositions; p++) {
      for (let i = 0; i < half; i++) {
        const ang = Math.fround(p * inv[i]);
        f[cosPtr / 4 + p * half + i] = Math.cos(ang);
        f[sinPtr / 4 + p * half + i] = Math.sin(ang);
      }
    }
    return new WRope(a, cosPtr, sinPtr, rotaryDim, maxPositions);
  }

  kvCache(layers: number, kvHeads: number, headDim: number, opts: { blockSize?: number; place?: number } = {}): KVCache {
    const blockSize = opts.blockSize ?? 256;
    const logB = Math.log2(blockSize);
    if (!Number.isInteger(logB) || blockSize < 1) throw new BackendError(`kvCache: block size ${blockSize} must be a power of two`);
    if (headDim % 4 !== 0 || headDim > MAX_HEAD_DIM) throw new BackendError(`kvCache: head dim ${headDim} must be a multiple of 4 and at most ${MAX_HEAD_DIM}`);
    checkDims('kvCache', layers, kvHeads);
    return new WKVCache(this.arena(opts.place ?? 0), layers, kvHeads, headDim, blockSize, logB);
  }

  // ---- compute -----------------------------------------------------------------------------------

  private grain(units: number, perThread = 4): number {
    return Math.max(1, Math.ceil(units / (this.threads * perThread)));
  }

  matmul(out: Matrix, x: Matrix, w: LinearWeight, bias?: ParamVector): void {
    const o = asMatrix(out),
      a = asMatrix(x),
      W = asLinear(w);
    const b = bias ? asParams(bias) : null;
    sameArena('matmul', o.arena, a.arena, W.arena, b?.arena);
    if (a.cols !== W.inFeatures) throw new BackendError(`matmul: input has ${a.cols} columns, weight expects ${W.inFeatures}`);
    if (o.rows !== a.rows || o.cols !== W.outFeatures) throw new BackendError(`matmul: output is ${o.rows}x${o.cols}, expected ${a.rows}x${W.outFeatures}`);
    if (b && b.length !== W.outFeatures) throw new BackendError(`matmul: bias has ${b.length} values, expected ${W.outFeatures}`);
    const M = a.rows,
      K = W.inFeatures,
      N = W.outFeatures;
    const panels = Math.ceil(N / 8);
    const arena = a.arena;
    if (W.compute === 'int16') {
      // One path for every M: activations are quantized per row as they are packed.
      const slices = Math.ceil(M / 4);
      const ap = this.workspace(arena, 'packA', slices * Math.ceil(K / 2) * 16);
      const sa = this.workspace(arena, 'scaleA', slices * 16);
      this.pool.run(arena, 'pack_a_q16', slices, this.grain(slices, 2), [a.ptr, a.ld, M, K, ap, sa]);
      this.pool.run(arena, 'gemm_q16', panels, this.grain(panels, 8), [ap, sa, M, K, W.ptr, W.scalePtr, N, o.ptr, o.ld, b ? b.ptr : 0]);
      return;
    }
    if (W.dtype === 'int4') {
      const G = W.groupSize!;
      if (M === 1) {
        const groups = K / G;
        const a8 = W.activations === 'i8';
        const xq = this.workspace(arena, 'int4x', K * 2 + groups * 8);
        const xs = xq + K * 2,
          xg = xs + groups * 4;
        this.pool.run(arena, 'quant_x_q4', groups, groups, [a.ptr, K, G, xq, xs, xg, a8 ? 8 : 15]);
        const quads = Math.ceil(N / 4);
        this.pool.run(arena, a8 ? 'gemv_q4a8' : 'gemv_q4', quads, this.grain(quads, 8), [xq, xs, xg, W.ptr, W.scalePtr, b ? b.ptr : 0, o.ptr, K, N, G]);
        return;
      }
      const slices = Math.ceil(M / 4);
      const ap = this.workspace(arena, 'packA', slices * K * 16);
      this.pool.run(arena, 'pack_a4', slices, this.grain(slices, 2), [a.ptr, a.ld, M, K, ap]);
      this.pool.run(arena, 'gemm_q4', panels, this.grain(panels, 8), [
        ap,
        M,
        K,
        W.ptr,
        W.scalePtr,
        N,
        o.ptr,
        o.ld,
        b ? b.ptr : 0,
        this.scratch.get(arena)!,
        G,
        W.roundingCode,
      ]);
      return;
    }
    if (M === 1) {
      this.pool.run(arena, `gemv_${W.dtype}`, panels, this.grain(panels, 8), [a.ptr, W.ptr, b ? b.ptr : 0, o.ptr, K, N]);
      return;
    }
    const slices = Math.ceil(M / 4);
    const ap = this.workspace(arena, 'packA', slices * K * 16);
    this.pool.run(arena, 'pack_a4', slices, this.grain(slices, 2), [a.ptr, a.ld, M, K, ap]);
    this.pool.run(arena, `gemm_${W.dtype}`, panels, this.grain(panels, 8), [ap, M, K, W.ptr, N, o.ptr, o.ld, b ? b.ptr : 0, this.scratch.get(arena)!]);
  }

  embed(out: Matrix, table: EmbeddingTable, ids: IntVector): void {
    const o = asMatrix(out),
      t = table as WEmbedding,
      v = asInts(ids);
    if (!(t instanceof WEmbedding)) throw new BackendError('embed: not an embedding table of this backend');
    sameArena('embed', o.arena, t.arena, v.arena);
    if (o.rows !== v.length || o.cols !== t.dim) throw new BackendError(`embed: output ${o.rows}x${o.cols}, expected ${v.length}x${t.dim}`);
    this.checkIds(v, t.rows, 'embed');
    this.pool.run(o.arena, 'embed_rows', o.rows, this.grain(o.rows), [t.ptr, DTYPE_CODE[t.dtype], t.dim, v.ptr, o.ptr, o.ld]);
  }

  embedFromLinear(out: Matrix, w: LinearWeight, ids: IntVector): void {
    const o = asMatrix(out),
      W = asLinear(w),
      v = asInts(ids);
    sameArena('embedFromLinear', o.arena, W.arena, v.arena);
    if (o.rows !== v.length || o.cols !== W.inFeatures)
      throw new BackendError(`embedFromLinear: output ${o.rows}x${o.cols}, expected ${v.length}x${W.inFeatures}`);
    this.checkIds(v, W.outFeatures, 'embedFromLinear');
    if (W.compute !== 'stored' || W.dtype === 'int4')
      throw new BackendError(`embedFromLinear: an ${W.dtype === 'int4' ? 'int4' : 'int16'} linear weight holds no stored rows to look up`);
    this.pool.run(o.arena, 'packed_rows', o.rows, this.grain(o.rows), [W.ptr, DTYPE_CODE[W.dtype], W.inFeatures, v.ptr, o.ptr, o.ld]);
  }

  private checkIds(v: WInts, rows: number, op: string): void {
    const ids = v.arena.i32.subarray(v.ptr / 4, v.ptr / 4 + v.length);
    for (let i = 0; i < ids.length; i++) {
      if (ids[i] < 0 || ids[i] >= rows) throw new BackendError(`${op}: id ${ids[i]} at position ${i} is outside [0, ${rows})`);
    }
  }

  private rowwise(op: string, out: WMatrix, x: WMatrix, kernel: string, args: (o: WMatrix, x: WMatrix) => number[], extra: (WParams | WMatrix)[] = []): void {
    sameArena(op, out.arena, x.arena, ...extra.map((e) => e.arena));
    if (out.rows !== x.rows || out.cols !== x.cols) throw new BackendError(`${op}: output ${out.rows}x${out.cols} differs from input ${x.rows}x${x.cols}`);
    this.pool.run(x.arena, kernel, x.rows, this.grain(x.rows), args(out, x));
  }

  rmsNorm(out: Matrix, x: Matrix, weight: ParamVector, eps: number): void {
    const w = asParams(weight);
    const xm = asMatrix(x);
    if (w.length !== xm.cols) throw new BackendError(`rmsNorm: weight has ${w.length} values, rows have ${xm.cols}`);
    this.rowwise('rmsNorm', asMatrix(out), xm, 'rms_norm', (o, a) => [a.ptr, a.ld, o.ptr, o.ld, w.ptr, a.cols, eps], [w]);
  }

  addRmsNorm(out: Matrix, x: Matrix, residual: Matrix, weight: ParamVector, eps: number): void {
    const w = asParams(weight),
      xm = asMatrix(x),
      r = asMatrix(residual);
    if (w.length !== xm.cols) throw new BackendError(`addRmsNorm: weight has ${w.length} values, rows have ${xm.cols}`);
    if (r.rows !== xm.rows || r.cols !== xm.cols) throw new BackendError(`addRmsNorm: residual ${r.rows}x${r.cols} differs from ${xm.rows}x${xm.cols}`);
    this.rowwise('addRmsNorm', asMatrix(out), xm, 'add_rms_norm', (o, a) => [a.ptr, a.ld, r.ptr, r.ld, o.ptr, o.ld, w.ptr, a.cols, eps], [w, r]);
  }

  layerNorm(out: Matrix, x: Matrix, weight: ParamVector, bias: ParamVector, eps: number): void {
    const w = asParams(weight),
      b = asParams(bias);
    const xm = asMatrix(x);
    if (w.length !== xm.cols || b.length !== xm.cols)
      throw new BackendError(`layerNorm: weight/bias have ${w.length}/${b.length} values, rows have ${xm.cols}`);
    this.rowwise('layerNorm', asMatrix(out), xm, 'layer_norm', (o, a) => [a.ptr, a.ld, o.ptr, o.ld, w.ptr, b.ptr, a.cols, eps], [w, b]);
  }

  activation(out: Matrix, x: Matrix, act: Activation): void {
    const code = actCode(act);
    this.rowwise('activation', asMatrix(out), asMatrix(x), 'activation', (o, a) => [code, a.ptr, a.ld, o.ptr, o.ld, a.cols]);
  }

  gatedActivation(out: Matrix, a: Matrix, b: Matrix, act: Activation): void {
    const code = actCode(act);
    const bm = asMatrix(b),
      am = asMatrix(a);
    if (bm.rows !== am.rows || bm.cols !== am.cols) throw new BackendError(`gatedActivation: ${am.rows}x${am.cols} and ${bm.rows}x${bm.cols} differ`);
    this.rowwise('gatedActivation', asMatrix(out), am, 'gated_activation', (o, x) => [code, x.ptr, x.ld, bm.ptr, bm.ld, o.ptr, o.ld, x.cols], [bm]);
  }

  private binary(op: string, code: number, out: Matrix, a: Matrix, b: Matrix): void {
    const bm = asMatrix(b),
      am = asMatrix(a);
    if (bm.rows !== am.rows || bm.cols !== am.cols) throw new BackendError(`${op}: ${am.rows}x${am.cols} and ${bm.rows}x${bm.cols} differ`);
    this.rowwise(op, asMatrix(out), am, 'binary', (o, x) => [code, x.ptr, x.ld, bm.ptr, bm.ld, o.ptr, o.ld, x.cols], [bm]);
  }
  add(out: Matrix, a: Matrix, b: Matrix): void {
    this.binary('add', 0, out, a, b);
  }
  mul(out: Matrix, a: Matrix, b: Matrix): void {
    this.binary('mul', 1, out, a, b);
  }

  softmax(out: Matrix, x: Matrix): void {
    this.rowwise('softmax', asMatrix(out), asMatrix(x), 'softmax', (o, a) => [a.ptr, a.ld, o.ptr, o.ld, a.cols]);
  }

  rope(x: Matrix, heads: number, headDim: number, positions: IntVector, table: RopeTable): void {
    const m = asMatrix(x),
      p = asInts(positions),
      t = table as WRope;
    if (!(t instanceof WRope)) throw new BackendError('rope: not a rope table of this backend');
    sameArena('rope', m.arena, p.arena, t.arena);
    if (m.cols !== heads * headDim) throw new BackendError(`rope: ${m.cols} columns, expected heads ${heads} x head dim ${headDim}`);
    if (t.rotaryDim > headDim) throw new BackendError(`rope: rotary dim ${t.rotaryDim} exceeds head dim ${headDim}`);
    if (p.length !== m.rows) throw new BackendError(`rope: ${p.length} positions for ${m.rows} rows`);
    const pos = p.arena.i32.subarray(p.ptr / 4, p.ptr / 4 + p.length);
    for (let i = 0; i < pos.length; i++) {
      if (pos[i] < 0 || pos[i] >= t.maxPositions) throw new BackendError(`rope: position ${pos[i]} is outside the table [0, ${t.maxPositions})`);
    }
    this.pool.run(m.arena, 'rope', m.rows, this.grain(m.rows), [m.ptr, m.ld, heads, headDim, t.rotaryDim, p.ptr, t.cosPtr, t.sinPtr]);
  }

  kvReserve(cache: KVCache, length: number): void {
    const c = asCache(cache);
    const need = Math.ceil(length / c.blockSize);
    const a = c.arena;
    if (need > c.pageCapacity) {
      const cap = Math.max(need, c.pageCapacity * 2, 16);
      for (let l = 0; l < c.layers; l++) {
        const table = a.alloc(cap * 4);
        if (c.pageTables[l]) a.release(c.pageTables[l]);
        c.pageTables[l] = table;
        a.i32.set(c.blocks[l], table / 4);
      }
      c.pageCapacity = cap;
    }
    for (let l = 0; l < c.layers; l++) {
      while (c.blocks[l].length < need) {
        const b = a.alloc(c.blockBytes);
        a.i32[c.pageTables[l] / 4 + c.blocks[l].length] = b;
        c.blocks[l].push(b);
      }
    }
    c.length = Math.max(c.length, length);
  }

  kvWrite(cache: KVCache, layer: number, k: Matrix, v: Matrix, slot0: number): void {
    const c = asCache(cache),
      km = asMatrix(k),
      vm = asMatrix(v);
    sameArena('kvWrite', c.arena, km.arena, vm.arena);
    const width = c.kvHeads * c.headDim;
    if (layer < 0 || layer >= c.layers) throw new BackendError(`kvWrite: layer ${layer} outside [0, ${c.layers})`);
    if (km.cols !== width || vm.cols !== width || km.rows !== vm.rows)
      throw new BackendError(`kvWrite: K ${km.rows}x${km.cols} / V ${vm.rows}x${vm.cols}, expected n x ${width}`);
    if (slot0 < 0) throw new BackendError(`kvWrite: slot ${slot0} is negative`);
    this.kvReserve(c, slot0 + km.rows);
    const table = c.pageTables[layer];
    this.pool.run(c.arena, 'kv_write', km.rows, this.grain(km.rows), [km.ptr, km.ld, vm.ptr, vm.ld, table, c.logB, c.kvHeads, c.headDim, slot0]);
  }

  kvTruncate(cache: KVCache, length: number): void {
    const c = asCache(cache);
    if (length < 0 || length > c.length) throw new BackendError(`kvTruncate: length ${length} outside [0, ${c.length}]`);
    const keep = Math.ceil(length / c.blockSize);
    for (let l = 0; l < c.layers; l++) {
      while (c.blocks[l].length > keep) c.arena.release(c.blocks[l].pop()!);
    }
    c.length = length;
  }

  kvCopy(dst: KVCache, src: KVCache, length: number): void {
    const d = asCache(dst),
      c = asCache(src);
    sameArena('kvCopy', d.arena, c.arena);
    if (d === c) throw new BackendError('kvCopy: the source and destination are the same cache');
    if (d.layers !== c.layers || d.kvHeads !== c.kvHeads || d.headDim !== c.headDim || d.blockSize !== c.blockSize)
      throw new BackendError(
        `kvCopy: caches of ${d.layers}x${d.kvHeads}x${d.headDim} (blocks of ${d.blockSize}) and ${c.layers}x${c.kvHeads}x${c.headDim} (blocks of ${c.blockSize})`,
      );
    if (!Number.isInteger(length) || length < 0 || length > c.length) throw new BackendError(`kvCopy: length ${length} outside [0, ${c.length}]`);
    this.kvTruncate(d, 0);
    this.kvReserve(d, length);
    const a = d.arena,
      bytes = d.blockBytes,
      blocks = Math.ceil(length / d.blockSize);
    // Whole blocks: slots past `length` in the last one are never read (the length bounds every read).
    for (let l = 0; l < d.layers; l++) {
      for (let b = 0; b < blocks; b++) a.u8.copyWithin(d.blocks[l][b], c.blocks[l][b], c.blocks[l][b] + bytes);
    }
  }

  attention(out: Matrix, q: Matrix, cache: KVCache, layer: number, opts: AttentionOptions): void {
    const o = asMatrix(out),
      qm = asMatrix(q),
      c = asCache(cache);
    const { heads, qSlot0, causal, scale, keys } = opts;
    const D = c.headDim;
    sameArena('attention', o.arena, qm.arena, c.arena);
    if (layer < 0 || layer >= c.layers) throw new BackendError(`attention: layer ${layer} outside [0, ${c.layers})`);
    if (heads % c.kvHeads !== 0) throw new BackendError(`attention: ${heads} query heads are not a multiple of ${c.kvHeads} KV heads`);
    if (heads / c.kvHeads > this.kernels.maxGroup)
      throw new BackendError(`attention: group of ${heads / c.kvHeads} query heads per KV head exceeds ${this.kernels.maxGroup}`);
    if (qm.cols !== heads * D || o.cols !== heads * D || o.rows !== qm.rows) {
      throw new BackendError(`attention: q ${qm.rows}x${qm.cols} / out ${o.rows}x${o.cols}, expected n x ${heads * D}`);
    }
    if (keys.count < 0) throw new BackendError(`attention: key count ${keys.count} is negative`);
    const table = c.pageTables[layer];
    const scratch = this.scratch.get(c.arena)!;
    const sal = opts.salience;
    if (keys.indices) {
      if (sal) throw new BackendError('attention: salience is not available with key index lists');
      if (qm.rows !== 1) throw new BackendError('attention: key index lists are for decode (one query row) only');
      const idx = asInts(keys.indices);
      sameArena('attention', idx.arena, c.arena);
      const lists = keys.perKvHead ? c.kvHeads : 1;
      const stride = keys.perKvHead ? (keys.stride ?? keys.count) : keys.count;
      if (!Number.isInteger(stride) || stride < keys.count) throw new BackendError(`attention: key list stride ${stride} is less than the count ${keys.count}`);
      const need = lists === 1 ? keys.count : (lists - 1) * stride + keys.count;
      if (idx.length < need || (keys.stride === undefined && idx.length !== lists * keys.count)) {
        throw new BackendError(
          `attention: ${idx.length} key indices, expected ${lists} x ${keys.count}${keys.stride !== undefined ? ` at stride ${stride}` : ''}`,
        );
      }
      const iv = idx.arena.i32;
      for (let li = 0; li < lists; li++) {
        const base = idx.ptr / 4 + li * stride;
        for (let i = 0; i < keys.count; i++) {
          const v = iv[base + i];
          if (v < 0 || v >= c.length) throw new BackendError(`attention: key index ${v} at ${li * stride + i} is outside the cache [0, ${c.length})`);
        }
      }
      this.decode(o, qm, c, table, heads, keys.count, idx.ptr, keys.perKvHead ? stride : 0, scale, scratch);
      return;
    }
    if (keys.count > c.length) throw new BackendError(`attention: ${keys.count} keys but the cache holds ${c.length}`);
    if (qm.rows === 1 && !(causal && qSlot0 + 1 < keys.count) && !sal) {
      this.decode(o, qm, c, table, heads, keys.count, 0, 0, scale, scratch);
      return;
    }
    let ml = 0,
      w: WMatrix | null = null,
      so: WMatrix | null = null;
    if (sal) {
      w = asMatrix(sal.rowWeights);
      so = asMatrix(sal.out);
      sameArena('attention', w.arena, so.arena, c.arena);
      if (w.rows !== 1 || w.cols !== qm.rows) throw new BackendError(`attention: salience row weights are ${w.rows}x${w.cols}, expected 1x${qm.rows}`);
      if (so.rows !== 1 || so.cols !== keys.count) throw new BackendError(`attention: salience output is ${so.rows}x${so.cols}, expected 1x${keys.count}`);
      ml = this.workspace(c.arena, 'attnRowStats', heads * qm.rows * 8);
    }
    const units = heads * Math.ceil(qm.rows / this.kernels.prefillRowsPerUnit);
    this.pool.run(c.arena, 'attn_prefill', units, this.grain(units, 16), [
      qm.ptr,
      qm.ld,
      o.ptr,
      o.ld,
      table,
      c.logB,
      c.kvHeads,
      D,
      heads,
      qm.rows,
      keys.count,
      qSlot0,
      causal ? 1 : 0,
      scale,
      ml,
      scratch,
    ]);
    if (w && so) {
      const ws = this.workspace(c.arena, 'attnColsum', heads * Math.max(1, keys.count) * 4);
      this.pool.run(c.arena, 'attn_colsum', heads, 1, [
        qm.ptr,
        qm.ld,
        table,
        c.logB,
        c.kvHeads,
        D,
        heads,
        qm.rows,
        keys.count,
        qSlot0,
        causal ? 1 : 0,
        scale,
        ml,
        w.ptr,
        ws,
      ]);
      this.pool.run(c.arena, 'attn_colsum_merge', keys.count, this.grain(keys.count, 2), [ws, so.ptr, heads, keys.count]);
    }
  }

  keyScores(out: Matrix, q: Matrix, cache: KVCache, layer: number, opts: KeyScoreOptions): void {
    const o = asMatrix(out),
      qm = asMatrix(q),
      c = asCache(cache),
      keys = asInts(opts.keys);
    const { heads, scale } = opts;
    const D = c.headDim,
      n = keys.length;
    sameArena('keyScores', o.arena, qm.arena, c.arena, keys.arena);
    if (layer < 0 || layer >= c.layers) throw new BackendError(`keyScores: layer ${layer} outside [0, ${c.layers})`);
    if (heads % c.kvHeads !== 0) throw new BackendError(`keyScores: ${heads} query heads are not a multiple of ${c.kvHeads} KV heads`);
    if (qm.cols !== heads * D) throw new BackendError(`keyScores: q is ${qm.rows}x${qm.cols}, expected n x ${heads * D}`);
    if (o.rows !== c.kvHeads || o.cols !== n || o.ld !== n)
      throw new BackendError(`keyScores: out is ${o.rows}x${o.cols}, expected a whole ${c.kvHeads}x${n} matrix`);
    if (n > this.kernels.maxScoredKeys) throw new BackendError(`keyScores: ${n} keys, at most ${this.kernels.maxScoredKeys} per call`);
    const iv = keys.arena.i32;
    for (let i = 0; i < n; i++) {
      const v = iv[keys.ptr / 4 + i];
      if (v < 0 || v >= c.length) throw new BackendError(`keyScores: key ${v} at ${i} is outside the cache [0, ${c.length})`);
    }
    if (n === 0 || qm.rows === 0) {
      if (n > 0) o.arena.f32.fill(0, o.ptr / 4, o.ptr / 4 + c.kvHeads * n);
      return;
    }
    this.pool.run(c.arena, 'attn_keyscore', c.kvHeads, 1, [
      qm.ptr,
      qm.ld,
      qm.rows,
      c.pageTables[layer],
      c.logB,
      c.kvHeads,
      D,
      heads,
      keys.ptr,
      n,
      scale,
      o.ptr,
      this.scratch.get(c.arena)!,
    ]);
  }

  pageBounds(bounds: Matrix, cache: KVCache, layer: number, opts: { pageSize: number; page0: number; nPages: number }): void {
    const b = asMatrix(bounds),
      c = asCache(cache);
    const { pageSize, page0, nPages } = opts;
    sameArena('pageBounds', b.arena, c.arena);
    if (layer < 0 || layer >= c.layers) throw new BackendError(`pageBounds: layer ${layer} outside [0, ${c.layers})`);
    checkDims('pageBounds', pageSize, page0, nPages);
    if (pageSize < 1) throw new BackendError('pageBounds: page size must be at least 1');
    const stride = b.rows / c.kvHeads;
    if (!Number.isInteger(stride) || b.cols !== 2 * c.headDim || b.ld !== b.cols)
      throw new BackendError(`pageBounds: bounds are ${b.rows}x${b.cols}, expected a whole (${c.kvHeads} x pages) x ${2 * c.headDim} matrix`);
    if (page0 + nPages > stride) throw new BackendError(`pageBounds: pages up to ${page0 + nPages} but room for ${stride}`);
    if (nPages === 0) return;
    this.pool.run(c.arena, 'kv_page_bounds', c.kvHeads * nPages, this.grain(c.kvHeads * nPages, 4), [
      c.pageTables[layer],
      c.logB,
      c.kvHeads,
      c.headDim,
      pageSize,
      page0,
      nPages,
      c.length,
      stride,
      b.ptr,
    ]);
  }

  pageScores(out: Matrix, q: Matrix, bounds: Matrix, opts: { heads: number; kvHeads: number; nPages: number }): void {
    const o = asMatrix(out),
      qm = asMatrix(q),
      b = asMatrix(bounds);
    const { heads, kvHeads, nPages } = opts;
    sameArena('pageScores', o.arena, qm.arena, b.arena);
    if (heads % kvHeads !== 0) throw new BackendError(`pageScores: ${heads} query heads are not a multiple of ${kvHeads} KV heads`);
    const D = b.cols / 2,
      stride = b.rows / kvHeads;
    if (qm.rows !== 1 || qm.cols !== heads * D) throw new BackendError(`pageScores: q is ${qm.rows}x${qm.cols}, expected 1x${heads * D}`);
    if (o.rows !== kvHeads || o.cols !== nPages || o.ld !== nPages)
      throw new BackendError(`pageScores: out is ${o.rows}x${o.cols}, expected a whole ${kvHeads}x${nPages} matrix`);
    if (!Number.isInteger(stride) || nPages > stride || b.ld !== b.cols)
      throw new BackendError(`pageScores: bounds are ${b.rows}x${b.cols}, not ${kvHeads} x at least ${nPages} pages`);
    if (nPages === 0) return;
    this.pool.run(b.arena, 'quest_scores', kvHeads, 1, [qm.ptr, b.ptr, kvHeads, D, heads, nPages, stride, o.ptr]);
  }

  private decode(
    o: WMatrix,
    q: WMatrix,
    c: WKVCache,
    table: number,
    heads: number,
    nKeys: number,
    idx: number,
    idxStride: number,
    scale: number,
    scratch: number,
  ): void {
    const D = c.headDim;
    // Split the keys so that every thread has several units even with few KV heads.
    const nSplit = Math.max(1, Math.min(Math.ceil((this.threads * 4) / c.kvHeads), Math.ceil(nKeys / 256)));
    const ws = this.workspace(c.arena, 'attnDecode', heads * nSplit * (D + 2) * 4);
    this.pool.run(c.arena, 'attn_decode', c.kvHeads * nSplit, 1, [
      q.ptr,
      ws,
      table,
      c.logB,
      c.kvHeads,
      D,
      heads,
      nKeys,
      idx,
      idxStride,
      nSplit,
      scale,
      scratch,
    ]);
    this.pool.run(c.arena, 'attn_merge', heads, heads, [ws, o.ptr, D, nSplit]);
  }
}

function checkDims(op: string, ...dims: number[]): void {
  for (const d of dims) if (!Number.isSafeInteger(d) || d < 0) throw new BackendError(`${op}: dimension ${d} is not a non-negative integer`);
}
function actCode(act: Activation): number {
  const c = ACT_CODE[act];
  if (c === undefined) throw new BackendError(`unknown activation ${act} (have ${Object.keys(ACT_CODE).join(', ')})`);
  return c;
}
function sameArena(op: string, ...arenas: (Arena | undefined)[]): void {
  const first = arenas[0];
  for (const a of arenas) {
    if (a && a !== first) throw new BackendError(`${op}: operands live in different memory places (${first?.id} and ${a.id}); copy them first`);
  }
}
function asMatrix(m: Matrix): WMatrix {
  if (!(m instanceof WMatrix)) throw new BackendError('not a matrix of this backend');
  return m;
}
function asInts(v: IntVector): WInts {
  if (!(v instanceof WInts)) throw new BackendError('not an int vector of this backend');
  return v;
}
function asLinear(w: LinearWeight): WLinear {
  if (!(w instanceof WLinear)) throw new BackendError('not a linear weight of this backend');
  return w;
}
function asParams(p: ParamVector): WParams {
  if (!(p instanceof WParams)) throw new BackendError('not a parameter vector of this backend');
  return p;
}
function asCache(c: KVCache): WKVCache {
  if (!(c instanceof WKVCache)) throw new BackendError('not a KV cache of this backend');
  return c;
}
