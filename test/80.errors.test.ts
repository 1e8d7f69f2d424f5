/**
 * Bad inputs: each must throw (Sync forms, constructors) or reject (Promise forms) with the
 * expected error class and code, and a message that names the argument and contains the bad value.
 * The Promise forms never throw synchronously: argument errors arrive as rejections, with the
 * same class, code and message as the Sync form. Nothing here may crash the process.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import {
  availableBackends,
  combine,
  combineSync,
  DenseFfn,
  denseFfnForward,
  ExpertWeights,
  groupedGemm,
  groupedGemmSync,
  MoeError,
  MoeLayer,
  moeForward,
  permute,
  permuteSync,
  route,
  routeSync,
  tensor,
  type Tensor,
} from '../lib/index';
import { RE, runCase, TE, type Case, type Cls } from './helpers/error-cases';
import { f32, i32 } from './helpers/problems';
import { randn } from './helpers/reference';

// A device backend this process cannot run ('cuda' unless a GPU is there), for the unavailable-backend cases.
const NO_BACKEND = availableBackends().includes('cuda') ? 'cuda-emu' : 'cuda';
const EMU_LOADED = availableBackends().includes('cuda-emu');

// ---- fixtures ------------------------------------------------------------------------------------------

const d = 4, f = 6, E = 3, T = 2;
const ft = (dims: number[], seed = 1, type: 'float32' | 'float16' | 'bfloat16' = 'float32') =>
  tensor(type, randn(dims.reduce((a, b) => a * b, 1), seed, 0.3), dims) as Tensor;
const good = () => ({ gate: ft([E, d], 1), w1: ft([E, f, d], 2), w3: ft([E, f, d], 3), w2: ft([E, d, f], 4) });
const goodExperts = () => ({ w1: ft([E, f, d], 2), w3: ft([E, f, d], 3), w2: ft([E, d, f], 4) });
const x = ft([T, d], 5);
const raw = (type: string, data: unknown, dims: unknown) => ({ type, data, dims }) as unknown as Tensor;
const layer = new MoeLayer(good(), { topK: 2 });
const experts = ExpertWeights.packSync(goodExperts());
const denseW = () => ({ w1: ft([f, d], 2), w3: ft([f, d], 3), w2: ft([d, f], 4) });
const dense = new DenseFfn(denseW());

/** Cases on the weights: the sync constructor, MoeLayer.create, moeForward and ExpertWeights.pack. */
function weightCases(name: string, mutate: (w: ReturnType<typeof good>) => unknown, cls: Cls, code: string, parts: string[], expertsToo = true): Case[] {
  const w = () => {
    const g = good();
    const m = mutate(g);
    return (m === undefined ? g : m) as ReturnType<typeof good>;
  };
  const out: Case[] = [
    { name: `MoeLayer: ${name}`, sync: () => new MoeLayer(w(), { topK: 2 }), async: () => MoeLayer.create(w(), { topK: 2 }), cls, code, parts },
    { name: `moeForward: ${name}`, async: () => moeForward(x, w(), { topK: 2 }), cls, code, parts },
  ];
  if (expertsToo)
    out.push({ name: `ExpertWeights: ${name}`, sync: () => ExpertWeights.packSync(w()), async: () => ExpertWeights.pack(w()), cls, code, parts });
  return out;
}

