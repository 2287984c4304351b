// `sparsevila inspect DIR`: validates a checkpoint folder and summarises it.
import { loadConfig, ModelConfig } from '../formats/config.js';
import { Checkpoint } from '../formats/safetensors.js';

export interface Inspection {
  dir: string;
  modelType: string;
  config: ModelConfig;
  files: string[];
  tensors: number;
  parameters: number;
  bytes: number;
  /** Tensor count and bytes per storage dtype. */
  dtypes: Record<string, { tensors: number; bytes: number }>;
}

export function inspectCheckpoint(dir: string): Inspection {
  const config = loadConfig(dir);
  const ck = Checkpoint.open(dir);
  try {
    const dtypes: Inspection['dtypes'] = {};
    let parameters = 0, bytes = 0;
    const names = ck.names();
    for (const n of names) {
      const t = ck.info(n);
      parameters += t.numel;
      bytes += t.byteLength;
      const d = (dtypes[t.dtype] ??= { tensors: 0, bytes: 0 });
      d.tensors++;
      d.bytes += t.byteLength;
    }
    return { dir, modelType: config.modelType, config, files: ck.files.map((f) => f.path), tensors: names.length, parameters, bytes, dtypes };
  } finally {
    ck.close();
  }
}

export function formatInspection(r: Inspection): string {
  const mb = (b: number) => `${(b / 2 ** 20).toFixed(1)} MiB`;
  const lines = [
    `model folder: ${r.dir}`,
    `model type:   ${r.modelType}`,
    `files:        ${r.files.join(', ')}`,
    `tensors:      ${r.tensors} (${r.parameters.toLocaleString('en-US')} parameters, ${mb(r.bytes)})`,
    ...Object.entries(r.dtypes).map(([d, v]) => `  ${d.padEnd(5)} ${String(v.tensors).padStart(5)} tensors, ${mb(v.bytes)}`),
  ];
  const c = r.config;
  if (c.modelType === 'llava') {
    lines.push(`vision:       CLIP ${c.vision.numHiddenLayers} layers, hidden ${c.vision.hiddenSize}, ${c.vision.numAttentionHeads} heads, image ${c.vision.imageSize}, patch ${c.vision.patchSize}`);
    lines.push(`language:     ${c.text.modelType} ${c.text.numHiddenLayers} layers, hidden ${c.text.hiddenSize}, ${c.text.numAttentionHeads} heads / ${c.text.numKeyValueHeads} KV heads, vocab ${c.text.vocabSize}`);
  } else if (c.modelType === 'clip_vision_model') {
    lines.push(`vision:       CLIP ${c.numHiddenLayers} layers, hidden ${c.hiddenSize}, ${c.numAttentionHeads} heads, image ${c.imageSize}, patch ${c.patchSize}`);
  } else {
    lines.push(`language:     ${c.modelType} ${c.numHiddenLayers} layers, hidden ${c.hiddenSize}, ${c.numAttentionHeads} heads / ${c.numKeyValueHeads} KV heads, vocab ${c.vocabSize}`);
  }
  return lines.join('\n');
}
