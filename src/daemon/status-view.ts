import type { StatusReport } from '../commands/status.js';
import type { ConvergenceCheck } from './convergence.js';
import { renderStatusPage, type CheckRecord, type LiveView } from './status-page.js';

/** The last few convergence checks, newest first, for the status page. */
export class CheckHistory {
  private readonly items: CheckRecord[] = [];

  constructor(private readonly keep = 10) {}

  record(c: ConvergenceCheck, at: Date, counted: string[]): void {
    this.items.unshift({
      at,
      sweepDone: c.sweepDone,
      streamCaughtUp: c.streamCaughtUp,
      remaining: c.remaining,
      quarantined: c.quarantined,
      openTransactions: c.openTransactions.length,
      converged: c.converged,
      blockers: [...c.blockers],
      counted,
      remainingByLeaf: { ...c.remainingByLeaf },
    });
    this.items.length = Math.min(this.items.length, this.keep);
  }

  get list(): CheckRecord[] {
    return [...this.items];
  }
}

/**
 * Serves `/`: the state tables (what `pg-rekey status` reads) and the daemon's own view, as HTML.
 * Requests within `cacheMs` of a read share it, so a page left open (or many) costs the pool
 * one status read per second at most; a database that cannot be read still gives a page.
 */
export class StatusPageSource {
  private last: { at: number; report: Promise<StatusReport> } | null = null;

  constructor(
    private readonly read: () => Promise<StatusReport>,
    private readonly live: () => LiveView,
    private readonly opts: { refreshSeconds: number; cacheMs: number } = { refreshSeconds: 5, cacheMs: 1000 },
  ) {}

  async html(): Promise<string> {
    const now = Date.now();
    if (!this.last || now - this.last.at >= this.opts.cacheMs) this.last = { at: now, report: this.read() };
    let report: StatusReport | null = null;
    let error: string | null = null;
    try {
      report = await this.last.report;
    } catch (err) {
      error = (err as Error).message;
    }
    return renderStatusPage({ now: new Date(now), live: this.live(), report, error, refreshSeconds: this.opts.refreshSeconds });
  }
}
