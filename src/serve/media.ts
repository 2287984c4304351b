// The bytes of a request's image_url: a data URL; a file URL under the allowed media root (never a
// file outside it: `..` and symlinks are resolved before the check, and the file is opened without
// following a final symlink); an http(s) URL only when remote media are allowed.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { OptionError } from '../base/errors.js';
import { ApiError } from './errors.js';

export interface MediaOptions {
  /** Folder file URLs may name files under (realpath); null: no file URL is read. */
  allowedMediaRoot: string | null;
  allowRemoteMedia: boolean;
  /** Most bytes of one encoded image. */
  maxImageBytes: number;
  /** Milliseconds a remote fetch may take. */
  remoteTimeoutMs?: number;
}

const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

/** The real path of a media root, checked to be a folder (at startup). */
export function mediaRoot(dir: string): string {
  const real = fs.existsSync(dir) ? fs.realpathSync(dir) : null;
  if (real === null) throw new OptionError(`--allowed-media-root ${dir}: no such folder`);
  if (!fs.statSync(real).isDirectory()) throw new OptionError(`--allowed-media-root ${dir}: not a folder`);
  return real;
}

const inside = (root: string, p: string): boolean => p.startsWith(root.endsWith(path.sep) ? root : root + path.sep);

/** The encoded bytes an image_url names; `param` names the field in errors. */
export async function fetchMedia(url: string, o: MediaOptions, param: string): Promise<Uint8Array> {
  const scheme = /^([a-zA-Z][a-zA-Z0-9+.-]*):/.exec(url)?.[1]?.toLowerCase();
  if (scheme === 'data') return dataUrl(url, o, param);
  if (scheme === 'file') return fileUrl(url, o, param);
  if (scheme === 'http' || scheme === 'https') return remote(url, o, param);
  throw new ApiError(400, `${param}: expected a data:, file: or http(s): URL`, param, 'invalid_image_url');
}

function dataUrl(url: string, o: MediaOptions, param: string): Uint8Array {
  const comma = url.indexOf(',');
  if (comma < 0) throw new ApiError(400, `${param}: a data URL needs a comma before its data`, param, 'invalid_image_url');
  const meta = url.slice(5, comma);
  if (!/;base64$/i.test(meta)) throw new ApiError(400, `${param}: an image data URL must be base64 (data:image/png;base64,...)`, param, 'invalid_image_url');
  const data = url.slice(comma + 1).replace(/\s+/g, '');
  if (Math.floor((data.length * 3) / 4) > o.maxImageBytes + 2)
    throw new ApiError(413, `${param}: the image has more than the ${o.maxImageBytes} bytes allowed (--max-image-bytes)`, param, 'image_too_large');
  if (!BASE64.test(data) || data.length % 4 === 1) throw new ApiError(400, `${param}: the data URL's data is not valid base64`, param, 'invalid_image_url');
  return new Uint8Array(Buffer.from(data, 'base64'));
}

async function fileUrl(url: string, o: MediaOptions, param: string): Promise<Uint8Array> {
  const root = o.allowedMediaRoot;
  if (root === null) throw new ApiError(400, `${param}: file URLs are not allowed (the server has no --allowed-media-root)`, param, 'media_not_allowed');
  let p: string;
  try {
    p = fileURLToPath(url);
  } catch (e) {
    throw new ApiError(400, `${param}: not a valid file URL: ${(e as Error).message}`, param, 'invalid_image_url');
  }
  const outside = () => new ApiError(403, `${param}: the file is outside the allowed media root`, param, 'media_not_allowed');
  // Lexically first (nothing outside is touched), then with every symlink resolved.
  if (!inside(root, path.resolve(p))) throw outside();
  let real: string;
  try {
    real = await fs.promises.realpath(p);
  } catch {
    throw new ApiError(400, `${param}: no such file under the allowed media root`, param, 'invalid_image_url');
  }
  if (!inside(root, real)) throw outside();
  // O_NOFOLLOW: a final component swapped for a symlink after the check is not followed;
  // O_NONBLOCK: a FIFO planted there does not hang the open.
  let h: fs.promises.FileHandle;
  try {
    h = await fs.promises.open(real, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK);
  } catch {
    throw new ApiError(400, `${param}: cannot open the file under the allowed media root`, param, 'invalid_image_url');
  }
  try {
    const st = await h.stat();
    if (!st.isFile()) throw new ApiError(400, `${param}: not a regular file`, param, 'invalid_image_url');
    if (st.size > o.maxImageBytes)
      throw new ApiError(
        413,
        `${param}: the image has ${st.size} bytes, more than the ${o.maxImageBytes} allowed (--max-image-bytes)`,
        param,
        'image_too_large',
      );
    const out = Buffer.alloc(st.size);
    for (let done = 0; done < out.length;) {
      const { bytesRead } = await h.read(out, done, out.length - done, done);
      if (bytesRead === 0) throw new ApiError(400, `${param}: the file ended early`, param, 'invalid_image_url');
      done += bytesRead;
    }
    return new Uint8Array(out);
  } finally {
    await h.close();
  }
}

async function remote(url: string, o: MediaOptions, param: string): Promise<Uint8Array> {
  if (!o.allowRemoteMedia)
    throw new ApiError(400, `${param}: remote image URLs are not allowed (start the server with --allow-remote-media)`, param, 'media_not_allowed');
  let res: Response;
  try {
    res = await fetch(url, { signal: AbortSignal.timeout(o.remoteTimeoutMs ?? 10_000), redirect: 'follow' });
  } catch (e) {
    throw new ApiError(400, `${param}: could not fetch the image: ${(e as Error).message}`, param, 'invalid_image_url');
  }
  if (!res.ok || !res.body) throw new ApiError(400, `${param}: fetching the image gave HTTP ${res.status}`, param, 'invalid_image_url');
  const chunks: Uint8Array[] = [];
  let n = 0;
  for await (const c of res.body as unknown as AsyncIterable<Uint8Array>) {
    n += c.length;
    if (n > o.maxImageBytes) {
      await res.body.cancel().catch(() => undefined);
      throw new ApiError(413, `${param}: the image has more than the ${o.maxImageBytes} bytes allowed (--max-image-bytes)`, param, 'image_too_large');
    }
    chunks.push(c);
  }
  return new Uint8Array(Buffer.concat(chunks));
}
