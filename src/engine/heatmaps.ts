// Heatmaps of a result: for each image, its tiles as the tower saw them and the units the turn
// kept and retrieved, drawn by io/heatmap.ts.
import path from 'node:path';
import { ImageEncoder, ImageProcessor, ProcessedImage } from '../model/family.js';
import { HeatmapRegion, writeHeatmap } from '../io/heatmap.js';
import { GenerationResult } from './options.js';

/** Writes one PNG per image (`file`, then `file` with `-{i + 1}` before its extension); returns the names. */
export async function writeHeatmaps(
  file: string,
  encoder: ImageEncoder,
  processor: ImageProcessor,
  images: readonly ProcessedImage[],
  visual: NonNullable<GenerationResult['visual']>,
): Promise<string[]> {
  const ext = path.extname(file),
    stem = file.slice(0, file.length - ext.length);
  const names: string[] = [];
  for (let i = 0; i < images.length; i++) {
    const image = images[i];
    const name = i === 0 ? file : `${stem}-${i + 1}${ext}`;
    const units = new Map<number, HeatmapRegion>();
    for (let t = 0; t < image.tiles.length; t++) {
      for (const u of encoder.unitIds(image, t)) {
        const r = encoder.unitRegion(image, u);
        if (r) units.set(u, r);
      }
    }
    await writeHeatmap(name, {
      tiles: image.tiles.map((_, t) => processor.tileView(image, t)),
      units,
      kept: visual.kept[i],
      retrieved: visual.retrieved ? visual.retrieved[i] : null,
    });
    names.push(name);
  }
  return names;
}