const table: Case[] = [
  // ---- weights --------------------------------------------------------------------------------------
  ...weightCases('weights null', () => null, TypeError, TE[0], ['weights', 'null']),
  ...weightCases('missing w1', (w) => ({ ...w, w1: undefined }), TypeError, TE[0], ['w1', 'undefined']),
  ...weightCases('missing w3', (w) => ({ ...w, w3: undefined }), TypeError, TE[0], ['w3', 'undefined']),
  ...weightCases('missing w2', (w) => ({ ...w, w2: null }), TypeError, TE[0], ['w2', 'null']),
  ...weightCases('missing gate', (w) => ({ ...w, gate: undefined }), TypeError, TE[0], ['gate', 'undefined'], false),
  ...weightCases('w1 of rank 2', (w) => ({ ...w, w1: ft([f, d]) }), RangeError, RE[0], ['w1.dims', '3', `[${f},${d}]`]),
  ...weightCases('w2 of rank 4', (w) => ({ ...w, w2: ft([E, d, f, 1]) }), RangeError, RE[0], ['w2.dims', `[${E},${d},${f},1]`]),
  ...weightCases('w1 float32, w3 bfloat16', (w) => ({ ...w, w3: ft([E, f, d], 3, 'bfloat16') }), TypeError, TE[0], ['w1', 'w3', "'float32'", "'bfloat16'"]),
  ...weightCases('w2 float16, others float32', (w) => ({ ...w, w2: ft([E, d, f], 4, 'float16') }), TypeError, TE[0], ['w2', "'float16'"]),
  ...weightCases('w3 with another f', (w) => ({ ...w, w3: ft([E, f + 1, d]) }), RangeError, RE[0], ['w3', String(f + 1), String(f)]),
  ...weightCases('w2 with another d', (w) => ({ ...w, w2: ft([E, d + 2, f]) }), RangeError, RE[0], ['w2', String(d + 2), String(d)]),
  ...weightCases('w2 with another expert count', (w) => ({ ...w, w2: ft([E + 1, d, f]) }), RangeError, RE[0], ['w2', String(E + 1), String(E)]),
  ...weightCases('w1 data shorter than dims', (w) => ({ ...w, w1: raw('float32', new Float32Array(E * f * d - 1), [E, f, d]) }), RangeError, RE[0], ['w1.data', String(E * f * d - 1), String(E * f * d)]),
  ...weightCases('w1 non-integer dims', (w) => ({ ...w, w1: raw('float32', new Float32Array(E * f * d), [E, 1.5, d]) }), TypeError, TE[0], ['w1.dims', '1.5']),
  ...weightCases('w1 negative dims', (w) => ({ ...w, w1: raw('float32', new Float32Array(0), [E, -6, d]) }), RangeError, RE[0], ['w1.dims', '-6']),
  ...weightCases('w1 Float32Array data with type bfloat16', (w) => ({ ...w, w1: raw('bfloat16', new Float32Array(E * f * d), [E, f, d]) }), TypeError, TE[0], ['w1.data', 'Uint16Array', 'Float32Array', "'bfloat16'"]),
  ...weightCases('w1 Uint16Array data with type float32', (w) => ({ ...w, w1: raw('float32', new Uint16Array(E * f * d), [E, f, d]) }), TypeError, TE[0], ['w1.data', 'Float32Array', 'Uint16Array']),
  ...weightCases('w1 unknown type string', (w) => ({ ...w, w1: raw('float64', new Float32Array(E * f * d), [E, f, d]) }), TypeError, TE[0], ['w1.type', '"float64"']),
  ...weightCases('w1 of type int32', (w) => ({ ...w, w1: raw('int32', new Int32Array(E * f * d), [E, f, d]) }), TypeError, TE[0], ['w1.type', '"int32"']),
  ...weightCases('w1 a bare Float32Array', (w) => ({ ...w, w1: new Float32Array(E * f * d) }), TypeError, TE[0], ['w1', 'Float32Array']),
  ...weightCases('w1 an empty expert array', (w) => ({ ...w, w1: [] }), RangeError, RE[0], ['w1', '[]']),
  ...weightCases('w1 expert arrays of different shapes', (w) => ({ ...w, w1: [ft([f, d]), ft([f, d + 1]), ft([f, d])] }), RangeError, RE[0], ['w1[1]', `[${f},${d + 1}]`]),
  ...weightCases('d = 0', (w) => ({ ...w, w1: ft([E, f, 0]), w3: ft([E, f, 0]), w2: ft([E, 0, f]) }), RangeError, RE[0], ['d=0']),
  ...weightCases('gate dims not [E,d]', (w) => ({ ...w, gate: ft([E, d + 1]) }), RangeError, RE[0], ['gate', `[${E},${d + 1}]`, `[${E},${d}]`], false),
  ...weightCases('gate with one expert too many', (w) => ({ ...w, gate: ft([E + 1, d]) }), RangeError, RE[0], ['gate', `[${E + 1},${d}]`], false),
  ...weightCases('gate of type int32', (w) => ({ ...w, gate: raw('int32', new Int32Array(E * d), [E, d]) }), TypeError, TE[0], ['gate', '"int32"'], false),
  ...weightCases('gate data length not matching dims', (w) => ({ ...w, gate: raw('float32', new Float32Array(5), [E, d]) }), RangeError, RE[0], ['gate', '5', String(E * d)], false),
  ...weightCases('gate a plain array', (w) => ({ ...w, gate: [1, 2, 3] }), TypeError, TE[0], ['gate'], false),

  // ---- layer options ------------------------------------------------------------------------------------
  ...(
    [
      ['topK 0', { topK: 0 }, RangeError, RE[0], ['topK', '0']],
      ['topK > E', { topK: E + 1 }, RangeError, RE[0], ['topK', String(E + 1)]],
      ['topK 1.5', { topK: 1.5 }, TypeError, TE[0], ['topK', '1.5']],
      ['topK NaN', { topK: NaN }, TypeError, TE[0], ['topK', 'NaN']],
      ['topK "2"', { topK: '2' }, TypeError, TE[0], ['topK', '"2"']],
      ['normalize "yes"', { normalize: 'yes' }, TypeError, TE[0], ['normalize', '"yes"']],
      ['options a number', 5, TypeError, TE[0], ['options', '5']],
      ["backend 'gpu'", { backend: 'gpu' }, TypeError, TE[0], ['backend', '"gpu"']],
      [`backend '${NO_BACKEND}' (not in this process)`, { backend: NO_BACKEND }, MoeError, 'ERR_BACKEND_UNAVAILABLE', [NO_BACKEND]],
      ...(EMU_LOADED ? [] : [["backend 'cuda-emu' outside the test build", { backend: 'cuda-emu' }, MoeError, 'ERR_BACKEND_UNAVAILABLE', ['cuda-emu', 'MOE_CUDA_EMU=1']]]),
    ] as [string, unknown, Cls, string, string[]][]
  ).flatMap(([name, opts, cls, code, parts]): Case[] => [
    { name: `MoeLayer options: ${name}`, sync: () => new MoeLayer(good(), opts as never), async: () => MoeLayer.create(good(), opts as never), cls, code, parts },
    { name: `moeForward options: ${name}`, async: () => moeForward(x, good(), opts as never), cls, code, parts },
  ]),
  { name: `ExpertWeights: backend ${NO_BACKEND}`, sync: () => ExpertWeights.packSync(goodExperts(), { backend: NO_BACKEND }), async: () => ExpertWeights.pack(goodExperts(), { backend: NO_BACKEND }), cls: MoeError, code: 'ERR_BACKEND_UNAVAILABLE', parts: [NO_BACKEND] },
  { name: `DenseFfn: backend ${NO_BACKEND}`, sync: () => new DenseFfn(denseW(), { backend: NO_BACKEND }), async: () => DenseFfn.create(denseW(), { backend: NO_BACKEND }), cls: MoeError, code: 'ERR_BACKEND_UNAVAILABLE', parts: [NO_BACKEND] },
  { name: 'moeForward with a layer: topK differs', async: () => moeForward(x, layer, { topK: 1 }), cls: RangeError, code: RE[0], parts: ['topK', '1', '2'] },
  { name: 'moeForward with a layer: normalize differs', async: () => moeForward(x, layer, { normalize: false }), cls: RangeError, code: RE[0], parts: ['normalize', 'false'] },

  // ---- forward inputs -------------------------------------------------------------------------------------
  ...(
    [
      ['x with the wrong d', ft([T, d + 1]), RangeError, RE[0], ['x.dims[1]', String(d + 1), String(d)]],
      ['x of rank 1', ft([T * d]), RangeError, RE[0], ['x.dims', `[${T * d}]`]],
      ['x of rank 3', ft([1, T, d]), RangeError, RE[0], ['x.dims', `[1,${T},${d}]`]],
      ['x of type int32', raw('int32', new Int32Array(T * d), [T, d]), TypeError, TE[0], ['x.type', '"int32"']],
      ['x a bare Float32Array', new Float32Array(T * d), TypeError, TE[0], ['x', 'Float32Array']],
      ['x null', null, TypeError, TE[0], ['x', 'null']],
      ['x data length not matching dims', raw('float32', new Float32Array(T * d + 1), [T, d]), RangeError, RE[0], ['x.data', String(T * d + 1), String(T * d)]],
      ['x non-integer dims', raw('float32', new Float32Array(T * d), [T, 4.5]), TypeError, TE[0], ['x.dims', '4.5']],
      ['x negative dims', raw('float32', new Float32Array(0), [-2, d]), RangeError, RE[0], ['x.dims', '-2']],
      ['x Float32Array data with type float16', raw('float16', new Float32Array(T * d), [T, d]), TypeError, TE[0], ['x.data', 'Uint16Array', 'Float32Array']],
      ['x dims a string', raw('float32', new Float32Array(T * d), '2,4'), TypeError, TE[0], ['x.dims', '"2,4"']],
    ] as [string, unknown, Cls, string, string[]][]
  ).flatMap(([name, bad, cls, code, parts]): Case[] => [
    { name: `forward: ${name}`, sync: () => layer.forwardSync(bad as Tensor), async: () => layer.forward(bad as Tensor), cls, code, parts },
    { name: `DenseFfn.forward: ${name}`, sync: () => dense.forwardSync(bad as Tensor), async: () => dense.forward(bad as Tensor), cls, code, parts },
  ]),
  { name: 'forward: returnRouting "yes"', sync: () => layer.forwardSync(x, { returnRouting: 'yes' as never }), async: () => layer.forward(x, { returnRouting: 'yes' as never }), cls: TypeError, code: TE[0], parts: ['returnRouting', '"yes"'] },
  { name: 'forward: options a string', sync: () => layer.forwardSync(x, 'fast' as never), async: () => layer.forward(x, 'fast' as never), cls: TypeError, code: TE[0], parts: ['options', '"fast"'] },
  { name: 'DenseFfn: w1 an array', sync: () => new DenseFfn({ ...denseW(), w1: [ft([f, d])] as never }), async: () => denseFfnForward(x, { ...denseW(), w1: [ft([f, d])] as never }), cls: TypeError, code: TE[0], parts: ['w1', 'array'] },
  { name: 'DenseFfn: w2 with another d', sync: () => new DenseFfn({ ...denseW(), w2: ft([d + 1, f]) }), async: () => DenseFfn.create({ ...denseW(), w2: ft([d + 1, f]) }), cls: RangeError, code: RE[0], parts: ['w2', String(d + 1), String(d)] },
  { name: 'DenseFfn: missing w3', sync: () => new DenseFfn({ ...denseW(), w3: undefined as never }), async: () => DenseFfn.create({ ...denseW(), w3: undefined as never }), cls: TypeError, code: TE[0], parts: ['w3', 'undefined'] },

  // ---- route ----------------------------------------------------------------------------------------------
  ...(
    [
      ['topK 0', ft([T, d]), ft([E, d]), { topK: 0 }, RangeError, RE[0], ['topK', '0']],
      ['topK > E', ft([T, d]), ft([E, d]), { topK: E + 1 }, RangeError, RE[0], ['topK', String(E + 1), String(E)]],
      ['topK 1.5', ft([T, d]), ft([E, d]), { topK: 1.5 }, TypeError, TE[0], ['topK', '1.5']],
      ['topK NaN', ft([T, d]), ft([E, d]), { topK: NaN }, TypeError, TE[0], ['topK', 'NaN']],
      ['topK "2"', ft([T, d]), ft([E, d]), { topK: '2' }, TypeError, TE[0], ['topK', '"2"']],
      ['topK Infinity', ft([T, d]), ft([E, d]), { topK: Infinity }, TypeError, TE[0], ['topK', 'Infinity']],
      ['normalize 1', ft([T, d]), ft([E, d]), { normalize: 1 }, TypeError, TE[0], ['normalize', '1']],
      ['returnLogits "no"', ft([T, d]), ft([E, d]), { returnLogits: 'no' }, TypeError, TE[0], ['returnLogits', '"no"']],
      ["backend 'gpu'", ft([T, d]), ft([E, d]), { backend: 'gpu' }, TypeError, TE[0], ['backend', '"gpu"']],
      [`backend '${NO_BACKEND}'`, ft([T, d]), ft([E, d]), { backend: NO_BACKEND }, MoeError, 'ERR_BACKEND_UNAVAILABLE', [NO_BACKEND]],
      ['gate dims[1] not d', ft([T, d]), ft([E, d + 1]), {}, RangeError, RE[0], ['gate.dims[1]', String(d + 1), 'x.dims[1]', String(d)]],
      ['gate with no experts', ft([T, d]), raw('float32', new Float32Array(0), [0, d]), { topK: 1 }, RangeError, RE[0], ['gate', `[0,${d}]`]],
      ['gate of rank 3', ft([T, d]), ft([1, E, d]), {}, RangeError, RE[0], ['gate.dims', `[1,${E},${d}]`]],
      ['x of type int32', raw('int32', new Int32Array(T * d), [T, d]), ft([E, d]), {}, TypeError, TE[0], ['x.type', '"int32"']],
      ['gate Float32Array with type bfloat16', ft([T, d]), raw('bfloat16', new Float32Array(E * d), [E, d]), {}, TypeError, TE[0], ['gate.data', 'Float32Array']],
    ] as [string, Tensor, Tensor, unknown, Cls, string, string[]][]
  ).map(([name, xx, g, opts, cls, code, parts]): Case => ({
    name: `route: ${name}`, sync: () => routeSync(xx, g, opts as never), async: () => route(xx, g, opts as never), cls, code, parts,
  })),

  // ---- permute --------------------------------------------------------------------------------------------
  ...(
    [
      ['an id equal to numExperts', i32([0, 1, 2, E], [2, 2]), E, undefined, RangeError, RE[0], ['topkIds', `${E}`, `[0, ${E})`]],
      ['a negative id other than -1 (no expert)', i32([0, -2, 2, 1], [2, 2]), E, undefined, RangeError, RE[0], ['topkIds', '-2']],
      ['numExperts 0', i32([0, 0], [2, 1]), 0, undefined, RangeError, RE[0], ['numExperts', '0']],
      ['numExperts 2.5', i32([0, 0], [2, 1]), 2.5, undefined, TypeError, TE[0], ['numExperts', '2.5']],
      ['numExperts "3"', i32([0, 0], [2, 1]), '3', undefined, TypeError, TE[0], ['numExperts', '"3"']],
      ['capacity -1', i32([0, 0], [2, 1]), E, { capacity: -1 }, RangeError, RE[0], ['capacity', '-1']],
      ['capacity 1.5', i32([0, 0], [2, 1]), E, { capacity: 1.5 }, TypeError, TE[0], ['capacity', '1.5']],
      ['topkIds float32', f32([0, 1], [2, 1]), E, undefined, TypeError, TE[0], ['topkIds.type', '"float32"']],
      ['topkIds of rank 1', i32([0, 1], [2]), E, undefined, RangeError, RE[0], ['topkIds.dims', '[2]']],
      ['topkIds with k = 0', i32([], [2, 0]), E, undefined, RangeError, RE[0], ['topkIds.dims[1]', '0']],
      ['topkIds Float32Array with type int32', raw('int32', new Float32Array(2), [2, 1]), E, undefined, TypeError, TE[0], ['topkIds.data', 'Int32Array', 'Float32Array']],
    ] as [string, Tensor<'int32'>, number, unknown, Cls, string, string[]][]
  ).map(([name, ids, nE, opts, cls, code, parts]): Case => ({
    name: `permute: ${name}`, sync: () => permuteSync(ids, nE, opts as never), async: () => permute(ids, nE, opts as never), cls, code, parts,
  })),

  // ---- groupedGemm ----------------------------------------------------------------------------------------
  ...(
    [
      ['offsets non-monotonic', ft([T, d]), i32([0, 1, 0, 1], [4]), i32([0, 3, 1, 4], [E + 1]), experts, RangeError, RE[0], ['expertOffsets', 'non-decreasing', '1', '3']],
      ['offsets not starting at 0', ft([T, d]), i32([0, 1, 0, 1], [4]), i32([1, 2, 3, 4], [E + 1]), experts, RangeError, RE[0], ['expertOffsets', '1']],
      ['offsets past sortedRows', ft([T, d]), i32([0, 1, 0, 1], [4]), i32([0, 2, 4, 6], [E + 1]), experts, RangeError, RE[0], ['expertOffsets', '6', 'sortedRows', '4']],
      ['offsets of the wrong length', ft([T, d]), i32([0, 1, 0, 1], [4]), i32([0, 2, 4], [E]), experts, RangeError, RE[0], ['expertOffsets.dims[0]', String(E), String(E + 1)]],
      ['sortedRows past T', ft([T, d]), i32([0, 1, T, 1], [4]), i32([0, 2, 3, 4], [E + 1]), experts, RangeError, RE[0], ['sortedRows', String(T), `[0, ${T})`]],
      ['sortedRows negative', ft([T, d]), i32([0, -1, 0, 1], [4]), i32([0, 2, 3, 4], [E + 1]), experts, RangeError, RE[0], ['sortedRows', '-1']],
      ['x with the wrong d', ft([T, d + 1]), i32([0, 1, 0, 1], [4]), i32([0, 2, 3, 4], [E + 1]), experts, RangeError, RE[0], ['x.dims[1]', String(d + 1), String(d)]],
      ['sortedRows float32', ft([T, d]), f32([0, 1, 0, 1], [4]), i32([0, 2, 3, 4], [E + 1]), experts, TypeError, TE[0], ['sortedRows.type', '"float32"']],
      ['experts a plain object', ft([T, d]), i32([0, 1, 0, 1], [4]), i32([0, 2, 3, 4], [E + 1]), goodExperts(), TypeError, TE[0], ['experts', 'an object']],
      ['experts a layer', ft([T, d]), i32([0, 1, 0, 1], [4]), i32([0, 2, 3, 4], [E + 1]), layer, TypeError, TE[0], ['experts']],
    ] as [string, Tensor, Tensor<'int32'>, Tensor<'int32'>, ExpertWeights, Cls, string, string[]][]
  ).map(([name, xx, rows, off, w, cls, code, parts]): Case => ({
    name: `groupedGemm: ${name}`, sync: () => groupedGemmSync(xx, rows, off, w), async: () => groupedGemm(xx, rows, off, w), cls, code, parts,
  })),

  // ---- combine --------------------------------------------------------------------------------------------
  ...(
    [
      ['rowOf past the rows of y', ft([4, d]), i32([0, 4], [1, 2]), f32([0.5, 0.5], [1, 2]), undefined, RangeError, RE[0], ['rowOf', '4', '[0, 4)']],
      ['rowOf below -1', ft([4, d]), i32([0, -2], [1, 2]), f32([0.5, 0.5], [1, 2]), undefined, RangeError, RE[0], ['rowOf', '-2']],
      ['topkWeights of another T', ft([4, d]), i32([0, 1], [1, 2]), f32([0.5, 0.5, 1, 1], [2, 2]), undefined, RangeError, RE[0], ['topkWeights.dims[0]', '2', 'rowOf.dims[0]', '1']],
      ['topkWeights of another k', ft([4, d]), i32([0, 1], [1, 2]), f32([0.5, 0.5, 1], [1, 3]), undefined, RangeError, RE[0], ['topkWeights.dims[1]', '3', '2']],
      ['y of type bfloat16', ft([4, d], 1, 'bfloat16'), i32([0, 1], [1, 2]), f32([0.5, 0.5], [1, 2]), undefined, TypeError, TE[0], ['y.type', '"bfloat16"']],
      ['y of rank 1', ft([4 * d]), i32([0, 1], [1, 2]), f32([0.5, 0.5], [1, 2]), undefined, RangeError, RE[0], ['y.dims', `[${4 * d}]`]],
      ['outType int32', ft([4, d]), i32([0, 1], [1, 2]), f32([0.5, 0.5], [1, 2]), { outType: 'int32' }, TypeError, TE[0], ['outType', '"int32"']],
      ['outType "half"', ft([4, d]), i32([0, 1], [1, 2]), f32([0.5, 0.5], [1, 2]), { outType: 'half' }, TypeError, TE[0], ['outType', '"half"']],
    ] as [string, Tensor<'float32'>, Tensor<'int32'>, Tensor<'float32'>, unknown, Cls, string, string[]][]
  ).map(([name, y, rowOf, w, opts, cls, code, parts]): Case => ({
    name: `combine: ${name}`, sync: () => combineSync(y, rowOf, w, opts as never), async: () => combine(y, rowOf, w, opts as never), cls, code, parts,
  })),
];

