#!/usr/bin/env node
// The prebuilt addon must load on the Linux distributions Node 20 runs on, back to glibc 2.28
// (Debian 10, RHEL/Rocky 8, Ubuntu 20.04 has 2.31, Amazon Linux 2023 2.34): so it may need no
// glibc symbol version above 2.28, and no libstdc++ (GLIBCXX_, CXXABI_) or libgcc_s (GCC_) version
// at all, since both are linked statically (CMake option MOE_PORTABLE, see native/compat/).
//
//   node scripts/glibc-compat.js check <file.node>    objdump -T the file: prints the highest
//       GLIBC_ version it needs and fails (exit 1) on anything above 2.28, on GLIBCXX_/CXXABI_/GCC_
//       versions, and on a DT_NEEDED library outside glibc's own.
//   node scripts/glibc-compat.js update <file.node>   for each symbol above 2.28 in a file linked
//       without the pins, finds the newest version <= 2.28 that this machine's libc/libm still
//       define (glibc keeps the old versions as compat symbols) and rewrites
//       native/compat/glibc-2.28.symbols; symbols with no old version need a shim in
//       native/compat/glibc_compat.cc and are listed.
'use strict';
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const MAX = [2, 28];
const LIST = path.join(__dirname, '..', 'native', 'compat', 'glibc-2.28.symbols');
// glibc's own libraries: present on every glibc system (libpthread, libdl and librt as stubs
// since 2.34, where their symbols moved into libc).
const GLIBC_LIBS = new Set(['libc.so.6', 'libm.so.6', 'libdl.so.2', 'libpthread.so.0', 'librt.so.1', 'ld-linux-x86-64.so.2', 'ld-linux-aarch64.so.1']);

const parseVersion = (v) => v.split('.').map(Number);
const cmp = (a, b) => {
  for (let i = 0; i < Math.max(a.length, b.length); i++) if ((a[i] ?? 0) !== (b[i] ?? 0)) return (a[i] ?? 0) - (b[i] ?? 0);
  return 0;
};

function objdump(args, file) {
  const r = spawnSync('objdump', [...args, file], { encoding: 'utf8', maxBuffer: 1 << 28 });
  if (r.error || r.status !== 0) {
    console.error(`glibc-compat: objdump ${args.join(' ')} ${file} failed: ${r.error?.message ?? r.stderr}`);
    process.exit(2);
  }
  return r.stdout;
}

/** Dynamic symbols of a file: [{ name, lib: 'GLIBC'|'GLIBCXX'|..., version: [2,34], undef, hidden }]. */
function dynamicSymbols(file) {
  const out = [];
  for (const line of objdump(['-T'], file).split('\n')) {
    const m = line.match(/\s(\*UND\*|\.\S+|\S+)\s+[0-9a-f]+\s+(\(?)([A-Z_]+)_([0-9.]+)\)?\s+(\S+)$/);
    if (!m) continue;
    out.push({ name: m[5], lib: m[3], version: parseVersion(m[4]), undef: m[1] === '*UND*', hidden: m[2] === '(' });
  }
  return out;
}

function check(file) {
  const syms = dynamicSymbols(file).filter((s) => s.undef);
  const glibc = syms.filter((s) => s.lib === 'GLIBC');
  const max = glibc.reduce((a, s) => (cmp(s.version, a) > 0 ? s.version : a), [0]);
  const problems = [];
  for (const s of glibc) if (cmp(s.version, MAX) > 0) problems.push(`${s.name}@GLIBC_${s.version.join('.')}`);
  for (const s of syms) if (s.lib !== 'GLIBC') problems.push(`${s.name}@${s.lib}_${s.version.join('.')} (must be linked statically)`);
  const needed = [...objdump(['-p'], file).matchAll(/^\s*NEEDED\s+(\S+)$/gm)].map((m) => m[1]);
  for (const n of needed) if (!GLIBC_LIBS.has(n)) problems.push(`NEEDED ${n} (not part of glibc)`);
  console.log(`${path.basename(file)}: needs GLIBC_${max.join('.')} at most (${glibc.length} versioned glibc symbols; NEEDED ${needed.join(', ')})`);
  if (problems.length) {
    console.error(`glibc-compat: ${file} will not load on glibc ${MAX.join('.')}:\n  ${problems.join('\n  ')}`);
    console.error('  (node scripts/glibc-compat.js update <unpinned build> refreshes native/compat/glibc-2.28.symbols)');
    process.exit(1);
  }
}

function libPath(name) {
  const r = spawnSync(process.env.CXX || 'c++', [`-print-file-name=${name}`], { encoding: 'utf8' });
  const p = r.stdout?.trim();
  return p && path.isAbsolute(p) && fs.existsSync(p) ? fs.realpathSync(p) : null;
}

function update(file) {
  const defined = new Map(); // name -> versions defined in libc/libm
  for (const lib of ['libc.so.6', 'libm.so.6']) {
    const p = libPath(lib);
    if (!p) throw new Error(`cannot find ${lib}`);
    for (const s of dynamicSymbols(p)) if (!s.undef && s.lib === 'GLIBC') (defined.get(s.name) ?? defined.set(s.name, []).get(s.name)).push(s.version);
  }
  const pins = new Map();
  for (const line of fs.existsSync(LIST) ? fs.readFileSync(LIST, 'utf8').split('\n') : []) {
    const m = line.match(/^(\S+)\s+GLIBC_(\S+)/);
    if (m) pins.set(m[1], m[2]);
  }
  const noOld = [];
  for (const s of dynamicSymbols(file)) {
    if (!s.undef || s.lib !== 'GLIBC' || cmp(s.version, MAX) <= 0) continue;
    const old = (defined.get(s.name) ?? []).filter((v) => cmp(v, MAX) <= 0).sort(cmp).pop();
    if (old) pins.set(s.name, old.join('.'));
    else noOld.push(`${s.name}@GLIBC_${s.version.join('.')}`);
  }
  const body = [...pins].sort(([a], [b]) => a.localeCompare(b)).map(([n, v]) => `${n} GLIBC_${v}`);
  const head = fs.readFileSync(LIST, 'utf8').split('\n').filter((l) => l.startsWith('#'));
  fs.writeFileSync(LIST, [...head, ...body, ''].join('\n'));
  console.log(`glibc-compat: ${body.length} pinned symbols in ${path.relative(process.cwd(), LIST)}`);
  if (noOld.length) console.log(`no version <= ${MAX.join('.')} (shim them in native/compat/glibc_compat.cc): ${noOld.join(', ')}`);
}

const [cmd, file] = process.argv.slice(2);
if (!['check', 'update'].includes(cmd) || !file) {
  console.error('usage: node scripts/glibc-compat.js check|update <file.node>');
  process.exit(2);
}
if (process.platform !== 'linux') {
  console.log('glibc-compat: not Linux, nothing to check');
  process.exit(0);
}
(cmd === 'check' ? check : update)(path.resolve(file));
