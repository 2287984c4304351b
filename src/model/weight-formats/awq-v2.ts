// TinyChat v2 (mit-han-lab/llm-awq; VILA's `llm/*-w4-g128-awq-v2.pt`) and AutoAWQ "gemv_fast"
// linears: `qweight` I16 [out/4][in] with TinyChat's 4-row interleave, `scales` [Gp][out] and the
// scaled zero points `scaled_zeros` (AutoAWQ names them `qzeros`) [Gp][out] = -s * z, in F16 or
// BF16; Gp pads the group count (calculate_zeros_width). w[n][k] = q * s + scaled_zero. For q[n][k]:
// i = n >> 2, j = n & 3, m = k >> 6, r = k & 63; word qweight[i][64m + 16j + 8(r >> 5) + (r & 7)],
// nibble (r >> 3) & 3. Stays 4-bit on the backend (int4).
import { Int4Parts, LinearWeight } from '../../kernels/backend.js';
import { TensorInfo } from '../../formats/safetensors.js';
import { LinearFormat, LinearPart, TensorReader, inFeatures, isStandIn, outFeatures } from './format.js';
import { int4Parts, loadInt4 } from './int4-common.js';

/** llm-awq's calculate_zeros_width(K, G) * 8: the stored (padded) group rows. */
export function paddedGroups(K: number, G: number): number {
  const mult = G >= 128 ? 1 : G === 64 ? 2 : 4;
  const base = Math.ceil(Math.floor(K / G) / 8);
  return Math.ceil(base / mult) * mult * 8;
}

/** The group size whose padding gives `rows` scale rows for K inputs (128, then 64, then 32), or null. */
export function groupSizeOf(K: number, rows: number): number | null {
  for (const G of [128, 64, 32]) if (K % G === 0 && paddedGroups(K, G) === rows) return G;
  return null;
}

const zerosName = (r: TensorReader, base: string) => (r.has(`${base}.scaled_zeros`) ? `${base}.scaled_zeros` : `${base}.qzeros`);

export const awqV2Format: LinearFormat = {
  name: 'awq-v2',
  detect: (r, base) => r.peek(`${base}.qweight`)?.dtype === 'I16',
  tensorNames: (base) => [`${base}.qweight`, `${base}.scales`, `${base}.scaled_zeros`, `${base}.qzeros`],
  load(r: TensorReader, parts: LinearPart[]): LinearWeight {
    const K = inFeatures(parts[0]);
    const first = r.peek(`${parts[0].base}.scales`);
    const rows = first && first.shape.length === 2 ? first.shape[0] : 0;
    let G = groupSizeOf(K, rows);
    if (G === null) {
      r.fail(
        `${r.label}: "${parts[0].base}.scales" has ${rows} rows, which no group size (128, 64, 32) gives for ${K} inputs (TinyChat pads the group count: calculate_zeros_width)`,
      );
      G = 128;
    }
    const groups = K / G;
    const tensors = parts.map((p) => {
      const N = outFeatures(p);
      if (N % 4 !== 0) r.fail(`${r.label}: TinyChat linear "${p.base}" has ${N} outputs, not a multiple of 4 (qweight interleaves 4 rows)`);
      if (K % 64 !== 0) r.fail(`${r.label}: TinyChat linear "${p.base}" has ${K} inputs, not a multiple of 64 (qweight's blocks)`);
      const t = {
        N,
        qweight: r.info(`${p.base}.qweight`, [N / 4, K]),
        scales: r.info(`${p.base}.scales`, [rows, N]),
        zeros: r.info(zerosName(r, p.base), [rows, N]),
      };
      checkDtypes(r, t.qweight, t.scales, t.zeros);
      return t;
    });
    return loadInt4(r, parts, G, tensors[0].scales.dtype, (dest) => {
      let row0 = 0;
      for (const t of tensors) {
        unpackAwqV2(
          { qweight: new Uint16Array(r.bytes(t.qweight).buffer), scales: r.f32(t.scales), scaledZeros: r.f32(t.zeros) },
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

function checkDtypes(r: TensorReader, qweight: TensorInfo, scales: TensorInfo, zeros: TensorInfo): void {
  if (!isStandIn(qweight) && qweight.dtype !== 'I16') r.fail(`${r.label}: TinyChat tensor "${qweight.name}" is ${qweight.dtype}, expected I16`);
  for (const t of [scales, zeros]) {
    if (!isStandIn(t) && t.dtype !== 'F16' && t.dtype !== 'BF16' && t.dtype !== 'F32')
      r.fail(`${r.label}: TinyChat tensor "${t.name}" is ${t.dtype}, expected F16 or BF16`);
  }
}

/**
 * Unpacks one TinyChat v2 linear (N outputs, K inputs, `groups` real groups; scale rows may be
 * padded past them) into canonical int4 parts.
 */
export function unpackAwqV2(
  t: { qweight: Uint16Array; scales: Float32Array; scaledZeros: Float32Array },
  N: number,
  K: number,
  groups: number,
  dest: Int4Parts,
): void {
  const { q, scales, offsets } = dest;
  for (let n = 0; n < N; n++) {
    const row = (n >> 2) * K,
      j = n & 3;
    const qr = n * (K >> 1);
    for (let k = 0; k < K; k += 2) {
      let byte = 0;
      for (let d = 0; d < 2; d++) {
        const kk = k + d,
          rr = kk & 63;
        const word = t.qweight[row + 64 * (kk >> 6) + 16 * j + 8 * (rr >> 5) + (rr & 7)];
        byte |= ((word >>> (4 * ((rr >> 3) & 3))) & 15) << (4 * d);
      }
      q[qr + (k >> 1)] = byte;
    }
    for (let g = 0; g < groups; g++) {
      scales[n * groups + g] = t.scales[g * N + n];
      offsets[n * groups + g] = t.scaledZeros[g * N + n];
    }
  }
}
