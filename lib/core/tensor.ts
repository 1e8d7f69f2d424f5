/**
 * Tensors shaped like ONNX Runtime's: `{ type, data, dims }`, row-major. Node 20 has no
 * Float16Array, so float16 and bfloat16 data travel as raw bits in a Uint16Array; the helpers here
 * convert to and from float32 with round-to-nearest-even, as the hardware does.
 */
import { describe, rangeError, typeError } from './errors.js';

export type FloatType = 'float32' | 'float16' | 'bfloat16';
export type DType = FloatType | 'int32';
export type DataOf<T extends DType> = T extends 'float32'
  ? Float32Array
  : T extends 'int32'
    ? Int32Array
    : Uint16Array;

export interface Tensor<T extends DType = DType> {
  readonly type: T;
  readonly data: DataOf<T>;
  readonly dims: readonly number[];
}

export const FLOAT_TYPES: readonly FloatType[] = ['float32', 'float16', 'bfloat16'];
const ALL_TYPES: readonly DType[] = [...FLOAT_TYPES, 'int32'];
/** Bytes of one element of each type (16-bit floats travel as Uint16Array). */
export const DTYPE_BYTES: Readonly<Record<DType, number>> = { float32: 4, float16: 2, bfloat16: 2, int32: 4 };

export function isFloatType(t: unknown): t is FloatType {
  return (FLOAT_TYPES as readonly unknown[]).includes(t);
}

export function checkType(type: unknown, name: string, allowed: readonly DType[] = ALL_TYPES): asserts type is DType {
  if (!(allowed as readonly unknown[]).includes(type))
    throw typeError(`${name} must be one of ${allowed.map((t) => `'${t}'`).join(', ')}, got ${describe(type)}`);
}

/** Checks dims and returns the element count. */
export function checkDims(dims: unknown, name: string): number {
  if (!Array.isArray(dims) || !dims.every((d) => typeof d === 'number' && Number.isInteger(d)))
    throw typeError(`${name} must be an array of integers, got ${describe(dims)}`);
  let n = 1;
  dims.forEach((d: number, i) => {
    if (d < 0) throw rangeError(`${name}[${i}] must be non-negative, got ${d}`);
    n *= d;
  });
  return n;
}

/**
 * Makes a tensor. `data` may be the typed array of the type (used in place, not copied) or plain
 * numbers (converted; for float16/bfloat16 they are rounded to the 16-bit type). `dims` defaults
 * to `[data.length]`.
 */
export function tensor<T extends DType>(type: T, data: DataOf<T> | ArrayLike<number>, dims?: readonly number[]): Tensor<T> {
  checkType(type, 'type');
  const typed = toTypedData(type, data);
  const d = dims === undefined ? [typed.length] : Array.isArray(dims) ? [...dims] : (dims as never);
  const n = checkDims(d, 'dims');
  if (n !== typed.length)
    throw rangeError(`data has ${typed.length} elements but dims [${d.join(',')}] need ${n}`);
  return { type, data: typed as DataOf<T>, dims: d };
}

/** A zero-filled tensor. */
export function zeros<T extends DType>(type: T, dims: readonly number[]): Tensor<T> {
  checkType(type, 'type');
  const n = checkDims(dims, 'dims');
  const data = type === 'float32' ? new Float32Array(n) : type === 'int32' ? new Int32Array(n) : new Uint16Array(n);
  return { type, data: data as DataOf<T>, dims: [...dims] };
}

const arrayOf = (type: DType) => (type === 'float32' ? Float32Array : type === 'int32' ? Int32Array : Uint16Array);

function toTypedData(type: DType, data: unknown): Float32Array | Uint16Array | Int32Array {
  const ctor = arrayOf(type);
  if (data instanceof ctor) return data;
  // 16-bit float bits read as numbers would be silently wrong values: only accept real numbers.
  if (data instanceof Uint16Array)
    throw typeError(`data is a Uint16Array (16-bit float bits) but type is '${type}': use type 'float16' or 'bfloat16', or convert with bfloat16ToFloat32/float16ToFloat32`);
  if (ArrayBuffer.isView(data) || Array.isArray(data)) {
    const src = data as ArrayLike<number>;
    // Float32Array.from would turn 'abc' into NaN, null into 0 and true into 1: only numbers pass
    // (NaN and the infinities are numbers, and stay what they are).
    if (Array.isArray(data))
      for (let i = 0; i < src.length; i++)
        if (typeof src[i] !== 'number') throw typeError(`data[${i}] must be a number for type '${type}', got ${describe(src[i])}`);
    if (data instanceof BigInt64Array || data instanceof BigUint64Array)
      throw typeError(`data is a ${data.constructor.name} (bigints) but type is '${type}': convert it to numbers first`);
    if (type === 'float16') return float32ToFloat16(Float32Array.from(src));
    if (type === 'bfloat16') return float32ToBfloat16(Float32Array.from(src));
    if (type === 'int32')
      for (let i = 0; i < src.length; i++)
        if (!Number.isInteger(src[i]) || src[i] < -(2 ** 31) || src[i] >= 2 ** 31)
          throw rangeError(`data[${i}] must be an int32 for type 'int32', got ${describe(src[i])}`);
    return ctor.from(src);
  }
  throw typeError(`data must be a typed array or an array of numbers, got ${describe(data)}`);
}

