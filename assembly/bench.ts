// Kernels that measure the machine itself, so benchmarks can print each figure next to the
// limit of the machine they ran on.

import { fma, SCRATCH_BYTES } from "./simd";

/** Reads [ptr + begin * chunk, ptr + end * chunk) with plain SIMD loads (memory read bandwidth). */
export function probe_read(tid: i32, begin: i32, end: i32, ptr: usize, chunk: i32, scratch: usize): void {
  let a0 = i32x4.splat(0), a1 = i32x4.splat(0), a2 = i32x4.splat(0), a3 = i32x4.splat(0);
  let p = ptr + <usize>begin * <usize>chunk;
  const e = ptr + <usize>end * <usize>chunk;
  while (p < e) {
    a0 = v128.xor(a0, v128.load(p)); a1 = v128.xor(a1, v128.load(p, 16));
    a2 = v128.xor(a2, v128.load(p, 32)); a3 = v128.xor(a3, v128.load(p, 48));
    p += 64;
  }
  v128.store(scratch + <usize>tid * <usize>SCRATCH_BYTES, v128.xor(v128.xor(a0, a1), v128.xor(a2, a3)));
}

/** Independent multiply-add chains in registers: the f32 SIMD compute peak (flops = units * iters * 80). */
export function probe_fma(tid: i32, begin: i32, end: i32, iters: i32, scratch: usize): void {
  for (let u = begin; u < end; u++) {
    let c0 = f32x4.splat(0), c1 = f32x4.splat(1), c2 = f32x4.splat(2), c3 = f32x4.splat(3), c4 = f32x4.splat(4);
    let c5 = f32x4.splat(5), c6 = f32x4.splat(6), c7 = f32x4.splat(7), c8 = f32x4.splat(8), c9 = f32x4.splat(9);
    const a = f32x4.splat(0.999), b = f32x4.splat(0.001);
    for (let i = 0; i < iters; i++) {
      c0 = fma(c0, a, b); c1 = fma(c1, a, b); c2 = fma(c2, a, b); c3 = fma(c3, a, b); c4 = fma(c4, a, b);
      c5 = fma(c5, a, b); c6 = fma(c6, a, b); c7 = fma(c7, a, b); c8 = fma(c8, a, b); c9 = fma(c9, a, b);
    }
    const s = f32x4.add(f32x4.add(f32x4.add(c0, c1), f32x4.add(c2, c3)), f32x4.add(f32x4.add(f32x4.add(c4, c5), f32x4.add(c6, c7)), f32x4.add(c8, c9)));
    v128.store(scratch + <usize>tid * <usize>SCRATCH_BYTES, s);
  }
}
