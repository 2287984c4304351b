// The worker pool: threads-1 workers plus the calling thread run each parallel kernel call
// together over shared wasm memory. Hand-off is a spin on an atomic counter (about a microsecond),
// so even calls of a few tens of microseconds gain from the second thread.
import { Arena } from './arena.js';
import {
  CTRL_BYTES,
  ControlBlock,
  Ctrl,
  JOB_EXIT,
  JOB_YIELD,
  KernelFn,
  KernelInvoker,
  MAX_ARGS,
  SLOTS,
  Slot,
  controlBlock,
  invoker,
  runChunks,
} from './job.js';
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
/** A wait for the workers this long is a stall (a scheduler time slice, not a cache hiccup). */
const STALL_MS = 0.5;
/**
 * Short calls go solo only when stalls recur: STALL_BURST of them within STALL_WINDOW_MS (another
 * process holds a core). A lone stall (a virtual machine's host preempting a vCPU for a moment)
 * costs one wait; going solo after it would cost the second thread for the whole solo period.
 */
const STALL_BURST = 3;
const STALL_WINDOW_MS = 250;

export class ThreadPool {
  readonly threads: number;
  private readonly cb: ControlBlock;
  private readonly sab: SharedArrayBuffer;
  /** The last job published. */
  private gen = 0;
  /** Argument slots for calls run on the calling thread alone. */
  private readonly soloArgs = new Float64Array(MAX_ARGS);
  private readonly workers: WorkerLike[] = [];
  private readonly kernelIndex = new Map<string, number>();
  private readonly mainTables: KernelInvoker[][] = [];
  private workerErrors: string[] = [];
  private pendingAcks = new Map<string, () => void>();
  private closed = false;
  /** Until this time (performance.now() ms) jobs run on the calling thread alone. */
  private soloUntil = 0;
  private soloMs = SOLO_MIN_MS;
  /** Times (performance.now() ms) of the last STALL_BURST - 1 stalls, oldest first. */
  private readonly recentStalls = new Float64Array(STALL_BURST - 1).fill(-Infinity);
  /** Duration of each kernel's last parallel call (ms). */
  private readonly lastMs: Float64Array;
  /** Parallel calls in which the workers held the caller up (see dispatch). */
  stalls = 0;

  private constructor(
    readonly kernels: KernelModule,
    threads: number,
  ) {
    this.threads = Math.max(1, Math.floor(threads));
    this.sab = new SharedArrayBuffer(CTRL_BYTES);
    this.cb = controlBlock(this.sab);
    // Every slot starts out as acknowledged by all workers.
    for (const slot of this.cb.slots) slot[Slot.ACKS] = this.threads - 1;
    kernels.kernelNames.forEach((n, i) => this.kernelIndex.set(n, i));
    this.lastMs = new Float64Array(kernels.kernelNames.length);
  }

  /** Starts `threads - 1` workers (the calling thread is the last one). */
  static async create(kernels: KernelModule, threads: number): Promise<ThreadPool> {
    const pool = new ThreadPool(kernels, threads);
    const ready: Promise<void>[] = [];
    for (let t = 1; t < pool.threads; t++) {
      const w = startWorker(new URL('./worker.js', import.meta.url));
      ready.push(
        new Promise<void>((resolve, reject) => {
          w.onError(reject);
          w.onMessage((m) => pool.onWorkerMessage(t, m as { type: string; arena?: number; message?: string }, resolve));
        }),
      );
      w.post({ type: 'init', module: kernels.module, ctrl: pool.sab, tid: t, kernelNames: kernels.kernelNames });
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
    this.mainTables[arena.id] = this.kernels.kernelNames.map((n) => invoker(arena.exports[n] as KernelFn));
    const acks = this.workers.map(
      (w, i) =>
        new Promise<void>((resolve) => {
          this.pendingAcks.set(`${i + 1}:${arena.id}`, resolve);
          w.post({ type: 'attach', arena: arena.id, memory: arena.memory });
        }),
    );
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
      const a = this.soloArgs;
      for (let i = 0; i < args.length; i++) a[i] = args[i];
      table[k](0, 0, units, a);
      return;
    }
    this.dispatch(k, arena.id, units, grain, args, table[k]);
  }

