/**
 * `-K FILE` / `--config FILE` (`-K -`: stdin), curl's config file, read as curl 7.88's
 * src/tool_parsecfg.c reads it, and put in the arguments where the -K stands (curl inserts its
 * options there: what comes later on the command line wins over them, what came earlier loses).
 * Loaded only for a command line that names -K (options.ts {@link mayNameConfig}): a run without
 * one loads nothing of this.
 *
 * Why it matters here: a file keeps `-u user:password` and `-U` off the command line, which `ps`
 * and the shell's history show. Its values go through the same parsing as the command line's, so
 * every rule about secrets holds for them (never in -v, --har, --json, errors); the warnings below
 * name an option only by its own name, never a value nor a line that names no option we know.
 */
import { closeSync, openSync, readSync, realpathSync } from 'node:fs';
import type * as Commander from 'commander';
import { EXIT } from './explain.ts';
import { UsageError, unreadable } from './options.ts';

/** The arguments with each -K replaced by its file's options, and how many -K read stdin. */
export interface ExpandedArgs {
  readonly argv: string[];
  /** `-K -` (in a file too): each read stdin, which then has nothing left for another reader. */
  readonly stdinReads: number;
}

/** How deep -K files may name one another. */
const MAX_DEPTH = 16;

/**
 * The most a -K file may hold: a config file is a few lines; what is larger (`/dev/zero`, a log, a
 * FIFO that never ends) is not read past this, never all into memory.
 */
const MAX_CONFIG_BYTES = 1024 * 1024;

/**
 * The most -K files one command reads, and lines in all of them: files that name others several
 * times each (or names of one file by links) would otherwise be read a number of times that grows
 * with each level (8 lines, 16 levels: 8^16), where curl 7.88 runs until it is stopped.
 */
const MAX_CONFIG_READS = 100;
const MAX_CONFIG_LINES = 100_000;

/** C's isspace, as curl's ISSPACE. */
const isSpace = (c: string | undefined) =>
  c === ' ' || c === '\t' || c === '\n' || c === '\v' || c === '\f' || c === '\r';

/** curl's ISSEP: `=` and `:` end an option name only when it was written without a leading dash. */
const isSep = (c: string | undefined, dashed: boolean) => !dashed && (c === '=' || c === ':');

/** A `"…"` value from `i` (after the quote) to the next unescaped quote: curl's unslashquote. */
function unslashquote(line: string, i: number): string {
  let out = '';
  while (i < line.length && line[i] !== '"') {
    if (line[i] !== '\\') {
      out += line[i++];
      continue;
    }
    const c = line[++i];
    if (c === undefined) break;
    out += c === 't' ? '\t' : c === 'n' ? '\n' : c === 'r' ? '\r' : c === 'v' ? '\v' : c;
    i++;
  }
  return out;
}

/** One line of a config file as curl splits it: the option as written and its value (null: none). */
interface ConfigLine {
  readonly option: string;
  readonly param: string | null;
  /** An unquoted value followed by more text on the line (curl warns: only its first word is taken). */
  readonly unquotedSpace: boolean;
}

/**
 * The bytes of `path` (`-`: stdin), at most {@link MAX_CONFIG_BYTES}: read a piece at a time, so
 * that a device or a pipe without end is not read further than that. Undefined for more.
 */
function readBounded(path: string): Buffer | undefined {
  const stdin = path === '-';
  let fd = stdin ? 0 : openSync(path, 'r');
  const chunks: Buffer[] = [];
  let size = 0;
  try {
    for (;;) {
      const chunk = Buffer.allocUnsafe(64 * 1024);
      let n: number;
      try {
        n = readSync(fd, chunk, 0, chunk.length, null);
      } catch (err) {
        // A non-blocking stdin (a terminal, some pipes): read it through its path, blocking.
        if (!stdin || fd !== 0 || (err as NodeJS.ErrnoException).code !== 'EAGAIN') throw err;
        fd = openSync('/dev/stdin', 'r');
        continue;
      }
      if (n === 0) return Buffer.concat(chunks, size);
      chunks.push(chunk.subarray(0, n));
      size += n;
      if (size > MAX_CONFIG_BYTES) return undefined;
    }
  } finally {
    if (fd !== 0) closeSync(fd);
  }
}

