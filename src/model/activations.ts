// Hugging Face activation names (config `hidden_act`, `projector_hidden_act`) to kernel activations.
import { Activation } from '../kernels/backend.js';
import { ConfigError, HF_ACTIVATIONS } from '../formats/config.js';

const KERNEL_ACTIVATION: Record<string, Activation> = {
  silu: 'silu',
  swish: 'silu',
  gelu: 'gelu',
  gelu_pytorch_tanh: 'gelu_pytorch_tanh',
  gelu_new: 'gelu_pytorch_tanh',
  gelu_fast: 'gelu_pytorch_tanh',
  quick_gelu: 'quick_gelu',
};

/** The kernel activation of a config's activation name (parseConfig has checked it is one of HF_ACTIVATIONS). */
export function activationOf(name: string, field: string): Activation {
  const a = KERNEL_ACTIVATION[name];
  if (!a || !HF_ACTIVATIONS.includes(name)) throw new ConfigError(`${field}: activation "${name}" is not supported (supported: ${HF_ACTIVATIONS.join(', ')})`);
  return a;
}
