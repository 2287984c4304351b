// Pictures of what a sparse model looked at: the image as the vision tower saw it, with the patches
// kept in prefill and those retrieved at decode overlaid, and one small grid per LLM layer.
import sharp from 'sharp';
import { FileError } from '../base/errors.js';
import { ClipImageProcessorConfig } from './image-processor.js';

export interface HeatmapInput {
  /** The preprocessed image [3][size][size] (normalised pixel values, as the tower's input). */
  pixels: Float32Array;
  size: number;
  /** The tower's patch size: the image is a grid of (size / patch)^2 patches. */
  patch: number;
  processor: Pick<ClipImageProcessorConfig, 'doRescale' | 'rescaleFactor' | 'doNormalize' | 'imageMean' | 'imageStd'>;
  /** Patches kept in prefill (patch indices, row-major). */
  kept: readonly number[];
  /** Per LLM layer, the patches its decode steps attend to (union over KV heads); null without retrieval. */
  retrieved: readonly (readonly number[])[] | null;
}

const GREEN = [40, 220, 90], RED = [200, 40, 40];
const CELL = 4, GAP = 6;

/**
 * Writes a PNG: on top the image (scaled up to at least 336 px) with retrieved patches tinted green
 * (with retrieval: the union over layers), kept but not retrieved patches dimmed, and patches
 * dropped in prefill darkened with a red tint; below, one grid per layer (green: retrieved by that
 * layer, grey: kept, dark: dropped in prefill). Returns the PNG's width and height.
 */
export async function writeHeatmap(file: string, h: HeatmapInput): Promise<{ width: number; height: number }> {
  const { size: S, patch: P } = h;
  const G = Math.floor(S / P);
  if (G < 1 || h.pixels.length !== 3 * S * S) throw new Error(`heatmap: expected 3x${S}x${S} pixel values, got ${h.pixels.length}`);
  const scale = Math.max(1, Math.ceil(336 / S));
  const W = S * scale;
  const layers = h.retrieved?.length ?? 0;
  const gridW = G * CELL;
  const perRow = Math.max(1, Math.floor((W + GAP) / (gridW + GAP)));
  const stripRows = layers ? Math.ceil(layers / perRow) : 0;
  const stripH = stripRows ? GAP + stripRows * (gridW + GAP) : 0;
  const width = Math.max(W, perRow * (gridW + GAP) - GAP), height = W + stripH;
  const out = new Uint8Array(width * height * 3).fill(24);
  const state = new Uint8Array(G * G); // 0 dropped, 1 kept, 2 retrieved (any layer)
  for (const k of h.kept) if (k >= 0 && k < G * G) state[k] = 1;
  if (h.retrieved) for (const l of h.retrieved) for (const k of l) if (k >= 0 && k < G * G && state[k] > 0) state[k] = 2;
  const anyRetrieval = h.retrieved !== null;
  const { imageMean: mean, imageStd: std } = h.processor;
  const plane = S * S;
  for (let y = 0; y < W; y++) {
    for (let x = 0; x < W; x++) {
      const sx = Math.floor(x / scale), sy = Math.floor(y / scale);
      const st = state[Math.min(G - 1, Math.floor(sy / P)) * G + Math.min(G - 1, Math.floor(sx / P))];
      const o = (y * width + x) * 3;
      for (let c = 0; c < 3; c++) {
        let v = h.pixels[c * plane + sy * S + sx];
        if (h.processor.doNormalize) v = v * std[c] + mean[c];
        if (h.processor.doRescale) v = v / h.processor.rescaleFactor;
        v = Math.max(0, Math.min(255, v));
        if (st === 0) v = 0.15 * v + 0.15 * RED[c];
        else if (st === 1 && anyRetrieval) v = 0.45 * v;
        else if (st === 2) v = 0.7 * v + 0.3 * GREEN[c];
        out[o + c] = Math.round(v);
      }
    }
  }
  for (let l = 0; l < layers; l++) {
    const gx = (l % perRow) * (gridW + GAP), gy = W + GAP + Math.floor(l / perRow) * (gridW + GAP);
    const mine = new Set(h.retrieved![l]);
    for (let k = 0; k < G * G; k++) {
      const color = state[k] === 0 ? [50, 30, 30] : mine.has(k) ? GREEN : [110, 110, 110];
      const cx = gx + (k % G) * CELL, cy = gy + Math.floor(k / G) * CELL;
      for (let dy = 0; dy < CELL - (CELL > 2 ? 1 : 0); dy++) {
        for (let dx = 0; dx < CELL - (CELL > 2 ? 1 : 0); dx++) {
          const o = ((cy + dy) * width + cx + dx) * 3;
          out[o] = color[0]; out[o + 1] = color[1]; out[o + 2] = color[2];
        }
      }
    }
  }
  try {
    await sharp(out, { raw: { width, height, channels: 3 } }).png().toFile(file);
  } catch (e) {
    throw new FileError(`${file}: cannot write the heatmap: ${(e as Error).message.split('\n')[0]}`);
  }
  return { width, height };
}
