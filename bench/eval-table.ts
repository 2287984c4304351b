// npm run eval:table: exact-match accuracy of dense, SparseVILA and every baseline on the default
// model's test split, in both multi-turn modes, at matched visual-token budgets. Prints each row as
// it is measured and writes docs/ACCURACY.md.
//
//   node dist/bench/eval-table.js [--scenes N] [--model DIR] [--threads N]
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { modelDir } from '../src/default-model.js';
import { writeSplit } from '../src/data/scenes.js';
import { VisionLanguageModel } from '../src/engine/vlm.js';
import { EvalEpisode, EvalOptions, EvalReport, evaluate, readEpisodes } from '../src/eval/harness.js';
import { fastV, pruMergePrefill, pyramidDrop, questDecode, visionZipPrefill } from '../src/sparsity/method.js';
import { pyramidDropStages } from '../src/sparsity/layerdrop.js';
import { keptCount } from '../src/sparsity/select.js';
import { machineDescription, markdownTable } from './report.js';
import { quantizeModel } from '../src/quantize/quantize-model.js';
import { defaultCalibration } from '../src/cli/quantize.js';
import { embedPrompt } from '../src/model/embed-prompt.js';
import { densePrefill } from '../src/sparsity/method.js';

const MODES = ['independent', 'chat'] as const;
type Mode = (typeof MODES)[number];

interface Row {
  method: string;
  settings: string;
  /** The budget it is matched to: SparseVILA's (p, d), or none (dense). */
  budget: string;
  options: Omit<EvalOptions, 'mode'>;
}

/**
 * PyramidDrop's lambda for a target: the mean share of visual tokens over the layers after its
 * first stage equals `share` (the layers FastV and SparseVILA also run with that share).
 */
export function pdropLambdaFor(layers: number, n: number, share: number): number {
  const meanShare = (lambda: number) => {
    const stages = pyramidDropStages(layers, lambda);
    const first = stages[0].layer;
    let left = n,
      sum = 0;
    for (let l = first + 1; l < layers; l++) {
      for (const st of stages) if (st.layer === l - 1) left = st.keep(left);
      sum += left;
    }
    return sum / (layers - first - 1) / n;
  };
  let lo = 0.01,
    hi = 1;
  for (let i = 0; i < 40; i++) {
    const mid = (lo + hi) / 2;
    if (meanShare(mid) < share) lo = mid;
    else hi = mid;
  }
  return Math.round(((lo + hi) / 2) * 100) / 100;
}

/** The rows of the table for a model with n visual tokens per image and `layers` LLM layers. */
export function tableRows(n: number, layers: number): Row[] {
  const rows: Row[] = [{ method: 'dense', settings: '', budget: '', options: {} }];
  for (const [p, d] of [
    [0.6, 0.75],
    [0.75, 0.9],
  ] as const) {
    const budget = `(${p}, ${d})`;
    const keep = keptCount(n, p),
      decodeVisual = keptCount(keep, d);
    const lambda = pdropLambdaFor(layers, n, keep / n);
    const questBudget = Math.ceil((decodeVisual + 32) / 16) * 16;
    rows.push(
      {
        method: 'SparseVILA',
        settings: `p ${p}, d ${d}: ${keep} visual tokens prefilled, ${decodeVisual} per layer at decode`,
        budget,
        options: { prefillSparsity: p, decodeSparsity: d },
      },
      { method: 'VisionZip', settings: `${keep} tokens`, budget, options: { prefill: visionZipPrefill(keep) } },
      { method: 'PruMerge', settings: `${keep} tokens`, budget, options: { prefill: pruMergePrefill(keep) } },
      { method: 'FastV', settings: `K 1, R ${p}: ${keep} tokens after layer 1`, budget, options: { decode: fastV(1, p) } },
      {
        method: 'PDrop',
        settings: `lambda ${lambda}: ${keep} tokens on average after layer ${pyramidDropStages(layers, lambda)[0].layer + 1}`,
        budget,
        options: { decode: pyramidDrop(lambda) },
      },
      {
        method: 'Quest',
        settings: `${questBudget} KV slots per decode step (${decodeVisual} visual + 32 of text, in 16-slot pages)`,
        budget,
        options: { decode: questDecode({ budget: questBudget }) },
      },
    );
  }
  return rows;
}