const errors = suite('bad inputs: error class, code and message');
for (const c of table) errors(c.name, () => runCase(c));

const disposed = suite('disposed objects: ERR_DISPOSED');

disposed('MoeLayer, ExpertWeights and DenseFfn after dispose', async () => {
  const l = new MoeLayer(good());
  l.dispose();
  await runCase({ name: 'MoeLayer.forward', sync: () => l.forwardSync(x), async: () => l.forward(x), cls: MoeError, code: 'ERR_DISPOSED', parts: ['disposed'] });
  await runCase({ name: 'moeForward with a disposed layer', async: () => moeForward(x, l), cls: MoeError, code: 'ERR_DISPOSED', parts: ['disposed'] });
  const w = ExpertWeights.packSync(goodExperts());
  w.dispose();
  assert.is(w.disposed, true);
  const rows = i32([0, 1, 0, 1], [4]);
  const off = i32([0, 2, 3, 4], [E + 1]);
  await runCase({ name: 'groupedGemm with disposed experts', sync: () => groupedGemmSync(x, rows, off, w), async: () => groupedGemm(x, rows, off, w), cls: MoeError, code: 'ERR_DISPOSED', parts: ['experts', 'disposed'] });
  const dn = new DenseFfn(denseW());
  dn.dispose();
  await runCase({ name: 'DenseFfn.forward', sync: () => dn.forwardSync(x), async: () => dn.forward(x), cls: MoeError, code: 'ERR_DISPOSED', parts: ['disposed'] });
  await runCase({ name: 'denseFfnForward with a disposed DenseFfn', async: () => denseFfnForward(x, dn), cls: MoeError, code: 'ERR_DISPOSED', parts: ['disposed'] });
});

