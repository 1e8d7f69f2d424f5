import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import {
  backendInfo,
  combine,
  DenseFfn,
  ExpertWeights,
  groupedGemm,
  groupedGemmSync,
  KvCache,
  Linear,
  MoeError,
  MoeLayer,
  permute,
  permuteSync,
  route,
  routeSync,
  tensor,
  type MoeOutput,
  type Tensor,
} from '../lib/index';
import { bitsCases, caseBits } from './helpers/child-check';
import { makeProblem, perExpert, tokensThatDependOnTheBatch, type MoeProblem } from './helpers/problems';
import { runChild as runChildScript } from './helpers/run-child';
import { assertSameTensor, FLOAT_TYPES, randn } from './helpers/reference';

const weightsOf = (p: MoeProblem) => ({ gate: p.gate, w1: p.w1, w3: p.w3, w2: p.w2 });

/** n different inputs [T,d] of one type. */
function inputs(n: number, T: number, d: number, type: MoeProblem['x']['type'], seed: number): Tensor[] {
  return Array.from({ length: n }, (_, i) => tensor(type, randn(T * d, seed + i), [T, d]) as Tensor);
}

async function expectDisposed(p: Promise<unknown> | (() => unknown), label: string) {
  let err: unknown;
  try {
    if (typeof p === 'function') p();
    else await p;
  } catch (e) {
    err = e;
  }
  assert.ok(err instanceof MoeError, `${label}: expected a MoeError, got ${err}`);
  assert.is((err as MoeError).code, 'ERR_DISPOSED', `${label}: code`);
}

// ---- determinism ------------------------------------------------------------------------------------

const det = suite('determinism');

det('the same inputs give the same bits every time (sync and async, every dtype)', async () => {
  for (const dtype of FLOAT_TYPES) {
    const p = makeProblem({ T: 300, d: 64, f: 96, E: 8, xType: dtype, wType: dtype, gateType: dtype, seed: 1 });
    const layer = await MoeLayer.create(weightsOf(p), { topK: 2 });
    const first = await layer.forward(p.x, { returnRouting: true });
    for (let i = 0; i < 3; i++) {
      const a = await layer.forward(p.x, { returnRouting: true });
      const s = layer.forwardSync(p.x, { returnRouting: true });
      for (const [label, r] of [['async', a], ['sync', s]] as const) {
        assertSameTensor(r.output, first.output, `${dtype} ${label} run ${i}: output`);
        assertSameTensor(r.routing!.topkWeights, first.routing!.topkWeights, `${dtype} ${label} run ${i}: weights`);
        assertSameTensor(r.routing!.topkIds, first.routing!.topkIds, `${dtype} ${label} run ${i}: ids`);
      }
    }
    layer.dispose();
  }
});

det('batch-invariant: a token gets the same bits alone as among 40 (every dtype; batchInvariant is accepted and reported)', async () => {
  for (const dtype of FLOAT_TYPES)
    for (const batchInvariant of [false, true]) {
      const p = makeProblem({ T: 40, d: 64, f: 96, E: 4, xType: dtype, wType: dtype, gateType: dtype, seed: 3 });
      const layer = await MoeLayer.create(weightsOf(p), { topK: 2, batchInvariant });
      assert.equal(await tokensThatDependOnTheBatch(layer, p, [0, 17, 39]), [], `${dtype} batchInvariant ${batchInvariant}`);
      layer.dispose();
      const w = ExpertWeights.packSync({ w1: p.w1, w3: p.w3, w2: p.w2 }, { batchInvariant });
      assert.is(w.batchInvariant, batchInvariant);
      w.dispose();
    }
});

