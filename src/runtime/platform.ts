// The few things that differ between Node.js and a browser: reading the kernel binaries, V8 flags,
// the number of cores and how a worker is started.

export const isNode: boolean = typeof process !== 'undefined' && !!process.versions?.node;

/** Reads a file that ships next to the package (path relative to this module's folder). */
export async function readPackageFile(relative: string): Promise<Uint8Array<ArrayBuffer>> {
  const url = new URL(relative, import.meta.url);
  if (isNode) {
    const { readFile } = await import('node:fs/promises');
    return new Uint8Array(await readFile(url));
  }
  const res = await fetch(url);
  if (!res.ok) throw new Error(`cannot load ${url.href}: HTTP ${res.status}`);
  return new Uint8Array(await res.arrayBuffer());
}

let flagsSet = false;
/**
 * On Node 20 (V8 11.3) relaxed SIMD is behind a flag, and the baseline compiler (Liftoff) keeps
 * long-running worker loops slow and miscompiles a relaxed dot product (see KERNEL-NOTES). Both
 * flags must be set before the first WebAssembly compilation; V8 flags are process-wide, so this
 * also covers worker threads. Newer runtimes have relaxed SIMD on by default.
 */
export async function configureWasmEngine(): Promise<void> {
  if (flagsSet || !isNode) return;
  flagsSet = true;
  const v8 = await import('node:v8');
  v8.setFlagsFromString('--experimental-wasm-relaxed-simd');
  v8.setFlagsFromString('--no-liftoff');
}

export function hardwareThreads(): number {
  if (isNode) {
    // os.availableParallelism exists from Node 18.14.
    const os = nodeOs;
    return os ? Math.max(1, os.availableParallelism()) : 1;
  }
  return Math.max(1, (globalThis as { navigator?: { hardwareConcurrency?: number } }).navigator?.hardwareConcurrency ?? 1);
}

let nodeOs: typeof import('node:os') | undefined;
let nodeWorkerThreads: typeof import('node:worker_threads') | undefined;
if (isNode) {
  nodeOs = await import('node:os');
  nodeWorkerThreads = await import('node:worker_threads');
}

/** The minimal worker surface the pool needs, for both Node's worker_threads and Web Workers. */
export interface WorkerLike {
  post(message: unknown): void;
  onMessage(handler: (message: unknown) => void): void;
  onError(handler: (error: unknown) => void): void;
  terminate(): Promise<void>;
  /** Whether the worker keeps the process alive (Node); no-ops in browsers. */
  ref(): void;
  unref(): void;
}

/**
 * The parent's Node options minus those about its own entry point (an eval'd script, its input
 * type): a worker starts from its module file.
 */
function workerExecArgv(argv: readonly string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '-e' || a === '--eval' || a === '-p' || a === '--print') {
      i++;
      continue;
    }
    if (a.startsWith('--input-type') || a.startsWith('--eval=') || a.startsWith('--print=')) continue;
    out.push(a);
  }
  return out;
}

export function startWorker(url: URL): WorkerLike {
  if (nodeWorkerThreads) {
    let w: import('node:worker_threads').Worker;
    try {
      w = new nodeWorkerThreads.Worker(url, { execArgv: workerExecArgv(process.execArgv) });
    } catch (e) {
      // Process-wide options (V8 flags such as --single-threaded-gc) cannot be given to a worker;
      // V8 flags apply to it anyway.
      if ((e as { code?: string }).code !== 'ERR_WORKER_INVALID_EXEC_ARGV') throw e;
      w = new nodeWorkerThreads.Worker(url, { execArgv: [] });
    }
    return {
      post: (m) => w.postMessage(m),
      onMessage: (h) => {
        w.on('message', h);
      },
      onError: (h) => {
        w.on('error', h);
      },
      terminate: async () => {
        await w.terminate();
      },
      ref: () => w.ref(),
      unref: () => w.unref(),
    };
  }
  const w = new Worker(url, { type: 'module' });
  return {
    post: (m) => w.postMessage(m),
    onMessage: (h) => {
      w.onmessage = (e: MessageEvent) => h(e.data);
    },
    onError: (h) => {
      w.onerror = (e) => h(e);
    },
    terminate: async () => {
      w.terminate();
    },
    ref: () => {},
    unref: () => {},
  };
}

let channel: MessageChannel | undefined;
const pendingYields: (() => void)[] = [];
/**
 * Resolves after the event loop has had a turn (timers, I/O, signals, aborts), without the 4 ms
 * clamp of nested setTimeout in browsers: between decode steps a long answer stays interruptible.
 */
export function yieldToEventLoop(): Promise<void> {
  if (typeof setImmediate === 'function') return new Promise((resolve) => setImmediate(resolve));
  if (!channel) {
    channel = new MessageChannel();
    channel.port1.onmessage = () => pendingYields.shift()?.();
  }
  return new Promise((resolve) => {
    pendingYields.push(resolve);
    channel!.port2.postMessage(0);
  });
}
