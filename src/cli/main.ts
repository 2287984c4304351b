#!/usr/bin/env node
// The `sparsevila` command line. A thin shell: each command calls the library and prints.
import { Command, InvalidArgumentError } from 'commander';
import { readFileSync } from 'node:fs';
import { inspectCheckpoint, formatInspection } from './inspect.js';
import { runtimeInfo } from './info.js';

const pkg = JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version: string; description: string };

const program = new Command();
program
  .name('sparsevila')
  .description(pkg.description)
  .version(pkg.version, '-v, --version')
  .showHelpAfterError();

program
  .command('inspect')
  .description('validate a model folder (Hugging Face layout) and summarise its config and tensors')
  .argument('<dir>', 'model folder with config.json and model.safetensors (or sharded *.safetensors + index)')
  .option('--json', 'print one JSON object instead of text')
  .action((dir: string, opts: { json?: boolean }) => {
    const r = inspectCheckpoint(dir);
    console.log(opts.json ? JSON.stringify(r, null, 2) : formatInspection(r));
  });

program
  .command('info')
  .description('show the compute runtime: kernel build (relaxed SIMD or plain SIMD128), threads, memory bandwidth')
  .option('--threads <n>', 'threads to start', (v) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError('expected a positive integer');
    return n;
  })
  .option('--probe', 'also measure read bandwidth and SIMD peak (a few seconds)')
  .option('--json', 'print one JSON object instead of text')
  .action(async (opts: { threads?: number; probe?: boolean; json?: boolean }) => {
    const r = await runtimeInfo(opts);
    console.log(opts.json ? JSON.stringify(r, null, 2) : Object.entries(r).map(([k, v]) => `${k}: ${v}`).join('\n'));
  });

try {
  await program.parseAsync(process.argv);
} catch (e) {
  console.error(`sparsevila: ${(e as Error).message}`);
  process.exitCode = 1;
}
