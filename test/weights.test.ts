// Real checkpoint tensors go from a safetensors file straight into wasm memory in their storage
// dtype (bf16 for qwen2-tiny, f16 for llava-tiny, f32 for siglip-tiny), and the kernels computing
// with them agree with the same tensors widened to f32 in plain TypeScript.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readTensorF32 } from '../src/formats/safetensors.js';
import { Checkpoint } from '../src/formats/checkpoint.js';
import { WasmBackend } from '../src/kernels/wasm-backend.js';
import { WeightDType } from '../src/kernels/backend.js';
import { fixture } from './helpers.js';

const DT: Record<string, WeightDType> = { F32: 'f32', F16: 'f16', BF16: 'bf16' };

describe('checkpoint tensors in storage dtype', () => {
  let be: WasmBackend;
  before(async () => {
    be = await WasmBackend.create({ threads: 2 });
  });
  after(async () => {
    await be.close();
  });

  const cases: [string, string, string][] = [
    ['qwen2-tiny', 'model.layers.0.mlp.gate_proj.weight', 'BF16'],
    ['qwen2-tiny', 'model.layers.1.self_attn.k_proj.weight', 'BF16'],
    ['llava-tiny', 'language_model.model.layers.2.mlp.down_proj.weight', 'F16'],
    ['llava-tiny', 'multi_modal_projector.linear_1.weight', 'F16'],
    ['siglip-tiny', 'vision_model.encoder.layers.0.mlp.fc1.weight', 'F32'],
  ];
  for (const [fx, name, dtype] of cases) {
    it(`${fx} ${name} (${dtype}): matmul equals the widened reference`, () => {
      const ck = Checkpoint.open(fixture(fx));
      try {
        const info = ck.info(name);
        assert.equal(info.dtype, dtype);
        const [N, K] = info.shape;
        const arena = be.memoryUsage()[0].usedBytes;
        const w = be.linear(N, K, DT[info.dtype], (dest) => ck.readInto(name, dest));
        // Only the packed weight remains (padded to whole 8-column panels): no f32 copy.
        const esz = dtype === 'F32' ? 4 : 2;
        assert.equal(w.byteLength, Math.ceil(N / 8) * 8 * K * esz);
        assert.ok(be.memoryUsage()[0].usedBytes - arena <= w.byteLength + 64);
        const ref = readTensorF32(ck, name);
        for (const M of [1, 6]) {
          const xs = new Float32Array(M * K).map((_, i) => Math.sin(i * 0.7));
          const x = be.matrix(M, K),
            y = be.matrix(M, N);
          be.write(x, xs);
          be.matmul(y, x, w);
          const got = be.read(y);
          let err = 0;
          for (let m = 0; m < M; m++) {
            for (let n = 0; n < N; n++) {
              let s = 0;
              for (let k = 0; k < K; k++) s += xs[m * K + k] * ref[n * K + k];
              err = Math.max(err, Math.abs(s - got[m * N + n]) / (1 + Math.abs(s)));
            }
          }
          assert.ok(err < 1e-5, `relative error ${err}`);
          be.free(x);
          be.free(y);
        }
        be.free(w);
      } finally {
        ck.close();
      }
    });
  }

  it('qwen2-tiny tied embeddings: lookup through the packed weight equals the stored rows', () => {
    const ck = Checkpoint.open(fixture('qwen2-tiny'));
    try {
      const name = 'model.embed_tokens.weight';
      const [V, H] = ck.info(name).shape;
      const w = be.linear(V, H, 'bf16', (dest) => ck.readInto(name, dest));
      const ids = [0, 1, 7, 8, 1000, V - 1];
      const iv = be.ints(ids.length);
      be.writeInts(iv, ids);
      const out = be.matrix(ids.length, H);
      be.embedFromLinear(out, w, iv);
      const got = be.read(out),
        ref = readTensorF32(ck, name);
      ids.forEach((id, r) => assert.deepEqual(got.subarray(r * H, (r + 1) * H), ref.subarray(id * H, (id + 1) * H)));
      const table = be.embedding(V, H, 'bf16', (dest) => ck.readInto(name, dest));
      const out2 = be.matrix(ids.length, H);
      be.embed(out2, table, iv);
      assert.deepEqual(be.read(out2), got);
    } finally {
      ck.close();
    }
  });
});
