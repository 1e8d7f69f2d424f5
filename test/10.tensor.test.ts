import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import {
  bfloat16ToFloat32,
  cast,
  float16ToFloat32,
  float32ToBfloat16,
  float32ToFloat16,
  tensor,
  toFloat32,
  zeros,
} from '../lib/index';
import { bf16BitsToNumber, f16BitsToNumber, mulberry32 } from './helpers/reference';

const hex = (n: number) => '0x' + n.toString(16).padStart(4, '0');
const f32OfBits = (u: number) => new Float32Array(new Uint32Array([u >>> 0]).buffer)[0];
const bitsOfF32 = (v: number) => new Uint32Array(new Float32Array([v]).buffer)[0];

function toBf16(values: number[]): number[] {
  return Array.from(float32ToBfloat16(Float32Array.from(values)));
}
function toF16(values: number[]): number[] {
  return Array.from(float32ToFloat16(Float32Array.from(values)));
}

// ---- an independent float64 model of round-to-nearest-even into a 16-bit format -------------

/** Rounds |v| (a float32 value) to a format with `mant` stored mantissa bits and min exponent emin. */
function roundFormat(v: number, mant: number, emin: number, maxFinite: number): number {
  if (Number.isNaN(v)) return NaN;
  const a = Math.abs(v);
  if (a === Infinity) return v;
  if (a === 0) return v;
  const e = Math.max(Math.floor(Math.log2(a)), emin);
  // log2 can be off by one near powers of two; fix it up exactly
  let ee = e;
  while (ee > emin && 2 ** ee > a) ee--;
  while (2 ** (ee + 1) <= a) ee++;
  const ulp = 2 ** (ee - mant);
  const q = a / ulp; // exact: a is float32, ulp a power of two
  const fl = Math.floor(q);
  const rem = q - fl;
  const r = rem > 0.5 || (rem === 0.5 && fl % 2 === 1) ? fl + 1 : fl;
  const rounded = r * ulp;
  const out = rounded > maxFinite ? Infinity : rounded;
  return v < 0 ? -out : out;
}
const F16_MAX = 65504;
const BF16_MAX = (2 - 2 ** -7) * 2 ** 127;

// value -> bits maps of every 16-bit pattern, built from the independent decoders
function encoder(decode: (h: number) => number): (v: number) => number {
  const m = new Map<number, number>();
  for (let h = 0; h < 0x10000; h++) {
    const v = decode(h);
    if (Number.isNaN(v)) continue;
    if (Object.is(v, -0)) continue;
    if (!m.has(v)) m.set(v, h);
  }
  return (v) => (Object.is(v, -0) ? 0x8000 : m.get(v)!);
}
const encF16 = encoder(f16BitsToNumber);
const encBf16 = encoder(bf16BitsToNumber);

/** Random float32 bit patterns spread over every exponent, plus the interesting edges. */
function interestingF32(n: number, seed: number): Float32Array {
  const rnd = mulberry32(seed);
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const u = (Math.floor(rnd() * 0x100000000) >>> 0);
    out.push(f32OfBits(u));
  }
  // values clustered around the f16 range and its rounding boundaries
  for (let i = 0; i < n; i++) {
    const e = Math.floor(rnd() * 50) - 30; // 2^-30 .. 2^19
    const m = 1 + rnd();
    const sign = rnd() < 0.5 ? -1 : 1;
    out.push(Math.fround(sign * m * 2 ** e));
  }
  // exact midpoints for f16 and bf16 at several exponents, and their neighbours
  for (let e = -26; e <= 16; e++)
    for (const frac of [0.5, 1.5, 2.5, 1023.5, 511.5]) {
      const mid16 = Math.fround((1024 + frac) * 2 ** (e - 10));
      const mid_b = Math.fround((128 + frac) * 2 ** (e - 7));
      for (const m of [mid16, mid_b]) {
        const b = bitsOfF32(m);
        out.push(m, f32OfBits(b + 1), f32OfBits(b - 1));
      }
    }
  return Float32Array.from(out);
}

// ---- bfloat16 ----------------------------------------------------------------------------------

const bf16 = suite('bfloat16 conversions');

