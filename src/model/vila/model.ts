// VILA1.5 (NVlabs/VILA, the SparseVILA paper's family): a SigLIP tower whose hidden state
// `mm_vision_select_layer` goes through VILA's MultimodalProjector and a Llama decoder. The
// `mlp_downsample` projector merges 2×2 blocks of patches (VILA1.5's code: blocks in column-major
// order, zero padding for an odd grid), `mlp_downsample_3x3_fix` (NVILA) 3×3 blocks in row-major
// order; a unit is one block, its salience the mean over the patches it merges.
import { KernelBackend, LinearWeight, Matrix, ParamVector } from '../../kernels/backend.js';
import { PlacementOptions } from '../decoder.js';
import { AssembledImage, EncodedTile, ImageEncoder, ProcessedImage, UnitRegion, UnitRequest } from '../family.js';
import { LlamaDecoder } from '../llama.js';
import { VisionTransformer, SalienceRequest } from '../vit.js';
import { WeightLoader } from '../weights.js';
import { Workspace } from '../workspace.js';
import { meanOverPatches } from '../units.js';
import { VilaConfig } from './config.js';

/** One unit of VILA's projector: the patches it concatenates (-1: zero padding), and its block in patches. */
export interface VilaBlock {
  sources: number[];
  row: number;
  col: number;
  size: number;
}

/**
 * The projector's units for a g × g patch grid: DownSampleBlock (k = 2, column-major blocks) or
 * the 3×3 fix (k = 3, row-major blocks), each concatenating its block's patches row by row; or
 * one unit per patch (from patch `first` on).
 */
export function vilaBlocks(projector: VilaConfig['projector'], g: number, first = 0): VilaBlock[] {
  if (projector !== 'mlp_downsample' && projector !== 'mlp_downsample_3x3_fix') {
    return Array.from({ length: g * g - first }, (_, i) => ({ sources: [first + i], row: Math.floor((first + i) / g), col: (first + i) % g, size: 1 }));
  }
  const k = projector === 'mlp_downsample' ? 2 : 3;
  const B = Math.ceil(g / k);
  const out: VilaBlock[] = [];
  for (let t = 0; t < B * B; t++) {
    // VILA1.5's flat_square leaves the blocks column-major; the 3×3 fix is row-major.
    const bi = k === 2 ? t % B : Math.floor(t / B),
      bj = k === 2 ? Math.floor(t / B) : t % B;
    const sources: number[] = [];
    for (let di = 0; di < k; di++) {
      for (let dj = 0; dj < k; dj++) {
        const r = bi * k + di,
          c = bj * k + dj;
        sources.push(r < g && c < g ? r * g + c : -1);
      }
    }
    out.push({ sources, row: bi * k, col: bj * k, size: k });
  }
  return out;
}

type ProjectorOp =
  { op: 'ln'; w: ParamVector; b: ParamVector; width: number } | { op: 'linear'; w: LinearWeight; b: ParamVector; width: number } | { op: 'gelu' };

export class VilaModel implements ImageEncoder {
  private readonly ws: Workspace;
  /** The projector's units for one image. */
  readonly blocks: VilaBlock[];
  private readonly sources: number[][];

  private constructor(
    readonly backend: KernelBackend,
    readonly config: VilaConfig,
    readonly vision: VisionTransformer,
    private readonly ops: ProjectorOp[],
    readonly language: LlamaDecoder,
  ) {
    this.ws = new Workspace(backend, vision.place);
    this.blocks = vilaBlocks(config.projector, vision.grid, config.selectFeature === 'patch' ? 1 : 0);
    this.sources = this.blocks.map((b) => b.sources);
  }

