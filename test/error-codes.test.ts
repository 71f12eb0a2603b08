import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, expectTypeOf, it } from 'vitest';
import * as multileg from '../src/index.ts';
import { MULTILEG_ERROR_CODES, type MultilegError, type MultilegErrorCode } from '../src/index.ts';

const root = join(import.meta.dirname, '..');

/** Every `'MULTILEG_…'` string literal in src/, with the files it is in. */
function sourceCodes(): Map<string, string[]> {
  const found = new Map<string, string[]>();
  const files = readdirSync(join(root, 'src'), { recursive: true, encoding: 'utf8' }).filter((f) => f.endsWith('.ts'));
  for (const file of files) {
    for (const [, code] of readFileSync(join(root, 'src', file), 'utf8').matchAll(/'(MULTILEG_[A-Z0-9_]+)'/g)) {
      found.set(code as string, [...(found.get(code as string) ?? []), file]);
    }
  }
  return found;
}

/** The codes in the first column of docs/ERRORS.md's tables: the errors', and the process warnings'. */
function documentedCodes(): { errors: string[]; warnings: string[] } {
  const text = readFileSync(join(root, 'docs/ERRORS.md'), 'utf8');
  const [errorsPart = '', warningsPart = ''] = text.split(/^## Process warnings$/m);
  const codes = (part: string) => [...part.matchAll(/^\| `(MULTILEG_[A-Z0-9_]+)` \|/gm)].map((m) => m[1] as string);
  return { errors: codes(errorsPart), warnings: codes(warningsPart) };
}

describe('error codes', () => {
  it("every 'MULTILEG_…' code in src/ is in MULTILEG_ERROR_CODES and docs/ERRORS.md's table, and the other way round", () => {
    const inSource = sourceCodes();
    const documented = documentedCodes();
    const exported = [...MULTILEG_ERROR_CODES];
    // The exported list, and the table, once each and in the same order.
    expect(new Set(exported).size).toBe(exported.length);
    expect(documented.errors).toEqual(exported);
    // Every code the source names is an error code, or a process warning's (which are not errors).
    const unlisted = [...inSource.keys()].filter(
      (c) => !exported.includes(c as MultilegErrorCode) && !documented.warnings.includes(c),
    );
    expect(unlisted, `in src/ (${unlisted.map((c) => inSource.get(c)?.join(', ')).join('; ')})`).toEqual([]);
    // And the other way round: no listed or documented code that nothing raises.
    expect(exported.filter((c) => !inSource.has(c))).toEqual([]);
    expect(documented.warnings.filter((c) => !inSource.has(c))).toEqual([]);
    expect(documented.warnings.filter((c) => exported.includes(c as MultilegErrorCode))).toEqual([]);
    // `code` is the union, for the constructor too.
    expectTypeOf<MultilegError['code']>().toEqualTypeOf<MultilegErrorCode>();
    expectTypeOf<ConstructorParameters<typeof MultilegError>[0]>().toEqualTypeOf<MultilegErrorCode>();
  });

  it('every class docs/ERRORS.md names is an exported MultilegError subclass, unless it says not exported, and every exported one is named', () => {
    const text = readFileSync(join(root, 'docs/ERRORS.md'), 'utf8');
    const cells = [...text.matchAll(/^\| `MULTILEG_[A-Z0-9_]+` \| (.*?) \|/gm)].map((m) => m[1] as string);
    const classes = (cell: string) => [...cell.matchAll(/`([A-Z][A-Za-z0-9]*Error)`( \([^)]*\))?/g)];
    const named = new Set(cells.flatMap((cell) => classes(cell).map((m) => m[1] as string)));
    const internal = new Set(
      cells.flatMap((cell) =>
        classes(cell)
          .filter((m) => m[2]?.includes('not exported'))
          .map((m) => m[1] as string),
      ),
    );
    const exports = multileg as unknown as Record<string, unknown>;
    const isSubclass = (v: unknown) =>
      typeof v === 'function' && (v as { prototype: unknown }).prototype instanceof multileg.MultilegError;
    expect([...named].filter((n) => n !== 'MultilegError' && !internal.has(n) && !isSubclass(exports[n]))).toEqual([]);
    expect([...internal].filter((n) => n in exports)).toEqual([]);
    const subclasses = Object.keys(exports).filter((k) => isSubclass(exports[k]));
    expect(subclasses.filter((k) => !named.has(k))).toEqual([]);
  });
});
