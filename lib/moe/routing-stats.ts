/**
 * Routing statistics for people: where the tokens went, per layer and expert. `formatRoutingTable`
 * prints a text table (tokens per expert, drops, entropy per layer); `routingHeatmapSvg` draws a
 * standalone SVG heat map (layers × experts, colour = share of the layer's routed slots) that a
 * browser opens as is. Pure string generation, no native code.
 */
import { describe, rangeError, typeError } from '../core/errors.js';
import { checkOptions } from '../core/options.js';

export interface RoutingHeatmapOptions {
  /** Title above the grid. Default 'Routing: share of tokens per expert'. */
  title?: string;
  /** Cell size in px. Default 22 (14 above 48 experts). */
  cellSize?: number;
  /** Row labels. Default 'layer 0', 'layer 1', ... */
  layerLabels?: readonly string[];
}

function checkCounts(counts: unknown, name: string): number[][] {
  if (!Array.isArray(counts) || counts.length === 0) throw typeError(`${name} must be a non-empty array of per-layer counts, got ${describe(counts)}`);
  const rows = counts.map((r, l) => {
    if (r === null || typeof r !== 'object' || typeof (r as ArrayLike<number>).length !== 'number')
      throw typeError(`${name}[${l}] must be an array of counts, got ${describe(r)}`);
    const row = Array.from(r as ArrayLike<number>, Number);
    row.forEach((v, e) => {
      if (!Number.isFinite(v) || v < 0) throw rangeError(`${name}[${l}][${e}] must be a finite count >= 0, got ${describe(v)}`);
    });
    return row;
  });
  const E = rows[0].length;
  if (E === 0) throw rangeError(`${name}[0] has no experts`);
  rows.forEach((r, l) => {
    if (r.length !== E) throw rangeError(`${name}[${l}] has ${r.length} experts, ${name}[0] has ${E}`);
  });
  return rows;
}

/** Shannon entropy (bits) of a layer's routing distribution; log2(E) is perfectly even. */
export function routingEntropy(counts: ArrayLike<number>): number {
  let total = 0;
  for (let i = 0; i < counts.length; i++) total += counts[i];
  if (total <= 0) return 0;
  let h = 0;
  for (let i = 0; i < counts.length; i++) {
    const p = counts[i] / total;
    if (p > 0) h -= p * Math.log2(p);
  }
  return h;
}

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');

/** ColorBrewer's sequential "Blues" (9 classes), white to dark blue: even steps of lightness. */
const RAMP: readonly (readonly [number, number, number])[] = [
  [247, 251, 255], [222, 235, 247], [198, 219, 239], [158, 202, 225], [107, 174, 214],
  [66, 146, 198], [33, 113, 181], [8, 81, 156], [8, 48, 107],
];

/** The ramp at t in [0, 1] (0: white, 1: the largest share), linear between its stops. */
function colour(t: number): string {
  const x = Math.max(0, Math.min(1, t)) * (RAMP.length - 1);
  const i = Math.min(RAMP.length - 2, Math.floor(x)), f = x - i;
  const c = RAMP[i].map((a, k) => Math.round(a + (RAMP[i + 1][k] - a) * f));
  return `rgb(${c[0]},${c[1]},${c[2]})`;
}

/**
 * Width in px of text in the SVG's sans-serif at `size` px: a generous estimate (DejaVu Sans, the
 * usual fallback, averages about 0.6 em; bold about 0.66 em), so that nothing is cut off.
 */
const textWidth = (text: string, size: number, bold = false) => Math.ceil(text.length * size * (bold ? 0.68 : 0.62));

/** The smallest of 1, 2, 5, 10, 20, 50, ... whose multiple of `cell` px holds `need` px. */
function labelStep(cell: number, need: number): number {
  for (let m = 1; ; m *= 10) for (const k of [1, 2, 5]) if (k * m * cell >= need) return k * m;
}

/**
 * A standalone SVG heat map of counts [layers][experts]: one rect per cell, coloured by the cell's
 * share of its layer's slots (scaled to the largest share in the map), with the count and share in
 * each cell's <title> (hover text), axis labels (thinned so that they never overlap), a colour
 * legend with the even share (1/E) marked, and a title. A layer without tokens is hatched grey.
 */
