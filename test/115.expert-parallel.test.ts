/**
 * Expert parallelism over MPI (#15), on loopback: real `mpirun` jobs of test/fixtures/ep-rank.ts.
 *   - `-np 2`, `-np 3` and `-np 4` (oversubscribed): every rank's output of the expert-parallel layer
 *     has the bits of the single-process layer for every routing variant (the fixture checks it);
 *   - `-np 2` on cuda-emu ranks (the build-emu/ addon, when it exists): the same bits too, with both
 *     layers `batchInvariant` (the CUDA grouped GEMM's default decode path for 16 rows or fewer
 *     sums in another order, and EP changes the rows per expert);
 *   - `-np 2` and `-np 4`: an expert-parallel MixtralModel gives each rank the logits and greedy
 *     tokens of the single-process model for its own sequence; on cuda-emu ranks (`-np 2`) too;
 *   - a rank that dies or never joins makes the others fail with a clear error within a timeout;
 *   - `moe-kernels launch` builds the mpirun command and runs a job.
 * Skipped, with a message, where mpirun is missing (a user's machine); .ci/run installs Open MPI and
 * sets MOE_TEST_REQUIRE_MPI=1, which makes its absence a failure. Every job is bounded by a timeout.
 */
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as os from 'node:os';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { MixtralModel, MoeCheckpoint, MoeLayer, ProcessGroup, countParameters, expertRange, parseMixtralConfig, type Tensor } from '../lib/index';
import { expertShareEstimate } from '../lib/parallel/memory';
import { mixtral8x7bRaw, tinyMixtralRaw, tmpDir, writeTinyMixtral } from './helpers/checkpoints';
import { launchCommand } from '../lib/cli/launch';

const root = path.join(__dirname, '..');
const fixture = path.join(__dirname, 'fixtures', 'ep-rank.ts');
const mpirun = spawnSync('sh', ['-c', 'command -v mpirun'], { encoding: 'utf8' }).stdout.trim();
const mpi = ProcessGroup.available().mpi;
const haveMpi = mpirun !== '' && mpi.available;
if (!haveMpi && process.env.MOE_TEST_REQUIRE_MPI === '1')
  throw new Error(`MOE_TEST_REQUIRE_MPI=1 but Open MPI is missing: mpirun ${mpirun || 'not on the PATH'}; libmpi: ${mpi.reason}`);
const skipMpi = () => {
  if (haveMpi) return false;
  console.log(`  (skipped: needs Open MPI: ${mpirun ? mpi.reason : 'mpirun is not on the PATH'}; apt-get install openmpi-bin libopenmpi-dev)`);
  return true;
};
const isRoot = process.getuid?.() === 0;

interface JobResult {
  code: number | null;
  signal: string | null;
  out: string;
  ms: number;
  timedOut: boolean;
}

/** Runs a command in its own process group, killed whole after `timeoutMs`. */
function run(cmd: string, args: string[], timeoutMs: number, env: Record<string, string> = {}): Promise<JobResult> {
  return new Promise((resolve) => {
    const t0 = Date.now();
    const child = spawn(cmd, args, { cwd: root, detached: true, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
    let out = '';
    child.stdout.on('data', (b) => (out += b));
    child.stderr.on('data', (b) => (out += b));
    let timedOut = false;
    const kill = (sig: NodeJS.Signals) => {
      try {
        process.kill(-child.pid!, sig);
      } catch {
        // already gone
      }
    };
    const timer = setTimeout(() => {
      timedOut = true;
      kill('SIGTERM');
      setTimeout(() => kill('SIGKILL'), 2000).unref();
    }, timeoutMs);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, out, ms: Date.now() - t0, timedOut });
    });
  });
}

function mpiJob(np: number, mode: string, extra: string[] = [], timeoutMs = 120_000, env: Record<string, string> = {}) {
  const x = Object.keys(env).flatMap((k) => ['-x', k]);
  const args = ['--oversubscribe', '--bind-to', 'none', ...(isRoot ? ['--allow-run-as-root'] : []), ...x, ...extra, '-np', String(np), process.execPath, '-r', 'tsx/cjs', fixture, mode];
  return run(mpirun, args, timeoutMs, env);
}

