// Runs a pg-rekey CLI (of any checkout) the way pg-rekey-cli.ts does, with mem-probe.mjs preloaded:
// wall time, CPU, peak RSS (VmHWM), process.memoryUsage() peaks and samples, and when the sweep's
// first pass started and ended (from its JSON log lines). For fast-path.ts and rss.ts.
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { startCli, type CliRun } from './pg-rekey-cli.js';

const PROBE = path.join(import.meta.dirname, 'mem-probe.mjs');

export interface MemorySample {
  t: number;
  rss: number;
  heapTotal: number;
  heapUsed: number;
  external: number;
  arrayBuffers: number;
}

export interface MeasuredRun extends CliRun {
  /** From mem-probe.mjs (MB); null when it wrote nothing. */
  memory: { everyMs: number; peak: Omit<MemorySample, 't'>; samples: MemorySample[] } | null;
  /** Epoch ms of the log line before the first chunk (the target-key proof's) and of the first "relation swept". */
  firstChunkAtMs: number | null;
  sweptAtMs: number | null;
}

/** `node <root>/bin/pg-rekey.js <args>` with the memory probe writing to `memFile`; `nodeOptions` are added to NODE_OPTIONS (e.g. --cpu-prof). */
export async function runMeasured(root: string, args: string[], memFile: string, nodeOptions = ''): Promise<MeasuredRun> {
  // NODE_OPTIONS replaces the caller's: the probe and `nodeOptions` only.
  const run = await startCli(args, { root, env: { NODE_OPTIONS: `--import ${PROBE} ${nodeOptions}`.trim(), BENCH_MEM_PROBE: memFile } }).done;
  let firstChunkAtMs: number | null = null;
  let sweptAtMs: number | null = null;
  for (const line of run.stderr.split('\n')) {
    if (!line.startsWith('{')) continue;
    try {
      const l = JSON.parse(line) as { time?: number; msg?: string; component?: string };
      if (typeof l.time !== 'number') continue;
      if (sweptAtMs === null && l.msg === 'relation swept') sweptAtMs = l.time;
      if (sweptAtMs === null && l.component !== 'sweep') firstChunkAtMs = l.time;
    } catch {
      // not a log line
    }
  }
  const memory = existsSync(memFile) ? (JSON.parse(readFileSync(memFile, 'utf8')) as MeasuredRun['memory']) : null;
  return { ...run, memory, firstChunkAtMs, sweptAtMs };
}
