// The OpenAI-compatible server, through the official `openai` client on loopback, on the default
// model: answers (JSON and SSE) are right; a resent conversation reports its image and history as
// cached and prefills only the new turn; sparsity fields change the visual counts; malformed
// requests get 4xx in OpenAI's error shape and the server stays up; files outside the media root
// are never read; a full queue answers 429; a bounded load test ends with nothing held.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import OpenAI from 'openai';
import type { ChatCompletionMessageParam } from 'openai/resources/chat/completions';
import { DEFAULT_MODEL_DIR } from '../src/default-model.js';
import { makeScene } from '../src/data/scenes.js';
import { VisionLanguageModel } from '../src/engine/vlm.js';
import { normaliseAnswer } from '../src/eval/harness.js';
import { SparsevilaServer, ServeOptions } from '../src/serve/server.js';
import { mediaRoot } from '../src/serve/media.js';
import { runLoad, scrape, userTurn } from '../bench/serve-load.js';
import { Rng, tempDir } from './helpers.js';

const samples = fileURLToPath(new URL('../../samples/scenes', import.meta.url));
const cli = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));
const png = (seed: number) => fs.readFileSync(path.join(samples, `${seed}.png`));
const dataUrl = (seed: number) => `data:image/png;base64,${png(seed).toString('base64')}`;
const MODEL = 'scenes-vlm';

