// Model configs from config.json (Mixtral, Qwen2-MoE, DeepSeek-MoE), their errors, and the
// parameter and memory maths against counts worked out by hand from the published architectures.
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { checkMemory, countParameters, estimateMemory, formatBytes, moeTensorSpecs, parseMixtralConfig, parseMoeConfig } from '../lib/index';
import { expectMoeError, mixtral8x7bRaw, tinyDeepseekRaw, tinyMixtralRaw, tinyQwen2MoeRaw, tmpDir, writeTinyMixtral } from './helpers/checkpoints';

const cfg = suite('config');

cfg('Mixtral-8x7B config.json parses into camelCase fields', () => {
  const c = parseMixtralConfig(mixtral8x7bRaw());
  assert.equal(
    {
      modelType: c.modelType, hiddenSize: c.hiddenSize, intermediateSize: c.intermediateSize, numHiddenLayers: c.numHiddenLayers,
      numAttentionHeads: c.numAttentionHeads, numKeyValueHeads: c.numKeyValueHeads, headDim: c.headDim, numExperts: c.numExperts,
      numExpertsPerTok: c.numExpertsPerTok, rmsNormEps: c.rmsNormEps, ropeTheta: c.ropeTheta, slidingWindow: c.slidingWindow,
      vocabSize: c.vocabSize, tieWordEmbeddings: c.tieWordEmbeddings, maxPositionEmbeddings: c.maxPositionEmbeddings, torchDtype: c.torchDtype,
    },
    {
      modelType: 'mixtral', hiddenSize: 4096, intermediateSize: 14336, numHiddenLayers: 32, numAttentionHeads: 32, numKeyValueHeads: 8,
      headDim: 128, numExperts: 8, numExpertsPerTok: 2, rmsNormEps: 1e-5, ropeTheta: 1e6, slidingWindow: null, vocabSize: 32000,
      tieWordEmbeddings: false, maxPositionEmbeddings: 32768, torchDtype: 'bfloat16',
    },
  );
  assert.is(c.moeIntermediateSize, 14336);
  assert.is(c.normTopkProb, true);
  assert.is(c.sharedExpertIntermediateSize, 0);
  assert.equal(c.layerKinds, new Array(32).fill('moe'));
});

cfg('a path to config.json works, and newer spellings: rope_parameters, dtype, head_dim, sliding_window', async () => {
  const dir = tmpDir();
  try {
    const p = path.join(dir, 'config.json');
    const raw = tinyMixtralRaw({ rope_theta: undefined, rope_parameters: { rope_theta: 5e5, rope_type: 'default' }, torch_dtype: undefined, dtype: 'bfloat16', head_dim: 8, sliding_window: 4096 });
    fs.writeFileSync(p, JSON.stringify(raw));
    const c = parseMixtralConfig(p);
    assert.is(c.ropeTheta, 5e5);
    assert.is(c.torchDtype, 'bfloat16');
    assert.is(c.headDim, 8);
    assert.is(c.slidingWindow, 4096);
    assert.is(parseMixtralConfig(tinyMixtralRaw()).headDim, 16); // 64 / 4
    assert.is(parseMixtralConfig(tinyMixtralRaw({ torch_dtype: 'float64' })).torchDtype, null);
    fs.writeFileSync(p, '{"hidden_size": ');
    await expectMoeError(() => parseMixtralConfig(p), 'ERR_CONFIG', p, 'does not parse');
  } finally {
    fs.rmSync(dir, { recursive: true });
  }
});

const bad: [string, Record<string, unknown>, string[]][] = [
  ['missing hidden_size', { hidden_size: undefined }, ['hidden_size is required']],
  ['non-integer', { num_hidden_layers: 2.5 }, ['num_hidden_layers must be an integer, got 2.5']],
  ['non-positive', { intermediate_size: 0 }, ['intermediate_size must be positive, got 0']],
  ['negative vocab', { vocab_size: -3 }, ['vocab_size must be positive, got -3']],
  ['string size', { hidden_size: '64' }, ['hidden_size must be an integer, got "64"']],
  ['heads not a multiple of kv heads', { num_attention_heads: 4, num_key_value_heads: 3 }, ['num_attention_heads (4) must be a multiple of num_key_value_heads (3)']],
  ['hidden not divisible by heads', { num_attention_heads: 6, num_key_value_heads: 2 }, ['hidden_size (64) must be a multiple of num_attention_heads (6)']],
  ['k > E', { num_experts_per_tok: 5 }, ['num_experts_per_tok (5) must be at most num_local_experts (4)']],
  ['rms_norm_eps', { rms_norm_eps: -1 }, ['rms_norm_eps must be a positive number, got -1']],
  ['rope_parameters.rope_theta', { rope_theta: undefined, rope_parameters: { rope_theta: 'x' } }, ['rope_parameters.rope_theta must be a positive number, got "x"']],
  ['tie_word_embeddings', { tie_word_embeddings: 'yes' }, ['tie_word_embeddings must be a boolean, got "yes"']],
  ['model_type', { model_type: 'llama' }, ["model_type must be 'mixtral', got \"llama\""]],
];
for (const [name, over, patterns] of bad)
  cfg(`refused config: ${name}`, async () => {
    await expectMoeError(() => parseMixtralConfig(tinyMixtralRaw(over)), 'ERR_CONFIG', 'config', ...patterns);
  });

