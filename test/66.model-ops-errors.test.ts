/**
 * The decoder-model ops: bad inputs give the documented TypeError / RangeError / MoeError with a
 * code and a message naming the argument and the value (Promise forms reject with the same), and
 * results do not depend on the thread count or break on the portable kernels (child processes).
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import {
  add,
  addSync,
  attention,
  attentionSync,
  backendInfo,
  embedding,
  embeddingSync,
  KvCache,
  Linear,
  linear,
  linearSync,
  MoeError,
  rmsNorm,
  rmsNormSync,
  rope,
  ropeSync,
  sample,
  sampleSync,
  tensor,
  zeros,
  type Tensor,
} from '../lib/index';
import { modelOpsBits } from './helpers/child-model-ops';
import { RE, runCase, TE, type Case, type Cls } from './helpers/error-cases';
import { f32, i32 } from './helpers/problems';
import { randn } from './helpers/reference';
import { runChild as runChildScript } from './helpers/run-child';

const ft = (dims: number[], seed = 1, type: 'float32' | 'float16' | 'bfloat16' = 'float32') =>
  tensor(type, randn(dims.reduce((a, b) => a * b, 1), seed, 0.3), dims) as Tensor;
const raw = (type: string, data: unknown, dims: unknown) => ({ type, data, dims }) as unknown as Tensor;

const V = 10, d = 8;
const table = ft([V, d]);
const x = ft([3, d]);
const w = ft([d]);
const lin = Linear.packSync(ft([5, d]));
const q = ft([2, 4, 8]), k = ft([2, 2, 8]), v = ft([2, 2, 8]);
const pos = i32([0, 1], [2]);
const cache = new KvCache({ maxSeq: 4, numKvHeads: 2, headDim: 8 });
const logits = f32([0, 1, 2, 3], [2, 2]) as Tensor<'float32'>;

type Row = [string, () => unknown, () => Promise<unknown>, Cls, string, string[]];
const rows: Row[] = [
  // embedding
  ['embedding: id equal to V', () => embeddingSync(table, i32([0, V], [2])), () => embedding(table, i32([0, V], [2])), RangeError, RE[0], ['ids.data[1]', String(V), `[0, ${V})`]],
  ['embedding: negative id', () => embeddingSync(table, i32([-1], [1])), () => embedding(table, i32([-1], [1])), RangeError, RE[0], ['ids.data[0]', '-1']],
  ['embedding: float32 ids', () => embeddingSync(table, f32([0], [1]) as never), () => embedding(table, f32([0], [1]) as never), TypeError, TE[0], ['ids.type', '"float32"']],
  ['embedding: ids of rank 2', () => embeddingSync(table, i32([0, 1], [1, 2])), () => embedding(table, i32([0, 1], [1, 2])), RangeError, RE[0], ['ids.dims', '[1,2]']],
  ['embedding: table of rank 1', () => embeddingSync(ft([V]), i32([0], [1])), () => embedding(ft([V]), i32([0], [1])), RangeError, RE[0], ['table.dims', `[${V}]`]],
  ['embedding: outType int32', () => embeddingSync(table, i32([0], [1]), { outType: 'int32' as never }), () => embedding(table, i32([0], [1]), { outType: 'int32' as never }), TypeError, TE[0], ['outType', '"int32"']],
  ['embedding: out of the wrong dims', () => embeddingSync(table, i32([0], [1]), { out: zeros('float32', [2, d]) }), () => embedding(table, i32([0], [1]), { out: zeros('float32', [2, d]) }), RangeError, RE[0], ['out.dims', `[1,${d}]`, `[2,${d}]`]],
  ['embedding: out type differs from outType', () => embeddingSync(table, i32([0], [1]), { outType: 'float16', out: zeros('float32', [1, d]) }), () => embedding(table, i32([0], [1]), { outType: 'float16', out: zeros('float32', [1, d]) }), TypeError, TE[0], ['out.type', 'float32', 'float16']],
  // rmsNorm
  ['rmsNorm: weight of another d', () => rmsNormSync(x, ft([d + 1])), () => rmsNorm(x, ft([d + 1])), RangeError, RE[0], ['weight.dims[0]', String(d + 1), 'x.dims[1]', String(d)]],
  ['rmsNorm: eps -1', () => rmsNormSync(x, w, { eps: -1 }), () => rmsNorm(x, w, { eps: -1 }), RangeError, RE[0], ['eps', '-1']],
  ['rmsNorm: eps a string', () => rmsNormSync(x, w, { eps: '1e-5' as never }), () => rmsNorm(x, w, { eps: '1e-5' as never }), TypeError, TE[0], ['eps', '"1e-5"']],
  ['rmsNorm: eps NaN', () => rmsNormSync(x, w, { eps: NaN }), () => rmsNorm(x, w, { eps: NaN }), TypeError, TE[0], ['eps', 'NaN']],
  ['rmsNorm: x of type int32', () => rmsNormSync(raw('int32', new Int32Array(3 * d), [3, d]), w), () => rmsNorm(raw('int32', new Int32Array(3 * d), [3, d]), w), TypeError, TE[0], ['x.type', '"int32"']],
  ['rmsNorm: x data length not matching dims', () => rmsNormSync(raw('float32', new Float32Array(5), [3, d]), w), () => rmsNorm(raw('float32', new Float32Array(5), [3, d]), w), RangeError, RE[0], ['x.data', '5', String(3 * d)]],
  // Linear
  ['Linear.pack: w of rank 3', () => Linear.packSync(ft([2, 5, d])), () => Linear.pack(ft([2, 5, d])), RangeError, RE[0], ['w.dims', `[2,5,${d}]`]],
  ['Linear.pack: w of type int32', () => Linear.packSync(raw('int32', new Int32Array(4), [2, 2])), () => Linear.pack(raw('int32', new Int32Array(4), [2, 2])), TypeError, TE[0], ['w.type', '"int32"']],
  ['Linear.pack: w with no rows', () => Linear.packSync(ft([0, d])), () => Linear.pack(ft([0, d])), RangeError, RE[0], ['w', `[0,${d}]`]],
  ['Linear.pack: backend cuda', () => Linear.packSync(ft([2, 2]), { backend: 'cuda' }), () => Linear.pack(ft([2, 2]), { backend: 'cuda' }), MoeError, 'ERR_BACKEND_UNAVAILABLE', ['cuda']],
  ['linear: x with another in', () => linearSync(ft([3, d + 2]), lin), () => linear(ft([3, d + 2]), lin), RangeError, RE[0], ['x.dims[1]', String(d + 2), String(d)]],
  ['linear: w not a Linear', () => linearSync(x, ft([5, d]) as never), () => linear(x, ft([5, d]) as never), TypeError, TE[0], ['w', 'Linear']],
  ['linear: out of the wrong type for outType', () => lin.forwardSync(x, { outType: 'bfloat16', out: zeros('float32', [3, 5]) }), () => lin.forward(x, { outType: 'bfloat16', out: zeros('float32', [3, 5]) }), TypeError, TE[0], ['out.type', 'bfloat16']],
  // rope
  ['rope: odd head dim', () => ropeSync(ft([2, 1, 7]), null, pos), () => rope(ft([2, 1, 7]), null, pos), RangeError, RE[0], ['q.dims[2]', '7']],
  ['rope: positions of another T', () => ropeSync(q, k, i32([0, 1, 2], [3])), () => rope(q, k, i32([0, 1, 2], [3])), RangeError, RE[0], ['positions.dims[0]', '3', '2']],
  ['rope: k of another head dim', () => ropeSync(q, ft([2, 2, 6]), pos), () => rope(q, ft([2, 2, 6]), pos), RangeError, RE[0], ['k.dims[2]', '6', '8']],
  ['rope: theta 0', () => ropeSync(q, k, pos, { theta: 0 }), () => rope(q, k, pos, { theta: 0 }), RangeError, RE[0], ['theta', '0']],
  ['rope: theta NaN', () => ropeSync(q, k, pos, { theta: NaN }), () => rope(q, k, pos, { theta: NaN }), TypeError, TE[0], ['theta', 'NaN']],
  ['rope: positions float32', () => ropeSync(q, k, f32([0, 1], [2]) as never), () => rope(q, k, f32([0, 1], [2]) as never), TypeError, TE[0], ['positions.type', '"float32"']],
  ['rope: inPlace "yes"', () => ropeSync(q, k, pos, { inPlace: 'yes' as never }), () => rope(q, k, pos, { inPlace: 'yes' as never }), TypeError, TE[0], ['inPlace', '"yes"']],
  // attention
  ['attention: Hq not a multiple of Hkv', () => attentionSync(ft([2, 3, 8]), k, v, cache), () => attention(ft([2, 3, 8]), k, v, cache), RangeError, RE[0], ['q.dims[1]', '3', '2']],
  ['attention: k heads differ from the cache', () => attentionSync(q, ft([2, 4, 8]), ft([2, 4, 8]), cache), () => attention(q, ft([2, 4, 8]), ft([2, 4, 8]), cache), RangeError, RE[0], ['k.dims[1]', '4', '2']],
  ['attention: v of other dims', () => attentionSync(q, k, ft([1, 2, 8]), cache), () => attention(q, k, ft([1, 2, 8]), cache), RangeError, RE[0], ['v.dims', '[1,2,8]', '[2,2,8]']],
  ['attention: q head dim differs from the cache', () => attentionSync(ft([2, 4, 6]), k, v, cache), () => attention(ft([2, 4, 6]), k, v, cache), RangeError, RE[0], ['q.dims[2]', '6', '8']],
  ['attention: startPos past the length', () => attentionSync(q, k, v, cache, { startPos: 1 }), () => attention(q, k, v, cache, { startPos: 1 }), RangeError, RE[0], ['startPos', '1', '[0, 0]']],
  ['attention: past maxSeq', () => attentionSync(ft([5, 4, 8]), ft([5, 2, 8]), ft([5, 2, 8]), cache), () => attention(ft([5, 4, 8]), ft([5, 2, 8]), ft([5, 2, 8]), cache), RangeError, RE[0], ['maxSeq', '4', '5']],
  ['attention: slidingWindow -1', () => attentionSync(q, k, v, cache, { slidingWindow: -1 }), () => attention(q, k, v, cache, { slidingWindow: -1 }), RangeError, RE[0], ['slidingWindow', '-1']],
  ['attention: slidingWindow 1.5', () => attentionSync(q, k, v, cache, { slidingWindow: 1.5 }), () => attention(q, k, v, cache, { slidingWindow: 1.5 }), TypeError, TE[0], ['slidingWindow', '1.5']],
  ['attention: cache not a KvCache', () => attentionSync(q, k, v, {} as never), () => attention(q, k, v, {} as never), TypeError, TE[0], ['cache', 'an object']],
  // add
  ['add: dims differ', () => addSync(x, ft([d, 3])), () => add(x, ft([d, 3])), RangeError, RE[0], ['b.dims', `[${d},3]`, 'a.dims', `[3,${d}]`]],
  ['add: b a plain array', () => addSync(x, [1, 2] as never), () => add(x, [1, 2] as never), TypeError, TE[0], ['b', '[1,2]']],
  ['add: inPlace 1', () => addSync(x, x, { inPlace: 1 as never }), () => add(x, x, { inPlace: 1 as never }), TypeError, TE[0], ['inPlace', '1']],
  // sample
  ['sample: temperature -1', () => sampleSync(logits, { temperature: -1 }), () => sample(logits, { temperature: -1 }), RangeError, RE[0], ['temperature', '-1']],
  ['sample: topP 0', () => sampleSync(logits, { temperature: 1, topP: 0 }), () => sample(logits, { temperature: 1, topP: 0 }), RangeError, RE[0], ['topP', '0']],
  ['sample: topP 1.5', () => sampleSync(logits, { topP: 1.5 }), () => sample(logits, { topP: 1.5 }), RangeError, RE[0], ['topP', '1.5']],
  ['sample: seed 1.5', () => sampleSync(logits, { seed: 1.5 }), () => sample(logits, { seed: 1.5 }), TypeError, TE[0], ['seed', '1.5']],
  ['sample: seed -1', () => sampleSync(logits, { seed: -1 }), () => sample(logits, { seed: -1 }), RangeError, RE[0], ['seed', '-1']],
  ['sample: step 2^53', () => sampleSync(logits, { step: 2 ** 53 }), () => sample(logits, { step: 2 ** 53 }), RangeError, RE[0], ['step', '9007199254740992']],
  ['sample: bfloat16 logits', () => sampleSync(ft([4], 1, 'bfloat16') as never), () => sample(ft([4], 1, 'bfloat16') as never), TypeError, TE[0], ['logits.type', '"bfloat16"']],
  ['sample: logits of rank 3', () => sampleSync(ft([1, 2, 2]) as never), () => sample(ft([1, 2, 2]) as never), RangeError, RE[0], ['logits.dims', '[1,2,2]']],
  ['sample: empty rows', () => sampleSync(f32([], [2, 0]) as never), () => sample(f32([], [2, 0]) as never), RangeError, RE[0], ['logits', '[2,0]']],
  ['sample: out of the wrong dims', () => sampleSync(logits, { out: zeros('int32', [3]) }), () => sample(logits, { out: zeros('int32', [3]) }), RangeError, RE[0], ['out.dims', '[2]', '[3]']],
  ['sample: topK -1', () => sampleSync(logits, { topK: -1 }), () => sample(logits, { topK: -1 }), RangeError, RE[0], ['topK', '-1']],
  ['sample: topK 1.5', () => sampleSync(logits, { topK: 1.5 }), () => sample(logits, { topK: 1.5 }), TypeError, TE[0], ['topK', '1.5']],
  ['sample: minP 2', () => sampleSync(logits, { minP: 2 }), () => sample(logits, { minP: 2 }), RangeError, RE[0], ['minP', '2']],
  ['sample: repetitionPenalty 0', () => sampleSync(logits, { repetitionPenalty: 0 }), () => sample(logits, { repetitionPenalty: 0 }), RangeError, RE[0], ['repetitionPenalty', '0']],
  ['sample: presencePenalty NaN', () => sampleSync(logits, { presencePenalty: NaN }), () => sample(logits, { presencePenalty: NaN }), TypeError, TE[0], ['presencePenalty', 'NaN']],
  ['sample: a penalty token past V', () => sampleSync(logits, { penaltyTokens: [1, 2] }), () => sample(logits, { penaltyTokens: [1, 2] }), RangeError, RE[0], ['penaltyTokens[1]', '[0, 2)', '2']],
  ['sample: penaltyTokens a string', () => sampleSync(logits, { penaltyTokens: 'ab' as never }), () => sample(logits, { penaltyTokens: 'ab' as never }), TypeError, TE[0], ['penaltyTokens', '"ab"']],
  ['sample: rows with a top-level temperature', () => sampleSync(logits, { rows: [{}, {}], temperature: 1 }), () => sample(logits, { rows: [{}, {}], temperature: 1 }), TypeError, TE[0], ['options.temperature', 'options.rows']],
  ['sample: rows of the wrong length', () => sampleSync(logits, { rows: [{}] }), () => sample(logits, { rows: [{}] }), RangeError, RE[0], ['options.rows.length', '1', '2']],
  ['sample: rows not an array', () => sampleSync(logits, { rows: {} as never }), () => sample(logits, { rows: {} as never }), TypeError, TE[0], ['options.rows', 'array']],
  ['sample: a row with a bad topP', () => sampleSync(logits, { rows: [{}, { topP: 2 }] }), () => sample(logits, { rows: [{}, { topP: 2 }] }), RangeError, RE[0], ['options.rows[1].topP', '2']],
  ['sample: a row with an unknown key', () => sampleSync(logits, { rows: [{ tempreature: 1 } as never, {}] }), () => sample(logits, { rows: [{ tempreature: 1 } as never, {}] }), TypeError, TE[0], ['options.rows[0].tempreature']],
  ['sample: a row\'s penalty token', () => sampleSync(logits, { rows: [{}, { penaltyTokens: [-1] }] }), () => sample(logits, { rows: [{}, { penaltyTokens: [-1] }] }), RangeError, RE[0], ['options.rows[1].penaltyTokens[0]', '-1']],
  ['sample: out float32', () => sampleSync(logits, { out: zeros('float32', [2]) as never }), () => sample(logits, { out: zeros('float32', [2]) as never }), TypeError, TE[0], ['out.type', '"float32"']],
];

const errors = suite('model ops: bad inputs');
for (const [name, sync, async, cls, code, parts] of rows) errors(name, () => runCase({ name, sync, async, cls, code, parts } as Case));

errors('KvCache: bad init', async () => {
  const make = (init: unknown, opts?: unknown) => () => new KvCache(init as never, opts as never);
  await runCase({ name: 'maxSeq 0', sync: make({ maxSeq: 0, numKvHeads: 1, headDim: 8 }), cls: RangeError, code: RE[0], parts: ['maxSeq', '0'] });
  await runCase({ name: 'headDim missing', sync: make({ maxSeq: 4, numKvHeads: 1 }), cls: TypeError, code: TE[0], parts: ['headDim', 'undefined'] });
  await runCase({ name: 'numKvHeads 1.5', sync: make({ maxSeq: 4, numKvHeads: 1.5, headDim: 8 }), cls: TypeError, code: TE[0], parts: ['numKvHeads', '1.5'] });
  await runCase({ name: 'type int32', sync: make({ maxSeq: 4, numKvHeads: 1, headDim: 8, type: 'int32' }), cls: TypeError, code: TE[0], parts: ['type', '"int32"'] });
  await runCase({ name: 'maxSeq 2^30', sync: make({ maxSeq: 2 ** 30, numKvHeads: 1, headDim: 8 }), cls: RangeError, code: RE[0], parts: ['maxSeq', String(2 ** 30)] });
  await runCase({ name: 'init null', sync: make(null), cls: TypeError, code: TE[0], parts: ['init', 'null'] });
  await runCase({ name: 'backend cuda', sync: make({ maxSeq: 4, numKvHeads: 1, headDim: 8 }, { backend: 'cuda' }), cls: MoeError, code: 'ERR_BACKEND_UNAVAILABLE', parts: ['cuda'] });
  await runCase({ name: 'truncate past the length', sync: () => cache.truncate(1), cls: RangeError, code: RE[0], parts: ['length', '1'] });
});

errors('disposed Linear and KvCache: ERR_DISPOSED; a sync call during an async one: ERR_BUSY', async () => {
  const l = Linear.packSync(ft([3, d]));
  l.dispose();
  await runCase({ name: 'Linear.forward', sync: () => l.forwardSync(x), async: () => l.forward(x), cls: MoeError, code: 'ERR_DISPOSED', parts: ['disposed'] });
  const c = new KvCache({ maxSeq: 4, numKvHeads: 2, headDim: 8 });
  c.dispose();
  await runCase({ name: 'attention on a disposed cache', sync: () => attentionSync(q, k, v, c), async: () => attention(q, k, v, c), cls: MoeError, code: 'ERR_DISPOSED', parts: ['disposed'] });
  await runCase({ name: 'KvCache.length', sync: () => c.length, cls: MoeError, code: 'ERR_DISPOSED', parts: ['disposed'] });
  const busy = new KvCache({ maxSeq: 4096, numKvHeads: 2, headDim: 64 });
  const big = [ft([2048, 8, 64]), ft([2048, 2, 64], 2), ft([2048, 2, 64], 3)];
  const pending = attention(big[0], big[1], big[2], busy);
  await runCase({ name: 'sync during async', sync: () => attentionSync(ft([1, 8, 64]), ft([1, 2, 64]), ft([1, 2, 64]), busy), cls: MoeError, code: 'ERR_BUSY', parts: ['async'] });
  await pending;
  assert.is(busy.length, 2048);
  attentionSync(ft([1, 8, 64]), ft([1, 2, 64]), ft([1, 2, 64]), busy); // fine once it finished
  assert.is(busy.length, 2049);
  busy.dispose();
  assert.is(cache.length, 0, 'failed calls left the shared cache untouched');
});

// ---- thread counts and the portable kernels ---------------------------------------------------------

const child = suite('model ops in child processes');
const runChild = (mode: string, env: Record<string, string>) => runChildScript('child-model-ops.ts', mode, env);

child('MOE_NUM_THREADS=1 and 3 give the same bits as the default thread count', () => {
  const parent = modelOpsBits();
  for (const n of ['1', '3']) {
    const out = runChild('bits', { MOE_NUM_THREADS: n });
    assert.is(out.threads, Number(n));
    assert.is(out.kernel, backendInfo().cpu.kernel);
    assert.is(out.bits.length, parent.length);
    parent.forEach((b, i) => assert.ok(out.bits[i] === b, `output ${i}: ${n} thread(s) and ${backendInfo().cpu.threads} give different bits`));
  }
});

child('MOE_CPU_KERNEL=portable: Linear and attention match the float64 reference', () => {
  const out = runChild('reference', { MOE_CPU_KERNEL: 'portable' });
  assert.is(out.kernel, 'portable');
  assert.ok(out.checks >= 18, `only ${out.checks} checks ran`);
});

errors.run();
child.run();
