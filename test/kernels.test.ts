// Kernel unit tests: every kernel of the wasm backend against the float64 reference in
// reference.ts, on odd shapes (sizes that are not multiples of the SIMD width 4, the weight panel
// width 8, the 4-row GEMM slice, the GEMM K block 1024 or the attention key tile 64), under four
// configurations: 1 and 2 threads x plain SIMD128 and relaxed SIMD (FMA).
//
// Tolerances. u = 2^-24 is the f32 unit roundoff. Inputs are f32 and weights are exactly the
// values their storage dtype holds, so the only differences from the reference are f32 rounding
// and the kernels' approximations (exp: a few ulp; erf: 1.2e-7 absolute). Sums of n terms use
// the probabilistic bound of Higham & Mary (2019): |error| <= lambda * sqrt(n) * u * sum|terms|,
// which fails with probability < 2 exp(-lambda^2 / 2) per sum; lambda = 8 (< 3e-14). The data are
// seeded, so each run sees the same numbers.
//   matmul          |d| <= 8 sqrt(K + 1) u * (sum_k |x_k w_k| + |bias|)   (1.1e-5 * that sum at K = 520)
//   embed, embedFromLinear, add, mul, kvWrite (read back)  bit-exact
//   rmsNorm         |d| <= (4 sqrt(n) + 6) u |y|                       (sum of squares, sqrt, 3 products)
//   layerNorm       |d| <= |w| inv (dMean + 2u|x - mean|) + |y - b| (4 sqrt(n) + 6) u + 2u|y| + u|b|,
//                   dMean = 8 sqrt(n) u mean|x| + u|mean|
//   activations     |d| <= 2e-6 |y|, plus 2e-7 |x| for gelu and gelu_pytorch_tanh (0.5 x times the
//                   absolute error of erf / tanh near -1, where 1 + erf cancels)
//   gatedActivation the activation tolerance times |b|, plus 2u |y|
//   softmax         |d| <= y ((|x - max| + 4) u + 8 sqrt(n) u + 2u) + 1e-37 (exp clamps below e^-87.3)
//   rope            against HF's f32 angles: |d| <= 4u (|x_i| + |x_i+h|); against exact float64
//                   angles additionally (ln(theta) 2i/rotDim + 3) u |angle| (|x_i| + |x_i+h|)
//   attention       per (row, head): Vmax (2 dS + 2u(1 + ln n) + 8u + 16 sqrt(n + 1) u + 2u tiles),
//                   dS = 8 sqrt(D) u max_j scale sum_i |q_i k_ji|, Vmax = max |v| over the keys
//   indexed vs dense attention over the same rows: 1e-6 absolute (the same arithmetic).
// These bounds are far below the effect of real mistakes: a dropped term of a K = 520 dot product
// changes y by ~sum|x w| / K, 175x the matmul tolerance; a dropped key of 700 changes an attention
// output by ~|v - o| / 700, ~20x its tolerance. Observed worst |diff| / tol: matmul 0.14,
// attention 0.02, activations <= 0.5, softmax 0.3, rope 0.4, norms 0.15.
// Set KERNEL_TEST_STATS=1 to print, per kernel, the worst |difference| / tolerance seen.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { int4Bytes, q16Bytes } from '../src/kernels/backend.js';
import type { Activation, Int4Options, Int4Parts, IntVector, KVCache, LinearCompute, LinearWeight, Matrix, WeightDType } from '../src/kernels/backend.js';
import { BackendError, WasmBackend } from '../src/kernels/wasm-backend.js';
import { Arena } from '../src/runtime/arena.js';
import { loadKernelModule, relaxedSimdSupported } from '../src/runtime/kernel-module.js';
import {
  Rng,
  assertClose,
  assertSameF32,
  bf16ToNumber,
  f16ToNumber,
  f32ToBf16,
  f32ToF16,
  fromBits16,
  maxAbs,
  toStorage,
  type StoredWeights,
} from './helpers.js';
import * as ref from './reference.js';

const U = 2 ** -24;
const LAMBDA = 8;
const DTYPES: WeightDType[] = ['f32', 'f16', 'bf16'];
const ACTS: Activation[] = ['gelu', 'gelu_pytorch_tanh', 'quick_gelu', 'silu', 'identity'];
const SENTINEL = 7777.25;

// ---- configurations ------------------------------------------------------------------------------

interface Config {
  threads: number;
  simd: 'simd' | 'relaxed';
  label: string;
}
const CONFIGS: Config[] = [1, 2].flatMap((threads) => (['simd', 'relaxed'] as const).map((simd) => ({ threads, simd, label: `threads=${threads} ${simd}` })));
const backends = new Map<string, WasmBackend>();

before(async () => {
  for (const c of CONFIGS) backends.set(c.label, await WasmBackend.create({ threads: c.threads, simd: c.simd }));
});
after(async () => {
  for (const b of backends.values()) await b.close();
  if (process.env.KERNEL_TEST_STATS) {
    for (const [k, v] of [...stats].sort())
      console.log(`${k}: worst |diff|/tol ${v.ratio.toExponential(2)} (${v.where}), max |diff| ${v.maxAbs.toExponential(2)}`);
  }
});

/** One `it` per configuration, named "<name> [threads=N level]". */
function eachConfig(name: string, fn: (be: WasmBackend, cfg: Config) => void | Promise<void>): void {
  for (const cfg of CONFIGS) it(`${name} [${cfg.label}]`, () => fn(backends.get(cfg.label)!, cfg));
}

/** A seed from a test's parameters, so every case has its own data. */
function seed(...parts: (string | number | boolean)[]): number {
  let h = 2166136261;
  for (const c of parts.join('|')) h = Math.imul(h ^ c.charCodeAt(0), 16777619);
  return h >>> 0;
}

const stats = new Map<string, { ratio: number; where: string; maxAbs: number }>();
function check(kernel: string, what: string, got: ArrayLike<number>, want: ArrayLike<number>, tol: (i: number, w: number) => number, cols?: number): void {
  const d = assertClose(got, want, tol, `${kernel} ${what}`, cols);
  const st = stats.get(kernel) ?? { ratio: 0, where: '', maxAbs: 0 };
  if (d.worstRatio >= st.ratio) {
    st.ratio = d.worstRatio;
    st.where = what;
  }
  st.maxAbs = Math.max(st.maxAbs, d.maxAbs);
  stats.set(kernel, st);
}

// ---- allocation scope ----------------------------------------------------------------------------

type Handle = Parameters<WasmBackend['free']>[0];

/** Tracks what a test allocates and frees it at the end. */
class Scope {
  private items: Handle[] = [];
  constructor(readonly be: WasmBackend) {}
  keep<T extends Handle>(h: T): T {
    this.items.push(h);
    return h;
  }
  matrix(rows: number, cols: number, data?: ArrayLike<number>): Matrix {
    const m = this.keep(this.be.matrix(rows, cols));
    if (data) this.be.write(m, Float32Array.from(data));
    return m;
  }
  /** A rows x cols view at column `left` of a wider matrix whose other columns hold SENTINEL. */
  padded(rows: number, cols: number, data: ArrayLike<number> | null, left = 3, right = 5): Padded {
    const parent = this.matrix(rows, left + cols + right, new Float32Array(rows * (left + cols + right)).fill(SENTINEL));
    const view = parent.view(0, rows, left, cols);
    if (data) this.be.write(view, Float32Array.from(data));
    return { view, parent, left, cols };
  }
  ints(data: readonly number[]): IntVector {
    const v = this.keep(this.be.ints(data.length));
    this.be.writeInts(v, data);
    return v;
  }
  /** A 4-bit weight from canonical parts (see Int4Parts). */
  int4(N: number, K: number, G: number, p: Int4Parts, opts: Int4Options = {}): LinearWeight {
    return this.keep(
      this.be.linearInt4(
        N,
        K,
        G,
        (d) => {
          d.q.set(p.q);
          d.scales.set(p.scales);
          d.offsets.set(p.offsets);
        },
        0,
        opts,
      ),
    );
  }
  linear(N: number, K: number, dtype: WeightDType, w: StoredWeights, compute: LinearCompute = 'stored'): LinearWeight {
    return this.keep(this.be.linear(N, K, dtype, (dest) => dest.set(w.bytes), 0, compute));
  }
  free(): void {
    for (const h of this.items.reverse()) this.be.free(h);
    this.items = [];
  }
}

interface Padded {
  view: Matrix;
  parent: Matrix;
  left: number;
  cols: number;
}

/** Asserts that the columns of the parent outside the view still hold SENTINEL. */
function assertPadding(be: WasmBackend, p: Padded, what: string): void {
  const all = be.read(p.parent);
  const W = p.parent.cols;
  for (let i = 0; i < all.length; i++) {
    const c = i % W;
    if (c >= p.left && c < p.left + p.cols) continue;
    if (all[i] !== SENTINEL) assert.fail(`${what}: wrote outside its view at row ${Math.floor(i / W)}, column ${c} (${all[i]})`);
  }
}

function scoped(be: WasmBackend, fn: (s: Scope) => void): void {
  const s = new Scope(be);
  try {
    fn(s);
  } finally {
    s.free();
  }
}

// ---- runtime ---------------------------------------------------------------------------------

describe('runtime', () => {
  it('relaxed SIMD is available on this Node (after the V8 flag) and auto picks it', async () => {
    assert.equal(await relaxedSimdSupported(), true);
    const auto = await loadKernelModule('auto');
    assert.equal(auto.level, 'relaxed');
    const plain = await loadKernelModule('simd');
    assert.equal(plain.level, 'simd');
    assert.notEqual(plain.module, auto.module);
    for (const m of [auto, plain]) {
      for (const k of ['gemv_f32', 'gemm_bf16', 'pack_w16', 'rms_norm', 'softmax', 'rope', 'kv_write', 'attn_prefill', 'attn_decode', 'attn_merge']) {
        assert.ok(m.kernelNames.includes(k), `${m.level} build lacks kernel ${k}`);
      }
      assert.equal(m.scratchBytes, 256 * 1024);
    }
  });

  eachConfig('backend reports its configuration', (be, cfg) => {
    assert.equal(be.threads, cfg.threads);
    assert.equal(be.simdLevel, cfg.simd);
    assert.equal(be.name, `wasm-${cfg.simd}`);
  });
});

