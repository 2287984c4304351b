// 4-bit weights with per-group scales and offsets (AWQ W4A16): w[n][k] = q[n][k] * s[n][g] + m[n][g],
// q in 0..15, g = k / G. (AWQ's (q - z) * s is m = -z * s; TinyChat stores m as scaled_zeros.)
//
// Kernel layout ("q4 quads"): rows in groups of 4, ceil(N/4) quads. A quad's weights are
// [K/32][4 rows][16 bytes]: byte b of a row's chunk holds k = 32c + b in its low nibble and
// k = 32c + 16 + b in its high nibble, so one 16-byte load unpacks (and, shift, widen) into the
// row's 32 values in k order. Scales and offsets: [quads][K/G][s0 s1 s2 s3 m0 m1 m2 m3] f32.
// Rows past N are zero (q, s and m).
//
// Decode (GEMV): the activation row is quantized once per call to i16 (x = sx * xq, |xq| <= 32767)
// with its per-group sums; each quad streams its weight bytes once, multiplies with
// `i32x4.dot_i16x8_s`, and per group adds s * sx * sum(q xq) + m * sum_g(x). A group's integer sum
// is at most 2 * 15 * 32767 per lane and pair step, G/8 pair steps per lane: exact up to G = 8192.
// Prefill (GEMM): each 8-row panel's K block is dequantized to f32 into L1 scratch, then the f32
// micro-kernel of matmul.ts runs over it.

import { fma, SCRATCH_BYTES } from "./simd";
import { microTileF32, KB_F32 } from "./matmul";

/** 4-row slices per M block of the int4 GEMM: twice the f32 GEMM's, so each dequantized panel serves more rows. */
const MB_SLICES_Q4: i32 = 64;

/**
 * Packs canonical int4 (row-major [N][K/2] bytes, even k in the low nibble) and f32 scales and
 * offsets ([N][K/G] each) into quads at dst and their scale block at sm. Units: quads.
 */
export function pack_q4(tid: i32, begin: i32, end: i32, q: usize, s: usize, m: usize, dst: usize, sm: usize, N: i32, K: i32, G: i32): void {
  const chunks = K >> 5;
  const groups = K / G;
  const rowBytes = <usize>(K >> 1);
  for (let i = begin; i < end; i++) {
    const d = dst + <usize>i * <usize>chunks * 64;
    for (let r = 0; r < 4; r++) {
      const n = i * 4 + r;
      const src = q + <usize>n * rowBytes;
      for (let c = 0; c < chunks; c++) {
        const o = d + <usize>c * 64 + <usize>r * 16;
        for (let b = 0; b < 16; b++) {
          let v: u32 = 0;
          if (n < N) {
            const k0 = c * 32 + b, k1 = k0 + 16;
            const lo = (<u32>load<u8>(src + <usize>(k0 >> 1)) >> (<u32>(k0 & 1) << 2)) & 15;
            const hi = (<u32>load<u8>(src + <usize>(k1 >> 1)) >> (<u32>(k1 & 1) << 2)) & 15;
            v = lo | (hi << 4);
          }
          store<u8>(o + <usize>b, <u8>v);
        }
      }
      const sq = sm + <usize>i * <usize>groups * 32;
      for (let g = 0; g < groups; g++) {
        const ok = n < N;
        store<f32>(sq + <usize>g * 32 + <usize>r * 4, ok ? load<f32>(s + (<usize>n * <usize>groups + <usize>g) * 4) : 0);
        store<f32>(sq + <usize>g * 32 + 16 + <usize>r * 4, ok ? load<f32>(m + (<usize>n * <usize>groups + <usize>g) * 4) : 0);
      }
    }
  }
}

/**
 * Quantizes one activation row x[K] for the GEMVs, per group of G inputs: bits 16 → xq i16 [K]
 * (|xq| <= 32767, for gemv_q4), bits 8 → xq i8 [K] (|xq| <= 127, for gemv_q4a8); x ~ xs[g] * xq.
 * Also the exact f32 sums of x over each group at xg. Units: groups.
 */
