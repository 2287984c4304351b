// `sparsevila quantize`: a model folder in, an AutoAWQ "GEMM" checkpoint out (the format of
// Hugging Face `quant_method: "awq"` folders, which transformers and vLLM load too). Only the
// language model's decoder linears become 4-bit; the vision tower, the projector, embeddings,
// norms and lm_head keep their stored dtype, as in the paper. The decoder says which linears it
// has (LanguageDecoder.linearGroups), so this works for every family whose decoder does.
import fs from 'node:fs';
import path from 'node:path';
import { Checkpoint } from '../formats/checkpoint.js';
import { TensorToWrite, readTensorF32, writeSafetensors } from '../formats/safetensors.js';
import { MetaBackend } from '../kernels/meta-backend.js';
import { WeightLoader } from '../model/weights.js';
import { LinearGroup } from '../model/decoder.js';
import { Problems } from '../base/problems.js';
import { InputError, OptionError } from '../base/errors.js';
import { readJsonFile } from '../base/files.js';
import { readModelFiles, completeFiles } from '../engine/model-folder.js';
import { loadWeights, openWeights } from '../engine/weights-of.js';
import { QuantizedLinear, packAwqGemm, quantizeInt4 } from './int4.js';
import { AwqResult, awqTransform } from './awq.js';
import { VisionLanguageModel } from '../engine/vlm.js';
import { ImageInput } from '../engine/options.js';
import { embedPrompt } from '../model/embed-prompt.js';
import { densePrefill } from '../sparsity/method.js';

export class QuantizeError extends InputError {}

/** One calibration prompt: images (paths, bytes or decoded) and a user turn. */
export interface CalibrationSample {
  images?: ImageInput[];
  prompt: string;
}

export interface QuantizeOptions {
  /**
   * `rtn`: round to nearest per group (AWQ's quantizer alone). `awq`: the scale and clip searches
   * on calibration inputs first (see awq.ts), then the same rounding.
   */
  method: 'rtn' | 'awq';
  /** awq: the prompts whose activations drive the searches. */
  calibration?: CalibrationSample[];
  /** awq: at most this many input rows per linear group are kept for the scale search (default 4096). */
  maxRows?: number;
  /** Threads of the backend the awq searches run on. */
  threads?: number;
  /** Inputs per scale group (default 128). */
  groupSize?: number;
  /** After each group of linears: how many are done, of how many, and which layer. */
  onProgress?: (done: number, total: number, layer: number) => void;
  /** awq: after each group's scale or clip search: how many are done, of how many, and the layer. */
  onSearch?: (done: number, total: number, layer: number) => void;
  /** Called with warnings (e.g. the model is not made smaller much). */
  onWarning?: (message: string) => void;
}

export interface QuantizeReport {
  out: string;
  /** Decoder linears written in 4 bits, and those kept as stored (sizes the format cannot group). */
  linears: number;
  keptLinears: number;
  groupSize: number;
  bytesIn: number;
  bytesOut: number;
  /** awq: the α the scale search chose per linear group (null: not searched). */
  alphas?: (number | null)[];
}

/** The decoder linears of a model folder, in groups by shared input (a check-mode load: nothing is read). */
export async function decoderLinearGroups(dir: string): Promise<{ groups: LinearGroup[]; ck: Checkpoint }> {
  const problems = new Problems(false);
  const files = completeFiles(readModelFiles(dir, problems));
  const ck = openWeights(dir, files.family, files.config);
  try {
    const loader = new WeightLoader(new MetaBackend(), ck, dir, { check: new Problems(true) });
    const { decoder } = await loadWeights(loader, files.family, files.config, ck.names());
    return { groups: decoder.linearGroups(), ck };
  } catch (e) {
    ck.close();
    throw e;
  }
}

/**
 * Quantizes the decoder linears of the model in `dir` and writes the whole model, 4-bit, to `out`
 * (config.json gains AutoAWQ's quantization_config; the other files are copied).
 */
