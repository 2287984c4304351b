// The prefix cache (stateless requests that resend the conversation): a later turn reuses the
// cached images and history and answers exactly as a session does; a method, budget or pixel
// budget that changes an image's rows is not matched; aborts and failures free what they held;
// the budget bounds what is kept. On the default model; answers compared token for token.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { DEFAULT_MODEL_DIR } from '../src/default-model.js';
import { makeScene } from '../src/data/scenes.js';
import { VisionLanguageModel, GenerateOptions } from '../src/engine/vlm.js';
import { ChatMessage } from '../src/io/chat-template.js';
import { PrefixCache, sizeWithin } from '../src/engine/prefix-cache.js';
import { normaliseAnswer } from '../src/eval/harness.js';

const samples = fileURLToPath(new URL('../../samples/scenes', import.meta.url));
const scene = (i: number) => {
  const seed = 3000000 + i;
  return { file: path.join(samples, `${seed}.png`), bytes: new Uint8Array(readFileSync(path.join(samples, `${seed}.png`))), episode: makeScene(seed).episode };
};
const user = (text: string, images = 0): ChatMessage => ({
  role: 'user',
  content: [...Array.from({ length: images }, () => ({ type: 'image' as const })), { type: 'text' as const, text }],
});
const assistant = (text: string): ChatMessage => ({ role: 'assistant', content: [{ type: 'text', text }] });

