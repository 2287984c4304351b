// SparseVILA's decode stage: query-aware retrieval of visual tokens from the KV cache.
import { AttentionKeys, IntVector, KVCache, Matrix } from '../kernels/backend.js';
import { ForwardOptions, LanguageDecoder } from '../model/decoder.js';
import { keptCount, topKInOrder } from './select.js';
import { DecodeSelector } from './decode.js';

/**
 * Once per turn, while the turn's prompt is prefilled, every layer scores each cached visual token
 * by the attention the question's rows pay to it (softmax over the visual keys only, summed over
 * the question rows, averaged over the query heads of each KV group: the group votes for its own
 * keys) and keeps the top keptCount(visual, d) per KV head. Every decode step of the turn then
 * attends, per layer and KV head, to {its kept visual tokens} ∪ {every other slot: system text,
 * earlier turns, the question, the tokens generated so far}, reading K/V rows in place. Nothing
 * is removed from the cache: the next turn retrieves again.
 *
 * Usage: pass `prefillOptions()` to the forward pass that writes the question (its rows from
 * `questionSlot0` on are the question), then `decodeOptions()` to each decode step.
 */
/** Decode steps the lists have room for at first. */
const INITIAL_STEPS = 32;

export class DecodeRetrieval implements DecodeSelector {
  readonly keep: number;
  /** Per layer: the kept visual slots of each KV head, [kvHeads][keep] (after the prefill). */
  readonly kept: Int32Array[] = [];
  /** Per layer: the score of each visual token per KV head, [kvHeads][visualSlots.length]. */
  readonly visualScores: Float32Array[] = [];
  /** Per layer: the key lists the decode steps read, [kvHeads][stride], in the layer's place. */
  private readonly lists: IntVector[] = [];
  private readonly visualByPart = new Map<number, IntVector>();
  private readonly scores = new Map<number, Matrix>();
  private stride = 0;
  /** Decode steps the lists have room for: it starts small and doubles when a step needs more. */
  private capacity = 0;
  /** Entries of each list that are valid before the first decode step (kept visual + other slots). */
  private base = 0;
  /** Cache slot of the first decode step. */
  private firstStep = 0;
  /** The non-visual slots of the prompt, ascending. */
  private others: number[] = [];
  /** Staging for one layer's lists. */
  private list = new Int32Array(0);

  /**
   * visualSlots: the cache slots holding visual tokens (ascending); d: decode sparsity in [0, 1);
   * questionSlot0: the first slot of the turn's question (the rows scoring the visual tokens);
   * maxSteps: most decode steps the turn may take (the lists grow to it with use, never beyond).
   */
  constructor(
    private readonly decoder: LanguageDecoder,
    readonly visualSlots: readonly number[],
    readonly sparsity: number,
    readonly questionSlot0: number,
    private readonly maxSteps: number,
  ) {
    this.keep = keptCount(visualSlots.length, sparsity);
    for (let i = 1; i < visualSlots.length; i++) {
      if (visualSlots[i] <= visualSlots[i - 1]) throw new RangeError('decode retrieval: visual slots must be ascending');
    }
  }

  /** Options for the forward pass that prefills the question (rows at slots slot0..). */
  prefillOptions(slot0: number, rows: number): ForwardOptions {
    const end = slot0 + rows;
    if (this.questionSlot0 < slot0 || this.questionSlot0 >= end) {
      throw new RangeError(`decode retrieval: the question starts at slot ${this.questionSlot0}, outside the prefilled slots [${slot0}, ${end})`);
    }
    const visual = new Set(this.visualSlots);
    this.others = [];
    for (let t = 0; t < end; t++) if (!visual.has(t)) this.others.push(t);
    this.firstStep = end;
    this.base = this.keep + this.others.length;
    this.setCapacity(Math.min(this.maxSteps, INITIAL_STEPS));
    return {
      onQueries: (layer: number, q: Matrix, part: KVCache, layerInPart: number) =>
        this.retrieve(layer, q.view(this.questionSlot0 - slot0, end - this.questionSlot0), part, layerInPart),
    };
  }

