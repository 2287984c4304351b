// Row-wise kernels over f32 matrices: norms, activations, softmax, rotary embedding, element-wise
// arithmetic. Matrices are [rows][n] with a row stride (ld, in floats) so that column views of a
// wider matrix (e.g. the q, k, v parts of a fused projection) can be used in place.
// Units are rows unless said otherwise.

import { fma, hsum, expV, maxOf, expShifted, f16ToF32 } from "./simd";

/** out = x * rsqrt(mean(x^2) + eps) * w  (Llama/Qwen RMSNorm, computed in f32). */
export function rms_norm(tid: i32, begin: i32, end: i32, x: usize, ldx: i32, out: usize, ldo: i32, w: usize, n: i32, eps: f32): void {
  const n4 = n & ~3;
  for (let r = begin; r < end; r++) {
    const xr = x + <usize>r * <usize>ldx * 4, or = out + <usize>r * <usize>ldo * 4;
    let acc = f32x4.splat(0);
    for (let i = 0; i < n4; i += 4) { const v = v128.load(xr + <usize>i * 4); acc = fma(v, v, acc); }
    let ss = hsum(acc);
    for (let i = n4; i < n; i++) { const v = load<f32>(xr + <usize>i * 4); ss += v * v; }
    const inv = <f32>1.0 / Mathf.sqrt(ss / <f32>n + eps);
    const vi = f32x4.splat(inv);
    for (let i = 0; i < n4; i += 4) {
      v128.store(or + <usize>i * 4, f32x4.mul(f32x4.mul(v128.load(xr + <usize>i * 4), vi), v128.load(w + <usize>i * 4)));
    }
    for (let i = n4; i < n; i++) store<f32>(or + <usize>i * 4, load<f32>(xr + <usize>i * 4) * inv * load<f32>(w + <usize>i * 4));
  }
}

/**
 * The residual step of a pre-norm transformer in one pass: x += r, then out = RMSNorm(x) * w.
 */
export function add_rms_norm(tid: i32, begin: i32, end: i32, x: usize, ldx: i32, r: usize, ldr: i32, out: usize, ldo: i32, w: usize, n: i32, eps: f32): void {
  const n4 = n & ~3;
  for (let row = begin; row < end; row++) {
    const xr = x + <usize>row * <usize>ldx * 4, rr = r + <usize>row * <usize>ldr * 4, or = out + <usize>row * <usize>ldo * 4;
    let acc = f32x4.splat(0);
    for (let i = 0; i < n4; i += 4) {
      const v = f32x4.add(v128.load(xr + <usize>i * 4), v128.load(rr + <usize>i * 4));
      v128.store(xr + <usize>i * 4, v);
      acc = fma(v, v, acc);
    }
    let ss = hsum(acc);
    for (let i = n4; i < n; i++) {
      const v = load<f32>(xr + <usize>i * 4) + load<f32>(rr + <usize>i * 4);
      store<f32>(xr + <usize>i * 4, v);
      ss += v * v;
    }
    const inv = <f32>1.0 / Mathf.sqrt(ss / <f32>n + eps);
    const vi = f32x4.splat(inv);
    for (let i = 0; i < n4; i += 4) {
      v128.store(or + <usize>i * 4, f32x4.mul(f32x4.mul(v128.load(xr + <usize>i * 4), vi), v128.load(w + <usize>i * 4)));
    }
    for (let i = n4; i < n; i++) store<f32>(or + <usize>i * 4, load<f32>(xr + <usize>i * 4) * inv * load<f32>(w + <usize>i * 4));
  }
}

