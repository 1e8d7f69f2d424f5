/**
 * Quantised weights in ggml's block formats (the bytes of llama.cpp's GGUF files): a quantised
 * tensor is `{ type, data: Uint8Array of raw blocks, dims }` whose dims are the logical matrix
 * [rows, cols] (any leading dims are rows); each row is cols / blockValues blocks.
 *
 * | type | values / block | bytes / block | bits / weight |
 * |---|---|---|---|
 * | q8_0 | 32 | 34 | 8.5 |
 * | q4_0 | 32 | 18 | 4.5 |
 * | q4_k | 256 | 144 | 4.5 |
 * | q5_k | 256 | 176 | 5.5 |
 * | q6_k | 256 | 210 | 6.5625 |
 *
 * `quantize` makes q8_0, q4_0 and q4_k (the package's own quantiser: it minimises each block's
 * squared error); `dequantize` reads all five and gives exactly ggml's values.
 */
import { binding, type NativeQuantTensor, type NativeTensor } from './binding.js';
import { describe, MoeError, rangeError, typeError } from './errors.js';
import { checkOptions } from './options.js';
import { checkDims, checkTensor, FLOAT_TYPES, type FloatType, type Tensor } from './tensor.js';

export type QuantType = 'q8_0' | 'q4_0' | 'q4_k' | 'q5_k' | 'q6_k';
/** The types `quantize` makes. */
export type QuantizeType = 'q8_0' | 'q4_0' | 'q4_k';
/** A weight matrix's type: a float type or a block format. */
export type WeightType = FloatType | QuantType;

export const QUANT_TYPES: readonly QuantType[] = ['q8_0', 'q4_0', 'q4_k', 'q5_k', 'q6_k'];
export const QUANTIZE_TYPES: readonly QuantizeType[] = ['q8_0', 'q4_0', 'q4_k'];

/** Values and bytes of one block of each format. */
export const QUANT_BLOCKS: Readonly<Record<QuantType, { readonly values: number; readonly bytes: number }>> = {
  q8_0: { values: 32, bytes: 34 },
  q4_0: { values: 32, bytes: 18 },
  q4_k: { values: 256, bytes: 144 },
  q5_k: { values: 256, bytes: 176 },
  q6_k: { values: 256, bytes: 210 },
};

export interface QuantTensor<T extends QuantType = QuantType> {
  readonly type: T;
  /** The raw blocks, row after row. */
  readonly data: Uint8Array;
  /** The logical dims: [..., rows, cols], cols a multiple of the block. */
  readonly dims: readonly number[];
}

export function isQuantType(t: unknown): t is QuantType {
  return (QUANT_TYPES as readonly unknown[]).includes(t);
}

/**
 * t itself when it is a float tensor; a MoeError ERR_UNSUPPORTED naming `what` when it is quantised
 * (for the places that take float tensors only: safetensors writers, float conversions).
 */
export function floatWeight(t: Tensor | QuantTensor, what: string): Tensor {
  if (isQuantType(t?.type))
    throw new MoeError(`${what} is a ${t.type} tensor, and only float tensors can go here: dequantize() it first`, 'ERR_UNSUPPORTED');
  return t as Tensor;
}

/** Bytes of a tensor of `type` and `dims` (a quantised type: whole blocks per row). */
export function quantBytes(type: QuantType, dims: readonly number[]): number {
  const n = checkDims(dims, 'dims');
  const { values, bytes } = QUANT_BLOCKS[type];
  const cols = dims.length ? dims[dims.length - 1] : 0;
  if (dims.length === 0 || cols % values !== 0)
    throw rangeError(`a ${type} tensor's last dim must be a multiple of ${values}, got dims [${dims.join(',')}]`);
  return (n / values) * bytes;
}

/** Bits per weight of a type (16 for float16, 4.5 for q4_k, ...). */
export function bitsPerWeight(type: WeightType): number {
  if (isQuantType(type)) return (QUANT_BLOCKS[type].bytes * 8) / QUANT_BLOCKS[type].values;
  return type === 'float32' ? 32 : 16;
}

/** Checks a quantised tensor: its type, a Uint8Array of exactly the blocks its dims need. */
export function checkQuantTensor(t: unknown, name: string): QuantTensor {
  if (t === null || typeof t !== 'object' || Array.isArray(t) || ArrayBuffer.isView(t))
    throw typeError(`${name} must be a tensor {type, data, dims}, got ${describe(t)}`);
  const { type, data, dims } = t as Record<string, unknown>;
  if (!isQuantType(type)) throw typeError(`${name}.type must be one of ${QUANT_TYPES.map((q) => `'${q}'`).join(', ')}, got ${describe(type)}`);
  if (!(data instanceof Uint8Array)) throw typeError(`${name}.data must be a Uint8Array of ${type} blocks, got ${describe(data)}`);
  checkDims(dims, `${name}.dims`);
  const need = quantBytes(type, dims as number[]);
  if (data.length !== need)
    throw rangeError(`${name}.data has ${data.length} bytes but ${type} dims [${(dims as number[]).join(',')}] need ${need}`);
  return t as QuantTensor;
}

