// The accuracy harness: answer normalisation, aggregation, reading episodes, and a run through the
// CLI on the tiny fixture model.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { QuestionResult, normaliseAnswer, readEpisodes, summarise } from '../src/eval/harness.js';
import { writeSplit } from '../src/data/scenes.js';
import { fixture, tempDir } from './helpers.js';
import { pdropLambdaFor, tableRows } from '../bench/eval-table.js';
import { pyramidDropStages } from '../src/sparsity/layerdrop.js';

const cli = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));

describe('accuracy harness', () => {
  it('normalises answers: case, punctuation, articles, spaces', () => {
    assert.equal(normaliseAnswer(' The Red  circle. '), 'red circle');
    assert.equal(normaliseAnswer('Yes!'), 'yes');
    assert.equal(normaliseAnswer('"3"'), '3');
    assert.notEqual(normaliseAnswer('red square'), normaliseAnswer('red circle'));
    // The letter A is an answer, not an article: an empty prediction must not match it.
    assert.equal(normaliseAnswer('A'), 'a');
    assert.notEqual(normaliseAnswer(''), normaliseAnswer('A'));
    assert.equal(normaliseAnswer('a red circle'), 'red circle');
  });

  it('aggregates per type and for turn 1 against later turns', () => {
    const r = (turn: number, type: string, correct: boolean): QuestionResult => ({
      episode: 0,
      turn,
      type,
      question: '',
      answer: '',
      prediction: '',
      correct,
      ms: 10 * turn,
      visualTokens: 64,
      visualPerLayerMean: 16,
    });
    const rep = summarise([r(1, 'colour', true), r(2, 'colour', false), r(3, 'count', true), r(1, 'count', true)]);
    assert.deepEqual(rep.overall, { correct: 3, total: 4, accuracy: 0.75 });
    assert.deepEqual(rep.byType, { colour: { correct: 1, total: 2, accuracy: 0.5 }, count: { correct: 2, total: 2, accuracy: 1 } });
    assert.deepEqual([rep.firstTurn.accuracy, rep.laterTurns.accuracy], [1, 0.5]);
    assert.equal(rep.meanMsPerQuestion, 17.5);
  });

  it('reads episodes with clear errors', () => {
    const dir = tempDir();
    const f = path.join(dir, 'e.jsonl');
    writeFileSync(f, '{"image": "a.png", "questions": [{"type": "colour", "question": "q?", "answer": "red"}]}\n');
    assert.deepEqual(readEpisodes(f), [{ image: path.join(dir, 'a.png'), questions: [{ type: 'colour', question: 'q?', answer: 'red' }], source: `${f}:1` }]);
    writeFileSync(f, '{"image": "a.png"}\n');
    assert.throws(() => readEpisodes(f), /e\.jsonl:1: "questions" must be a non-empty array/);
    writeFileSync(f, 'not json\n');
    assert.throws(() => readEpisodes(f), /e\.jsonl:1: not JSON/);
  });

  it('sparsevila eval runs episodes through sessions and scores every answer (tiny fixture model)', async () => {
    const dir = tempDir();
    const data = await writeSplit(dir, 'test', 2);
    const episodes = readEpisodes(data);
    const nq = episodes.reduce((a, e) => a + e.questions.length, 0);
    for (const [method, mode] of [
      ['sparsevila', 'independent'],
      ['fastv', 'chat'],
    ] as const) {
      const r = spawnSync(
        process.execPath,
        [cli, 'eval', '--model', fixture('llava-tiny'), '--data', data, '--method', method, '--mode', mode, '--max-new-tokens', '3', '--json'],
        { encoding: 'utf8' },
      );
      assert.equal(r.status, 0, r.stderr);
      const j = JSON.parse(r.stdout) as {
        mode: string;
        overall: { correct: number; total: number };
        byType: Record<string, { total: number }>;
        results: QuestionResult[];
      };
      assert.equal(j.mode, mode);
      assert.equal(j.results.length, nq);
      // Every verdict is the exact-match check of its own prediction against the episode's answer.
      j.results.forEach((q, i) => {
        const want = episodes[q.episode].questions[q.turn - 1];
        assert.deepEqual([q.question, q.answer], [want.question, want.answer], `result ${i}`);
        assert.equal(q.correct, normaliseAnswer(q.prediction) === normaliseAnswer(q.answer));
      });
      assert.equal(j.overall.correct, j.results.filter((q) => q.correct).length);
      assert.equal(
        Object.values(j.byType).reduce((a, t) => a + t.total, 0),
        nq,
      );
    }
  });

  it("eval:table matches every method to SparseVILA's visual-token budgets", () => {
    const rows = tableRows(256, 4);
    assert.deepEqual(
      rows.map((r) => `${r.method} ${r.budget}`.trim()),
      ['dense', ...['(0.6, 0.75)', '(0.75, 0.9)'].flatMap((b) => ['SparseVILA', 'VisionZip', 'PruMerge', 'FastV', 'PDrop', 'Quest'].map((m) => `${m} ${b}`))],
    );
    // p 0.6: 256 - floor(153.6) = 103 tokens; d 0.75: 103 - floor(77.25) = 26 per layer at decode.
    assert.match(rows[1].settings, /103 visual tokens prefilled, 26 per layer at decode/);
    assert.equal(rows[2].options.prefill?.name, 'visionzip(103)');
    assert.equal(rows[4].options.decode?.name, 'fastv(K=1, R=0.6)');
    assert.match(rows[6].settings, /^64 KV slots/); // ceil((26 + 32) / 16) * 16
    // PDrop's lambda: the layers after its first stage hold 103 of 256 on average (to a token or two).
    const lambda = pdropLambdaFor(4, 256, 103 / 256);
    let n = 256,
      sum = 0;
    for (const st of pyramidDropStages(4, lambda)) {
      n = st.keep(n);
      sum += n;
    }
    assert.ok(Math.abs(sum / 3 - 103) < 3, `lambda ${lambda}: ${sum / 3} tokens on average`);
  });
});