export function routingHeatmapSvg(counts: readonly (readonly number[] | ArrayLike<number>)[], options?: RoutingHeatmapOptions): string {
  const rows = checkCounts(counts, 'counts');
  const o = checkOptions(options);
  const L = rows.length, E = rows[0].length;
  const title = o.title === undefined ? 'Routing: share of tokens per expert' : String(o.title);
  const cell = o.cellSize === undefined ? (E > 48 ? 14 : 22) : Number(o.cellSize);
  if (!Number.isFinite(cell) || cell < 4 || cell > 200) throw rangeError(`options.cellSize must be in [4, 200], got ${describe(o.cellSize)}`);
  const labels = o.layerLabels === undefined ? rows.map((_, l) => `layer ${l}`) : Array.from(o.layerLabels as readonly string[], String);
  if (labels.length !== L) throw rangeError(`options.layerLabels must hold ${L} labels, got ${labels.length}`);
  const totals = rows.map((r) => r.reduce((a, b) => a + b, 0));
  const shares = rows.map((r, l) => r.map((v) => (totals[l] > 0 ? v / totals[l] : 0)));
  const maxShare = Math.max(1e-12, ...shares.flat());
  const even = 1 / E;
  const font = 11;
  // labels: every `colStep`-th expert and `rowStep`-th layer, so that neighbours never overlap
  const colStep = labelStep(cell, textWidth(String(E - 1), font) + 6);
  const rowStep = labelStep(cell, font + 2);
  const shownLabels = labels.filter((_, l) => l % rowStep === 0);
  const left = Math.max(60, 14 + Math.max(...shownLabels.map((t) => textWidth(t, font))));
  const top = 62, gridW = E * cell, gridH = L * cell;
  const legendW = Math.min(240, Math.max(120, gridW));
  const evenText = `even share ${(100 * even).toFixed(1)}%`;
  const anyEmpty = totals.some((t) => t === 0);
  const emptyText = 'a layer without tokens';
  const ly = top + gridH + 30;
  const width = Math.max(
    left + gridW + 16,
    left + legendW + 22 + textWidth(evenText, font) + 12,
    anyEmpty ? left + 18 + textWidth(emptyText, font) + 12 : 0,
    12 + textWidth(title, 15, true) + 12,
  );
  const height = ly + 34 + (anyEmpty ? 18 : 0);
  const out: string[] = [];
  out.push(`<?xml version="1.0" encoding="UTF-8"?>`);
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="${font}">`);
  out.push(`<defs>`);
  out.push(`<linearGradient id="legend-ramp" x1="0" x2="1" y1="0" y2="0">`);
  RAMP.forEach((_, i) => out.push(`<stop offset="${+((100 * i) / (RAMP.length - 1)).toFixed(3)}%" stop-color="${colour(i / (RAMP.length - 1))}"/>`));
  out.push(`</linearGradient>`);
  out.push(`<pattern id="no-tokens" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)">`);
  out.push(`<rect width="6" height="6" fill="#eeeeee"/><line x1="0" y1="0" x2="0" y2="6" stroke="#999999" stroke-width="2"/>`);
  out.push(`</pattern>`);
  out.push(`</defs>`);
  out.push(`<rect x="0" y="0" width="${width}" height="${height}" fill="white"/>`);
  out.push(`<text x="12" y="22" font-size="15" font-weight="bold">${esc(title)}</text>`);
  out.push(`<text x="${left + gridW / 2}" y="${top - 22}" text-anchor="middle">expert</text>`);
  const cells: string[] = [];
  for (let e = 0; e < E; e += colStep) out.push(`<text x="${left + e * cell + cell / 2}" y="${top - 6}" text-anchor="middle">${e}</text>`);
  for (let l = 0; l < L; l++) {
    const y = top + l * cell;
    if (l % rowStep === 0) out.push(`<text x="${left - 6}" y="${y + cell / 2 + 4}" text-anchor="end">${esc(labels[l])}</text>`);
    for (let e = 0; e < E; e++) {
      const s = shares[l][e];
      const fill = totals[l] > 0 ? colour(s / maxShare) : 'url(#no-tokens)';
      const hover = totals[l] > 0 ? `${rows[l][e]} tokens (${(100 * s).toFixed(1)}%)` : 'no tokens in this layer';
      cells.push(
        `<rect class="cell" x="${left + e * cell}" y="${y}" width="${cell}" height="${cell}" fill="${fill}" stroke="#dddddd" stroke-width="0.5">` +
          `<title>${esc(labels[l])}, expert ${e}: ${hover}</title></rect>`,
      );
    }
  }
  out.push(`<g id="cells">`, ...cells, `</g>`);
  // legend: the ramp from 0 to the largest share, with the even share 1/E marked on it
  out.push(`<text x="${left}" y="${ly - 7}">share of the layer's tokens</text>`);
  out.push(`<rect id="legend" x="${left}" y="${ly}" width="${legendW}" height="12" fill="url(#legend-ramp)" stroke="#999999" stroke-width="0.5"/>`);
  if (even <= maxShare) {
    const ex = +(left + (legendW * even) / maxShare).toFixed(2);
    out.push(`<line id="legend-even" x1="${ex}" y1="${ly - 3}" x2="${ex}" y2="${ly + 15}" stroke="#d62728" stroke-width="2"/>`);
  }
  out.push(`<text x="${left}" y="${ly + 26}" text-anchor="start">0%</text>`);
  out.push(`<text x="${left + legendW}" y="${ly + 26}" text-anchor="end">${(100 * maxShare).toFixed(1)}%</text>`);
  out.push(`<line x1="${left + legendW + 14}" y1="${ly - 3}" x2="${left + legendW + 14}" y2="${ly + 15}" stroke="#d62728" stroke-width="2"/>`);
  out.push(`<text x="${left + legendW + 22}" y="${ly + 10}">${esc(evenText)}</text>`);
  if (anyEmpty) {
    out.push(`<rect x="${left}" y="${ly + 36}" width="12" height="12" fill="url(#no-tokens)" stroke="#999999" stroke-width="0.5"/>`);
    out.push(`<text x="${left + 18}" y="${ly + 46}">${esc(emptyText)}</text>`);
  }
  out.push(`</svg>`);
  return out.join('\n') + '\n';
}