disposed('MoeError is an Error with name and code', () => {
  const e = new MoeError('m', 'ERR_X');
  assert.ok(e instanceof Error);
  assert.is(e.name, 'MoeError');
  assert.is(e.code, 'ERR_X');
  assert.is(e.message, 'm');
});

const survive = suite('the process survives bad inputs');

survive('the objects used above still work after all the errors', async () => {
  const out = await layer.forward(x);
  assert.equal([...out.output.dims], [T, d]);
  assert.ok(Array.from(out.output.data).every(Number.isFinite));
  const y = groupedGemmSync(x, i32([0, 1, 0, 1], [4]), i32([0, 2, 3, 4], [E + 1]), experts);
  assert.equal([...y.dims], [4, d]);
  assert.equal([...dense.forwardSync(x).dims], [T, d]);
});

survive('huge dims are rejected, not allocated', async () => {
  await runCase({
    name: 'x with 2^31 rows',
    sync: () => layer.forwardSync(raw('float32', new Float32Array(8), [2 ** 31, d])),
    cls: RangeError, code: RE[0], parts: ['x.dims', String(2 ** 31)],
  });
  await runCase({
    name: 'permute numExperts 2^20',
    sync: () => permuteSync(i32([0, 0], [2, 1]), 2 ** 20),
    cls: RangeError, code: RE[0], parts: ['numExperts', String(2 ** 20)],
  });
});

errors.run();
disposed.run();
survive.run();
