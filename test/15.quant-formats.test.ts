import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { bitsPerWeight, dequantize, dequantizeSync, quantBytes, quantize, quantizeSync, tensor, type QuantTensor, type QuantType } from '../lib/index';
import { binding } from '../lib/core/binding';
import { BLOCK, dequantRef, QTYPES, randomBlocks } from './helpers/quant-reference';
import { assertSameBits, mulberry32, randn } from './helpers/reference';

const qt = (type: QuantType, bytes: ArrayLike<number>, dims: number[]): QuantTensor => ({ type, data: Uint8Array.from(bytes), dims });
const le16 = (h: number) => [h & 0xff, h >> 8];

// ---- fixtures worked out by hand from the format definitions ----------------------------------

const fixtures = suite('dequantize: hand-made blocks');

fixtures('q8_0: d = 0.5 (f16 0x3800), qs[j] = j - 16 -> (j - 16) / 2', () => {
  const qs = Array.from({ length: 32 }, (_, j) => (j - 16) & 0xff);
  const y = dequantizeSync(qt('q8_0', [...le16(0x3800), ...qs], [1, 32]));
  assert.equal([...y.data], [-8, -7.5, -7, -6.5, -6, -5.5, -5, -4.5, -4, -3.5, -3, -2.5, -2, -1.5, -1, -0.5,
    0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5, 4, 4.5, 5, 5.5, 6, 6.5, 7, 7.5]);
});

fixtures('q4_0: d = -2 (0xC000); qs[j] = j | (15 - j) << 4: low nibbles give x[j], high nibbles x[j + 16]', () => {
  const qs = Array.from({ length: 16 }, (_, j) => j | ((15 - j) << 4));
  const y = dequantizeSync(qt('q4_0', [...le16(0xc000), ...qs], [1, 32]));
  // x[j] = (j - 8) * -2 = 16 - 2j;  x[j + 16] = ((15 - j) - 8) * -2 = 2j - 14
  assert.equal([...y.data], [16, 14, 12, 10, 8, 6, 4, 2, 0, -2, -4, -6, -8, -10, -12, -14,
    -14, -12, -10, -8, -6, -4, -2, 0, 2, 4, 6, 8, 10, 12, 14, 16]);
});

// q4_k / q5_k super-block: d = 1 (0x3C00), dmin = 0.5 (0x3800), sub-block scales sc = [1,2,3,4,17,33,49,63]
// and mins m = [0,1,2,3,20,36,52,63], packed into scales[12] as ggml's get_scale_min_k4 reads them:
//   scales[j] = sc[j] | (sc[j+4] >> 4) << 6,  scales[j+4] = m[j] | (m[j+4] >> 4) << 6,
//   scales[j+8] = (sc[j+4] & 15) | (m[j+4] & 15) << 4              (j < 4)
const K_SCALES = [1 | (1 << 6), 2 | (2 << 6), 3 | (3 << 6), 4 | (3 << 6), 0 | (1 << 6), 1 | (2 << 6), 2 | (3 << 6), 3 | (3 << 6), 0x41, 0x41, 0x41, 0xff];
// qs[i] = (i & 15) | (15 - (i & 15)) << 4: within each 64 values, value l < 32 is the low nibble of
// qs[32g + l] (sub-block 2g), value 32 + l its high nibble (sub-block 2g + 1)
const K_QS = Array.from({ length: 128 }, (_, i) => (i & 15) | ((15 - (i & 15)) << 4));

fixtures('q4_k: x = d*sc*q - dmin*m, the 6-bit scales and mins unpacked', () => {
  const y = dequantizeSync(qt('q4_k', [...le16(0x3c00), ...le16(0x3800), ...K_SCALES, ...K_QS], [1, 256])).data;
  assert.is(y[0], 0); //            sub-block 0: 1*0 - 0.5*0
  assert.is(y[5], 5); //            1*5 - 0
  assert.is(y[32], 29.5); //        sub-block 1: 2*15 - 0.5*1
  assert.is(y[64 + 3], 8); //       sub-block 2: 3*3 - 0.5*2
  assert.is(y[96 + 3], 46.5); //    sub-block 3: 4*12 - 0.5*3
  assert.is(y[128 + 10], 160); //   sub-block 4 (sc 17, m 20): 17*10 - 10
  assert.is(y[160], 477); //        sub-block 5 (sc 33, m 36): 33*15 - 18
  assert.is(y[192 + 15], 709); //   sub-block 6 (sc 49, m 52): 49*15 - 26
  assert.is(y[224 + 31], -31.5); // sub-block 7 (sc 63, m 63): 63*0 - 31.5
});

