// Choosing the next token from logits: greedy, or temperature / top-k / top-p sampling with a
// seeded generator (the same seed gives the same text).
import { OptionError } from '../base/errors.js';

export interface SamplingOptions {
  /** 0 (default) is greedy decoding; > 0 samples from softmax(logits / temperature). */
  temperature?: number;
  /** Keep only the k most likely tokens (0 or absent: no limit). */
  topK?: number;
  /** Keep the smallest set of most likely tokens whose probability reaches p (1 or absent: all). */
  topP?: number;
  /** Seed of the sampler's random generator (default 0). */
  seed?: number;
  /** Added to the logits of these token ids before sampling (greedy too); -100 all but bans a token, as OpenAI's logit_bias. */
  logitBias?: Record<number, number>;
}

/** A small, fast, seedable generator (mulberry32); uniform floats in [0, 1). */
export class Rng {
  private s: number;
  constructor(seed = 0) {
    this.s = seed >>> 0;
  }
  next(): number {
    this.s = (this.s + 0x6d2b79f5) >>> 0;
    let t = this.s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
}

export function argmax(logits: Float32Array): number {
  let best = 0;
  for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
  return best;
}

export class Sampler {
  private readonly rng: Rng;
  private readonly bias: (readonly [number, number])[] = [];
  readonly temperature: number;
  readonly topK: number;
  readonly topP: number;

  constructor(opts: SamplingOptions = {}) {
    const t = opts.temperature ?? 0,
      k = opts.topK ?? 0,
      p = opts.topP ?? 1;
    if (typeof t !== 'number' || !(t >= 0) || !Number.isFinite(t)) throw new OptionError(`temperature must be a number >= 0, got ${String(opts.temperature)}`);
    if (!Number.isInteger(k) || k < 0) throw new OptionError(`topK must be an integer >= 0, got ${String(opts.topK)}`);
    if (typeof p !== 'number' || !(p > 0 && p <= 1)) throw new OptionError(`topP must be in (0, 1], got ${String(opts.topP)}`);
    if (opts.seed !== undefined && !Number.isSafeInteger(opts.seed)) throw new OptionError(`seed must be an integer, got ${String(opts.seed)}`);
    this.temperature = t;
    this.topK = k;
    this.topP = p;
    this.rng = new Rng(opts.seed ?? 0);
    if (opts.logitBias !== undefined) {
      if (typeof opts.logitBias !== 'object' || opts.logitBias === null) throw new OptionError('logitBias must be an object of token id -> bias');
      this.bias = Object.entries(opts.logitBias).map(([k, v]) => {
        const id = Number(k);
        if (!Number.isInteger(id) || id < 0) throw new OptionError(`logitBias: ${JSON.stringify(k)} is not a token id`);
        if (typeof v !== 'number' || !Number.isFinite(v)) throw new OptionError(`logitBias[${k}] must be a finite number, got ${String(v)}`);
        return [id, v] as const;
      });
    }
  }
  /** Picks the next token (the logits get the logit bias added, in place). */
  sample(logits: Float32Array): number {
    for (const [id, b] of this.bias) if (id < logits.length) logits[id] += b;
    if (this.temperature === 0) return argmax(logits);
    const n = logits.length;
    // Candidates: the top k (or all), sorted by logit, descending.
    let idx: number[];
    if (this.topK > 0 && this.topK < n) {
      idx = topKIndices(logits, this.topK);
    } else {
      idx = Array.from({ length: n }, (_, i) => i);
      idx.sort((a, b) => logits[b] - logits[a]);
    }
    const inv = 1 / this.temperature,
      m = logits[idx[0]];
    const probs = idx.map((i) => Math.exp((logits[i] - m) * inv));
    let total = probs.reduce((a, b) => a + b, 0);
    if (this.topP < 1) {
      let acc = 0,
        keep = 0;
      while (keep < probs.length) {
        acc += probs[keep++] / total;
        if (acc >= this.topP) break;
      }
      probs.length = keep;
      total = probs.reduce((a, b) => a + b, 0);
    }
    let r = this.rng.next() * total;
    for (let i = 0; i < probs.length; i++) {
      r -= probs[i];
      if (r < 0) return idx[i];
    }
    return idx[probs.length - 1];
  }
}

/** Indices of the k largest values, sorted descending (a bounded selection, not a full sort). */
function topKIndices(v: Float32Array, k: number): number[] {
  const heap: number[] = []; // min-heap by value
  const less = (a: number, b: number) => v[a] < v[b];
  const down = (i: number) => {
    for (;;) {
      const l = 2 * i + 1,
        r = l + 1;
      let s = i;
      if (l < heap.length && less(heap[l], heap[s])) s = l;
      if (r < heap.length && less(heap[r], heap[s])) s = r;
      if (s === i) return;
      [heap[i], heap[s]] = [heap[s], heap[i]];
      i = s;
    }
  };
  for (let i = 0; i < v.length; i++) {
    if (heap.length < k) {
      heap.push(i);
      for (let j = heap.length - 1; j > 0;) {
        const p = (j - 1) >> 1;
        if (!less(heap[j], heap[p])) break;
        [heap[j], heap[p]] = [heap[p], heap[j]];
        j = p;
      }
    } else if (v[i] > v[heap[0]]) {
      heap[0] = i;
      down(0);
    }
  }
  return heap.sort((a, b) => v[b] - v[a]);
}