describe('arena allocator', () => {
  it('allocates 64-byte aligned blocks, returns freed space and coalesces neighbours', async () => {
    const { module } = await loadKernelModule('simd');
    const a = new Arena(7, module);
    const rounded = (n: number): number => Math.max(64, Math.ceil(n / 64) * 64);
    const sizes = [1, 63, 64, 65, 100, 1000, 4096, 13];
    const ptrs = sizes.map((n) => a.alloc(n));
    for (const [i, p] of ptrs.entries()) {
      assert.equal(p % 64, 0, `pointer ${p} is not 64-byte aligned`);
      if (i > 0) assert.ok(p >= ptrs[i - 1] + rounded(sizes[i - 1]), 'blocks overlap');
    }
    const total = sizes.reduce((s, n) => s + rounded(n), 0);
    assert.equal(a.usedBytes, total);
    // Two neighbours freed in the middle coalesce into one hole that a larger block fits into.
    a.release(ptrs[4]); // 128 bytes
    a.release(ptrs[5]); // 1024 bytes
    assert.equal(a.usedBytes, total - 128 - 1024);
    const big = a.alloc(1100); // 1152 bytes
    assert.equal(big, ptrs[4], 'the coalesced 1152-byte hole should take 1100 bytes');
    // A hole that is too small is skipped; a block that fits takes it.
    a.release(ptrs[1]); // 64 bytes
    const p100 = a.alloc(100);
    assert.ok(p100 > ptrs[7], '100 bytes do not fit the 64-byte hole: taken from the top');
    const p10 = a.alloc(10);
    assert.equal(p10, ptrs[1]);
    // Freeing everything (in any order) returns all space: allocation restarts at the bottom.
    for (const p of [ptrs[6], p10, ptrs[0], p100, ptrs[3], big, ptrs[7], ptrs[2]]) a.release(p);
    assert.equal(a.usedBytes, 0);
    assert.equal(a.alloc(5000), ptrs[0]);
    assert.throws(() => a.release(ptrs[0] + 64), /release of unknown pointer/);
  });

  it('grows the memory for large blocks and keeps its views current', async () => {
    const { module } = await loadKernelModule('simd');
    const a = new Arena(8, module);
    const before = a.committedBytes;
    const p = a.alloc(8 * 2 ** 20);
    assert.equal(p % 64, 0);
    assert.ok(a.committedBytes >= p + 8 * 2 ** 20 && a.committedBytes > before);
    a.f32[p / 4 + 2 ** 21 - 1] = 1.5;
    assert.equal(a.f32At(p, 2 ** 21)[2 ** 21 - 1], 1.5);
    const q = a.alloc(64);
    a.release(p);
    a.release(q);
    assert.equal(a.usedBytes, 0);
    assert.equal(a.alloc(64), p, 'everything freed: allocation restarts at the bottom');
  });
});

describe('thread pool', () => {
  for (const simd of ['simd', 'relaxed'] as const) {
    it(`2000 back-to-back small matmuls on 2 threads equal 1 thread [${simd}]`, async (t) => {
      const b1 = backends.get(`threads=1 ${simd}`)!,
        b2 = backends.get(`threads=2 ${simd}`)!;
      const stalls0 = b2.stalls;
      const K = 37,
        N = 45,
        rng = new Rng(seed('pool', simd));
      const w = toStorage(rng.f32(N * K), 'bf16');
      const inputs = Array.from({ length: 8 }, (_, i) => rng.f32((i % 2 ? 5 : 1) * K));
      // Expected results from the 1-thread backend.
      const want: Float32Array[] = [];
      scoped(b1, (s) => {
        const W = s.linear(N, K, 'bf16', w);
        for (const x of inputs) {
          const M = x.length / K,
            xm = s.matrix(M, K, x),
            y = s.matrix(M, N);
          b1.matmul(y, xm, W);
          want.push(b1.read(y));
        }
      });
      const s = new Scope(b2);
      try {
        const W = s.linear(N, K, 'bf16', w);
        const xs = inputs.map((x) => s.matrix(x.length / K, K, x));
        const ys = inputs.map((x) => s.matrix(x.length / K, N));
        for (let i = 0; i < 2000; i++) {
          const j = i % inputs.length;
          b2.matmul(ys[j], xs[j], W);
          // Read at once half the time, the other half after more calls have run.
          if (i % 2 === 0) assertSameF32(b2.read(ys[j]), want[j], `call ${i}`);
          else if (j === inputs.length - 1) for (let t = 0; t < inputs.length; t++) assertSameF32(b2.read(ys[t]), want[t], `call ${i} (input ${t})`);
        }
        // A chain where each call consumes the previous output: a signed permutation is exact, so
        // any lost or stale chunk shows. Rows alternate between the GEMV and GEMM paths.
        const P = 40,
          perm = rng.permutation(P),
          sign = perm.map(() => (rng.next() < 0.5 ? -1 : 1));
        const pw = new Float32Array(P * P);
        perm.forEach((src, dst) => (pw[dst * P + src] = sign[dst]));
        const PW = s.linear(P, P, 'f32', toStorage(pw, 'f32'));
        const x0 = rng.f32(3 * P);
        const a = s.matrix(3, P, x0),
          b = s.matrix(3, P);
        let cur = Float64Array.from(x0);
        for (let i = 0; i < 600; i++) {
          const rows = i % 3 === 0 ? 1 : 3;
          const [src, dst] = i % 2 === 0 ? [a, b] : [b, a];
          b2.matmul(dst.view(0, rows), src.view(0, rows), PW);
          if (rows === 1) b2.copy(dst.view(1, 2), src.view(1, 2));
          const next = Float64Array.from(cur);
          for (let r = 0; r < rows; r++) for (let d = 0; d < P; d++) next[r * P + d] = sign[d] * cur[r * P + perm[d]];
          cur = next;
        }
        assertSameF32(b2.read(a), Float32Array.from(cur), 'permutation chain');
        // Let the worker fall asleep (it spins ~20 ms), then wake it with a job.
        for (let i = 0; i < 3; i++) {
          await new Promise((r) => setTimeout(r, 40));
          b2.matmul(ys[1], xs[1], W);
          assertSameF32(b2.read(ys[1]), want[1], `after sleep ${i}`);
        }
        // Under load from other processes the pool runs some calls on the calling thread alone.
        if (b2.stalls > stalls0) t.diagnostic(`${b2.stalls - stalls0} stalled calls: some calls ran on one thread`);
      } finally {
        s.free();
      }
    });
  }
});

// ---- memory ------------------------------------------------------------------------------------

describe('memory', () => {
  eachConfig('write / read / copy through views', (be) =>
    scoped(be, (s) => {
      const rng = new Rng(seed('mem'));
      const data = rng.f32(5 * 13);
      const p = s.padded(5, 13, data, 2, 4);
      assertSameF32(be.read(p.view), data, 'read view');
      assertPadding(be, p, 'write view');
      const q = s.padded(5, 13, null, 1, 1);
      be.copy(q.view, p.view);
      assertSameF32(be.read(q.view), data, 'copy view');
      assertPadding(be, q, 'copy');
      const sub = p.view.view(1, 3, 4, 6);
      assert.deepEqual([sub.rows, sub.cols, sub.ld], [3, 6, p.parent.ld]);
      const want = new Float32Array(18);
      for (let r = 0; r < 3; r++) for (let c = 0; c < 6; c++) want[r * 6 + c] = data[(r + 1) * 13 + 4 + c];
      assertSameF32(be.read(sub), want, 'view of a view');
    }),
  );

  eachConfig('a second memory place: kernels run there, mixing places is an error', async (be) => {
    const place = be.places === 1 ? await be.addPlace() : 1;
    assert.equal(be.places, 2);
    assert.equal(be.memoryUsage().length, 2);
    const s = new Scope(be);
    try {
      const rng = new Rng(seed('place'));
      const M = 5,
        K = 37,
        N = 19;
      const w = toStorage(rng.f32(N * K), 'bf16'),
        x = rng.f32(M * K);
      const W = s.keep(be.linear(N, K, 'bf16', (d) => d.set(w.bytes), place));
      const xm = s.keep(be.matrix(M, K, place)),
        y = s.keep(be.matrix(M, N, place));
      be.write(xm, x);
      const want = ref.matmul(x, M, K, w.values, N);
      be.matmul(y, xm, W);
      check('matmul', 'place 1 GEMM', be.read(y), want.y, matmulTol(want.absSum, K), N);
      be.matmul(y.view(2, 1), xm.view(2, 1), W);
      check('matmul', 'place 1 GEMV', be.read(y), want.y, matmulTol(want.absSum, K), N);
      // Attention over a cache in place 1.
      const cache = s.keep(be.kvCache(1, 2, 8, { blockSize: 16, place }));
      const shadow = new Shadow(2, 8);
      const n = 70,
        k = rng.f32(n * 16),
        v = rng.f32(n * 16);
      const km = s.keep(be.matrix(n, 16, place)),
        vm = s.keep(be.matrix(n, 16, place));
      be.write(km, k);
      be.write(vm, v);
      be.kvWrite(cache, 0, km, vm, 0);
      for (let j = 0; j < n; j++) {
        shadow.kRows.set(j, k.slice(j * 16, (j + 1) * 16));
        shadow.vRows.set(j, v.slice(j * 16, (j + 1) * 16));
      }
      for (const nq of [1, 6]) {
        const q = rng.f32(nq * 48),
          qm = s.keep(be.matrix(nq, 48, place)),
          out = s.keep(be.matrix(nq, 48, place));
        be.write(qm, q);
        be.attention(out, qm, cache, 0, { heads: 6, qSlot0: n - nq, causal: true, scale: 0.35, keys: { count: n } });
        const keys = ref.denseKeys(n, true, n - nq);
        check(
          'attention',
          `place 1, ${nq} rows`,
          be.read(out),
          ref.attention(q, nq, 6, 2, 8, shadow, keys, 0.35),
          (i) => attnTol(q, nq, 6, 2, 8, shadow, keys, 0.35)[i],
          48,
        );
      }
      // Mixing places is refused; copy moves data between them.
      const y0 = s.matrix(M, N);
      assert.throws(
        () => be.matmul(y0, xm, W),
        (e: unknown) => e instanceof BackendError && /^matmul: operands live in different memory places \(0 and 1\); copy them first$/.test(e.message),
      );
      be.copy(y0, y);
      assertSameF32(be.read(y0), be.read(y), 'copy between places');
    } finally {
      s.free();
    }
  });
});

// ---- matmul ------------------------------------------------------------------------------------

const MATMUL_SHAPES: [number, number, number][] = [
  [1, 37, 19],
  [1, 300, 70],
  [1, 520, 41],
  [1, 1, 1],
  [1, 8, 16],
  [1, 257, 9],
  [2, 4, 8],
  [4, 16, 8],
  [6, 3, 1],
  [3, 37, 19],
  [5, 257, 9],
  [13, 300, 70],
  [33, 520, 41],
  [7, 513, 17],
  [131, 40, 13],
  // K spanning several GEMM K blocks (1024), with odd M, K and N.
  [1, 2100, 11],
  [9, 2100, 11],
];

const matmulTol =
  (absSum: Float64Array, K: number) =>
  (i: number): number =>
    LAMBDA * Math.sqrt(K + 1) * U * absSum[i];

/** Runs x [M][K] W^T (+ bias) on the backend and checks it against the reference. */
function checkMatmul(
  s: Scope,
  what: string,
  M: number,
  K: number,
  N: number,
  dtype: WeightDType,
  x: Float32Array,
  w: StoredWeights,
  bias: Float32Array | undefined,
  strided: boolean,
): void {
  const be = s.be;
  const W = s.linear(N, K, dtype, w);
  assert.equal(W.byteLength, Math.ceil(N / 8) * 8 * K * (dtype === 'f32' ? 4 : 2));
  const B = bias ? s.keep(be.params(bias)) : undefined;
  const want = ref.matmul(x, M, K, w.values, N, bias);
  if (strided) {
    const xp = s.padded(M, K, x, 3, 7),
      yp = s.padded(M, N, null, 5, 11);
    be.matmul(yp.view, xp.view, W, B);
    check('matmul', what, be.read(yp.view), want.y, matmulTol(want.absSum, K), N);
    assertPadding(be, yp, `matmul ${what}`);
  } else {
    const xm = s.matrix(M, K, x),
      y = s.matrix(M, N);
    be.matmul(y, xm, W, B);
    check('matmul', what, be.read(y), want.y, matmulTol(want.absSum, K), N);
  }
}

