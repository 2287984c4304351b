// The Llama-family decoder (Llama, Qwen2): RMSNorm, rotary embedding, grouped-query attention
// with a KV cache, SwiGLU MLP. Qwen2 differs only in its q/k/v biases (from the config).
// Written against KernelBackend; q/k/v and gate/up projections are fused into one matmul each.
import { Activation, EmbeddingTable, KernelBackend, LinearWeight, Matrix, ParamVector, RopeTable } from '../kernels/backend.js';
import { LlamaLikeConfig } from './llama-config.js';
import { activationOf } from './activations.js';
import { WeightLoader } from './weights.js';
import { ConfigError } from '../formats/config.js';
import { checkHeadDim } from './limits.js';
import { Workspace } from './workspace.js';
import { DecoderCache, LinearGroup, ForwardOptions, LanguageDecoder, PlacementOptions } from './decoder.js';

export { DecoderCache } from './decoder.js';
export type { ForwardOptions, PlacementOptions } from './decoder.js';

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

/** Positions the rotary tables cover at first (they grow with use, see growRope). */
const INITIAL_ROPE_POSITIONS = 2048;

/** Layers [first, first + layers.length) and what they use, in one memory place. */
interface Stage {
  place: number;
  first: number;
  layers: LayerWeights[];
  ws: Workspace;
  rope: RopeTable;
}

export class LlamaDecoder implements LanguageDecoder {
  readonly heads: number;
  readonly kvHeads: number;
  readonly headDim: number;
  readonly hidden: number;
  private readonly act: Activation;
  private readonly last: Stage;
  /** Host copy of the last logits (reused: a decode step allocates nothing). */
  private logitsBuf = new Float32Array(0);
  /** Buffers in the place of the embedding table (the lm_head's place when tied). */
  private readonly embedWs: Workspace;
  private readonly embedPlace: number;

  private constructor(
    readonly backend: KernelBackend,
    readonly config: LlamaLikeConfig,
    private readonly stages: Stage[],
    private readonly embedTable: EmbeddingTable | null,
    private readonly lmHead: LinearWeight,
    private readonly finalNorm: ParamVector,
    embedPlace: number,
    private readonly names: DecoderNames,
  ) {
    this.heads = config.numAttentionHeads;
    this.kvHeads = config.numKeyValueHeads;
    this.headDim = config.headDim;
    this.hidden = config.hiddenSize;
    this.act = activationOf(config.hiddenAct, 'hidden_act');
    this.last = stages[stages.length - 1];
    this.embedWs = new Workspace(backend, embedPlace);
    this.embedPlace = embedPlace;
  }

  /** The memory place of the first layers (where inputs embeddings should be). */
  get place(): number {
    return this.stages[0].place;
  }
  get layers(): number {
    return this.config.numHiddenLayers;
  }
  get vocabSize(): number {
    return this.config.vocabSize;
  }
  get contextWindow(): number {
    return this.config.maxPositionEmbeddings;
  }
  get eosTokenIds(): readonly number[] {
    return this.config.eosTokenId;
  }

