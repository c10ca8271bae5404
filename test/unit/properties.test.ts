// Property-based tests (fast-check) of the codec and of the two "value -> what to write"
// mappings: the sweep's evaluateRows and the stream's planRowWork. Run counts are kept
// modest so this file stays well under a few seconds.
import { createHash } from 'node:crypto';
import fc from 'fast-check';
import { beforeAll, describe, expect, it } from 'vitest';
import { evaluateRows, type ScannedRow } from '../../src/backfill/evaluate-rows.js';
import { decodeBase64Strict, parseVersioned } from '../../src/crypto/envelope.js';
import { KeyRing } from '../../src/crypto/key-ring.js';
import { decryptValue, encryptValue, rewriteValue, type FailureReason } from '../../src/crypto/rewrite.js';
import { initSodium } from '../../src/crypto/secretbox.js';
import { planRowWork, type StreamTarget } from '../../src/replication/rewrite-plan.js';

const keyOf = (v: number) => Uint8Array.from(createHash('sha256').update(`pg-rekey property key v${v}`).digest());
const WRONG = Uint8Array.from(createHash('sha256').update('pg-rekey property wrong key').digest());
/** A ring with the given target and keys for `versions` (fresh copies: a ring may be wiped). */
const makeRing = (target: number, versions: number[]) => new KeyRing(target, new Map(versions.map((v) => [v, keyOf(v)])));
/** Target v2, old versions v1 and v3; v4..v9 have no key. */
let ring: KeyRing;

beforeAll(async () => {
  await initSodium();
  ring = makeRing(2, [1, 2, 3]);
});

const RUNS = { numRuns: 100 };
const same = (a: Uint8Array | null, b: Uint8Array) => a !== null && Buffer.compare(Buffer.from(a), Buffer.from(b)) === 0;
const sha256 = (s: string) => createHash('sha256').update(s).digest();

/** Arbitrary plaintext bytes, biased towards invalid UTF-8, empty, and NUL bytes. */
const plaintext = fc.oneof(
  fc.uint8Array({ maxLength: 600 }),
  fc.constant(new Uint8Array(0)),
  // a lone continuation byte, an overlong encoding, a truncated sequence, a UTF-16 surrogate in UTF-8, 0xFF
  fc
    .tuple(fc.uint8Array({ maxLength: 64 }), fc.constantFrom([0x80], [0xc0, 0xaf], [0xe2, 0x82], [0xed, 0xa0, 0x80], [0xff, 0xfe], [0x00]), fc.uint8Array({ maxLength: 64 }))
    .map(([a, bad, b]) => Uint8Array.from([...a, ...bad, ...b])),
);

/** Strings that are not ours but look close to a prefix. */
const nearMiss = fc
  .tuple(fc.integer({ min: 1, max: 9 }), fc.string({ maxLength: 20 }))
  .chain(([v, body]) =>
    fc.constantFrom(
      `V${v}:${body}`,
      `v${v} :${body}`,
      ` v${v}:${body}`,
      `\tv${v}:${body}`,
      `\nv${v}:${body}`,
      `\uFEFFv${v}:${body}`,
      `v0${v}:${body}`,
      `v0:${body}`,
      `v-${v}:${body}`,
      `v+${v}:${body}`,
      `v${v}${body.replace(/:/g, '')}`,
      `v:${body}`,
      `see v${v}:${body}`,
      `v１:${body}`, // fullwidth digit one
      `v${v}：${body}`, // fullwidth colon
      `v1234567890:${body}`, // ten digits: beyond the format
      '',
      ' ',
      '\t\n ',
    ),
  );

const anyString = fc.oneof(fc.string({ unit: 'binary', maxLength: 80 }), fc.string({ unit: 'grapheme', maxLength: 40 }), fc.string({ maxLength: 80 }));

describe('envelope parser', () => {
  it('never throws on arbitrary strings, and agrees with the documented format', () => {
    const format = /^v([1-9][0-9]{0,8}):/;
    fc.assert(
      fc.property(fc.oneof(anyString, nearMiss, anyString.map((s) => `v1:${s}`)), (s) => {
        const p = parseVersioned(s);
        const m = format.exec(s);
        if (!m) return p === null;
        return p !== null && p.version === Number(m[1]) && `v${p.version}:${p.body}` === s && p.version >= 1;
      }),
      { numRuns: 300 },
    );
  });

  it('near-miss prefixes are not ours', () => {
    fc.assert(fc.property(nearMiss, (s) => parseVersioned(s) === null), { numRuns: 200 });
  });

  it('decodes exactly the canonical padded base64 of some bytes', () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 200 }), (b) => same(decodeBase64Strict(Buffer.from(b).toString('base64')), b)), RUNS);
    fc.assert(
      fc.property(fc.oneof(anyString, fc.stringMatching(/^[A-Za-z0-9+/=\-_ \n]{0,40}$/)), (s) => {
        const d = decodeBase64Strict(s);
        return d === null || Buffer.from(d).toString('base64') === s;
      }),
      { numRuns: 300 },
    );
  });
});

