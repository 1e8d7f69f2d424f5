/**
 * A progress display for loading a checkpoint: on a terminal a bar redrawn in place with bytes and
 * tensors; elsewhere (logs, pipes) a plain line now and then. Takes the `LoadProgress` objects
 * that `MixtralCheckpoint`'s `onProgress` gives.
 */
import { checkOptions } from '../core/options.js';
import { formatBytes } from './params.js';
import type { LoadProgress } from './weights.js';

/**
 * What the bar draws on: process.stderr, any Writable, or an object with a `write(text)` method.
 * Declared here rather than as NodeJS.WritableStream so that the package's types compile without
 * @types/node.
 */
export interface ProgressStream {
  write(text: string): unknown;
  /** A terminal: redraw one line in place. */
  isTTY?: boolean;
  /** The terminal's width. */
  columns?: number;
}

export interface ProgressBarOptions {
  /** Where to draw. Default process.stderr. */
  stream?: ProgressStream;
  /** Text before the bar. Default 'loading'. */
  label?: string;
  /** Draw as a terminal (redrawn bar) or as lines. Default: the stream's isTTY. */
  tty?: boolean;
  /** Without a terminal: the least time between two lines, in ms. Default 2000. */
  intervalMs?: number;
}

export interface ProgressBar {
  /** Shows a progress report (pass it as `onProgress`). */
  update(p: LoadProgress): void;
  /** Ends the display: the final state, then a newline on a terminal. */
  done(): void;
}

/** A progress display for `onProgress`. */
export function createProgressBar(options?: ProgressBarOptions): ProgressBar {
  const o = checkOptions(options) as ProgressBarOptions;
  const stream = o.stream ?? process.stderr;
  const label = o.label ?? 'loading';
  const tty = o.tty ?? stream.isTTY === true;
  const interval = o.intervalMs ?? 2000;
  let last: LoadProgress | null = null;
  let lastDraw = 0;
  let drawn = false;

  const text = (p: LoadProgress, width: number) => {
    const frac = p.bytesTotal > 0 ? p.bytesLoaded / p.bytesTotal : p.tensorsTotal > 0 ? p.tensorsLoaded / p.tensorsTotal : 1;
    const pct = `${Math.floor(frac * 100)}`.padStart(3) + '%';
    const counts = `${formatBytes(p.bytesLoaded)} / ${formatBytes(p.bytesTotal)}, tensors ${p.tensorsLoaded}/${p.tensorsTotal}`;
    if (width <= 0) return `${label} ${pct} ${counts}`;
    const filled = Math.round(frac * width);
    return `${label} [${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${pct} ${counts}`;
  };

  const draw = (p: LoadProgress, final: boolean) => {
    const now = Date.now();
    if (tty) {
      if (!final && now - lastDraw < 100) return; // at most 10 redraws a second
      const cols = stream.columns ?? 80;
      const width = Math.max(0, Math.min(40, cols - 60));
      stream.write(`\r${text(p, width)}\x1b[K`);
    } else {
      if (!final && drawn && now - lastDraw < interval) return;
      stream.write(`${text(p, 0)}${final ? '' : ` (${p.name})`}\n`);
    }
    drawn = true;
    lastDraw = now;
  };

  return {
    update(p: LoadProgress) {
      last = p;
      draw(p, p.tensorsLoaded === p.tensorsTotal);
    },
    done() {
      if (last && last.tensorsLoaded !== last.tensorsTotal) draw(last, true);
      if (tty && drawn) stream.write('\n');
    },
  };
}
