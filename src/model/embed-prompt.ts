// A prompt's input embeddings: token embeddings, with the rows of image tokens replaced in order
// by the images' rows (every family whose images enter the prompt as embedding rows).
import { Matrix } from '../kernels/backend.js';
import { LanguageDecoder } from './decoder.js';

/**
 * Writes the input embeddings of `ids` into out [ids.length][hidden]: token embeddings, with the
 * rows of `imageTokenId` replaced in order by the rows of `images` (one matrix per image, in
 * prompt order). The image token may lie outside the vocabulary (it is embedded as id 0, then
 * overwritten).
 */
export function embedPrompt(decoder: LanguageDecoder, out: Matrix, ids: readonly number[], imageTokenId: number, images: readonly Matrix[]): void {
  const vocab = decoder.vocabSize;
  const positions: number[] = [];
  const safe = ids.map((t, i) => {
    if (t === imageTokenId) {
      positions.push(i);
      return 0;
    }
    if (!Number.isInteger(t) || t < 0 || t >= vocab) throw new RangeError(`token id ${t} at position ${i} is outside the vocabulary [0, ${vocab})`);
    return t;
  });
  const rows = images.reduce((a, m) => a + m.rows, 0);
  if (positions.length !== rows) {
    throw new RangeError(`the prompt has ${positions.length} image tokens but the images give ${rows} feature rows (${images.length} image(s))`);
  }
  decoder.embed(out, safe);
  let k = 0;
  for (const img of images) {
    for (let r = 0; r < img.rows;) {
      // Copy runs of consecutive placeholder positions in one go.
      let n = 1;
      while (r + n < img.rows && positions[k + n] === positions[k] + n) n++;
      decoder.backend.copy(out.view(positions[k], n), img.view(r, n));
      r += n;
      k += n;
    }
  }
}
