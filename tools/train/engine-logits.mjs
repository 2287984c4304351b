// Writes what the engine computes for one scene and question (prompt ids, the preprocessed pixels
// and the logits of every prompt row) as JSON, for tools/train/parity.py to compare the training
// model against. Usage: node tools/train/engine-logits.mjs MODEL_DIR IMAGE.png "question" OUT.json
// (after `npm run build`).
import { writeFileSync } from 'node:fs';
import { VisionLanguageModel } from '../../dist/src/index.js';

const [dir, image, question, out] = process.argv.slice(2);
if (!out) throw new Error('usage: engine-logits.mjs MODEL_DIR IMAGE.png "question" OUT.json');
const model = await VisionLanguageModel.load(dir, { threads: 2 });
const llava = model.llava;
const pixels = await model.pixelValues(image);
const ids = model.promptIds({ images: [image], prompt: question });
const be = model.backend, dec = model.decoder;
const f = llava.imageFeatures(pixels);
const x = be.matrix(ids.length, dec.config.hiddenSize, dec.place);
llava.embedPrompt(x, ids, [f]);
const cache = dec.newCache();
const rows = ids.map((_, i) => i);
const logits = dec.forward(x, cache, 0, rows, { logitRows: rows });
writeFileSync(out, JSON.stringify({ ids, size: Math.round(Math.sqrt(pixels.length / 3)), pixels: Array.from(pixels), logits: Array.from(logits) }));
await model.close();