export interface RoutingTableOptions {
  /** Dropped slots [layers][experts] (capacity), shown per layer. */
  dropped?: readonly (readonly number[] | ArrayLike<number>)[];
  /** Row labels. Default 'layer 0', ... */
  layerLabels?: readonly string[];
}

/**
 * A text table of counts [layers][experts]: one row per layer with the tokens of each expert, the
 * total, the dropped slots (when given), the entropy in bits and its ratio to the even log2(E).
 */
export function formatRoutingTable(counts: readonly (readonly number[] | ArrayLike<number>)[], options?: RoutingTableOptions): string {
  const rows = checkCounts(counts, 'counts');
  const o = checkOptions(options);
  const L = rows.length, E = rows[0].length;
  const dropped = o.dropped === undefined ? undefined : checkCounts(o.dropped, 'options.dropped');
  if (dropped && (dropped.length !== L || dropped[0].length !== E))
    throw rangeError(`options.dropped must be [${L}][${E}] like counts, got [${dropped.length}][${dropped[0].length}]`);
  const labels = o.layerLabels === undefined ? rows.map((_, l) => `layer ${l}`) : Array.from(o.layerLabels as readonly string[], String);
  if (labels.length !== L) throw rangeError(`options.layerLabels must hold ${L} labels, got ${labels.length}`);
  const head = ['', ...Array.from({ length: E }, (_, e) => `e${e}`), 'total', ...(dropped ? ['dropped'] : []), 'entropy', 'even'];
  const body = rows.map((r, l) => {
    const h = routingEntropy(r);
    return [
      labels[l],
      ...r.map(String),
      String(r.reduce((a, b) => a + b, 0)),
      ...(dropped ? [String(dropped[l].reduce((a, b) => a + b, 0))] : []),
      h.toFixed(3),
      E > 1 ? `${((100 * h) / Math.log2(E)).toFixed(1)}%` : '-',
    ];
  });
  const widths = head.map((_, c) => Math.max(head[c].length, ...body.map((r) => r[c].length)));
  const line = (cells: string[]) => cells.map((s, c) => (c === 0 ? s.padEnd(widths[c]) : s.padStart(widths[c]))).join('  ').trimEnd();
  return [line(head), widths.map((w) => '-'.repeat(w)).join('  '), ...body.map(line)].join('\n') + '\n';
}