describe('sparsevila serve', () => {
  let model: VisionLanguageModel;
  let server: SparsevilaServer;
  let base: string;
  let client: OpenAI;
  let root: string;
  let outside: string;
  const start = async (opts: Partial<ServeOptions> = {}) => {
    const s = new SparsevilaServer(model, { modelId: MODEL, allowedMediaRoot: mediaRoot(root), allowRemoteMedia: false, maxBodyBytes: 2 ** 20, ...opts });
    return { s, url: await s.listen('127.0.0.1', 0) };
  };
  before(async () => {
    model = await VisionLanguageModel.load(DEFAULT_MODEL_DIR, { threads: 2 });
    root = tempDir('serve-root-');
    outside = tempDir('serve-outside-');
    fs.copyFileSync(path.join(samples, '3000000.png'), path.join(root, 'scene.png'));
    fs.copyFileSync(path.join(samples, '3000001.png'), path.join(outside, 'secret.png'));
    fs.symlinkSync(path.join(outside, 'secret.png'), path.join(root, 'link.png'));
    fs.writeFileSync(path.join(root, 'not-an-image.png'), 'hello');
    ({ s: server, url: base } = await start());
    client = new OpenAI({ baseURL: `${base}/v1`, apiKey: 'none', maxRetries: 0 });
  });
  after(async () => {
    await server.close();
    await model.close();
  });

  const ask = (url: string, question: string, extra: Record<string, unknown> = {}) =>
    client.chat.completions.create({
      model: MODEL,
      temperature: 0,
      max_tokens: 8,
      messages: [
        {
          role: 'user',
          content: [
            { type: 'image_url', image_url: { url } },
            { type: 'text', text: question },
          ],
        },
      ],
      ...extra,
    });

  it('answers about an image, as JSON and as a stream with usage', async () => {
    const q = makeScene(3000002).episode[1];
    const r = await ask(dataUrl(3000002), q.question);
    assert.equal(normaliseAnswer(r.choices[0].message.content ?? ''), normaliseAnswer(q.answer));
    assert.deepEqual([r.object, r.model, r.choices[0].finish_reason, r.choices[0].message.role], ['chat.completion', MODEL, 'stop', 'assistant']);
    const u = r.usage as OpenAI.CompletionUsage & { sparsevila: { visual_tokens_in: number; visual_tokens_kept: number; method: string } };
    assert.equal(u.total_tokens, u.prompt_tokens + u.completion_tokens);
    assert.deepEqual([u.sparsevila.visual_tokens_in, u.sparsevila.visual_tokens_kept, u.sparsevila.method], [256, 256, 'dense']);

    const q3 = makeScene(3000003).episode[0];
    const stream = await client.chat.completions.create({
      model: MODEL,
      temperature: 0,
      max_tokens: 8,
      stream: true,
      stream_options: { include_usage: true },
      messages: [
        {
          role: 'user',
          content: [
            { type: 'image_url', image_url: { url: dataUrl(3000003) } },
            { type: 'text', text: q3.question },
          ],
        },
      ],
    });
    let text = '',
      finish: string | null = null,
      usage: OpenAI.CompletionUsage | null | undefined = null,
      chunks = 0;
    for await (const ch of stream) {
      chunks++;
      text += ch.choices[0]?.delta?.content ?? '';
      finish = ch.choices[0]?.finish_reason ?? finish;
      if (ch.usage) usage = ch.usage;
    }
    const want = await model.generate({ images: [path.join(samples, '3000003.png')], prompt: q3.question }, { maxNewTokens: 8 });
    assert.equal(text, want.text);
    assert.equal(normaliseAnswer(text), normaliseAnswer(q3.answer));
    assert.equal(finish, 'stop');
    assert.ok(chunks >= 3, `${chunks} chunks`);
    assert.equal(usage?.completion_tokens, want.ids.length);
  });

  it('a resent conversation reuses its image and history: only the new turn is prefilled', async () => {
    const seed = 3000004,
      episode = makeScene(seed).episode;
    let messages: ChatCompletionMessageParam[] = [];
    let before = await scrape(base);
    for (const [t, q] of episode.entries()) {
      messages = [...messages, userTurn(t === 0, dataUrl(seed), q.question)];
      const r = await client.chat.completions.create({ model: MODEL, temperature: 0, max_tokens: 8, messages });
      const text = r.choices[0].message.content ?? '';
      assert.equal(normaliseAnswer(text), normaliseAnswer(q.answer), `turn ${t + 1}: ${q.question}`);
      const u = r.usage as OpenAI.CompletionUsage & { sparsevila: { prefilled_tokens: number; cache: { images_cached: number; reuse: string } } };
      const cached = u.prompt_tokens_details?.cached_tokens ?? -1;
      assert.equal(u.sparsevila.prefilled_tokens, u.prompt_tokens - cached, `turn ${t + 1}`);
      const after = await scrape(base);
      if (t === 0) assert.ok(cached < 10, `turn 1: ${cached} cached (only text before the image may be)`);
      else {
        // The image (256 tokens) and every earlier turn: the new turn is only a few words.
        assert.ok(cached > 256 && u.prompt_tokens - cached < 20, `turn ${t + 1}: ${cached} of ${u.prompt_tokens} cached`);
        assert.deepEqual([u.sparsevila.cache.images_cached, u.sparsevila.cache.reuse], [1, 'extend']);
        assert.equal(after.sparsevila_images_encoded_total, before.sparsevila_images_encoded_total, 'not encoded again');
        assert.ok(after.sparsevila_prefix_cache_hits_total > before.sparsevila_prefix_cache_hits_total);
      }
      before = after;
      messages = [...messages, { role: 'assistant', content: text }];
    }
  });

  it('sparsity fields change the visual token counts, and a uuid stands for an image sent before', async () => {
    const q = makeScene(3000005).episode[0].question;
    type U = { sparsevila: { visual_tokens_kept: number; visual_tokens_retrieved: number; method: string; cache: { images_cached: number } } };
    const dense = (await ask(dataUrl(3000005), q)).usage as unknown as U;
    const sv = (await ask(dataUrl(3000005), q, { sparsevila: { method: 'sparsevila', prefill_sparsity: 0.5, decode_sparsity: 0.5 } })).usage as unknown as U;
    const paper = (await ask(dataUrl(3000005), q, { sparsevila: { method: 'sparsevila' } })).usage as unknown as U;
    const vz = (await ask(dataUrl(3000005), q, { sparsevila: { method: 'visionzip', visual_budget: 32 } })).usage as unknown as U;
    assert.deepEqual([dense.sparsevila.visual_tokens_kept, dense.sparsevila.visual_tokens_retrieved], [256, 256]);
    assert.deepEqual([sv.sparsevila.visual_tokens_kept, sv.sparsevila.visual_tokens_retrieved], [128, 64]);
    assert.deepEqual(
      [paper.sparsevila.visual_tokens_kept, paper.sparsevila.visual_tokens_retrieved],
      [256 - Math.floor(0.6 * 256), 103 - Math.floor(0.75 * 103)],
    );
    assert.equal(vz.sparsevila.visual_tokens_kept, 32);
    const byId = await client.chat.completions.create({
      model: MODEL,
      temperature: 0,
      max_tokens: 8,
      messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: dataUrl(3000006) }, uuid: 'scene-6' } as never, { type: 'text', text: q }] }],
    });
    const again = await client.chat.completions.create({
      model: MODEL,
      temperature: 0,
      max_tokens: 8,
      messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: '' }, uuid: 'scene-6' } as never, { type: 'text', text: q }] }],
    });
    assert.equal(again.choices[0].message.content, byId.choices[0].message.content);
    assert.equal((again.usage as unknown as U).sparsevila.cache.images_cached, 1);
  });

  it("malformed requests get a 4xx in OpenAI's error shape, and the server stays up", async () => {
    const post = (body: string, headers: Record<string, string> = { 'content-type': 'application/json' }) =>
      fetch(`${base}/v1/chat/completions`, { method: 'POST', headers, body });
    const img = (url: string) => ({
      model: MODEL,
      messages: [
        {
          role: 'user',
          content: [
            { type: 'image_url', image_url: { url } },
            { type: 'text', text: 'What shape is in the top left?' },
          ],
        },
      ],
    });
    const cases: [string, () => Promise<Response>, number, RegExp, string | null][] = [
      ['bad JSON', () => post('{"model": '), 400, /not valid JSON/, null],
      ['not an object', () => post('[1, 2]'), 400, /expected a JSON object/, 'body'],
      ['wrong content type', () => post('model=x', { 'content-type': 'application/x-www-form-urlencoded' }), 415, /must be JSON/, null],
      ['messages of the wrong type', () => post(JSON.stringify({ model: MODEL, messages: 'hi' })), 400, /messages: expected an array/, 'messages'],
      [
        'temperature of the wrong type',
        () => post(JSON.stringify({ model: MODEL, temperature: 'hot', messages: [{ role: 'user', content: 'hi' }] })),
        400,
        /temperature/,
        'temperature',
      ],
      ['a tool role', () => post(JSON.stringify({ model: MODEL, messages: [{ role: 'tool', content: 'x' }] })), 400, /role/, 'messages[0].role'],
      ['an unknown model', () => post(JSON.stringify({ model: 'gpt-9', messages: [{ role: 'user', content: 'hi' }] })), 404, /does not exist/, 'model'],
      [
        'an unknown method',
        () => post(JSON.stringify({ model: MODEL, sparsevila: { method: 'magic' }, messages: [{ role: 'user', content: 'hi' }] })),
        400,
        /sparsevila.method/,
        'sparsevila.method',
      ],
      [
        'a knob without its method',
        () => post(JSON.stringify({ model: MODEL, sparsevila: { decode_sparsity: 0.5 }, messages: [{ role: 'user', content: 'hi' }] })),
        400,
        /sparsevila.decode_sparsity needs sparsevila.method sparsevila/,
        null,
      ],
      [
        'an image that is not an image',
        () => post(JSON.stringify(img(`data:image/png;base64,${Buffer.from('not a png at all').toString('base64')}`))),
        400,
        /image/,
        null,
      ],
      ['bad base64', () => post(JSON.stringify(img('data:image/png;base64,@@@@'))), 400, /not valid base64/, 'messages[0].content[0].image_url.url'],
      [
        'an oversized body',
        () => post(JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'x'.repeat(2 ** 20) }] })),
        413,
        /larger than the 1048576 bytes/,
        null,
      ],
      [
        'a path outside the media root',
        () => post(JSON.stringify(img(pathToFileURL(path.join(outside, 'secret.png')).href))),
        403,
        /outside the allowed media root/,
        'messages[0].content[0].image_url.url',
      ],
      [
        'a .. escape',
        () => post(JSON.stringify(img(`file://${root}/../${path.basename(outside)}/secret.png`))),
        403,
        /outside the allowed media root/,
        'messages[0].content[0].image_url.url',
      ],
      [
        'a symlink out of the root',
        () => post(JSON.stringify(img(pathToFileURL(path.join(root, 'link.png')).href))),
        403,
        /outside the allowed media root/,
        'messages[0].content[0].image_url.url',
      ],
      ['a file that is not an image', () => post(JSON.stringify(img(pathToFileURL(path.join(root, 'not-an-image.png')).href))), 400, /image/, null],
      [
        'a remote URL when not allowed',
        () => post(JSON.stringify(img('http://127.0.0.1:9/x.png'))),
        400,
        /--allow-remote-media/,
        'messages[0].content[0].image_url.url',
      ],
      [
        'too many tokens asked',
        () => post(JSON.stringify({ model: MODEL, max_tokens: 5000, messages: [{ role: 'user', content: 'hi' }] })),
        400,
        /context window is 1024/,
        'max_tokens',
      ],
      [
        'a prompt past the window',
        () => post(JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'red '.repeat(1100) }] })),
        400,
        /context window is 1024 tokens/,
        null,
      ],
      [
        'an image in an assistant message',
        () =>
          post(
            JSON.stringify({
              model: MODEL,
              messages: [
                { role: 'assistant', content: [{ type: 'image_url', image_url: { url: dataUrl(3000000) } }] },
                { role: 'user', content: 'hi' },
              ],
            }),
          ),
        400,
        /only user messages may hold images/,
        'messages[0].content[0]',
      ],
      [
        'an unknown uuid',
        () =>
          post(
            JSON.stringify({
              model: MODEL,
              messages: [
                {
                  role: 'user',
                  content: [
                    { type: 'image_url', uuid: 'nope' },
                    { type: 'text', text: 'hi' },
                  ],
                },
              ],
            }),
          ),
        400,
        /no image with uuid "nope" is cached/,
        null,
      ],
      ['n > 1', () => post(JSON.stringify({ model: MODEL, n: 2, messages: [{ role: 'user', content: 'hi' }] })), 400, /\[1, 1\]/, 'n'],
      ['an unknown route', () => fetch(`${base}/v1/completions`, { method: 'POST' }), 404, /no route/, null],
    ];
    for (const [what, send, status, message, param] of cases) {
      const res = await send();
      const body = (await res.json()) as { error: { message: string; type: string; param: string | null; code: string | null } };
      assert.equal(res.status, status, `${what}: ${JSON.stringify(body)}`);
      assert.match(body.error.message, message, what);
      assert.equal(typeof body.error.type, 'string', what);
      if (param !== null) assert.equal(body.error.param, param, what);
    }
    // Nothing outside the root was read, and the server still answers.
    const ok = await ask(pathToFileURL(path.join(root, 'scene.png')).href, makeScene(3000000).episode[1].question);
    assert.equal(normaliseAnswer(ok.choices[0].message.content ?? ''), normaliseAnswer(makeScene(3000000).episode[1].answer));
    assert.equal((await fetch(`${base}/health`)).status, 200);
    const err = await client.chat.completions.create({ model: 'nope', messages: [{ role: 'user', content: 'hi' }] }).catch((e: unknown) => e);
    assert.ok(err instanceof OpenAI.NotFoundError, String(err));
  });

  // The reliability fuzzing, over HTTP: seeded mutations of a valid request (a field set to a value
  // of another type or range, a part removed, an image's bytes broken or lying, a URL to a device
  // or outside the root, a body cut short, nested deep or not JSON). Each answer is a 200 or a 4xx in
  // OpenAI's error shape, never a 5xx or an engine error's words; the server stays up.
  it('fuzzed requests never get a 5xx, and the server stays up', async () => {
    const rng = new Rng(7);
    const pick = <T>(xs: readonly T[]): T => xs[rng.int(xs.length)];
    const good = png(3000000);
    const lying = Buffer.from(good);
    lying.writeUInt32BE(60000, 16); // IHDR width
    lying.writeUInt32BE(60000, 20); // and height: 3.6 G pixels claimed
    const b64 = (b: Uint8Array) => `data:image/png;base64,${Buffer.from(b).toString('base64')}`;
    const urls = [
      b64(good.subarray(0, 100)),
      b64(new Uint8Array(Array.from({ length: 300 }, () => rng.int(256)))),
      b64(lying),
      'data:text/plain,hello',
      'data:image/png;base64,',
      'file:///dev/zero',
      'file:///proc/self/environ',
      pathToFileURL(path.join(root, 'missing.png')).href,
      pathToFileURL(root).href,
      'ftp://example.com/x.png',
      'https://127.0.0.1:1/x.png',
      'not a url',
    ];
    const values: unknown[] = [
      null,
      true,
      -1,
      0,
      0.5,
      1e308,
      2 ** 53 + 2,
      '',
      'x'.repeat(3000),
      'NaN',
      [],
      [1, 'a', null],
      {},
      { a: { b: [{}] } },
      { __proto__: { x: 1 } },
      '\u0000\ud800☃',
    ];
    const paths = [
      ['model'],
      ['temperature'],
      ['max_tokens'],
      ['max_completion_tokens'],
      ['top_p'],
      ['seed'],
      ['stop'],
      ['stream'],
      ['stream_options'],
      ['logit_bias'],
      ['n'],
      ['user'],
      ['max_pixels'],
      ['messages'],
      ['messages', 0],
      ['messages', 0, 'role'],
      ['messages', 0, 'content'],
      ['messages', 0, 'content', 0],
      ['messages', 0, 'content', 0, 'type'],
      ['messages', 0, 'content', 0, 'image_url'],
      ['messages', 0, 'content', 0, 'image_url', 'url'],
      ['messages', 0, 'content', 0, 'uuid'],
      ['messages', 0, 'content', 1, 'text'],
      ['sparsevila'],
      ['sparsevila', 'method'],
      ['sparsevila', 'prefill_sparsity'],
      ['sparsevila', 'decode_sparsity'],
      ['sparsevila', 'mode'],
      ['sparsevila', 'visual_budget'],
    ];
    const valid = () => ({
      model: MODEL,
      temperature: 0,
      max_tokens: 4,
      messages: [
        {
          role: 'user',
          content: [
            { type: 'image_url', image_url: { url: dataUrl(3000000) } },
            { type: 'text', text: 'What shape is in the top left?' },
          ],
        },
      ],
      sparsevila: { method: 'sparsevila' },
    });
    const set = (o: Record<string, unknown>, p: (string | number)[], v: unknown, remove: boolean) => {
      let at: unknown = o;
      for (const k of p.slice(0, -1)) {
        if (typeof at !== 'object' || at === null) return;
        at = (at as Record<string | number, unknown>)[k];
      }
      if (typeof at !== 'object' || at === null) return;
      const last = p[p.length - 1] as string;
      if (remove) delete (at as Record<string, unknown>)[last];
      else (at as Record<string, unknown>)[last] = v;
    };
    const statuses = new Map<number, number>();
    for (let i = 0; i < 200; i++) {
      let body: string;
      let type = 'application/json';
      const kind = rng.int(10);
      if (kind === 0) {
        const full = JSON.stringify(valid());
        body = full.slice(0, rng.int(full.length));
      } else if (kind === 1) {
        body = pick(
          ['[', '{']
            .map((c) => c.repeat(20000))
            .concat(['\u0000', 'null', '"x"', '1e999', Buffer.from(Array.from({ length: 64 }, () => rng.int(256))).toString('latin1')]),
        );
        if (rng.int(4) === 0) type = pick(['text/plain', 'application/octet-stream', 'application/json; charset=utf-16']);
      } else {
        const b = valid() as unknown as Record<string, unknown>;
        for (let k = 1 + rng.int(3); k > 0; k--) {
          const p = pick(paths);
          const isUrl = p[p.length - 1] === 'url';
          set(b, p, isUrl && rng.int(2) === 0 ? pick(urls) : pick(values), rng.int(6) === 0);
        }
        if (rng.int(5) === 0) b.stream = true;
        body = JSON.stringify(b);
      }
      const res = await fetch(`${base}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': type }, body });
      const text = await res.text();
      statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1);
      assert.ok(res.status === 200 || (res.status >= 400 && res.status < 500), `case ${i}: ${res.status} ${text.slice(0, 300)} for ${body.slice(0, 300)}`);
      if (res.status !== 200) {
        const e = (JSON.parse(text) as { error: { message: string; type: string } }).error;
        assert.equal(typeof e.message, 'string', `case ${i}`);
        assert.doesNotMatch(
          e.message,
          /\b(TypeError|RangeError|ReferenceError)\b|Cannot read properties|is not a function|is not iterable|internal error/,
          `case ${i}: ${e.message}`,
        );
      }
    }
    assert.ok((statuses.get(200) ?? 0) > 10 && statuses.size > 3, JSON.stringify([...statuses]));
    assert.equal((await fetch(`${base}/health`)).status, 200);
    const ok = await ask(dataUrl(3000000), makeScene(3000000).episode[2].question);
    assert.equal(normaliseAnswer(ok.choices[0].message.content ?? ''), normaliseAnswer(makeScene(3000000).episode[2].answer));
  });

  it('an API key guards every route but /health', async () => {
    const { s, url } = await start({ apiKey: 'secret-key-123' });
    try {
      assert.equal((await fetch(`${url}/health`)).status, 200);
      assert.equal((await fetch(`${url}/v1/models`)).status, 401);
      assert.equal((await fetch(`${url}/metrics`, { headers: { authorization: 'Bearer wrong' } })).status, 401);
      const c = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'secret-key-123', maxRetries: 0 });
      assert.deepEqual(
        (await c.models.list()).data.map((m) => m.id),
        [MODEL],
      );
      const bad = await new OpenAI({ baseURL: `${url}/v1`, apiKey: 'wrong-key-123', maxRetries: 0 }).models.list().catch((e: unknown) => e);
      assert.ok(bad instanceof OpenAI.AuthenticationError);
    } finally {
      await s.close();
    }
  });

  it('a full queue answers 429 with Retry-After; a cancelled request frees its K/V', async () => {
    const { s, url } = await start({ parallel: 1, maxQueue: 1 });
    try {
      const eos = model.eosTokenIds[0];
      const long = (signal?: AbortSignal) =>
        fetch(`${url}/v1/chat/completions`, {
          method: 'POST',
          signal,
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({
            model: MODEL,
            temperature: 0,
            max_tokens: 300,
            stream: true,
            logit_bias: { [eos]: -100 },
            messages: [
              {
                role: 'user',
                content: [
                  { type: 'image_url', image_url: { url: dataUrl(3000007) } },
                  { type: 'text', text: 'What colour is the circle?' },
                ],
              },
            ],
          }),
        });
      const ac = new AbortController();
      const first = await long(ac.signal); // running
      assert.equal(first.status, 200);
      const reader = first.body!.getReader();
      await reader.read(); // its first event: it holds K/V now
      const waiting = long(); // queued
      await new Promise((r) => setTimeout(r, 50));
      const full = await long();
      assert.equal(full.status, 429);
      assert.ok(Number(full.headers.get('retry-after')) >= 1);
      assert.equal(((await full.json()) as { error: { code: string } }).error.code, 'queue_full');
      let m = await scrape(url);
      assert.ok(m.sparsevila_kv_active_bytes > 0);
      assert.equal(m.sparsevila_queue_depth, 1);
      ac.abort(); // the client goes away
      const second = await waiting;
      await second.body!.cancel();
      for (let k = 0; k < 200; k++) {
        m = await scrape(url);
        if (m.sparsevila_requests_running === 0 && m.sparsevila_kv_active_bytes === 0) break;
        await new Promise((r) => setTimeout(r, 20));
      }
      assert.deepEqual([m.sparsevila_requests_running, m.sparsevila_kv_active_bytes], [0, 0]);
      assert.equal(m.sparsevila_requests_cancelled_total, 2);
      assert.equal(m.sparsevila_kv_released_total, 2, 'both cancelled mid-answer freed their K/V');
    } finally {
      await s.close();
    }
  });

  it('a bounded load test: 16 clients, mixed images and turns, nothing failed, nothing held after', async () => {
    const { s, url } = await start({ parallel: 2, maxQueue: 64 });
    try {
      const load = (requests: number) =>
        runLoad({
          baseURL: `${url}/v1`,
          model: MODEL,
          clients: 16,
          requests,
          samples,
          seeds: [3000000, 3000001, 3000002, 3000003, 3000004, 3000005],
          cancelEvery: 12,
          eosTokenId: model.eosTokenIds[0],
        });
      // A first run grows the reusable workspaces to their size (the longest prompt rows, ...); the
      // baseline is taken after it, with the cache cleared: the second run must hold no more.
      assert.deepEqual((await load(96)).failures, []);
      s.cache.clear();
      const wasm0 = (await scrape(url)).sparsevila_wasm_used_bytes;
      const r = await load(96);
      assert.deepEqual(r.failures, []);
      assert.equal(r.cancelled, 8);
      assert.ok(r.correct >= 0.85 * r.answered, `${r.correct} of ${r.answered} right`);
      assert.ok(r.cachedTokens > 0.5 * r.promptTokens, `${r.cachedTokens} of ${r.promptTokens} prompt tokens cached`);
      const m = r.metricsAfter;
      assert.deepEqual([m.sparsevila_requests_running, m.sparsevila_kv_active_bytes, m.sparsevila_queue_depth], [0, 0, 0]);
      assert.ok(m.sparsevila_kv_released_total >= 8);
      // Everything the kernels hold beyond the cache's budgeted bytes was there before the run.
      assert.ok(
        m.sparsevila_wasm_used_bytes - m.sparsevila_cache_bytes <= wasm0 + 2 ** 20,
        `${m.sparsevila_wasm_used_bytes} - ${m.sparsevila_cache_bytes} vs ${wasm0}`,
      );
      s.cache.clear();
      assert.ok((await scrape(url)).sparsevila_wasm_used_bytes <= wasm0 + 2 ** 20);
    } finally {
      await s.close();
    }
  });

  it('the CLI serves until SIGTERM, then exits 0', async () => {
    const p = spawn(process.execPath, [cli, 'serve', '--port', '0', '--threads', '1'], { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    const url = await new Promise<string>((resolve, reject) => {
      p.stderr.on('data', (d: Buffer) => {
        err += d.toString();
        const m = /at (http:\/\/[^ ]+)\/v1/.exec(err);
        if (m) resolve(m[1]);
      });
      p.on('exit', () => reject(new Error(err)));
    });
    assert.match(url, /^http:\/\/127\.0\.0\.1:\d+$/);
    assert.equal((await fetch(`${url}/health`)).status, 200);
    const code = await new Promise<number | null>((resolve) => {
      p.on('exit', (c) => resolve(c));
      p.kill('SIGTERM');
    });
    assert.equal(code, 0, err);
  });
});
