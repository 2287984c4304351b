// Checking a model folder without running it: every check loading makes (config, tokenizer, chat
// template rendered on a sample conversation, preprocessor and generation configs, every tensor
// against the config in both directions, the machine's memory), each problem listed instead of
// stopping at the first. The weights are "loaded" onto a MetaBackend: the same code as a real
// load, no tensor data read.
import os from 'node:os';
import { Problems } from '../base/problems.js';
import { LimitError } from '../base/errors.js';
import { FamilyConfig } from '../model/family.js';
import { MetaBackend } from '../kernels/meta-backend.js';
import { WeightLoader } from '../model/weights.js';
import { readModelFiles } from './model-folder.js';
import { loadWeights, openWeights } from './weights-of.js';

export interface Inspection {
  dir: string;
  /** The config's model_type (absent when config.json could not be read). */
  modelType?: string;
  config?: FamilyConfig;
  /** What the engine runs it as, e.g. "llava: CLIP vision tower, MLP projector, llama decoder". */
  family?: string;
  /** Its parts (tower, connector, language model), one line each. */
  parts?: string[];
  files: string[];
  tensors: number;
  parameters: number;
  bytes: number;
  /** Tensor count and bytes per storage dtype. */
  dtypes: Record<string, { tensors: number; bytes: number }>;
  /** Memory places (4 GiB wasm memories) the weights take. */
  memoryPlaces?: number;
  /** How the linear layers are stored ("dense", "awq-gemm", ...), sorted. */
  weightFormats?: string[];
  /** Tensors the family leaves unused on purpose, and why. */
  skipped: { name: string; why: string }[];
  /** Everything loading would refuse, each naming its file, field or tensor. Empty: the folder loads. */
  problems: string[];
  /** What loading would warn about. */
  warnings: string[];
}

/** Runs every check of VisionLanguageModel.load on `dir` and lists every problem found. */
export async function inspectModel(dir: string): Promise<Inspection> {
  const problems = new Problems(true);
  const files = readModelFiles(dir, problems);
  const out: Inspection = { dir, files: [], tensors: 0, parameters: 0, bytes: 0, dtypes: {}, skipped: [], problems: [], warnings: [] };
  if (files.config) {
    out.config = files.config;
    out.modelType = files.config.modelType;
    const d = files.family!.describe(files.config);
    out.family = d.family;
    out.parts = d.parts;
  }
  const ck = problems.attempt(() => openWeights(dir, files.family, files.config));
  if (ck) {
    try {
      const names = ck.names();
      for (const n of names) {
        const t = ck.info(n);
        out.parameters += t.numel;
        out.bytes += t.byteLength;
        const d = (out.dtypes[t.dtype] ??= { tensors: 0, bytes: 0 });
        d.tensors++;
        d.bytes += t.byteLength;
      }
      out.files = ck.files.map((f) => f.path);
      out.tensors = names.length;
      if (out.bytes > os.totalmem()) {
        problems.report(
          new LimitError(
            `${dir}: the weights take ${(out.bytes / 2 ** 30).toFixed(1)} GiB but this machine has ${(os.totalmem() / 2 ** 30).toFixed(1)} GiB of memory`,
          ),
        );
      }
      const config = files.config,
        family = files.family;
      if (config && family && !family.notRunnable) {
        const meta = new MetaBackend();
        const loader = new WeightLoader(meta, ck, dir, { check: problems });
        await problems.attemptAsync(() => loadWeights(loader, family, config, names));
        out.memoryPlaces = meta.places;
        out.skipped = loader.skippedTensors(names);
        out.weightFormats = loader.formats.sort();
      }
    } finally {
      ck.close();
    }
  }
  out.problems = problems.errors.map((e) => e.message);
  out.warnings = [...problems.warnings];
  return out;
}
