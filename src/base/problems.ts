// One set of checks, two uses: loading a model stops at the first problem, inspecting a folder
// runs every check and lists every problem. A check reports through a Problems object that either
// throws (load) or records (inspect); warnings are said once and kept.
import { InputError } from './errors.js';

export class Problems {
  /** Problems found so far (only when collecting). */
  readonly errors: InputError[] = [];
  /** Warnings said so far. */
  readonly warnings: string[] = [];

  /**
   * collect: record problems and go on (inspect) instead of throwing the first one (load).
   * onWarning: where a warning is said as it is found (default: kept only).
   */
  constructor(
    readonly collect: boolean,
    private readonly onWarning?: (message: string) => void,
  ) {}

  /** Reports a problem: thrown at once unless collecting. */
  report(e: InputError): void {
    if (!this.collect) throw e;
    if (!this.errors.some((x) => x.message === e.message)) this.errors.push(e);
  }

  /** Says a warning (once per message). */
  warn(message: string): void {
    if (this.warnings.includes(message)) return;
    this.warnings.push(message);
    this.onWarning?.(message);
  }

  /**
   * Runs a check; an InputError it throws is reported (so, when collecting, listed and
   * undefined returned). Other errors are bugs and pass through.
   */
  attempt<T>(check: () => T): T | undefined {
    try {
      return check();
    } catch (e) {
      if (!(e instanceof InputError)) throw e;
      this.report(e);
      return undefined;
    }
  }

  /** attempt() for an asynchronous check. */
  async attemptAsync<T>(check: () => Promise<T>): Promise<T | undefined> {
    try {
      return await check();
    } catch (e) {
      if (!(e instanceof InputError)) throw e;
      this.report(e);
      return undefined;
    }
  }
}
