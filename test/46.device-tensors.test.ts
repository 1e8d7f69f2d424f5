/**
 * Device tensors (lib/core/device.ts) and the decoder-model ops on them, on every device backend this
 * process has ('cuda' with a GPU; 'cuda-emu' when scripts/run-tests.js runs this file on the test
 * build of the addon): each op against the float64 reference of helpers/reference-model.ts, the
 * KV cache on the device (decode equals one pass, bit for bit), views, the MoE layer and the dense
 * FFN on device tensors, and the errors (tensors of two places, disposed memory, views out of range,
 * what the device kernels do not take). Without a device backend the tests check that device
 * tensors are refused with ERR_BACKEND_UNAVAILABLE.
 */
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import {
  add,
  attention,
  availableBackends,
  cast,
  combine,
  DenseFfn,
  DeviceTensor,
  embedding,
  ExpertWeights,
  groupedGemm,
  KvCache,
  Linear,
  MoeLayer,
  permuteSync,
  rmsNorm,
  route,
  rope,
  sample,
  sampleSync,
  tensor,
  type FloatType,
  type Tensor,
} from '../lib/index';
import { expectMoeError } from './helpers/checkpoints';
import { i32 } from './helpers/problems';
import { assertClose, assertSameTensor, FLOAT_TYPES, randInt, randn, refDense, refMoe, tolFor, widen } from './helpers/reference';
import { refArgmax, refAttention, refEmbedding, refLinear, refRmsNorm, refRope } from './helpers/reference-model';

const DEVICES = availableBackends().filter((b) => b !== 'cpu');
const rt = (type: FloatType, n: number, seed: number, scale = 1, dims = [n]) => tensor(type, randn(n, seed, scale), dims) as Tensor;
const s = suite('device tensors');

s('a device backend is present when the run requires one; none: device tensors are refused', async () => {
  const required = process.env.MOE_TEST_REQUIRE_BACKEND;
  if (required) assert.ok((DEVICES as string[]).includes(required), `backend ${required} is required but not available (${availableBackends().join(', ')})`);
  if (DEVICES.length === 0) {
    await expectMoeError(() => DeviceTensor.zeros('float32', [2]), 'ERR_BACKEND_UNAVAILABLE', 'device tensors need a CUDA backend');
    assert.throws(() => DeviceTensor.zeros('float32', [2], { backend: 'cpu' }), /must be a CUDA backend/);
  }
});

