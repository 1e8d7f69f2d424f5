// The CPU kernel table: chosen once per process from what the CPU (and the OS) can run, reported
// by backendInfo().cpu.kernel, forced by MOE_CPU_KERNEL. scripts/run-tests.js runs the kernel
// suites once per table this machine can run; test/cpu checks the tables' kernels bit for bit.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { backendInfo, ExpertWeights, groupedGemmSync, Linear, linearSync, MoeLayer, tensor } from '../lib/index';
import { i32 } from './helpers/problems';

const root = path.join(__dirname, '..');
const TABLES = ['portable', 'avx2-fma', 'avx512', 'avx512-bf16'];

/** backendInfo().cpu of a fresh process with MOE_CPU_KERNEL=value (unset when null). */
function cpuOf(value: string | null): { kernel: string; avx2: boolean; fma: boolean; f16c: boolean; avx512f: boolean; avx512bf16: boolean } {
  const env = { ...process.env };
  delete env.MOE_CPU_KERNEL;
  if (value !== null) env.MOE_CPU_KERNEL = value;
  const r = spawnSync(process.execPath, ['-e', "process.stdout.write(JSON.stringify(require('./dist/index.js').backendInfo().cpu))"], { cwd: root, env, encoding: 'utf8' });
  assert.is(r.status, 0, r.stderr);
  return JSON.parse(r.stdout);
}

/** The tables this CPU can run, narrowest first, as the features say. */
function runnable(c: ReturnType<typeof cpuOf>): string[] {
  const out = ['portable'];
  if (c.avx2 && c.fma && c.f16c) out.push('avx2-fma');
  if (out.length === 2 && c.avx512f) out.push('avx512');
  if (out.length === 3 && c.avx512bf16) out.push('avx512-bf16');
  return out;
}

test('unforced, the widest table the CPU runs; its name is one of the four', () => {
  const c = cpuOf(null);
  assert.ok(TABLES.includes(c.kernel), c.kernel);
  assert.is(c.kernel, runnable(c).at(-1));
  if (c.kernel === 'avx512-bf16') assert.ok(c.avx512f && c.avx512bf16);
  assert.ok(TABLES.includes(backendInfo().cpu.kernel));
});

test('MOE_CPU_KERNEL forces a table; one the CPU cannot run falls back to the widest below it; other values are ignored', () => {
  const c = cpuOf(null);
  const can = runnable(c);
  for (const [value, table] of [['portable', 'portable'], ['avx2', 'avx2-fma'], ['avx2-fma', 'avx2-fma'], ['avx512', 'avx512'], ['avx512-bf16', 'avx512-bf16']]) {
    const want = can.includes(table) ? table : can[Math.min(can.length, TABLES.indexOf(table) + 1) - 1];
    assert.is(cpuOf(value).kernel, want, `MOE_CPU_KERNEL=${value}`);
  }
  assert.is(cpuOf('sse9000').kernel, c.kernel, 'an unknown value runs the widest table');
  assert.is(cpuOf('').kernel, c.kernel, 'an empty value runs the widest table');
});

