// `sparsevila eval`: exact-match accuracy of a model with a sparsity method over episodes.
import cliProgress from 'cli-progress';
import { VisionLanguageModel } from '../engine/vlm.js';
import { EvalReport, evaluate, readEpisodes } from '../eval/harness.js';
import { LoadFlags, MethodFlags, checkMethodFlags, loadOptionsOf, methodOf } from './run.js';
import { modelDir } from '../default-model.js';
import { setExitCode } from './exit.js';

export interface EvalCliOptions extends MethodFlags, LoadFlags {
  model?: string;
  data: string;
  mode: 'independent' | 'chat';
  maxNewTokens: number;
  json?: boolean;
}

const pct = (a: { correct: number; total: number; accuracy: number }) => `${(100 * a.accuracy).toFixed(1)}% (${a.correct}/${a.total})`;

export function formatReport(label: string, mode: string, r: EvalReport): string {
  return [
    `method ${label}, ${mode} mode: ${pct(r.overall)} exact match`,
    ...Object.entries(r.byType).map(([t, a]) => `  ${t.padEnd(10)} ${pct(a)}`),
    `  turn 1     ${pct(r.firstTurn)}`,
    `  turns >= 2 ${pct(r.laterTurns)}`,
    `  ${r.meanMsPerQuestion.toFixed(0)} ms per question end to end; ${r.meanVisualTokens.toFixed(1)} visual tokens in the prompt, ${r.meanVisualPerLayer.toFixed(1)} per layer in decode`,
    ...(r.failed.length
      ? [`  ${r.failed.length} episode${r.failed.length === 1 ? '' : 's'} failed (${r.failed.reduce((a, f) => a + f.questions, 0)} questions not scored)`]
      : []),
  ].join('\n');
}

export async function evalCommand(o: EvalCliOptions): Promise<void> {
  const m = methodOf(o);
  const episodes = readEpisodes(o.data);
  const model = await VisionLanguageModel.load(modelDir(o.model), loadOptionsOf(o));
  const total = episodes.reduce((a, e) => a + e.questions.length, 0);
  const bar =
    !o.json && process.stderr.isTTY
      ? new cliProgress.SingleBar(
          { format: ' eval [{bar}] {value}/{total} questions', stream: process.stderr, clearOnComplete: true },
          cliProgress.Presets.shades_classic,
        )
      : null;
  try {
    checkMethodFlags(o, model);
    bar?.start(total, 0);
    const report = await evaluate(model, episodes, {
      mode: o.mode,
      maxNewTokens: o.maxNewTokens,
      prefill: m.reducer,
      prefillSparsity: m.reducer ? undefined : m.prefill,
      decode: m.decodeMethod,
      decodeSparsity: m.decodeMethod ? undefined : m.decode,
      onQuestion: (done) => bar?.update(done),
    });
    bar?.stop();
    if (o.json) console.log(JSON.stringify({ method: o.method ?? 'dense', methodDetail: m.label, mode: o.mode, ...report }));
    else console.log(formatReport(m.label, o.mode, report));
    for (const f of report.failed)
      console.error(
        `sparsevila: episode ${f.episode + 1}${f.source ? ` (${f.source})` : ''} failed, its ${f.questions} question${f.questions === 1 ? '' : 's'} not scored: ${f.error}`,
      );
    if (report.failed.length) setExitCode(1);
  } finally {
    await model.close();
  }
}
