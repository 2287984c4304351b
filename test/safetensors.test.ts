import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fixture, tempDir } from './helpers.js';
import {
  DTYPE_SIZE,
  SafetensorsError,
  SafetensorsFile,
  bf16BitsToF32Bits,
  f16BitsToF32Bits,
  readTensorF32,
  readTensorInt,
  writeSafetensors,
  type DType,
  type TensorToWrite,
} from '../src/formats/safetensors.js';
import { Checkpoint } from '../src/formats/checkpoint.js';

/** Asserts that `fn` throws a SafetensorsError whose message contains every one of `needles`. */
function throwsST(fn: () => unknown, ...needles: string[]): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof SafetensorsError, `expected SafetensorsError, got ${String(e)}`);
    for (const n of needles) assert.ok(e.message.includes(n), `message ${JSON.stringify(e.message)} lacks ${JSON.stringify(n)}`);
    return true;
  });
}

/** Writes a hand-made file: u64 length (or `declaredLength`), the header text/bytes, then `dataBytes` zero bytes. */
function rawFile(header: string | Uint8Array, dataBytes: number, declaredLength?: bigint): string {
  const h = typeof header === 'string' ? new TextEncoder().encode(header) : header;
  const buf = new Uint8Array(8 + h.length + dataBytes);
  new DataView(buf.buffer).setBigUint64(0, declaredLength ?? BigInt(h.length), true);
  buf.set(h, 8);
  const file = path.join(tempDir('sparsevila-st-'), 'bad.safetensors');
  fs.writeFileSync(file, buf);
  return file;
}

/** A one-tensor header with the given entry. */
const headerOf = (entry: unknown, name = 'w'): string => JSON.stringify({ [name]: entry });

const f32Bytes = (values: number[]): Uint8Array => new Uint8Array(new Float32Array(values).buffer);

function sum(a: Float32Array): number {
  let s = 0;
  for (const v of a) s += v;
  return s;
}

test('reads a bf16 checkpoint (qwen2-tiny)', () => {
  const file = path.join(fixture('qwen2-tiny'), 'model.safetensors');
  const st = SafetensorsFile.open(file);
  try {
    assert.deepEqual(st.metadata, { format: 'pt' });
    assert.equal(st.tensors.size, 38);
    assert.equal(st.dataOffset, 8 + 3920);
    const info = st.info('model.layers.1.self_attn.q_proj.bias');
    assert.deepEqual(info, {
      name: 'model.layers.1.self_attn.q_proj.bias',
      dtype: 'BF16',
      shape: [64],
      numel: 64,
      byteLength: 128,
      file,
      fileOffset: 426648,
    });
    const v = readTensorF32(st, info.name);
    assert.deepEqual([...v.slice(0, 3)], [-0.05517578125, -0.039794921875, -0.01055908203125]);
    assert.ok(Math.abs(sum(v) - -0.4949798583984375) < 1e-9);
    assert.deepEqual(st.info('model.embed_tokens.weight').shape, [2048, 64]);
  } finally {
    st.close();
  }
});

test('reads an f16 checkpoint folder (llava-tiny)', () => {
  const ck = Checkpoint.open(fixture('llava-tiny'));
  try {
    assert.equal(ck.names().length, 89);
    assert.equal(ck.files.length, 1);
    const info = ck.info('multi_modal_projector.linear_1.bias');
    assert.equal(info.dtype, 'F16');
    assert.equal(info.fileOffset, 8441432);
    const v = readTensorF32(ck, 'multi_modal_projector.linear_1.bias');
    assert.deepEqual([...v.slice(0, 3)], [-0.0153656005859375, -0.049041748046875, -0.001522064208984375]);
    assert.ok(Math.abs(sum(v) - -0.11729621887207031) < 1e-9);
    assert.deepEqual(ck.info('language_model.lm_head.weight').shape, [32064, 64]);
  } finally {
    ck.close();
  }
});

