// The vision transformers of the VLM towers: CLIP (class token, pre-LayerNorm, quick_gelu, no
// patch bias) and SigLIP / Idefics3's (no class token, no pre-norm, a patch bias, post-LayerNorm
// where the family reads it). Learned position embeddings, one per patch (and the class token).
// Runs only the layers up to the hidden state the connector reads.
import { Activation, KVCache, KernelBackend, LinearWeight, Matrix, ParamVector } from '../kernels/backend.js';
import { ConfigError } from '../formats/config.js';
import { OptionError } from '../base/errors.js';
import { VitConfig } from './vit-config.js';
import { checkHeadDim } from './limits.js';
import { activationOf } from './activations.js';
import { WeightLoader } from './weights.js';
import { Workspace } from './workspace.js';

interface VitLayer {
  ln1w: ParamVector;
  ln1b: ParamVector;
  qkv: LinearWeight;
  qkvBias: ParamVector;
  o: LinearWeight;
  oBias: ParamVector;
  ln2w: ParamVector;
  ln2b: ParamVector;
  fc1: LinearWeight;
  fc1Bias: ParamVector;
  fc2: LinearWeight;
  fc2Bias: ParamVector;
}

/**
 * Query-agnostic salience of the tower's tokens, measured from one encoder layer's own attention
 * (SparseVILA's prefill ranking): `rows: 'cls'` is the head-averaged attention the class token pays
 * to each token, `rows: 'mean'` the head-averaged attention each token receives, averaged over all
 * query rows (the column mean; for towers without a summary token), `rows: n` the mean attention
 * from the first n rows (several summary tokens, as RADIO has). encode() fills `result`
 * (length tokens, row 0 the class token). The default layer is the last one the tower runs: the
 * one whose output feeds the projector.
 */
export interface SalienceRequest {
  /** 'cls': row 0; 'mean': every row (column mean); n: the mean over the first n rows (n summary tokens). */
  rows: 'cls' | 'mean' | number;
  /** Encoder layer (0-based) whose attention is measured; default the last layer loaded. */
  layer?: number;
  result?: Float32Array;
  /** Also return that layer's key rows (for token merging), [tokens][hidden], heads side by side. */
  withKeys?: boolean;
  keys?: Float32Array;
}

/** How a tower is loaded: where its tensors are and which hidden state it returns. */
export interface VitLoadOptions {
  /** Apply post_layernorm to the returned state (SigLIP's last_hidden_state, which Idefics3's connector reads); only with every layer run. */
  postNorm?: boolean;
}

export class VisionTransformer {
  readonly grid: number;
  /** Tokens out of the tower: one per patch, after the class token where the tower has one. */
  readonly tokens: number;
  /** Whether row 0 is a class token (CLIP). */
  readonly classToken: boolean;
  private readonly ws: Workspace;
  private readonly cache: KVCache;
  private readonly act: Activation;

  private constructor(
    readonly backend: KernelBackend,
    readonly config: VitConfig,
    private readonly patchEmbed: LinearWeight,
    private readonly patchBias: ParamVector | undefined,
    /** Position embeddings (with the class embedding added to row 0 for CLIP), [tokens][hidden]. */
    private readonly posClass: Matrix,
    private readonly preNorm: [ParamVector, ParamVector] | null,
    private readonly postNorm: [ParamVector, ParamVector] | null,
    private readonly layers: VitLayer[],
    readonly place: number,
  ) {
    this.classToken = config.modelType === 'clip_vision_model';
    this.grid = Math.floor(config.imageSize / config.patchSize);
    this.tokens = this.grid * this.grid + (this.classToken ? 1 : 0);
    this.ws = new Workspace(backend, place);
    this.cache = backend.kvCache(1, config.numAttentionHeads, config.hiddenSize / config.numAttentionHeads, { place });
    this.act = activationOf(config.hiddenAct, 'vision_config.hidden_act');
  }

