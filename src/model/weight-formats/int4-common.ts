// What the 4-bit formats share: handing stacked parts to the backend's int4 linear.
import { Int4Parts, LinearWeight, int4ShapeProblem } from '../../kernels/backend.js';
import { LinearPart, TensorReader, inFeatures, outFeatures } from './format.js';

/**
 * Loads stacked 4-bit parts of group size G; `fill` writes the canonical parts (see Int4Parts).
 * `scaleDtype`: the checkpoint's scale dtype, which the reference dequantizes in (F16 or BF16).
 */
export function loadInt4(r: TensorReader, parts: LinearPart[], G: number, scaleDtype: string, fill: (dest: Int4Parts) => void): LinearWeight {
  const K = inFeatures(parts[0]);
  const problem = int4ShapeProblem(K, G);
  const N = parts.reduce((a, p) => a + outFeatures(p), 0);
  if (problem) {
    r.fail(`${r.label}: 4-bit linear "${parts[0].base}": ${problem} (the int4 kernels need a group size that is a multiple of 32 and divides the inputs)`);
    // Check mode goes on with a stand-in of the same shape (it reads nothing).
    return r.backend.linear(N, K, 'bf16', () => {}, r.place);
  }
  return r.backend.linearInt4(
    N,
    K,
    G,
    (dest) => {
      if (!r.checking) fill(dest);
    },
    r.place,
    { dequantRounding: scaleDtype === 'F16' ? 'f16' : scaleDtype === 'BF16' ? 'bf16' : 'none', activations: r.int4Activations },
  );
}

/** Views of the rows [row0, ...) of canonical int4 parts with K inputs and `groups` groups per row. */
export function int4Parts(dest: Int4Parts, row0: number, K: number, groups: number): Int4Parts {
  return {
    q: dest.q.subarray(row0 * (K >> 1)),
    scales: dest.scales.subarray(row0 * groups),
    offsets: dest.offsets.subarray(row0 * groups),
  };
}
