'use strict';
// Shared pieces of the bench: shapes, the cheap weight generator, progress lines on stderr, the
// library import and a forced GC. The contenders themselves live in bench/drivers/.
const path = require('node:path');
const v8 = require('node:v8');
const vm = require('node:vm');

const root = path.join(__dirname, '..');

/** The library, from the built package (run.js builds dist/ first when it is missing). */
function lib() {
  return require(path.join(root, 'dist', 'index.js'));
}

/** The native module itself (the same instance dist/ loaded), for the machine-peak probes. */
function native() {
  return require('node-gyp-build')(root);
}

// ---- shapes ------------------------------------------------------------------------------------

const SHAPES = {
  // Mixtral 8x7B's MoE layer scaled down 4x in d and f: the default, fast enough for a few minutes.
  scaled: { name: 'scaled', title: 'scaled Mixtral layer', d: 1024, f: 3584, E: 8, k: 2 },
  // The real Mixtral 8x7B layer: 5.6 GB of f32 expert weights.
  mixtral: { name: 'mixtral', title: 'Mixtral 8x7B layer', d: 4096, f: 14336, E: 8, k: 2 },
  // A toy layer for CI: the bench must keep working, its figures mean nothing.
  tiny: { name: 'tiny', title: 'tiny layer (CI)', d: 256, f: 256, E: 8, k: 2 },
};

// bytes: per weight (quantised formats: the block's bytes over its values, e.g. 4.5 bits for q4_k)
const DTYPES = {
  float32: { name: 'float32', short: 'f32', bytes: 4 },
  bfloat16: { name: 'bfloat16', short: 'bf16', bytes: 2 },
  q8_0: { name: 'q8_0', short: 'q8_0', bytes: 34 / 32, block: { values: 32, bytes: 34 } },
  q4_0: { name: 'q4_0', short: 'q4_0', bytes: 18 / 32, block: { values: 32, bytes: 18 } },
  q4_k: { name: 'q4_k', short: 'q4_k', bytes: 144 / 256, block: { values: 256, bytes: 144 } },
};

// ---- random weights ------------------------------------------------------------------------------
// xorshift32 straight into the typed array: ~2 ns per value, values ~U(-1,1)·scale. On a fresh
// array most of the time goes to first-touch page faults, not to the generator.

function fillF32(out, scale, seed) {
  let s = seed | 0 || 0x2545f491;
  const k = scale / 2147483648;
  for (let i = 0; i < out.length; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    out[i] = s * k;
  }
}

const CHUNK = 1 << 14;
const chunkF32 = new Float32Array(CHUNK);
const chunkBits = new Uint32Array(chunkF32.buffer);

// bfloat16 bits, rounded to nearest even from an f32 chunk (no NaN can occur here).
function fillBf16(out, scale, seed) {
  let s = seed | 0 || 0x2545f491;
  const k = scale / 2147483648;
  const n = out.length;
  for (let base = 0; base < n; base += CHUNK) {
    const m = Math.min(CHUNK, n - base);
    for (let i = 0; i < m; i++) {
      s ^= s << 13;
      s ^= s >>> 17;
      s ^= s << 5;
      chunkF32[i] = s * k;
    }
    for (let i = 0; i < m; i++) {
      const u = chunkBits[i];
      out[base + i] = (u + 0x7fff + ((u >>> 16) & 1)) >>> 16;
    }
  }
}

const SLICE = 1 << 24; // values per generator call: progress ticks between slices

/**
 * A [rows, cols] tensor of `dtype` with values ~U(-1,1)/sqrt(cols) (cols = fan-in), seeded.
 * `tick(fraction)` is called between slices of the fill.
 */
// A quantised matrix: random bytes with every f16 scale field set to a small finite value (about
// 2^-12 to 2^-10: values of the size of N(0, 1/cols) weights), and for q4_k each sub-block's min
// equal to its scale with dmin = 7.5 d, so that the values are centred on 0 as trained weights are
// (biased weights would blow a model's activations up). The timing of the kernels does not depend
// on the values, and generating blocks is ~100x faster than quantising random floats.
function randomBlocks(dtype, rows, cols, seed, tick) {
  const { values, bytes } = DTYPES[dtype].block;
  if (cols % values) throw new Error(`randomMatrix: ${dtype} needs cols a multiple of ${values}, got ${cols}`);
  const n = (rows * cols) / values;
  const data = new Uint8Array(n * bytes);
  const words = new Int32Array(data.buffer, 0, Math.floor(data.length / 4));
  let s = seed | 0 || 0x2545f491;
  for (let i = 0; i < words.length; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    words[i] = s;
    if (tick && (i & 0xfffff) === 0) tick(i / words.length);
  }
  // d's f16 exponent field per format, so that the values' RMS is about 1/32 (N(0, 1/1024))
  const exp = { q8_0: 3, q4_0: 7, q4_k: 2 }[dtype];
  for (let b = 0; b < n; b++) {
    const o = b * bytes;
    const h = ((exp + (b & 1)) << 10) | (b & 0x3ff);  // a positive f16 normal
    data[o] = h & 0xff;  // d (q8_0, q4_0, q4_k), then q4_k's dmin
    data[o + 1] = h >> 8;
    if (dtype === 'q4_k') {
      const hm = h + (3 << 10);  // dmin = 8 d: with sc = m the values are d*sc*(q - 8), centred on 0
      data[o + 2] = hm & 0xff;
      data[o + 3] = (hm >> 8) & 0xff;
      // scales[12] at o + 4: sc = m for every sub-block (scales[j] = scales[j + 4], equal nibbles in scales[8 + j])
      for (let j = 0; j < 4; j++) {
        data[o + 8 + j] = data[o + 4 + j];
        data[o + 12 + j] = (data[o + 12 + j] & 15) * 17;
      }
    }
  }
  return { type: dtype, data, dims: [rows, cols] };
}

