// Choosing a sparsity method by name with its hyperparameters, as a command line or a request body
// gives them: one row per method (the knobs it takes and how it is built). The CLI and the server
// share it; each names the knobs in its own words (`--prefill-sparsity`, `sparsevila.prefill_sparsity`).
import { OptionError } from '../base/errors.js';
import { DecodeMethod } from './decode.js';
import { PrefillReducer, fastV, pruMergePrefill, pyramidDrop, questDecode, sparseVilaPrefill, visionZipPrefill } from './method.js';

export type MethodName = 'dense' | 'sparsevila' | 'fastv' | 'pdrop' | 'visionzip' | 'prumerge' | 'quest';

/** A method by name and the hyperparameters given for it (unset: the method's default). */
export interface MethodChoice {
  method?: MethodName;
  prefillSparsity?: number;
  decodeSparsity?: number;
  visualBudget?: number;
  fastvK?: number;
  fastvR?: number;
  pdropLambda?: number;
  salienceLayer?: number;
}

export type MethodKnob = Exclude<keyof MethodChoice, 'method'>;
export const KNOBS: MethodKnob[] = ['prefillSparsity', 'decodeSparsity', 'visualBudget', 'fastvK', 'fastvR', 'pdropLambda', 'salienceLayer'];

/** What a choice asks for: SparseVILA's two sparsities (0 for the others), or a method's stages, and how to report it. */
export interface ChosenMethod {
  prefill: number;
  decode: number;
  reducer?: PrefillReducer;
  decodeMethod?: DecodeMethod;
  label: string;
}

/** A method knob as a command-line flag: prefillSparsity -> --prefill-sparsity. */
export const knobFlag = (k: MethodKnob | 'method'): string => `--${k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`;

/** The method and the knobs given in an object of options (a command's flags, a request's fields), the rest left out. */
export function methodChoiceOf(o: MethodChoice): MethodChoice {
  const out: MethodChoice = {};
  if (o.method !== undefined) out.method = o.method;
  for (const k of KNOBS) if (o[k] !== undefined) out[k] = o[k];
  return out;
}

/** A chosen method as generate()'s options: SparseVILA's sparsities, or the method's own stages. */
export function methodStages(m: ChosenMethod): { prefillSparsity?: number; decodeSparsity?: number; prefill?: PrefillReducer; decode?: DecodeMethod } {
  return {
    prefillSparsity: m.reducer ? undefined : m.prefill,
    decodeSparsity: m.decodeMethod ? undefined : m.decode,
    prefill: m.reducer,
    decode: m.decodeMethod,
  };
}

/** SparseVILA's defaults (the paper's): images prefill 0.6, decode 0.75; video 0.75, 0.9. */
export const SPARSEVILA_IMAGE_DEFAULTS = { prefill: 0.6, decode: 0.75 };
export const SPARSEVILA_VIDEO_DEFAULTS = { prefill: 0.75, decode: 0.9 };

interface MethodRow {
  knobs: MethodKnob[];
  /** Checks the knobs that only the method can (`name` names a knob as the caller spells it). */
  build(o: MethodChoice, video: boolean, name: (k: MethodKnob | 'method') => string): ChosenMethod;
}

