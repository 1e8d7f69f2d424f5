#!/usr/bin/env node
'use strict';
// The routing-variants bench (issue #5): the MoE layer's cost under each variant, one table per
// weight type, on the CPU (or --backend):
//   - capacity factor 1.0 / 1.25 against dropless (the default), with the slots dropped;
//   - fine-grained experts E=64, k=6 against E=8, k=2 at equal active parameters (k·f equal);
//   - a shared expert (f_shared = f) on and off;
//   - the dense FFN merged from the layer's experts (routing-count weighted): its speed and its
//     output's relative RMS distance from the MoE layer it came from, on the bench's inputs.
// Times are medians of calls taken round-robin over the contenders (a busy machine's background
// load lands on all of them), --budget seconds per contender and T, after a warm-up call each.
//
//   node bench/variants.js [--ci] [--tokens 1,64,512] [--dtypes float32,bfloat16] [--budget s]
//                          [--backend cpu|cuda|cuda-emu] [--json path]
//   node bench/run.js --variants [same options]
const fs = require('node:fs');
const path = require('node:path');

const { root, forEachOption, lib, randomMatrix, randomInput, seedOf, note } = require('./common');

const HELP = `usage: node bench/variants.js [options]     (node bench/run.js --variants [options])

  --ci               tiny layer (d=128), T=1,8, f32 only, short rows: a smoke run of every row
  --tokens LIST      token counts, default 1,64,512
  --dtypes LIST      weight types, default float32 (bfloat16 too: --dtypes float32,bfloat16)
  --budget SECONDS   time per row after the warm-up, default 1 (--ci 0.05)
  --backend NAME     cpu (default) | cuda | cuda-emu
  --json PATH        default bench/results/variants.json
  --help`;

function parseArgs(argv) {
  const o = { ci: false, tokens: null, dtypes: null, budget: null, backend: 'cpu', json: null };
  forEachOption(argv, (a, val, raw) => {
    if (a === '--help' || a === '-h') o.help = true;
    else if (a === '--ci') o.ci = true;
    else if (a === '--variants') return;
    else if (a === '--tokens') o.tokens = val().split(',').map(Number);
    else if (a === '--dtypes') o.dtypes = val().split(',').map((s) => ({ f32: 'float32', bf16: 'bfloat16' })[s] ?? s);
    else if (a === '--budget') o.budget = Number(val());
    else if (a === '--backend') o.backend = val();
    else if (a === '--json') o.json = val();
    else throw new Error(`unknown option ${JSON.stringify(raw)} (--help lists them)`);
  });
  if (o.tokens && o.tokens.some((t) => !Number.isInteger(t) || t < 1)) throw new Error(`--tokens: positive integers, got ${o.tokens}`);
  return o;
}

function weights(dtype, d, f, E, tag) {
  const gate = randomMatrix(dtype, E, d, seedOf(tag, 'gate'));
  const w1 = [], w3 = [], w2 = [];
  for (let e = 0; e < E; e++) {
    w1.push(randomMatrix(dtype, f, d, seedOf(tag, 'w1', e)));
    w3.push(randomMatrix(dtype, f, d, seedOf(tag, 'w3', e)));
    w2.push(randomMatrix(dtype, d, f, seedOf(tag, 'w2', e)));
  }
  return { gate, w1, w3, w2 };
}

/**
 * Median seconds per call of each contender's fn, timed round-robin: `rounds` rounds, each giving
 * every contender budget/rounds seconds (at least one call), after one warm-up call each. Taking
 * turns spreads a busy machine's background load over all contenders instead of the unlucky one.
 */
async function timeRoundRobin(fns, budget, rounds = 4) {
  for (const fn of fns) await fn(); // warm-up: scratch first touched
  const samples = fns.map(() => []);
  for (let r = 0; r < rounds; r++)
    for (let i = 0; i < fns.length; i++) {
      const end = process.hrtime.bigint() + BigInt(Math.round((budget / rounds) * 1e9));
      do {
        const t0 = process.hrtime.bigint();
        await fns[i]();
        samples[i].push(Number(process.hrtime.bigint() - t0) / 1e9);
      } while (process.hrtime.bigint() < end);
    }
  return samples.map((t) => t.sort((a, b) => a - b)[t.length >> 1]);
}

const ms = (s) => (s < 1e-3 ? `${(s * 1e6).toFixed(0)} us` : `${(s * 1e3).toFixed(s < 0.01 ? 2 : 1)} ms`);

