// Rendering a parsed Jinja template (@huggingface/jinja) within a budget: a chat template comes
// with the checkpoint, so it may loop for ever, recurse without end or build a string of
// gigabytes. The interpreter below counts its steps, checks the clock every few hundred of them,
// caps nesting, the length of every string and list it makes, and `range()`; a template that
// passes a limit stops with a TemplateBudgetError that says which.
import * as jinja from '@huggingface/jinja';

// The package's declarations import their own modules without extensions, which NodeNext resolution
// does not follow; these are the parts of its runtime used here.
interface JinjaValue {
  type: string;
  value: unknown;
}
interface JinjaEnvironment {
  set(name: string, value: unknown): unknown;
}
interface JinjaInterpreter {
  run(program: unknown): JinjaValue;
  evaluate(statement: unknown, environment: JinjaEnvironment): JinjaValue;
}
const Interpreter = jinja.Interpreter as unknown as new (env: JinjaEnvironment) => JinjaInterpreter;
const Environment = jinja.Environment as unknown as new () => JinjaEnvironment;

export interface TemplateBudget {
  /** Wall-clock time, ms. */
  timeMs: number;
  /** Characters of any one string value, the output included. */
  maxChars: number;
  /** Items of any one list (range() included). */
  maxItems: number;
  /** Nesting of evaluation (macro recursion included). */
  maxDepth: number;
}

export const DEFAULT_TEMPLATE_BUDGET: TemplateBudget = { timeMs: 2000, maxChars: 4 * 2 ** 20, maxItems: 100_000, maxDepth: 400 };

/** A template that passed one of its limits (the message says which). */
export class TemplateBudgetError extends Error {}

const MONTHS = ['January', 'February', 'March', 'April', 'May', 'June', 'July', 'August', 'September', 'October', 'November', 'December'];
const DAYS = ['Sunday', 'Monday', 'Tuesday', 'Wednesday', 'Thursday', 'Friday', 'Saturday'];

/** Python's strftime in the C locale for the directives chat templates use (Llama 3's "%d %b %Y"). */
export function strftime(date: Date, format: string): string {
  const pad = (n: number, w = 2) => String(n).padStart(w, '0');
  return format.replace(/%[aAbBdHIjmMpSyY%]/g, (t) => {
    switch (t) {
      case '%a':
        return DAYS[date.getDay()].slice(0, 3);
      case '%A':
        return DAYS[date.getDay()];
      case '%b':
        return MONTHS[date.getMonth()].slice(0, 3);
      case '%B':
        return MONTHS[date.getMonth()];
      case '%d':
        return pad(date.getDate());
      case '%H':
        return pad(date.getHours());
      case '%I':
        return pad(((date.getHours() + 11) % 12) + 1);
      case '%j':
        return pad(Math.floor((Date.UTC(date.getFullYear(), date.getMonth(), date.getDate()) - Date.UTC(date.getFullYear(), 0, 1)) / 86_400_000) + 1, 3);
      case '%m':
        return pad(date.getMonth() + 1);
      case '%M':
        return pad(date.getMinutes());
      case '%p':
        return date.getHours() < 12 ? 'AM' : 'PM';
      case '%S':
        return pad(date.getSeconds());
      case '%y':
        return pad(date.getFullYear() % 100);
      case '%Y':
        return String(date.getFullYear());
      default:
        return '%';
    }
  });
}

class BudgetedInterpreter extends Interpreter {
  private steps = 0;
  private depth = 0;
  private readonly deadline: number;

  constructor(
    env: JinjaEnvironment,
    private readonly budget: TemplateBudget,
  ) {
    super(env);
    this.deadline = performance.now() + budget.timeMs;
  }

  override evaluate(statement: unknown, environment: JinjaEnvironment): JinjaValue {
    // The clock is read at every step: one step may run a whole loop whose body is empty.
    if (++this.steps > 0 && performance.now() > this.deadline) {
      throw new TemplateBudgetError(`rendering took longer than ${this.budget.timeMs} ms (a loop that does not end?)`);
    }
    if (++this.depth > this.budget.maxDepth) {
      this.depth = 0;
      throw new TemplateBudgetError(`evaluation nested deeper than ${this.budget.maxDepth} levels (a macro that calls itself without end?)`);
    }
    try {
      const v = super.evaluate(statement, environment);
      const value = v.value;
      if (typeof value === 'string' && value.length > this.budget.maxChars) {
        throw new TemplateBudgetError(`a string grew past ${this.budget.maxChars} characters`);
      }
      if (Array.isArray(value) && value.length > this.budget.maxItems) {
        throw new TemplateBudgetError(`a list grew past ${this.budget.maxItems} items`);
      }
      return v;
    } finally {
      if (this.depth > 0) this.depth--;
    }
  }
}

/** The globals of a template: as @huggingface/jinja sets them, with a bounded range() and strftime_now in the C locale. */
function globals(budget: TemplateBudget): Record<string, unknown> {
  return {
    true: true,
    false: false,
    none: null,
    True: true,
    False: false,
    None: null,
    raise_exception: (message: unknown) => {
      throw new Error(String(message));
    },
    range: (start: number, stop?: number, step = 1) => {
      if (stop === undefined) {
        stop = start;
        start = 0;
      }
      if (![start, stop, step].every((x) => Number.isInteger(x))) throw new Error('range() takes integers');
      if (step === 0) throw new Error('range() step must not be zero');
      const n = Math.max(0, Math.ceil((stop - start) / step));
      if (n > budget.maxItems) throw new TemplateBudgetError(`range() of ${n} items is more than the ${budget.maxItems} allowed`);
      return Array.from({ length: n }, (_, i) => start + i * step);
    },
    strftime_now: (format: string) => strftime(new Date(), String(format)),
  };
}

/**
 * Renders a parsed template with `variables` (plain JS values) within `budget`. Throws a
 * TemplateBudgetError at a limit; errors of the template itself (raise_exception, a bad filter)
 * pass through; a stack overflow or an over-long string inside a filter become TemplateBudgetErrors.
 */
export function renderWithBudget(program: unknown, variables: Record<string, unknown>, budget: TemplateBudget = DEFAULT_TEMPLATE_BUDGET): string {
  const env = new Environment();
  for (const [k, v] of Object.entries({ ...globals(budget), ...variables })) env.set(k, v);
  try {
    return String(new BudgetedInterpreter(env, budget).run(program).value);
  } catch (e) {
    if (e instanceof RangeError) {
      throw new TemplateBudgetError(
        /call stack/i.test(e.message)
          ? 'evaluation nested too deeply (a macro that calls itself without end?)'
          : 'a value grew past what the renderer can hold',
      );
    }
    throw e;
  }
}
