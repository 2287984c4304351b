// `sparsevila quantize`: a model folder to a 4-bit AutoAWQ GEMM checkpoint (see quantize/).
import cliProgress from 'cli-progress';
import { modelDir } from '../default-model.js';
import { ensureOutputDir } from '../base/files.js';
import { quantizeModel } from '../quantize/quantize-model.js';
import { cliWarning } from './run.js';

export interface QuantizeCliOptions {
  model?: string;
  out: string;
  method: 'rtn';
  groupSize: number;
}

export async function quantizeCommand(o: QuantizeCliOptions): Promise<void> {
  const dir = modelDir(o.model);
  ensureOutputDir(o.out, '--out');
  const bar = process.stderr.isTTY
    ? new cliProgress.SingleBar(
        { format: ' quantizing [{bar}] {value}/{total} linears | layer {layer}', stream: process.stderr, clearOnComplete: true, hideCursor: true },
        cliProgress.Presets.shades_classic,
      )
    : null;
  let started = false;
  const r = await quantizeModel(dir, o.out, {
    method: o.method,
    groupSize: o.groupSize,
    onWarning: cliWarning,
    onProgress: (done, total, layer) => {
      if (!bar) return;
      if (!started) {
        bar.start(total, 0, { layer });
        started = true;
      }
      bar.update(done, { layer });
    },
  });
  bar?.stop();
  const mib = (b: number) => (b / 2 ** 20).toFixed(1);
  console.log(
    `wrote ${r.out}: ${r.linears} decoder linears in 4 bits (${o.method}, group ${r.groupSize})${r.keptLinears ? `, ${r.keptLinears} kept as stored` : ''}, weights ${mib(r.bytesIn)} MiB -> ${mib(r.bytesOut)} MiB (AutoAWQ GEMM format)`,
  );
}