  /**
   * Per layer, as AutoAWQ pairs them for Llama: input_layernorm → q, k, v; v_proj → o_proj (only
   * when their shapes match, i.e. without grouped-query attention); post_attention_layernorm →
   * gate, up; up_proj → down_proj.
   */
  linearGroups(): LinearGroup[] {
    const c = this.config,
      p = this.names.prefix;
    const H = c.hiddenSize,
      nq = c.numAttentionHeads * c.headDim,
      nkv = c.numKeyValueHeads * c.headDim,
      I = c.intermediateSize;
    const groups: LinearGroup[] = [];
    for (let l = 0; l < c.numHiddenLayers; l++) {
      const a = `${p}layers.${l}.self_attn.`,
        m = `${p}layers.${l}.mlp.`;
      groups.push({
        layer: l,
        prev: { kind: 'norm', weight: `${p}layers.${l}.input_layernorm.weight` },
        linears: [
          { base: `${a}q_proj`, out: nq, in: H },
          { base: `${a}k_proj`, out: nkv, in: H },
          { base: `${a}v_proj`, out: nkv, in: H },
        ],
      });
      groups.push({
        layer: l,
        prev: nkv === nq ? { kind: 'linear', base: `${a}v_proj` } : null,
        linears: [{ base: `${a}o_proj`, out: H, in: nq }],
      });
      groups.push({
        layer: l,
        prev: { kind: 'norm', weight: `${p}layers.${l}.post_attention_layernorm.weight` },
        linears: [
          { base: `${m}gate_proj`, out: I, in: H },
          { base: `${m}up_proj`, out: I, in: H },
        ],
      });
      groups.push({ layer: l, prev: { kind: 'linear', base: `${m}up_proj` }, linears: [{ base: `${m}down_proj`, out: H, in: I }] });
    }
    return groups;
  }

  /** Where layer `layer` lives: its memory place, the index of its cache part, and its index there. */
  layerPart(layer: number): { place: number; part: number; layerInPart: number } {
    const si = this.stages.findIndex((st) => layer >= st.first && layer < st.first + st.layers.length);
    if (si < 0) throw new RangeError(`layer ${layer} is outside the decoder's ${this.config.numHiddenLayers} layers`);
    return { place: this.stages[si].place, part: si, layerInPart: layer - this.stages[si].first };
  }

