/**
 * Expert merging for serving (mergeExperts / mergeExpertWeights against a float64 weighted average,
 * every weight type, uniform / given / counted distributions; mergeDistance) and the routing
 * statistics presentation (routingHeatmapSvg's structure, formatRoutingTable's rows).
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { formatRoutingTable, MoeLayer, mergeDistance, mergeDistribution, mergeExperts, mergeExpertWeights, routingEntropy, routingHeatmapSvg, tensor, type FloatType } from '../lib/index';
import { makeProblem, perExpert } from './helpers/problems';
import { assertClose, refDense, widen } from './helpers/reference';
import { refMerge } from './helpers/shared-experts';

const m = suite('mergeExperts: the weighted average of the experts, natively');

m('uniform, given and counted distributions, every weight type, [E,f,d] and per-expert arrays', async () => {
  for (const wType of ['float32', 'bfloat16', 'float16'] as FloatType[]) {
    const p = makeProblem({ T: 5, d: 12, f: 7, E: 6, seed: 3, wType });
    const cases: [string, Parameters<typeof mergeExpertWeights>[1], number[]][] = [
      ['uniform', undefined, [1, 1, 1, 1, 1, 1]],
      ['distribution', { distribution: [0.5, 0, 0.25, 0.125, 0.125, 0] }, [0.5, 0, 0.25, 0.125, 0.125, 0]],
      ['from counts', { from: tensor('int32', Int32Array.from([3, 1, 0, 0, 4, 2]), [6]) }, [3, 1, 0, 0, 4, 2]],
    ];
    for (const [name, opts, dist] of cases) {
      const ref = refMerge(p.wr, dist);
      for (const w of [{ w1: p.w1, w3: p.w3, w2: p.w2 }, { w1: perExpert(p.w1), w3: perExpert(p.w3), w2: perExpert(p.w2) }]) {
        const got = await mergeExpertWeights(w, opts);
        assert.is(got.w1.type, wType, 'the weights\' type');
        assert.equal([...got.w1.dims], [7, 12]);
        assert.equal([...got.w2.dims], [12, 7]);
        const tol = wType === 'float32' ? { atol: 1e-6, rtol: 1e-6 } : { atol: 1e-4, rtol: wType === 'bfloat16' ? 8e-3 : 1e-3 };
        assertClose(widen(got.w1), ref.w1, tol, `${wType} ${name} w1`);
        assertClose(widen(got.w3), ref.w3, tol, `${wType} ${name} w3`);
        assertClose(widen(got.w2), ref.w2, tol, `${wType} ${name} w2`);
      }
    }
  }
});

m('the merged DenseFfn runs the averaged weights; one-hot merging gives that expert', async () => {
  const p = makeProblem({ T: 9, d: 16, f: 8, E: 4, seed: 9 });
  const ffn = await mergeExperts(p, { distribution: [0, 0, 1, 0] });
  const ref = new Float64Array(9 * 16);
  const e2 = { E: 1, d: 16, f: 8, w1: p.wr.w1.subarray(2 * 128, 3 * 128), w3: p.wr.w3.subarray(2 * 128, 3 * 128), w2: p.wr.w2.subarray(2 * 128, 3 * 128) };
  ref.set(refDense(p.xr, e2, 9));
  assertClose(widen(await ffn.forward(p.x)), ref, { atol: 1e-5, rtol: 1e-4 }, 'expert 2');
  ffn.dispose();
});

m('mergeDistance: zero for one expert routed everywhere, positive otherwise', async () => {
  const p = makeProblem({ T: 16, d: 16, f: 8, E: 4, seed: 11 });
  const gate = tensor('float32', Float32Array.from({ length: 64 }, (_, i) => (i < 16 ? 1 : 0)), [4, 16]);
  const x = tensor('float32', Float32Array.from({ length: 256 }, (_, i) => 1 + (i % 3)), [16, 16]);
  const layer = await MoeLayer.create({ ...p, gate }, { topK: 1 });
  const exact = await mergeExperts(p, { distribution: [1, 0, 0, 0] });
  assert.ok((await mergeDistance(exact, layer, x)).relativeRms < 1e-6, 'top-1 to expert 0 = expert 0');
  const uni = await mergeExperts(p);
  const d = await mergeDistance(uni, layer, p.x);
  assert.ok(d.relativeRms > 0.01 && Number.isFinite(d.relativeRms), `uniform merge is an approximation: ${d.relativeRms}`);
  [layer, exact, uni].forEach((o) => o.dispose());
});

m('errors', async () => {
  const p = makeProblem({ T: 1, d: 8, f: 4, E: 3 });
  assert.throws(() => mergeDistribution(3, { distribution: [1, 2] }), /3 weights/);
  assert.throws(() => mergeDistribution(3, { distribution: [1, -1, 0] }), /finite number >= 0/);
  assert.throws(() => mergeDistribution(3, { distribution: [0, 0, 0] }), /all zeros/);
  assert.throws(() => mergeDistribution(3, { distribution: [1, 1, 1], from: [1, 1, 1] }), /exclusive/);
  await mergeExpertWeights(p, { from: [0, 0, 2] }).then((w) => assertClose(widen(w.w1), p.wr.w1.subarray(64, 96), { atol: 0, rtol: 0 }, 'from one expert'));
});

m.run();

const h = suite('routing statistics: heat map SVG and table');
const counts = [
  [10, 0, 5, 5],
  [0, 20, 0, 0],
  [5, 5, 5, 5],
];

h('SVG: one rect per cell with the count and share in its title, labels, legend, title; XML-ish', () => {
  const svg = routingHeatmapSvg(counts, { title: 'Tokens <per> expert' });
  assert.ok(svg.startsWith('<?xml'), 'XML declaration');
  assert.ok(svg.includes('<svg xmlns="http://www.w3.org/2000/svg"'), 'svg root');
  assert.ok(svg.trimEnd().endsWith('</svg>'));
  assert.is((svg.match(/<rect class="cell"/g) ?? []).length, 12, 'one rect per cell');
  assert.ok(svg.includes('layer 0, expert 0: 10 tokens (50.0%)'));
  assert.ok(svg.includes('layer 1, expert 1: 20 tokens (100.0%)'));
  assert.ok(svg.includes('layer 2, expert 3: 5 tokens (25.0%)'));
  assert.ok(svg.includes('Tokens &lt;per&gt; expert'), 'title escaped');
  assert.ok(svg.includes('id="legend"') && svg.includes('linearGradient'), 'legend');
  // balanced tags: every opening tag that is not self-closed is closed
  const stack: string[] = [];
  for (const [, slash, name, selfClose] of svg.replace(/<\?xml[^>]*\?>/, '').matchAll(/<(\/?)([a-zA-Z]+)[^>]*?(\/?)>/g)) {
    if (slash) assert.is(stack.pop(), name, `</${name}> closes the innermost open tag`);
    else if (!selfClose) stack.push(name);
  }
  assert.equal(stack, [], 'every tag closed');
  const text = svg.replace(/<[^<>]*>/g, '').replace(/&(amp|lt|gt|quot);/g, '');
  assert.not.ok(/[<>&]/.test(text), 'no stray markup characters in the text');
  const big = routingHeatmapSvg(Array.from({ length: 24 }, (_, l) => Array.from({ length: 64 }, (_, e) => (l * 7 + e * 3) % 11)));
  assert.is((big.match(/<rect class="cell"/g) ?? []).length, 24 * 64);
});

/** The <text> elements of an SVG: x, y, anchor, font size and the text itself (entities decoded). */
function svgTexts(svg: string) {
  return [...svg.matchAll(/<text ([^>]*)>([^<]*)<\/text>/g)].map(([, attrs, body]) => {
    const a = (n: string) => new RegExp(`(?:^|\\s)${n}="([^"]*)"`).exec(attrs)?.[1];
    return {
      x: Number(a('x')),
      y: Number(a('y')),
      anchor: a('text-anchor') || 'start',
      size: Number(a('font-size') || 11),
      bold: a('font-weight') === 'bold',
      text: body.replace(/&lt;/g, '<').replace(/&gt;/g, '>').replace(/&quot;/g, '"').replace(/&amp;/g, '&'),
    };
  });
}
const svgSize = (svg: string) => {
  const [, w, h] = /<svg [^>]*width="([\d.]+)" height="([\d.]+)"/.exec(svg)!;
  return { width: Number(w), height: Number(h) };
};
/** Horizontal extent of a text at about 0.6 em per character (bold 0.65), by its anchor. */
const extent = (t: ReturnType<typeof svgTexts>[number]) => {
  const w = t.text.length * t.size * (t.bold ? 0.65 : 0.6);
  const x0 = t.anchor === 'end' ? t.x - w : t.anchor === 'middle' ? t.x - w / 2 : t.x;
  return [x0, x0 + w];
};

