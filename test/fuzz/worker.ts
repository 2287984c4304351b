// A fuzz worker (a child process of fuzz.test.ts): builds each case it is sent, runs it through
// the command line in-process (main(), the code the executable runs) and through the library's
// loader, and sends back exit codes, output and its peak memory.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { main } from '../../src/cli/program.js';
import { VisionLanguageModel } from '../../src/engine/vlm.js';
import { InputError } from '../../src/base/errors.js';
import { QUESTION, makeCase } from './cases.js';

export interface CommandResult {
  argv: string[];
  code: number;
  stdout: string;
  stderr: string;
  ms: number;
}
export interface CaseResult {
  index: number;
  results: CommandResult[];
  maxRssBytes: number;
  error?: string;
}

/** Runs the command line with its output captured. */
async function cli(argv: string[]): Promise<CommandResult> {
  let stdout = '',
    stderr = '';
  const out = process.stdout.write.bind(process.stdout),
    err = process.stderr.write.bind(process.stderr);
  process.stdout.write = ((c: string | Uint8Array) => {
    stdout += String(c);
    return true;
  }) as typeof process.stdout.write;
  process.stderr.write = ((c: string | Uint8Array) => {
    stderr += String(c);
    return true;
  }) as typeof process.stderr.write;
  const t0 = performance.now();
  let code: number;
  try {
    code = await main(argv);
  } finally {
    process.stdout.write = out;
    process.stderr.write = err;
  }
  return { argv, code, stdout: stdout.slice(0, 4000), stderr: stderr.slice(0, 4000), ms: performance.now() - t0 };
}

/** Loads the folder with the library (as an application would): 0, 1 for an InputError, 70 otherwise. */
async function load(dir: string): Promise<CommandResult> {
  const t0 = performance.now();
  try {
    const m = await VisionLanguageModel.load(dir, { threads: 1, onWarning: () => {} });
    await m.close();
    return { argv: ['load', dir], code: 0, stdout: '', stderr: '', ms: performance.now() - t0 };
  } catch (e) {
    const internal = !(e instanceof InputError);
    return {
      argv: ['load', dir],
      code: internal ? 70 : 1,
      stdout: '',
      stderr: `${(e as Error).name}: ${(e as Error).message}`.slice(0, 4000),
      ms: performance.now() - t0,
    };
  }
}

async function runCase(seed: number, index: number): Promise<CaseResult> {
  const c = makeCase(seed, index);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sparsevila-fuzz-'));
  const results: CommandResult[] = [];
  try {
    const files = await c.build(dir);
    if (c.folder) {
      results.push(await cli(['inspect', files.model]));
      results.push(await load(files.model));
    }
    if (c.command === 'run') {
      results.push(
        await cli(['run', '--model', files.model, '--image', files.image, '--prompt', QUESTION, '--max-new-tokens', '3', '--threads', '1', ...c.args]),
      );
    } else {
      results.push(await cli(['eval', '--model', files.model, '--data', files.data!, '--max-new-tokens', '2', '--threads', '1', ...c.args]));
    }
    return { index, results, maxRssBytes: process.resourceUsage().maxRSS * 1024 };
  } catch (e) {
    return { index, results, maxRssBytes: process.resourceUsage().maxRSS * 1024, error: (e as Error).stack ?? String(e) };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

process.on('message', (m: { seed: number; index: number }) => {
  void runCase(m.seed, m.index).then((r) => process.send!(r));
});
process.send!({ ready: true });
