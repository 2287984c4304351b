// SparseVILA's prefill stage: query-agnostic pruning of visual tokens before the language model.
import { Matrix } from '../kernels/backend.js';
import { LlavaModel } from '../model/llava.js';
import { keptCount, topKInOrder } from './select.js';

/**
 * Projected image features with a fraction p of the visual tokens dropped: the tokens are ranked
 * by the vision tower's own attention (LlavaModel.salientFeatures), the top keptCount(n, p) are
 * kept in their original order and only those are projected; in the prompt they then take
 * consecutive positions. p = 0 keeps every token and computes exactly model.imageFeatures().
 * Returns the rows (reused by the model's next call) and the kept token indices.
 */
export function prunedImageFeatures(model: LlavaModel, pixels: Float32Array, p: number): { features: Matrix; kept: number[] } {
  const n = model.imageTokens, keep = keptCount(n, p);
  if (keep === n) return { features: model.imageFeatures(pixels), kept: Array.from({ length: n }, (_, i) => i) };
  const { features, salience } = model.salientFeatures(pixels);
  const kept = topKInOrder(salience, keep);
  return { features: model.project(model.gatherRows(features, kept)), kept };
}