test('bf16 weights: x is rounded to bf16 exactly when the table is avx512-bf16 (a one-hot row picks out the rounding)', () => {
  // d = f = 1, w1 = w3 = w2 = 1: y = silu(x) * x, where avx512-bf16 first rounds x (and then h) to
  // bf16. x = 1 + 2^-10 is not a bf16 value (8 significant bits): it rounds to 1.
  const x = 1 + 2 ** -10;
  const one = (type: 'bfloat16' | 'float32') => tensor(type, [1], [1, 1, 1]);
  const y = (type: 'bfloat16' | 'float32') =>
    groupedGemmSync(tensor('float32', [x], [1, 1]), i32([0], [1]), i32([0, 1], [2]), ExpertWeights.packSync({ w1: one(type), w3: one(type), w2: one(type) })).data[0];
  const silu = (v: number) => v / (1 + Math.exp(-v));
  const exact = silu(x) * x;
  assert.ok(Math.abs(y('float32') - exact) < 1e-6, `f32 weights: ${y('float32')} vs ${exact}`);
  const bf = y('bfloat16');
  if (backendInfo().cpu.kernel === 'avx512-bf16') {
    const hr = new Float32Array([silu(1) * 1]); // h = silu(1) rounded to bf16 below
    const u = new Uint32Array(hr.buffer);
    u[0] = (u[0] + 0x7fff + ((u[0] >>> 16) & 1)) & 0xffff0000;
    assert.ok(Math.abs(bf - hr[0]) < 1e-7, `avx512-bf16: ${bf} vs bf16(silu(1)) ${hr[0]}`);
  } else {
    assert.ok(Math.abs(bf - exact) < 1e-6, `${backendInfo().cpu.kernel}: ${bf} vs ${exact}`);
  }
});

test("precision 'exact': f32 activations against bf16 weights on every table, in the experts, Linear and MoeLayer", async () => {
  const x = 1 + 2 ** -10; // not a bf16 value: rounding it to bf16 gives 1
  const one = () => tensor('bfloat16', [1], [1, 1, 1]);
  const silu = (v: number) => v / (1 + Math.exp(-v));
  const g = groupedGemmSync(tensor('float32', [x], [1, 1]), i32([0], [1]), i32([0, 1], [2]), ExpertWeights.packSync({ w1: one(), w3: one(), w2: one() }, { precision: 'exact' })).data[0];
  assert.ok(Math.abs(g - silu(x) * x) < 1e-6, `experts: ${g} vs ${silu(x) * x}`);
  const w = tensor('bfloat16', [1, 1], [2, 1]);
  assert.equal(Array.from((linearSync(tensor('float32', [x], [1, 1]), Linear.packSync(w, { precision: 'exact' })) as { data: Float32Array }).data), [x, x]);
  const rounded = Array.from((linearSync(tensor('float32', [x], [1, 1]), Linear.packSync(w)) as { data: Float32Array }).data);
  assert.equal(rounded, backendInfo().cpu.kernel === 'avx512-bf16' ? [1, 1] : [x, x], 'the default rounds x to bf16 on avx512-bf16 only');
  // a whole layer: bf16 weights whose values are exact in bf16 give the f32 layer's bits with 'exact'
  const d = 32, f = 32, E = 4;
  const vals = (n: number, s: number) => Array.from({ length: n }, (_, i) => (((i * s) % 17) - 8) / 16);
  const weights = (type: 'float32' | 'bfloat16') => ({
    gate: tensor('float32', vals(E * d, 5), [E, d]),
    w1: tensor(type, vals(E * f * d, 3), [E, f, d]),
    w3: tensor(type, vals(E * f * d, 7), [E, f, d]),
    w2: tensor(type, vals(E * d * f, 11), [E, d, f]),
  });
  const xs = tensor('float32', Array.from({ length: 3 * d }, (_, i) => Math.sin(i) * 0.7), [3, d]);
  const run = async (type: 'float32' | 'bfloat16', precision?: 'exact') => {
    const layer = await MoeLayer.create(weights(type), { topK: 2, ...(precision ? { precision } : {}) });
    try {
      return Array.from((await layer.forward(xs)).output.data as Float32Array);
    } finally {
      layer.dispose();
    }
  };
  assert.equal(await run('bfloat16', 'exact'), await run('float32'));
  assert.throws(() => Linear.packSync(w, { precision: 'fast' as never }), (e: Error) => e instanceof TypeError && /options.precision must be 'default' or 'exact', got "fast"/.test(e.message));
  await MoeLayer.create(weights('bfloat16'), { precision: 1 as never }).then(
    () => assert.unreachable('a bad precision'),
    (e: Error) => assert.ok(e instanceof TypeError && /options.precision/.test(e.message), e.message),
  );
});

test.run();