// int16 linears: against the exact integer result of the same quantization (reference.matmulInt16).
// The kernel sums exactly in i32 over blocks of 512 k, then per block converts to f32, scales by
// sw and sa (2 roundings) and adds into C: |error| <= (3 + blocks) u * absSum, absSum = sa sw
// sum|qa qw| + |bias|. Separately, quantization itself is bounded: |x w - x^ w^| <= |x| sw/2 +
// |w| sa/2 + sa sw/4 per product, so |y_int16 - y_exact| <= that sum (plus the rounding above).
function checkMatmulInt16(
  s: Scope,
  what: string,
  M: number,
  K: number,
  N: number,
  dtype: WeightDType,
  x: Float32Array,
  w: StoredWeights,
  bias?: Float32Array,
): void {
  const be = s.be;
  const W = s.linear(N, K, dtype, w, 'int16');
  assert.equal(W.compute, 'int16');
  assert.equal(W.byteLength, q16Bytes(N, K));
  const B = bias ? s.keep(be.params(bias)) : undefined;
  const xm = s.matrix(M, K, x),
    y = s.matrix(M, N);
  be.matmul(y, xm, W, B);
  const got = be.read(y);
  const want = ref.matmulInt16(x, M, K, w.values, N, bias);
  const blocks = Math.ceil(K / 512);
  check('matmul int16', what, got, want.y, (i) => (3 + blocks) * U * want.absSum[i] + 1e-30, N);
  // Quantization error against the exact product.
  const exact = ref.matmul(x, M, K, w.values, N, bias);
  const qa = ref.quantizeRows12(x, M, K).scale,
    qw = ref.quantizeRows12(w.values, N, K).scale;
  const bound = new Float64Array(M * N);
  for (let m = 0; m < M; m++)
    for (let n = 0; n < N; n++) {
      let e = 0;
      for (let k = 0; k < K; k++) e += (Math.abs(x[m * K + k]) * qw[n]) / 2 + (Math.abs(w.values[n * K + k]) * qa[m]) / 2 + (qa[m] * qw[n]) / 4;
      bound[m * N + n] = e + (3 + blocks) * U * want.absSum[m * N + n];
    }
  check('matmul int16 vs exact', what, got, exact.y, (i) => bound[i] + 1e-30, N);
}

describe('matmul', () => {
  for (const dtype of DTYPES) {
    eachConfig(`${dtype} weights, odd shapes, GEMV and GEMM, with and without bias`, (be) =>
      scoped(be, (s) => {
        for (const [M, K, N] of MATMUL_SHAPES) {
          for (const withBias of [false, true]) {
            const rng = new Rng(seed('matmul', dtype, M, K, N, withBias));
            const x = rng.f32(M * K);
            const w = toStorage(
              rng.f32(N * K).map((v) => v / Math.sqrt(K)),
              dtype,
            );
            const bias = withBias ? rng.f32(N, -0.5, 0.5) : undefined;
            checkMatmul(s, `${M}x${K}x${N}${withBias ? '+bias' : ''}`, M, K, N, dtype, x, w, bias, false);
          }
        }
      }),
    );

    eachConfig(`${dtype} weights, strided input and output (column views)`, (be) =>
      scoped(be, (s) => {
        for (const [i, [M, K, N]] of MATMUL_SHAPES.entries()) {
          const rng = new Rng(seed('matmul-strided', dtype, M, K, N));
          const x = rng.f32(M * K);
          const w = toStorage(
            rng.f32(N * K).map((v) => v / Math.sqrt(K)),
            dtype,
          );
          checkMatmul(s, `${M}x${K}x${N} strided`, M, K, N, dtype, x, w, i % 2 ? rng.f32(N) : undefined, true);
        }
      }),
    );
  }

  eachConfig('int16 compute: f32 / f16 / bf16 weights, odd shapes, with and without bias', (be) =>
    scoped(be, (s) => {
      for (const dtype of DTYPES) {
        for (const [M, K, N] of MATMUL_SHAPES) {
          if (M * K * N > 2e6) continue;
          const rng = new Rng(seed('matmul-int16', dtype, M, K, N));
          const x = rng.f32(M * K);
          // An outlier column, as in ViT activations: the other values lose precision, not range.
          if (K > 3) for (let m = 0; m < M; m++) x[m * K + 2] *= 40;
          const w = toStorage(
            rng.f32(N * K).map((v) => v / Math.sqrt(K)),
            dtype,
          );
          checkMatmulInt16(s, `${dtype} ${M}x${K}x${N}`, M, K, N, dtype, x, w, (M + K) % 2 ? rng.f32(N, -0.5, 0.5) : undefined);
        }
      }
    }),
  );

  eachConfig('int16 compute: worst-case magnitudes never overflow the integer sums; zero rows', (be) =>
    scoped(be, (s) => {
      // Every quantized value at +-2047 over K = 4101: each 512-k block sums to 2^31 - 2.1e6.
      const M = 6,
        K = 4101,
        N = 9;
      const x = new Float32Array(M * K).map((_, i) => (Math.floor(i / K) % 2 ? -1.5 : 1.5));
      const w = toStorage(
        new Float32Array(N * K).map((_, i) => (Math.floor(i / K) % 3 ? 0.25 : -0.25)),
        'bf16',
      );
      checkMatmulInt16(s, 'saturated', M, K, N, 'bf16', x, w);
      const xz = new Float32Array(5 * 40);
      xz.fill(0.5, 40, 80);
      checkMatmulInt16(s, 'zero rows', 5, 40, 3, 'f32', xz, toStorage(new Float32Array(3 * 40).fill(0.1), 'f32'), Float32Array.from([1, 2, 3]));
    }),
  );

  // int4 (AWQ): w = q * s + m with f16 scales and m = -z * s, so every dequantized weight is exact
  // in f32. GEMM (M > 1) dequantizes to f32 and runs the f32 micro-kernel: the f32 matmul
  // tolerance. GEMV (M = 1) quantizes x to 15 bits (|x - sx xq| <= sx / 2, sx = max|x| / 16383):
  // |error| <= sx/2 * sum_k |w_k| + the f32 tolerance (per group sums add one rounding each).
  eachConfig('int4 weights: GEMV and GEMM, group sizes 32 / 64 / 128, odd N, K over several blocks, bias', (be) =>
    scoped(be, (s) => {
      for (const [M, K, N, G] of [
        [1, 256, 192, 128],
        [1, 64, 5, 32],
        [1, 2304, 37, 64],
        [3, 256, 9, 128],
        [13, 128, 8, 32],
        [6, 2304, 19, 128],
        [33, 512, 70, 128],
      ]) {
        const rng = new Rng(seed('int4', M, K, N, G));
        const groups = K / G;
        const q = new Uint8Array((N * K) / 2);
        const qv = new Uint8Array(N * K);
        for (let i = 0; i < N * K; i++) {
          qv[i] = rng.int(16);
          q[i >> 1] |= qv[i] << ((i & 1) * 4);
        }
        const scales = new Float32Array(N * groups),
          offsets = new Float32Array(N * groups);
        for (let i = 0; i < N * groups; i++) {
          scales[i] = f16ToNumber(f32ToF16(rng.uniform(0.002, 0.03)));
          offsets[i] = -rng.int(16) * scales[i];
        }
        const w = new Float64Array(N * K);
        for (let n = 0; n < N; n++)
          for (let k = 0; k < K; k++) w[n * K + k] = qv[n * K + k] * scales[n * groups + Math.floor(k / G)] + offsets[n * groups + Math.floor(k / G)];
        const x = rng.f32(M * K);
        const bias = (M + N) % 2 ? rng.f32(N, -0.5, 0.5) : undefined;
        const B = bias ? s.keep(be.params(bias)) : undefined;
        const want = ref.matmul(x, M, K, w, N, bias);
        for (const activations of M === 1 ? (['i16', 'i8'] as const) : (['i16'] as const)) {
          const W = s.int4(N, K, G, { q, scales, offsets }, { activations });
          assert.equal(W.dtype, 'int4');
          assert.equal(W.activations, activations);
          assert.equal(W.byteLength, int4Bytes(N, K, G));
          const y = s.matrix(M, N);
          be.matmul(y, s.matrix(M, K, x), W, B);
          let tol = matmulTol(want.absSum, K);
          if (M === 1) {
            // Per group g: |x - sx_g xq| <= sx_g / 2, sx_g = max_g |x| / (16383 or 127).
            const qmax = activations === 'i8' ? 127 : 16383;
            const sx = Array.from({ length: groups }, (_, g) => x.subarray(g * G, (g + 1) * G).reduce((a, v) => Math.max(a, Math.abs(v)), 0) / qmax);
            const f32tol = tol;
            tol = (i) => {
              let e = 0;
              for (let k = 0; k < K; k++) e += (Math.abs(w[i * K + k]) * sx[Math.floor(k / G)]) / 2;
              return e + f32tol(i) + groups * U * want.absSum[i];
            };
          }
          check('matmul int4', `${M}x${K}x${N} G${G} ${activations}${bias ? '+bias' : ''}`, be.read(y), want.y, tol, N);
        }
      }
    }),
  );

  // Prefill rounds each dequantized weight as the reference kernels do (to the scales' dtype);
  // scales down to 1e-7 put weights in f16's subnormal range. Without such scales (and with
  // offsets -z * s, AutoAWQ's), the backend takes the f16 rounding without the subnormal path.
  // Then the f32 matmul tolerance (rounding skipped would miss it by far).
  eachConfig('int4 weights: GEMM rounds dequantized weights to f16 / bf16 when asked (subnormals too)', (be) =>
    scoped(be, (s) => {
      for (const [rounding, subnormals] of [
        ['f16', true],
        ['f16', false],
        ['bf16', true],
      ] as const) {
        const M = 7,
          K = 256,
          N = 13,
          G = 64,
          groups = K / G;
        const rng = new Rng(seed('int4-round', rounding, subnormals));
        const q = new Uint8Array((N * K) / 2).map(() => rng.int(256));
        const scales = new Float32Array(N * groups).map((_, i) =>
          f16ToNumber(f32ToF16(subnormals && i % 3 === 0 ? rng.uniform(1e-7, 3e-6) : rng.uniform(0.001, 0.03))),
        );
        const offsets = scales.map((sc) => Math.fround(-rng.int(16) * sc * (subnormals ? 1.0001 : 1)));
        const round = (v: number) => (rounding === 'f16' ? f16ToNumber(f32ToF16(v)) : bf16ToNumber(f32ToBf16(v)));
        const w = new Float64Array(N * K);
        for (let i = 0; i < N * K; i++) {
          const gi = Math.floor(i / K) * groups + Math.floor((i % K) / G);
          w[i] = round(Math.fround(((q[i >> 1] >> ((i & 1) * 4)) & 15) * scales[gi] + offsets[gi]));
        }
        const W = s.int4(N, K, G, { q, scales, offsets }, { dequantRounding: rounding });
        assert.equal(W.dequantRounding, rounding);
        const x = rng.f32(M * K);
        const want = ref.matmul(x, M, K, w, N);
        const y = s.matrix(M, N);
        be.matmul(y, s.matrix(M, K, x), W);
        check('matmul int4', `${rounding} rounding${subnormals ? ' (subnormals)' : ''} ${M}x${K}x${N}`, be.read(y), want.y, matmulTol(want.absSum, K), N);
      }
    }),
  );

  eachConfig('int4 weights: shapes the kernels cannot take are refused; no row lookup', (be) =>
    scoped(be, (s) => {
      assert.throws(() => be.linearInt4(8, 100, 32, () => {}), /linearInt4: 100 inputs are not a multiple of the group size 32/);
      assert.throws(() => be.linearInt4(8, 96, 48, () => {}), /group size 48 is not a multiple of 32/);
      const W = s.keep(be.linearInt4(8, 64, 32, () => {}));
      assert.throws(() => be.embedFromLinear(s.matrix(1, 64), W, s.ints([0])), /an int4 linear weight holds no stored rows/);
    }),
  );

  eachConfig('16-bit weights over their whole exponent range (f16 subnormals included)', (be) =>
    scoped(be, (s) => {
      for (const dtype of ['f16', 'bf16'] as const) {
        for (const [M, K] of [
          [1, 37],
          [6, 300],
          [1, 300],
        ]) {
          // Row n: random signs and mantissas, every weight with exponent field e(n); f16 row 0 is
          // all subnormal (or zero), f16 row 30 is in [2^15, 65504].
          const N = 31,
            rng = new Rng(seed('exprange', dtype, M, K));
          const bits = new Uint16Array(N * K);
          for (let n = 0; n < N; n++) {
            for (let k = 0; k < K; k++) {
              const r = rng.int(1 << 16);
              bits[n * K + k] = dtype === 'f16' ? (r & 0x83ff) | (n << 10) : (r & 0x807f) | ((97 + 2 * n) << 7);
            }
          }
          const x = rng.f32(M * K);
          checkMatmul(s, `${dtype} exponent range ${M}x${K}x${N}`, M, K, N, dtype, x, fromBits16(bits, dtype), undefined, false);
        }
      }
    }),
  );
});