  /**
   * Options for a decode step (one row at slot0 >= the end of the prefill). With
   * `reretrieveEvery` = N > 0, every N-th step scores the visual tokens again with that step's
   * query and the following steps attend to the new selection (for long answers that move on).
   */
  decodeOptions(reretrieveEvery = 0): ForwardOptions {
    if (!Number.isInteger(reretrieveEvery) || reretrieveEvery < 0)
      throw new RangeError(`decode retrieval: re-retrieval interval ${reretrieveEvery} is not a whole number >= 0`);
    const steps = (slot0: number): number => {
      const n = slot0 - this.firstStep + 1;
      if (n < 1 || n > this.maxSteps)
        throw new RangeError(`decode retrieval: slot ${slot0} is not one of the turn's ${this.maxSteps} decode steps from ${this.firstStep}`);
      return n;
    };
    let current = -1;
    return {
      attentionKeys: (layer: number, slot0: number): AttentionKeys => {
        if (!this.lists[layer]) throw new Error(`decode retrieval: layer ${layer} was not scored (prefill the question with prefillOptions first)`);
        current = steps(slot0);
        if (current > this.capacity) this.grow(current);
        return { count: this.base + current, indices: this.lists[layer], perKvHead: true, stride: this.stride };
      },
      onQueries:
        reretrieveEvery > 0
          ? (layer: number, q: Matrix, part: KVCache, layerInPart: number) => {
              if (current > 0 && current % reretrieveEvery === 0) {
                this.retrieve(layer, q, part, layerInPart);
                if (layer === this.decoder.layers - 1) this.reretrievals++;
              }
            }
          : undefined,
    };
  }

  /** Cache slots a step at `slot` reads per layer: all but the visual tokens not retrieved. */
  rowsPerStep(slot: number): number {
    return slot + 1 - (this.visualSlots.length - this.keep);
  }

  get visualPerStep(): number {
    return this.keep;
  }

  /** Times the decode steps selected again (counted once per step, not per layer). */
  reretrievals = 0;

  /** Scores the visual tokens of one layer by the query rows q and rewrites the layer's lists. */
  private retrieve(layer: number, q: Matrix, part: KVCache, layerInPart: number): void {
    const be = this.decoder.backend,
      kvHeads = this.decoder.kvHeads,
      n = this.visualSlots.length;
    const { part: pi, place } = this.decoder.layerPart(layer);
    let keys = this.visualByPart.get(pi),
      out = this.scores.get(pi);
    if (!keys || !out) {
      keys = be.ints(n, place);
      be.writeInts(keys, this.visualSlots);
      out = be.matrix(kvHeads, n, place);
      this.visualByPart.set(pi, keys);
      this.scores.set(pi, out);
    }
    be.keyScores(out, q, part, layerInPart, { heads: this.decoder.heads, scale: 1 / Math.sqrt(this.decoder.headDim), keys });
    const sc = be.read(out);
    this.visualScores[layer] = sc;
    const kept = new Int32Array(kvHeads * this.keep);
    for (let g = 0; g < kvHeads; g++) {
      const top = topKInOrder(sc.subarray(g * n, (g + 1) * n), this.keep);
      for (let a = 0; a < top.length; a++) kept[g * this.keep + a] = this.visualSlots[top[a]];
    }
    this.kept[layer] = kept;
    this.writeList(layer, place);
  }

  private setCapacity(steps: number): void {
    this.capacity = Math.max(1, steps);
    this.stride = this.base + this.capacity;
    this.list = new Int32Array(this.decoder.kvHeads * this.stride);
  }

  /** Room for `steps` decode steps (doubling, up to maxSteps): every layer's list is rewritten at the new stride. */
  private grow(steps: number): void {
    let c = this.capacity;
    while (c < steps) c *= 2;
    this.setCapacity(Math.min(c, this.maxSteps));
    this.kept.forEach((_, layer) => this.writeList(layer, this.decoder.layerPart(layer).place));
  }

  /**
   * Writes a layer's lists: per KV head, its kept visual slots merged with every other slot,
   * ascending (cache order), then the slots the decode steps write.
   */
  private writeList(layer: number, place: number): void {
    const be = this.decoder.backend,
      kvHeads = this.decoder.kvHeads,
      kept = this.kept[layer];
    const list = this.list,
      others = this.others;
    for (let g = 0; g < kvHeads; g++) {
      let a = 0,
        b = 0,
        o = g * this.stride;
      while (a < this.keep || b < others.length) {
        const va = a < this.keep ? kept[g * this.keep + a] : Infinity,
          vb = b < others.length ? others[b] : Infinity;
        if (va < vb) {
          list[o++] = va;
          a++;
        } else {
          list[o++] = vb;
          b++;
        }
      }
      for (let t = 0; t < this.capacity; t++) list[o++] = this.firstStep + t;
    }
    let lv: IntVector | undefined = this.lists[layer];
    if (lv && lv.length !== list.length) {
      be.free(lv);
      lv = undefined;
    }
    if (!lv) {
      lv = be.ints(list.length, place);
      this.lists[layer] = lv;
    }
    be.writeInts(lv, list);
  }

  /** Releases the backend memory this retrieval holds. */
  free(): void {
    const be = this.decoder.backend;
    for (const v of this.lists) if (v) be.free(v);
    for (const v of this.visualByPart.values()) be.free(v);
    for (const m of this.scores.values()) be.free(m);
    this.lists.length = 0;
    this.visualByPart.clear();
    this.scores.clear();
  }
}
