// Token selection rules shared by the sparsity methods.

/** Tokens kept of n when a fraction p of them is dropped: n - floor(p * n) (p = 0 keeps all). */
export function keptCount(n: number, p: number): number {
  if (!(p >= 0 && p < 1)) throw new RangeError(`sparsity ${p} must be in [0, 1)`);
  return n - Math.floor(p * n + 1e-9);
}

/**
 * Indices of the `keep` highest scores, in ascending index order (the tokens' original order).
 * Ties go to the earlier index, so the choice is deterministic.
 */
export function topKInOrder(scores: ArrayLike<number>, keep: number): number[] {
  const n = scores.length;
  if (!Number.isInteger(keep) || keep < 0 || keep > n) throw new RangeError(`cannot keep ${keep} of ${n} tokens`);
  if (keep === n) return Array.from({ length: n }, (_, i) => i);
  const order = Array.from({ length: n }, (_, i) => i);
  order.sort((a, b) => scores[b] - scores[a] || a - b);
  return order.slice(0, keep).sort((a, b) => a - b);
}