// ---- embeddings ------------------------------------------------------------------------------

/** All 65536 16-bit patterns as a [64][1024] table, and their exact values. */
function allPatterns(dtype: 'f16' | 'bf16'): StoredWeights {
  return fromBits16(
    Uint16Array.from({ length: 65536 }, (_, i) => i),
    dtype,
  );
}

describe('embeddings', () => {
  eachConfig('embed: row-major table in f32 / f16 / bf16, strided output', (be) =>
    scoped(be, (s) => {
      const rows = 23,
        dim = 37,
        ids = [22, 0, 5, 5, 17, 22, 1];
      for (const dtype of DTYPES) {
        const rng = new Rng(seed('embed', dtype));
        const t = toStorage(rng.f32(rows * dim, -3, 3), dtype);
        const table = s.keep(be.embedding(rows, dim, dtype, (d) => d.set(t.bytes)));
        const out = s.padded(ids.length, dim, null);
        be.embed(out.view, table, s.ints(ids));
        const want = new Float32Array(ids.length * dim);
        ids.forEach((id, r) => want.set(t.values.subarray(id * dim, (id + 1) * dim), r * dim));
        assertSameF32(be.read(out.view), want, `embed ${dtype}`);
        assertPadding(be, out, `embed ${dtype}`);
      }
    }),
  );

  eachConfig('embed and embedFromLinear: every 16-bit pattern widens exactly', (be) =>
    scoped(be, (s) => {
      const ids = new Rng(seed('patterns')).permutation(64);
      for (const dtype of ['f16', 'bf16'] as const) {
        const t = allPatterns(dtype);
        const want = new Float32Array(64 * 1024);
        ids.forEach((id, r) => want.set(t.values.subarray(id * 1024, (id + 1) * 1024), r * 1024));
        const table = s.keep(be.embedding(64, 1024, dtype, (d) => d.set(t.bytes)));
        const out = s.matrix(64, 1024);
        be.embed(out, table, s.ints(ids));
        assertSameF32(be.read(out), want, `embed ${dtype} patterns`);
        const W = s.linear(64, 1024, dtype, t);
        const out2 = s.matrix(64, 1024);
        be.embedFromLinear(out2, W, s.ints(ids));
        assertSameF32(be.read(out2), want, `embedFromLinear ${dtype} patterns`);
      }
    }),
  );

  eachConfig('embedFromLinear: rows of a packed weight, ids in the last partial panel', (be) =>
    scoped(be, (s) => {
      for (const [N, K] of [
        [19, 37],
        [8, 5],
        [1, 3],
        [70, 9],
      ]) {
        const ids = [N - 1, 0, Math.min(16, N - 1), Math.min(7, N - 1), Math.min(8, N - 1), Math.max(0, N - 2), Math.floor(N / 2), N - 1];
        for (const dtype of DTYPES) {
          const rng = new Rng(seed('efl', dtype, N, K));
          const w = toStorage(rng.f32(N * K, -2, 2), dtype);
          const W = s.linear(N, K, dtype, w);
          const out = s.padded(ids.length, K, null, 1, 2);
          be.embedFromLinear(out.view, W, s.ints(ids));
          const want = new Float32Array(ids.length * K);
          ids.forEach((id, r) => want.set(w.values.subarray(id * K, (id + 1) * K), r * K));
          assertSameF32(be.read(out.view), want, `embedFromLinear ${dtype} ${N}x${K}`);
          assertPadding(be, out, `embedFromLinear ${dtype} ${N}x${K}`);
        }
      }
    }),
  );
});

// ---- normalisation -----------------------------------------------------------------------------

const NORM_SHAPES: [number, number][] = [
  [1, 37],
  [5, 300],
  [3, 1],
  [2, 8],
  [4, 1031],
  [7, 64],
  [3, 3],
];

/** Rows of test data: random, one row 1000x larger, one row of zeros, one offset by +10. */
function normData(rng: Rng, rows: number, n: number): Float32Array {
  const x = rng.f32(rows * n, -2, 2);
  for (let i = 0; i < n; i++) {
    if (rows > 1) x[n + i] *= 1000;
    if (rows > 2) x[2 * n + i] = 0;
    if (rows > 3) x[3 * n + i] += 10;
  }
  return x;
}

describe('normalisation', () => {
  eachConfig('rmsNorm', (be) =>
    scoped(be, (s) => {
      for (const [rows, n] of NORM_SHAPES) {
        for (const eps of [1e-6, 1e-5]) {
          const rng = new Rng(seed('rms', rows, n, eps));
          const x = normData(rng, rows, n),
            w = rng.f32(n, 0.5, 1.5);
          const xp = s.padded(rows, n, x, 2, 3),
            out = s.padded(rows, n, null, 4, 1);
          be.rmsNorm(out.view, xp.view, s.keep(be.params(w)), eps);
          const want = ref.rmsNorm(x, rows, n, w, eps);
          const k = (4 * Math.sqrt(n) + 6) * U;
          check('rmsNorm', `${rows}x${n} eps ${eps}`, be.read(out.view), want, (_i, y) => k * Math.abs(y), n);
          assertPadding(be, out, 'rmsNorm');
        }
      }
    }),
  );

  eachConfig('layerNorm', (be) =>
    scoped(be, (s) => {
      for (const [rows, n] of NORM_SHAPES) {
        for (const eps of [1e-6, 1e-5]) {
          const rng = new Rng(seed('ln', rows, n, eps));
          const x = normData(rng, rows, n),
            w = rng.f32(n, 0.5, 1.5),
            b = rng.f32(n, -1, 1);
          const xp = s.padded(rows, n, x, 2, 3),
            out = s.padded(rows, n, null, 4, 1);
          be.layerNorm(out.view, xp.view, s.keep(be.params(w)), s.keep(be.params(b)), eps);
          const want = ref.layerNorm(x, rows, n, w, b, eps);
          // Tolerance per element (see the top of the file).
          const tol = new Float64Array(rows * n);
          const k = (4 * Math.sqrt(n) + 6) * U;
          for (let r = 0; r < rows; r++) {
            let sum = 0,
              sumAbs = 0;
            for (let i = 0; i < n; i++) {
              sum += x[r * n + i];
              sumAbs += Math.abs(x[r * n + i]);
            }
            const mean = sum / n;
            let v = 0;
            for (let i = 0; i < n; i++) v += (x[r * n + i] - mean) ** 2;
            const inv = 1 / Math.sqrt(v / n + eps);
            const dMean = LAMBDA * Math.sqrt(n) * U * (sumAbs / n) + U * Math.abs(mean);
            for (let i = 0; i < n; i++) {
              const j = r * n + i,
                d = Math.abs(x[j] - mean);
              tol[j] = Math.abs(w[i]) * inv * (dMean + 2 * U * d) + Math.abs(want[j] - b[i]) * k + 2 * U * Math.abs(want[j]) + U * Math.abs(b[i]);
            }
          }
          check('layerNorm', `${rows}x${n} eps ${eps}`, be.read(out.view), want, (i) => tol[i], n);
          assertPadding(be, out, 'layerNorm');
        }
      }
    }),
  );
});

// ---- activations and element-wise ops ------------------------------------------------------------

const SPECIALS = [
  -20, -15, -10, -8, -5, -3, -1, -0.5, -0.0625, -0.06, -1e-3, -1e-7, -1e-30, -0, 0, 1e-30, 1e-7, 1e-3, 0.06, 0.0625, 0.5, 1, 3, 5, 8, 10, 15, 20,
];
const ACT_SHAPES: [number, number][] = [
  [3, 37],
  [1, 1],
  [2, 8],
  [5, 13],
  [2, 30],
];

/** Test inputs: the special values first, then uniform in [-8, 8]. */
function actData(rng: Rng, rows: number, n: number): Float32Array {
  const x = rng.f32(rows * n, -8, 8);
  x.set(SPECIALS.slice(0, rows * n));
  return x;
}

function actTol(act: Activation, x: number, y: number): number {
  return 2e-6 * Math.abs(y) + (act === 'gelu' || act === 'gelu_pytorch_tanh' ? 2e-7 * Math.abs(x) : 0);
}

