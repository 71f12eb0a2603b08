/**
 * docs/CONFORMANCE.md names the tests that prove each requirement by the start of their titles
 * (`R4: a wrong password over 5 sequential processes …` in `test/cli-refusals.test.ts`). Titles
 * get renamed; this keeps the references honest without running a single peer: it reads the doc
 * and the first argument of every `it(` / `it.each(…)(` / `test(` / `describe(` under test/, and
 * checks each reference matches some title (in the file it names, when it names one).
 *
 * A reference is a backticked text led by requirement IDs (`R4:`, `H5/C8:`, `S1, C4, T4:`) or
 * followed by "in `test/…`"; it names the start of a title, `…` standing for any text and
 * `<name>` for a parameter. A title's parameters (`%s`, `$how`, `${status}`) take the values of
 * its literal table or loop — one, all joined by "/" or " / ", or the source's own spelling — and
 * are a short wildcard where the values cannot be read.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { describe, expect, it } from 'vitest';

const root = new URL('..', import.meta.url).pathname;

/** A title or reference as characters, `null` standing for "any text" (a wildcard). */
type Pattern = (string | null)[];

/** A title as the source writes it: characters, wildcards and the `${name}`s a loop gives values. */
type Raw = (string | null | { expr: string })[];

/** A literal value of a test table (`it.each([...])`, `for (const x of [...])`), or what is not one. */
const UNKNOWN = Symbol('unknown');
type Value = string | number | boolean | null | undefined | typeof UNKNOWN | Value[] | { [key: string]: Value };

const literal = (s: string): Pattern => Array.from(s);

/** The length of the string literal (quote `q`) starting at `i`, and its decoded value. */
function readString(src: string, i: number): { end: number; value: string } {
  const q = src[i];
  let value = '';
  let j = i + 1;
  while (j < src.length && src[j] !== q) {
    if (src[j] === '\\') {
      const [v, n] = readEscape(src, j);
      value += v;
      j = n;
    } else value += src[j++];
  }
  return { end: j + 1, value };
}

/** One escape sequence at `i` (a backslash): its value and where the source goes on. */
function readEscape(src: string, i: number): [string, number] {
  const c = src[i + 1] ?? '';
  const simple: Record<string, string> = { n: '\n', t: '\t', r: '\r', b: '\b', f: '\f', v: '\v', '0': '\0' };
  if (c in simple) return [simple[c]!, i + 2];
  if (c === 'u' && src[i + 2] === '{') {
    const close = src.indexOf('}', i + 3);
    return [String.fromCodePoint(Number.parseInt(src.slice(i + 3, close), 16)), close + 1];
  }
  if (c === 'u') return [String.fromCharCode(Number.parseInt(src.slice(i + 2, i + 6), 16)), i + 6];
  if (c === 'x') return [String.fromCharCode(Number.parseInt(src.slice(i + 2, i + 4), 16)), i + 4];
  if (c === '\n') return ['', i + 2];
  return [c, i + 2];
}

/** Skips white space and comments from `i`. */
function skipBlank(src: string, i: number): number {
  for (;;) {
    if (/\s/.test(src[i] ?? '')) i++;
    else if (src.startsWith('//', i)) i = src.indexOf('\n', i) === -1 ? src.length : src.indexOf('\n', i);
    else if (src.startsWith('/*', i)) i = src.indexOf('*/', i + 2) + 2;
    else return i;
  }
}

/** Whether a `/` at `i` starts a regular expression literal (not a division): what precedes it says. */
function startsRegex(src: string, i: number): boolean {
  let j = i - 1;
  while (j >= 0 && /\s/.test(src[j]!)) j--;
  if (j < 0 || '(,=:[!&|?{};+-*%<>~^'.includes(src[j]!)) return true;
  return /\b(return|typeof|case|of|in)$/.test(src.slice(Math.max(0, j - 6), j + 1));
}

/** Past the regular expression literal at `i`: its `'`, `"` or backquote must not read as strings. */
function skipRegex(src: string, i: number): number {
  let inClass = false;
  for (let j = i + 1; j < src.length; j++) {
    const c = src[j];
    if (c === '\\') j++;
    else if (c === '[') inClass = true;
    else if (c === ']') inClass = false;
    else if (c === '/' && !inClass) return j + 1;
    else if (c === '\n') return j;
  }
  return src.length;
}

