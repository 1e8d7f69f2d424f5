'use strict';
// What the bench prints and writes: the header with the machine and its measured peaks, one table
// per weight type, the issue's targets as PASS/MISS lines, and the JSON document.
const os = require('node:os');
const path = require('node:path');
const { DTYPES, root } = require('./common');
const { rowPeak } = require('./peaks');

const SCHEMA = 'moe-kernels-bench/1';

// The issues' targets (informational: the bench never fails on a miss).
const TARGETS = {
  // MoE at T=1 reads its active experts at >= 80% of read bandwidth; >= 85% at the real Mixtral shape
  decodeBandwidth: { T: 1, goal: 0.8, goalMixtral: 0.85 },
  // MoE at T=512 runs at >= 70% of the FMA peak of its kernel's ISA; bf16 weights on the
  // avx512-bf16 table at >= 50% of the bf16 dot (vdpbf16ps) peak
  prefillCompute: { T: 512, goal: 0.7, goalBf16Dot: 0.5 },
  sparsity: { T: 1, goal: 3.2 }, // MoE at T=1 >= 3.2x faster than the dense FFN of the same total parameters
  // quantised experts (issue 12), against the float layers of the same run
  quantVsF32: { T: 1, goal: { q4_k: 5, q4_0: 5, q8_0: 2.5 } }, // decode: f32 layer time / quantised layer time
  quantVsBf16: { T: 1, goal: { q4_k: 2.5, q4_0: 2.5, q8_0: 1.4 } }, // decode: bf16 layer time / quantised
  quantPrefill: { T: 512, goal: 0.9 }, // prefill: bf16 layer time / quantised layer time
};

// ---- number formatting ---------------------------------------------------------------------------

function sig(x) {
  if (x == null || !Number.isFinite(x)) return '-';
  const a = Math.abs(x);
  if (a >= 100) return x.toFixed(0);
  if (a >= 10) return x.toFixed(1);
  if (a >= 1) return x.toFixed(2);
  return x.toPrecision(2);
}
const time = (s) => (s == null ? '-' : s < 1e-3 ? `${sig(s * 1e6)} us` : s < 1 ? `${sig(s * 1e3)} ms` : `${sig(s)} s`);
const count = (x) => (x == null ? '-' : x >= 1e6 ? `${sig(x / 1e6)}M` : x >= 1e4 ? `${sig(x / 1e3)}k` : sig(x));
const pct = (f) => (f == null ? '-' : `${f * 100 >= 9.95 ? (f * 100).toFixed(0) : (f * 100).toFixed(1)}%`);
const ratio = (r) => (r == null ? '-' : `${sig(r)}x`);
const gib = (b) => `${(b / 2 ** 30).toFixed(b >= 2 ** 30 ? 1 : 3)} GiB`;
const gb = (b) => `${(b / 1e9).toFixed(2)} GB`;

function table(columns, rows) {
  const cells = rows.map((r) => (r === null ? null : columns.map((c) => String(c.get(r)))));
  const width = columns.map((c, i) => Math.max(c.title.length, ...cells.filter(Boolean).map((r) => r[i].length)));
  const pad = (s, i) => (columns[i].left ? s.padEnd(width[i]) : s.padStart(width[i]));
  const lines = [columns.map((c, i) => pad(c.title, i)).join('  ')];
  lines.push(width.map((w) => '-'.repeat(w)).join('  '));
  for (const r of cells) lines.push(r === null ? '' : r.map(pad).join('  ').trimEnd());
  return lines.map((l) => (l ? `  ${l}` : '')).join('\n');
}

// ---- rows ----------------------------------------------------------------------------------------

function makeRow(base, r, cost) {
  const gbs = cost.bytes / r.mean / 1e9;
  const gflops = cost.flops / r.mean / 1e9;
  return {
    ...base,
    timeS: r.mean,
    rmePct: r.rme,
    minS: r.min,
    samples: r.samples.length,
    calls: r.calls,
    warmupS: r.warmup,
    sampleTimesS: r.samples,
    tokensPerS: base.T / r.mean,
    bytes: cost.bytes,
    flops: cost.flops,
    gbs,
    gflops,
    bwFraction: null, // set by addFractions once the last probe of the peaks is in
    fmaFraction: null,
    expertsUsed: cost.expertsUsed,
    tokensPerExpert: cost.tokensPerExpert ?? null,
  };
}

