// Matrix multiplication of f32 activations by weights kept in their storage dtype.
//
// y[m][n] = sum_k x[m][k] * W[n][k] (+ bias[n]), W in nn.Linear orientation [N][K].
//
// Weight layout ("panel8"): W is packed once, at load time, into ceil(N/8) panels of 8 output
// columns, each [K][8]. A 16-bit panel row is 4 u32: lane i holds column 8p+i in its low half and
// column 8p+i+4 in its high half, so one 16-byte load widens into two f32x4 (cols 0-3, cols 4-7).
// An f32 panel row is simply the 8 columns. Columns past N are zero. The same packed weights serve
// the one-row path (GEMV, decode: one sequential stream of weight bytes) and the many-row path
// (GEMM, prefill: register-blocked 4x8 micro-kernel over k-major packed activations).
//
// Weight dtype codes (also used by the TypeScript side): 0 = f32, 1 = f16, 2 = bf16.
// Kernels that take (tid, begin, end) run a slice [begin, end) of their work units on thread tid.

import { fma, bf16Lo, bf16Hi, f16Lo, f16Hi, f16ToF32, SCRATCH_BYTES } from "./simd";

// Generic marker types: f32 = f32 weights, u16 = bf16 weights, i16 = f16 weights.
// @ts-ignore: decorator
@inline function eltSize<T>(): i32 { return isFloat<T>() ? 4 : 2; }

// @ts-ignore: decorator
@inline function widenLo<T>(w: v128): v128 {
  if (isSigned<T>()) return f16Lo(w); else return bf16Lo(w);
}
// @ts-ignore: decorator
@inline function widenHi<T>(w: v128): v128 {
  if (isSigned<T>()) return f16Hi(w); else return bf16Hi(w);
}

// ---- packing -----------------------------------------------------------------------------------

/** Packs row-major 16-bit W [N][K] (at src) into panels at dst. Units: panels. */
export function pack_w16(tid: i32, begin: i32, end: i32, src: usize, dst: usize, N: i32, K: i32): void {
  for (let p = begin; p < end; p++) {
    let d = dst + <usize>p * <usize>K * 16;
    for (let i = 0; i < 4; i++) {
      const nLo = p * 8 + i, nHi = nLo + 4;
      const sLo = src + (<usize>nLo * <usize>K) * 2;
      const sHi = src + (<usize>nHi * <usize>K) * 2;
      const okLo = nLo < N, okHi = nHi < N;
      for (let k = 0; k < K; k++) {
        const lo: u32 = okLo ? <u32>load<u16>(sLo + <usize>k * 2) : 0;
        const hi: u32 = okHi ? <u32>load<u16>(sHi + <usize>k * 2) : 0;
        store<u32>(d + <usize>k * 16 + <usize>i * 4, lo | (hi << 16));
      }
    }
  }
}

/** Packs row-major f32 W [N][K] into panels. Units: panels. */
export function pack_w32(tid: i32, begin: i32, end: i32, src: usize, dst: usize, N: i32, K: i32): void {
  for (let p = begin; p < end; p++) {
    const d = dst + <usize>p * <usize>K * 32;
    for (let i = 0; i < 8; i++) {
      const n = p * 8 + i;
      const s = src + (<usize>n * <usize>K) * 4;
      for (let k = 0; k < K; k++) {
        store<f32>(d + <usize>k * 32 + <usize>i * 4, n < N ? load<f32>(s + <usize>k * 4) : 0);
      }
    }
  }
}

/**
 * Reads rows ids[r] of a packed W as f32 into out[r] (embedding lookup through a tied lm_head).
 * dtype: 0 f32, 1 f16, 2 bf16. Units: rows of out.
 */
