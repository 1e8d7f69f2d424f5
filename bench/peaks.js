'use strict';
// The machine's peaks, measured in the same run as the rows (DESIGN.md: figures are ratios measured
// in one run, so they survive a noisy machine): read bandwidth by a streaming sum over a buffer far
// larger than the caches, and f32 multiply-add throughput from independent chains in registers,
// both on every thread of the compute pool, with the instruction set the kernels use.
//
// The machine is probed before the first row and again after the last; a peak is a maximum and
// other load on the machine only ever lowers a probe, so each peak is the best of the probes.
// A probe runs in a child process (this file as a script), so that its 1 GiB buffer does not count
// in the bench's peak RSS, which is there to show what the layers need.
const path = require('node:path');
const { spawnSync } = require('node:child_process');
const { native, progress } = require('./common');

/** opts: { bwBytes, bwReps, fmaSeconds }; info: backendInfo(). */
function measurePeaks(opts, info) {
  const avx2 = info.cpu.kernel === 'avx2-fma';
  const peaks = {
    readBandwidthGBs: null,
    fmaGFLOPs: null,
    threads: info.cpu.threads,
    isa: avx2 ? 'avx2-fma' : 'portable',
    bandwidth: { bytes: opts.bwBytes, reps: opts.bwReps, method: 'streaming sum, one range per thread, best pass' },
    fma: {
      seconds: opts.fmaSeconds,
      method: avx2
        ? '12 independent _mm256_fmadd_ps chains per thread, 16 flops each'
        : '12 independent 4-lane multiply+add chains per thread, portable code without FMA',
    },
    avx512f: info.cpu.avx512f,
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
  const args = [__filename, String(opts.bwBytes), String(opts.bwReps), String(opts.fmaSeconds)];
  const r = spawnSync(process.execPath, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
  if (r.status !== 0) throw new Error(`the peak probe failed (exit ${r.status}${r.signal ? `, ${r.signal}` : ''})`);
  const { readBandwidthGBs: bw, fmaGFLOPs: fma } = JSON.parse(r.stdout);
  p.done(`read bandwidth ${bw.toFixed(1)} GB/s, FMA ${fma.toFixed(0)} GFLOP/s`);
  peaks.probes.push({ when, readBandwidthGBs: bw, fmaGFLOPs: fma });
  peaks.readBandwidthGBs = Math.max(peaks.readBandwidthGBs ?? 0, bw);
  peaks.fmaGFLOPs = Math.max(peaks.fmaGFLOPs ?? 0, fma);
  return peaks;
}

// As a script: node bench/peaks.js BYTES REPS SECONDS -> {"readBandwidthGBs":..,"fmaGFLOPs":..}
if (require.main === module) {
  const [bytes, reps, seconds] = process.argv.slice(2).map(Number);
  const n = native();
  const readBandwidthGBs = n.measure_read_bandwidth(bytes, reps);
  const fmaGFLOPs = n.measure_fma_peak(seconds);
  process.stdout.write(JSON.stringify({ readBandwidthGBs, fmaGFLOPs }) + '\n');
}

module.exports = { measurePeaks, probe };
