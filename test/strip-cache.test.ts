/**
 * The CLI tests' strip cache (fixtures/strip-cache.mjs): each edit of a source file leaves an entry,
 * so a run that writes one prunes those no run has read for a week, beside other runs that read the
 * same directory at once.
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { stripTypeScriptTypes } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { NODE_ARGS, runCommand } from './cli-helpers.ts';

const DAY = 24 * 60 * 60 * 1000;
const A = "import { b } from './b.mts';\nconst twice: number = b * 2;\nconsole.log(twice);\n";
const B = 'export const b: number = 21;\n';
const hash = (s: string) => createHash('sha256').update(s).digest('hex');

describe('strip cache (test/fixtures/strip-cache.mjs)', () => {
  let work: string;
  let root: string;
  let dir: string;

  beforeEach(() => {
    work = mkdtempSync(join(tmpdir(), 'multileg-strip-cache-'));
    root = join(work, 'cache');
    dir = join(root, process.version);
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(work, 'a.mts'), A);
    writeFileSync(join(work, 'b.mts'), B);
  });
  afterEach(() => rmSync(work, { recursive: true, force: true }));

  /** A file in the cache, its mtime `days` ago. */
  function put(path: string, text: string, days: number): string {
    writeFileSync(path, text);
    const t = new Date(Date.now() - days * DAY);
    utimesSync(path, t, t);
    return path;
  }

  const run = () =>
    runCommand(process.execPath, [...NODE_ARGS, join(work, 'a.mts')], '', {
      ...process.env,
      MULTILEG_TEST_STRIP_CACHE: root,
    });

  it('a run that strips a changed module removes the entries no run has read for a week (and partial files of killed runs) in every Node version’s directory; entries read lately, an old one this run reads, another run’s fresh partial and files not its own stay', async () => {
    // This run's first module: in the cache, 30 days old (a read renews it, before the prune).
    // Marked, to tell it was read from the cache.
    const a = put(join(dir, `${hash(A)}.js`), stripTypeScriptTypes(A).replace('twice)', "'cached', twice)"), 30);
    const stale = put(join(dir, `${hash('old source')}.js`), 'old', 8);
    const recent = put(join(dir, `${hash('recent source')}.js`), 'recent', 5);
    const killed = put(join(dir, `${hash('killed')}.js.4242`), 'half', 8);
    const writing = put(join(dir, `${hash('writing')}.js.4343`), 'half', 0);
    const notOurs = put(join(dir, 'notes.txt'), 'mine', 30);
    mkdirSync(join(root, 'v20.0.0'));
    put(join(root, 'v20.0.0', `${hash('v20')}.js`), 'v20', 30);
    mkdirSync(join(root, 'v99.0.0'));
    const otherRecent = put(join(root, 'v99.0.0', `${hash('v99')}.js`), 'v99', 1);

    const result = await run();
    expect(result).toMatchObject({ code: 0, stdout: 'cached 42\n' });
    // b.mts was stripped and written: this run pruned.
    expect(existsSync(join(dir, `${hash(B)}.js`)), 'b.mts stripped and written').toBe(true);
    expect(existsSync(stale), 'an entry unread for 8 days').toBe(false);
    expect(existsSync(killed), 'a killed run’s partial file, 8 days old').toBe(false);
    expect(existsSync(join(root, 'v20.0.0')), 'another Node version’s directory, all of it old').toBe(false);
    for (const kept of [a, recent, writing, notOurs, otherRecent]) expect(existsSync(kept), kept).toBe(true);
    expect(Date.now() - statSync(a).mtimeMs).toBeLessThan(DAY);

    // A run that strips nothing prunes nothing (the cheap path of every run but the first after an edit).
    const old = put(join(dir, `${hash('older source')}.js`), 'old', 8);
    expect(await run()).toMatchObject({ code: 0, stdout: 'cached 42\n' });
    expect(existsSync(old), 'pruned by a run that wrote nothing').toBe(true);
  });

  it('runs started together over a cache to prune, the modules’ own entries among those old, each load the right code and leave the cache with what was read', async () => {
    put(join(dir, `${hash(A)}.js`), stripTypeScriptTypes(A), 30);
    for (let i = 0; i < 300; i++) put(join(dir, `${hash(`old ${i}`)}.js`), `old ${i}`, 8);
    const runs = await Promise.all(Array.from({ length: 8 }, run));
    for (const r of runs) expect(r).toEqual({ code: 0, stdout: '42\n', stderr: '' });
    expect(readdirSync(dir).sort()).toEqual([`${hash(A)}.js`, `${hash(B)}.js`].sort());
  });
});
