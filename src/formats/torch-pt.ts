// PyTorch `.pt` checkpoints (torch.save of a state dict, the zip format of torch >= 1.6): how
// llm-awq / TinyChat ship AWQ language models (VILA's `llm/*-awq-v2.pt`).
//
// The zip holds `<prefix>/data.pkl` (a pickle of the state dict) and one entry per storage,
// `<prefix>/data/<key>`, with the raw little-endian bytes. The pickle is read by a restricted
// machine that understands plain containers (dicts, lists, tuples, strings, numbers), tensors
// (torch._utils._rebuild_tensor_v2 over persistent storage ids) and OrderedDict, and nothing
// else: any other global, and any call other than those, is an error naming it. Nothing in the
// file is ever executed. Tensors become TensorInfo entries pointing at their bytes inside the
// zip (entries must be stored, not compressed, as torch writes them), so reading one is a plain
// file read, as for safetensors.
import fs from 'node:fs';
import { openRegularFile } from '../base/files.js';
import { DTYPE_SIZE, DType, OpenWeightFile, SafetensorsError, TensorInfo, readFully } from './safetensors.js';

export class TorchPtError extends SafetensorsError {}

/** Largest pickle accepted (a state dict's pickle is small: names and shapes). */
const MAX_PICKLE_BYTES = 64 * 1024 * 1024;

/** Storage classes and the dtype of their elements. */
const STORAGE_DTYPES: Record<string, DType> = {
  HalfStorage: 'F16',
  BFloat16Storage: 'BF16',
  FloatStorage: 'F32',
  DoubleStorage: 'F64',
  ShortStorage: 'I16',
  IntStorage: 'I32',
  LongStorage: 'I64',
  CharStorage: 'I8',
  ByteStorage: 'U8',
  BoolStorage: 'BOOL',
};

interface ZipEntry {
  name: string;
  method: number;
  size: number;
  /** Absolute offset of the entry's data. */
  dataOffset: number;
}

class Global {
  constructor(
    readonly module: string,
    readonly name: string,
  ) {}
  get full(): string {
    return `${this.module}.${this.name}`;
  }
}
class Tuple {
  constructor(readonly items: Value[]) {}
}
class Mark {}
class StorageRef {
  constructor(
    readonly dtype: DType,
    readonly key: string,
    readonly numel: number,
  ) {}
}
class TensorRef {
  constructor(
    readonly storage: StorageRef,
    readonly offset: number,
    readonly shape: number[],
    readonly stride: number[],
  ) {}
}
type Value = null | boolean | number | bigint | string | Value[] | Tuple | Map<Value, Value> | Global | StorageRef | TensorRef | Mark;

/** One open `.pt` file: its tensors and the open descriptor to read them through. */
export class TorchPtFile extends OpenWeightFile {
  private constructor(filePath: string, fd: number, tensors: Map<string, TensorInfo>) {
    super(filePath, fd, tensors, (file, message, tensor) => new TorchPtError(file, message, tensor));
  }

  static open(filePath: string): TorchPtFile {
    let fd: number;
    try {
      fd = openRegularFile(filePath, 'PyTorch checkpoint').fd;
    } catch (e) {
      throw new TorchPtError(filePath, (e as Error).message.replace(`${filePath}: `, ''));
    }
    try {
      return new TorchPtFile(filePath, fd, readTensors(fd, filePath));
    } catch (e) {
      fs.closeSync(fd);
      throw e;
    }
  }
}

// ---- zip --------------------------------------------------------------------------------------

function readAt(fd: number, position: number, length: number, err: (m: string) => Error): DataView {
  const b = new Uint8Array(length);
  readFully(fd, b, 0, length, position, err);
  return new DataView(b.buffer);
}

