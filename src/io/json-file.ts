// Reading the small JSON files of a model folder (tokenizer and template configs).
import * as fs from 'node:fs';

export type JsonObject = Record<string, unknown>;

/**
 * The JSON object in `file`; undefined when the file does not exist and is not `required`. Any
 * other problem (unreadable, invalid JSON, not an object) is reported through `fail`, so each
 * caller raises its own error type, naming the file.
 */
export function readJsonObject(file: string, required: boolean, fail: (message: string) => Error): JsonObject | undefined {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' && !required) return undefined;
    if (code === 'ENOENT') throw fail(`file not found: ${file}`);
    throw fail(`cannot read ${file}: ${(e as Error).message}`);
  }
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw fail(`invalid JSON in ${file}: ${(e as Error).message}`);
  }
  if (v === null || typeof v !== 'object' || Array.isArray(v)) throw fail(`${file}: expected a JSON object`);
  return v as JsonObject;
}