cfg('refused config: not an object; an unknown model_type', async () => {
  await expectMoeError(() => parseMixtralConfig([] as never), 'ERR_CONFIG', 'must be a JSON object');
  await expectMoeError(() => parseMoeConfig({ model_type: 'gpt2' }), 'ERR_CONFIG', 'model_type "gpt2" is not supported', 'mixtral, qwen2_moe, deepseek');
  await expectMoeError(() => parseMixtralConfig('/nonexistent/config.json'), 'ERR_FILE_NOT_FOUND', '/nonexistent/config.json');
});

// Qwen1.5-MoE-A2.7B and DeepSeek-MoE-16B as published (fields that matter here).
const qwen2Moe = {
  model_type: 'qwen2_moe', hidden_size: 2048, intermediate_size: 5632, moe_intermediate_size: 1408, shared_expert_intermediate_size: 5632,
  num_experts: 60, num_experts_per_tok: 4, num_hidden_layers: 24, num_attention_heads: 16, num_key_value_heads: 16, vocab_size: 151936,
  decoder_sparse_step: 1, norm_topk_prob: false, max_position_embeddings: 8192, rope_theta: 1e6, rms_norm_eps: 1e-6,
  sliding_window: 32768, use_sliding_window: false, tie_word_embeddings: false, torch_dtype: 'bfloat16', mlp_only_layers: [],
};
const deepseekMoe = {
  model_type: 'deepseek', hidden_size: 2048, intermediate_size: 10944, moe_intermediate_size: 1408, n_routed_experts: 64, n_shared_experts: 2,
  num_experts_per_tok: 6, num_hidden_layers: 28, num_attention_heads: 16, num_key_value_heads: 16, vocab_size: 102400,
  first_k_dense_replace: 1, moe_layer_freq: 1, norm_topk_prob: false, max_position_embeddings: 4096, rope_theta: 10000,
  rms_norm_eps: 1e-6, tie_word_embeddings: false, torch_dtype: 'bfloat16', attention_bias: false,
};

cfg('Qwen2-MoE: per-layer kinds from decoder_sparse_step / mlp_only_layers, gated shared expert, qkv bias', async () => {
  const c = parseMoeConfig(qwen2Moe);
  assert.is(c.modelType, 'qwen2_moe');
  assert.equal([c.numExperts, c.numExpertsPerTok, c.moeIntermediateSize, c.sharedExpertIntermediateSize], [60, 4, 1408, 5632]);
  assert.equal([c.sharedExpertGate, c.attentionBias, c.normTopkProb, c.slidingWindow], [true, true, false, null]);
  assert.equal(c.layerKinds, new Array(24).fill('moe'));
  const s = parseMoeConfig({ ...qwen2Moe, num_hidden_layers: 6, decoder_sparse_step: 2, mlp_only_layers: [5] });
  assert.equal(s.layerKinds, ['dense', 'moe', 'dense', 'moe', 'dense', 'dense']);
  await expectMoeError(() => parseMoeConfig({ ...qwen2Moe, mlp_only_layers: [24] }), 'ERR_CONFIG', 'mlp_only_layers', '[24]');
});

