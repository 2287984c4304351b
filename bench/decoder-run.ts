// The decoder benchmark's run: load a Llama-shaped decoder from a tensor source (random weights of
// a real shape) and time prefill and decode. Shared by bench/model.ts (bf16) and bench/awq.ts
// (4-bit).
import { parseConfig } from '../src/model/registry.js';
import { CausalLmConfig } from '../src/model/causal-lm/family.js';
import { WasmBackend } from '../src/kernels/wasm-backend.js';
import { LlamaDecoder } from '../src/model/llama.js';
import { WeightLoader, WeightLoaderOptions } from '../src/model/weights.js';
import { LlamaShape, RandomLlamaSource, llamaConfigJson } from './random-weights.js';

export interface Reference {
  /** llama.cpp prefill tok/s by prompt length. */
  prefill: Record<number, number>;
  /** llama.cpp decode tok/s by context length (0 stands for our shortest context, see CONTEXTS). */
  decode: Record<number, number>;
}

export interface ModelSpec {
  key: string;
  name: string;
  label: string;
  shape: LlamaShape;
  ref: Reference;
  /** Prompt length of the untimed warm-up prefill. */
  warmupTokens: number;
  /** Prompt lengths to time (default PROMPTS). */
  prompts?: number[];
  /** Timed prefill runs per prompt length (the median is reported). */
  prefillReps: number;
  /** Untimed and timed decode steps per context. */
  decodeWarmup: number;
  decodeSteps: number;
}

export const PROMPTS = [256, 1024];
/** Decode contexts; llama.cpp's short-context figure is at context 0, ours at 256. */
export const CONTEXTS = [256, 2048];

export interface RunResult {
  spec: ModelSpec;
  threads: number;
  weightBytes: number;
  loadS: number;
  prefill: { tokens: number; ms: number; tokS: number }[];
  decode: { ctx: number; msPerToken: number; tokS: number; bestMs: number }[];
  /** Where a decode step's time goes at the first context (ms per step by part), when asked. */
  profile?: { part: string; ms: number }[];
  /** Peak resident set of the process so far (bytes). */
  maxRss: number;
  /** Largest wasm bytes in use / committed seen during the run, and the number of memories. */
  wasmUsed: number;
  wasmCommitted: number;
  places: number;
  error?: string;
}

/** A small deterministic generator (LCG) for token ids and K/V values. */
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32;
}

function checkFinite(values: Float32Array, what: string): void {
  for (let i = 0; i < values.length; i++) {
    if (!Number.isFinite(values[i])) throw new Error(`${what}: non-finite logit ${values[i]} at ${i}`);
  }
}

export const simd = (process.env.SPARSEVILA_SIMD as 'simd' | 'relaxed' | undefined) ?? 'auto';
/** The kernel build the last run used. */
export let level = '';

/**
 * Loads the decoder of `spec` from `source` (default: random bf16 weights of its shape) and times
 * prefill at spec.prompts (default PROMPTS) and decode at CONTEXTS. `loader`: options of the weight loader (e.g. W4A8).
 */