  /**
   * Loads the embeddings, the pre-LayerNorm (CLIP) and the first `layers` encoder layers (hidden
   * state `layers` of HF's hidden_states is the output of encoder layer layers-1); with
   * `postNorm`, also post_layernorm, applied to what encode() returns.
   */
  static load(loader: WeightLoader, config: VitConfig, prefix: string, layers: number, opts: VitLoadOptions = {}): VisionTransformer {
    const c = config,
      D = c.hiddenSize,
      P = c.patchSize,
      C = c.numChannels,
      I = c.intermediateSize;
    const clip = c.modelType === 'clip_vision_model';
    if (clip && c.imageSize % P !== 0) throw new ConfigError(`${loader.label}: vision_config.image_size ${c.imageSize} is not a multiple of patch_size ${P}`);
    if (D % c.numAttentionHeads !== 0) throw new ConfigError(`${loader.label}: vision hidden size ${D} is not a multiple of ${c.numAttentionHeads} heads`);
    if (!Number.isInteger(layers) || layers < 1 || layers > c.numHiddenLayers) {
      throw new ConfigError(
        `${loader.label}: the vision tower has ${c.numHiddenLayers} layers (num_hidden_layers), so its hidden state ${layers} cannot feed the connector`,
      );
    }
    if (opts.postNorm && layers !== c.numHiddenLayers) throw new Error(`internal: post_layernorm after ${layers} of ${c.numHiddenLayers} layers`);
    checkHeadDim(
      loader.backend,
      D / c.numAttentionHeads,
      `${loader.label}: the vision tower's head dimension (vision_config hidden_size / num_attention_heads in config.json)`,
    );
    activationOf(c.hiddenAct, 'vision_config.hidden_act');
    const grid = Math.floor(c.imageSize / P),
      tokens = grid * grid + (clip ? 1 : 0);
    const e = `${prefix}embeddings.`;
    loader.skip((n) => n === `${e}position_ids`, 'a constant buffer some checkpoints store');
    const compute = loader.visionCompute;
    const patchEmbed = loader.linear([{ name: `${e}patch_embedding.weight`, shape: [D, C, P, P] }], compute);
    const patchBias = clip ? undefined : loader.params([{ name: `${e}patch_embedding.bias`, shape: [D] }]);
    const pos = loader.f32([{ name: `${e}position_embedding.weight`, shape: [tokens, D] }]);
    if (clip) {
      const cls = loader.f32([{ name: `${e}class_embedding`, shape: [D] }]);
      for (let i = 0; i < D; i++) pos[i] += cls[i];
    }
    const posClass = loader.backend.matrix(tokens, D, loader.place);
    loader.backend.write(posClass, pos);
    const norm = (name: string): [ParamVector, ParamVector] => [
      loader.params([{ name: `${prefix}${name}.weight`, shape: [D] }]),
      loader.params([{ name: `${prefix}${name}.bias`, shape: [D] }]),
    ];
    const preNorm = clip ? norm('pre_layrnorm') : null;
    // The tensors of encoder layer l, by role.
    const layerTensors = (l: number) => {
      const p = `${prefix}encoder.layers.${l}.`,
        a = `${p}self_attn.`;
      const t = (name: string, shape: number[]) => ({ name: `${p}${name}`, shape });
      return {
        ln1w: t('layer_norm1.weight', [D]),
        ln1b: t('layer_norm1.bias', [D]),
        qkv: ['q', 'k', 'v'].map((x) => ({ name: `${a}${x}_proj.weight`, shape: [D, D] })),
        qkvBias: ['q', 'k', 'v'].map((x) => ({ name: `${a}${x}_proj.bias`, shape: [D] })),
        o: t('self_attn.out_proj.weight', [D, D]),
        oBias: t('self_attn.out_proj.bias', [D]),
        ln2w: t('layer_norm2.weight', [D]),
        ln2b: t('layer_norm2.bias', [D]),
        fc1: t('mlp.fc1.weight', [I, D]),
        fc1Bias: t('mlp.fc1.bias', [I]),
        fc2: t('mlp.fc2.weight', [D, I]),
        fc2Bias: t('mlp.fc2.bias', [D]),
      };
    };
    const ls: VitLayer[] = [];
    for (let l = 0; l < layers; l++) {
      const t = layerTensors(l);
      ls.push({
        ln1w: loader.params([t.ln1w]),
        ln1b: loader.params([t.ln1b]),
        qkv: loader.linear(t.qkv, compute),
        qkvBias: loader.params(t.qkvBias),
        o: loader.linear([t.o], compute),
        oBias: loader.params([t.oBias]),
        ln2w: loader.params([t.ln2w]),
        ln2b: loader.params([t.ln2b]),
        fc1: loader.linear([t.fc1], compute),
        fc1Bias: loader.params([t.fc1Bias]),
        fc2: loader.linear([t.fc2], compute),
        fc2Bias: loader.params([t.fc2Bias]),
      });
    }
    // The layers after the one the connector reads, and a final LayerNorm it does not read, are not
    // run, but the config declares them: they must be there (a config that miscounts the layers
    // would move the feature layer, which counts from the end).
    for (let l = layers; l < c.numHiddenLayers; l++) loader.expect(Object.values(layerTensors(l)).flat());
    const postNorm = opts.postNorm ? norm('post_layernorm') : null;
    if (!postNorm) {
      loader.expect([
        { name: `${prefix}post_layernorm.weight`, shape: [D] },
        { name: `${prefix}post_layernorm.bias`, shape: [D] },
      ]);
    }
    return new VisionTransformer(loader.backend, config, patchEmbed, patchBias, posClass, preNorm, postNorm, ls, loader.place);
  }