test('reads an f32 file given by path (siglip-tiny), also into shared and wasm memory', () => {
  const ck = Checkpoint.open(path.join(fixture('siglip-tiny'), 'model.safetensors'));
  try {
    const name = 'vision_model.post_layernorm.weight';
    const v = readTensorF32(ck, name);
    assert.equal(v.length, 64);
    assert.deepEqual([...v.slice(0, 3)], [0.8586795330047607, 1.0738475322723389, 1.0499763488769531]);
    assert.ok(Math.abs(sum(v) - 64.73382997512817) < 1e-9);

    const expected = new Uint8Array(v.buffer);
    const shared = new Uint8Array(new SharedArrayBuffer(256));
    ck.readInto(name, shared);
    assert.deepEqual(new Uint8Array(shared), expected);
    const mem = new WebAssembly.Memory({ initial: 1 });
    const view = new Uint8Array(mem.buffer, 1024, 256);
    ck.readInto(name, view);
    assert.deepEqual(new Uint8Array(mem.buffer.slice(1024, 1280)), expected);

    throwsST(() => ck.readInto(name, new Uint8Array(255)), name, '255 bytes', 'expected 256');
  } finally {
    ck.close();
  }
});

test('a missing tensor names the checkpoint and suggests names with the same ending', () => {
  const dir = fixture('llava-tiny');
  const ck = Checkpoint.open(dir);
  try {
    throwsST(
      () => ck.info('model.layers.0.self_attn.q_proj.weight'),
      dir,
      'model.layers.0.self_attn.q_proj.weight',
      '"language_model.model.layers.0.self_attn.q_proj.weight"',
    );
    throwsST(() => ck.readInto('nope', new Uint8Array(0)), dir, '"nope"', 'no such tensor');
    assert.equal(ck.has('language_model.model.norm.weight'), true);
    assert.equal(ck.has('nope'), false);
  } finally {
    ck.close();
  }
});

test('reading after close fails', () => {
  const file = path.join(fixture('qwen2-tiny'), 'model.safetensors');
  const st = SafetensorsFile.open(file);
  st.close();
  st.close();
  throwsST(() => st.readInto('model.norm.weight', new Uint8Array(128)), file, 'closed');
});

test('f16 → f32 is exact for all 65536 bit patterns', () => {
  const out = new Float32Array(1);
  const outBits = new Uint32Array(out.buffer);
  for (let h = 0; h < 0x10000; h++) {
    const sign = h & 0x8000 ? -1 : 1;
    const exp = (h >> 10) & 0x1f;
    const mant = h & 0x3ff;
    outBits[0] = f16BitsToF32Bits(h);
    if (exp === 0x1f && mant !== 0) {
      assert.ok(Number.isNaN(out[0]), `0x${h.toString(16)} should be NaN`);
      assert.equal(outBits[0] & 0x7fffff, mant << 13, 'NaN payload kept');
      continue;
    }
    const expected = exp === 0x1f ? sign * Infinity : exp === 0 ? sign * mant * 2 ** -24 : sign * (1 + mant / 1024) * 2 ** (exp - 15);
    assert.ok(Object.is(out[0], expected), `0x${h.toString(16)}: got ${out[0]}, expected ${expected}`);
  }
  const f = (h: number): number => {
    outBits[0] = f16BitsToF32Bits(h);
    return out[0]!;
  };
  assert.equal(f(0x0001), 5.960464477539063e-8);
  assert.equal(f(0x03ff), 0.00006097555160522461);
  assert.equal(f(0x7bff), 65504);
  assert.equal(f(0x3c00), 1);
  assert.equal(f(0xc000), -2);
  assert.ok(Object.is(f(0x8000), -0));
  assert.equal(f(0x7c00), Infinity);
  assert.equal(f(0xfc00), -Infinity);
  assert.equal(bf16BitsToF32Bits(0x3f80), 0x3f800000);
  assert.equal(bf16BitsToF32Bits(0xc0a0), 0xc0a00000);
});

