// A CLIP vision tower alone (CLIPVisionModel): recognised so that inspect and loading can say what
// it is, but not runnable by itself (load a VLM that contains it).
import { Fields } from '../../formats/config.js';
import { ClipVisionConfig, parseClipVision } from '../clip-config.js';
import { Family, FamilyConfig, familyRow } from '../family.js';

export type ClipTowerConfig = ClipVisionConfig & FamilyConfig;

export const clipTower: Family<ClipTowerConfig> = {
  name: 'clip-vision',
  architectures: ['CLIPVisionModel'],
  modelTypes: ['clip_vision_model'],
  notRunnable: 'is a vision encoder alone; load a llava checkpoint that contains it',
  parse: (json, source) => ({ ...parseClipVision(new Fields(json, source, ''), undefined), textFacts: null, imageFacts: null }),
  describe: (c) => ({
    family: 'a CLIP vision encoder alone (not runnable by itself)',
    parts: [`vision:       CLIP ${c.numHiddenLayers} layers, hidden ${c.hiddenSize}, ${c.numAttentionHeads} heads, image ${c.imageSize}, patch ${c.patchSize}`],
  }),
  load: () => Promise.reject(new Error('internal: a vision encoder alone is not loaded')),
};

export default familyRow(clipTower);