bf16('known values', () => {
  const cases: [number, number][] = [
    [1.0, 0x3f80],
    [-2.5, 0xc020],
    [0, 0x0000],
    [-0, 0x8000],
    [65504, 0x4780], // 0x477fe000: rounds up to 65536
    [65520, 0x4780],
    [Infinity, 0x7f80],
    [-Infinity, 0xff80],
    [3.140625, 0x4049], // exact in bf16
    [f32OfBits(0x3f808000), 0x3f80], // tie, even below
    [f32OfBits(0x3f818000), 0x3f82], // tie, even above
    [f32OfBits(0x3f808001), 0x3f81], // just above the tie
    [f32OfBits(0x3f807fff), 0x3f80], // just below the tie
    [f32OfBits(0x7f7fffff), 0x7f80], // largest float32 rounds to infinity
    [f32OfBits(0x00000001), 0x0000], // smallest f32 subnormal rounds to zero
    [f32OfBits(0x00010000), 0x0001], // smallest bf16 subnormal is exact
  ];
  for (const [v, bits] of cases) assert.is(hex(toBf16([v])[0]), hex(bits), `float32ToBfloat16(${v})`);
});

bf16('NaN stays NaN, including signalling NaNs whose payload is only in the low bits', () => {
  for (const u of [0x7fc00000, 0xffc00000, 0x7f800001, 0xff800001, 0x7fbfffff, 0x7f810000]) {
    const h = toBf16([f32OfBits(u)])[0];
    assert.ok((h & 0x7f80) === 0x7f80 && (h & 0x7f) !== 0, `bf16 of NaN bits ${u.toString(16)} gave ${hex(h)}, not a NaN`);
    assert.is(h & 0x8000, (u >>> 16) & 0x8000, 'sign kept');
    assert.ok(Number.isNaN(bfloat16ToFloat32(new Uint16Array([h]))[0]));
  }
});

bf16('bfloat16ToFloat32 is exact on every bit pattern, and round trips', () => {
  const all = new Uint16Array(0x10000).map((_, i) => i);
  const wide = bfloat16ToFloat32(all);
  const back = float32ToBfloat16(wide);
  for (let h = 0; h < 0x10000; h++) {
    const ref = bf16BitsToNumber(h);
    if (Number.isNaN(ref)) {
      assert.ok(Number.isNaN(wide[h]), `bf16 ${hex(h)} should widen to NaN`);
      assert.ok(Number.isNaN(bf16BitsToNumber(back[h])), `bf16 ${hex(h)} should round trip to a NaN`);
      continue;
    }
    assert.ok(Object.is(wide[h], ref), `bf16 ${hex(h)} widened to ${wide[h]}, want ${ref}`);
    assert.is(back[h], h, `bf16 ${hex(h)} round trip`);
  }
});

bf16('float32ToBfloat16 matches an independent round-to-nearest-even model', () => {
  const vals = interestingF32(20000, 7);
  const got = float32ToBfloat16(vals);
  for (let i = 0; i < vals.length; i++) {
    const v = vals[i];
    if (Number.isNaN(v)) continue;
    const want = encBf16(roundFormat(v, 7, -126, BF16_MAX));
    if (got[i] !== want)
      assert.unreachable(`float32ToBfloat16(${v} = bits 0x${bitsOfF32(v).toString(16)}) = ${hex(got[i])}, want ${hex(want)}`);
  }
});

// ---- float16 -----------------------------------------------------------------------------------

const f16 = suite('float16 conversions');

