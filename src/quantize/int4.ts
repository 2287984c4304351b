// 4-bit group quantization as AutoAWQ and llm-awq compute it (`pseudo_quantize_tensor`), and
// AutoAWQ's GEMM packing, so that what `sparsevila quantize` writes is what AutoAWQ would have
// written for the same (scaled) weights, and loads in transformers and vLLM as well as here.
//
// Per output row n and group g of G inputs, in fp16 arithmetic (each step rounded to fp16, as the
// reference runs on fp16 tensors):
//   scale = max(max(w) - min(w), 1e-5) / 15
//   zero  = clamp(-round(min(w) / scale), 0, 15)
//   q     = clamp(round(w / scale) + zero, 0, 15)          round: half to even (torch.round)
//   w^    = (q - zero) * scale

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/**
 * Rounds to the nearest fp16 value (ties to even); out of range becomes ±Infinity. The value is
 * first rounded to f32, as a float16 operation computed in float32 is.
 */
export function roundF16(x: number): number {
  f32[0] = x;
  const b = u32[0];
  const sign = b & 0x80000000,
    mag = b & 0x7fffffff;
  if (mag >= 0x7f800000) return f32[0]; // Inf, NaN
  if (mag >= 0x477ff000) return sign ? -Infinity : Infinity; // >= 65520 rounds past 65504
  if (mag < 0x38800000) {
    // Below 2^-14: multiples of 2^-24 (f16 subnormals).
    const r = roundHalfEven(Math.abs(f32[0]) * 2 ** 24) * 2 ** -24;
    return sign ? -r : r;
  }
  u32[0] = (((mag + 0x0fff + ((mag >>> 13) & 1)) & 0xffffe000) | sign) >>> 0;
  return f32[0];
}

/** e with 2^e <= a < 2^(e+1), for a > 0 (log2 corrected where it rounds across a power of two). */
function binade(a: number): number {
  const e = Math.floor(Math.log2(a));
  return 2 ** e > a ? e - 1 : 2 ** (e + 1) <= a ? e + 1 : e;
}

/** Round half to even (torch.round). */
export function roundHalfEven(v: number): number {
  const r = Math.round(v); // halves round up
  if (r - v !== 0.5) return r;
  return Math.abs(r) < 2 ** 31 ? (r & 1 ? r - 1 : r) : r % 2 !== 0 ? r - 1 : r;
}

/** One linear quantized: q[n][k] (0..15), zero[n][g] (0..15), scale[n][g] (fp16 values). */
export interface QuantizedLinear {
  N: number;
  K: number;
  G: number;
  q: Uint8Array;
  zeros: Uint8Array;
  scales: Float32Array;
}

const F16_1E5 = roundF16(1e-5);

/**
 * Quantizes W [N][K] (f32 values, rounded to fp16 first as the reference loads models in fp16) per
 * row and group of G.
 */
export function quantizeInt4(w: Float32Array, N: number, K: number, G: number): QuantizedLinear {
  if (K % G !== 0) throw new RangeError(`${K} inputs are not a multiple of the group size ${G}`);
  const groups = K / G;
  const q = new Uint8Array(N * K),
    zeros = new Uint8Array(N * groups),
    scales = new Float32Array(N * groups);
  const h = new Float64Array(G);
  for (let n = 0; n < N; n++) {
    for (let g = 0; g < groups; g++) {
      const off = n * K + g * G;
      let mx = -Infinity,
        mn = Infinity;
      for (let i = 0; i < G; i++) {
        const v = roundF16(w[off + i]);
        h[i] = v;
        if (v > mx) mx = v;
        if (v < mn) mn = v;
      }
      const scale = groupScale(mx, mn);
      const zero = groupZero(mn, scale);
      scales[n * groups + g] = scale;
      zeros[n * groups + g] = zero;
      for (let i = 0; i < G; i++) q[off + i] = quantStep(h[i], scale, zero);
    }
  }
  return { N, K, G, q, zeros, scales };
}

/**
 * dequantizeInt4(quantizeInt4(w, N, K, G)) in one pass without the integers (the searches' "fake"
 * quantization), into out.
 */