async function main(argv) {
  const o = parseArgs(argv);
  if (o.help) return console.log(HELP);
  const L = lib();
  const base = o.ci ? { d: 128, f: 256, E: 8, k: 2 } : { d: 1024, f: 3584, E: 8, k: 2 };
  const fine = { d: base.d, E: 64, k: 6, f: Math.round((base.k * base.f) / 6 / 8) * 8 }; // equal k·f (to 8)
  const tokens = o.tokens ?? (o.ci ? [1, 8] : [1, 64, 512]);
  const dtypes = o.dtypes ?? ['float32'];
  const budget = o.budget ?? (o.ci ? 0.05 : 1);
  const backend = o.backend;
  const results = [];
  console.log(`routing variants bench: backend ${backend}, base d=${base.d} f=${base.f} E=${base.E} k=${base.k}; fine-grained E=${fine.E} k=${fine.k} f=${fine.f} (active k·f ${base.k * base.f} vs ${fine.k * fine.f})`);
  for (const dtype of dtypes) {
    const rows = [];
    const add = (variant, T, sec, extra = {}) => {
      const r = { dtype, variant, T, seconds: sec, ...extra };
      rows.push(r);
      results.push(r);
    };
    note(`${dtype}: generating weights`);
    const wb = weights(dtype, base.d, base.f, base.E, 'variants-base');
    const shared = { w1: randomMatrix(dtype, base.f, base.d, seedOf('sh', 1)), w3: randomMatrix(dtype, base.f, base.d, seedOf('sh', 3)), w2: randomMatrix(dtype, base.d, base.f, seedOf('sh', 2)) };
    const layers = {
      [`E=${base.E} k=${base.k} dropless`]: await L.MoeLayer.create(wb, { topK: base.k, backend }),
      'capacity 1.0': await L.MoeLayer.create(wb, { topK: base.k, capacityFactor: 1.0, backend }),
      'capacity 1.25': await L.MoeLayer.create(wb, { topK: base.k, capacityFactor: 1.25, backend }),
      'shared expert': await L.MoeLayer.create(wb, { topK: base.k, sharedExperts: shared, backend }),
    };
    const dropless = Object.values(layers)[0];
    const inputs = new Map(tokens.map((T) => [T, randomInput(T, base.d)]));
    // the merged FFN: weighted by the routing counts of the largest input
    const big = inputs.get(tokens[tokens.length - 1]);
    const counts = (await dropless.forward(big, { returnRouting: true })).routing.tokensPerExpert;
    layers['merged dense FFN'] = await L.mergeExperts(wb, { from: counts, backend });
    note(`${dtype}: fine-grained layer`);
    const wf = weights(dtype, fine.d, fine.f, fine.E, 'variants-fine');
    layers[`E=${fine.E} k=${fine.k} f=${fine.f}`] = await L.MoeLayer.create(wf, { topK: fine.k, backend });
    const names = Object.keys(layers);
    for (const T of tokens) {
      const x = inputs.get(T);
      note(`${dtype}: T=${T}`);
      const secs = await timeRoundRobin(names.map((n) => () => layers[n].forward(x)), budget * names.length);
      for (let i = 0; i < names.length; i++) {
        const name = names[i];
        const extra = {};
        if (name.startsWith('capacity')) {
          const r = await layers[name].forward(x, { returnRouting: true });
          extra.dropped = Array.from(r.routing.dropped.data).reduce((a, b) => a + b, 0);
          extra.slots = T * base.k;
        }
        if (name === 'merged dense FFN') extra.relativeRms = (await L.mergeDistance(layers[name], dropless, x)).relativeRms;
        add(name, T, secs[i], extra);
      }
    }
    Object.values(layers).forEach((l) => l.dispose());

    const ref = new Map(rows.filter((r) => r.variant.endsWith('dropless')).map((r) => [r.T, r.seconds]));
    console.log(`\n${dtype} weights, ${backend}: median time per forward (vs the dropless E=${base.E} k=${base.k} layer)`);
    const head = ['variant', ...tokens.map((T) => `T=${T}`), 'notes'];
    const variants = [...new Set(rows.map((r) => r.variant))];
    const body = variants.map((v) => {
      const rs = rows.filter((r) => r.variant === v);
      const notes = [];
      const last = rs[rs.length - 1];
      if (last.dropped !== undefined) notes.push(`dropped ${rs.map((r) => `${r.dropped}/${r.slots}`).join(', ')} slots`);
      if (last.relativeRms !== undefined) notes.push(`rel. RMS distance to the MoE ${rs.map((r) => r.relativeRms.toFixed(3)).join(', ')}`);
      return [v, ...rs.map((r) => `${ms(r.seconds)} (${(r.seconds / ref.get(r.T)).toFixed(2)}x)`), notes.join('; ')];
    });
    const w = head.map((_, c) => Math.max(head[c].length, ...body.map((r) => r[c].length)));
    const line = (cells) => '  ' + cells.map((s, c) => (c === 0 || c === cells.length - 1 ? s.padEnd(w[c]) : s.padStart(w[c]))).join('  ').trimEnd();
    console.log([line(head), '  ' + w.map((n) => '-'.repeat(n)).join('  '), ...body.map(line)].join('\n'));
  }
  const out = o.json ?? path.join(root, 'bench', 'results', 'variants.json');
  fs.mkdirSync(path.dirname(out), { recursive: true });
  fs.writeFileSync(out, JSON.stringify({ schema: 'moe-kernels-bench-variants/1', date: new Date().toISOString(), backend, base, fine, results }, null, 2) + '\n');
  console.log(`\nJSON: ${path.relative(process.cwd(), out)}`);
}

module.exports = { main };
if (require.main === module)
  main(process.argv.slice(2)).catch((e) => {
    console.error(e.message);
    process.exit(1);
  });
