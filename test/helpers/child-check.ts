/**
 * Run in a child process by 70.determinism-concurrency.test.ts, with environment variables that
 * the native module reads once at load time (MOE_CPU_KERNEL=portable, MOE_NUM_THREADS=1):
 *
 *   node -r tsx/cjs test/helpers/child-check.ts reference   checks a subset of the ops against the
 *                                                          float64 reference; prints one JSON line
 *   node -r tsx/cjs test/helpers/child-check.ts bits        prints the raw output bits of
 *                                                          `bitsCases()` as one JSON line
 *
 * On a failed check it prints the message to stderr and exits with 1.
 */
import { backendInfo, ExpertWeights, groupedGemmSync, MoeLayer, permuteSync, routeSync } from '../../lib/index';
import { makeProblem } from './problems';
import { assertClose, FLOAT_TYPES, nearTies, refGroupedGemm, refMoe, skipTokens, tolFor, widen } from './reference';

export interface BitsCase {
  T: number;
  d: number;
  f: number;
  E: number;
  k: number;
  dtype: 'float32' | 'float16' | 'bfloat16';
  seed: number;
}

/** Shapes whose output bits must not depend on the thread count (decode and prefill paths). */
export function bitsCases(): BitsCase[] {
  const out: BitsCase[] = [];
  for (const dtype of FLOAT_TYPES) {
    out.push({ T: 3, d: 33, f: 47, E: 8, k: 2, dtype, seed: 1 });
    out.push({ T: 300, d: 64, f: 160, E: 8, k: 2, dtype, seed: 2 });
    out.push({ T: 97, d: 24, f: 40, E: 64, k: 6, dtype, seed: 3 });
  }
  return out;
}

/** The forward output and routing weights of a case, as base64 of their raw bytes. */
export function caseBits(c: BitsCase): string {
  const p = makeProblem({ T: c.T, d: c.d, f: c.f, E: c.E, xType: c.dtype, wType: c.dtype, gateType: c.dtype, seed: c.seed });
  const layer = new MoeLayer({ gate: p.gate, w1: p.w1, w3: p.w3, w2: p.w2 }, { topK: c.k });
  const { output, routing } = layer.forwardSync(p.x, { returnRouting: true });
  layer.dispose();
  const b = (a: ArrayBufferView) => Buffer.from(a.buffer, a.byteOffset, a.byteLength).toString('base64');
  return `${b(output.data)}|${b(routing!.topkWeights.data)}|${b(routing!.topkIds.data)}`;
}

function referenceChecks(): number {
  let checks = 0;
  for (const dtype of FLOAT_TYPES)
    for (const [T, d, f, E, k] of [[1, 33, 47, 8, 2], [5, 96, 160, 8, 2], [300, 64, 96, 8, 2], [97, 24, 40, 64, 6], [33, 1, 1, 3, 1]] as const) {
      const p = makeProblem({ T, d, f, E, xType: dtype, wType: dtype, gateType: dtype, seed: 500 + T + d });
      // the grouped GEMM alone, on the library's own layout
      const r = routeSync(p.x, p.gate, { topK: k });
      const pr = permuteSync(r.topkIds, E);
      const w = ExpertWeights.packSync({ w1: p.w1, w3: p.w3, w2: p.w2 });
      const y = groupedGemmSync(p.x, pr.sortedRows, pr.expertOffsets, w);
      w.dispose();
      const yr = refGroupedGemm(p.xr, pr.sortedRows.data, pr.expertOffsets.data, p.wr);
      const label = `${dtype} T=${T} d=${d} f=${f} E=${E} k=${k}`;
      assertClose(y.data, yr, tolFor('float32', Math.max(d, f)), `portable groupedGemm ${label}`);
      checks++;
      // the whole layer
      const layer = new MoeLayer({ gate: p.gate, w1: p.w1, w3: p.w3, w2: p.w2 }, { topK: k });
      const out = layer.forwardSync(p.x).output;
      layer.dispose();
      const ref = refMoe(p.xr, p.gr, p.wr, T, k, true);
      const ties = nearTies(ref.route);
      if (ties.filter(Boolean).length > Math.max(1, T / 20)) throw new Error(`${label}: too many near ties`);
      assertClose(widen(out), ref.out, { ...tolFor(dtype, Math.max(d, f)), skip: skipTokens(ties, d) }, `portable forward ${label}`);
      checks++;
    }
  return checks;
}

if (require.main === module) {
  const mode = process.argv[2];
  try {
    const info = backendInfo();
    if (mode === 'reference') {
      const checks = referenceChecks();
      console.log(JSON.stringify({ kernel: info.cpu.kernel, threads: info.cpu.threads, checks }));
    } else if (mode === 'bits') {
      console.log(JSON.stringify({ kernel: info.cpu.kernel, threads: info.cpu.threads, bits: bitsCases().map(caseBits) }));
    } else {
      throw new Error(`unknown mode ${mode}`);
    }
  } catch (e) {
    console.error((e as Error)?.stack ?? String(e));
    process.exit(1);
  }
}