/** The zip's entries, from its central directory (zip64 records understood). */
function zipEntries(fd: number, filePath: string): ZipEntry[] {
  const err = (m: string) => new TorchPtError(filePath, m);
  const size = fs.fstatSync(fd).size;
  if (size < 22) throw err(`not a PyTorch zip checkpoint: ${size} bytes`);
  const tailLen = Math.min(size, 65536 + 22);
  const tail = readAt(fd, size - tailLen, tailLen, err);
  let eocd = -1;
  for (let i = tailLen - 22; i >= 0; i--) {
    if (tail.getUint32(i, true) === 0x06054b50) {
      eocd = i;
      break;
    }
  }
  if (eocd < 0)
    throw err('not a zip file (no end-of-central-directory record): torch.save writes zip archives since torch 1.6; older pickled files are not read');
  let count = tail.getUint16(eocd + 10, true);
  let cdSize = tail.getUint32(eocd + 12, true);
  let cdOffset = tail.getUint32(eocd + 16, true);
  if (count === 0xffff || cdSize === 0xffffffff || cdOffset === 0xffffffff) {
    const loc = eocd - 20;
    if (loc < 0 || tail.getUint32(loc, true) !== 0x07064b50) throw err('zip64 archive without its zip64 locator');
    const z = readAt(fd, Number(tail.getBigUint64(loc + 8, true)), 56, err);
    if (z.getUint32(0, true) !== 0x06064b50) throw err('zip64 end-of-central-directory record not found where its locator points');
    count = Number(z.getBigUint64(32, true));
    cdSize = Number(z.getBigUint64(40, true));
    cdOffset = Number(z.getBigUint64(48, true));
  }
  if (cdOffset + cdSize > size) throw err('the zip central directory runs past the end of the file (truncated download?)');
  const cd = readAt(fd, cdOffset, cdSize, err);
  const entries: ZipEntry[] = [];
  let p = 0;
  for (let i = 0; i < count; i++) {
    if (p + 46 > cdSize || cd.getUint32(p, true) !== 0x02014b50) throw err(`zip central directory entry ${i} is malformed`);
    const method = cd.getUint16(p + 10, true);
    let compSize = cd.getUint32(p + 20, true);
    let uncompSize = cd.getUint32(p + 24, true);
    const nameLen = cd.getUint16(p + 28, true),
      extraLen = cd.getUint16(p + 30, true),
      commentLen = cd.getUint16(p + 32, true);
    let local = cd.getUint32(p + 42, true);
    const name = new TextDecoder().decode(new Uint8Array(cd.buffer, p + 46, nameLen));
    // Zip64 extended information: 64-bit values for the fields that hold 0xFFFFFFFF, in order.
    let e = p + 46 + nameLen;
    const extraEnd = e + extraLen;
    while (e + 4 <= extraEnd) {
      const id = cd.getUint16(e, true),
        len = cd.getUint16(e + 2, true);
      if (id === 0x0001) {
        let q = e + 4;
        if (uncompSize === 0xffffffff) {
          uncompSize = Number(cd.getBigUint64(q, true));
          q += 8;
        }
        if (compSize === 0xffffffff) {
          compSize = Number(cd.getBigUint64(q, true));
          q += 8;
        }
        if (local === 0xffffffff) local = Number(cd.getBigUint64(q, true));
      }
      e += 4 + len;
    }
    const lh = readAt(fd, local, 30, err);
    if (lh.getUint32(0, true) !== 0x04034b50) throw err(`zip entry "${name}": no local header at byte ${local}`);
    const dataOffset = local + 30 + lh.getUint16(26, true) + lh.getUint16(28, true);
    if (dataOffset + compSize > size) throw err(`zip entry "${name}" runs past the end of the file (truncated download?)`);
    entries.push({ name, method, size: method === 0 ? uncompSize : compSize, dataOffset });
    p += 46 + nameLen + extraLen + commentLen;
  }
  return entries;
}

// ---- pickle ------------------------------------------------------------------------------------

