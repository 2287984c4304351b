// The sparsevila library API.
export * from './kernels/backend.js';
export { WasmBackend, BackendError } from './kernels/wasm-backend.js';
export type { WasmBackendOptions } from './kernels/wasm-backend.js';
export { loadKernelModule, relaxedSimdSupported } from './runtime/kernel-module.js';
export type { SimdLevel, KernelModule } from './runtime/kernel-module.js';
export * from './formats/safetensors.js';
export * from './formats/config.js';
