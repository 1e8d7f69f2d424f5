'use strict';
// The bench on the CUDA backend (run.js calls it when CUDA runs, or with --backend cuda|cuda-emu).
// Every time is device time between two CUDA events around a loop of calls on inputs already on the
// device (native cuda_time_moe_forward / cuda_time_dense_ffn): no copies, no host round trips, no
// JS in the loop. Fractions are of the device's datasheet peaks from its properties: DRAM
// bandwidth (memory clock × bus width) and the dense f16/bf16 tensor-core or f32 FMA rate.
//
// Contenders as on the CPU: the MoE layer, a dense FFN with its total parameters (f = E·f) and one
// with its active parameters (f = k·f). On 'cuda-emu' (the test build) the run is a smoke test of
// this code path on a tiny layer: its times are the emulator's and mean nothing.
const { DTYPES, SHAPES, note, randomMatrix, seedOf, progress } = require('./common');

const TARGETS = [
  { what: 'T=1: at least 70% of HBM bandwidth', T: [1, 1], metric: 'bw', min: 0.7 },
  { what: 'T=16..128: at least 80% of HBM bandwidth', T: [16, 128], metric: 'bw', min: 0.8 },
  { what: 'T>=4096: at least 60% of the bf16 tensor-core peak', T: [4096, Infinity], metric: 'tc', min: 0.6, dtype: 'bfloat16' },
];

// The grouped GEMM's tensor-core tiles, as in native/backends/cuda/grouped_gemm.cu (TcTile: the table
// there has the model's assumptions): threads, shared bytes per block, registers per thread (ptxas,
// sm_80..sm_120, the most of any target), and when each runs.
const TC_TILES = [
  { name: '64x128x32, 4 warps, 3 stages', bm: 64, bn: 128, threads: 128, smem: 46080, regs: 128, when: 'T·k < 256·E' },
  { name: '128x128x32, 8 warps, 4 stages', bm: 128, bn: 128, threads: 256, smem: 81920, regs: 126, when: 'T·k >= 256·E, less than 216 KB of opt-in shared memory' },
  { name: '128x256x64, 8 warps, 4 stages', bm: 128, bn: 256, threads: 256, smem: 221184, regs: 220, when: 'T·k >= 256·E, 216 KB of opt-in shared memory (sm_90/100)' },
];
// Shared memory per SM by compute capability (CUDA programming guide); 1 KB more per block is reserved.
const SMEM_PER_SM_KB = { '8.0': 164, '8.6': 100, '8.7': 164, '8.9': 100, '9.0': 228, '10.0': 228, '10.3': 228, '12.0': 100, '12.1': 100 };

/** Blocks per SM of each tensor-core tile on this device, and the FLOP per byte each brings into shared memory. */
function tileModel(dev) {
  const smKB = SMEM_PER_SM_KB[dev.computeCapability];
  return TC_TILES.map((t) => {
    const bySmem = smKB ? Math.floor((smKB * 1024) / (t.smem + 1024)) : NaN;
    const byRegs = Math.floor(65536 / (t.threads * Math.ceil(t.regs / 8) * 8));
    const blocks = Math.min(bySmem, byRegs, Math.floor(2048 / t.threads));
    const flopPerByte = (t.bm * t.bn) / (t.bm + t.bn);
    if (blocks === 0) return `${t.name} (${t.when}): not used on this device (its ${smKB} KB of shared memory per SM hold no block)`;
    return `${t.name} (${t.when}): ${Number.isNaN(blocks) ? '?' : blocks} blocks/SM, ${flopPerByte.toFixed(0)} FLOP per byte into shared memory`;
  });
}

/** Expected number of distinct experts T tokens read with top-k of E (1 token: exactly k). */
function expectedExperts(T, E, k) {
  return T === 1 ? k : E * (1 - Math.pow(1 - k / E, T));
}

