// VisionZip (Yang et al., arXiv 2412.04467): query-agnostic, at the vision encoder's output.
// Dominant tokens: the top by the class token's attention. Contextual tokens: the remaining tokens,
// in order, split into targets (every step-th, step = floor(remaining / contextual)) and the rest;
// each of the rest joins the target whose key is most similar (cosine of the keys averaged over
// heads), and a contextual token is its target plus the mean of the tokens that joined it.
// The output is the dominant tokens in order, then the contextual tokens in target order. The
// paper's budgets split as 64 = 54 + 10, 128 = 108 + 20, 192 = 162 + 30 (contextual = budget / 6.4).

export interface VisionZipSelection {
  /** Dominant token indices, ascending. */
  dominant: number[];
  /** Target token indices (one per contextual token), ascending. */
  targets: number[];
  /** For each target, the tokens merged into it (not including itself), ascending. */
  members: number[][];
}

/** Contextual tokens VisionZip uses for a budget (its paper's 10 of 64). */
export function visionZipContextual(budget: number): number {
  return Math.min(budget - 1, Math.max(1, Math.round((budget * 10) / 64)));
}

/**
 * The VisionZip rule on plain arrays: salience [n] (class-token attention), keys [n][heads * headDim]
 * (the layer's key rows), `dominant` + `contextual` output tokens (<= n).
 */
export function visionZipSelect(
  salience: ArrayLike<number>,
  keys: ArrayLike<number>,
  heads: number,
  headDim: number,
  dominant: number,
  contextual: number,
): VisionZipSelection {
  const n = salience.length,
    width = heads * headDim;
  if (keys.length !== n * width) throw new RangeError(`visionZip: ${keys.length} key values for ${n} tokens of ${width}`);
  if (dominant < 0 || contextual < 0 || dominant + contextual > n) throw new RangeError(`visionZip: ${dominant} + ${contextual} tokens of ${n}`);
  const order = Array.from({ length: n }, (_, i) => i).sort((a, b) => salience[b] - salience[a] || a - b);
  const isDominant = new Uint8Array(n);
  for (let i = 0; i < dominant; i++) isDominant[order[i]] = 1;
  const dom: number[] = [],
    rest: number[] = [];
  for (let i = 0; i < n; i++) (isDominant[i] ? dom : rest).push(i);
  if (contextual === 0) return { dominant: dom, targets: [], members: [] };
  // The metric: each remaining token's key averaged over heads, L2-normalised.
  const metric = rest.map((t) => {
    const m = new Float64Array(headDim);
    for (let h = 0; h < heads; h++) for (let d = 0; d < headDim; d++) m[d] += keys[t * width + h * headDim + d] / heads;
    const norm = Math.hypot(...m) || 1;
    return m.map((v) => v / norm);
  });
  const step = Math.max(1, Math.floor(rest.length / contextual));
  const targetPos: number[] = [];
  for (let i = 0; i < rest.length && targetPos.length < contextual; i += step) targetPos.push(i);
  const isTarget = new Set(targetPos);
  const members: number[][] = targetPos.map(() => []);
  rest.forEach((t, i) => {
    if (isTarget.has(i)) return;
    let best = 0,
      bestSim = -Infinity;
    targetPos.forEach((p, c) => {
      let sim = 0;
      for (let d = 0; d < headDim; d++) sim += metric[i][d] * metric[p][d];
      if (sim > bestSim) {
        bestSim = sim;
        best = c;
      }
    });
    members[best].push(t);
  });
  return { dominant: dom, targets: targetPos.map((p) => rest[p]), members };
}

/** The output rows of a VisionZip selection from feature rows [n][dim]: dominant, then contextual. */
export function visionZipMerge(features: Float32Array, dim: number, s: VisionZipSelection): Float32Array {
  const out = new Float32Array((s.dominant.length + s.targets.length) * dim);
  s.dominant.forEach((t, r) => out.set(features.subarray(t * dim, (t + 1) * dim), r * dim));
  s.targets.forEach((t, c) => {
    const o = (s.dominant.length + c) * dim,
      m = s.members[c];
    for (let d = 0; d < dim; d++) {
      let sum = 0;
      for (const j of m) sum += features[j * dim + d];
      out[o + d] = features[t * dim + d] + (m.length ? sum / m.length : 0);
    }
  });
  return out;
}
