// An arena is one shared WebAssembly memory (at most 4 GiB, the wasm32 limit) with an allocator.
// A model larger than 4 GiB spans several arenas: each holds a contiguous range of layers, and the
// small activations are copied from one arena to the next at the boundary (see ARCHITECTURE.md).
//
// Pointers are plain numbers (byte offsets) and may exceed 2^31: never use JS bitwise operators
// on them.

const PAGE = 65536;
/** The first bytes of every memory are left to the kernel module (it keeps no data there today). */
const RESERVED = 64 * 1024;
export const MAX_ARENA_BYTES = 65536 * PAGE; // 4 GiB

export class OutOfArenaMemory extends Error {}

interface Block {
  ptr: number;
  size: number;
}

export class Arena {
  readonly memory: WebAssembly.Memory;
  /** Instance of the kernel module on the calling thread. */
  readonly exports: Record<string, unknown>;
  private top = RESERVED;
  private free: Block[] = []; // sorted by ptr, coalesced
  private sizes = new Map<number, number>();
  private cachedBuffer: ArrayBufferLike | null = null;
  private u8view = new Uint8Array(0);
  private f32view = new Float32Array(0);
  private i32view = new Int32Array(0);

  constructor(
    readonly id: number,
    module: WebAssembly.Module,
    initialBytes = 16 * PAGE,
  ) {
    this.memory = new WebAssembly.Memory({ initial: Math.ceil(initialBytes / PAGE), maximum: 65536, shared: true });
    this.exports = new WebAssembly.Instance(module, { env: { memory: this.memory, abort: wasmAbort } }).exports as Record<string, unknown>;
  }

  /** Bytes handed out and not yet freed. */
  get usedBytes(): number {
    let s = 0;
    for (const v of this.sizes.values()) s += v;
    return s;
  }
  /** Bytes the memory has grown to. */
  get committedBytes(): number {
    return this.memory.buffer.byteLength;
  }

  /** Allocates `bytes` (rounded up to 64) aligned to 64 bytes; grows the memory when needed. */
  alloc(bytes: number): number {
    const size = Math.max(64, Math.ceil(bytes / 64) * 64);
    for (let i = 0; i < this.free.length; i++) {
      const b = this.free[i];
      if (b.size >= size) {
        const ptr = b.ptr;
        if (b.size === size) this.free.splice(i, 1);
        else {
          b.ptr += size;
          b.size -= size;
        }
        this.sizes.set(ptr, size);
        return ptr;
      }
    }
    const ptr = this.top;
    const end = ptr + size;
    if (end > MAX_ARENA_BYTES) {
      throw new OutOfArenaMemory(
        `arena ${this.id}: cannot allocate ${size} bytes (in use ${this.usedBytes}, limit ${MAX_ARENA_BYTES} bytes per wasm32 memory)`,
      );
    }
    const have = this.memory.buffer.byteLength;
    if (end > have) {
      // Grow geometrically (at least 1/8 more) to keep the number of grow calls small.
      const want = Math.min(MAX_ARENA_BYTES, Math.max(end, have + Math.floor(have / 8)));
      this.memory.grow(Math.ceil((want - have) / PAGE));
    }
    this.top = end;
    this.sizes.set(ptr, size);
    return ptr;
  }

  /** Returns a block from `alloc` to the arena. */
  release(ptr: number): void {
    const size = this.sizes.get(ptr);
    if (size === undefined) throw new Error(`arena ${this.id}: release of unknown pointer ${ptr}`);
    this.sizes.delete(ptr);
    let lo = 0,
      hi = this.free.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.free[mid].ptr < ptr) lo = mid + 1;
      else hi = mid;
    }
    this.free.splice(lo, 0, { ptr, size });
    // Coalesce with the neighbours.
    if (lo + 1 < this.free.length && this.free[lo].ptr + this.free[lo].size === this.free[lo + 1].ptr) {
      this.free[lo].size += this.free[lo + 1].size;
      this.free.splice(lo + 1, 1);
    }
    if (lo > 0 && this.free[lo - 1].ptr + this.free[lo - 1].size === this.free[lo].ptr) {
      this.free[lo - 1].size += this.free[lo].size;
      this.free.splice(lo, 1);
    }
    // A free block at the top goes back to the bump region.
    const last = this.free[this.free.length - 1];
    if (last && last.ptr + last.size === this.top) {
      this.top = last.ptr;
      this.free.pop();
    }
  }

  private refresh(): void {
    const buf = this.memory.buffer;
    if (buf !== this.cachedBuffer || buf.byteLength !== this.u8view.byteLength) {
      this.cachedBuffer = buf;
      this.u8view = new Uint8Array(buf);
      this.f32view = new Float32Array(buf);
      this.i32view = new Int32Array(buf);
    }
  }
  /** Views over the whole memory; re-fetch after any allocation (the memory may have grown). */
  get u8(): Uint8Array {
    this.refresh();
    return this.u8view;
  }
  get f32(): Float32Array {
    this.refresh();
    return this.f32view;
  }
  get i32(): Int32Array {
    this.refresh();
    return this.i32view;
  }

  /** A Float32Array view of n floats at ptr (valid until the memory grows). */
  f32At(ptr: number, n: number): Float32Array {
    return new Float32Array(this.memory.buffer, ptr, n);
  }
  u8At(ptr: number, n: number): Uint8Array {
    return new Uint8Array(this.memory.buffer, ptr, n);
  }
  i32At(ptr: number, n: number): Int32Array {
    return new Int32Array(this.memory.buffer, ptr, n);
  }
}

function wasmAbort(): never {
  throw new Error('wasm kernel aborted');
}