cfg('DeepSeek-MoE: first_k_dense_replace and moe_layer_freq, n_shared_experts x moe_intermediate_size', async () => {
  const c = parseMoeConfig(deepseekMoe);
  assert.equal(c.layerKinds, ['dense', ...new Array(27).fill('moe')]);
  assert.equal([c.numExperts, c.numExpertsPerTok, c.sharedExpertIntermediateSize, c.sharedExpertGate], [64, 6, 2816, false]);
  const s = parseMoeConfig({ ...deepseekMoe, num_hidden_layers: 7, first_k_dense_replace: 2, moe_layer_freq: 2 });
  assert.equal(s.layerKinds, ['dense', 'dense', 'moe', 'dense', 'moe', 'dense', 'moe']);
  await expectMoeError(() => parseMoeConfig({ ...deepseekMoe, num_experts_per_tok: 65 }), 'ERR_CONFIG', 'num_experts_per_tok (65) must be at most n_routed_experts (64)');
});

cfg.run();

const params = suite('params');

params('Mixtral-8x7B: 46,702,792,704 total and 12,879,925,248 active, by part', () => {
  // d=4096, f=14336, 32 layers, 32 heads of 128, 8 kv heads, 8 experts, top-2, vocab 32000, untied
  const attention = 32 * (4096 * 4096 + 2 * 4096 * 1024 + 4096 * 4096); // q, k, v, o
  const expert = 3 * 4096 * 14336; // w1, w3, w2
  const p = countParameters(parseMixtralConfig(mixtral8x7bRaw()));
  assert.is(attention, 1_342_177_280);
  assert.is(expert, 176_160_768);
  assert.equal(p.experts, { total: 45_097_156_608, active: 11_274_289_152 }); // 32·8·expert, 32·2·expert
  assert.is(p.attention, attention);
  assert.is(p.router, 1_048_576); // 32 · 8 · 4096
  assert.is(p.norms, 266_240); // (2·32 + 1) · 4096
  assert.is(p.embeddings, 131_072_000);
  assert.is(p.lmHead, 131_072_000);
  assert.is(p.sharedExperts + p.denseFfn, 0);
  assert.is(p.total, 46_702_792_704);
  assert.is(p.active, 12_879_925_248);
});

params('tied embeddings count once', () => {
  const p = countParameters(parseMixtralConfig({ ...mixtral8x7bRaw(), tie_word_embeddings: true }));
  assert.is(p.lmHead, 0);
  assert.is(p.total, 46_702_792_704 - 131_072_000);
});

params('Qwen1.5-MoE-A2.7B: 14.3B total, 2.7B active (shared expert, its gate and qkv biases counted)', () => {
  const p = countParameters(parseMoeConfig(qwen2Moe));
  assert.is(p.attention, 24 * (4 * 2048 * 2048 + 3 * 2048));
  assert.is(p.sharedExperts, 24 * (3 * 2048 * 5632 + 2048));
  assert.equal(p.experts, { total: 24 * 60 * 3 * 2048 * 1408, active: 24 * 4 * 3 * 2048 * 1408 });
  assert.is(p.total, 14_315_784_192);
  assert.is(p.active, 2_689_173_504);
});

params('DeepSeek-MoE-16B: 16.4B total, 2.8B active (one dense layer, two shared experts)', () => {
  const p = countParameters(parseMoeConfig(deepseekMoe));
  assert.is(p.denseFfn, 3 * 2048 * 10944);
  assert.is(p.sharedExperts, 27 * 3 * 2048 * 2816);
  assert.is(p.router, 27 * 64 * 2048);
  assert.is(p.total, 16_375_728_128);
  assert.is(p.active, 2_828_650_496);
});

params('estimateMemory: weights at the dtype, KV cache = 2·layers·kvHeads·headDim·context·batch·elem', () => {
  const c = parseMixtralConfig(mixtral8x7bRaw());
  const m = estimateMemory(c);
  assert.equal([m.dtype, m.kvDtype, m.contextLength, m.batch], ['bfloat16', 'bfloat16', 32768, 1]);
  assert.is(m.weightsBytes, 46_702_792_704 * 2);
  assert.is(m.kvCacheBytes, 2 * 32 * 8 * 128 * 32768 * 2);
  assert.is(m.totalBytes, m.weightsBytes + m.kvCacheBytes);
  const f = estimateMemory(c, { dtype: 'float32', kvDtype: 'float16', contextLength: 4096, batch: 3 });
  assert.is(f.weightsBytes, 46_702_792_704 * 4);
  assert.is(f.kvCacheBytes, 2 * 32 * 8 * 128 * 4096 * 3 * 2);
  let te: unknown;
  try {
    estimateMemory(c, { dtype: 'int8' as never });
  } catch (e) {
    te = e;
  }
  assert.instance(te, TypeError);
  assert.match((te as Error).message, /options\.dtype .* got "int8"/);
});

