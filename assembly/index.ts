// Entry point of the kernel module: every export here is a kernel the runtime can call.
export { SCRATCH_BYTES } from "./simd";
export * from "./matmul";
export * from "./qmatmul";
export * from "./int4";
export * from "./elementwise";
export * from "./attention";
export * from "./bench";
