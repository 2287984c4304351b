// Reference implementations of the kernels: plain loops in float64, written for clarity, not speed.
// Matrices are row-major flat arrays; shapes are passed explicitly.
import type { Activation } from '../src/kernels/backend.js';

// ---- linear algebra --------------------------------------------------------------------------

/**
 * y[m][n] = sum_k x[m][k] * w[n][k] (+ bias[n]); w in nn.Linear orientation [N][K].
 * Also returns sum_k |x[m][k] * w[n][k]| + |bias[n]| per element (the scale of rounding errors).
 */
export function matmul(
  x: ArrayLike<number>,
  M: number,
  K: number,
  w: ArrayLike<number>,
  N: number,
  bias?: ArrayLike<number>,
): { y: Float64Array; absSum: Float64Array } {
  const y = new Float64Array(M * N),
    absSum = new Float64Array(M * N);
  for (let m = 0; m < M; m++) {
    for (let n = 0; n < N; n++) {
      let s = bias ? bias[n] : 0,
        a = bias ? Math.abs(bias[n]) : 0;
      for (let k = 0; k < K; k++) {
        const p = x[m * K + k] * w[n * K + k];
        s += p;
        a += Math.abs(p);
      }
      y[m * N + n] = s;
      absSum[m * N + n] = a;
    }
  }
  return { y, absSum };
}

/** Round half to even, as f32x4.nearest. */
function roundHalfEven(v: number): number {
  const r = Math.round(v);
  return Math.abs(v % 1) === 0.5 ? 2 * Math.round(v / 2) : r;
}

/**
 * Per-row 12-bit quantization as the int16 linear does it, in f32 arithmetic: scale =
 * f32(max|row| / 2047), q = roundHalfEven(f32(x * f32(2047 / max|row|))), clamped to +-2047.
 */
export function quantizeRows12(x: ArrayLike<number>, rows: number, n: number): { q: Int32Array; scale: Float64Array } {
  const q = new Int32Array(rows * n),
    scale = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    let amax = 0;
    for (let k = 0; k < n; k++) amax = Math.max(amax, Math.abs(x[r * n + k]));
    scale[r] = Math.fround(amax / 2047);
    if (amax === 0) continue;
    const inv = Math.fround(2047 / amax);
    for (let k = 0; k < n; k++) q[r * n + k] = Math.max(-2047, Math.min(2047, roundHalfEven(Math.fround(x[r * n + k] * inv))));
  }
  return { q, scale };
}

/**
 * The int16 linear's exact result: both operands quantized by quantizeRows12, integer dot
 * products, scaled: y = sa[m] sw[n] sum_k qa qw (+ bias). absSum: sa sw sum|qa qw| + |bias|.
 */
export function matmulInt16(
  x: ArrayLike<number>,
  M: number,
  K: number,
  w: ArrayLike<number>,
  N: number,
  bias?: ArrayLike<number>,
): { y: Float64Array; absSum: Float64Array } {
  const a = quantizeRows12(x, M, K),
    b = quantizeRows12(w, N, K);
  // Integer products and their sums are exact in float64 (|sum| < 2^53).
  const { y, absSum } = matmul(a.q, M, K, b.q, N);
  for (let m = 0; m < M; m++) {
    for (let n = 0; n < N; n++) {
      const sc = a.scale[m] * b.scale[n];
      y[m * N + n] = y[m * N + n] * sc + (bias ? bias[n] : 0);
      absSum[m * N + n] = absSum[m * N + n] * sc + (bias ? Math.abs(bias[n]) : 0);
    }
  }
  return { y, absSum };
}

// ---- normalisation ---------------------------------------------------------------------------

export function rmsNorm(x: ArrayLike<number>, rows: number, n: number, w: ArrayLike<number>, eps: number): Float64Array {
  const out = new Float64Array(rows * n);
  for (let r = 0; r < rows; r++) {
    let ss = 0;
    for (let i = 0; i < n; i++) ss += x[r * n + i] ** 2;
    const inv = 1 / Math.sqrt(ss / n + eps);
    for (let i = 0; i < n; i++) out[r * n + i] = x[r * n + i] * inv * w[i];
  }
  return out;
}

/** torch.nn.LayerNorm: biased variance. */
export function layerNorm(x: ArrayLike<number>, rows: number, n: number, w: ArrayLike<number>, b: ArrayLike<number>, eps: number): Float64Array {
  const out = new Float64Array(rows * n);
  for (let r = 0; r < rows; r++) {
    let s = 0;
    for (let i = 0; i < n; i++) s += x[r * n + i];
    const mean = s / n;
    let v = 0;
    for (let i = 0; i < n; i++) v += (x[r * n + i] - mean) ** 2;
    const inv = 1 / Math.sqrt(v / n + eps);
    for (let i = 0; i < n; i++) out[r * n + i] = (x[r * n + i] - mean) * inv * w[i] + b[i];
  }
  return out;
}

