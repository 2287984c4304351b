// Matrix multiplication in 16-bit integers: y = (sa[m] sw[n]) * sum_k qa[m][k] qw[n][k] (+ bias).
//
// An opt-in path for compute-bound GEMMs (a vision tower's linears over ~1000 patches): weights
// are quantized once, at load, per output row to 12-bit integers held in i16 (qw = round(w / sw),
// |qw| <= QMAX); activations are quantized per row the same way as they are packed. One
// `i32x4.dot_i16x8_s` does 8 multiply-adds, and on x86 it and the i32 add it feeds issue on more
// ports than an f32 FMA: the micro-kernel runs at about twice the f32 one.
//
// Overflow: a pair sum is at most 2 QMAX^2 = 8,380,418, so 256 pair steps (512 k) fit an i32
// (2,145,387,008 < 2^31). The K loop therefore runs in blocks of KQ = 256 pairs; each block's
// integer sums are converted to f32, scaled and added to C.
//
// Weight layout ("q16 panel"): ceil(N/8) panels of 8 output columns, each [ceil(K/2)][2][4][2]
// i16: for k pair j, 16 bytes for columns 0-3 then 16 for columns 4-7, each column as
// (w[n][2j], w[n][2j+1]). Activations: 4-row slices [ceil(M/4)][ceil(K/2)][4][2] i16, so one
// `v128.load32_splat` gives a row's pair for all four columns. Padding (k >= K, n >= N, m >= M)
// is zero.

import { f16ToF32 } from "./simd";

/** Largest quantized magnitude (12-bit signed levels). */
const QMAX: f32 = 2047;
/** Pair steps per integer accumulation block (see the overflow note above). */
const KQ: i32 = 256;
/** 4-row slices per M block (the A block stays in L2 while panels stream through L1). */
const MB_SLICES: i32 = 32;

// Largest |x| of n f32 at p.
// @ts-ignore: decorator
@inline function absMax(p: usize, n: i32): f32 {
  let v = f32x4.splat(0);
  let i = 0;
  for (; i + 4 <= n; i += 4) v = f32x4.max(v, f32x4.abs(v128.load(p + <usize>i * 4)));
  let m = max(max(f32x4.extract_lane(v, 0), f32x4.extract_lane(v, 1)), max(f32x4.extract_lane(v, 2), f32x4.extract_lane(v, 3)));
  for (; i < n; i++) m = max(m, abs(load<f32>(p + <usize>i * 4)));
  return m;
}

// Quantizes one value: round-to-nearest-even of x * inv, clamped to [-QMAX, QMAX].
// @ts-ignore: decorator
@inline function q1(x: f32, inv: f32): u32 {
  const q = <i32>nearest(min(max(x * inv, -QMAX), QMAX));
  return <u32>q & 0xFFFF;
}

// Quantizes 8 floats at p by inv into 8 i16 (4 pairs, one per i32 lane).
// @ts-ignore: decorator
@inline function q8(p: usize, inv: v128): v128 {
  const lo = i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.mul(v128.load(p), inv)));
  const hi = i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.mul(v128.load(p, 16), inv)));
  // The scale makes |x * inv| <= QMAX up to rounding; clamp anyway.
  return i16x8.min_s(i16x8.max_s(i16x8.narrow_i32x4_s(lo, hi), i16x8.splat(-2047)), i16x8.splat(2047));
}

/**
 * Packs row-major f32 A [M][K] (row stride lda floats) into quantized 4-row slices at ap and writes
 * each row's scale to sa[m] (rows past M: zero values, no scale). Units: slices.
 */