/** Pushes `items` onto `out` one at a time: a spread of a long array passes the engine's bound on arguments. */
function append(out: string[], items: readonly string[]): void {
  for (const item of items) out.push(item);
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

/**
 * A file's text: UTF-8 when its bytes are (what the same value typed on the command line is), else
 * each byte one character (Latin-1), as curl takes a file's bytes: `X-I: caf\xe9` sends the byte
 * 0xE9, and a Latin-1 password is é, not changed into U+FFFD.
 */
function configText(bytes: Buffer): string {
  try {
    return utf8.decode(bytes);
  } catch {
    return bytes.toString('latin1');
  }
}

/** curl's parseconfig loop for one line (with its line break, as fgets gives it); undefined: a comment or blank line. */
export function configLine(raw: string): ConfigLine | undefined {
  // C strings: a NUL ends the line.
  const nul = raw.indexOf('\0');
  const line = nul < 0 ? raw : raw.slice(0, nul);
  let i = 0;
  while (i < line.length && isSpace(line[i])) i++;
  // curl's comment starts (its own list: `#`, `/`, `*`) and blank lines.
  if (i === line.length || '#/*\r\n'.includes(line[i]!)) return undefined;
  const start = i;
  const dashed = line[i] === '-';
  while (i < line.length && !isSpace(line[i]) && !isSep(line[i], dashed)) i++;
  const option = line.slice(start, i);
  if (i < line.length) i++; // the character that ended it
  while (i < line.length && (isSpace(line[i]) || isSep(line[i], dashed))) i++;
  if (line[i] === '"') return { option, param: unslashquote(line, i + 1), unquotedSpace: false };
  const valueStart = i;
  while (i < line.length && !isSpace(line[i])) i++;
  const param = line.slice(valueStart, i);
  let unquotedSpace = false;
  if (i < line.length) {
    i++;
    while (i < line.length && isSpace(line[i])) i++;
    unquotedSpace = i < line.length && line[i] !== '#';
  }
  return { option, param: param === '' ? null : param, unquotedSpace };
}

/** Replaces each -K/--config of `argv` by its file's options (see the module's comment). */
export function expandConfig(argv: readonly string[], cmd: Commander.Command, name: string): ExpandedArgs {
  const longs = new Map<string, Commander.Option>();
  const shorts = new Map<string, Commander.Option>();
  for (const option of cmd.options) {
    if (option.long) longs.set(option.long.slice(2).toLowerCase(), option);
    if (option.short) shorts.set(option.short.slice(1), option);
  }
  const takesValue = (option: Commander.Option | undefined) => Boolean(option && (option.required || option.optional));
  let stdinReads = 0;
  // curl's warnings are muted once -s is read (a -s after the -K does not hide those before it).
  let muted = false;
  const warn = (text: string) => {
    if (!muted) process.stderr.write(`${name}: Warning: ${text}\n`);
  };
  /** The files being read, outermost first (their real paths): one that names itself (or an outer one) is not read again. */
  const reading: string[] = [];
  /** Files read and lines read so far, in all: bounded ({@link MAX_CONFIG_READS}, {@link MAX_CONFIG_LINES}). */
  let reads = 0;
  let lines = 0;
  const tooMany = (what: string) =>
    new UsageError(
      `-K: more than ${what} read in all (config files naming one another, or one file, many times); name fewer`,
      EXIT.usage,
    );

  /** The options of one file; `where` is the line naming it (undefined: the command line, where a file that cannot be read is curl's 26). */
  const readConfig = (path: string, where: string | undefined): string[] => {
    const shown = path === '-' ? '- (stdin)' : path;
    let key = path;
    let bytes: Buffer | undefined;
    try {
      // Its real path: a file that names itself, through another, by another spelling or through a
      // link, is not read again (it would be until the stack ran out: curl 7.88's own fate).
      if (path !== '-') key = realpathSync(path);
      if (path !== '-' && reading.includes(key)) {
        warn(`${where}: -K ${path} is already being read; skipped`);
        return [];
      }
      if (reading.length >= MAX_DEPTH) {
        warn(`${where}: -K ${path} is nested more than ${MAX_DEPTH} deep; skipped`);
        return [];
      }
      if (++reads > MAX_CONFIG_READS) throw tooMany(`${MAX_CONFIG_READS} config files`);
      bytes = readBounded(path);
    } catch (err) {
      if (err instanceof UsageError) throw err;
      const message = `-K ${shown}: ${unreadable(err)}`;
      // curl: "cannot read config from …", 26 on the command line; in a file a warning, and it goes on.
      if (where === undefined) throw new UsageError(message, EXIT.read);
      warn(`${where}: ${message}; skipped`);
      return [];
    }
    // Not what a config file is, wherever it is named: the read error (26) of a file named on
    // the command line, not a warning (the options it was meant to give would be missing).
    if (bytes === undefined)
      throw new UsageError(
        `-K ${shown}: larger than ${MAX_CONFIG_BYTES} bytes, not read (not a config file?); give a config file`,
        EXIT.read,
      );
    if (path === '-') stdinReads++;
    reading.push(key);
    const out: string[] = [];
    const file = path === '-' ? '<stdin>' : path;
    for (const [index, raw] of configText(bytes)
      .split(/(?<=\n)/)
      .entries()) {
      if (++lines > MAX_CONFIG_LINES) throw tooMany(`${MAX_CONFIG_LINES} config lines`);
      const line = configLine(raw);
      // One at a time: a spread of a file's options could pass the engine's bound on arguments.
      if (line) append(out, configOptions(line, `${file}:${index + 1}`));
    }
    reading.pop();
    return out;
  };

  /** The arguments one line stands for, or none (with curl's warning) for one curl would not use. */
  const configOptions = ({ option, param, unquotedSpace }: ConfigLine, where: string): string[] => {
    // Not repeated: a line that names no option of ours may be a password on a line of its own.
    const unknown = () => warn(`${where}: unknown option, skipped (not shown: the line may hold a secret)`);
    const valued = (flag: string, known: Commander.Option, value: string | null): string[] => {
      const named = known.long ?? flag;
      if (value === null) {
        warn(`${where}: '${named}' requires parameter; skipped`);
        return [];
      }
      if (known.long === '--config') return readConfig(value, where);
      // A value commander would refuse: curl's warning, and it goes on without the option.
      if (known.parseArg)
        try {
          known.parseArg(value, undefined);
        } catch (err) {
          warn(`${where}: '${named}' ${(err as Error).message}; skipped`);
          return [];
        }
      if (unquotedSpace)
        warn(`${where}: '${named}' uses unquoted whitespace in the line: only its first word is taken`);
      return [flag, value];
    };
    const garbage = (named: string) => warn(`${where}: '${named}' had unsupported trailing garbage`);
    if (!option.startsWith('-') || option.startsWith('--')) {
      const known = longs.get((option.startsWith('--') ? option.slice(2) : option).toLowerCase());
      if (!known?.long) {
        unknown();
        return [];
      }
      if (takesValue(known)) return valued(known.long, known, param);
      if (known.long === '--silent') muted = true;
      if (param !== null) garbage(known.long);
      return [known.long];
    }
    // Short options, several together as on the command line: the first that takes a value takes
    // the rest of the word, else the line's value.
    const out: string[] = [];
    const letters = option.slice(1);
    for (let j = 0; j < letters.length; j++) {
      const known = shorts.get(letters[j]!);
      if (!known) {
        unknown();
        return out;
      }
      if (takesValue(known)) {
        const rest = letters.slice(j + 1);
        append(out, valued(`-${letters[j]}`, known, rest !== '' ? rest : param));
        if (rest !== '' && param !== null) garbage(`-${letters[j]}`);
        return out;
      }
      if (letters[j] === 's') muted = true;
      out.push(`-${letters[j]}`);
    }
    if (param !== null) garbage(option.length === 2 ? option : '-');
    return out;
  };

  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--') {
      append(out, argv.slice(i));
      break;
    }
    if (arg.startsWith('--')) {
      const eq = arg.indexOf('=');
      const flag = eq < 0 ? arg : arg.slice(0, eq);
      if (flag === '--config' && (eq >= 0 || i + 1 < argv.length)) {
        append(out, readConfig(eq >= 0 ? arg.slice(eq + 1) : argv[++i]!, undefined));
        continue;
      }
      if (flag === '--silent') muted = true;
      out.push(arg);
      if (eq < 0 && takesValue(longs.get(flag.slice(2))) && i + 1 < argv.length) out.push(argv[++i]!);
      continue;
    }
    if (arg.startsWith('-') && arg.length > 1) {
      let j = 1;
      for (; j < arg.length; j++) {
        const letter = arg[j]!;
        if (letter === 's') muted = true;
        if (takesValue(shorts.get(letter))) break;
      }
      if (j === arg.length || arg[j] !== 'K') {
        out.push(arg);
        if (j === arg.length - 1 && i + 1 < argv.length) out.push(argv[++i]!);
        continue;
      }
      // `-sK FILE`, `-KFILE`: the flags before it, then the file's options in its place.
      if (j > 1) out.push(arg.slice(0, j));
      if (j === arg.length - 1 && i + 1 >= argv.length) {
        out.push('-K'); // commander's "argument missing"
        continue;
      }
      append(out, readConfig(j < arg.length - 1 ? arg.slice(j + 1) : argv[++i]!, undefined));
      continue;
    }
    out.push(arg);
  }
  return { argv: out, stdinReads };
}