/** The test build of the addon, whose CUDA backend runs on the CPU emulator (.ci/run makes it before npm test). */
const emuAddon = path.join(root, 'build-emu', 'Release', 'moe_kernels.node');

test('expertRange: contiguous slices, E/N each, the first E mod N ranks one more', () => {
  assert.equal([0, 1, 2, 3].map((r) => expertRange(8, 4, r)), [[0, 2], [2, 4], [4, 6], [6, 8]]);
  assert.equal([0, 1].map((r) => expertRange(5, 2, r)), [[0, 3], [3, 5]]);
  assert.equal([0, 1, 2, 3].map((r) => expertRange(3, 4, r)), [[0, 1], [1, 2], [2, 3], [3, 3]]);
  assert.equal([0, 1, 2].map((r) => expertRange(64, 3, r)), [[0, 22], [22, 43], [43, 64]]);
});

test('ProcessGroup.available reports both transports; NCCL absent is a typed error', () => {
  const a = ProcessGroup.available();
  assert.type(a.mpi.available, 'boolean');
  assert.type(a.mpi.reason, 'string');
  assert.type(a.nccl.available, 'boolean');
  if (!a.nccl.available) {
    assert.match(a.nccl.reason, /libnccl\.so\.2/);
    try {
      ProcessGroup.ncclUniqueId();
      assert.unreachable('ncclUniqueId without NCCL');
    } catch (e) {
      assert.is((e as { code?: string }).code, 'ERR_DIST_UNAVAILABLE');
      assert.match((e as Error).message, /NCCL is not available: cannot load libnccl\.so\.2/);
    }
  } else {
    console.log(`  (NCCL ${a.nccl.version} loads here: its unique id is made, nothing more is checked)`);
    assert.is(ProcessGroup.ncclUniqueId().length, 128);
  }
});