/** Runs the restricted pickle machine over `data` and returns the top-level value. */
export function unpickle(data: Uint8Array, what: string): Value {
  const err = (m: string, at: number) => new TorchPtError(what, `${m} (pickle byte ${at})`);
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const stack: Value[] = [];
  const memo = new Map<number, Value>();
  let pos = 0;
  const need = (n: number, at: number) => {
    if (pos + n > data.length) throw err('the pickle ends in the middle of an instruction', at);
  };
  const str = (n: number, at: number) => {
    need(n, at);
    const s = new TextDecoder('utf-8', { fatal: false }).decode(data.subarray(pos, pos + n));
    pos += n;
    return s;
  };
  const line = (at: number) => {
    const end = data.indexOf(10, pos);
    if (end < 0) throw err('unterminated GLOBAL', at);
    const s = new TextDecoder().decode(data.subarray(pos, end));
    pos = end + 1;
    return s;
  };
  const pop = (at: number): Value => {
    if (stack.length === 0) throw err('the pickle pops an empty stack', at);
    return stack.pop()!;
  };
  const popMark = (at: number): Value[] => {
    for (let i = stack.length - 1; i >= 0; i--) {
      if (stack[i] instanceof Mark) {
        const items = stack.splice(i);
        items.shift();
        return items;
      }
    }
    throw err('no MARK on the stack', at);
  };
  const global = (module: string, name: string, at: number): Global => {
    const g = new Global(module, name);
    const allowed =
      g.full === 'collections.OrderedDict' ||
      g.full === 'torch._utils._rebuild_tensor_v2' ||
      g.full === 'torch._utils._rebuild_parameter' ||
      (module === 'torch' && Object.hasOwn(STORAGE_DTYPES, name));
    if (!allowed)
      throw err(
        `refuses the global ${g.full}: only tensors, their storages and plain containers are read from a checkpoint, and nothing in it is executed`,
        at,
      );
    return g;
  };
  for (;;) {
    const at = pos;
    need(1, at);
    const op = data[pos++];
    switch (op) {
      case 0x80: // PROTO
        need(1, at);
        pos += 1;
        break;
      case 0x95: // FRAME
        need(8, at);
        pos += 8;
        break;
      case 0x7d: // EMPTY_DICT
        stack.push(new Map());
        break;
      case 0x5d: // EMPTY_LIST
        stack.push([]);
        break;
      case 0x29: // EMPTY_TUPLE
        stack.push(new Tuple([]));
        break;
      case 0x28: // MARK
        stack.push(new Mark());
        break;
      case 0x58: // BINUNICODE
        need(4, at);
        pos += 4;
        stack.push(str(view.getUint32(pos - 4, true), at));
        break;
      case 0x8c: // SHORT_BINUNICODE
        need(1, at);
        pos += 1;
        stack.push(str(data[pos - 1], at));
        break;
      case 0x55: // SHORT_BINSTRING
        need(1, at);
        pos += 1;
        stack.push(str(data[pos - 1], at));
        break;
      case 0x71: // BINPUT
        need(1, at);
        memo.set(data[pos++], stack[stack.length - 1] ?? null);
        break;
      case 0x72: // LONG_BINPUT
        need(4, at);
        memo.set(view.getUint32(pos, true), stack[stack.length - 1] ?? null);
        pos += 4;
        break;
      case 0x94: // MEMOIZE
        memo.set(memo.size, stack[stack.length - 1] ?? null);
        break;
      case 0x68: // BINGET
      case 0x6a: {
        // LONG_BINGET
        const n = op === 0x68 ? 1 : 4;
        need(n, at);
        const k = n === 1 ? data[pos] : view.getUint32(pos, true);
        pos += n;
        if (!memo.has(k)) throw err(`memo entry ${k} read before it was written`, at);
        stack.push(memo.get(k)!);
        break;
      }
      case 0x63: {
        // GLOBAL
        const module = line(at);
        stack.push(global(module, line(at), at));
        break;
      }
      case 0x93: {
        // STACK_GLOBAL
        const name = pop(at),
          module = pop(at);
        if (typeof name !== 'string' || typeof module !== 'string') throw err('STACK_GLOBAL needs two strings', at);
        stack.push(global(module, name, at));
        break;
      }
      case 0x51: // BINPERSID
        stack.push(persistent(pop(at), (m) => err(m, at)));
        break;
      case 0x74: // TUPLE
        stack.push(new Tuple(popMark(at)));
        break;
      case 0x85: // TUPLE1
        stack.push(new Tuple([pop(at)]));
        break;
      case 0x86: {
        // TUPLE2
        const b = pop(at);
        stack.push(new Tuple([pop(at), b]));
        break;
      }
      case 0x87: {
        // TUPLE3
        const c = pop(at),
          b = pop(at);
        stack.push(new Tuple([pop(at), b, c]));
        break;
      }
      case 0x52: {
        // REDUCE
        const args = pop(at),
          fn = pop(at);
        stack.push(call(fn, args, (m) => err(m, at)));
        break;
      }
      case 0x4a: // BININT
        need(4, at);
        stack.push(view.getInt32(pos, true));
        pos += 4;
        break;
      case 0x4b: // BININT1
        need(1, at);
        stack.push(data[pos++]);
        break;
      case 0x4d: // BININT2
        need(2, at);
        stack.push(view.getUint16(pos, true));
        pos += 2;
        break;
      case 0x8a: {
        // LONG1
        need(1, at);
        const n = data[pos++];
        need(n, at);
        let v = 0n;
        for (let i = n - 1; i >= 0; i--) v = (v << 8n) | BigInt(data[pos + i]);
        if (n > 0 && data[pos + n - 1] & 0x80) v -= 1n << BigInt(8 * n);
        pos += n;
        stack.push(v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v);
        break;
      }
      case 0x47: // BINFLOAT
        need(8, at);
        stack.push(view.getFloat64(pos, false));
        pos += 8;
        break;
      case 0x88: // NEWTRUE
        stack.push(true);
        break;
      case 0x89: // NEWFALSE
        stack.push(false);
        break;
      case 0x4e: // NONE
        stack.push(null);
        break;
      case 0x73: {
        // SETITEM
        const v = pop(at),
          k = pop(at);
        dictOf(stack[stack.length - 1], (m) => err(m, at)).set(k, v);
        break;
      }
      case 0x75: {
        // SETITEMS
        const items = popMark(at);
        const d = dictOf(stack[stack.length - 1], (m) => err(m, at));
        for (let i = 0; i + 1 < items.length; i += 2) d.set(items[i], items[i + 1]);
        break;
      }
      case 0x61: {
        // APPEND
        const v = pop(at);
        listOf(stack[stack.length - 1], (m) => err(m, at)).push(v);
        break;
      }
      case 0x65: {
        // APPENDS
        const items = popMark(at);
        listOf(stack[stack.length - 1], (m) => err(m, at)).push(...items);
        break;
      }
      case 0x62: {
        // BUILD: only the state torch attaches to an OrderedDict (its `_metadata`), ignored.
        pop(at);
        if (!(stack[stack.length - 1] instanceof Map)) throw err('BUILD on something other than a dict', at);
        break;
      }
      case 0x2e: // STOP
        if (stack.length !== 1) throw err(`the pickle stops with ${stack.length} values on the stack`, at);
        return stack[0];
      default:
        throw err(`unsupported pickle instruction 0x${op.toString(16).padStart(2, '0')} (only what torch.save writes for a state dict is read)`, at);
    }
  }
}