test('writeSafetensors round-trips every dtype, aligned, with metadata', () => {
  const dir = tempDir('sparsevila-st-');
  const file = path.join(dir, 'all.safetensors');
  const dtypes = Object.keys(DTYPE_SIZE) as DType[];
  const tensors: TensorToWrite[] = dtypes.map((dtype, i) => {
    const data = new Uint8Array(3 * DTYPE_SIZE[dtype]);
    for (let j = 0; j < data.length; j++) data[j] = (i * 31 + j * 7) & 0xff;
    return { name: `t.${dtype.toLowerCase()}`, dtype, shape: [3], data };
  });
  tensors.push({ name: 'scalar', dtype: 'F32', shape: [], data: f32Bytes([2.5]) });
  tensors.push({ name: 'empty', dtype: 'F16', shape: [0, 4], data: new Uint8Array(0) });
  writeSafetensors(file, tensors, { format: 'pt', note: 'round trip' });

  const bytes = fs.readFileSync(file);
  const headerLen = Number(bytes.readBigUInt64LE(0));
  assert.equal(headerLen % 8, 0);
  assert.match(bytes.subarray(8, 8 + headerLen).toString('utf8'), /^\{.*\} *$/);

  const st = SafetensorsFile.open(file);
  try {
    assert.deepEqual(st.metadata, { format: 'pt', note: 'round trip' });
    assert.equal(st.tensors.size, tensors.length);
    for (const t of tensors) {
      const info = st.info(t.name);
      assert.equal(info.dtype, t.dtype);
      assert.deepEqual(info.shape, t.shape);
      assert.equal(info.fileOffset % DTYPE_SIZE[t.dtype], 0, `${t.name} aligned`);
      const back = new Uint8Array(info.byteLength);
      st.readInto(t.name, back);
      assert.deepEqual(back, t.data);
    }
    assert.deepEqual([...readTensorF32(st, 'scalar')], [2.5]);
    assert.equal(readTensorF32(st, 'empty').length, 0);
  } finally {
    st.close();
  }
});

test('readTensorF32 and readTensorInt convert goldens', () => {
  const file = path.join(tempDir('sparsevila-st-'), 'golden.safetensors');
  const i64 = new BigInt64Array([0n, -1n, 32000n, BigInt(Number.MAX_SAFE_INTEGER)]);
  const f64 = new Float64Array([0.1, -3, 1e300]);
  writeSafetensors(file, [
    { name: 'ids', dtype: 'I64', shape: [2, 2], data: new Uint8Array(i64.buffer) },
    { name: 'big', dtype: 'U64', shape: [1], data: new Uint8Array(new BigUint64Array([2n ** 60n]).buffer) },
    { name: 'q', dtype: 'I32', shape: [2], data: new Uint8Array(new Int32Array([-5, 0x7a008800]).buffer) },
    { name: 'mask', dtype: 'BOOL', shape: [3], data: new Uint8Array([1, 0, 1]) },
    { name: 'd', dtype: 'F64', shape: [3], data: new Uint8Array(f64.buffer) },
    { name: 'h', dtype: 'F16', shape: [2], data: new Uint8Array(new Uint16Array([0x3c00, 0x0001]).buffer) },
  ]);
  const ck = Checkpoint.open(file);
  try {
    assert.deepEqual(readTensorInt(ck, 'ids'), [0, -1, 32000, Number.MAX_SAFE_INTEGER]);
    assert.deepEqual(readTensorInt(ck, 'q'), [-5, 0x7a008800]);
    assert.deepEqual(readTensorInt(ck, 'mask'), [1, 0, 1]);
    throwsST(() => readTensorInt(ck, 'big'), '"big"', 'not a safe integer');
    assert.deepEqual([...readTensorF32(ck, 'd')], [Math.fround(0.1), -3, Infinity]);
    assert.deepEqual([...readTensorF32(ck, 'h')], [1, 2 ** -24]);
    throwsST(() => readTensorF32(ck, 'ids'), file, '"ids"', 'I64');
    throwsST(() => readTensorInt(ck, 'd'), file, '"d"', 'F64');
  } finally {
    ck.close();
  }
});