fixtures('q5_k: the fifth bit from qh adds 16', () => {
  // qh[l] = 0b10101010 for even l: odd sub-blocks (1, 3, 5, 7) of even positions get +16
  const qh = Array.from({ length: 32 }, (_, l) => (l % 2 === 0 ? 0xaa : 0));
  const y = dequantizeSync(qt('q5_k', [...le16(0x3c00), ...le16(0x3800), ...K_SCALES, ...qh, ...K_QS], [1, 256])).data;
  assert.is(y[0], 0); //          sub-block 0, bit 0 clear: as q4_k
  assert.is(y[32], 61.5); //      sub-block 1, l = 0: 2*(15 + 16) - 0.5
  assert.is(y[33], 27.5); //      l = 1 (odd, no bit): 2*14 - 0.5
  assert.is(y[96 + 2], 4 * 29 - 1.5); // sub-block 3, l = 2: 4*(13 + 16) - 1.5 = 114.5
  assert.is(y[224 + 30], 1039.5); // sub-block 7, l = 30: high nibble of qs[126] = 15 - 14 = 1, bit 7 set: 63*(1 + 16) - 31.5
});

fixtures('q6_k: ql/qh 6-bit values minus 32, int8 scales per 16', () => {
  // ql[i] = 0x21 (low nibble 1, high 2); qh[i] = 0b11_10_01_00 (fields 0, 1, 2, 3); scales[i] = i - 8; d = 0.25 (0x3400)
  // values per half of 128: q1 = 1 | 0<<4 = 1, q2 = 1 | 1<<4 = 17, q3 = 2 | 2<<4 = 34, q4 = 2 | 3<<4 = 50, each minus 32
  const bytes = [...new Array(128).fill(0x21), ...new Array(64).fill(0xe4), ...Array.from({ length: 16 }, (_, i) => (i - 8) & 0xff), ...le16(0x3400)];
  const y = dequantizeSync(qt('q6_k', bytes, [1, 256])).data;
  assert.is(y[0], 62); //          0.25 * sc[0] (-8) * -31
  assert.is(y[16], 54.25); //      0.25 * sc[1] (-7) * -31
  assert.is(y[32], 22.5); //       0.25 * sc[2] (-6) * -15
  assert.is(y[64], -2); //         0.25 * sc[4] (-4) * 2
  assert.is(y[96 + 20], -4.5); //  0.25 * sc[7] (-1) * 18
  assert.is(y[128] + 0, 0); //     second half: 0.25 * sc[8] (0) * -31
  assert.is(y[255], 31.5); //      0.25 * sc[15] (7) * 18
});

fixtures('leading dims are rows; output types', () => {
  const qs = Array.from({ length: 32 }, (_, j) => j);
  const blk = [...le16(0x3c00), ...qs];
  const t = qt('q8_0', [...blk, ...blk, ...blk, ...blk, ...blk, ...blk], [3, 2, 32]);
  const y = dequantizeSync(t, { type: 'bfloat16' });
  assert.is(y.type, 'bfloat16');
  assert.equal([...y.dims], [3, 2, 32]);
  assert.is(y.data.length, 192);
  assert.is(y.data[31], 0x41f8); // 31 in bf16
});

// ---- every format against the second reference, on random blocks, bit for bit ------------------

const random = suite('dequantize: random blocks, ggml values bit for bit');

for (const type of QTYPES)
  random(type, async () => {
    const rows = 3, cols = 2 * BLOCK[type].values;
    const data = randomBlocks(type, rows * 2, mulberry32(15));
    const t = qt(type, data, [rows, cols]);
    assertSameBits(dequantizeSync(t).data, dequantRef(type, data, rows * cols), type);
    assertSameBits((await dequantize(t)).data, dequantRef(type, data, rows * cols), `${type} async`);
  });

// ---- the quantiser ------------------------------------------------------------------------------

const quant = suite('quantize: our quantiser, its error on N(0,1) weights');

// Relative RMS error ||dequantize(quantize(w)) - w|| / ||w|| on N(0,1) weights, as README documents.
const BOUND: Record<'q8_0' | 'q4_0' | 'q4_k', number> = { q8_0: 0.006, q4_0: 0.085, q4_k: 0.075 };

for (const type of ['q8_0', 'q4_0', 'q4_k'] as const)
  quant(`${type}: bytes, ggml-readable blocks, relative RMS error < ${BOUND[type]}`, async () => {
    const rows = 64, cols = 512;
    const w = tensor('float32', randn(rows * cols, 7), [rows, cols]);
    const q = await quantize(w, type);
    assert.is(q.type, type);
    assert.equal([...q.dims], [rows, cols]);
    assert.is(q.data.length, quantBytes(type, [rows, cols]));
    assert.is(q.data.length, (rows * cols * bitsPerWeight(type)) / 8);
    // the blocks decode with the second reference to the library's dequantize
    const y = dequantRef(type, q.data, rows * cols);
    assertSameBits(dequantizeSync(q).data, y, type);
    let se = 0, ss = 0;
    for (let i = 0; i < y.length; i++) (se += (y[i] - w.data[i]) ** 2), (ss += w.data[i] ** 2);
    const rel = Math.sqrt(se / ss);
    assert.ok(rel < BOUND[type], `${type}: relative RMS error ${rel}`);
    // deterministic, sync and async alike
    assert.equal(quantizeSync(w, type).data, q.data);
  });