export async function benchModel(
  spec: ModelSpec,
  threads: number,
  source: RandomLlamaSource = new RandomLlamaSource(spec.shape, spec.label),
  loader: WeightLoaderOptions = {},
  opts: { profileSteps?: number } = {},
): Promise<RunResult> {
  const be = await WasmBackend.create({ threads, simd });
  level = be.simdLevel;
  const result: RunResult = {
    spec,
    threads,
    weightBytes: source.totalBytes,
    loadS: 0,
    prefill: [],
    decode: [],
    maxRss: 0,
    wasmUsed: 0,
    wasmCommitted: 0,
    places: 0,
  };
  const sample = () => {
    const u = be.memoryUsage();
    result.wasmUsed = Math.max(
      result.wasmUsed,
      u.reduce((a, p) => a + p.usedBytes, 0),
    );
    result.wasmCommitted = Math.max(
      result.wasmCommitted,
      u.reduce((a, p) => a + p.committedBytes, 0),
    );
    result.places = u.length;
  };
  const log = (s: string) => console.log(`  [${spec.key}, ${threads} thread${threads > 1 ? 's' : ''}] ${s}`);
  try {
    const config = parseConfig(llamaConfigJson(spec.shape), spec.label).config as CausalLmConfig;
    if (config.modelType !== 'llama') throw new Error(`${spec.label}: expected a llama config`);
    const t0 = performance.now();
    const decoder = await LlamaDecoder.load(new WeightLoader(be, source, spec.label, loader), config, {
      prefix: 'model.',
      lmHead: config.tieWordEmbeddings ? null : 'lm_head.weight',
    });
    result.loadS = (performance.now() - t0) / 1000;
    sample();
    log(
      `loaded ${(source.totalBytes / 2 ** 30).toFixed(2)} GiB of bf16 weights in ${result.loadS.toFixed(1)} s over ${be.places} memor${be.places > 1 ? 'ies' : 'y'}`,
    );
    const H = config.hiddenSize,
      vocab = config.vocabSize,
      kvw = config.numKeyValueHeads * config.headDim;
    const nextId = (() => {
      const r = rng(0xc0ffee);
      return () => Math.floor(r() * vocab);
    })();

    const prefill = (n: number): number => {
      const x = be.matrix(n, H, decoder.place);
      const cache = decoder.newCache();
      try {
        const ids = Array.from({ length: n }, nextId);
        const positions = Int32Array.from({ length: n }, (_, i) => i);
        const t = performance.now();
        decoder.embed(x, ids);
        const logits = decoder.forward(x, cache, 0, positions);
        const ms = performance.now() - t;
        checkFinite(logits, `${spec.label} prefill ${n}`);
        sample();
        return ms;
      } finally {
        decoder.freeCache(cache);
        be.free(x);
      }
    };
    prefill(spec.warmupTokens);
    for (const n of spec.prompts ?? PROMPTS) {
      const times: number[] = [];
      for (let r = 0; r < spec.prefillReps; r++) times.push(prefill(n));
      times.sort((a, b) => a - b);
      const ms = times[Math.floor(times.length / 2)];
      result.prefill.push({ tokens: n, ms, tokS: (n * 1000) / ms });
      log(`prefill ${n} tokens: ${((n * 1000) / ms).toFixed(1)} tok/s (${(ms / 1000).toFixed(2)} s${times.length > 1 ? `, median of ${times.length}` : ''})`);
    }

    for (const ctx of CONTEXTS) {
      const cache = decoder.newCache();
      const y = be.matrix(1, H, decoder.place);
      try {
        // Fill slots [0, ctx) of every layer with random K/V rows instead of prefilling ctx tokens.
        const r = rng(0xbeef + ctx);
        const kv = Float32Array.from({ length: ctx * kvw }, () => 2 * r() - 1);
        cache.parts.forEach((part, i) => {
          const place = decoder.place + i; // one cache part per memory place, in order
          const k = be.matrix(ctx, kvw, place),
            v = be.matrix(ctx, kvw, place);
          try {
            be.write(k, kv);
            be.write(
              v,
              kv.map((a) => -a),
            );
            for (let l = 0; l < part.layers; l++) be.kvWrite(part, l, k, v, 0);
          } finally {
            be.free(k);
            be.free(v);
          }
        });
        const step = (slot: number): Float32Array => {
          decoder.embed(y, [nextId()]);
          return decoder.forward(y, cache, slot, [slot]);
        };
        // Warm up for at least a second as well: two threads reach their steady speed only after a
        // fraction of a second of sustained work on this machine (see time() in report.ts).
        const w0 = performance.now();
        for (let i = 0; i < spec.decodeWarmup || performance.now() - w0 < 1000; i++) {
          step(ctx);
          decoder.truncateCache(cache, ctx);
        }
        const steps: number[] = [];
        let logits: Float32Array = new Float32Array(0);
        const t = performance.now();
        for (let i = 0; i < spec.decodeSteps; i++) {
          const s0 = performance.now();
          logits = step(ctx + i);
          steps.push(performance.now() - s0);
        }
        const total = performance.now() - t;
        checkFinite(logits, `${spec.label} decode at ${ctx}`);
        sample();
        if (opts.profileSteps && ctx === CONTEXTS[0]) {
          const vocab = config.vocabSize;
          result.profile = profileCalls(
            be,
            (name, args) => {
              if (name !== 'matmul') return name;
              const w = args[2] as { dtype: string; outFeatures: number };
              return w.outFeatures === vocab ? `lm_head (${w.dtype})` : `decoder linears (${w.dtype})`;
            },
            () => {
              for (let i = 0; i < opts.profileSteps!; i++) {
                step(ctx + spec.decodeSteps);
                decoder.truncateCache(cache, ctx + spec.decodeSteps);
              }
            },
          ).map((p) => ({ part: p.part, ms: p.ms / opts.profileSteps! }));
        }
        const d = { ctx, msPerToken: total / spec.decodeSteps, tokS: (spec.decodeSteps * 1000) / total, bestMs: Math.min(...steps) };
        result.decode.push(d);
        log(
          `decode at context ${ctx}: ${d.tokS.toFixed(1)} tok/s (${d.msPerToken.toFixed(1)} ms/token over ${spec.decodeSteps} steps, best step ${d.bestMs.toFixed(1)} ms)`,
        );
      } finally {
        decoder.freeCache(cache);
        be.free(y);
      }
    }
    if (be.stalls > 0) log(`note: ${be.stalls} parallel calls were stalled by a descheduled worker (another process holds a core?)`);
  } catch (e) {
    result.error = (e as Error).message;
    log(`FAILED: ${result.error}`);
  } finally {
    sample();
    result.maxRss = process.resourceUsage().maxRSS * 1024;
    await be.close();
  }
  return result;
}

/**
 * Runs `fn` with every public method of the backend timed (outermost calls only), grouped by
 * `part(name, args)`; the time outside them is "the rest (JS)". Totals in ms, largest first.
 */
function profileCalls(be: WasmBackend, part: (name: string, args: unknown[]) => string, fn: () => void): { part: string; ms: number }[] {
  const times = new Map<string, number>();
  const target = be as unknown as Record<string, unknown>;
  const patched: string[] = [];
  let depth = 0;
  for (const name of Object.getOwnPropertyNames(Object.getPrototypeOf(be))) {
    const f = target[name];
    if (name === 'constructor' || typeof f !== 'function') continue;
    patched.push(name);
    target[name] = function (this: unknown, ...args: unknown[]) {
      if (depth > 0) return (f as (...a: unknown[]) => unknown).apply(this, args);
      depth++;
      const t = performance.now();
      try {
        return (f as (...a: unknown[]) => unknown).apply(this, args);
      } finally {
        depth--;
        const key = part(name, args);
        times.set(key, (times.get(key) ?? 0) + performance.now() - t);
      }
    };
  }
  const t0 = performance.now();
  try {
    fn();
  } finally {
    for (const name of patched) delete target[name];
  }
  const total = performance.now() - t0;
  const inCalls = [...times.values()].reduce((a, b) => a + b, 0);
  return [...times.entries(), ['the rest (JS)', total - inCalls] as [string, number]].map(([p, ms]) => ({ part: p, ms })).sort((a, b) => b.ms - a.ms);
}