export function packed_rows(tid: i32, begin: i32, end: i32, w: usize, dtype: i32, K: i32, ids: usize, out: usize, ldo: i32): void {
  for (let r = begin; r < end; r++) {
    const n = load<i32>(ids + <usize>r * 4);
    const o = out + <usize>r * <usize>ldo * 4;
    const p = n >> 3, c = n & 7;
    if (dtype == 0) {
      const base = w + <usize>p * <usize>K * 32 + <usize>c * 4;
      for (let k = 0; k < K; k++) store<f32>(o + <usize>k * 4, load<f32>(base + <usize>k * 32));
      continue;
    }
    const base = w + <usize>p * <usize>K * 16 + <usize>(c & 3) * 4;
    const shift: u32 = c >= 4 ? 16 : 0;
    for (let k = 0; k < K; k++) {
      const h = (load<u32>(base + <usize>k * 16) >> shift) & 0xFFFF;
      store<f32>(o + <usize>k * 4, dtype == 2 ? reinterpret<f32>(h << 16) : f16ToF32(h));
    }
  }
}

// ---- GEMV: one activation row --------------------------------------------------------------

// Loads `count` (0..4) floats into the low lanes of a vector, zeros elsewhere.
// @ts-ignore: decorator
@inline function loadLanes(src: usize, count: i32): v128 {
  let v = f32x4.splat(0);
  if (count > 0) v = f32x4.replace_lane(v, 0, load<f32>(src));
  if (count > 1) v = f32x4.replace_lane(v, 1, load<f32>(src, 4));
  if (count > 2) v = f32x4.replace_lane(v, 2, load<f32>(src, 8));
  if (count > 3) v = f32x4.replace_lane(v, 3, load<f32>(src, 12));
  return v;
}

// Stores the low `count` (0..4) lanes of v.
// @ts-ignore: decorator
@inline function storeLanes(dst: usize, v: v128, count: i32): void {
  if (count > 0) store<f32>(dst, f32x4.extract_lane(v, 0));
  if (count > 1) store<f32>(dst, f32x4.extract_lane(v, 1), 4);
  if (count > 2) store<f32>(dst, f32x4.extract_lane(v, 2), 8);
  if (count > 3) store<f32>(dst, f32x4.extract_lane(v, 3), 12);
}

// Writes one row of 8 output columns starting at column n0 (lo = columns 0-3, hi = 4-7), of
// which the first `valid` exist. `addBias`: add bias[n0..]; `accumulate`: add what dst holds.
// @ts-ignore: decorator
@inline function storeRow8(dst: usize, lo: v128, hi: v128, valid: i32, bias: usize, accumulate: bool): void {
  let a = lo, b = hi;
  if (valid >= 8) {
    if (bias != 0) { a = f32x4.add(a, v128.load(bias)); b = f32x4.add(b, v128.load(bias, 16)); }
    if (accumulate) { a = f32x4.add(a, v128.load(dst)); b = f32x4.add(b, v128.load(dst, 16)); }
    v128.store(dst, a); v128.store(dst, b, 16);
    return;
  }
  const nLo = min(valid, 4), nHi = max(valid - 4, 0);
  if (bias != 0) { a = f32x4.add(a, loadLanes(bias, nLo)); b = f32x4.add(b, loadLanes(bias + 16, nHi)); }
  if (accumulate) { a = f32x4.add(a, loadLanes(dst, nLo)); b = f32x4.add(b, loadLanes(dst + 16, nHi)); }
  storeLanes(dst, a, nLo);
  storeLanes(dst + 16, b, nHi);
}

// @ts-ignore: decorator
@inline function storeCols(y: usize, bias: usize, p: i32, N: i32, lo: v128, hi: v128): void {
  const n0 = p * 8;
  storeRow8(y + <usize>n0 * 4, lo, hi, N - n0, bias != 0 ? bias + <usize>n0 * 4 : 0, false);
}

