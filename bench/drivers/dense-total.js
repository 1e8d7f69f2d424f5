'use strict';
// Contender: a dense SwiGLU FFN with the MoE layer's total parameters, f_dense = E·f. It reads
// every weight for every token: what the MoE layer's sparsity saves.
const dense = require('./dense');

module.exports = (shape, dtype) => dense('dense-total', `dense f=E·f`, shape, dtype, shape.E * shape.f);
