// SparseVILA's prefill stage: query-agnostic pruning of visual tokens before the language model.
import { Matrix } from '../kernels/backend.js';
import { ImageEncoder, ProcessedImage } from '../model/family.js';
import { keptCount, topKInOrder } from './select.js';

/**
 * Projected rows of one tile of an image with a fraction p of its units (connector tokens)
 * dropped: the units are ranked by the vision tower's own attention (their salience, see
 * EncodedTile), the top keptCount(n, p) are kept in their original order and only those are
 * projected; in the prompt they then take consecutive positions. p = 0 keeps every unit and
 * computes exactly the dense rows. Returns the rows (reused by the encoder's next call) and the
 * kept unit indices (rows of the tile). `salienceLayer`: the tower layer whose attention ranks
 * (default: the one that feeds the connector).
 */
export function prunedImageFeatures(
  encoder: ImageEncoder,
  image: ProcessedImage,
  tile: number,
  p: number,
  salienceLayer?: number,
): { features: Matrix; kept: number[] } {
  const n = encoder.unitIds(image, tile).length,
    keep = keptCount(n, p);
  if (keep === n) return { features: encoder.project(encoder.encodeTile(image, tile).units), kept: Array.from({ length: n }, (_, i) => i) };
  const { units, salience } = encoder.encodeTile(image, tile, { salience: true, layer: salienceLayer });
  const kept = topKInOrder(salience!, keep);
  return { features: encoder.project(encoder.gather(units, kept)), kept };
}