function dictOf(v: Value | undefined, err: (m: string) => Error): Map<Value, Value> {
  if (!(v instanceof Map)) throw err('SETITEM on something other than a dict');
  return v;
}
function listOf(v: Value | undefined, err: (m: string) => Error): Value[] {
  if (!Array.isArray(v)) throw err('APPEND on something other than a list');
  return v;
}

/** ('storage', torch.<Type>Storage, key, location, numel) */
function persistent(pid: Value, err: (m: string) => Error): StorageRef {
  const t = pid instanceof Tuple ? pid.items : null;
  if (!t || t.length !== 5 || t[0] !== 'storage' || !(t[1] instanceof Global) || typeof t[2] !== 'string' || typeof t[4] !== 'number')
    throw err('a persistent id that is not a tensor storage');
  if (t[1].module !== 'torch' || !Object.hasOwn(STORAGE_DTYPES, t[1].name)) throw err(`a storage of unknown type ${t[1].full}`);
  return new StorageRef(STORAGE_DTYPES[t[1].name], t[2], t[4]);
}

function ints(v: Value, what: string, err: (m: string) => Error): number[] {
  const items = v instanceof Tuple ? v.items : Array.isArray(v) ? v : null;
  if (!items || !items.every((x) => typeof x === 'number' && Number.isInteger(x) && x >= 0)) throw err(`${what} is not a tuple of sizes`);
  return items as number[];
}

