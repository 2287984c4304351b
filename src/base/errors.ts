// The error classes every layer shares. An InputError is the user's to fix: a file, a setting, an
// argument or a request that is wrong, with a message that names it and says what was expected.
// Anything else that escapes the engine is a bug in it (the CLI reports it as an internal error).

/** A problem with the input (a file, a config field, a flag, a request), not with the engine. */
export class InputError extends Error {
  constructor(message: string) {
    super(message);
    this.name = new.target.name;
  }
}

/** A file or folder that cannot be read or written as asked: missing, not a regular file, too large, denied. */
export class FileError extends InputError {}

/** An argument or option out of its range (a sampling setting, a sparsity, a thread count, ...). */
export class OptionError extends InputError {}

/** A limit of the machine or of the configured bounds that the input would exceed. */
export class LimitError extends InputError {}
