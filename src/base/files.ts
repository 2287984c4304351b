// Reading and writing the user's files without surprises: only regular files are read (a folder,
// a device such as /dev/zero, a FIFO or a socket is refused without blocking on it), every read is
// bounded, JSON errors name the file, line and column with invisible characters made visible, and
// output paths are checked before any work starts. Node only (the browser has no paths).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { FileError, InputError } from './errors.js';

/** The error a caller wants its file problems as (its own InputError subclass; default FileError). */
export type ErrorClass = new (message: string) => InputError;

/** Options of the readers: the file is optional, its size bound, what it is (for messages), the error class. */
export interface ReadOptions {
  required?: boolean;
  maxBytes?: number;
  what?: string;
  error?: ErrorClass;
}

/** Bytes a small settings file (config, tokenizer, template, JSON) may have. */
export const MAX_SETTINGS_FILE_BYTES = 256 * 2 ** 20;

const O_NONBLOCK = (fs.constants as { O_NONBLOCK?: number }).O_NONBLOCK ?? 0;

/** What a stat says a path is, in words ("a folder", "a character device", ...). */
function kind(st: fs.Stats): string {
  if (st.isDirectory()) return 'a folder';
  if (st.isCharacterDevice()) return 'a character device';
  if (st.isBlockDevice()) return 'a block device';
  if (st.isFIFO()) return 'a named pipe (FIFO)';
  if (st.isSocket()) return 'a socket';
  if (st.isFile()) return 'a file';
  return 'not a regular file';
}

/** The system's message without the errno prefix Node adds ("ENOENT: no such file or directory, open 'x'"). */
function reason(e: unknown): string {
  const err = e as NodeJS.ErrnoException;
  switch (err.code) {
    case 'ENOENT':
      return 'no such file or folder';
    case 'EACCES':
    case 'EPERM':
      return 'permission denied';
    case 'ENOTDIR':
      return 'a part of the path is not a folder';
    case 'EISDIR':
      return 'it is a folder';
    case 'ENAMETOOLONG':
      return 'the path is too long';
    case 'ELOOP':
      return 'too many symbolic links';
    case 'ENOSPC':
      return 'no space left on the device';
    case 'EROFS':
      return 'read-only file system';
    case 'EEXIST':
      return 'it already exists';
    case 'ENXIO':
      return 'no such device (a socket or a device without a reader)';
    default:
      return err.code ? `${err.code}: ${err.message.replace(/^[A-Z]+: /, '')}` : String(err.message ?? e);
  }
}

/**
 * Opens a regular file for reading and returns its descriptor and size. The open does not block
 * (a FIFO without a writer would), and what is not a regular file is refused.
 */
export function openRegularFile(file: string, what = 'file', E: ErrorClass = FileError): { fd: number; size: number } {
  let fd: number;
  try {
    fd = fs.openSync(file, fs.constants.O_RDONLY | O_NONBLOCK);
  } catch (e) {
    throw new E(`${file}: cannot open the ${what}: ${reason(e)}`);
  }
  let st: fs.Stats;
  try {
    st = fs.fstatSync(fd);
  } catch (e) {
    fs.closeSync(fd);
    throw new E(`${file}: cannot read the ${what}: ${reason(e)}`);
  }
  try {
    checkRegular(st, file, what, E);
  } catch (e) {
    fs.closeSync(fd);
    throw e;
  }
  return { fd, size: st.size };
}

/** The checks every read makes on the opened file: a regular file, of at most `maxBytes`. */
function checkRegular(st: fs.Stats, file: string, what: string, E: ErrorClass, maxBytes = Infinity, limitName?: string): void {
  if (!st.isFile()) throw new E(`${file}: the ${what} is ${kind(st)}, not a regular file`);
  if (st.size > maxBytes) throw new E(`${file}: the ${what} has ${st.size} bytes, more than the ${maxBytes} allowed${limitName ? ` (${limitName})` : ''}`);
}

/** Reads `length` bytes at `position`, looping over short reads. */
function readAt(fd: number, dest: Uint8Array, position: number, file: string, what: string, E: ErrorClass): void {
  let done = 0;
  while (done < dest.length) {
    let got: number;
    try {
      got = fs.readSync(fd, dest, done, Math.min(dest.length - done, 1 << 30), position + done);
    } catch (e) {
      throw new E(`${file}: cannot read the ${what}: ${reason(e)}`);
    }
    if (got === 0) throw new E(`${file}: the ${what} ended early (read ${done} of ${dest.length} bytes)`);
    done += got;
  }
}

