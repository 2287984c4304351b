// The Llama-family decoder (Llama, Qwen2): RMSNorm, rotary embedding, grouped-query attention
// with a KV cache, SwiGLU MLP. Qwen2 differs only in its q/k/v biases (from the config).
// Written against KernelBackend; q/k/v and gate/up projections are fused into one matmul each.
import { EmbeddingTable, KVCache, KernelBackend, LinearWeight, Matrix, ParamVector, RopeTable } from '../kernels/backend.js';
import { LlamaLikeConfig } from '../formats/config.js';
import { activationOf } from './activations.js';
import { WeightLoader } from './weights.js';
import { Workspace } from './workspace.js';
import { Activation } from '../kernels/backend.js';

/** Where the decoder's tensors are in a checkpoint. */
export interface DecoderNames {
  /** Prefix of the decoder module, e.g. "model." or "language_model.model.". */
  prefix: string;
  /** The lm_head tensor, or null when the embeddings are tied. */
  lmHead: string | null;
}

interface LayerWeights {
  inputNorm: ParamVector;
  qkv: LinearWeight;
  qkvBias?: ParamVector;
  o: LinearWeight;
  oBias?: ParamVector;
  postNorm: ParamVector;
  gateUp: LinearWeight;
  gateUpBias?: ParamVector;
  down: LinearWeight;
  downBias?: ParamVector;
}

export interface ForwardOptions {
  /** Rows of the input whose logits are returned (default: the last row). */
  logitRows?: number[];
  /** When given, receives each layer's output (the residual stream) as it is computed. */
  onHidden?: (layer: number, x: Matrix) => void;
}

export class LlamaDecoder {
  readonly heads: number;
  readonly kvHeads: number;
  readonly headDim: number;
  readonly hidden: number;
  private readonly ws: Workspace;
  private readonly act: Activation;

  private constructor(
    readonly backend: KernelBackend,
    readonly config: LlamaLikeConfig,
    private readonly layers: LayerWeights[],
    private readonly embedTable: EmbeddingTable | null,
    private readonly lmHead: LinearWeight,
    private readonly finalNorm: ParamVector,
    private readonly rope: RopeTable,
    readonly place: number,
  ) {
    this.heads = config.numAttentionHeads;
    this.kvHeads = config.numKeyValueHeads;
    this.headDim = config.headDim;
    this.hidden = config.hiddenSize;
    this.ws = new Workspace(backend, place);
    this.act = activationOf(config.hiddenAct, 'hidden_act');
  }

  static load(loader: WeightLoader, config: LlamaLikeConfig, names: DecoderNames): LlamaDecoder {
    const c = config;
    if (c.ropeScaling) {
      throw new Error(`${loader.label}: rope_scaling ${JSON.stringify(c.ropeScaling)} is not supported yet (plain RoPE only)`);
    }
    if (c.slidingWindow !== null && c.layerTypes.some((t) => t === 'sliding_attention')) {
      throw new Error(`${loader.label}: sliding-window attention is not supported yet`);
    }
    const H = c.hiddenSize, D = c.headDim, nq = c.numAttentionHeads * D, nkv = c.numKeyValueHeads * D, I = c.intermediateSize;
    const p = names.prefix;
    activationOf(c.hiddenAct, 'hidden_act'); // fail before loading anything
    const layers: LayerWeights[] = [];
    for (let l = 0; l < c.numHiddenLayers; l++) {
      const a = `${p}layers.${l}.self_attn.`, m = `${p}layers.${l}.mlp.`;
      const qkvParts = [{ name: `${a}q_proj.weight`, shape: [nq, H] }, { name: `${a}k_proj.weight`, shape: [nkv, H] }, { name: `${a}v_proj.weight`, shape: [nkv, H] }];
      const gateUpParts = [{ name: `${m}gate_proj.weight`, shape: [I, H] }, { name: `${m}up_proj.weight`, shape: [I, H] }];
      layers.push({
        inputNorm: loader.params([{ name: `${p}layers.${l}.input_layernorm.weight`, shape: [H] }]),
        qkv: loader.linear(qkvParts),
        qkvBias: c.attentionBias.qkv ? loader.params([{ name: `${a}q_proj.bias`, shape: [nq] }, { name: `${a}k_proj.bias`, shape: [nkv] }, { name: `${a}v_proj.bias`, shape: [nkv] }]) : undefined,
        o: loader.linear([{ name: `${a}o_proj.weight`, shape: [H, nq] }]),
        oBias: c.attentionBias.o ? loader.params([{ name: `${a}o_proj.bias`, shape: [H] }]) : undefined,
        postNorm: loader.params([{ name: `${p}layers.${l}.post_attention_layernorm.weight`, shape: [H] }]),
        gateUp: loader.linear(gateUpParts),
        gateUpBias: c.mlpBias ? loader.params([{ name: `${m}gate_proj.bias`, shape: [I] }, { name: `${m}up_proj.bias`, shape: [I] }]) : undefined,
        down: loader.linear([{ name: `${m}down_proj.weight`, shape: [H, I] }]),
        downBias: c.mlpBias ? loader.params([{ name: `${m}down_proj.bias`, shape: [H] }]) : undefined,
      });
    }
    const finalNorm = loader.params([{ name: `${p}norm.weight`, shape: [H] }]);
    const embedName = `${p}embed_tokens.weight`;
    let lmHead: LinearWeight, embedTable: EmbeddingTable | null = null;
    if (names.lmHead && !c.tieWordEmbeddings) {
      embedTable = loader.embedding(embedName, [c.vocabSize, H]);
      lmHead = loader.linear([{ name: names.lmHead, shape: [c.vocabSize, H] }]);
    } else {
      // Tied: one packed copy serves the lm_head matmul and the embedding lookup.
      lmHead = loader.linear([{ name: embedName, shape: [c.vocabSize, H] }]);
    }
    const rope = loader.backend.ropeTable(D, c.ropeTheta, c.maxPositionEmbeddings, loader.place);
    return new LlamaDecoder(loader.backend, c, layers, embedTable, lmHead, finalNorm, rope, loader.place);
  }

