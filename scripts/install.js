#!/usr/bin/env node
// `npm install` (package.json "install"): use the binary that node-gyp-build would load (the
// prebuilt one from the package, or one built here before) when it loads on this machine; else
// build from source (scripts/build-native.js). Quietly: node-gyp-build-test printed a Node stack
// trace ("No native build was found ...") before every source build, which a newcomer reads as a
// failure. A machine that cannot build gets one message saying what is missing, not pages of gyp.
'use strict';
const { spawnSync } = require('node:child_process');
const path = require('node:path');

const root = path.join(__dirname, '..');
const firstLine = (e) => String((e && e.message) || e).split('\n')[0];

/** The binary node-gyp-build picks for this platform, if one loads: { file } or { reason }. */
function loadable() {
  let file;
  try {
    file = require('node-gyp-build').resolve(root);
  } catch {
    return { reason: `no prebuilt binary for ${process.platform}-${process.arch} (and none built yet)` };
  }
  try {
    require(file);
    return { file };
  } catch (e) {
    return { reason: `${path.relative(root, file)} does not load here (${firstLine(e)})` };
  }
}

const has = (cmd) => spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;

const found = loadable();
if (found.file) process.exit(0);
const compiler = ['c++', 'g++', 'clang++'].some(has) || (process.env.CXX && has(process.env.CXX));
if (!compiler || !has('make') && !has('cmake')) {
  const missing = [!compiler && 'a C++17 compiler (g++)', !has('make') && !has('cmake') && 'make or cmake'].filter(Boolean).join(' and ');
  console.error(`moe-kernels: ${found.reason}, and building one from source needs ${missing}, which this machine lacks.`);
  console.error('moe-kernels: install them (e.g. apt-get install g++ make python3, or cmake) and run npm rebuild moe-kernels.');
  process.exit(1);
}
console.error(`moe-kernels: ${found.reason}; building it from source (a few minutes)`);
const r = spawnSync(process.execPath, [path.join(__dirname, 'build-native.js')], { cwd: root, stdio: 'inherit' });
process.exit(r.status ?? 1);