det('the stages give the same bits every time', async () => {
  const p = makeProblem({ T: 511, d: 48, f: 80, E: 64, wType: 'bfloat16', seed: 2 });
  const w = ExpertWeights.packSync({ w1: p.w1, w3: p.w3, w2: p.w2 });
  const r0 = routeSync(p.x, p.gate, { topK: 6, returnLogits: true });
  const p0 = permuteSync(r0.topkIds, 64);
  const y0 = groupedGemmSync(p.x, p0.sortedRows, p0.expertOffsets, w);
  for (let i = 0; i < 3; i++) {
    const r = await route(p.x, p.gate, { topK: 6, returnLogits: true });
    assertSameTensor(r.logits!, r0.logits!, 'logits');
    assertSameTensor(r.topkWeights, r0.topkWeights, 'weights');
    const pr = await permute(r.topkIds, 64);
    assertSameTensor(pr.sortedRows, p0.sortedRows, 'sortedRows');
    const y = await groupedGemm(p.x, pr.sortedRows, pr.expertOffsets, w);
    assertSameTensor(y, y0, 'y');
  }
  w.dispose();
});

// ---- concurrency --------------------------------------------------------------------------------------

const conc = suite('concurrency');

conc('16 concurrent forward calls equal the serial results bit for bit', async () => {
  for (const dtype of FLOAT_TYPES) {
    const p = makeProblem({ T: 1, d: 64, f: 128, E: 8, wType: dtype, gateType: dtype, seed: 3 });
    const layer = await MoeLayer.create(weightsOf(p), { topK: 2 });
    // different inputs, different sizes: decode-like and prefill-like calls interleave
    const xs = inputs(16, 1, 64, dtype, 100).map((x, i) => (i % 4 === 3 ? inputs(1, 97 + i, 64, dtype, 200 + i)[0] : x));
    const serial: MoeOutput[] = [];
    for (const x of xs) serial.push(layer.forwardSync(x, { returnRouting: true }));
    const conc = await Promise.all(xs.map((x) => layer.forward(x, { returnRouting: true })));
    conc.forEach((r, i) => {
      assertSameTensor(r.output, serial[i].output, `${dtype} call ${i}: output`);
      assertSameTensor(r.routing!.topkIds, serial[i].routing!.topkIds, `${dtype} call ${i}: ids`);
    });
    layer.dispose();
  }
});

conc('concurrent calls on two layers, mixed with stage ops, equal the serial results', async () => {
  const a = makeProblem({ T: 1, d: 40, f: 72, E: 8, wType: 'float32', seed: 4 });
  const b = makeProblem({ T: 1, d: 40, f: 56, E: 3, wType: 'bfloat16', seed: 5 });
  const la = await MoeLayer.create(weightsOf(a), { topK: 2 });
  const lb = await MoeLayer.create(weightsOf(b), { topK: 1, normalize: false });
  const wb = ExpertWeights.packSync({ w1: b.w1, w3: b.w3, w2: b.w2 });
  const xs = inputs(12, 65, 40, 'float16', 300);
  const serialA = xs.map((x) => la.forwardSync(x).output);
  const serialB = xs.map((x) => lb.forwardSync(x).output);
  const serialR = xs.map((x) => routeSync(x, b.gate, { topK: 1, normalize: false }));
  const serialP = serialR.map((r) => permuteSync(r.topkIds, 3));
  const serialY = xs.map((x, i) => groupedGemmSync(x, serialP[i].sortedRows, serialP[i].expertOffsets, wb));
  const jobs: Promise<void>[] = [];
  xs.forEach((x, i) => {
    jobs.push(la.forward(x).then((r) => assertSameTensor(r.output, serialA[i], `layer A call ${i}`)));
    jobs.push(lb.forward(x).then((r) => assertSameTensor(r.output, serialB[i], `layer B call ${i}`)));
    jobs.push(
      route(x, b.gate, { topK: 1, normalize: false })
        .then((r) => permute(r.topkIds, 3).then((pr) => ({ r, pr })))
        .then(async ({ r, pr }) => {
          const y = await groupedGemm(x, pr.sortedRows, pr.expertOffsets, wb);
          assertSameTensor(y, serialY[i], `stages call ${i}: y`);
          const out = await combine(y, pr.rowOf, r.topkWeights, { outType: 'float16' });
          assertSameTensor(out, serialB[i], `stages call ${i} vs layer B`);
        }),
    );
  });
  await Promise.all(jobs);
  la.dispose();
  lb.dispose();
  wb.dispose();
});

