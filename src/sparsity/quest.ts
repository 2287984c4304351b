// Quest (Tang et al., ICML 2024): query-aware page selection at every decode step, over the whole
// KV cache. The cache is split into pages of 16 slots; each page keeps the element-wise min and
// max of its keys; a step scores every page by sum_d max(q_d min_d, q_d max_d) (an upper bound of
// q . k on the page) and attends to the top pages. The first two layers stay dense. Our KV lists
// are per KV head, so under GQA the query heads of a group add their page scores; the page being
// written is always attended to.
import { AttentionKeys, IntVector, KVCache, Matrix } from '../kernels/backend.js';
import { ForwardOptions, LanguageDecoder } from '../model/decoder.js';
import { DecodeSelector } from './decode.js';
import { OptionError } from '../base/errors.js';

export interface QuestOptions {
  /** Slots each decode step attends to per layer and KV head (rounded down to whole pages, at least one). */
  budget: number;
  pageSize?: number;
  /** Layers (from the first) that stay dense. */
  denseLayers?: number;
}

export class QuestDecode implements DecodeSelector {
  readonly pageSize: number;
  readonly denseLayers: number;
  /** Pages attended per step (the page being written included). */
  readonly pagesPerStep: number;
  private readonly bounds: Matrix[] = [];
  private readonly lists: IntVector[] = [];
  private readonly boundsReady: boolean[] = [];
  private readonly scoreMats = new Map<number, Matrix>();
  private readonly maxPages: number;
  /** Per layer, the pages its bounds matrix has room for (it grows by doubling, up to maxPages). */
  private readonly pageRoom: number[] = [];
  /** Reused on every step: scores read back, the lists written, the page order. */
  private scoreBuf = new Float32Array(0);
  private readonly listBuf: Int32Array;
  private readonly order: number[] = [];

  /** maxSlots: the most cache slots the turn may reach (buffers grow with use up to it). */
  constructor(
    private readonly decoder: LanguageDecoder,
    opts: QuestOptions,
    maxSlots: number,
  ) {
    this.pageSize = opts.pageSize ?? 16;
    this.denseLayers = opts.denseLayers ?? 2;
    if (!Number.isInteger(opts.budget) || opts.budget < 1) throw new OptionError(`Quest budget ${opts.budget} must be a whole number >= 1`);
    this.pagesPerStep = Math.max(1, Math.floor(opts.budget / this.pageSize));
    this.maxPages = Math.ceil(maxSlots / this.pageSize);
    this.listBuf = new Int32Array(decoder.kvHeads * this.pagesPerStep * this.pageSize);
  }

  prefillOptions(): ForwardOptions | undefined {
    return undefined;
  }

  /** Slots a step at `slot` reads in a layer, on average over layers. */
  rowsPerStep(slot: number): number {
    const L = this.decoder.layers,
      len = slot + 1;
    const sparse = Math.min(len, (this.pagesPerStep - 1) * this.pageSize + (slot % this.pageSize) + 1);
    return (this.denseLayers * len + (L - this.denseLayers) * sparse) / L;
  }

  decodeOptions(): ForwardOptions {
    const be = this.decoder.backend,
      kvHeads = this.decoder.kvHeads,
      ps = this.pageSize,
      D = this.decoder.headDim;
    return {
      attentionKeys: (layer: number, slot0: number, q: Matrix, part: KVCache, layerInPart: number): AttentionKeys | undefined => {
        if (layer < this.denseLayers) return undefined;
        const len = slot0 + 1,
          nPages = Math.ceil(len / ps),
          cur = Math.floor(slot0 / ps);
        if (nPages <= this.pagesPerStep) return undefined; // everything fits the budget: dense
        if (nPages > this.maxPages) throw new RangeError(`Quest: slot ${slot0} is past the ${this.maxPages * ps} slots it was sized for`);
        const { place, part: pi } = this.decoder.layerPart(layer);
        let b = this.bounds[layer];
        if (!b || this.pageRoom[layer] < nPages) {
          // Room for twice the pages used now; a new matrix holds no bounds yet (all are computed again).
          const room = Math.min(this.maxPages, Math.max(2 * nPages, 64));
          if (b) be.free(b);
          b = be.matrix(kvHeads * room, 2 * D, place);
          this.bounds[layer] = b;
          this.pageRoom[layer] = room;
          this.boundsReady[layer] = false;
          this.lists[layer] ??= be.ints(kvHeads * this.pagesPerStep * ps, place);
        }
        // Summaries of every page once, then only of the page being written.
        if (!this.boundsReady[layer]) {
          be.pageBounds(b, part, layerInPart, { pageSize: ps, page0: 0, nPages });
          this.boundsReady[layer] = true;
        } else {
          be.pageBounds(b, part, layerInPart, { pageSize: ps, page0: cur, nPages: 1 });
        }
        let sm = this.scoreMats.get(pi);
        if (!sm || sm.cols !== nPages) {
          if (sm) be.free(sm);
          sm = be.matrix(kvHeads, nPages, place);
          this.scoreMats.set(pi, sm);
        }
        be.pageScores(sm, q, b, { heads: this.decoder.heads, kvHeads, nPages });
        const sc = be.read(
          sm,
          this.scoreBuf.length >= kvHeads * nPages
            ? this.scoreBuf.subarray(0, kvHeads * nPages)
            : (this.scoreBuf = new Float32Array(kvHeads * 2 * nPages)).subarray(0, kvHeads * nPages),
        );
        const stride = this.pagesPerStep * ps;
        const list = this.listBuf;
        const order = this.order;
        let count = 0;
        for (let h = 0; h < kvHeads; h++) {
          // The page being written, and the best others by score (ties to the earlier page).
          order.length = 0;
          for (let p = 0; p < nPages; p++) if (p !== cur) order.push(p);
          order.sort((x, y) => sc[h * nPages + y] - sc[h * nPages + x] || x - y);
          order.length = this.pagesPerStep - 1;
          order.push(cur);
          order.sort((x, y) => x - y);
          let o = h * stride;
          for (const p of order) for (let t = p * ps; t < Math.min(len, (p + 1) * ps); t++) list[o++] = t;
          count = o - h * stride;
        }
        be.writeInts(this.lists[layer], list);
        return { count, indices: this.lists[layer], perKvHead: true, stride };
      },
    };
  }

  free(): void {
    const be = this.decoder.backend;
    for (const m of this.bounds) if (m) be.free(m);
    for (const v of this.lists) if (v) be.free(v);
    for (const m of this.scoreMats.values()) be.free(m);
    this.bounds.length = 0;
    this.lists.length = 0;
    this.scoreMats.clear();
  }
}
