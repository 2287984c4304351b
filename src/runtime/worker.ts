// A pool worker: instantiates the kernel module over each arena's shared memory, then runs the
// chunks of every job the main thread posts (see job.ts).
import { ARGS_OFFSET, Ctrl, JOB_EXIT, JOB_YIELD, KernelFn, MAX_ARGS, SPIN_MS, runChunks } from './job.js';
import { isNode } from './platform.js';

interface InitMessage { type: 'init'; module: WebAssembly.Module; ctrl: SharedArrayBuffer; tid: number; kernelNames: string[] }
interface AttachMessage { type: 'attach'; arena: number; memory: WebAssembly.Memory }
type Message = InitMessage | AttachMessage;

let ctrl: Int32Array;
let args: Float64Array;
let tid = 0;
let module: WebAssembly.Module;
let kernelNames: string[] = [];
const tables: KernelFn[][] = []; // [arena][kernel]
let seen = 0;
let post: (m: unknown) => void;

function onMessage(m: Message): void {
  if (m.type === 'init') {
    ctrl = new Int32Array(m.ctrl, 0, ARGS_OFFSET / 4);
    args = new Float64Array(m.ctrl, ARGS_OFFSET, MAX_ARGS);
    tid = m.tid;
    module = m.module;
    kernelNames = m.kernelNames;
    seen = Atomics.load(ctrl, Ctrl.GEN);
    post({ type: 'ready' });
    loop();
  } else if (m.type === 'attach') {
    const inst = new WebAssembly.Instance(module, { env: { memory: m.memory, abort: () => { throw new Error('wasm kernel aborted'); } } });
    tables[m.arena] = kernelNames.map((n) => inst.exports[n] as KernelFn);
    post({ type: 'attached', arena: m.arena });
  }
}

/** Spins for jobs; returns to the event loop to sleep (Atomics.waitAsync) or on a YIELD job. */
function loop(): void {
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
            void w.value.then(() => { Atomics.sub(ctrl, Ctrl.SLEEPERS, 1); loop(); });
            return;
          }
          Atomics.sub(ctrl, Ctrl.SLEEPERS, 1);
          break;
        }
      }
    }
    seen = Atomics.load(ctrl, Ctrl.GEN);
    const kernel = ctrl[Ctrl.KERNEL];
    if (kernel === JOB_EXIT) {
      Atomics.add(ctrl, Ctrl.DONE, 1);
      return;
    }
    if (kernel === JOB_YIELD) {
      Atomics.add(ctrl, Ctrl.DONE, 1);
      setTimeout(loop, 0);
      return;
    }
    try {
      runChunks(ctrl, args, tables[ctrl[Ctrl.ARENA]][kernel], tid);
    } catch (e) {
      Atomics.store(ctrl, Ctrl.ERR, tid);
      post({ type: 'error', message: `${kernelNames[kernel]}: ${(e as Error).message}` });
    }
    Atomics.add(ctrl, Ctrl.DONE, 1);
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
