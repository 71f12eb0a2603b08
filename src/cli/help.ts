/**
 * `multileg --help` without loading commander (issue 10 item 5: loading and building the commander
 * program is most of what `--help` costs). The build takes the help's parts from the commander
 * program itself ({@link helpData}, scripts/cli-help.ts writes dist/bin/help.json) and
 * {@link formatHelp} lays them out as commander 14's `Help.formatHelp` does for a command with
 * arguments and options and no subcommands; test/cli-help.test.ts checks, width by width, that the
 * result equals commander's own output, so the two cannot drift apart unnoticed. Imports nothing at
 * run time: bin.ts loads it before anything else.
 */
import { readFileSync } from 'node:fs';
import type { Command } from 'commander';

/** The parts of a command's help, as commander's `Help` computes them. */
export interface HelpData {
  readonly usage: string;
  readonly description: string;
  /** Headed lists of [term, description]: `Arguments:`, then the option groups. */
  readonly sections: ReadonlyArray<{
    readonly heading: string;
    readonly rows: ReadonlyArray<readonly [string, string]>;
  }>;
}

/** commander's `Help.minWidthToWrap`: narrower than this, descriptions are not wrapped. */
const MIN_WIDTH_TO_WRAP = 40;

/** The help's parts, asked of commander's own `Help` for `cmd` (at build time and in the test). */
export function helpData(cmd: Command): HelpData {
  const help = cmd.createHelp();
  if (help.visibleCommands(cmd).length > 0) throw new Error('formatHelp lays out no subcommands');
  const sections: Array<{ heading: string; rows: Array<readonly [string, string]> }> = [];
  const args = help.visibleArguments(cmd).map((a) => [help.argumentTerm(a), help.argumentDescription(a)] as const);
  if (args.length > 0) sections.push({ heading: 'Arguments:', rows: args });
  // commander's groupItems: the groups in the order they first appear among the options.
  const groups = new Map<string, Array<readonly [string, string]>>();
  const heading = (o: { helpGroupHeading?: string }) => o.helpGroupHeading ?? 'Options:';
  for (const o of cmd.options) if (!groups.has(heading(o))) groups.set(heading(o), []);
  for (const o of help.visibleOptions(cmd)) {
    if (!groups.has(heading(o))) groups.set(heading(o), []);
    groups.get(heading(o))!.push([help.optionTerm(o), help.optionDescription(o)]);
  }
  for (const [heading, rows] of groups) if (rows.length > 0) sections.push({ heading, rows });
  return { usage: help.commandUsage(cmd), description: help.commandDescription(cmd), sections };
}

/** commander's `Help.boxWrap`: wraps at whitespace, keeping the line breaks already there. */
function boxWrap(text: string, width: number): string {
  if (width < MIN_WIDTH_TO_WRAP) return text;
  const lines: string[] = [];
  for (const line of text.split(/\r\n|\n/)) {
    const chunks = line.match(/[\s]*[^\s]+/g);
    if (chunks === null) {
      lines.push('');
      continue;
    }
    let current = chunks[0]!;
    for (const chunk of chunks.slice(1)) {
      if (current.length + chunk.length <= width) current += chunk;
      else {
        lines.push(current);
        current = chunk.trimStart();
      }
    }
    lines.push(current);
  }
  return lines.join('\n');
}

/** commander's `Help.formatItem`: the term padded, the description wrapped and indented under itself. */
function formatItem(term: string, termWidth: number, description: string, helpWidth: number): string {
  if (!description) return `  ${term}`;
  const remaining = helpWidth - termWidth - 4;
  const preformatted = /\n[^\S\r\n]/.test(description);
  const text =
    remaining < MIN_WIDTH_TO_WRAP || preformatted
      ? description
      : boxWrap(description, remaining).replace(/\n/g, `\n${' '.repeat(termWidth + 2)}`);
  return `  ${term.padEnd(termWidth)}  ${text.replace(/\n/g, '\n  ')}`;
}

/** The help text commander prints for a terminal `helpWidth` columns wide (80 when not a terminal). */
export function formatHelp(data: HelpData, helpWidth = 80): string {
  const termWidth = Math.max(0, ...data.sections.flatMap((s) => s.rows.map(([term]) => term.length)));
  const out = [`Usage: ${data.usage}`, ''];
  if (data.description.length > 0) out.push(boxWrap(data.description, helpWidth), '');
  for (const s of data.sections)
    out.push(s.heading, ...s.rows.map(([term, text]) => formatItem(term, termWidth, text, helpWidth)), '');
  return out.join('\n');
}

/**
 * Prints `--help` from the help.json the build put beside this file, at the width commander would
 * use; false when there is none (running from src/), and commander prints it.
 */
export function printHelp(): boolean {
  let data: HelpData;
  try {
    data = JSON.parse(readFileSync(new URL('./help.json', import.meta.url), 'utf8')) as HelpData;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw err;
  }
  process.stdout.write(formatHelp(data, (process.stdout.isTTY ? process.stdout.columns : undefined) ?? 80));
  return true;
}
