// Attention over a paged KV cache, with an online softmax: no query x key matrix is ever formed.
//
// KV cache layout. Per layer, a page table of block base addresses (u32). A block holds
// B = 2^logB token slots for every KV head: K[kvHeads][B][D] f32, then V[kvHeads][B][D] f32.
//   K row (slot, kvh) = pages[slot >> logB] + ((kvh << logB) + (slot & (B - 1))) * D * 4
//   V row             = K row + kvHeads * B * D * 4
// New blocks are added as the sequence grows; nothing already stored ever moves.
//
// Queries and outputs are f32 rows [token][heads * D] (row stride ld floats). With grouped-query
// attention query head h reads KV head h / (heads / kvHeads). D must be a multiple of 4.

import { fma, hsum, hmax, expV, expS, SCRATCH_BYTES } from "./simd";

/** Keys per tile (a tile may span blocks: each key row is looked up on its own). */
const TILE: i32 = 64;
/** Masked score / empty running max. exp(NEG - anything finite) is 0 after the clamp in expV. */
const NEG: f32 = -3.0e38;

// Per-thread scratch layout (bytes).
const S_ML: usize = 0;        // [query] (m, l) pairs, up to 128 queries
const S_KADDR: usize = 1024;  // [TILE] u32 key row addresses of the current tile
const S_KPOS: usize = 1280;   // [TILE] i32 slot of each key of the tile
const S_SCORES: usize = 1536; // [TILE] f32 scores, then probabilities
const S_ACC: usize = 2048;    // [query][D] f32 output accumulators
/** Largest number of query vectors one work unit handles (GQA group size or prefill rows). */
export const ATTN_MAX_QUERIES: i32 = 64;

// @ts-ignore: decorator
@inline function kRow(pages: usize, logB: i32, kvh: i32, D: i32, slot: i32): usize {
  const page = <usize>load<u32>(pages + (<usize>(slot >> logB)) * 4);
  return page + ((<usize>kvh << <usize>logB) + <usize>(slot & ((1 << logB) - 1))) * <usize>D * 4;
}

/** Copies rows of K and V [n][kvHeads * D] into cache slots pos0... Units: rows. */
export function kv_write(tid: i32, begin: i32, end: i32, k: usize, ldk: i32, v: usize, ldv: i32, pages: usize, logB: i32, kvHeads: i32, D: i32, pos0: i32): void {
  const vOff: usize = (<usize>kvHeads << <usize>logB) * <usize>D * 4;
  const rowBytes = <usize>D * 4;
  for (let r = begin; r < end; r++) {
    for (let h = 0; h < kvHeads; h++) {
      const dst = kRow(pages, logB, h, D, pos0 + r);
      memory.copy(dst, k + (<usize>r * <usize>ldk + <usize>h * <usize>D) * 4, rowBytes);
      memory.copy(dst + vOff, v + (<usize>r * <usize>ldv + <usize>h * <usize>D) * 4, rowBytes);
    }
  }
}

/**
 * The shared core. Attends nq query vectors (at q + i * qStride) to the keys with logical index
 * [kBegin, kEnd) of KV head kvh; key j is cache slot idx[j] when idx != 0, else slot j. When
 * causal, query i only sees slots <= qSlot0 + i. Leaves, per query, the running max m, the sum l
 * and the unnormalised output acc in scratch.
 */
