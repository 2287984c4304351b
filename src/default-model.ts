// The engine's default model: the small LLaVA the project trains on its synthetic scenes
// (tools/train/), shipped in the package under models/, so `run`, `chat` and `eval` work with no
// download.
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { FileError } from './base/errors.js';

/** The default model's folder (Hugging Face layout), inside the installed package. */
export const DEFAULT_MODEL_DIR = fileURLToPath(new URL('../../models/scenes-vlm', import.meta.url));

/** The --model folder, or the default model's when none is given (with a clear error if it is missing). */
export function modelDir(model: string | undefined): string {
  if (model !== undefined) return model;
  if (!existsSync(DEFAULT_MODEL_DIR))
    throw new FileError(`no --model given and the default model is missing at ${DEFAULT_MODEL_DIR} (rebuild it with \`npm run train:default\`)`);
  return DEFAULT_MODEL_DIR;
}
