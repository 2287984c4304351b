// `sparsevila info`: what the compute runtime picked on this machine.
import { WasmBackend } from '../kernels/wasm-backend.js';
import { relaxedSimdSupported } from '../runtime/kernel-module.js';

export async function runtimeInfo(opts: { threads?: number; probe?: boolean }): Promise<Record<string, string | number | boolean>> {
  const relaxed = await relaxedSimdSupported();
  const be = await WasmBackend.create({ threads: opts.threads });
  try {
    const r: Record<string, string | number | boolean> = {
      backend: be.name,
      relaxedSimd: relaxed,
      threads: be.threads,
      node: process.versions.node,
      v8: process.versions.v8,
    };
    if (opts.probe) {
      r.readGBs = Number(be.probeReadBandwidth().toFixed(1));
      r.peakGflops = Number(be.probePeakFlops().toFixed(1));
    }
    return r;
  } finally {
    await be.close();
  }
}
