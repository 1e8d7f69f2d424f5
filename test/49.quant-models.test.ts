/**
 * Quantised models: a tiny Mixtral checkpoint loaded with {quantize} (and {quantizeLinear}) in each
 * format the package makes, and a model of q5_k / q6_k experts from weights in memory; each gives
 * the same greedy tokens on the CPU and on every device backend of the build (cuda-emu in the test
 * build: run-tests.js runs this file there too), and logits within a few percent of the float model
 * (the quantisation error). The quantised layers hold a fraction of the float bytes.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { availableBackends, estimateMemory, formatBytes, MixtralModel, MoeLayer, parseMixtralConfig, tensor, type DecoderLayerWeights, type MoeLayerOptions, type QuantType } from '../lib/index';
import { makeQuantProblem } from './helpers/quant-problems';
import { assertClose, randn, tolFor } from './helpers/reference';
import { makeModelWeights, mixtral8x7bRaw, tinyMixtralRaw, tmpDir, writeTinyMixtral } from './helpers/checkpoints';
import { randomWeights } from './helpers/quant-reference';

// d and f whole k-quant super-blocks; heads of 64 (the device attention's sizes)
const RAW = tinyMixtralRaw({ hidden_size: 256, intermediate_size: 256, num_attention_heads: 4, num_key_value_heads: 2, head_dim: 64 });
const PROMPT = [5, 17, 3, 42, 8, 91];
const DEVICES = availableBackends().filter((b) => b !== 'cpu');

async function greedy(model: MixtralModel, n = 8): Promise<number[]> {
  const out: number[] = [];
  for await (const id of model.generate(PROMPT, { maxNewTokens: n })) out.push(id);
  return out;
}

/** The smallest gap between the top two logits over the prompt's positions (how safe argmax is). */
async function margin(model: MixtralModel): Promise<number> {
  const logits = (await model.forward(PROMPT)).data as Float32Array;
  const V = 97;
  let m = Infinity;
  for (let t = 0; t < PROMPT.length; t++) {
    const row = Array.from(logits.subarray(t * V, (t + 1) * V)).sort((a, b) => b - a);
    m = Math.min(m, row[0] - row[1]);
  }
  return m;
}

interface Ctx {
  dir: string;
}
const q = suite<Ctx>('quantised models', { dir: '' });
q.before(async (ctx) => {
  ctx.dir = tmpDir('quant-models-');
  await writeTinyMixtral(ctx.dir, { raw: RAW, seed: 4 });
});
q.after((ctx) => fs.rmSync(ctx.dir, { recursive: true, force: true }));

q('load({quantize}): the experts quantised as they load; greedy tokens the same on every backend', async (ctx) => {
  const required = process.env.MOE_TEST_REQUIRE_BACKEND;
  if (required) assert.ok((DEVICES as string[]).includes(required), `backend ${required} is required but not available`);
  const float = await MixtralModel.load(ctx.dir, { backend: 'cpu' });
  const floatLogits = (await float.forward(PROMPT)).data as Float32Array;
  const floatBytes = float.blocks[0].moe!.bytes;
  float.dispose();
  for (const type of ['q8_0', 'q4_0', 'q4_k'] as const) {
    const cpu = await MixtralModel.load(ctx.dir, { backend: 'cpu', quantize: type, quantizeLinear: type });
    assert.is(cpu.blocks[0].moe!.weightType, type);
    assert.ok(cpu.blocks[0].moe!.bytes < floatBytes * (type === 'q8_0' ? 0.3 : 0.16), `${type}: ${cpu.blocks[0].moe!.bytes} of ${floatBytes} bytes`);
    // the quantisation error of the whole model: the logits stay near the float model's
    const logits = (await cpu.forward(PROMPT)).data as Float32Array;
    let se = 0, ss = 0;
    for (let i = 0; i < logits.length; i++) (se += (logits[i] - floatLogits[i]) ** 2), (ss += floatLogits[i] ** 2);
    assert.ok(Math.sqrt(se / ss) < (type === 'q8_0' ? 0.05 : 0.3), `${type}: logits relative RMS ${Math.sqrt(se / ss)} from the float model`);
    assert.ok((await margin(cpu)) > 1e-3, `${type}: an argmax near tie makes the comparison fragile`);
    const want = await greedy(cpu);
    cpu.dispose();
    for (const backend of DEVICES) {
      const dev = await MixtralModel.load(ctx.dir, { backend, quantize: type, quantizeLinear: type });
      assert.is(dev.blocks[0].moe!.backend, backend);
      assert.equal(await greedy(dev), want, `${type} on ${backend}`);
      dev.dispose();
    }
  }
});

