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

import { fma, hsum, expV, expS, maxOf, expShifted, SCRATCH_BYTES } from "./simd";

/** Keys per tile (a tile may span blocks: each key row is looked up on its own). */
const TILE: i32 = 64;
/** Masked score / empty running max. exp(NEG - anything finite) is 0 after the clamp in expV. */
const NEG: f32 = -3.0e38;

// Per-thread scratch layout (bytes).
const S_ML: usize = 0;        // [query] (m, l) pairs, up to 128 queries
const S_KADDR: usize = 1024;  // [TILE] u32 key row addresses of the current tile
const S_SCORES: usize = 1280; // [DECODE_HEADS][TILE] f32 scores, then probabilities (768 bytes)
const S_TOUCH: usize = 2048;  // 16 bytes: where touchRows leaves its result
const S_ACC: usize = 2064;    // [query][D] f32 output accumulators
/** Largest GQA group (query heads per KV head) one decode work unit handles. */
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
  // Rows are copied with SIMD loads and stores: memory.copy is a call into the runtime, which
  // costs more than copying a row of a few hundred bytes.
  for (let r = begin; r < end; r++) {
    for (let h = 0; h < kvHeads; h++) {
      const dst = kRow(pages, logB, h, D, pos0 + r);
      const ks = k + (<usize>r * <usize>ldk + <usize>h * <usize>D) * 4, vs = v + (<usize>r * <usize>ldv + <usize>h * <usize>D) * 4;
      for (let d: usize = 0; d < rowBytes; d += 16) {
        v128.store(dst + d, v128.load(ks + d));
        v128.store(dst + vOff + d, v128.load(vs + d));
      }
    }
  }
}

// Listed keys are scattered over the cache, so the hardware prefetcher cannot follow them and a
// row-at-a-time pass waits on DRAM for each row. One load per cache line of every K and V row of
// the tile, all independent, brings the tile in with many misses in flight; the passes that follow
// then hit the caches. (Contiguous keys do not need this: the prefetcher streams them.)
// @ts-ignore: decorator
@inline function touchRows(kaddr: usize, n: i32, rowBytes: usize, vOff: usize, sink: usize): void {
  let t = i32x4.splat(0);
  for (let j = 0; j < n; j++) {
    const k = <usize>load<u32>(kaddr + <usize>j * 4);
    for (let d: usize = 0; d < rowBytes; d += 64) t = v128.or(t, v128.or(v128.load(k + d), v128.load(k + vOff + d)));
  }
  v128.store(sink, t);
}

/** Query heads whose scores and outputs the decode core computes together (sharing K/V loads). */
const DECODE_HEADS: i32 = 3;

// Scores of nh (1..3, a constant after inlining) query heads against the n keys of a tile: one key
// row at a time, read front to back (interleaving several rows of 512 bytes or more measured 3x
// slower from DRAM on Zen 4: it defeats the hardware prefetcher), each K load used by every head.
// Head hh's scores go to sc + hh * TILE * 4.
// @ts-ignore: decorator
@inline function decodeScores(nh: i32, q: usize, qStride: usize, rowBytes: usize, scale: f32, kaddr: usize, n: i32, sc: usize): void {
  const q0 = q, q1 = q + qStride, q2 = q + 2 * qStride;
  const rb8 = rowBytes & ~31;
  for (let j = 0; j < n; j++) {
    const k = <usize>load<u32>(kaddr + <usize>j * 4);
    let a0 = f32x4.splat(0), a1 = f32x4.splat(0), b0 = f32x4.splat(0), b1 = f32x4.splat(0), c0 = f32x4.splat(0), c1 = f32x4.splat(0);
    let d: usize = 0;
    for (; d < rb8; d += 32) {
      const k0 = v128.load(k + d), k1 = v128.load(k + d, 16);
      a0 = fma(v128.load(q0 + d), k0, a0); a1 = fma(v128.load(q0 + d, 16), k1, a1);
      if (nh > 1) { b0 = fma(v128.load(q1 + d), k0, b0); b1 = fma(v128.load(q1 + d, 16), k1, b1); }
      if (nh > 2) { c0 = fma(v128.load(q2 + d), k0, c0); c1 = fma(v128.load(q2 + d, 16), k1, c1); }
    }
    if (d < rowBytes) { // D % 8 == 4
      const k0 = v128.load(k + d);
      a0 = fma(v128.load(q0 + d), k0, a0);
      if (nh > 1) b0 = fma(v128.load(q1 + d), k0, b0);
      if (nh > 2) c0 = fma(v128.load(q2 + d), k0, c0);
    }
    store<f32>(sc + <usize>j * 4, hsum(f32x4.add(a0, a1)) * scale);
    if (nh > 1) store<f32>(sc + <usize>(TILE + j) * 4, hsum(f32x4.add(b0, b1)) * scale);
    if (nh > 2) store<f32>(sc + <usize>(2 * TILE + j) * 4, hsum(f32x4.add(c0, c1)) * scale);
  }
}

