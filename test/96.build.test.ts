// The builds a user's machine may make, checked without building the whole addon: a build without
// the CUDA backend says why (CMake with MOE_CUDA=OFF or no nvcc on the PATH; node-gyp's binding.gyp,
// and why node-gyp was used), and the checker of the prebuilt binary's glibc needs can fail.
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

const root = path.join(__dirname, '..');
const build = suite<{ dir: string }>('builds', { dir: '' });
build.before((ctx) => {
  ctx.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-build-'));
  // a program that prints what backend_none.cc answers
  fs.writeFileSync(
    path.join(ctx.dir, 'main.cc'),
    '#include <cstdio>\n#include "moe/backend.h"\nnamespace moe { namespace cuda { Backend& instance(); } }\n' +
      'int main() { const moe::Capabilities& c = moe::cuda::instance().capabilities(); std::printf("%s|%s\\n", c.name.c_str(), c.reason.c_str()); }\n',
  );
});
build.after((ctx) => fs.rmSync(ctx.dir, { recursive: true, force: true }));

const has = (cmd: string) => spawnSync('sh', ['-c', `command -v ${cmd}`]).status === 0;

/** Links backend_none's object (or source) with main.cc and runs it: [backend name, reason]. */
function reasonOf(dir: string, inputs: string[], defines: string[] = []): [string, string] {
  const exe = path.join(dir, `probe-${Math.random().toString(36).slice(2)}`);
  const c = spawnSync('c++', ['-std=c++17', `-I${path.join(root, 'native', 'include')}`, ...defines, ...inputs, path.join(dir, 'main.cc'), '-o', exe], { encoding: 'utf8' });
  assert.is(c.status, 0, c.stderr);
  const r = spawnSync(exe, { encoding: 'utf8' });
  assert.is(r.status, 0, r.stderr);
  const [name, reason] = r.stdout.trim().split('|');
  return [name, reason];
}

