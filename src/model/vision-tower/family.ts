// Vision towers alone (CLIPVisionModel, SiglipVisionModel): recognised so that inspect and loading
// can say what they are, but not runnable by themselves (load a VLM that contains one).
import { Fields } from '../../formats/config.js';
import { ClipVisionConfig, SiglipVisionConfig, VitConfig, parseClipVision, parseSiglipVision } from '../vit-config.js';
import { Family, FamilyConfig, familyRow } from '../family.js';

export type ClipTowerConfig = ClipVisionConfig & FamilyConfig;
export type SiglipTowerConfig = SiglipVisionConfig & FamilyConfig;

const summary = (name: string, c: VitConfig): string =>
  `vision:       ${name} ${c.numHiddenLayers} layers, hidden ${c.hiddenSize}, ${c.numAttentionHeads} heads, image ${c.imageSize}, patch ${c.patchSize}`;

export const clipTower: Family<ClipTowerConfig> = {
  name: 'clip-vision',
  architectures: ['CLIPVisionModel'],
  modelTypes: ['clip_vision_model'],
  notRunnable: 'is a vision encoder alone; load a llava checkpoint that contains it',
  parse: (json, source) => ({ ...parseClipVision(new Fields(json, source, ''), undefined), textFacts: null, imageFacts: null }),
  describe: (c) => ({ family: 'a CLIP vision encoder alone (not runnable by itself)', parts: [summary('CLIP', c)] }),
  load: () => Promise.reject(new Error('internal: a vision encoder alone is not loaded')),
};

export const siglipTower: Family<SiglipTowerConfig> = {
  name: 'siglip-vision',
  architectures: ['SiglipVisionModel'],
  modelTypes: ['siglip_vision_model'],
  notRunnable: 'is a vision encoder alone; load a VLM that contains it (SmolVLM, VILA)',
  parse: (json, source) => ({ ...parseSiglipVision(new Fields(json, source, ''), 'siglip_vision_model', undefined), textFacts: null, imageFacts: null }),
  describe: (c) => ({ family: 'a SigLIP vision encoder alone (not runnable by itself)', parts: [summary('SigLIP', c)] }),
  load: () => Promise.reject(new Error('internal: a vision encoder alone is not loaded')),
};

export const clipTowerRow = familyRow(clipTower);
export const siglipTowerRow = familyRow(siglipTower);