  /**
   * Loads the decoder. Layers fill the loader's current place up to the budget, then continue in
   * a new place; the lm_head goes with the last layers.
   */
  static async load(loader: WeightLoader, config: LlamaLikeConfig, names: DecoderNames, opts: PlacementOptions = {}): Promise<LlamaDecoder> {
    const c = config,
      be = loader.backend;
    if (c.ropeScaling) {
      throw new ConfigError(`${loader.label}: config.json: rope_scaling ${JSON.stringify(c.ropeScaling).slice(0, 200)} is not supported yet (plain RoPE only)`);
    }
    if (c.slidingWindow !== null && c.layerTypes.some((t) => t === 'sliding_attention')) {
      throw new ConfigError(`${loader.label}: config.json: use_sliding_window / layer_types ask for sliding-window attention, which is not supported yet`);
    }
    checkHeadDim(be, c.headDim, `${loader.label}: the language model's head dimension (head_dim, or hidden_size / num_attention_heads, in config.json)`);
    activationOf(c.hiddenAct, 'hidden_act'); // fail before loading anything
    const H = c.hiddenSize,
      D = c.headDim,
      nq = c.numAttentionHeads * D,
      nkv = c.numKeyValueHeads * D,
      I = c.intermediateSize;
    const p = names.prefix;
    const budget = opts.placeBudgetBytes ?? Math.floor(be.placeCapacity * 0.75);
    const layerBytes = (l: number) =>
      [
        `${p}layers.${l}.self_attn.q_proj.weight`,
        `${p}layers.${l}.self_attn.k_proj.weight`,
        `${p}layers.${l}.self_attn.v_proj.weight`,
        `${p}layers.${l}.self_attn.o_proj.weight`,
        `${p}layers.${l}.mlp.gate_proj.weight`,
        `${p}layers.${l}.mlp.up_proj.weight`,
        `${p}layers.${l}.mlp.down_proj.weight`,
      ].reduce((a, n) => a + loader.linearBytes(n), 0);
    const ensureRoom = async (bytes: number) => {
      if (be.placeUsage(loader.place) + bytes > budget && be.placeUsage(loader.place) > 0) {
        loader.place = await be.addPlace();
      }
    };
    const embedName = `${p}embed_tokens.weight`;
    const tied = !names.lmHead || c.tieWordEmbeddings;
    loader.skip(
      (n) => n.startsWith(`${p}layers.`) && n.endsWith('.self_attn.rotary_emb.inv_freq'),
      'a RoPE buffer older checkpoints store (recomputed from rope_theta)',
    );
    if (tied && names.lmHead)
      loader.skip((n) => n === names.lmHead, 'tie_word_embeddings is true: the output layer is the embedding table, as in transformers');
    const embedTable = tied ? null : loader.embedding(embedName, [c.vocabSize, H]);
    const tablePlace = loader.place;
    const stages: Stage[] = [];
    for (let l = 0; l < c.numHiddenLayers; l++) {
      await ensureRoom(layerBytes(l));
      let stage = stages[stages.length - 1];
      if (!stage || stage.place !== loader.place) {
        stage = {
          place: loader.place,
          first: l,
          layers: [],
          ws: new Workspace(be, loader.place),
          rope: be.ropeTable(D, c.ropeTheta, Math.min(c.maxPositionEmbeddings, INITIAL_ROPE_POSITIONS), loader.place),
        };
        stages.push(stage);
      }
      const a = `${p}layers.${l}.self_attn.`,
        m = `${p}layers.${l}.mlp.`;
      stage.layers.push({
        inputNorm: loader.params([{ name: `${p}layers.${l}.input_layernorm.weight`, shape: [H] }]),
        qkv: loader.linear([
          { name: `${a}q_proj.weight`, shape: [nq, H] },
          { name: `${a}k_proj.weight`, shape: [nkv, H] },
          { name: `${a}v_proj.weight`, shape: [nkv, H] },
        ]),
        qkvBias: c.attentionBias.qkv
          ? loader.params([
              { name: `${a}q_proj.bias`, shape: [nq] },
              { name: `${a}k_proj.bias`, shape: [nkv] },
              { name: `${a}v_proj.bias`, shape: [nkv] },
            ])
          : undefined,
        o: loader.linear([{ name: `${a}o_proj.weight`, shape: [H, nq] }]),
        oBias: c.attentionBias.o ? loader.params([{ name: `${a}o_proj.bias`, shape: [H] }]) : undefined,
        postNorm: loader.params([{ name: `${p}layers.${l}.post_attention_layernorm.weight`, shape: [H] }]),
        gateUp: loader.linear([
          { name: `${m}gate_proj.weight`, shape: [I, H] },
          { name: `${m}up_proj.weight`, shape: [I, H] },
        ]),
        gateUpBias: c.mlpBias
          ? loader.params([
              { name: `${m}gate_proj.bias`, shape: [I] },
              { name: `${m}up_proj.bias`, shape: [I] },
            ])
          : undefined,
        down: loader.linear([{ name: `${m}down_proj.weight`, shape: [H, I] }]),
        downBias: c.mlpBias ? loader.params([{ name: `${m}down_proj.bias`, shape: [H] }]) : undefined,
      });
    }
    if (stages.length === 0) throw new ConfigError(`${loader.label}: the decoder has no layers (num_hidden_layers ${c.numHiddenLayers})`);
    // The lm_head and final norm go with the last layers (a tied lm_head also serves embeddings).
    const lastPlace = stages[stages.length - 1].place;
    loader.place = lastPlace;
    const finalNorm = loader.params([{ name: `${p}norm.weight`, shape: [H] }]);
    const lmHead = loader.linear([{ name: tied ? embedName : names.lmHead!, shape: [c.vocabSize, H] }]);
    return new LlamaDecoder(be, c, stages, embedTable, lmHead, finalNorm, tied ? lastPlace : tablePlace, names);
  }

  /**
   * The rotary tables hold the positions used so far (at first INITIAL_ROPE_POSITIONS), grown by
   * doubling up to max_position_embeddings: a config's context window costs nothing until it is
   * used. The values of a position do not depend on the table's size.
   */
  private growRope(positions: number): void {
    for (const st of this.stages) {
      if (st.rope.maxPositions >= positions) continue;
      let n = st.rope.maxPositions;
      while (n < positions) n *= 2;
      n = Math.min(n, this.config.maxPositionEmbeddings);
      const old = st.rope;
      st.rope = this.backend.ropeTable(this.headDim, this.config.ropeTheta, n, st.place);
      this.backend.free(old);
    }
  }

