'use strict';
// Contender: a dense SwiGLU FFN with the MoE layer's active parameters per token, f_dense = k·f.
// The same FLOPs per token as the MoE layer: what routing, permutation and combine cost on top.
const dense = require('./dense');

module.exports = (shape, dtype) => dense('dense-active', `dense f=k·f`, shape, dtype, shape.k * shape.f);
