// `sparsevila run`: answer a prompt about an image with a model folder.
import cliProgress from 'cli-progress';
import { VisionLanguageModel } from '../engine/vlm.js';
import { LoadOptions } from '../engine/options.js';
import { LinearCompute } from '../kernels/backend.js';
import { OptionError } from '../base/errors.js';
import { checkInputFile, checkOutputFile } from '../base/files.js';
import { ImageLimits } from '../io/image-types.js';
import { EXIT_INTERRUPTED, Interrupts } from './interrupt.js';
import { setExitCode } from './exit.js';
import { ChosenMethod, MethodChoice, MethodName, checkMethodForModel, chooseMethod, knobFlag, methodStages } from '../sparsity/choice.js';
import { modelDir } from '../default-model.js';

export interface RunOptions extends LoadFlags {
  model?: string;
  image?: string[];
  frames?: string[];
  prompt: string;
  maxNewTokens: number;
  temperature: number;
  topK?: number;
  topP?: number;
  seed: number;
  method?: MethodName;
  visualBudget?: number;
  prefillSparsity?: number;
  decodeSparsity?: number;
  fastvK?: number;
  fastvR?: number;
  pdropLambda?: number;
  json?: boolean;
  heatmap?: string;
}

/** The flags every model-loading command takes. */
export interface LoadFlags {
  threads?: number;
  maxImageBytes?: number;
  maxImagePixels?: number;
  visionCompute?: LinearCompute;
  int4Activations?: 'i16' | 'i8';
}

/** The image bounds the --max-image-* flags set (the library's defaults for the others). */
export function imageLimitsOf(o: LoadFlags): Partial<ImageLimits> {
  return {
    ...(o.maxImageBytes !== undefined ? { maxBytes: o.maxImageBytes } : {}),
    ...(o.maxImagePixels !== undefined ? { maxPixels: o.maxImagePixels } : {}),
  };
}

/** What VisionLanguageModel.load gets from a command's flags. */
export function loadOptionsOf(o: LoadFlags): LoadOptions {
  return { threads: o.threads, onWarning: cliWarning, imageLimits: imageLimitsOf(o), visionCompute: o.visionCompute, int4Activations: o.int4Activations };
}

/** A warning of the engine or the command, on stderr. */
export function cliWarning(message: string): void {
  console.error(`sparsevila: warning: ${message}`);
}

/** Checks, before the model is loaded, the files a command will read and write. */
export function checkPaths(input: { files: string[]; video: boolean }, heatmap: string | undefined): void {
  for (const f of input.files) checkInputFile(f, input.video ? '--frames' : '--image', 'image');
  if (heatmap !== undefined) checkOutputFile(heatmap, '--heatmap');
}

/** Checks the method flags against the loaded model (what they can only be checked with). */
export function checkMethodFlags(o: MethodFlags, model: VisionLanguageModel): void {
  checkMethodForModel(o, model.decoder.layers, knobFlag);
}

/** The flags of --method and its hyperparameters. */
export type MethodFlags = MethodChoice;

/** The visual inputs of a run: --image files, or --frames (a video as image files in time order). */
export function visualInputs(o: { image?: string[]; frames?: string[] }): { files: string[]; video: boolean } {
  if (o.image?.length && o.frames?.length) throw new OptionError('give --image or --frames, not both');
  return o.frames?.length ? { files: o.frames, video: true } : { files: o.image ?? [], video: false };
}

/** What --method and its flags ask for: the generate options of the method, and how to report it. */
export function methodOf(o: MethodFlags, video = false): ChosenMethod {
  return chooseMethod(o, knobFlag, video);
}