/** From `i` (just inside an opening bracket) to just past its matching close, strings skipped. */
function skipBalanced(src: string, i: number): number {
  let depth = 1;
  while (i < src.length && depth > 0) {
    const c = src[i]!;
    if (c === "'" || c === '"') i = readString(src, i).end;
    else if (c === '`') i = readTemplate(src, i).end;
    else if (src.startsWith('//', i) || src.startsWith('/*', i)) i = skipBlank(src, i);
    else if (c === '/' && startsRegex(src, i)) i = skipRegex(src, i);
    else {
      if ('([{'.includes(c)) depth++;
      else if (')]}'.includes(c)) depth--;
      i++;
    }
  }
  return i;
}

/** A template literal at `i`: each `${…}` an expression to give a value, if it can be had. */
function readTemplate(src: string, i: number): { end: number; value: Raw } {
  const value: Raw = [];
  let j = i + 1;
  while (j < src.length && src[j] !== '`') {
    if (src[j] === '\\') {
      const [v, n] = readEscape(src, j);
      value.push(...v);
      j = n;
    } else if (src.startsWith('${', j)) {
      const close = skipBalanced(src, j + 2);
      value.push({ expr: src.slice(j + 2, close - 1).trim() });
      j = close;
    } else value.push(src[j++]!);
  }
  return { end: j + 1, value };
}

/** Past one token at `i`: a string, template, comment, regular expression, bracketed group or character. */
function skipToken(src: string, i: number): number {
  const d = src[i]!;
  if (d === "'" || d === '"') return readString(src, i).end;
  if (d === '`') return readTemplate(src, i).end;
  if (src.startsWith('//', i) || src.startsWith('/*', i)) return skipBlank(src, i);
  if (d === '/' && startsRegex(src, i)) return skipRegex(src, i);
  return '([{'.includes(d) ? skipBalanced(src, i + 1) : i + 1;
}

/** Past an expression at `i`: up to a `,`, `;` or closing bracket at its depth. */
function skipExpression(src: string, i: number): number {
  while (i < src.length && !',;)]}'.includes(src[i]!)) i = skipToken(src, i);
  return i;
}

/** The literal value at `i` (strings, numbers, arrays, objects; `as const` after it), or UNKNOWN. */
function readValue(src: string, i: number): { value: Value; end: number } {
  i = skipBlank(src, i);
  const c = src[i];
  let value: Value = UNKNOWN;
  let end: number;
  const number = /^-?\d[\d_]*(\.\d+)?\b/.exec(src.slice(i, i + 40));
  const word = /^(true|false|null|undefined)\b/.exec(src.slice(i, i + 10));
  if (c === "'" || c === '"') ({ value, end } = readString(src, i));
  else if (c === '`') {
    const t = readTemplate(src, i);
    if (t.value.every((x) => typeof x === 'string')) value = t.value.join('');
    end = t.end;
  } else if (c === '[' || c === '{') {
    const items: Value[] = [];
    const object: Record<string, Value> = {};
    let j = i + 1;
    for (;;) {
      j = skipBlank(src, j);
      if (src[j] === ']' || src[j] === '}') break;
      const key = c === '{' ? /^(?:([A-Za-z_$][\w$]*)|'([^']*)'|"([^"]*)")\s*:/.exec(src.slice(j, j + 200)) : null;
      if (c === '{' && !key) return { value: UNKNOWN, end: skipBalanced(src, i + 1) };
      const v = readValue(src, j + (key ? key[0].length : 0));
      if (key) object[key[1] ?? key[2] ?? key[3]!] = v.value;
      else items.push(v.value);
      j = skipBlank(src, v.end);
      if (src[j] === ',') j++;
      else if (src[j] !== ']' && src[j] !== '}') return { value: UNKNOWN, end: skipBalanced(src, i + 1) };
    }
    value = c === '[' ? items : object;
    end = j + 1;
  } else if (number) {
    value = Number(number[0].replaceAll('_', ''));
    end = i + number[0].length;
  } else if (word) {
    value = { true: true, false: false, null: null, undefined: undefined }[word[1] as 'true'];
    end = i + word[0].length;
  } else end = skipExpression(src, i);
  const as = /^\s*as\b/.exec(src.slice(end, end + 10));
  if (as) end = skipExpression(src, end + as[0].length);
  return { value, end };
}

