// Builds the WebAssembly kernels twice from assembly/: a plain SIMD128 build and a relaxed-SIMD
// build (fused multiply-add). Both import one shared memory, so many threads can run them.
import { execFileSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const asc = path.join(root, 'node_modules', '.bin', 'asc');
mkdirSync(path.join(root, 'build'), { recursive: true });
const common = [
  'assembly/index.ts', '-O3', '--noAssert', '--runtime', 'stub',
  '--importMemory', '--sharedMemory', '--initialMemory', '16', '--maximumMemory', '65536',
  '--memoryBase', '1024',
];
for (const [name, features] of [['kernels-simd', 'simd,threads'], ['kernels-relaxed', 'simd,threads,relaxed-simd']]) {
  execFileSync(asc, [...common, '--enable', features, '--outFile', `build/${name}.wasm`, '--textFile', `build/${name}.wat`], { cwd: root, stdio: 'inherit' });
  console.log(`built build/${name}.wasm`);
}
// The memory is shared by all threads and every instantiation re-applies data segments: the
// kernels must keep no static data (per-thread scratch is passed in instead).
import { readFileSync } from 'node:fs';
for (const name of ['kernels-simd', 'kernels-relaxed']) {
  if (/\(data /.test(readFileSync(path.join(root, 'build', `${name}.wat`), 'utf8'))) {
    throw new Error(`build/${name}.wat has a data segment: kernels must not use static memory (memory.data, static arrays, strings)`);
  }
}