async function runCuda(opts, lib, backend) {
  const { binding } = require('../dist/core/binding.js');
  const info = lib.backendInfo();
  const dev = info.cuda.device || {};
  const emulated = backend === 'cuda-emu';
  const shape = emulated ? SHAPES.tiny : opts.shapeGiven ? opts.shape : SHAPES.mixtral;
  const tokens = emulated ? [1, 8] : opts.tokensGiven ? opts.tokens : [1, 16, 64, 128, 512, 4096];
  const dtypes = opts.dtypesGiven ? opts.dtypes : ['bfloat16', 'float32'];
  const budgetMs = emulated ? 1 : opts.budget * 1000;
  const { d, f, E, k } = shape;
  console.log(`moe-kernels bench on ${backend}: ${dev.name ?? '?'} (sm_${(dev.computeCapability ?? '?').replace('.', '')}, ${dev.smCount ?? '?'} SMs)`);
  console.log(`peaks from the device's properties: ${dev.peakGBps ? dev.peakGBps.toFixed(0) : '?'} GB/s DRAM, ` +
    `${dev.peakTensorTflops ? dev.peakTensorTflops.toFixed(0) : '?'} TFLOP/s f16/bf16 tensor cores, ${dev.peakFmaTflops ? dev.peakFmaTflops.toFixed(1) : '?'} TFLOP/s f32 FMA`);
  console.log(`layer: ${shape.title} d=${d} f=${f} E=${E} k=${k}; T = ${tokens.join(', ')}; times are device times (CUDA events)`);
  for (const line of tileModel(dev)) console.log(`tensor-core tile ${line}`);
  if (emulated) console.log('EMULATED: the kernels run on the CPU emulator; this checks the bench path, its figures mean nothing');

  const rows = [];
  for (const dtype of dtypes) {
    const bpw = DTYPES[dtype].bytes;
    const contenders = [
      { name: 'moe', label: `MoE E=${E} k=${k}`, fDense: null },
      { name: 'dense-total', label: 'dense f=E·f', fDense: E * f },
      { name: 'dense-active', label: 'dense f=k·f', fDense: k * f },
    ].filter((c) => opts.layers.includes(c.name));
    for (const c of contenders) {
      const nE = c.fDense ? 1 : E, fe = c.fDense ?? f;
      const p = progress(`${DTYPES[dtype].short} ${c.name}: weights`, nE);
      const mats = { w1: [], w3: [], w2: [] };
      for (let e = 0; e < nE; e++) {
        mats.w1.push(randomMatrix(dtype, fe, d, seedOf(c.name, 'w1', e)));
        mats.w3.push(randomMatrix(dtype, fe, d, seedOf(c.name, 'w3', e)));
        mats.w2.push(randomMatrix(dtype, d, fe, seedOf(c.name, 'w2', e)));
        p.tick(e + 1);
      }
      const gate = c.fDense ? undefined : randomMatrix(dtype, E, d, seedOf(c.name, 'gate'));
      const w = await binding.pack_experts({ ...mats, gate }, { backend, async: true });
      p.done('uploaded');
      try {
        for (const T of tokens) {
          const time = (iters) => (c.fDense ? binding.time_dense_ffn(w, { T, iters }) : binding.time_moe_forward(w, { T, topK: k, iters }));
          const first = time(1);
          const iters = Math.max(1, Math.min(1000, Math.floor(budgetMs / Math.max(first, 1e-3))));
          const ms = time(iters);
          const experts = c.fDense ? 1 : expectedExperts(T, E, k);
          const bytes = experts * 3 * d * fe * bpw + (c.fDense ? 0 : E * d * 4);
          const flops = 2 * T * (c.fDense ? 1 : k) * 3 * d * fe + (c.fDense ? 0 : 2 * T * E * d);
          const gbps = bytes / (ms / 1e3) / 1e9;
          const tflops = flops / (ms / 1e3) / 1e12;
          const row = { dtype, layer: c.name, label: c.label, T, ms, iters, gbps, tflops, expertsRead: experts,
            bwFraction: dev.peakGBps ? gbps / dev.peakGBps : null,
            computeFraction: (dtype === 'float32' ? dev.peakFmaTflops : dev.peakTensorTflops) ? tflops / (dtype === 'float32' ? dev.peakFmaTflops : dev.peakTensorTflops) : null };
          rows.push(row);
          note(`${DTYPES[dtype].short} ${c.name} T=${T}: ${ms.toFixed(3)} ms (${iters} calls), ${gbps.toFixed(0)} GB/s, ${tflops.toFixed(1)} TFLOP/s`);
        }
      } finally {
        w.dispose();
      }
    }
  }
  for (const r of rows) {
    const dense = rows.find((o) => o.dtype === r.dtype && o.T === r.T && o.layer === 'dense-total');
    r.vsDenseTotal = r.layer === 'moe' && dense ? dense.ms / r.ms : null;
  }

  const pct = (x) => (x == null ? '-' : `${(x * 100).toFixed(0)}%`);
  console.log('\n dtype  layer          T      ms/call    GB/s   %BW   TFLOP/s  %peak  vs dense-total');
  for (const r of rows)
    console.log(` ${DTYPES[r.dtype].short.padEnd(5)}  ${r.layer.padEnd(13)} ${String(r.T).padStart(5)}  ${r.ms.toFixed(3).padStart(9)}  ${r.gbps.toFixed(0).padStart(6)}  ${pct(r.bwFraction).padStart(4)}  ${r.tflops.toFixed(1).padStart(8)}  ${pct(r.computeFraction).padStart(5)}  ${r.vsDenseTotal ? r.vsDenseTotal.toFixed(2) + 'x' : '-'}`);
  console.log('(bytes read by the MoE layer at 1 < T count the expected number of distinct experts, E·(1-(1-k/E)^T))');

  const targets = [];
  if (!emulated && shape.name === 'mixtral')
    for (const t of TARGETS) {
      const got = rows.filter((r) => r.layer === 'moe' && r.T >= t.T[0] && r.T <= t.T[1] && (t.dtype ?? 'bfloat16') === r.dtype);
      if (!got.length) continue;
      const worst = Math.min(...got.map((r) => (t.metric === 'bw' ? r.bwFraction : r.computeFraction) ?? 0));
      targets.push({ what: t.what, worst, pass: worst >= t.min });
      console.log(`${worst >= t.min ? 'PASS' : 'MISS'}  bf16 ${t.what}: ${pct(worst)}`);
    }
  else console.log(`targets: only judged on the real Mixtral layer on a GPU (${emulated ? 'emulated run' : 'shape ' + shape.name})`);
  return { backend, device: dev, shape, rows, targets };
}

module.exports = { runCuda, expectedExperts, tileModel };