const pct = (x: number) => (100 * x).toFixed(1);

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const arg = (name: string) => {
    const i = args.indexOf(name);
    return i >= 0 ? args[i + 1] : undefined;
  };
  const scenes = Number(arg('--scenes') ?? 250);
  if (!Number.isInteger(scenes) || scenes < 1) throw new Error(`--scenes: expected a whole number >= 1, got ${arg('--scenes')}`);
  const dir = modelDir(arg('--model'));
  // Why the default model's table reads as it does (experiments beyond it, each with how it was
  // measured) is written by hand in bench/accuracy-findings.md and follows the generated reading;
  // it is left out for another --model.
  const findings = arg('--model') === undefined ? '\n' + readFileSync(fileURLToPath(new URL('../../bench/accuracy-findings.md', import.meta.url)), 'utf8') : '';
  const threads = arg('--threads') ? Number(arg('--threads')) : undefined;
  const tmp = mkdtempSync(path.join(os.tmpdir(), 'sparsevila-eval-'));
  try {
    console.log(`writing ${scenes} test scenes (seeds 3000000..${3000000 + scenes - 1}) to ${tmp}`);
    const episodes = readEpisodes(await writeSplit(tmp, 'test', scenes));
    const questions = episodes.reduce((a, e) => a + e.questions.length, 0);
    const model = await VisionLanguageModel.load(dir, { threads });
    const n = model.config.imageFacts?.minTokens;
    if (!n) throw new Error(`${dir}: the accuracy table needs a vision-language model`);
    const layers = model.decoder.layers;
    const results: { row: Row; mode: Mode; report: EvalReport }[] = [];
    try {
      for (const row of tableRows(n, layers)) {
        for (const mode of MODES) {
          const report = await evaluate(model, episodes, { ...row.options, mode, maxNewTokens: 8 });
          results.push({ row, mode, report });
          console.log(
            `${(row.method + ' ' + row.budget).padEnd(22)} ${mode.padEnd(11)} overall ${pct(report.overall.accuracy).padStart(5)}%  turn 1 ${pct(report.firstTurn.accuracy).padStart(5)}%  turns >= 2 ${pct(report.laterTurns.accuracy).padStart(5)}%  ` +
              Object.entries(report.byType)
                .map(([t, a]) => `${t} ${pct(a.accuracy)}`)
                .join('  ') +
              `  ${report.meanMsPerQuestion.toFixed(1)} ms/question`,
          );
        }
      }
    } finally {
      await model.close();
    }
    // 4-bit weights (the default model only: AWQ calibrates on its training scenes).
    const quant = arg('--model') === undefined ? await quantizedRows(dir, tmp, episodes, threads) : '';
    const file = fileURLToPath(new URL('../../docs/ACCURACY.md', import.meta.url));
    writeFileSync(
      file,
      accuracyDoc(results, { scenes, questions, model: path.relative(process.cwd(), dir) || dir, isDefault: arg('--model') === undefined, n, layers }) +
        quant +
        findings,
    );
    console.log(`wrote ${file}`);
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

/** The next-token distribution after each episode's first question (softmax of the logits). */
async function nextTokenDists(m: VisionLanguageModel, episodes: EvalEpisode[]): Promise<Float64Array[]> {
  const out: Float64Array[] = [];
  const d = m.decoder,
    imageId = m.config.imageFacts!.tokenId;
  for (const e of episodes) {
    const req = { images: [e.image], prompt: e.questions[0].question };
    const images = await m.imageFeatures(req.images, densePrefill);
    const ids = await m.promptIds(req, images);
    const x = m.backend.matrix(ids.length, d.hidden, d.place);
    const cache = d.newCache();
    try {
      embedPrompt(
        d,
        x,
        ids,
        imageId,
        images.map((i) => i.features),
      );
      const l = d.forward(
        x,
        cache,
        0,
        ids.map((_, i) => i),
      );
      const mx = l.reduce((a, v) => Math.max(a, v), -Infinity);
      const p = Float64Array.from(l, (v) => Math.exp(v - mx));
      const sum = p.reduce((a, v) => a + v, 0);
      out.push(p.map((v) => v / sum));
    } finally {
      d.freeCache(cache);
      m.backend.free(x);
      for (const i of images) m.backend.free(i.features);
    }
  }
  return out;
}

/** Mean KL(p || q) over prompts. */
function meanKl(p: Float64Array[], q: Float64Array[]): number {
  let kl = 0;
  p.forEach((pi, i) => pi.forEach((v, j) => (kl += v > 0 ? v * Math.log(v / Math.max(q[i][j], 1e-300)) : 0)));
  return kl / p.length;
}

/**
 * The default model quantized to 4 bits (RTN and AWQ, group 128) and evaluated dense and with
 * SparseVILA (0.6, 0.75) in both modes, beside bf16, with the KL divergence of their next-token
 * distributions to bf16's. Returns the markdown section.
 */
async function quantizedRows(dir: string, tmp: string, episodes: EvalEpisode[], threads: number | undefined): Promise<string> {
  const calibration = await defaultCalibration(64);
  const klScenes = episodes.slice(0, 100);
  const bf16 = await VisionLanguageModel.load(dir, { threads });
  let ref: Float64Array[];
  const rows: string[][] = [];
  const evalRows = async (label: string, m: VisionLanguageModel, kl: string) => {
    for (const [method, options] of [
      ['dense', {}],
      ['SparseVILA (0.6, 0.75)', { prefillSparsity: 0.6, decodeSparsity: 0.75 }],
    ] as const) {
      for (const mode of MODES) {
        const r = await evaluate(m, episodes, { ...options, mode, maxNewTokens: 8 });
        console.log(`${label.padEnd(10)} ${method.padEnd(24)} ${mode.padEnd(11)} overall ${pct(r.overall.accuracy)}%  KL ${kl}`);
        rows.push([label, method, mode, `**${pct(r.overall.accuracy)}**`, pct(r.firstTurn.accuracy), pct(r.laterTurns.accuracy), kl]);
      }
    }
  };
  try {
    ref = await nextTokenDists(bf16, klScenes);
    await evalRows('bf16', bf16, '0');
  } finally {
    await bf16.close();
  }
  const notes: string[] = [];
  const kls: Record<string, number> = {};
  for (const method of ['rtn', 'awq'] as const) {
    const out = path.join(tmp, `w4-${method}`);
    const t0 = performance.now();
    const r = await quantizeModel(dir, out, { method, groupSize: 128, calibration, threads });
    notes.push(
      `${method.toUpperCase()}: ${r.linears} linears in 4 bits, ${r.keptLinears} kept bf16, in ${((performance.now() - t0) / 1000).toFixed(0)} s` +
        (r.alphas ? ` (scale exponents per group: ${r.alphas.map((a) => (a === null ? '–' : a.toFixed(2))).join(' ')})` : ''),
    );
    const m = await VisionLanguageModel.load(out, { threads });
    try {
      kls[method] = meanKl(ref, await nextTokenDists(m, klScenes));
      await evalRows(`W4 ${method.toUpperCase()}`, m, kls[method].toExponential(2));
    } finally {
      await m.close();
    }
  }
  return `
## 4-bit weights: AWQ and RTN

The default model quantized by \`sparsevila quantize\` (group size 128; its \`down_proj\` reads 688
inputs, which no group size divides, so it stays bf16 and is listed in \`modules_to_not_convert\`;
the vision tower and projector are never quantized): RTN rounds each group to nearest; AWQ first
searches per-channel scales and clipping on 64 calibration prompts (training-split scenes with
their questions, never the test split). KL: the mean KL divergence of the next-token distribution
after the first question of each of the first ${klScenes.length} test scenes, from bf16's.

${markdownTable(['weights', 'method', 'mode', 'overall', 'turn 1', 'turns ≥ 2', 'KL from bf16'], rows)}

${notes.map((n) => `- ${n}`).join('\n')}
- AWQ's KL is ${kls.awq < kls.rtn ? 'lower' : 'not lower'} than RTN's (${kls.awq.toExponential(2)} vs ${kls.rtn.toExponential(2)}).
`;
}

function accuracyDoc(
  results: { row: Row; mode: Mode; report: EvalReport }[],
  o: { scenes: number; questions: number; model: string; isDefault: boolean; n: number; layers: number },
): string {
  const types = Object.keys(results[0].report.byType);
  const table = (mode: Mode) =>
    markdownTable(
      [
        'method',
        'budget (p, d)',
        'settings',
        'overall',
        'turn 1',
        'turns ≥ 2',
        ...types,
        'visual tokens in the prompt',
        'visual per layer at decode',
        'ms / question',
      ],
      results
        .filter((r) => r.mode === mode)
        .map(({ row, report: r }) => [
          row.method,
          row.budget || '—',
          row.settings || 'all tokens',
          `**${pct(r.overall.accuracy)}**`,
          pct(r.firstTurn.accuracy),
          pct(r.laterTurns.accuracy),
          ...types.map((t) => pct(r.byType[t].accuracy)),
          r.meanVisualTokens.toFixed(0),
          r.meanVisualPerLayer.toFixed(1),
          r.meanMsPerQuestion.toFixed(1),
        ]),
    );
  const get = (method: string, budget: string, mode: Mode) =>
    results.find((r) => r.row.method === method && r.row.budget === budget && r.mode === mode)!.report;
  const dense = get('dense', '', 'chat');
  const reading: string[] = [];
  for (const budget of ['(0.6, 0.75)', '(0.75, 0.9)']) {
    for (const mode of MODES) {
      const sv = get('SparseVILA', budget, mode),
        fv = get('FastV', budget, mode),
        pd = get('PDrop', budget, mode);
      reading.push(
        `- ${mode} mode, budget ${budget}: turns ≥ 2 — SparseVILA ${pct(sv.laterTurns.accuracy)}%, FastV ${pct(fv.laterTurns.accuracy)}%, PDrop ${pct(pd.laterTurns.accuracy)}% ` +
          `(turn 1: ${pct(sv.firstTurn.accuracy)}%, ${pct(fv.firstTurn.accuracy)}%, ${pct(pd.firstTurn.accuracy)}%; dense ${pct(get('dense', '', mode).laterTurns.accuracy)}% / ${pct(get('dense', '', mode).firstTurn.accuracy)}%).`,
      );
    }
  }
  return `# Accuracy of the sparsity methods on the default model

Produced by \`npm run eval:table\` (bench/eval-table.ts); every number in the tables and the
reading is what that command printed (a last section on the default model, written by hand,
names its own sources). Model: \`${o.model}\`${o.isDefault ? " (the engine's default, trained by tools/train/)" : ''}, ${o.n} visual tokens
per image, ${o.layers} LLM layers. Data: the first ${o.scenes} scenes of the test split (seeds
3000000…${3000000 + o.scenes - 1}, ${o.questions} questions in episodes of 3–5), greedy answers, exact match
after normalisation (case, punctuation, a leading article). Machine: ${machineDescription()}.

Each scene is one session: the image is encoded and prefilled with the first question, and every
later question reuses that cache. **independent**: each question sees the image and itself only
(the cache is cut back to the end of the image); **chat**: each question also sees the earlier
turns. FastV and PDrop prune inside the first question's prefill, so the later questions see only
the visual tokens the first question attended to; SparseVILA prunes query-agnostically before the
LLM and retrieves per question at decode; VisionZip and PruMerge reduce the encoder's output;
Quest selects KV pages per decode step.

Budgets: for SparseVILA's (p, d), every other method is given the visual tokens SparseVILA keeps in
prefill, ${o.n} − ⌊p·${o.n}⌋: VisionZip and PruMerge output that many tokens; FastV (K = 1) keeps
that many after the first layer (all ${o.layers} layers of this model are few, so the first stays dense);
PDrop's lambda gives that many on average over the layers after its first stage; Quest (a decode
method) gets SparseVILA's decode budget in KV slots plus 32 for the text. The answers here are one
or two words, so the decode budget touches only their second token and the end of the answer.

## Independent mode

${table('independent')}

## Chat mode

${table('chat')}

## Reading

Dense, chat mode: ${pct(dense.overall.accuracy)}% overall, ${types.map((t) => `${t} ${pct(dense.byType[t].accuracy)}%`).join(', ')}.

${reading.join('\n')}
`;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === path.resolve(process.argv[1])) {
  main().catch((e) => {
    console.error(e instanceof Error ? e.message : e);
    process.exit(1);
  });
}
