// Every family through the CLI: dense, SparseVILA and each baseline run on it (`run --json`), with
// the visual-token counts each method should give; p = d = 0 gives the dense tokens; chat reuses the
// session's cache, eval scores a scene's questions, --heatmap draws the image's tiles. One row per family.
import { before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { fixture, tempDir } from './helpers.js';
import { writeSplit } from '../src/data/scenes.js';
import { readEpisodes } from '../src/eval/harness.js';

const cli = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));
const run = (...args: (string | { input: string })[]) => {
  const input = args.find((a): a is { input: string } => typeof a === 'object')?.input;
  return spawnSync(process.execPath, [cli, ...args.filter((a): a is string => typeof a === 'string')], { encoding: 'utf8', input });
};

interface Row {
  family: string;
  dir: string;
  prompt: string;
  /** Visual tokens of the fixture's image, dense. */
  dense: number;
  /** --visual-budget for VisionZip and PruMerge (per tile), and the tokens they then give. */
  budget: number;
  budgeted: number;
  /** Tokens SparseVILA's default p = 0.6 keeps (per tile, plus rows the family adds). */
  sparse: number;
}

const FAMILIES: Row[] = [
  // 2×2 grid + base of 36 patches; 30 patches per grid tile after unpadding; 10 newline rows.
  {
    family: 'llava-next',
    dir: fixture('llava-next-tiny'),
    prompt: 'What is shown in this image?',
    dense: 166,
    budget: 16,
    budgeted: 16 * 5 + 10,
    sparse: 15 + 4 * 12 + 10,
  },
  // 7×7 patches → 16 blocks of 2×2.
  { family: 'vila', dir: fixture('vila-tiny'), prompt: 'Please describe the image.', dense: 16, budget: 8, budgeted: 8, sparse: 7 },
  // A 2×2 grid of tiles plus the global image, 4 tokens (2×2 pixel-shuffle blocks) each.
  { family: 'idefics3', dir: fixture('smolvlm-tiny'), prompt: 'What is in this image?', dense: 20, budget: 2, budgeted: 10, sparse: 10 },
];

type Out = { ids: number[]; method: string; imageTokens: number; visualTokensIn: number; visualTokensRetrieved: number };

describe('every family through the CLI', () => {
  let episodes = '',
    questions = 0;
  before(async () => {
    episodes = await writeSplit(tempDir(), 'test', 1);
    questions = readEpisodes(episodes)[0].questions.length;
  });
  for (const f of FAMILIES) {
    it(`${f.family}: dense, SparseVILA, VisionZip, PruMerge, Quest, FastV and PDrop run; p = d = 0 equals dense; the heatmap is drawn`, () => {
      const base = ['run', '--model', f.dir, '--image', path.join(f.dir, 'image.png'), '--prompt', f.prompt, '--max-new-tokens', '2', '--json'];
      const go = (...extra: string[]): Out => {
        const r = run(...base, ...extra);
        assert.equal(r.status, 0, `${extra.join(' ')}: ${r.stderr}`);
        return JSON.parse(r.stdout) as Out;
      };
      const dense = go();
      assert.deepEqual([dense.imageTokens, dense.visualTokensIn, dense.ids.length], [f.dense, f.dense, 2]);
      assert.deepEqual(go('--method', 'sparsevila', '--prefill-sparsity', '0', '--decode-sparsity', '0').ids, dense.ids, 'p = d = 0 differs from dense');
      const sv = go('--method', 'sparsevila');
      assert.deepEqual([sv.imageTokens, sv.visualTokensIn], [f.sparse, f.dense]);
      assert.ok(sv.visualTokensRetrieved < sv.imageTokens, 'decode retrieval attends to fewer visual tokens');
      for (const m of ['visionzip', 'prumerge']) {
        const b = go('--method', m, '--visual-budget', String(f.budget));
        assert.deepEqual([b.method, b.imageTokens, b.visualTokensIn], [m, f.budgeted, f.dense]);
      }
      const q = go('--method', 'quest', '--visual-budget', '32');
      assert.equal(q.imageTokens, f.dense);
      for (const extra of [
        ['--method', 'fastv', '--fastv-k', '1'],
        ['--method', 'pdrop'],
      ]) {
        const d = go(...extra);
        assert.equal(d.imageTokens, f.dense);
        assert.ok(d.visualTokensRetrieved < f.dense, `${extra[1]} drops visual tokens`);
      }
      // chat: two questions, the second from the session cache (SparseVILA retrieving anew).
      const chat = run('chat', '--model', f.dir, '--image', path.join(f.dir, 'image.png'), '--max-new-tokens', '2', '--method', 'sparsevila', {
        input: `${f.prompt}\nAnd the colours?\n`,
      });
      assert.equal(chat.status, 0, chat.stderr);
      const turns = chat.stderr.split('\n').filter((l) => l.startsWith('[turn '));
      assert.equal(turns.length, 2, chat.stderr);
      assert.match(turns[1], new RegExp(`image from the session cache \\| visual tokens ${f.dense} in, ${f.sparse} kept`));
      // eval: a scene's questions through a session, every answer scored.
      const ev = run('eval', '--model', f.dir, '--data', episodes, '--method', 'sparsevila', '--max-new-tokens', '2', '--json');
      assert.equal(ev.status, 0, ev.stderr);
      assert.equal((JSON.parse(ev.stdout) as { overall: { total: number } }).overall.total, questions);
      const file = path.join(tempDir(), 'heat.png');
      const h = run(...base.slice(0, -1), '--method', 'sparsevila', '--heatmap', file);
      assert.equal(h.status, 0, h.stderr);
      assert.ok(fs.statSync(file).size > 0);
    });
  }
});
