// End-to-end tests of the `sparsevila` command line (run as a child process, as a user would).
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import sharp from 'sharp';
import { editJson, fixture, modelVariant, tempDir } from './helpers.js';

const cli = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));
const run = (...args: string[]) => spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8' });

describe('sparsevila CLI', () => {
  it('--version prints the package version', () => {
    const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
    assert.equal(execFileSync(process.execPath, [cli, '--version'], { encoding: 'utf8' }).trim(), pkg.version);
  });

  it('--help lists the commands', () => {
    const out = execFileSync(process.execPath, [cli, '--help'], { encoding: 'utf8' });
    assert.match(out, /Usage: sparsevila/);
    assert.match(out, /inspect/);
    assert.match(out, /info/);
  });

  it('inspect summarises a llava checkpoint', () => {
    const r = run('inspect', fixture('llava-tiny'), '--json');
    assert.equal(r.status, 0, r.stderr);
    const j = JSON.parse(r.stdout) as {
      modelType: string;
      tensors: number;
      dtypes: Record<string, { tensors: number }>;
      config: { text: { numKeyValueHeads: number } };
    };
    assert.equal(j.modelType, 'llava');
    assert.equal(j.config.text.numKeyValueHeads, 2);
    assert.ok(j.tensors > 50);
    assert.deepEqual(Object.keys(j.dtypes), ['F16']);
  });

  it('inspect of a folder without config.json fails with a clear message and exit code 1', () => {
    const r = run('inspect', fixture('does-not-exist'));
    assert.equal(r.status, 1);
    assert.match(r.stderr, /does-not-exist: no such folder/);
  });

  it('inspect of an unsupported architecture names it', () => {
    const pali = modelVariant(fixture('smolvlm-tiny'), (d) =>
      editJson(d, 'config.json', (j) => {
        j.model_type = 'paligemma';
        j.architectures = ['PaliGemmaForConditionalGeneration'];
      }),
    );
    const r = run('inspect', pali);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /"paligemma" is not supported; supported here: .*idefics3/);
    assert.match(r.stderr, /architectures PaliGemmaForConditionalGeneration is not one of/);
  });

  it('run --json answers about the image with the golden greedy tokens', () => {
    const golden = JSON.parse(readFileSync(new URL('../../test/fixtures/llava-tiny/golden.json', import.meta.url), 'utf8')) as {
      generation: { new_tokens: number[] };
    };
    const r = run(
      'run',
      '--model',
      fixture('llava-tiny'),
      '--image',
      `${fixture('llava-tiny')}/image.png`,
      '--prompt',
      'What is shown in this image?',
      '--max-new-tokens',
      '12',
      '--json',
    );
    assert.equal(r.status, 0, r.stderr);
    const j = JSON.parse(r.stdout) as {
      ids: number[];
      text: string;
      promptTokens: number;
      imageTokens: number;
      prefillTokensPerSecond: number;
      decodeTokensPerSecond: number;
      peakMemoryBytes: number;
    };
    assert.deepEqual(j.ids, golden.generation.new_tokens);
    assert.equal(j.promptTokens, 82);
    assert.equal(j.imageTokens, 64);
    assert.ok(j.text.length > 0 && j.prefillTokensPerSecond > 0 && j.decodeTokensPerSecond > 0 && j.peakMemoryBytes > 0);
  });

  it("run --method sparsevila: the paper's image defaults (0.6 / 0.75) or the given sparsities; bad values are refused", () => {
    const args = [
      'run',
      '--model',
      fixture('llava-tiny'),
      '--image',
      `${fixture('llava-tiny')}/image.png`,
      '--prompt',
      'What is shown in this image?',
      '--max-new-tokens',
      '4',
      '--json',
    ];
    type J = {
      ids: number[];
      method: string;
      prefillSparsity: number;
      decodeSparsity: number;
      promptTokens: number;
      imageTokens: number;
      visualTokensIn: number;
      visualTokensRetrieved: number;
    };
    const r = run(...args, '--method', 'sparsevila');
    assert.equal(r.status, 0, r.stderr);
    const j = JSON.parse(r.stdout) as J;
    // 64 visual tokens: keep 64 - floor(0.6 * 64) = 26 in prefill, 26 - floor(0.75 * 26) = 7 per decode step.
    assert.deepEqual(
      [j.method, j.prefillSparsity, j.decodeSparsity, j.promptTokens, j.imageTokens, j.visualTokensIn, j.visualTokensRetrieved, j.ids.length],
      ['sparsevila', 0.6, 0.75, 82 - 38, 26, 64, 7, 4],
    );
    const r2 = run(...args, '--method', 'sparsevila', '--prefill-sparsity', '0.75', '--decode-sparsity', '0');
    assert.equal(r2.status, 0, r2.stderr);
    const j2 = JSON.parse(r2.stdout) as J;
    assert.deepEqual([j2.promptTokens, j2.imageTokens, j2.visualTokensRetrieved], [82 - 48, 16, 16]);
    const bad = run('run', '--model', fixture('llava-tiny'), '--prompt', 'hi', '--method', 'sparsevila', '--prefill-sparsity', '1');
    assert.equal(bad.status, 1);
    assert.match(bad.stderr, /--prefill-sparsity.*expected a number in \[0, 1\)/);
    const dense = run('run', '--model', fixture('llava-tiny'), '--prompt', 'hi', '--decode-sparsity', '0.5');
    assert.equal(dense.status, 1);
    assert.match(dense.stderr, /--decode-sparsity needs --method sparsevila/);
    const unknown = run('run', '--model', fixture('llava-tiny'), '--prompt', 'hi', '--method', 'magic');
    assert.notEqual(unknown.status, 0);
    assert.match(unknown.stderr, /argument 'magic' is invalid. Allowed choices are dense, sparsevila, fastv, pdrop, visionzip, prumerge, quest/);
  });

  it('run --method visionzip / prumerge with --visual-budget: the baselines on the same model', () => {
    const args = [
      'run',
      '--model',
      fixture('llava-tiny'),
      '--image',
      `${fixture('llava-tiny')}/image.png`,
      '--prompt',
      'What is shown in this image?',
      '--max-new-tokens',
      '2',
      '--json',
    ];
    for (const [method, budget, tokens] of [
      ['visionzip', '16', 16],
      ['prumerge', '10', 10],
      ['quest', '32', 64],
    ] as const) {
      const r = run(...args, '--method', method, '--visual-budget', budget);
      assert.equal(r.status, 0, r.stderr);
      const j = JSON.parse(r.stdout) as { method: string; methodDetail: string; imageTokens: number; visualTokensIn: number };
      assert.deepEqual([j.method, j.methodDetail, j.imageTokens, j.visualTokensIn], [method, `${method} (budget ${budget})`, tokens, 64]);
    }
    const f = run(...args, '--method', 'fastv');
    assert.equal(f.status, 0, f.stderr);
    const jf = JSON.parse(f.stdout) as { methodDetail: string; imageTokens: number; visualTokensRetrieved: number };
    assert.deepEqual([jf.methodDetail, jf.imageTokens, jf.visualTokensRetrieved], ['fastv (K 2, R 0.5)', 64, 32]);
    // Layers 0 and 1 see all 64 visual tokens, layer 2 the 32 kept.
    assert.deepEqual((JSON.parse(f.stdout) as { visualTokensPerLayer: unknown }).visualTokensPerLayer, { min: 32, mean: 160 / 3, max: 64 });
    const bad = run(...args, '--visual-budget', '10');
    assert.equal(bad.status, 1);
    assert.match(bad.stderr, /--visual-budget needs --method visionzip, prumerge or quest/);
    // Their own settings: FastV K 1, R 0.75 keeps 16 of 64 after layer 0; PDrop lambda 0.25 (stages after layers 0 and 1 of 3).
    const k1 = JSON.parse(run(...args, '--method', 'fastv', '--fastv-k', '1', '--fastv-r', '0.75').stdout) as {
      methodDetail: string;
      visualTokensPerLayer: unknown;
    };
    assert.deepEqual([k1.methodDetail, k1.visualTokensPerLayer], ['fastv (K 1, R 0.75)', { min: 16, mean: 96 / 3, max: 64 }]);
    const pd = JSON.parse(run(...args, '--method', 'pdrop', '--pdrop-lambda', '0.25').stdout) as { methodDetail: string; visualTokensPerLayer: unknown };
    assert.deepEqual([pd.methodDetail, pd.visualTokensPerLayer], ['pdrop (lambda 0.25)', { min: 4, mean: (64 + 16 + 4) / 3, max: 64 }]);
    const mismatch = run(...args, '--method', 'pdrop', '--fastv-r', '0.5');
    assert.equal(mismatch.status, 1);
    assert.match(mismatch.stderr, /--fastv-r needs --method fastv/);
  });

  it('chat --method fastv: the first question prunes the cache, the later ones continue it', () => {
    const args = [
      cli,
      'chat',
      '--model',
      fixture('llava-tiny'),
      '--image',
      `${fixture('llava-tiny')}/image.png`,
      '--max-new-tokens',
      '3',
      '--method',
      'fastv',
      '--fastv-r',
      '0.75',
    ];
    const r = spawnSync(process.execPath, args, { encoding: 'utf8', input: 'What is shown in this image?\nWhat colour is it?\n' });
    assert.equal(r.status, 0, r.stderr);
    const turns = r.stderr.split('\n').filter((l) => l.startsWith('[turn '));
    assert.equal(turns.length, 2, r.stderr);
    assert.match(turns[1], /image from the session cache \| visual tokens 64 in, 64 kept, 16 \/ 48 \/ 64 \(min \/ mean \/ max\) per layer in decode/);
  });

  it('chat answers one question per line, the image encoded once and then taken from the session cache', () => {
    const args = [
      cli,
      'chat',
      '--model',
      fixture('llava-tiny'),
      '--image',
      `${fixture('llava-tiny')}/image.png`,
      '--max-new-tokens',
      '5',
      '--method',
      'sparsevila',
      '--mode',
      'independent',
    ];
    const r = spawnSync(process.execPath, args, { encoding: 'utf8', input: 'What is shown in this image?\nWhat colour is it?\n' });
    assert.equal(r.status, 0, r.stderr);
    const turns = r.stderr.split('\n').filter((l) => l.startsWith('[turn '));
    assert.equal(turns.length, 2, r.stderr);
    assert.match(
      turns[0],
      /^\[turn 1, length\] prompt \d+ tokens, \d+ prefilled \| image encoded in \d+ ms \| visual tokens 64 in, 26 kept, 7 per layer in decode/,
    );
    assert.match(turns[1], /^\[turn 2, length\] .* \| image from the session cache \| visual tokens 64 in, 26 kept, 7 per layer in decode/);
    assert.equal(r.stdout.trim().split('\n').length, 2, r.stdout);
  });

  it("run --frames: a video as frames, each pruned on its own, with SparseVILA's video defaults (0.75 / 0.9)", () => {
    const img = `${fixture('llava-tiny')}/image.png`;
    const r = run(
      'run',
      '--model',
      fixture('llava-tiny'),
      '--frames',
      img,
      img,
      img,
      '--prompt',
      'What happens?',
      '--max-new-tokens',
      '2',
      '--method',
      'sparsevila',
      '--json',
    );
    assert.equal(r.status, 0, r.stderr);
    const j = JSON.parse(r.stdout) as {
      methodDetail: string;
      prefillSparsity: number;
      decodeSparsity: number;
      visualTokensIn: number;
      imageTokens: number;
      visualTokensRetrieved: number;
    };
    // 3 frames x 64 tokens; 16 kept per frame; 48 - floor(0.9 * 48) = 5 per decode step.
    assert.deepEqual(
      [j.methodDetail, j.prefillSparsity, j.decodeSparsity, j.visualTokensIn, j.imageTokens, j.visualTokensRetrieved],
      ['sparsevila (video defaults)', 0.75, 0.9, 192, 48, 5],
    );
    const both = run('run', '--model', fixture('llava-tiny'), '--frames', img, '--image', img, '--prompt', 'hi');
    assert.equal(both.status, 1);
    assert.match(both.stderr, /give --image or --frames, not both/);
  });

  it('run --heatmap writes a PNG of the kept and retrieved patches', async () => {
    const file = path.join(tempDir(), 'look.png');
    const r = run(
      'run',
      '--model',
      fixture('llava-tiny'),
      '--image',
      `${fixture('llava-tiny')}/image.png`,
      '--prompt',
      'What is shown in this image?',
      '--max-new-tokens',
      '3',
      '--method',
      'sparsevila',
      '--heatmap',
      file,
    );
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stderr, new RegExp(`heatmap: ${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`));
    const meta = await sharp(file).metadata();
    assert.deepEqual([meta.format, meta.width, meta.height], ['png', 336, 380]);
  });

  it('scenes writes a split of synthetic scenes with their episodes', () => {
    const dir = tempDir();
    const r = run('scenes', '--split', 'test', '--count', '2', '--out', dir);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout.trim(), path.join(dir, 'episodes.jsonl'));
    assert.equal(readFileSync(path.join(dir, 'episodes.jsonl'), 'utf8').trim().split('\n').length, 2);
  });

  it('run streams the answer, then the timings', () => {
    const r = run(
      'run',
      '--model',
      fixture('llava-tiny'),
      '--image',
      `${fixture('llava-tiny')}/image.png`,
      '--prompt',
      'What is shown in this image?',
      '--max-new-tokens',
      '12',
    );
    assert.equal(r.status, 0, r.stderr);
    assert.ok(r.stdout.trim().length > 0);
    assert.match(r.stderr, /prefill \d+ ms, [\d.]+ tok\/s \| decode 12 tokens, [\d.]+ tok\/s \| KV read per step [\d.]+ MiB \| peak memory \d+ MiB/);
  });

  it('run with an unreadable image fails with a clear message', () => {
    const r = run('run', '--model', fixture('llava-tiny'), '--image', '/nonexistent/cat.png', '--prompt', 'hi');
    assert.equal(r.status, 1);
    assert.match(r.stderr, /\/nonexistent\/cat\.png: cannot open the image: no such file/);
  });

  it('info reports the kernel build and threads', () => {
    const r = run('info', '--threads', '2', '--json');
    assert.equal(r.status, 0, r.stderr);
    const j = JSON.parse(r.stdout) as { backend: string; threads: number; relaxedSimd: boolean };
    assert.equal(j.threads, 2);
    assert.equal(j.backend, j.relaxedSimd ? 'wasm-relaxed' : 'wasm-simd');
  });
});
