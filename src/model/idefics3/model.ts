// Idefics3 (SmolVLM): a SigLIP-style tower per tile (post_layernorm applied), the pixel-shuffle
// connector (scale × scale neighbouring patches concatenated into one token, then one linear
// projection) and a Llama decoder. An image is its grid of tiles plus a global tile; each tile
// gives (grid / scale)² tokens, a unit each.
import { KernelBackend, LinearWeight, Matrix } from '../../kernels/backend.js';
import { PlacementOptions } from '../decoder.js';
import { AssembledImage, EncodedTile, ImageEncoder, ProcessedImage, UnitRegion, UnitRequest } from '../family.js';
import { LlamaDecoder } from '../llama.js';
import { VisionTransformer, SalienceRequest } from '../vit.js';
import { WeightLoader } from '../weights.js';
import { Workspace } from '../workspace.js';
import { Idefics3Config } from './config.js';
import { pixelShuffle, pixelShuffleSources } from './processor.js';
import { meanOverPatches } from '../units.js';

export class Idefics3Model implements ImageEncoder {
  private readonly ws: Workspace;
  /** Per unit of a tile, the patches it merges (row-major patch indices, in channel-block order). */
  readonly sources: number[][];
  /** Units (tokens) per tile. */
  readonly unitsPerTile: number;

  private constructor(
    readonly backend: KernelBackend,
    readonly config: Idefics3Config,
    readonly vision: VisionTransformer,
    private readonly proj: LinearWeight,
    readonly language: LlamaDecoder,
  ) {
    this.ws = new Workspace(backend, vision.place);
    this.sources = pixelShuffleSources(vision.grid, config.scaleFactor);
    this.unitsPerTile = this.sources.length;
  }

  /** Loads a transformers Idefics3 checkpoint (`model.vision_model.*`, `model.connector.*`, `model.text_model.*`, `lm_head`). */
  static async load(loader: WeightLoader, c: Idefics3Config, opts: PlacementOptions = {}): Promise<Idefics3Model> {
    const vision = VisionTransformer.load(loader, c.vision, 'model.vision_model.', c.vision.numHiddenLayers, { postNorm: true });
    const s = c.scaleFactor;
    const proj = loader.linear([{ name: 'model.connector.modality_projection.proj.weight', shape: [c.text.hiddenSize, c.vision.hiddenSize * s * s] }]);
    const text = { ...c.text, tieWordEmbeddings: c.tieWordEmbeddings };
    const lmHead = loader.has('lm_head.weight') ? 'lm_head.weight' : null;
    const language = await LlamaDecoder.load(loader, text, { prefix: 'model.text_model.', lmHead }, opts);
    return new Idefics3Model(loader.backend, c, vision, proj, language);
  }

  get heads(): number {
    return this.config.vision.numAttentionHeads;
  }
  get headDim(): number {
    return this.config.vision.hiddenSize / this.config.vision.numAttentionHeads;
  }

  /**
   * One tile: the tower's post-normed output, pixel-shuffled into units (read back and shuffled in
   * JS: a permutation of the tile's rows). Salience: the column mean at the last layer (the one
   * the connector reads), averaged over each unit's patches; keys likewise.
   */
  encodeTile(image: ProcessedImage, tile: number, want: UnitRequest = {}): EncodedTile {
    const px = image.tiles[tile];
    if (!px) throw new RangeError(`idefics3: tile ${tile} of an image of ${image.tiles.length}`);
    const req: SalienceRequest | undefined = want.salience || want.keys ? { rows: 'mean', withKeys: want.keys, layer: want.layer } : undefined;
    const x = this.vision.encode(px, undefined, req);
    const D = this.config.vision.hiddenSize,
      s = this.config.scaleFactor;
    const shuffled = pixelShuffle(this.backend.read(x), this.vision.grid, D, s);
    const units = this.ws.matrix('units', this.unitsPerTile, s * s * D);
    this.backend.write(units, shuffled);
    const out: EncodedTile = { units };
    if (req?.result && want.salience) out.salience = meanOverPatches(req.result, 1, this.sources);
    if (req?.keys) out.keys = meanOverPatches(req.keys, D, this.sources);
    return out;
  }

  unitIds(_image: ProcessedImage, tile: number): number[] {
    return Array.from({ length: this.unitsPerTile }, (_, u) => tile * this.unitsPerTile + u);
  }

  unitRegion(image: ProcessedImage, unit: number): UnitRegion | null {
    const tile = Math.floor(unit / this.unitsPerTile),
      u = unit % this.unitsPerTile;
    if (tile >= image.tiles.length) return null;
    const side = this.vision.grid / this.config.scaleFactor,
      px = this.config.scaleFactor * this.config.vision.patchSize;
    return { tile, x: (u % side) * px, y: Math.floor(u / side) * px, width: px, height: px };
  }

  project(units: Matrix): Matrix {
    const out = this.ws.matrix('projected', units.rows, this.config.text.hiddenSize);
    this.backend.matmul(out, units, this.proj);
    return out;
  }

  unitRows(data: Float32Array, cols: number): Matrix {
    return this.ws.matrixOf('merged', data, cols);
  }

  gather(m: Matrix, rows: readonly number[]): Matrix {
    return this.ws.gather('gathered', m, rows);
  }

  /** The tiles' rows one after another (grid tiles row-major, then the global tile). */
  assemble(_image: ProcessedImage, tiles: { features: Matrix; units: number[] }[]): AssembledImage {
    return concatTiles(this.backend, tiles);
  }
}

/** Tiles' rows concatenated in tile order into one matrix (the tiles' matrices are freed). */
export function concatTiles(be: KernelBackend, tiles: { features: Matrix; units: number[] }[]): AssembledImage {
  const rows = tiles.reduce((a, t) => a + t.features.rows, 0);
  const first = tiles[0].features;
  const features = be.matrix(rows, first.cols, first.place);
  let r = 0;
  for (const t of tiles) {
    if (t.features.rows) be.copy(features.view(r, t.features.rows), t.features);
    r += t.features.rows;
    be.free(t.features);
  }
  return { features, units: tiles.flatMap((t) => t.units), tileRows: tiles.map((t) => t.features.rows) };
}