export async function quantizeModel(dir: string, out: string, opts: QuantizeOptions): Promise<QuantizeReport> {
  const G = opts.groupSize ?? 128;
  if (opts.method !== 'rtn' && opts.method !== 'awq') throw new OptionError(`quantize: unknown method ${JSON.stringify(opts.method)} (expected rtn or awq)`);
  if (opts.method === 'awq' && !opts.calibration?.length) throw new OptionError('quantize: awq needs calibration prompts (--calib FILE)');
  if (!Number.isInteger(G) || G < 32 || G % 32 !== 0) throw new OptionError(`--group-size must be a multiple of 32, got ${G}`);
  if (path.resolve(out) === path.resolve(dir)) throw new OptionError('quantize: --out must be another folder than --model');
  const { groups, ck } = await decoderLinearGroups(dir);
  try {
    const all = groups.flatMap((g) => g.linears);
    for (const l of all) {
      if (!ck.has(`${l.base}.weight`))
        throw new QuantizeError(
          ck.has(`${l.base}.qweight`) ? `${dir}: "${l.base}" is already quantized` : `${dir}: the checkpoint has no "${l.base}.weight" to quantize`,
        );
    }
    // A linear whose sizes the format cannot group (inputs not a multiple of G, outputs not of 8)
    // stays as stored, listed in modules_to_not_convert (transformers and vLLM skip it too).
    const fits = (l: { in: number; out: number }) => l.in % G === 0 && l.out % 8 === 0;
    const kept = all.filter((l) => !fits(l));
    if (kept.length === all.length)
      throw new QuantizeError(
        `${dir}: no decoder linear fits group size ${G} (input sizes ${[...new Set(all.map((l) => l.in))].join(', ')}; try --group-size 64 or 32)`,
      );
    if (kept.length) {
      const sizes = [...new Set(kept.map((l) => `${l.base.split('.').pop()} (${l.in} inputs, ${l.out} outputs)`))];
      opts.onWarning?.(
        `${kept.length} of ${all.length} decoder linears stay as stored: ${sizes.join(', ')} cannot be grouped by ${G} (inputs) and 8 (outputs)`,
      );
    }
    let awq: AwqResult | null = null;
    if (opts.method === 'awq') awq = await awqFor(dir, groups, G, ck, opts);
    const quantized = new Map<string, QuantizedLinear>();
    const total = all.length - kept.length;
    let done = 0;
    for (const g of groups) {
      for (const l of g.linears.filter(fits)) {
        quantized.set(l.base, quantizeInt4(awq?.weights.get(l.base) ?? readTensorF32(ck, `${l.base}.weight`), l.out, l.in, G));
        opts.onProgress?.(++done, total, g.layer);
      }
    }
    // Tensors AWQ changed that stay float (norm weights, biases, an unquantized previous linear).
    const overrides = new Map<string, Float32Array>(awq?.tensors);
    for (const [base, w] of awq?.weights ?? []) if (!quantized.has(base)) overrides.set(`${base}.weight`, w);
    const tensors = checkpointTensors(ck, quantized, overrides);
    // One model.safetensors per folder that held weights (VILA: llm/, vision_tower/,
    // mm_projector/), with the names stored there; shards are merged.
    const byFolder = new Map<string, TensorToWrite[]>();
    for (const t of tensors) {
      const at = ck.location(t.from);
      const rel = path.relative(dir, path.dirname(at.file.path));
      const prefix = t.from.slice(0, t.from.length - at.stored.length);
      const list = byFolder.get(rel) ?? [];
      list.push({ name: t.name.slice(prefix.length), dtype: t.dtype, shape: t.shape, data: t.data });
      byFolder.set(rel, list);
    }
    for (const [rel, list] of byFolder) {
      fs.mkdirSync(path.join(out, rel), { recursive: true });
      writeSafetensors(path.join(out, rel, 'model.safetensors'), list, { format: 'pt', quantized_by: `sparsevila quantize (${opts.method})` });
    }
    // The quantization config goes with the quantized tensors' folder (VILA: llm/config.json).
    const quantFolder = path.relative(dir, path.dirname(ck.location(`${[...quantized.keys()][0]}.weight`).file.path));
    copyFolder(
      dir,
      out,
      ck,
      G,
      [...quantized.keys()],
      kept.map((l) => l.base),
      quantFolder,
    );
    return {
      out,
      linears: quantized.size,
      keptLinears: kept.length,
      groupSize: G,
      bytesIn: ck.names().reduce((a, n) => a + ck.info(n).byteLength, 0),
      bytesOut: tensors.reduce((a, t) => a + t.data.byteLength, 0),
      alphas: awq?.alphas,
    };
  } finally {
    ck.close();
  }
}

