// The kernels in a browser: headless Chromium loads the same compiled modules (the wasm kernels,
// the runtime, the backend) from a local server with the cross-origin isolation headers that
// SharedArrayBuffer needs, starts the worker pool as module Web Workers, and checks a matmul and
// an attention call against plain references computed in the page.
// Needs Debian's chromium (`apt-get install chromium`, as .ci/run does).
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium, Browser } from 'playwright-core';

const root = fileURLToPath(new URL('../../', import.meta.url));
const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const TYPES: Record<string, string> = { '.js': 'text/javascript', '.wasm': 'application/wasm', '.html': 'text/html', '.map': 'application/json' };

const PAGE = `<!doctype html><meta charset="utf-8"><title>sparsevila kernels</title>
<script type="module">
import { WasmBackend } from '/dist/src/kernels/wasm-backend.js';
window.runCheck = async () => {
  const be = await WasmBackend.create({ threads: 2 });
  const rnd = (n) => Float32Array.from({ length: n }, (_, i) => Math.sin(i * 1.37) * 0.5);
  // matmul, bf16 weights stored as raw bytes, one row (GEMV) and several rows (GEMM)
  const M = 5, K = 300, N = 70;
  const w = rnd(N * K), x = rnd(M * K);
  const bits = new Uint16Array(N * K), wq = new Float32Array(N * K), f = new Float32Array(1), u = new Uint32Array(f.buffer);
  for (let i = 0; i < N * K; i++) { f[0] = w[i]; bits[i] = u[0] >>> 16; u[0] = bits[i] << 16; wq[i] = f[0]; }
  const W = be.linear(N, K, 'bf16', (d) => d.set(new Uint8Array(bits.buffer)));
  let mmErr = 0;
  for (const rows of [1, M]) {
    const X = be.matrix(rows, K), Y = be.matrix(rows, N);
    be.write(X, x.subarray(0, rows * K));
    be.matmul(Y, X, W);
    const y = be.read(Y);
    for (let m = 0; m < rows; m++) for (let n = 0; n < N; n++) {
      let s = 0; for (let k = 0; k < K; k++) s += x[m * K + k] * wq[n * K + k];
      mmErr = Math.max(mmErr, Math.abs(s - y[m * N + n]));
    }
  }
  // causal attention with GQA over a paged KV cache
  const H = 4, KVH = 2, D = 16, S = 70;
  const cache = be.kvCache(1, KVH, D, { blockSize: 16 });
  const kk = rnd(S * KVH * D), vv = rnd(S * KVH * D).map((v) => v * 2), qq = rnd(S * H * D).map((v) => v * 3);
  const Km = be.matrix(S, KVH * D), Vm = be.matrix(S, KVH * D), Q = be.matrix(S, H * D), O = be.matrix(S, H * D);
  be.write(Km, kk); be.write(Vm, vv); be.write(Q, qq);
  be.kvWrite(cache, 0, Km, Vm, 0);
  be.attention(O, Q, cache, 0, { heads: H, qSlot0: 0, causal: true, scale: 0.25, keys: { count: S } });
  const o = be.read(O);
  let attErr = 0;
  for (let i = 0; i < S; i++) for (let h = 0; h < H; h++) {
    const g = Math.floor(h / (H / KVH));
    const sc = []; for (let j = 0; j <= i; j++) { let s = 0; for (let d = 0; d < D; d++) s += qq[i*H*D + h*D + d] * kk[j*KVH*D + g*D + d]; sc.push(s * 0.25); }
    const mx = Math.max(...sc), e = sc.map((s) => Math.exp(s - mx)), z = e.reduce((a, b) => a + b);
    for (let d = 0; d < D; d++) { let r = 0; for (let j = 0; j <= i; j++) r += e[j] / z * vv[j*KVH*D + g*D + d]; attErr = Math.max(attErr, Math.abs(r - o[i*H*D + h*D + d])); }
  }
  const result = { backend: be.name, threads: be.threads, mmErr, attErr, isolated: crossOriginIsolated };
  await be.close();
  return result;
};
window.ready = true;
</script>`;

describe('kernels in a browser (headless Chromium)', () => {
  let server: http.Server | undefined;
  let browser: Browser | undefined;
  let base = '';

  before(async () => {
    server = http.createServer((req, res) => {
      const url = new URL(req.url ?? '/', 'http://localhost');
      // Cross-origin isolation: required for SharedArrayBuffer and shared wasm memory.
      res.setHeader('Cross-Origin-Opener-Policy', 'same-origin');
      res.setHeader('Cross-Origin-Embedder-Policy', 'require-corp');
      if (url.pathname === '/') {
        res.setHeader('Content-Type', 'text/html');
        res.end(PAGE);
        return;
      }
      const file = path.join(root, path.normalize(url.pathname));
      if (!file.startsWith(root) || !existsSync(file)) {
        res.statusCode = 404;
        res.end();
        return;
      }
      res.setHeader('Content-Type', TYPES[path.extname(file)] ?? 'application/octet-stream');
      res.end(readFileSync(file));
    });
    await new Promise<void>((resolve) => server!.listen(0, '127.0.0.1', resolve));
    base = `http://127.0.0.1:${(server.address() as { port: number }).port}/`;
  });

  after(async () => {
    await browser?.close();
    if (server) await new Promise<void>((resolve) => server!.close(() => resolve()));
  });

  it('runs a matmul and an attention call on 2 threads in Web Workers, matching plain references', async () => {
    // The hint must be the failure's message: a failing hook would hide it behind node:test's own.
    assert.ok(existsSync(CHROMIUM), `Chromium not found at ${CHROMIUM}: install it (apt-get install chromium) or set CHROMIUM_PATH`);
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
    });
    const page = await browser.newPage();
    const errors: string[] = [];
    page.on('pageerror', (e) => errors.push(e.message));
    await page.goto(base);
    await page.waitForFunction(() => (window as unknown as { ready?: boolean }).ready === true, undefined, { timeout: 20_000 });
    const r = await page.evaluate(() =>
      (window as unknown as { runCheck(): Promise<{ backend: string; threads: number; mmErr: number; attErr: number; isolated: boolean }> }).runCheck(),
    );
    assert.deepEqual(errors, []);
    assert.equal(r.isolated, true);
    assert.equal(r.threads, 2);
    assert.match(r.backend, /^wasm-(relaxed|simd)$/);
    assert.ok(r.mmErr < 1e-4, `matmul max abs error ${r.mmErr}`);
    assert.ok(r.attErr < 1e-5, `attention max abs error ${r.attErr}`);
  });
});
