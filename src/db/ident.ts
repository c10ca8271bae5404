/**
 * Identifiers from the config reach SQL only through quoteIdent: doubled
 * double quotes inside, wrapped in double quotes. Values never reach SQL text;
 * they go through $n parameters.
 */
export function quoteIdent(name: string): string {
  if (name.includes('\0')) throw new Error('identifier contains a NUL byte');
  return `"${name.replace(/"/g, '""')}"`;
}

export interface QualifiedName {
  schema: string;
  name: string;
}

export function quoteQualified(q: QualifiedName): string {
  return `${quoteIdent(q.schema)}.${quoteIdent(q.name)}`;
}

/** Human display: schema.name, quoting only parts that need it. */
export function displayName(q: QualifiedName): string {
  const part = (s: string) => (/^[a-z_][a-z0-9_$]*$/.test(s) ? s : quoteIdent(s));
  return `${part(q.schema)}.${part(q.name)}`;
}

/**
 * Parses `name`, `schema.name`, `"Mixed Case"."a.b"` the way PostgreSQL does:
 * unquoted parts fold ASCII letters to lower case, quoted parts keep case and may contain
 * dots, spaces, semicolons and doubled quotes. Returns the parts, or an error
 * text saying what is wrong.
 */
export function parseIdentifierPath(text: string): string[] | string {
  const parts: string[] = [];
  let i = 0;
  const s = text.trim();
  while (i < s.length) {
    if (s[i] === '"') {
      let j = i + 1;
      let out = '';
      for (;;) {
        if (j >= s.length) return `unterminated quoted identifier in ${JSON.stringify(text)}`;
        if (s[j] === '"') {
          if (s[j + 1] === '"') {
            out += '"';
            j += 2;
            continue;
          }
          break;
        }
        out += s[j++];
      }
      if (out === '') return `empty quoted identifier in ${JSON.stringify(text)}`;
      parts.push(out);
      i = j + 1;
    } else {
      const m = /^[A-Za-z_\u0080-\uffff][A-Za-z0-9_$\u0080-\uffff]*/.exec(s.slice(i));
      if (!m) return `unexpected character ${JSON.stringify(s[i])} in ${JSON.stringify(text)}; quote unusual names: "My Table"`;
      // PostgreSQL folds only ASCII A-Z; multibyte (UTF-8) letters keep their case.
      parts.push(m[0].replace(/[A-Z]+/g, (u) => u.toLowerCase()));
      i += m[0].length;
    }
    if (i < s.length) {
      if (s[i] !== '.') return `expected "." after ${JSON.stringify(parts[parts.length - 1])} in ${JSON.stringify(text)}`;
      i++;
      if (i >= s.length) return `name ends with "." in ${JSON.stringify(text)}`;
    }
  }
  return parts.length ? parts : 'empty name';
}