describe('codec round trip', () => {
  it('rewrites any old-version value to the target, decrypting to the same bytes (invalid UTF-8 and empty included)', () => {
    fc.assert(
      fc.property(plaintext, fc.constantFrom(1, 3), (pt, from) => {
        const stored = encryptValue(pt, from, ring);
        const out = rewriteValue(stored, ring);
        if (out.kind !== 'rewritten' || out.version !== from) return false;
        const parsed = parseVersioned(out.value);
        return (
          parsed?.version === 2 &&
          decodeBase64Strict(parsed.body) !== null &&
          same(decryptValue(out.value, ring), pt) &&
          // the old key does not open the new value, the new key does not open the old one
          decryptValue(`v${from}:${parsed.body}`, ring) === null &&
          decryptValue(`v2:${parseVersioned(stored)!.body}`, ring) === null &&
          // idempotent: a rewritten value is at target
          rewriteValue(out.value, ring).kind === 'at-target'
        );
      }),
      RUNS,
    );
  });

  it('round-trips large plaintexts (up to 10 MB)', () => {
    fc.assert(
      fc.property(fc.integer({ min: 100_000, max: 10 * 1024 * 1024 }), fc.integer(), (size, seed) => {
        const pt = Buffer.alloc(size);
        for (let i = 0; i < size; i += 4096) pt[i] = (seed + i) & 0xff;
        pt[size - 1] = 0xff; // not valid UTF-8
        const out = rewriteValue(encryptValue(pt, 1, ring), ring);
        return out.kind === 'rewritten' && same(decryptValue(out.value, ring), pt);
      }),
      // fast-check shrinks towards small sizes: always include one full 10 MB value.
      { numRuns: 3, examples: [[10 * 1024 * 1024, 7]] },
    );
  });

  it('never rewrites a value already at the target, whatever follows the prefix', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 3 }), fc.oneof(anyString, plaintext.map((b) => Buffer.from(b).toString('base64'))), (target, body) => {
        const r = makeRing(target, [1, 2, 3]);
        return rewriteValue(`v${target}:${body}`, r).kind === 'at-target';
      }),
      RUNS,
    );
  });

  it('never touches values that are not ours', () => {
    fc.assert(
      fc.property(fc.oneof(nearMiss, anyString.filter((s) => parseVersioned(s) === null)), (s) => rewriteValue(s, ring).kind === 'not-ours'),
      { numRuns: 300 },
    );
  });

  it('never throws on arbitrary text after an old prefix, and never "rewrites" it', () => {
    fc.assert(
      fc.property(fc.constantFrom(1, 3, 7, 999_999_999), fc.oneof(anyString, fc.uint8Array({ maxLength: 80 }).map((b) => Buffer.from(b).toString('base64'))), (v, body) => {
        const out = rewriteValue(`v${v}:${body}`, ring);
        return out.kind === 'failed' && out.version === v;
      }),
      { numRuns: 300 },
    );
  });

  it('any change to a valid value (bit flip, truncation, extension, wrong key) fails instead of producing another value', () => {
    const mutation = fc.oneof(
      fc.record({ kind: fc.constant('flip' as const), at: fc.nat(), bit: fc.integer({ min: 0, max: 7 }) }),
      fc.record({ kind: fc.constant('truncate' as const), at: fc.nat() }),
      fc.record({ kind: fc.constant('extend' as const), extra: fc.uint8Array({ minLength: 1, maxLength: 8 }) }),
      fc.record({ kind: fc.constant('truncate-text' as const), at: fc.nat() }),
      fc.record({ kind: fc.constant('wrong-key' as const) }),
    );
    fc.assert(
      fc.property(plaintext, mutation, (pt, m) => {
        const good = encryptValue(pt, 1, ring);
        const sealed = Buffer.from(good.slice(3), 'base64');
        let bad: string;
        let expected: FailureReason[];
        switch (m.kind) {
          case 'flip':
            sealed[m.at % sealed.length] = sealed[m.at % sealed.length]! ^ (1 << m.bit);
            bad = `v1:${sealed.toString('base64')}`;
            expected = ['mac-failure'];
            break;
          case 'truncate': {
            const cut = sealed.subarray(0, m.at % sealed.length);
            bad = `v1:${cut.toString('base64')}`;
            expected = cut.length < 40 ? ['too-short'] : ['mac-failure'];
            break;
          }
          case 'extend':
            bad = `v1:${Buffer.concat([sealed, m.extra]).toString('base64')}`;
            expected = ['mac-failure'];
            break;
          case 'truncate-text':
            bad = good.slice(0, 3 + (m.at % (good.length - 3)));
            expected = ['bad-base64', 'too-short', 'mac-failure'];
            break;
          case 'wrong-key': {
            const wrong = new KeyRing(2, new Map([[1, WRONG], [2, keyOf(2)]]));
            bad = encryptValue(pt, 1, wrong);
            expected = ['mac-failure'];
            break;
          }
        }
        const out = rewriteValue(bad, ring);
        return out.kind === 'failed' && out.version === 1 && expected.includes(out.reason) && decryptValue(bad, ring) === null;
      }),
      { numRuns: 200 },
    );
  });
});