// Online softmax step of one query over the n scores at sc: turns them into probabilities
// exp(score - m), updates (m, l) at ml, and returns the factor alpha its accumulator is scaled by.
// @ts-ignore: decorator
@inline function decodeSoftmax(sc: usize, n: i32, ml: usize): f32 {
  const mOld = load<f32>(ml);
  const mNew = max(mOld, maxOf(sc, n));
  const alpha = expS(mOld - mNew);
  const lsum = expShifted(sc, sc, n, mNew);
  store<f32>(ml, mNew);
  store<f32>(ml, load<f32>(ml, 4) * alpha + lsum, 4);
  return alpha;
}

// acc_hh = acc_hh * alpha_hh + sum_j p_hh[j] v_j for nh (1..3) query heads: eight columns at a time
// held in registers across the tile's keys, each V load used by every head.
// @ts-ignore: decorator
@inline function decodeValues(nh: i32, acc: usize, rowBytes: usize, kaddr: usize, vOff: usize, n: i32, sc: usize,
  alpha0: f32, alpha1: f32, alpha2: f32): void {
  const r0 = acc, r1 = acc + rowBytes, r2 = acc + 2 * rowBytes;
  const s0 = sc, s1 = sc + <usize>TILE * 4, s2 = sc + <usize>TILE * 8;
  const va0 = f32x4.splat(alpha0), va1 = f32x4.splat(alpha1), va2 = f32x4.splat(alpha2);
  for (let db: usize = 0; db < rowBytes; db += 32) {
    const two = db + 32 <= rowBytes; // else D % 8 == 4: the last four columns
    let a0 = f32x4.mul(v128.load(r0 + db), va0), a1 = two ? f32x4.mul(v128.load(r0 + db, 16), va0) : f32x4.splat(0);
    let b0 = f32x4.splat(0), b1 = f32x4.splat(0), c0 = f32x4.splat(0), c1 = f32x4.splat(0);
    if (nh > 1) { b0 = f32x4.mul(v128.load(r1 + db), va1); if (two) b1 = f32x4.mul(v128.load(r1 + db, 16), va1); }
    if (nh > 2) { c0 = f32x4.mul(v128.load(r2 + db), va2); if (two) c1 = f32x4.mul(v128.load(r2 + db, 16), va2); }
    if (two) {
      for (let j = 0; j < n; j++) {
        const v = <usize>load<u32>(kaddr + <usize>j * 4) + vOff + db;
        const v0 = v128.load(v), v1 = v128.load(v, 16);
        const p0 = v128.load32_splat(s0 + <usize>j * 4);
        a0 = fma(p0, v0, a0); a1 = fma(p0, v1, a1);
        if (nh > 1) { const p1 = v128.load32_splat(s1 + <usize>j * 4); b0 = fma(p1, v0, b0); b1 = fma(p1, v1, b1); }
        if (nh > 2) { const p2 = v128.load32_splat(s2 + <usize>j * 4); c0 = fma(p2, v0, c0); c1 = fma(p2, v1, c1); }
      }
      v128.store(r0 + db, a0); v128.store(r0 + db, a1, 16);
      if (nh > 1) { v128.store(r1 + db, b0); v128.store(r1 + db, b1, 16); }
      if (nh > 2) { v128.store(r2 + db, c0); v128.store(r2 + db, c1, 16); }
    } else {
      for (let j = 0; j < n; j++) {
        const v0 = v128.load(<usize>load<u32>(kaddr + <usize>j * 4) + vOff + db);
        a0 = fma(v128.load32_splat(s0 + <usize>j * 4), v0, a0);
        if (nh > 1) b0 = fma(v128.load32_splat(s1 + <usize>j * 4), v0, b0);
        if (nh > 2) c0 = fma(v128.load32_splat(s2 + <usize>j * 4), v0, c0);
      }
      v128.store(r0 + db, a0);
      if (nh > 1) v128.store(r1 + db, b0);
      if (nh > 2) v128.store(r2 + db, c0);
    }
  }
}