/** The value at `i`, or where it is a name, the value of `const name = …` in the file. */
function readTable(src: string, i: number): Value {
  const name = /^\s*([A-Za-z_$][\w$]*)\s*[,)]/.exec(src.slice(i, i + 100))?.[1];
  if (!name) return readValue(src, i).value;
  const decl = new RegExp(`(?<![\\w$.])const\\s+${name}\\s*(?::[^=;]+)?=\\s*`).exec(src);
  return decl ? readValue(src, decl.index + decl[0].length).value : UNKNOWN;
}

/** A `for (const x of …)` loop: where its body is, and the values its names take, row by row. */
interface Loop {
  start: number;
  end: number;
  names: Set<string>;
  rows?: Map<string, Value>[];
}

/** Past the statement at `i`: a block, a loop with its body, or up to its `;`. */
function statementEnd(src: string, i: number): number {
  i = skipBlank(src, i);
  if (src[i] === '{') return skipBalanced(src, i + 1);
  const loop = /for\s*\(/y;
  loop.lastIndex = i;
  if (loop.test(src)) return statementEnd(src, skipBalanced(src, loop.lastIndex));
  while (i < src.length && src[i] !== ';' && src[i] !== '}') i = skipToken(src, i);
  return i + 1;
}

/** The loop at `i` (`for (const … of`), if it is one whose names a title may use. */
function readLoop(src: string, i: number): Loop | undefined {
  const head = /for\s*\(\s*(?:const|let)\s+([A-Za-z_$][\w$]*|\[[^\]]*\]|\{[^}]*\})\s+of\s+/y;
  head.lastIndex = i;
  const m = head.exec(src);
  if (!m) return undefined;
  const binding = m[1]!;
  const table = readTable(src, head.lastIndex);
  const start = skipBalanced(src, src.indexOf('(', i) + 1);
  // Each name and how a row gives it: the row itself, its nth element, or its property.
  const parts: [string, (row: Value) => Value][] = [];
  const get = (row: Value, k: string | number): Value =>
    row !== null && typeof row === 'object' ? (row as Record<string, Value>)[k] : UNKNOWN;
  if (binding.startsWith('[')) {
    binding
      .slice(1, -1)
      .split(',')
      .forEach((n, k) => {
        if (n.trim()) parts.push([n.trim(), (row) => get(row, k)]);
      });
  } else if (binding.startsWith('{')) {
    for (const n of binding.slice(1, -1).split(',')) {
      const [key, local] = n.split(':').map((x) => x.trim());
      if (key) parts.push([local || key, (row) => get(row, key)]);
    }
  } else parts.push([binding, (row) => row]);
  const rows = Array.isArray(table)
    ? [
        ...table.map((row) => new Map<string, Value>(parts.map(([n, f]): [string, Value] => [n, f(row)]))),
        // The doc may name every value at once (`TLSv1.3 / TLSv1.2`, `302/404/500`), or the source's `${name}`.
        ...[' / ', '/'].map((sep) => new Map(parts.map(([n, f]): [string, Value] => [n, joined(table.map(f), sep)]))),
        new Map(parts.map(([n]): [string, Value] => [n, `\${${n}}`])),
      ]
    : undefined;
  return { start, end: statementEnd(src, start), names: new Set(parts.map(([n]) => n)), ...(rows ? { rows } : {}) };
}

/** Values that show as text, joined with `sep`: a title naming them all. */
function joined(values: Value[], sep: string): Value {
  return values.every((v) => typeof v === 'string' || typeof v === 'number') ? values.join(sep) : UNKNOWN;
}

/** A value as a title shows it; `truncate`: vitest's (40 characters) for a table's values. */
function show(v: Value, truncate = false): Pattern {
  if (typeof v === 'number' || typeof v === 'boolean') return Array.from(String(v));
  if (typeof v !== 'string') return [null];
  return truncate && v.length > 40 ? [...Array.from(v.slice(0, 30)), null] : Array.from(v);
}