params('checkMemory: ERR_OUT_OF_MEMORY before loading, with the numbers', async () => {
  const m = estimateMemory(parseMixtralConfig(mixtral8x7bRaw()), { contextLength: 4096 });
  await expectMoeError(() => checkMemory(m, { availableBytes: 16e9 }), 'ERR_OUT_OF_MEMORY', 'needs 93.9 GB', 'weights 93.4 GB in bfloat16', 'KV cache 537 MB for 4096 tokens', '16.0 GB is available');
  assert.is(checkMemory(m, { availableBytes: 1e12 }), 1e12);
  const tiny = estimateMemory(parseMixtralConfig(tinyMixtralRaw()));
  assert.ok(checkMemory(tiny) > 0); // this machine's free memory holds a tiny model
  await expectMoeError(() => checkMemory({ ...m, totalBytes: Number.MAX_SAFE_INTEGER }), 'ERR_OUT_OF_MEMORY', 'of memory is free');
});

params('the README\'s table of what Mixtral takes matches countParameters and estimateMemory', () => {
  const readme = fs.readFileSync(path.join(__dirname, '..', 'README.md'), 'utf8');
  const row = readme.split('\n').find((l) => l.startsWith('| Mixtral-8x7B'))!;
  const c = parseMixtralConfig(mixtral8x7bRaw());
  const p = countParameters(c);
  const kv = (t: 'float32' | 'bfloat16') => formatBytes(estimateMemory(c, { kvDtype: t, contextLength: 4096 }).kvCacheBytes);
  const b = (n: number) => `${(n / 1e9).toFixed(1)}B`;
  assert.is(row.split('|').slice(2, 6).map((x) => x.trim()).join(' | '), `${b(p.total)} / ${b(p.active)} | ${formatBytes(p.total * 2)} | ${formatBytes(p.total * 4)} | ${kv('float32')} / ${kv('bfloat16')}`);
});

params('formatBytes', () => {
  assert.equal([formatBytes(0), formatBytes(999), formatBytes(1500), formatBytes(93_405_585_408), formatBytes(2.5e12)], ['0 B', '999 B', '1.50 kB', '93.4 GB', '2.50 TB']);
});

params.run();

// Configs written to hurt: counts that would allocate without end, values past 2^53, nesting that
// would overflow the stack. Each is a MoeError ERR_CONFIG naming the field, before anything is
// allocated from it.
const hostile = suite('hostile configs');

/** [[[...]]] nested n deep, built without recursion. */
const nested = (n: number): unknown => {
  let v: unknown = [];
  for (let i = 0; i < n; i++) v = [v];
  return v;
};

hostile('counts past their bound are ERR_CONFIG naming the field and the value (no allocation, no uncoded RangeError)', async () => {
  await expectMoeError(() => parseMixtralConfig(tinyMixtralRaw({ num_hidden_layers: 1e9 })), 'ERR_CONFIG', 'num_hidden_layers must be at most 65536, got 1000000000');
  await expectMoeError(() => parseMoeConfig(tinyMixtralRaw({ num_local_experts: 1e8 })), 'ERR_CONFIG', 'num_local_experts must be at most 65536, got 100000000');
  const fields: [string, () => Record<string, unknown>][] = [
    ...['hidden_size', 'intermediate_size', 'num_hidden_layers', 'num_attention_heads', 'num_key_value_heads', 'num_local_experts', 'vocab_size', 'max_position_embeddings', 'head_dim', 'sliding_window']
      .map((k): [string, () => Record<string, unknown>] => [k, () => tinyMixtralRaw()]),
    ...['moe_intermediate_size', 'shared_expert_intermediate_size', 'num_experts', 'decoder_sparse_step'].map((k): [string, () => Record<string, unknown>] => [k, () => tinyQwen2MoeRaw()]),
    ...['n_routed_experts', 'n_shared_experts', 'first_k_dense_replace', 'moe_layer_freq'].map((k): [string, () => Record<string, unknown>] => [k, () => tinyDeepseekRaw()]),
  ];
  for (const [key, raw] of fields)
    for (const v of [2 ** 53 - 1, 2 ** 53, 1e300]) await expectMoeError(() => parseMoeConfig({ ...raw(), [key]: v }), 'ERR_CONFIG', `${key} must be at most`, `got ${v}`);
  // num_experts_per_tok is bounded by the expert count
  await expectMoeError(() => parseMoeConfig(tinyMixtralRaw({ num_experts_per_tok: 2 ** 53 - 1 })), 'ERR_CONFIG', 'num_experts_per_tok');
});