// One tile for a single query head (no GQA sharing to exploit): every K and V row is read front to
// back once, the accumulator stays in scratch (L1). With nothing shared, this order streams the
// cache from DRAM fastest; the blocked order of decodeValues reads 32 bytes of each of the tile's
// rows at a time, which defeats the hardware prefetcher on long rows.
// @ts-ignore: decorator
@inline function decodeTile1(i0: i32, q: usize, qStride: usize, rowBytes: usize, scale: f32, kaddr: usize, vOff: usize, n: i32, s: usize): void {
  const sc = s + S_SCORES;
  const qi = q + <usize>i0 * qStride;
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
  const alpha = decodeSoftmax(sc, n, s + S_ML + <usize>i0 * 8);
  const acc = s + S_ACC + <usize>i0 * rowBytes;
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

// One tile for nh (2..3) query heads starting at query i0, sharing each K and V load among them.
// @ts-ignore: decorator
@inline function decodeTile(nh: i32, i0: i32, q: usize, qStride: usize, rowBytes: usize, scale: f32, kaddr: usize, vOff: usize, n: i32, s: usize): void {
  const sc = s + S_SCORES;
  decodeScores(nh, q + <usize>i0 * qStride, qStride, rowBytes, scale, kaddr, n, sc);
  const ml = s + S_ML + <usize>i0 * 8;
  const alpha0 = decodeSoftmax(sc, n, ml);
  const alpha1 = nh > 1 ? decodeSoftmax(sc + <usize>TILE * 4, n, ml + 8) : <f32>1;
  const alpha2 = nh > 2 ? decodeSoftmax(sc + <usize>TILE * 8, n, ml + 16) : <f32>1;
  decodeValues(nh, s + S_ACC + <usize>i0 * rowBytes, rowBytes, kaddr, vOff, n, sc, alpha0, alpha1, alpha2);
}

/**
 * The decode core. Attends nq query vectors (at q + i * qStride; the query heads of one GQA group)
 * to the keys with logical index [kBegin, kEnd) of KV head kvh; key j is cache slot idx[j] when
 * idx != 0, else slot j. Every given key is visible (decode attends to the past only). Leaves, per
 * query, the running max m, the sum l and the unnormalised output acc in scratch. Query heads are
 * taken DECODE_HEADS at a time, so each K and V row read serves all of them.
 */
function attendDecode(nq: i32, q: usize, qStride: usize, D: i32, scale: f32, pages: usize, logB: i32, kvHeads: i32, kvh: i32,
  kBegin: i32, kEnd: i32, idx: usize, s: usize): void {
  const vOff: usize = (<usize>kvHeads << <usize>logB) * <usize>D * 4;
  const kaddr = s + S_KADDR;
  const rowBytes = <usize>D * 4;
  for (let i = 0; i < nq; i++) {
    store<f32>(s + S_ML + <usize>i * 8, NEG);
    store<f32>(s + S_ML + <usize>i * 8, 0, 4);
    memory.fill(s + S_ACC + <usize>i * rowBytes, 0, rowBytes);
  }
  for (let t0 = kBegin; t0 < kEnd; t0 += TILE) {
    const n = min(TILE, kEnd - t0);
    for (let j = 0; j < n; j++) {
      const slot = idx != 0 ? load<i32>(idx + <usize>(t0 + j) * 4) : t0 + j;
      store<u32>(kaddr + <usize>j * 4, <u32>kRow(pages, logB, kvh, D, slot));
    }
    if (idx != 0) touchRows(kaddr, n, rowBytes, vOff, s + S_TOUCH);
    let i0 = 0;
    for (; i0 + DECODE_HEADS <= nq; i0 += DECODE_HEADS) decodeTile(3, i0, q, qStride, rowBytes, scale, kaddr, vOff, n, s);
    if (nq - i0 == 2) decodeTile(2, i0, q, qStride, rowBytes, scale, kaddr, vOff, n, s);
    else if (nq - i0 == 1) decodeTile1(i0, q, qStride, rowBytes, scale, kaddr, vOff, n, s);
  }
}

/** Query rows of one register block (two f32x4, lanes = rows). */
const RB: i32 = 8;
/** Row blocks per prefill work unit: each K/V tile is read once for all of them. */
const SB: i32 = 8;
/** Query rows per prefill work unit (the runtime sizes its work units with it). */
export const ATTN_PREFILL_ROWS: i32 = RB * SB;

// Prefill scratch layout (bytes), after the decode core's region.
const P_ST: usize = 40960;                               // [TILE][8] f32 scores / probabilities
const P_STATE: usize = P_ST + <usize>TILE * 32;          // [SB] x (m0, m1, l0, l1) v128
const P_QT: usize = P_STATE + <usize>SB * 64;            // [SB][D][8] f32 transposed, scaled queries
const P_ACC: usize = P_QT + <usize>SB * 256 * 32;        // [SB * 8][D] f32 unnormalised outputs

// @ts-ignore: decorator
@inline function laneSelect(v: v128, i: i32): f32 {
  if (i == 0) return f32x4.extract_lane(v, 0);
  if (i == 1) return f32x4.extract_lane(v, 1);
  if (i == 2) return f32x4.extract_lane(v, 2);
  return f32x4.extract_lane(v, 3);
}

/**
 * Prefill / encoder attention: nq query rows (cache slots qSlot0..) against cache slots
 * [0, nKeys), causal or bidirectional. Units: heads * ceil(nq / 64), unit u = (head u % heads,
 * the (u / heads)-th block of 64 rows counted from the end).
 *
 * A unit walks the keys in tiles of 64; each tile is used by all 8 row blocks of the unit while
 * it is hot in cache. Within a row block both products are register-blocked like the GEMM: with
 * the block's 8 queries transposed (lanes = rows), S^T = K Q^T takes a splat of one K element
 * times two query vectors, and O += P V a splat of one probability times four V vectors; the
 * online softmax runs lane-wise (one lane per query row) over the key-major scores.
 * When ml != 0, each row's final softmax statistics go to ml [heads][nq] x (max m, sum l): with
 * them `attn_colsum` forms the attention probabilities exp(s - m) / l again, one key at a time.
 */
export function attn_prefill(tid: i32, begin: i32, end: i32, q: usize, ldq: i32, o: usize, ldo: i32, pages: usize, logB: i32,
  kvHeads: i32, D: i32, heads: i32, nq: i32, nKeys: i32, qSlot0: i32, causal: i32, scale: f32, ml: usize, scratch: usize): void {
  const s = scratch + <usize>tid * <usize>SCRATCH_BYTES;
  const group = heads / kvHeads;
  const rowBytes = <usize>D * 4;
  const vOff: usize = (<usize>kvHeads << <usize>logB) * rowBytes;
  const st = s + P_ST, kaddr = s + S_KADDR;
  for (let u = begin; u < end; u++) {
    // The last row blocks see the most keys under a causal mask: hand them out first, so that the
    // dynamic chunks end on small units.
    const nsb = (nq + RB * SB - 1) / (RB * SB);
    const h = u % heads, sr0 = (nsb - 1 - u / heads) * (RB * SB);
    const srows = min(RB * SB, nq - sr0);
    if (srows <= 0) continue;
    const blocks = (srows + RB - 1) / RB;
    const kvh = h / group;
    // Queries of each block, transposed and scaled; missing rows are zero. Fresh state.
    for (let b = 0; b < blocks; b++) {
      const qt = s + P_QT + <usize>b * rowBytes * 8;
      const r0 = sr0 + b * RB;
      for (let d = 0; d < D; d++) {
        for (let r = 0; r < RB; r++) {
          const v: f32 = r0 + r < nq ? load<f32>(q + ((<usize>(r0 + r)) * <usize>ldq + <usize>h * <usize>D + <usize>d) * 4) * scale : 0;
          store<f32>(qt + (<usize>d * 8 + <usize>r) * 4, v);
        }
      }
      const ms = s + P_STATE + <usize>b * 64;
      v128.store(ms, f32x4.splat(NEG)); v128.store(ms, f32x4.splat(NEG), 16);
      v128.store(ms, f32x4.splat(0), 32); v128.store(ms, f32x4.splat(0), 48);
    }
    memory.fill(s + P_ACC, 0, <usize>blocks * RB * rowBytes);
    const kEnd = causal ? min(nKeys, qSlot0 + sr0 + srows) : nKeys;
    for (let t0 = 0; t0 < kEnd; t0 += TILE) {
      const n = min(TILE, kEnd - t0);
      for (let j = 0; j < n; j++) store<u32>(kaddr + <usize>j * 4, <u32>kRow(pages, logB, kvh, D, t0 + j));
      for (let b = 0; b < blocks; b++) {
        const r0 = sr0 + b * RB;
        // A tile entirely in this block's future is skipped (causal).
        if (causal && t0 > qSlot0 + r0 + RB - 1) continue;
        attendBlock(s + P_QT + <usize>b * rowBytes * 8, s + P_STATE + <usize>b * 64, s + P_ACC + <usize>b * RB * rowBytes,
          st, kaddr, n, t0, rowBytes, vOff, causal != 0 && t0 + n - 1 > qSlot0 + r0, qSlot0 + r0);
      }
    }
    for (let b = 0; b < blocks; b++) {
      const ms = s + P_STATE + <usize>b * 64;
      const m0 = v128.load(ms), m1 = v128.load(ms, 16);
      const l0 = v128.load(ms, 32), l1 = v128.load(ms, 48);
      for (let r = 0; r < RB; r++) {
        const row = sr0 + b * RB + r;
        if (row >= nq) break;
        const l = r < 4 ? laneSelect(l0, r) : laneSelect(l1, r - 4);
        if (ml != 0) {
          const mlr = ml + (<usize>h * <usize>nq + <usize>row) * 8;
          store<f32>(mlr, r < 4 ? laneSelect(m0, r) : laneSelect(m1, r - 4));
          store<f32>(mlr, l, 4);
        }
        const inv = f32x4.splat(l > 0 ? <f32>1.0 / l : 0);
        const ar = s + P_ACC + (<usize>(b * RB + r)) * rowBytes;
        const out = o + (<usize>row * <usize>ldo + <usize>h * <usize>D) * 4;
        for (let d: usize = 0; d < rowBytes; d += 16) v128.store(out + d, f32x4.mul(v128.load(ar + d), inv));
      }
    }
  }
}

/** One row block against one key tile: scores, mask, online softmax update, O += P V. */
// @ts-ignore: decorator
@inline function attendBlock(qt: usize, ms: usize, acc: usize, st: usize, kaddr: usize, n: i32, t0: i32, rowBytes: usize, vOff: usize,
  masking: bool, rowSlot0: i32): void {
  const rs0 = i32x4(rowSlot0, rowSlot0 + 1, rowSlot0 + 2, rowSlot0 + 3);
  const rs1 = i32x4.add(rs0, i32x4.splat(4));
  // S^T = K Q^T, four keys at a time (8 accumulators: 4 keys x 2 row vectors).
  for (let j = 0; j < n; j += 4) {
    const k0 = <usize>load<u32>(kaddr + <usize>j * 4);
    const k1 = j + 1 < n ? <usize>load<u32>(kaddr + <usize>(j + 1) * 4) : k0;
    const k2 = j + 2 < n ? <usize>load<u32>(kaddr + <usize>(j + 2) * 4) : k0;
    const k3 = j + 3 < n ? <usize>load<u32>(kaddr + <usize>(j + 3) * 4) : k0;
    let a0 = f32x4.splat(0), a1 = f32x4.splat(0), b0 = f32x4.splat(0), b1 = f32x4.splat(0);
    let c0 = f32x4.splat(0), c1 = f32x4.splat(0), e0 = f32x4.splat(0), e1 = f32x4.splat(0);
    let qp = qt, kk0 = k0, kk1 = k1, kk2 = k2, kk3 = k3;
    const qEnd = qt + rowBytes * 8;
    while (qp < qEnd) {
      const q0 = v128.load(qp), q1 = v128.load(qp, 16);
      const x0 = v128.load32_splat(kk0), x1 = v128.load32_splat(kk1);
      a0 = fma(x0, q0, a0); a1 = fma(x0, q1, a1);
      b0 = fma(x1, q0, b0); b1 = fma(x1, q1, b1);
      const x2 = v128.load32_splat(kk2), x3 = v128.load32_splat(kk3);
      c0 = fma(x2, q0, c0); c1 = fma(x2, q1, c1);
      e0 = fma(x3, q0, e0); e1 = fma(x3, q1, e1);
      qp += 32; kk0 += 4; kk1 += 4; kk2 += 4; kk3 += 4;
    }
    const sj = st + <usize>j * 32;
    v128.store(sj, a0); v128.store(sj, a1, 16);
    v128.store(sj, b0, 32); v128.store(sj, b1, 48);
    v128.store(sj, c0, 64); v128.store(sj, c1, 80);
    v128.store(sj, e0, 96); v128.store(sj, e1, 112);
  }
  // Causal mask and the tile's maximum, lane-wise.
  let tm0 = f32x4.splat(NEG), tm1 = f32x4.splat(NEG);
  for (let j = 0; j < n; j++) {
    const sj = st + <usize>j * 32;
    let x0 = v128.load(sj), x1 = v128.load(sj, 16);
    if (masking) {
      const kp = i32x4.splat(t0 + j);
      x0 = v128.bitselect(f32x4.splat(NEG), x0, i32x4.gt_s(kp, rs0));
      x1 = v128.bitselect(f32x4.splat(NEG), x1, i32x4.gt_s(kp, rs1));
      v128.store(sj, x0); v128.store(sj, x1, 16);
    }
    tm0 = f32x4.max(tm0, x0); tm1 = f32x4.max(tm1, x1);
  }
  const m0 = v128.load(ms), m1 = v128.load(ms, 16);
  const mn0 = f32x4.max(m0, tm0), mn1 = f32x4.max(m1, tm1);
  const al0 = expV(f32x4.sub(m0, mn0)), al1 = expV(f32x4.sub(m1, mn1));
  v128.store(ms, mn0); v128.store(ms, mn1, 16);
  let ps0 = f32x4.splat(0), ps1 = f32x4.splat(0);
  for (let j = 0; j < n; j++) {
    const sj = st + <usize>j * 32;
    const x0 = v128.load(sj), x1 = v128.load(sj, 16);
    const p0 = v128.and(expV(f32x4.sub(x0, mn0)), f32x4.gt(x0, f32x4.splat(NEG)));
    const p1 = v128.and(expV(f32x4.sub(x1, mn1)), f32x4.gt(x1, f32x4.splat(NEG)));
    v128.store(sj, p0); v128.store(sj, p1, 16);
    ps0 = f32x4.add(ps0, p0); ps1 = f32x4.add(ps1, p1);
  }
  v128.store(ms, f32x4.add(f32x4.mul(v128.load(ms, 32), al0), ps0), 32);
  v128.store(ms, f32x4.add(f32x4.mul(v128.load(ms, 48), al1), ps1), 48);
  // Rescale the outputs by alpha (per row), then O += P V, four rows x 8 columns at a time.
  for (let r = 0; r < RB; r++) {
    const a = f32x4.splat(r < 4 ? laneSelect(al0, r) : laneSelect(al1, r - 4));
    const ar = acc + <usize>r * rowBytes;
    for (let d: usize = 0; d < rowBytes; d += 16) v128.store(ar + d, f32x4.mul(v128.load(ar + d), a));
  }
  // O += P V: two rows x 16 columns at a time, each V row read front to back in 64-byte runs.
  for (let rg = 0; rg < RB; rg += 2) {
    const pbase = st + <usize>rg * 4;
    const ar0 = acc + <usize>rg * rowBytes, ar1 = ar0 + rowBytes;
    let db: usize = 0;
    for (; db + 64 <= rowBytes; db += 64) {
      let c00 = f32x4.splat(0), c01 = f32x4.splat(0), c02 = f32x4.splat(0), c03 = f32x4.splat(0);
      let c10 = f32x4.splat(0), c11 = f32x4.splat(0), c12 = f32x4.splat(0), c13 = f32x4.splat(0);
      let ka = kaddr, pj = pbase;
      const kaEnd = kaddr + <usize>n * 4;
      while (ka < kaEnd) {
        const v = <usize>load<u32>(ka) + vOff + db;
        const p0 = v128.load32_splat(pj), p1 = v128.load32_splat(pj, 4);
        const v0 = v128.load(v), v1 = v128.load(v, 16), v2 = v128.load(v, 32), v3 = v128.load(v, 48);
        c00 = fma(p0, v0, c00); c01 = fma(p0, v1, c01); c02 = fma(p0, v2, c02); c03 = fma(p0, v3, c03);
        c10 = fma(p1, v0, c10); c11 = fma(p1, v1, c11); c12 = fma(p1, v2, c12); c13 = fma(p1, v3, c13);
        ka += 4; pj += 32;
      }
      const o0 = ar0 + db, o1 = ar1 + db;
      v128.store(o0, f32x4.add(v128.load(o0), c00)); v128.store(o0, f32x4.add(v128.load(o0, 16), c01), 16);
      v128.store(o0, f32x4.add(v128.load(o0, 32), c02), 32); v128.store(o0, f32x4.add(v128.load(o0, 48), c03), 48);
      v128.store(o1, f32x4.add(v128.load(o1), c10)); v128.store(o1, f32x4.add(v128.load(o1, 16), c11), 16);
      v128.store(o1, f32x4.add(v128.load(o1, 32), c12), 32); v128.store(o1, f32x4.add(v128.load(o1, 48), c13), 48);
    }
    for (; db < rowBytes; db += 16) { // D % 16 != 0: four columns at a time
      let c0 = f32x4.splat(0), c1 = f32x4.splat(0);
      for (let j = 0; j < n; j++) {
        const v0 = v128.load(<usize>load<u32>(kaddr + <usize>j * 4) + vOff + db);
        const pj = pbase + <usize>j * 32;
        c0 = fma(v128.load32_splat(pj), v0, c0); c1 = fma(v128.load32_splat(pj, 4), v0, c1);
      }
      v128.store(ar0 + db, f32x4.add(v128.load(ar0 + db), c0));
      v128.store(ar1 + db, f32x4.add(v128.load(ar1 + db), c1));
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
    attendDecode(group, q + <usize>kvh * <usize>group * rowBytes, rowBytes, D, scale, pages, logB, kvHeads, kvh, kBegin, kEnd, ix, s);
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

/**
 * Key salience, the second of two streaming passes (the first is `attn_prefill` leaving each row's
 * softmax max m and sum l in ml): for query head h, ws[h][j] = sum_r w[r] * exp(s_rj - m_hr) / l_hr
 * with s_rj = scale * q_r . k_j, over the rows r with w[r] != 0 and the keys j they see (all nKeys,
 * or up to the row's own slot qSlot0 + r when causal). No rows x keys matrix is formed: each row's
 * scores are made four keys at a time and added into ws at once. Units: heads.
 */
export function attn_colsum(tid: i32, begin: i32, end: i32, q: usize, ldq: i32, pages: usize, logB: i32, kvHeads: i32, D: i32,
  heads: i32, nq: i32, nKeys: i32, qSlot0: i32, causal: i32, scale: f32, ml: usize, w: usize, ws: usize): void {
  const group = heads / kvHeads;
  const rowBytes = <usize>D * 4;
  for (let h = begin; h < end; h++) {
    const kvh = h / group;
    const col = ws + <usize>h * <usize>nKeys * 4;
    memory.fill(col, 0, <usize>nKeys * 4);
    for (let r = 0; r < nq; r++) {
      const wr = load<f32>(w + <usize>r * 4);
      if (wr == 0) continue;
      const mlr = ml + (<usize>h * <usize>nq + <usize>r) * 8;
      const l = load<f32>(mlr, 4);
      if (l <= 0) continue;
      const vm = f32x4.splat(load<f32>(mlr)), c = f32x4.splat(wr / l);
      const qr = q + (<usize>r * <usize>ldq + <usize>h * <usize>D) * 4;
      const kEnd = causal ? min(nKeys, qSlot0 + r + 1) : nKeys;
      for (let j = 0; j < kEnd; j += 4) {
        const n = min(4, kEnd - j);
        let sv = f32x4.splat(NEG);
        for (let jj = 0; jj < n; jj++) {
          const k = kRow(pages, logB, kvh, D, j + jj);
          let a0 = f32x4.splat(0), a1 = f32x4.splat(0);
          let d: usize = 0;
          for (; d + 32 <= rowBytes; d += 32) {
            a0 = fma(v128.load(qr + d), v128.load(k + d), a0);
            a1 = fma(v128.load(qr + d, 16), v128.load(k + d, 16), a1);
          }
          if (d < rowBytes) a0 = fma(v128.load(qr + d), v128.load(k + d), a0);
          const x = hsum(f32x4.add(a0, a1)) * scale;
          if (jj == 0) sv = f32x4.replace_lane(sv, 0, x);
          else if (jj == 1) sv = f32x4.replace_lane(sv, 1, x);
          else if (jj == 2) sv = f32x4.replace_lane(sv, 2, x);
          else sv = f32x4.replace_lane(sv, 3, x);
        }
        const p = f32x4.mul(expV(f32x4.sub(sv, vm)), c);
        const dst = col + <usize>j * 4;
        if (n == 4) v128.store(dst, f32x4.add(v128.load(dst), p));
        else {
          store<f32>(dst, load<f32>(dst) + f32x4.extract_lane(p, 0));
          if (n > 1) store<f32>(dst, load<f32>(dst, 4) + f32x4.extract_lane(p, 1), 4);
          if (n > 2) store<f32>(dst, load<f32>(dst, 8) + f32x4.extract_lane(p, 2), 8);
        }
      }
    }
  }
}

/** out[j] = mean over the heads of ws[h][j] (the per-head sums of `attn_colsum`). Units: keys. */
export function attn_colsum_merge(tid: i32, begin: i32, end: i32, ws: usize, out: usize, heads: i32, nKeys: i32): void {
  const inv: f32 = <f32>1.0 / <f32>heads;
  for (let j = begin; j < end; j++) {
    let acc: f32 = 0;
    for (let h = 0; h < heads; h++) acc += load<f32>(ws + (<usize>h * <usize>nKeys + <usize>j) * 4);
    store<f32>(out + <usize>j * 4, acc * inv);
  }
}

/** Most keys `attn_keyscore` scores in one call (their scores live in the thread's scratch). */
export const KEYSCORE_MAX_KEYS: i32 = SCRATCH_BYTES / 4;

/**
 * Query-aware key scores (SparseVILA's decode retrieval): for KV head kvh, out[kvh][j] = the mean
 * over the group's query heads h of sum_r P_h[r, j], where P_h[r, .] is query row r's softmax over
 * the listed keys only (cache slots keys[0..nKeys)). q holds the nq question rows [nq][heads * D]
 * (after RoPE). Per row: scores into scratch, their max, exp and sum, then the normalised
 * probabilities added into out; no rows x keys matrix. Units: KV heads.
 */
export function attn_keyscore(tid: i32, begin: i32, end: i32, q: usize, ldq: i32, nq: i32, pages: usize, logB: i32, kvHeads: i32, D: i32,
  heads: i32, keys: usize, nKeys: i32, scale: f32, out: usize, scratch: usize): void {
  const s = scratch + <usize>tid * <usize>SCRATCH_BYTES;
  const group = heads / kvHeads;
  const rowBytes = <usize>D * 4;
  const rb8 = rowBytes & ~31;
  const n4 = nKeys & ~3;
  for (let kvh = begin; kvh < end; kvh++) {
    const col = out + <usize>kvh * <usize>nKeys * 4;
    memory.fill(col, 0, <usize>nKeys * 4);
    for (let hh = 0; hh < group; hh++) {
      const h = kvh * group + hh;
      for (let r = 0; r < nq; r++) {
        const qr = q + (<usize>r * <usize>ldq + <usize>h * <usize>D) * 4;
        for (let j = 0; j < nKeys; j++) {
          const k = kRow(pages, logB, kvh, D, load<i32>(keys + <usize>j * 4));
          let a0 = f32x4.splat(0), a1 = f32x4.splat(0);
          let d: usize = 0;
          for (; d < rb8; d += 32) {
            a0 = fma(v128.load(qr + d), v128.load(k + d), a0);
            a1 = fma(v128.load(qr + d, 16), v128.load(k + d, 16), a1);
          }
          if (d < rowBytes) a0 = fma(v128.load(qr + d), v128.load(k + d), a0);
          store<f32>(s + <usize>j * 4, hsum(f32x4.add(a0, a1)) * scale);
        }
        const l = expShifted(s, s, nKeys, maxOf(s, nKeys));
        const c = f32x4.splat(<f32>1.0 / (l * <f32>group));
        for (let j = 0; j < n4; j += 4) v128.store(col + <usize>j * 4, fma(v128.load(s + <usize>j * 4), c, v128.load(col + <usize>j * 4)));
        for (let j = n4; j < nKeys; j++) store<f32>(col + <usize>j * 4, load<f32>(col + <usize>j * 4) + load<f32>(s + <usize>j * 4) / (l * <f32>group));
      }
    }
  }
}

/**
 * Quest's page summaries: for KV head h and page p (slots [p * pageSize, (p + 1) * pageSize) below
 * `length`), the element-wise minimum and maximum of the page's K rows, into
 * out + ((h * pageStride + p) * 2) * D * 4 (min, then max). Units: kvHeads * nPages, for pages
 * page0 .. page0 + nPages - 1.
 */
export function kv_page_bounds(tid: i32, begin: i32, end: i32, pages: usize, logB: i32, kvHeads: i32, D: i32, pageSize: i32,
  page0: i32, nPages: i32, length: i32, pageStride: i32, out: usize): void {
  const rowBytes = <usize>D * 4;
  for (let u = begin; u < end; u++) {
    const h = u / nPages, p = page0 + u % nPages;
    const s0 = p * pageSize, s1 = min(length, s0 + pageSize);
    const o = out + (<usize>h * <usize>pageStride + <usize>p) * 2 * rowBytes;
    if (s1 <= s0) continue;
    const first = kRow(pages, logB, h, D, s0);
    for (let d: usize = 0; d < rowBytes; d += 16) {
      let lo = v128.load(first + d), hi = lo;
      for (let s = s0 + 1; s < s1; s++) {
        const x = v128.load(kRow(pages, logB, h, D, s) + d);
        lo = f32x4.min(lo, x); hi = f32x4.max(hi, x);
      }
      v128.store(o + d, lo);
      v128.store(o + rowBytes + d, hi);
    }
  }
}

/**
 * Quest's page scores for one query row q [heads * D]: out[h][p] = sum over the query heads of KV
 * group h of sum_d max(q_d * min_d, q_d * max_d), an upper bound of q . k over the page's keys.
 * Units: KV heads.
 */
export function quest_scores(tid: i32, begin: i32, end: i32, q: usize, bounds: usize, kvHeads: i32, D: i32, heads: i32,
  nPages: i32, pageStride: i32, out: usize): void {
  const group = heads / kvHeads;
  const rowBytes = <usize>D * 4;
  for (let h = begin; h < end; h++) {
    for (let p = 0; p < nPages; p++) {
      const b = bounds + (<usize>h * <usize>pageStride + <usize>p) * 2 * rowBytes;
      let acc = f32x4.splat(0);
      for (let g = 0; g < group; g++) {
        const qh = q + <usize>(h * group + g) * rowBytes;
        for (let d: usize = 0; d < rowBytes; d += 16) {
          const qv = v128.load(qh + d);
          acc = f32x4.add(acc, f32x4.max(f32x4.mul(qv, v128.load(b + d)), f32x4.mul(qv, v128.load(b + rowBytes + d))));
        }
      }
      store<f32>(out + (<usize>h * <usize>nPages + <usize>p) * 4, hsum(acc));
    }
  }
}
