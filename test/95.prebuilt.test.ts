// The packed package as a user installs it: `npm pack` (with prebuilds/ from `npm run
// build:prebuilt`), then `npm install <tarball>` in an empty folder with no compiler, cmake or make
// on the PATH, then a forward pass. The install must take the prebuilt binary, not build.
//
// Without prebuilds/ there is nothing to check: the suite says so and passes, unless
// MOE_TEST_REQUIRE_PREBUILT=1 (.ci/run sets it after making the prebuilt binary). Not CI=true:
// every CI service sets that, and a contributor's fork has no prebuilds/.
//
// The binary must also load on old Linux: objdump -T shows no glibc symbol version above 2.28 and
// no libstdc++ / libgcc_s one (scripts/glibc-compat.js check).
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

const root = path.join(__dirname, '..');
const prebuildDir = path.join(root, 'prebuilds', `${process.platform}-${process.arch}`);
const hasPrebuild = fs.existsSync(prebuildDir) && fs.readdirSync(prebuildDir).some((f) => f.endsWith('.node'));
const npmCli = path.join(path.dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'bin', 'npm-cli.js');

const pkg = suite<{ dir: string; tgz: string }>('prebuilt package', { dir: '', tgz: '' });

if (!hasPrebuild) {
  pkg('prebuilds/ exists (npm run build:prebuilt)', () => {
    if (process.env.MOE_TEST_REQUIRE_PREBUILT === '1') assert.unreachable(`no prebuilt binary in ${prebuildDir}: .ci/run must run npm run build:prebuilt`);
    console.log(`95.prebuilt: no ${path.relative(root, prebuildDir)}/*.node; run npm run build:prebuilt to test the packed package`);
  });
} else {
  pkg.before((ctx) => {
    ctx.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-prebuilt-'));
    const r = spawnSync(process.execPath, [npmCli, 'pack', '--pack-destination', ctx.dir, '--ignore-scripts', '--json'], { cwd: root, encoding: 'utf8' });
    assert.is(r.status, 0, r.stderr);
    ctx.tgz = path.join(ctx.dir, JSON.parse(r.stdout)[0].filename);
  });
  pkg.after((ctx) => fs.rmSync(ctx.dir, { recursive: true, force: true }));

  pkg('the tarball holds the prebuilt binary, the compiled TypeScript and the sources', (ctx) => {
    const r = spawnSync('tar', ['-tzf', ctx.tgz], { encoding: 'utf8' });
    assert.is(r.status, 0, r.stderr);
    const files = r.stdout.split('\n');
    for (const f of ['package/dist/index.js', 'package/dist/index.mjs', 'package/native/backends/cuda/grouped_gemm.cu', 'package/CMakeLists.txt'])
      assert.ok(files.includes(f), `${f} missing from the tarball`);
    assert.ok(files.some((f) => /^package\/prebuilds\/linux-x64\/.+\.node$/.test(f)), 'no prebuilt binary in the tarball');
    assert.not.ok(files.some((f) => f.startsWith('package/build/') || f.startsWith('package/test/')), 'build outputs or tests shipped');
  });

  pkg('the binary loads on glibc 2.28: objdump -T shows nothing newer, and no libstdc++ or libgcc_s', () => {
    if (process.platform !== 'linux') return;
    for (const f of fs.readdirSync(prebuildDir).filter((n) => n.endsWith('.node'))) {
      const r = spawnSync(process.execPath, [path.join(root, 'scripts', 'glibc-compat.js'), 'check', path.join(prebuildDir, f)], { encoding: 'utf8' });
      assert.is(r.status, 0, `${f}:\n${r.stdout}${r.stderr}`);
      const max = r.stdout.match(/needs GLIBC_(\d+)\.(\d+)/);
      assert.ok(max && Number(max[1]) === 2 && Number(max[2]) <= 28, r.stdout);
      console.log(`95.prebuilt: ${r.stdout.trim()}`);
    }
  });

  pkg('installs in an empty folder without a compiler and runs a forward pass', (ctx) => {
    const app = path.join(ctx.dir, 'app');
    const bin = path.join(ctx.dir, 'bin');
    fs.mkdirSync(app);
    fs.mkdirSync(bin);
    // node and sh only (npm runs install scripts with sh): no g++, cmake, make, python or nvcc
    fs.symlinkSync(process.execPath, path.join(bin, 'node'));
    fs.symlinkSync('/bin/sh', path.join(bin, 'sh'));
    fs.writeFileSync(path.join(app, 'package.json'), '{"name":"app","private":true}');
    const env = { HOME: os.homedir(), PATH: bin, npm_config_update_notifier: 'false', CC: '/nonexistent', CXX: '/nonexistent' };
    const inst = spawnSync(process.execPath, [npmCli, 'install', ctx.tgz, '--prefer-offline', '--no-audit', '--no-fund', '--foreground-scripts'], { cwd: app, encoding: 'utf8', env });
    assert.is(inst.status, 0, `npm install failed:\n${inst.stdout}\n${inst.stderr}`);
    assert.not.ok(fs.existsSync(path.join(app, 'node_modules', 'moe-kernels', 'build')), 'the install built from source');
    const script = `
      const m = require('moe-kernels');
      const where = require('node-gyp-build').resolve(require('path').dirname(require.resolve('moe-kernels/package.json')));
      const d = 8, f = 16, E = 4, T = 3, r = (n) => Float32Array.from({ length: n }, (_, i) => Math.sin(i));
      const layer = new m.MoeLayer({ gate: m.tensor('float32', r(E * d), [E, d]), w1: m.tensor('float32', r(E * f * d), [E, f, d]),
        w3: m.tensor('float32', r(E * f * d), [E, f, d]), w2: m.tensor('float32', r(E * d * f), [E, d, f]) });
      const out = layer.forwardSync(m.tensor('float32', r(T * d), [T, d])).output;
      console.log(JSON.stringify({ where, dims: out.dims, finite: Array.from(out.data).every(Number.isFinite), backend: m.backendInfo().backend }));`;
    const run = spawnSync(process.execPath, ['-e', script], { cwd: app, encoding: 'utf8', env });
    assert.is(run.status, 0, run.stderr);
    const res = JSON.parse(run.stdout.trim().split('\n').pop()!);
    assert.match(res.where, /prebuilds/, `loaded ${res.where}`);
    assert.equal(res.dims, [3, 8]);
    assert.ok(res.finite);
  });
}

pkg.run();
