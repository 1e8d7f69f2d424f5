#!/usr/bin/env node
// Makes the prebuilt binary that `npm pack` ships: prebuilds/<platform>-<arch>/moe-kernels.glibc.node,
// found by node-gyp-build at install time so that users need no compiler. prebuildify drives it
// (N-API build: one binary for every Node >= 20), with this repository's own build (cmake-js, the
// CUDA backend included when nvcc is present) in place of node-gyp: prebuildify calls the
// executable in PREBUILD_NODE_GYP, here scripts/prebuild-gyp.js, which ignores node-gyp's arguments.
'use strict';
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const root = path.join(__dirname, '..');
const shim = path.join(__dirname, 'prebuild-gyp.js');
fs.chmodSync(shim, 0o755);
const bin = require.resolve('prebuildify/bin.js', { paths: [root] });
// MOE_PORTABLE=1: libstdc++ and libgcc linked statically, glibc symbols pinned to <= 2.28
// (CMakeLists.txt, native/compat/), so that the binary loads on every glibc Linux Node 20 runs on.
const r = spawnSync(process.execPath, [bin, '--napi', '--strip', '--tag-libc'], {
  cwd: root,
  stdio: 'inherit',
  env: { ...process.env, PREBUILD_NODE_GYP: shim, MOE_PORTABLE: '1' },
});
if (r.status !== 0) process.exit(r.status ?? 1);
const dir = path.join(root, 'prebuilds', `${process.platform}-${process.arch}`);
// objdump -T: no GLIBC_ version above 2.28, no libstdc++ / libgcc_s versions, no foreign NEEDED
for (const f of fs.readdirSync(dir).filter((n) => n.endsWith('.node'))) {
  const c = spawnSync(process.execPath, [path.join(__dirname, 'glibc-compat.js'), 'check', path.join(dir, f)], { stdio: 'inherit' });
  if (c.status !== 0) process.exit(c.status ?? 1);
}
// prebuildify moved build/Release/moe_kernels.node into prebuilds/; relink it (nothing recompiles)
// so that this checkout keeps its unstripped build for the tests that disassemble it.
const again = spawnSync(process.execPath, [path.join(__dirname, 'build-native.js')], { cwd: root, stdio: 'inherit' });
if (again.status !== 0) process.exit(again.status ?? 1);
for (const f of fs.readdirSync(dir)) console.log(`moe-kernels: prebuilt ${path.relative(root, path.join(dir, f))} (${(fs.statSync(path.join(dir, f)).size / 1e6).toFixed(1)} MB)`);