  /** A KV cache for this decoder. */
  newCache(): KVCache {
    return this.backend.kvCache(this.config.numHiddenLayers, this.kvHeads, this.headDim, { place: this.place });
  }

  /** Token embeddings of `ids` into out [ids.length][hidden]. */
  embed(out: Matrix, ids: readonly number[]): void {
    const v = this.ws.intsOf('ids', ids);
    if (this.embedTable) this.backend.embed(out, this.embedTable, v);
    else this.backend.embedFromLinear(out, this.lmHead, v);
  }

  /**
   * Runs the decoder over input embeddings x [n][hidden] (modified in place: it becomes the last
   * layer's residual stream) at cache slots [slot0, slot0 + n) with RoPE positions `positions`.
   * Returns the logits of the requested rows, [rows][vocab].
   */
  forward(x: Matrix, cache: KVCache, slot0: number, positions: readonly number[] | Int32Array, opts: ForwardOptions = {}): Float32Array {
    const be = this.backend, c = this.config, ws = this.ws;
    const S = x.rows, H = this.hidden, D = this.headDim;
    const nq = this.heads * D, nkv = this.kvHeads * D, I = c.intermediateSize;
    if (positions.length !== S) throw new Error(`forward: ${positions.length} positions for ${S} rows`);
    const maxPos = Math.max(...Array.from(positions));
    if (maxPos >= c.maxPositionEmbeddings) {
      throw new Error(`position ${maxPos} is past the model's context window of ${c.maxPositionEmbeddings} tokens (max_position_embeddings)`);
    }
    const pos = ws.intsOf('pos', positions);
    const h = ws.matrix('h', S, H);
    const qkv = ws.matrix('qkv', S, nq + 2 * nkv);
    const att = ws.matrix('att', S, nq);
    const o = ws.matrix('o', S, H);
    const gu = ws.matrix('gu', S, 2 * I);
    const act = ws.matrix('act', S, I);
    const q = qkv.view(0, S, 0, nq), k = qkv.view(0, S, nq, nkv), v = qkv.view(0, S, nq + nkv, nkv);
    const scale = 1 / Math.sqrt(D);
    for (let l = 0; l < this.layers.length; l++) {
      const L = this.layers[l];
      be.rmsNorm(h, x, L.inputNorm, c.rmsNormEps);
      be.matmul(qkv, h, L.qkv, L.qkvBias);
      be.rope(q, this.heads, D, pos, this.rope);
      be.rope(k, this.kvHeads, D, pos, this.rope);
      be.kvWrite(cache, l, k, v, slot0);
      be.attention(att, q, cache, l, { heads: this.heads, qSlot0: slot0, causal: true, scale, keys: { count: slot0 + S } });
      be.matmul(o, att, L.o, L.oBias);
      be.add(x, x, o);
      be.rmsNorm(h, x, L.postNorm, c.rmsNormEps);
      be.matmul(gu, h, L.gateUp, L.gateUpBias);
      be.gatedActivation(act, gu.view(0, S, 0, I), gu.view(0, S, I, I), this.act);
      be.matmul(o, act, L.down, L.downBias);
      be.add(x, x, o);
      opts.onHidden?.(l, x);
    }
    const rows = opts.logitRows ?? [S - 1];
    const hn = ws.matrix('hn', rows.length, H);
    const logits = ws.matrix('logits', rows.length, c.vocabSize);
    // Normalise only the rows whose logits are wanted.
    rows.forEach((r, i) => be.rmsNorm(hn.view(i, 1), x.view(r, 1), this.finalNorm, c.rmsNormEps));
    be.matmul(logits, hn, this.lmHead);
    return be.read(logits);
  }

  /** The final RMSNorm of rows of x (the input of lm_head), for parity tests. */
  finalHidden(x: Matrix): Float32Array {
    const hn = this.ws.matrix('hn', x.rows, this.hidden);
    this.backend.rmsNorm(hn, x, this.finalNorm, this.config.rmsNormEps);
    return this.backend.read(hn);
  }
}