/** out = (x - mean) / sqrt(var + eps) * w + b  (biased variance, as torch.nn.LayerNorm). */
export function layer_norm(tid: i32, begin: i32, end: i32, x: usize, ldx: i32, out: usize, ldo: i32, w: usize, b: usize, n: i32, eps: f32): void {
  const n4 = n & ~3;
  for (let r = begin; r < end; r++) {
    const xr = x + <usize>r * <usize>ldx * 4, or = out + <usize>r * <usize>ldo * 4;
    let acc = f32x4.splat(0);
    for (let i = 0; i < n4; i += 4) acc = f32x4.add(acc, v128.load(xr + <usize>i * 4));
    let s = hsum(acc);
    for (let i = n4; i < n; i++) s += load<f32>(xr + <usize>i * 4);
    const mean = s / <f32>n;
    const vm = f32x4.splat(mean);
    acc = f32x4.splat(0);
    for (let i = 0; i < n4; i += 4) { const d = f32x4.sub(v128.load(xr + <usize>i * 4), vm); acc = fma(d, d, acc); }
    let ss = hsum(acc);
    for (let i = n4; i < n; i++) { const d = load<f32>(xr + <usize>i * 4) - mean; ss += d * d; }
    const inv = <f32>1.0 / Mathf.sqrt(ss / <f32>n + eps);
    const vi = f32x4.splat(inv);
    for (let i = 0; i < n4; i += 4) {
      const d = f32x4.mul(f32x4.sub(v128.load(xr + <usize>i * 4), vm), vi);
      v128.store(or + <usize>i * 4, f32x4.add(f32x4.mul(d, v128.load(w + <usize>i * 4)), v128.load(b + <usize>i * 4)));
    }
    for (let i = n4; i < n; i++) {
      store<f32>(or + <usize>i * 4, (load<f32>(xr + <usize>i * 4) - mean) * inv * load<f32>(w + <usize>i * 4) + load<f32>(b + <usize>i * 4));
    }
  }
}

// ---- activations -------------------------------------------------------------------------------
// Activation codes shared with TypeScript: 0 = gelu (erf), 1 = gelu_pytorch_tanh, 2 = quick_gelu,
// 3 = silu, 4 = identity.

// erf by Abramowitz & Stegun 7.1.26 refined: max abs error 1.2e-7 (f32 level).
// @ts-ignore: decorator
@inline function erfV(x: v128): v128 {
  const ax = f32x4.abs(x);
  const t = f32x4.div(f32x4.splat(1.0), f32x4.add(f32x4.splat(1.0), f32x4.mul(f32x4.splat(0.5), ax)));
  // erfc(|x|) = t * exp(-x^2 - 1.26551223 + t*(1.00002368 + t*(...)))  (Numerical Recipes erfcc)
  let p = f32x4.splat(0.17087277);
  p = f32x4.add(f32x4.mul(p, t), f32x4.splat(-0.82215223));
  p = f32x4.add(f32x4.mul(p, t), f32x4.splat(1.48851587));
  p = f32x4.add(f32x4.mul(p, t), f32x4.splat(-1.13520398));
  p = f32x4.add(f32x4.mul(p, t), f32x4.splat(0.27886807));
  p = f32x4.add(f32x4.mul(p, t), f32x4.splat(-0.18628806));
  p = f32x4.add(f32x4.mul(p, t), f32x4.splat(0.09678418));
  p = f32x4.add(f32x4.mul(p, t), f32x4.splat(0.37409196));
  p = f32x4.add(f32x4.mul(p, t), f32x4.splat(1.00002368));
  p = f32x4.add(f32x4.mul(p, t), f32x4.splat(-1.26551223));
  const e = f32x4.mul(t, expV(f32x4.sub(p, f32x4.mul(ax, ax))));
  const r = f32x4.sub(f32x4.splat(1.0), e);
  // Restore the sign of x.
  return v128.or(r, v128.and(x, i32x4.splat(0x80000000)));
}

// @ts-ignore: decorator
@inline function sigmoidV(x: v128): v128 {
  return f32x4.div(f32x4.splat(1.0), f32x4.add(f32x4.splat(1.0), expV(f32x4.neg(x))));
}

// @ts-ignore: decorator
@inline function tanhV(x: v128): v128 {
  // tanh(x) = 1 - 2 / (exp(2x) + 1); for |x| < 0.0625 use x - x^3/3 + 2x^5/15 to avoid cancellation.
  const big = f32x4.sub(f32x4.splat(1.0), f32x4.div(f32x4.splat(2.0), f32x4.add(expV(f32x4.add(x, x)), f32x4.splat(1.0))));
  const x2 = f32x4.mul(x, x);
  const small = f32x4.mul(x, f32x4.add(f32x4.splat(1.0), f32x4.mul(x2, f32x4.add(f32x4.splat(-0.33333333), f32x4.mul(x2, f32x4.splat(0.13333333))))));
  return v128.bitselect(small, big, f32x4.lt(f32x4.abs(x), f32x4.splat(0.0625)));
}

