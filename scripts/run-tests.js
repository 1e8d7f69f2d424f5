#!/usr/bin/env node
// Runs the test suites and ends with one plain line `N passed, N failed` over all of them:
//   - the uvu suites in test/*.test.ts (TypeScript through tsx), against the float64 reference;
//   - the kernel suites once more per other CPU kernel table this machine can run
//     (MOE_CPU_KERNEL=portable, avx2, avx512, avx512-bf16; the first pass ran the default, the
//     widest): routing variants, shared experts, grouped GEMM, the table's own checks, the MoE
//     forward, the model ops, whole models and the determinism checks, against the float64 reference;
//   - the C++ suites under test/<area>/run.sh when present (the CUDA emulator's, the CPU kernel
//     tables'), which print their own `N passed, N failed` line;
//   - the device-backend suites (test/45.cuda-backend.test.ts, test/46.device-tensors.test.ts,
//     test/47.executors.test.ts, test/48.paged-attention.test.ts, and
//     test/67 and 68 for whole models on the device) on the test build of the addon, whose
//     CUDA backend runs on the CPU emulator ('cuda-emu'), once per fiber schedule (round-robin,
//     reverse, random, and drift: warps apart by whole barrier intervals), with the emulator's
//     shared-memory race detector on (MOE_EMU_RACECHECK=1: a race fails the launch). The test build is
//     made here (MOE_CUDA_EMU=1 scripts/build-native.js into build-emu/; incremental); without CUDA
//     headers these passes are skipped, except with MOE_TEST_REQUIRE_CUDA_EMU=1 (.ci/run) where that
//     is a failure. Not CI=true: every CI service sets it, also on a fork without CUDA headers.
// Exits non-zero when anything failed or a suite could not run.
'use strict';
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const root = path.join(__dirname, '..');
const strip = (s) => s.replace(/\x1b\[[0-9;]*m/g, '');
let passed = 0;
let failed = 0;
let broken = false;

function runSuite(label, cmd, args, parse, env = {}) {
  const envText = Object.entries(env).map(([k, v]) => `${k}=${v} `).join('');
  console.log(`\n=== ${label}: ${envText}${[cmd, ...args].join(' ')}`);
  const r = spawnSync(cmd, args, { cwd: root, encoding: 'utf8', maxBuffer: 1 << 28, env: { ...process.env, ...env } });
  process.stdout.write(r.stdout ?? '');
  process.stderr.write(r.stderr ?? '');
  // the summary is on stdout (stderr may hold a nested run's output); both only when stdout has none
  const counts = parse(strip(r.stdout ?? '')) ?? parse(strip((r.stdout ?? '') + (r.stderr ?? '')));
  if (!counts) {
    console.log(`!!! ${label}: no test summary found (exit ${r.status}${r.signal ? ', signal ' + r.signal : ''})`);
    broken = true;
    return;
  }
  passed += counts.passed;
  failed += counts.failed;
  if (r.status !== 0 && counts.failed === 0) {
    console.log(`!!! ${label}: exited with ${r.status} although no test failed`);
    broken = true;
  }
}

// uvu prints "Total: N", "Passed: N", "Skipped: N"
function parseUvu(out) {
  // the last of each: uvu's own summary ends the output (a test may print a nested run's summary)
  const num = (k) => {
    const all = [...out.matchAll(new RegExp(`^\\s*${k}:\\s+(\\d+)`, 'gm'))];
    return all.length ? Number(all[all.length - 1][1]) : null;
  };
  const total = num('Total');
  const ok = num('Passed');
  const skipped = num('Skipped') ?? 0;
  if (total === null || ok === null) return null;
  return { passed: ok, failed: total - ok - skipped };
}

// "N passed, N failed" lines, summed: a suite may run its tests in several builds (e.g. -O2, ASan)
function parsePlain(out) {
  const all = [...out.matchAll(/^(\d+) passed, (\d+) failed/gm)];
  if (all.length === 0) return null;
  return all.reduce((acc, m) => ({ passed: acc.passed + Number(m[1]), failed: acc.failed + Number(m[2]) }), { passed: 0, failed: 0 });
}

const filter = process.argv[2];
const uvu = [path.join(root, 'node_modules', 'uvu', 'bin.js'), '-r', 'tsx/cjs', 'test'];
runSuite('uvu', process.execPath, [...uvu, filter ?? '\\.test\\.ts$'], parseUvu);

// The CPU kernel table a process runs with MOE_CPU_KERNEL=name (backendInfo().cpu.kernel; a table
// this CPU cannot run falls back to a narrower one), or null when the addon does not load.
function tableRun(name) {
  const r = spawnSync(process.execPath, ['-e', "process.stdout.write(require('node-gyp-build')('.').backend_info().cpu.kernel)"],
    { cwd: root, encoding: 'utf8', env: { ...process.env, MOE_CPU_KERNEL: name } });
  return r.status === 0 ? r.stdout.trim() : null;
}

// The suites that exercise the CPU kernel tables, run again under every other table the CPU can
// run, so that each table is checked against the float64 reference on this machine.
const KERNEL_SUITES = '^(25|26|40|41|60|65|67|68|70)\\.';
function otherKernelTables() {
  const widest = tableRun('');
  if (widest === null) {
    // the uvu pass above has already failed on every suite that needs the addon
    console.log('\n=== cpu kernel tables: the addon does not load (npm run build), not run');
    return;
  }
  for (const [name, reported] of [['avx512', 'avx512'], ['avx2', 'avx2-fma'], ['portable', 'portable']]) {
    if (reported === widest) continue;  // the first pass ran it
    const got = tableRun(name);
    if (got !== reported) {
      console.log(`\n=== cpu kernel table ${name}: this CPU cannot run it (MOE_CPU_KERNEL=${name} runs ${got}), skipped`);
      continue;
    }
    runSuite(`cpu kernel table ${name}`, process.execPath, [...uvu, KERNEL_SUITES], parseUvu, { MOE_CPU_KERNEL: name });
  }
}
if (!filter) otherKernelTables();
if (!filter) {
  for (const dir of fs.readdirSync(path.join(root, 'test'), { withFileTypes: true })) {
    const script = path.join('test', dir.name, 'run.sh');
    if (dir.isDirectory() && fs.existsSync(path.join(root, script))) runSuite(dir.name, 'bash', [script], parsePlain);
  }
}

function emulatedCudaPasses() {
  const cudaHome = process.env.CUDA_HOME || '/usr/local/cuda';
  if (!fs.existsSync(path.join(cudaHome, 'include', 'cuda_runtime_api.h'))) {
    console.log(`\n=== cuda-emu: no CUDA headers under ${cudaHome}: the emulated CUDA backend is not tested`);
    if (process.env.MOE_TEST_REQUIRE_CUDA_EMU === '1') broken = true;
    return;
  }
  console.log('\n=== cuda-emu: building the test addon (MOE_CUDA_EMU=1, build-emu/)');
  const b = spawnSync(process.execPath, [path.join(root, 'scripts', 'build-native.js')], { cwd: root, stdio: 'inherit', env: { ...process.env, MOE_CUDA_EMU: '1' } });
  if (b.status !== 0) {
    console.log('!!! cuda-emu: the test addon did not build');
    broken = true;
    return;
  }
  const addon = path.join(root, 'build-emu', 'Release', 'moe_kernels.node');
  for (const schedule of ['rr', 'reverse', 'random:7', 'drift:3'])
    // 45: every device op; 46: device tensors and the model ops on them; 49: quantised models; 67, 68:
    // whole models on the device; 74: the serving engine's batching on the device
    runSuite(`cuda-emu, schedule ${schedule}`, process.execPath, [path.join(root, 'node_modules', 'uvu', 'bin.js'), '-r', 'tsx/cjs', 'test', '^(45|46|47|48|49|67|68|74)\\.'], parseUvu,
      { MOE_KERNELS_ADDON: addon, MOE_EMU_SCHEDULE: schedule, MOE_EMU_RACECHECK: '1', MOE_TEST_REQUIRE_BACKEND: 'cuda-emu' });
}
if (!filter) emulatedCudaPasses();

// The sanitizer pass (MOE_TEST_SANITIZERS=1, set by .ci/run): the addon built with AddressSanitizer
// and UndefinedBehaviorSanitizer (MOE_SANITIZE=1 scripts/build-native.js into build-asan/: the CPU
// backend and the emulated CUDA one), loaded by node with libasan preloaded, runs the suites that
// cross the native boundary: bad inputs, concurrency and disposal, the memory-safety cases (transfers,
// detached and resized buffers, workers torn down mid-call), every op on both backends. An ASan
// report or an undefined behaviour ends the process, which fails the pass.
function sanitizerPass() {
  const libasan = spawnSync('gcc', ['-print-file-name=libasan.so'], { encoding: 'utf8' }).stdout?.trim();
  if (!libasan || !fs.existsSync(libasan)) {
    console.log('\n=== sanitizers: no libasan (gcc -print-file-name=libasan.so): not run');
    broken = true;
    return;
  }
  console.log('\n=== sanitizers: building the ASan + UBSan addon (MOE_SANITIZE=1, build-asan/)');
  const b = spawnSync(process.execPath, [path.join(root, 'scripts', 'build-native.js')], { cwd: root, stdio: 'inherit', env: { ...process.env, MOE_SANITIZE: '1' } });
  if (b.status !== 0) {
    console.log('!!! sanitizers: the addon did not build');
    broken = true;
    return;
  }
  const env = {
    MOE_KERNELS_ADDON: path.join(root, 'build-asan', 'Release', 'moe_kernels.node'),
    LD_PRELOAD: libasan,
    // node leaks by design at exit; huge requests are refused as errors, not reports
    ASAN_OPTIONS: 'detect_leaks=0:allocator_may_return_null=1',
    UBSAN_OPTIONS: 'print_stacktrace=1',
  };
  const uvu = [path.join(root, 'node_modules', 'uvu', 'bin.js'), '-r', 'tsx/cjs', 'test'];
  runSuite('sanitizers, CPU', process.execPath, [...uvu, '^(10|15|16|20|25|26|30|40|48|50|60|65|66|70|72|80)\\.'], parseUvu, env);
  runSuite('sanitizers, cuda-emu', process.execPath, [...uvu, '^(45|46|47|48|67|68)\\.'], parseUvu, { ...env, MOE_TEST_REQUIRE_BACKEND: 'cuda-emu' });
}
if (!filter && process.env.MOE_TEST_SANITIZERS === '1') sanitizerPass();

console.log(`\n${passed} passed, ${failed} failed`);
process.exit(failed > 0 || broken ? 1 : 0);
