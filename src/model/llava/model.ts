// LLaVA: a CLIP vision tower, a two-layer MLP projector, and a Llama/Qwen2 decoder. The image
// placeholder tokens of the prompt are replaced, in order, by the projected image features.
import { Activation, KernelBackend, LinearWeight, Matrix, ParamVector } from '../../kernels/backend.js';
import { ConfigError } from '../../formats/config.js';
import { activationOf } from '../activations.js';
import { VisionTransformer, SalienceRequest } from '../vit.js';
import { LlamaDecoder } from '../llama.js';
import { PlacementOptions } from '../decoder.js';
import { AssembledImage, EncodedTile, ImageEncoder, ProcessedImage, UnitRegion, UnitRequest } from '../family.js';
import { WeightLoader } from '../weights.js';
import { Workspace } from '../workspace.js';
import { LlavaConfig } from './config.js';

export class LlavaModel implements ImageEncoder {
  private readonly ws: Workspace;
  private readonly act: Activation;

  private constructor(
    readonly backend: KernelBackend,
    readonly config: LlavaConfig,
    readonly vision: VisionTransformer,
    private readonly projector: { l1: LinearWeight; b1?: ParamVector; l2: LinearWeight; b2?: ParamVector },
    readonly language: LlamaDecoder,
  ) {
    this.ws = new Workspace(backend, vision.place);
    this.act = activationOf(config.projectorHiddenAct, 'projector_hidden_act');
  }

  /** Loads a llava-hf checkpoint (tensor names `vision_tower.*`, `multi_modal_projector.*`, `language_model.*`). */
  static async load(loader: WeightLoader, config: LlavaConfig, opts: PlacementOptions = {}): Promise<LlavaModel> {
    const idx = config.visionFeatureHiddenStateIndices;
    if (idx.length !== 1) {
      throw new ConfigError(
        `${loader.label}: config.json: vision_feature_layer ${JSON.stringify(config.visionFeatureLayer)} selects ${idx.length} layers; only one feature layer is supported`,
      );
    }
    activationOf(config.projectorHiddenAct, 'projector_hidden_act');
    const vision = VisionTransformer.load(loader, config.vision, 'vision_tower.vision_model.', idx[0]);
    const Dv = config.vision.hiddenSize,
      Ht = config.text.hiddenSize,
      bias = config.multimodalProjectorBias;
    const m = 'multi_modal_projector.';
    const projector = {
      l1: loader.linear([{ name: `${m}linear_1.weight`, shape: [Ht, Dv] }]),
      b1: bias ? loader.params([{ name: `${m}linear_1.bias`, shape: [Ht] }]) : undefined,
      l2: loader.linear([{ name: `${m}linear_2.weight`, shape: [Ht, Ht] }]),
      b2: bias ? loader.params([{ name: `${m}linear_2.bias`, shape: [Ht] }]) : undefined,
    };
    const language = await LlamaDecoder.load(loader, config.text, { prefix: 'language_model.model.', lmHead: 'language_model.lm_head.weight' }, opts);
    return new LlavaModel(loader.backend, config, vision, projector, language);
  }

  /** Image tokens per image in the prompt (patches, plus the class token with strategy "full"). */
  get imageTokens(): number {
    return this.vision.tokens - (this.config.visionFeatureSelectStrategy === 'default' ? 1 : 0);
  }

  /** The selected vision features of one image, [imageTokens][vision hidden] (before the projector). */
  selectedFeatures(pixels: Float32Array, onHidden?: (index: number, x: Matrix) => void): Matrix {
    const hs = this.vision.encode(pixels, onHidden);
    return this.config.visionFeatureSelectStrategy === 'default' ? hs.view(1, hs.rows - 1) : hs;
  }

  /** Projects selected features into the language model's embedding space, [rows][text hidden]. */
  project(features: Matrix): Matrix {
    const be = this.backend,
      Ht = this.config.text.hiddenSize;
    const h = this.ws.matrix('proj1', features.rows, Ht),
      out = this.ws.matrix('proj2', features.rows, Ht);
    be.matmul(h, features, this.projector.l1, this.projector.b1);
    be.activation(h, h, this.act);
    be.matmul(out, h, this.projector.l2, this.projector.b2);
    return out;
  }

  /** Image features for the prompt: encode + select + project. Reused by the next call. */
  imageFeatures(pixels: Float32Array): Matrix {
    return this.project(this.selectedFeatures(pixels));
  }

  /**
   * The selected vision features with their query-agnostic salience (one score per row): the
   * attention the class token pays to each token at the layer that feeds the projector, measured
   * inside that layer's attention (see SalienceRequest). Reused by the next call.
   */
  salientFeatures(pixels: Float32Array, withKeys = false, layer?: number): { features: Matrix; salience: Float32Array; keys?: Float32Array } {
    const req: SalienceRequest = { rows: 'cls', withKeys, layer };
    const hs = this.vision.encode(pixels, undefined, req);
    if (this.config.visionFeatureSelectStrategy === 'default') {
      const D = this.config.vision.hiddenSize;
      return { features: hs.view(1, hs.rows - 1), salience: req.result!.subarray(1), keys: req.keys?.subarray(D) };
    }
    return { features: hs, salience: req.result!, keys: req.keys };
  }

  // ---- ImageEncoder: one tile per image, one unit per selected feature row ----

  get heads(): number {
    return this.config.vision.numAttentionHeads;
  }
  get headDim(): number {
    return this.config.vision.hiddenSize / this.config.vision.numAttentionHeads;
  }

  encodeTile(image: ProcessedImage, tile: number, want: UnitRequest = {}): EncodedTile {
    if (tile !== 0 || image.tiles.length !== 1) throw new RangeError(`llava: an image is one tile, asked for tile ${tile} of ${image.tiles.length}`);
    if (!want.salience && !want.keys) return { units: this.selectedFeatures(image.tiles[0]) };
    const r = this.salientFeatures(image.tiles[0], want.keys, want.layer);
    return { units: r.features, salience: r.salience, keys: r.keys };
  }

  unitIds(_image: ProcessedImage, _tile: number): number[] {
    return Array.from({ length: this.imageTokens }, (_, i) => i);
  }

  /** A unit is a selected feature row: a patch (row 0 the class token with strategy "full", which has no place). */
  unitRegion(_image: ProcessedImage, unit: number): UnitRegion | null {
    const patch = this.config.visionFeatureSelectStrategy === 'default' ? unit : unit - 1;
    const G = this.vision.grid,
      P = this.config.vision.patchSize;
    if (patch < 0 || patch >= G * G) return null;
    return { tile: 0, x: (patch % G) * P, y: Math.floor(patch / G) * P, width: P, height: P };
  }

  unitRows(data: Float32Array, cols: number): Matrix {
    return this.ws.matrixOf('merged', data, cols);
  }

  /** One tile: its rows are the image's rows. */
  assemble(_image: ProcessedImage, tiles: { features: Matrix; units: number[] }[]): AssembledImage {
    if (tiles.length !== 1) throw new RangeError(`llava: an image is one tile, got ${tiles.length}`);
    return { features: tiles[0].features, units: tiles[0].units, tileRows: [tiles[0].features.rows] };
  }

  /** Rows `rows` (ascending) of m, gathered into a matrix reused by the next call. */
  gather(m: Matrix, rows: readonly number[]): Matrix {
    return this.ws.gather('gathered', m, rows);
  }
}
