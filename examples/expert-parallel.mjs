// Expert parallelism on CPU ranks: each rank keeps its share of every MoE layer's experts, routes
// its own tokens and exchanges rows with the other ranks by all-to-all (Open MPI, loaded at run
// time). Run: npx moe-kernels launch -n 4 examples/expert-parallel.mjs /models/mixtral-8x7b
import { MixtralModel, ProcessGroup } from 'moe-kernels';

const group = await ProcessGroup.init();     // rank and size from mpirun
const model = await MixtralModel.load(process.argv[2], { expertParallel: group });
const ids = await model.generateAll([1, 5, 9, 20], { maxNewTokens: 16 }); // every rank calls it
if (group.rank === 0) console.log(`rank 0 of ${group.size}:`, ids.join(' '));
model.dispose();
await group.close();