quant('q4_k: scale and min codes are 6-bit and used (a block of constant rows gives its value back)', () => {
  // each sub-block of 32 is constant: s*q - m can hit it exactly or nearly
  const v = new Float32Array(256);
  for (let i = 0; i < 256; i++) v[i] = [0.5, -1, 2, 0.25, -3, 1.5, 0, 4][i >> 5];
  const y = dequantizeSync(quantizeSync(tensor('float32', v, [1, 256]), 'q4_k')).data;
  for (let i = 0; i < 256; i++) assert.ok(Math.abs(y[i] - v[i]) < 0.1, `value ${i}: ${y[i]} vs ${v[i]}`);
});

quant('16-bit sources: the same blocks as their float32 values', () => {
  const v = randn(2 * 256, 9);
  const bf = tensor('bfloat16', v, [2, 256]);
  const wide = tensor('float32', Float32Array.from({ length: 512 }, (_, i) => new Float32Array(new Uint32Array([bf.data[i] << 16]).buffer)[0]), [2, 256]);
  for (const type of ['q8_0', 'q4_0', 'q4_k'] as const) assert.equal(quantizeSync(bf, type).data, quantizeSync(wide, type).data, type);
});

quant('zeros quantise to zeros', () => {
  for (const type of ['q8_0', 'q4_0', 'q4_k'] as const) {
    const y = dequantizeSync(quantizeSync(tensor('float32', new Float32Array(256), [1, 256]), type)).data;
    assert.ok(y.every((v) => v === 0), type);
  }
});

// ---- errors -------------------------------------------------------------------------------------

const errors = suite('quantize / dequantize: errors name the argument');

errors('a row that is not whole blocks is a RangeError', () => {
  assert.throws(() => quantizeSync(tensor('float32', new Float32Array(48), [1, 48]), 'q8_0'), (e: Error) => e instanceof RangeError && /multiple of 32/.test(e.message));
  assert.throws(() => quantizeSync(tensor('float32', new Float32Array(64), [1, 64]), 'q4_k'), (e: Error) => e instanceof RangeError && /multiple of 256/.test(e.message));
  assert.throws(() => dequantizeSync(qt('q4_0', new Array(18).fill(0), [1, 16])), (e: Error) => e instanceof RangeError && /multiple of 32/.test(e.message));
});

errors('unknown types, wrong data and sizes', () => {
  const x = tensor('float32', new Float32Array(32), [1, 32]);
  assert.throws(() => quantizeSync(x, 'q5_k' as never), (e: Error) => e instanceof TypeError && /type must be one of 'q8_0', 'q4_0', 'q4_k'/.test(e.message));
  assert.throws(() => quantizeSync(x, 'int8' as never), TypeError);
  assert.throws(() => quantizeSync({ type: 'int32', data: new Int32Array(32), dims: [1, 32] } as never, 'q8_0'), TypeError);
  assert.throws(() => dequantizeSync({ type: 'q8_0', data: new Uint16Array(17), dims: [1, 32] } as never), (e: Error) => e instanceof TypeError && /Uint8Array/.test(e.message));
  assert.throws(() => dequantizeSync(qt('q8_0', new Array(33).fill(0), [1, 32])), (e: Error) => e instanceof RangeError && /33 bytes but q8_0 dims \[1,32\] need 34/.test(e.message));
  assert.throws(() => dequantizeSync(qt('q8_0', new Array(34).fill(0), [1, 32]), { type: 'int32' as never }), TypeError);
  assert.throws(() => dequantizeSync({ type: 'q7_0', data: new Uint8Array(34), dims: [1, 32] } as never), TypeError);
});

errors('the native module re-checks quantised tensors', () => {
  assert.throws(() => binding.dequantize({ type: 'q4_k', data: new Uint8Array(100), dims: [1, 256] }), (e: Error) => e instanceof RangeError && /100 bytes/.test(e.message));
  assert.throws(() => binding.dequantize({ type: 'q4_k', data: new Uint8Array(144), dims: [1, 255] }), (e: Error) => e instanceof RangeError && /whole blocks/.test(e.message));
  assert.throws(() => binding.quantize({ type: 'float32', data: new Float32Array(32), dims: [1, 32] }, { type: 'q6_k' as never }), TypeError);
});

fixtures.run();
random.run();
quant.run();
errors.run();
