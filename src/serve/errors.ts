// Errors as OpenAI's API returns them: an HTTP status and { error: { message, type, param, code } }.
import { InputError } from '../base/errors.js';

/** A request the server refuses or cannot serve, with its HTTP status. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly param: string | null = null,
    readonly code: string | null = null,
  ) {
    super(message);
  }
  /** The OpenAI error type of a status. */
  get type(): string {
    if (this.status === 401) return 'authentication_error';
    if (this.status === 404) return 'not_found_error';
    if (this.status === 429) return 'rate_limit_error';
    if (this.status >= 500) return this.status === 503 ? 'service_unavailable_error' : 'server_error';
    return 'invalid_request_error';
  }
  body(): { error: { message: string; type: string; param: string | null; code: string | null } } {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } };
  }
}

/**
 * What a thrown error becomes: an ApiError as it is, a problem with the input (the engine's
 * InputError: a bad image, a prompt past the window, bad options) a 400; anything else a 500 that
 * says no more than that (the details go to the log).
 */
export function apiErrorOf(e: unknown, param: string | null = null): ApiError {
  if (e instanceof ApiError) return e;
  if (e instanceof InputError) {
    const context = /context window/.test(e.message) ? 'context_length_exceeded' : null;
    return new ApiError(400, e.message, param, context);
  }
  return new ApiError(500, 'internal error: the server could not answer this request (see its log)', null, 'internal_error');
}