export function pack_a_q16(tid: i32, begin: i32, end: i32, a: usize, lda: i32, M: i32, K: i32, ap: usize, sa: usize): void {
  const pairs = (K + 1) >> 1;
  const K8 = K & ~7;
  const rowBytes = <usize>lda * 4;
  for (let s = begin; s < end; s++) {
    const d = ap + <usize>s * <usize>pairs * 16;
    const m0 = s * 4;
    const src = a + <usize>m0 * rowBytes;
    // Row scales; a row past M (or all zero) gets inv = 0 and so quantizes to zeros.
    let inv0: f32 = 0, inv1: f32 = 0, inv2: f32 = 0, inv3: f32 = 0;
    for (let r = 0; r < 4; r++) {
      if (m0 + r >= M) break;
      const amax = absMax(src + <usize>r * rowBytes, K);
      store<f32>(sa + <usize>(m0 + r) * 4, amax / QMAX);
      const inv: f32 = amax > 0 ? QMAX / amax : 0;
      if (r == 0) inv0 = inv; else if (r == 1) inv1 = inv; else if (r == 2) inv2 = inv; else inv3 = inv;
    }
    const full = m0 + 4 <= M;
    const v0 = f32x4.splat(inv0), v1 = f32x4.splat(inv1), v2 = f32x4.splat(inv2), v3 = f32x4.splat(inv3);
    let k = 0;
    if (full) {
      for (; k < K8; k += 8) {
        const p = src + <usize>k * 4;
        const q0 = q8(p, v0), q1 = q8(p + rowBytes, v1), q2 = q8(p + 2 * rowBytes, v2), q3 = q8(p + 3 * rowBytes, v3);
        // 4x4 transpose of pairs: output pair j holds rows 0-3's pair j.
        const t0 = i32x4.shuffle(q0, q1, 0, 4, 1, 5), t1 = i32x4.shuffle(q2, q3, 0, 4, 1, 5);
        const t2 = i32x4.shuffle(q0, q1, 2, 6, 3, 7), t3 = i32x4.shuffle(q2, q3, 2, 6, 3, 7);
        const o = d + <usize>(k >> 1) * 16;
        v128.store(o, i64x2.shuffle(t0, t1, 0, 2));
        v128.store(o, i64x2.shuffle(t0, t1, 1, 3), 16);
        v128.store(o, i64x2.shuffle(t2, t3, 0, 2), 32);
        v128.store(o, i64x2.shuffle(t2, t3, 1, 3), 48);
      }
    }
    for (let r = 0; r < 4; r++) {
      const dr = d + <usize>r * 4;
      const inv: f32 = r == 0 ? inv0 : r == 1 ? inv1 : r == 2 ? inv2 : inv3;
      const sr = src + <usize>r * rowBytes;
      if (m0 + r >= M) {
        for (let j = k >> 1; j < pairs; j++) store<u32>(dr + <usize>j * 16, 0);
        continue;
      }
      for (let kk = k; kk < K; kk += 2) {
        const lo = q1(load<f32>(sr + <usize>kk * 4), inv);
        const hi: u32 = kk + 1 < K ? q1(load<f32>(sr + <usize>(kk + 1) * 4), inv) : 0;
        store<u32>(dr + <usize>(kk >> 1) * 16, lo | (hi << 16));
      }
    }
  }
}

// Reads element k of row n of a row-major weight in its storage dtype (0 f32, 1 f16, 2 bf16).
// @ts-ignore: decorator
@inline function weightAt(src: usize, dtype: i32, K: i32, n: i32, k: i32): f32 {
  const i = <usize>n * <usize>K + <usize>k;
  if (dtype == 0) return load<f32>(src + i * 4);
  const h = <u32>load<u16>(src + i * 2);
  return dtype == 2 ? reinterpret<f32>(h << 16) : f16ToF32(h);
}

/**
 * Quantizes row-major W [N][K] (dtype 0 f32, 1 f16, 2 bf16) per output row into q16 panels at
 * dst and the row scales into sw[8 * panels] (zero past N). Units: panels.
 */
export function pack_w_q16(tid: i32, begin: i32, end: i32, src: usize, dtype: i32, dst: usize, sw: usize, N: i32, K: i32): void {
  const pairs = (K + 1) >> 1;
  for (let p = begin; p < end; p++) {
    const d = dst + <usize>p * <usize>pairs * 32;
    for (let c = 0; c < 8; c++) {
      const n = p * 8 + c;
      const dc = d + <usize>(c >> 2) * 16 + <usize>(c & 3) * 4;
      let amax: f32 = 0;
      if (n < N) for (let k = 0; k < K; k++) amax = max(amax, abs(weightAt(src, dtype, K, n, k)));
      store<f32>(sw + <usize>n * 4, amax / QMAX);
      const inv: f32 = amax > 0 ? QMAX / amax : 0;
      for (let j = 0; j < pairs; j++) {
        const k = j * 2;
        const lo: u32 = n < N ? q1(weightAt(src, dtype, K, n, k), inv) : 0;
        const hi: u32 = n < N && k + 1 < K ? q1(weightAt(src, dtype, K, n, k + 1), inv) : 0;
        store<u32>(dc + <usize>j * 32, lo | (hi << 16));
      }
    }
  }
}

// Adds (or, for the first K block, writes with the bias) one scaled row of 8 columns of C.
// @ts-ignore: decorator
@inline function emitRow(dst: usize, lo: v128, hi: v128, sa: f32, swLo: v128, swHi: v128, valid: i32, bias: usize, first: bool): void {
  const s = f32x4.splat(sa);
  let a = f32x4.mul(f32x4.mul(f32x4.convert_i32x4_s(lo), swLo), s);
  let b = f32x4.mul(f32x4.mul(f32x4.convert_i32x4_s(hi), swHi), s);
  if (valid >= 8) {
    if (first) {
      if (bias != 0) { a = f32x4.add(a, v128.load(bias)); b = f32x4.add(b, v128.load(bias, 16)); }
    } else { a = f32x4.add(a, v128.load(dst)); b = f32x4.add(b, v128.load(dst, 16)); }
    v128.store(dst, a); v128.store(dst, b, 16);
    return;
  }
  for (let c = 0; c < valid; c++) {
    let v: f32 = c < 4 ? extract4(a, c) : extract4(b, c - 4);
    if (first) { if (bias != 0) v += load<f32>(bias + <usize>c * 4); }
    else v += load<f32>(dst + <usize>c * 4);
    store<f32>(dst + <usize>c * 4, v);
  }
}

