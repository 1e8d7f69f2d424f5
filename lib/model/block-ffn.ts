/**
 * The FFN half of a decoder block, chosen per layer from the config's `layerKinds`: the sparse MoE
 * layer (routed experts, plus shared experts when the config declares them: Qwen2-MoE gated,
 * DeepSeek-MoE ungated; top-k weights renormalised when `normTopkProb`) or one dense SwiGLU FFN
 * (the dense layers of Qwen2-MoE and DeepSeek-MoE). Both answer `forward(x)` with the same shape
 * of result, so a block runs either without knowing which it holds. Thin: packing and math are
 * native (lib/moe/layers.ts).
 */
import type { Precision, QuantizeType } from '../core/quant.js';
import { type BackendName } from '../core/backend.js';
import { DeviceTensor } from '../core/device.js';
import { type LayerKind, type MoeModelConfig } from '../hf/config.js';
import { rangeError } from '../core/errors.js';
import { DenseFfn, MoeLayer, type DenseFfnWeights, type SharedExpertsWeights } from '../moe/layers.js';
import { checkOptions } from '../core/options.js';
import { type Tensor, zeros } from '../core/tensor.js';
import { type DecoderLayerWeights, type MoeBlockWeights } from '../hf/weights.js';
import { type ExpertParallelMoeLayer } from '../parallel/ep-layer.js';
import { type ProcessGroup } from '../parallel/process-group.js';

export interface BlockFfnOutput {
  /** [T,d], the type and place of x (a DeviceTensor for a device x). */
  output: Tensor | DeviceTensor;
  /** [E] tokens routed to each expert in this call (on the device for a device x); null for a dense FFN. */
  tokensPerExpert: Tensor<'int32'> | DeviceTensor<'int32'> | null;
}

/** A block's FFN: `moe` or `dense` is set, by `kind`. */
export interface BlockFfn {
  readonly kind: LayerKind;
  readonly moe: MoeLayer | null;
  readonly dense: DenseFfn | null;
  /** An MoE layer of an expert-parallel model: this rank's share (then `moe` is null). */
  readonly expertParallel?: ExpertParallelMoeLayer | null;
  /** Bytes of the packed weights. */
  readonly bytes: number;
  readonly disposed: boolean;
  /** countsOut (device x, MoE layer): the device int32 [E] to write the counts into. */
  forward(x: Tensor | DeviceTensor, countsOut?: DeviceTensor<'int32'>): Promise<BlockFfnOutput>;
  dispose(): void;
}

class MoeBlockFfn implements BlockFfn {
  readonly kind = 'moe' as const;
  readonly dense = null;
  constructor(readonly moe: MoeLayer) {}
  get bytes() {
    return this.moe.bytes;
  }
  get disposed() {
    return this.moe.disposed;
  }
  async forward(x: Tensor | DeviceTensor, countsOut?: DeviceTensor<'int32'>): Promise<BlockFfnOutput> {
    const { output, routing } = x instanceof DeviceTensor ? await this.moe.forward(x, { returnRouting: true, countsOut }) : await this.moe.forward(x, { returnRouting: true });
    return { output, tokensPerExpert: routing!.tokensPerExpert };
  }
  dispose() {
    this.moe.dispose();
  }
}

/**
 * An MoE layer of an expert-parallel model. On a device backend whose group has NCCL on every rank
 * (group.nccl(); the answer is agreed by all ranks once), the layer runs on the device tensors and
 * the rows travel GPU to GPU. Without NCCL the MPI transport moves host memory: x is copied to the
 * host and the output back, and the stage ops still run on the device backend.
 */
class ExpertParallelBlockFfn implements BlockFfn {
  readonly kind = 'moe' as const;
  readonly moe = null;
  readonly dense = null;
  constructor(readonly expertParallel: ExpertParallelMoeLayer) {}
  get bytes() {
    return this.expertParallel.bytes;
  }
  get disposed() {
    return this.expertParallel.disposed;
  }
  async forward(x: Tensor | DeviceTensor): Promise<BlockFfnOutput> {
    if (!(x instanceof DeviceTensor)) {
      const { output, routing } = await this.expertParallel.forward(x, { returnRouting: true });
      return { output, tokensPerExpert: routing.tokensPerExpert };
    }
    const nccl = await this.expertParallel.group.nccl({ backend: x.backend }).then(
      () => true,
      (e: { code?: string }) => {
        if (e?.code === 'ERR_DIST_UNAVAILABLE') return false;
        throw e;
      },
    );
    if (nccl) {
      const { output, routing } = await this.expertParallel.forward(x, { returnRouting: true });
      return { output, tokensPerExpert: routing.tokensPerExpert };
    }
    const { output, routing } = await this.expertParallel.forward(await x.toHost(), { returnRouting: true });
    return { output: await DeviceTensor.from(output, { backend: x.backend }), tokensPerExpert: routing.tokensPerExpert };
  }
  dispose() {
    this.expertParallel.dispose();
  }
}

class DenseBlockFfn implements BlockFfn {
  readonly kind = 'dense' as const;
  readonly moe = null;
  constructor(readonly dense: DenseFfn) {}
  get bytes() {
    return this.dense.bytes;
  }
  get disposed() {
    return this.dense.disposed;
  }
  async forward(x: Tensor | DeviceTensor): Promise<BlockFfnOutput> {
    return { output: x instanceof DeviceTensor ? await this.dense.forward(x) : await this.dense.forward(x), tokensPerExpert: null };
  }
  dispose() {
    this.dense.dispose();
  }
}

