// AWQ (activation-aware weight quantization; Lin et al., MLSys 2024) before the 4-bit rounding:
// per group of linears that read the same input (LanguageDecoder.linearGroups),
//   1. scale search: s = mean|x|^α (α = i/20, i = 0..19; normalised by sqrt(max s · min s)),
//      choosing the α whose Q(W·diag(s))·diag(1/s) reproduces the group's outputs X·Wᵀ on the
//      calibration inputs best (mean squared error; α = 0 is plain round to nearest, so the search
//      never does worse than RTN on its data). 1/s is folded into what produces the input: the
//      norm's weight, or the rows (and bias) of the previous linear (v_proj for o_proj when their
//      shapes match, up_proj for down_proj);
//   2. clip search, on the scaled weights: per output row and group of G, the largest magnitude
//      shrunk by 0–45% in steps of 5% (as AutoAWQ: max_shrink 0.5, 20-step grid), keeping the one
//      whose quantized group best reproduces that group's partial outputs on up to 512 sampled
//      tokens (squared errors as quadratic forms of the groups' Gram matrices, on the backend); q_proj
//      and k_proj are not clipped (their errors are amplified by the softmax).
// The calibration inputs of every group are captured in one pass of the unquantized model
// (scaling preserves every output before rounding, so later layers' inputs do not depend on
// earlier layers' scales). The search's objective is the group's linear outputs (llm-awq's and
// AutoAWQ's is the enclosing module's output: attention for q/k/v, the MLP for gate/up), which is
// what is known here without running attention per candidate.
import { KernelBackend, LinearWeight, Matrix } from '../kernels/backend.js';
import { LinearGroup } from '../model/decoder.js';
import { fakeQuantizeInt4, groupScale, groupZero, quantStep, roundF16 } from './int4.js';

/** Calibration input rows of each linear group (in linearGroups order): [rows][in] f32. */
export type GroupInputs = Float32Array[];

/** What AWQ changes before rounding: the linears' weights, and the tensors 1/s was folded into. */
export interface AwqResult {
  /** Float weights [out][in] to round (scaled, clipped), by linear base name. */
  weights: Map<string, Float32Array>;
  /** Other tensors replaced (norm weights, previous linears' biases), f32, by tensor name. */
  tensors: Map<string, Float32Array>;
  /** Per group (linearGroups order), the α chosen (null: no scale search, e.g. o_proj under GQA). */
  alphas: (number | null)[];
}

export interface AwqOptions {
  groupSize: number;
  /** Weights and biases as stored, f32 (read on demand). */
  read: (name: string) => Float32Array;
  /** Whether the checkpoint has this tensor (biases). */
  has: (name: string) => boolean;
  backend: KernelBackend;
  /** After each group: how many are done, of how many, and the layer. */
  onProgress?: (done: number, total: number, layer: number) => void;
  /** Run the clip search (default true; AutoAWQ's apply_clip). */
  clip?: boolean;
}

const GRID = 20;
const CLIP_TOKENS = 512;

/** Runs the scale and clip searches over every group and returns the transformed tensors. */
export function awqTransform(groups: LinearGroup[], inputs: GroupInputs, o: AwqOptions): AwqResult {
  const G = o.groupSize;
  const weights = new Map<string, Float32Array>();
  const tensors = new Map<string, Float32Array>();
  const get = (base: string) => {
    let w = weights.get(base);
    if (!w) weights.set(base, (w = o.read(`${base}.weight`)));
    return w;
  };
  const scales: (Float32Array | null)[] = [];
  const alphas: (number | null)[] = [];
  // 1. Scale search on the original weights, group by group.
  groups.forEach((g, gi) => {
    const X = inputs[gi];
    const K = g.linears[0].in;
    if (!g.prev || g.linears.some((l) => l.in % G !== 0 || l.out % 8 !== 0)) {
      scales.push(null);
      alphas.push(null);
    } else {
      const best = searchScale(
        X,
        K,
        // Every search runs before any scale is applied: the cached weights are still as stored.
        g.linears.map((l) => ({ w: get(l.base), out: l.out })),
        G,
        o.backend,
      );
      scales.push(best.s);
      alphas.push(best.alpha);
    }
    o.onProgress?.(gi + 1, groups.length * 2, g.layer);
  });
  // Apply: W·diag(s) for the group's linears; 1/s into the producer of its input.
  groups.forEach((g, gi) => {
    const s = scales[gi];
    if (!s || !g.prev) return;
    for (const l of g.linears) {
      const w = get(l.base);
      for (let n = 0; n < l.out; n++) for (let k = 0; k < l.in; k++) w[n * l.in + k] *= s[k];
    }
    if (g.prev.kind === 'norm') {
      const name = g.prev.weight;
      const v = tensors.get(name) ?? o.read(name);
      for (let k = 0; k < v.length; k++) v[k] /= s[k];
      tensors.set(name, v);
    } else {
      const base = g.prev.base;
      const w = get(base);
      const K = w.length / s.length;
      for (let n = 0; n < s.length; n++) for (let k = 0; k < K; k++) w[n * K + k] /= s[n];
      const bias = `${base}.bias`;
      if (o.has(bias)) {
        const b = tensors.get(bias) ?? o.read(bias);
        for (let n = 0; n < s.length; n++) b[n] /= s[n];
        tensors.set(bias, b);
      }
    }
  });
  // 2. Clip search on the scaled weights, with the scaled inputs X / s.
  groups.forEach((g, gi) => {
    if (o.clip === false) return;
    const s = scales[gi];
    const K = g.linears[0].in;
    const X = sampleRows(inputs[gi], K, CLIP_TOKENS);
    if (s) for (let r = 0; r < X.length / K; r++) for (let k = 0; k < K; k++) X[r * K + k] /= s[k];
    for (const l of g.linears) {
      if (/(^|\.)(q_proj|k_proj)$/.test(l.base) || l.in % G !== 0 || l.out % 8 !== 0) continue;
      clipSearch(get(l.base), l.out, l.in, G, X, o.backend);
    }
    o.onProgress?.(groups.length + gi + 1, groups.length * 2, g.layer);
  });
  return { weights, tensors, alphas };
}

