#!/usr/bin/env node
// Load time and peak memory of a GGUF model against one read of the file (issue 13's targets:
// load <= 1.5x the time to read the file once; peak RSS within the file size + 10%).
// Writes a scaled Mixtral in F16 (5 layers, d=1024, f=3584, 8 experts, vocab 32000: ~1 GB) to
// bench/results/ unless --file is given, then in fresh child processes: reads the file once (warm
// page cache, after one read to warm it), and loads it with MixtralModel.load. Prints the ratio
// and the peak RSS (VmHWM) over the RSS before loading, as a share of the file size.
//   node bench/gguf-load.js [--file path.gguf] [--layers n]
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const { spawnSync } = require('node:child_process');

const arg = (k, d) => {
  const i = process.argv.indexOf(k);
  return i >= 0 ? process.argv[i + 1] : d;
};
const root = path.join(__dirname, '..');
const hwm = () => Number(/VmHWM:\s+(\d+)/.exec(fs.readFileSync('/proc/self/status', 'utf8'))[1]) * 1024;
const rss = () => Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync('/proc/self/status', 'utf8'))[1]) * 1024;

async function child(mode, file) {
  if (mode === 'read') {
    const fd = fs.openSync(file, 'r');
    const buf = Buffer.alloc(64 << 20);
    const t0 = process.hrtime.bigint();
    for (let pos = 0, n; (n = fs.readSync(fd, buf, 0, buf.length, pos)) > 0; pos += n);
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    fs.closeSync(fd);
    return { ms };
  }
  const { MixtralModel } = require(root);
  const before = rss();
  const t0 = process.hrtime.bigint();
  const m = await MixtralModel.load(file, { maxSeq: 64, backend: 'cpu' });
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  const out = { ms, before, peak: hwm(), after: rss(), modelBytes: m.bytes };
  m.dispose();
  return out;
}

async function makeFile(file, layers) {
  const { writeGguf } = require(root);
  const d = 1024, f = 3584, E = 8, V = 32000, H = 32, KV = 8, hd = 32;
  let seed = 1;
  const rnd = (n) => {
    const out = new Uint16Array(n);
    let s = seed++ * 2654435761;
    for (let i = 0; i < n; i++) {
      s = (s * 1103515245 + 12345) >>> 0;
      out[i] = 0x2000 | (s >>> 20) | ((s & 1) << 15); // small f16 values of either sign
    }
    return out;
  };
  const m = (k, type, value, arrayType) => ({ key: k, type, value, ...(arrayType ? { arrayType } : {}) });
  const metadata = [
    m('general.architecture', 'string', 'llama'), m('general.name', 'string', 'bench'), m('general.file_type', 'uint32', 1),
    m('llama.context_length', 'uint32', 4096), m('llama.embedding_length', 'uint32', d), m('llama.block_count', 'uint32', layers),
    m('llama.feed_forward_length', 'uint32', f), m('llama.rope.dimension_count', 'uint32', hd), m('llama.attention.head_count', 'uint32', H),
    m('llama.attention.head_count_kv', 'uint32', KV), m('llama.rope.freq_base', 'float32', 1e6), m('llama.attention.layer_norm_rms_epsilon', 'float32', 1e-5),
    m('llama.expert_count', 'uint32', E), m('llama.expert_used_count', 'uint32', 2),
  ];
  const t = (name, dims, type = 'float16') => ({
    name, type, dims,
    data: () => {
      const n = dims.reduce((a, b) => a * b, 1);
      return type === 'float32' ? { type, data: new Float32Array(n).fill(1), dims } : { type, data: rnd(n), dims };
    },
  });
  const tensors = [t('token_embd.weight', [V, d]), t('output_norm.weight', [d], 'float32'), t('output.weight', [V, d])];
  for (let i = 0; i < layers; i++) {
    const b = (s) => `blk.${i}.${s}.weight`;
    tensors.push(t(b('attn_norm'), [d], 'float32'), t(b('attn_q'), [H * hd, d]), t(b('attn_k'), [KV * hd, d]), t(b('attn_v'), [KV * hd, d]), t(b('attn_output'), [d, H * hd]));
    tensors.push(t(b('ffn_norm'), [d], 'float32'), t(b('ffn_gate_inp'), [E, d], 'float32'), t(b('ffn_gate_exps'), [E, f, d]), t(b('ffn_up_exps'), [E, f, d]), t(b('ffn_down_exps'), [E, d, f]));
  }
  await writeGguf(file, { metadata, tensors });
}

async function main() {
  if (process.argv[2] === '--child') {
    process.stdout.write(JSON.stringify(await child(process.argv[3], process.argv[4])));
    return;
  }
  const layers = Number(arg('--layers', 5));
  let file = arg('--file');
  if (!file) {
    file = path.join(root, 'bench', 'results', `mixtral-scaled-${layers}l.f16.gguf`);
    fs.mkdirSync(path.dirname(file), { recursive: true });
    if (!fs.existsSync(file)) await makeFile(file, layers);
  }
  const size = fs.statSync(file).size;
  const run = (mode) => JSON.parse(spawnSync(process.execPath, [__filename, '--child', mode, file], { encoding: 'utf8', maxBuffer: 1 << 20 }).stdout);
  run('read'); // warm the page cache
  const reads = [run('read'), run('read'), run('read')].map((r) => r.ms).sort((a, b) => a - b);
  const loads = [run('load'), run('load'), run('load')].sort((a, b) => a.ms - b.ms);
  const read = reads[1];
  const load = loads[1];
  const peakOver = Math.max(...loads.map((l) => l.peak - l.before));
  const result = {
    file, sizeBytes: size, readMs: read, loadMs: load.ms, ratio: load.ms / read, target: 1.5,
    peakRssOverBaselineBytes: peakOver, peakShareOfFile: peakOver / size, modelBytes: load.modelBytes,
  };
  console.log(`GGUF ${path.basename(file)}: ${(size / 1e9).toFixed(2)} GB`);
  console.log(`read once (warm cache, median of 3): ${read.toFixed(0)} ms (${(size / 1e6 / read).toFixed(0)} GB/s)`);
  console.log(`MixtralModel.load (median of 3):     ${load.ms.toFixed(0)} ms = ${(load.ms / read).toFixed(2)}x the read (target <= 1.5x: ${load.ms / read <= 1.5 ? 'PASS' : 'MISS'})`);
  console.log(`peak RSS over the process's before:  ${(peakOver / 1e9).toFixed(2)} GB = ${((peakOver / size) * 100).toFixed(0)}% of the file (target <= 110%: ${peakOver <= 1.1 * size ? 'PASS' : 'MISS'})`);
  fs.writeFileSync(path.join(root, 'bench', 'results', 'gguf-load.json'), JSON.stringify(result, null, 2));
}
main().catch((e) => {
  console.error(e);
  process.exitCode = 1;
});
