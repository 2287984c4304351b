// Shared SIMD helpers for the kernels. Everything here inlines.
//
// Two builds are made from the same source: one with plain SIMD128 and one with relaxed SIMD.
// `ASC_FEATURE_RELAXED_SIMD` is a compile-time constant, so the branch below disappears.

/** Bytes of scratch memory each thread owns (see `scratchBase` arguments). */
export const SCRATCH_BYTES: i32 = 256 * 1024;

/** a * b + c, a fused multiply-add when the relaxed-SIMD build is used. */
// @ts-ignore: decorator
@inline export function fma(a: v128, b: v128, c: v128): v128 {
  if (ASC_FEATURE_RELAXED_SIMD) {
    return f32x4.relaxed_madd(a, b, c);
  } else {
    return f32x4.add(f32x4.mul(a, b), c);
  }
}

/** Scalar a * b + c with the same rounding as `fma` lanes of this build. */
// @ts-ignore: decorator
@inline export function fmaScalar(a: f32, b: f32, c: f32): f32 {
  return f32x4.extract_lane(fma(f32x4.splat(a), f32x4.splat(b), f32x4.splat(c)), 0);
}

/** Horizontal sum of the four lanes. */
// @ts-ignore: decorator
@inline export function hsum(v: v128): f32 {
  const s = f32x4.add(v, i32x4.shuffle(v, v, 2, 3, 0, 1));
  const t = f32x4.add(s, i32x4.shuffle(s, s, 1, 0, 3, 2));
  return f32x4.extract_lane(t, 0);
}

/** Maximum of n floats at p (-Infinity for n = 0). */
// @ts-ignore: decorator
@inline export function maxOf(p: usize, n: i32): f32 {
  const n4 = n & ~3;
  let vm = f32x4.splat(-Infinity);
  for (let j = 0; j < n4; j += 4) vm = f32x4.max(vm, v128.load(p + <usize>j * 4));
  let m = hmax(vm);
  for (let j = n4; j < n; j++) m = max(m, load<f32>(p + <usize>j * 4));
  return m;
}

/** dst[j] = exp(src[j] - m) for n floats (dst may be src); returns their sum. */
// @ts-ignore: decorator
@inline export function expShifted(src: usize, dst: usize, n: i32, m: f32): f32 {
  const n4 = n & ~3;
  const mv = f32x4.splat(m);
  let acc = f32x4.splat(0);
  for (let j = 0; j < n4; j += 4) {
    const e = expV(f32x4.sub(v128.load(src + <usize>j * 4), mv));
    v128.store(dst + <usize>j * 4, e);
    acc = f32x4.add(acc, e);
  }
  let s = hsum(acc);
  for (let j = n4; j < n; j++) {
    const e = expS(load<f32>(src + <usize>j * 4) - m);
    store<f32>(dst + <usize>j * 4, e);
    s += e;
  }
  return s;
}

/** Horizontal max of the four lanes. */
// @ts-ignore: decorator
@inline export function hmax(v: v128): f32 {
  const s = f32x4.max(v, i32x4.shuffle(v, v, 2, 3, 0, 1));
  const t = f32x4.max(s, i32x4.shuffle(s, s, 1, 0, 3, 2));
  return f32x4.extract_lane(t, 0);
}

// ---- 16-bit float widening -------------------------------------------------------------------
// Weights of 16-bit dtypes are stored as u32 pairs (column j in the low half, column j + 4 in the
// high half) so that one 16-byte load widens into two f32x4 with a couple of bit operations.

/** bf16 in the low halves of `w` -> f32. */
// @ts-ignore: decorator
@inline export function bf16Lo(w: v128): v128 { return i32x4.shl(w, 16); }
/** bf16 in the high halves of `w` -> f32. */
// @ts-ignore: decorator
@inline export function bf16Hi(w: v128): v128 { return v128.and(w, i32x4.splat(0xFFFF0000)); }