// ---- activations -----------------------------------------------------------------------------

/**
 * erf(x) to about 1e-15 absolute: the series erf(x) = 2/sqrt(pi) e^(-x^2) sum_n 2^n x^(2n+1) / (2n+1)!!
 * has only positive terms (no cancellation) and converges for every x; past |x| = 6,
 * 1 - |erf(x)| < 2.2e-17, below the float64 resolution of 1.
 */
export function erf(x: number): number {
  const ax = Math.abs(x);
  if (ax >= 6) return Math.sign(x);
  let term = ax,
    sum = ax;
  for (let n = 1; n < 500; n++) {
    term *= (2 * ax * ax) / (2 * n + 1);
    sum += term;
    if (term < sum * 1e-17) break;
  }
  return Math.sign(x) * Math.min(1, (2 / Math.sqrt(Math.PI)) * Math.exp(-ax * ax) * sum);
}

export const sigmoid = (x: number): number => (x >= 0 ? 1 / (1 + Math.exp(-x)) : Math.exp(x) / (1 + Math.exp(x)));

export function activate(act: Activation, x: number): number {
  switch (act) {
    case 'gelu':
      return 0.5 * x * (1 + erf(x / Math.SQRT2));
    case 'gelu_pytorch_tanh':
      return 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x * x * x)));
    case 'quick_gelu':
      return x * sigmoid(1.702 * x);
    case 'silu':
      return x * sigmoid(x);
    case 'identity':
      return x;
  }
}

export function activation(act: Activation, x: ArrayLike<number>): Float64Array {
  return Float64Array.from({ length: x.length }, (_, i) => activate(act, x[i]));
}

// ---- softmax ---------------------------------------------------------------------------------

export function softmax(x: ArrayLike<number>, rows: number, n: number): Float64Array {
  const out = new Float64Array(rows * n);
  for (let r = 0; r < rows; r++) {
    let m = -Infinity;
    for (let i = 0; i < n; i++) m = Math.max(m, x[r * n + i]);
    let s = 0;
    for (let i = 0; i < n; i++) s += out[r * n + i] = Math.exp(x[r * n + i] - m);
    for (let i = 0; i < n; i++) out[r * n + i] /= s;
  }
  return out;
}

// ---- rotary embedding ------------------------------------------------------------------------

/**
 * Rotation angles pos * inv_freq[i], inv_freq[i] = theta^(-2i / rotDim), i < rotDim / 2.
 * 'exact': in float64. 'hf-f32': as Hugging Face computes them (inv_freq and the product rounded
 * to f32), which is what a checkpoint was trained with.
 */
export function ropeAngles(rotDim: number, theta: number, pos: number, mode: 'exact' | 'hf-f32'): Float64Array {
  const half = rotDim / 2;
  const a = new Float64Array(half);
  for (let i = 0; i < half; i++) {
    if (mode === 'exact') {
      a[i] = pos * Math.pow(theta, -(2 * i) / rotDim);
    } else {
      const f = Math.fround;
      const inv = f(1 / f(Math.pow(theta, f((2 * i) / rotDim))));
      a[i] = f(pos * inv);
    }
  }
  return a;
}

/**
 * HF rotate_half RoPE on rows [rows][heads * headDim]: within each head, dims i and i + rotDim/2
 * (i < rotDim/2) rotate by angle[i]; dims past rotDim are left alone. Returns a new array.
 */
export function rope(
  x: ArrayLike<number>,
  rows: number,
  heads: number,
  headDim: number,
  rotDim: number,
  positions: ArrayLike<number>,
  theta: number,
  mode: 'exact' | 'hf-f32',
): Float64Array {
  const out = Float64Array.from(x);
  const half = rotDim / 2;
  for (let r = 0; r < rows; r++) {
    const ang = ropeAngles(rotDim, theta, positions[r], mode);
    for (let h = 0; h < heads; h++) {
      const base = r * heads * headDim + h * headDim;
      for (let i = 0; i < half; i++) {
        const a = x[base + i],
          b = x[base + i + half];
        const c = Math.cos(ang[i]),
          s = Math.sin(ang[i]);
        out[base + i] = a * c - b * s;
        out[base + i + half] = b * c + a * s;
      }
    }
  }
  return out;
}