// @ts-ignore: decorator
@inline function activate(kind: i32, x: v128): v128 {
  if (kind == 0) return f32x4.mul(f32x4.mul(x, f32x4.splat(0.5)), f32x4.add(f32x4.splat(1.0), erfV(f32x4.mul(x, f32x4.splat(0.70710678118654752)))));
  if (kind == 1) {
    const inner = f32x4.mul(f32x4.splat(0.7978845608028654), f32x4.add(x, f32x4.mul(f32x4.splat(0.044715), f32x4.mul(x, f32x4.mul(x, x)))));
    return f32x4.mul(f32x4.mul(x, f32x4.splat(0.5)), f32x4.add(f32x4.splat(1.0), tanhV(inner)));
  }
  if (kind == 2) return f32x4.mul(x, sigmoidV(f32x4.mul(x, f32x4.splat(1.702))));
  if (kind == 3) return f32x4.mul(x, sigmoidV(x));
  return x;
}

// @ts-ignore: decorator
@inline function activateRow(kind: i32, src: usize, gate: usize, dst: usize, n: i32): void {
  const n4 = n & ~3;
  for (let i = 0; i < n4; i += 4) {
    let v = activate(kind, v128.load(src + <usize>i * 4));
    if (gate != 0) v = f32x4.mul(v, v128.load(gate + <usize>i * 4));
    v128.store(dst + <usize>i * 4, v);
  }
  for (let i = n4; i < n; i++) {
    let v = f32x4.extract_lane(activate(kind, f32x4.splat(load<f32>(src + <usize>i * 4))), 0);
    if (gate != 0) v *= load<f32>(gate + <usize>i * 4);
    store<f32>(dst + <usize>i * 4, v);
  }
}

/** out = act(x). */
export function activation(tid: i32, begin: i32, end: i32, kind: i32, x: usize, ldx: i32, out: usize, ldo: i32, n: i32): void {
  for (let r = begin; r < end; r++) activateRow(kind, x + <usize>r * <usize>ldx * 4, 0, out + <usize>r * <usize>ldo * 4, n);
}

/** out = act(a) * b (gated MLP, e.g. SwiGLU: silu(gate) * up). */
export function gated_activation(tid: i32, begin: i32, end: i32, kind: i32, a: usize, lda: i32, b: usize, ldb: i32, out: usize, ldo: i32, n: i32): void {
  for (let r = begin; r < end; r++) {
    activateRow(kind, a + <usize>r * <usize>lda * 4, b + <usize>r * <usize>ldb * 4, out + <usize>r * <usize>ldo * 4, n);
  }
}

/** Element-wise binary op: 0 = add, 1 = mul. */
export function binary(tid: i32, begin: i32, end: i32, op: i32, a: usize, lda: i32, b: usize, ldb: i32, out: usize, ldo: i32, n: i32): void {
  const n4 = n & ~3;
  for (let r = begin; r < end; r++) {
    const ar = a + <usize>r * <usize>lda * 4, br = b + <usize>r * <usize>ldb * 4, or = out + <usize>r * <usize>ldo * 4;
    if (op == 0) {
      for (let i = 0; i < n4; i += 4) v128.store(or + <usize>i * 4, f32x4.add(v128.load(ar + <usize>i * 4), v128.load(br + <usize>i * 4)));
      for (let i = n4; i < n; i++) store<f32>(or + <usize>i * 4, load<f32>(ar + <usize>i * 4) + load<f32>(br + <usize>i * 4));
    } else {
      for (let i = 0; i < n4; i += 4) v128.store(or + <usize>i * 4, f32x4.mul(v128.load(ar + <usize>i * 4), v128.load(br + <usize>i * 4)));
      for (let i = n4; i < n; i++) store<f32>(or + <usize>i * 4, load<f32>(ar + <usize>i * 4) * load<f32>(br + <usize>i * 4));
    }
  }
}