// Four k steps per iteration: each half sums its four products in a fresh register, then adds
// that into its accumulator. (Eight running accumulators, one per product, need more registers
// than V8 allocates without spilling to the stack inside the loop; this form needs few.)
// @ts-ignore: decorator
@inline function gemv16<T>(begin: i32, end: i32, x: usize, w: usize, bias: usize, y: usize, K: i32, N: i32): void {
  const panelBytes = <usize>K * 16;
  const K4 = K & ~3;
  for (let p = begin; p < end; p++) {
    let wp = w + <usize>p * panelBytes;
    let xp = x;
    let lo = f32x4.splat(0), hi = f32x4.splat(0);
    const wEnd4 = wp + <usize>K4 * 16;
    while (wp < wEnd4) {
      const w0 = v128.load(wp), x0 = v128.load32_splat(xp);
      let tl = f32x4.mul(widenLo<T>(w0), x0), th = f32x4.mul(widenHi<T>(w0), x0);
      const w1 = v128.load(wp, 16), x1 = v128.load32_splat(xp, 4);
      tl = fma(widenLo<T>(w1), x1, tl); th = fma(widenHi<T>(w1), x1, th);
      const w2 = v128.load(wp, 32), x2 = v128.load32_splat(xp, 8);
      tl = fma(widenLo<T>(w2), x2, tl); th = fma(widenHi<T>(w2), x2, th);
      const w3 = v128.load(wp, 48), x3 = v128.load32_splat(xp, 12);
      tl = fma(widenLo<T>(w3), x3, tl); th = fma(widenHi<T>(w3), x3, th);
      lo = f32x4.add(lo, tl); hi = f32x4.add(hi, th);
      wp += 64; xp += 16;
    }
    const wEnd = w + <usize>p * panelBytes + panelBytes;
    while (wp < wEnd) {
      const w0 = v128.load(wp), x0 = v128.load32_splat(xp);
      lo = fma(widenLo<T>(w0), x0, lo); hi = fma(widenHi<T>(w0), x0, hi);
      wp += 16; xp += 4;
    }
    storeCols(y, bias, p, N, lo, hi);
  }
}

function gemv32(begin: i32, end: i32, x: usize, w: usize, bias: usize, y: usize, K: i32, N: i32): void {
  const panelBytes = <usize>K * 32;
  const K2 = K & ~1;
  for (let p = begin; p < end; p++) {
    let wp = w + <usize>p * panelBytes;
    let xp = x;
    let a0 = f32x4.splat(0), b0 = f32x4.splat(0), a1 = f32x4.splat(0), b1 = f32x4.splat(0);
    const wEnd2 = wp + <usize>K2 * 32;
    while (wp < wEnd2) {
      const x0 = v128.load32_splat(xp), x1 = v128.load32_splat(xp, 4);
      a0 = fma(v128.load(wp), x0, a0); b0 = fma(v128.load(wp, 16), x0, b0);
      a1 = fma(v128.load(wp, 32), x1, a1); b1 = fma(v128.load(wp, 48), x1, b1);
      wp += 64; xp += 8;
    }
    if (K2 < K) {
      const x0 = v128.load32_splat(xp);
      a0 = fma(v128.load(wp), x0, a0); b0 = fma(v128.load(wp, 16), x0, b0);
    }
    storeCols(y, bias, p, N, f32x4.add(a0, a1), f32x4.add(b0, b1));
  }
}

/** y[N] = W x (+ bias). Units: panels of 8 output columns. */
export function gemv_f32(tid: i32, begin: i32, end: i32, x: usize, w: usize, bias: usize, y: usize, K: i32, N: i32): void {
  gemv32(begin, end, x, w, bias, y, K, N);
}
export function gemv_bf16(tid: i32, begin: i32, end: i32, x: usize, w: usize, bias: usize, y: usize, K: i32, N: i32): void {
  gemv16<u16>(begin, end, x, w, bias, y, K, N);
}
export function gemv_f16(tid: i32, begin: i32, end: i32, x: usize, w: usize, bias: usize, y: usize, K: i32, N: i32): void {
  gemv16<i16>(begin, end, x, w, bias, y, K, N);
}

// ---- GEMM: many activation rows -------------------------------------------------------------

