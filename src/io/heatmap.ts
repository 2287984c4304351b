// Pictures of what a sparse model looked at: the image's tiles as the vision tower saw them, with
// the units (connector tokens) kept in prefill and those retrieved at decode overlaid, and one small
// map per LLM layer.
import sharp from 'sharp';
import { FileError } from '../base/errors.js';
import { RgbImage } from './image-types.js';

/** Where a unit lies, in the pixels of one tile. */
export interface HeatmapRegion {
  tile: number;
  x: number;
  y: number;
  width: number;
  height: number;
}

export interface HeatmapInput {
  /** The tiles as the tower saw them (RGB), drawn left to right. */
  tiles: readonly RgbImage[];
  /** Every unit of the image with its region (units without one, such as a class token, left out). */
  units: ReadonlyMap<number, HeatmapRegion>;
  /** Units kept in prefill. */
  kept: readonly number[];
  /** Per LLM layer, the units its decode steps attend to (union over KV heads); null without retrieval. */
  retrieved: readonly (readonly number[])[] | null;
}

const GREEN = [40, 220, 90],
  RED = [200, 40, 40];
const CELL = 4,
  GAP = 6;

/**
 * Writes a PNG: on top the tiles side by side (scaled up so the tallest is at least 336 px) with
 * retrieved units tinted green (with retrieval: the union over layers), kept but not retrieved
 * units dimmed, and units dropped in prefill darkened with a red tint (pixels no unit covers, such
 * as padding, stay as they are); below, one map per layer, CELL pixels per unit of the smallest
 * size (green: retrieved by that layer, grey: kept, dark: dropped in prefill). Returns the PNG's
 * width and height.
 */
export async function writeHeatmap(file: string, h: HeatmapInput): Promise<{ width: number; height: number }> {
  if (h.tiles.length === 0) throw new Error('heatmap: no tiles');
  const tallest = Math.max(...h.tiles.map((t) => t.height));
  const scale = Math.max(1, Math.ceil(336 / tallest));
  const xOf: number[] = [];
  let W = 0;
  for (const t of h.tiles) {
    xOf.push(W);
    W += t.width * scale + GAP;
  }
  W -= GAP;
  const top = tallest * scale;
  // The maps below: CELL pixels per unit of the smallest region.
  const unitPx = Math.max(1, Math.min(...[...h.units.values()].map((r) => Math.min(r.width, r.height))));
  const mapScale = CELL / unitPx;
  const mapXOf: number[] = [];
  let mapW = 0;
  for (const t of h.tiles) {
    mapXOf.push(mapW);
    mapW += Math.round(t.width * mapScale) + (h.tiles.length > 1 ? CELL : 0);
  }
  if (h.tiles.length > 1) mapW -= CELL;
  const mapH = Math.round(tallest * mapScale);
  const layers = h.retrieved?.length ?? 0;
  const perRow = Math.max(1, Math.floor((W + GAP) / (mapW + GAP)));
  const stripRows = layers ? Math.ceil(layers / perRow) : 0;
  const stripH = stripRows ? GAP + stripRows * (mapH + GAP) : 0;
  const width = Math.max(W, perRow * (mapW + GAP) - GAP),
    height = top + stripH;
  const out = new Uint8Array(width * height * 3).fill(24);

  // State per unit: 0 dropped, 1 kept, 2 retrieved (by any layer).
  const state = new Map<number, number>();
  for (const u of h.units.keys()) state.set(u, 0);
  for (const k of h.kept) if (state.has(k)) state.set(k, 1);
  if (h.retrieved) for (const l of h.retrieved) for (const k of l) if ((state.get(k) ?? 0) > 0) state.set(k, 2);
  const anyRetrieval = h.retrieved !== null;

  h.tiles.forEach((tile, ti) => {
    // Per tile pixel: the highest state of the units covering it (-1: none).
    const cover = new Int8Array(tile.width * tile.height).fill(-1);
    for (const [u, r] of h.units) {
      if (r.tile !== ti) continue;
      const s = state.get(u)!;
      for (let y = r.y; y < Math.min(tile.height, r.y + r.height); y++) {
        for (let x = r.x; x < Math.min(tile.width, r.x + r.width); x++) cover[y * tile.width + x] = Math.max(cover[y * tile.width + x], s);
      }
    }
    for (let y = 0; y < tile.height * scale; y++) {
      for (let x = 0; x < tile.width * scale; x++) {
        const sx = Math.floor(x / scale),
          sy = Math.floor(y / scale);
        const st = cover[sy * tile.width + sx];
        const o = (y * width + xOf[ti] + x) * 3;
        for (let c = 0; c < 3; c++) {
          let v = tile.data[(sy * tile.width + sx) * 3 + c];
          if (st === 0) v = 0.15 * v + 0.15 * RED[c];
          else if (st === 1 && anyRetrieval) v = 0.45 * v;
          else if (st === 2) v = 0.7 * v + 0.3 * GREEN[c];
          out[o + c] = Math.round(v);
        }
      }
    }
  });

  for (let l = 0; l < layers; l++) {
    const gx = (l % perRow) * (mapW + GAP),
      gy = top + GAP + Math.floor(l / perRow) * (mapH + GAP);
    const mine = new Set(h.retrieved![l]);
    for (const [u, r] of h.units) {
      const s = state.get(u)!;
      const color = s === 0 ? [50, 30, 30] : mine.has(u) ? GREEN : [110, 110, 110];
      const cx = gx + mapXOf[r.tile] + Math.round(r.x * mapScale),
        cy = gy + Math.round(r.y * mapScale);
      const cw = Math.max(1, Math.round(r.width * mapScale)),
        ch = Math.max(1, Math.round(r.height * mapScale));
      // A one-pixel gap between cells when they are large enough to show it.
      for (let dy = 0; dy < ch - (ch > 2 ? 1 : 0); dy++) {
        for (let dx = 0; dx < cw - (cw > 2 ? 1 : 0); dx++) {
          const o = ((cy + dy) * width + cx + dx) * 3;
          out[o] = color[0];
          out[o + 1] = color[1];
          out[o + 2] = color[2];
        }
      }
    }
  }
  try {
    await sharp(out, { raw: { width, height, channels: 3 } })
      .png()
      .toFile(file);
  } catch (e) {
    throw new FileError(`${file}: cannot write the heatmap: ${(e as Error).message.split('\n')[0]}`);
  }
  return { width, height };
}
