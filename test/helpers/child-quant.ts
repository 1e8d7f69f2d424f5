/**
 * Run in a child process by 16.quant-layers.test.ts with MOE_CPU_QUANT_KERNEL (and MOE_NUM_THREADS),
 * which the native module reads once: checks quantised MoE layers of every format, decode (T=2) and
 * prefill (T=20), against the float64 reference on the dequantised weights, and prints one JSON line
 * {table, bits, kbits}: base64 of all outputs, and of the k-quant decode outputs. Exits 1 on a failed check.
 */
import { backendInfo, MoeLayer, type QuantType } from '../../lib/index';
import { makeQuantProblem, relErrors } from './quant-problems';
import { assertClose, nearTies, refMoe, skipTokens, tolFor } from './reference';

const all: Buffer[] = [];
const kq: Buffer[] = [];
try {
  for (const type of ['q8_0', 'q4_0', 'q4_k', 'q5_k', 'q6_k'] as QuantType[])
    for (const T of [2, 20]) {
      const p = makeQuantProblem({ T, d: 256, f: 256, E: 4, type, seed: 7 + T });
      const l = new MoeLayer({ gate: p.gate, w1: p.w1, w3: p.w3, w2: p.w2 });
      const out = l.forwardSync(p.x).output.data as Float32Array;
      const { out: ref, route } = refMoe(p.xr, p.gr, p.wr, T, 2, true);
      const skip = skipTokens(nearTies(route), 256);
      if (T <= 8) {
        const e = relErrors(Array.from(out, (v, i) => (skip(i) ? ref[i] : v)), ref);
        if (!(e.rms < 0.03 && e.max < 0.2)) throw new Error(`${type} T=${T}: rms ${e.rms}, max ${e.max}`);
        if (type.endsWith('_k')) kq.push(Buffer.from(out.buffer, out.byteOffset, out.byteLength));
      } else {
        assertClose(out, ref, { ...tolFor('float32', 256), skip }, `${type} T=${T}`);
      }
      all.push(Buffer.from(out.buffer, out.byteOffset, out.byteLength));
      l.dispose();
    }
} catch (e) {
  process.stderr.write(String((e as Error).stack ?? e));
  process.exit(1);
}
console.log(JSON.stringify({ table: backendInfo().cpu.quantKernel, bits: Buffer.concat(all).toString('base64'), kbits: Buffer.concat(kq).toString('base64') }));
