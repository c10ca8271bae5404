import { EXIT_RUNTIME } from '../errors.js';
import type { Logger } from '../logger.js';

/**
 * The one bound on `run`'s shutdown (daemon.shutdown_timeout). The first stop
 * (a signal, convergence with --exit-when-converged, a failure, a lost lease)
 * arms it; the drain then finishes the work in flight (the stream's batch, its
 * commit and acknowledgement, the sweep's chunk and checkpoint, the final
 * status row). Whatever else is going on (a catalog refresh waiting for a
 * lock, a slot creation waiting for old transactions, a reconnect, a
 * convergence check waiting for the stream), the process exits when the bound
 * is reached:
 *
 * - drain not complete: exit 3, logging what was still in progress. Nothing is
 *   lost: unacknowledged changes replay from the slot, the sweep resumes from
 *   its last checkpoint.
 * - drain complete, but something still keeps the process (a read-only query
 *   that waits, a connection that does not close): exit with the run's own
 *   code, logging what was left.
 *
 * Each step of the shutdown is tracked by name so the log can say which.
 * A second signal exits at once (signals.ts).
 */
export class ShutdownBound {
  private timer: NodeJS.Timeout | null = null;
  private readonly pending = new Map<number, string>();
  private nextId = 0;
  private code: number | null = null;
  private armedAt = 0;
  private reason = '';

  constructor(
    readonly ms: number,
    private readonly log: Logger,
    private readonly exit: (code: number) => void = (code) => process.exit(code),
  ) {}

  get armed(): boolean {
    return this.timer !== null;
  }

  /** Starts the clock (first call only). */
  arm(reason: string): void {
    if (this.timer) return;
    this.armedAt = Date.now();
    this.reason = reason;
    this.timer = setTimeout(() => this.fire(), this.ms);
    // Only a process that would otherwise stay alive needs it.
    this.timer.unref();
  }

  /** Names a step of the shutdown until it settles; returns `p`. */
  track<T>(what: string, p: Promise<T>): Promise<T> {
    const id = this.nextId++;
    this.pending.set(id, what);
    const done = () => void this.pending.delete(id);
    p.then(done, done);
    return p;
  }

  /** The drain is complete: past the bound, exit with `code` instead of 3. */
  drained(code: number): void {
    this.code ??= code;
  }

  /** What is still in progress, oldest first. */
  left(): string[] {
    return [...this.pending.values()];
  }

  private fire(): void {
    const left = this.left();
    const fields = { component: 'shutdown', boundMs: this.ms, stopReason: this.reason, waitedMs: Date.now() - this.armedAt, left };
    const what = left.length ? left.join('; ') : 'nothing tracked (an open handle keeps the process alive)';
    if (this.code !== null) {
      this.log.warn(fields, `drain complete; exiting without waiting any longer (daemon.shutdown_timeout ${this.ms / 1000} s) for: ${what}`);
      this.exit(this.code);
    } else {
      this.log.error(
        fields,
        `shutdown did not finish within daemon.shutdown_timeout (${this.ms / 1000} s); exiting anyway (exit 3) with this still in progress: ${what}. ` +
          'Nothing is lost: changes not acknowledged replay from the slot at the next start and the sweep resumes from its last checkpoint',
      );
      this.exit(EXIT_RUNTIME);
    }
  }
}