export function quant_x_q4(tid: i32, begin: i32, end: i32, x: usize, K: i32, G: i32, xq: usize, xs: usize, xg: usize, bits: i32): void {
  const qmax: f32 = bits == 8 ? 127 : 32767;
  for (let g = begin; g < end; g++) {
    const k0 = g * G;
    let vmax = f32x4.splat(0);
    let sum = f32x4.splat(0);
    for (let k = k0; k < k0 + G; k += 4) {
      const a = v128.load(x + <usize>k * 4);
      vmax = f32x4.max(vmax, f32x4.abs(a));
      sum = f32x4.add(sum, a);
    }
    const amax = max(max(f32x4.extract_lane(vmax, 0), f32x4.extract_lane(vmax, 1)), max(f32x4.extract_lane(vmax, 2), f32x4.extract_lane(vmax, 3)));
    store<f32>(xs + <usize>g * 4, amax / qmax);
    store<f32>(xg + <usize>g * 4, f32x4.extract_lane(sum, 0) + f32x4.extract_lane(sum, 1) + (f32x4.extract_lane(sum, 2) + f32x4.extract_lane(sum, 3)));
    const inv = f32x4.splat(amax > 0 ? qmax / amax : 0);
    for (let k = k0; k < k0 + G; k += 16) {
      const p = x + <usize>k * 4;
      const q0 = i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.mul(v128.load(p), inv)));
      const q1 = i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.mul(v128.load(p, 16), inv)));
      const q2 = i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.mul(v128.load(p, 32), inv)));
      const q3 = i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.mul(v128.load(p, 48), inv)));
      const lo = i16x8.narrow_i32x4_s(q0, q1), hi = i16x8.narrow_i32x4_s(q2, q3);
      if (bits == 8) {
        v128.store(xq + <usize>k, i8x16.narrow_i16x8_s(lo, hi));
      } else {
        v128.store(xq + <usize>k * 2, lo);
        v128.store(xq + <usize>k * 2, hi, 16);
      }
    }
  }
}

// One row's 32 weights of a chunk against the chunk's activations (4 x i16x8), into acc.
// @ts-ignore: decorator
@inline function rowDot(w: v128, x0: v128, x1: v128, x2: v128, x3: v128, acc: v128): v128 {
  const lo = v128.and(w, i8x16.splat(15)), hi = i8x16.shr_u(w, 4);
  const d0 = i32x4.add(i32x4.dot_i16x8_s(i16x8.extend_low_i8x16_u(lo), x0), i32x4.dot_i16x8_s(i16x8.extend_high_i8x16_u(lo), x1));
  const d1 = i32x4.add(i32x4.dot_i16x8_s(i16x8.extend_low_i8x16_u(hi), x2), i32x4.dot_i16x8_s(i16x8.extend_high_i8x16_u(hi), x3));
  return i32x4.add(acc, i32x4.add(d0, d1));
}

/**
 * y[N] = W x (+ bias) for one row, x given quantized by quant_x_q4 (xq, xs, xg). Units: quads.
 */
export function gemv_q4(tid: i32, begin: i32, end: i32, xq: usize, xs: usize, xg: usize, w: usize, sm: usize, bias: usize, y: usize, K: i32, N: i32, G: i32): void {
  const chunks = K >> 5;
  const groups = K / G;
  const perGroup = G >> 5;
  for (let i = begin; i < end; i++) {
    let wp = w + <usize>i * <usize>chunks * 64;
    let sp = sm + <usize>i * <usize>groups * 32;
    let xp = xq;
    let yacc = f32x4.splat(0);
    for (let g = 0; g < groups; g++) {
      let a0 = i32x4.splat(0), a1 = i32x4.splat(0), a2 = i32x4.splat(0), a3 = i32x4.splat(0);
      for (let c = 0; c < perGroup; c++) {
        const x0 = v128.load(xp), x1 = v128.load(xp, 16), x2 = v128.load(xp, 32), x3 = v128.load(xp, 48);
        a0 = rowDot(v128.load(wp), x0, x1, x2, x3, a0);
        a1 = rowDot(v128.load(wp, 16), x0, x1, x2, x3, a1);
        a2 = rowDot(v128.load(wp, 32), x0, x1, x2, x3, a2);
        a3 = rowDot(v128.load(wp, 48), x0, x1, x2, x3, a3);
        wp += 64; xp += 64;
      }
      yacc = groupEnd(a0, a1, a2, a3, sp, xs + <usize>g * 4, xg + <usize>g * 4, yacc);
      sp += 32;
    }
    storeQuad(y, bias, i * 4, N, yacc);
  }
}

// The end of a group of a quad: the rows' integer sums [sum a0, sum a1, sum a2, sum a3], scaled
// by the group's weight scales (sp) and activation scale (xs), plus its offsets (sp + 16) times the
// activations' group sum (xg), added to yacc.
// @ts-ignore: decorator
@inline function groupEnd(a0: v128, a1: v128, a2: v128, a3: v128, sp: usize, xs: usize, xg: usize, yacc: v128): v128 {
  const u0 = i32x4.add(i32x4.shuffle(a0, a1, 0, 1, 4, 5), i32x4.shuffle(a0, a1, 2, 3, 6, 7));
  const u1 = i32x4.add(i32x4.shuffle(a2, a3, 0, 1, 4, 5), i32x4.shuffle(a2, a3, 2, 3, 6, 7));
  const t = f32x4.convert_i32x4_s(i32x4.add(i32x4.shuffle(u0, u1, 0, 2, 4, 6), i32x4.shuffle(u0, u1, 1, 3, 5, 7)));
  const y = fma(f32x4.mul(v128.load(sp), v128.load32_splat(xs)), t, yacc);
  return fma(v128.load(sp, 16), v128.load32_splat(xg), y);
}

