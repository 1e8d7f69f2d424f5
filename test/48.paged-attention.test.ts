/**
 * The paged KV pool (lib/model/primitives.ts KvPool, pagedAttention) on every backend this process has:
 * three sequences of different lengths in shuffled blocks of one pool, their prefill chunks and decode
 * steps mixed in batches; every token's output equals, bit for bit, `attention` over a KvCache that
 * holds its sequence alone (so a request decodes the same alone or among others), and the float64
 * reference within the tolerance of the cache type. Then the errors: tables, positions, duplicates.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { attentionSync, availableBackends, DeviceTensor, KvCache, KvPool, pagedAttention, pagedAttentionSync, tensor, type FloatType, type ResolvedBackend, type Tensor } from '../lib/index';
import { i32 } from './helpers/problems';
import { assertSameTensor, randn } from './helpers/reference';

const BACKENDS = availableBackends() as ResolvedBackend[];
const rt = (n: number, seed: number, dims: number[]) => tensor('float32', randn(n, seed, 1.5), dims) as Tensor;

/** Rows [from, from + n) of a [L, H, hd] tensor. */
function rows(t: Tensor, from: number, n: number): Tensor {
  const per = t.dims[1] * t.dims[2];
  return { type: t.type, data: (t.data as Float32Array).slice(from * per, (from + n) * per), dims: [n, t.dims[1], t.dims[2]] } as Tensor;
}
/** The rows of the given (tensor, row) pairs, stacked. */
function gather(parts: [Tensor, number][]): Tensor {
  const [first] = parts[0];
  const per = first.dims[1] * first.dims[2];
  const data = new Float32Array(parts.length * per);
  parts.forEach(([t, r], i) => data.set((t.data as Float32Array).subarray(r * per, (r + 1) * per), i * per));
  return { type: 'float32', data, dims: [parts.length, first.dims[1], first.dims[2]] } as Tensor;
}

for (const backend of BACKENDS) {
  const s = suite(`${backend}: paged attention`);
  const device = backend !== 'cpu';
  const place = async (t: Tensor) => (device ? DeviceTensor.from(t, { backend }) : t);
  const host = async (t: unknown) => (device ? (t as DeviceTensor).toHost() : (t as Tensor));

  for (const [type, window] of [['float32', 0], ['bfloat16', 0], ['float32', 40]] as [FloatType, number][])
    s(`three sequences, prefill chunks and decode steps mixed: the bits of a KvCache per sequence (${type}, window ${window})`, async () => {
      const Hq = 4, Hkv = 2, hd = 64, B = 16;
      const lens = [150, 23, 64];
      const maxBlocks = Math.max(...lens.map((L) => Math.ceil(L / B)));
      const numBlocks = lens.reduce((a, L) => a + Math.ceil(L / B), 0) + 2;
      // shuffled blocks
      const perm = Array.from({ length: numBlocks }, (_, i) => i);
      const r = randn(numBlocks, 4801);
      perm.sort((a, b) => r[a] - r[b]);
      const tables = new Int32Array(lens.length * maxBlocks).fill(-1);
      let next = 0;
      lens.forEach((L, sq) => {
        for (let b = 0; b < Math.ceil(L / B); b++) tables[sq * maxBlocks + b] = perm[next++];
      });
      const blockTables = i32(tables, [lens.length, maxBlocks]);
      const q = lens.map((L, sq) => rt(L * Hq * hd, 4810 + sq, [L, Hq, hd]));
      const k = lens.map((L, sq) => rt(L * Hkv * hd, 4820 + sq, [L, Hkv, hd]));
      const v = lens.map((L, sq) => rt(L * Hkv * hd, 4830 + sq, [L, Hkv, hd]));
      // the reference: each sequence alone in its own KvCache, in one pass
      const want: Tensor[] = [];
      for (let sq = 0; sq < lens.length; sq++) {
        const cache = new KvCache({ maxSeq: lens[sq], numKvHeads: Hkv, headDim: hd, type }, { backend });
        want.push(await host(attentionSync(await place(q[sq]), await place(k[sq]), await place(v[sq]), cache, { slidingWindow: window })));
        cache.dispose();
      }
      // batches: sequence 0 prefills in chunks of 40 while 1 and 2 decode one token per step after a first chunk
      const pool = new KvPool({ numBlocks, blockSize: B, numKvHeads: Hkv, headDim: hd, type }, { backend });
      const done = lens.map(() => 0);
      while (done.some((d, sq) => d < lens[sq])) {
        const toks: [number, number][] = [];
        lens.forEach((L, sq) => {
          const n = Math.min(L - done[sq], done[sq] === 0 || sq === 0 ? 40 : 1);
          for (let j = 0; j < n; j++) toks.push([sq, done[sq] + j]);
        });
        toks.reverse(); // any order
        const opts = { positions: i32(toks.map(([, p]) => p), [toks.length]), seqOf: i32(toks.map(([sq]) => sq), [toks.length]), blockTables, slidingWindow: window };
        const args = [gather(toks.map(([sq, p]) => [q[sq], p])), gather(toks.map(([sq, p]) => [k[sq], p])), gather(toks.map(([sq, p]) => [v[sq], p]))];
        const [dq, dk, dv] = await Promise.all(args.map(place));
        const out = await host(toks.length % 2 ? pagedAttentionSync(dq, dk, dv, pool, opts) : await pagedAttention(dq, dk, dv, pool, opts));
        toks.forEach(([sq, p], i) => assertSameTensor(rows(out, i, 1), rows(want[sq], p, 1), `sequence ${sq} position ${p}`));
        toks.forEach(([sq]) => done[sq]++);
      }
      pool.dispose();
    });

  s('errors: tables, positions, duplicates, shapes, disposal', async () => {
    const pool = new KvPool({ numBlocks: 4, blockSize: 16, numKvHeads: 1, headDim: 32 }, { backend });
    const q = await place(rt(2 * 32, 1, [2, 1, 32]));
    const kv = await place(rt(2 * 32, 2, [2, 1, 32]));
    const tables = i32([0, 1, 2, -1], [2, 2]);
    const ok = { positions: i32([0, 1], [2]), seqOf: i32([0, 0], [2]), blockTables: tables };
    pagedAttentionSync(q, kv, kv, pool, ok);
    const bad = (o: object, re: RegExp) => assert.throws(() => pagedAttentionSync(q, kv, kv, pool, { ...ok, ...o }), re);
    bad({ seqOf: i32([0, 2], [2]) }, /seqOf.data\[1\] must be a row of blockTables in \[0, 2\), got 2/);
    bad({ positions: i32([0, 32], [2]) }, /positions.data\[1\] must be in \[0, 32\)/);
    bad({ seqOf: i32([0, 1], [2]), positions: i32([0, 16], [2]) }, /blockTables.data\[1\]\[1\].*must be a block of the pool in \[0, 4\), got -1/);
    bad({ positions: i32([3, 3], [2]) }, /sequence 0 has position 3 twice in one call/);
    bad({ positions: i32([0], [1]) }, /positions.dims\[0\] \(1\) must equal q.dims\[0\] \(2\)/);
    assert.throws(() => pagedAttentionSync(q, kv, kv, pool, { positions: ok.positions } as never), /options.seqOf is required/);
    assert.throws(() => new KvPool({ numBlocks: 0, blockSize: 16, numKvHeads: 1, headDim: 32 }, { backend }), /init.numBlocks must be in/);
    pool.dispose();
    assert.throws(() => pagedAttentionSync(q, kv, kv, pool, ok), /KvPool was disposed/);
  });

  s.run();
}