/** Reads a whole regular file of at most `maxBytes` bytes (see openRegularFile). */
export function readRegularFile(file: string, maxBytes: number, what = 'file', E: ErrorClass = FileError): Buffer {
  const { fd, size } = openRegularFile(file, what, E);
  try {
    if (size > maxBytes) throw new E(`${file}: the ${what} has ${size} bytes, more than the ${maxBytes} allowed`);
    const out = Buffer.alloc(size);
    readAt(fd, out, 0, file, what, E);
    return out;
  } finally {
    fs.closeSync(fd);
  }
}

/** readRegularFile as UTF-8 text (a byte-order mark is dropped); undefined when the file does not exist and is optional. */
export function readTextFile(file: string, opts: ReadOptions = {}): string | undefined {
  if (opts.required === false && !pathExists(file)) return undefined;
  const text = readRegularFile(file, opts.maxBytes ?? MAX_SETTINGS_FILE_BYTES, opts.what ?? 'file', opts.error).toString('utf8');
  return text.charCodeAt(0) === 0xfeff ? text.slice(1) : text;
}

/** Whether anything (file, folder, device, dangling link excluded) exists at `p`. */
export function pathExists(p: string): boolean {
  try {
    fs.statSync(p);
    return true;
  } catch {
    return false;
  }
}

/** Whether `p` is a folder (following links). */
export function isFolder(p: string): boolean {
  try {
    return fs.statSync(p).isDirectory();
  } catch {
    return false;
  }
}

/** Characters a message should not carry as they are: controls, format characters (BOM, zero-width), separators. */
const INVISIBLE = /[\p{Cc}\p{Cf}\p{Zl}\p{Zp}\u00a0\u3000]/gu;

const codePoint = (cp: number): string => `U+${cp.toString(16).toUpperCase().padStart(4, '0')}`;

/** `s` with invisible characters written as U+XXXX (a message must show what is wrong). */
export function visible(s: string): string {
  return s.replace(INVISIBLE, (c) => codePoint(c.codePointAt(0)!));
}

/** One character for a message: quoted when it can be seen, else its code point (U+FEFF, ...). */
function describeChar(cp: number): string {
  const c = String.fromCodePoint(cp);
  return visible(c) === c ? JSON.stringify(c) : `${codePoint(cp)} (an invisible character)`;
}

/**
 * JSON.parse with an error that names the source, the line and column, and the character found
 * (invisible ones spelled out). A leading byte-order mark is dropped first, as editors add one.
 */
export function parseJson(text: string, source: string, E: ErrorClass = FileError): unknown {
  const t = text.charCodeAt(0) === 0xfeff ? text.slice(1) : text;
  try {
    return JSON.parse(t);
  } catch (e) {
    const msg = (e as Error).message;
    const m = /position (\d+)/.exec(msg);
    if (t.trim() === '') throw new E(`${source}: the file is empty, expected JSON`);
    if (m) {
      const pos = Number(m[1]);
      const before = t.slice(0, pos);
      const line = before.split('\n').length,
        col = pos - before.lastIndexOf('\n');
      const ch = t.codePointAt(pos);
      const found = ch === undefined ? 'end of the text' : describeChar(ch);
      throw new E(`${source}: invalid JSON at line ${line}, column ${col}: unexpected ${found}`);
    }
    // Node's message then quotes the text itself: say where it goes wrong in our own words.
    const first = t.trimStart().codePointAt(0);
    if (first !== undefined && !'{["-0123456789tfn'.includes(String.fromCodePoint(first))) {
      throw new E(`${source}: invalid JSON: the text starts with ${describeChar(first)}, not a JSON value`);
    }
    throw new E(
      `${source}: invalid JSON: ${visible(msg.split('\n')[0])
        .replace(/\uFFFD/g, 'U+FFFD')
        .slice(0, 200)}`,
    );
  }
}

/**
 * Reads and parses a JSON file (bounded, regular files only); undefined when it does not exist and
 * is optional. Problems are FileErrors naming the file.
 */
export function readJsonFile(file: string, opts: ReadOptions = {}): unknown {
  const text = readTextFile(file, opts);
  if (text === undefined) return undefined;
  return parseJson(text, file, opts.error);
}

/** Like readJsonFile, and the value must be a JSON object. */
export function readJsonObjectFile(file: string, opts: ReadOptions = {}): Record<string, unknown> | undefined {
  const v = readJsonFile(file, opts);
  if (v === undefined) return undefined;
  if (v === null || typeof v !== 'object' || Array.isArray(v)) {
    throw new (opts.error ?? FileError)(`${file}: expected a JSON object, found ${v === null ? 'null' : Array.isArray(v) ? 'an array' : typeof v}`);
  }
  return v as Record<string, unknown>;
}

/** `flag value: ` when a flag is given (messages about paths the user typed), else `value: `. */
function label(p: string, flag?: string): string {
  return flag ? `${flag} ${p}: ` : `${p}: `;
}