// f16 -> f32: move exponent+mantissa into place, multiply by 2^112 to re-bias (this also turns
// subnormals into the right normal f32), then put the sign back. Inf/NaN inputs become large
// finite numbers (a checkpoint with those is broken anyway; the loader rejects them).
const F16_MAG: i32 = 0x0FFFE000;
const F16_BIAS: f32 = 5.192296858534828e33; // 2^112

// @ts-ignore: decorator
@inline export function f16Lo(w: v128): v128 {
  const mag = v128.and(i32x4.shl(w, 13), i32x4.splat(F16_MAG));
  const sign = v128.and(i32x4.shl(w, 16), i32x4.splat(0x80000000));
  return v128.or(f32x4.mul(mag, f32x4.splat(F16_BIAS)), sign);
}
// @ts-ignore: decorator
@inline export function f16Hi(w: v128): v128 {
  const mag = v128.and(i32x4.shr_u(w, 3), i32x4.splat(F16_MAG));
  const sign = v128.and(w, i32x4.splat(0x80000000));
  return v128.or(f32x4.mul(mag, f32x4.splat(F16_BIAS)), sign);
}

/** Scalar f16 bits -> f32 (exact, including subnormals, inf and NaN). */
export function f16ToF32(h: u32): f32 {
  const sign = (h & 0x8000) << 16;
  const exp = (h >> 10) & 0x1F;
  const mant = h & 0x3FF;
  if (exp == 0x1F) return reinterpret<f32>(sign | 0x7F800000 | (mant << 13));
  const mag = reinterpret<f32>(((h & 0x7FFF) << 13)) * F16_BIAS;
  return reinterpret<f32>(reinterpret<u32>(mag) | sign);
}

// ---- exp ---------------------------------------------------------------------------------------
// exp(x) = 2^n * p(r), n = round(x / ln 2), r = x - n ln 2 (Cody-Waite split), p a degree-6
// polynomial. Relative error about 2 ulp over the clamped range; inputs below -87.3 give ~1e-38.
const LOG2E: f32 = 1.44269504088896341;
const LN2_HI: f32 = 0.693359375;
const LN2_LO: f32 = -2.12194440e-4;

// @ts-ignore: decorator
@inline export function expV(x0: v128): v128 {
  const x = f32x4.min(f32x4.max(x0, f32x4.splat(-87.3)), f32x4.splat(88.7));
  const n = f32x4.nearest(f32x4.mul(x, f32x4.splat(LOG2E)));
  let r = f32x4.sub(x, f32x4.mul(n, f32x4.splat(LN2_HI)));
  r = f32x4.sub(r, f32x4.mul(n, f32x4.splat(LN2_LO)));
  let p = f32x4.splat(1.9875691500e-4);
  p = f32x4.add(f32x4.mul(p, r), f32x4.splat(1.3981999507e-3));
  p = f32x4.add(f32x4.mul(p, r), f32x4.splat(8.3334519073e-3));
  p = f32x4.add(f32x4.mul(p, r), f32x4.splat(4.1665795894e-2));
  p = f32x4.add(f32x4.mul(p, r), f32x4.splat(1.6666665459e-1));
  p = f32x4.add(f32x4.mul(p, r), f32x4.splat(5.0000001201e-1));
  const r2 = f32x4.mul(r, r);
  p = f32x4.add(f32x4.add(f32x4.mul(p, r2), r), f32x4.splat(1.0));
  // 2^n: n is in [-126, 128] after the clamp; build it in two halves so n = 128 cannot overflow
  // the exponent field.
  const ni = i32x4.trunc_sat_f32x4_s(n);
  const h = i32x4.shr_s(ni, 1);
  const s1 = i32x4.shl(i32x4.add(h, i32x4.splat(127)), 23);
  const s2 = i32x4.shl(i32x4.add(i32x4.sub(ni, h), i32x4.splat(127)), 23);
  return f32x4.mul(f32x4.mul(p, s1), s2);
}

/** Scalar exp with the same polynomial as `expV` (lane 0). */
// @ts-ignore: decorator
@inline export function expS(x: f32): f32 {
  return f32x4.extract_lane(expV(f32x4.splat(x)), 0);
}