// ---- attention -------------------------------------------------------------------------------

/** The K and V rows of one layer: k(slot, kvHead) and v(slot, kvHead), each headDim values. */
export interface KVSource {
  k(slot: number, kvHead: number): ArrayLike<number>;
  v(slot: number, kvHead: number): ArrayLike<number>;
}

/**
 * Scaled dot-product attention of q [nq][heads * D] with grouped KV heads (query head h reads KV
 * head floor(h / (heads / kvHeads))). `keys(row, kvHead)` lists the cache slots that query row
 * attends to (duplicates count twice). A row with no keys gives zeros.
 */
/** Softmax over `slots` of scale * q[qo..qo+D) . k(slot, kvh) (float64). */
function softmaxOver(q: ArrayLike<number>, qo: number, D: number, kv: KVSource, kvh: number, slots: readonly number[], scale: number): number[] {
  const scores = slots.map((s) => {
    const k = kv.k(s, kvh);
    let d = 0;
    for (let i = 0; i < D; i++) d += q[qo + i] * k[i];
    return d * scale;
  });
  const m = Math.max(...scores);
  const e = scores.map((x) => Math.exp(x - m));
  const l = e.reduce((a, b) => a + b, 0);
  return e.map((x) => x / l);
}

export function attention(
  q: ArrayLike<number>,
  nq: number,
  heads: number,
  kvHeads: number,
  D: number,
  kv: KVSource,
  keys: (row: number, kvHead: number) => readonly number[],
  scale: number,
): Float64Array {
  const out = new Float64Array(nq * heads * D);
  const group = heads / kvHeads;
  for (let r = 0; r < nq; r++) {
    for (let h = 0; h < heads; h++) {
      const kvh = Math.floor(h / group);
      const slots = keys(r, kvh);
      if (slots.length === 0) continue;
      const qo = r * heads * D + h * D;
      const p = softmaxOver(q, qo, D, kv, kvh, slots, scale);
      for (let j = 0; j < slots.length; j++) {
        const v = kv.v(slots[j], kvh);
        for (let i = 0; i < D; i++) out[qo + i] += p[j] * v[i];
      }
    }
  }
  return out;
}

/** Slots [0, count), or with `causal` only those <= qSlot0 + row. */
/**
 * Key salience (float64): out[j] = (1 / heads) * sum_h sum_r w[r] * P_h[r, j] over dense keys
 * [0, count) (causal: up to the row's own slot).
 */
export function keySalience(
  q: ArrayLike<number>,
  nq: number,
  heads: number,
  kvHeads: number,
  D: number,
  kv: KVSource,
  count: number,
  causal: boolean,
  qSlot0: number,
  w: ArrayLike<number>,
  scale: number,
): Float64Array {
  const out = new Float64Array(count);
  const group = heads / kvHeads;
  for (let r = 0; r < nq; r++) {
    if (w[r] === 0) continue;
    const n = causal ? Math.min(count, qSlot0 + r + 1) : count;
    for (let h = 0; h < heads; h++) {
      const kvh = Math.floor(h / group),
        qo = r * heads * D + h * D;
      const p = softmaxOver(
        q,
        qo,
        D,
        kv,
        kvh,
        Array.from({ length: n }, (_, j) => j),
        scale,
      );
      for (let j = 0; j < n; j++) out[j] += (w[r] * p[j]) / heads;
    }
  }
  return out;
}

/**
 * Query-aware key scores (float64): out[g][j] = mean over KV group g's query heads h of
 * sum_r softmax_j(scale * q_{r,h} . k_{keys[j]}) over the listed keys.
 */
export function keyScores(
  q: ArrayLike<number>,
  nq: number,
  heads: number,
  kvHeads: number,
  D: number,
  kv: KVSource,
  keys: readonly number[],
  scale: number,
): Float64Array {
  const n = keys.length,
    group = heads / kvHeads;
  const out = new Float64Array(kvHeads * n);
  for (let h = 0; h < heads; h++) {
    const g = Math.floor(h / group);
    for (let r = 0; r < nq; r++) {
      const p = softmaxOver(q, r * heads * D + h * D, D, kv, g, keys, scale);
      for (let j = 0; j < n; j++) out[g * n + j] += p[j] / group;
    }
  }
  return out;
}

export function denseKeys(count: number, causal: boolean, qSlot0: number): (row: number) => number[] {
  return (row) => {
    const n = causal ? Math.min(count, qSlot0 + row + 1) : count;
    return Array.from({ length: Math.max(0, n) }, (_, i) => i);
  };
}
