// The accuracy harness: runs a model with a sparsity method over episodes of visual questions
// (one session per scene, questions in turn order) and scores exact-match answers per question
// type and for the first turn against later turns.
import path from 'node:path';
import { GenerateOptions, GenerationError, VisionLanguageModel } from '../engine/vlm.js';
import { InputError } from '../base/errors.js';
import { readTextFile, visible } from '../base/files.js';
import { PrefillReducer } from '../sparsity/method.js';
import { DecodeMethod } from '../sparsity/decode.js';

export interface EvalQuestion {
  type: string;
  question: string;
  answer: string;
}
export interface EvalEpisode {
  image: string;
  questions: EvalQuestion[];
  /** Where the episode came from (`file:line`), for messages. */
  source?: string;
}

export interface EvalOptions {
  mode: 'independent' | 'chat';
  prefill?: PrefillReducer;
  prefillSparsity?: number;
  decode?: DecodeMethod;
  decodeSparsity?: number;
  maxNewTokens?: number;
  /** Called after each question. */
  onQuestion?: (done: number, total: number) => void;
}

export interface QuestionResult {
  episode: number;
  turn: number;
  type: string;
  question: string;
  answer: string;
  prediction: string;
  correct: boolean;
  ms: number;
  visualTokens: number;
  visualPerLayerMean: number;
}

export interface Accuracy {
  correct: number;
  total: number;
  accuracy: number;
}

/** An episode that could not run (its image missing or unreadable, ...): the others go on. */
export interface FailedEpisode {
  episode: number;
  source?: string;
  image: string;
  questions: number;
  error: string;
}

export interface EvalReport {
  overall: Accuracy;
  byType: Record<string, Accuracy>;
  firstTurn: Accuracy;
  laterTurns: Accuracy;
  meanMsPerQuestion: number;
  meanVisualTokens: number;
  meanVisualPerLayer: number;
  results: QuestionResult[];
  /** Episodes that failed (their questions are not in the accuracies). */
  failed: FailedEpisode[];
}

/**
 * Reads episodes.jsonl (each line: { image, questions: [{ type, question, answer }] }), images
 * resolved against its folder. Blank lines are skipped; a problem names the file and its line as
 * an editor counts it; a file without episodes is an error.
 */
export function readEpisodes(file: string): EvalEpisode[] {
  const text = readTextFile(file, { what: 'episodes file', error: GenerationError })!;
  const episodes: EvalEpisode[] = [];
  text.split(/\r?\n/).forEach((line, i) => {
    if (!line.trim()) return;
    const at = `${file}:${i + 1}`;
    let rec: unknown;
    try {
      rec = JSON.parse(line);
    } catch (e) {
      throw new GenerationError(`${at}: not JSON (${visible((e as Error).message).slice(0, 120)})`);
    }
    if (typeof rec !== 'object' || rec === null || Array.isArray(rec))
      throw new GenerationError(
        `${at}: expected an object { image, questions: [...] }, found ${rec === null ? 'null' : Array.isArray(rec) ? 'an array' : typeof rec}`,
      );
    const { image, questions } = rec as { image?: unknown; questions?: unknown };
    if (typeof image !== 'string' || image === '') throw new GenerationError(`${at}: "image" must be the path of an image file (a non-empty string)`);
    if (!Array.isArray(questions) || questions.length === 0)
      throw new GenerationError(`${at}: "questions" must be a non-empty array of { type, question, answer }`);
    const qs = questions.map((q: unknown, j: number) => {
      const o = (typeof q === 'object' && q !== null ? q : {}) as Partial<EvalQuestion>;
      if (typeof o.question !== 'string' || typeof o.answer !== 'string' || typeof o.type !== 'string')
        throw new GenerationError(`${at}: question ${j + 1} needs type, question and answer strings`);
      return { type: o.type, question: o.question, answer: o.answer };
    });
    episodes.push({ image: path.resolve(path.dirname(file), image), questions: qs, source: at });
  });
  if (episodes.length === 0) throw new GenerationError(`${file}: no episodes (the file is empty or holds only blank lines)`);
  return episodes;
}

/**
 * Lower case, single spaces, no punctuation, no leading article: "The Red circle." -> "red circle".
 * A lone "A" stays "a" (it may be the letter asked for).
 */
export function normaliseAnswer(s: string): string {
  return s
    .toLowerCase()
    .replace(/[.,!?;:"']/g, ' ')
    .replace(/\s+/g, ' ')
    .trim()
    .replace(/^(the|a|an) (?=\S)/, '');
}

function accuracy(rs: QuestionResult[]): Accuracy {
  const correct = rs.filter((r) => r.correct).length;
  return { correct, total: rs.length, accuracy: rs.length ? correct / rs.length : 0 };
}

/** Aggregates per-question results into the report. */
export function summarise(results: QuestionResult[], failed: FailedEpisode[] = []): EvalReport {
  const byType: Record<string, Accuracy> = {};
  for (const t of [...new Set(results.map((r) => r.type))].sort()) byType[t] = accuracy(results.filter((r) => r.type === t));
  const mean = (f: (r: QuestionResult) => number) => (results.length ? results.reduce((a, r) => a + f(r), 0) / results.length : 0);
  return {
    overall: accuracy(results),
    byType,
    firstTurn: accuracy(results.filter((r) => r.turn === 1)),
    laterTurns: accuracy(results.filter((r) => r.turn > 1)),
    meanMsPerQuestion: mean((r) => r.ms),
    meanVisualTokens: mean((r) => r.visualTokens),
    meanVisualPerLayer: mean((r) => r.visualPerLayerMean),
    results,
    failed,
  };
}

/**
 * Runs the episodes: per scene a session (independent or chat), questions in order, greedy
 * answers. With FastV or PyramidDrop the first question's prefill prunes the session's cache and
 * the later questions continue it (as a serving engine reusing the image's cache would).
 */
export async function evaluate(model: VisionLanguageModel, episodes: EvalEpisode[], o: EvalOptions): Promise<EvalReport> {
  const total = episodes.reduce((a, e) => a + e.questions.length, 0);
  const gen: GenerateOptions = { maxNewTokens: o.maxNewTokens ?? 8, temperature: 0, decode: o.decode, decodeSparsity: o.decodeSparsity };
  const results: QuestionResult[] = [];
  const failed: FailedEpisode[] = [];
  let done = 0;
  for (const [ei, ep] of episodes.entries()) {
    const session = model.session([ep.image], { mode: o.mode, prefill: o.prefill, prefillSparsity: o.prefillSparsity });
    const mine: QuestionResult[] = [];
    try {
      for (const [qi, q] of ep.questions.entries()) {
        const t0 = performance.now();
        const r = await session.ask(q.question, gen);
        const prediction = r.text.trim();
        mine.push({
          episode: ei,
          turn: qi + 1,
          type: q.type,
          question: q.question,
          answer: q.answer,
          prediction,
          correct: normaliseAnswer(prediction) === normaliseAnswer(q.answer),
          ms: performance.now() - t0,
          visualTokens: r.stats.imageTokens,
          visualPerLayerMean: r.stats.visualTokensPerLayer.mean,
        });
        o.onQuestion?.(++done, total);
      }
      results.push(...mine);
    } catch (e) {
      // An episode that cannot run (its image is missing, ...) fails alone; the run goes on.
      if (!(e instanceof InputError)) throw e;
      failed.push({ episode: ei, source: ep.source, image: ep.image, questions: ep.questions.length, error: e.message });
      done += ep.questions.length - mine.length;
      o.onQuestion?.(done, total);
    } finally {
      session.close();
    }
  }
  return summarise(results, failed);
}