export function fakeQuantizeInt4(w: Float32Array, N: number, K: number, G: number, out = new Float32Array(N * K)): Float32Array {
  if (K % G !== 0) throw new RangeError(`${K} inputs are not a multiple of the group size ${G}`);
  const lut = new Float32Array(16);
  for (let off = 0; off < N * K; off += G) {
    let mx = -Infinity,
      mn = Infinity;
    for (let i = off; i < off + G; i++) {
      const v = roundF16(w[i]);
      out[i] = v;
      if (v > mx) mx = v;
      if (v < mn) mn = v;
    }
    const scale = groupScale(mx, mn),
      zero = groupZero(mn, scale);
    for (let q = 0; q < 16; q++) lut[q] = roundF16((q - zero) * scale);
    for (let i = off; i < off + G; i++) out[i] = lut[quantStep(out[i], scale, zero)];
  }
  return out;
}

/** A group's fp16 scale from its largest and smallest (fp16) values. */
export function groupScale(mx: number, mn: number): number {
  return roundF16(Math.max(roundF16(mx - mn), F16_1E5) / 15);
}

/** A group's zero point (0..15) from its smallest (fp16) value and its scale. */
export function groupZero(mn: number, scale: number): number {
  return Math.min(15, Math.max(0, -roundHalfEven(roundF16(mn / scale))));
}

/** q (0..15) of an fp16 value h in a group of this scale and zero point. */
export function quantStep(h: number, scale: number, zero: number): number {
  return Math.min(15, Math.max(0, roundStep(h / scale) + zero));
}

/**
 * roundHalfEven(roundF16(v)) for the |v| <= 2^15 of w / scale: the fp16 rounding (an ulp of at
 * most 2^-6 below 32, 2^5 at most) only matters within half an ulp of a tie, or above 2^10.
 */
function roundStep(v: number): number {
  const d = Math.abs(v - Math.floor(v) - 0.5);
  return d > 2 ** -5 && Math.abs(v) < 32 ? Math.round(v) : roundHalfEven(roundF16(v));
}

/** The dequantized weight (q - zero) * scale rounded to fp16, as AutoAWQ's dequantize_gemm gives it. */
export function dequantizeInt4(t: QuantizedLinear): Float32Array {
  const groups = t.K / t.G;
  const out = new Float32Array(t.N * t.K);
  const lut = new Float32Array(16); // the group's 16 possible values
  for (let gi = 0; gi < t.N * groups; gi++) {
    for (let q = 0; q < 16; q++) lut[q] = roundF16((q - t.zeros[gi]) * t.scales[gi]);
    const off = Math.floor(gi / groups) * t.K + (gi % groups) * t.G;
    for (let i = off; i < off + t.G; i++) out[i] = lut[t.q[i]];
  }
  return out;
}

/** AWQ_ORDER: nibble p of a packed word holds column 8j + AWQ_ORDER[p]. */
const AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7];

/** fp16 bits of an fp16 value v. */
export function f16Bits(v: number): number {
  if (Number.isNaN(v)) return 0x7e00;
  const sign = v < 0 || Object.is(v, -0) ? 0x8000 : 0;
  const a = Math.abs(v);
  if (a === Infinity) return sign | 0x7c00;
  if (a < 2 ** -14) return sign | Math.round(a / 2 ** -24);
  const e = binade(a);
  return sign | ((e + 15) << 10) | Math.round((a / 2 ** e - 1) * 1024);
}

/**
 * AutoAWQ GEMM tensors of a quantized linear: qweight I32 [K][N/8], qzeros I32 [K/G][N/8] (AWQ
 * nibble order), scales F16 [K/G][N].
 */
export function packAwqGemm(t: QuantizedLinear): { qweight: Uint8Array; qzeros: Uint8Array; scales: Uint8Array } {
  const { N, K, G } = t;
  if (N % 8 !== 0) throw new RangeError(`${N} outputs are not a multiple of 8 (AWQ packs 8 per word)`);
  const words = N / 8,
    groups = K / G;
  const qweight = new Uint32Array(K * words),
    qzeros = new Uint32Array(groups * words);
  const scales = new Uint16Array(groups * N);
  for (let j = 0; j < words; j++) {
    for (let p = 0; p < 8; p++) {
      const n = 8 * j + AWQ_ORDER[p];
      for (let k = 0; k < K; k++) qweight[k * words + j] |= t.q[n * K + k] << (4 * p);
      for (let g = 0; g < groups; g++) qzeros[g * words + j] |= t.zeros[n * groups + g] << (4 * p);
    }
  }
  for (let n = 0; n < N; n++) for (let g = 0; g < groups; g++) scales[g * N + n] = f16Bits(t.scales[n * groups + g]);
  return { qweight: new Uint8Array(qweight.buffer), qzeros: new Uint8Array(qzeros.buffer), scales: new Uint8Array(scales.buffer) };
}