describe('activations', () => {
  for (const act of ACTS) {
    eachConfig(`activation ${act}`, (be) =>
      scoped(be, (s) => {
        for (const [rows, n] of ACT_SHAPES) {
          const x = actData(new Rng(seed('act', act, rows, n)), rows, n);
          const xp = s.padded(rows, n, x, 1, 2),
            out = s.padded(rows, n, null, 3, 3);
          be.activation(out.view, xp.view, act);
          const got = be.read(out.view);
          check(act, `${rows}x${n}`, got, ref.activation(act, x), (i, y) => actTol(act, x[i], y), n);
          if (act === 'identity') assertSameF32(got, x, 'identity is exact');
          assertPadding(be, out, act);
        }
      }),
    );
  }

  for (const act of ACTS) {
    eachConfig(`gatedActivation ${act}`, (be) =>
      scoped(be, (s) => {
        for (const [rows, n] of ACT_SHAPES) {
          const rng = new Rng(seed('gated', act, rows, n));
          const a = actData(rng, rows, n),
            b = rng.f32(rows * n, -2, 2);
          const ap = s.padded(rows, n, a, 1, 2),
            bp = s.padded(rows, n, b, 2, 1),
            out = s.padded(rows, n, null, 3, 3);
          be.gatedActivation(out.view, ap.view, bp.view, act);
          const want = Float64Array.from(a, (v, i) => ref.activate(act, v) * b[i]);
          check(
            `gated ${act}`,
            `${rows}x${n}`,
            be.read(out.view),
            want,
            (i, y) => actTol(act, a[i], ref.activate(act, a[i])) * Math.abs(b[i]) + 2 * U * Math.abs(y),
            n,
          );
          assertPadding(be, out, `gated ${act}`);
        }
      }),
    );
  }

  eachConfig('add and mul are exact', (be) =>
    scoped(be, (s) => {
      for (const [rows, n] of [
        [3, 37],
        [1, 1],
        [4, 8],
        [2, 130],
        [1, 3],
      ]) {
        const rng = new Rng(seed('binary', rows, n));
        const a = rng.f32(rows * n, -100, 100),
          b = rng.f32(rows * n, -100, 100);
        const ap = s.padded(rows, n, a, 1, 1),
          bp = s.padded(rows, n, b, 3, 0);
        for (const op of ['add', 'mul'] as const) {
          const out = s.padded(rows, n, null, 2, 2);
          be[op](out.view, ap.view, bp.view);
          const want = Float32Array.from(a, (v, i) => (op === 'add' ? v + b[i] : v * b[i]));
          assertSameF32(be.read(out.view), want, `${op} ${rows}x${n}`);
          assertPadding(be, out, op);
        }
      }
    }),
  );
});

// ---- softmax ---------------------------------------------------------------------------------

describe('softmax', () => {
  eachConfig('softmax rows (one-element rows, large values)', (be) =>
    scoped(be, (s) => {
      const cases: { rows: number; n: number; fill: (rng: Rng, r: number, i: number) => number }[] = [
        { rows: 1, n: 1, fill: () => 3 },
        { rows: 3, n: 1, fill: (rng) => rng.uniform(-80, 80) },
        { rows: 3, n: 3, fill: (rng) => rng.uniform(-5, 5) },
        { rows: 4, n: 37, fill: (rng) => rng.uniform(-10, 10) },
        { rows: 3, n: 70, fill: (rng) => rng.uniform(-3, 3) },
        { rows: 2, n: 8, fill: (rng) => rng.uniform(-1, 1) },
        // Rows of large values: alternating +-80, all 80, one 80 among -80, all -80, random in [-80, 80].
        {
          rows: 5,
          n: 37,
          fill: (rng, r, i) => [i % 2 ? 80 : -80, 80, i === 17 ? 80 : -80, -80, rng.uniform(-80, 80)][r],
        },
      ];
      for (const [ci, c] of cases.entries()) {
        const rng = new Rng(seed('softmax', ci));
        const x = new Float32Array(c.rows * c.n);
        for (let r = 0; r < c.rows; r++) for (let i = 0; i < c.n; i++) x[r * c.n + i] = c.fill(rng, r, i);
        const xp = s.padded(c.rows, c.n, x, 2, 1),
          out = s.padded(c.rows, c.n, null, 1, 4);
        be.softmax(out.view, xp.view);
        const want = ref.softmax(x, c.rows, c.n);
        const rowMax = Array.from({ length: c.rows }, (_, r) => Math.max(...x.subarray(r * c.n, (r + 1) * c.n)));
        const k = (LAMBDA * Math.sqrt(c.n) + 6) * U;
        check(
          'softmax',
          `case ${ci} (${c.rows}x${c.n})`,
          be.read(out.view),
          want,
          (i, y) => y * (Math.abs(x[i] - rowMax[Math.floor(i / c.n)]) * U + k) + 1e-37,
          c.n,
        );
        assertPadding(be, out, 'softmax');
      }
    }),
  );
});

// ---- rope ------------------------------------------------------------------------------------

describe('rope', () => {
  const CASES = [
    { heads: 3, D: 16, rot: 16, theta: 1e4 },
    { heads: 3, D: 24, rot: 24, theta: 1e6 },
    { heads: 5, D: 24, rot: 12, theta: 1e4 },
    { heads: 3, D: 16, rot: 10, theta: 1e6 },
    { heads: 1, D: 8, rot: 4, theta: 1e4 },
  ];
  const POSITIONS = [0, 1, 4000, 17, 3999, 5, 2047];
  eachConfig('rope: odd head counts, partial rotary dims, theta 1e4 / 1e6, positions up to 4000', (be) =>
    scoped(be, (s) => {
      for (const c of CASES) {
        const what = `heads ${c.heads} D ${c.D} rot ${c.rot} theta ${c.theta}`;
        const rows = POSITIONS.length,
          cols = c.heads * c.D;
        const rng = new Rng(seed('rope', what));
        const x = rng.f32(rows * cols, -2, 2);
        const table = s.keep(be.ropeTable(c.rot, c.theta, 4001));
        const xp = s.padded(rows, cols, x, 2, 3);
        be.rope(xp.view, c.heads, c.D, s.ints(POSITIONS), table);
        const got = be.read(xp.view);
        assertPadding(be, xp, 'rope');
        // Tolerances per element from its rotation pair (|x_i| + |x_i+h|) and its angle.
        const half = c.rot / 2;
        const pairAbs = new Float64Array(rows * cols),
          angleTol = new Float64Array(rows * cols);
        for (let r = 0; r < rows; r++) {
          const ang = ref.ropeAngles(c.rot, c.theta, POSITIONS[r], 'exact');
          for (let h = 0; h < c.heads; h++) {
            for (let i = 0; i < half; i++) {
              const a = r * cols + h * c.D + i,
                b = a + half;
              pairAbs[a] = pairAbs[b] = Math.abs(x[a]) + Math.abs(x[b]);
              angleTol[a] = angleTol[b] = ((Math.log(c.theta) * (2 * i)) / c.rot + 3) * U * ang[i];
            }
          }
        }
        const hf = ref.rope(x, rows, c.heads, c.D, c.rot, POSITIONS, c.theta, 'hf-f32');
        check('rope', `${what} (HF f32 angles)`, got, hf, (i) => 4 * U * pairAbs[i], cols);
        const exact = ref.rope(x, rows, c.heads, c.D, c.rot, POSITIONS, c.theta, 'exact');
        check('rope/exact', `${what} (exact angles)`, got, exact, (i) => (4 * U + angleTol[i]) * pairAbs[i], cols);
        // Dims past the rotary part are untouched.
        for (let r = 0; r < rows; r++) {
          for (let h = 0; h < c.heads; h++) {
            for (let i = c.rot; i < c.D; i++) assert.equal(got[r * cols + h * c.D + i], x[r * cols + h * c.D + i], `${what}: dim ${i} changed`);
          }
        }
      }
    }),
  );
});

// ---- KV cache and attention ------------------------------------------------------------------------

/** A copy of what the test wrote into one layer of a cache: slot -> [kvHeads * D] K and V rows. */
class Shadow implements ref.KVSource {
  readonly kRows = new Map<number, Float32Array>();
  readonly vRows = new Map<number, Float32Array>();
  constructor(
    readonly kvHeads: number,
    readonly D: number,
  ) {}
  k(slot: number, h: number): Float32Array {
    return this.row(this.kRows, slot).subarray(h * this.D, (h + 1) * this.D);
  }
  v(slot: number, h: number): Float32Array {
    return this.row(this.vRows, slot).subarray(h * this.D, (h + 1) * this.D);
  }
  private row(m: Map<number, Float32Array>, slot: number): Float32Array {
    const r = m.get(slot);
    if (!r) throw new Error(`test bug: slot ${slot} was never written`);
    return r;
  }
}

/** Writes n random K/V rows at slot0 (through column views of a fused [n][3 * width] matrix). */
function writeKV(s: Scope, cache: KVCache, layer: number, shadow: Shadow, slot0: number, n: number, rng: Rng, kScale = 1): void {
  const width = cache.kvHeads * cache.headDim;
  const k = rng.f32(n * width).map((v) => v * kScale),
    v = rng.f32(n * width, -2, 2);
  const fused = s.matrix(n, 3 * width + 1);
  const kv = fused.view(0, n, 1, width),
    vv = fused.view(0, n, 1 + 2 * width, width);
  s.be.write(kv, k);
  s.be.write(vv, v);
  s.be.kvWrite(cache, layer, kv, vv, slot0);
  for (let r = 0; r < n; r++) {
    shadow.kRows.set(slot0 + r, k.slice(r * width, (r + 1) * width));
    shadow.vRows.set(slot0 + r, v.slice(r * width, (r + 1) * width));
  }
}

/** Per-element attention tolerance (see the top of the file). */
function attnTol(
  q: ArrayLike<number>,
  nq: number,
  heads: number,
  kvHeads: number,
  D: number,
  kv: ref.KVSource,
  keys: (row: number, kvh: number) => readonly number[],
  scale: number,
): Float64Array {
  const tol = new Float64Array(nq * heads * D);
  const group = heads / kvHeads;
  for (let r = 0; r < nq; r++) {
    for (let h = 0; h < heads; h++) {
      const kvh = Math.floor(h / group),
        slots = keys(r, kvh),
        n = slots.length;
      let S = 0,
        V = 0;
      for (const j of slots) {
        const k = kv.k(j, kvh);
        let a = 0;
        for (let i = 0; i < D; i++) a += Math.abs(q[r * heads * D + h * D + i] * k[i]);
        S = Math.max(S, a * scale);
        V = Math.max(V, maxAbs(kv.v(j, kvh)));
      }
      const dS = LAMBDA * Math.sqrt(D) * U * S;
      const t = V * (2 * dS + 2 * U * (1 + Math.log(Math.max(n, 1))) + 8 * U + 2 * LAMBDA * Math.sqrt(n + 1) * U + 2 * U * Math.ceil(n / 64)) + 1e-30;
      tol.fill(t, r * heads * D + h * D, r * heads * D + (h + 1) * D);
    }
  }
  return tol;
}

interface AttnRun {
  heads: number;
  qSlot0: number;
  causal: boolean;
  count: number;
  indices?: number[];
  perKvHead?: boolean;
}

/** Runs attention of q (rows x heads*D, given as a column view) and returns the output and the reference. */
function runAttention(
  s: Scope,
  cache: KVCache,
  layer: number,
  shadow: Shadow,
  q: Float32Array,
  nq: number,
  o: AttnRun,
): { got: Float32Array; want: Float64Array; tol: Float64Array } {
  const be = s.be,
    D = cache.headDim,
    width = o.heads * D;
  const scale = 1 / Math.sqrt(D);
  const qp = s.padded(nq, width, q, 4, 4),
    out = s.padded(nq, width, null, 2, 6);
  const idx = o.indices ? s.ints(o.indices) : undefined;
  be.attention(out.view, qp.view, cache, layer, {
    heads: o.heads,
    qSlot0: o.qSlot0,
    causal: o.causal,
    scale,
    keys: { count: o.count, indices: idx, perKvHead: o.perKvHead },
  });
  assertPadding(be, out, 'attention');
  const keys = o.indices
    ? (_r: number, kvh: number) => (o.perKvHead ? o.indices!.slice(kvh * o.count, (kvh + 1) * o.count) : o.indices!)
    : ref.denseKeys(o.count, o.causal, o.qSlot0);
  const want = ref.attention(q, nq, o.heads, cache.kvHeads, D, shadow, keys, scale);
  return { got: be.read(out.view), want, tol: attnTol(q, nq, o.heads, cache.kvHeads, D, shadow, keys, scale) };
}

