/**
 * Run in a child process by 66.model-ops-errors-determinism.test.ts with environment variables the
 * native module reads once at load time (MOE_NUM_THREADS, MOE_CPU_KERNEL):
 *
 *   node -r tsx/cjs test/helpers/child-model-ops.ts bits        prints the output bits of
 *                                                               `modelOpsBits()` as one JSON line
 *   node -r tsx/cjs test/helpers/child-model-ops.ts reference   checks Linear and attention against the float64
 *                                                               reference; prints one JSON line
 */
import { addSync, attentionSync, backendInfo, embeddingSync, KvCache, Linear, rmsNormSync, ropeSync, sampleSync, tensor, type Tensor } from '../../lib/index';
import { i32 } from './problems';
import { assertClose, FLOAT_TYPES, randInt, randn, tolFor, widen } from './reference';
import { refAttention, refLinear, roundAll } from './reference-model';

const b64 = (t: Tensor) => Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength).toString('base64');
const rt = (type: 'float32' | 'float16' | 'bfloat16', dims: number[], seed: number, scale = 1) =>
  tensor(type, randn(dims.reduce((a, b) => a * b, 1), seed, scale), dims) as Tensor;

/** Every op on shapes large enough to be split over threads (decode and prefill paths). */
export function modelOpsBits(): string[] {
  const out: string[] = [];
  for (const type of FLOAT_TYPES) {
    for (const [T, k, n] of [[1, 256, 1000], [100, 96, 200], [8, 9000, 20]]) {
      const L = Linear.packSync(rt(type, [n, k], T + k, 0.1));
      out.push(b64(L.forwardSync(rt(type, [T, k], n))));
      L.dispose();
    }
    const x = rt(type, [70, 1000], 5);
    out.push(b64(rmsNormSync(x, rt(type, [1000], 6))));
    out.push(b64(addSync(x, rt(type, [70, 1000], 7))));
    out.push(b64(embeddingSync(rt(type, [300, 700], 8), i32(randInt(90, 300, 9), [90]))));
    const q = rt(type, [40, 8, 64], 10);
    const kk = rt(type, [40, 2, 64], 11);
    const r = ropeSync(q, kk, i32(randInt(40, 4000, 12), [40]), { theta: 1e6 });
    out.push(b64(r.q), b64(r.k!));
    const cache = new KvCache({ maxSeq: 64, numKvHeads: 2, headDim: 64, type });
    out.push(b64(attentionSync(r.q, r.k!, rt(type, [40, 2, 64], 13), cache, { slidingWindow: 16 })));
    cache.dispose();
  }
  const logits = rt('float32', [16, 5000], 14, 3) as Tensor<'float32'>;
  for (let step = 0; step < 5; step++) out.push(b64(sampleSync(logits, { temperature: 0.8, topP: 0.9, seed: 3, step })));
  return out;
}

function referenceChecks(): number {
  let checks = 0;
  for (const type of FLOAT_TYPES)
    for (const [T, k, n] of [[1, 33, 47], [33, 64, 200], [8, 9000, 20], [200, 96, 17]]) {
      const W = rt(type, [n, k], T + n, 1 / Math.sqrt(k));
      const x = rt(type, [T, k], k);
      const L = Linear.packSync(W);
      assertClose(L.forwardSync(x).data, refLinear(widen(x), widen(W), T, k, n), tolFor('float32', k), `portable linear ${type} T=${T} in=${k} out=${n}`);
      L.dispose();
      checks++;
    }
  for (const type of FLOAT_TYPES)
    for (const [T, Hq, Hkv, hd, window] of [[33, 4, 2, 8, 0], [12, 8, 2, 68, 5]]) {
      const q = rt('float32', [T, Hq, hd], hd), k = rt('float32', [T, Hkv, hd], hd + 1), v = rt('float32', [T, Hkv, hd], hd + 2);
      const cache = new KvCache({ maxSeq: T, numKvHeads: Hkv, headDim: hd, type });
      const out = attentionSync(q, k, v, cache, { slidingWindow: window });
      cache.dispose();
      const ref = refAttention(widen(q), roundAll(type, widen(k)), roundAll(type, widen(v)), T, Hq, Hkv, hd, 0, window);
      assertClose(out.data, ref, tolFor('float32', 64), `portable attention ${type} T=${T} hd=${hd}`);
      checks++;
    }
  return checks;
}

if (require.main === module) {
  try {
    const info = backendInfo();
    const mode = process.argv[2];
    if (mode === 'bits') console.log(JSON.stringify({ kernel: info.cpu.kernel, threads: info.cpu.threads, bits: modelOpsBits() }));
    else if (mode === 'reference') console.log(JSON.stringify({ kernel: info.cpu.kernel, checks: referenceChecks() }));
    else throw new Error(`unknown mode ${mode}`);
  } catch (e) {
    console.error((e as Error)?.stack ?? String(e));
    process.exit(1);
  }
}
