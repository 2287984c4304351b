// A pool worker: instantiates the kernel module over each arena's shared memory, then follows the
// jobs the main thread publishes (see job.ts), taking whatever chunks of each are left.
import { ControlBlock, Ctrl, JOB_EXIT, JOB_YIELD, KernelFn, KernelInvoker, SLOTS, SPIN_MS, Slot, controlBlock, invoker, runChunks } from './job.js';
import { isNode } from './platform.js';

interface InitMessage {
  type: 'init';
  module: WebAssembly.Module;
  ctrl: SharedArrayBuffer;
  tid: number;
  kernelNames: string[];
}
interface AttachMessage {
  type: 'attach';
  arena: number;
  memory: WebAssembly.Memory;
}
type Message = InitMessage | AttachMessage;

let cb: ControlBlock;
let tid = 0;
let module: WebAssembly.Module;
let kernelNames: string[] = [];
const tables: KernelInvoker[][] = []; // [arena][kernel]
/** The last job this worker has acknowledged. */
let seen = 0;
let post: (m: unknown) => void;

function onMessage(m: Message): void {
  if (m.type === 'init') {
    cb = controlBlock(m.ctrl);
    tid = m.tid;
    module = m.module;
    kernelNames = m.kernelNames;
    seen = Atomics.load(cb.ctrl, Ctrl.GEN);
    post({ type: 'ready' });
    loop();
  } else if (m.type === 'attach') {
    const inst = new WebAssembly.Instance(module, {
      env: {
        memory: m.memory,
        abort: () => {
          throw new Error('wasm kernel aborted');
        },
      },
    });
    tables[m.arena] = kernelNames.map((n) => invoker(inst.exports[n] as KernelFn));
    post({ type: 'attached', arena: m.arena });
  }
}

/** Spins for jobs; returns to the event loop to sleep (Atomics.waitAsync) or on a YIELD job. */
function loop(): void {
  const ctrl = cb.ctrl;
  for (;;) {
    let spins = 0;
    let t0 = 0;
    while (Atomics.load(ctrl, Ctrl.GEN) === seen) {
      if ((++spins & 4095) === 0) {
        const now = performance.now();
        if (t0 === 0) t0 = now;
        else if (now - t0 > SPIN_MS) {
          Atomics.add(ctrl, Ctrl.SLEEPERS, 1);
          const w = Atomics.waitAsync(ctrl, Ctrl.GEN, seen);
          if (w.async) {
            void w.value.then(() => {
              Atomics.sub(ctrl, Ctrl.SLEEPERS, 1);
              loop();
            });
            return;
          }
          Atomics.sub(ctrl, Ctrl.SLEEPERS, 1);
          break;
        }
      }
    }
    // Jobs are taken in order, each acknowledged in its slot.
    const gen = Atomics.load(ctrl, Ctrl.GEN);
    while (seen !== gen) {
      const job = (seen + 1) | 0;
      const slot = cb.slots[job & (SLOTS - 1)];
      const kernel = slot[Slot.KERNEL];
      if (kernel >= 0) {
        try {
          runChunks(slot, cb.args[job & (SLOTS - 1)], tables[slot[Slot.ARENA]][kernel], tid);
        } catch (e) {
          post({ type: 'error', message: `${kernelNames[kernel]}: ${(e as Error).message}` });
        }
      }
      seen = job;
      Atomics.add(slot, Slot.ACKS, 1);
      if (kernel === JOB_EXIT) return;
      if (kernel === JOB_YIELD) {
        setTimeout(loop, 0);
        return;
      }
    }
  }
}

if (isNode) {
  const { parentPort } = await import('node:worker_threads');
  post = (m) => parentPort!.postMessage(m);
  parentPort!.on('message', onMessage);
} else {
  post = (m) => (globalThis as unknown as { postMessage(m: unknown): void }).postMessage(m);
  (globalThis as unknown as { onmessage: (e: MessageEvent) => void }).onmessage = (e) => onMessage(e.data as Message);
}
