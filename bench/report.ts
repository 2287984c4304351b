// Shared by the benchmarks: a description of the machine, timing helpers, and writing a section
// of docs/BENCHMARKS.md (each benchmark owns the section between its markers).
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { fileURLToPath } from 'node:url';
import { WasmBackend } from '../src/kernels/wasm-backend.js';

export function machineDescription(extra: string[] = []): string {
  const cpu = os.cpus()[0]?.model?.trim() ?? 'unknown CPU';
  const mem = (os.totalmem() / 2 ** 30).toFixed(0);
  return [
    `${cpu}, ${os.availableParallelism()} cores, ${mem} GiB`,
    `Node ${process.versions.node} (V8 ${process.versions.v8}), ${os.platform()} ${os.arch()}`,
    ...extra,
  ].join('; ');
}

/**
 * Median and best of `reps` timed runs (ms), after at least `warmup` untimed runs and at least
 * `warmupMs` of them: two threads reach their steady speed only after a fraction of a second of
 * sustained work on this machine (the first 2-thread GEMMs run ~20% slower), and the figures are
 * of the steady state.
 */
export function time(fn: () => void, reps: number, warmup = 1, warmupMs = 1000): { median: number; best: number } {
  const w0 = performance.now();
  for (let i = 0; i < warmup || performance.now() - w0 < warmupMs; i++) fn();
  const t: number[] = [];
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    fn();
    t.push(performance.now() - t0);
  }
  t.sort((a, b) => a - b);
  return { median: t[Math.floor(t.length / 2)], best: t[0] };
}

export function markdownTable(header: string[], rows: (string | number)[][]): string {
  const line = (cells: (string | number)[]) => `| ${cells.join(' | ')} |`;
  return [line(header), line(header.map(() => '---')), ...rows.map(line)].join('\n');
}

/** Replaces (or appends) the section `name` of docs/BENCHMARKS.md. */
export function writeSection(name: string, body: string): string {
  const file = fileURLToPath(new URL('../../docs/BENCHMARKS.md', import.meta.url));
  const begin = `<!-- bench:${name} -->`,
    end = `<!-- /bench:${name} -->`;
  let doc = existsSync(file)
    ? readFileSync(file, 'utf8')
    : '# Benchmarks\n\nEvery figure here is written by a benchmark script (`npm run bench:…`); rerun it to refresh its section.\n';
  const block = `${begin}\n${body.trim()}\n${end}`;
  const i = doc.indexOf(begin),
    j = doc.indexOf(end);
  if (i >= 0 && j > i) doc = doc.slice(0, i) + block + doc.slice(j + end.length);
  else doc = `${doc.trimEnd()}\n\n${block}\n`;
  writeFileSync(file, doc);
  return file;
}

/** The machine's limits at 2 threads, measured now: read bandwidth (GB/s) and SIMD peak (GFLOPS). */
export async function probeMachine(): Promise<{ readGBs: number; peakGflops: number }> {
  const be = await WasmBackend.create({ threads: 2 });
  try {
    return { readGBs: be.probeReadBandwidth(), peakGflops: be.probePeakFlops() };
  } finally {
    await be.close();
  }
}
