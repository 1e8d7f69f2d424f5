import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { permute, permuteSync, routeSync, type PermuteResult } from '../lib/index';
import { i32, makeProblem } from './helpers/problems';
import { assertSameTensor, distinctIds, randInt, refPermute } from './helpers/reference';


/** Every layout field equals the reference exactly, and the invariants hold. */
function checkPermute(ids: ArrayLike<number>, T: number, k: number, E: number, capacity: number | undefined, label: string, r?: PermuteResult) {
  const res = r ?? permuteSync(i32(ids, [T, k]), E, capacity === undefined ? undefined : { capacity });
  const ref = refPermute(ids, T, k, E, capacity ?? -1);
  assert.equal([...res.expertOffsets.dims], [E + 1], `${label}: expertOffsets dims`);
  assert.equal([...res.sortedRows.dims], [T * k], `${label}: sortedRows dims`);
  assert.equal([...res.rowOf.dims], [T, k], `${label}: rowOf dims`);
  assert.equal([...res.dropped.dims], [E], `${label}: dropped dims`);
  for (const f of ['expertOffsets', 'sortedRows', 'rowOf', 'dropped'] as const) assert.is(res[f].type, 'int32', `${label}: ${f} type`);
  assert.equal(Array.from(res.expertOffsets.data), Array.from(ref.offsets), `${label}: expertOffsets`);
  assert.equal(Array.from(res.sortedRows.data), Array.from(ref.sortedRows), `${label}: sortedRows`);
  assert.equal(Array.from(res.rowOf.data), Array.from(ref.rowOf), `${label}: rowOf`);
  assert.equal(Array.from(res.dropped.data), Array.from(ref.dropped), `${label}: dropped`);
  checkInvariants(res, ids, T, k, E, capacity, label);
}

/** The properties the layouts must have, checked directly (independent of refPermute). */
function checkInvariants(r: PermuteResult, ids: ArrayLike<number>, T: number, k: number, E: number, capacity: number | undefined, label: string) {
  const off = r.expertOffsets.data;
  const rows = r.sortedRows.data;
  const rowOf = r.rowOf.data;
  assert.is(off[0], 0, `${label}: offsets[0]`);
  const R = off[E];
  let keptTotal = 0;
  for (let e = 0; e < E; e++) {
    assert.ok(off[e + 1] >= off[e], `${label}: offsets not monotonic at ${e}`);
    let count = 0;
    for (let s = 0; s < T * k; s++) if (ids[s] === e) count++;
    const kept = capacity === undefined ? count : Math.min(count, capacity);
    assert.is(off[e + 1] - off[e], kept, `${label}: expert ${e} rows`);
    assert.is(r.dropped.data[e], count - kept, `${label}: expert ${e} dropped`);
    keptTotal += kept;
    // stable: an expert's rows are in ascending token order (equal only when a token repeats an expert)
    for (let row = off[e] + 1; row < off[e + 1]; row++)
      assert.ok(rows[row] >= rows[row - 1], `${label}: expert ${e}: rows ${row - 1},${row} tokens ${rows[row - 1]},${rows[row]} not ascending`);
  }
  assert.is(R, keptTotal, `${label}: total rows`);
  for (let row = R; row < T * k; row++) assert.is(rows[row], -1, `${label}: sortedRows[${row}] past the end should be -1`);
  // the inverse property, and dropped slots
  const used = new Uint8Array(R);
  for (let t = 0; t < T; t++)
    for (let j = 0; j < k; j++) {
      const s = t * k + j;
      const row = rowOf[s];
      if (row === -1) {
        assert.ok(capacity !== undefined, `${label}: slot (${t},${j}) dropped without a capacity`);
        continue;
      }
      assert.ok(row >= 0 && row < R, `${label}: rowOf[${t},${j}] = ${row} outside [0,${R})`);
      assert.is(rows[row], t, `${label}: sortedRows[rowOf[${t},${j}]] != ${t}`);
      assert.ok(row >= off[ids[s]] && row < off[ids[s] + 1], `${label}: slot (${t},${j}) of expert ${ids[s]} landed in another expert's rows`);
      assert.is(used[row], 0, `${label}: row ${row} used twice`);
      used[row] = 1;
    }
  assert.ok(used.every((u) => u === 1), `${label}: some sorted row has no slot`);
}