q('q5_k and q6_k experts (as llama.cpp files hold them), from weights in memory: the same greedy tokens on every backend', async () => {
  const config = parseMixtralConfig(RAW);
  for (const type of ['q5_k', 'q6_k'] as QuantType[]) {
    const w = makeModelWeights(config, 6);
    const E = config.numExperts, d = config.hiddenSize, f = config.moeIntermediateSize;
    let seed = 100;
    const experts = (rows: number, cols: number) => Array.from({ length: E }, () => randomWeights(type, rows, cols, seed++));
    const layers = w.layers.map((l): DecoderLayerWeights => ({ ...l, moe: { ...l.moe!, w1: experts(f, d), w3: experts(f, d), w2: experts(d, f) } as never }));
    const make = (backend: string) => MixtralModel.fromWeights(config, { globals: w.globals, layers }, { backend: backend as never });
    const cpu = await make('cpu');
    assert.is(cpu.blocks[1].moe!.weightType, type);
    assert.ok((await margin(cpu)) > 1e-3, `${type}: an argmax near tie makes the comparison fragile`);
    const want = await greedy(cpu);
    cpu.dispose();
    for (const backend of DEVICES) {
      const dev = await make(backend);
      assert.equal(await greedy(dev), want, `${type} on ${backend}`);
      dev.dispose();
    }
  }
});

q('load({quantize}) errors: an unknown format names the option; estimateMemory counts the quantised bytes', async (ctx) => {
  try {
    await MixtralModel.load(ctx.dir, { quantize: 'q2_k' as never });
    assert.unreachable('should throw');
  } catch (e) {
    assert.instance(e, TypeError);
    assert.match((e as Error).message, /options\.quantize must be one of 'q8_0', 'q4_0', 'q4_k'/);
  }
  const config = parseMixtralConfig(RAW);
  const f = MixtralModel.estimateMemory(config, { dtype: 'float32' });
  const e = MixtralModel.estimateMemory(config, { dtype: 'float32', quantize: 'q4_k' });
  // experts: 2 layers x 4 x 3 x 256 x 256 parameters, 4 bytes -> 4.5 bits
  const expertParams = 2 * 4 * 3 * 256 * 256;
  assert.is(f.weightsBytes - e.weightsBytes, expertParams * 4 - (expertParams * 4.5) / 8);
  assert.is(e.ffnBytes, (expertParams * 4.5) / 8);
});

q('routing variants and shared experts with quantised experts: each device backend as the CPU (prefill, f32 on both)', async () => {
  const required = process.env.MOE_TEST_REQUIRE_BACKEND;
  if (required) assert.ok((DEVICES as string[]).includes(required), `backend ${required} is required but not available`);
  const T = 33, d = 256, f = 256, E = 8;
  const p = makeQuantProblem({ T, d, f, E, type: 'q4_k', seed: 12 });
  const s = makeQuantProblem({ T: 1, d, f: 256, E: 1, type: 'q4_k', seed: 13 });
  const mat = (t: typeof s.w1) => ({ type: t.type, data: t.data, dims: [t.dims[1], t.dims[2]] });
  const variants: Record<string, MoeLayerOptions> = {
    capacity: { capacityFactor: 1.0 },
    noise: { noise: { weights: tensor('float32', randn(E * d, 14, 0.05), [E, d]), seed: 3 } },
    random: { randomRouting: { seed: 5 } },
    shared: { sharedExperts: { w1: mat(s.w1), w3: mat(s.w3), w2: mat(s.w2), gate: tensor('float32', randn(d, 15, 0.05), [1, d]) } },
  };
  for (const [name, o] of Object.entries(variants)) {
    const cpu = await MoeLayer.create({ gate: p.gate, w1: p.w1, w3: p.w3, w2: p.w2 }, { ...o, backend: 'cpu' });
    const want = (await cpu.forward(p.x, { returnRouting: true }));
    cpu.dispose();
    for (const backend of DEVICES) {
      const dev = await MoeLayer.create({ gate: p.gate, w1: p.w1, w3: p.w3, w2: p.w2 }, { ...o, backend: backend as never });
      const got = await dev.forward(p.x, { returnRouting: true });
      assert.equal(got.routing!.topkIds.data, want.routing!.topkIds.data, `${name} on ${backend}: routing`);
      assertClose(got.output.data as Float32Array, want.output.data as Float32Array, tolFor('float32', 256), `${name} on ${backend}`);
      dev.dispose();
    }
  }
});

q("the README's Mixtral-8x7B table per format matches estimateMemory", () => {
  const readme = fs.readFileSync(path.join(__dirname, '..', 'README.md'), 'utf8').split('\n');
  const c = parseMixtralConfig(mixtral8x7bRaw());
  const formats = [undefined, 'q8_0', 'q6_k', 'q5_k', 'q4_k', 'q4_0'] as const;
  const row = (prefix: string) => readme.find((l) => l.startsWith(prefix))!.split('|').slice(2, 8).map((x) => x.trim());
  assert.equal(row('| experts quantised'), formats.map((q) => formatBytes(estimateMemory(c, { quantize: q }).weightsBytes)));
  assert.equal(row('| and every linear'), formats.map((q) => formatBytes(estimateMemory(c, { quantize: q, quantizeLinear: q }).weightsBytes)));
});

q.run();