function randomMatrix(dtype, rows, cols, seed, tick) {
  if (DTYPES[dtype] && DTYPES[dtype].block) return randomBlocks(dtype, rows, cols, seed, tick);
  const n = rows * cols;
  const scale = 1 / Math.sqrt(cols);
  if (dtype !== 'float32' && dtype !== 'bfloat16') throw new Error(`randomMatrix: unsupported dtype ${dtype}`);
  const f32 = dtype === 'float32';
  const data = f32 ? new Float32Array(n) : new Uint16Array(n);
  const fill = f32 ? fillF32 : fillBf16;
  for (let off = 0; off < n; off += SLICE) {
    fill(data.subarray(off, Math.min(n, off + SLICE)), scale, seed + off);
    if (tick) tick(Math.min(n, off + SLICE) / n);
  }
  return { type: dtype, data, dims: [rows, cols] };
}

/** Activations x [T,d], float32, ~U(-1,1); the same for every contender at a given T. */
function randomInput(T, d) {
  const data = new Float32Array(T * d);
  fillF32(data, 1, 0x51ed27 + T * 7919);
  return { type: 'float32', data, dims: [T, d] };
}

/** A seed per (contender, matrix, expert), so runs are reproducible and experts differ. */
function seedOf(...parts) {
  let h = 0x811c9dc5;
  for (const c of parts.join('/')) h = Math.imul(h ^ c.charCodeAt(0), 0x01000193);
  return h | 0 || 1;
}

// ---- progress on stderr --------------------------------------------------------------------------
// On a terminal one line is rewritten in place; in a log, a long step prints a line every 10 s.
// A step that takes more than a second ends with a line saying how long it took.

const tty = process.stderr.isTTY;

function progress(label, total) {
  const t0 = Date.now();
  let last = t0;
  let printed = false;
  const elapsed = () => ((Date.now() - t0) / 1000).toFixed(1);
  const self = {
    tick(done, what = '') {
      const now = Date.now();
      const text = `${label}: ${what || `${done}/${total}`} (${elapsed()} s)`;
      if (tty && now - last > 200) process.stderr.write(`\r\x1b[K${text}`);
      else if (!tty && now - last > 10000) process.stderr.write(`${text}\n`);
      else return;
      last = now;
      printed = true;
    },
    /** Awaits `promise`, ticking once a second meanwhile. */
    async during(promise, what) {
      const timer = setInterval(() => self.tick(0, what), 1000);
      try {
        return await promise;
      } finally {
        clearInterval(timer);
      }
    },
    done(what = 'done') {
      const s = (Date.now() - t0) / 1000;
      if (tty && printed) process.stderr.write('\r\x1b[K');
      if (s > 1 || printed) process.stderr.write(`${label}: ${what} in ${s.toFixed(1)} s\n`);
      return s;
    },
  };
  return self;
}

function note(msg) {
  process.stderr.write(`${msg}\n`);
}

// ---- memory --------------------------------------------------------------------------------------

let gcFn = null;
/** A full GC, so that dropped weight arrays give their memory back before the next layer is built. */
function collect() {
  if (!gcFn) {
    if (typeof global.gc === 'function') gcFn = global.gc;
    else {
      v8.setFlagsFromString('--expose-gc');
      gcFn = vm.runInNewContext('gc');
    }
  }
  gcFn();
  gcFn();
}

/** Peak resident set of the process so far, in bytes (maxRSS is in kilobytes). */
function peakRssBytes() {
  return process.resourceUsage().maxRSS * 1024;
}

/**
 * Calls handle(name, val, raw) for each command-line option: `--name=value` and `--name value` both
 * work; val() returns the value (taking the next argument when there was no '='), raw is the
 * argument as given.
 */
function forEachOption(argv, handle) {
  for (let i = 0; i < argv.length; i++) {
    let a = argv[i];
    let v;
    const eq = a.indexOf('=');
    if (a.startsWith('--') && eq > 0) [a, v] = [a.slice(0, eq), a.slice(eq + 1)];
    handle(a, () => (v !== undefined ? v : argv[++i]), argv[i]);
  }
}

/** The median of a list (the upper of the middle two for an even count). */
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

module.exports = { root, forEachOption, lib, native, SHAPES, DTYPES, randomMatrix, randomInput, seedOf, progress, note, collect, peakRssBytes, median };