/** A table row's title as vitest formats it (`%s`, `%i`, `%#`, `$name`). */
function formatRow(p: Pattern, row: Value, index: number): Pattern {
  const items: Value[] = Array.isArray(row) ? row : [row];
  const first = items[0];
  const isObject = first !== null && typeof first === 'object' && !Array.isArray(first);
  const out: Pattern = [];
  let k = 0;
  for (let i = 0; i < p.length; i++) {
    const c = p[i] ?? null;
    const next = p[i + 1];
    if (c === '%' && typeof next === 'string' && '%#$sdifjoOpc'.includes(next)) {
      i++;
      if (next === '%') out.push('%');
      else if (next === '#') out.push(...String(index));
      else if (next === '$') out.push(...String(index + 1));
      else out.push(...('sdif'.includes(next) ? show(items[k], true) : [null]));
      if (!'%#$'.includes(next)) k++;
    } else if (c === '$' && typeof next === 'string' && /[\w$]/.test(next)) {
      let key = '';
      while (typeof p[i + 1] === 'string' && /[\w$.]/.test(p[i + 1] as string)) key += p[++i];
      if (!isObject && !/^\d+$/.test(key)) out.push('$', ...key);
      else {
        let v: Value = isObject ? first : items;
        for (const part of key.split('.'))
          v = v !== null && typeof v === 'object' ? (v as Record<string, Value>)[part] : UNKNOWN;
        out.push(...show(v, true));
      }
    } else out.push(c);
  }
  return out;
}

/**
 * The titles a call at `at` makes of `raw`: `${name}` given each value of the loops around it,
 * `%s`/`$name` each row of its table; what cannot be had is a wildcard.
 */
function expand(raw: Raw, at: number, loops: Loop[], table: Value): Pattern[] {
  const names = new Set(raw.flatMap((x) => (x !== null && typeof x === 'object' ? [x.expr] : [])));
  const around = loops.filter((l) => l.start <= at && at < l.end);
  const used = new Set<Loop>();
  for (const n of names) {
    const inner = around.filter((l) => l.names.has(n)).at(-1);
    if (inner?.rows) used.add(inner);
  }
  let envs: Map<string, Value>[] = [new Map()];
  for (const l of used) envs = envs.flatMap((e) => l.rows!.map((r) => new Map([...e, ...r])));
  const rows: Value[] | undefined = Array.isArray(table) ? table : undefined;
  if (envs.length * (rows?.length ?? 1) > 256) envs = [new Map()];
  return envs.flatMap((env) => {
    const p: Pattern = raw.flatMap((x) =>
      x !== null && typeof x === 'object' ? (env.has(x.expr) ? show(env.get(x.expr)) : [null]) : [x],
    );
    if (!rows) return [wildcardPlaceholders(p)];
    // As for loops: every row's value at once (`%s` of `[a, x], [b, y]` as `a / b`), or as the source writes it.
    const columns = (row: Value): Value[] | Record<string, Value> | undefined =>
      Array.isArray(row) ? row : row !== null && typeof row === 'object' ? row : undefined;
    const first = columns(rows[0]);
    const all = (sep: string): Value =>
      Array.isArray(first)
        ? first.map((_, k) =>
            joined(
              rows.map((r) => (columns(r) as Value[] | undefined)?.[k] ?? UNKNOWN),
              sep,
            ),
          )
        : first
          ? Object.fromEntries(
              Object.keys(first).map((key) => [
                key,
                joined(
                  rows.map((r) => (r as Record<string, Value>)[key]),
                  sep,
                ),
              ]),
            )
          : joined(rows, sep);
    return [...rows.map((row, k) => formatRow(p, row, k)), ...[' / ', '/'].map((sep) => formatRow(p, all(sep), 0)), p];
  });
}

/**
 * The title expression at `i`: string literals, template literals and anything else joined by `+`,
 * the anything else a wildcard; `cond ? a : b` is either title. Titles without literal text (a
 * variable alone) are left out.
 */
