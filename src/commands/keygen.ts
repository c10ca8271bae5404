import { EXIT_OK } from '../errors.js';
import { randomKey } from '../crypto/secretbox.js';

/** Prints a new random 32-byte key as 64 hex characters (stdout only, never logged). */
export function keygenCommand(): number {
  const key = randomKey();
  process.stdout.write(`${Buffer.from(key).toString('hex')}\n`);
  key.fill(0);
  return EXIT_OK;
}
