// Float weights as transformers stores them: `<base>.weight` [out][in] (a convolution kernel
// [out][c][kh][kw] is the same bytes as [out][c*kh*kw]), in F32, F16 or BF16.
import { LinearCompute, LinearWeight, WeightDType } from '../../kernels/backend.js';
import { TensorInfo } from '../../formats/safetensors.js';
import { LinearFormat, LinearPart, TensorReader, inFeatures, isStandIn, outFeatures } from './format.js';

const FLOAT_DTYPES: Record<string, WeightDType> = { F32: 'f32', F16: 'f16', BF16: 'bf16' };

export const denseFormat: LinearFormat = {
  name: 'dense',
  detect: (r, base) => r.has(`${base}.weight`),
  tensorNames: (base) => [`${base}.weight`],
  load(r: TensorReader, parts: LinearPart[], compute: LinearCompute): LinearWeight {
    const infos = parts.map((p) => r.info(`${p.base}.weight`, p.shape));
    const dtypes = infos.map((i) => floatDtype(r, i));
    const real = infos.filter((i) => !isStandIn(i));
    const first = real[0] ?? infos[0];
    const dtype = dtypes[infos.indexOf(first)];
    for (const i of real) {
      if (FLOAT_DTYPES[i.dtype] !== dtype)
        r.fail(`${r.label}: tensors "${first.name}" (${first.dtype}) and "${i.name}" (${i.dtype}) are fused into one matmul and must share a dtype`);
    }
    const out = parts.reduce((a, p) => a + outFeatures(p), 0);
    return r.backend.linear(
      out,
      inFeatures(parts[0]),
      dtype,
      (dest) => {
        if (r.checking) return;
        let off = 0;
        for (const i of infos) {
          r.readInto(i, dest.subarray(off, off + i.byteLength));
          off += i.byteLength;
        }
      },
      r.place,
      compute,
    );
  },
};

function floatDtype(r: TensorReader, info: TensorInfo): WeightDType {
  const d = FLOAT_DTYPES[info.dtype];
  if (!d) {
    r.fail(`${r.label}: tensor "${info.name}" is ${info.dtype}; weights must be F32, F16 or BF16`);
    return 'f32';
  }
  return d;
}
