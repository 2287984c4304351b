// `sparsevila chat`: an interactive multi-turn chat about images in the terminal. Each line read
// is a question; the images are encoded and prefilled once, every turn reuses them.
import path from 'node:path';
import { createInterface } from 'node:readline';
import { VisionLanguageModel } from '../engine/vlm.js';
import { MethodFlags, methodOf, perLayer, visualInputs } from './run.js';
import { modelDir } from '../default-model.js';

export interface ChatOptions extends MethodFlags {
  model?: string;
  image?: string[];
  frames?: string[];
  mode: 'chat' | 'independent';
  maxNewTokens: number;
  temperature: number;
  topK?: number;
  topP?: number;
  seed: number;
  threads?: number;
  heatmap?: string;
}

export async function chatCommand(o: ChatOptions): Promise<void> {
  const input = visualInputs(o);
  const sparsity = methodOf(o, input.video);
  const tty = process.stdin.isTTY && process.stdout.isTTY;
  if (tty) process.stderr.write('loading the model…\n');
  const model = await VisionLanguageModel.load(modelDir(o.model), { threads: o.threads });
  const session = model.session(input.files, { mode: o.mode, prefillSparsity: sparsity.reducer ? undefined : sparsity.prefill, prefill: sparsity.reducer });
  const rl = createInterface({ input: process.stdin, output: tty ? process.stdout : undefined, terminal: tty });
  const prompt = () => { if (tty) rl.setPrompt('> '), rl.prompt(); };
  if (tty) process.stderr.write(`${o.mode} session about ${input.files.length} ${input.video ? 'frame' : 'image'}(s); ask a question, an empty line or Ctrl-D ends.\n`);
  try {
    prompt();
    let turn = 0;
    for await (const line of rl) {
      const q = line.trim();
      if (!q) break;
      turn++;
      const r = await session.ask(q, {
        maxNewTokens: o.maxNewTokens, temperature: o.temperature, topK: o.topK, topP: o.topP, seed: o.seed + turn - 1,
        decodeSparsity: sparsity.decodeMethod ? undefined : sparsity.decode, decode: sparsity.decodeMethod, onToken: (t) => process.stdout.write(t),
      });
      const s = r.stats;
      process.stdout.write('\n');
      console.error(`[turn ${turn}, ${r.finishReason}] prompt ${s.promptTokens} tokens, ${s.prefilledTokens} prefilled | ` +
        `image ${s.imageCached ? 'from the session cache' : `encoded in ${s.imageMs.toFixed(0)} ms`} | visual tokens ${s.visualTokensIn} in, ${s.imageTokens} kept, ` +
        `${perLayer(s.visualTokensPerLayer)} per layer in decode | prefill ${s.prefillMs.toFixed(0)} ms | decode ${s.newTokens} tokens, ${s.decodeTokensPerSecond.toFixed(1)} tok/s | ` +
        `KV read per step ${(s.kvBytesPerStep / 2 ** 20).toFixed(1)} MiB`);
      if (o.heatmap) {
        const ext = path.extname(o.heatmap);
        for (const h of await model.writeHeatmaps(`${o.heatmap.slice(0, o.heatmap.length - ext.length)}-turn${turn}${ext}`, input.files, r)) console.error(`heatmap: ${h}`);
      }
      prompt();
    }
  } finally {
    rl.close();
    session.close();
    await model.close();
  }
}