function progressLine(row) {
  return (
    `${DTYPES[row.dtype].short} ${row.layer} T=${row.T}: ${time(row.timeS)}/call ±${row.rmePct.toFixed(1)}% ` +
    `(${row.samples} samples, ${row.calls} calls), ${sig(row.gbs)} GB/s, ${sig(row.gflops)} GFLOP/s`
  );
}

/** Each row as a fraction of the machine's peaks. */
function addFractions(rows, peaks) {
  for (const r of rows) {
    if (r.skipped) continue;
    const peak = rowPeak(peaks, r.dtype);
    // of the run's best probe; a memory-bound row's %BW is its paired fraction (run.js) where taken
    r.bwFractionOfPeak = peaks.readBandwidthGBs ? r.gbs / peaks.readBandwidthGBs : null;
    r.bwFraction = r.bwPaired ? r.bwPaired.fraction : r.bwFractionOfPeak;
    r.fmaFraction = peak.gflops ? r.gflops / peak.gflops : null; // of the peak of the kernel that ran the row
    r.computePeak = peak.name;
  }
}

/** On each MoE row: dense time / MoE time for each baseline measured at the same dtype and T. */
function addRatios(rows) {
  const find = (dtype, T, layer) => rows.find((r) => r.dtype === dtype && r.T === T && r.layer === layer && !r.skipped);
  for (const r of rows) {
    if (r.layer !== 'moe' || r.skipped) continue;
    const total = find(r.dtype, r.T, 'dense-total');
    const active = find(r.dtype, r.T, 'dense-active');
    r.vsDenseTotal = total ? total.timeS / r.timeS : null;
    r.vsDenseActive = active ? active.timeS / r.timeS : null;
  }
}

// ---- printing ------------------------------------------------------------------------------------

function printHeader(opts, info) {
  const s = opts.shape;
  const cpu = os.cpus()[0]?.model?.trim() || 'unknown CPU';
  const out = [];
  out.push(`moe-kernels bench: MoE layer vs dense SwiGLU FFN (${opts.mode} run)`);
  out.push(`  layer     ${s.title}: d=${s.d} f=${s.f} E=${s.E} k=${s.k}; weights ${opts.dtypes.join(', ')}; activations float32`);
  out.push(`  baselines dense-total f=E·f=${s.E * s.f} (same total parameters), dense-active f=k·f=${s.k * s.f} (same active parameters)`);
  out.push(`  machine   ${cpu}, ${os.cpus().length} cores, ${gb(os.totalmem())} RAM; ${process.platform} ${process.arch}, node ${process.version}`);
  out.push(`  backend   ${info.backend} (${info.reason}); CPU kernel ${info.cpu.kernel}, ${info.cpu.threads} threads`);
  console.log(out.join('\n'));
}

function printPeaks(peaks) {
  const out = [];
  if (peaks.missing) {
    out.push(`  peaks     not measured: ${peaks.missing}`);
  } else {
    const probes = (key, digits) => peaks.probes.map((p) => p[key].toFixed(digits)).join(', ');
    out.push(`  peaks     read bandwidth ${sig(peaks.readBandwidthGBs)} GB/s (${peaks.bandwidth.method ?? 'streaming sum'}; ${gib(peaks.bandwidth.bytes)}, ${peaks.threads} threads, ${peaks.bandwidth.reps} passes each; probes ${probes('readBandwidthGBs', 1)})`);
    out.push(`            f32 ${peaks.fmaIsa} ${sig(peaks.fmaGFLOPs)} GFLOP/s (${peaks.fma.method}, ${peaks.threads} threads, best 0.1 s window; probes ${probes('fmaGFLOPs', 0)})`);
    if (peaks.bf16DotGFLOPs)
      out.push(`            bf16 dot ${sig(peaks.bf16DotGFLOPs)} GFLOP/s (${peaks.bf16Dot.method}; probes ${probes('bf16DotGFLOPs', 0)}): the peak of the bf16 rows`);
    out.push(`            the peaks use the instructions of the CPU kernel table that runs the rows (${peaks.kernel})`);
    if (peaks.kernel !== 'avx512-bf16' && peaks.kernel !== 'avx512' && peaks.avx512f)
      out.push(`            this CPU also has AVX-512F; the kernel table ${peaks.kernel} does not use it (MOE_CPU_KERNEL), so the peak shown is that table's`);
    out.push('            each peak is the best of the probes taken before the first row and after the last');
  }
  console.log(out.join('\n') + '\n');
}