export async function runCommand(o: RunOptions): Promise<void> {
  const input = visualInputs(o);
  const sparsity = methodOf(o, input.video);
  checkPaths(input, o.heatmap);
  // Progress goes to stderr and only on a terminal; --json keeps stdout one JSON object.
  const showProgress = !o.json && process.stderr.isTTY;
  const bar = showProgress
    ? new cliProgress.SingleBar(
        { format: ' {phase} [{bar}] {percentage}% | {value}/{total} MiB', stream: process.stderr, clearOnComplete: true, hideCursor: true },
        cliProgress.Presets.shades_classic,
      )
    : null;
  let started = false;
  const model = await VisionLanguageModel.load(modelDir(o.model), {
    ...loadOptionsOf(o),
    onProgress: (loaded, total) => {
      if (!bar) return;
      const mib = (b: number) => Math.round(b / 2 ** 20);
      if (!started) {
        bar.start(mib(total), 0, { phase: 'loading weights' });
        started = true;
      }
      bar.update(mib(loaded));
    },
  });
  if (bar && started) bar.stop();
  // Ctrl-C outside the answer (writing the heatmap, ...) exits at once, as before it is installed.
  const interrupts = new Interrupts(() => process.exit(EXIT_INTERRUPTED));
  try {
    checkMethodFlags(o, model);
    if (model.takesImages && input.files.length === 0) cliWarning('no --image given: the model answers from the prompt text alone');
    if (o.prompt.trim() === '') cliWarning(`the prompt is empty: the model answers ${input.files.length ? 'the image' : 'nothing'} with no question`);
    if (showProgress && input.files.length) process.stderr.write(' encoding image…\r');
    let first = true;
    const signal = interrupts.begin();
    const r = await model.generate(
      { images: input.files, prompt: o.prompt },
      {
        signal,
        maxNewTokens: o.maxNewTokens,
        temperature: o.temperature,
        topK: o.topK,
        topP: o.topP,
        seed: o.seed,
        ...methodStages(sparsity),
        onToken: o.json
          ? undefined
          : (text) => {
              if (first && showProgress) process.stderr.write('\x1b[2K');
              first = false;
              process.stdout.write(text);
            },
      },
    );
    interrupts.end();
    if (r.finishReason === 'abort') setExitCode(EXIT_INTERRUPTED);
    const s = r.stats;
    const heatmaps = o.heatmap && r.visual ? await model.writeHeatmaps(o.heatmap, input.files, r) : [];
    if (o.json) {
      console.log(
        JSON.stringify({
          ids: r.ids,
          text: r.text,
          finishReason: r.finishReason,
          method: o.method ?? 'dense',
          methodDetail: sparsity.label,
          prefillSparsity: sparsity.prefill,
          decodeSparsity: sparsity.decode,
          promptTokens: s.promptTokens,
          imageTokens: s.imageTokens,
          visualTokensIn: s.visualTokensIn,
          visualTokensRetrieved: s.visualTokensRetrieved,
          visualTokensPerLayer: s.visualTokensPerLayer,
          newTokens: s.newTokens,
          imageMs: round(s.imageMs),
          prefillMs: round(s.prefillMs),
          prefillTokensPerSecond: round(s.prefillTokensPerSecond),
          decodeTokensPerSecond: round(s.decodeTokensPerSecond),
          peakMemoryBytes: s.peakMemoryBytes,
          backend: model.backend.name,
          kvBytesPerStep: s.kvBytesPerStep,
          visual: r.visual,
          ...(heatmaps.length ? { heatmaps } : {}),
        }),
      );
    } else {
      process.stdout.write('\n');
      console.error(
        `\n[${r.finishReason}] prompt ${s.promptTokens} tokens (${s.imageTokens} image${s.imageTokens !== s.visualTokensIn ? ` of ${s.visualTokensIn}` : ''}` +
          `${s.visualTokensRetrieved !== s.imageTokens ? `, ${perLayer(s.visualTokensPerLayer)} per layer in decode` : ''}) | image ${s.imageMs.toFixed(0)} ms | ` +
          `prefill ${s.prefillMs.toFixed(0)} ms, ${s.prefillTokensPerSecond.toFixed(1)} tok/s | decode ${s.newTokens} tokens, ` +
          `${s.decodeTokensPerSecond.toFixed(1)} tok/s | KV read per step ${(s.kvBytesPerStep / 2 ** 20).toFixed(1)} MiB | peak memory ${(s.peakMemoryBytes / 2 ** 20).toFixed(0)} MiB | ${model.backend.name}, ${model.backend.threads} threads${model.visionCompute === 'stored' ? '' : `, vision ${model.visionCompute}`}`,
      );
      for (const h of heatmaps) console.error(`heatmap: ${h}`);
    }
  } finally {
    interrupts.dispose();
    await model.close();
  }
}

function round(x: number): number {
  return Math.round(x * 100) / 100;
}

/** "n" when every layer attends to as many visual tokens, else "min / mean / max". */
export function perLayer(p: { min: number; mean: number; max: number }): string {
  return p.min === p.max ? `${p.min}` : `${p.min} / ${round(p.mean)} / ${p.max} (min / mean / max)`;
}