// Writes rows n0..n0+3 (those below N) of y from one quad's sums, adding the bias.
// @ts-ignore: decorator
@inline function storeQuad(y: usize, bias: usize, n0: i32, N: i32, yacc: v128): void {
  if (n0 + 4 <= N) {
    v128.store(y + <usize>n0 * 4, bias != 0 ? f32x4.add(yacc, v128.load(bias + <usize>n0 * 4)) : yacc);
    return;
  }
  for (let r = 0; r < N - n0; r++) {
    const v: f32 = r == 0 ? f32x4.extract_lane(yacc, 0) : r == 1 ? f32x4.extract_lane(yacc, 1) : f32x4.extract_lane(yacc, 2);
    store<f32>(y + <usize>(n0 + r) * 4, bias != 0 ? v + load<f32>(bias + <usize>(n0 + r) * 4) : v);
  }
}

// Pairwise products of i8 lanes a with lanes b in [0, 127], summed in pairs into i16 lanes (the
// relaxed dot, one pmaddubsw on x86; emulated in the plain SIMD build).
// @ts-ignore: decorator
@inline function dot8(a: v128, b: v128): v128 {
  if (ASC_FEATURE_RELAXED_SIMD) {
    return i16x8.relaxed_dot_i8x16_i7x16_s(a, b);
  } else {
    const lo = i16x8.extmul_low_i8x16_s(a, b), hi = i16x8.extmul_high_i8x16_s(a, b);
    return i16x8.add(i8x16.shuffle(lo, hi, 0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29), i8x16.shuffle(lo, hi, 2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31));
  }
}

/**
 * W4A8 (opt-in): y[N] = W x (+ bias) for one row with x quantized to i8 per group (quant_x_q4,
 * bits 8). Products are summed in i16 (a pair at most 2 * 127 * 15 = 3810, four chunks per flush
 * at most 30480) and widened every 4 chunks. Units: quads.
 */
export function gemv_q4a8(tid: i32, begin: i32, end: i32, xq: usize, xs: usize, xg: usize, w: usize, sm: usize, bias: usize, y: usize, K: i32, N: i32, G: i32): void {
  const chunks = K >> 5;
  const groups = K / G;
  const perGroup = G >> 5;
  const mask = i8x16.splat(15);
  for (let i = begin; i < end; i++) {
    let wp = w + <usize>i * <usize>chunks * 64;
    let sp = sm + <usize>i * <usize>groups * 32;
    let xp = xq;
    let yacc = f32x4.splat(0);
    for (let g = 0; g < groups; g++) {
      let a0 = i32x4.splat(0), a1 = i32x4.splat(0), a2 = i32x4.splat(0), a3 = i32x4.splat(0);
      for (let c0 = 0; c0 < perGroup; c0 += 4) {
        let h0 = i16x8.splat(0), h1 = i16x8.splat(0), h2 = i16x8.splat(0), h3 = i16x8.splat(0);
        const cEnd = min(perGroup, c0 + 4);
        for (let c = c0; c < cEnd; c++) {
          const xa = v128.load(xp), xb = v128.load(xp, 16);
          const w0 = v128.load(wp), w1 = v128.load(wp, 16), w2 = v128.load(wp, 32), w3 = v128.load(wp, 48);
          h0 = i16x8.add(h0, i16x8.add(dot8(xa, v128.and(w0, mask)), dot8(xb, i8x16.shr_u(w0, 4))));
          h1 = i16x8.add(h1, i16x8.add(dot8(xa, v128.and(w1, mask)), dot8(xb, i8x16.shr_u(w1, 4))));
          h2 = i16x8.add(h2, i16x8.add(dot8(xa, v128.and(w2, mask)), dot8(xb, i8x16.shr_u(w2, 4))));
          h3 = i16x8.add(h3, i16x8.add(dot8(xa, v128.and(w3, mask)), dot8(xb, i8x16.shr_u(w3, 4))));
          wp += 64; xp += 32;
        }
        a0 = i32x4.add(a0, i32x4.extadd_pairwise_i16x8_s(h0));
        a1 = i32x4.add(a1, i32x4.extadd_pairwise_i16x8_s(h1));
        a2 = i32x4.add(a2, i32x4.extadd_pairwise_i16x8_s(h2));
        a3 = i32x4.add(a3, i32x4.extadd_pairwise_i16x8_s(h3));
      }
      yacc = groupEnd(a0, a1, a2, a3, sp, xs + <usize>g * 4, xg + <usize>g * 4, yacc);
      sp += 32;
    }
    storeQuad(y, bias, i * 4, N, yacc);
  }
}

