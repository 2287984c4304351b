// FastV (Chen et al., ECCV 2024) and PyramidDrop (Xing et al., 2024): query-aware pruning inside
// the language model's prefill. After a chosen layer, the visual tokens are ranked by the
// attention the prompt's last token pays them in that layer (softmax over all keys, averaged over
// heads) and only the top ones go on to the next layers; the dropped ones are gone for good (the
// later layers' caches never hold them). In a session the next questions continue that pruned
// cache (PrunedCacheContinuation): what the first question did not look at is gone for them too.
// FastV: one stage, after layer K - 1 = 1 keep 50%. PyramidDrop: stages after layers L/4, L/2 and
// 3L/4 (counted from 1), each keeping lambda = 0.5 of the visual tokens still there.
import { KVCache, Matrix } from '../kernels/backend.js';
import { ForwardOptions, LanguageDecoder } from '../model/decoder.js';
import { DecodeSelector, PrunedCacheLayout } from './decode.js';
import { OptionError } from '../base/errors.js';

export interface DropStage {
  /** The layer whose attention ranks the visual tokens; they are dropped after it. */
  layer: number;
  /** Visual tokens kept of the n still present. */
  keep: (n: number) => number;
}

export class LayerDrop implements DecodeSelector {
  /** Prompt rows present in each layer (filled while the prompt is prefilled). */
  private readonly rowsAt: number[];
  /** Per stage, the visual slots (prompt positions) kept. */
  readonly keptAt = new Map<number, number[]>();
  private readonly stages: DropStage[];

  constructor(
    private readonly decoder: LanguageDecoder,
    readonly visualSlots: readonly number[],
    stages: DropStage[],
    private readonly promptLength: number,
  ) {
    const L = decoder.layers;
    this.stages = [...stages].sort((a, b) => a.layer - b.layer);
    for (const st of this.stages)
      if (!Number.isInteger(st.layer) || st.layer < 0 || st.layer >= L - 1)
        throw new RangeError(`token dropping after layer ${st.layer}: expected 0..${L - 2}`);
    this.rowsAt = new Array<number>(L).fill(promptLength);
  }

  prefillOptions(slot0: number, rows: number): ForwardOptions {
    if (slot0 !== 0 || rows !== this.promptLength)
      throw new RangeError('token dropping inside the prefill needs the whole prompt in one pass (it cannot continue a cached conversation)');
    const be = this.decoder.backend,
      kvHeads = this.decoder.kvHeads;
    let present = Array.from({ length: rows }, (_, i) => i); // prompt positions of the current rows
    const visual = new Set(this.visualSlots);
    return {
      keepRows: (layer: number, q: Matrix, part: KVCache, layerInPart: number): number[] | null => {
        const st = this.stages.find((s) => s.layer === layer);
        if (!st) return null;
        const n = present.length;
        const { place } = this.decoder.layerPart(layer);
        const keys = be.ints(n, place),
          out = be.matrix(kvHeads, n, place);
        try {
          be.writeInts(
            keys,
            Array.from({ length: n }, (_, i) => i),
          );
          // The last row's attention over every key of this layer, per KV group; groups averaged.
          be.keyScores(out, q.view(n - 1, 1), part, layerInPart, { heads: this.decoder.heads, scale: 1 / Math.sqrt(this.decoder.headDim), keys });
          const sc = be.read(out);
          const att = new Float64Array(n);
          for (let g = 0; g < kvHeads; g++) for (let i = 0; i < n; i++) att[i] += sc[g * n + i] / kvHeads;
          const vis = present.map((p, i) => (visual.has(p) ? i : -1)).filter((i) => i >= 0);
          const keepN = Math.min(vis.length, Math.max(0, st.keep(vis.length)));
          const top = new Set([...vis].sort((a, b) => att[b] - att[a] || a - b).slice(0, keepN));
          const rowsKept = present.map((p, i) => i).filter((i) => !visual.has(present[i]) || top.has(i));
          present = rowsKept.map((i) => present[i]);
          this.keptAt.set(
            layer,
            present.filter((p) => visual.has(p)),
          );
          for (let l = layer + 1; l < this.rowsAt.length; l++) this.rowsAt[l] = present.length;
          return rowsKept;
        } finally {
          be.free(keys);
          be.free(out);
        }
      },
    };
  }