  /** Publishes a job, runs chunks of it on the calling thread, and waits for the rest. */
  private dispatch(kernel: number, arenaId: number, units: number, grain: number, args: readonly number[], fn?: KernelInvoker): void {
    if (this.closed) throw new KernelError('thread pool is closed');
    if (args.length > MAX_ARGS) throw new KernelError(`at most ${MAX_ARGS} kernel arguments`);
    const n = this.workers.length;
    const job = (this.gen + 1) | 0,
      si = job & (SLOTS - 1);
    const slot = this.cb.slots[si],
      a = this.cb.args[si],
      ctrl = this.cb.ctrl;
    // The slot's previous job (SLOTS jobs ago) must be done with by every worker.
    while (Atomics.load(slot, Slot.ACKS) < n) {
      /* spin: a worker far behind */
    }
    for (let i = 0; i < MAX_ARGS; i++) a[i] = i < args.length ? args[i] : 0;
    const nChunks = kernel >= 0 ? Math.ceil(units / grain) : 0;
    slot[Slot.KERNEL] = kernel;
    slot[Slot.ARENA] = arenaId;
    slot[Slot.UNITS] = units;
    slot[Slot.GRAIN] = grain;
    slot[Slot.NCHUNKS] = nChunks;
    Atomics.store(slot, Slot.NEXT, 0);
    Atomics.store(slot, Slot.COMPLETED, 0);
    Atomics.store(slot, Slot.ERR, 0);
    Atomics.store(slot, Slot.ACKS, 0);
    Atomics.store(ctrl, Ctrl.GEN, job);
    this.gen = job;
    if (Atomics.load(ctrl, Ctrl.SLEEPERS) > 0) Atomics.notify(ctrl, Ctrl.GEN);
    if (!fn) return;
    const asleep = Atomics.load(ctrl, Ctrl.SLEEPERS) > 0;
    let mainError: unknown = null;
    let ownChunks = 0;
    const t0 = performance.now();
    try {
      ownChunks = runChunks(slot, a, fn, 0);
    } catch (e) {
      mainError = e;
    }
    const t1 = performance.now();
    // Chunks a worker took must finish; a worker that took none is not waited for.
    while (Atomics.load(slot, Slot.COMPLETED) < nChunks) {
      /* spin */
    }
    const t2 = performance.now();
    this.lastMs[kernel] = t2 - t0;
    // Another process may hold a core: a worker descheduled in the middle of a chunk then holds
    // the caller up for a scheduler time slice. A worker that runs normally finishes within about
    // one chunk of the caller; when the wait is much longer than the caller's own chunks took, run
    // short jobs on the calling thread alone for a while, then try the workers again. A wake-up
    // from sleep is not counted.
    if (!asleep && ownChunks > 0) {
      const wait = t2 - t1;
      if (wait > STALL_MS && wait > 3 * ((t1 - t0) / ownChunks)) {
        this.stalls++;
        const rs = this.recentStalls;
        if (t2 - rs[0] < STALL_WINDOW_MS) {
          this.soloUntil = t2 + this.soloMs;
          this.soloMs = Math.min(SOLO_MAX_MS, this.soloMs * 2);
        }
        rs.copyWithin(0, 1);
        rs[rs.length - 1] = t2;
      } else {
        this.soloMs = SOLO_MIN_MS;
      }
    }
    if (mainError) throw mainError;
    const err = Atomics.load(slot, Slot.ERR);
    if (err !== 0) {
      throw new KernelError(
        `kernel ${this.kernels.kernelNames[kernel]} failed in worker thread ${err - 1}${this.workerErrors.length ? ': ' + this.workerErrors.join('; ') : ''}`,
      );
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.dispatch(JOB_EXIT, 0, 0, 0, []);
    this.closed = true;
    await Promise.all(this.workers.map((w) => w.terminate()));
  }
}
