// Fuzzing the engine with bad input: a seeded generator (test/fuzz/cases.ts) mutates the default
// model's folder (config fields, tensor headers, tokenizer, chat template, preprocessor and
// generation configs), images (formats, sizes, truncation, lying headers, non-files), eval files
// and flags; two worker processes run each case through `inspect`, the library's loader and a
// short `run` (or `eval`), in-process through the CLI's main(). Every case must end within its
// time limit, keep the worker under the memory bound, never end in an internal error (exit 70,
// TypeError, RangeError, typed-array or allocation messages), and a case that must fail exits
// non-zero with a message naming the file, field, tensor or flag. inspect must refuse exactly the
// folders loading refuses, with loading's message. FUZZ_SEED and FUZZ_CASES change the run.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ChildProcess, fork } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { FuzzCase, makeCase } from './fuzz/cases.js';
import type { CaseResult, CommandResult } from './fuzz/worker.js';

const SEED = Number(process.env.FUZZ_SEED ?? 1);
const CASES = Number(process.env.FUZZ_CASES ?? 320);
/** A case (up to three commands on a 4M-parameter model) that takes longer has hung. */
const TIME_LIMIT_MS = 20_000;
/** Peak resident memory of a worker process, over all the cases it ran. */
const MEMORY_BOUND_BYTES = 1024 * 2 ** 20;
const WORKERS = 2;

/** What an internal error looks like in a message: a JS error type, an allocation failure, a crash. */
const INTERNAL =
  /internal error|\b(TypeError|RangeError|ReferenceError|EvalError)\b|Invalid typed array length|Array buffer allocation failed|cannot allocate|Maximum call stack|out of memory|Cannot read properties|is not a function|is not iterable|\bundefined\b|\bNaN\b/;

interface Outcome {
  c: FuzzCase;
  r: CaseResult | null;
  timedOut: boolean;
  ms: number;
}

function startWorker(): Promise<ChildProcess> {
  const w = fork(fileURLToPath(new URL('./fuzz/worker.js', import.meta.url)), { stdio: ['ignore', 'ignore', 'inherit', 'ipc'] });
  return new Promise((resolve, reject) => {
    w.once('message', () => resolve(w));
    w.once('error', reject);
  });
}

/** Runs the cases on a pool of workers; a case past the time limit kills its worker (a new one takes over). */
async function runAll(cases: FuzzCase[]): Promise<Outcome[]> {
  const outcomes: Outcome[] = [];
  let next = 0;
  const lane = async () => {
    let w = await startWorker();
    while (next < cases.length) {
      const c = cases[next++];
      const t0 = performance.now();
      const r = await new Promise<CaseResult | null>((resolve) => {
        const timer = setTimeout(() => {
          w.removeAllListeners('message');
          w.kill('SIGKILL');
          resolve(null);
        }, TIME_LIMIT_MS);
        w.once('message', (m) => {
          clearTimeout(timer);
          resolve(m as CaseResult);
        });
        w.send({ seed: SEED, index: c.index });
      });
      outcomes.push({ c, r, timedOut: r === null, ms: performance.now() - t0 });
      if (r === null) w = await startWorker();
    }
    w.kill();
  };
  await Promise.all(Array.from({ length: WORKERS }, lane));
  return outcomes.sort((a, b) => a.c.index - b.c.index);
}

const names = (s: string, list: string[]) => list.length === 0 || list.some((n) => s.toLowerCase().includes(n.toLowerCase()));
const messageOf = (r: CommandResult) => r.stderr.replace(/^\w+Error: /, '').trim();