/** Reads V rows of `slots` back through one-key decode attention (exact: the softmax of one key is 1). */
function readV(s: Scope, cache: KVCache, layer: number, slot: number): Float32Array {
  const be = s.be,
    width = cache.kvHeads * cache.headDim;
  const q = s.matrix(1, width, new Float32Array(width)),
    out = s.matrix(1, width);
  be.attention(out, q, cache, layer, { heads: cache.kvHeads, qSlot0: 0, causal: false, scale: 1, keys: { count: 1, indices: s.ints([slot]) } });
  return be.read(out);
}

/** Fills `layers` layers of a new cache with `len` slots, written in chunks of the given sizes in shuffled order. */
function filledCache(
  s: Scope,
  kvHeads: number,
  D: number,
  blockSize: number,
  len: number,
  rng: Rng,
  layers = 2,
  kScale = 1,
): { cache: KVCache; shadows: Shadow[] } {
  const cache = s.keep(s.be.kvCache(layers, kvHeads, D, { blockSize }));
  const shadows = Array.from({ length: layers }, () => new Shadow(kvHeads, D));
  const chunks: [number, number][] = [];
  for (let at = 0; at < len;) {
    const n = Math.min(len - at, 1 + rng.int(70));
    chunks.push([at, n]);
    at += n;
  }
  for (const i of rng.permutation(chunks.length)) {
    for (let l = 0; l < layers; l++) writeKV(s, cache, l, shadows[l], chunks[i][0], chunks[i][1], rng, kScale);
  }
  assert.equal(cache.length, len);
  return { cache, shadows };
}

describe('KV cache', () => {
  eachConfig('kvWrite / kvReserve / kvTruncate: data survives growth, truncation and rewriting', (be) =>
    scoped(be, (s) => {
      const rng = new Rng(seed('kv'));
      const kvHeads = 2,
        D = 20,
        B = 16;
      const cache = s.keep(be.kvCache(2, kvHeads, D, { blockSize: B }));
      assert.deepEqual([cache.layers, cache.kvHeads, cache.headDim, cache.blockSize, cache.length], [2, kvHeads, D, B, 0]);
      const shadows = [new Shadow(kvHeads, D), new Shadow(kvHeads, D)];
      // 150 slots (10 blocks) in chunks written out of order; the cache grows past them each time.
      const chunks: [number, number][] = [
        [49, 64],
        [0, 1],
        [113, 37],
        [1, 15],
        [16, 33],
      ];
      for (const [slot0, n] of chunks) {
        for (let l = 0; l < 2; l++) writeKV(s, cache, l, shadows[l], slot0, n, rng);
      }
      assert.equal(cache.length, 150);
      const verify = (len: number, what: string): void => {
        for (let l = 0; l < 2; l++) {
          for (let slot = 0; slot < len; slot++) assertSameF32(readV(s, cache, l, slot), shadows[l].vRows.get(slot)!, `${what}: V of layer ${l} slot ${slot}`);
          const q = rng.f32(3 * 2 * kvHeads * D);
          const r = runAttention(s, cache, l, shadows[l], q, 3, { heads: 2 * kvHeads, qSlot0: len - 3, causal: true, count: len });
          check('attention', `${what} layer ${l}`, r.got, r.want, (i) => r.tol[i]);
        }
      };
      verify(150, 'after growth');
      // kvReserve only extends.
      be.kvReserve(cache, 100);
      assert.equal(cache.length, 150);
      const used = be.memoryUsage()[0].usedBytes;
      be.kvTruncate(cache, 70);
      assert.equal(cache.length, 70);
      assert.equal(
        used - be.memoryUsage()[0].usedBytes,
        2 * (Math.ceil(150 / B) - Math.ceil(70 / B)) * 2 * kvHeads * B * D * 4,
        'truncation returns whole blocks',
      );
      verify(70, 'after truncation');
      // Rewrite 70..129 with new values: attention must see them, not the old ones.
      for (let l = 0; l < 2; l++) writeKV(s, cache, l, shadows[l], 70, 60, rng);
      assert.equal(cache.length, 130);
      verify(130, 'after rewriting');
      // Down to nothing and back.
      be.kvTruncate(cache, 0);
      assert.equal(cache.length, 0);
      be.kvReserve(cache, 40);
      assert.equal(cache.length, 40);
      for (let l = 0; l < 2; l++) writeKV(s, cache, l, shadows[l], 0, 40, rng);
      verify(40, 'after truncation to 0');
    }),
  );
  eachConfig('kvCopy: a branch holds the prefix, and writing either leaves the other as it was', (be) =>
    scoped(be, (s) => {
      const rng = new Rng(seed('kvcopy'));
      const kvHeads = 2,
        D = 12,
        B = 16;
      const src = s.keep(be.kvCache(2, kvHeads, D, { blockSize: B }));
      const shadows = [new Shadow(kvHeads, D), new Shadow(kvHeads, D)];
      for (let l = 0; l < 2; l++) writeKV(s, src, l, shadows[l], 0, 75, rng);
      const dst = s.keep(be.kvCache(2, kvHeads, D, { blockSize: B }));
      for (let l = 0; l < 2; l++) writeKV(s, dst, l, new Shadow(kvHeads, D), 0, 90, rng); // replaced by the copy
      const used = be.memoryUsage()[0].usedBytes;
      be.kvCopy(dst, src, 37); // ends inside a block
      assert.equal(dst.length, 37);
      assert.equal(
        used - be.memoryUsage()[0].usedBytes,
        2 * (Math.ceil(90 / B) - Math.ceil(37 / B)) * 2 * kvHeads * B * D * 4,
        'the copy holds whole blocks of 37 slots',
      );
      const copied = shadows.map((sh) => {
        const c = new Shadow(kvHeads, D);
        for (let slot = 0; slot < 37; slot++) {
          c.kRows.set(slot, sh.kRows.get(slot)!);
          c.vRows.set(slot, sh.vRows.get(slot)!);
        }
        return c;
      });
      // The branch continues with its own rows; the source keeps its slots 37..74.
      for (let l = 0; l < 2; l++) writeKV(s, dst, l, copied[l], 37, 20, rng);
      for (let l = 0; l < 2; l++) {
        for (const [cache, sh, len] of [
          [src, shadows[l], 75],
          [dst, copied[l], 57],
        ] as const) {
          for (let slot = 0; slot < len; slot++) assertSameF32(readV(s, cache, l, slot), sh.vRows.get(slot)!, `V of layer ${l} slot ${slot}`);
          const q = rng.f32(2 * 2 * kvHeads * D);
          const r = runAttention(s, cache, l, sh, q, 2, { heads: 2 * kvHeads, qSlot0: len - 2, causal: true, count: len });
          check('attention', `layer ${l} over ${len} slots`, r.got, r.want, (i) => r.tol[i]);
        }
      }
      assert.throws(() => be.kvCopy(dst, src, 76), /kvCopy: length 76 outside \[0, 75\]/);
      const other = s.keep(be.kvCache(2, kvHeads, D + 4, { blockSize: B }));
      assert.throws(() => be.kvCopy(other, src, 10), /kvCopy: caches of/);
    }),
  );
});

