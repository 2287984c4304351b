// `sparsevila serve`: the OpenAI-compatible server on a model folder, until SIGTERM or Ctrl-C
// (graceful: waiting requests get 503, running ones finish, then it exits 0).
import path from 'node:path';
import { VisionLanguageModel } from '../engine/vlm.js';
import { OptionError } from '../base/errors.js';
import { SparsevilaServer } from '../serve/server.js';
import { mediaRoot } from '../serve/media.js';
import { modelDir } from '../default-model.js';
import { methodChoiceOf } from '../sparsity/choice.js';
import { LoadFlags, MethodFlags, checkMethodFlags, loadOptionsOf, methodOf } from './run.js';

export interface ServeCliOptions extends LoadFlags, MethodFlags {
  model?: string;
  modelId?: string;
  host: string;
  port: number;
  apiKey?: string;
  allowedMediaRoot?: string;
  allowRemoteMedia?: boolean;
  cacheMemory: number;
  parallel: number;
  maxQueue: number;
  maxBodyBytes: number;
  maxImages: number;
  maxTokens: number;
}

const LOOPBACK = new Set(['127.0.0.1', '::1', 'localhost']);

export async function serveCommand(o: ServeCliOptions): Promise<void> {
  methodOf(o); // the default method's flags, before loading
  const root = o.allowedMediaRoot === undefined ? null : mediaRoot(o.allowedMediaRoot);
  const apiKey = o.apiKey ?? process.env.SPARSEVILA_API_KEY;
  if (apiKey !== undefined && apiKey.length < 8) throw new OptionError('--api-key: use at least 8 characters');
  const dir = modelDir(o.model);
  const model = await VisionLanguageModel.load(dir, loadOptionsOf(o));
  let server: SparsevilaServer | null = null;
  try {
    checkMethodFlags(o, model);
    server = new SparsevilaServer(model, {
      modelId: o.modelId ?? path.basename(path.resolve(dir)),
      apiKey,
      allowedMediaRoot: root,
      allowRemoteMedia: o.allowRemoteMedia === true,
      cacheBytes: o.cacheMemory * 2 ** 20,
      parallel: o.parallel,
      maxQueue: o.maxQueue,
      maxBodyBytes: o.maxBodyBytes,
      maxImages: o.maxImages,
      defaultMaxTokens: o.maxTokens,
      method: methodChoiceOf(o),
    });
    const url = await server.listen(o.host, o.port);
    if (!LOOPBACK.has(o.host) && apiKey === undefined)
      console.error(`sparsevila: warning: listening on ${o.host} without --api-key: anyone who can reach this address can use the model`);
    console.error(`sparsevila: serving ${server.opts.modelId} at ${url}/v1 (POST /v1/chat/completions, GET /v1/models, /health, /metrics)`);
    const s = server;
    await new Promise<void>((resolve) => {
      const stop = () => {
        process.off('SIGTERM', stop);
        process.off('SIGINT', stop);
        console.error('sparsevila: shutting down: finishing the running requests');
        void s.close().then(resolve, resolve);
      };
      process.on('SIGTERM', stop);
      process.on('SIGINT', stop);
    });
  } finally {
    await server?.close();
    await model.close();
  }
}
