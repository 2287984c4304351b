// Reusable activation buffers: a forward pass asks for matrices by name and gets views of buffers
// that are allocated once and grown only when a longer input arrives, so decode steps allocate
// nothing.
import { IntVector, KernelBackend, Matrix } from '../kernels/backend.js';

export class Workspace {
  private mats = new Map<string, Matrix>();
  private ints = new Map<string, IntVector>();

  constructor(
    private readonly backend: KernelBackend,
    private readonly place = 0,
  ) {}

  /** A rows x cols matrix (contents undefined). */
  matrix(name: string, rows: number, cols: number): Matrix {
    let m = this.mats.get(name);
    if (!m || m.rows < rows || m.cols !== cols) {
      if (m) this.backend.free(m);
      m = this.backend.matrix(Math.max(rows, m && m.cols === cols ? m.rows * 2 : 0), cols, this.place);
      this.mats.set(name, m);
    }
    return m.rows === rows ? m : m.view(0, rows);
  }

  /** An int vector holding `values`. */
  intsOf(name: string, values: Int32Array | readonly number[]): IntVector {
    let v = this.ints.get(name);
    if (!v || v.length !== values.length) {
      if (v) this.backend.free(v);
      v = this.backend.ints(values.length, this.place);
      this.ints.set(name, v);
    }
    this.backend.writeInts(v, values);
    return v;
  }

  free(): void {
    for (const m of this.mats.values()) this.backend.free(m);
    for (const v of this.ints.values()) this.backend.free(v);
    this.mats.clear();
    this.ints.clear();
  }
}