  /** A KV cache for this decoder. */
  newCache(): DecoderCache {
    return new DecoderCache(this.stages.map((s) => this.backend.kvCache(s.layers.length, this.kvHeads, this.headDim, { place: s.place })));
  }

  /** Drops cache slots past `length`. */
  truncateCache(cache: DecoderCache, length: number): void {
    for (const part of cache.parts) this.backend.kvTruncate(part, length);
  }

  copyCache(cache: DecoderCache, length: number): DecoderCache {
    const copy = this.newCache();
    try {
      cache.parts.forEach((part, i) => this.backend.kvCopy(copy.parts[i], part, length));
    } catch (e) {
      this.freeCache(copy);
      throw e;
    }
    return copy;
  }

  freeCache(cache: DecoderCache): void {
    for (const part of cache.parts) this.backend.free(part);
  }

  /** Token embeddings of `ids` into out [ids.length][hidden] (any place). */
  embed(out: Matrix, ids: readonly number[]): void {
    const be = this.backend,
      ws = this.embedWs;
    const v = ws.intsOf('ids', ids);
    const dst = out.place === this.embedPlace ? out : ws.matrix('embed', ids.length, this.hidden);
    if (this.embedTable) be.embed(dst, this.embedTable, v);
    else be.embedFromLinear(dst, this.lmHead, v);
    if (dst !== out) be.copy(out, dst);
  }