/** Row-wise softmax: out = exp(x - max) / sum. */
export function softmax(tid: i32, begin: i32, end: i32, x: usize, ldx: i32, out: usize, ldo: i32, n: i32): void {
  const n4 = n & ~3;
  for (let r = begin; r < end; r++) {
    const xr = x + <usize>r * <usize>ldx * 4, or = out + <usize>r * <usize>ldo * 4;
    const s = expShifted(xr, or, n, maxOf(xr, n));
    const inv = f32x4.splat(<f32>1.0 / s);
    for (let i = 0; i < n4; i += 4) v128.store(or + <usize>i * 4, f32x4.mul(v128.load(or + <usize>i * 4), inv));
    for (let i = n4; i < n; i++) store<f32>(or + <usize>i * 4, load<f32>(or + <usize>i * 4) / s);
  }
}

/**
 * Rotary position embedding in place, Hugging Face "rotate_half" layout: within each head of
 * size D, the first rotDim dims are rotated as pairs (i, i + rotDim/2):
 *   x[i]' = x[i] cos - x[i + h] sin,  x[i + h]' = x[i + h] cos + x[i] sin,  h = rotDim / 2.
 * positions: i32 per row; cos/sin: tables [position][rotDim/2].
 */
export function rope(tid: i32, begin: i32, end: i32, x: usize, ldx: i32, heads: i32, D: i32, rotDim: i32, positions: usize, cosT: usize, sinT: usize): void {
  const half = rotDim >> 1;
  const h4 = half & ~3;
  for (let r = begin; r < end; r++) {
    const pos = load<i32>(positions + <usize>r * 4);
    const c = cosT + <usize>pos * <usize>half * 4, s = sinT + <usize>pos * <usize>half * 4;
    for (let h = 0; h < heads; h++) {
      const a = x + (<usize>r * <usize>ldx + <usize>h * <usize>D) * 4;
      const b = a + <usize>half * 4;
      for (let i = 0; i < h4; i += 4) {
        const va = v128.load(a + <usize>i * 4), vb = v128.load(b + <usize>i * 4);
        const vc = v128.load(c + <usize>i * 4), vs = v128.load(s + <usize>i * 4);
        v128.store(a + <usize>i * 4, f32x4.sub(f32x4.mul(va, vc), f32x4.mul(vb, vs)));
        v128.store(b + <usize>i * 4, f32x4.add(f32x4.mul(vb, vc), f32x4.mul(va, vs)));
      }
      for (let i = h4; i < half; i++) {
        const va = load<f32>(a + <usize>i * 4), vb = load<f32>(b + <usize>i * 4);
        const vc = load<f32>(c + <usize>i * 4), vs = load<f32>(s + <usize>i * 4);
        store<f32>(a + <usize>i * 4, va * vc - vb * vs);
        store<f32>(b + <usize>i * 4, vb * vc + va * vs);
      }
    }
  }
}

/**
 * Embedding lookup from a row-major table in its storage dtype (0 f32, 1 f16, 2 bf16):
 * out[r] = table[ids[r]] widened to f32. Units: rows of out.
 */
export function embed_rows(tid: i32, begin: i32, end: i32, table: usize, dtype: i32, n: i32, ids: usize, out: usize, ldo: i32): void {
  for (let r = begin; r < end; r++) {
    const id = <usize>load<i32>(ids + <usize>r * 4);
    const o = out + <usize>r * <usize>ldo * 4;
    if (dtype == 0) {
      memory.copy(o, table + id * <usize>n * 4, <usize>n * 4);
    } else if (dtype == 2) {
      const src = table + id * <usize>n * 2;
      for (let i = 0; i < n; i++) store<f32>(o + <usize>i * 4, reinterpret<f32>((<u32>load<u16>(src + <usize>i * 2)) << 16));
    } else {
      const src = table + id * <usize>n * 2;
      for (let i = 0; i < n; i++) store<f32>(o + <usize>i * 4, f16ToF32(<u32>load<u16>(src + <usize>i * 2)));
    }
  }
}
