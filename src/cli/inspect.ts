// `sparsevila inspect DIR`: checks a model folder as loading does and summarises it; exits 1 with
// every problem listed when it would not load.
import { Inspection, inspectModel } from '../engine/inspect.js';
import { setExitCode } from './exit.js';

export async function inspectCommand(dir: string, opts: { json?: boolean }): Promise<void> {
  const r = await inspectModel(dir);
  console.log(opts.json ? JSON.stringify(r, null, 2) : formatInspection(r));
  // Text: the summary on stdout, each problem and warning on stderr.
  if (!opts.json) {
    for (const w of r.warnings) console.error(`sparsevila: warning: ${w}`);
    for (const p of r.problems) console.error(`sparsevila: ${p}`);
  }
  if (r.problems.length > 0) setExitCode(1);
}

export function formatInspection(r: Inspection): string {
  const mb = (b: number) => `${(b / 2 ** 20).toFixed(1)} MiB`;
  const lines = [`model folder: ${r.dir}`, `model type:   ${r.modelType ?? '(unknown: config.json could not be read)'}`];
  if (r.family) lines.push(`runs as:      ${r.family}`);
  lines.push(
    `files:        ${r.files.join(', ') || '(no weights read)'}`,
    `tensors:      ${r.tensors} (${r.parameters.toLocaleString('en-US')} parameters, ${mb(r.bytes)})`,
    ...Object.entries(r.dtypes).map(([d, v]) => `  ${d.padEnd(5)} ${String(v.tensors).padStart(5)} tensors, ${mb(v.bytes)}`),
  );
  lines.push(...(r.parts ?? []));
  if (r.weightFormats?.length) lines.push(`linears:      ${r.weightFormats.join(', ')}`);
  if (r.memoryPlaces !== undefined) lines.push(`memory:       ${r.memoryPlaces} wasm memor${r.memoryPlaces === 1 ? 'y' : 'ies'} of 4 GiB`);
  if (r.skipped.length)
    lines.push(
      `not used:     ${r.skipped.length} tensor${r.skipped.length === 1 ? '' : 's'} on purpose (${[...new Set(r.skipped.map((s) => s.why))].join('; ')})`,
    );
  lines.push(`warnings:     ${r.warnings.length}${r.warnings.length ? ' (on stderr)' : ''}`);
  lines.push(r.problems.length === 0 ? 'problems:     none (the folder loads)' : `problems:     ${r.problems.length} (on stderr): the folder does not load`);
  return lines.join('\n');
}