/**
 * Creates a folder and its missing parents, one level at a time (Node's recursive mkdir can spin
 * forever on some pseudo file systems such as /proc). Errors name the path and the flag.
 */
export function ensureOutputDir(dir: string, flag?: string): void {
  const abs = path.resolve(dir);
  const missing: string[] = [];
  let p = abs;
  for (;;) {
    let st: fs.Stats | null = null;
    try {
      st = fs.statSync(p);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      // ENOTDIR: an ancestor is a file; walking up finds it and says so.
      if (code !== 'ENOENT' && code !== 'ENOTDIR') throw new FileError(`${label(dir, flag)}cannot use the folder ${p}: ${reason(e)}`);
    }
    if (st) {
      if (!st.isDirectory()) throw new FileError(`${label(dir, flag)}${p} exists and is ${kind(st)}, not a folder`);
      break;
    }
    missing.push(p);
    const up = path.dirname(p);
    if (up === p) break;
    p = up;
  }
  for (const m of missing.reverse()) {
    try {
      fs.mkdirSync(m);
    } catch (e) {
      throw new FileError(`${label(dir, flag)}cannot create the folder ${m}: ${reason(e)}`);
    }
    if (!isFolder(m)) throw new FileError(`${label(dir, flag)}cannot create the folder ${m}: it does not appear after creation`);
  }
  try {
    fs.accessSync(abs, fs.constants.W_OK);
  } catch (e) {
    throw new FileError(`${label(dir, flag)}cannot write into the folder: ${reason(e)}`);
  }
}

/**
 * Checks, before any work, that a file can be written at `file`: its folder exists and is
 * writable, and the path is not a folder or anything but a regular file.
 */
export function checkOutputFile(file: string, flag?: string): void {
  if (file === '') throw new FileError(`${flag ?? 'output'}: the file name is empty`);
  const abs = path.resolve(file);
  try {
    const st = fs.statSync(abs);
    if (!st.isFile()) throw new FileError(`${label(file, flag)}the path is ${kind(st)}, not a file that can be written`);
  } catch (e) {
    if (e instanceof FileError) throw e;
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw new FileError(`${label(file, flag)}${reason(e)}`);
  }
  const dir = path.dirname(abs);
  let st: fs.Stats;
  try {
    st = fs.statSync(dir);
  } catch (e) {
    throw new FileError(`${label(file, flag)}its folder ${dir} cannot be used: ${reason(e)}`);
  }
  if (!st.isDirectory()) throw new FileError(`${label(file, flag)}${dir} is ${kind(st)}, not a folder`);
  try {
    fs.accessSync(dir, fs.constants.W_OK);
  } catch (e) {
    throw new FileError(`${label(file, flag)}cannot write into ${dir}: ${reason(e)}`);
  }
}

/** Writes a whole file, with an error naming the path (and the flag the user gave it with). */
export function writeFileChecked(file: string, data: string | Uint8Array, flag?: string): void {
  try {
    fs.writeFileSync(file, data);
  } catch (e) {
    throw new FileError(`${label(file, flag)}cannot write the file: ${reason(e)}`);
  }
}

/** readRegularFile without blocking the event loop (images). */
export async function readRegularFileAsync(file: string, maxBytes: number, what = 'file', limitName?: string, E: ErrorClass = FileError): Promise<Buffer> {
  let h: fs.promises.FileHandle;
  try {
    h = await fs.promises.open(file, fs.constants.O_RDONLY | O_NONBLOCK);
  } catch (e) {
    throw new E(`${file}: cannot open the ${what}: ${reason(e)}`);
  }
  try {
    let st: fs.Stats;
    try {
      st = await h.stat();
    } catch (e) {
      throw new E(`${file}: cannot read the ${what}: ${reason(e)}`);
    }
    checkRegular(st, file, what, E, maxBytes, limitName);
    const out = Buffer.alloc(st.size);
    let done = 0;
    while (done < out.length) {
      let got: number;
      try {
        ({ bytesRead: got } = await h.read(out, done, out.length - done, done));
      } catch (e) {
        throw new E(`${file}: cannot read the ${what}: ${reason(e)}`);
      }
      if (got === 0) throw new E(`${file}: the ${what} ended early (read ${done} of ${out.length} bytes)`);
      done += got;
    }
    return out;
  } finally {
    await h.close();
  }
}

/** Checks, before any work, that a file the user named can be read: it exists and is a regular file. */
export function checkInputFile(file: string, flag?: string, what = 'file'): void {
  let fd: number;
  try {
    fd = openRegularFile(file, what, FileError).fd;
  } catch (e) {
    throw new FileError(flag ? `${flag} ${(e as Error).message}` : (e as Error).message);
  }
  fs.closeSync(fd);
}
