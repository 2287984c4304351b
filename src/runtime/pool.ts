// The worker pool: threads-1 workers plus the calling thread run each parallel kernel call
// together over shared wasm memory. Hand-off is a spin on an atomic counter (about a microsecond),
// so even calls of a few tens of microseconds gain from the second thread.
import { Arena } from './arena.js';
import { ARGS_OFFSET, CTRL_BYTES, Ctrl, JOB_EXIT, JOB_YIELD, KernelFn, MAX_ARGS, runChunks } from './job.js';
import { KernelModule } from './kernel-module.js';
import { WorkerLike, startWorker } from './platform.js';

export class KernelError extends Error {}

/**
 * How long jobs stay on the calling thread after the workers stalled a call (ms): doubled while
 * stalls keep coming back, reset by a parallel call that ran clean.
 */
const SOLO_MIN_MS = 20;
const SOLO_MAX_MS = 1000;
/**
 * Only calls shorter than this (by the kernel's last call) go solo: a descheduled worker costs a
 * scheduler time slice (a few ms), which ruins a short call but is small beside a long one.
 */
const SOLO_CALL_MS = 2;

export class ThreadPool {
  readonly threads: number;
  private readonly ctrl: Int32Array;
  private readonly args: Float64Array;
  private readonly workers: WorkerLike[] = [];
  private readonly kernelIndex = new Map<string, number>();
  private readonly mainTables: KernelFn[][] = [];
  private workerErrors: string[] = [];
  private pendingAcks = new Map<string, () => void>();
  private closed = false;
  /** Until this time (performance.now() ms) jobs run on the calling thread alone. */
  private soloUntil = 0;
  private soloMs = SOLO_MIN_MS;
  /** Duration of each kernel's last parallel call (ms). */
  private readonly lastMs: Float64Array;
  /** Parallel calls in which the workers held the caller up (see dispatch). */
  stalls = 0;

  private constructor(readonly kernels: KernelModule, threads: number) {
    this.threads = Math.max(1, Math.floor(threads));
    const sab = new SharedArrayBuffer(CTRL_BYTES);
    this.ctrl = new Int32Array(sab, 0, ARGS_OFFSET / 4);
    this.args = new Float64Array(sab, ARGS_OFFSET, MAX_ARGS);
    kernels.kernelNames.forEach((n, i) => this.kernelIndex.set(n, i));
    this.lastMs = new Float64Array(kernels.kernelNames.length);
  }

  /** Starts `threads - 1` workers (the calling thread is the last one). */
  static async create(kernels: KernelModule, threads: number): Promise<ThreadPool> {
    const pool = new ThreadPool(kernels, threads);
    const ready: Promise<void>[] = [];
    for (let t = 1; t < pool.threads; t++) {
      const w = startWorker(new URL('./worker.js', import.meta.url));
      ready.push(new Promise<void>((resolve, reject) => {
        w.onError(reject);
        w.onMessage((m) => pool.onWorkerMessage(t, m as { type: string; arena?: number; message?: string }, resolve));
      }));
      w.post({ type: 'init', module: kernels.module, ctrl: pool.ctrl.buffer, tid: t, kernelNames: kernels.kernelNames });
      pool.workers.push(w);
    }
    await Promise.all(ready);
    pool.setIdle(true);
    return pool;
  }

  /**
   * An idle pool must not keep the process alive, but while the main thread awaits a worker's
   * message (start-up, attaching an arena) the workers must hold the event loop open.
   */
  private setIdle(idle: boolean): void {
    for (const w of this.workers) {
      if (idle) w.unref();
      else w.ref();
    }
  }

  private onWorkerMessage(tid: number, m: { type: string; arena?: number; message?: string }, ready: () => void): void {
    if (m.type === 'ready') ready();
    else if (m.type === 'attached') this.pendingAcks.get(`${tid}:${m.arena}`)?.();
    else if (m.type === 'error') this.workerErrors.push(`thread ${tid}: ${m.message}`);
  }

  /** Makes an arena usable by every thread of the pool. */
  async attach(arena: Arena): Promise<void> {
    this.mainTables[arena.id] = this.kernels.kernelNames.map((n) => arena.exports[n] as KernelFn);
    const acks = this.workers.map((w, i) => new Promise<void>((resolve) => {
      this.pendingAcks.set(`${i + 1}:${arena.id}`, resolve);
      w.post({ type: 'attach', arena: arena.id, memory: arena.memory });
    }));
    // Workers spinning for jobs do not read messages: send them back to their event loop.
    this.setIdle(false);
    this.dispatch(JOB_YIELD, 0, 0, 0, []);
    try {
      await Promise.all(acks);
    } finally {
      this.setIdle(true);
    }
  }