hostile('a config nested 20,000 levels deep is ERR_CONFIG, not a stack overflow', async () => {
  await expectMoeError(() => parseMoeConfig(tinyQwen2MoeRaw({ mlp_only_layers: nested(20_000) })), 'ERR_CONFIG', 'mlp_only_layers', '[[[[...]]]]');
  await expectMoeError(() => parseMoeConfig(tinyMixtralRaw({ hidden_size: nested(20_000) })), 'ERR_CONFIG', 'hidden_size must be an integer');
  await expectMoeError(() => parseMoeConfig(tinyMixtralRaw({ torch_dtype: nested(20_000) })), 'ERR_CONFIG', 'torch_dtype');
  // the same from a file: JSON.parse takes the depth, the error message must too
  const dir = tmpDir('moe-deep-');
  try {
    const file = path.join(dir, 'config.json');
    fs.writeFileSync(file, JSON.stringify(tinyMixtralRaw()).replace('"sliding_window":null', `"sliding_window":${'['.repeat(20_000)}${']'.repeat(20_000)}`));
    await expectMoeError(() => parseMoeConfig(file), 'ERR_CONFIG', file, 'sliding_window');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

hostile('a directory named config.json is ERR_FILE_READ, not ERR_FILE_NOT_FOUND or a raw EISDIR', async () => {
  const dir = tmpDir('moe-cfgdir-');
  try {
    fs.mkdirSync(path.join(dir, 'config.json'));
    await expectMoeError(() => parseMoeConfig(path.join(dir, 'config.json')), 'ERR_FILE_READ', 'config.json', 'is a directory');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

hostile('parameter counts past 2^53 (no longer exact) are ERR_CONFIG, not a wrong number', async () => {
  // every count within its bound, the product past 2^53
  const big = parseMoeConfig(tinyMixtralRaw({ num_hidden_layers: 65536, num_local_experts: 65536, hidden_size: 1 << 20, intermediate_size: 1 << 20, num_attention_heads: 1, num_key_value_heads: 1 }));
  await expectMoeError(() => countParameters(big), 'ERR_CONFIG', 'more than 2^53');
  await expectMoeError(() => estimateMemory(big), 'ERR_CONFIG', 'more than 2^53');
  // the largest Mixtral-shaped config under the limit still counts exactly
  const ok = countParameters(parseMoeConfig(tinyMixtralRaw({ num_hidden_layers: 65536, num_local_experts: 8 })));
  assert.ok(Number.isSafeInteger(ok.total));
});

hostile('the tensor list of a huge config is refused by its size in closed form, not built', async () => {
  const big = parseMoeConfig(tinyMixtralRaw({ num_hidden_layers: 65536, num_local_experts: 65536 }));
  await expectMoeError(() => moeTensorSpecs(big, 'per-expert'), 'ERR_CONFIG', '12,885,360,643 tensors');
  assert.is(moeTensorSpecs(big, 'packed').length, 3 + 65536 * 9);
});

hostile('MoeCheckpoint.open with a config of 65536 layers x 65536 experts fails at the first mismatch, in a small heap', async () => {
  // before: every expected tensor name was built first (2^33 of them): out of memory after a long wait
  const dir = tmpDir('moe-hugecfg-');
  try {
    await writeTinyMixtral(dir);
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(tinyMixtralRaw({ num_hidden_layers: 65536, num_local_experts: 65536 })));
    const script = `
      const { MoeCheckpoint } = require('./lib/index');
      try { MoeCheckpoint.openSync(${JSON.stringify(dir)}); console.log('opened'); }
      catch (e) { console.log(e.name + ' ' + e.code + ' ' + e.message); }`;
    const r = spawnSync(process.execPath, ['--max-old-space-size=200', '-r', 'tsx/cjs', '-e', script], { cwd: path.join(__dirname, '..'), encoding: 'utf8', timeout: 120_000 });
    assert.is(r.status, 0, `child: status ${r.status}, signal ${r.signal}\n${r.stderr.slice(-2000)}`);
    assert.match(r.stdout, /^MoeError ERR_TENSOR_SHAPE .*block_sparse_moe\.gate\.weight' has shape \[4,64\], expected \[65536,64\]/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

hostile.run();