test('writeSafetensors rejects bad input', () => {
  const file = path.join(tempDir('sparsevila-st-'), 'w.safetensors');
  throwsST(() => writeSafetensors(file, [{ name: 'a', dtype: 'F32', shape: [2], data: new Uint8Array(7) }]), file, '"a"', 'needs 8 bytes', 'has 7');
  throwsST(
    () =>
      writeSafetensors(file, [
        { name: 'a', dtype: 'U8', shape: [1], data: new Uint8Array(1) },
        { name: 'a', dtype: 'U8', shape: [1], data: new Uint8Array(1) },
      ]),
    '"a"',
    'duplicate',
  );
  throwsST(() => writeSafetensors(file, [{ name: 'x', dtype: 'F4' as DType, shape: [1], data: new Uint8Array(1) }]), '"x"', 'unknown dtype "F4"');
});

// ---- malformed files: each error names the file, the tensor where there is one, and what was wrong ----

test('error: file too short for the header length', () => {
  const file = path.join(tempDir('sparsevila-st-'), 'short.safetensors');
  fs.writeFileSync(file, new Uint8Array(5));
  throwsST(() => SafetensorsFile.open(file), file, 'truncated file', '5 bytes');
});

test('error: header length past the end of the file', () => {
  const file = rawFile('{}', 0, 1000n);
  throwsST(() => SafetensorsFile.open(file), file, 'header length 1000', 'past the end of the file (10 bytes)');
});

test('error: absurd header length', () => {
  const file = rawFile('{}', 0, 2n ** 40n);
  throwsST(() => SafetensorsFile.open(file), file, `header length ${2n ** 40n}`, 'exceeds the limit');
});

test('error: header not valid UTF-8', () => {
  const file = rawFile(new Uint8Array([0x7b, 0xff, 0xfe, 0x7d]), 0);
  throwsST(() => SafetensorsFile.open(file), file, 'not valid UTF-8');
});

test('error: header not valid JSON', () => {
  const file = rawFile('{"w": {"dtype": "F32",', 0);
  throwsST(() => SafetensorsFile.open(file), file, 'not valid JSON');
});

test('error: header not a JSON object', () => {
  const file = rawFile('[1, 2]', 0);
  throwsST(() => SafetensorsFile.open(file), file, 'must be a JSON object', 'array');
});

test('error: tensor entry missing or ill-typed fields', () => {
  const cases: [unknown, string[]][] = [
    ['F32', ['entry must be an object']],
    [{ shape: [1], data_offsets: [0, 4] }, ['"dtype" must be a string', 'nothing']],
    [{ dtype: 7, shape: [1], data_offsets: [0, 4] }, ['"dtype" must be a string', 'number 7']],
    [{ dtype: 'F32', data_offsets: [0, 4] }, ['"shape" must be an array of non-negative integers']],
    [{ dtype: 'F32', shape: [-1], data_offsets: [0, 4] }, ['"shape"', '[-1]']],
    [{ dtype: 'F32', shape: [1.5], data_offsets: [0, 4] }, ['"shape"', '[1.5]']],
    [{ dtype: 'F32', shape: [1] }, ['"data_offsets" must be an array of two non-negative integers']],
    [{ dtype: 'F32', shape: [1], data_offsets: [0, 4, 8] }, ['"data_offsets"', '[0,4,8]']],
    [{ dtype: 'F32', shape: [1], data_offsets: ['0', 4] }, ['"data_offsets"']],
    [{ dtype: 'F32', shape: [0], data_offsets: [4, 0] }, ['[4, 0]', 'begin is after end']],
  ];
  for (const [entry, needles] of cases) {
    const file = rawFile(headerOf(entry, 'layer.weight'), 8);
    throwsST(() => SafetensorsFile.open(file), file, 'tensor "layer.weight"', ...needles);
  }
});

