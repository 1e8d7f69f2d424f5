/**
 * ggml's block formats, written here a second time from their definitions (ggml-common.h's block
 * structs, ggml-quants.c's dequantize_row_*) for the tests, with nothing from the library: the
 * values every format defines, each f32 operation rounded on its own (Math.fround), in ggml's order.
 */
import { f16BitsToNumber, mulberry32 } from './reference';

export type QType = 'q8_0' | 'q4_0' | 'q4_k' | 'q5_k' | 'q6_k';
export const QTYPES: readonly QType[] = ['q8_0', 'q4_0', 'q4_k', 'q5_k', 'q6_k'];
export const BLOCK: Record<QType, { values: number; bytes: number }> = {
  q8_0: { values: 32, bytes: 34 },
  q4_0: { values: 32, bytes: 18 },
  q4_k: { values: 256, bytes: 144 },
  q5_k: { values: 256, bytes: 176 },
  q6_k: { values: 256, bytes: 210 },
};

const f = Math.fround;
const half = (b: Uint8Array, o: number) => f16BitsToNumber(b[o] | (b[o + 1] << 8));
const s8 = (v: number) => (v << 24) >> 24;

/** Scale and min of sub-block j of a q4_k / q5_k super-block (scales: 12 bytes at o). */
export function scaleMinK4(j: number, b: Uint8Array, o: number): [number, number] {
  if (j < 4) return [b[o + j] & 63, b[o + j + 4] & 63];
  return [(b[o + j + 4] & 0xf) | ((b[o + j - 4] >> 6) << 4), (b[o + j + 4] >> 4) | ((b[o + j] >> 6) << 4)];
}

/** The values of one block at byte o of b. */
export function dequantBlock(type: QType, b: Uint8Array, o: number): Float32Array {
  const y = new Float32Array(BLOCK[type].values);
  if (type === 'q8_0') {
    const d = half(b, o);
    for (let j = 0; j < 32; j++) y[j] = f(s8(b[o + 2 + j]) * d);
  } else if (type === 'q4_0') {
    const d = half(b, o);
    for (let j = 0; j < 16; j++) {
      y[j] = f(((b[o + 2 + j] & 0xf) - 8) * d);
      y[j + 16] = f(((b[o + 2 + j] >> 4) - 8) * d);
    }
  } else if (type === 'q4_k' || type === 'q5_k') {
    // d, dmin, scales[12], (q5_k: qh[32]), qs[128]
    const d = half(b, o), dmin = half(b, o + 2);
    const qh = o + 16, qs = type === 'q5_k' ? o + 48 : o + 16;
    for (let g = 0; g < 4; g++)
      for (let h = 0; h < 2; h++) {
        const [sc, m] = scaleMinK4(2 * g + h, b, o + 4);
        const dl = f(d * sc), ml = f(dmin * m);
        for (let l = 0; l < 32; l++) {
          let q = h ? b[qs + 32 * g + l] >> 4 : b[qs + 32 * g + l] & 0xf;
          if (type === 'q5_k' && (b[qh + l] >> (2 * g + h)) & 1) q += 16;
          y[64 * g + 32 * h + l] = f(f(dl * q) - ml);
        }
      }
  } else {
    // ql[128], qh[64], scales[16] (int8), d
    const d = half(b, o + 208);
    for (let n = 0; n < 2; n++) {
      const ql = o + 64 * n, qh = o + 128 + 32 * n, sc = o + 192 + 8 * n;
      for (let l = 0; l < 32; l++) {
        const is = l >> 4;
        const q1 = ((b[ql + l] & 0xf) | (((b[qh + l] >> 0) & 3) << 4)) - 32;
        const q2 = ((b[ql + l + 32] & 0xf) | (((b[qh + l] >> 2) & 3) << 4)) - 32;
        const q3 = ((b[ql + l] >> 4) | (((b[qh + l] >> 4) & 3) << 4)) - 32;
        const q4 = ((b[ql + l + 32] >> 4) | (((b[qh + l] >> 6) & 3) << 4)) - 32;
        y[128 * n + l] = f(f(d * s8(b[sc + is])) * q1);
        y[128 * n + l + 32] = f(f(d * s8(b[sc + is + 2])) * q2);
        y[128 * n + l + 64] = f(f(d * s8(b[sc + is + 4])) * q3);
        y[128 * n + l + 96] = f(f(d * s8(b[sc + is + 6])) * q4);
      }
    }
  }
  return y;
}

/** The values of a whole quantised tensor (rows of blocks), as float32. */
export function dequantRef(type: QType, data: Uint8Array, n: number): Float32Array {
  const { values, bytes } = BLOCK[type];
  const out = new Float32Array(n);
  for (let i = 0; i < n / values; i++) out.set(dequantBlock(type, data, i * bytes), i * values);
  return out;
}

/**
 * Random bytes that are valid blocks: every f16 scale field a finite value of moderate size (so
 * that no block holds infinities), everything else random.
 */
export function randomBlocks(type: QType, nblocks: number, rnd: () => number, minExp = 5, expRange = 8): Uint8Array {
  const { bytes } = BLOCK[type];
  const b = new Uint8Array(nblocks * bytes);
  for (let i = 0; i < b.length; i++) b[i] = Math.floor(rnd() * 256);
  // an f16 in [2^(minExp-15), 2^(minExp+expRange-15)) with a random sign: random mantissa
  const setHalf = (o: number) => {
    const h = ((minExp + Math.floor(rnd() * expRange)) << 10) | Math.floor(rnd() * 1024) | (rnd() < 0.5 ? 0x8000 : 0);
    b[o] = h & 0xff;
    b[o + 1] = h >> 8;
  };
  for (let i = 0; i < nblocks; i++) {
    const o = i * bytes;
    if (type === 'q6_k') setHalf(o + 208);
    else setHalf(o);
    if (type === 'q4_k' || type === 'q5_k') setHalf(o + 2);
  }
  return b;
}

/** A weight matrix [rows, cols] of random `type` blocks whose values are about N(0, 1/cols). */
export function randomWeights(type: QType, rows: number, cols: number, seed: number): { type: QType; data: Uint8Array; dims: number[] } {
  // values ~ d * scale * q: keep d * (typical scale * q) ~ 1/sqrt(cols)
  const target = Math.log2(1 / Math.sqrt(cols)) - ({ q8_0: 6, q4_0: 2.5, q4_k: 8, q5_k: 9, q6_k: 10 } as const)[type];
  const minExp = Math.max(1, Math.round(target) + 15 - 1);
  return { type, data: randomBlocks(type, (rows * cols) / BLOCK[type].values, mulberry32(seed), minExp, 2), dims: [rows, cols] };
}
