// `sparsevila quantize`: a model folder to a 4-bit AutoAWQ GEMM checkpoint (see quantize/).
import path from 'node:path';
import cliProgress from 'cli-progress';
import { modelDir } from '../default-model.js';
import { ensureOutputDir, readTextFile } from '../base/files.js';
import { OptionError } from '../base/errors.js';
import { CalibrationSample, quantizeModel } from '../quantize/quantize-model.js';
import { readEpisodes } from '../eval/harness.js';
import { makeScene, renderScene, splitSeeds } from '../data/scenes.js';
import { cliWarning } from './run.js';

export interface QuantizeCliOptions {
  model?: string;
  out: string;
  method: 'rtn' | 'awq';
  groupSize: number;
  calib?: string;
  calibSamples: number;
  threads?: number;
}

/**
 * Calibration prompts from --calib: an episodes.jsonl (as `sparsevila scenes` writes: each
 * episode's image with its questions) or a text file (one prompt per non-empty line).
 */
export async function readCalibration(file: string, max: number): Promise<CalibrationSample[]> {
  if (file.endsWith('.jsonl')) {
    const out: CalibrationSample[] = [];
    for (const e of readEpisodes(file)) {
      for (const q of e.questions) out.push({ images: [path.resolve(path.dirname(file), e.image)], prompt: q.question });
    }
    return out.slice(0, max);
  }
  const lines = readTextFile(file, { what: 'calibration prompts', maxBytes: 64 * 2 ** 20 })!
    .split(/\r?\n/)
    .map((l) => l.trim())
    .filter((l) => l.length > 0);
  if (lines.length === 0) throw new OptionError(`--calib ${file}: no prompts (one per line, or an episodes.jsonl)`);
  return lines.slice(0, max).map((prompt) => ({ prompt }));
}

/** The default model's calibration: scenes of the training split with their questions (never the test split). */
export async function defaultCalibration(max: number): Promise<CalibrationSample[]> {
  const out: CalibrationSample[] = [];
  for (const seed of splitSeeds('train', Math.ceil(max / 2))) {
    const s = makeScene(seed);
    const png = await renderScene(s);
    for (const q of s.episode.slice(0, 2)) out.push({ images: [png], prompt: q.question });
  }
  return out.slice(0, max);
}

export async function quantizeCommand(o: QuantizeCliOptions): Promise<void> {
  const dir = modelDir(o.model);
  ensureOutputDir(o.out, '--out');
  let calibration: CalibrationSample[] | undefined;
  if (o.method === 'awq') {
    if (o.calib) calibration = await readCalibration(o.calib, o.calibSamples);
    else if (!o.model) calibration = await defaultCalibration(o.calibSamples);
    else throw new OptionError('--method awq needs --calib FILE (an episodes.jsonl with images and questions, or one text prompt per line)');
  }
  const bar = process.stderr.isTTY
    ? new cliProgress.SingleBar(
        { format: ' {phase} [{bar}] {value}/{total} | layer {layer}', stream: process.stderr, clearOnComplete: true, hideCursor: true },
        cliProgress.Presets.shades_classic,
      )
    : null;
  let phase = '';
  const progress = (name: string) => (done: number, total: number, layer: number) => {
    if (!bar) return;
    if (phase !== name) {
      if (phase) bar.stop();
      bar.start(total, 0, { layer, phase: name });
      phase = name;
    }
    bar.update(done, { layer, phase: name });
  };
  const r = await quantizeModel(dir, o.out, {
    method: o.method,
    groupSize: o.groupSize,
    calibration,
    threads: o.threads,
    onWarning: cliWarning,
    onSearch: progress('AWQ search (scales, then clipping)'),
    onProgress: progress('rounding to 4 bits'),
  });
  bar?.stop();
  const mib = (b: number) => (b / 2 ** 20).toFixed(1);
  console.log(
    `wrote ${r.out}: ${r.linears} decoder linears in 4 bits (${o.method}, group ${r.groupSize})${r.keptLinears ? `, ${r.keptLinears} kept as stored` : ''}, weights ${mib(r.bytesIn)} MiB -> ${mib(r.bytesOut)} MiB (AutoAWQ GEMM format)`,
  );
  if (r.alphas) console.log(`AWQ scale exponents per linear group: ${r.alphas.map((a) => (a === null ? '-' : a.toFixed(2))).join(' ')}`);
}
