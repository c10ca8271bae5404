/**
 * A PostgreSQL array literal (`{"a","b",NULL}`) for a one-dimensional text-like array, the same
 * text node-postgres builds for a JS array parameter (pg/lib/utils.js arrayString): every element
 * double-quoted, `\` and `"` backslash-escaped, null as NULL. Built here because node-postgres runs
 * two regular-expression replacements per element and concatenates one element at a time; the
 * sweep's compare-and-swap sends three such arrays of ~11k elements per chunk in `--fast` mode.
 * Pass the result as the parameter (`$1::text[]`, `$1::tid[]`): the server parses the same text.
 */
export function arrayLiteral(values: readonly (string | null | undefined)[]): string {
  const parts = new Array<string>(values.length);
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (v === null || v === undefined) parts[i] = 'NULL';
    else if (v.includes('\\') || v.includes('"')) parts[i] = `"${v.replace(/[\\"]/g, '\\$&')}"`;
    else parts[i] = `"${v}"`;
  }
  return `{${parts.join(',')}}`;
}
