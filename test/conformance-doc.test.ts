/**
 * docs/CONFORMANCE.md names the tests that prove each requirement by the start of their titles
 * (`R4: a wrong password over 5 sequential processes …` in `test/cli-refusals.test.ts`). Titles
 * get renamed; this keeps the references honest without running a single peer: it reads the doc
 * and the first argument of every `it(` / `it.each(…)(` / `test(` / `describe(` under test/, and
 * checks each reference matches some title (in the file it names, when it names one).
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { describe, expect, it } from 'vitest';

const root = new URL('..', import.meta.url).pathname;

/** A title or reference as characters, `null` standing for "any text" (a wildcard). */
type Pattern = (string | null)[];

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

/** A template literal at `i`: each `${…}` a wildcard. */
function readTemplate(src: string, i: number): { end: number; value: Pattern } {
  const value: Pattern = [];
  let j = i + 1;
  while (j < src.length && src[j] !== '`') {
    if (src[j] === '\\') {
      const [v, n] = readEscape(src, j);
      value.push(...v);
      j = n;
    } else if (src.startsWith('${', j)) {
      value.push(null);
      j = skipBalanced(src, j + 2);
    } else value.push(src[j++]!);
  }
  return { end: j + 1, value };
}

/**
 * The title expression at `i`: string literals, template literals and anything else joined by `+`,
 * the anything else a wildcard; `cond ? a : b` is either title. Titles without literal text (a
 * variable alone) are left out.
 */
function readTitle(src: string, i: number): { titles: Pattern[]; end: number } {
  let titles: Pattern[] = [[]];
  let literalSeen = false;
  for (;;) {
    i = skipBlank(src, i);
    const c = src[i];
    let part: Pattern;
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
      while (i < src.length && !'+,)]};:'.includes(src[i]!) && !/^\?(?![.?])/.test(src.slice(i, i + 2))) {
        const d = src[i]!;
        if (d === "'" || d === '"') i = readString(src, i).end;
        else if (d === '`') i = readTemplate(src, i).end;
        else i = '([{'.includes(d) ? skipBalanced(src, i + 1) : i + 1;
      }
      part = [null];
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
  const call = /(?<![\w$.])(?:it|test|describe)((?:\.[A-Za-z]+)*)\s*\(/y;
  for (let at = 0; at < src.length; ) {
    const c = src[at]!;
    if (c === "'" || c === '"') at = readString(src, at).end;
    else if (c === '`') at = readTemplate(src, at).end;
    else if (src.startsWith('//', at) || src.startsWith('/*', at)) at = skipBlank(src, at);
    else if (c === '/' && startsRegex(src, at)) at = skipRegex(src, at);
    else {
      call.lastIndex = at;
      const m = call.exec(src);
      if (!m) {
        at++;
        continue;
      }
      let i = at + m[0].length;
      at = i;
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
      for (const title of found) titles.push(wildcardPlaceholders(title));
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

  it('docs: the title parser reads it.each, templates, concatenation and escapes', () => {
    const src = readFileSync(join(root, 'test/fixtures/conformance-titles.txt'), 'utf8');
    const titles = titlesOf(src);
    expect(titles).toHaveLength(9);
    expect(titles.slice(6, 8).map((t) => t.join(''))).toEqual(['R4: one', 'R4: two']);
    expect(matches(referencePattern('R4: anything and more …'), titles[0]!)).toBe(true);
    expect(matches(referencePattern('C1: <scheme> leads'), titles[1]!)).toBe(true);
    expect(matches(referencePattern('C1: NTLM leads'), titles[1]!)).toBe(true);
    expect(matches(referencePattern("S1: it’s Basic 'quoted'"), titles[2]!)).toBe(true);
    expect(matches(referencePattern('S1: its'), titles[2]!)).toBe(false);
    expect(matches(referencePattern('H5: proxy'), titles[3]!)).toBe(false);
    expect(matches(referencePattern('H5: pro…s'), titles[3]!)).toBe(true);
    expect(matches(referencePattern('T3: A (TLSv1.3 / TLSv1.2)'), titles[4]!)).toBe(true);
    expect(matches(referencePattern('T3: B'), titles[5]!)).toBe(true);
    // A parameter stands for a few words, not for the start of another test's title.
    const sess = titles[8];
    expect(matches(referencePattern('M3: MD5-sess authenticates …'), sess!)).toBe(true);
    expect(matches(referencePattern('M3: a wrong rspauth on a 302/404/500 …'), sess!)).toBe(false);
  });
});
