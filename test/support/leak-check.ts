// setupFiles of the integration and ha projects: a test whose CLI output contained key material
// fails (afterEach), and so does a file whose hooks ran such a CLI (afterAll: daemons stopped there).
import { afterAll, afterEach } from 'vitest';
import { takeLeaks } from './key-leak.js';

function check(): void {
  const leaks = takeLeaks();
  if (leaks.length) throw new Error(`key material in pg-rekey's output (never allowed in logs or errors):\n${leaks.join('\n')}`);
}

afterEach(check);
afterAll(check);
