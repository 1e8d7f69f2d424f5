// The decoder ops on device tensors: they stay in the CUDA backend's memory, ops are enqueued on
// one stream, and only toHost() waits and copies back. Needs a CUDA backend: on a machine without a
// GPU, the test build's emulated one (MOE_KERNELS_ADDON=build-emu/Release/moe_kernels.node).
// Run: node examples/device.mjs
import { availableBackends, deviceTransferStats, DeviceTensor, Linear, rmsNorm, tensor } from 'moe-kernels';

const backend = availableBackends().find((b) => b !== 'cpu');
if (!backend) {
  console.log('no CUDA backend here:', availableBackends().join(', '));
  process.exit(0);
}
const random = (...dims) => tensor('float32', Float32Array.from({ length: dims.reduce((a, b) => a * b) }, () => Math.random() - 0.5), dims);
const d = 64;

const x = await DeviceTensor.from(random(4, d), { backend });       // also DeviceTensor.zeros(type, dims)
const w = await DeviceTensor.from(random(d), { backend });
const wq = await Linear.pack(random(128, d), { backend });
const q = await wq.forward(await rmsNorm(x, w));                       // DeviceTensors, no copies
const host = await q.toHost();                                          // waits, copies back
const firstTwo = x.rows(0, 2).reshape([2, 8, 8]);                       // views share the memory
console.log(host.dims, firstTwo.dims, deviceTransferStats());          // { toDevice, toHost }: { calls, bytes }
for (const t of [x, w, q]) t.dispose();
