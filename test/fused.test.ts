// Fused kernels against their unfused definitions (plain references, float64).
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { WasmBackend } from '../src/kernels/wasm-backend.js';

describe('addRmsNorm (x += r; out = RMSNorm(x) * w)', () => {
  const configs: { threads: number; simd: 'simd' | 'relaxed' }[] = [
    { threads: 1, simd: 'simd' },
    { threads: 2, simd: 'relaxed' },
  ];
  const backends: WasmBackend[] = [];
  before(async () => {
    for (const c of configs) backends.push(await WasmBackend.create(c));
  });
  after(async () => {
    for (const b of backends) await b.close();
  });

  for (const [ci, c] of configs.entries()) {
    for (const [rows, n] of [
      [1, 7],
      [5, 64],
      [33, 577],
    ]) {
      it(`${rows}x${n}, ${c.threads} thread(s), ${c.simd}`, () => {
        const be = backends[ci];
        let s = 12345;
        const rnd = () => ((s = (Math.imul(s, 1103515245) + 12345) >>> 0) / 2 ** 32 - 0.5) * 4;
        const x0 = new Float32Array(rows * n).map(rnd),
          r0 = new Float32Array(rows * n).map(rnd),
          w0 = new Float32Array(n).map(() => 1 + rnd() / 8);
        // A strided x: a column view of a wider matrix.
        const wide = be.matrix(rows, n + 3),
          x = wide.view(0, rows, 2, n),
          r = be.matrix(rows, n),
          out = be.matrix(rows, n);
        be.write(x, x0);
        be.write(r, r0);
        be.addRmsNorm(out, x, r, be.params(w0), 1e-6);
        const gx = be.read(x),
          go = be.read(out);
        for (let i = 0; i < rows; i++) {
          let ss = 0;
          for (let j = 0; j < n; j++) {
            const v = x0[i * n + j] + r0[i * n + j];
            assert.equal(gx[i * n + j], Math.fround(v), 'x must hold x + r exactly');
            ss += v * v;
          }
          const inv = 1 / Math.sqrt(ss / n + 1e-6);
          for (let j = 0; j < n; j++) {
            const want = (x0[i * n + j] + r0[i * n + j]) * inv * w0[j];
            assert.ok(Math.abs(go[i * n + j] - want) <= 1e-5 * (1 + Math.abs(want)), `row ${i} col ${j}: ${go[i * n + j]} vs ${want}`);
          }
        }
      });
    }
  }
});