/** Block sizes of the GEMM loop nest: K block (k steps) and M block (4-row slices). */
const KB: i32 = 1024;
const MB_SLICES: i32 = 32;
/** The f32 GEMM's K block, for kernels that feed its micro-kernel their own panels. */
export const KB_F32: i32 = KB;

/**
 * Packs activations A [M][K] (row stride lda floats) into 4-row k-major slices [ceil(M/4)][K][4];
 * rows past M are zero. Units: slices.
 */
export function pack_a4(tid: i32, begin: i32, end: i32, a: usize, lda: i32, M: i32, K: i32, ap: usize): void {
  for (let s = begin; s < end; s++) {
    const d = ap + <usize>s * <usize>K * 16;
    for (let r = 0; r < 4; r++) {
      const m = s * 4 + r;
      const src = a + <usize>m * <usize>lda * 4;
      if (m < M) {
        for (let k = 0; k < K; k++) store<f32>(d + <usize>k * 16 + <usize>r * 4, load<f32>(src + <usize>k * 4));
      } else {
        for (let k = 0; k < K; k++) store<f32>(d + <usize>k * 16 + <usize>r * 4, 0);
      }
    }
  }
}

// Writes (or accumulates into) the 4x8 tile of C at rows 4s.., columns 8p..; bias is added with
// the first K block, later K blocks accumulate.
// @ts-ignore: decorator
@inline function storeTile(c: usize, ldc: i32, M: i32, N: i32, s: i32, p: i32, first: bool, bias: usize,
  c00: v128, c01: v128, c10: v128, c11: v128, c20: v128, c21: v128, c30: v128, c31: v128): void {
  const m0 = s * 4, n0 = p * 8;
  const rowBytes = <usize>ldc * 4;
  const r0 = c + <usize>m0 * rowBytes + <usize>n0 * 4;
  const valid = N - n0;
  const b = first && bias != 0 ? bias + <usize>n0 * 4 : 0;
  const acc = !first;
  storeRow8(r0, c00, c01, valid, b, acc);
  if (m0 + 1 < M) storeRow8(r0 + rowBytes, c10, c11, valid, b, acc);
  if (m0 + 2 < M) storeRow8(r0 + 2 * rowBytes, c20, c21, valid, b, acc);
  if (m0 + 3 < M) storeRow8(r0 + 3 * rowBytes, c30, c31, valid, b, acc);
}

// 4x8 micro-kernel over kl steps: A slice at ap (k-major, 4 floats per k), B panel rows at bp.
// T = f32: B rows are 8 f32; T = u16/i16: B rows are 4 u32 pairs (f16 is widened beforehand into
// an f32 scratch panel, so the micro-kernel only ever sees f32 or bf16).
// @ts-ignore: decorator
@inline function microTile<T>(ap: usize, bp: usize, kl: i32, c: usize, ldc: i32, M: i32, N: i32, s: i32, p: i32, first: bool, bias: usize): void {
  let c00 = f32x4.splat(0), c01 = f32x4.splat(0), c10 = f32x4.splat(0), c11 = f32x4.splat(0);
  let c20 = f32x4.splat(0), c21 = f32x4.splat(0), c30 = f32x4.splat(0), c31 = f32x4.splat(0);
  const bStep: usize = isFloat<T>() ? 32 : 16;
  const bEnd = bp + <usize>kl * bStep;
  let a = ap, b = bp;
  while (b < bEnd) {
    let b0: v128, b1: v128;
    if (isFloat<T>()) { b0 = v128.load(b); b1 = v128.load(b, 16); }
    else { const w = v128.load(b); b0 = i32x4.shl(w, 16); b1 = i32x4.shl(i32x4.shr_u(w, 16), 16); }
    const a0 = v128.load32_splat(a), a1 = v128.load32_splat(a, 4);
    c00 = fma(a0, b0, c00); c01 = fma(a0, b1, c01);
    c10 = fma(a1, b0, c10); c11 = fma(a1, b1, c11);
    const a2 = v128.load32_splat(a, 8), a3 = v128.load32_splat(a, 12);
    c20 = fma(a2, b0, c20); c21 = fma(a2, b1, c21);
    c30 = fma(a3, b0, c30); c31 = fma(a3, b1, c31);
    a += 16; b += bStep;
  }
  storeTile(c, ldc, M, N, s, p, first, bias, c00, c01, c10, c11, c20, c21, c30, c31);
}