function readTitle(src: string, i: number): { titles: Raw[]; end: number } {
  let titles: Raw[] = [[]];
  let literalSeen = false;
  for (;;) {
    i = skipBlank(src, i);
    const c = src[i];
    let part: Raw;
    if (c === "'" || c === '"') {
      const s = readString(src, i);
      part = Array.from(s.value);
      literalSeen = true;
      i = s.end;
    } else if (c === '`') {
      const t = readTemplate(src, i);
      part = t.value;
      literalSeen = true;
      i = t.end;
    } else {
      // Another operand (a name, a call): up to the next `+`, `,`, `?` or `:` at this depth.
      const from = i;
      while (i < src.length && !'+,)]};:'.includes(src[i]!) && !/^\?(?![.?])/.test(src.slice(i, i + 2))) {
        i = skipToken(src, i);
      }
      const operand = src.slice(from, i).trim();
      part = [/^[A-Za-z_$][\w$]*$/.test(operand) ? { expr: operand } : null];
    }
    titles = titles.map((t) => [...t, ...part]);
    i = skipBlank(src, i);
    if (src[i] === '?' && !'.?'.includes(src[i + 1] ?? '')) {
      // The condition was read; the title is one of the branches.
      const yes = readTitle(src, i + 1);
      const colon = skipBlank(src, yes.end);
      if (src[colon] !== ':') return { titles: [], end: colon };
      const no = readTitle(src, colon + 1);
      return { titles: [...yes.titles, ...no.titles], end: no.end };
    }
    if (src[i] !== '+') break;
    i++;
  }
  return { titles: literalSeen ? titles : [], end: i };
}

/** vitest's formatting placeholders (`%s`, `$name`) stand for any text. */
function wildcardPlaceholders(p: Pattern): Pattern {
  const out: Pattern = [];
  for (let i = 0; i < p.length; i++) {
    const c = p[i];
    const next = p[i + 1];
    if (c === '%' && typeof next === 'string' && 'sdifjop#'.includes(next)) {
      out.push(null);
      i++;
    } else if (c === '$' && typeof next === 'string' && /[A-Za-z_]/.test(next)) {
      out.push(null);
      while (typeof p[i + 1] === 'string' && /[\w.]/.test(p[i + 1] as string)) i++;
    } else out.push(c ?? null);
  }
  return out;
}