/** Every violation of the acceptance rules by one case, in words. */
function violations(o: Outcome): string[] {
  const { c, r } = o;
  if (o.timedOut || !r) return [`did not end within ${TIME_LIMIT_MS} ms`];
  const v: string[] = [];
  if (r.error) v.push(`the harness failed to build or run it: ${r.error.split('\n')[0]}`);
  if (r.maxRssBytes > MEMORY_BOUND_BYTES) v.push(`worker peak memory ${(r.maxRssBytes / 2 ** 20).toFixed(0)} MiB > ${MEMORY_BOUND_BYTES / 2 ** 20} MiB`);
  for (const x of r.results) {
    if (x.code === 70 || INTERNAL.test(x.stderr)) v.push(`${x.argv[0]}: internal error: ${x.stderr.split('\n').slice(0, 2).join(' | ')}`);
  }
  const main = r.results[r.results.length - 1];
  if (!main) return v;
  const failed = main.code !== 0;
  if (c.expect === 'fail' && !failed) v.push(`${main.argv[0]} should have failed but exited 0`);
  if (c.expect === 'pass' && failed) v.push(`${main.argv[0]} should have passed but exited ${main.code}: ${main.stderr.trim().split('\n').pop()}`);
  if (failed && !names(main.stderr, c.names))
    v.push(`${main.argv[0]}'s message names none of ${JSON.stringify(c.names)}: ${main.stderr.trim().split('\n').pop()}`);
  if (c.folder) {
    const [inspect, load] = r.results;
    if ((inspect.code === 0) !== (load.code === 0)) {
      v.push(`inspect exited ${inspect.code} but loading ${load.code === 0 ? 'succeeds' : `fails: ${messageOf(load)}`}`);
    } else if (load.code !== 0 && !inspect.stderr.includes(messageOf(load))) {
      v.push(`inspect does not list loading's problem: ${messageOf(load)}`);
    }
    if (load.code !== 0 && !failed) v.push('run succeeded on a folder loading refuses');
  }
  return v;
}

test(`fuzz: ${CASES} seeded bad inputs through inspect, loading, run and eval`, { timeout: 600_000 }, async () => {
  const cases = Array.from({ length: CASES }, (_, i) => makeCase(SEED, i));
  const t0 = performance.now();
  const outcomes = await runAll(cases);
  const wall = performance.now() - t0;
  const bad = outcomes.flatMap((o) => violations(o).map((v) => `#${o.c.index} ${o.c.description}: ${v}`));

  // The counts.
  const byKind = new Map<string, { cases: number; failed: number; passed: number }>();
  for (const o of outcomes) {
    const k = byKind.get(o.c.kind) ?? { cases: 0, failed: 0, passed: 0 };
    k.cases++;
    const main = o.r?.results[o.r.results.length - 1];
    if (main && main.code !== 0) k.failed++;
    else if (main) k.passed++;
    byKind.set(o.c.kind, k);
  }
  const peak = Math.max(...outcomes.map((o) => o.r?.maxRssBytes ?? 0));
  const slowest = outcomes.reduce((a, b) => (b.ms > a.ms ? b : a));
  const lines = [
    `fuzz seed ${SEED}: ${outcomes.length} cases in ${(wall / 1000).toFixed(1)} s on ${WORKERS} workers`,
    ...[...byKind].map(([k, n]) => `  ${k.padEnd(12)} ${String(n.cases).padStart(4)} cases: ${n.failed} refused with a message, ${n.passed} ran`),
    `  expected to fail: ${outcomes.filter((o) => o.c.expect === 'fail').length}, to pass: ${outcomes.filter((o) => o.c.expect === 'pass').length}, either: ${outcomes.filter((o) => o.c.expect === 'any').length}`,
    `  timed out (> ${TIME_LIMIT_MS / 1000} s): ${outcomes.filter((o) => o.timedOut).length}; slowest case ${(slowest.ms / 1000).toFixed(2)} s (#${slowest.c.index} ${slowest.c.description})`,
    `  worker peak memory ${(peak / 2 ** 20).toFixed(0)} MiB (bound ${MEMORY_BOUND_BYTES / 2 ** 20} MiB)`,
    `  internal errors: ${bad.filter((b) => b.includes('internal error')).length}; violations: ${bad.length}`,
  ];
  console.log(lines.join('\n'));
  assert.ok(outcomes.length >= 300 || CASES < 300, 'at least 300 cases');
  assert.deepEqual(bad, [], `${bad.length} cases broke the rules:\n${bad.join('\n')}`);
});