test('error: __metadata__ must map strings to strings', () => {
  const file = rawFile(JSON.stringify({ __metadata__: { format: 1 } }), 0);
  throwsST(() => SafetensorsFile.open(file), file, '"__metadata__"."format" must be a string', 'number 1');
});

test('error: unknown dtype', () => {
  const file = rawFile(headerOf({ dtype: 'F4', shape: [2], data_offsets: [0, 1] }, 'lm_head.weight'), 1);
  throwsST(() => SafetensorsFile.open(file), file, 'tensor "lm_head.weight"', 'unknown dtype "F4"', 'BF16');
});

test('error: shape × dtype size does not match the byte range', () => {
  const file = rawFile(headerOf({ dtype: 'F16', shape: [2, 3], data_offsets: [0, 16] }, 'norm.weight'), 16);
  throwsST(() => SafetensorsFile.open(file), file, 'tensor "norm.weight"', 'shape [2,3] × F16', 'needs 12 bytes', 'span 16');
});

test('error: offsets past the end of the data section', () => {
  const file = rawFile(headerOf({ dtype: 'U8', shape: [8], data_offsets: [100, 108] }, 'embed'), 16);
  throwsST(() => SafetensorsFile.open(file), file, 'tensor "embed"', '[100, 108]', 'data section (16 bytes');
});

test('error: truncated data section', () => {
  const dir = tempDir('sparsevila-st-');
  const good = path.join(dir, 'good.safetensors');
  writeSafetensors(good, [
    { name: 'a', dtype: 'F32', shape: [4], data: f32Bytes([1, 2, 3, 4]) },
    { name: 'b', dtype: 'F32', shape: [2], data: f32Bytes([5, 6]) },
  ]);
  const bytes = fs.readFileSync(good);
  const cut = path.join(dir, 'cut.safetensors');
  fs.writeFileSync(cut, bytes.subarray(0, bytes.length - 4));
  throwsST(() => SafetensorsFile.open(cut), cut, 'tensor "b"', '[16, 24]', 'truncated');
});

test('error: overlapping tensors name both tensors', () => {
  const header = JSON.stringify({
    first: { dtype: 'F32', shape: [4], data_offsets: [0, 16] },
    empty: { dtype: 'F32', shape: [0], data_offsets: [8, 8] },
    second: { dtype: 'F32', shape: [2], data_offsets: [12, 20] },
  });
  const file = rawFile(header, 24);
  throwsST(() => SafetensorsFile.open(file), file, '"second" [12, 20] overlaps tensor "first" [0, 16]');
});

// ---- sharded checkpoints ----

/** Writes two shards and an index into a fresh folder; returns the folder. */
function writeSharded(weightMap?: Record<string, string>, indexName = 'model.safetensors.index.json'): string {
  const dir = tempDir('sparsevila-st-');
  writeSafetensors(
    path.join(dir, 'model-00001-of-00002.safetensors'),
    [
      { name: 'embed.weight', dtype: 'F32', shape: [2, 2], data: f32Bytes([1, 2, 3, 4]) },
      { name: 'layers.0.weight', dtype: 'F32', shape: [2], data: f32Bytes([5, 6]) },
    ],
    { format: 'pt' },
  );
  writeSafetensors(
    path.join(dir, 'model-00002-of-00002.safetensors'),
    [
      { name: 'layers.1.weight', dtype: 'F32', shape: [2], data: f32Bytes([7, 8]) },
      { name: 'lm_head.weight', dtype: 'F32', shape: [1], data: f32Bytes([9]) },
    ],
    { format: 'pt' },
  );
  const index = {
    metadata: { total_size: 36 },
    weight_map: weightMap ?? {
      'embed.weight': 'model-00001-of-00002.safetensors',
      'layers.0.weight': 'model-00001-of-00002.safetensors',
      'layers.1.weight': 'model-00002-of-00002.safetensors',
      'lm_head.weight': 'model-00002-of-00002.safetensors',
    },
  };
  fs.writeFileSync(path.join(dir, indexName), JSON.stringify(index));
  return dir;
}

