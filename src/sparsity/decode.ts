// The language-model stage of a visual-sparsity method, as a strategy: hooks for the forward pass
// that prefills a turn's new tokens (where FastV and PyramidDrop drop tokens between layers) and
// for each decode step of that turn (where SparseVILA and Quest choose the keys to read).
import { ForwardOptions, LanguageDecoder } from '../model/decoder.js';

/** One turn's decode-time selection (made by a DecodeMethod). */
export interface DecodeSelector {
  /** Hooks for the forward pass that prefills the turn's rows [slot0, slot0 + rows). */
  prefillOptions(slot0: number, rows: number): ForwardOptions | undefined;
  /** Hooks for each decode step. */
  decodeOptions(): ForwardOptions;
  /** Cache slots a step at `slot` reads per layer (on average over layers). */
  rowsPerStep(slot: number): number;
  /** Visual tokens a step attends to per layer and KV head, when the method selects visual tokens. */
  readonly visualPerStep?: number;
  /** Visual tokens each layer attends to in a decode step (per KV head), when the method selects visual tokens. */
  visualPerLayer?(): number[];
  /** Per layer, the visual slots kept for each KV head ([kvHeads][visualPerStep]), when it selects visual tokens. */
  readonly keptVisual?: Int32Array[];
  /**
   * After its turn's prefill, the layout of a cache the method pruned for good (FastV, PyramidDrop):
   * later turns of a session continue that cache and must lay their rows out by it.
   */
  readonly layout?: PrunedCacheLayout;
  free(): void;
}

/**
 * A cache whose layers hold fewer rows than the prompt had: the turn that prefilled it dropped
 * visual tokens between layers. Slots count as in the unpruned prompt; layer l holds slot s
 * (s >= end) in row s - dropped[l].
 */
export interface PrunedCacheLayout {
  /** Rows dropped before each layer's cache (0 where nothing was dropped yet). */
  readonly dropped: readonly number[];
  /** Every dropped slot is below this one: a turn may continue the cache from here on. */
  readonly end: number;
  /** Visual tokens each layer still holds. */
  readonly visualPerLayer: readonly number[];
}

/** What a turn gives a decode method. */
export interface TurnContext {
  decoder: LanguageDecoder;
  /** Cache slots of the visual tokens (ascending). */
  visualSlots: number[];
  /** First slot of the turn's question (the rows that score, for query-aware methods). */
  questionSlot0: number;
  /** Slots in the cache after the turn's prompt is prefilled. */
  promptLength: number;
  /** Most decode steps of the turn. */
  maxSteps: number;
  /** The layout of the cache the turn continues, when an earlier turn pruned it for good. */
  layout?: PrunedCacheLayout;
}

/** The decode stage of a method: makes a selector per turn (null: dense decode). */
export interface DecodeMethod {
  readonly name: string;
  /**
   * Drops tokens inside the prefill for good (FastV, PyramidDrop): the first turn's question decides
   * what every later turn of a session can see (its selectors continue the pruned cache).
   */
  readonly prunesCache?: boolean;
  create(ctx: TurnContext): DecodeSelector | null;
}
