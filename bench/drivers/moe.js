'use strict';
// Contender: the sparse MoE layer (MoeLayer): a router over E experts, top-k, SwiGLU experts of
// intermediate size f, weighted combine.
//
// A driver is a factory (shape, dtype) -> contender, with
//   name, label          how the tables and the JSON call it
//   fDense               the dense FFN's intermediate size (null for the MoE layer)
//   async setup()        generates the weights (seeded), builds the layer and drops the arrays
//   fn(x) -> Promise     one forward on x [T,d]: the call benchmark.js times
//   cost(T)              { bytes, flops, expertsUsed } of one forward at T, after fn ran at T
//   teardown()           frees the layer's packed weights
const { DTYPES, lib, progress, randomMatrix, seedOf } = require('../common');

module.exports = function moe(shape, dtype) {
  const { d, f, E, k } = shape;
  const bpw = DTYPES[dtype].bytes;
  const tag = `${DTYPES[dtype].short} moe`;
  let layer = null;
  let routed = null; // { x, counts }: the routing of the last input seen, from the layer itself

  return {
    name: 'moe',
    label: `MoE E=${E} k=${k}`,
    fDense: null,

    async setup() {
      const { MoeLayer } = lib();
      // Expert by expert, as separate arrays: the layer accepts w1 as E tensors of [f,d].
      const p = progress(`${tag}: weights`, E);
      // the router stays float (bf16) when the experts are quantised
      const gate = randomMatrix(DTYPES[dtype].block ? 'bfloat16' : dtype, E, d, seedOf('moe', 'gate'));
      const w1 = [];
      const w3 = [];
      const w2 = [];
      for (let e = 0; e < E; e++) {
        w1.push(randomMatrix(dtype, f, d, seedOf('moe', 'w1', e)));
        w3.push(randomMatrix(dtype, f, d, seedOf('moe', 'w3', e)));
        w2.push(randomMatrix(dtype, d, f, seedOf('moe', 'w2', e)));
        p.tick(e + 1, `expert ${e + 1}/${E}`);
      }
      p.done(`${E} experts generated`);
      const q = progress(`${tag}: pack`, 1);
      layer = await q.during(MoeLayer.create({ gate, w1, w3, w2 }, { topK: k }), 'packing');
      q.done(`layer built, ${(layer.bytes / 1e9).toFixed(2)} GB packed`);
      // gate, w1, w3, w2 go out of scope here: the layer holds its own packed copy.
    },

    fn(x) {
      if (routed && routed.x === x) return layer.forward(x);
      // First call on this input: also take the routing, to count the experts it reads.
      return layer.forward(x, { returnRouting: true }).then((r) => {
        routed = { x, counts: Array.from(r.routing.tokensPerExpert.data) };
      });
    },

    cost(T) {
      if (!routed || routed.x.dims[0] !== T) throw new Error(`moe.cost(${T}): fn has not run at T=${T}`);
      // Bytes: the experts that got at least one token (3 matrices of d·f each) plus the router.
      const used = routed.counts.filter((c) => c > 0).length;
      return {
        bytes: used * 3 * d * f * bpw + E * d * (DTYPES[dtype].block ? 2 : bpw),
        flops: 2 * T * k * 3 * d * f + 2 * T * E * d,
        expertsUsed: used,
        tokensPerExpert: routed.counts,
      };
    },

    teardown() {
      if (layer) layer.dispose();
      layer = null;
      routed = null;
    },
  };
};
