import { readFileSync } from 'node:fs';

/** pg-rekey's own version, from the package.json beside dist/ (and src/): one source for it. */
export const PG_REKEY_VERSION: string = (JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }).version;
