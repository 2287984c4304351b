// The embedded default model (models/scenes-vlm, trained by tools/train/) answers the questions of
// the sample scenes correctly. The right answers are not a snapshot: each sample's episode and image
// are re-derived from its seed by the scene generator, whose answers follow from the scene.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync, statSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { DEFAULT_MODEL_DIR } from '../src/default-model.js';
import { EpisodeRecord, makeScene, renderScene } from '../src/data/scenes.js';
import { VisionLanguageModel } from '../src/engine/vlm.js';
import { normaliseAnswer } from '../src/eval/harness.js';
import { Checkpoint } from '../src/formats/checkpoint.js';

const cli = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));
const samples = fileURLToPath(new URL('../../samples/scenes', import.meta.url));
const episodes = readFileSync(path.join(samples, 'episodes.jsonl'), 'utf8')
  .trim()
  .split('\n')
  .map((l) => JSON.parse(l) as EpisodeRecord);

describe('the default model', () => {
  let model: VisionLanguageModel;
  before(async () => {
    model = await VisionLanguageModel.load(DEFAULT_MODEL_DIR, { threads: 2 });
  });
  after(async () => {
    await model.close();
  });

  it('ships in bf16, under 30 MB, with the llava-hf files', () => {
    const st = path.join(DEFAULT_MODEL_DIR, 'model.safetensors');
    assert.ok(statSync(st).size < 30e6, `${statSync(st).size} bytes`);
    const ck = Checkpoint.open(DEFAULT_MODEL_DIR);
    try {
      assert.deepEqual([...new Set(ck.names().map((n) => ck.info(n).dtype))], ['BF16']);
    } finally {
      ck.close();
    }
    for (const f of ['config.json', 'tokenizer.json', 'chat_template.jinja', 'preprocessor_config.json'])
      assert.ok(statSync(path.join(DEFAULT_MODEL_DIR, f)).size > 0, f);
  });

  it('the sample scenes are what the generator makes from their seeds', async () => {
    for (const e of episodes) {
      const s = makeScene(e.seed);
      assert.deepEqual(e.questions, s.episode);
      assert.deepEqual(readFileSync(path.join(samples, e.image)), await renderScene(s));
    }
  });

  // The bar the model was trained to (issue 6): 90% exact match. Each answer is checked against the
  // generator's truth for its scene; the wrong ones are listed when the check fails.
  it("answers at least 90% of the sample scenes' questions right, in a chat session per scene", async () => {
    const wrong: string[] = [];
    let n = 0;
    for (const e of episodes) {
      const s = model.session([path.join(samples, e.image)], { mode: 'chat' });
      try {
        for (const q of makeScene(e.seed).episode) {
          const r = await s.ask(q.question, { maxNewTokens: 8 });
          n++;
          if (normaliseAnswer(r.text) !== normaliseAnswer(q.answer)) wrong.push(`${e.image}: ${q.question} -> ${JSON.stringify(r.text)}, expected ${q.answer}`);
        }
      } finally {
        s.close();
      }
    }
    assert.ok(n >= 24, `${n} questions`);
    assert.ok(wrong.length <= 0.1 * n, `${wrong.length} of ${n} wrong:\n${wrong.join('\n')}`);
  });

  it("is what `run` uses without --model (the README's first command)", () => {
    const e = episodes[0],
      q = makeScene(e.seed).episode[0];
    const r = spawnSync(process.execPath, [cli, 'run', '--image', path.join(samples, e.image), '--prompt', q.question, '--json'], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    const j = JSON.parse(r.stdout) as { text: string; finishReason: string };
    assert.equal(normaliseAnswer(j.text), normaliseAnswer(q.answer));
    assert.equal(j.finishReason, 'eos');
  });

  // The opt-in int16 vision matmuls (12-bit weights and activations in the tower): on the sample
  // scenes every answer is the same as with f32 math; measured on 100 test scenes (386 questions),
  // no prediction changed either (docs/BENCHMARKS.md).
  it('with visionCompute int16 answers every sample question as with f32 math; bad values are refused', async () => {
    const q16 = await VisionLanguageModel.load(DEFAULT_MODEL_DIR, { threads: 2, visionCompute: 'int16' });
    assert.equal(q16.visionCompute, 'int16');
    assert.equal(model.visionCompute, 'stored');
    try {
      let n = 0;
      for (const e of episodes) {
        const a = model.session([path.join(samples, e.image)], { mode: 'chat' }),
          b = q16.session([path.join(samples, e.image)], { mode: 'chat' });
        try {
          for (const q of makeScene(e.seed).episode) {
            const ra = await a.ask(q.question, { maxNewTokens: 8 }),
              rb = await b.ask(q.question, { maxNewTokens: 8 });
            assert.equal(rb.text, ra.text, `${e.image}: ${q.question}`);
            n++;
          }
        } finally {
          a.close();
          b.close();
        }
      }
      assert.ok(n >= 24, `${n} questions`);
    } finally {
      await q16.close();
    }
    await assert.rejects(
      VisionLanguageModel.load(DEFAULT_MODEL_DIR, { threads: 1, visionCompute: 'int8' as 'int16' }),
      /visionCompute must be "stored" or "int16", got "int8"/,
    );
    const e = episodes[0],
      q = makeScene(e.seed).episode[0];
    const r = spawnSync(process.execPath, [cli, 'run', '--image', path.join(samples, e.image), '--prompt', q.question, '--vision-compute', 'int16', '--json'], {
      encoding: 'utf8',
    });
    assert.equal(r.status, 0, r.stderr);
    assert.equal(normaliseAnswer((JSON.parse(r.stdout) as { text: string }).text), normaliseAnswer(q.answer));
    const bad = spawnSync(process.execPath, [cli, 'run', '--image', path.join(samples, e.image), '--prompt', q.question, '--vision-compute', 'f16'], {
      encoding: 'utf8',
    });
    assert.equal(bad.status, 1);
    assert.match(bad.stderr, /--vision-compute.*f16.*stored, int16/s);
  });
});