/**
 * The output checkpoint's tensors, each with the checkpoint tensor it comes `from`: each quantized
 * linear's weight replaced by its AWQ GEMM tensors,
 * `overrides` (f32, e.g. norm weights AWQ folded scales into) in F32, the rest as stored.
 */
export function checkpointTensors(
  ck: Checkpoint,
  quantized: ReadonlyMap<string, QuantizedLinear>,
  overrides?: ReadonlyMap<string, Float32Array>,
): (TensorToWrite & { from: string })[] {
  const out: (TensorToWrite & { from: string })[] = [];
  for (const name of ck.names()) {
    const f = overrides?.get(name);
    if (f) {
      out.push({ name, from: name, dtype: 'F32', shape: ck.info(name).shape, data: new Uint8Array(f.buffer, f.byteOffset, f.byteLength) });
      continue;
    }
    const base = name.endsWith('.weight') ? name.slice(0, -'.weight'.length) : null;
    const q = base !== null ? quantized.get(base) : undefined;
    if (q) {
      const p = packAwqGemm(q);
      out.push(
        { name: `${base}.qweight`, from: name, dtype: 'I32', shape: [q.K, q.N / 8], data: p.qweight },
        { name: `${base}.qzeros`, from: name, dtype: 'I32', shape: [q.K / q.G, q.N / 8], data: p.qzeros },
        { name: `${base}.scales`, from: name, dtype: 'F16', shape: [q.K / q.G, q.N], data: p.scales },
      );
      continue;
    }
    const info = ck.info(name);
    const data = new Uint8Array(info.byteLength);
    ck.readInto(name, data);
    out.push({ name, from: name, dtype: info.dtype, shape: info.shape, data });
  }
  return out;
}

/**
 * AWQ's searches: the calibration prompts run once through the model as stored, capturing each
 * linear group's inputs (at most maxRows per group, spread over the prompts), then awqTransform.
 */
export async function awqFor(
  dir: string,
  groups: LinearGroup[],
  G: number,
  ck: Checkpoint,
  opts: Pick<QuantizeOptions, 'calibration' | 'maxRows' | 'threads' | 'onWarning' | 'onSearch'> & { clip?: boolean },
): Promise<AwqResult> {
  const samples = opts.calibration!;
  const maxRows = opts.maxRows ?? 4096;
  const perSample = Math.max(1, Math.ceil(maxRows / samples.length));
  const model = await VisionLanguageModel.load(dir, { threads: opts.threads, onWarning: opts.onWarning });
  try {
    const d = model.decoder;
    const perLayer = groups.filter((g) => g.layer === 0).length;
    const rows: Float32Array[][] = groups.map(() => []);
    const imageId = model.config.imageFacts?.tokenId;
    for (const sample of samples) {
      const req = { images: sample.images ?? [], prompt: sample.prompt };
      const images = req.images.length ? await model.imageFeatures(req.images, densePrefill) : [];
      try {
        const ids = await model.promptIds(req, images);
        const x = model.backend.matrix(ids.length, d.hidden, d.place);
        const cache = d.newCache();
        try {
          if (imageId !== undefined && images.length)
            embedPrompt(
              d,
              x,
              ids,
              imageId,
              images.map((i) => i.features),
            );
          else d.embed(x, ids);
          const stride = Math.max(1, Math.floor(ids.length / perSample));
          d.forward(
            x,
            cache,
            0,
            ids.map((_, i) => i),
            {
              onLinearInput: (layer, gi, m) => {
                const all = model.backend.read(m);
                const K = m.cols;
                for (let r = 0; r < m.rows; r += stride) rows[layer * perLayer + gi].push(all.slice(r * K, (r + 1) * K));
              },
            },
          );
        } finally {
          d.freeCache(cache);
          model.backend.free(x);
        }
      } finally {
        for (const i of images) model.backend.free(i.features);
      }
    }
    const inputs = rows.map((r) => {
      const K = r[0]?.length ?? 0;
      const out = new Float32Array(r.length * K);
      r.forEach((v, i) => out.set(v, i * K));
      return out;
    });
    return awqTransform(groups, inputs, {
      groupSize: G,
      read: (n) => readTensorF32(ck, n),
      has: (n) => ck.has(n),
      backend: model.backend,
      onProgress: (done, total, layer) => opts.onSearch?.(done, total, layer),
      clip: opts.clip,
    });
  } finally {
    await model.close();
  }
}