conc('a sync call while async calls are running gives the same bits', async () => {
  const p = makeProblem({ T: 200, d: 64, f: 128, E: 8, seed: 6 });
  const layer = await MoeLayer.create(weightsOf(p));
  const want = layer.forwardSync(p.x).output;
  const pending = [layer.forward(p.x), layer.forward(p.x), layer.forward(p.x)];
  const mid = layer.forwardSync(p.x).output;
  assertSameTensor(mid, want, 'sync in the middle');
  for (const r of await Promise.all(pending)) assertSameTensor(r.output, want, 'async around it');
  layer.dispose();
});

// ---- dispose during calls ---------------------------------------------------------------------------

const disp = suite('dispose while calls are in flight');

disp('in-flight forward calls resolve correctly; later calls fail with ERR_DISPOSED', async () => {
  for (const dtype of FLOAT_TYPES) {
    const p = makeProblem({ T: 400, d: 96, f: 192, E: 8, xType: dtype, wType: dtype, seed: 7 });
    const ref = await MoeLayer.create(weightsOf(p), { topK: 2 });
    const want = (await ref.forward(p.x)).output;
    ref.dispose();
    const layer = await MoeLayer.create(weightsOf(p), { topK: 2 });
    const inflight = [layer.forward(p.x), layer.forward(p.x), layer.forward(p.x), layer.forward(p.x)];
    layer.dispose();
    assert.is(layer.disposed, true);
    const results = await Promise.all(inflight);
    results.forEach((r, i) => assertSameTensor(r.output, want, `${dtype}: in-flight call ${i}`));
    await expectDisposed(layer.forward(p.x), `${dtype}: forward after dispose`);
    await expectDisposed(() => layer.forwardSync(p.x), `${dtype}: forwardSync after dispose`);
    layer.dispose(); // a second dispose is harmless
    await expectDisposed(layer.forward(p.x), `${dtype}: forward after a second dispose`);
  }
});

disp('ExpertWeights and DenseFfn disposed while in flight', async () => {
  const p = makeProblem({ T: 400, d: 96, f: 192, E: 4, seed: 8 });
  const w = ExpertWeights.packSync({ w1: p.w1, w3: p.w3, w2: p.w2 });
  const pr = permuteSync(routeSync(p.x, p.gate, { topK: 2 }).topkIds, 4);
  const want = groupedGemmSync(p.x, pr.sortedRows, pr.expertOffsets, w);
  const pending = groupedGemm(p.x, pr.sortedRows, pr.expertOffsets, w);
  w.dispose();
  assertSameTensor(await pending, want, 'in-flight groupedGemm');
  await expectDisposed(groupedGemm(p.x, pr.sortedRows, pr.expertOffsets, w), 'groupedGemm after dispose');
  await expectDisposed(() => groupedGemmSync(p.x, pr.sortedRows, pr.expertOffsets, w), 'groupedGemmSync after dispose');

  const dw = { w1: perExpert(p.w1)[0], w3: perExpert(p.w3)[0], w2: perExpert(p.w2)[0] };
  const ffn = new DenseFfn(dw);
  const dwant = ffn.forwardSync(p.x);
  const dp = ffn.forward(p.x);
  ffn.dispose();
  assertSameTensor(await dp, dwant, 'in-flight dense forward');
  await expectDisposed(ffn.forward(p.x), 'DenseFfn.forward after dispose');
  await expectDisposed(() => ffn.forwardSync(p.x), 'DenseFfn.forwardSync after dispose');
});

disp('Symbol.dispose and Symbol.asyncDispose free every disposable object (`using`)', async () => {
  const p = makeProblem({ T: 4, d: 16, f: 16, E: 4, seed: 10 });
  const layer = new MoeLayer(weightsOf(p));
  layer[Symbol.dispose]();
  assert.ok(layer.disposed, 'MoeLayer');
  const layer2 = new MoeLayer(weightsOf(p));
  await layer2[Symbol.asyncDispose]();
  assert.ok(layer2.disposed, 'MoeLayer (async)');
  const w = ExpertWeights.packSync({ w1: p.w1, w3: p.w3, w2: p.w2 });
  w[Symbol.dispose]();
  assert.ok(w.disposed, 'ExpertWeights');
  const ffn = new DenseFfn({ w1: perExpert(p.w1)[0], w3: perExpert(p.w3)[0], w2: perExpert(p.w2)[0] });
  ffn[Symbol.dispose]();
  assert.ok(ffn.disposed, 'DenseFfn');
  const lin = Linear.packSync(p.gate);
  lin[Symbol.dispose]();
  assert.ok(lin.disposed, 'Linear');
  const cache = new KvCache({ maxSeq: 4, numKvHeads: 1, headDim: 8 });
  await cache[Symbol.asyncDispose]();
  assert.ok(cache.disposed, 'KvCache');
});

