// Loading the compiled kernel module: the relaxed-SIMD build where the runtime supports it, the
// plain SIMD128 build otherwise.
import { configureWasmEngine, readPackageFile } from './platform.js';

export type SimdLevel = 'relaxed' | 'simd';

export interface KernelModule {
  readonly module: WebAssembly.Module;
  readonly level: SimdLevel;
  /** Names of the exported kernel functions, in a fixed order (their index is the job id). */
  readonly kernelNames: readonly string[];
  /** Bytes of per-thread scratch memory the kernels expect (SCRATCH_BYTES in assembly/simd.ts). */
  readonly scratchBytes: number;
  /** Query rows per work unit of attn_prefill (ATTN_PREFILL_ROWS in assembly/attention.ts). */
  readonly prefillRowsPerUnit: number;
  /** Largest GQA group attn_decode handles (ATTN_MAX_QUERIES in assembly/attention.ts). */
  readonly maxGroup: number;
  /** Most keys attn_keyscore takes in one call (KEYSCORE_MAX_KEYS in assembly/attention.ts). */
  readonly maxScoredKeys: number;
}

const cache = new Map<SimdLevel, Promise<KernelModule>>();

/**
 * Compiles the kernels. `auto` takes the relaxed-SIMD build when this runtime can compile it
 * (Node >= 22, current browsers, or Node 20 with the flag that `configureWasmEngine` sets).
 */
export async function loadKernelModule(prefer: 'auto' | SimdLevel = 'auto'): Promise<KernelModule> {
  await configureWasmEngine();
  let level: SimdLevel = prefer === 'auto' ? 'relaxed' : prefer;
  if (prefer === 'auto' && !(await relaxedSimdSupported())) level = 'simd';
  let p = cache.get(level);
  if (!p) {
    p = compile(level);
    cache.set(level, p);
  }
  return p;
}

async function compile(level: SimdLevel): Promise<KernelModule> {
  const bytes = await readPackageFile(`../../../build/kernels-${level}.wasm`);
  let module: WebAssembly.Module;
  try {
    module = await WebAssembly.compile(bytes);
  } catch (e) {
    throw new Error(
      `cannot compile build/kernels-${level}.wasm on this runtime (${(e as Error).message}); ` +
        (level === 'relaxed' ? 'relaxed SIMD is not available: use the plain SIMD build' : 'WebAssembly SIMD128 is required'),
      { cause: e },
    );
  }
  const kernelNames = WebAssembly.Module.exports(module)
    .filter((e) => e.kind === 'function')
    .map((e) => e.name)
    .sort();
  // Read the kernels' constants from a throwaway instance over a tiny shared memory.
  const mem = new WebAssembly.Memory({ initial: 16, maximum: 65536, shared: true });
  const inst = await WebAssembly.instantiate(module, { env: { memory: mem, abort: () => {} } });
  const constant = (name: string) => (inst.exports[name] as WebAssembly.Global).value as number;
  return {
    module,
    level,
    kernelNames,
    scratchBytes: constant('SCRATCH_BYTES'),
    prefillRowsPerUnit: constant('ATTN_PREFILL_ROWS'),
    maxGroup: constant('ATTN_MAX_QUERIES'),
    maxScoredKeys: constant('KEYSCORE_MAX_KEYS'),
  };
}

/** A one-function module using f32x4.relaxed_madd: validates only where relaxed SIMD compiles. */
const RELAXED_PROBE = new Uint8Array([
  0x00,
  0x61,
  0x73,
  0x6d,
  0x01,
  0x00,
  0x00,
  0x00, // magic, version
  0x01,
  0x05,
  0x01,
  0x60,
  0x00,
  0x01,
  0x7b, // type: () -> v128
  0x03,
  0x02,
  0x01,
  0x00, // func 0: type 0
  0x0a,
  0x3d,
  0x01,
  0x3b,
  0x00, // code: 1 body of 59 bytes, no locals
  0xfd,
  0x0c,
  ...new Array(16).fill(0), // v128.const 0
  0xfd,
  0x0c,
  ...new Array(16).fill(0), // v128.const 0
  0xfd,
  0x0c,
  ...new Array(16).fill(0), // v128.const 0
  0xfd,
  0x85,
  0x02, // f32x4.relaxed_madd (0x105)
  0x0b, // end
]);

export async function relaxedSimdSupported(): Promise<boolean> {
  await configureWasmEngine();
  try {
    await WebAssembly.compile(RELAXED_PROBE);
    return true;
  } catch {
    return false;
  }
}