// @ts-ignore: decorator
@inline function extract4(v: v128, i: i32): f32 {
  if (i == 0) return f32x4.extract_lane(v, 0);
  if (i == 1) return f32x4.extract_lane(v, 1);
  if (i == 2) return f32x4.extract_lane(v, 2);
  return f32x4.extract_lane(v, 3);
}

// 4x8 integer micro-kernel over `jl` pair steps of slice s and panel p, then scaled into C.
// @ts-ignore: decorator
@inline function microTileQ(ap: usize, bp: usize, jl: i32, c: usize, ldc: i32, M: i32, N: i32, s: i32, p: i32, first: bool, bias: usize, sa: usize, sw: usize): void {
  let c00 = i32x4.splat(0), c01 = i32x4.splat(0), c10 = i32x4.splat(0), c11 = i32x4.splat(0);
  let c20 = i32x4.splat(0), c21 = i32x4.splat(0), c30 = i32x4.splat(0), c31 = i32x4.splat(0);
  const bEnd = bp + <usize>jl * 32;
  let a = ap, b = bp;
  while (b < bEnd) {
    const b0 = v128.load(b), b1 = v128.load(b, 16);
    const a0 = v128.load32_splat(a), a1 = v128.load32_splat(a, 4);
    c00 = i32x4.add(c00, i32x4.dot_i16x8_s(a0, b0)); c01 = i32x4.add(c01, i32x4.dot_i16x8_s(a0, b1));
    c10 = i32x4.add(c10, i32x4.dot_i16x8_s(a1, b0)); c11 = i32x4.add(c11, i32x4.dot_i16x8_s(a1, b1));
    const a2 = v128.load32_splat(a, 8), a3 = v128.load32_splat(a, 12);
    c20 = i32x4.add(c20, i32x4.dot_i16x8_s(a2, b0)); c21 = i32x4.add(c21, i32x4.dot_i16x8_s(a2, b1));
    c30 = i32x4.add(c30, i32x4.dot_i16x8_s(a3, b0)); c31 = i32x4.add(c31, i32x4.dot_i16x8_s(a3, b1));
    a += 16; b += 32;
  }
  const m0 = s * 4, n0 = p * 8;
  const rowBytes = <usize>ldc * 4;
  const r0 = c + <usize>m0 * rowBytes + <usize>n0 * 4;
  const valid = min(N - n0, 8);
  const bn = bias != 0 ? bias + <usize>n0 * 4 : 0;
  const swLo = v128.load(sw + <usize>n0 * 4), swHi = v128.load(sw + <usize>n0 * 4, 16);
  const sr = sa + <usize>m0 * 4;
  emitRow(r0, c00, c01, load<f32>(sr), swLo, swHi, valid, bn, first);
  if (m0 + 1 < M) emitRow(r0 + rowBytes, c10, c11, load<f32>(sr, 4), swLo, swHi, valid, bn, first);
  if (m0 + 2 < M) emitRow(r0 + 2 * rowBytes, c20, c21, load<f32>(sr, 8), swLo, swHi, valid, bn, first);
  if (m0 + 3 < M) emitRow(r0 + 3 * rowBytes, c30, c31, load<f32>(sr, 12), swLo, swHi, valid, bn, first);
}

/**
 * C[M][N] (row stride ldc) = A W^T (+ bias) with A packed by `pack_a_q16` (row scales sa) and W by
 * `pack_w_q16` (row scales sw). Units: weight panels.
 */
export function gemm_q16(tid: i32, begin: i32, end: i32, ap: usize, sa: usize, M: i32, K: i32, w: usize, sw: usize, N: i32, c: usize, ldc: i32, bias: usize): void {
  const slices = (M + 3) >> 2;
  const pairs = (K + 1) >> 1;
  const panelBytes = <usize>pairs * 32;
  for (let jb = 0; jb < pairs; jb += KQ) {
    const jl = min(KQ, pairs - jb);
    const first = jb == 0;
    for (let mb = 0; mb < slices; mb += MB_SLICES) {
      const mbEnd = min(slices, mb + MB_SLICES);
      for (let p = begin; p < end; p++) {
        const bp = w + <usize>p * panelBytes + <usize>jb * 32;
        for (let s = mb; s < mbEnd; s++) {
          microTileQ(ap + (<usize>s * <usize>pairs + <usize>jb) * 16, bp, jl, c, ldc, M, N, s, p, first, bias, sa, sw);
        }
      }
    }
  }
}