  /**
   * Runs the decoder over input embeddings x [n][hidden] at cache slots [slot0, slot0 + n) with
   * RoPE positions `positions`. x is used as the residual stream of the first place's layers (so it
   * is modified). Returns the logits of the requested rows, [rows][vocab], in a buffer that the
   * next call overwrites.
   */
  forward(x: Matrix, cache: DecoderCache, slot0: number, positions: readonly number[] | Int32Array, opts: ForwardOptions = {}): Float32Array {
    const be = this.backend,
      c = this.config;
    const S0 = x.rows,
      H = this.hidden,
      D = this.headDim;
    const nq = this.heads * D,
      nkv = this.kvHeads * D,
      I = c.intermediateSize;
    if (positions.length !== S0) throw new Error(`forward: ${positions.length} positions for ${S0} rows`);
    let maxPos = 0;
    for (let i = 0; i < positions.length; i++) maxPos = Math.max(maxPos, positions[i]);
    if (maxPos >= c.maxPositionEmbeddings) {
      throw new RangeError(`position ${maxPos} is past the model's context window of ${c.maxPositionEmbeddings} tokens (max_position_embeddings)`);
    }
    this.growRope(maxPos + 1);
    const scale = 1 / Math.sqrt(D);
    let cur = x;
    // Rows and positions shrink when opts.keepRows drops tokens.
    let S = S0;
    let pos_: readonly number[] | Int32Array = positions; // copied only when rows are dropped
    this.stages.forEach((st, si) => {
      const ws = st.ws,
        part = cache.parts[si];
      let xs = cur;
      if (cur.place !== st.place) {
        xs = ws.matrix('x', S, H);
        be.copy(xs, cur);
      }
      let pos = ws.intsOf('pos', pos_);
      const hM = ws.matrix('h', S, H),
        qkvM = ws.matrix('qkv', S, nq + 2 * nkv),
        attM = ws.matrix('att', S, nq);
      const oM = ws.matrix('o', S, H),
        guM = ws.matrix('gu', S, 2 * I),
        actM = ws.matrix('act', S, I);
      let h = hM,
        qkv = qkvM,
        att = attM,
        o = oM,
        gu = guM,
        act = actM;
      let q = qkv.view(0, S, 0, nq),
        k = qkv.view(0, S, nq, nkv),
        v = qkv.view(0, S, nq + nkv, nkv),
        qk = qkv.view(0, S, 0, nq + nkv);
      // Each layer's input norm is fused with the previous layer's residual add.
      be.rmsNorm(h, xs, st.layers[0].inputNorm, c.rmsNormEps);
      st.layers.forEach((L, j) => {
        const layer = st.first + j;
        const s0 = opts.layerSlot0?.(layer, slot0) ?? slot0;
        opts.onLinearInput?.(layer, 0, h);
        be.matmul(qkv, h, L.qkv, L.qkvBias);
        // q and k are adjacent columns: one rotation over heads + kvHeads heads.
        be.rope(qk, this.heads + this.kvHeads, D, pos, st.rope);
        be.kvWrite(part, j, k, v, s0);
        const keys = S === 1 ? opts.attentionKeys?.(layer, s0, q, part, j) : undefined;
        be.attention(att, q, part, j, { heads: this.heads, qSlot0: s0, causal: true, scale, keys: keys ?? { count: s0 + S } });
        opts.onQueries?.(layer, q, part, j);
        const keep = opts.keepRows?.(layer, q, part, j, s0) ?? null;
        opts.onLinearInput?.(layer, 1, att);
        be.matmul(o, att, L.o, L.oBias);
        be.addRmsNorm(h, xs, o, L.postNorm, c.rmsNormEps);
        opts.onLinearInput?.(layer, 2, h);
        be.matmul(gu, h, L.gateUp, L.gateUpBias);
        be.gatedActivation(act, gu.view(0, S, 0, I), gu.view(0, S, I, I), this.act);
        opts.onLinearInput?.(layer, 3, act);
        be.matmul(o, act, L.down, L.downBias);
        const next = st.layers[j + 1];
        if (next) be.addRmsNorm(h, xs, o, next.inputNorm, c.rmsNormEps);
        else be.add(xs, xs, o);
        opts.onHidden?.(layer, xs);
        if (keep && keep.length < S) {
          // Later layers see only the kept rows: gather them (ascending, so in place is safe).
          for (let r = 0; r < keep.length;) {
            let run = 1;
            while (r + run < keep.length && keep[r + run] === keep[r] + run) run++;
            if (keep[r] !== r) {
              be.copy(xs.view(r, run), xs.view(keep[r], run));
              be.copy(h.view(r, run), h.view(keep[r], run));
            }
            r += run;
          }
          S = keep.length;
          pos_ = keep.map((r) => pos_[r]);
          pos = ws.intsOf('pos', pos_);
          xs = xs.view(0, S);
          h = hM.view(0, S);
          att = attM.view(0, S);
          o = oM.view(0, S);
          gu = guM.view(0, S);
          act = actM.view(0, S);
          qkv = qkvM.view(0, S);
          q = qkv.view(0, S, 0, nq);
          k = qkv.view(0, S, nq, nkv);
          v = qkv.view(0, S, nq + nkv, nkv);
          qk = qkv.view(0, S, 0, nq + nkv);
        }
      });
      cur = xs;
    });
    const ws = this.last.ws;
    const rows = opts.logitRows ?? [cur.rows - 1];
    const hn = ws.matrix('hn', rows.length, H);
    const logits = ws.matrix('logits', rows.length, c.vocabSize);
    // Normalise only the rows whose logits are wanted.
    rows.forEach((r, i) => be.rmsNorm(hn.view(i, 1), cur.view(r, 1), this.finalNorm, c.rmsNormEps));
    be.matmul(logits, hn, this.lmHead);
    const n = rows.length * c.vocabSize;
    if (this.logitsBuf.length < n) this.logitsBuf = new Float32Array(n);
    return be.read(logits, this.logitsBuf.subarray(0, n));
  }

  /** The final RMSNorm of rows of x (the input of lm_head), for parity tests. */
  finalHidden(x: Matrix): Float32Array {
    const hn = this.last.ws.matrix('hn', x.rows, this.hidden);
    this.backend.rmsNorm(hn, x, this.finalNorm, this.config.rmsNormEps);
    return this.backend.read(hn);
  }
}
