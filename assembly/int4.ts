// 4-bit weights with per-group scales and offsets (AWQ W4A16): w[n][k] = q[n][k] * s[n][g] + m[n][g],
// q in 0..15, g = k / G. (AWQ's (q - z) * s is m = -z * s; TinyChat stores m as scaled_zeros.)
//
// Kernel layout ("q4 quads"): rows in groups of 4, ceil(N/4) quads. A quad's weights are
// [K/32][4 rows][16 bytes]: byte b of a row's chunk holds k = 32c + b in its low nibble and
// k = 32c + 16 + b in its high nibble, so one 16-byte load unpacks (and, shift, widen) into the
// row's 32 values in k order. Scales and offsets: [quads][K/G][s0 s1 s2 s3 m0 m1 m2 m3] f32.
// Rows past N are zero (q, s and m).
//
// Decode (GEMV): the activation row is quantized once per call to 15-bit integers (x = sx * xq,
// |xq| <= 16383, as two i8 planes) with its per-group sums; each quad streams its weight bytes
// once, multiplies with the relaxed i8 dot product, and per group adds s * sx * sum(q xq) +
// m * sum_g(x). A group's integer sum is at most G * 15 * 16383: exact in i32 up to G = 8192.
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
 * Quantizes one activation row x[K] for the GEMVs, per group of G inputs; x ~ xs[g] * xq.
 * bits 15 (gemv_q4): |xq| <= 16383, written as two i8 planes at xq: high bytes xh = xq >> 7
 * ([-128, 127], at xq) and low 7 bits xl = xq & 127 ([0, 127], at xq + K), xq = 128 xh + xl.
 * bits 8 (gemv_q4a8): |xq| <= 127, one i8 plane. Also the exact f32 sums of x over each group at
 * xg. Units: groups.
 */
export function quant_x_q4(tid: i32, begin: i32, end: i32, x: usize, K: i32, G: i32, xq: usize, xs: usize, xg: usize, bits: i32): void {
  const qmax: f32 = bits == 8 ? 127 : 16383;
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
        const m = i16x8.splat(127);
        v128.store(xq + <usize>k, i8x16.narrow_i16x8_s(i16x8.shr_s(lo, 7), i16x8.shr_s(hi, 7)));
        v128.store(xq + <usize>K + <usize>k, i8x16.narrow_i16x8_s(v128.and(lo, m), v128.and(hi, m)));
      }
    }
  }
}

/**
 * y[N] = W x (+ bias) for one row, x given quantized by quant_x_q4 (bits 15: planes xh, xl at xq).
 * Each group of a quad is two passes of two rows (pairDot); the quad's four rows' sums then take
 * the group's scales and offsets. Units: quads.
 */
export function gemv_q4(tid: i32, begin: i32, end: i32, xq: usize, xs: usize, xg: usize, w: usize, sm: usize, bias: usize, y: usize, K: i32, N: i32, G: i32): void {
  const chunks = K >> 5;
  const groups = K / G;
  const perGroup = G >> 5;
  for (let i = begin; i < end; i++) {
    const wq = w + <usize>i * <usize>chunks * 64;
    let sp = sm + <usize>i * <usize>groups * 32;
    let yacc = f32x4.splat(0);
    for (let g = 0; g < groups; g++) {
      const wg = wq + <usize>(g * perGroup) * 64, xg0 = xq + <usize>(g * G);
      const p01 = pairDot(wg, xg0, K, perGroup), p23 = pairDot(wg + 32, xg0, K, perGroup);
      const t = f32x4.convert_i32x4_s(i32x4.add(i32x4.shuffle(p01, p23, 0, 2, 4, 6), i32x4.shuffle(p01, p23, 1, 3, 5, 7)));
      yacc = fma(v128.load(sp, 16), v128.load32_splat(xg + <usize>g * 4), fma(f32x4.mul(v128.load(sp), v128.load32_splat(xs + <usize>g * 4)), t, yacc));
      sp += 32;
    }
    storeQuad(y, bias, i * 4, N, yacc);
  }
}

// Two rows of one group (their 16-byte parts at wp0 and wp0 + 16 of each 64-byte chunk) against
// the activation planes at xp0 (high) and xp0 + K (low). Per chunk and row, four relaxed i8 dot
// products (nibbles as the 7-bit operand) summed in i16: a pair is at most 2 * 15 * 128 = 3840,
// two per chunk, four chunks per flush: at most 30720. A flush widens into i32 (128 * high +
// low). Returns [row 0 lanes 0+1, row 0 lanes 2+3, row 1 lanes 0+1, row 1 lanes 2+3].
// (Two rows at a time: four need more registers than V8 allocates without spilling.)
// @ts-ignore: decorator
@inline function pairDot(wp0: usize, xp0: usize, K: i32, perGroup: i32): v128 {
  const mask = i8x16.splat(15);
  let wp = wp0, xp = xp0;
  let a0 = i32x4.splat(0), a1 = i32x4.splat(0);
  for (let c0 = 0; c0 < perGroup; c0 += 4) {
    let h0 = i16x8.splat(0), h1 = i16x8.splat(0), l0 = i16x8.splat(0), l1 = i16x8.splat(0);
    const cEnd = min(perGroup, c0 + 4);
    for (let c = c0; c < cEnd; c++) {
      const ha = v128.load(xp), hb = v128.load(xp, 16);
      const la = v128.load(xp + <usize>K), lb = v128.load(xp + <usize>K, 16);
      let u = v128.load(wp), lo = v128.and(u, mask), hi = v128.and(i16x8.shr_u(u, 4), mask);
      h0 = i16x8.add(h0, i16x8.add(dot8(ha, lo), dot8(hb, hi)));
      l0 = i16x8.add(l0, i16x8.add(dot8(la, lo), dot8(lb, hi)));
      u = v128.load(wp, 16); lo = v128.and(u, mask); hi = v128.and(i16x8.shr_u(u, 4), mask);
      h1 = i16x8.add(h1, i16x8.add(dot8(ha, lo), dot8(hb, hi)));
      l1 = i16x8.add(l1, i16x8.add(dot8(la, lo), dot8(lb, hi)));
      wp += 64; xp += 32;
    }
    a0 = i32x4.add(a0, widen2(h0, l0));
    a1 = i32x4.add(a1, widen2(h1, l1));
  }
  return i32x4.add(i32x4.shuffle(a0, a1, 0, 2, 4, 6), i32x4.shuffle(a0, a1, 1, 3, 5, 7));
}

