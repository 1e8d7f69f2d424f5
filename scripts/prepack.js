#!/usr/bin/env node
// `npm pack` / `npm publish` run this first (package.json "prepack"). The tarball must carry the
// prebuilt binary (prebuilds/<platform>-<arch>/), or every user without a compiler gets a failed
// source build. So: when the binary is missing or older than the native sources, build it
// (scripts/prebuild.js: CMake, the portable link, the glibc check); when it cannot be built here,
// fail the pack with one message instead of shipping a package without it. The binary must also
// have the CUDA backend (MOE_PREBUILT_CPU_ONLY=1 accepts one without, e.g. for a CPU-only fork).
'use strict';
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const root = path.join(__dirname, '..');
const dir = path.join(root, 'prebuilds', `${process.platform}-${process.arch}`);
const fail = (msg) => {
  console.error(`moe-kernels prepack: ${msg}`);
  process.exit(1);
};

/** The newest modification time under the paths (files, folders recursively). */
function newest(paths) {
  let t = 0;
  for (const p of paths) {
    if (!fs.existsSync(p)) continue;
    const st = fs.statSync(p);
    if (st.isDirectory()) t = Math.max(t, newest(fs.readdirSync(p).map((n) => path.join(p, n))));
    else t = Math.max(t, st.mtimeMs);
  }
  return t;
}

const binaries = () => (fs.existsSync(dir) ? fs.readdirSync(dir).filter((n) => n.endsWith('.node')).map((n) => path.join(dir, n)) : []);
const sources = newest(['native', 'CMakeLists.txt', 'binding.gyp'].map((p) => path.join(root, p)));
const stale = binaries().length === 0 || binaries().some((b) => fs.statSync(b).mtimeMs < sources);

if (stale) {
  const why = binaries().length === 0 ? `there is no prebuilt binary in ${path.relative(root, dir)}/` : `the prebuilt binary is older than native/`;
  const has = (cmd) => spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
  let cmakeJs = true;
  try {
    require.resolve('cmake-js/bin/cmake-js', { paths: [root] });
  } catch {
    cmakeJs = false;
  }
  const missing = [!has('cmake') && 'cmake', !(has('c++') || has('g++')) && 'a C++ compiler (c++)', !cmakeJs && 'cmake-js (npm install)'].filter(Boolean);
  if (missing.length)
    fail(`${why}, and it cannot be built here: ${missing.join(', ')} missing. Run 'npm run build:prebuilt' on a machine with cmake, g++ and nvcc, then pack.`);
  console.error(`moe-kernels prepack: ${why}: building it (npm run build:prebuilt)`);
  const r = spawnSync(process.execPath, [path.join(__dirname, 'prebuild.js')], { cwd: root, stdio: 'inherit' });
  if (r.status !== 0) fail('building the prebuilt binary failed (see above); the package was not packed');
}

// the binary the tarball will carry: it loads, and it has the CUDA backend
for (const b of binaries()) {
  // the native module's own answer (dist/ may not be built yet: npm runs prepare after prepack)
  const probe = `console.log(JSON.stringify(require(${JSON.stringify(b)}).backend_info().cuda))`;
  const r = spawnSync(process.execPath, ['-e', probe], { cwd: root, encoding: 'utf8' });
  if (r.status !== 0) fail(`${path.relative(root, b)} does not load: ${r.stderr.trim().split('\n').pop()}`);
  const cuda = JSON.parse(r.stdout.trim().split('\n').pop());
  if (!cuda.compiled && process.env.MOE_PREBUILT_CPU_ONLY !== '1')
    fail(`${path.relative(root, b)} has no CUDA backend (${cuda.reason}); build it where nvcc is, or set MOE_PREBUILT_CPU_ONLY=1 to ship a CPU-only package`);
  console.error(`moe-kernels prepack: ${path.relative(root, b)} (${(fs.statSync(b).size / 1e6).toFixed(1)} MB, CUDA backend: ${cuda.compiled ? cuda.name : 'none'})`);
}
