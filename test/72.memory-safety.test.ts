/**
 * Memory safety at the JS boundary (native/napi/host_memory.h): an async call never reads or writes
 * memory it does not hold, an allocation that cannot be made is a typed error, and a worker's
 * teardown waits for its jobs. Each case here crashed the process, corrupted memory or aborted V8
 * before the rule existed.
 */
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import * as v8 from 'node:v8';
import * as vm from 'node:vm';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { embeddingSync, Linear, MoeError, MoeLayer, routeSync, tensor, zeros, type Tensor } from '../lib/index';
import { makeProblem, type MoeProblem } from './helpers/problems';
import { assertSameTensor, randn } from './helpers/reference';

v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc') as () => void;

const root = path.join(__dirname, '..');
const weightsOf = (p: MoeProblem) => ({ gate: p.gate, w1: p.w1, w3: p.w3, w2: p.w2 });
const transfer = (buf: ArrayBufferLike) => structuredClone(buf, { transfer: [buf as ArrayBuffer] });

async function rejectsWith(p: Promise<unknown>, code: string, label: string) {
  let err: unknown;
  try {
    await p;
  } catch (e) {
    err = e;
  }
  assert.ok(err instanceof MoeError, `${label}: expected a MoeError, got ${err}`);
  assert.is((err as MoeError).code, code, `${label}: code`);
}
function throwsCode(fn: () => unknown, code: string, label: string) {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  assert.ok(err instanceof MoeError, `${label}: expected a MoeError, got ${err}`);
  assert.is((err as MoeError).code, code, `${label}: code`);
}

const js = suite('async calls and the memory of their tensors');

js('an input transferred (and collected) while the call runs: the call read its own copy', async () => {
  const p = makeProblem({ T: 512, d: 64, f: 96, E: 8, seed: 7201 });
  const layer = await MoeLayer.create(weightsOf(p), { topK: 2 });
  const x: Tensor = { type: 'float32', data: (p.x.data as Float32Array).slice(), dims: [...p.x.dims] };
  const expected = layer.forwardSync(x).output;
  const pending = layer.forward(x);
  transfer(x.data.buffer); // detaches x.data; the clone is garbage at once
  gc();
  assertSameTensor((await pending).output, expected, 'output');
  layer.dispose();
});

js('an output of the package used as an input, then transferred: the job holds its memory', async () => {
  const p = makeProblem({ T: 256, d: 64, f: 96, E: 8, seed: 7202 });
  const layer = await MoeLayer.create(weightsOf(p), { topK: 2 });
  const y = layer.forwardSync(p.x).output; // memory the package allocated
  const expected = layer.forwardSync(y).output;
  const pending = layer.forward(y);
  transfer(y.data.buffer);
  gc();
  assertSameTensor((await pending).output, expected, 'output');
  layer.dispose();
});

js('an `out` transferred while the call runs: ERR_DETACHED, and the memory it moved to is not written', async () => {
  const w = tensor('float32', randn(64 * 32, 7203), [64, 32]);
  const lin = Linear.packSync(w);
  const x = tensor('float32', randn(200 * 32, 7204), [200, 32]);
  const out: Tensor = { type: 'float32', data: new Float32Array(200 * 64), dims: [200, 64] };
  const pending = lin.forward(x, { out });
  const moved = new Float32Array(transfer(out.data.buffer) as ArrayBuffer);
  await rejectsWith(pending, 'ERR_DETACHED', 'transferred out');
  assert.ok(moved.every((v) => v === 0), 'the transferred memory was written');
  lin.dispose();
});

js('a resizable ArrayBuffer shrunk right after the call: the call read its own copy', async () => {
  const p = makeProblem({ T: 300, d: 64, f: 96, E: 8, seed: 7205 });
  const layer = await MoeLayer.create(weightsOf(p), { topK: 2 });
  const n = p.x.data.length;
  const ab = new (ArrayBuffer as unknown as new (n: number, o: { maxByteLength: number }) => ArrayBuffer & { resize(n: number): void })(n * 4, { maxByteLength: n * 4 });
  const data = new Float32Array(ab);
  data.set(p.x.data as Float32Array);
  const x: Tensor = { type: 'float32', data, dims: [...p.x.dims] };
  const expected = layer.forwardSync(x).output;
  const pending = layer.forward(x);
  ab.resize(0);
  assertSameTensor((await pending).output, expected, 'output');
  layer.dispose();
});

js('SharedArrayBuffer-backed tensors work, sync and async', async () => {
  const p = makeProblem({ T: 40, d: 32, f: 48, E: 4, seed: 7206 });
  const layer = await MoeLayer.create(weightsOf(p), { topK: 2 });
  const expected = layer.forwardSync(p.x).output;
  const data = new Float32Array(new SharedArrayBuffer(p.x.data.byteLength));
  data.set(p.x.data as Float32Array);
  const x: Tensor = { type: 'float32', data, dims: [...p.x.dims] };
  assertSameTensor(layer.forwardSync(x).output, expected, 'sync');
  assertSameTensor((await layer.forward(x)).output, expected, 'async');
  const out: Tensor = { type: 'float32', data: new Float32Array(new SharedArrayBuffer(40 * 32 * 4)), dims: [40, 32] };
  const lin = Linear.packSync(tensor('float32', randn(32 * 32, 7207), [32, 32]));
  const ref = lin.forwardSync(x);
  await lin.forward(x, { out });
  assertSameTensor(out, ref, 'async out in shared memory');
  lin.dispose();
  layer.dispose();
});