function printTables(opts, rows, peaks) {
  const columns = [
    { title: 'T', get: (r) => r.T },
    { title: 'layer', left: true, get: (r) => r.layer },
    { title: 'f', get: (r) => r.fDense ?? opts.shape.f },
    { title: 'experts', get: (r) => (r.expertsUsed == null ? '-' : `${r.expertsUsed}/${opts.shape.E}`) },
    { title: 'time/call', get: (r) => (r.skipped ? 'skipped' : time(r.timeS)) },
    { title: '±', get: (r) => (r.skipped || r.samples < 2 ? '' : `${r.rmePct.toFixed(1)}%`) },
    { title: 'tokens/s', get: (r) => (r.skipped ? '' : count(r.tokensPerS)) },
    { title: 'GB/s', get: (r) => (r.skipped ? '' : sig(r.gbs)) },
    { title: '%BW', get: (r) => (r.skipped ? '' : pct(r.bwFraction) + (r.bwPaired ? '*' : '')) },
    { title: '%best', get: (r) => (r.skipped ? '' : pct(r.bwFractionOfPeak)) },
    { title: 'GFLOP/s', get: (r) => (r.skipped ? '' : sig(r.gflops)) },
    { title: '%peak', get: (r) => (r.skipped ? '' : pct(r.fmaFraction)) },
    { title: 'vs total', get: (r) => (r.layer === 'moe' && !r.skipped ? ratio(r.vsDenseTotal) : '') },
    { title: 'vs active', get: (r) => (r.layer === 'moe' && !r.skipped ? ratio(r.vsDenseActive) : '') },
  ];
  for (const dtype of opts.dtypes) {
    const mine = rows.filter((r) => r.dtype === dtype);
    if (!mine.length) continue;
    const list = [];
    for (const T of opts.tokens) {
      const group = mine.filter((r) => r.T === T);
      if (!group.length) continue;
      if (list.length) list.push(null);
      list.push(...group);
    }
    const peak = rowPeak(peaks, dtype);
    console.log(`${dtype} weights (${DTYPES[dtype].bytes} bytes each); CPU kernel ${peaks.kernel ?? '?'}, %peak of its ${peak.name} peak`);
    console.log(table(columns, list));
    console.log('');
  }
  const lines = [
    'time/call: benchmark.js mean over the samples, ± its relative margin of error (95%; blank for a single sample)',
    'GB/s: weight bytes read per call / time (MoE: the experts that got >= 1 token + the router)',
    `%BW: of the measured read bandwidth; marked *: paired, the median over ${opts.pairedRounds} rounds of (the row's GB/s over ${opts.pairedSeconds} s / a ${gib(opts.pairedBytes)} probe taken just before), for T <= ${opts.pairedMaxT}: the memory-bound rows, measured against the bandwidth of the same moment (a VM's drifts with its neighbours)`,
    '%best: of the best probe of the run (the peaks above)',
    'GFLOP/s: 2·T·k·3·d·f (+ router 2·T·E·d) per MoE call, 2·T·3·d·f per dense call; %peak: of the measured compute peak of the kernel that ran the row (f32/f16 weights: its FMA; bf16 weights on avx512-bf16: vdpbf16ps)',
    'vs total / vs active: dense FFN time / MoE time at the same T (above 1x: the MoE layer is faster)',
  ];
  if (rows.some((r) => r.bwFraction > 1))
    lines.push('above 100% BW: the weights stayed in the caches between calls (a small layer), or the machine was busier during the peak probes than during the row');
  if (peaks.missing) lines.push('fractions of peak are not shown: the peaks were not measured');
  console.log(lines.map((l) => `  ${l}`).join('\n') + '\n');
}

