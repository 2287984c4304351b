// End-to-end tests of the `sparsevila` command line (run as a child process, as a user would).
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { fixture } from './helpers.js';

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
    const j = JSON.parse(r.stdout) as { modelType: string; tensors: number; dtypes: Record<string, { tensors: number }>; config: { text: { numKeyValueHeads: number } } };
    assert.equal(j.modelType, 'llava');
    assert.equal(j.config.text.numKeyValueHeads, 2);
    assert.ok(j.tensors > 50);
    assert.deepEqual(Object.keys(j.dtypes), ['F16']);
  });

  it('inspect of a folder without config.json fails with a clear message and exit code 1', () => {
    const r = run('inspect', fixture('does-not-exist'));
    assert.equal(r.status, 1);
    assert.match(r.stderr, /does-not-exist\/config\.json: cannot read config/);
  });

  it('inspect of an unsupported architecture names it', () => {
    const r = run('inspect', fixture('smolvlm-tiny'));
    assert.equal(r.status, 1);
    assert.match(r.stderr, /idefics3/);
  });

  it('run --json answers about the image with the golden greedy tokens', () => {
    const golden = JSON.parse(readFileSync(new URL('../../test/fixtures/llava-tiny/golden.json', import.meta.url), 'utf8')) as { generation: { new_tokens: number[] } };
    const r = run('run', '--model', fixture('llava-tiny'), '--image', `${fixture('llava-tiny')}/image.png`, '--prompt', 'What is shown in this image?', '--max-new-tokens', '12', '--json');
    assert.equal(r.status, 0, r.stderr);
    const j = JSON.parse(r.stdout) as { ids: number[]; text: string; promptTokens: number; imageTokens: number; prefillTokensPerSecond: number; decodeTokensPerSecond: number; peakMemoryBytes: number };
    assert.deepEqual(j.ids, golden.generation.new_tokens);
    assert.equal(j.promptTokens, 82);
    assert.equal(j.imageTokens, 64);
    assert.ok(j.text.length > 0 && j.prefillTokensPerSecond > 0 && j.decodeTokensPerSecond > 0 && j.peakMemoryBytes > 0);
  });

  it('run --prefill-sparsity 0.75 keeps a quarter of the visual tokens; a value outside [0, 1) is refused', () => {
    const r = run('run', '--model', fixture('llava-tiny'), '--image', `${fixture('llava-tiny')}/image.png`, '--prompt', 'What is shown in this image?', '--max-new-tokens', '4', '--prefill-sparsity', '0.75', '--json');
    assert.equal(r.status, 0, r.stderr);
    const j = JSON.parse(r.stdout) as { ids: number[]; promptTokens: number; imageTokens: number; visualTokensIn: number };
    assert.deepEqual([j.promptTokens, j.imageTokens, j.visualTokensIn, j.ids.length], [82 - 48, 16, 64, 4]);
    const bad = run('run', '--model', fixture('llava-tiny'), '--prompt', 'hi', '--prefill-sparsity', '1');
    assert.equal(bad.status, 1);
    assert.match(bad.stderr, /--prefill-sparsity.*expected a number in \[0, 1\)/);
  });

  it('run streams the answer, then the timings', () => {
    const r = run('run', '--model', fixture('llava-tiny'), '--image', `${fixture('llava-tiny')}/image.png`, '--prompt', 'What is shown in this image?', '--max-new-tokens', '12');
    assert.equal(r.status, 0, r.stderr);
    assert.ok(r.stdout.trim().length > 0);
    assert.match(r.stderr, /prefill \d+ ms, [\d.]+ tok\/s \| decode 12 tokens, [\d.]+ tok\/s \| peak memory \d+ MiB/);
  });

  it('run with an unreadable image fails with a clear message', () => {
    const r = run('run', '--model', fixture('llava-tiny'), '--image', '/nonexistent/cat.png', '--prompt', 'hi');
    assert.equal(r.status, 1);
    assert.match(r.stderr, /\/nonexistent\/cat\.png: cannot read the file/);
  });

  it('info reports the kernel build and threads', () => {
    const r = run('info', '--threads', '2', '--json');
    assert.equal(r.status, 0, r.stderr);
    const j = JSON.parse(r.stdout) as { backend: string; threads: number; relaxedSimd: boolean };
    assert.equal(j.threads, 2);
    assert.equal(j.backend, j.relaxedSimd ? 'wasm-relaxed' : 'wasm-simd');
  });
});
