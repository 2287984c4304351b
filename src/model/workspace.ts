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

  /** A matrix holding `data` (row-major [n][cols]). */
  matrixOf(name: string, data: Float32Array, cols: number): Matrix {
    const m = this.matrix(name, data.length / cols, cols);
    this.backend.write(m, data);
    return m;
  }

  /** Rows `rows` (ascending) of m, gathered into the matrix `name` (runs of consecutive rows in one copy). */
  gather(name: string, m: Matrix, rows: readonly number[]): Matrix {
    const g = this.matrix(name, rows.length, m.cols);
    for (let i = 0; i < rows.length;) {
      let run = 1;
      while (i + run < rows.length && rows[i + run] === rows[i] + run) run++;
      this.backend.copy(g.view(i, run), m.view(rows[i], run));
      i += run;
    }
    return g;
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
