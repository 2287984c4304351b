// The control block shared by the main thread and the worker pool: a ring of job slots.
//
// The main thread writes job g (kernel, arena, work units, chunk size, arguments) into slot
// g % SLOTS, publishes it by storing GEN = g, and takes chunks itself from the slot's atomic NEXT
// counter; it returns once the slot's COMPLETED count reaches the number of chunks. Workers follow
// GEN job by job, take whatever chunks are left, and acknowledge each job in its slot (ACKS).
// Because completion is counted in chunks, not in workers, a worker that the OS has descheduled
// does not hold the caller up unless it took a chunk: the caller runs the chunks alone and goes
// on. The slot of job g is only rewritten for job g + SLOTS, after every worker acknowledged g,
// so a late worker never reads a slot that is being rewritten.
// Workers spin on GEN (about a microsecond per hand-off) and sleep with Atomics.waitAsync after a
// while idle.

/** Control words (Int32 indices). */
export const enum Ctrl {
  GEN = 0,
  SLEEPERS = 1,
}
export const SLOTS = 64;
/** Int32 words of a slot, then its Float64 arguments. */
export const enum Slot {
  KERNEL = 0,
  ARENA = 1,
  NCHUNKS = 2,
  UNITS = 3,
  GRAIN = 4,
  NEXT = 5,
  COMPLETED = 6,
  ACKS = 7,
  ERR = 8,
}
export const MAX_ARGS = 16;
const SLOT_INTS = 16; // 64 bytes of Int32 words
export const SLOT_BYTES = SLOT_INTS * 4 + MAX_ARGS * 8;
const HEADER_BYTES = 64;
export const CTRL_BYTES = HEADER_BYTES + SLOTS * SLOT_BYTES;
/** Special kernel ids. */
export const JOB_YIELD = -1;
export const JOB_EXIT = -2;
/** How long an idle worker spins before it sleeps (ms). */
export const SPIN_MS = 20;

/** Views of the control block. */
export interface ControlBlock {
  ctrl: Int32Array;
  slots: Int32Array[];
  args: Float64Array[];
}

export function controlBlock(sab: SharedArrayBuffer): ControlBlock {
  const slots: Int32Array[] = [],
    args: Float64Array[] = [];
  for (let i = 0; i < SLOTS; i++) {
    const off = HEADER_BYTES + i * SLOT_BYTES;
    slots.push(new Int32Array(sab, off, SLOT_INTS));
    args.push(new Float64Array(sab, off + SLOT_INTS * 4, MAX_ARGS));
  }
  return { ctrl: new Int32Array(sab, 0, HEADER_BYTES / 4), slots, args };
}

export type KernelFn = (tid: number, begin: number, end: number, ...args: number[]) => void;

/** Calls a kernel with its argument slots. */
export type KernelInvoker = (tid: number, begin: number, end: number, a: Float64Array) => void;

/**
 * An invoker that passes exactly as many arguments as the wasm function declares: a call with a
 * different arity goes through V8's generic JS-to-wasm wrapper, several microseconds slower, which
 * adds up over the thousands of kernel calls of a decode step.
 */
export function invoker(fn: KernelFn): KernelInvoker {
  const f = fn as (...x: number[]) => void;
  switch (fn.length - 3) {
    case 0:
      return (t, b, e) => f(t, b, e);
    case 1:
      return (t, b, e, a) => f(t, b, e, a[0]);
    case 2:
      return (t, b, e, a) => f(t, b, e, a[0], a[1]);
    case 3:
      return (t, b, e, a) => f(t, b, e, a[0], a[1], a[2]);
    case 4:
      return (t, b, e, a) => f(t, b, e, a[0], a[1], a[2], a[3]);
    case 5:
      return (t, b, e, a) => f(t, b, e, a[0], a[1], a[2], a[3], a[4]);
    case 6:
      return (t, b, e, a) => f(t, b, e, a[0], a[1], a[2], a[3], a[4], a[5]);
    case 7:
      return (t, b, e, a) => f(t, b, e, a[0], a[1], a[2], a[3], a[4], a[5], a[6]);
    case 8:
      return (t, b, e, a) => f(t, b, e, a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]);
    case 9:
      return (t, b, e, a) => f(t, b, e, a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8]);
    case 10:
      return (t, b, e, a) => f(t, b, e, a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9]);
    case 11:
      return (t, b, e, a) => f(t, b, e, a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9], a[10]);
    case 12:
      return (t, b, e, a) => f(t, b, e, a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9], a[10], a[11]);
    case 13:
      return (t, b, e, a) => f(t, b, e, a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9], a[10], a[11], a[12]);
    case 14:
      return (t, b, e, a) => f(t, b, e, a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9], a[10], a[11], a[12], a[13]);
    case 15:
      return (t, b, e, a) => f(t, b, e, a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9], a[10], a[11], a[12], a[13], a[14]);
    case 16:
      return (t, b, e, a) => f(t, b, e, a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15]);
    default:
      throw new Error(`a kernel takes at most ${MAX_ARGS} arguments after (tid, begin, end); this one declares ${fn.length - 3}`);
  }
}

/**
 * Runs chunks of the job in `slot` until none is left to take; returns how many this thread ran.
 * Shared by the main thread and workers.
 */
export function runChunks(slot: Int32Array, args: Float64Array, fn: KernelInvoker, tid: number): number {
  const nChunks = slot[Slot.NCHUNKS],
    units = slot[Slot.UNITS],
    grain = slot[Slot.GRAIN];
  for (let done = 0; ; done++) {
    const c = Atomics.add(slot, Slot.NEXT, 1);
    if (c >= nChunks) return done;
    const begin = c * grain;
    try {
      fn(tid, begin, Math.min(units, begin + grain), args);
    } catch (e) {
      // Record the failure before the chunk counts as completed, so the caller sees it.
      Atomics.store(slot, Slot.ERR, tid + 1);
      Atomics.add(slot, Slot.COMPLETED, 1);
      throw e;
    }
    Atomics.add(slot, Slot.COMPLETED, 1);
  }
}
