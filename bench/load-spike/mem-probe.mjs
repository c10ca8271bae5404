// Preloaded into a pg-rekey CLI process (NODE_OPTIONS="--import <this file>") by bench/load-spike/rss.ts:
// samples process.memoryUsage() every BENCH_MEM_PROBE_MS (100) ms and, at exit, writes the peak of each
// field and every sample (MB) to the file named by BENCH_MEM_PROBE. Bench-only; pg-rekey never loads it.
import { writeFileSync } from 'node:fs';

const file = process.env.BENCH_MEM_PROBE;
if (file) {
  const every = Number(process.env.BENCH_MEM_PROBE_MS ?? 100);
  const t0 = performance.now();
  const samples = [];
  const mb = (n) => Math.round((n / 2 ** 20) * 10) / 10;
  const sample = () => {
    const m = process.memoryUsage();
    samples.push({ t: Math.round(performance.now() - t0), rss: mb(m.rss), heapTotal: mb(m.heapTotal), heapUsed: mb(m.heapUsed), external: mb(m.external), arrayBuffers: mb(m.arrayBuffers) });
  };
  const timer = setInterval(sample, every);
  timer.unref();
  process.on('exit', () => {
    sample();
    const peak = {};
    for (const s of samples) for (const [k, v] of Object.entries(s)) if (k !== 't') peak[k] = Math.max(peak[k] ?? 0, v);
    writeFileSync(file, JSON.stringify({ everyMs: every, peak, samples }));
  });
}