// ---- value generators tagged with what must happen to them (target v2; keys v1, v2, v3) ----

type Tagged =
  | { kind: 'old'; version: 1 | 3; pt: Uint8Array; value: string }
  | { kind: 'target'; value: string }
  | { kind: 'not-ours'; value: string }
  | { kind: 'null'; value: null }
  | { kind: 'failed'; version: number; reason: FailureReason; value: string };

const tagged = (): fc.Arbitrary<Tagged> =>
  fc.oneof(
    { weight: 4, arbitrary: fc.tuple(plaintext, fc.constantFrom(1 as const, 3 as const)).map(([pt, version]): Tagged => ({ kind: 'old', version, pt, value: encryptValue(pt, version, ring) })) },
    { weight: 2, arbitrary: plaintext.map((pt): Tagged => ({ kind: 'target', value: encryptValue(pt, 2, ring) })) },
    { weight: 1, arbitrary: anyString.map((s): Tagged => ({ kind: 'target', value: `v2:${s}` })) },
    { weight: 2, arbitrary: fc.oneof(nearMiss, anyString.filter((s) => parseVersioned(s) === null)).map((value): Tagged => ({ kind: 'not-ours', value })) },
    { weight: 1, arbitrary: fc.constant<Tagged>({ kind: 'null', value: null }) },
    {
      weight: 1,
      arbitrary: fc.constantFrom(4, 9, 10, 999_999_999).chain((version) =>
        anyString.map((s): Tagged => ({ kind: 'failed', version, reason: 'unknown-version', value: `v${version}:${s}` })),
      ),
    },
    { weight: 1, arbitrary: fc.uint8Array({ maxLength: 39 }).map((b): Tagged => ({ kind: 'failed', version: 1, reason: 'too-short', value: `v1:${Buffer.from(b).toString('base64')}` })) },
    {
      weight: 1,
      arbitrary: fc
        .tuple(plaintext, fc.constantFrom('!', ' ', '\n', '-', '_', '*', '\u00e9'), fc.nat(), fc.boolean())
        .map(([pt, junk, at, replace]): Tagged => {
          // insert a character (length no longer a multiple of 4), or replace one (url-safe or foreign alphabet)
          const body = encryptValue(pt, 3, ring).slice(3);
          const i = at % (body.length + (replace ? 0 : 1));
          const bad = `${body.slice(0, i)}${junk}${body.slice(replace ? i + 1 : i)}`;
          return { kind: 'failed', version: 3, reason: 'bad-base64', value: `v3:${bad}` };
        }),
    },
    {
      weight: 1,
      arbitrary: fc.tuple(plaintext, fc.nat()).map(([pt, at]): Tagged => {
        const sealed = Buffer.from(encryptValue(pt, 1, ring).slice(3), 'base64');
        sealed[at % sealed.length] = sealed[at % sealed.length]! ^ 0x80;
        return { kind: 'failed', version: 1, reason: 'mac-failure', value: `v1:${sealed.toString('base64')}` };
      }),
    },
  );