test('sharded checkpoint: follows the index', () => {
  const dir = writeSharded();
  for (const ck of [Checkpoint.open(dir), Checkpoint.open(path.join(dir, 'model.safetensors.index.json'))]) {
    try {
      assert.equal(ck.source, path.join(dir, 'model.safetensors.index.json'));
      assert.equal(ck.files.length, 2);
      assert.deepEqual(ck.names(), ['embed.weight', 'layers.0.weight', 'layers.1.weight', 'lm_head.weight']);
      assert.deepEqual([...readTensorF32(ck, 'embed.weight')], [1, 2, 3, 4]);
      assert.deepEqual([...readTensorF32(ck, 'layers.1.weight')], [7, 8]);
      assert.equal(ck.info('lm_head.weight').file, path.join(dir, 'model-00002-of-00002.safetensors'));
    } finally {
      ck.close();
    }
  }
});

test('sharded checkpoint: custom index name', () => {
  const dir = writeSharded(undefined, 'weights.index.json');
  throwsST(() => Checkpoint.open(dir), dir, 'no checkpoint found');
  const ck = Checkpoint.open(dir, { indexName: 'weights.index.json' });
  assert.equal(ck.names().length, 4);
  ck.close();
});

test('sharded checkpoint error: missing shard file', () => {
  const dir = writeSharded({ 'embed.weight': 'model-00001-of-00002.safetensors', 'x.weight': 'model-00003.safetensors' });
  throwsST(() => Checkpoint.open(dir), path.join(dir, 'model.safetensors.index.json'), 'shard file "model-00003.safetensors" does not exist');
});

test('sharded checkpoint error: tensor not in the shard the index names', () => {
  const dir = writeSharded({
    'embed.weight': 'model-00001-of-00002.safetensors',
    'lm_head.weight': 'model-00001-of-00002.safetensors',
  });
  throwsST(
    () => Checkpoint.open(dir),
    path.join(dir, 'model.safetensors.index.json'),
    'tensor "lm_head.weight"',
    'shard "model-00001-of-00002.safetensors"',
    'does not hold it',
  );
});

test('sharded checkpoint error: tensor stored in two shards', () => {
  const dir = writeSharded();
  writeSafetensors(path.join(dir, 'model-00002-of-00002.safetensors'), [
    { name: 'layers.0.weight', dtype: 'F32', shape: [2], data: f32Bytes([0, 0]) },
    { name: 'layers.1.weight', dtype: 'F32', shape: [2], data: f32Bytes([7, 8]) },
    { name: 'lm_head.weight', dtype: 'F32', shape: [1], data: f32Bytes([9]) },
  ]);
  throwsST(() => Checkpoint.open(dir), 'tensor "layers.0.weight"', 'two shards', 'model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors');
});

test('sharded checkpoint error: malformed index', () => {
  const dir = writeSharded();
  const index = path.join(dir, 'model.safetensors.index.json');
  fs.writeFileSync(index, JSON.stringify({ weight_map: ['a'] }));
  throwsST(() => Checkpoint.open(dir), index, '"weight_map" must be an object', 'array');
  fs.writeFileSync(index, JSON.stringify({ weight_map: { 'a.weight': 3 } }));
  throwsST(() => Checkpoint.open(dir), index, 'tensor "a.weight"', 'shard file name', 'number 3');
  fs.writeFileSync(index, JSON.stringify({ weight_map: { 'a.weight': '../elsewhere.safetensors' } }));
  throwsST(() => Checkpoint.open(dir), index, 'outside the checkpoint folder');
  fs.writeFileSync(index, '{"weight_map": ');
  throwsST(() => Checkpoint.open(dir), index, 'invalid JSON');
});

test('checkpoint error: nothing there', () => {
  const dir = tempDir('sparsevila-st-');
  throwsST(() => Checkpoint.open(dir), dir, 'neither model.safetensors nor model.safetensors.index.json');
  throwsST(() => Checkpoint.open(path.join(dir, 'missing')), path.join(dir, 'missing'), 'cannot open checkpoint');
});
