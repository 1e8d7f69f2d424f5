/**
 * Runs a helper script of test/helpers in a child process (`node -r tsx/cjs helpers/<script> <mode>`)
 * with extra environment variables that the native module reads once at load time
 * (MOE_NUM_THREADS, MOE_CPU_KERNEL), asserts that it exited with 0 and returns its last stdout line
 * parsed as JSON.
 */
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import * as assert from 'uvu/assert';

export function runChild(script: string, mode: string, env: Record<string, string>) {
  const r = spawnSync(process.execPath, ['-r', 'tsx/cjs', path.join(__dirname, script), mode], {
    cwd: path.join(__dirname, '..', '..'),
    env: { ...process.env, ...env },
    encoding: 'utf8',
    maxBuffer: 1 << 26,
    timeout: 120_000,
  });
  assert.is(r.status, 0, `child ${script} ${mode} ${JSON.stringify(env)} failed (status ${r.status}, signal ${r.signal}):\n${r.stderr}`);
  const line = r.stdout.trim().split('\n').pop()!;
  return JSON.parse(line);
}
