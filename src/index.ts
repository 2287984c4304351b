// The sparsevila library API.

// Generation: load a model folder, ask about images.
export { VisionLanguageModel, GenerationError } from './engine/vlm.js';
export type { LoadOptions, GenerateRequest, GenerateOptions, GenerationResult, GenerationStats, FinishReason, ImageInput } from './engine/vlm.js';
export { Session } from './engine/session.js';
export type { SessionOptions } from './engine/session.js';
export { PrefixCache } from './engine/prefix-cache.js';
export type { PrefixCacheOptions, PrefixCacheStats, ConversationRequest, CachedImageInput, CacheUse, CachedGenerationResult } from './engine/prefix-cache.js';
export { inspectModel } from './engine/inspect.js';
export type { Inspection } from './engine/inspect.js';

// Errors: every problem with the input is an InputError naming its file, field, tensor or flag.
export { InputError, FileError, OptionError, LimitError } from './base/errors.js';
export { Sampler, Rng, argmax } from './engine/sampling.js';
export type { SamplingOptions } from './engine/sampling.js';

// Input: images, tokenizer, chat templates.
export {
  decodeImage,
  resize,
  clipPreprocess,
  loadClipImageProcessorConfig,
  parseClipImageProcessorConfig,
  pixelsToRgb,
  ImageError,
  DEFAULT_IMAGE_LIMITS,
} from './io/image.js';
export type { RgbImage, ClipImageProcessorConfig, PixelValues, ResampleFilter, ImageLimits } from './io/image.js';
export { TextTokenizer, TokenizerError } from './io/tokenizer.js';
export { ChatTemplate, ChatTemplateError } from './io/chat-template.js';
export type { ChatMessage, ChatContentPart } from './io/chat-template.js';
export { expandImageTokens, PromptError } from './io/prompt.js';

// Models, written against the kernel interface.
// The families (one registry row each) and the interfaces they implement.
export { FAMILIES, SUPPORTED_MODEL_TYPES, familyOf, parseConfig, loadConfig } from './model/registry.js';
export type { ParsedConfig } from './model/registry.js';
export type {
  Family,
  AnyFamily,
  FamilyConfig,
  FamilyModel,
  TextFacts,
  ImageProcessor,
  ProcessedImage,
  ImageEncoder,
  EncodedTile,
  UnitRegion,
  AssembledImage,
  PromptLayout,
  PromptImage,
} from './model/family.js';
export { DecoderCache } from './model/decoder.js';
export type { LanguageDecoder, ForwardOptions, PlacementOptions } from './model/decoder.js';
export { LlamaDecoder } from './model/llama.js';
export type { DecoderNames } from './model/llama.js';
export type { LlamaLikeConfig } from './model/llama-config.js';
export { VisionTransformer } from './model/vit.js';
export type { SalienceRequest } from './model/vit.js';
export type { ClipVisionConfig } from './model/vit-config.js';
export { LlavaModel } from './model/llava/model.js';
export type { LlavaConfig } from './model/llava/config.js';
export { WeightLoader, WeightError } from './model/weights.js';

// Visual sparsity (SparseVILA).
export { prunedImageFeatures } from './sparsity/prefill.js';
export { DecodeRetrieval } from './sparsity/retrieval.js';
export { keptCount, topKInOrder } from './sparsity/select.js';
export { densePrefill, sparseVilaPrefill, sparseVilaDecode, visionZipPrefill, pruMergePrefill, questDecode, fastV, pyramidDrop } from './sparsity/method.js';
export { METHODS, chooseMethod, SPARSEVILA_IMAGE_DEFAULTS, SPARSEVILA_VIDEO_DEFAULTS } from './sparsity/choice.js';
export type { MethodName, MethodChoice, ChosenMethod } from './sparsity/choice.js';
export { LayerDrop, PrunedCacheContinuation, fastVStages, pyramidDropStages } from './sparsity/layerdrop.js';
export type { DropStage } from './sparsity/layerdrop.js';
export type { PrefillReducer, ReducedImage } from './sparsity/method.js';
export type { DecodeMethod, DecodeSelector, TurnContext, PrunedCacheLayout } from './sparsity/decode.js';
export { QuestDecode } from './sparsity/quest.js';
export type { QuestOptions } from './sparsity/quest.js';
export { visionZipSelect, visionZipMerge, visionZipContextual } from './sparsity/visionzip.js';
export { pruMergeSelect, pruMergeMerge, iqrOutlierCount } from './sparsity/prumerge.js';

// Synthetic visual-QA scenes (the default model's task).
export { makeScene, renderScene, sceneSvg, splitSeeds, writeSplit, SHAPES, COLOURS, GLYPHS, REGIONS, QUESTION_TYPES } from './data/scenes.js';
export type { Scene, SceneObject, Question, QuestionType, EpisodeRecord } from './data/scenes.js';
export {
  writeTaskModel,
  taskVocabulary,
  taskModelConfig,
  taskModelTensors,
  tokenizerJson,
  TASK_MODEL_SHAPE,
  IMAGE_TOKEN_ID,
  CHAT_TEMPLATE,
} from './data/task-model.js';
export { DEFAULT_MODEL_DIR } from './default-model.js';
export type { TaskModelShape } from './data/task-model.js';

// The accuracy harness.
export { evaluate, readEpisodes, normaliseAnswer, summarise } from './eval/harness.js';
export type { EvalEpisode, EvalQuestion, EvalOptions, EvalReport, QuestionResult, Accuracy } from './eval/harness.js';

// Kernels and runtime.
export * from './kernels/backend.js';
export { WasmBackend, BackendError } from './kernels/wasm-backend.js';
export { MetaBackend } from './kernels/meta-backend.js';
export type { WasmBackendOptions } from './kernels/wasm-backend.js';
export { loadKernelModule, relaxedSimdSupported } from './runtime/kernel-module.js';
export type { SimdLevel, KernelModule } from './runtime/kernel-module.js';

// Files: safetensors checkpoints and Hugging Face configs.
export * from './formats/safetensors.js';
export * from './formats/checkpoint.js';
export * from './formats/config.js';