const layouts = suite('permute: layouts vs the reference');

layouts('a hand-worked example', () => {
  // T=4, k=2, E=3
  const ids = [2, 0, 0, 2, 1, 2, 0, 1];
  const r = permuteSync(i32(ids, [4, 2]), 3);
  assert.equal(Array.from(r.expertOffsets.data), [0, 3, 5, 8]);
  // expert 0: tokens 0,1,3; expert 1: tokens 2,3; expert 2: tokens 0,1,2
  assert.equal(Array.from(r.sortedRows.data), [0, 1, 3, 2, 3, 0, 1, 2]);
  assert.equal(Array.from(r.rowOf.data), [5, 0, 1, 6, 3, 7, 2, 4]);
  assert.equal(Array.from(r.dropped.data), [0, 0, 0]);
  checkPermute(ids, 4, 2, 3, undefined, 'hand-worked');
});

for (const [T, k, E] of [[1, 1, 1], [1, 2, 3], [33, 2, 8], [33, 6, 64], [511, 2, 8], [511, 6, 64], [511, 1, 3], [64, 8, 8]] as const)
  layouts(`random distinct ids T=${T} k=${k} E=${E}`, () => {
    const ids = distinctIds(T, k, E, T * 7 + k * 3 + E);
    checkPermute(ids, T, k, E, undefined, `T=${T} k=${k} E=${E}`);
  });

layouts('ids from route() on a real problem', () => {
  const p = makeProblem({ T: 511, d: 16, f: 1, E: 64, seed: 77 });
  const r = routeSync(p.x, p.gate, { topK: 6 });
  checkPermute(r.topkIds.data, 511, 6, 64, undefined, 'routed');
});

layouts('stability: repeated experts inside a token keep slot order', () => {
  // permute does not require distinct ids per token; slot order (t, then j) decides
  const ids = [1, 1, 0, 1, 1, 1];
  const r = permuteSync(i32(ids, [3, 2]), 2);
  assert.equal(Array.from(r.sortedRows.data), [1, 0, 0, 1, 2, 2]);
  assert.equal(Array.from(r.rowOf.data), [1, 2, 0, 3, 4, 5]);
  checkPermute(ids, 3, 2, 2, undefined, 'repeated');
});

layouts('experts with no tokens get empty ranges', () => {
  const T = 20, k = 2, E = 9;
  const ids = distinctIds(T, k, 3, 5).map((e) => e * 4); // only experts 0, 4, 8
  checkPermute(ids, T, k, E, undefined, 'sparse');
  const r = permuteSync(i32(ids, [T, k]), E);
  for (const e of [1, 2, 3, 5, 6, 7]) assert.is(r.expertOffsets.data[e + 1], r.expertOffsets.data[e], `expert ${e} is empty`);
});

layouts('every token on one expert (first, middle, last)', () => {
  for (const target of [0, 31, 63]) {
    const T = 100, k = 1, E = 64;
    const ids = new Int32Array(T).fill(target);
    const r = permuteSync(i32(ids, [T, k]), E);
    checkPermute(ids, T, k, E, undefined, `all on ${target}`, r);
    assert.equal(Array.from(r.sortedRows.data), Array.from({ length: T }, (_, t) => t), 'identity order');
  }
});

layouts('T = 0', () => {
  const r = permuteSync(i32([], [0, 2]), 4);
  assert.equal(Array.from(r.expertOffsets.data), [0, 0, 0, 0, 0]);
  assert.equal([...r.sortedRows.dims], [0]);
  assert.equal([...r.rowOf.dims], [0, 2]);
  assert.equal(Array.from(r.dropped.data), [0, 0, 0, 0]);
});

layouts('numExperts larger than any id used', () => {
  const ids = randInt(40, 4, 3);
  checkPermute(ids, 20, 2, 4096, undefined, 'E=4096');
});

layouts('the Promise form gives the same layouts', async () => {
  const ids = distinctIds(511, 6, 64, 99);
  for (const capacity of [undefined, 0, 3, 1000]) {
    const opts = capacity === undefined ? undefined : { capacity };
    const a = await permute(i32(ids, [511, 6]), 64, opts);
    const s = permuteSync(i32(ids, [511, 6]), 64, opts);
    for (const f of ['expertOffsets', 'sortedRows', 'rowOf', 'dropped'] as const) assertSameTensor(a[f], s[f], `capacity ${capacity}: ${f}`);
  }
});