function attendCore(nq: i32, q: usize, qStride: usize, D: i32, scale: f32, pages: usize, logB: i32, kvHeads: i32, kvh: i32,
  kBegin: i32, kEnd: i32, idx: usize, causal: bool, qSlot0: i32, s: usize): void {
  const vOff: usize = (<usize>kvHeads << <usize>logB) * <usize>D * 4;
  const kaddr = s + S_KADDR, kpos = s + S_KPOS, sc = s + S_SCORES;
  const rowBytes = <usize>D * 4;
  for (let i = 0; i < nq; i++) {
    store<f32>(s + S_ML + <usize>i * 8, NEG);
    store<f32>(s + S_ML + <usize>i * 8, 0, 4);
    memory.fill(s + S_ACC + <usize>i * rowBytes, 0, rowBytes);
  }
  for (let t0 = kBegin; t0 < kEnd; t0 += TILE) {
    const n = min(TILE, kEnd - t0);
    let maxSlot: i32 = 0;
    for (let j = 0; j < n; j++) {
      const slot = idx != 0 ? load<i32>(idx + <usize>(t0 + j) * 4) : t0 + j;
      store<i32>(kpos + <usize>j * 4, slot);
      store<u32>(kaddr + <usize>j * 4, <u32>kRow(pages, logB, kvh, D, slot));
      if (slot > maxSlot) maxSlot = slot;
    }
    for (let i = 0; i < nq; i++) {
      const qi = q + <usize>i * qStride;
      const limit = qSlot0 + i;
      // Scores. One key row at a time, read front to back: interleaving several rows of 512 bytes
      // or more measured 3x slower from DRAM on Zen 4 (it defeats the hardware prefetcher).
      for (let j = 0; j < n; j++) {
        const k0 = <usize>load<u32>(kaddr + <usize>j * 4);
        let a0 = f32x4.splat(0), a1 = f32x4.splat(0), a2 = f32x4.splat(0), a3 = f32x4.splat(0);
        let d: usize = 0;
        for (; d + 64 <= rowBytes; d += 64) {
          a0 = fma(v128.load(qi + d), v128.load(k0 + d), a0);
          a1 = fma(v128.load(qi + d, 16), v128.load(k0 + d, 16), a1);
          a2 = fma(v128.load(qi + d, 32), v128.load(k0 + d, 32), a2);
          a3 = fma(v128.load(qi + d, 48), v128.load(k0 + d, 48), a3);
        }
        for (; d < rowBytes; d += 16) a0 = fma(v128.load(qi + d), v128.load(k0 + d), a0);
        store<f32>(sc + <usize>j * 4, hsum(f32x4.add(f32x4.add(a0, a1), f32x4.add(a2, a3))) * scale);
      }
      if (causal && maxSlot > limit) {
        for (let j = 0; j < n; j++) if (load<i32>(kpos + <usize>j * 4) > limit) store<f32>(sc + <usize>j * 4, NEG);
      }
      // Online softmax update.
      const n4 = n & ~3;
      let vm = f32x4.splat(NEG);
      for (let j = 0; j < n4; j += 4) vm = f32x4.max(vm, v128.load(sc + <usize>j * 4));
      let mt = hmax(vm);
      for (let j = n4; j < n; j++) mt = max(mt, load<f32>(sc + <usize>j * 4));
      if (mt <= NEG) continue; // every key of this tile is masked for this query
      const mOld = load<f32>(s + S_ML + <usize>i * 8);
      const mNew = max(mOld, mt);
      const alpha = expS(mOld - mNew);
      const vmNew = f32x4.splat(mNew);
      let vsum = f32x4.splat(0);
      for (let j = 0; j < n4; j += 4) {
        const x = v128.load(sc + <usize>j * 4);
        const p = v128.and(expV(f32x4.sub(x, vmNew)), f32x4.gt(x, f32x4.splat(NEG)));
        v128.store(sc + <usize>j * 4, p);
        vsum = f32x4.add(vsum, p);
      }
      let lsum = f32x4.extract_lane(vsum, 0) + f32x4.extract_lane(vsum, 1) + f32x4.extract_lane(vsum, 2) + f32x4.extract_lane(vsum, 3);
      for (let j = n4; j < n; j++) {
        const x = load<f32>(sc + <usize>j * 4);
        const p: f32 = x > NEG ? expS(x - mNew) : 0;
        store<f32>(sc + <usize>j * 4, p);
        lsum += p;
      }
      store<f32>(s + S_ML + <usize>i * 8, mNew);
      store<f32>(s + S_ML + <usize>i * 8, load<f32>(s + S_ML + <usize>i * 8, 4) * alpha + lsum, 4);
      // acc = acc * alpha + sum_j p_j v_j, one V row at a time (as for K above).
      const acc = s + S_ACC + <usize>i * rowBytes;
      if (alpha != 1) {
        const va = f32x4.splat(alpha);
        for (let d: usize = 0; d < rowBytes; d += 16) v128.store(acc + d, f32x4.mul(v128.load(acc + d), va));
      }
      for (let j = 0; j < n; j++) {
        const p = v128.load32_splat(sc + <usize>j * 4);
        const v = <usize>load<u32>(kaddr + <usize>j * 4) + vOff;
        let d: usize = 0;
        for (; d + 64 <= rowBytes; d += 64) {
          v128.store(acc + d, fma(p, v128.load(v + d), v128.load(acc + d)));
          v128.store(acc + d, fma(p, v128.load(v + d, 16), v128.load(acc + d, 16)), 16);
          v128.store(acc + d, fma(p, v128.load(v + d, 32), v128.load(acc + d, 32)), 32);
          v128.store(acc + d, fma(p, v128.load(v + d, 48), v128.load(acc + d, 48)), 48);
        }
        for (; d < rowBytes; d += 16) v128.store(acc + d, fma(p, v128.load(v + d), v128.load(acc + d)));
      }
    }
  }
}

/** Rows of queries handled together by one prefill work unit. */
const PREFILL_ROWS: i32 = 4;

/**
 * Prefill / encoder attention: nq query rows (cache slots qSlot0..) against cache slots
 * [0, nKeys), causal or bidirectional. Units: heads * ceil(nq / 4), unit u = (row block u / heads,
 * head u % heads).
 */