/** Every `stride`-th row, at most `max` of them (a copy). */
function sampleRows(X: Float32Array, K: number, max: number): Float32Array {
  const rows = X.length / K;
  const stride = Math.max(1, Math.floor(rows / max));
  const n = Math.min(max, Math.ceil(rows / stride));
  const out = new Float32Array(n * K);
  for (let i = 0; i < n; i++) out.set(X.subarray(i * stride * K, i * stride * K + K), i * K);
  return out;
}

/** X·Wᵀ on the backend: X [rows][K] already there, W [N][K] f32. */
function product(be: KernelBackend, X: Matrix, w: Float32Array, N: number, K: number): Float32Array {
  const W = be.linear(N, K, 'f32', (d) => d.set(new Uint8Array(w.buffer, w.byteOffset, w.byteLength)), X.place);
  const Y = be.matrix(X.rows, N, X.place);
  try {
    be.matmul(Y, X, W);
    return be.read(Y);
  } finally {
    be.free(W);
    be.free(Y);
  }
}

/** The α (and its scales) whose rounded, rescaled weights best reproduce the group's outputs. */
function searchScale(
  Xs: Float32Array,
  K: number,
  linears: { w: Float32Array; out: number }[],
  G: number,
  be: KernelBackend,
): { alpha: number; s: Float32Array } {
  const rows = Xs.length / K;
  const xMean = new Float64Array(K);
  for (let r = 0; r < rows; r++) for (let k = 0; k < K; k++) xMean[k] += Math.abs(Xs[r * K + k]);
  for (let k = 0; k < K; k++) xMean[k] /= rows;
  const X = be.matrix(rows, K);
  be.write(X, Xs);
  try {
    const want = linears.map((l) => product(be, X, l.w, l.out, K));
    let best = { alpha: 0, s: new Float32Array(K).fill(1), loss: Infinity };
    for (let i = 0; i < GRID; i++) {
      const alpha = i / GRID;
      const s = new Float32Array(K);
      let mx = 0,
        mn = Infinity;
      for (let k = 0; k < K; k++) {
        s[k] = Math.max(xMean[k] ** alpha, 1e-4);
        mx = Math.max(mx, s[k]);
        mn = Math.min(mn, s[k]);
      }
      const norm = Math.sqrt(mx * mn);
      for (let k = 0; k < K; k++) s[k] /= norm;
      let loss = 0,
        count = 0;
      linears.forEach((l, li) => {
        const ws = new Float32Array(l.w.length);
        for (let n = 0; n < l.out; n++) for (let k = 0; k < K; k++) ws[n * K + k] = l.w[n * K + k] * s[k];
        const wq = fakeQuantizeInt4(ws, l.out, K, G, ws);
        for (let n = 0; n < l.out; n++) for (let k = 0; k < K; k++) wq[n * K + k] /= s[k];
        const y = product(be, X, wq, l.out, K);
        const y0 = want[li];
        for (let j = 0; j < y.length; j++) loss += (y[j] - y0[j]) ** 2;
        count += y.length;
      });
      loss /= count;
      if (loss < best.loss) best = { alpha, s, loss };
    }
    return best;
  } finally {
    be.free(X);
  }
}