const METHOD_ROWS: Record<MethodName, MethodRow> = {
  dense: { knobs: [], build: () => ({ prefill: 0, decode: 0, label: 'dense' }) },
  sparsevila: {
    knobs: ['prefillSparsity', 'decodeSparsity', 'salienceLayer'],
    build: (o, video) => {
      const defaults = video ? SPARSEVILA_VIDEO_DEFAULTS : SPARSEVILA_IMAGE_DEFAULTS;
      const prefill = o.prefillSparsity ?? defaults.prefill;
      return {
        prefill,
        decode: o.decodeSparsity ?? defaults.decode,
        reducer: o.salienceLayer === undefined ? undefined : sparseVilaPrefill(prefill, { salienceLayer: o.salienceLayer }),
        label: `${video ? 'sparsevila (video defaults)' : 'sparsevila'}${o.salienceLayer === undefined ? '' : ` (salience layer ${o.salienceLayer})`}`,
      };
    },
  },
  fastv: {
    knobs: ['fastvK', 'fastvR'],
    build: (o) => {
      const k = o.fastvK ?? 2,
        r = o.fastvR ?? 0.5;
      return { prefill: 0, decode: 0, decodeMethod: fastV(k, r), label: `fastv (K ${k}, R ${r})` };
    },
  },
  pdrop: {
    knobs: ['pdropLambda'],
    build: (o) => ({ prefill: 0, decode: 0, decodeMethod: pyramidDrop(o.pdropLambda ?? 0.5), label: `pdrop (lambda ${o.pdropLambda ?? 0.5})` }),
  },
  visionzip: {
    knobs: ['visualBudget'],
    build: (o, _video, name) => {
      if (o.visualBudget !== undefined && o.visualBudget < 2)
        throw new OptionError(`${name('visualBudget')}: visionzip keeps dominant and contextual tokens, so at least 2`);
      return { prefill: 0, decode: 0, reducer: visionZipPrefill(o.visualBudget ?? 64), label: `visionzip (budget ${o.visualBudget ?? 64})` };
    },
  },
  prumerge: {
    knobs: ['visualBudget'],
    build: (o) => ({
      prefill: 0,
      decode: 0,
      reducer: pruMergePrefill(o.visualBudget),
      label: o.visualBudget === undefined ? 'prumerge (IQR outliers)' : `prumerge (budget ${o.visualBudget})`,
    }),
  },
  quest: {
    knobs: ['visualBudget'],
    build: (o) => ({ prefill: 0, decode: 0, decodeMethod: questDecode({ budget: o.visualBudget ?? 256 }), label: `quest (budget ${o.visualBudget ?? 256})` }),
  },
};

export const METHODS = Object.keys(METHOD_ROWS) as MethodName[];

/** "a", "a or b", "a, b or c". */
function orList(xs: string[]): string {
  return xs.length < 2 ? xs.join('') : `${xs.slice(0, -1).join(', ')} or ${xs[xs.length - 1]}`;
}

/**
 * The method a choice names (default dense) with its stages. A knob given for a method that does
 * not take it is refused, naming the methods that do; `name` spells a knob as the caller's user
 * knows it (a flag, a request field).
 */
export function chooseMethod(o: MethodChoice, name: (k: MethodKnob | 'method') => string, video = false): ChosenMethod {
  const m = o.method ?? 'dense';
  const row = METHOD_ROWS[m];
  if (!row) throw new OptionError(`${name('method')} ${JSON.stringify(m)} is not a sparsity method: use ${orList(METHODS)}`);
  // Knobs given for another method, grouped by the methods that take them (one message per group).
  const stray = new Map<string, MethodKnob[]>();
  for (const k of KNOBS) {
    if (o[k] === undefined || row.knobs.includes(k)) continue;
    const owners = METHODS.filter((n) => METHOD_ROWS[n].knobs.includes(k));
    const key = owners.join(',');
    stray.set(key, [...(stray.get(key) ?? []), k]);
  }
  for (const [owners, knobs] of stray) {
    const names = knobs.map(name);
    throw new OptionError(`${orList(names).replace(/ or /, ' and ')} need${names.length === 1 ? 's' : ''} ${name('method')} ${orList(owners.split(','))}`);
  }
  return row.build(o, video, name);
}

/** Checks a choice against the language model's depth (what it can only be checked with). */
export function checkMethodForModel(o: MethodChoice, layers: number, name: (k: MethodKnob | 'method') => string): void {
  if (o.method !== 'fastv') return;
  if (o.fastvK !== undefined && o.fastvK > layers - 1) {
    throw new OptionError(
      `${name('fastvK')} ${o.fastvK}: visual tokens are dropped after layer K, and this model's language model has ${layers} layers, so K must be in 1..${layers - 1}`,
    );
  }
  if (o.fastvK === undefined && layers < 3) {
    throw new OptionError(
      `${name('method')} fastv: the default K = 2 needs at least 3 layers, and this model's language model has ${layers}: give ${name('fastvK')} 1`,
    );
  }
}
