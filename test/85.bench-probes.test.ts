// The bench's machine-peak probes must measure what they claim. A compiler that proves two FMA
// chains equal keeps one and the probe then over-counts flops (it happened: one vfmadd for twelve
// chains made the "peak" 1.5x the real one), so the compiled probe is inspected, not trusted.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

const root = path.join(__dirname, '..');
const addon = path.join(root, 'build', 'Release', 'moe_kernels.node');
const hasObjdump = spawnSync('objdump', ['--version']).status === 0;

function disassemble(symbol: string): string {
  const r = spawnSync('objdump', ['-d', '--no-show-raw-insn', `--disassemble=${symbol}`, addon], { encoding: 'utf8', maxBuffer: 1 << 26 });
  assert.is(r.status, 0, r.stderr);
  return r.stdout;
}

test('the AVX2 FMA probe runs twelve independent chains (kFmaChains), not one counted twelve times', () => {
  if (!hasObjdump || !fs.existsSync(addon)) {
    console.log('  (skipped: needs objdump and build/Release/moe_kernels.node)');
    return;
  }
  const asm = disassemble('_ZN3moe11peak_detail15fma_chains_avx2El');
  const fmas = asm.split('\n').filter((l) => /\bvfmadd\d*ps\b/.test(l) && /%ymm/.test(l)).length;
  assert.is(fmas, 12, asm);
});

test('the AVX-512 FMA and bf16 dot probes run twelve independent chains each', () => {
  if (!hasObjdump || !fs.existsSync(addon)) {
    console.log('  (skipped: needs objdump and build/Release/moe_kernels.node)');
    return;
  }
  const fma = disassemble('_ZN3moe11peak_detail17fma_chains_avx512El');
  assert.is(fma.split('\n').filter((l) => /\bvfmadd\d*ps\b/.test(l) && /%zmm/.test(l)).length, 12, fma);
  const dot = disassemble('_ZN3moe11peak_detail26bf16_dot_chains_avx512bf16El');
  assert.is(dot.split('\n').filter((l) => /\bvdpbf16ps\b/.test(l) && /%zmm/.test(l)).length, 12, dot);
});

test('the probes return plausible, positive figures', () => {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const native = require('node-gyp-build')(root);
  const gflops = native.measure_fma_peak(0.05);
  const gbs = native.measure_read_bandwidth(16 << 20, 2);
  assert.ok(Number.isFinite(gflops) && gflops > 0, `fma ${gflops}`);
  assert.ok(Number.isFinite(gbs) && gbs > 0, `bandwidth ${gbs}`);
});

test('bench/peaks.js --bw-only: the short probe the memory-bound rows are paired with', () => {
  const r = spawnSync(process.execPath, [path.join(root, 'bench', 'peaks.js'), '--bw-only', String(16 << 20), '1'], { encoding: 'utf8' });
  assert.is(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout);
  assert.equal(Object.keys(out), ['readBandwidthGBs']);
  assert.ok(Number.isFinite(out.readBandwidthGBs) && out.readBandwidthGBs > 0, r.stdout);
});

test('MOE_PEAK_OP=bf16-dot measures vdpbf16ps on avx512-bf16 and is refused on other tables', () => {
  const run = (kernel: string) =>
    spawnSync(process.execPath, ['-e', `process.stdout.write(String(require('node-gyp-build')(${JSON.stringify(root)}).measure_fma_peak(0.02)))`], {
      encoding: 'utf8',
      env: { ...process.env, MOE_PEAK_OP: 'bf16-dot', MOE_CPU_KERNEL: kernel },
    });
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const widest = require('node-gyp-build')(root).backend_info().cpu.kernel;
  if (widest === 'avx512-bf16') {
    const r = run('avx512-bf16');
    assert.is(r.status, 0, r.stderr);
    assert.ok(Number(r.stdout) > 0, r.stdout);
  }
  const r = run('portable');
  assert.is.not(r.status, 0, 'portable has no bf16 dot');
  assert.match(r.stderr, /needs the avx512-bf16 kernel table/);
});

test.run();