function evaluateTargets(opts, rows, peaks) {
  const out = [];
  const moe = (dtype, T) => rows.find((r) => r.dtype === dtype && r.T === T && r.layer === 'moe');
  for (const dtype of opts.dtypes) {
    const short = DTYPES[dtype].short;
    const add = (id, T, goal, label, text, value, fmt, missing) => {
      const row = moe(dtype, T);
      const reason = !row ? `T=${T} with the MoE layer was not run` : row.skipped ? row.skipped : value(row) == null ? missing : null;
      const v = reason ? null : value(row);
      const status = reason ? 'SKIP' : v >= goal ? 'PASS' : 'MISS';
      out.push({ id, dtype, T, goal, value: v, status, text: reason ? `${short} T=${T}: ${label} (goal >= ${fmt(goal)})` : text(fmt(v), fmt(goal)), reason });
    };
    const { decodeBandwidth: bw, prefillCompute: fc, sparsity: sp } = TARGETS;
    const bwGoal = opts.shape.name === 'mixtral' ? bw.goalMixtral : bw.goal;
    add('decodeBandwidth', bw.T, bwGoal, 'MoE share of the read bandwidth', (v, g) => `${short} T=${bw.T}: MoE reads its active experts at ${v} of the measured read bandwidth (goal >= ${g})`, (r) => r.bwFraction, pct, 'no bandwidth peak');
    const peak = rowPeak(peaks, dtype);
    const fcGoal = peak.name === 'bf16 dot' ? fc.goalBf16Dot : fc.goal;
    add('prefillCompute', fc.T, fcGoal, `MoE share of the ${peak.name} peak`, (v, g) => `${short} T=${fc.T}: MoE runs at ${v} of the measured ${peak.name} peak (goal >= ${g})`, (r) => r.fmaFraction, pct, 'no compute peak');
    add('sparsity', sp.T, sp.goal, 'MoE speed-up over dense-total', (v, g) => `${short} T=${sp.T}: MoE is ${v} faster than the dense FFN with the same total parameters (goal >= ${g})`, (r) => r.vsDenseTotal, ratio, 'dense-total was not run');
    if (!DTYPES[dtype].block) continue;
    const vs = (other, T) => (r) => {
      const o = moe(other, T);
      return o && !o.skipped && r.timeS ? o.timeS / r.timeS : null;
    };
    const { quantVsF32: qf, quantVsBf16: qb, quantPrefill: qp } = TARGETS;
    add('quantVsF32', qf.T, qf.goal[dtype], 'speed-up over the f32 layer', (v, g) => `${short} T=${qf.T}: the ${short} MoE layer is ${v} faster than the f32 one (goal >= ${g})`, vs('float32', qf.T), ratio, 'float32 was not run');
    add('quantVsBf16', qb.T, qb.goal[dtype], 'speed-up over the bf16 layer', (v, g) => `${short} T=${qb.T}: the ${short} MoE layer is ${v} faster than the bf16 one (goal >= ${g})`, vs('bfloat16', qb.T), ratio, 'bfloat16 was not run');
    add('quantPrefill', qp.T, qp.goal, 'prefill speed relative to bf16', (v, g) => `${short} T=${qp.T}: the ${short} MoE layer runs at ${v} of the bf16 layer's speed (goal >= ${g})`, vs('bfloat16', qp.T), ratio, 'bfloat16 was not run');
  }
  return out;
}

function printTargets(targets) {
  console.log('targets (from the issue; informational, the exit code does not depend on them)');
  for (const t of targets) console.log(`  ${t.status.padEnd(4)}  ${t.text}${t.reason ? ` [${t.reason}]` : ''}`);
  console.log('');
}

function printFooter(result) {
  const m = Math.floor(result.wallSeconds / 60);
  const s = (result.wallSeconds - m * 60).toFixed(0);
  console.log(`peak RSS ${gb(result.memory.peakRssBytes)} (process.resourceUsage().maxRSS of the bench process, ${result.shape.title}; the peak probes run in a child); wall time ${m}m${s}s`);
}

// ---- JSON ----------------------------------------------------------------------------------------

function version() {
  try {
    return require(path.join(root, 'package.json')).version;
  } catch {
    return null;
  }
}

function toJson({ opts, info, peaks, rows, targets, memory, peakRssBytes, wallSeconds }) {
  return {
    schema: SCHEMA,
    date: new Date().toISOString(),
    package: { name: 'moe-kernels', version: version() },
    mode: opts.mode,
    shape: { ...opts.shape, activations: 'float32' },
    tokens: opts.tokens,
    dtypes: opts.dtypes,
    layers: opts.layers,
    settings: { budgetS: opts.budget, samples: opts.samples, minTimeS: opts.minTime, maxCallSeconds: opts.maxCallSeconds },
    machine: {
      cpu: os.cpus()[0]?.model?.trim() ?? null,
      cores: os.cpus().length,
      totalMemBytes: os.totalmem(),
      platform: process.platform,
      arch: process.arch,
      node: process.version,
    },
    backend: info,
    peaks,
    rows,
    targets,
    memory: { peakRssBytes, checkpoints: memory },
    wallSeconds,
  };
}

module.exports = { makeRow, progressLine, addFractions, addRatios, printHeader, printPeaks, printTables, evaluateTargets, printTargets, printFooter, toJson };