/**
 * Copies the folder's other files (every subfolder too, weights aside) and adds AutoAWQ's
 * quantization_config to the config.json of `quantFolder` (the folder of the quantized tensors,
 * or the top one when it has no config.json).
 */
function copyFolder(dir: string, out: string, ck: Checkpoint, G: number, quantized: string[], keptLinears: string[], quantFolder: string): void {
  // The weights are rewritten: their files (safetensors shards, a .pt state dict) are not copied.
  const weightFiles = new Set(ck.files.map((f) => path.resolve(f.path)));
  const copy = (rel: string) => {
    for (const f of fs.readdirSync(path.join(dir, rel))) {
      const src = path.join(dir, rel, f);
      const st = fs.statSync(src);
      if (st.isDirectory()) {
        fs.mkdirSync(path.join(out, rel, f), { recursive: true });
        copy(path.join(rel, f));
      } else if (st.isFile() && !weightFiles.has(path.resolve(src)) && !f.endsWith('.safetensors') && !f.endsWith('.safetensors.index.json'))
        fs.copyFileSync(src, path.join(out, rel, f));
    }
  };
  copy('');
  const configDir = fs.existsSync(path.join(dir, quantFolder, 'config.json')) ? quantFolder : '';
  const configPath = path.join(dir, configDir, 'config.json');
  const config = readJsonFile(configPath, { what: 'config' }) as Record<string, unknown>;
  // Linear modules outside the decoder that stay as they are (transformers must not convert them),
  // named as in that folder's checkpoint.
  const strip = (name: string) => {
    const at = ck.location(name);
    return name.slice(name.length - at.stored.length);
  };
  const inFolder = (name: string) => path.relative(dir, path.dirname(ck.location(name).file.path)) === configDir;
  const decoderModules = new Set(quantized.map((b) => strip(`${b}.weight`).split('.')[0]));
  const keep = new Set<string>();
  for (const n of ck.names()) {
    if (!inFolder(n)) continue;
    const own = strip(n);
    const top = own.split('.')[0];
    if (own.endsWith('.weight') && ck.info(n).shape.length === 2 && !decoderModules.has(top) && top !== 'lm_head') keep.add(top);
  }
  const keptOwn = keptLinears.map((b) => strip(`${b}.weight`).replace(/\.weight$/, ''));
  config.quantization_config = {
    quant_method: 'awq',
    version: 'gemm',
    bits: 4,
    group_size: G,
    zero_point: true,
    modules_to_not_convert: keep.size || keptOwn.length ? [...[...keep].sort(), ...keptOwn] : null,
  };
  fs.writeFileSync(path.join(out, configDir, 'config.json'), `${JSON.stringify(config, null, 2)}\n`);
}
