// The accuracy harness: runs a model with a sparsity method over episodes of visual questions
// (one session per scene, questions in turn order) and scores exact-match answers per question
// type and for the first turn against later turns.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { GenerateOptions, GenerationError, VisionLanguageModel } from '../engine/vlm.js';
import { PrefillReducer } from '../sparsity/method.js';
import { DecodeMethod } from '../sparsity/decode.js';

export interface EvalQuestion { type: string; question: string; answer: string }
export interface EvalEpisode { image: string; questions: EvalQuestion[] }

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
  episode: number; turn: number; type: string; question: string; answer: string; prediction: string; correct: boolean;
  ms: number; visualTokens: number; visualPerLayerMean: number;
}

export interface Accuracy { correct: number; total: number; accuracy: number }
export interface EvalReport {
  overall: Accuracy;
  byType: Record<string, Accuracy>;
  firstTurn: Accuracy;
  laterTurns: Accuracy;
  meanMsPerQuestion: number;
  meanVisualTokens: number;
  meanVisualPerLayer: number;
  results: QuestionResult[];
}

/** Reads episodes.jsonl (each line: { image, questions: [{ type, question, answer }] }), images resolved against its folder. */
export function readEpisodes(file: string): EvalEpisode[] {
  let text: string;
  try { text = readFileSync(file, 'utf8'); } catch (e) { throw new GenerationError(`${file}: cannot read the episodes (${(e as Error).message})`); }
  return text.split('\n').filter((l) => l.trim()).map((line, i) => {
    let rec: { image?: unknown; questions?: unknown };
    try { rec = JSON.parse(line) as typeof rec; } catch (e) { throw new GenerationError(`${file}:${i + 1}: not JSON (${(e as Error).message})`); }
    if (typeof rec.image !== 'string' || !Array.isArray(rec.questions)) throw new GenerationError(`${file}:${i + 1}: expected { image, questions: [...] }`);
    const questions = rec.questions.map((q: unknown, j: number) => {
      const o = q as Partial<EvalQuestion>;
      if (typeof o.question !== 'string' || typeof o.answer !== 'string' || typeof o.type !== 'string') throw new GenerationError(`${file}:${i + 1}: question ${j + 1} needs type, question and answer strings`);
      return { type: o.type, question: o.question, answer: o.answer };
    });
    return { image: path.resolve(path.dirname(file), rec.image), questions };
  });
}

/**
 * Lower case, single spaces, no punctuation, no leading article: "The Red circle." -> "red circle".
 * A lone "A" stays "a" (it may be the letter asked for).
 */
export function normaliseAnswer(s: string): string {
  return s.toLowerCase().replace(/[.,!?;:"']/g, ' ').replace(/\s+/g, ' ').trim().replace(/^(the|a|an) (?=\S)/, '');
}

function accuracy(rs: QuestionResult[]): Accuracy {
  const correct = rs.filter((r) => r.correct).length;
  return { correct, total: rs.length, accuracy: rs.length ? correct / rs.length : 0 };
}

/** Aggregates per-question results into the report. */
export function summarise(results: QuestionResult[]): EvalReport {
  const byType: Record<string, Accuracy> = {};
  for (const t of [...new Set(results.map((r) => r.type))].sort()) byType[t] = accuracy(results.filter((r) => r.type === t));
  const mean = (f: (r: QuestionResult) => number) => (results.length ? results.reduce((a, r) => a + f(r), 0) / results.length : 0);
  return {
    overall: accuracy(results), byType,
    firstTurn: accuracy(results.filter((r) => r.turn === 1)), laterTurns: accuracy(results.filter((r) => r.turn > 1)),
    meanMsPerQuestion: mean((r) => r.ms), meanVisualTokens: mean((r) => r.visualTokens), meanVisualPerLayer: mean((r) => r.visualPerLayerMean),
    results,
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
  for (const [ei, ep] of episodes.entries()) {
    const session = model.session([ep.image], { mode: o.mode, prefill: o.prefill, prefillSparsity: o.prefillSparsity });
    try {
      for (const [qi, q] of ep.questions.entries()) {
        const t0 = performance.now();
        const r = await session.ask(q.question, gen);
        const prediction = r.text.trim();
        results.push({
          episode: ei, turn: qi + 1, type: q.type, question: q.question, answer: q.answer, prediction,
          correct: normaliseAnswer(prediction) === normaliseAnswer(q.answer), ms: performance.now() - t0,
          visualTokens: r.stats.imageTokens, visualPerLayerMean: r.stats.visualTokensPerLayer.mean,
        });
        o.onQuestion?.(results.length, total);
      }
    } finally {
      session.close();
    }
  }
  return summarise(results);
}
