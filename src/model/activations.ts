// Hugging Face activation names (config `hidden_act`, `projector_hidden_act`) to kernel activations.
import { Activation } from '../kernels/backend.js';

const HF_ACTIVATIONS: Record<string, Activation> = {
  silu: 'silu',
  swish: 'silu',
  gelu: 'gelu',
  gelu_pytorch_tanh: 'gelu_pytorch_tanh',
  gelu_new: 'gelu_pytorch_tanh',
  gelu_fast: 'gelu_pytorch_tanh',
  quick_gelu: 'quick_gelu',
};

export function activationOf(name: string, field: string): Activation {
  const a = HF_ACTIVATIONS[name];
  if (!a) throw new Error(`${field}: activation "${name}" is not supported (supported: ${Object.keys(HF_ACTIVATIONS).join(', ')})`);
  return a;
}