describe('evaluateRows (sweep): stored values -> compare-and-swap arrays', () => {
  it('rewrites exactly the old-version values, to values that decrypt to the same bytes; quarantines exactly the bad ones', () => {
    const columns = ['title', 'raw_xml', 'c"3'];
    fc.assert(
      fc.property(fc.array(fc.array(tagged(), { minLength: 3, maxLength: 3 }), { maxLength: 12 }), (grid) => {
        const rows: ScannedRow[] = grid.map((cells, r) => ({ ctid: `(${r},1)`, rowKey: { id: String(r) }, values: cells.map((c) => c.value) }));
        const plan = evaluateRows(rows, columns, ring);
        const wanted = grid.map((cells, r) => (cells.some((c) => c.kind === 'old') ? r : -1)).filter((r) => r >= 0);
        expect(plan.ctids).toEqual(wanted.map((r) => `(${r},1)`));
        for (const [j, r] of wanted.entries()) {
          grid[r]!.forEach((cell, i) => {
            const o = plan.olds[i]![j]!;
            const n = plan.news[i]![j]!;
            if (cell.kind === 'old') {
              expect(o).toBe(cell.value);
              expect(parseVersioned(n)?.version).toBe(2);
              expect(same(decryptValue(n, ring), cell.pt)).toBe(true);
            } else {
              expect([o, n]).toEqual([null, null]);
            }
          });
        }
        const expectFailures = grid.flatMap((cells, r) =>
          cells.flatMap((c, i) => (c.kind === 'failed' ? [[columns[i], String(r), c.version, c.reason, sha256(c.value).toString('hex')]] : [])),
        );
        expect(plan.failures.map((f) => [f.column, f.rowKey?.id, f.version, f.reason, f.sha256.toString('hex')])).toEqual(expectFailures);
        const olds = grid.flatMap((cells, r) => cells.flatMap((c, i) => (c.kind === 'old' ? [[`(${r},1)`, columns[i]]] : [])));
        expect(plan.rewrittenKeys.map((k) => [k.ctid, k.column])).toEqual(olds);
        const count = (pred: (c: Tagged) => boolean) => grid.flat().filter(pred).length;
        for (const v of [1, 3]) {
          expect(plan.opened.get(v) ?? 0).toBe(count((c) => c.kind === 'old' && c.version === v));
          expect(plan.macFailures.get(v) ?? 0).toBe(count((c) => c.kind === 'failed' && c.reason === 'mac-failure' && c.version === v));
        }
      }),
      { numRuns: 60 },
    );
  });

  it('with --from, values of other versions are neither rewritten nor quarantined', () => {
    fc.assert(
      fc.property(fc.array(tagged(), { maxLength: 20 }), (cells) => {
        const rows: ScannedRow[] = cells.map((c, r) => ({ ctid: `(0,${r + 1})`, rowKey: { id: String(r) }, values: [c.value] }));
        const plan = evaluateRows(rows, ['c'], ring, { onlyVersions: new Set([3]) });
        const expected = cells.flatMap((c, r) => (c.kind === 'old' && c.version === 3 ? [`(0,${r + 1})`] : []));
        expect(plan.ctids).toEqual(expected);
        expect(plan.failures.map((f) => f.rowKey?.id)).toEqual(cells.flatMap((c, r) => (c.kind === 'failed' && c.version === 3 ? [String(r)] : [])));
      }),
      { numRuns: 60 },
    );
  });

  it('any target and key set: never writes a value at the target or one that is not ours', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 4 }),
        fc.array(fc.oneof(anyString, nearMiss, fc.integer({ min: 1, max: 5 }).chain((v) => plaintext.map((pt) => encryptValue(pt, v, makeRing(v, [v, v === 1 ? 2 : 1])))), fc.constant(null)), { maxLength: 15 }),
        (target, values) => {
          const r = makeRing(target, [...new Set([1, 2, 3, 4, target])]);
          const plan = evaluateRows(values.map((v, i) => ({ ctid: `(0,${i})`, rowKey: { id: String(i) }, values: [v] })), ['c'], r);
          for (const [j, old] of plan.olds[0]!.entries()) {
            const p = old === null ? null : parseVersioned(old);
            expect(p).not.toBeNull();
            expect(p!.version).not.toBe(target);
            const orig = decryptValue(old!, r);
            expect(orig).not.toBeNull();
            expect(same(decryptValue(plan.news[0]![j]!, r), orig!)).toBe(true);
          }
          for (const f of plan.failures) expect(f.version).not.toBe(target);
          return true;
        },
      ),
      { numRuns: 60 },
    );
  });
});

