// A fair, bounded queue: at most `parallel` requests run at once (their decode steps interleave),
// at most `maxQueue` wait; waiting requests are served round-robin over their clients, so one
// client's burst does not starve the others. A full queue refuses at once (429 with Retry-After).
import { ApiError } from './errors.js';

interface Waiter {
  client: string;
  start: () => void;
  fail: (e: ApiError) => void;
}

export class Scheduler {
  private running = 0;
  /** Waiting requests per client, in arrival order; the map's order is the round-robin turn. */
  private readonly waiting = new Map<string, Waiter[]>();
  private waitingCount = 0;
  private closed = false;
  /** Recent service times (ms), for Retry-After. */
  private readonly recent: number[] = [];

  constructor(
    readonly parallel: number,
    readonly maxQueue: number,
  ) {
    if (!Number.isInteger(parallel) || parallel < 1) throw new RangeError(`parallel ${parallel} must be a whole number >= 1`);
    if (!Number.isInteger(maxQueue) || maxQueue < 0) throw new RangeError(`max queue ${maxQueue} must be a whole number >= 0`);
  }

  get queueDepth(): number {
    return this.waitingCount;
  }
  get active(): number {
    return this.running;
  }

  /** Seconds a refused client should wait: the queue's expected drain time, at least 1. */
  retryAfterSeconds(): number {
    const mean = this.recent.length ? this.recent.reduce((a, b) => a + b, 0) / this.recent.length : 1000;
    return Math.max(1, Math.ceil(((this.waitingCount + 1) * mean) / this.parallel / 1000));
  }

  /**
   * Waits for a turn; resolves with a release function (call it once, when the request is done).
   * Refuses (429) when the queue is full, (503) when closing; an abort while waiting leaves the
   * queue and rejects with the signal's reason.
   */
  acquire(client: string, signal?: AbortSignal): Promise<() => void> {
    if (this.closed) return Promise.reject(new ApiError(503, 'the server is shutting down', null, 'shutting_down'));
    const t0 = performance.now();
    const release = (): (() => void) => {
      let done = false;
      return () => {
        if (done) return;
        done = true;
        this.running--;
        this.recent.push(performance.now() - t0);
        if (this.recent.length > 32) this.recent.shift();
        this.next();
      };
    };
    if (this.running < this.parallel && this.waitingCount === 0) {
      this.running++;
      return Promise.resolve(release());
    }
    if (this.waitingCount >= this.maxQueue) {
      return Promise.reject(
        new ApiError(
          429,
          `the server is busy: ${this.running} requests running and ${this.waitingCount} waiting (--max-queue ${this.maxQueue}); retry later`,
          null,
          'queue_full',
        ),
      );
    }
    return new Promise((resolve, reject) => {
      const w: Waiter = {
        client,
        start: () => {
          signal?.removeEventListener('abort', onAbort);
          resolve(release());
        },
        fail: (e) => {
          signal?.removeEventListener('abort', onAbort);
          reject(e);
        },
      };
      const onAbort = () => {
        if (this.remove(w)) reject(signal?.reason ?? new Error('aborted'));
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      const list = this.waiting.get(client);
      if (list) list.push(w);
      else this.waiting.set(client, [w]);
      this.waitingCount++;
    });
  }

  private remove(w: Waiter): boolean {
    const list = this.waiting.get(w.client);
    const i = list?.indexOf(w) ?? -1;
    if (!list || i < 0) return false;
    list.splice(i, 1);
    if (list.length === 0) this.waiting.delete(w.client);
    this.waitingCount--;
    return true;
  }

  /** Starts the next waiter: the first client in turn, which then goes to the back of the turn. */
  private next(): void {
    while (this.running < this.parallel && this.waitingCount > 0) {
      const [client, list] = this.waiting.entries().next().value!;
      const w = list.shift()!;
      this.waiting.delete(client);
      if (list.length) this.waiting.set(client, list);
      this.waitingCount--;
      this.running++;
      w.start();
    }
  }

  /** Refuses everything waiting (503) and every later request; running ones go on. */
  close(): void {
    this.closed = true;
    for (const list of this.waiting.values()) for (const w of list) w.fail(new ApiError(503, 'the server is shutting down', null, 'shutting_down'));
    this.waiting.clear();
    this.waitingCount = 0;
  }
}
