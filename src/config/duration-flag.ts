import { ConfigError } from '../errors.js';
import { duration, toMillis } from './schema.js';

/** A duration flag such as --quiet-period 15m, in ms; a configuration error (exit 2) otherwise. */
export function parseDurationFlag(flag: string, text: string): number {
  if (!duration.safeParse(text).success) throw new ConfigError(`${flag} ${JSON.stringify(text)} is not a duration`, 'give a duration like 15m, 90s or 1h');
  return toMillis(text);
}