f16('known values', () => {
  const cases: [number, number][] = [
    [1.0, 0x3c00],
    [-2.5, 0xc100],
    [0, 0x0000],
    [-0, 0x8000],
    [65504, 0x7bff], // largest finite half
    [65519, 0x7bff], // below the midpoint to infinity
    [65520, 0x7c00], // the midpoint: ties to even = infinity
    [1e6, 0x7c00],
    [-1e6, 0xfc00],
    [Infinity, 0x7c00],
    [-Infinity, 0xfc00],
    [2 ** -24, 0x0001], // smallest subnormal
    [-(2 ** -24), 0x8001],
    [2 ** -25, 0x0000], // half the smallest subnormal: ties to even zero
    [-(2 ** -25), 0x8000],
    [f32OfBits(bitsOfF32(2 ** -25) + 1), 0x0001], // just above: rounds up
    [3 * 2 ** -25, 0x0002], // 1.5 ulp: ties to even (2)
    [5 * 2 ** -25, 0x0002], // 2.5 ulp: ties to even (2)
    [1023 * 2 ** -24, 0x03ff], // largest subnormal
    [1023.5 * 2 ** -24, 0x0400], // rounds into the smallest normal
    [2 ** -14, 0x0400], // smallest normal
    [1 + 2 ** -11, 0x3c00], // tie, even below
    [1 + 3 * 2 ** -11, 0x3c02], // tie, even above
    [f32OfBits(bitsOfF32(1 + 2 ** -11) + 1), 0x3c01],
    [0.1, 0x2e66],
    [1e-10, 0x0000],
    [-1e-10, 0x8000],
  ];
  for (const [v, bits] of cases) assert.is(hex(toF16([v])[0]), hex(bits), `float32ToFloat16(${v})`);
});

f16('NaN stays NaN with its sign', () => {
  for (const u of [0x7fc00000, 0xffc00000, 0x7f800001, 0xff800001, 0x7fbfffff]) {
    const h = toF16([f32OfBits(u)])[0];
    assert.ok((h & 0x7c00) === 0x7c00 && (h & 0x3ff) !== 0, `f16 of NaN bits ${u.toString(16)} gave ${hex(h)}, not a NaN`);
    assert.is(h & 0x8000, (u >>> 16) & 0x8000, 'sign kept');
  }
});

f16('float16ToFloat32 is exact on every bit pattern, and round trips', () => {
  const all = new Uint16Array(0x10000).map((_, i) => i);
  const wide = float16ToFloat32(all);
  const back = float32ToFloat16(wide);
  for (let h = 0; h < 0x10000; h++) {
    const ref = f16BitsToNumber(h);
    if (Number.isNaN(ref)) {
      assert.ok(Number.isNaN(wide[h]), `f16 ${hex(h)} should widen to NaN`);
      assert.ok(Number.isNaN(f16BitsToNumber(back[h])), `f16 ${hex(h)} should round trip to a NaN`);
      continue;
    }
    assert.ok(Object.is(wide[h], ref), `f16 ${hex(h)} widened to ${wide[h]}, want ${ref}`);
    assert.is(back[h], h, `f16 ${hex(h)} round trip`);
  }
});

f16('float32ToFloat16 matches an independent round-to-nearest-even model', () => {
  const vals = interestingF32(20000, 11);
  const got = float32ToFloat16(vals);
  for (let i = 0; i < vals.length; i++) {
    const v = vals[i];
    if (Number.isNaN(v)) continue;
    const want = encF16(roundFormat(v, 10, -14, F16_MAX));
    if (got[i] !== want)
      assert.unreachable(`float32ToFloat16(${v} = bits 0x${bitsOfF32(v).toString(16)}) = ${hex(got[i])}, want ${hex(want)}`);
  }
});

f16('conversions read typed-array views at an offset', () => {
  const buf = new Float32Array([7, 1, -2.5, 9]);
  const view = buf.subarray(1, 3);
  assert.equal(Array.from(float32ToFloat16(view)), [0x3c00, 0xc100]);
  assert.equal(Array.from(float32ToBfloat16(view)), [0x3f80, 0xc020]);
});

// ---- tensor(), zeros(), cast(), toFloat32() ------------------------------------------------------

const tt = suite('tensor()');

tt('uses a typed array of the type in place and defaults dims to [length]', () => {
  const data = new Float32Array([1, 2, 3, 4, 5, 6]);
  const t = tensor('float32', data, [2, 3]);
  assert.is(t.data, data);
  assert.is(t.type, 'float32');
  assert.equal([...t.dims], [2, 3]);
  const u = tensor('int32', new Int32Array(5));
  assert.equal([...u.dims], [5]);
  const h = new Uint16Array([0x3c00]);
  assert.is(tensor('float16', h).data, h, 'a Uint16Array is taken as float16 bits, in place');
});