/** A float or quantised weight tensor, checked. */
export function checkWeightTensor(t: unknown, name: string): Tensor | QuantTensor {
  const type = (t as { type?: unknown } | null)?.type;
  return isQuantType(type) ? checkQuantTensor(t, name) : checkTensor(t, name, FLOAT_TYPES);
}

/**
 * How 16-bit float weights meet the activations on the CPU. 'default': the avx512-bf16 table rounds
 * the activations to bf16 for bf16 weights (vdpbf16ps, about twice the speed, results within the
 * bf16 tolerance); 'exact': f32 activations on every table (the avx512 table's speed and bits).
 * Other tables and f32/quantised weights are the same either way. The CUDA backend reads the
 * activations in the weights' type, so 'exact' with 16-bit weights is ERR_UNSUPPORTED there.
 */
export type Precision = 'default' | 'exact';
export const PRECISIONS: readonly Precision[] = ['default', 'exact'];

/** options.precision of the packers: true for 'exact'. */
export function exactOption(o: Record<string, unknown>, name = 'options.precision'): boolean {
  const v = o.precision ?? 'default';
  if (!(PRECISIONS as readonly unknown[]).includes(v)) throw typeError(`${name} must be 'default' or 'exact', got ${describe(v)}`);
  return v === 'exact';
}

/** options.quantize of the layers: undefined, or a type `quantize` makes. */
export function quantizeOption(o: Record<string, unknown>, name = 'options.quantize'): QuantizeType | undefined {
  const v = o.quantize;
  if (v === undefined) return undefined;
  if (!(QUANTIZE_TYPES as readonly unknown[]).includes(v))
    throw typeError(`${name} must be one of ${QUANTIZE_TYPES.map((q) => `'${q}'`).join(', ')}, got ${describe(v)}`);
  return v as QuantizeType;
}

function quantizeArgs(t: Tensor, type: unknown): [NativeTensor, QuantizeType] {
  checkTensor(t, 'tensor', FLOAT_TYPES);
  const q = quantizeOption({ quantize: type }, 'type');
  if (q === undefined) throw typeError(`type must be one of ${QUANTIZE_TYPES.map((x) => `'${x}'`).join(', ')}, got undefined`);
  quantBytes(q, t.dims);  // RangeError naming the block before native code sees it
  return [t as unknown as NativeTensor, q];
}

/**
 * Quantises a float tensor [..., cols] to q8_0, q4_0 or q4_k (cols a multiple of 32, or 256 for
 * q4_k), off the event loop. Relative RMS error on N(0,1) weights: about 0.005 (q8_0), 0.08 (q4_0),
 * 0.07 (q4_k).
 */
export async function quantize<T extends QuantizeType>(tensor: Tensor, type: T): Promise<QuantTensor<T>> {
  const [x, q] = quantizeArgs(tensor, type);
  return (await binding.quantize(x, { type: q, async: true })) as unknown as QuantTensor<T>;
}
export function quantizeSync<T extends QuantizeType>(tensor: Tensor, type: T): QuantTensor<T> {
  const [x, q] = quantizeArgs(tensor, type);
  return binding.quantize(x, { type: q }) as unknown as QuantTensor<T>;
}

export interface DequantizeOptions {
  /** Output type. Default 'float32'. */
  type?: FloatType;
}

function dequantizeArgs(tensor: QuantTensor, options?: DequantizeOptions): [NativeQuantTensor, FloatType] {
  checkQuantTensor(tensor, 'tensor');
  const o = checkOptions(options);
  const type = o.type ?? 'float32';
  if (!(FLOAT_TYPES as readonly unknown[]).includes(type))
    throw typeError(`options.type must be one of ${FLOAT_TYPES.map((t) => `'${t}'`).join(', ')}, got ${describe(type)}`);
  return [tensor as unknown as NativeQuantTensor, type as FloatType];
}

/** The values of a quantised tensor (exactly ggml's), as float32 (or options.type), off the event loop. */
export async function dequantize(tensor: QuantTensor, options?: DequantizeOptions): Promise<Tensor> {
  const [x, t] = dequantizeArgs(tensor, options);
  return (await binding.dequantize(x, { outType: t, async: true })) as Tensor;
}
export function dequantizeSync(tensor: QuantTensor, options?: DequantizeOptions): Tensor {
  const [x, t] = dequantizeArgs(tensor, options);
  return binding.dequantize(x, { outType: t }) as Tensor;
}
