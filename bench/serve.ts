// `npm run bench:serve`: the server on the default model, through the official `openai` client on
// loopback. (1) Time to first token of the follow-up turns of multi-turn episodes (each resends the
// conversation), with the prefix cache against a server that keeps nothing (--cache-memory 0):
// same conversations, same answers. (2) A bounded load test: 16 clients, 200 requests, mixed images
// and turns, some cancelled. Figures go to docs/BENCHMARKS.md.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import OpenAI from 'openai';
import type { ChatCompletionMessageParam } from 'openai/resources/chat/completions';
import { DEFAULT_MODEL_DIR } from '../src/default-model.js';
import { makeScene } from '../src/data/scenes.js';
import { VisionLanguageModel } from '../src/engine/vlm.js';
import { SparsevilaServer } from '../src/serve/server.js';
import { machineDescription, markdownTable, probeMachine, writeSection } from './report.js';
import { runLoad, scrape, userTurn } from './serve-load.js';

const samples = fileURLToPath(new URL('../../samples/scenes', import.meta.url));
const seeds = readFileSync(path.join(samples, 'episodes.jsonl'), 'utf8')
  .trim()
  .split('\n')
  .map((l) => (JSON.parse(l) as { seed: number }).seed);
const MODEL = 'scenes-vlm';
const f1 = (x: number) => x.toFixed(1);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

const started = performance.now();
const probes = await probeMachine();
console.log(`machine limits (2 threads): read ${probes.readGBs.toFixed(1)} GB/s, peak ${probes.peakGflops.toFixed(0)} GFLOPS`);

const model = await VisionLanguageModel.load(DEFAULT_MODEL_DIR, { threads: 2 });

interface Turn {
  seed: number;
  turn: number;
  ttftMs: number;
  text: string;
  cached: number;
  prompt: number;
}

/** Every sample episode, turn by turn, streamed: the client's time to the first content chunk. */
async function episodes(cacheBytes: number, sparsevila: Record<string, unknown> | undefined): Promise<Turn[]> {
  const server = new SparsevilaServer(model, { modelId: MODEL, allowedMediaRoot: null, allowRemoteMedia: false, cacheBytes, parallel: 1 });
  const url = await server.listen('127.0.0.1', 0);
  const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'none', maxRetries: 0 });
  const out: Turn[] = [];
  try {
    for (const seed of seeds) {
      const image = `data:image/png;base64,${readFileSync(path.join(samples, `${seed}.png`)).toString('base64')}`;
      let messages: ChatCompletionMessageParam[] = [];
      for (const [t, q] of makeScene(seed).episode.entries()) {
        messages = [...messages, userTurn(t === 0, image, q.question)];
        const t0 = performance.now();
        const s = await client.chat.completions.create({
          model: MODEL,
          messages,
          temperature: 0,
          max_tokens: 8,
          stream: true,
          stream_options: { include_usage: true },
          ...(sparsevila ? { sparsevila } : {}),
        } as OpenAI.ChatCompletionCreateParamsStreaming);
        let ttft = -1,
          text = '',
          cached = 0,
          prompt = 0;
        for await (const ch of s) {
          const d = ch.choices[0]?.delta?.content;
          if (d && ttft < 0) ttft = performance.now() - t0;
          text += d ?? '';
          if (ch.usage) {
            cached = ch.usage.prompt_tokens_details?.cached_tokens ?? 0;
            prompt = ch.usage.prompt_tokens;
          }
        }
        out.push({ seed, turn: t, ttftMs: ttft, text, cached, prompt });
        messages = [...messages, { role: 'assistant', content: text }];
      }
    }
  } finally {
    await server.close();
  }
  return out;
}