/** Every test and suite title in a source file (calls inside strings and comments are not calls). */
function titlesOf(src: string): Pattern[] {
  const titles: Pattern[] = [];
  const loops: Loop[] = [];
  const call = /(?<![\w$.])(?:it|test|describe)((?:\.[A-Za-z]+)*)\s*\(/y;
  for (let at = 0; at < src.length; ) {
    const c = src[at]!;
    if (c === "'" || c === '"') at = readString(src, at).end;
    else if (c === '`') at = readTemplate(src, at).end;
    else if (src.startsWith('//', at) || src.startsWith('/*', at)) at = skipBlank(src, at);
    else if (c === '/' && startsRegex(src, at)) at = skipRegex(src, at);
    else {
      const loop = /(?<![\w$.])for\b/y.test(src.slice(at, at + 3)) ? readLoop(src, at) : undefined;
      if (loop) loops.push(loop);
      call.lastIndex = at;
      const m = call.exec(src);
      if (!m) {
        at++;
        continue;
      }
      const callAt = at;
      let i = at + m[0].length;
      at = i;
      const table = /\.each\b/.test(m[1]!) ? readTable(src, i) : undefined;
      // `it.each(table)(title, …)`, `it.skipIf(cond)(title, …)`: the title is in the second call.
      if (/\.(each|for|skipIf|runIf)\b/.test(m[1]!)) {
        i = skipBlank(src, skipBalanced(src, i));
        if (src[i] !== '(') continue;
        i++;
      }
      const read = readTitle(src, i);
      const name = /^\s*([A-Za-z_$][\w$]*)\s*,/.exec(src.slice(i))?.[1];
      // `it(title, …)` in a loop over `{ title: '…' }` objects: each value given to that name.
      const given = name ? [...src.matchAll(new RegExp(`(?<![\\w$.])${name}\\s*[:=]\\s*(?![=>])`, 'g'))] : [];
      const found =
        read.titles.length > 0 ? read.titles : given.flatMap((g) => readTitle(src, g.index + g[0].length).titles);
      for (const title of found) titles.push(...expand(title, callAt, loops, table));
    }
  }
  return titles;
}

/**
 * The most text of a reference a title's wildcard stands for where the reference ends in it: a
 * parameter (`Basic, HTTP/2`), not a sentence. Where the title's text goes on after the wildcard
 * (`a Location <…> to another origin`), the reference's text must go on with it.
 */
const MAX_PARAMETER = 30;

/**
 * Whether some text matches both `ref` followed by anything (a prefix) and `title`. A wildcard of the
 * title ending the reference takes at most MAX_PARAMETER characters of it: else `M3: ${alg}-sess …`
 * would be every `M3: …` reference.
 */
function matches(ref: Pattern, title: Pattern): boolean {
  const a = [...ref, null];
  const memo = new Map<number, boolean>();
  const go = (i: number, j: number): boolean => {
    if (i === a.length && j === title.length) return true;
    const key = i * (title.length + 1) + j;
    const known = memo.get(key);
    if (known !== undefined) return known;
    let r = false;
    if (i < a.length && a[i] === null) r = go(i + 1, j) || (j < title.length && go(i, j + 1));
    else if (j < title.length && title[j] === null) {
      for (let n = 0; !r && i + n <= a.length; n++) {
        if (n > 0 && a[i + n - 1] === null) break;
        // Longer text is a parameter only where the title's own text goes on after it.
        if (n > MAX_PARAMETER && a[i + n] === null) continue;
        r = go(i + n, j + 1);
      }
    } else r = i < a.length && j < title.length && a[i] === title[j] && go(i + 1, j + 1);
    memo.set(key, r);
    return r;
  };
  return go(0, 0);
}

/**
 * A reference as written in the doc: `…` is any text (the spaces around it too: `holds back …`
 * names `holds back: …`), and so is a `<placeholder>`.
 */
function referencePattern(ref: string): Pattern {
  const out: Pattern = [];
  for (const part of ref.split(/(\s*…\s*|<[^<>\s]+>)/)) {
    if (/^\s*…\s*$/.test(part) || /^<[^<>\s]+>$/.test(part)) out.push(null);
    else out.push(...literal(part));
  }
  return out;
}

interface Reference {
  text: string;
  row: string;
  file?: string;
}

/** Backticked references to tests in the doc: a start of a title, and the file it names if any. */
function referencesOf(doc: string, ids: Set<string>): Reference[] {
  const refs: Reference[] = [];
  const idList = /^([A-Z]\d+)(?:\s*[/,]\s*[A-Z]\d+)*(?=$|[:\s])/;
  const startsWithIds = (s: string) => {
    const m = idList.exec(s);
    return m?.[0].split(/\s*[/,]\s*/).every((id) => ids.has(id)) ?? false;
  };
  for (const line of doc.split('\n')) {
    const row = /^\| ([A-Z]\d+)\b/.exec(line)?.[1];
    if (!row) continue;
    const spans = [...line.matchAll(/`([^`]+)`/g)].map((m) => ({
      text: m[1]!,
      start: m.index,
      end: m.index + m[0].length,
    }));
    const isFile = (s: string) => /^test\/[\w./-]+\.ts$/.test(s);
    const found: (Reference & { end: number; start: number })[] = [];
    for (const [k, s] of spans.entries()) {
      if (isFile(s.text)) continue;
      const after = /^\s+in\s+`(test\/[^`]+)`/.exec(line.slice(s.end));
      const before = spans[k - 1];
      const fileBefore =
        before && isFile(before.text) && /^\s*$/.test(line.slice(before.end, s.start)) ? before.text : undefined;
      const file = after?.[1] ?? fileBefore;
      const previous = found.at(-1);
      let text = s.text;
      if (text.startsWith('(') && previous && /^\s*,\s*$/.test(line.slice(previous.end, s.start))) {
        // `R4/R1: … (Basic: …)`, `(NTLM over HTTP/2: …)`: the same title with the other parameter.
        const open = previous.text.lastIndexOf('(');
        if (open === -1) continue;
        text = previous.text.slice(0, open) + text;
      } else if (startsWithIds(text)) {
        // A title's start.
      } else if (!after || !text.includes(' ') || text.startsWith('-')) continue; // code, an option
      found.push({ text, row, start: s.start, end: s.end, ...(file ? { file } : {}) });
    }
    // `A …`, `B …` and `C …` in `test/x.test.ts`: the file is each one's.
    for (let k = found.length - 2; k >= 0; k--) {
      const here = found[k]!;
      const next = found[k + 1]!;
      if (!here.file && next.file && /^(\s*(,|and|or)\s*)+$/.test(line.slice(here.end, next.start))) {
        here.file = next.file;
      }
    }
    for (const { text, row, file } of found) refs.push({ text, row, ...(file ? { file } : {}) });
  }
  return refs;
}

function testFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? testFiles(join(dir, e.name)) : e.name.endsWith('.ts') ? [join(dir, e.name)] : [],
  );
}