  /**
   * Encodes one image, pixel values [channels][imageSize][imageSize] (channel-major), and returns
   * the hidden state the tower was loaded up to (post-normed when loaded so), [tokens][hidden]
   * (row 0 is the class token where the tower has one). The matrix is reused by the next call. With `salience`, also measures token salience at the
   * requested layer (see SalienceRequest) into `salience.result`.
   */
  encode(pixels: Float32Array, onHidden?: (index: number, x: Matrix) => void, salience?: SalienceRequest): Matrix {
    const be = this.backend,
      c = this.config,
      ws = this.ws;
    const S = c.imageSize,
      P = c.patchSize,
      C = c.numChannels,
      G = this.grid,
      D = c.hiddenSize,
      T = this.tokens;
    if (pixels.length !== C * S * S) throw new Error(`vision tower: expected ${C}x${S}x${S} pixel values, got ${pixels.length}`);
    // Unfold the patches into rows (row 0, the class token's, stays zero): the patch convolution
    // is then one matmul with the kernel as a [hidden][C*P*P] weight. Pixels past the last whole
    // patch are never seen (a stride-P convolution without padding).
    const K = C * P * P,
      first = this.classToken ? 1 : 0;
    const patches = new Float32Array(T * K);
    for (let gy = 0; gy < G; gy++) {
      for (let gx = 0; gx < G; gx++) {
        const row = (first + gy * G + gx) * K;
        for (let ch = 0; ch < C; ch++) {
          for (let i = 0; i < P; i++) {
            const src = ch * S * S + (gy * P + i) * S + gx * P;
            patches.set(pixels.subarray(src, src + P), row + ch * P * P + i * P);
          }
        }
      }
    }
    const pm = ws.matrix('patches', T, K);
    be.write(pm, patches);
    const x = ws.matrix('x', T, D);
    be.matmul(x, pm, this.patchEmbed, this.patchBias);
    be.add(x, x, this.posClass);
    if (this.preNorm) be.layerNorm(x, x, this.preNorm[0], this.preNorm[1], c.layerNormEps);
    onHidden?.(0, x);
    const H = c.numAttentionHeads,
      hd = D / H,
      I = c.intermediateSize;
    const h = ws.matrix('h', T, D),
      qkv = ws.matrix('qkv', T, 3 * D),
      att = ws.matrix('att', T, D);
    const o = ws.matrix('o', T, D),
      f = ws.matrix('f', T, I);
    const q = qkv.view(0, T, 0, D),
      k = qkv.view(0, T, D, D),
      v = qkv.view(0, T, 2 * D, D);
    const salLayer = salience?.layer ?? this.layers.length - 1;
    if (salience && (!Number.isInteger(salLayer) || salLayer < 0 || salLayer >= this.layers.length)) {
      throw new OptionError(`salience layer ${salLayer} is outside the vision tower's layers 0..${this.layers.length - 1} that feed the connector`);
    }
    for (let l = 0; l < this.layers.length; l++) {
      const L = this.layers[l];
      be.layerNorm(h, x, L.ln1w, L.ln1b, c.layerNormEps);
      be.matmul(qkv, h, L.qkv, L.qkvBias);
      be.kvWrite(this.cache, 0, k, v, 0);
      const opts = { heads: H, qSlot0: 0, causal: false, scale: 1 / Math.sqrt(hd), keys: { count: T } };
      if (salience && l === salLayer) {
        const w = ws.matrix('salienceWeights', 1, T),
          out = ws.matrix('salience', 1, T);
        if (salience.rows === 'cls' && !this.classToken) throw new Error('vision tower: class-token salience asked of a tower without a class token');
        const summary = salience.rows === 'cls' ? 1 : salience.rows === 'mean' ? T : salience.rows;
        if (!Number.isInteger(summary) || summary < 1 || summary > T)
          throw new Error(`vision tower: salience over ${String(salience.rows)} summary rows, expected 1..${T}`);
        be.write(
          w,
          Float32Array.from({ length: T }, (_, i) => (i < summary ? 1 / summary : 0)),
        );
        be.attention(att, q, this.cache, 0, { ...opts, salience: { rowWeights: w, out } });
        salience.result = be.read(out);
        if (salience.withKeys) salience.keys = be.read(k);
      } else {
        be.attention(att, q, this.cache, 0, opts);
      }
      be.matmul(o, att, L.o, L.oBias);
      be.add(x, x, o);
      be.layerNorm(h, x, L.ln2w, L.ln2b, c.layerNormEps);
      be.matmul(f, h, L.fc1, L.fc1Bias);
      be.activation(f, f, this.act);
      be.matmul(o, f, L.fc2, L.fc2Bias);
      be.add(x, x, o);
      onHidden?.(l + 1, x);
    }
    if (!this.postNorm) return x;
    const y = ws.matrix('post', T, D);
    be.layerNorm(y, x, this.postNorm[0], this.postNorm[1], c.layerNormEps);
    return y;
  }
}