const rows: (string | number)[][] = [];
for (const [label, sv] of [
  ['dense', undefined],
  ['sparsevila (0.6 / 0.75)', { method: 'sparsevila' }],
] as [string, Record<string, unknown> | undefined][]) {
  await episodes(2 ** 30, sv); // warm-up: workspaces, JIT
  const reuse = await episodes(2 ** 30, sv);
  const none = await episodes(0, sv);
  const same = reuse.every((r, i) => r.text === none[i].text);
  const fu = (xs: Turn[]) => xs.filter((x) => x.turn > 0);
  const first = (xs: Turn[]) => xs.filter((x) => x.turn === 0);
  const a = median(fu(reuse).map((x) => x.ttftMs)),
    b = median(fu(none).map((x) => x.ttftMs));
  const cachedShare = fu(reuse).reduce((s, x) => s + x.cached, 0) / fu(reuse).reduce((s, x) => s + x.prompt, 0);
  console.log(
    `${label}: follow-up TTFT ${f1(a)} ms with reuse, ${f1(b)} ms without: ${f1(b / a)}x; turn 1 ${f1(median(first(reuse).map((x) => x.ttftMs)))} / ${f1(median(first(none).map((x) => x.ttftMs)))} ms; ${(100 * cachedShare).toFixed(1)}% of follow-up prompt tokens cached; same answers: ${same}`,
  );
  rows.push([
    label,
    fu(reuse).length,
    f1(median(first(reuse).map((x) => x.ttftMs))),
    f1(b),
    f1(a),
    `**${f1(b / a)}×**`,
    `${(100 * cachedShare).toFixed(1)}%`,
    same ? 'yes' : 'NO',
  ]);
}

// Batching headroom: one decoder forward over M new rows at a 280-slot context against M forwards
// of one row (what M interleaved requests cost now, without batching).
const batchRows: (string | number)[][] = [];
{
  const d = model.decoder,
    be = model.backend;
  const cache = d.newCache();
  const ids = Array.from({ length: 300 }, (_, i) => 5 + (i % 60));
  const x = be.matrix(280, d.hidden);
  d.embed(x, ids.slice(0, 280));
  d.forward(
    x,
    cache,
    0,
    ids.slice(0, 280).map((_, i) => i),
  );
  for (const M of [1, 2, 4, 8]) {
    const y = be.matrix(M, d.hidden);
    const t: number[] = [];
    for (let r = 0; r < 300; r++) {
      d.truncateCache(cache, 280);
      d.embed(y, ids.slice(0, M));
      const t0 = performance.now();
      d.forward(
        y,
        cache,
        280,
        Array.from({ length: M }, (_, i) => 280 + i),
      );
      t.push(performance.now() - t0);
    }
    be.free(y);
    batchRows.push([M, median(t).toFixed(3), (median(t) / M).toFixed(3)]);
  }
  const one = Number(batchRows[0][1]);
  for (const r of batchRows) r.push(`${f1((one * Number(r[0])) / Number(r[1]))}×`);
  d.freeCache(cache);
  be.free(x);
  console.log(markdownTable(['rows per forward', 'ms per forward', 'ms per row', 'vs one row per forward'], batchRows));
}

// The load test: its own server, default settings but 2 running at once.
const server = new SparsevilaServer(model, { modelId: MODEL, allowedMediaRoot: null, allowRemoteMedia: false, parallel: 2, maxQueue: 64 });
const url = await server.listen('127.0.0.1', 0);
const mem = (m: Record<string, number>) =>
  `RSS ${f1(m.process_resident_memory_bytes / 2 ** 20)} MiB, kernels ${f1(m.sparsevila_wasm_used_bytes / 2 ** 20)} MiB of which cache ${f1(m.sparsevila_cache_bytes / 2 ** 20)} MiB, K/V of running requests ${m.sparsevila_kv_active_bytes} B`;
const load = (requests: number) =>
  runLoad({ baseURL: `${url}/v1`, model: MODEL, clients: 16, requests, samples, seeds, cancelEvery: 20, eosTokenId: model.eosTokenIds[0] });
