// The `sparsevila` command line as a function: main(argv) parses, runs one command and returns the
// exit code. A thin shell: each command calls the library and prints. An InputError (a file, a
// field, a flag the user can fix) is printed as it is and exits 1; anything else is a bug in the
// engine and says so (exit 70). The executable (main.ts) only calls main().
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { readFileSync } from 'node:fs';
import { InputError } from '../base/errors.js';
import { ensureOutputDir } from '../base/files.js';
import { DEFAULT_IMAGE_LIMITS } from '../io/image-types.js';
import { quantizeCommand } from './quantize.js';
import { inspectCommand } from './inspect.js';
import { runtimeInfo } from './info.js';
import { runCommand } from './run.js';
import { METHODS } from '../sparsity/choice.js';
import { chatCommand } from './chat.js';
import { evalCommand } from './eval.js';
import { serveCommand } from './serve.js';
import { writeSplit } from '../data/scenes.js';
import { takeExitCode } from './exit.js';

const pkg = JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version: string; description: string };

/** Exit code of an internal error (sysexits' EX_SOFTWARE). */
export const EXIT_INTERNAL = 70;

const int = (min: number) => (v: string) => {
  const n = Number(v);
  if (v.trim() === '' || !Number.isSafeInteger(n) || n < min) throw new InvalidArgumentError(`expected an integer >= ${min}`);
  return n;
};
const num = (v: string) => {
  const n = Number(v);
  if (v.trim() === '' || !Number.isFinite(n)) throw new InvalidArgumentError('expected a number');
  return n;
};
const nonNegative = (v: string) => {
  const n = num(v);
  if (n < 0) throw new InvalidArgumentError('expected a number >= 0');
  return n;
};
const probability = (v: string) => {
  const n = Number(v);
  if (!(n > 0 && n <= 1)) throw new InvalidArgumentError('expected a number in (0, 1]');
  return n;
};
const unitFraction = probability;
const fraction = (v: string) => {
  const n = Number(v);
  if (v.trim() === '' || !(n >= 0 && n < 1)) throw new InvalidArgumentError('expected a number in [0, 1)');
  return n;
};

/**
 * The flags the generating commands share: the baselines' settings, sampling (run, chat) and the
 * image bounds checked before an image is decoded.
 */
function withOptions(c: Command, o: { sampling: boolean }): Command {
  c.option('--fastv-k <k>', 'fastv: the layer after which visual tokens are dropped (default 2)', int(1))
    .option('--fastv-r <r>', 'fastv: the fraction of visual tokens dropped (default 0.5)', fraction)
    .option('--pdrop-lambda <l>', 'pdrop: the fraction of visual tokens kept at each of its stages (default 0.5)', unitFraction)
    .option(
      '--salience-layer <l>',
      'sparsevila: the vision tower layer (0-based) whose attention ranks the visual tokens (default: the layer that feeds the connector)',
      int(0),
    );
  if (o.sampling) {
    c.option('--temperature <t>', '0 is greedy; > 0 samples', nonNegative, 0)
      .option('--top-k <k>', 'sample among the k most likely tokens', int(0))
      .option('--top-p <p>', 'sample among the most likely tokens up to probability p', probability);
  }
  return c
    .addOption(
      new Option(
        '--vision-compute <how>',
        "the vision tower's matmuls: stored (f32 math over the stored weights) or int16 (12-bit integer weights and activations: ~1.5x faster encode, ~1e-3 relative difference)",
      )
        .choices(['stored', 'int16'])
        .default('stored'),
    )
    .addOption(
      new Option(
        '--int4-activations <type>',
        '4-bit (AWQ) checkpoints: decode quantizes activations per group to 15-bit integers (i16: W4A16) or i8 (W4A8: faster decode, ~1e-2 error)',
      )
        .choices(['i16', 'i8'])
        .default('i16'),
    )
    .option('--max-image-bytes <n>', `largest image file accepted, in bytes (default ${DEFAULT_IMAGE_LIMITS.maxBytes})`, int(1))
    .option('--max-image-pixels <n>', `largest image accepted, width x height (default ${DEFAULT_IMAGE_LIMITS.maxPixels})`, int(1));
}