  /**
   * Loads the parts as the VILA layout names them (see the family's weightFolders): `vision_tower.`
   * + the SigLIP tensors, `mm_projector.layers.*`, `llm.` + the Llama tensors.
   */
  static async load(loader: WeightLoader, c: VilaConfig, opts: PlacementOptions = {}): Promise<VilaModel> {
    loader.skip((n) => n.startsWith('vision_tower.vision_model.head.'), "SigLIP's attention-pooling head (VILA never uses it)");
    const vision = VisionTransformer.load(loader, c.vision, 'vision_tower.vision_model.', c.selectHiddenState);
    const D = c.vision.hiddenSize,
      Ht = c.text.hiddenSize;
    const p = (i: number, what: 'weight' | 'bias') => `mm_projector.layers.${i}.${what}`;
    const ln = (i: number, width: number): ProjectorOp => ({
      op: 'ln',
      w: loader.params([{ name: p(i, 'weight'), shape: [width] }]),
      b: loader.params([{ name: p(i, 'bias'), shape: [width] }]),
      width,
    });
    const linear = (name: string, from: number, to: number): ProjectorOp => ({
      op: 'linear',
      w: loader.linear([{ name: `${name}.weight`, shape: [to, from] }]),
      b: loader.params([{ name: `${name}.bias`, shape: [to] }]),
      width: to,
    });
    const L = (i: number) => `mm_projector.layers.${i}`;
    const gelu: ProjectorOp = { op: 'gelu' };
    const ops: ProjectorOp[] =
      c.projector === 'mlp_downsample'
        ? [ln(1, 4 * D), linear(L(2), 4 * D, Ht), gelu, linear(L(4), Ht, Ht)]
        : c.projector === 'mlp_downsample_3x3_fix'
          ? [ln(1, 9 * D), linear(L(2), 9 * D, 3 * D), gelu, ln(4, 3 * D), linear(L(5), 3 * D, Ht), gelu, linear(L(7), Ht, Ht)]
          : c.projector === 'mlp2x_gelu'
            ? [linear(L(0), D, Ht), gelu, linear(L(2), Ht, Ht)]
            : [linear('mm_projector.layers', D, Ht)];
    const lmHead = loader.has('llm.lm_head.weight') ? 'llm.lm_head.weight' : null;
    const language = await LlamaDecoder.load(loader, c.text, { prefix: 'llm.model.', lmHead }, opts);
    return new VilaModel(loader.backend, c, vision, ops, language);
  }

  get heads(): number {
    return this.config.vision.numAttentionHeads;
  }
  get headDim(): number {
    return this.config.vision.hiddenSize / this.config.vision.numAttentionHeads;
  }

  /** The tower's selected hidden state laid out as the projector's units (read back; a permutation with zero padding). */
  encodeTile(image: ProcessedImage, tile: number, want: UnitRequest = {}): EncodedTile {
    if (tile !== 0 || image.tiles.length !== 1) throw new RangeError(`vila: an image is one tile, asked for tile ${tile} of ${image.tiles.length}`);
    const req: SalienceRequest | undefined = want.salience || want.keys ? { rows: 'mean', withKeys: want.keys, layer: want.layer } : undefined;
    const x = this.backend.read(this.vision.encode(image.tiles[0], undefined, req));
    const D = this.config.vision.hiddenSize,
      width = this.blocks[0].sources.length * D;
    const data = new Float32Array(this.blocks.length * width);
    this.blocks.forEach((b, u) => b.sources.forEach((p, k) => p >= 0 && data.set(x.subarray(p * D, (p + 1) * D), u * width + k * D)));
    const out: EncodedTile = { units: this.ws.matrixOf('units', data, width) };
    if (req?.result && want.salience) out.salience = meanOverPatches(req.result, 1, this.sources);
    if (req?.keys) out.keys = meanOverPatches(req.keys, D, this.sources);
    return out;
  }

  unitIds(): number[] {
    return this.blocks.map((_, i) => i);
  }

  unitRegion(_image: ProcessedImage, unit: number): UnitRegion | null {
    const b = this.blocks[unit];
    if (!b) return null;
    const P = this.config.vision.patchSize,
      seen = this.vision.grid * P;
    const x = b.col * P,
      y = b.row * P;
    return { tile: 0, x, y, width: Math.min(b.size * P, seen - x), height: Math.min(b.size * P, seen - y) };
  }

  project(units: Matrix): Matrix {
    const be = this.backend;
    let cur = units,
      i = 0;
    for (const o of this.ops) {
      if (o.op === 'gelu') {
        be.activation(cur, cur, 'gelu');
        continue;
      }
      const out = this.ws.matrix(`proj${i++ % 2}`, units.rows, o.width);
      if (o.op === 'ln') be.layerNorm(out, cur, o.w, o.b, 1e-5);
      else be.matmul(out, cur, o.w, o.b);
      cur = out;
    }
    return cur;
  }

  unitRows(data: Float32Array, cols: number): Matrix {
    return this.ws.matrixOf('merged', data, cols);
  }

  gather(m: Matrix, rows: readonly number[]): Matrix {
    return this.ws.gather('gathered', m, rows);
  }

  assemble(_image: ProcessedImage, tiles: { features: Matrix; units: number[] }[]): AssembledImage {
    if (tiles.length !== 1) throw new RangeError(`vila: an image is one tile, got ${tiles.length}`);
    return { features: tiles[0].features, units: tiles[0].units, tileRows: [tiles[0].features.rows] };
  }
}
