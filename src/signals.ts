import type { Logger } from './logger.js';
import { EXIT_RUNTIME } from './errors.js';

/**
 * First SIGINT/SIGTERM: ask the work to drain (finish the chunk or batch in
 * flight, checkpoint, acknowledge). Second: exit at once; the work replays
 * from the last checkpoint on the next start. Returns a function that
 * removes the handlers.
 */
export function onShutdownSignals(log: Logger, drain: (signal: NodeJS.Signals) => void): () => void {
  let seen = 0;
  const handler = (signal: NodeJS.Signals) => {
    seen++;
    if (seen === 1) {
      log.info({ component: 'signals', signal }, 'draining: finishing the work in flight, then exiting (send again to exit at once)');
      drain(signal);
    } else {
      log.warn({ component: 'signals', signal }, 'second signal: exiting now; unfinished work replays on restart');
      process.exit(EXIT_RUNTIME);
    }
  };
  process.on('SIGINT', handler);
  process.on('SIGTERM', handler);
  return () => {
    process.off('SIGINT', handler);
    process.off('SIGTERM', handler);
  };
}
