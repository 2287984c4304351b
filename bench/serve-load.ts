// A bounded load test of a running server through the official `openai` client: `clients`
// concurrent clients share `requests` requests. Each client holds multi-turn conversations about
// the sample scenes (resending the history every turn, as the stateless API does), some streamed,
// every `cancelEvery`-th request cancelled after its first streamed token. It stops by itself and
// reports latency percentiles, throughput, failures and what the server's /metrics say before and
// after (memory, K/V held).
import { readFileSync } from 'node:fs';
import path from 'node:path';
import OpenAI from 'openai';
import type { ChatCompletionMessageParam } from 'openai/resources/chat/completions';
import { makeScene } from '../src/data/scenes.js';
import { normaliseAnswer } from '../src/eval/harness.js';

export interface LoadOptions {
  baseURL: string;
  model: string;
  apiKey?: string;
  clients: number;
  requests: number;
  /** Folder of <seed>.png scenes and their seeds. */
  samples: string;
  seeds: number[];
  /** Every n-th request is streamed and cancelled after its first token (0: none). */
  cancelEvery: number;
  /** Token id the cancelled requests ban (EOS), so that they are still generating when cancelled. */
  eosTokenId: number;
}

export interface LoadReport {
  requests: number;
  failed: number;
  failures: string[];
  cancelled: number;
  correct: number;
  answered: number;
  wallMs: number;
  p50Ms: number;
  p99Ms: number;
  requestsPerSecond: number;
  completionTokensPerSecond: number;
  cachedTokens: number;
  promptTokens: number;
  metricsBefore: Record<string, number>;
  metricsAfter: Record<string, number>;
}

/** The unlabelled samples of a Prometheus text page (labelled ones summed under their name). */
export async function scrape(baseURL: string, apiKey?: string): Promise<Record<string, number>> {
  const res = await fetch(`${baseURL.replace(/\/v1$/, '')}/metrics`, { headers: apiKey ? { authorization: `Bearer ${apiKey}` } : {} });
  const out: Record<string, number> = {};
  for (const line of (await res.text()).split('\n')) {
    const m = /^([a-z_]+)(\{[^}]*\})? (\S+)$/.exec(line);
    if (m) out[m[1]] = (out[m[1]] ?? 0) + Number(m[3]);
  }
  return out;
}

const pct = (xs: number[], p: number): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.min(s.length - 1, Math.floor(p * s.length))] : 0;
};

/** A user turn as a client sends it: the image and the question first, the question alone in later turns. */
export function userTurn(first: boolean, imageUrl: string, question: string): ChatCompletionMessageParam {
  return {
    role: 'user',
    content: first
      ? [
          { type: 'image_url', image_url: { url: imageUrl } },
          { type: 'text', text: question },
        ]
      : question,
  };
}

export async function runLoad(o: LoadOptions): Promise<LoadReport> {
  const client = new OpenAI({ baseURL: o.baseURL, apiKey: o.apiKey ?? 'none', maxRetries: 0, timeout: 120_000 });
  const images = new Map<number, string>();
  for (const s of o.seeds) images.set(s, `data:image/png;base64,${readFileSync(path.join(o.samples, `${s}.png`)).toString('base64')}`);
  const metricsBefore = await scrape(o.baseURL, o.apiKey);
  let next = 0;
  const lat: number[] = [];
  const failures: string[] = [];
  let cancelled = 0,
    correct = 0,
    answered = 0,
    completion = 0,
    cached = 0,
    prompt = 0;
  const t0 = performance.now();
  const worker = async (c: number) => {
    let conv = 0;
    let history: ChatCompletionMessageParam[] = [];
    let seed = o.seeds[c % o.seeds.length];
    let turn = 0;
    for (;;) {
      const i = next++;
      if (i >= o.requests) return;
      const episode = makeScene(seed).episode;
      const q = episode[turn];
      const messages: ChatCompletionMessageParam[] = [...history, userTurn(turn === 0, images.get(seed)!, q.question)];
      const cancel = o.cancelEvery > 0 && i % o.cancelEvery === o.cancelEvery - 1;
      const stream = cancel || i % 3 === 0;
      const r0 = performance.now();
      try {
        if (cancel) {
          const ac = new AbortController();
          const s = await client.chat.completions.create(
            { model: o.model, messages, temperature: 0, max_tokens: 200, stream: true, logit_bias: { [o.eosTokenId]: -100 } },
            { signal: ac.signal },
          );
          try {
            for await (const ch of s) {
              if (ch.choices[0]?.delta?.content) {
                ac.abort();
                break;
              }
            }
          } catch (e) {
            if (!(e instanceof OpenAI.APIUserAbortError) && (e as Error).name !== 'AbortError') throw e;
          }
          cancelled++;
          continue; // the conversation goes on without this turn
        }
        let text = '';
        if (stream) {
          const s = await client.chat.completions.create({
            model: o.model,
            messages,
            temperature: 0,
            max_tokens: 8,
            stream: true,
            stream_options: { include_usage: true },
          });
          for await (const ch of s) {
            text += ch.choices[0]?.delta?.content ?? '';
            if (ch.usage) {
              completion += ch.usage.completion_tokens;
              prompt += ch.usage.prompt_tokens;
              cached += ch.usage.prompt_tokens_details?.cached_tokens ?? 0;
            }
          }
        } else {
          const r = await client.chat.completions.create({ model: o.model, messages, temperature: 0, max_tokens: 8 });
          text = r.choices[0].message.content ?? '';
          completion += r.usage?.completion_tokens ?? 0;
          prompt += r.usage?.prompt_tokens ?? 0;
          cached += r.usage?.prompt_tokens_details?.cached_tokens ?? 0;
        }
        lat.push(performance.now() - r0);
        answered++;
        if (normaliseAnswer(text) === normaliseAnswer(q.answer)) correct++;
        history = [...messages, { role: 'assistant', content: text }];
        turn++;
        if (turn >= episode.length) {
          conv++;
          turn = 0;
          history = [];
          seed = o.seeds[(c + conv * o.clients) % o.seeds.length];
        }
      } catch (e) {
        failures.push(`request ${i}: ${(e as Error).message}`);
      }
    }
  };
  await Promise.all(Array.from({ length: o.clients }, (_, c) => worker(c)));
  const wallMs = performance.now() - t0;
  // Cancelled requests are noticed by the server when their connection closes: give it a moment.
  let metricsAfter = await scrape(o.baseURL, o.apiKey);
  for (let k = 0; k < 100 && (metricsAfter.sparsevila_requests_running > 0 || metricsAfter.sparsevila_kv_active_bytes > 0); k++) {
    await new Promise((r) => setTimeout(r, 20));
    metricsAfter = await scrape(o.baseURL, o.apiKey);
  }
  return {
    requests: o.requests,
    failed: failures.length,
    failures,
    cancelled,
    correct,
    answered,
    wallMs,
    p50Ms: pct(lat, 0.5),
    p99Ms: pct(lat, 0.99),
    requestsPerSecond: (answered + cancelled) / (wallMs / 1000),
    completionTokensPerSecond: completion / (wallMs / 1000),
    cachedTokens: cached,
    promptTokens: prompt,
    metricsBefore,
    metricsAfter,
  };
}