describe('planRowWork (stream): replication message -> work', () => {
  // Column names include ones that are Object.prototype members; pgoutput tuples are null-prototype objects.
  const colName = fc.oneof(fc.constantFrom('title', 'raw_xml', 'id', 'tenant', '__proto__', 'constructor', 'toString', 'hasOwnProperty', 'c"1; x', ''), fc.string({ maxLength: 8 }));
  type Cell = { present: false } | { present: true; value: string | null | undefined };
  const cell = fc.oneof(
    { weight: 1, arbitrary: fc.constant<Cell>({ present: false }) },
    { weight: 1, arbitrary: fc.constant<Cell>({ present: true, value: undefined }) }, // 'u'
    { weight: 1, arbitrary: fc.constant<Cell>({ present: true, value: null }) },
    { weight: 5, arbitrary: tagged().map((t): Cell => ({ present: true, value: t.value })) },
  );
  const keyCell = fc.oneof(
    { weight: 4, arbitrary: anyString.map((s): Cell => ({ present: true, value: s })) },
    { weight: 1, arbitrary: fc.constantFrom<Cell>({ present: false }, { present: true, value: null }, { present: true, value: undefined }) },
  );

  it('matches the model: rewrite old-version values, read back unchanged TOAST, require every key column', () => {
    fc.assert(
      fc.property(
        fc.uniqueArray(colName, { minLength: 1, maxLength: 6 }).chain((names) =>
          fc.tuple(
            fc.constant(names),
            fc.integer({ min: 1, max: Math.max(1, names.length - 1) }),
            fc.array(cell, { minLength: names.length, maxLength: names.length }),
            fc.array(keyCell, { minLength: names.length, maxLength: names.length }),
          ),
        ),
        ([names, nKeys, cells, keyCells]) => {
          // The first nKeys names are key columns (unless there is only one name: then it is both).
          const keyColumns = names.slice(0, nKeys);
          const columns = names.length === 1 ? names : names.slice(nKeys);
          const target: StreamTarget = { table: 'public.t', columns, keyColumns };
          const tuple: Record<string, unknown> = Object.create(null);
          const cellOf = new Map<string, Cell>();
          names.forEach((n, i) => {
            const c = keyColumns.includes(n) && !columns.includes(n) ? keyCells[i]! : cells[i]!;
            cellOf.set(n, c);
            if (c.present) tuple[n] = c.value;
          });
          const d = planRowWork(tuple, target, ring);
          // model
          const rewrite = new Map<string, string>();
          const readBack: string[] = [];
          for (const c of columns) {
            const x = cellOf.get(c)!;
            if (!x.present) continue;
            if (x.value === undefined) readBack.push(c);
            else if (typeof x.value === 'string') {
              const p = parseVersioned(x.value);
              if (p && p.version !== 2) rewrite.set(c, x.value);
            }
          }
          if (rewrite.size === 0 && readBack.length === 0) return d.kind === 'none';
          const missing = keyColumns.filter((k) => {
            const x = cellOf.get(k)!;
            return !x.present || typeof x.value !== 'string';
          });
          if (missing.length) {
            expect(d).toEqual({ kind: 'no-key', missing });
            return true;
          }
          expect(d).toEqual({ kind: 'work', key: keyColumns.map((k) => (cellOf.get(k) as { value: string }).value), rewrite, readBack });
          return true;
        },
      ),
      { numRuns: 200 },
    );
  });

  it('never asks to rewrite a value at the target or one that is not ours; every value it asks for rewrites or fails, never to other bytes', () => {
    const target: StreamTarget = { table: 'public.t', columns: ['a', 'b', 'c'], keyColumns: ['id'] };
    fc.assert(
      fc.property(fc.array(tagged(), { minLength: 3, maxLength: 3 }), fc.string(), (cells, id) => {
        const tuple: Record<string, unknown> = Object.assign(Object.create(null), { id, a: cells[0]!.value, b: cells[1]!.value, c: cells[2]!.value });
        const d = planRowWork(tuple, target, ring);
        const want = cells.flatMap((c, i) => (c.kind === 'old' || c.kind === 'failed' ? [target.columns[i]!] : []));
        if (want.length === 0) return d.kind === 'none';
        if (d.kind !== 'work') return false;
        expect([...d.rewrite.keys()]).toEqual(want);
        expect(d.readBack).toEqual([]);
        for (const [col, v] of d.rewrite) {
          const c = cells[target.columns.indexOf(col)]!;
          const out = rewriteValue(v, ring);
          if (c.kind === 'old') {
            expect(out.kind).toBe('rewritten');
            expect(same(decryptValue((out as { value: string }).value, ring), c.pt)).toBe(true);
          } else expect(out).toMatchObject({ kind: 'failed', reason: (c as { reason: string }).reason });
        }
        return true;
      }),
      { numRuns: 150 },
    );
  });
});
