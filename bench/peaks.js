'use strict';
// The machine's peaks, measured in the same run as the rows (DESIGN.md: figures are ratios measured
// in one run, so they survive a noisy machine), with the instructions of the CPU kernel table that
// runs the rows (backendInfo().cpu.kernel):
//   - read bandwidth: streaming reads over a buffer far larger than the caches, on huge pages, by
//     several methods (vector loads of the table's widest ISA, 1/4/8 streams per thread, with and
//     without software prefetch), the best pass of any: a ceiling that the kernels' own reads
//     (several panels per thread, prefetched) cannot beat;
//   - FMA peak: independent f32 multiply-add chains in registers, zmm on avx512 / avx512-bf16, ymm
//     on avx2-fma, portable multiply+add otherwise;
//   - bf16 dot peak (avx512-bf16 only): the same with vdpbf16ps, 2 flops per bf16 pair; the peak of
//     the rows with bf16 weights, which that table runs with vdpbf16ps.
// All on every thread of the compute pool.
//
// The machine is probed before the first row and again after the last; a peak is a maximum and
// other load on the machine only ever lowers a probe, so each peak is the best of the probes.
// The read bandwidth of a VM also drifts with what its neighbours on the host do (here it moved
// between about 35, 55 and 80 GB/s within minutes), so the rows that memory bounds (T <= 64) are
// also measured against it paired: short probes alternated with the row's calls (bandwidthNow,
// run.js pairedBandwidth), each round's ratio taken within seconds.
// A probe runs in a child process (this file as a script), so that its 1 GiB buffer does not count
// in the bench's peak RSS, which is there to show what the layers need.
const { spawnSync } = require('node:child_process');
const { native, progress } = require('./common');

// The instructions of measure_fma_peak per kernel table (native/backends/cpu/peak.cc, fma_peak_isa).
const FMA_ISA = { 'avx512-bf16': 'zmm FMA', avx512: 'zmm FMA', 'avx2-fma': 'ymm FMA', portable: 'portable multiply+add' };

/** opts: { bwBytes, bwReps, fmaSeconds }; info: backendInfo(). */
function measurePeaks(opts, info) {
  const kernel = info.cpu.kernel;
  const fmaIsa = FMA_ISA[kernel] ?? 'portable multiply+add';
  const peaks = {
    readBandwidthGBs: null,
    fmaGFLOPs: null,
    bf16DotGFLOPs: null,
    threads: info.cpu.threads,
    kernel,
    isa: kernel, // the kernel table whose instructions the peaks use (older JSON: 'avx2-fma' | 'portable')
    fmaIsa,
    bandwidth: {
      bytes: opts.bwBytes,
      reps: opts.bwReps,
      method: `best pass of ${fmaIsa === 'zmm FMA' ? 'zmm' : fmaIsa === 'ymm FMA' ? 'ymm' : 'portable'} loads, 1/4/8 streams per thread, with and without software prefetch, on huge pages`,
    },
    fma: {
      seconds: opts.fmaSeconds,
      method: {
        'zmm FMA': '12 independent _mm512_fmadd_ps chains per thread, 32 flops each',
        'ymm FMA': '12 independent _mm256_fmadd_ps chains per thread, 16 flops each',
        'portable multiply+add': '12 independent 4-lane multiply+add chains per thread, portable code without FMA',
      }[fmaIsa],
    },
    bf16Dot: kernel === 'avx512-bf16' ? { seconds: opts.fmaSeconds, method: '12 independent _mm512_dpbf16_ps chains per thread, 64 flops each (2 per bf16 pair)' } : null,
    avx512f: info.cpu.avx512f,
    avx512bf16: info.cpu.avx512bf16,
    probes: [],
    missing: null,
  };
  const n = native();
  if (typeof n.measure_read_bandwidth !== 'function' || typeof n.measure_fma_peak !== 'function')
    peaks.missing = 'the native module has no measure_read_bandwidth / measure_fma_peak (rebuild: npm run build:native)';
  else probe(peaks, opts, 'before the rows');
  return peaks;
}

