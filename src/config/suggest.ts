/**
 * "Did you mean": the names closest to a name that was not found. Pure.
 * A name that differs only in case comes first (PostgreSQL folds unquoted names to lower
 * case, so `Note` in the config is `note`, and a column created as "Note" needs quotes),
 * then names within a small edit distance.
 */

/** Edit distance counting a swap of two neighbours as one edit (`titel` -> `title`), with an early exit above `max` (returns max + 1). */
export function editDistance(a: string, b: string, max = Infinity): number {
  if (Math.abs(a.length - b.length) > max) return max + 1;
  let before: number[] = [];
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    let rowMin = i;
    for (let j = 1; j <= b.length; j++) {
      let v = Math.min(prev[j]! + 1, cur[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) v = Math.min(v, before[j - 2]! + 1);
      cur.push(v);
      rowMin = Math.min(rowMin, v);
    }
    if (rowMin > max) return max + 1;
    before = prev;
    prev = cur;
  }
  return prev[b.length]!;
}

/** Up to `limit` candidates, closest first; none when nothing is close. */
export function closest(name: string, candidates: Iterable<string>, limit = 3): string[] {
  const lower = name.toLowerCase();
  const max = Math.max(1, Math.floor(name.length / 3));
  const scored: { c: string; d: number }[] = [];
  for (const c of new Set(candidates)) {
    if (c === name) continue;
    const d = c.toLowerCase() === lower ? 0 : editDistance(lower, c.toLowerCase(), max);
    if (d <= max) scored.push({ c, d });
  }
  return scored
    .sort((x, y) => x.d - y.d || x.c.localeCompare(y.c))
    .slice(0, limit)
    .map((s) => s.c);
}

/** ` (did you mean a, b?)`, or '' when nothing is close. `show` writes a candidate as the user should. */
export function didYouMean(name: string, candidates: Iterable<string>, show: (c: string) => string = (c) => c): string {
  const found = closest(name, candidates);
  return found.length ? ` (did you mean ${found.map(show).join(', ')}?)` : '';
}