/** The 4x8 f32 micro-kernel over an f32 panel [kl][8] (for other weight formats' GEMMs). */
// @ts-ignore: decorator
@inline export function microTileF32(ap: usize, bp: usize, kl: i32, c: usize, ldc: i32, M: i32, N: i32, s: i32, p: i32, first: bool, bias: usize): void {
  microTile<f32>(ap, bp, kl, c, ldc, M, N, s, p, first, bias);
}

// @ts-ignore: decorator
@inline function gemmT<T>(tid: i32, begin: i32, end: i32, ap: usize, M: i32, K: i32, w: usize, N: i32, c: usize, ldc: i32, bias: usize, scratch: usize): void {
  const slices = (M + 3) >> 2;
  const esz = <usize>eltSize<T>();
  const panelBytes = <usize>K * 8 * esz;
  const wide = scratch + <usize>tid * <usize>SCRATCH_BYTES; // f16 only: one widened K block
  for (let kb = 0; kb < K; kb += KB) {
    const kl = min(KB, K - kb);
    const first = kb == 0;
    for (let mb = 0; mb < slices; mb += MB_SLICES) {
      const mbEnd = min(slices, mb + MB_SLICES);
      for (let p = begin; p < end; p++) {
        const bp = w + <usize>p * panelBytes + <usize>kb * 8 * esz;
        if (isFloat<T>()) {
          for (let s = mb; s < mbEnd; s++) microTile<f32>(ap + (<usize>s * <usize>K + <usize>kb) * 16, bp, kl, c, ldc, M, N, s, p, first, bias);
        } else if (isSigned<T>()) {
          // f16: widen this K block of the panel once into L1-resident f32 scratch.
          for (let k = 0; k < kl; k++) {
            const u = v128.load(bp + <usize>k * 16);
            v128.store(wide + <usize>k * 32, f16Lo(u));
            v128.store(wide + <usize>k * 32, f16Hi(u), 16);
          }
          for (let s = mb; s < mbEnd; s++) microTile<f32>(ap + (<usize>s * <usize>K + <usize>kb) * 16, wide, kl, c, ldc, M, N, s, p, first, bias);
        } else {
          for (let s = mb; s < mbEnd; s++) microTile<u16>(ap + (<usize>s * <usize>K + <usize>kb) * 16, bp, kl, c, ldc, M, N, s, p, first, bias);
        }
      }
    }
  }
}

/**
 * C[M][N] (row stride ldc) = A W^T (+ bias), A given packed by `pack_a4`. Units: weight panels.
 * `scratch` is the base of the per-thread scratch area (SCRATCH_BYTES each).
 */
export function gemm_f32(tid: i32, begin: i32, end: i32, ap: usize, M: i32, K: i32, w: usize, N: i32, c: usize, ldc: i32, bias: usize, scratch: usize): void {
  gemmT<f32>(tid, begin, end, ap, M, K, w, N, c, ldc, bias, scratch);
}
export function gemm_bf16(tid: i32, begin: i32, end: i32, ap: usize, M: i32, K: i32, w: usize, N: i32, c: usize, ldc: i32, bias: usize, scratch: usize): void {
  gemmT<u16>(tid, begin, end, ap, M, K, w, N, c, ldc, bias, scratch);
}
export function gemm_f16(tid: i32, begin: i32, end: i32, ap: usize, M: i32, K: i32, w: usize, N: i32, c: usize, ldc: i32, bias: usize, scratch: usize): void {
  gemmT<i16>(tid, begin, end, ap, M, K, w, N, c, ldc, bias, scratch);
}