h('SVG as seen rendered: nothing cut off, labels thinned so they never overlap, the even share marked, empty layers hatched', () => {
  const shapes: [number, number, Parameters<typeof routingHeatmapSvg>[1]][] = [
    [4, 8, undefined],
    [3, 4, undefined], // narrow grid: the default title and the legend text are wider than it
    [32, 64, undefined],
    [32, 64, { cellSize: 6 }],
    [2, 200, { cellSize: 4, title: 'a long title that is much wider than anything else in this small map' }],
    [3, 3, { layerLabels: ['block.0.moe', 'a very long layer label, longer than the grid', 'x'] }],
  ];
  for (const [L, E, opts] of shapes) {
    const what = `${L}x${E} ${JSON.stringify(opts)}`;
    const counts = Array.from({ length: L }, (_, l) => Array.from({ length: E }, (_, e) => (l * 5 + e * 3) % 7));
    const svg = routingHeatmapSvg(counts, opts);
    const { width, height } = svgSize(svg);
    const texts = svgTexts(svg);
    for (const t of texts) {
      const [x0, x1] = extent(t);
      assert.ok(x0 >= 0 && x1 <= width, `${what}: "${t.text}" spans [${x0}, ${x1}], the picture is ${width} wide`);
      assert.ok(t.y - t.size >= 0 && t.y + 4 <= height, `${what}: "${t.text}" at y ${t.y}, the picture is ${height} high`);
    }
    // expert labels (the numbers on the top row) and layer labels: no two overlap
    const cols = texts.filter((t) => /^\d+$/.test(t.text) && t.anchor === 'middle').map(extent);
    assert.ok(cols.length >= Math.min(E, 5), `${what}: ${cols.length} expert labels`);
    for (let i = 1; i < cols.length; i++) assert.ok(cols[i][0] >= cols[i - 1][1], `${what}: expert labels ${i - 1} and ${i} overlap`);
    const layerLabels = opts?.layerLabels ?? counts.map((_, l) => `layer ${l}`);
    const rowsY = texts.filter((t) => t.anchor === 'end' && layerLabels.includes(t.text)).map((t) => t.y);
    const cell = opts?.cellSize ?? (E > 48 ? 14 : 22);
    assert.ok(rowsY.length >= Math.min(L, Math.floor((L * cell) / 30) + 1), `${what}: ${rowsY.length} layer labels`);
    for (let i = 1; i < rowsY.length; i++) assert.ok(rowsY[i] - rowsY[i - 1] >= 11, `${what}: layer labels ${i - 1} and ${i} overlap`);
    assert.is((svg.match(/<rect class="cell"/g) ?? []).length, L * E);
  }
  // 64 experts at the default cell size: labels on every second expert, every layer labelled
  const big = svgTexts(routingHeatmapSvg(Array.from({ length: 32 }, () => Array.from({ length: 64 }, (_, e) => e + 1))));
  assert.equal(big.filter((t) => t.anchor === 'middle' && /^\d+$/.test(t.text)).map((t) => Number(t.text)), Array.from({ length: 32 }, (_, i) => 2 * i));
  assert.is(big.filter((t) => /^layer \d+$/.test(t.text)).length, 32);

  // the colour ramp: 0 white, the largest share the darkest blue, a middle share in between and blue
  const svg = routingHeatmapSvg([[0, 1, 2], [0, 0, 0]]);
  const fills = [...svg.matchAll(/<rect class="cell"[^>]*fill="([^"]*)"/g)].map((x) => x[1]);
  assert.is(fills[0], 'rgb(247,251,255)', 'share 0');
  assert.is(fills[2], 'rgb(8,48,107)', 'the largest share');
  const [r, g, b] = /rgb\((\d+),(\d+),(\d+)\)/.exec(fills[1])!.slice(1).map(Number);
  assert.ok(b > r + 60 && r < 150, `half the largest share is clearly blue, not grey: ${fills[1]}`);
  // a layer without tokens: hatched, said so in its hover text and in the legend
  assert.ok(fills.slice(3).every((f) => f === 'url(#no-tokens)'), 'the empty layer is hatched');
  assert.ok(svg.includes('layer 1, expert 0: no tokens in this layer'));
  assert.ok(svg.includes('<pattern id="no-tokens"') && svg.includes('a layer without tokens'));
  assert.not.ok(routingHeatmapSvg([[1, 2]]).includes('a layer without tokens'), 'no hatch legend without an empty layer');
  // the even share 1/E marked on the legend: here the largest share is 2/3, even 1/3: half way
  const legend = /<rect id="legend" x="([\d.]+)" y="[\d.]+" width="([\d.]+)"/.exec(svg)!.slice(1).map(Number);
  const mark = Number(/<line id="legend-even" x1="([\d.]+)"/.exec(svg)![1]);
  assert.ok(Math.abs(mark - (legend[0] + legend[1] / 2)) < 0.01, `even marker at ${mark}, legend ${legend}`);
  assert.ok(svg.includes('even share 33.3%'));
});

h('table: tokens per expert, totals, drops, entropy', () => {
  const t = formatRoutingTable(counts, { dropped: [[0, 0, 1, 0], [0, 3, 0, 0], [0, 0, 0, 0]] });
  const lines = t.trimEnd().split('\n');
  assert.is(lines.length, 5);
  assert.match(lines[0], /e0\s+e1\s+e2\s+e3\s+total\s+dropped\s+entropy\s+even/);
  assert.match(lines[2], /^layer 0\s+10\s+0\s+5\s+5\s+20\s+1\s+1\.500\s+75\.0%$/);
  assert.match(lines[3], /^layer 1\s+0\s+20\s+0\s+0\s+20\s+3\s+0\.000\s+0\.0%$/);
  assert.match(lines[4], /^layer 2\s+5\s+5\s+5\s+5\s+20\s+0\s+2\.000\s+100\.0%$/);
  assert.is(routingEntropy([1, 1]), 1);
  assert.throws(() => formatRoutingTable([[1, 2], [3]]), /has 1 experts/);
  assert.throws(() => routingHeatmapSvg([]), /non-empty/);
});

h.run();
