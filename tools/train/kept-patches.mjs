// Which patches SparseVILA's query-agnostic prefill pruning keeps on a split written by
// `sparsevila scenes`: the share of the patches inside an object (centre within 0.7 of its radius)
// and of the objects' centre patches (where glyphs are drawn) among the kept tokens.
// Usage: node tools/train/kept-patches.mjs MODEL_DIR SPLIT_DIR PREFILL_SPARSITY [SCENES]
// (after `npm run build`).
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { VisionLanguageModel } from '../../dist/src/index.js';

const [dir, split, p, count = '30'] = process.argv.slice(2);
if (!p) throw new Error('usage: kept-patches.mjs MODEL_DIR SPLIT_DIR PREFILL_SPARSITY [SCENES]');
const episodes = readFileSync(path.join(split, 'episodes.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l)).slice(0, Number(count));
const model = await VisionLanguageModel.load(dir, { threads: 2 });
const { imageSize, patchSize } = model.llava.config.vision;
const grid = imageSize / patchSize;
let inside = 0, insideKept = 0, centres = 0, centresKept = 0, keptPerImage = 0;
for (const e of episodes) {
  if (!e.objects) throw new Error(`${split}/episodes.jsonl: scene ${e.seed} has no objects (write the split with this version of \`sparsevila scenes\`)`);
  const s = model.session([path.join(split, e.image)], { mode: 'chat', prefillSparsity: Number(p) });
  try {
    const r = await s.ask(e.questions[0].question, { maxNewTokens: 1 });
    const kept = new Set(r.visual.kept[0]);
    keptPerImage = kept.size;
    for (const o of e.objects) {
      centres++;
      if (kept.has(Math.floor(o.y / patchSize) * grid + Math.floor(o.x / patchSize))) centresKept++;
      for (let py = 0; py < grid; py++) {
        for (let px = 0; px < grid; px++) {
          if (Math.hypot((px + 0.5) * patchSize - o.x, (py + 0.5) * patchSize - o.y) < 0.7 * o.r) {
            inside++;
            if (kept.has(py * grid + px)) insideKept++;
          }
        }
      }
    }
  } finally {
    s.close();
  }
}
await model.close();
console.log(`prefill sparsity ${p}: ${keptPerImage} of ${grid * grid} tokens kept per image; object-interior patches kept ${(100 * insideKept / inside).toFixed(1)}% (of ${inside}), object centre patches kept ${(100 * centresKept / centres).toFixed(1)}% (of ${centres}), over ${episodes.length} scenes`);