describe('attention', () => {
  const PREFILL = [
    { name: 'causal GQA 6/2, 7 rows', heads: 6, kvHeads: 2, D: 20, B: 16, nq: 7, qSlot0: 0, len: 7, count: 7, causal: true },
    { name: 'causal 4/4, 70 rows', heads: 4, kvHeads: 4, D: 16, B: 64, nq: 70, qSlot0: 0, len: 70, count: 70, causal: true },
    { name: 'bidirectional 8/1, 3 rows', heads: 8, kvHeads: 1, D: 32, B: 256, nq: 3, qSlot0: 0, len: 3, count: 3, causal: false },
    { name: 'bidirectional 6/2, 150 rows', heads: 6, kvHeads: 2, D: 24, B: 16, nq: 150, qSlot0: 0, len: 150, count: 150, causal: false },
    { name: 'second chunk: 13 rows at slot 70', heads: 6, kvHeads: 2, D: 24, B: 16, nq: 13, qSlot0: 70, len: 83, count: 83, causal: true },
    { name: 'bidirectional, one key, 5 rows', heads: 4, kvHeads: 4, D: 16, B: 32, nq: 5, qSlot0: 0, len: 1, count: 1, causal: false },
    { name: 'causal 3 rows over 3 keys', heads: 8, kvHeads: 1, D: 12, B: 16, nq: 3, qSlot0: 0, len: 3, count: 3, causal: true },
    { name: 'causal, later slots in the cache are masked', heads: 6, kvHeads: 2, D: 20, B: 64, nq: 10, qSlot0: 0, len: 100, count: 100, causal: true },
    { name: 'causal one row mid-sequence (prefill path)', heads: 6, kvHeads: 2, D: 24, B: 16, nq: 1, qSlot0: 49, len: 100, count: 100, causal: true },
    {
      name: 'sharp scores 4/2 D 64, 33 rows at slot 97',
      heads: 4,
      kvHeads: 2,
      D: 64,
      B: 64,
      nq: 33,
      qSlot0: 97,
      len: 130,
      count: 130,
      causal: true,
      kScale: 6,
    },
    { name: 'head dim 256, 5 rows at slot 65', heads: 2, kvHeads: 1, D: 256, B: 128, nq: 5, qSlot0: 65, len: 70, count: 70, causal: true },
    {
      name: 'very sharp scores, one row over 700 keys (decode path)',
      heads: 6,
      kvHeads: 2,
      D: 24,
      B: 16,
      nq: 1,
      qSlot0: 699,
      len: 700,
      count: 700,
      causal: true,
      kScale: 40,
    },
    { name: 'very sharp scores, 9 rows over 300 keys', heads: 6, kvHeads: 2, D: 24, B: 32, nq: 9, qSlot0: 291, len: 300, count: 300, causal: true, kScale: 40 },
    { name: 'head dim 4, 11 rows', heads: 3, kvHeads: 1, D: 4, B: 16, nq: 11, qSlot0: 0, len: 11, count: 11, causal: true },
    { name: 'largest group (64 heads per KV head), 5 rows', heads: 64, kvHeads: 1, D: 8, B: 16, nq: 5, qSlot0: 60, len: 65, count: 65, causal: true },
    { name: 'largest group, head dim 256, decode over 150 keys', heads: 64, kvHeads: 1, D: 256, B: 64, nq: 1, qSlot0: 149, len: 150, count: 150, causal: true },
    { name: 'block size 1, 6 rows at slot 14', heads: 4, kvHeads: 2, D: 8, B: 1, nq: 6, qSlot0: 14, len: 20, count: 20, causal: true },
    { name: 'bidirectional 6/3 D 40 over 70 of 90 slots', heads: 6, kvHeads: 3, D: 40, B: 16, nq: 9, qSlot0: 0, len: 90, count: 70, causal: false },
  ];
  eachConfig('prefill: causal and bidirectional, GQA, odd row and key counts, qSlot0 > 0', (be) =>
    scoped(be, (s) => {
      for (const c of PREFILL) {
        const rng = new Rng(seed('prefill', c.name));
        const { cache, shadows } = filledCache(s, c.kvHeads, c.D, c.B, c.len, rng, 2, c.kScale ?? 1);
        const q = rng.f32(c.nq * c.heads * c.D);
        const r = runAttention(s, cache, 1, shadows[1], q, c.nq, { heads: c.heads, qSlot0: c.qSlot0, causal: c.causal, count: c.count });
        check('attention', c.name, r.got, r.want, (i) => r.tol[i], c.heads * c.D);
      }
    }),
  );

  const DECODE_CACHES = [
    { heads: 6, kvHeads: 2, D: 24, B: 16 },
    { heads: 4, kvHeads: 4, D: 16, B: 64 },
    { heads: 8, kvHeads: 1, D: 40, B: 256 },
    // Groups of 5 and 2 (the decode core takes query heads 3 at a time), D % 8 == 4.
    { heads: 10, kvHeads: 2, D: 20, B: 32 },
    { heads: 4, kvHeads: 2, D: 12, B: 16 },
  ];
  const COUNTS = [1, 3, 63, 64, 65, 70, 150, 255, 257, 511, 700];

  eachConfig('decode: one query row over 1..700 keys (split key ranges)', (be) =>
    scoped(be, (s) => {
      for (const c of DECODE_CACHES) {
        const rng = new Rng(seed('decode', c.heads, c.kvHeads));
        const { cache, shadows } = filledCache(s, c.kvHeads, c.D, c.B, 700, rng);
        for (const count of COUNTS) {
          for (const causal of [true, false]) {
            const q = rng.f32(c.heads * c.D, -2, 2);
            const r = runAttention(s, cache, 1, shadows[1], q, 1, { heads: c.heads, qSlot0: causal ? count - 1 : 0, causal, count });
            check('attention/decode', `${c.heads}/${c.kvHeads} D ${c.D} over ${count} keys${causal ? ' causal' : ''}`, r.got, r.want, (i) => r.tol[i], c.D);
          }
        }
      }
    }),
  );

  eachConfig('key salience (second streaming pass): weighted head-mean attention per key, with the attention output unchanged', (be) =>
    scoped(be, (s) => {
      const CASES = [
        { name: 'CLS row, bidirectional 4/4 D 16, 65 tokens', heads: 4, kvHeads: 4, D: 16, nq: 65, count: 65, causal: false, weights: 'first' },
        { name: 'column mean, bidirectional 6/2 D 20, 150 tokens', heads: 6, kvHeads: 2, D: 20, nq: 150, count: 150, causal: false, weights: 'mean' },
        { name: 'three summary rows, causal 8/1 D 12 at slot 30, 70 rows', heads: 8, kvHeads: 1, D: 12, nq: 70, count: 100, causal: true, weights: 'three' },
        { name: 'one query row (decode-shaped), 9/3 D 64 over 257 keys', heads: 9, kvHeads: 3, D: 64, nq: 1, count: 257, causal: false, weights: 'first' },
      ];
      for (const c of CASES) {
        const rng = new Rng(seed('salience', c.name));
        const { cache, shadows } = filledCache(s, c.kvHeads, c.D, 16, c.count, rng, 1, 3);
        const q = rng.f32(c.nq * c.heads * c.D, -2, 2);
        const w = Float32Array.from({ length: c.nq }, (_, r) =>
          c.weights === 'first' ? (r === 0 ? 1 : 0) : c.weights === 'mean' ? 1 / c.nq : r < 3 ? 1 / 3 : 0,
        );
        const qSlot0 = c.causal ? c.count - c.nq : 0;
        const scale = 1 / Math.sqrt(c.D);
        const qm = s.matrix(c.nq, c.heads * c.D, q),
          out = s.matrix(c.nq, c.heads * c.D),
          plain = s.matrix(c.nq, c.heads * c.D);
        const wm = s.matrix(1, c.nq, w),
          sal = s.matrix(1, c.count);
        const opts = { heads: c.heads, qSlot0, causal: c.causal, scale, keys: { count: c.count } };
        be.attention(out, qm, cache, 0, { ...opts, salience: { rowWeights: wm, out: sal } });
        be.attention(plain, qm, cache, 0, opts);
        // Several rows run the same prefill kernel either way; a single row without salience takes
        // the decode kernel, whose sums round differently.
        if (c.nq > 1) assert.deepEqual(be.read(out), be.read(plain), `${c.name}: asking for salience changed the attention output`);
        else check('attention/salience', `${c.name} output`, be.read(out), be.read(plain), () => 1e-5);
        const want = ref.keySalience(q, c.nq, c.heads, c.kvHeads, c.D, shadows[0], c.count, c.causal, qSlot0, w, scale);
        check('attention/salience', c.name, be.read(sal), want, () => 2e-6);
        const total = want.reduce((a, b) => a + b, 0);
        assert.ok(Math.abs(total - w.reduce((a, b) => a + b, 0)) < 1e-5, `${c.name}: salience sums to ${total}`);
      }
      const qm = s.matrix(2, 16),
        out = s.matrix(2, 16),
        { cache } = filledCache(s, 4, 4, 16, 2, new Rng(1), 1);
      const opts = { heads: 4, qSlot0: 0, causal: false, scale: 0.5, keys: { count: 2 } };
      assert.throws(
        () => be.attention(out, qm, cache, 0, { ...opts, salience: { rowWeights: s.matrix(1, 3), out: s.matrix(1, 2) } }),
        /salience row weights are 1x3, expected 1x2/,
      );
      assert.throws(
        () => be.attention(out, qm, cache, 0, { ...opts, salience: { rowWeights: s.matrix(1, 2), out: s.matrix(1, 5) } }),
        /salience output is 1x5, expected 1x2/,
      );
    }),
  );

  eachConfig('key scores for decode retrieval: per KV group, softmax over the listed keys only, summed over rows', (be) =>
    scoped(be, (s) => {
      const CASES = [
        { heads: 9, kvHeads: 3, D: 64, len: 300, nq: 7, n: 257 },
        { heads: 4, kvHeads: 4, D: 20, len: 90, nq: 1, n: 5 },
        { heads: 6, kvHeads: 1, D: 12, len: 70, nq: 13, n: 70 },
      ];
      for (const c of CASES) {
        const rng = new Rng(seed('keyscore', c.heads, c.D));
        const { cache, shadows } = filledCache(s, c.kvHeads, c.D, 16, c.len, rng, 2, 3);
        const keys = rng.subset(c.len, c.n);
        const q = rng.f32(c.nq * c.heads * c.D, -2, 2);
        const out = s.matrix(c.kvHeads, c.n);
        const scale = 1 / Math.sqrt(c.D);
        be.keyScores(out, s.matrix(c.nq, c.heads * c.D, q), cache, 1, { heads: c.heads, scale, keys: s.ints(keys) });
        const want = ref.keyScores(q, c.nq, c.heads, c.kvHeads, c.D, shadows[1], keys, scale);
        check('attention/keyscores', `${c.heads}/${c.kvHeads} D ${c.D}, ${c.nq} rows over ${c.n} keys`, be.read(out), want, () => 2e-6 * c.nq);
        for (let g = 0; g < c.kvHeads; g++) {
          const sum = want.subarray(g * c.n, (g + 1) * c.n).reduce((a, b) => a + b, 0);
          assert.ok(Math.abs(sum - c.nq) < 1e-9, 'reference scores of a group sum to the number of rows');
        }
      }
      const { cache } = filledCache(s, 2, 8, 16, 10, new Rng(2), 1);
      assert.throws(
        () => be.keyScores(s.matrix(2, 3), s.matrix(1, 16), cache, 0, { heads: 2, scale: 1, keys: s.ints([0, 4, 10]) }),
        /keyScores: key 10 at 2 is outside the cache \[0, 10\)/,
      );
      assert.throws(
        () => be.keyScores(s.matrix(3, 3), s.matrix(1, 16), cache, 0, { heads: 2, scale: 1, keys: s.ints([0, 4, 9]) }),
        /keyScores: out is 3x3, expected a whole 2x3 matrix/,
      );
    }),
  );

  eachConfig('per-KV-head key lists at a stride equal the same lists packed', (be) =>
    scoped(be, (s) => {
      const heads = 6,
        kvHeads = 3,
        D = 16,
        len = 200,
        count = 37,
        stride = 50;
      const rng = new Rng(seed('stride'));
      const { cache } = filledCache(s, kvHeads, D, 16, len, rng, 1);
      const lists = Array.from({ length: kvHeads }, () => rng.subset(len, count));
      const spaced = new Array<number>((kvHeads - 1) * stride + count).fill(-1);
      lists.forEach((l, g) =>
        l.forEach((v, i) => {
          spaced[g * stride + i] = v;
        }),
      );
      const q = s.matrix(1, heads * D, rng.f32(heads * D, -2, 2)),
        a = s.matrix(1, heads * D),
        b = s.matrix(1, heads * D);
      const opts = { heads, qSlot0: len - 1, causal: false, scale: 0.25 };
      be.attention(a, q, cache, 0, { ...opts, keys: { count, indices: s.ints(lists.flat()), perKvHead: true } });
      be.attention(b, q, cache, 0, { ...opts, keys: { count, indices: s.ints(spaced), perKvHead: true, stride } });
      assert.deepEqual(be.read(b), be.read(a));
      assert.throws(
        () => be.attention(b, q, cache, 0, { ...opts, keys: { count, indices: s.ints(spaced), perKvHead: true, stride: 30 } }),
        /key list stride 30 is less than the count 37/,
      );
    }),
  );

  eachConfig('decode with key indices: shared by all heads and per KV head', (be) =>
    scoped(be, (s) => {
      for (const c of DECODE_CACHES) {
        const rng = new Rng(seed('indexed', c.heads, c.kvHeads));
        const { cache, shadows } = filledCache(s, c.kvHeads, c.D, c.B, 700, rng);
        for (const count of [1, 5, 64, 70, 300, 700]) {
          const q = rng.f32(c.heads * c.D, -2, 2);
          const r = runAttention(s, cache, 1, shadows[1], q, 1, { heads: c.heads, qSlot0: 699, causal: true, count, indices: rng.subset(700, count) });
          check('attention/indexed', `shared ${count} of 700`, r.got, r.want, (i) => r.tol[i], c.D);
        }
        for (const count of [1, 37, 257]) {
          const q = rng.f32(c.heads * c.D, -2, 2);
          const indices = Array.from({ length: c.kvHeads }, () => rng.subset(700, count)).flat();
          const r = runAttention(s, cache, 1, shadows[1], q, 1, { heads: c.heads, qSlot0: 699, causal: false, count, indices, perKvHead: true });
          check('attention/indexed', `per KV head ${count} of 700`, r.got, r.want, (i) => r.tol[i], c.D);
        }
      }
    }),
  );

  eachConfig('indexed decode attention equals dense attention over the same positions', (be) =>
    scoped(be, (s) => {
      const heads = 6,
        kvHeads = 2,
        D = 24,
        len = 400;
      const rng = new Rng(seed('indexed-vs-dense'));
      const { cache, shadows } = filledCache(s, kvHeads, D, 16, len, rng);
      const sh = shadows[1];
      for (const perKvHead of [false, true]) {
        for (const n of [137, 5, 300]) {
          // Positions S: sorted for the shared list, in random order per KV head.
          const lists = perKvHead ? Array.from({ length: kvHeads }, () => rng.subset(len, n)) : [rng.subset(len, n).sort((a, b) => a - b)];
          const indices = lists.flat();
          const q = rng.f32(heads * D, -2, 2);
          // (a) against the reference restricted to S.
          const r = runAttention(s, cache, 1, sh, q, 1, { heads, qSlot0: len - 1, causal: false, count: n, indices, perKvHead });
          check('attention/indexed', `S of ${n}${perKvHead ? ' per KV head' : ''}`, r.got, r.want, (i) => r.tol[i], D);
          // (b) against dense attention on a cache holding only the rows of S, contiguously.
          const compact = s.keep(be.kvCache(1, kvHeads, D, { blockSize: 64 }));
          const k = new Float32Array(n * kvHeads * D),
            v = new Float32Array(n * kvHeads * D);
          for (let j = 0; j < n; j++) {
            for (let h = 0; h < kvHeads; h++) {
              const slot = lists[perKvHead ? h : 0][j];
              k.set(sh.k(slot, h), (j * kvHeads + h) * D);
              v.set(sh.v(slot, h), (j * kvHeads + h) * D);
            }
          }
          be.kvWrite(compact, 0, s.matrix(n, kvHeads * D, k), s.matrix(n, kvHeads * D, v), 0);
          const qm = s.matrix(1, heads * D, q),
            out = s.matrix(1, heads * D);
          be.attention(out, qm, compact, 0, { heads, qSlot0: n - 1, causal: true, scale: 1 / Math.sqrt(D), keys: { count: n } });
          check('attention/indexed=dense', `S of ${n}${perKvHead ? ' per KV head' : ''}`, r.got, be.read(out), () => 1e-6, D);
        }
      }
    }),
  );
});