/**
 * Clamps each row's groups of w (in place) to the shrink of their max that quantizes best on X:
 * per row n and group g, AutoAWQ's error sum_t (x_t,g · (q(clamp(w_n,g)) - w_n,g))^2, computed as
 * dᵀ C_g d with the group's Gram matrix C_g = X_gᵀ X_g, on the backend: per shrink, one product
 * of the differences D_g [N][G] by C_g per group (N·K·G multiply-adds instead of N·K·T).
 */
export function clipSearch(w: Float32Array, N: number, K: number, G: number, X: Float32Array, be: KernelBackend): void {
  const T = X.length / K,
    groups = K / G;
  const grams: LinearWeight[] = [];
  const D = be.matrix(N, G),
    Y = be.matrix(N, G);
  try {
    // C_g = X_gᵀ X_g: the product of X_gᵀ [G][T] by itself (as a linear weight, rows · rows).
    const xt = new Float32Array(G * T);
    const XT = be.matrix(G, T),
      C = be.matrix(G, G);
    try {
      for (let g = 0; g < groups; g++) {
        for (let i = 0; i < G; i++) for (let t = 0; t < T; t++) xt[i * T + t] = X[t * K + g * G + i];
        be.write(XT, xt);
        const W = be.linear(G, T, 'f32', (d) => d.set(new Uint8Array(xt.buffer, xt.byteOffset, xt.byteLength)));
        try {
          be.matmul(C, XT, W);
        } finally {
          be.free(W);
        }
        const c = be.read(C);
        grams.push(be.linear(G, G, 'f32', (d) => d.set(new Uint8Array(c.buffer, c.byteOffset, c.byteLength))));
      }
    } finally {
      be.free(XT);
      be.free(C);
    }
    // The reference rounds the clamped weights to fp16 before quantizing; rounding is monotonic,
    // so that is the fp16 weights clamped to the fp16 bound. Per group: max |w| and the fp16 range.
    const h = new Float32Array(N * K);
    for (let i = 0; i < N * K; i++) h[i] = roundF16(w[i]);
    const maxAbs = new Float32Array(N * groups),
      hMax = new Float32Array(N * groups),
      hMin = new Float32Array(N * groups);
    for (let n = 0; n < N; n++)
      for (let g = 0; g < groups; g++) {
        let m = 0,
          hx = -Infinity,
          hn = Infinity;
        for (let i = n * K + g * G, e = i + G; i < e; i++) {
          m = Math.max(m, Math.abs(w[i]));
          hx = Math.max(hx, h[i]);
          hn = Math.min(hn, h[i]);
        }
        maxAbs[n * groups + g] = m;
        hMax[n * groups + g] = hx;
        hMin[n * groups + g] = hn;
      }
    const bestErr = new Float64Array(N * groups).fill(Infinity);
    const bestMax = Float32Array.from(maxAbs);
    const d = new Float32Array(N * G),
      lut = new Float32Array(16);
    for (let r = 0; r < GRID / 2; r++) {
      for (let g = 0; g < groups; g++) {
        // D_g = q(clamp(w)) - w, the group quantized (fake) as quantizeInt4 and dequantizeInt4 do.
        for (let n = 0; n < N; n++) {
          const j = n * groups + g;
          const c = roundF16(maxAbs[j] * (1 - r / GRID));
          const mx = Math.min(c, Math.max(-c, hMax[j])),
            mn = Math.min(c, Math.max(-c, hMin[j]));
          const scale = groupScale(mx, mn),
            zero = groupZero(mn, scale);
          for (let q = 0; q < 16; q++) lut[q] = roundF16((q - zero) * scale);
          for (let i = 0, k = n * K + g * G; i < G; i++, k++) d[n * G + i] = lut[quantStep(Math.min(c, Math.max(-c, h[k])), scale, zero)] - w[k];
        }
        be.write(D, d);
        be.matmul(Y, D, grams[g]);
        const y = be.read(Y);
        for (let n = 0; n < N; n++) {
          let err = 0;
          for (let i = n * G, e = i + G; i < e; i++) err += y[i] * d[i];
          const j = n * groups + g;
          if (err < bestErr[j]) {
            bestErr[j] = err;
            bestMax[j] = maxAbs[j] * (1 - r / GRID);
          }
        }
      }
    }
    for (let n = 0; n < N; n++)
      for (let g = 0; g < groups; g++) {
        const mv = bestMax[n * groups + g];
        for (let i = n * K + g * G, e = i + G; i < e; i++) w[i] = Math.min(mv, Math.max(-mv, w[i]));
      }
  } finally {
    for (const c of grams) be.free(c);
    be.free(D);
    be.free(Y);
  }
}
