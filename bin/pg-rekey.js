#!/usr/bin/env -S node --
// Thin runner: the compiled CLI lives in dist/ (built by `npm ci` through the `prepare` script).
// The `--` in the line above stops Node 20 from reading `--env-file` (ours) as its own flag: it would exit 9
// on a missing file, or load the file into the environment with its own parser.
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const cli = new URL('../dist/cli.js', import.meta.url);
if (!existsSync(fileURLToPath(cli))) {
  process.stderr.write('pg-rekey: dist/ is missing; run `npm run build` (or `npm ci`) in the pg-rekey checkout first.\n');
  process.exit(3);
}
await import(cli.href);