await load(32); // warm-up
server.cache.clear();
const r = await load(200);
server.cache.clear();
const cleared = await scrape(`${url}/v1`);
await server.close();
await model.close();
const loadRows = [
  ['requests (clients)', `${r.requests} (16)`],
  ['failed', r.failed],
  ['cancelled mid-answer', r.cancelled],
  ['answers right', `${r.correct} of ${r.answered}`],
  ['latency p50 / p99', `${f1(r.p50Ms)} / ${f1(r.p99Ms)} ms`],
  ['throughput', `${f1(r.requestsPerSecond)} requests/s, ${f1(r.completionTokensPerSecond)} tokens/s`],
  ['prompt tokens cached', `${r.cachedTokens} of ${r.promptTokens} (${((100 * r.cachedTokens) / r.promptTokens).toFixed(1)}%)`],
  ['before', mem(r.metricsBefore)],
  ['after', mem(r.metricsAfter)],
  ['after clearing the cache', mem(cleared)],
  ['K/V freed by cancelled requests', `${r.metricsAfter.sparsevila_kv_released_total - (r.metricsBefore.sparsevila_kv_released_total ?? 0)} requests`],
];
for (const [k, v] of loadRows) console.log(`${k}: ${v}`);
for (const f of r.failures) console.log(f);
const wallS = (performance.now() - started) / 1000;
console.log(`wall time ${f1(wallS)} s`);

const body = [
  '## Serving (`npm run bench:serve`)',
  '',
  `Machine: ${machineDescription([`probes at 2 threads: read ${probes.readGBs.toFixed(1)} GB/s, peak ${probes.peakGflops.toFixed(0)} GFLOPS`])}. Run on ${new Date().toISOString().slice(0, 10)}; this part took ${f1(wallS / 60)} min.`,
  '',
  `\`sparsevila serve\` on the default model, through the official \`openai\` client over loopback. Time to first token (TTFT): the client's time from sending a streamed request to its first content chunk. ` +
    `Each of the ${seeds.length} sample episodes is asked turn by turn, every request resending the whole conversation with its image as a data URL (as the stateless API does); ` +
    'with reuse the server keeps images and K/V across requests (prefix cache, 1 GiB), without it keeps nothing (`--cache-memory 0`), so every turn decodes and encodes the image and prefills the whole conversation. ' +
    'Greedy answers, compared between the two servers. One warm-up pass first.',
  '',
  markdownTable(
    [
      'method',
      'follow-up turns',
      'turn 1 TTFT (ms)',
      'follow-up TTFT, no reuse (ms)',
      'follow-up TTFT, reuse (ms)',
      'speed-up',
      'follow-up prompt cached',
      'same answers',
    ],
    rows,
  ),
  '',
  '### Batching headroom',
  '',
  'Several requests decoding at once now interleave their steps, one row per forward pass. One forward over M new rows at a 280-slot context (the GEMM path) against one row (the GEMV path), on the default model: ' +
    'what batching M sequences into one pass could save at most on this machine (their attention would still read each sequence’s own cache).',
  '',
  markdownTable(['rows per forward', 'ms per forward', 'ms per row', 'vs one row per forward'], batchRows),
  '',
  '### Load test',
  '',
  'Sixteen clients share 200 requests on one server (`--parallel 2`, queue 64): each holds multi-turn conversations about the 8 sample scenes (resending the history), a third streamed, every 20th streamed with EOS banned (`logit_bias`) and cancelled after its first token. ' +
    'Latency: request to last byte, answered requests. Memory from `/metrics`; the cache keeps what its budget allows by design, so the kernels’ memory is compared with the cache’s bytes and after clearing it. The process RSS keeps its high-water mark: a WebAssembly memory grows and never shrinks, so the kernels reuse its freed blocks.',
  '',
  markdownTable(['', ''], loadRows),
].join('\n');
console.log(`wrote ${writeSection('serve', body)}`);