describe('docs/CONFORMANCE.md', () => {
  it('docs: every test CONFORMANCE.md names by the start of its title exists (in the file it names)', () => {
    const doc = readFileSync(join(root, 'docs/CONFORMANCE.md'), 'utf8');
    const ids = new Set([...doc.matchAll(/^\| ([A-Z]\d+)\b/gm)].map((m) => m[1]!));
    const byFile = new Map<string, Pattern[]>();
    for (const f of testFiles(join(root, 'test'))) byFile.set(relative(root, f), titlesOf(readFileSync(f, 'utf8')));
    // A title that is all parameter (`T1: ${name}`) is every reference's: only where its file is named.
    const all = [...byFile.values()].flat().filter((t) => !t.includes(null) || t.filter((c) => c).length >= 8);
    const refs = referencesOf(doc, ids);
    // The parsing itself: hundreds of references, the suite's titles, and a file-scoped one found.
    expect(refs.length).toBeGreaterThan(500);
    expect(all.length).toBeGreaterThan(1000);

    const drifted: string[] = [];
    for (const ref of refs) {
      const candidates = ref.file ? byFile.get(ref.file) : all;
      if (!candidates) {
        drifted.push(`${ref.row}: \`${ref.text}\` names ${ref.file}, which does not exist`);
        continue;
      }
      const bareIds = /^[A-Z]\d+(?:\s*[/,]\s*[A-Z]\d+)*$/.test(ref.text);
      const pattern = referencePattern(ref.text);
      // A bare `C1` names a title that starts with it, not `C10: …`.
      const ok = candidates.some((t) =>
        bareIds
          ? matches([...pattern, ...literal(':')], t) ||
            matches([...pattern, ...literal('/')], t) ||
            matches([...pattern, ...literal(' ')], t) ||
            matches([...pattern, ...literal(',')], t)
          : matches(pattern, t),
      );
      if (!ok) drifted.push(`${ref.row}: \`${ref.text}\`${ref.file ? ` in ${ref.file}` : ''}`);
    }
    expect(drifted).toEqual([]);
  });

  it('docs: the title parser reads it.each, loops, templates, concatenation and escapes', () => {
    const titles = titlesOf(readFileSync(join(root, 'test/fixtures/conformance-titles.txt'), 'utf8'));
    const named = (ref: string) => titles.some((t) => matches(referencePattern(ref), t));
    // Each row of a table, all its values at once, or the source's placeholder.
    expect(named('R4: b and $x …')).toBe(true);
    expect(named('R4: a / b and $x')).toBe(true);
    expect(named('R4: %s and …')).toBe(true);
    expect(named('R4: c and')).toBe(false);
    expect(named('H5/C8: a leg the proxy closed (later) goes again')).toBe(true);
    expect(named('H5/C8: a leg the proxy closed (at once / later) …')).toBe(true);
    expect(named('H5/C8: a leg the proxy closed (never) …')).toBe(false);
    // A loop's values likewise; a name no loop gives is a parameter.
    expect(named('M3: a wrong rspauth on a 404 is refused')).toBe(true);
    expect(named('M3: a wrong rspauth on a 302/404/500 …')).toBe(true);
    expect(named('M3: a wrong rspauth on a 303 …')).toBe(false);
    expect(named('C1: <scheme> leads')).toBe(true);
    expect(named('C1: NTLM leads')).toBe(true);
    // A parameter stands for a few words, not for the start of another test's title.
    expect(named('M2: MD5-sess authenticates …')).toBe(true);
    expect(named('M2: a wrong rspauth on a 302/404/500 …')).toBe(false);
    // Escapes, concatenation, both branches of a condition, a title given by name; not calls in comments or regexps.
    expect(named("S1: it’s Basic 'quoted'")).toBe(true);
    expect(named('S1: its')).toBe(false);
    expect(named('H5: proxies')).toBe(true);
    expect(named('H5: proxy')).toBe(false);
    expect(named('T3: A (TLSv1.3 / TLSv1.2)')).toBe(true);
    expect(named('T3: B')).toBe(true);
    expect(named('R4: one')).toBe(true);
    expect(named('R4: two')).toBe(true);
    expect(named('not a title')).toBe(false);
  });
});
