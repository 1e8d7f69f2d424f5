/**
 * One executor per backend (native/include/moe/backend.h): CPU jobs run on the compute pool, device
 * jobs are enqueued on CUDA streams by the CUDA backend's own thread and completed by event poll. So
 * a slow device job never delays CPU work queued after it. On the emulated backend ('cuda-emu') the
 * kernels run on that enqueue thread, which makes a long device job easy to build: a layer whose
 * emulated forward takes a good fraction of a second.
 *
 * Runs where a device backend is available (the cuda-emu passes of scripts/run-tests.js).
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { availableBackends, DeviceTensor, MoeLayer, rmsNorm, tensor, type ResolvedBackend, type Tensor } from '../lib/index';
import { makeProblem } from './helpers/problems';
import { assertSameTensor, randn } from './helpers/reference';

const DEVICE = availableBackends().filter((b) => b !== 'cpu') as ResolvedBackend[];

for (const B of DEVICE) {
  const ex = suite(`${B}: executors`);

  ex('a long device job does not delay a CPU forward queued after it', async () => {
    // The slow job: a layer on the device backend, host tensors (staged through its executor).
    const big = makeProblem({ T: 96, d: 256, f: 384, E: 8, seed: 4701 });
    const slow = await MoeLayer.create({ gate: big.gate, w1: big.w1, w3: big.w3, w2: big.w2 }, { topK: 2, backend: B });
    // The quick job: a tiny layer on the CPU.
    const small = makeProblem({ T: 2, d: 16, f: 16, E: 4, seed: 4702 });
    const quick = await MoeLayer.create({ gate: small.gate, w1: small.w1, w3: small.w3, w2: small.w2 }, { topK: 2, backend: 'cpu' });
    const expected = quick.forwardSync(small.x).output;
    // How long is the slow one, alone? (It must dwarf the quick one for the ordering to mean anything.)
    const t0 = performance.now();
    await slow.forward(big.x);
    const slowMs = performance.now() - t0;
    const t1 = performance.now();
    await quick.forward(small.x);
    const quickMs = performance.now() - t1;
    assert.ok(slowMs > 20 * quickMs, `the device job (${slowMs.toFixed(1)} ms) is not slow enough next to the CPU one (${quickMs.toFixed(2)} ms)`);

    const order: string[] = [];
    const a = slow.forward(big.x).then((r) => (order.push('device'), r));
    const b = quick.forward(small.x).then((r) => (order.push('cpu'), r));
    const [, q] = await Promise.all([a, b]);
    assert.equal(order, ['cpu', 'device'], 'the CPU forward waited for the device job');
    assertSameTensor(q.output, expected, 'the CPU result');
    slow.dispose();
    quick.dispose();
  });

  ex('sync and async device calls keep their order on device tensors', async () => {
    const x = await DeviceTensor.from(tensor('float32', randn(64 * 32, 4703), [64, 32]) as Tensor<'float32'>, { backend: B });
    const w = await DeviceTensor.from(tensor('float32', randn(32, 4704), [32]) as Tensor<'float32'>, { backend: B });
    const out = DeviceTensor.zeros('float32', [64, 32], { backend: B });
    // async writes out, then a sync call reads it: it must see the async call's result
    const pending = rmsNorm(x, w, { out });
    const host = out.toHostSync();
    await pending;
    const expected = await (await rmsNorm(x, w)).toHost();
    assertSameTensor(host, expected, 'the sync download after an async op');
    for (const t of [x, w, out]) t.dispose();
  });

  ex.run();
}