function build(): Command {
  const program = new Command();
  program
    .name('sparsevila')
    .description(pkg.description)
    .version(pkg.version, '-v, --version')
    .showHelpAfterError('(sparsevila <command> --help lists the flags)')
    .exitOverride();

  withOptions(
    program
      .command('run')
      .description('answer a prompt about an image (streams the answer, then prints timings); Ctrl-C stops the answer')
      .option('--model <dir>', 'model folder (Hugging Face layout: config.json, *.safetensors, tokenizer.json, ...); default: the embedded scenes model')
      .option('--image <file...>', 'image file(s), in the order of the prompt')
      .option(
        '--frames <file...>',
        'a video as image files in time order: each frame is pruned on its own; sparsevila defaults to the video settings (0.75 / 0.9)',
      )
      .requiredOption('--prompt <text>', 'the question')
      .option('--max-new-tokens <n>', 'most tokens to generate (at most what the context window leaves)', int(0), 256)
      .option('--seed <s>', 'sampling seed', int(0), 0)
      .addOption(
        new Option(
          '--method <name>',
          'visual sparsity: dense; sparsevila (prefill pruning + decode retrieval); the baselines fastv, pdrop (inside the LLM prefill), visionzip, prumerge (encoder output), quest (decode)',
        )
          .choices(METHODS)
          .default('dense'),
      )
      .option(
        '--visual-budget <n>',
        'visionzip / prumerge: visual tokens per image (visionzip default 64; prumerge default: its IQR outliers); quest: KV slots per decode step (default 256)',
        int(1),
      )
      .option(
        '--prefill-sparsity <p>',
        "sparsevila: fraction of each image's visual tokens dropped before the LLM, ranked by the vision tower's attention (default 0.6; video 0.75)",
        fraction,
      )
      .option(
        '--decode-sparsity <d>',
        "sparsevila: fraction of the visual tokens each decode step skips, per layer, ranked by the question's attention (default 0.75; video 0.9)",
        fraction,
      )
      .option('--threads <n>', 'threads (default: all cores; more is capped to the cores)', int(1))
      .option('--heatmap <file.png>', 'write the image with the patches kept in prefill and retrieved at decode overlaid, and one grid per layer')
      .option('--json', 'print one JSON object (ids, text, timings) instead of streaming'),
    { sampling: true },
  ).action(runCommand);

  withOptions(
    program
      .command('chat')
      .description(
        'an interactive multi-turn chat about images: one question per line; the images are encoded and prefilled once; Ctrl-C stops an answer, at the prompt it exits',
      )
      .option('--model <dir>', 'model folder (Hugging Face layout); default: the embedded scenes model')
      .option('--image <file...>', 'image file(s) the conversation is about')
      .option('--frames <file...>', 'or a video as image files in time order (sparsevila video defaults 0.75 / 0.9)')
      .addOption(
        new Option(
          '--mode <mode>',
          'chat: history accumulates (the oldest turns are dropped when it no longer fits); independent: each question sees only the images',
        )
          .choices(['chat', 'independent'])
          .default('chat'),
      )
      .addOption(
        new Option(
          '--method <name>',
          'visual sparsity: dense; sparsevila (prefill pruning + decode retrieval per turn); the baselines visionzip, prumerge (encoder output), quest (decode), fastv and pdrop (the first question prunes the cache for good; later ones continue it)',
        )
          .choices(METHODS)
          .default('dense'),
      )
      .option('--visual-budget <n>', 'visionzip / prumerge: visual tokens per image; quest: KV slots per decode step', int(1))
      .option('--prefill-sparsity <p>', "sparsevila: fraction of each image's visual tokens dropped before the LLM (default 0.6)", fraction)
      .option('--decode-sparsity <d>', 'sparsevila: fraction of the visual tokens each decode step skips, retrieved anew per question (default 0.75)', fraction)
      .option('--max-new-tokens <n>', 'most tokens per answer', int(0), 256)
      .option('--seed <s>', 'sampling seed (turn i uses seed + i)', int(0), 0)
      .option('--heatmap <file.png>', 'after each turn, write the image with the kept and retrieved patches overlaid (file-turnN.png)')
      .option('--threads <n>', 'threads (default: all cores; more is capped to the cores)', int(1)),
    { sampling: true },
  ).action(chatCommand);

  withOptions(
    program
      .command('eval')
      .description('exact-match accuracy of a model with a sparsity method over visual-question episodes (per type, turn 1 vs later turns)')
      .option('--model <dir>', 'model folder (Hugging Face layout); default: the embedded scenes model')
      .requiredOption('--data <file>', 'episodes.jsonl (as `sparsevila scenes` writes): { image, questions: [{ type, question, answer }] } per line')
      .addOption(new Option('--method <name>', 'visual sparsity method').choices(METHODS).default('dense'))
      .option('--prefill-sparsity <p>', 'sparsevila: prefill sparsity (default 0.6)', fraction)
      .option('--decode-sparsity <d>', 'sparsevila: decode sparsity (default 0.75)', fraction)
      .option('--visual-budget <n>', 'visionzip / prumerge: visual tokens per image; quest: KV slots per step', int(1))
      .addOption(
        new Option('--mode <mode>', 'independent: each question sees only the image; chat: the earlier turns too')
          .choices(['independent', 'chat'])
          .default('independent'),
      )
      .option('--max-new-tokens <n>', 'most tokens per answer', int(1), 8)
      .option('--threads <n>', 'threads (default: all cores; more is capped to the cores)', int(1))
      .option('--json', 'print one JSON object (the report and every question) instead of the table'),
    { sampling: false },
  ).action(evalCommand);

  withOptions(
    program
      .command('serve')
      .description(
        "an OpenAI-compatible server: POST /v1/chat/completions (streaming or not; images as data URLs, file URLs under --allowed-media-root, http(s) with --allow-remote-media), GET /v1/models, /health, /metrics. Each image's K/V is kept across requests: a resent conversation prefills only its new turn. Requests may choose their sparsity ({ sparsevila: { method, prefill_sparsity, decode_sparsity, mode } }). SIGTERM or Ctrl-C shuts down gracefully",
      )
      .option('--model <dir>', 'model folder (Hugging Face layout); default: the embedded scenes model')
      .option('--model-id <id>', "the id clients give as `model` (default: the model folder's name)")
      .option('--host <addr>', 'address to listen on (loopback by default; another address needs care: see --api-key)', '127.0.0.1')
      .option('--port <n>', 'port (0: any free one)', int(0), 8080)
      .option('--api-key <key>', 'require Authorization: Bearer <key> on every route but /health (or set SPARSEVILA_API_KEY)')
      .option('--allowed-media-root <dir>', 'file:// image URLs may name files under this folder (symlinks and .. resolved first); default: none')
      .option('--allow-remote-media', 'fetch http(s) image URLs (off by default)')
      .option('--cache-memory <MiB>', 'K/V and image rows kept between requests, least recently used evicted first', int(0), 1024)
      .option('--parallel <n>', 'requests generating at once (their decode steps interleave)', int(1), 2)
      .option('--max-queue <n>', 'requests waiting beyond those; more get 429 with Retry-After', int(0), 64)
      .option('--max-body-bytes <n>', 'largest request body (data-URL images included)', int(1024), 64 * 2 ** 20)
      .option('--max-images <n>', 'most images in one request', int(1), 16)
      .option('--max-tokens <n>', 'max_tokens of a request that gives none', int(1), 256)
      .addOption(new Option('--method <name>', 'the sparsity method of requests that name none').choices(METHODS).default('dense'))
      .option('--prefill-sparsity <p>', 'sparsevila default: prefill sparsity (default 0.6)', fraction)
      .option('--decode-sparsity <d>', 'sparsevila default: decode sparsity (default 0.75)', fraction)
      .option('--visual-budget <n>', 'visionzip / prumerge / quest default budget', int(1))
      .option('--threads <n>', 'threads (default: all cores; more is capped to the cores)', int(1)),
    { sampling: false },
  ).action(serveCommand);

  program
    .command('scenes')
    .description("write synthetic visual-QA scenes (the default model's task) with their multi-turn episodes, regenerable by seed")
    .addOption(new Option('--split <name>', 'which seeds').choices(['train', 'validation', 'test']).default('test'))
    .option('--count <n>', 'how many scenes', int(1), 100)
    .requiredOption('--out <dir>', 'folder for <seed>.png and episodes.jsonl')
    .option('--bank', 'also write every question the templates can ask about each scene (for training)')
    .action(async (opts: { split: 'train' | 'validation' | 'test'; count: number; out: string; bank?: boolean }) => {
      ensureOutputDir(opts.out, '--out');
      console.log(await writeSplit(opts.out, opts.split, opts.count, 224, { bank: opts.bank }));
    });

  program
    .command('quantize')
    .description(
      "write a 4-bit copy of a model: its language model's decoder linears quantized per group (AWQ: activation-aware scale and clip searches on calibration prompts, then AWQ's rounding; or rtn: the rounding alone), in AutoAWQ's GEMM format (loads here, in transformers and in vLLM); the vision tower, projector, embeddings and lm_head stay as stored",
    )
    .option('--model <dir>', 'model folder (Hugging Face layout); default: the embedded scenes model')
    .requiredOption('--out <dir>', 'folder to write the quantized model to')
    .addOption(
      new Option('--method <name>', 'awq: scale and clip searches, then rounding; rtn: round to nearest per group').choices(['awq', 'rtn']).default('awq'),
    )
    .option('--group-size <n>', 'inputs per scale group (a multiple of 32 that divides every linear input size)', int(32), 128)
    .option(
      '--calib <file>',
      'awq calibration prompts: an episodes.jsonl (images and questions, as `sparsevila scenes` writes) or one text prompt per line; default for the embedded model: scenes of the training split',
    )
    .option('--calib-samples <n>', 'awq: calibration prompts used at most', int(1), 64)
    .option('--threads <n>', 'threads (default: all cores)', int(1))
    .action(quantizeCommand);

  program
    .command('inspect')
    .description(
      'check a model folder as loading does (config, tokenizer, chat template, preprocessor and generation configs, every tensor against the config) and summarise it; exits 1 listing every problem',
    )
    .argument('<dir>', 'model folder with config.json and model.safetensors (or sharded *.safetensors + index)')
    .option('--json', 'print one JSON object instead of text')
    .action(inspectCommand);

  program
    .command('info')
    .description('show the compute runtime: kernel build (relaxed SIMD or plain SIMD128), threads, memory bandwidth')
    .option('--threads <n>', 'threads to start', int(1))
    .option('--probe', 'also measure read bandwidth and SIMD peak (a few seconds)')
    .option('--json', 'print one JSON object instead of text')
    .action(async (opts: { threads?: number; probe?: boolean; json?: boolean }) => {
      const r = await runtimeInfo(opts);
      console.log(
        opts.json
          ? JSON.stringify(r, null, 2)
          : Object.entries(r)
              .map(([k, v]) => `${k}: ${v}`)
              .join('\n'),
      );
    });
  return program;
}

/** Runs the command line `argv` (without the node and script paths) and returns its exit code. */
export async function main(argv: string[]): Promise<number> {
  takeExitCode();
  try {
    await build().parseAsync(argv, { from: 'user' });
    return takeExitCode();
  } catch (e) {
    if (e instanceof CommanderError) return e.exitCode; // commander printed its message (or the help)
    if (e instanceof InputError) {
      console.error(`sparsevila: ${e.message}`);
      return 1;
    }
    console.error(`sparsevila: internal error (a bug in sparsevila, please report it): ${(e as Error)?.stack ?? String(e)}`);
    return EXIT_INTERNAL;
  }
}
