'use strict';
// The dense SwiGLU FFN baseline (DenseFfn), out = W2 (silu(W1 x) * (W3 x)) with W1, W3 [fDense,d]
// and W2 [d,fDense]; dense-total.js and dense-active.js pick fDense. Same contract as moe.js.
const { DTYPES, lib, progress, randomMatrix, seedOf } = require('../common');

module.exports = function dense(name, label, shape, dtype, fDense) {
  const { d } = shape;
  const bpw = DTYPES[dtype].bytes;
  const tag = `${DTYPES[dtype].short} ${name}`;
  let ffn = null;

  return {
    name,
    label,
    fDense,

    async setup() {
      const { DenseFfn } = lib();
      const p = progress(`${tag}: weights`, 3);
      const part = (i) => (frac) => p.tick(i, `matrix ${i + 1}/3, ${Math.round(frac * 100)}%`);
      const w1 = randomMatrix(dtype, fDense, d, seedOf(name, 'w1'), part(0));
      const w3 = randomMatrix(dtype, fDense, d, seedOf(name, 'w3'), part(1));
      const w2 = randomMatrix(dtype, d, fDense, seedOf(name, 'w2'), part(2));
      p.done(`3 matrices generated (f_dense=${fDense})`);
      const q = progress(`${tag}: pack`, 1);
      ffn = await q.during(DenseFfn.create({ w1, w3, w2 }), 'packing');
      q.done(`layer built, ${(ffn.bytes / 1e9).toFixed(2)} GB packed`);
    },

    fn(x) {
      return ffn.forward(x);
    },

    cost(T) {
      return { bytes: 3 * d * fDense * bpw, flops: 2 * T * 3 * d * fDense, expertsUsed: null };
    },

    teardown() {
      if (ffn) ffn.dispose();
      ffn = null;
    },
  };
};