build('CMake without the CUDA backend says why: MOE_CUDA=OFF, or no nvcc on the PATH (not "built without nvcc" when it is there)', ({ dir }) => {
  if (!has('cmake') || !has('ninja')) {
    console.log('96.build: no cmake or ninja here; the CMake reasons are not checked');
    return;
  }
  const cases: [string, string[], NodeJS.ProcessEnv, RegExp][] = [
    ['off', ['-DMOE_CUDA=OFF'], process.env, /^this build has no CUDA backend: it was configured with MOE_CUDA=OFF \(MOE_CUDA=0\)$/],
    ['no-nvcc', ['-DMOE_CUDA=ON'], { ...process.env, PATH: '/usr/bin:/bin', CUDACXX: '', CUDA_HOME: '' }, /^this build has no CUDA backend: no nvcc was on the PATH when it was built: put the CUDA toolkit's bin folder on the PATH/],
  ];
  for (const [name, defs, env, want] of cases) {
    const out = path.join(dir, `cmake-${name}`);
    const cfg = spawnSync('cmake', ['-S', root, '-B', out, '-G', 'Ninja', ...defs], { encoding: 'utf8', env });
    assert.is(cfg.status, 0, cfg.stdout + cfg.stderr);
    const obj = 'CMakeFiles/moe_cuda.dir/native/backends/cuda/backend_none.cc.o';
    const b = spawnSync('ninja', ['-C', out, obj], { encoding: 'utf8', env });
    assert.is(b.status, 0, b.stdout + b.stderr);
    const [backend, reason] = reasonOf(dir, [path.join(out, obj)]);
    assert.is(backend, 'none');
    assert.match(reason, want);
    assert.not.match(reason, /built without nvcc/);
  }
});

build('node-gyp (binding.gyp) says it was used, why, and where nvcc is', ({ dir }) => {
  const { gypNoCudaReason } = require('../scripts/build-native.js') as { gypNoCudaReason: (o: object) => string };
  const noCmake = gypNoCudaReason({ cmakeJs: '/x/cmake-js', cmake: null, nvcc: '/usr/local/cuda/bin/nvcc', forced: false });
  assert.is(
    noCmake,
    'it was built by node-gyp from binding.gyp, which has no CUDA backend, because cmake is not on the PATH; nvcc is at /usr/local/cuda/bin/nvcc: for the CUDA backend, install cmake, then npm rebuild moe-kernels',
  );
  // installed from the registry: cmake-js, a dev dependency, is absent
  assert.match(gypNoCudaReason({ cmakeJs: null, cmake: '/usr/bin/cmake', nvcc: '/usr/bin/nvcc', forced: false }), /because cmake-js \(a development dependency\) is not installed; nvcc is at \/usr\/bin\/nvcc: for the CUDA backend, npm install --no-save cmake-js, then/);
  assert.match(gypNoCudaReason({ cmakeJs: null, cmake: null, nvcc: null, forced: false }), /because cmake is not on the PATH and cmake-js .* is not installed; nvcc was not on the PATH either$/);
  assert.match(gypNoCudaReason({ cmakeJs: 'x', cmake: 'y', nvcc: "/we'ird/$x/nvcc", forced: true }), /because MOE_BUILD=gyp asked for it; nvcc is at \/we_ird\/_x\/nvcc/);
  // binding.gyp passes it to backend_none.cc as a C string: what gyp expands is what the program says
  const expand = spawnSync(process.execPath, ['-p', JSON.parse(`"${fs.readFileSync(path.join(root, 'binding.gyp'), 'utf8').match(/<!\(node -p \\"(.*MOE_NO_CUDA_REASON.*)\\"\)/)![1]}"`)], {
    encoding: 'utf8',
    env: { ...process.env, MOE_NO_CUDA_REASON: noCmake },
  });
  assert.is(expand.status, 0, expand.stderr);
  const define = expand.stdout.trim();
  const [backend, reason] = reasonOf(dir, [path.join(root, 'native', 'backends', 'cuda', 'backend_none.cc')], [`-D${define}`]);
  assert.is(backend, 'none');
  assert.is(reason, `this build has no CUDA backend: ${noCmake}`);
});

build('the glibc checker fails a binary that needs glibc > 2.28 (this machine\'s own build)', () => {
  const glibc = (process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined)?.header?.glibcVersionRuntime;
  const addon = path.join(root, 'build', 'Release', 'moe_kernels.node');
  if (!glibc || !has('objdump') || !fs.existsSync(addon)) {
    console.log('96.build: no glibc, objdump or build/Release here; the checker is not exercised');
    return;
  }
  const [maj, min] = glibc.split('.').map(Number);
  const r = spawnSync(process.execPath, [path.join(root, 'scripts', 'glibc-compat.js'), 'check', addon], { encoding: 'utf8' });
  if (maj === 2 && min <= 28) {
    assert.is(r.status, 0, r.stderr);
    return;
  }
  // built here against glibc > 2.28 with libstdc++ linked dynamically: both show
  assert.is(r.status, 1, r.stdout + r.stderr);
  assert.match(r.stderr, /will not load on glibc 2\.28/);
  assert.match(r.stderr, /NEEDED libstdc\+\+\.so\.6 \(not part of glibc\)/);
});

build.run();

// CI=true is set by every CI service, also on a contributor's fork without CUDA headers or
// prebuilds/: the suites that are strict in this project's CI key on explicit variables instead.
const ci = suite<{ dir: string }>('CI switches', { dir: '' });
ci.before((ctx) => {
  ctx.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-ci-'));
  // a clone's skeleton: the runner, test/95, one trivial suite, node_modules; no prebuilds/, no CUDA headers
  fs.mkdirSync(path.join(ctx.dir, 'scripts'));
  fs.mkdirSync(path.join(ctx.dir, 'test'));
  fs.copyFileSync(path.join(root, 'scripts', 'run-tests.js'), path.join(ctx.dir, 'scripts', 'run-tests.js'));
  fs.copyFileSync(path.join(root, 'test', '95.prebuilt.test.ts'), path.join(ctx.dir, 'test', '95.prebuilt.test.ts'));
  fs.writeFileSync(path.join(ctx.dir, 'test', '00.ok.test.ts'), "import { test } from 'uvu';\ntest('ok', () => {});\ntest.run();\n");
  fs.symlinkSync(path.join(root, 'node_modules'), path.join(ctx.dir, 'node_modules'));
});
ci.after((ctx) => fs.rmSync(ctx.dir, { recursive: true, force: true }));

const runIn = (dir: string, args: string[], env: Record<string, string>) => {
  const e: NodeJS.ProcessEnv = { ...process.env, CUDA_HOME: path.join(dir, 'no-cuda'), ...env };
  delete e.MOE_TEST_REQUIRE_PREBUILT;
  delete e.MOE_TEST_REQUIRE_CUDA_EMU;
  delete e.MOE_TEST_SANITIZERS;
  Object.assign(e, env);
  return spawnSync(process.execPath, args, { cwd: dir, encoding: 'utf8', env: e });
};

ci('CI=true on a fresh clone passes: no prebuilds/ and no CUDA headers are skipped with a note', ({ dir }) => {
  const r = runIn(dir, [path.join(dir, 'scripts', 'run-tests.js')], { CI: 'true' });
  assert.is(r.status, 0, r.stdout + r.stderr);
  assert.match(r.stdout, /\n2 passed, 0 failed\n$/);
  assert.match(r.stdout, /cuda-emu: no CUDA headers/);
  assert.match(r.stdout, /95\.prebuilt: no prebuilds\/linux-x64\/\*\.node/);
});

ci('MOE_TEST_REQUIRE_PREBUILT=1 and MOE_TEST_REQUIRE_CUDA_EMU=1 (what .ci/run sets) make both a failure', ({ dir }) => {
  const p = runIn(dir, [path.join(dir, 'scripts', 'run-tests.js')], { MOE_TEST_REQUIRE_PREBUILT: '1' });
  assert.is(p.status, 1, p.stdout);
  assert.match(p.stdout, /\n1 passed, 1 failed\n$/);
  const c = runIn(dir, [path.join(dir, 'scripts', 'run-tests.js')], { MOE_TEST_REQUIRE_CUDA_EMU: '1' });
  assert.is(c.status, 1, c.stdout);
  assert.match(c.stdout, /\n2 passed, 0 failed\n$/);
  const run = fs.readFileSync(path.join(root, '.ci', 'run'), 'utf8');
  assert.match(run, /^export MOE_TEST_REQUIRE_CUDA_EMU=1 MOE_TEST_REQUIRE_PREBUILT=1( MOE_TEST_SANITIZERS=1)?$/m);
  assert.not.match(run, /^export CI=/m);
});

ci.run();

// npm install in a clone, and npm pack: what a contributor and a publisher see.
const pack = suite<{ dir: string; bin: string }>('install and pack', { dir: '', bin: '' });
pack.before((ctx) => {
  ctx.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-pack-'));
  // a PATH with node and sh only: no compiler, make, cmake or python
  ctx.bin = path.join(ctx.dir, 'bin');
  fs.mkdirSync(ctx.bin);
  fs.symlinkSync(process.execPath, path.join(ctx.bin, 'node'));
  fs.symlinkSync('/bin/sh', path.join(ctx.bin, 'sh'));
});
pack.after((ctx) => fs.rmSync(ctx.dir, { recursive: true, force: true }));

const npmCli = path.join(path.dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'bin', 'npm-cli.js');

/** A clone's skeleton in dir/name: package.json, scripts/, native/ (no build/, no prebuilds/), node_modules linked. */
function skeleton(dir: string, name: string): string {
  const d = path.join(dir, name);
  fs.mkdirSync(d);
  fs.copyFileSync(path.join(root, 'package.json'), path.join(d, 'package.json'));
  fs.cpSync(path.join(root, 'scripts'), path.join(d, 'scripts'), { recursive: true });
  fs.cpSync(path.join(root, 'native', 'include'), path.join(d, 'native', 'include'), { recursive: true });
  fs.symlinkSync(path.join(root, 'node_modules'), path.join(d, 'node_modules'));
  return d;
}

pack('npm install with no binary and no compiler: one message saying what is missing, no stack trace', ({ dir, bin }) => {
  const d = skeleton(dir, 'install');
  const env = { HOME: os.homedir(), PATH: bin, npm_config_update_notifier: 'false' };
  const r = spawnSync(process.execPath, [npmCli, 'run', 'install', '--silent'], { cwd: d, encoding: 'utf8', env });
  const out = r.stdout + r.stderr;
  assert.is.not(r.status, 0, out);
  assert.match(out, /moe-kernels: no prebuilt binary for linux-x64 \(and none built yet\), and building one from source needs a C\+\+17 compiler \(g\+\+\) and make or cmake/);
  assert.not.match(out, /No native build was found|\n\s+at \S+ \(/);
});

pack('npm install with a binary that loads: silent (no node-gyp-build-test output, no build)', ({ dir, bin }) => {
  const d = skeleton(dir, 'install-ok');
  const prebuilt = path.join(root, 'build', 'Release', 'moe_kernels.node');
  fs.mkdirSync(path.join(d, 'build', 'Release'), { recursive: true });
  fs.copyFileSync(prebuilt, path.join(d, 'build', 'Release', 'moe_kernels.node'));
  const env = { HOME: os.homedir(), PATH: bin, npm_config_update_notifier: 'false' };
  const r = spawnSync(process.execPath, [npmCli, 'run', 'install', '--silent'], { cwd: d, encoding: 'utf8', env });
  assert.is(r.status, 0, r.stdout + r.stderr);
  assert.is(r.stdout + r.stderr, '');
});

pack('npm pack without a prebuilt binary, where none can be built, fails instead of shipping none', ({ dir, bin }) => {
  const d = skeleton(dir, 'pack');
  const env = { HOME: os.homedir(), PATH: bin, npm_config_update_notifier: 'false' };
  const r = spawnSync(process.execPath, [npmCli, 'pack', '--pack-destination', d], { cwd: d, encoding: 'utf8', env });
  const out = r.stdout + r.stderr;
  assert.is.not(r.status, 0, out);
  assert.match(out, /moe-kernels prepack: there is no prebuilt binary in prebuilds\/linux-x64\/, and it cannot be built here: cmake, a C\+\+ compiler \(c\+\+\) missing/);
  assert.equal(fs.readdirSync(d).filter((f) => f.endsWith('.tgz')), [], 'a tarball was written');
});

pack.run();
