// The control block shared by the main thread and the worker pool: one job at a time.
//
// The main thread writes a job (kernel, arena, work units, chunk size, arguments), bumps GEN and
// then takes chunks itself; workers spin on GEN (falling asleep with Atomics.waitAsync after a
// while idle), take chunks from the atomic NEXT counter until none is left, and bump DONE.
// Dynamic chunks keep both threads busy to the end even when one of them is slowed down.

export const CTRL_BYTES = 256;
export const enum Ctrl {
  GEN = 0, NEXT = 1, DONE = 2, SLEEPERS = 3, KERNEL = 4, ARENA = 5, NCHUNKS = 6, UNITS = 7, GRAIN = 8, ERR = 9,
}
/** Byte offset of the Float64 argument slots, and their number. */
export const ARGS_OFFSET = 64;
export const MAX_ARGS = 16;
/** Special kernel ids. */
export const JOB_YIELD = -1;
export const JOB_EXIT = -2;
/** How long an idle worker spins before it sleeps (ms). */
export const SPIN_MS = 20;

export type KernelFn = (tid: number, begin: number, end: number, ...args: number[]) => void;

/**
 * Runs chunks of the current job until none is left; returns how many this thread ran. Shared by
 * the main thread and workers.
 */
export function runChunks(ctrl: Int32Array, args: Float64Array, fn: KernelFn, tid: number): number {
  const nChunks = ctrl[Ctrl.NCHUNKS], units = ctrl[Ctrl.UNITS], grain = ctrl[Ctrl.GRAIN];
  const a0 = args[0], a1 = args[1], a2 = args[2], a3 = args[3], a4 = args[4], a5 = args[5], a6 = args[6], a7 = args[7];
  const a8 = args[8], a9 = args[9], a10 = args[10], a11 = args[11], a12 = args[12], a13 = args[13], a14 = args[14], a15 = args[15];
  for (let done = 0; ; done++) {
    const c = Atomics.add(ctrl, Ctrl.NEXT, 1);
    if (c >= nChunks) return done;
    const begin = c * grain;
    const end = Math.min(units, begin + grain);
    fn(tid, begin, end, a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15);
  }
}
