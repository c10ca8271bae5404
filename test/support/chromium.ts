// Headless Chromium (Debian's `chromium`) for pages the daemon serves: the DOM as the browser
// built it, and a screenshot. No browser library: the binary's own --dump-dom and --screenshot.
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { requiredTool, toolPath } from './tools.js';

export const chromium = requiredTool('chromium', 'apt-get install chromium');

function run(args: string[], timeoutMs: number): Promise<{ stdout: string; stderr: string }> {
  const profile = mkdtempSync(path.join(os.tmpdir(), 'pg-rekey-chromium-'));
  const argv = ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', `--user-data-dir=${profile}`, ...args];
  return new Promise((resolve, reject) => {
    execFile(toolPath(chromium), argv, { timeout: timeoutMs, maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`chromium ${args.join(' ')} failed within ${timeoutMs} ms: ${err.message}\n${stderr.slice(-2000)}`));
      else resolve({ stdout, stderr });
    });
  });
}

/** The page's DOM after loading, serialized by the browser. */
export async function dumpDom(url: string, timeoutMs = 60_000): Promise<string> {
  return (await run(['--dump-dom', url], timeoutMs)).stdout;
}

/** Writes a PNG screenshot of the page; returns its width and height (read from the PNG header). */
export async function screenshot(url: string, file: string, size = { width: 1200, height: 900 }, timeoutMs = 60_000): Promise<{ width: number; height: number; bytes: number }> {
  await run([`--screenshot=${file}`, `--window-size=${size.width},${size.height}`, '--hide-scrollbars', url], timeoutMs);
  const png = readFileSync(file);
  if (!png.subarray(0, 8).equals(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]))) throw new Error(`${file} is not a PNG`);
  return { width: png.readUInt32BE(16), height: png.readUInt32BE(20), bytes: png.length };
}