// ---- errors ------------------------------------------------------------------------------------

describe('errors', () => {
  eachConfig('bad input gives clear BackendErrors', (be) =>
    scoped(be, (s) => {
      const throws = (fn: () => unknown, re: RegExp): void => {
        assert.throws(fn, (e: unknown) => {
          assert.ok(e instanceof BackendError, `expected a BackendError, got ${String(e)}`);
          assert.match(e.message, re);
          return true;
        });
      };
      const rng = new Rng(seed('errors'));
      const w = toStorage(rng.f32(19 * 37), 'f16');
      const W = s.linear(19, 37, 'f16', w);
      // matmul shapes
      throws(() => be.matmul(s.matrix(2, 19), s.matrix(2, 36), W), /^matmul: input has 36 columns, weight expects 37$/);
      throws(() => be.matmul(s.matrix(2, 18), s.matrix(2, 37), W), /^matmul: output is 2x18, expected 2x19$/);
      throws(() => be.matmul(s.matrix(3, 19), s.matrix(2, 37), W), /^matmul: output is 3x19, expected 2x19$/);
      throws(() => be.matmul(s.matrix(2, 19), s.matrix(2, 37), W, s.keep(be.params(new Float32Array(18)))), /^matmul: bias has 18 values, expected 19$/);
      // embeddings
      const table = s.keep(be.embedding(23, 5, 'bf16', (d) => d.fill(0)));
      throws(() => be.embed(s.matrix(2, 5), table, s.ints([0, 23])), /^embed: id 23 at position 1 is outside \[0, 23\)$/);
      throws(() => be.embed(s.matrix(1, 5), table, s.ints([-1])), /^embed: id -1 at position 0 is outside \[0, 23\)$/);
      throws(() => be.embed(s.matrix(2, 4), table, s.ints([0, 1])), /^embed: output 2x4, expected 2x5$/);
      throws(() => be.embedFromLinear(s.matrix(1, 37), W, s.ints([19])), /^embedFromLinear: id 19 at position 0 is outside \[0, 19\)$/);
      // row-wise ops
      throws(() => be.rmsNorm(s.matrix(2, 8), s.matrix(2, 8), s.keep(be.params(new Float32Array(7))), 1e-6), /^rmsNorm: weight has 7 values, rows have 8$/);
      throws(() => be.softmax(s.matrix(2, 8), s.matrix(3, 8)), /^softmax: output 2x8 differs from input 3x8$/);
      throws(() => be.activation(s.matrix(1, 4), s.matrix(1, 4), 'relu' as Activation), /^unknown activation relu/);
      throws(() => be.add(s.matrix(2, 8), s.matrix(2, 8), s.matrix(2, 7)), /^add: 2x8 and 2x7 differ$/);
      // rope
      const rt = s.keep(be.ropeTable(8, 1e4, 100));
      throws(() => be.rope(s.matrix(2, 16), 2, 8, s.ints([3, 100]), rt), /^rope: position 100 is outside the table \[0, 100\)$/);
      throws(() => be.rope(s.matrix(1, 12), 2, 6, s.ints([3]), rt), /^rope: rotary dim 8 exceeds head dim 6$/);
      throws(() => be.ropeTable(7, 1e4, 10), /rotary dim 7 must be even/);
      // KV cache and attention
      throws(() => be.kvCache(1, 2, 16, { blockSize: 24 }), /^kvCache: block size 24 must be a power of two$/);
      throws(() => be.kvCache(1, 2, 18), /^kvCache: head dim 18 must be a multiple of 4/);
      const { cache } = filledCache(s, 2, 8, 16, 150, rng, 1);
      const q1 = s.matrix(1, 32),
        o1 = s.matrix(1, 32);
      const opts = { heads: 4, qSlot0: 149, causal: false, scale: 0.3 };
      throws(
        () => be.attention(o1, q1, cache, 0, { ...opts, keys: { count: 3, indices: s.ints([0, 5, 150]) } }),
        /^attention: key index 150 at 2 is outside the cache \[0, 150\)$/,
      );
      throws(
        () => be.attention(o1, q1, cache, 0, { ...opts, keys: { count: 2, indices: s.ints([-1, 5]) } }),
        /^attention: key index -1 at 0 is outside the cache \[0, 150\)$/,
      );
      throws(
        () => be.attention(o1, q1, cache, 0, { ...opts, keys: { count: 3, indices: s.ints([0, 1, 2, 3, 4]), perKvHead: true } }),
        /^attention: 5 key indices, expected 2 x 3$/,
      );
      throws(() => be.attention(o1, q1, cache, 0, { ...opts, keys: { count: 151 } }), /^attention: 151 keys but the cache holds 150$/);
      throws(
        () => be.attention(s.matrix(2, 32), s.matrix(2, 32), cache, 0, { ...opts, keys: { count: 1, indices: s.ints([0]) } }),
        /key index lists are for decode \(one query row\) only/,
      );
      throws(
        () => be.attention(s.matrix(1, 40), s.matrix(1, 40), cache, 0, { ...opts, heads: 5, keys: { count: 3 } }),
        /^attention: 5 query heads are not a multiple of 2 KV heads$/,
      );
      throws(() => be.attention(o1, q1, cache, 1, { ...opts, keys: { count: 3 } }), /^attention: layer 1 outside \[0, 1\)$/);
      throws(
        () => be.attention(s.matrix(1, 130 * 8), s.matrix(1, 130 * 8), cache, 0, { ...opts, heads: 130, keys: { count: 3 } }),
        /^attention: group of 65 query heads per KV head exceeds 64$/,
      );
      throws(() => be.kvWrite(cache, 0, s.matrix(2, 16), s.matrix(3, 16), 0), /^kvWrite: K 2x16 \/ V 3x16, expected n x 16$/);
      throws(() => be.kvTruncate(cache, 151), /^kvTruncate: length 151 outside \[0, 150\]$/);
      // memory
      const m = s.matrix(4, 6);
      throws(() => m.view(2, 3), /^view rows \[2, 5\) cols \[0, 6\) is outside a 4x6 matrix$/);
      throws(() => be.free(m.view(0, 1)), /a view cannot be freed/);
      throws(() => be.write(m, new Float32Array(23)), /^write: 23 values for a 4x6 matrix$/);
      throws(() => be.linear(2, 2, 'f8' as WeightDType, () => {}), /^linear: unsupported weight dtype f8$/);
      // A fill callback that throws leaves nothing allocated.
      const used = be.memoryUsage()[0].usedBytes;
      assert.throws(
        () =>
          be.linear(19, 37, 'bf16', () => {
            throw new Error('boom');
          }),
        /^Error: boom$/,
      );
      assert.throws(
        () =>
          be.embedding(19, 37, 'f16', () => {
            throw new Error('bang');
          }),
        /^Error: bang$/,
      );
      assert.equal(be.memoryUsage()[0].usedBytes, used);
      // The backend still computes correctly after all of that.
      const x = rng.f32(2 * 37);
      checkMatmul(s, 'after errors', 2, 37, 19, 'f16', x, w, undefined, false);
    }),
  );
});

// ---- helpers self-check --------------------------------------------------------------------------

describe('test helpers', () => {
  it('16-bit conversions round to nearest even and widen exactly; erf is accurate', () => {
    for (let h = 0; h < 65536; h++) {
      const f = f16ToNumber(h);
      if (!Number.isNaN(f)) assert.equal(f32ToF16(f), h, `f16 ${h.toString(16)}`);
      const b = bf16ToNumber(h);
      if (!Number.isNaN(b)) assert.equal(f32ToBf16(b), h, `bf16 ${h.toString(16)}`);
    }
    // Ties go to even; beyond the largest f16 (plus half an ulp) is infinity.
    assert.equal(f32ToF16(1 + 2 ** -11), 0x3c00);
    assert.equal(f32ToF16(1 + 3 * 2 ** -11), 0x3c02);
    assert.equal(f32ToF16(65520), 0x7c00);
    assert.equal(f32ToF16(65519), 0x7bff);
    assert.equal(f32ToF16(2 ** -25), 0);
    assert.equal(f32ToF16(2 ** -25 * 1.5), 1);
    assert.equal(f32ToBf16(1 + 2 ** -8), 0x3f80);
    assert.equal(f32ToBf16(1 + 3 * 2 ** -8), 0x3f82);
    const erfTable: [number, number][] = [
      [0.1, 0.1124629160182849],
      [0.5, 0.5204998778130465],
      [1, 0.8427007929497149],
      [2, 0.9953222650189527],
      [3, 0.9999779095030014],
      [4.5, 0.9999999998033839],
    ];
    for (const [x, e] of erfTable) {
      assert.ok(Math.abs(ref.erf(x) - e) < 1e-15, `erf(${x}) = ${ref.erf(x)}, expected ${e}`);
      assert.ok(Math.abs(ref.erf(-x) + e) < 1e-15);
    }
  });
});