tt('converts plain numbers, rounding to 16-bit types', () => {
  const b = tensor('bfloat16', [1, -2.5, 1 + 2 ** -8], [3]);
  assert.ok(b.data instanceof Uint16Array);
  assert.equal(Array.from(b.data), [0x3f80, 0xc020, 0x3f80]);
  const h = tensor('float16', [1, -2.5, 65520]);
  assert.equal(Array.from(h.data), [0x3c00, 0xc100, 0x7c00]);
  const f = tensor('float32', [0.1]);
  assert.ok(f.data instanceof Float32Array);
  assert.is(f.data[0], Math.fround(0.1));
  const i = tensor('int32', [1, -2, 3]);
  assert.ok(i.data instanceof Int32Array);
  assert.equal(Array.from(i.data), [1, -2, 3]);
});

tt('dims are copied, so changing the caller array later does not change the tensor', () => {
  const dims = [2, 2];
  const t = tensor('float32', new Float32Array(4), dims);
  dims[0] = 99;
  assert.equal([...t.dims], [2, 2]);
});

tt('a zero-size tensor is allowed', () => {
  const t = tensor('float32', new Float32Array(0), [0, 5]);
  assert.equal([...t.dims], [0, 5]);
});

function throwsWith(fn: () => unknown, cls: ErrorConstructor, code: string, parts: string[], label: string) {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  assert.ok(err instanceof cls, `${label}: expected ${cls.name}, got ${err}`);
  const e = err as Error & { code?: string };
  assert.is(e.code, code, `${label}: code`);
  for (const p of parts) assert.ok(e.message.includes(p), `${label}: message ${JSON.stringify(e.message)} should contain ${JSON.stringify(p)}`);
}

tt('rejects bad arguments with errors that name the argument and the value', () => {
  throwsWith(() => tensor('float64' as never, [1]), TypeError, 'ERR_INVALID_ARG_TYPE', ['type', '"float64"'], 'unknown type');
  throwsWith(() => tensor(undefined as never, [1]), TypeError, 'ERR_INVALID_ARG_TYPE', ['type', 'undefined'], 'missing type');
  throwsWith(() => tensor('float32', new Float32Array(3), [2, 2]), RangeError, 'ERR_OUT_OF_RANGE', ['data', '3', '[2,2]', '4'], 'length mismatch');
  throwsWith(() => tensor('float32', new Float32Array(3), [1.5, 2]), TypeError, 'ERR_INVALID_ARG_TYPE', ['dims', '1.5'], 'non-integer dims');
  throwsWith(() => tensor('float32', new Float32Array(3), [NaN]), TypeError, 'ERR_INVALID_ARG_TYPE', ['dims', 'NaN'], 'NaN dims');
  throwsWith(() => tensor('float32', new Float32Array(3), ['3' as never]), TypeError, 'ERR_INVALID_ARG_TYPE', ['dims', '"3"'], 'string dims');
  throwsWith(() => tensor('float32', new Float32Array(0), [-1, 0]), RangeError, 'ERR_OUT_OF_RANGE', ['dims[0]', '-1'], 'negative dims');
  throwsWith(() => tensor('float32', new Float32Array(4), 4 as never), TypeError, 'ERR_INVALID_ARG_TYPE', ['dims', '4'], 'dims not an array');
  throwsWith(() => tensor('float32', 'abcd' as never, [4]), TypeError, 'ERR_INVALID_ARG_TYPE', ['data', '"abcd"'], 'string data');
  throwsWith(() => tensor('float32', null as never, [4]), TypeError, 'ERR_INVALID_ARG_TYPE', ['data', 'null'], 'null data');
  throwsWith(() => zeros('float32', [2, -3]), RangeError, 'ERR_OUT_OF_RANGE', ['dims[1]', '-3'], 'zeros negative dims');
  throwsWith(() => zeros('uint8' as never, [2]), TypeError, 'ERR_INVALID_ARG_TYPE', ['type', '"uint8"'], 'zeros unknown type');
});

tt('zeros() makes zero-filled data of the right array kind', () => {
  assert.ok(zeros('float32', [2, 3]).data instanceof Float32Array);
  assert.ok(zeros('bfloat16', [2, 3]).data instanceof Uint16Array);
  assert.ok(zeros('float16', [2, 3]).data instanceof Uint16Array);
  assert.ok(zeros('int32', [4]).data instanceof Int32Array);
  const z = zeros('float16', [3, 5]);
  assert.is(z.data.length, 15);
  assert.ok(z.data.every((v) => v === 0));
});

