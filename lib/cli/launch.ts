/**
 * `moe-kernels launch -n N app.js [args]`: runs N copies of a Node program as one MPI job (one
 * ProcessGroup), by wrapping Open MPI's mpirun. It adds --oversubscribe (more ranks than cores is
 * fine for CPU ranks), --bind-to none (a rank's compute pool spreads over the cores it is given),
 * and --allow-run-as-root when run as root (containers); with --threads-per-rank it sets
 * MOE_NUM_THREADS on every rank; with --gpu-per-rank each rank takes the GPU of its local rank.
 */
import { spawn } from 'node:child_process';
import { constants as osConstants } from 'node:os';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { MoeError } from '../core/errors.js';
import type { CliIo } from './cli.js';

export const LAUNCH_HELP = `Usage: moe-kernels launch -n <ranks> [options] [--] <app.js> [app args...]

Runs <ranks> processes of 'node <app.js>' as one MPI job (mpirun from Open MPI), so that each one's
ProcessGroup.init() joins the same group: expert parallelism on CPU ranks, or one rank per GPU.

Options:
  -n, --ranks <n>            processes to start (required)
  --threads-per-rank <n>     MOE_NUM_THREADS of each rank (default: the addon's own choice)
  --gpu-per-rank             each rank uses the GPU of its local rank on its node
                             (MOE_CUDA_DEVICE=local-rank); with NCCL, the rows of an
                             expert-parallel model then go GPU to GPU
  --node-arg <arg>           an option for node itself (repeatable), e.g. --node-arg=-r --node-arg=tsx/cjs
  --mpirun-arg <arg>         an extra mpirun option (repeatable), e.g. --mpirun-arg=--tag-output
  --dry-run                  print the mpirun command instead of running it
  -h, --help                 this help

Environment: MOE_MPIRUN names the mpirun to run (default: mpirun on the PATH).
Install Open MPI: apt-get install openmpi-bin libopenmpi-dev (Debian/Ubuntu).
`;

class LaunchUsageError extends Error {}

/** The mpirun arguments for the options (exported for tests). */
export function launchCommand(argv: string[], env: NodeJS.ProcessEnv = process.env, isRoot = process.getuid?.() === 0): { mpirun: string; args: string[]; dryRun: boolean } {
  // launch's own options end at the program (or at --): what follows is the program's
  const withValue = new Set(['-n', '--ranks', '--threads-per-rank', '--node-arg', '--mpirun-arg']);
  let i = 0;
  while (i < argv.length && argv[i] !== '--' && argv[i].startsWith('-')) i += withValue.has(argv[i]) ? 2 : 1;
  const program = argv.slice(argv[i] === '--' ? i + 1 : i);
  const { values } = parseArgs({
    args: argv.slice(0, i),
    allowPositionals: false,
    strict: true,
    options: {
      ranks: { type: 'string', short: 'n' },
      'threads-per-rank': { type: 'string' },
      'gpu-per-rank': { type: 'boolean' },
      'node-arg': { type: 'string', multiple: true },
      'mpirun-arg': { type: 'string', multiple: true },
      'dry-run': { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.ranks === undefined) throw new LaunchUsageError('-n <ranks> is required');
  const n = Number(values.ranks);
  if (!Number.isInteger(n) || n < 1 || n > 4096) throw new LaunchUsageError(`-n must be an integer in [1, 4096], got '${values.ranks}'`);
  if (program.length === 0) throw new LaunchUsageError('the program to run is missing (moe-kernels launch -n 2 app.js)');
  const args = ['--oversubscribe', '--bind-to', 'none'];
  if (isRoot) args.push('--allow-run-as-root');
  const threads = values['threads-per-rank'];
  if (threads !== undefined) {
    const t = Number(threads);
    if (!Number.isInteger(t) || t < 1 || t > 1024) throw new LaunchUsageError(`--threads-per-rank must be an integer in [1, 1024], got '${threads}'`);
    args.push('-x', `MOE_NUM_THREADS=${t}`);
  }
  if (values['gpu-per-rank']) args.push('-x', 'MOE_CUDA_DEVICE=local-rank');
  args.push(...(values['mpirun-arg'] ?? []));
  args.push('-np', String(n), process.execPath, ...(values['node-arg'] ?? []), ...program);
  return { mpirun: env.MOE_MPIRUN || 'mpirun', args, dryRun: values['dry-run'] === true };
}

/** The path of a command: itself when it has a slash, else its place on the PATH; null if none. */
function which(cmd: string, env: NodeJS.ProcessEnv): string | null {
  if (cmd.includes('/')) return fs.existsSync(cmd) ? cmd : null;
  for (const dir of (env.PATH ?? '').split(path.delimiter)) {
    if (!dir) continue;
    const p = path.join(dir, cmd);
    try {
      fs.accessSync(p, fs.constants.X_OK);
      return p;
    } catch {
      // not here
    }
  }
  return null;
}

export async function launch(argv: string[], io: CliIo): Promise<number> {
  if (argv[0] === '-h' || argv[0] === '--help') {
    io.stdout.write(LAUNCH_HELP);
    return 0;
  }
  let cmd: ReturnType<typeof launchCommand>;
  try {
    cmd = launchCommand(argv);
  } catch (e) {
    const err = e as Error & { code?: string };
    if (e instanceof LaunchUsageError || err.code?.startsWith('ERR_PARSE_ARGS')) {
      io.stderr.write(`moe-kernels launch: ${err.message}\n\n${LAUNCH_HELP}`);
      return 2;
    }
    throw e;
  }
  const quoted = [cmd.mpirun, ...cmd.args].map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`)).join(' ');
  if (cmd.dryRun) {
    io.stdout.write(`${quoted}\n`);
    return 0;
  }
  const mpirun = which(cmd.mpirun, process.env);
  if (!mpirun)
    throw new MoeError(
      `${cmd.mpirun} not found: install Open MPI (Debian/Ubuntu: apt-get install openmpi-bin libopenmpi-dev) or set MOE_MPIRUN`,
      'ERR_DIST_UNAVAILABLE',
    );
  return new Promise<number>((resolve, reject) => {
    const child = spawn(mpirun, cmd.args, { stdio: 'inherit' });
    // Ctrl-C reaches mpirun through the terminal's process group; SIGTERM to us is passed on.
    const onTerm = () => child.kill('SIGTERM');
    process.on('SIGTERM', onTerm);
    child.on('error', (e) => {
      process.removeListener('SIGTERM', onTerm);
      reject(e);
    });
    child.on('exit', (code, signal) => {
      process.removeListener('SIGTERM', onTerm);
      resolve(code ?? 128 + (signal ? (osConstants.signals[signal] ?? 0) : 0));
    });
  });
}
