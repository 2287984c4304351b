// LLaVA-NeXT ("anyres"): LLaVA's CLIP tower and MLP projector run on every tile of an image (the
// base image squashed to one tile, then the grid tiles of the best resolution); the grid tiles'
// features form one feature grid whose padded border is cut off, each of its rows followed by the
// learned image_newline. A unit is a patch of a tile; prefill pruning works per tile by the class
// token's attention, and newline rows are never pruned (a row whose units were all dropped keeps
// its newline).
import { KernelBackend, Matrix } from '../../kernels/backend.js';
import { PlacementOptions } from '../decoder.js';
import { AssembledImage, EncodedTile, ImageEncoder, ProcessedImage, UnitRegion, UnitRequest } from '../family.js';
import { LlamaDecoder } from '../llama.js';
import { LlavaModel } from '../llava/model.js';
import { WeightLoader } from '../weights.js';
import { LlavaNextConfig } from './config.js';
import { AnyresFeatureLayout, AnyresImage, anyresFeatureLayout } from './processor.js';

/** An image as the LLaVA-NeXT processor made it (ProcessedImage plus its anyres geometry). */
export interface LlavaNextImage extends ProcessedImage, Omit<AnyresImage, 'tiles'> {
  /** Where every dense packed row comes from. */
  layout: AnyresFeatureLayout;
  /** Per tile, the patches it contributes (all for the base tile; those inside the unpadded window for grid tiles), ascending. */
  tilePatches: number[][];
}

function anyres(image: ProcessedImage): LlavaNextImage {
  if (!('layout' in image)) throw new Error('internal: a LLaVA-NeXT image was not made by its processor');
  return image as LlavaNextImage;
}

/** The packing geometry of an anyres image, for the processor (patches per tile side P). */
export function anyresLayoutOf(image: AnyresImage, P: number): Pick<LlavaNextImage, 'layout' | 'tilePatches'> {
  const layout = anyresFeatureLayout(image, P);
  const tilePatches: number[][] = image.tiles.map((_, t) => (t === 0 ? Array.from({ length: P * P }, (_, i) => i) : []));
  for (const r of layout.rows) if (r !== 'newline' && r.tile > 0) tilePatches[r.tile].push(r.patch);
  for (const list of tilePatches) list.sort((a, b) => a - b);
  return { layout, tilePatches };
}

export class LlavaNextModel implements ImageEncoder {
  private constructor(
    readonly backend: KernelBackend,
    readonly config: LlavaNextConfig,
    /** The tower and projector (and the decoder), as LLaVA's. */
    readonly llava: LlavaModel,
    /** image_newline as one row [1][text hidden]. */
    private readonly newline: Matrix,
  ) {}

  get language(): LlamaDecoder {
    return this.llava.language;
  }

  /** Loads a llava-hf LLaVA-NeXT checkpoint: LLaVA's tensors plus `image_newline`. */
  static async load(loader: WeightLoader, c: LlavaNextConfig, opts: PlacementOptions = {}): Promise<LlavaNextModel> {
    const llava = await LlavaModel.load(loader, c, opts);
    const Ht = c.text.hiddenSize;
    const nl = loader.f32([{ name: 'image_newline', shape: [Ht] }]);
    const newline = loader.backend.matrix(1, Ht, llava.vision.place);
    loader.backend.write(newline, nl);
    return new LlavaNextModel(loader.backend, c, llava, newline);
  }

  /** Patches per tile side. */
  get patchesPerSide(): number {
    return this.llava.vision.grid;
  }
  get heads(): number {
    return this.llava.heads;
  }
  get headDim(): number {
    return this.llava.headDim;
  }

  /** One tile through CLIP (class token dropped), restricted to the patches the packing keeps. */
  encodeTile(image: ProcessedImage, tile: number, want: UnitRequest = {}): EncodedTile {
    const im = anyres(image);
    const px = im.tiles[tile];
    if (!px) throw new RangeError(`llava-next: tile ${tile} of an image of ${im.tiles.length}`);
    const patches = im.tilePatches[tile],
      all = patches.length === this.patchesPerSide ** 2;
    if (!want.salience && !want.keys) {
      const f = this.llava.selectedFeatures(px);
      return { units: all ? f : this.llava.gather(f, patches) };
    }
    const r = this.llava.salientFeatures(px, want.keys, want.layer);
    const D = this.config.vision.hiddenSize;
    const pick = (v: Float32Array, w: number) => {
      const out = new Float32Array(patches.length * w);
      patches.forEach((p, i) => out.set(v.subarray(p * w, (p + 1) * w), i * w));
      return out;
    };
    return {
      units: all ? r.features : this.llava.gather(r.features, patches),
      salience: all ? r.salience : pick(r.salience, 1),
      keys: r.keys ? (all ? r.keys : pick(r.keys, D)) : undefined,
    };
  }

  /** Unit id: tile · P² + patch. */
  unitIds(image: ProcessedImage, tile: number): number[] {
    const P2 = this.patchesPerSide ** 2;
    return anyres(image).tilePatches[tile].map((p) => tile * P2 + p);
  }

  unitRegion(image: ProcessedImage, unit: number): UnitRegion | null {
    const P = this.patchesPerSide,
      ps = this.config.vision.patchSize;
    const tile = Math.floor(unit / (P * P)),
      patch = unit % (P * P);
    if (tile >= image.tiles.length) return null;
    return { tile, x: (patch % P) * ps, y: Math.floor(patch / P) * ps, width: ps, height: ps };
  }

  project(units: Matrix): Matrix {
    return this.llava.project(units);
  }
  unitRows(data: Float32Array, cols: number): Matrix {
    return this.llava.unitRows(data, cols);
  }
  gather(m: Matrix, rows: readonly number[]): Matrix {
    return this.llava.gather(m, rows);
  }

  /**
   * pack_image_features over the kept units: the base tile's rows, then the unpadded feature grid
   * row by row (the kept units of the row in column order, then image_newline).
   */
  assemble(image: ProcessedImage, tiles: { features: Matrix; units: number[] }[]): AssembledImage {
    const im = anyres(image);
    const P2 = this.patchesPerSide ** 2;
    const where = new Map<number, [number, number]>(); // unit -> (tile, row)
    tiles.forEach((t, ti) => t.units.forEach((u, r) => where.set(u, [ti, r])));
    const order: ([number, number] | null)[] = [];
    for (const src of im.layout.rows) {
      if (src === 'newline') order.push(null);
      else {
        const w = where.get(src.tile * P2 + src.patch);
        if (w) order.push(w);
      }
    }
    const be = this.backend,
      first = tiles[0].features;
    const features = be.matrix(order.length, first.cols, first.place);
    const units: number[] = [];
    try {
      for (let i = 0; i < order.length;) {
        const o = order[i];
        if (o === null) {
          be.copy(features.view(i, 1), this.newline);
          units.push(-1);
          i++;
          continue;
        }
        // A run of consecutive rows of one tile in one copy.
        let run = 1;
        while (i + run < order.length && order[i + run] !== null && order[i + run]![0] === o[0] && order[i + run]![1] === o[1] + run) run++;
        be.copy(features.view(i, run), tiles[o[0]].features.view(o[1], run));
        for (let k = 0; k < run; k++) units.push(tiles[o[0]].units[o[1] + k]);
        i += run;
      }
    } finally {
      for (const t of tiles) be.free(t.features);
    }
    return { features, units, tileRows: tiles.map((t) => t.units.length) };
  }
}
