/**
 * stderr on a terminal carries two things: log lines and one redrawn status line (backfill's progress bar).
 * This module owns that status line, so a log line never tears through it: the bar is cleared, the log
 * line written, the bar drawn again below it.
 */

import { pino } from 'pino';

export interface LineWriter {
  write(text: string): unknown;
}

export class StderrLine {
  private status = '';
  constructor(private readonly out: LineWriter) {}

  /** Writes complete lines (each ending with \n) above the status line. */
  log(lines: string): void {
    if (this.status) this.out.write(`\r\x1b[K${lines}${this.status}`);
    else this.out.write(lines);
  }

  /** Replaces the status line (no newline). */
  draw(text: string): void {
    this.status = text;
    this.out.write(`\r\x1b[K${text}`);
  }

  /** Ends the status line with `final` (kept on screen) and forgets it. */
  end(final: string): void {
    this.status = '';
    this.out.write(`\r\x1b[K${final}\n`);
  }
}

/**
 * The process's one stderr status line, written synchronously (pino's sonic-boom on fd 2, which retries
 * EAGAIN): the last log lines before an exit, the reason for it, are on stderr before the process ends.
 */
export const stderrLine = new StderrLine(pino.destination({ fd: 2, sync: true }));
