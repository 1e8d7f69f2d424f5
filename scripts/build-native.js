#!/usr/bin/env node
// Builds the native addon from source: cmake-js when cmake is on the PATH (the primary build, which
// also compiles the CUDA backend when nvcc is present), else node-gyp with binding.gyp (CPU only).
// Run by `npm install` when node-gyp-build-test finds no binary that loads (no prebuilt one fits and
// nothing was built yet).
//
// Environment: MOE_CUDA=0 builds without the CUDA backend even when nvcc is present;
// MOE_CUDA_EMU=1 builds the test addon instead, whose CUDA backend runs on the CPU emulator
// (backend 'cuda-emu'), into build-emu/ (the tests load it through MOE_KERNELS_ADDON).
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

if (cmakeJs && has('cmake') && process.env.MOE_BUILD !== 'gyp') {
  const emu = process.env.MOE_CUDA_EMU === '1';
  const defs = [];
  if (emu) defs.push('--CDMOE_CUDA_EMU=ON', '--CDMOE_CUDA=OFF');
  else if (process.env.MOE_CUDA === '0') defs.push('--CDMOE_CUDA=OFF');
  else defs.push('--CDMOE_CUDA=ON', '--CDMOE_CUDA_EMU=OFF');
  run(process.execPath, [cmakeJs, 'build', '--parallel', jobs, '--out', emu ? 'build-emu' : 'build', ...defs]);
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
  run(process.execPath, [nodeGyp, 'rebuild', '-j', jobs, ...(nodedir ? [`--nodedir=${nodedir}`] : [])]);
}
