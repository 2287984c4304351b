// The runtime as a user's process sees it.
import { it } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';

it('a process that never closes its backend still exits when its work is done', () => {
  const backend = new URL('../src/kernels/wasm-backend.js', import.meta.url).href;
  const script = `import { WasmBackend } from ${JSON.stringify(backend)};
    const be = await WasmBackend.create({ threads: 2 });
    await be.addPlace();
    const x = be.matrix(8, 8); be.write(x, new Float32Array(64).fill(1)); be.softmax(x, x);
    console.log(be.read(x)[0]);`;
  // A V8 flag on the command line must not stop the workers from starting.
  const r = spawnSync(process.execPath, ['--single-threaded-gc', '--input-type=module', '-e', script], { encoding: 'utf8', timeout: 30_000 });
  assert.equal(r.status, 0, `exit ${r.status} signal ${r.signal} ${r.stderr}`);
  assert.equal(r.stdout.trim(), String(0.125));
});