/** Probes again (in a child process) and keeps the best of all probes. */
function probe(peaks, opts, when) {
  if (peaks.missing) return peaks;
  const p = progress(`peaks (${when})`, 1);
  const args = [__filename, String(opts.bwBytes), String(opts.bwReps), String(opts.fmaSeconds), peaks.bf16Dot ? 'bf16-dot' : ''];
  const r = spawnSync(process.execPath, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
  if (r.status !== 0) throw new Error(`the peak probe failed (exit ${r.status}${r.signal ? `, ${r.signal}` : ''})`);
  const { readBandwidthGBs: bw, fmaGFLOPs: fma, bf16DotGFLOPs: dot } = JSON.parse(r.stdout);
  p.done(`read bandwidth ${bw.toFixed(1)} GB/s, FMA ${fma.toFixed(0)} GFLOP/s${dot ? `, bf16 dot ${dot.toFixed(0)} GFLOP/s` : ''}`);
  peaks.probes.push({ when, readBandwidthGBs: bw, fmaGFLOPs: fma, bf16DotGFLOPs: dot ?? null });
  peaks.readBandwidthGBs = Math.max(peaks.readBandwidthGBs ?? 0, bw);
  peaks.fmaGFLOPs = Math.max(peaks.fmaGFLOPs ?? 0, fma);
  if (dot) peaks.bf16DotGFLOPs = Math.max(peaks.bf16DotGFLOPs ?? 0, dot);
  return peaks;
}

/**
 * The read bandwidth of this moment: one short probe (a child process, as above), for the rows
 * measured alternately with it (pairedBandwidth in run.js). GB/s.
 */
function bandwidthNow(opts) {
  const r = spawnSync(process.execPath, [__filename, '--bw-only', String(opts.pairedBytes), String(opts.pairedReps)], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
  if (r.status !== 0) throw new Error(`the bandwidth probe failed (exit ${r.status}${r.signal ? `, ${r.signal}` : ''})`);
  return JSON.parse(r.stdout).readBandwidthGBs;
}

/**
 * The compute peak of the kernel that ran a row: the bf16 dot peak for bf16 weights on the
 * avx512-bf16 table (vdpbf16ps), else the FMA peak. { gflops, name }.
 */
function rowPeak(peaks, dtype) {
  if (dtype === 'bfloat16' && peaks.bf16DotGFLOPs) return { gflops: peaks.bf16DotGFLOPs, name: 'bf16 dot' };
  return { gflops: peaks.fmaGFLOPs, name: peaks.fmaIsa ?? 'FMA' };
}

// The bf16 dot peak: the addon's measure_bf16_dot_peak when it binds it, else measure_fma_peak
// with MOE_PEAK_OP=bf16-dot (peak.h), in a process of its own.
function bf16DotPeak(n, seconds) {
  if (typeof n.measure_bf16_dot_peak === 'function') return n.measure_bf16_dot_peak(seconds);
  const r = spawnSync(process.execPath, [__filename, '--fma-only', String(seconds)], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'inherit'],
    env: { ...process.env, MOE_PEAK_OP: 'bf16-dot' },
  });
  if (r.status !== 0) throw new Error(`the bf16 dot probe failed (exit ${r.status})`);
  return JSON.parse(r.stdout).fmaGFLOPs;
}

// As a script: node bench/peaks.js BYTES REPS SECONDS [bf16-dot]
//   -> {"readBandwidthGBs":..,"fmaGFLOPs":..,"bf16DotGFLOPs":..|null}
// node bench/peaks.js --fma-only SECONDS -> {"fmaGFLOPs":..}
// node bench/peaks.js --bw-only BYTES REPS -> {"readBandwidthGBs":..}
if (require.main === module) {
  const n = native();
  if (process.argv[2] === '--bw-only') {
    process.stdout.write(JSON.stringify({ readBandwidthGBs: n.measure_read_bandwidth(Number(process.argv[3]), Number(process.argv[4])) }) + '\n');
  } else if (process.argv[2] === '--fma-only') {
    process.stdout.write(JSON.stringify({ fmaGFLOPs: n.measure_fma_peak(Number(process.argv[3])) }) + '\n');
  } else {
    const [bytes, reps, seconds] = process.argv.slice(2, 5).map(Number);
    const readBandwidthGBs = n.measure_read_bandwidth(bytes, reps);
    const fmaGFLOPs = n.measure_fma_peak(seconds);
    const bf16DotGFLOPs = process.argv[5] === 'bf16-dot' ? bf16DotPeak(n, seconds) : null;
    process.stdout.write(JSON.stringify({ readBandwidthGBs, fmaGFLOPs, bf16DotGFLOPs }) + '\n');
  }
}

module.exports = { measurePeaks, probe, rowPeak, bandwidthNow };