test('expertParallel needs a ProcessGroup and MoeLayer.create', async () => {
  const w = {
    gate: { type: 'float32' as const, data: new Float32Array(8), dims: [2, 4] },
    w1: { type: 'float32' as const, data: new Float32Array(16), dims: [2, 2, 4] },
    w3: { type: 'float32' as const, data: new Float32Array(16), dims: [2, 2, 4] },
    w2: { type: 'float32' as const, data: new Float32Array(16), dims: [2, 4, 2] },
  };
  try {
    await MoeLayer.create(w, { expertParallel: {} as ProcessGroup });
    assert.unreachable();
  } catch (e) {
    assert.instance(e, TypeError);
    assert.match((e as Error).message, /options\.expertParallel must be a ProcessGroup from ProcessGroup\.init\(\), got an object/);
  }
  assert.throws(() => new MoeLayer(w, { expertParallel: {} as ProcessGroup }), (e: Error) => e instanceof TypeError && /needs MoeLayer\.create/.test(e.message));
  const dir = tmpDir('moe-ep-opt-');
  try {
    await writeTinyMixtral(dir);
    try {
      await MixtralModel.load(dir, { expertParallel: 'mpi' as unknown as ProcessGroup });
      assert.unreachable('a string as expertParallel');
    } catch (e) {
      assert.instance(e, TypeError);
      assert.match((e as Error).message, /options\.expertParallel must be a ProcessGroup from ProcessGroup\.init\(\), got "mpi"/);
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a rank reads only its experts from a per-expert checkpoint; its memory estimate counts only them', async () => {
  const dir = tmpDir('moe-ep-read-');
  try {
    await writeTinyMixtral(dir, { raw: tinyMixtralRaw({ num_local_experts: 5 }) });
    const ckpt = await MoeCheckpoint.open(dir);
    try {
      const all = (await ckpt.loadLayer(1)).moe!;
      const part = (await ckpt.loadLayer(1, { experts: [1, 3] })).moe!;
      for (const k of ['w1', 'w3', 'w2'] as const) {
        const p = part[k] as (Tensor | null)[];
        assert.equal(p.map((t) => t !== null), [false, true, true, false, false], k);
        for (const e of [1, 2]) assert.equal(Array.from(p[e]!.data), Array.from((all[k] as Tensor[])[e].data), `${k}[${e}]`);
      }
      let n = 0;
      for await (const l of ckpt.layers({ experts: [4, 5] })) n += (l.moe!.w2 as (Tensor | null)[]).filter((t) => t !== null).length;
      assert.is(n, 2); // two layers, one expert each
    } finally {
      ckpt.close();
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  // Mixtral 8x7B in bf16: 93.4 GB of weights; a rank of EP=4 holds 2 of 8 experts per layer
  const config = parseMixtralConfig(mixtral8x7bRaw());
  const whole = MixtralModel.estimateMemory(config, { dtype: 'bfloat16', maxSeq: 4096 });
  const rank = expertShareEstimate(config, whole, expertRange(8, 4, 1));
  const p = countParameters(config);
  assert.is(whole.weightsBytes - rank.weightsBytes, (p.experts.total * 6 / 8) * 2);
  assert.is(Math.round(rank.weightsBytes / 1e8) / 10, 25.8);
  assert.is(whole.totalBytes - rank.totalBytes, whole.weightsBytes - rank.weightsBytes);
});

test('launch: the mpirun command', () => {
  const c = launchCommand(['-n', '4', '--threads-per-rank', '1', 'app.js', '--flag', '-n', '9'], { PATH: '' }, false);
  assert.is(c.mpirun, 'mpirun');
  assert.equal(c.args, ['--oversubscribe', '--bind-to', 'none', '-x', 'MOE_NUM_THREADS=1', '-np', '4', process.execPath, 'app.js', '--flag', '-n', '9']);
  const r = launchCommand(['-n', '2', '--node-arg=-r', '--node-arg=tsx/cjs', '--mpirun-arg=--tag-output', '--', 'a.ts'], { MOE_MPIRUN: '/opt/ompi/bin/mpirun' }, true);
  assert.is(r.mpirun, '/opt/ompi/bin/mpirun');
  assert.equal(r.args, ['--oversubscribe', '--bind-to', 'none', '--allow-run-as-root', '--tag-output', '-np', '2', process.execPath, '-r', 'tsx/cjs', 'a.ts']);
  const g = launchCommand(['-n', '8', '--gpu-per-rank', 'app.js'], {}, false);
  assert.equal(g.args, ['--oversubscribe', '--bind-to', 'none', '-x', 'MOE_CUDA_DEVICE=local-rank', '-np', '8', process.execPath, 'app.js']);
  for (const [argv, msg] of [
    [['app.js'], /-n <ranks> is required/],
    [['-n', '0', 'app.js'], /-n must be an integer in \[1, 4096\], got '0'/],
    [['-n', '2'], /the program to run is missing/],
    [['-n', '2', '--threads-per-rank', 'x', 'a.js'], /--threads-per-rank must be an integer/],
  ] as const)
    assert.throws(() => launchCommand([...argv], {}, false), (e: Error) => msg.test(e.message));
});

test('MOE_CUDA_DEVICE=local-rank (launch --gpu-per-rank): the CUDA backend takes the GPU of the local rank, and says why not', async () => {
  if (skipEmu()) return;
  const probe = (env: Record<string, string | undefined>) => {
    const e: NodeJS.ProcessEnv = { ...process.env, MOE_KERNELS_ADDON: emuAddon, MOE_CUDA_DEVICE: 'local-rank', ...env };
    for (const k of ['OMPI_COMM_WORLD_LOCAL_RANK', 'MPI_LOCALRANKID', 'SLURM_LOCALID']) if (env[k] === undefined) delete e[k];
    const r = spawnSync(process.execPath, ['-r', 'tsx/cjs', '-e', `const m = require(${JSON.stringify(path.join(root, 'lib', 'index'))}); const c = m.backendInfo().cuda; console.log(JSON.stringify({ available: c.available, reason: c.reason, ordinal: c.device && c.device.ordinal }))`], { env: e, encoding: 'utf8', cwd: root });
    assert.is(r.status, 0, r.stderr);
    return JSON.parse(r.stdout.trim().split('\n').pop()!) as { available: boolean; reason: string; ordinal?: number };
  };
  const ok = probe({ OMPI_COMM_WORLD_LOCAL_RANK: '0' });
  assert.ok(ok.available && ok.ordinal === 0, JSON.stringify(ok));
  assert.ok(probe({ SLURM_LOCALID: '0' }).available);
  const over = probe({ OMPI_COMM_WORLD_LOCAL_RANK: '3' });  // the emulator has one device
  assert.not.ok(over.available);
  assert.match(over.reason, /MOE_CUDA_DEVICE=local-rank: local rank '3' is not a device ordinal in \[0, 1\) \(more ranks on this node than GPUs\?\)/);
  assert.match(probe({}).reason, /no launcher set OMPI_COMM_WORLD_LOCAL_RANK, MPI_LOCALRANKID or SLURM_LOCALID/);
});

for (const np of [2, 3, 4]) {
  test(`mpirun -np ${np}: the expert-parallel layer gives the single-process bits for every routing variant`, async () => {
    if (skipMpi()) return;
    const r = await mpiJob(np, 'layer');
    assert.ok(!r.timedOut, `mpirun -np ${np} timed out after ${r.ms} ms:\n${r.out}`);
    assert.is(r.code, 0, `mpirun -np ${np} failed (${r.code}, ${r.signal}):\n${r.out}`);
    for (let rank = 0; rank < np; rank++) assert.match(r.out, new RegExp(`EP-OK rank ${rank} of ${np}: 30 calls bit-identical`), r.out);
  });
}

/** True (with a message) when the build-emu/ addon is missing; a failure where CI requires it. */
function skipEmu(): boolean {
  if (fs.existsSync(emuAddon)) return false;
  if (process.env.MOE_TEST_REQUIRE_CUDA_EMU === '1') assert.unreachable(`MOE_TEST_REQUIRE_CUDA_EMU=1 but ${emuAddon} is missing`);
  console.log('  (skipped: no build-emu/ addon; MOE_CUDA_EMU=1 npm run build:native makes it)');
  return true;
}

test('mpirun -np 2 on cuda-emu ranks: batch-invariant layers give the single-process bits for every routing variant', async () => {
  const r = await emuJob(2, 'layer', 300_000, false);
  if (!r) return;
  assertCompleted(r);
  // an EP rank's expert gets every rank's rows: with batchInvariant the CUDA grouped GEMM keeps one
  // kernel (one summation order) whatever the row count, so the bits are those of one process
  for (const rank of [0, 1]) assert.match(r.out, new RegExp(`EP-OK rank ${rank} of 2: 30 calls bit-identical on cuda-emu \\(batchInvariant\\)`), r.out);
});

/**
 * The NCCL path on cuda-emu ranks: test/fixtures/nccl_mpi_shim.c stands in for libnccl.so.2 (over
 * MPI; emulated device memory is host memory), built here with mpicc. Null (with a message) where
 * mpicc is missing, a failure where CI requires MPI.
 */
let shimPath: string | null | undefined;
function ncclShim(): string | null {
  if (shimPath !== undefined) return shimPath;
  const out = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'moe-nccl-shim-')), 'libnccl-shim.so');
  const r = spawnSync('mpicc', ['-shared', '-fPIC', '-O1', '-Wall', '-Werror', '-o', out, path.join(__dirname, 'fixtures', 'nccl_mpi_shim.c')], { encoding: 'utf8' });
  if (r.status !== 0) {
    const why = r.error ? String(r.error.message) : r.stderr;
    if (process.env.MOE_TEST_REQUIRE_MPI === '1') assert.unreachable(`MOE_TEST_REQUIRE_MPI=1 but the NCCL test shim does not build with mpicc: ${why}`);
    console.log(`  (skipped: the NCCL test shim needs mpicc (apt-get install libopenmpi-dev): ${why.trim().split('\n')[0]})`);
    shimPath = null;
  } else shimPath = out;
  return shimPath;
}

/**
 * An mpirun job on cuda-emu ranks (the build-emu/ addon), over the NCCL test shim when `nccl`; null
 * (with a message) when a prerequisite is missing and may be, so that the test skips.
 */
async function emuJob(np: number, mode: string, timeoutMs: number, nccl: boolean): Promise<JobResult | null> {
  if (skipMpi() || skipEmu()) return null;
  const env: Record<string, string> = { MOE_KERNELS_ADDON: emuAddon, MOE_EP_BACKEND: 'cuda-emu' };
  if (nccl) {
    const shim = ncclShim();
    if (!shim) return null;
    env.MOE_NCCL_LIBRARY = shim;
  }
  return mpiJob(np, mode, [], timeoutMs, env);
}

/** The job ended by itself with exit status 0. */
function assertCompleted(r: JobResult) {
  assert.ok(!r.timedOut, `timed out after ${r.ms} ms:\n${r.out}`);
  assert.is(r.code, 0, `failed (${r.code}, ${r.signal}):\n${r.out}`);
}

for (const np of [2, 3]) {
  test(`mpirun -np ${np} on cuda-emu ranks over NCCL (the test shim): the EP layer on device tensors gives the single-process bits, the rows stay on the device`, async () => {
    const r = await emuJob(np, 'layer-device', 300_000, true);
    if (!r) return;
    assertCompleted(r);
    for (let rank = 0; rank < np; rank++) assert.match(r.out, new RegExp(`EP-DEVICE-OK rank ${rank} of ${np}: NCCL 21803, 30 calls bit-identical on cuda-emu, rows on the device`), r.out);
  });
}

test('group.nccl() where one rank cannot load NCCL: every rank fails with ERR_DIST_UNAVAILABLE naming it, no rank waits', async () => {
  const r = await emuJob(2, 'nccl-partial', 60_000, true);
  if (!r) return;
  assertCompleted(r);
  for (const rank of [0, 1]) assert.match(r.out, new RegExp(`EP-NCCL-PARTIAL rank ${rank} ERR_DIST_UNAVAILABLE: NCCL is not available on rank 1 of 2`), r.out);
  assert.match(r.out, /EP-NCCL-PARTIAL rank 1 ERR_DIST_UNAVAILABLE: NCCL is not available on rank 1 of 2: cannot load \/nonexistent\/libnccl\.so\.2/, r.out);
});

test('an NCCL all-to-all that a peer never joins: ERR_DIST_TIMEOUT, the communicator is aborted, and the rank exits instead of hanging', async () => {
  // rank 1 sleeps 60 s: a job that ends well before shows that rank 0 exited by itself
  const r = await emuJob(2, 'nccl-stall', 45_000, true);
  if (!r) return;
  assert.ok(!r.timedOut, `timed out after ${r.ms} ms (rank 0 did not exit after the NCCL timeout):\n${r.out}`);
  assert.ok(r.ms < 40_000, `the job took ${r.ms} ms`);
  assert.match(r.out, /EP-NCCL-TIMEOUT rank 0 ERR_DIST_TIMEOUT after \d+ ms: NCCL all-to-all-v did not complete within 2000 ms on rank 0 of 2/, r.out);
  assert.not.match(r.out, /EP-UNEXPECTED/, r.out);
});

for (const np of [2, 4]) {
  test(`mpirun -np ${np}: MixtralModel.load with expertParallel gives each rank the single-process logits and tokens`, async () => {
    if (skipMpi()) return;
    const r = await mpiJob(np, 'model');
    assert.ok(!r.timedOut, `mpirun -np ${np} timed out after ${r.ms} ms:\n${r.out}`);
    assert.is(r.code, 0, `mpirun -np ${np} failed (${r.code}, ${r.signal}):\n${r.out}`);
    for (let rank = 0; rank < np; rank++) assert.match(r.out, new RegExp(`EP-MODEL-OK rank ${rank} of ${np}: 2 models, logits, decode and 10 greedy tokens bit-identical`), r.out);
  });
}

test('mpirun -np 2 on cuda-emu ranks: an expert-parallel model on the device (rows through host memory) gives each rank the single-process bits', async () => {
  const r = await emuJob(2, 'model', 300_000, false);
  if (!r) return;
  assertCompleted(r);
  for (const rank of [0, 1]) assert.match(r.out, new RegExp(`EP-MODEL-OK rank ${rank} of 2: 2 models, logits, decode and 10 greedy tokens bit-identical on cuda-emu; .*; rows by MPI`), r.out);
});

test('mpirun -np 2 on cuda-emu ranks over NCCL (the test shim): an expert-parallel model keeps its MoE rows on the device and gives each rank the single-process bits', async () => {
  const r = await emuJob(2, 'model', 300_000, true);
  if (!r) return;
  assertCompleted(r);
  for (const rank of [0, 1]) assert.match(r.out, new RegExp(`EP-MODEL-OK rank ${rank} of 2: 2 models, logits, decode and 10 greedy tokens bit-identical on cuda-emu; .*; rows by NCCL \\(\\d+ calls\\)`), r.out);
});

test('a program that ends without close(): MPI is finalized at teardown, the job ends normally', async () => {
  if (skipMpi()) return;
  const r = await mpiJob(2, 'noclose', [], 60_000);
  assert.ok(!r.timedOut, r.out);
  assert.is(r.code, 0, r.out);
  assert.match(r.out, /EP-NOCLOSE rank 0/);
  assert.match(r.out, /EP-NOCLOSE rank 1/);
  assert.not.match(r.out, /exiting improperly/);
});

test('a rank that exits ends the job (mpirun names it) within the timeout, no hang', async () => {
  if (skipMpi()) return;
  const r = await mpiJob(3, 'die', [], 60_000);
  assert.ok(!r.timedOut, `timed out:\n${r.out}`);
  assert.is.not(r.code, 0, r.out);
  assert.match(r.out, /EP-DIE rank 1 exits now/);
  assert.match(r.out, /Exit code:\s+7/, r.out);
  assert.not.match(r.out, /EP-UNEXPECTED/);
});

test('a rank that exits while mpirun keeps the job: the others fail with ERR_DIST_TIMEOUT', async () => {
  if (skipMpi()) return;
  // Open MPI 4's switch (mpirun otherwise aborts the job itself, as above)
  const r = await mpiJob(3, 'die', ['--mca', 'orte_abort_on_non_zero_status', '0'], 60_000);
  assert.ok(!r.timedOut, `timed out:\n${r.out}`);
  for (const rank of [0, 2]) assert.match(r.out, new RegExp(`EP-PEER-DIED rank ${rank} ERR_DIST_TIMEOUT: all-to-all-v did not complete within 2000 ms on rank ${rank} of 3`), r.out);
});

test('a rank that never joins: the watchdog rejects with ERR_DIST_TIMEOUT, later calls with ERR_DIST_BROKEN', async () => {
  if (skipMpi()) return;
  const r = await mpiJob(2, 'stall', [], 60_000);
  assert.ok(!r.timedOut, `timed out:\n${r.out}`);
  assert.ok(r.ms < 30_000, `took ${r.ms} ms`);
  assert.match(r.out, /EP-TIMEOUT rank 0 ERR_DIST_TIMEOUT: all-to-all-v did not complete within 2000 ms on rank 0 of 2: a peer rank has exited/, r.out);
  assert.match(r.out, /\| then ERR_DIST_BROKEN/);
});

test('moe-kernels launch -n 2 runs the job', async () => {
  if (skipMpi()) return;
  const main = `require(${JSON.stringify(path.join(root, 'lib', 'cli', 'cli.ts'))}).main(process.argv.slice(1)).then((c) => { process.exitCode = c; })`;
  const r = await run(process.execPath, ['-r', 'tsx/cjs', '-e', main, 'launch', '-n', '2', '--threads-per-rank', '1', '--node-arg=-r', '--node-arg=tsx/cjs', fixture, 'layer'], 120_000);
  assert.ok(!r.timedOut, r.out);
  assert.is(r.code, 0, r.out);
  assert.match(r.out, /EP-OK rank 0 of 2/);
  assert.match(r.out, /EP-OK rank 1 of 2/);
});

test.run();
