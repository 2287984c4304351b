// AutoAWQ "GEMM" checkpoints (Hugging Face `quantization_config.quant_method = "awq"`, `version =
// "gemm"`), per linear: `qweight` I32 [in][out/8], `qzeros` I32 [in/G][out/8], `scales` F16 (or
// BF16) [in/G][out]. Word j of a row holds output columns 8j + AWQ_ORDER[p] in nibble p; zeros are
// packed the same way. w[n][k] = (q - z) * s, handed over as q * s + (-z * s) (exact in f32: q, z
// <= 15 and s has at most 11 significant bits). Stays 4-bit on the backend (int4).
import { Int4Parts, LinearWeight } from '../../kernels/backend.js';
import { LinearFormat, LinearPart, TensorReader, inFeatures, isStandIn, outFeatures } from './format.js';
import { int4Parts, loadInt4 } from './int4-common.js';

/** Column 8j + c lives in nibble AWQ_REVERSE_ORDER[c] of word j (AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]). */
const AWQ_REVERSE_ORDER = [0, 4, 1, 5, 2, 6, 3, 7];

export const awqGemmFormat: LinearFormat = {
  name: 'awq-gemm',
  detect: (r, base) => r.peek(`${base}.qweight`)?.dtype === 'I32',
  tensorNames: (base) => [`${base}.qweight`, `${base}.qzeros`, `${base}.scales`],
  load(r: TensorReader, parts: LinearPart[]): LinearWeight {
    const K = inFeatures(parts[0]);
    // The group size follows from the scales' rows: [K/G][N].
    const first = r.peek(`${parts[0].base}.scales`);
    const groups = first && first.shape.length === 2 && first.shape[0] > 0 ? first.shape[0] : 1;
    const G = K / groups;
    if (!Number.isInteger(G)) r.fail(`${r.label}: "${parts[0].base}.scales" has ${groups} rows, which do not divide the ${K} inputs into groups`);
    const tensors = parts.map((p) => {
      const N = outFeatures(p);
      if (N % 8 !== 0) r.fail(`${r.label}: AWQ linear "${p.base}" has ${N} outputs, not a multiple of 8 (qweight packs 8 per word)`);
      return {
        N,
        qweight: r.info(`${p.base}.qweight`, [K, N / 8]),
        qzeros: r.info(`${p.base}.qzeros`, [groups, N / 8]),
        scales: r.info(`${p.base}.scales`, [groups, N]),
      };
    });
    for (const t of tensors) {
      for (const [info, want] of [
        [t.qweight, 'I32'],
        [t.qzeros, 'I32'],
      ] as const)
        if (info.dtype !== want && !isStandIn(info)) r.fail(`${r.label}: AWQ tensor "${info.name}" is ${info.dtype}, expected ${want}`);
    }
    return loadInt4(r, parts, G, tensors[0].scales.dtype, (dest) => {
      let row0 = 0;
      for (const t of tensors) {
        unpackAwqGemm(
          { qweight: new Uint32Array(r.bytes(t.qweight).buffer), qzeros: new Uint32Array(r.bytes(t.qzeros).buffer), scales: r.f32(t.scales) },
          t.N,
          K,
          groups,
          int4Parts(dest, row0, K, groups),
        );
        row0 += t.N;
      }
    });
  },
};

/**
 * Unpacks one AutoAWQ GEMM linear (N outputs, K inputs, `groups` groups) into canonical int4 parts:
 * q[n][k] nibbles (row-major, even k low), scales s[n][g], offsets -z[n][g] * s[n][g].
 */
export function unpackAwqGemm(
  t: { qweight: Uint32Array; qzeros: Uint32Array; scales: Float32Array },
  N: number,
  K: number,
  groups: number,
  dest: Int4Parts,
): void {
  const words = N / 8;
  const { q, scales, offsets } = dest;
  for (let n = 0; n < N; n++) {
    const j = n >> 3,
      shift = 4 * AWQ_REVERSE_ORDER[n & 7];
    const qr = n * (K >> 1);
    for (let k = 0; k < K; k += 2) {
      const lo = (t.qweight[k * words + j] >>> shift) & 15,
        hi = (t.qweight[(k + 1) * words + j] >>> shift) & 15;
      q[qr + (k >> 1)] = lo | (hi << 4);
    }
    for (let g = 0; g < groups; g++) {
      const s = t.scales[g * N + n],
        z = (t.qzeros[g * words + j] >>> shift) & 15;
      scales[n * groups + g] = s;
      offsets[n * groups + g] = -z * s;
    }
  }
}