js('a detached input is a TypeError naming it', () => {
  const x = tensor('float32', randn(8, 7208), [2, 4]);
  transfer(x.data.buffer);
  const lin = Linear.packSync(tensor('float32', randn(16, 7209), [4, 4]));
  assert.throws(() => lin.forwardSync(x), (e: Error) => e instanceof TypeError && /x\.data's ArrayBuffer is detached/.test(e.message));
  lin.dispose();
});

const oom = suite('allocations that cannot be made');

oom('outputs beyond the largest typed array are ERR_OUT_OF_MEMORY, not a V8 fatal error', () => {
  // logits [131072, 65536]: 2^33 elements
  throwsCode(() => routeSync(zeros('float32', [131072, 1]), zeros('float32', [65536, 1]), { topK: 1, returnLogits: true }), 'ERR_OUT_OF_MEMORY', 'route logits');
  // out [65537, 65536]
  throwsCode(() => embeddingSync(zeros('float32', [2, 65536]), zeros('int32', [65537])), 'ERR_OUT_OF_MEMORY', 'embedding');
  const lin = Linear.packSync(zeros('float32', [1 << 20, 1]));
  throwsCode(() => lin.forwardSync(zeros('float32', [4097, 1])), 'ERR_OUT_OF_MEMORY', 'linear');
  lin.dispose();
});

const workers = suite('worker threads');

// A child process whose worker loads the package, starts a forward on a large x and is torn down
// (terminated, or process.exit() from inside) while the forward runs. `mainLoads`: the main thread
// loads the package too (else the library is unloaded with the worker).
function runWorkerChild(how: 'terminate' | 'exit', mainLoads: boolean) {
  const script = `
    const { Worker } = require('node:worker_threads');
    const dist = ${JSON.stringify(path.join(root, 'dist', 'index.js'))};
    ${mainLoads ? 'const main = require(dist);' : ''}
    const w = new Worker(\`
      const { parentPort } = require('node:worker_threads');
      const m = require(\${JSON.stringify(dist)});
      const d = 256, f = 512, E = 8, T = 4096;
      const r = (n) => { const a = new Float32Array(n); for (let i = 0; i < n; i++) a[i] = Math.sin(i * 12.9898) * 0.1; return a; };
      const layer = new m.MoeLayer({ gate: m.tensor('float32', r(E * d), [E, d]), w1: m.tensor('float32', r(E * f * d), [E, f, d]),
        w3: m.tensor('float32', r(E * f * d), [E, f, d]), w2: m.tensor('float32', r(E * d * f), [E, d, f]) }, { topK: 2 });
      layer.forward(m.tensor('float32', r(T * d), [T, d]));
      ${how === 'exit' ? 'process.exit(0);' : "parentPort.postMessage('started');"}
    \`, { eval: true });
    w.on('message', () => w.terminate());
    w.on('exit', () => setTimeout(() => {
      ${mainLoads ? "const x = main.tensor('float32', [1, 2, 3, 4], [2, 2]); const y = main.rmsNormSync(x, main.tensor('float32', [1, 1], [2])); if (!(y.data[0] > 0)) process.exit(3);" : ''}
      console.log('alive');
    }, 200));
  `;
  return spawnSync(process.execPath, ['-e', script], { cwd: root, encoding: 'utf8', timeout: 120_000 });
}

for (const how of ['terminate', 'exit'] as const)
  for (const mainLoads of [true, false])
    workers(`a worker torn down (${how}) during an async forward${mainLoads ? '' : ', the only one that loaded the addon'}: no crash`, () => {
      const r = runWorkerChild(how, mainLoads);
      assert.is(r.signal, null, `the process died of ${r.signal}: ${r.stderr}`);
      assert.is(r.status, 0, `exit ${r.status}: ${r.stderr}`);
      assert.match(r.stdout, /alive/);
    });

// Many async calls queued, then the worker terminated: calls that finish while its environment is
// being torn down (it runs no JavaScript, yet is not gone) cannot settle their promises. Settling
// threw out of the completion callback, and the process aborted (std::terminate).
workers('a worker terminated with 16 async calls queued: no abort', () => {
  const script = `
    const { Worker } = require('node:worker_threads');
    const w = new Worker(\`
      const m = require(\${JSON.stringify(${JSON.stringify(path.join(root, 'dist', 'index.js'))})});
      const V = 4096, d = 2048;
      const t = { type: 'bfloat16', data: new Uint16Array(V * d), dims: [V, d] };
      const ids = { type: 'int32', data: Int32Array.from({ length: V }, (_, i) => i), dims: [V] };
      for (let i = 0; i < 16; i++) m.embedding(t, ids, { outType: 'float32' }).catch(() => {});
      require('node:worker_threads').parentPort.postMessage('queued');
    \`, { eval: true });
    w.on('message', () => w.terminate());
    w.on('exit', () => setTimeout(() => console.log('alive'), 200));
  `;
  for (let i = 0; i < 3; i++) {
    const r = spawnSync(process.execPath, ['-e', script], { cwd: root, encoding: 'utf8', timeout: 120_000 });
    assert.is(r.signal, null, `the process died of ${r.signal}: ${r.stderr}`);
    assert.is(r.status, 0, `exit ${r.status}: ${r.stderr}`);
    assert.match(r.stdout, /alive/);
  }
});

js.run();
oom.run();
workers.run();
