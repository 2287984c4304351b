// `sparsevila chat`: an interactive multi-turn chat about images in the terminal. Each line read
// is a question; the images are encoded and prefilled once, every turn reuses them. A question the
// model refuses (too long, ...) is answered with the reason and the chat goes on; Ctrl-C stops an
// answer, and at the prompt (or a second time) it ends the chat.
import path from 'node:path';
import { createInterface } from 'node:readline';
import { VisionLanguageModel } from '../engine/vlm.js';
import { InputError } from '../base/errors.js';
import { MethodFlags, checkMethodFlags, checkPaths, cliWarning, LoadFlags, loadOptionsOf, methodOf, perLayer, visualInputs } from './run.js';
import { modelDir } from '../default-model.js';
import { EXIT_INTERRUPTED, Interrupts } from './interrupt.js';
import { setExitCode } from './exit.js';

export interface ChatOptions extends MethodFlags, LoadFlags {
  model?: string;
  image?: string[];
  frames?: string[];
  mode: 'chat' | 'independent';
  maxNewTokens: number;
  temperature: number;
  topK?: number;
  topP?: number;
  seed: number;
  heatmap?: string;
}

export async function chatCommand(o: ChatOptions): Promise<void> {
  const input = visualInputs(o);
  const sparsity = methodOf(o, input.video);
  checkPaths(input, o.heatmap);
  const tty = process.stdin.isTTY && process.stdout.isTTY;
  if (tty) process.stderr.write('loading the model…\n');
  const model = await VisionLanguageModel.load(modelDir(o.model), loadOptionsOf(o));
  let session: ReturnType<VisionLanguageModel['session']> | null = null;
  const rl = createInterface({ input: process.stdin, output: tty ? process.stdout : undefined, terminal: tty });
  const interrupts = new Interrupts(() => {
    // Ctrl-C at the prompt ends the chat.
    process.stderr.write('\n');
    setExitCode(EXIT_INTERRUPTED);
    rl.close();
  }, [rl]);
  try {
    checkMethodFlags(o, model);
    if (model.takesImages && input.files.length === 0) cliWarning('no --image given: the conversation is about the text alone');
    session = model.session(input.files, { mode: o.mode, prefillSparsity: sparsity.reducer ? undefined : sparsity.prefill, prefill: sparsity.reducer });
    const prompt = () => {
      if (!tty) return;
      rl.setPrompt('> ');
      rl.prompt();
    };
    if (tty)
      process.stderr.write(
        `${o.mode} session about ${input.files.length} ${input.video ? 'frame' : 'image'}(s); ask a question, an empty line or Ctrl-D ends, Ctrl-C stops an answer.\n`,
      );
    prompt();
    let turn = 0;
    for await (const line of rl) {
      const q = line.trim();
      if (!q) break;
      turn++;
      let r;
      try {
        r = await session.ask(q, {
          maxNewTokens: o.maxNewTokens,
          temperature: o.temperature,
          topK: o.topK,
          topP: o.topP,
          seed: o.seed + turn - 1,
          signal: interrupts.begin(),
          decodeSparsity: sparsity.decodeMethod ? undefined : sparsity.decode,
          decode: sparsity.decodeMethod,
          onToken: (t) => process.stdout.write(t),
        });
      } catch (e) {
        // A refused question leaves the session as it was: say why and take the next one.
        if (!(e instanceof InputError)) throw e;
        process.stdout.write('\n');
        console.error(`sparsevila: ${e.message}`);
        turn--;
        prompt();
        continue;
      } finally {
        interrupts.end();
      }
      const s = r.stats;
      process.stdout.write('\n');
      console.error(
        `[turn ${turn}, ${r.finishReason}${r.finishReason === 'abort' ? ': stopped by Ctrl-C' : ''}] prompt ${s.promptTokens} tokens, ${s.prefilledTokens} prefilled` +
          `${s.historyTurnsDropped ? ` (dropped the ${s.historyTurnsDropped} oldest turn${s.historyTurnsDropped === 1 ? '' : 's'} to fit the context window of ${model.contextWindow})` : ''} | ` +
          `image ${s.imageCached ? 'from the session cache' : `encoded in ${s.imageMs.toFixed(0)} ms`} | visual tokens ${s.visualTokensIn} in, ${s.imageTokens} kept, ` +
          `${perLayer(s.visualTokensPerLayer)} per layer in decode | prefill ${s.prefillMs.toFixed(0)} ms | decode ${s.newTokens} tokens, ${s.decodeTokensPerSecond.toFixed(1)} tok/s | ` +
          `KV read per step ${(s.kvBytesPerStep / 2 ** 20).toFixed(1)} MiB`,
      );
      if (o.heatmap && r.visual) {
        const ext = path.extname(o.heatmap);
        try {
          for (const h of await model.writeHeatmaps(`${o.heatmap.slice(0, o.heatmap.length - ext.length)}-turn${turn}${ext}`, input.files, r))
            console.error(`heatmap: ${h}`);
        } catch (e) {
          if (!(e instanceof InputError)) throw e;
          console.error(`sparsevila: --heatmap: ${e.message}`);
        }
      }
      prompt();
    }
  } finally {
    interrupts.dispose();
    rl.close();
    session?.close();
    await model.close();
  }
}