describe('prefix cache', () => {
  let model: VisionLanguageModel;
  before(async () => {
    model = await VisionLanguageModel.load(DEFAULT_MODEL_DIR, { threads: 2 });
  });
  after(async () => {
    await model.close();
  });

  for (const [name, opts] of [
    ['dense', {}],
    ['sparsevila p 0.5, d 0.5', { prefillSparsity: 0.5, decodeSparsity: 0.5 }],
  ] as [string, GenerateOptions][]) {
    it(`${name}: each resent turn reuses the images and history and answers as a session does`, async () => {
      const s = scene(0);
      const session = model.session([s.file], { prefillSparsity: opts.prefillSparsity });
      const pc = new PrefixCache(model);
      try {
        const history: ChatMessage[] = [];
        for (const [t, q] of s.episode.entries()) {
          const want = await session.ask(q.question, { ...opts, prefillSparsity: undefined, maxNewTokens: 8 });
          const messages = [...history, user(q.question, t === 0 ? 1 : 0)];
          const got = await pc.generate({ messages, images: [{ data: s.bytes }] }, { ...opts, maxNewTokens: 8 });
          assert.deepEqual(got.ids, want.ids, `turn ${t + 1}`);
          assert.equal(normaliseAnswer(got.text), normaliseAnswer(q.answer), `turn ${t + 1}: ${q.question}`);
          assert.equal(got.stats.promptTokens, want.stats.promptTokens);
          assert.equal(got.stats.prefilledTokens, want.stats.prefilledTokens, `turn ${t + 1} prefills what the session does`);
          assert.equal(got.cache.cachedTokens, got.stats.promptTokens - got.stats.prefilledTokens);
          assert.deepEqual(
            got.visual?.retrieved?.[0]?.map((l) => l.length),
            want.visual?.retrieved?.[0]?.map((l) => l.length),
          );
          if (t === 0) assert.deepEqual([got.cache.reuse, got.cache.imagesEncoded, got.cache.cachedTokens], ['new', 1, 0]);
          else {
            assert.deepEqual([got.cache.reuse, got.cache.imagesCached, got.cache.imagesEncoded], ['extend', 1, 0]);
            assert.ok(got.cache.cachedTokens > got.stats.imageTokens, `turn ${t + 1}: ${got.cache.cachedTokens} cached`);
          }
          history.push(messages[messages.length - 1], assistant(got.text));
        }
        const st = pc.stats();
        assert.deepEqual([st.entries, st.images, st.activeBytes, st.imagesEncoded, st.imagesDecoded], [1, 1, 0, 1, 1], 'the resent bytes were decoded once');
      } finally {
        session.close();
        pc.close();
      }
      assert.equal(pc.stats().bytes, 0, 'close frees everything idle');
    });
  }

  it('another conversation about the same image branches the cached image; a retried question is prefilled again', async () => {
    const s = scene(1);
    const pc = new PrefixCache(model);
    const opts: GenerateOptions = { prefillSparsity: 0.5, decodeSparsity: 0.5, maxNewTokens: 8 };
    try {
      const [q1, q2] = s.episode;
      const a = await pc.generate({ messages: [user(q1.question, 1)], images: [{ data: s.bytes }] }, opts);
      const fresh = await model.generate({ images: [s.file], prompt: q2.question }, opts);
      const b = await pc.generate({ messages: [user(q2.question, 1)], images: [{ data: s.bytes }] }, opts);
      assert.deepEqual(b.ids, fresh.ids);
      assert.equal(b.cache.imagesCached, 1);
      // The cached turn ends at the image's last token: the question is scored as in a fresh turn.
      const ids = await model.promptIds({ images: [s.file], prompt: q2.question }, [{ rows: 128, tileRows: [128] }]);
      assert.equal(ids.length, b.stats.promptTokens);
      assert.equal(b.cache.cachedTokens, ids.lastIndexOf(model.config.imageFacts!.tokenId) + 1);
      assert.ok(b.cache.cachedTokens >= b.stats.imageTokens, `${b.cache.cachedTokens} cached`);
      const again = await pc.generate({ messages: [user(q1.question, 1)], images: [{ data: s.bytes }] }, opts);
      assert.deepEqual(again.ids, a.ids);
      assert.equal(again.cache.cachedTokens, b.cache.cachedTokens, 'a retry prefills its question again');
      // Dense decode reuses everything but the last prompt token.
      const d1 = await pc.generate({ messages: [user(q1.question, 1)], images: [{ data: s.bytes }] }, { prefillSparsity: 0.5, maxNewTokens: 8 });
      assert.equal(d1.cache.cachedTokens, d1.stats.promptTokens - 1);
    } finally {
      pc.close();
    }
  });

  it("an image's rows are matched by pixels, prefill method and pixel budget, and by the client's uuid", async () => {
    const s = scene(2),
      t = scene(3);
    const pc = new PrefixCache(model);
    const q = s.episode[0].question;
    try {
      const dense = await pc.generate({ messages: [user(q, 1)], images: [{ data: s.bytes, uuid: 'img-s' }] }, { maxNewTokens: 4 });
      assert.equal(dense.cache.imagesEncoded, 1);
      // The same pixels from a file path: cached.
      const byPath = await pc.generate({ messages: [user(q, 1)], images: [{ data: s.file }] }, { maxNewTokens: 4 });
      assert.deepEqual([byPath.cache.imagesCached, byPath.ids], [1, dense.ids]);
      // The uuid alone.
      const byId = await pc.generate({ messages: [user(q, 1)], images: [{ uuid: 'img-s' }] }, { maxNewTokens: 4 });
      assert.deepEqual([byId.cache.imagesCached, byId.ids], [1, dense.ids]);
      await assert.rejects(
        pc.generate({ messages: [user(q, 1)], images: [{ uuid: 'never-sent' }] }),
        /no image with uuid "never-sent" is cached: send the image again/,
      );
      // Another image with the same prompt text: only the tokens before the image are reused.
      const other = await pc.generate({ messages: [user(q, 1)], images: [{ data: t.bytes }] }, { maxNewTokens: 4 });
      assert.equal(other.cache.imagesEncoded, 1);
      assert.ok(other.cache.cachedTokens < 8, `${other.cache.cachedTokens} cached`);
      // Another prefill sparsity gives other rows: encoded again, not matched.
      const sparse = await pc.generate({ messages: [user(q, 1)], images: [{ data: s.bytes }] }, { prefillSparsity: 0.5, maxNewTokens: 4 });
      assert.equal(sparse.cache.imagesEncoded, 1);
      assert.ok(sparse.cache.cachedTokens < 8);
      assert.equal(sparse.stats.imageTokens, 128);
      await assert.rejects(
        pc.generate({ messages: [user(q, 1)], images: [{ uuid: 'img-s' }] }, { prefillSparsity: 0.25 }),
        /no longer cached with this prefill method: send the image again/,
      );
      // A pixel budget scales the image down first: other pixels, other rows.
      const small = await pc.generate({ messages: [user(q, 1)], images: [{ data: s.bytes }], maxPixels: 100 * 100 }, { maxNewTokens: 4 });
      assert.equal(small.cache.imagesEncoded, 1);
      assert.deepEqual(sizeWithin(224, 224, 100 * 100), { width: 100, height: 100 });
      assert.deepEqual(sizeWithin(1000, 10, 5000), { width: 707, height: 7 });
    } finally {
      pc.close();
    }
  });

  it('independent mode answers the last question with the images alone', async () => {
    const s = scene(4);
    const pc = new PrefixCache(model);
    try {
      const [q1, q2] = s.episode;
      const a1 = await pc.generate({ messages: [user(q1.question, 1)], images: [{ data: s.bytes }] }, { maxNewTokens: 8 });
      const fresh = await model.generate({ images: [s.file], prompt: q2.question }, { maxNewTokens: 8 });
      const r = await pc.generate(
        { messages: [user(q1.question, 1), assistant(a1.text), user(q2.question)], images: [{ data: s.bytes }], mode: 'independent' },
        { maxNewTokens: 8 },
      );
      assert.deepEqual(r.ids, fresh.ids);
      assert.equal(r.stats.promptTokens, fresh.stats.promptTokens);
      assert.ok(r.cache.cachedTokens > r.stats.imageTokens);
    } finally {
      pc.close();
    }
  });

  it('keeps within its budget: budget 0 keeps nothing, a small one evicts the least recently used', async () => {
    const s = scene(5),
      t = scene(6);
    const none = new PrefixCache(model, { budgetBytes: 0 });
    const q = s.episode[0].question;
    const r1 = await none.generate({ messages: [user(q, 1)], images: [{ data: s.bytes }] }, { maxNewTokens: 4 });
    const r2 = await none.generate(
      { messages: [user(q, 1), assistant(r1.text), user(s.episode[1].question)], images: [{ data: s.bytes }] },
      { maxNewTokens: 4 },
    );
    assert.deepEqual([r2.cache.cachedTokens, r2.cache.imagesEncoded, r2.cache.reuse], [0, 1, 'new']);
    assert.deepEqual([none.stats().bytes, none.stats().entries, none.stats().images], [0, 0, 0]);
    assert.ok(r1.cache.evictions >= 2, `${r1.cache.evictions} evictions`);
    none.close();
    // Room for one conversation (two 256-slot blocks of 4 layers x 4 heads x 64 x K and V in f32) and
    // about one image's rows: the second conversation evicts the first, then the first image.
    const one = new PrefixCache(model, { budgetBytes: 2 * 256 * 4 * 4 * 64 * 8 + 300e3 });
    try {
      await one.generate({ messages: [user(q, 1)], images: [{ data: s.bytes }] }, { maxNewTokens: 4 });
      const before = one.stats();
      await one.generate({ messages: [user(q, 1)], images: [{ data: t.bytes }] }, { maxNewTokens: 4 });
      const after = one.stats();
      assert.ok(after.evictions > before.evictions, 'evicted');
      assert.ok(after.bytes <= one.budgetBytes, `${after.bytes} <= ${one.budgetBytes}`);
      const back = await one.generate({ messages: [user(q, 1)], images: [{ data: s.bytes }] }, { maxNewTokens: 4 });
      assert.equal(back.cache.imagesEncoded, 1, 'the first image was evicted');
    } finally {
      one.close();
    }
  });

  it('an aborted or failed request frees the K/V it made, and a taken-over conversation keeps its prefix', async () => {
    const s = scene(7);
    const pc = new PrefixCache(model);
    try {
      const q = s.episode[0].question;
      const first = await pc.generate({ messages: [user(q, 1)], images: [{ data: s.bytes }] }, { maxNewTokens: 4 });
      const kept = pc.stats();
      const ac = new AbortController();
      let n = 0;
      const r = await pc.generate(
        { messages: [user(q, 1), assistant(first.text), user(s.episode[1].question)], images: [{ data: s.bytes }] },
        {
          maxNewTokens: 200,
          eosTokenIds: [],
          signal: ac.signal,
          onToken: () => {
            if (++n === 1) ac.abort();
          },
        },
      );
      assert.equal(r.finishReason, 'abort');
      let st = pc.stats();
      assert.deepEqual([st.activeBytes, st.released, st.entries], [0, 1, 1]);
      assert.ok(st.bytes <= kept.bytes, `${st.bytes} <= ${kept.bytes}`);
      // The conversation's cached prefix survives: the next turn still reuses it.
      const next = await pc.generate(
        { messages: [user(q, 1), assistant(first.text), user(s.episode[1].question)], images: [{ data: s.bytes }] },
        { maxNewTokens: 4 },
      );
      assert.ok(next.cache.cachedTokens > next.stats.imageTokens);
      // A branch that fails (a prompt past the window) holds nothing afterwards.
      await assert.rejects(pc.generate({ messages: [user('red '.repeat(1200), 1)], images: [{ data: s.bytes }] }), /context window is 1024 tokens/);
      st = pc.stats();
      assert.equal(st.activeBytes, 0);
    } finally {
      pc.close();
    }
  });
});