const capacity = suite('permute: capacity');

capacity('hand-worked: each expert keeps its first c slots in token order', () => {
  // T=5, k=2, E=2; expert 0 gets slots of tokens 0,1,2,4 ; expert 1: tokens 0,1,3,3?  (distinct per token)
  const ids = [0, 1, 1, 0, 0, 1, 1, 0, 0, 1];
  // expert 0 slots: (0,0) (1,1) (2,0) (3,1) (4,0); expert 1: (0,1) (1,0) (2,1) (3,0) (4,1)
  const r = permuteSync(i32(ids, [5, 2]), 2, { capacity: 2 });
  assert.equal(Array.from(r.expertOffsets.data), [0, 2, 4]);
  assert.equal(Array.from(r.sortedRows.data), [0, 1, 0, 1, -1, -1, -1, -1, -1, -1]);
  assert.equal(Array.from(r.rowOf.data), [0, 2, 3, 1, -1, -1, -1, -1, -1, -1]);
  assert.equal(Array.from(r.dropped.data), [3, 3]);
  checkPermute(ids, 5, 2, 2, 2, 'hand-worked capacity');
});

capacity('capacity 0 drops everything', () => {
  const ids = distinctIds(33, 2, 8, 4);
  const r = permuteSync(i32(ids, [33, 2]), 8, { capacity: 0 });
  assert.ok(r.expertOffsets.data.every((v) => v === 0));
  assert.ok(r.rowOf.data.every((v) => v === -1));
  assert.ok(r.sortedRows.data.every((v) => v === -1));
  assert.is(r.dropped.data.reduce((a, b) => a + b, 0), 66);
  checkPermute(ids, 33, 2, 8, 0, 'capacity 0', r);
});

capacity('capacity 1, exact, one short, large', () => {
  const T = 511, k = 2, E = 8;
  const ids = distinctIds(T, k, E, 12);
  const counts = new Array(E).fill(0);
  for (const e of ids) counts[e]++;
  const maxCount = Math.max(...counts);
  for (const c of [1, maxCount - 1, maxCount, maxCount + 1, 2 ** 31 - 1]) {
    checkPermute(ids, T, k, E, c, `capacity ${c}`);
    const r = permuteSync(i32(ids, [T, k]), E, { capacity: c });
    if (c >= maxCount) {
      assert.ok(r.dropped.data.every((v) => v === 0), `capacity ${c} >= max count ${maxCount}: nothing dropped`);
      const dropless = permuteSync(i32(ids, [T, k]), E);
      for (const f of ['expertOffsets', 'sortedRows', 'rowOf'] as const) assertSameTensor(r[f], dropless[f], `capacity ${c} == dropless: ${f}`);
    } else {
      assert.ok(r.dropped.data.some((v) => v > 0), `capacity ${c} < max count ${maxCount}: something dropped`);
    }
  }
});

capacity('Switch-style capacity ceil(T*k/E * factor)', () => {
  const T = 100, k = 2, E = 8;
  const ids = distinctIds(T, k, E, 13);
  for (const factor of [0.5, 1, 1.25, 2]) {
    const c = Math.ceil(((T * k) / E) * factor);
    checkPermute(ids, T, k, E, c, `factor ${factor}`);
  }
});

capacity('all tokens on one expert with capacity: the first c tokens are kept', () => {
  const T = 50, E = 4, c = 7;
  const ids = new Int32Array(T).fill(2);
  const r = permuteSync(i32(ids, [T, 1]), E, { capacity: c });
  assert.equal(Array.from(r.expertOffsets.data), [0, 0, 0, c, c]);
  assert.equal(Array.from(r.sortedRows.data.subarray(0, c)), [0, 1, 2, 3, 4, 5, 6]);
  assert.equal(Array.from(r.dropped.data), [0, 0, T - c, 0]);
  for (let t = 0; t < T; t++) assert.is(r.rowOf.data[t], t < c ? t : -1);
});

layouts.run();
capacity.run();
