// Shapes the backend's kernels take, checked when a model is loaded so that a config outside them
// is a clear error naming the setting instead of a failure deep in a forward pass.
import { ConfigError } from '../formats/config.js';
import { KernelBackend } from '../kernels/backend.js';

/** Throws a ConfigError (prefixed by `what`, which names the setting) for a head dimension the backend's attention does not take. */
export function checkHeadDim(backend: KernelBackend, d: number, what: string): void {
  if (!Number.isInteger(d) || d < 4 || d % 4 !== 0 || d > backend.maxHeadDim) {
    throw new ConfigError(`${what} is ${d}; the attention kernels take multiples of 4 up to ${backend.maxHeadDim}`);
  }
}