export function attn_prefill(tid: i32, begin: i32, end: i32, q: usize, ldq: i32, o: usize, ldo: i32, pages: usize, logB: i32,
  kvHeads: i32, D: i32, heads: i32, nq: i32, nKeys: i32, qSlot0: i32, causal: i32, scale: f32, scratch: usize): void {
  const s = scratch + <usize>tid * <usize>SCRATCH_BYTES;
  const group = heads / kvHeads;
  const rowBytes = <usize>D * 4;
  for (let u = begin; u < end; u++) {
    const h = u % heads, r0 = (u / heads) * PREFILL_ROWS;
    const rows = min(PREFILL_ROWS, nq - r0);
    const kEnd = causal ? min(nKeys, qSlot0 + r0 + rows) : nKeys;
    attendCore(rows, q + (<usize>r0 * <usize>ldq + <usize>h * <usize>D) * 4, <usize>ldq * 4, D, scale, pages, logB, kvHeads, h / group,
      0, kEnd, 0, causal != 0, qSlot0 + r0, s);
    for (let i = 0; i < rows; i++) {
      const l = load<f32>(s + S_ML + <usize>i * 8, 4);
      const inv = f32x4.splat(l > 0 ? <f32>1.0 / l : 0);
      const acc = s + S_ACC + <usize>i * rowBytes;
      const out = o + (<usize>(r0 + i) * <usize>ldo + <usize>h * <usize>D) * 4;
      for (let d: usize = 0; d < rowBytes; d += 16) v128.store(out + d, f32x4.mul(v128.load(acc + d), inv));
    }
  }
}

/**
 * Decode attention of one query row [heads * D] over nKeys keys, split into nSplit key ranges
 * (flash-decoding) so that a few KV heads still keep every thread busy. Key j is cache slot j, or
 * idx[kvh * idxStride + j] when idx != 0: this is how decode attends only to retrieved tokens,
 * reading K/V rows in place. Writes per (head, split) partial results (m, l, acc[D]) to ws;
 * `attn_merge` combines them. Units: kvHeads * nSplit.
 */
export function attn_decode(tid: i32, begin: i32, end: i32, q: usize, ws: usize, pages: usize, logB: i32, kvHeads: i32, D: i32,
  heads: i32, nKeys: i32, idx: usize, idxStride: i32, nSplit: i32, scale: f32, scratch: usize): void {
  const s = scratch + <usize>tid * <usize>SCRATCH_BYTES;
  const group = heads / kvHeads;
  const rowBytes = <usize>D * 4;
  const perSplit = ((nKeys + nSplit - 1) / nSplit + TILE - 1) / TILE * TILE;
  for (let u = begin; u < end; u++) {
    const kvh = u / nSplit, sp = u % nSplit;
    const kBegin = min(nKeys, sp * perSplit), kEnd = min(nKeys, kBegin + perSplit);
    const ix: usize = idx != 0 ? idx + <usize>kvh * <usize>idxStride * 4 : 0;
    attendCore(group, q + <usize>kvh * <usize>group * rowBytes, rowBytes, D, scale, pages, logB, kvHeads, kvh, kBegin, kEnd, ix, false, 0, s);
    for (let i = 0; i < group; i++) {
      const h = kvh * group + i;
      const dst = ws + (<usize>h * <usize>nSplit + <usize>sp) * (rowBytes + 8);
      store<f32>(dst, load<f32>(s + S_ML + <usize>i * 8));
      store<f32>(dst, load<f32>(s + S_ML + <usize>i * 8, 4), 4);
      memory.copy(dst + 8, s + S_ACC + <usize>i * rowBytes, rowBytes);
    }
  }
}

/** Combines the nSplit partial results of each head into o [heads * D]. Units: heads. */
export function attn_merge(tid: i32, begin: i32, end: i32, ws: usize, o: usize, D: i32, nSplit: i32): void {
  const rowBytes = <usize>D * 4;
  for (let h = begin; h < end; h++) {
    const base = ws + <usize>h * <usize>nSplit * (rowBytes + 8);
    let m = NEG;
    for (let sp = 0; sp < nSplit; sp++) m = max(m, load<f32>(base + <usize>sp * (rowBytes + 8)));
    const out = o + <usize>h * rowBytes;
    memory.fill(out, 0, rowBytes);
    let l: f32 = 0;
    for (let sp = 0; sp < nSplit; sp++) {
      const p = base + <usize>sp * (rowBytes + 8);
      const lp = load<f32>(p, 4);
      if (lp == 0) continue;
      const w = expS(load<f32>(p) - m);
      l += w * lp;
      const vw = f32x4.splat(w);
      for (let d: usize = 0; d < rowBytes; d += 16) v128.store(out + d, fma(v128.load(p + 8 + d), vw, v128.load(out + d)));
    }
    const inv = f32x4.splat(l > 0 ? <f32>1.0 / l : 0);
    for (let d: usize = 0; d < rowBytes; d += 16) v128.store(out + d, f32x4.mul(v128.load(out + d), inv));
  }
}