tt('cast() and toFloat32() convert between float types', () => {
  const x = tensor('float32', [1, -2.5, 0.1, 65520], [2, 2]);
  const h = cast(x, 'float16');
  assert.is(h.type, 'float16');
  assert.equal([...h.dims], [2, 2]);
  assert.equal(Array.from(h.data), [0x3c00, 0xc100, 0x2e66, 0x7c00]);
  const b = cast(x, 'bfloat16');
  assert.equal(Array.from(b.data), [0x3f80, 0xc020, 0x3dcd, 0x4780]);
  assert.is(cast(x, 'float32'), x, 'same type: the same tensor');
  const back = toFloat32(h);
  assert.equal(Array.from(back), [1, -2.5, f16BitsToNumber(0x2e66), Infinity]);
  assert.is(toFloat32(x), x.data, 'toFloat32 of a float32 tensor is its own data');
  // bf16 -> f16 goes through the exact f32 value
  const hb = cast(b, 'float16');
  assert.equal(Array.from(hb.data), Array.from(float32ToFloat16(bfloat16ToFloat32(b.data))));
  throwsWith(() => cast(x, 'int32' as never), TypeError, 'ERR_INVALID_ARG_TYPE', ['type', '"int32"'], 'cast to int32');
  throwsWith(() => toFloat32(tensor('int32', [1])), TypeError, 'ERR_INVALID_ARG_TYPE', ['tensor.type', '"int32"'], 'toFloat32 of int32');
});

tt('tensor() refuses data whose numbers would be misread', () => {
  // 16-bit float bits given for another type would become their integer values
  throwsWith(() => tensor('float32', new Uint16Array([0x3f80])), TypeError, 'ERR_INVALID_ARG_TYPE', ['Uint16Array', "'float32'"], 'bits as float32');
  throwsWith(() => tensor('int32', new Uint16Array([1])), TypeError, 'ERR_INVALID_ARG_TYPE', ['Uint16Array', "'int32'"], 'bits as int32');
  // int32 data must be integers in range, not truncated
  throwsWith(() => tensor('int32', [1, 1.5]), RangeError, 'ERR_OUT_OF_RANGE', ['data[1]', '1.5'], 'fraction as int32');
  throwsWith(() => tensor('int32', [2 ** 31]), RangeError, 'ERR_OUT_OF_RANGE', ['data[0]', '2147483648'], 'overflow as int32');
  assert.equal(Array.from(tensor('int32', [-3, 7]).data), [-3, 7]);
});

tt('tensor() refuses elements that are not numbers, for every type (no NaN, 0 or 1 in their place)', () => {
  for (const type of ['float32', 'float16', 'bfloat16', 'int32'] as const) {
    throwsWith(() => tensor(type, ['abc', null, true] as never), TypeError, 'ERR_INVALID_ARG_TYPE', ['data[0]', '"abc"', type], `${type}: a string`);
    throwsWith(() => tensor(type, [1, null] as never), TypeError, 'ERR_INVALID_ARG_TYPE', ['data[1]', 'null'], `${type}: null`);
    throwsWith(() => tensor(type, [2, 3, true] as never), TypeError, 'ERR_INVALID_ARG_TYPE', ['data[2]', 'true'], `${type}: a boolean`);
    throwsWith(() => tensor(type, [1, undefined] as never), TypeError, 'ERR_INVALID_ARG_TYPE', ['data[1]', 'undefined'], `${type}: undefined`);
    throwsWith(() => tensor(type, [1n] as never), TypeError, 'ERR_INVALID_ARG_TYPE', ['data[0]', '1'], `${type}: a bigint`);
    throwsWith(() => tensor(type, new BigInt64Array(2) as never), TypeError, 'ERR_INVALID_ARG_TYPE', ['BigInt64Array'], `${type}: a BigInt64Array`);
  }
  // numbers that are not finite are still numbers: a float tensor keeps them
  assert.equal(Array.from(tensor('float32', [NaN, Infinity, -0]).data), [NaN, Infinity, -0]);
  // other typed arrays hold numbers and convert
  assert.equal(Array.from(tensor('float32', new Float64Array([0.5, 2])).data), [0.5, 2]);
});

bf16.run();
f16.run();
tt.run();