  /**
   * Runs kernel `name` over `units` work units in chunks of `grain` on all threads, and returns
   * when every chunk is done. Each call is fn(tid, begin, end, ...args).
   */
  run(arena: Arena, name: string, units: number, grain: number, args: readonly number[]): void {
    const k = this.kernelIndex.get(name);
    if (k === undefined) throw new KernelError(`unknown kernel ${name}`);
    const table = this.mainTables[arena.id];
    if (!table) throw new KernelError(`arena ${arena.id} is not attached to the thread pool`);
    if (units <= 0) return;
    grain = Math.max(1, Math.floor(grain));
    if (this.threads === 1 || units <= grain || (this.lastMs[k] < SOLO_CALL_MS && performance.now() < this.soloUntil)) {
      (table[k] as (...a: number[]) => void)(0, 0, units, ...args);
      return;
    }
    this.dispatch(k, arena.id, units, grain, args, table[k]);
  }

  private dispatch(kernel: number, arenaId: number, units: number, grain: number, args: readonly number[], fn?: KernelFn): void {
    if (this.closed) throw new KernelError('thread pool is closed');
    if (args.length > MAX_ARGS) throw new KernelError(`at most ${MAX_ARGS} kernel arguments`);
    const c = this.ctrl;
    for (let i = 0; i < MAX_ARGS; i++) this.args[i] = i < args.length ? args[i] : 0;
    c[Ctrl.KERNEL] = kernel;
    c[Ctrl.ARENA] = arenaId;
    c[Ctrl.UNITS] = units;
    c[Ctrl.GRAIN] = grain;
    c[Ctrl.NCHUNKS] = grain > 0 ? Math.ceil(units / grain) : 0;
    Atomics.store(c, Ctrl.NEXT, 0);
    Atomics.store(c, Ctrl.DONE, 0);
    Atomics.store(c, Ctrl.ERR, 0);
    Atomics.add(c, Ctrl.GEN, 1);
    if (Atomics.load(c, Ctrl.SLEEPERS) > 0) Atomics.notify(c, Ctrl.GEN);
    const asleep = Atomics.load(c, Ctrl.SLEEPERS) > 0;
    let mainError: unknown = null;
    let ownChunks = 0;
    const t0 = performance.now();
    if (fn) {
      try { ownChunks = runChunks(c, this.args, fn, 0); } catch (e) { mainError = e; }
    }
    const t1 = performance.now();
    const n = this.workers.length;
    while (Atomics.load(c, Ctrl.DONE) < n) { /* spin: the workers finish their last chunks */ }
    // Another process may hold a core: then a worker is descheduled in the middle of a chunk and
    // the caller waits for it far longer than the whole job would take on one thread (fork/join
    // collapse). A worker that runs normally finishes within about one chunk of the caller; when
    // the wait is much longer than the caller's own chunks took, run jobs on the calling thread
    // alone for a while, then try the workers again. A wake-up from sleep is not counted.
    const t2 = performance.now();
    if (kernel >= 0) this.lastMs[kernel] = t2 - t0;
    if (fn && !asleep && ownChunks > 0) {
      const wait = t2 - t1;
      if (wait > 0.05 && wait > 3 * ((t1 - t0) / ownChunks)) {
        this.stalls++;
        this.soloUntil = performance.now() + this.soloMs;
        this.soloMs = Math.min(SOLO_MAX_MS, this.soloMs * 2);
      } else {
        this.soloMs = SOLO_MIN_MS;
      }
    }
    if (mainError) throw mainError;
    if (Atomics.load(c, Ctrl.ERR) !== 0) {
      const name = this.kernels.kernelNames[kernel];
      throw new KernelError(`kernel ${name} failed in worker thread ${Atomics.load(c, Ctrl.ERR)}${this.workerErrors.length ? ': ' + this.workerErrors.join('; ') : ''}`);
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.dispatch(JOB_EXIT, 0, 0, 0, []);
    this.closed = true;
    await Promise.all(this.workers.map((w) => w.terminate()));
  }
}
