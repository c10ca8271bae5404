// bench/results-p99-vs-rate.svg: foreground p99 against rows rotated per second, one point per rotation,
// a colour per workload, both axes logarithmic; a dashed line at 1.10x each workload's baseline p99.
// Plain SVG written here (no plotting dependency).
import type { ScenarioResult } from './report.js';

const W = 900;
const H = 560;
const M = { left: 70, right: 250, top: 40, bottom: 60 };
const COLORS: Record<ScenarioResult['workload'], string> = { bench: '#1f77b4', pgbench: '#d62728' };
const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

/** Powers of ten (and 2x, 5x) between lo and hi, for log-axis ticks. */
function ticks(lo: number, hi: number): number[] {
  const out: number[] = [];
  for (let e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e++) {
    for (const m of [1, 2, 5]) {
      const v = m * 10 ** e;
      if (v >= lo && v <= hi) out.push(v);
    }
  }
  return out;
}

const label = (v: number) => (v >= 1000 ? `${v / 1000}k` : String(v));

export function renderPlot(results: readonly ScenarioResult[]): string {
  const points = results.filter((r) => r.rotation && r.rotation.rowsPerSec > 0 && r.latency.p99 > 0);
  const baselines = results.filter((r) => r.key === 'baseline');
  const xs = points.map((r) => r.rotation!.rowsPerSec);
  const ys = [...points.map((r) => r.latency.p99), ...baselines.map((b) => b.latency.p99 * 1.1)];
  if (points.length === 0) return `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="80"><text x="10" y="40">no rotation measured</text></svg>\n`;
  const [x0, x1] = [10 ** Math.floor(Math.log10(Math.min(...xs))), 10 ** Math.ceil(Math.log10(Math.max(...xs)))];
  const [y0, y1] = [10 ** Math.floor(Math.log10(Math.min(...ys) * 0.9)), 10 ** Math.ceil(Math.log10(Math.max(...ys) * 1.1))];
  const px = (x: number) => M.left + ((Math.log10(x) - Math.log10(x0)) / (Math.log10(x1) - Math.log10(x0))) * (W - M.left - M.right);
  const py = (y: number) => H - M.bottom - ((Math.log10(y) - Math.log10(y0)) / (Math.log10(y1) - Math.log10(y0))) * (H - M.top - M.bottom);
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${M.left}" y="22" font-size="15">Foreground p99 against rotation speed (one point per rotation; lower right is better)</text>`,
  ];
  for (const t of ticks(x0, x1)) {
    out.push(`<line x1="${px(t)}" y1="${M.top}" x2="${px(t)}" y2="${H - M.bottom}" stroke="#eee"/>`, `<text x="${px(t)}" y="${H - M.bottom + 16}" text-anchor="middle">${label(t)}</text>`);
  }
  for (const t of ticks(y0, y1)) {
    out.push(`<line x1="${M.left}" y1="${py(t)}" x2="${W - M.right}" y2="${py(t)}" stroke="#eee"/>`, `<text x="${M.left - 6}" y="${py(t) + 4}" text-anchor="end">${t}</text>`);
  }
  out.push(
    `<rect x="${M.left}" y="${M.top}" width="${W - M.left - M.right}" height="${H - M.top - M.bottom}" fill="none" stroke="#333"/>`,
    `<text x="${(M.left + W - M.right) / 2}" y="${H - 18}" text-anchor="middle">rows rotated per second (log)</text>`,
    `<text transform="translate(18 ${(M.top + H - M.bottom) / 2}) rotate(-90)" text-anchor="middle">foreground p99, ms (log)</text>`,
  );
  for (const b of baselines) {
    const y = py(b.latency.p99 * 1.1);
    out.push(`<line x1="${M.left}" y1="${y}" x2="${W - M.right}" y2="${y}" stroke="${COLORS[b.workload]}" stroke-dasharray="6 4"/>`);
    out.push(`<text x="${W - M.right - 4}" y="${y - 4}" text-anchor="end" fill="${COLORS[b.workload]}">1.10x ${b.workload} baseline (${b.latency.p99.toFixed(2)} ms)</text>`);
  }
  points.forEach((r, i) => {
    const c = COLORS[r.workload];
    const [x, y] = [px(r.rotation!.rowsPerSec), py(r.latency.p99)];
    out.push(`<circle cx="${x}" cy="${y}" r="5" fill="${c}"/>`, `<text x="${x + 7}" y="${y - 6}" fill="${c}">${i + 1}</text>`);
  });
  // Legend: number, workload, scenario, figures.
  out.push(`<text x="${W - M.right + 12}" y="${M.top + 4}" font-weight="bold">points</text>`);
  points.forEach((r, i) => {
    const y = M.top + 22 + i * 30;
    const title = r.title.length > 34 ? `${r.title.slice(0, 33)}…` : r.title;
    out.push(
      `<text x="${W - M.right + 12}" y="${y}" fill="${COLORS[r.workload]}">${i + 1}. ${esc(title)}</text>`,
      `<text x="${W - M.right + 26}" y="${y + 13}" fill="#555">${r.workload}: ${Math.round(r.rotation!.rowsPerSec)} rows/s, p99 ${r.latency.p99.toFixed(2)} ms</text>`,
    );
  });
  out.push('</svg>');
  return `${out.join('\n')}\n`;
}
