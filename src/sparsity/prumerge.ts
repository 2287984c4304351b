// LLaVA-PruMerge (Shang et al., arXiv 2403.15388): query-agnostic, at the vision encoder's output.
// Adaptive selection: the tokens whose class-token attention is an outlier above Q3 + 1.5 IQR
// (their count decides how many are kept; a fixed budget may replace it for comparisons at equal
// cost). Merge: each kept token adds the attention-weighted sum of its k most key-similar other
// tokens (cosine of the full key rows; k = 32 in the paper's code): x_i + sum_j a_j x_j.
// Kept tokens are output in their original order (our methods keep positions meaningful).

/** The q-th quantile with linear interpolation (numpy's default percentile). */
export function quantile(values: ArrayLike<number>, q: number): number {
  const s = Array.from(values).sort((a, b) => a - b);
  if (s.length === 0) throw new RangeError('quantile of nothing');
  const pos = (s.length - 1) * q,
    lo = Math.floor(pos),
    hi = Math.ceil(pos);
  return s[lo] + (s[hi] - s[lo]) * (pos - lo);
}

/** How many values lie above Q3 + 1.5 IQR. */
export function iqrOutlierCount(values: ArrayLike<number>): number {
  const q1 = quantile(values, 0.25),
    q3 = quantile(values, 0.75);
  const upper = q3 + 1.5 * (q3 - q1);
  let n = 0;
  for (let i = 0; i < values.length; i++) if (values[i] > upper) n++;
  return n;
}

export interface PruMergeSelection {
  /** Kept token indices, ascending. */
  kept: number[];
  /** For each kept token, its k most key-similar other tokens. */
  neighbours: number[][];
}

/**
 * The PruMerge rule on plain arrays: salience [n] (class-token attention), keys [n][width]. Keeps
 * the IQR outliers (at least one), or the top `budget` when given.
 */
export function pruMergeSelect(
  salience: ArrayLike<number>,
  keys: ArrayLike<number>,
  width: number,
  opts: { budget?: number; k?: number } = {},
): PruMergeSelection {
  const n = salience.length,
    kNear = opts.k ?? 32;
  if (keys.length !== n * width) throw new RangeError(`pruMerge: ${keys.length} key values for ${n} tokens of ${width}`);
  const count = Math.min(n, opts.budget ?? Math.max(1, iqrOutlierCount(salience)));
  const order = Array.from({ length: n }, (_, i) => i).sort((a, b) => salience[b] - salience[a] || a - b);
  const kept = order.slice(0, count).sort((a, b) => a - b);
  const norms = Array.from({ length: n }, (_, t) => {
    let s = 0;
    for (let d = 0; d < width; d++) s += keys[t * width + d] ** 2;
    return Math.sqrt(s) || 1;
  });
  const neighbours = kept.map((i) => {
    const sims: [number, number][] = [];
    for (let j = 0; j < n; j++) {
      if (j === i) continue;
      let s = 0;
      for (let d = 0; d < width; d++) s += keys[i * width + d] * keys[j * width + d];
      sims.push([s / (norms[i] * norms[j]), j]);
    }
    sims.sort((a, b) => b[0] - a[0] || a[1] - b[1]);
    return sims.slice(0, Math.min(kNear, sims.length)).map(([, j]) => j);
  });
  return { kept, neighbours };
}

/** The merged rows of a PruMerge selection from feature rows [n][dim]. */
export function pruMergeMerge(features: Float32Array, dim: number, salience: ArrayLike<number>, s: PruMergeSelection): Float32Array {
  const out = new Float32Array(s.kept.length * dim);
  s.kept.forEach((i, r) => {
    for (let d = 0; d < dim; d++) {
      let v = features[i * dim + d];
      for (const j of s.neighbours[r]) v += salience[j] * features[j * dim + d];
      out[r * dim + d] = v;
    }
  });
  return out;
}