// Rounds f32 lanes to the nearest (ties to even) f16 (rounding 1) or bf16 (2) value; 0 leaves them.
// The reference kernels dequantize in the scales' dtype, one rounding (AWQ GEMM: (q - z) * s in
// fp16; TinyChat: an fp16 FMA), so prefill rounds the same way. Weights are far from overflow; f16
// subnormals (|w| < 2^-14) round to multiples of 2^-24 as f16 does.
// @ts-ignore: decorator
@inline function roundTo(v: v128, rounding: i32): v128 {
  if (rounding == 0) return v;
  if (rounding == 2) {
    const odd = v128.and(i32x4.shr_u(v, 16), i32x4.splat(1));
    return v128.and(i32x4.add(v, i32x4.add(i32x4.splat(0x7FFF), odd)), i32x4.splat(0xFFFF0000));
  }
  const odd = v128.and(i32x4.shr_u(v, 13), i32x4.splat(1));
  const normal = v128.and(i32x4.add(v, i32x4.add(i32x4.splat(0x0FFF), odd)), i32x4.splat(0xFFFFE000));
  // Below 2^-14: adding and subtracting 0.5 (ulp 2^-24) rounds to the f16 subnormal quantum.
  const half = v128.or(v128.and(v, i32x4.splat(0x80000000)), f32x4.splat(0.5));
  const sub = f32x4.sub(f32x4.add(v, half), half);
  return v128.bitselect(sub, normal, f32x4.lt(f32x4.abs(v), f32x4.splat(6.103515625e-5)));
}

/**
 * C[M][N] (row stride ldc) = A W^T (+ bias), A packed by `pack_a4`. Units: panels of 8 rows of W
 * (two quads). `scratch`: the per-thread scratch base (one dequantized K block per thread).
 * `rounding`: the dequantized weights are rounded to 0 f32 (exact), 1 f16, 2 bf16 (see roundTo).
 */
export function gemm_q4(tid: i32, begin: i32, end: i32, ap: usize, M: i32, K: i32, w: usize, sm: usize, N: i32, c: usize, ldc: i32, bias: usize, scratch: usize, G: i32, rounding: i32): void {
  const slices = (M + 3) >> 2;
  const quads = (N + 3) >> 2;
  const chunks = K >> 5;
  const groups = K / G;
  const panel = scratch + <usize>tid * <usize>SCRATCH_BYTES;
  for (let kb = 0; kb < K; kb += KB_F32) {
    const kl = min(KB_F32, K - kb);
    const first = kb == 0;
    for (let mb = 0; mb < slices; mb += MB_SLICES_Q4) {
      const mbEnd = min(slices, mb + MB_SLICES_Q4);
      for (let p = begin; p < end; p++) {
        // Dequantize rows 8p..8p+7, k in [kb, kb + kl), into panel[k - kb][8] f32.
        for (let h = 0; h < 2; h++) {
          const i = p * 2 + h;
          if (i >= quads) {
            for (let k = 0; k < kl; k++) v128.store(panel + <usize>k * 32 + <usize>h * 16, f32x4.splat(0));
            continue;
          }
          const wq = w + <usize>i * <usize>chunks * 64;
          const sq = sm + <usize>i * <usize>groups * 32;
          for (let cc = kb >> 5; cc < (kb + kl) >> 5; cc++) {
            const g = (cc << 5) / G;
            const sv = v128.load(sq + <usize>g * 32), mv = v128.load(sq + <usize>g * 32, 16);
            const base = panel + <usize>((cc << 5) - kb) * 32 + <usize>h * 16;
            for (let b = 0; b < 16; b++) {
              // Byte b of the 4 rows' chunks: low nibbles are k = 32cc + b, high k + 16.
              const o = wq + <usize>cc * 64 + <usize>b;
              const v = i32x4(load<u8>(o), load<u8>(o, 16), load<u8>(o, 32), load<u8>(o, 48));
              const lo = f32x4.convert_i32x4_u(v128.and(v, i32x4.splat(15)));
              const hi = f32x4.convert_i32x4_u(i32x4.shr_u(v, 4));
              v128.store(base + <usize>b * 32, roundTo(fma(lo, sv, mv), rounding));
              v128.store(base + <usize>(b + 16) * 32, roundTo(fma(hi, sv, mv), rounding));
            }
          }
        }
        for (let s = mb; s < mbEnd; s++) microTileF32(ap + (<usize>s * <usize>K + <usize>kb) * 16, panel, kl, c, ldc, M, N, s, p, first, bias);
      }
    }
  }
}