/**
 * Checks that `t` is a well-formed tensor {type, data, dims} of one of `types`: the typed array
 * matches the type and its length matches the dims. Used where the library keeps a tensor beyond
 * one call, so that a bad one fails at creation instead of at every later call.
 */
export function checkTensor(t: unknown, name: string, types: readonly DType[] = ALL_TYPES): Tensor {
  if (t === null || typeof t !== 'object' || Array.isArray(t) || ArrayBuffer.isView(t))
    throw typeError(`${name} must be a tensor {type, data, dims}, got ${describe(t)}`);
  const { type, data, dims } = t as Record<string, unknown>;
  checkType(type, `${name}.type`, types);
  const ctor = arrayOf(type);
  if (!(data instanceof ctor))
    throw typeError(`${name}.data must be a ${ctor.name} for type '${type}', got ${describe(data)}`);
  const n = checkDims(dims, `${name}.dims`);
  if (n !== data.length)
    throw rangeError(`${name}.data has ${data.length} elements but dims [${(dims as number[]).join(',')}] need ${n}`);
  return t as Tensor;
}

// ---- 16-bit float conversions ---------------------------------------------------------------

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** float32 -> bfloat16 bits, round to nearest even; NaN stays NaN. */
export function float32ToBfloat16(src: Float32Array): Uint16Array {
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  const out = new Uint16Array(src.length);
  for (let i = 0; i < bits.length; i++) {
    const u = bits[i];
    if ((u & 0x7fffffff) > 0x7f800000) out[i] = (u >>> 16) | 0x40;
    else out[i] = (u + 0x7fff + ((u >>> 16) & 1)) >>> 16;
  }
  return out;
}

/** bfloat16 bits -> float32 (exact). */
export function bfloat16ToFloat32(src: Uint16Array): Float32Array {
  const out = new Float32Array(src.length);
  const bits = new Uint32Array(out.buffer);
  for (let i = 0; i < src.length; i++) bits[i] = src[i] << 16;
  return out;
}

function f32BitsToF16(u: number): number {
  const sign = (u >>> 16) & 0x8000;
  const a = u & 0x7fffffff;
  if (a > 0x7f800000) return sign | 0x7e00; // NaN
  if (a >= 0x477ff000) return sign | 0x7c00; // rounds past 65504: infinity
  if (a < 0x38800000) {
    // below the smallest normal half: a subnormal half, m * 2^-24
    if (a < 0x33000000) return sign; // below half of the smallest subnormal (ties go to even zero)
    const e = a >>> 23;
    const m = (a & 0x7fffff) | 0x800000;
    const shift = 126 - e;
    let r = m >>> shift;
    const rem = m & ((1 << shift) - 1);
    const half = 1 << (shift - 1);
    if (rem > half || (rem === half && (r & 1) === 1)) r++;
    return sign | r;
  }
  const m = a & 0x7fffff;
  let h = (((a >>> 23) - 112) << 10) | (m >>> 13);
  const rest = m & 0x1fff;
  if (rest > 0x1000 || (rest === 0x1000 && (h & 1) === 1)) h++;
  return sign | h;
}

/** float32 -> float16 bits, round to nearest even, overflow to infinity, subnormals kept. */
export function float32ToFloat16(src: Float32Array): Uint16Array {
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  const out = new Uint16Array(src.length);
  for (let i = 0; i < bits.length; i++) out[i] = f32BitsToF16(bits[i]);
  return out;
}

function f16BitsToF32(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >>> 10) & 0x1f;
  const man = h & 0x3ff;
  if (exp === 0) return sign * man * 5.960464477539063e-8; // 2^-24
  if (exp === 31) return man ? NaN : sign * Infinity;
  u32[0] = ((h & 0x8000) << 16) | ((exp + 112) << 23) | (man << 13);
  return f32[0];
}

/** float16 bits -> float32 (exact). */
export function float16ToFloat32(src: Uint16Array): Float32Array {
  const out = new Float32Array(src.length);
  for (let i = 0; i < src.length; i++) out[i] = f16BitsToF32(src[i]);
  return out;
}

/** The values of a float tensor as float32 (the tensor's own array when it already is float32). */
export function toFloat32(t: Tensor): Float32Array {
  checkType(t?.type, 'tensor.type', FLOAT_TYPES);
  if (t.type === 'float32') return t.data as Float32Array;
  return t.type === 'float16' ? float16ToFloat32(t.data as Uint16Array) : bfloat16ToFloat32(t.data as Uint16Array);
}

/** A float tensor converted to another float type (the same tensor when the type already matches). */
export function cast<T extends FloatType>(t: Tensor, type: T): Tensor<T> {
  checkType(type, 'type', FLOAT_TYPES);
  if (t.type === type) return t as Tensor<T>;
  const v = toFloat32(t);
  const data = type === 'float32' ? v : type === 'float16' ? float32ToFloat16(v) : float32ToBfloat16(v);
  return { type, data: data as DataOf<T>, dims: [...t.dims] };
}