  decodeOptions(): ForwardOptions {
    // Step i writes prompt position promptLength + i; a layer that holds fewer prompt rows writes
    // it right after them.
    return { layerSlot0: (layer: number, slot0: number) => this.rowsAt[layer] + (slot0 - this.promptLength) };
  }

  rowsPerStep(slot: number): number {
    const step = slot - this.promptLength;
    return this.rowsAt.reduce((a, r) => a + r + step + 1, 0) / this.rowsAt.length;
  }

  visualPerLayer(): number[] {
    const L = this.decoder.layers;
    return Array.from({ length: L }, (_, l) => {
      let n = this.visualSlots.length;
      for (const st of this.stages) if (st.layer < l) n = this.keptAt.get(st.layer)?.length ?? n;
      return n;
    });
  }

  /** Visual tokens the last layer attends to. */
  get visualPerStep(): number {
    const last = this.stages[this.stages.length - 1];
    return last ? (this.keptAt.get(last.layer)?.length ?? this.visualSlots.length) : this.visualSlots.length;
  }

  /** The pruned cache's layout, once the prompt is prefilled. */
  get layout(): PrunedCacheLayout {
    return {
      dropped: this.rowsAt.map((r) => this.promptLength - r),
      end: this.visualSlots.length ? this.visualSlots[this.visualSlots.length - 1] + 1 : 0,
      visualPerLayer: this.visualPerLayer(),
    };
  }

  free(): void {
    /* nothing held between calls */
  }
}

/**
 * A later turn over a cache an earlier turn pruned (FastV, PyramidDrop in a session): its rows
 * and decode steps go right after each layer's kept rows; nothing more is dropped.
 */
export class PrunedCacheContinuation implements DecodeSelector {
  private readonly options: ForwardOptions;

  constructor(readonly layout: PrunedCacheLayout) {
    const dropped = layout.dropped;
    this.options = { layerSlot0: (layer: number, s: number) => s - dropped[layer] };
  }

  prefillOptions(): ForwardOptions {
    return this.options;
  }
  decodeOptions(): ForwardOptions {
    return this.options;
  }

  rowsPerStep(slot: number): number {
    return this.layout.dropped.reduce((a, d) => a + slot - d + 1, 0) / this.layout.dropped.length;
  }

  visualPerLayer(): number[] {
    return [...this.layout.visualPerLayer];
  }

  get visualPerStep(): number {
    return this.layout.visualPerLayer[this.layout.visualPerLayer.length - 1];
  }

  free(): void {
    /* nothing held */
  }
}

/** FastV's stage: after layer k - 1 (k = 2), keep (1 - r) of the visual tokens (r = 0.5). */
export function fastVStages(k = 2, r = 0.5): DropStage[] {
  if (!Number.isInteger(k) || k < 1) throw new OptionError(`FastV K ${k} must be a whole number >= 1`);
  if (typeof r !== 'number' || !(r >= 0 && r < 1)) throw new OptionError(`FastV ratio ${r} must be in [0, 1)`);
  return [{ layer: k - 1, keep: (n) => n - Math.floor(r * n) }];
}

/** PyramidDrop's stages for L layers: after layers L/4, L/2, 3L/4, keep lambda of the visual tokens left. */
export function pyramidDropStages(layers: number, lambda = 0.5): DropStage[] {
  if (typeof lambda !== 'number' || !(lambda > 0 && lambda <= 1)) throw new OptionError(`PyramidDrop lambda ${lambda} must be in (0, 1]`);
  const at = [...new Set([1, 2, 3].map((i) => Math.max(1, Math.round((i * layers) / 4)) - 1))].filter((l) => l < layers - 1);
  return at.map((layer) => ({ layer, keep: (n) => Math.round(lambda * n) }));
}
