// The weight formats the loader recognises, tried in order for each linear layer.
import { LinearFormat } from './format.js';
import { denseFormat } from './dense.js';
import { awqGemmFormat } from './awq-gemm.js';
import { awqV2Format } from './awq-v2.js';

export const LINEAR_FORMATS: readonly LinearFormat[] = [denseFormat, awqGemmFormat, awqV2Format];