for (const backend of DEVICES) {
  const dev = { backend };
  const up = <T extends Tensor>(t: T) => DeviceTensor.fromSync(t, dev);

  s(`${backend}: cast between every pair of float types, as the host's cast rounds`, async () => {
    for (const from of FLOAT_TYPES)
      for (const to of FLOAT_TYPES) {
        const x = rt(from, 37 * 5, 4601, 300, [37, 5]);
        const want = cast(x, to);
        const d = up(x);
        assertSameTensor((await d.cast(to)).toHostSync(), want, `${from} -> ${to} (async)`);
        assertSameTensor(d.castSync(to).toHostSync(), want, `${from} -> ${to} (sync)`);
        d.dispose();
      }
    assert.throws(() => up(rt('float32', 4, 1)).castSync('int32' as FloatType), /type must be one of/);
  });

  s(`${backend}: upload, download, views, dispose`, async () => {
    const x = rt('bfloat16', 24, 1, 1, [4, 6]);
    const d = await DeviceTensor.from(x, dev);
    assert.is(d.backend, backend);
    assert.equal([...d.dims], [4, 6]);
    assert.is(d.bytes, 48);
    assertSameTensor(await d.toHost(), x);
    assertSameTensor(d.rows(1, 2).toHostSync(), { type: 'bfloat16', data: x.data.slice(6, 18), dims: [2, 6] } as Tensor);
    assert.equal([...d.reshape([24]).dims], [24]);
    assert.throws(() => d.reshape([5, 5]), /hold 25 elements, the tensor has 24/);
    assert.throws(() => d.rows(3, 2), /must lie within the 4 rows/);
    const z = DeviceTensor.zeros('int32', [3], dev);
    assert.equal([...(await z.toHost()).data], [0, 0, 0]);
    await z.copyFrom(i32([7, 8, 9], [3]));
    assert.equal([...(await z.toHost()).data], [7, 8, 9]);
    d.dispose();
    assert.ok(d.disposed);
    await expectMoeError(() => d.toHost(), 'ERR_DISPOSED', 'disposed');
  });

  s(`${backend}: embedding, rmsNorm, add against the reference; results stay device tensors`, async () => {
    const V = 40, dd = 64, T = 5;
    for (const type of FLOAT_TYPES) {
      const table = rt(type, V * dd, 2, 1, [V, dd]);
      const ids = i32(randInt(T, V, 3), [T]);
      const e = await embedding(up(table), ids, { outType: 'float32' });
      assert.ok(e instanceof DeviceTensor);
      const eh = await e.toHost();
      assertClose(eh.data, refEmbedding(widen(table), dd, ids.data), { atol: 0, rtol: 0 }, `embedding ${type}`);
      const w = rt(type, dd, 4, 0.5);
      const n = await rmsNorm(e, up(w), { eps: 1e-5 });
      assertClose((await n.toHost()).data, refRmsNorm(widen(eh), widen(w), T, dd, 1e-5), tolFor('float32', dd), `rmsNorm ${type}`);
      const sum = await add(e, e);
      assertClose((await sum.toHost()).data, widen(eh).map((v) => 2 * v), { atol: 0, rtol: 0 }, 'add');
    }
  });

  s(`${backend}: linear (f32 and 16-bit weights, outType, in place), rope`, async () => {
    const T = 3, k = 64, n = 40;
    for (const type of FLOAT_TYPES) {
      const w = rt(type, n * k, 5, 0.1, [n, k]);
      const lin = await Linear.pack(w, dev);
      assert.is(lin.backend, backend);
      const x = rt('float32', T * k, 6, 1, [T, k]);
      const y = await lin.forward(up(x));
      // 16-bit weights: the device GEMM reads x rounded to the weights' type (README, Backends)
      const xr = type === 'float32' ? widen(x) : widen(tensor(type, x.data as Float32Array, [T, k]));
      assertClose((await y.toHost()).data, refLinear(xr, widen(w), T, k, n), tolFor('float32', k), `linear ${type}`);
      if (type !== 'float32') assert.is((await lin.forward(up(x), { outType: type })).type, type);
      await rejects(() => lin.forward(x), TypeError, 'lives on');
      lin.dispose();
    }
    // a bias: added in f32 before the one rounding (as the CPU), f32 and 16-bit y
    const wb = rt('bfloat16', n * k, 14, 0.1, [n, k]);
    const bias = rt('float32', n, 15, 1);
    const lb = await Linear.pack(wb, { ...dev, bias });
    const xb = rt('float32', T * k, 16, 1, [T, k]);
    const refB = refLinear(widen(tensor('bfloat16', xb.data as Float32Array, [T, k])), widen(wb), T, k, n).map((v, i) => v + bias.data[i % n]);
    assertClose((await (await lb.forward(up(xb))).toHost()).data, refB, tolFor('float32', k), 'linear + bias');
    assertClose(widen(await (await lb.forward(up(xb), { outType: 'bfloat16' })).toHost()), refB, tolFor('bfloat16', k), 'linear + bias -> bf16');
    lb.dispose();
    const sq = await Linear.pack(rt('float32', 64 * 64, 7, 0.1, [64, 64]), dev);
    const x = up(rt('float32', 2 * 64, 8, 1, [2, 64]));
    const fresh = await (await sq.forward(x)).toHost();
    const same = await sq.forward(x, { out: x }); // y aliases x: the device copies x first
    assert.is(same, x);
    assertSameTensor(await same.toHost(), fresh);
    const H = 3, hd = 32;
    const q = rt('float32', T * H * hd, 9, 1, [T, H, hd]);
    const pos = i32([0, 7, 100], [T]);
    const r = await rope(up(q), null, pos, { theta: 1e6 });
    // f32 frequencies on the device (HF's rounding) against the f64 reference: angles up to 100 rad
    assertClose((await r.q.toHost()).data, refRope(widen(q), T, H, hd, pos.data, 1e6), { atol: 2e-5, rtol: 1e-4 }, 'rope');
  });

  s(`${backend}: attention through a device KV cache: decode step by step equals one pass bit for bit`, async () => {
    const Hq = 4, Hkv = 2, hd = 32, T = 7;
    for (const window of [0, 4]) {
      const q = rt('float32', T * Hq * hd, 10, 1, [T, Hq, hd]);
      const k = rt('float32', T * Hkv * hd, 11, 1, [T, Hkv, hd]);
      const v = rt('float32', T * Hkv * hd, 12, 1, [T, Hkv, hd]);
      const cache = new KvCache({ maxSeq: 16, numKvHeads: Hkv, headDim: hd }, dev);
      assert.is(cache.backend, backend);
      const full = await (await attention(up(q), up(k), up(v), cache, { slidingWindow: window })).toHost();
      assertClose(full.data, refAttention(widen(q), widen(k), widen(v), T, Hq, Hkv, hd, 0, window), tolFor('float32', 64), `window ${window}`);
      cache.reset();
      const row = (t: Tensor, i: number, h: number) => tensor('float32', (t.data as Float32Array).slice(i * h * hd, (i + 1) * h * hd), [1, h, hd]);
      for (let i = 0; i < T; i++) {
        const step = await (await attention(up(row(q, i, Hq)), up(row(k, i, Hkv)), up(row(v, i, Hkv)), cache, { slidingWindow: window })).toHost();
        assertSameTensor(step, tensor('float32', (full.data as Float32Array).slice(i * Hq * hd, (i + 1) * Hq * hd), [1, Hq, hd]), `step ${i}`);
      }
      assert.is(cache.length, T);
      // a host tensor on a device cache, a device tensor on a host cache
      await rejects(() => attention(row(q, 0, Hq), row(k, 0, Hkv), row(v, 0, Hkv), cache), TypeError, 'lives on');
      const hostCache = new KvCache({ maxSeq: 4, numKvHeads: Hkv, headDim: hd });
      await rejects(() => attention(up(row(q, 0, Hq)), up(row(k, 0, Hkv)), up(row(v, 0, Hkv)), hostCache), TypeError, 'lives on');
      cache.dispose();
      hostCache.dispose();
    }
  });

  s(`${backend}: sample on device logits gives host ids: greedy as the reference`, async () => {
    const V = 50, T = 3;
    const l = rt('float32', T * V, 13, 1, [T, V]);
    const ids = await sample(up(l) as DeviceTensor<'float32'>, { temperature: 0 });
    assert.not.ok(ids instanceof DeviceTensor);
    for (let t = 0; t < T; t++) assert.is(ids.data[t], refArgmax((l.data as Float32Array).subarray(t * V, (t + 1) * V)));
  });

  s(`${backend}: sample on device logits with every filter and penalty, per row: the CPU backend's ids`, async () => {
    const V = 300, T = 4;
    const l = rt('float32', T * V, 14, 3, [T, V]) as Tensor<'float32'>;
    const dl = up(l) as DeviceTensor<'float32'>;
    let moved = 0;
    for (let round = 0; round < 6; round++) {
      const rows = Array.from({ length: T }, (_, r) => ({
        temperature: [0, 0.7, 1.3, 2][(r + round) % 4],
        topK: [0, 3, 50, 0][(r + 2 * round) % 4],
        topP: [1, 0.9, 0.6][(r + round) % 3],
        minP: [0, 0.05, 0.2][(r * 2 + round) % 3],
        repetitionPenalty: [1, 1.3, 0.9][(r + round) % 3],
        presencePenalty: [0, 0.5][round % 2],
        frequencyPenalty: [0, 0.3, -0.2][(r + round) % 3],
        // the row's argmax among them, so that the penalties move ids
        penaltyTokens: [refArgmax(l.data.subarray(r * V, (r + 1) * V)), ...Array.from({ length: (r * 5 + round) % 9 }, (_, i) => (i * 37 + r * 11 + round) % V)],
        seed: 100 + round,
        step: r * 17 + round,
      }));
      const want = sampleSync(l, { rows });
      const got = await sample(dl, { rows });
      assert.equal([...got.data], [...want.data], `round ${round}`);
      const plain = sampleSync(l, { rows: rows.map((r) => ({ ...r, penaltyTokens: [] })) });
      moved += [...plain.data].filter((v, i) => v !== want.data[i]).length;
      // top-level options: row t draws from (seed, step, t) on both backends
      const top = { temperature: 1.1, topK: 40, minP: 0.01, seed: round, step: 7, penaltyTokens: [1, 2, 3], frequencyPenalty: 0.4 };
      assert.equal([...(await sample(dl, top)).data], [...sampleSync(l, top).data], `round ${round}, top-level options`);
    }
    assert.ok(moved > 0, 'the penalties change some ids');
  });

  s(`${backend}: the MoE layer and a dense FFN on device tensors`, async () => {
    const T = 6, d = 64, f = 32, E = 4;
    const w1 = rt('float32', E * f * d, 20, 0.1, [E, f, d]);
    const w3 = rt('float32', E * f * d, 21, 0.1, [E, f, d]);
    const w2 = rt('float32', E * d * f, 22, 0.1, [E, d, f]);
    const gate = rt('float32', E * d, 23, 0.1, [E, d]);
    const layer = await MoeLayer.create({ w1, w3, w2, gate }, { topK: 2, backend });
    const x = rt('float32', T * d, 24, 1, [T, d]);
    const r = await layer.forward(up(x), { returnRouting: true });
    assert.ok(r.output instanceof DeviceTensor);
    const ref = refMoe(widen(x), widen(gate), { w1: widen(w1), w3: widen(w3), w2: widen(w2), E, f, d }, T, 2, true);
    assertClose((await r.output.toHost()).data, ref.out, tolFor('float32', d), 'moe');
    const counts = await r.routing!.tokensPerExpert.toHost();
    assert.is([...counts.data].reduce((a, b) => a + b, 0), T * 2);
    await expectMoeError(() => layer.forward(up(x), { returnRouterStats: true }), 'ERR_UNSUPPORTED', 'host tensors');
    // countsOut: the counts written into the caller's device tensor (a row of a bigger one here)
    const rows = DeviceTensor.zeros('int32', [3, E], dev);
    const into = rows.rows(1, 1).reshape([E]) as DeviceTensor<'int32'>;
    await layer.forward(up(x), { returnRouting: true, countsOut: into });
    assert.equal([...(await rows.toHost()).data], [...new Array(E).fill(0), ...counts.data, ...new Array(E).fill(0)]);
    await rejects(() => layer.forward(x, { returnRouting: true, countsOut: into }), TypeError, 'countsOut is for device tensors');
    await rejects(() => layer.forward(up(x), { returnRouting: true, countsOut: rows as DeviceTensor<'int32'> }), RangeError, 'countsOut.dims must have 1 entries');
    const cpuLayer = await MoeLayer.create({ w1, w3, w2, gate }, { topK: 2 });
    await rejects(() => cpuLayer.forward(up(x) as never), TypeError, 'lives on');
    const ffn = await DenseFfn.create({ w1: w1Of(w1, f, d), w3: w1Of(w3, f, d), w2: w1Of(w2, d, f) }, { backend });
    const y = await ffn.forward(up(x));
    assertClose((await y.toHost()).data, refDense(widen(x), { w1: widen(w1).subarray(0, f * d), w3: widen(w3).subarray(0, f * d), w2: widen(w2).subarray(0, d * f), E: 1, f, d }, T), tolFor('float32', d), 'dense');
    layer.dispose();
    cpuLayer.dispose();
    ffn.dispose();
  });

  s(`${backend}: the stage ops on device tensors (route, groupedGemm, combine; index tensors on the host) give the bits of the same ops on host tensors`, async () => {
    for (const type of ['float32', 'bfloat16'] as const) {
      const T = 19, d = 32, f = 24, E = 5, k = 2;
      const w = { w1: rt(type, E * f * d, 40, 0.2, [E, f, d]), w3: rt(type, E * f * d, 41, 0.2, [E, f, d]), w2: rt(type, E * d * f, 42, 0.2, [E, d, f]) };
      const gate = rt(type, E * d, 43, 0.5, [E, d]);
      const experts = await ExpertWeights.pack(w, { backend });
      const x = rt(type, T * d, 44, 1, [T, d]);
      const noise = { weights: rt('float32', E * d, 45, 0.5, [E, d]), seed: 3 };
      const host = await route(x, gate, { topK: k, returnLogits: true, noise, backend });
      const dr = await route(up(x), up(gate), { topK: k, returnLogits: true, noise });  // a host noise gate is staged
      assert.ok(dr.topkIds instanceof DeviceTensor && dr.logits instanceof DeviceTensor, 'route: device outputs');
      assertSameTensor(await dr.topkIds.toHost(), host.topkIds, `${type} route ids`);
      assertSameTensor(await dr.topkWeights.toHost(), host.topkWeights, `${type} route weights`);
      assertSameTensor(await dr.tokensPerExpert.toHost(), host.tokensPerExpert, `${type} route counts`);
      assertSameTensor(await dr.logits!.toHost(), host.logits!, `${type} route logits`);
      const p = permuteSync(host.topkIds, E);
      const y = await groupedGemm(x, p.sortedRows, p.expertOffsets, experts);
      const dy = await groupedGemm(up(x), p.sortedRows, p.expertOffsets, experts);
      assert.ok(dy instanceof DeviceTensor, 'groupedGemm: a device output');
      assertSameTensor(await dy.toHost(), y, `${type} groupedGemm`);
      const out = await combine(y, p.rowOf, host.topkWeights, { outType: type, backend });
      assertSameTensor(await (await combine(dy, p.rowOf, dr.topkWeights, { outType: type })).toHost(), out, `${type} combine (device weights)`);
      assertSameTensor(await (await combine(dy, p.rowOf, host.topkWeights, { outType: type })).toHost(), out, `${type} combine (host weights)`);
      // the index tensors stay on the host, where they are checked; losses need host tensors
      await rejects(() => groupedGemm(up(x), up(p.sortedRows) as never, p.expertOffsets, experts), TypeError, 'sortedRows');
      await rejects(() => combine(dy, up(p.rowOf) as never, host.topkWeights), TypeError, 'rowOf');
      await rejects(() => groupedGemm(up(x), i32([0, 99], [2]), i32([0, 2, 2, 2, 2, 2], [6]), experts), RangeError, 'sortedRows.data[1] must be a token index in [0, 19), got 99');
      await expectMoeError(() => route(up(x), up(gate), { topK: k, returnRouterStats: true }), 'ERR_UNSUPPORTED', 'host tensors');
      await rejects(() => route(up(x), gate as never, { topK: k }), TypeError, 'gate must be a device tensor');
      await rejects(() => route(up(x), up(gate), { topK: k, backend: 'cpu' }), TypeError, "options.backend is 'cpu' but the tensors are device tensors");
      const cpuExperts = await ExpertWeights.pack(w);
      await rejects(() => groupedGemm(up(x), p.sortedRows, p.expertOffsets, cpuExperts), TypeError, 'lives on');
      experts.dispose();
      cpuExperts.dispose();
    }
  });

  // A worker running device ops (the MoE layer, add, the stage ops) terminated mid-loop: an op called
  // while its environment terminates raised an error node-addon-api could not throw, and it escaped
  // the callback wrapper as a C++ exception (std::terminate: the whole process died).
  s(`${backend}: a worker terminated while it runs device ops: no abort, the process lives on`, () => {
    const dist = JSON.stringify(path.join(__dirname, '..', 'dist', 'index.js'));
    const script = `
      const { Worker } = require('node:worker_threads');
      const code = \`
        const L = require(${dist});
        (async () => {
          const backend = ${JSON.stringify(backend)}, T = 64, d = 64, f = 32, E = 4;
          const r = (n) => { const a = new Float32Array(n); for (let i = 0; i < n; i++) a[i] = Math.sin(i); return a; };
          const w = { w1: { type: 'float32', data: r(E*f*d), dims: [E,f,d] }, w3: { type: 'float32', data: r(E*f*d), dims: [E,f,d] }, w2: { type: 'float32', data: r(E*d*f), dims: [E,d,f] } };
          const gate = { type: 'float32', data: r(E*d), dims: [E,d] };
          const layer = await L.MoeLayer.create({ ...w, gate }, { backend, topK: 2 });
          const ex = await L.ExpertWeights.pack(w, { backend });
          const dx = await L.DeviceTensor.from({ type: 'float32', data: r(T*d), dims: [T,d] }, { backend });
          const dg = await L.DeviceTensor.from(gate, { backend });
          require('node:worker_threads').parentPort.postMessage('ready');
          for (;;) {
            const rt = await L.route(dx, dg, { topK: 2 });
            const p = L.permuteSync(await rt.topkIds.toHost(), E);
            const ps = [];
            for (let i = 0; i < 4; i++) {
              ps.push(layer.forward(dx).then((o) => L.add(o.output, dx)));
              ps.push(L.groupedGemm(dx, p.sortedRows, p.expertOffsets, ex).then((y) => L.combine(y, p.rowOf, rt.topkWeights)));
            }
            await Promise.all(ps);
          }
        })();\`;
      (async () => {
        for (let i = 0; i < 3; i++) {
          const w = new Worker(code, { eval: true });
          await new Promise((res) => w.once('message', res));
          await new Promise((res) => setTimeout(res, 150 + 100 * i));
          await w.terminate();
        }
        console.log('alive');
      })();
    `;
    const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 120_000 });
    assert.is(r.signal, null, `the process died of ${r.signal}: ${r.stderr}`);
    assert.is(r.status, 0, `exit ${r.status}: ${r.stderr}`);
    assert.match(r.stdout, /alive/);
  });

  s(`${backend}: tensors of two places, and what the device kernels do not take, are clear errors`, async () => {
    const x = rt('float32', 8, 30, 1, [2, 4]);
    const dx = up(x);
    await rejects(() => add(dx, x as never), TypeError, 'b must be a device tensor like the op', 'got a host tensor');
    await rejects(() => add(x, dx as never), TypeError, 'b is a device tensor but the op');
    await rejects(() => rmsNorm(dx, rt('float32', 4, 1)), TypeError, 'weight must be a device tensor');
    await expectMoeError(() => add(dx, up(rt('bfloat16', 8, 1, 1, [2, 4])) as never), 'ERR_UNSUPPORTED', 'one type');
    assert.throws(() => new KvCache({ maxSeq: 4, numKvHeads: 1, headDim: 16 }, dev), /head dim of 32, 64, 128 or 256, got 16/);
  });
}

/** Awaits fn's rejection (or throw) with an error of `ctor` whose message holds every pattern. */
async function rejects(fn: () => unknown, ctor: new (...a: never[]) => Error, ...patterns: string[]): Promise<void> {
  let err: unknown;
  try {
    await fn();
  } catch (e) {
    err = e;
  }
  assert.ok(err instanceof ctor, `expected a ${ctor.name}, got ${String(err)}`);
  for (const p of patterns) assert.ok((err as Error).message.includes(p), `message ${JSON.stringify((err as Error).message)} does not contain ${p}`);
}

/** The first expert of [E,r,c] as [r,c]. */
function w1Of(t: Tensor, r: number, c: number): Tensor {
  return tensor(t.type as FloatType, (t.data as Float32Array).slice(0, r * c), [r, c]) as Tensor;
}

s.run();