/** The only calls a checkpoint may make: building an OrderedDict, a tensor, or a parameter. */
function call(fn: Value, args: Value, err: (m: string) => Error): Value {
  if (!(fn instanceof Global) || !(args instanceof Tuple)) throw err('a call of something that is not an allowed function');
  const a = args.items;
  switch (fn.full) {
    case 'collections.OrderedDict':
      if (a.length !== 0) throw err('OrderedDict called with arguments');
      return new Map();
    case 'torch._utils._rebuild_tensor_v2': {
      if (a.length < 4 || !(a[0] instanceof StorageRef) || typeof a[1] !== 'number') throw err('_rebuild_tensor_v2 with unexpected arguments');
      return new TensorRef(a[0], a[1], ints(a[2], 'a tensor size', err), ints(a[3], 'a tensor stride', err));
    }
    case 'torch._utils._rebuild_parameter':
      if (!(a[0] instanceof TensorRef)) throw err('_rebuild_parameter of something other than a tensor');
      return a[0];
    default:
      throw err(`refuses to call ${fn.full}`);
  }
}

/** Reads the zip's pickle and turns its tensors into TensorInfo entries inside the file. */
function readTensors(fd: number, filePath: string): Map<string, TensorInfo> {
  const entries = zipEntries(fd, filePath);
  const pkl = entries.find((e) => e.name.endsWith('/data.pkl') || e.name === 'data.pkl');
  if (!pkl) throw new TorchPtError(filePath, 'no data.pkl in the archive: not a torch.save checkpoint');
  if (pkl.method !== 0) throw new TorchPtError(filePath, `data.pkl is compressed (zip method ${pkl.method}); torch.save stores entries uncompressed`);
  if (pkl.size > MAX_PICKLE_BYTES) throw new TorchPtError(filePath, `data.pkl is ${pkl.size} bytes, more than the ${MAX_PICKLE_BYTES} a state dict needs`);
  const prefix = pkl.name.slice(0, pkl.name.length - 'data.pkl'.length);
  const bytes = new Uint8Array(pkl.size);
  readFully(fd, bytes, 0, pkl.size, pkl.dataOffset, (m) => new TorchPtError(filePath, m));
  const top = unpickle(bytes, filePath);
  if (!(top instanceof Map)) throw new TorchPtError(filePath, 'the checkpoint is not a state dict (a dict of tensors)');
  const byName = new Map(entries.map((e) => [e.name, e]));
  const tensors = new Map<string, TensorInfo>();
  for (const [k, v] of top) {
    if (!(v instanceof TensorRef)) continue;
    if (typeof k !== 'string') throw new TorchPtError(filePath, 'a state-dict key that is not a string');
    const st = v.storage;
    const entry = byName.get(`${prefix}data/${st.key}`);
    if (!entry) throw new TorchPtError(filePath, `its storage "data/${st.key}" is missing from the archive`, k);
    if (entry.method !== 0) throw new TorchPtError(filePath, `its storage is compressed (zip method ${entry.method})`, k);
    const esz = DTYPE_SIZE[st.dtype];
    const numel = v.shape.reduce((a, b) => a * b, 1);
    // Row-major strides (dimensions of size 1 may have any stride).
    let expect = 1;
    for (let d = v.shape.length - 1; d >= 0; d--) {
      if (v.shape[d] !== 1 && v.stride[d] !== expect)
        throw new TorchPtError(filePath, `is a non-contiguous view (shape [${v.shape.join(', ')}], stride [${v.stride.join(', ')}]); save it contiguous`, k);
      expect *= v.shape[d];
    }
    if ((v.offset + numel) * esz > entry.size) throw new TorchPtError(filePath, `runs past the end of its storage "data/${st.key}"`, k);
    tensors.set(k, { name: k, dtype: st.dtype, shape: v.shape, numel, byteLength: numel * esz, file: filePath, fileOffset: entry.dataOffset + v.offset * esz });
  }
  if (tensors.size === 0) throw new TorchPtError(filePath, 'the state dict holds no tensors');
  return tensors;
}
