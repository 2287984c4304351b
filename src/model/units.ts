// Helpers for connectors whose tokens (units) merge several patches: per-unit values as the mean
// of per-patch values over the patches a unit merges (salience, key rows).

/**
 * Per unit, the mean of per-patch rows of `width` values over the patches in `sources[unit]`
 * (patch indices; -1 marks zero padding, which is left out of the mean).
 */
export function meanOverPatches(values: Float32Array, width: number, sources: readonly (readonly number[])[]): Float32Array {
  const out = new Float32Array(sources.length * width);
  sources.forEach((src, u) => {
    let n = 0;
    for (const p of src) {
      if (p < 0) continue;
      n++;
      for (let d = 0; d < width; d++) out[u * width + d] += values[p * width + d];
    }
    for (let d = 0; d < width; d++) out[u * width + d] /= n;
  });
  return out;
}