disp('dropping every reference to a layer while a call runs is safe', async () => {
  const p = makeProblem({ T: 300, d: 64, f: 128, E: 8, seed: 9 });
  const want = new MoeLayer(weightsOf(p)).forwardSync(p.x).output;
  const pending = (await MoeLayer.create(weightsOf(p))).forward(p.x);
  (globalThis as { gc?: () => void }).gc?.();
  assertSameTensor((await pending).output, want, 'unreferenced layer');
});

// ---- the event loop ----------------------------------------------------------------------------------

const loop = suite('the event loop keeps running during async calls');

loop('setImmediate ticks while a large forward runs', async () => {
  const p = makeProblem({ T: 1024, d: 256, f: 512, E: 8, seed: 10 });
  const layer = await MoeLayer.create(weightsOf(p), { topK: 2 });
  let ticks = 0;
  let running = true;
  const tick = () => {
    ticks++;
    if (running) setImmediate(tick);
  };
  setImmediate(tick);
  const pending = layer.forward(p.x);
  assert.is(ticks, 0, 'no tick can have happened synchronously');
  let ticksAtResolve = -1;
  await pending.then(() => {
    ticksAtResolve = ticks;
  });
  running = false;
  assert.ok(ticksAtResolve >= 1, `the event loop did not tick while forward ran (ticks ${ticksAtResolve})`);
  layer.dispose();
});

loop('setImmediate ticks while packing a large layer with MoeLayer.create', async () => {
  const p = makeProblem({ T: 1, d: 512, f: 1024, E: 8, wType: 'bfloat16', seed: 11 });
  let ticks = 0;
  let running = true;
  const tick = () => {
    ticks++;
    if (running) setImmediate(tick);
  };
  setImmediate(tick);
  const pending = MoeLayer.create(weightsOf(p));
  let ticksAtResolve = -1;
  const layer = await pending.then((l) => {
    ticksAtResolve = ticks;
    return l;
  });
  running = false;
  assert.ok(ticksAtResolve >= 1, `the event loop did not tick while packing (ticks ${ticksAtResolve})`);
  layer.dispose();
});

// ---- both CPU kernel paths, and thread counts, in child processes -------------------------------------------

const child = suite('child processes: the portable kernels and one thread');

const runChild = (mode: string, env: Record<string, string>) => runChildScript('child-check.ts', mode, env);

child('MOE_CPU_KERNEL=portable: the portable kernels match the float64 reference', () => {
  const out = runChild('reference', { MOE_CPU_KERNEL: 'portable' });
  assert.is(out.kernel, 'portable', 'the child runs the portable kernels');
  assert.ok(out.checks >= 30, `only ${out.checks} checks ran`);
});

child('MOE_NUM_THREADS=1 gives the same bits as the default thread count', () => {
  const parent = bitsCases().map(caseBits);
  const out = runChild('bits', { MOE_NUM_THREADS: '1' });
  assert.is(out.threads, 1);
  assert.is(out.kernel, backendInfo().cpu.kernel);
  assert.is(out.bits.length, parent.length);
  bitsCases().forEach((c, i) => assert.ok(out.bits[i] === parent[i], `case ${JSON.stringify(c)}: 1 thread and ${backendInfo().cpu.threads} threads give different bits`));
});

child('MOE_NUM_THREADS=3 (more threads than cores) gives the same bits', () => {
  const parent = bitsCases().map(caseBits);
  const out = runChild('bits', { MOE_NUM_THREADS: '3' });
  assert.is(out.threads, 3);
  bitsCases().forEach((c, i) => assert.ok(out.bits[i] === parent[i], `case ${JSON.stringify(c)}: 3 threads differ`));
});

det.run();
conc.run();
disp.run();
loop.run();
child.run();
