// Hugging Face activation names (config `hidden_act`, `projector_hidden_act`) to kernel activations.
import { Activation } from '../kernels/backend.js';
import { ConfigError, HF_ACTIVATIONS, HfActivation } from '../formats/config.js';

/** Every name parseConfig accepts (the type keeps the two lists one). */
const KERNEL_ACTIVATION: Record<HfActivation, Activation> = {
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
  if (!Object.hasOwn(KERNEL_ACTIVATION, name))
    throw new ConfigError(`${field}: activation "${name}" is not supported (supported: ${HF_ACTIVATIONS.join(', ')})`);
  return KERNEL_ACTIVATION[name as HfActivation];
}