// The i32 pair sums of 128 * h + l (i16 lanes).
// @ts-ignore: decorator
@inline function widen2(h: v128, l: v128): v128 {
  return i32x4.add(i32x4.dot_i16x8_s(h, i16x8.splat(128)), i32x4.extadd_pairwise_i16x8_s(l));
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

// Four bytes b = b0..b0+3 of a quad's chunk (u lane t: byte b0 + t of rows 0-3, row r in byte r),
// dequantized and rounded: low nibbles (k = b) to base[b][4 rows], high (k = b + 16) to base[b + 16].
// @ts-ignore: decorator
@inline function dequantBytes(u: v128, sv: v128, mv: v128, base: usize, rounding: i32): void {
  const e0 = i16x8.extend_low_i8x16_u(u), e1 = i16x8.extend_high_i8x16_u(u);
  dequantLane(i32x4.extend_low_i16x8_u(e0), sv, mv, base, rounding);
  dequantLane(i32x4.extend_high_i16x8_u(e0), sv, mv, base + 32, rounding);
  dequantLane(i32x4.extend_low_i16x8_u(e1), sv, mv, base + 64, rounding);
  dequantLane(i32x4.extend_high_i16x8_u(e1), sv, mv, base + 96, rounding);
}

// @ts-ignore: decorator
@inline function dequantLane(v: v128, sv: v128, mv: v128, at: usize, rounding: i32): void {
  const lo = f32x4.convert_i32x4_s(v128.and(v, i32x4.splat(15)));
  const hi = f32x4.convert_i32x4_s(i32x4.shr_u(v, 4));
  v128.store(at, roundTo(fma(lo, sv, mv), rounding));
  v128.store(at + 16 * 32, roundTo(fma(hi, sv, mv), rounding));
}

// Rounds f32 lanes to the nearest (ties to even) f16 (rounding 1) or bf16 (2) value; 0 leaves them.
// Rounding 3: f16 for values known to be 0 or normal in f16 (no subnormal path).
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
  if (rounding == 3) return normal;
  // Below 2^-14: adding and subtracting 0.5 (ulp 2^-24) rounds to the f16 subnormal quantum.
  const half = v128.or(v128.and(v, i32x4.splat(0x80000000)), f32x4.splat(0.5));
  const sub = f32x4.sub(f32x4.add(v, half), half);
  return v128.bitselect(sub, normal, f32x4.lt(f32x4.abs(v), f32x4.splat(6.103515625e-5)));
}

/**
 * C[M][N] (row stride ldc) = A W^T (+ bias), A packed by `pack_a4`. Units: panels of 8 rows of W
 * (two quads). `scratch`: the per-thread scratch base (one dequantized K block per thread).
 * `rounding`: the dequantized weights are rounded to 0 f32 (exact), 1 f16, 2 bf16, 3 f16 without
 * subnormals (see roundTo).
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
            // Transpose the 4 rows' 16-byte chunks: u_j lane t = the rows' bytes b = 4j + t
            // (row r in byte r), then widen each byte b to an i32x4 over the rows.
            const o = wq + <usize>cc * 64;
            const r0 = v128.load(o), r1 = v128.load(o, 16), r2 = v128.load(o, 32), r3 = v128.load(o, 48);
            const t01l = i8x16.shuffle(r0, r1, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
            const t01h = i8x16.shuffle(r0, r1, 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
            const t23l = i8x16.shuffle(r2, r3, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
            const t23h = i8x16.shuffle(r2, r3, 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
            dequantBytes(i16x8.shuffle(t01l, t23l, 0, 8, 1, 9, 2, 10, 3, 11), sv, mv, base, rounding);
            dequantBytes(i16x8.shuffle(t01l, t23l, 4, 12, 5, 13, 6, 14, 7, 15), sv, mv, base + 4 * 32, rounding);
            dequantBytes(i16x8.shuffle(t01h, t23h, 0, 8, 1, 9, 2, 10, 3, 11), sv, mv, base + 8 * 32, rounding);
            dequantBytes(i16x8.shuffle(t01h, t23h, 4, 12, 5, 13, 6, 14, 7, 15), sv, mv, base + 12 * 32, rounding);
          }
        }
        for (let s = mb; s < mbEnd; s++) microTileF32(ap + (<usize>s * <usize>K + <usize>kb) * 16, panel, kl, c, ldc, M, N, s, p, first, bias);
      }
    }
  }
}
