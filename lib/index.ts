/**
 * moe-kernels: Mixture-of-Experts inference for Node.js.
 *
 *   const layer = await MoeLayer.create({ gate, w1, w3, w2 }, { topK: 2 });
 *   const { output } = await layer.forward(tensor('float32', x, [T, d]));
 */
// Symbol.dispose and Symbol.asyncDispose (Node >= 20.4, TypeScript's lib esnext.disposable) name
// the methods behind `using` / `await using`. Declared here as @types/node declares them, so that
// the package's types compile for consumers whose lib has neither.
declare global {
  interface SymbolConstructor {
    readonly dispose: unique symbol;
    readonly asyncDispose: unique symbol;
  }
}

export { MoeError, type MoeErrorCode } from './core/errors.js';
export {
  tensor,
  zeros,
  cast,
  toFloat32,
  float32ToBfloat16,
  bfloat16ToFloat32,
  float32ToFloat16,
  float16ToFloat32,
  type Tensor,
  type DType,
  type FloatType,
  type DataOf,
} from './core/tensor.js';
export {
  quantize,
  quantizeSync,
  dequantize,
  dequantizeSync,
  quantBytes,
  bitsPerWeight,
  isQuantType,
  QUANT_TYPES,
  QUANT_BLOCKS,
  type QuantType,
  type QuantizeType,
  type Precision,
  PRECISIONS,
  type QuantTensor,
  type WeightType,
  type DequantizeOptions,
} from './core/quant.js';
export { backendInfo, availableBackends, type BackendInfo, type BackendName, type ResolvedBackend } from './core/backend.js';
export { ExpertWeights, type ExpertWeightsInit, type PackOptions, type WeightTensor } from './moe/experts.js';
export { type NoiseOptions, type RandomRoutingOptions, type RouterStats } from './moe/routing-variants.js';
export {
  route,
  routeSync,
  permute,
  permuteSync,
  groupedGemm,
  groupedGemmSync,
  combine,
  combineSync,
  type RouteOptions,
  type RouteResult,
  type PermuteOptions,
  type PermuteResult,
  type CombineOptions,
} from './moe/stages.js';
export {
  MoeLayer,
  moeForward,
  DenseFfn,
  denseFfnForward,
  type MoeLayerWeights,
  type MoeLayerOptions,
  type ForwardOptions,
  type MoeOutput,
  type MoeResult,
  type DeviceMoeResult,
  type MoeRouterStats,
  type Routing,
  type DenseFfnWeights,
  type DenseFfnOptions,
  type SharedExpertsWeights,
  type DeviceMoeOutput,
} from './moe/layers.js';
export { DeviceTensor, isDeviceTensor, deviceTransferStats, type DeviceOptions, type TransferStats } from './core/device.js';
export { mergeExperts, mergeExpertWeights, mergeDistribution, mergeDistance, type MergeOptions, type MergeDistance } from './moe/merge.js';
export { routingHeatmapSvg, formatRoutingTable, routingEntropy, type RoutingHeatmapOptions, type RoutingTableOptions } from './moe/routing-stats.js';
export { SafetensorsFile, safetensorsElementSize, type SafetensorsDType, type TensorInfo, type ReadOptions } from './hf/safetensors.js';
export { writeSafetensors, writeSafetensorsSync, writeShardedSafetensors, type ShardOptions } from './hf/safetensors-write.js';
export { Checkpoint } from './hf/checkpoint.js';
export {
  parseMoeConfig,
  parseMixtralConfig,
  type MoeModelConfig,
  type MixtralConfig,
  type LayerKind,
  type ModelType,
} from './hf/config.js';
export {
  MoeCheckpoint,
  MixtralCheckpoint,
  detectExpertLayout,
  moeTensorSpecs,
  mixtralTensorSpecs,
  decoderLayerTensors,
  mixtralLayerTensors,
  type ExpertLayout,
  type ExpectedTensor,
  type AttentionWeights,
  type MoeBlockWeights,
  type DecoderLayerWeights,
  type MixtralLayerWeights,
  type ModelGlobalWeights,
  type MixtralGlobalWeights,
  type MoeOpenOptions,
  type MixtralOpenOptions,
  type LoadProgress,
} from './hf/weights.js';
export {
  countParameters,
  estimateMemory,
  checkMemory,
  formatBytes,
  type ParameterCounts,
  type MemoryOptions,
  type MemoryEstimate,
  type MemoryCheckOptions,
} from './hf/params.js';
export { createProgressBar, type ProgressBar, type ProgressBarOptions, type ProgressStream } from './hf/progress.js';
export { Tokenizer, type EncodeOptions, type DecodeOptions } from './hf/tokenizer.js';
export {
  embedding,
  embeddingSync,
  rmsNorm,
  rmsNormSync,
  Linear,
  linear,
  linearSync,
  rope,
  ropeSync,
  KvCache,
  KvPool,
  attention,
  attentionSync,
  pagedAttention,
  pagedAttentionSync,
  add,
  addSync,
  sample,
  sampleSync,
  type OutOptions,
  type RmsNormOptions,
  type LinearPackOptions,
  type RopeOptions,
  type RopeResult,
  type KvCacheInit,
  type KvPoolInit,
  type PagedAttentionOptions,
  type KvCacheOptions,
  type AttentionOptions,
  type AddOptions,
  type SampleOptions,
  type SamplingParams,
  type AnyTensor,
  type Placed,
} from './model/primitives.js';
export { type MixtralRuntimeOptions } from './model/runtime.js';
export { MixtralBlock, DecoderBlock, type BlockForwardOptions, type BlockOutput } from './model/block.js';
export {
  MixtralModel,
  MoeModel,
  type MixtralLoadOptions,
  type ModelForwardOptions,
  type GenerateOptions,
  type AbortSignalLike,
  type RoutingStats,
  type KvPoolsOptions,
  type PagedForwardOptions,
} from './model/model.js';
export { type BlockFfn, type BlockFfnOutput } from './model/block-ffn.js';
export {
  GgufFile,
  isGgufPath,
  ggmlTypeName,
  GGUF_QUANT_TYPES,
  type GgufOpenOptions,
  type GgufMetadataEntry,
  type GgufValue,
  type GgufValueType,
  type GgufArrayValue,
  type GgufNumericArray,
  type GgufTensorInfo,
  type GgufTensor,
  type GgufTensorType,
  type GgufQuantType,
} from './hf/gguf.js';
export { writeGguf, type GgufMetadataInput, type GgufNestedArray, type GgufTensorInput, type GgufWriteOptions } from './hf/gguf-write.js';
export { GgufCheckpoint, ggufConfig, GGUF_ARCHITECTURES, type GgufOpenModelOptions, type GgufExpertLayout } from './hf/gguf-model.js';
export { convertToGguf, GGUF_CONVERT_TYPES, type GgufConvertType, type GgufConvertOptions, type GgufConvertResult } from './hf/gguf-convert.js';
export { GgufTokenizer, type GgufTokenizerData } from './hf/tokenizer-gguf.js';
export { renderChatTemplate, type ChatMessage, type ChatTemplateOptions } from './hf/chat.js';
export { type TextTokenizer, type TextPrompt, type GenerateTextOptions, type GenerateTextResult } from './model/text.js';
export { TextStream, type TextStep } from './model/text.js';
export {
  Engine,
  Generation,
  type EngineOptions,
  type EnginePrompt,
  type EngineGenerateOptions,
  type EngineToken,
  type EngineFinish,
  type EngineChunk,
  type EngineUsage,
  type EngineStats,
} from './serve/engine.js';
export { MoeServer, createServer, type ServerOptions, type ListenOptions, type ShutdownOptions } from './serve/server.js';
export { demoModel, demoTokenizer, DEMO_MODEL_NAME } from './serve/demo.js';
export { ProcessGroup, NcclCommunicator, type NcclOptions, type ProcessGroupOptions, type TransportInfo, type CommStats, type CommArray } from './parallel/process-group.js';
export {
  ExpertParallelMoeLayer,
  expertRange,
  type ExpertParallelStats,
  type ExpertParallelRouterStats,
  type ExpertParallelOutput,
  type ExpertParallelForwardOptions,
  type ExpertParallelResult,
} from './parallel/ep-layer.js';
