#!/usr/bin/env node
// Builds the native addon from source: cmake-js when cmake is on the PATH (the primary build, which
// also compiles the CUDA backend when nvcc is present), else node-gyp with binding.gyp (CPU only).
// Run by `npm install` when node-gyp-build-test finds no binary that loads (no prebuilt one fits and
// nothing was built yet).
//
// Environment: MOE_CUDA=0 builds without the CUDA backend even when nvcc is present;
// MOE_CUDA_EMU=1 builds the test addon instead, whose CUDA backend runs on the CPU emulator
// (backend 'cuda-emu'), into build-emu/ (the tests load it through MOE_KERNELS_ADDON).
// MOE_PORTABLE=1 makes the binary that is shipped prebuilt (CMake only): libstdc++ and libgcc
// linked statically, glibc symbols no newer than 2.28 (CMakeLists.txt, native/compat/).
// MOE_SANITIZE=1 builds the sanitizer test addon (ASan + UBSan; the CPU backend and the emulated
// CUDA one) into build-asan/.
// MOE_BUILD=gyp forces node-gyp.
'use strict';
const { spawnSync } = require('node:child_process');
const path = require('node:path');

const root = path.join(__dirname, '..');
const has = (cmd) => spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
const run = (cmd, args) => {
  console.error(`moe-kernels: ${cmd} ${args.join(' ')}`);
  const r = spawnSync(cmd, args, { cwd: root, stdio: 'inherit', shell: process.platform === 'win32' });
  if (r.status !== 0) process.exit(r.status ?? 1);
};
const bin = (name) => path.join(root, 'node_modules', '.bin', name);
const jobs = String(Math.max(1, require('node:os').availableParallelism?.() ?? 2));

const cmakeJs = (() => {
  try {
    return require.resolve('cmake-js/bin/cmake-js', { paths: [root] });
  } catch {
    return null; // cmake-js is a dev dependency: absent when installed from the registry
  }
})();

/** The path of a command on the PATH, or null. */
function which(cmd) {
  const r = spawnSync('sh', ['-c', `command -v ${cmd}`], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : null;
}

/**
 * Why a node-gyp build (binding.gyp: CPU only) was chosen, and how to get the CUDA backend:
 * backendInfo().cuda.reason says it (native/backends/cuda/backend_none.cc, MOE_NO_CUDA_REASON).
 * Printable ASCII without quotes or backslashes, so that it passes through gyp and make as a C string.
 */
function gypNoCudaReason({ cmakeJs, cmake, nvcc, forced }) {
  const why = forced
    ? 'MOE_BUILD=gyp asked for it'
    : [!cmake && 'cmake is not on the PATH', !cmakeJs && 'cmake-js (a development dependency) is not installed'].filter(Boolean).join(' and ');
  const fix = [!cmake && 'install cmake', !cmakeJs && 'npm install --no-save cmake-js'].filter(Boolean).join(', ');
  const next = nvcc
    ? `; nvcc is at ${nvcc}: for the CUDA backend, ${fix || 'unset MOE_BUILD'}, then npm rebuild moe-kernels`
    : '; nvcc was not on the PATH either';
  return `it was built by node-gyp from binding.gyp, which has no CUDA backend, because ${why}${next}`.replace(/[^ -~]|["'\\`$]/g, '_');
}
module.exports = { gypNoCudaReason };
if (require.main !== module) return;

if (cmakeJs && has('cmake') && process.env.MOE_BUILD !== 'gyp') {
  const emu = process.env.MOE_CUDA_EMU === '1';
  const sanitize = process.env.MOE_SANITIZE === '1';
  const out = sanitize ? 'build-asan' : emu ? 'build-emu' : 'build';
  const options = {
    MOE_CUDA_EMU: emu || sanitize ? 'ON' : 'OFF',
    MOE_CUDA: !emu && !sanitize && process.env.MOE_CUDA !== '0' ? 'ON' : 'OFF',
    MOE_SANITIZE: sanitize ? 'ON' : 'OFF',
    // the prebuilt binary (scripts/prebuild.js): static libstdc++/libgcc, glibc symbols <= 2.28
    MOE_PORTABLE: process.env.MOE_PORTABLE === '1' && !emu && !sanitize ? 'ON' : 'OFF',
  };
  const defs = Object.entries(options).map(([k, v]) => `--CD${k}=${v}`);
  // `cmake-js build` configures only a fresh build directory: when an option differs from the one
  // the directory was configured with (e.g. MOE_PORTABLE for the prebuilt binary, then off again
  // for the tests), configure it again first. Unchanged options cost nothing.
  const cache = path.join(root, out, 'CMakeCache.txt');
  const cached = require('node:fs').existsSync(cache) ? require('node:fs').readFileSync(cache, 'utf8') : '';
  if (cached && Object.entries(options).some(([k, v]) => !new RegExp(`^${k}:BOOL=${v}$`, 'm').test(cached)))
    run(process.execPath, [cmakeJs, 'configure', '--out', out, ...defs]);
  run(process.execPath, [cmakeJs, 'build', '--parallel', jobs, '--out', out, ...defs]);
} else if (process.env.MOE_CUDA_EMU === '1') {
  console.error('moe-kernels: MOE_CUDA_EMU=1 needs cmake and cmake-js (the emulated test build is CMake only)');
  process.exit(1);
} else {
  // npm hands its bundled node-gyp to install scripts; otherwise look for one nearby
  const nodeGyp =
    process.env.npm_config_node_gyp ||
    require.resolve('node-gyp/bin/node-gyp.js', { paths: [root, path.join(path.dirname(process.execPath), '..', 'lib', 'node_modules', 'npm')] });
  // Use the headers installed beside this node when there are some, instead of downloading them.
  const prefix = path.join(path.dirname(process.execPath), '..');
  const nodedir = process.env.npm_config_nodedir ||
    (require('node:fs').existsSync(path.join(prefix, 'include', 'node', 'node_api.h')) ? prefix : null);
  process.env.MOE_NO_CUDA_REASON = gypNoCudaReason({ cmakeJs, cmake: which('cmake'), nvcc: which('nvcc'), forced: process.env.MOE_BUILD === 'gyp' });
  console.error(`moe-kernels: no CUDA backend in this build: ${process.env.MOE_NO_CUDA_REASON}`);
  run(process.execPath, [nodeGyp, 'rebuild', '-j', jobs, ...(nodedir ? [`--nodedir=${nodedir}`] : [])]);
}
