// Ctrl-C for commands that generate: while an answer runs, the first Ctrl-C stops it (its
// AbortSignal; the answer ends with finish reason 'abort') and a second one exits at once (130).
// Outside an answer, `idle` decides (chat: leave the conversation).
import type { EventEmitter } from 'node:events';

export const EXIT_INTERRUPTED = 130;

export class Interrupts {
  private answer: AbortController | null = null;
  private readonly handler = () => this.onInterrupt();

  /** sources: emitters of 'SIGINT' besides the process (a terminal readline interface). */
  constructor(
    private readonly idle: () => void,
    private readonly sources: EventEmitter[] = [],
  ) {
    process.on('SIGINT', this.handler);
    for (const s of sources) s.on('SIGINT', this.handler);
  }

  /** A signal for the answer about to run. */
  begin(): AbortSignal {
    this.answer = new AbortController();
    return this.answer.signal;
  }

  end(): void {
    this.answer = null;
  }

  private onInterrupt(): void {
    if (!this.answer) return this.idle();
    if (this.answer.signal.aborted) {
      process.stderr.write('\n');
      process.exit(EXIT_INTERRUPTED);
    }
    this.answer.abort();
  }

  dispose(): void {
    process.off('SIGINT', this.handler);
    for (const s of this.sources) s.off('SIGINT', this.handler);
  }
}