/** The tokens-per-expert of a dense layer where a tensor is expected: no experts, [0]. */
export const NO_EXPERTS: Tensor<'int32'> = zeros('int32', [0]);

const dimsOf = (t: { dims?: readonly number[] } | undefined) => `[${t?.dims?.join(',') ?? ''}]`;

/**
 * Packs layer `index`'s FFN from its weights (`weights.moe` for an MoE layer, `weights.mlp` for a
 * dense one, as `MoeCheckpoint.loadLayer` gives them), checking every size against the config;
 * a RangeError names the weight, the size found and the size the config implies.
 */
export async function createBlockFfn(config: MoeModelConfig, weights: DecoderLayerWeights, index: number, backend: BackendName | undefined, quantize?: QuantizeType, precision: Precision = 'default', expertParallel?: ProcessGroup, batchInvariant = false): Promise<BlockFfn> {
  const d = config.hiddenSize;
  const kind = config.layerKinds[index];
  if (kind === 'dense') {
    if (weights.moe !== undefined) throw rangeError(`weights.moe is given but layer ${index} of this ${config.modelType} config is dense (weights.mlp)`);
    if (weights.mlp === undefined) throw rangeError(`weights.mlp is required: layer ${index} of this ${config.modelType} config is dense`);
    const m = checkOptions(weights.mlp, 'weights.mlp') as unknown as DenseFfnWeights;
    const f = config.intermediateSize;
    const dense = await DenseFfn.create({ w1: m.w1, w3: m.w3, w2: m.w2 }, { backend, ...(quantize ? { quantize } : {}), precision });
    if (dense.hiddenSize !== d || dense.intermediateSize !== f) {
      dense.dispose();
      throw rangeError(`weights.mlp: a SwiGLU FFN of [${dense.intermediateSize},${dense.hiddenSize}], expected [${f},${d}] (intermediate_size, hidden_size) from the config`);
    }
    return new DenseBlockFfn(dense);
  }
  if (weights.mlp !== undefined) throw rangeError(`weights.mlp is given but layer ${index} of this ${config.modelType} config is an MoE layer (weights.moe)`);
  if (weights.moe === undefined) throw rangeError(`weights.moe is required: layer ${index} of this ${config.modelType} config is an MoE layer`);
  const w = checkOptions(weights.moe, 'weights.moe') as unknown as MoeBlockWeights;
  const fs = config.sharedExpertIntermediateSize;
  let shared: SharedExpertsWeights | undefined;
  if (fs > 0) {
    if (w.sharedExperts === undefined) throw rangeError(`weights.moe.sharedExperts is required: the config declares shared experts of width ${fs}`);
    shared = checkOptions(w.sharedExperts, 'weights.moe.sharedExperts') as unknown as SharedExpertsWeights;
    const dims: [keyof SharedExpertsWeights, number[]][] = [['w1', [fs, d]], ['w3', [fs, d]], ['w2', [d, fs]]];
    if (config.sharedExpertGate) dims.push(['gate', [1, d]]);
    for (const [k, want] of dims) {
      const t = shared[k];
      if (t === undefined || t.dims?.length !== 2 || t.dims[0] !== want[0] || t.dims[1] !== want[1])
        throw rangeError(`weights.moe.sharedExperts.${k}.dims must be [${want.join(',')}] from the config, got ${t === undefined ? 'none' : dimsOf(t)}`);
    }
    if (!config.sharedExpertGate && shared.gate !== undefined) throw rangeError(`weights.moe.sharedExperts.gate is given but this ${config.modelType} config has no shared-expert gate`);
  } else if (w.sharedExperts !== undefined) throw rangeError(`weights.moe.sharedExperts is given but the config declares no shared experts`);
  if (expertParallel !== undefined) {
    const ep = await MoeLayer.create(
      { gate: w.gate, w1: w.w1, w3: w.w3, w2: w.w2 },
      { topK: config.numExpertsPerTok, normalize: config.normTopkProb, backend, expertParallel, ...(shared ? { sharedExperts: shared } : {}), ...(quantize ? { quantize } : {}), precision, batchInvariant },
    );
    const f = config.moeIntermediateSize;
    if (ep.numExperts !== config.numExperts || ep.hiddenSize !== d || (ep.intermediateSize !== f && ep.localExperts[1] > ep.localExperts[0])) {
      ep.dispose();
      throw rangeError(`weights.moe: ${ep.numExperts} experts of [${ep.intermediateSize},${ep.hiddenSize}], expected ${config.numExperts} of [${f},${d}] from the config`);
    }
    return new ExpertParallelBlockFfn(ep);
  }
  const moe = await MoeLayer.create(
    { gate: w.gate, w1: w.w1, w3: w.w3, w2: w.w2 },
    { topK: config.numExpertsPerTok, normalize: config.normTopkProb, backend, ...(shared ? { sharedExperts: shared } : {}), ...(quantize ? { quantize } : {}), precision, batchInvariant },
  );
  const f = config.moeIntermediateSize;
  if (moe.numExperts !== config.numExperts || moe.hiddenSize !== d || moe.intermediateSize !== f) {
    moe.dispose();
    throw rangeError(`weights.moe: ${moe.numExperts} experts of [${moe.intermediateSize},${moe.hiddenSize}], expected ${config.numExperts} of [${f},${d}] from the config`);
  }
  return new MoeBlockFfn(moe);
}
