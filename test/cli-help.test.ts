/**
 * `multileg --help` printed without commander (src/cli/help.ts, issue 10 item 5) must be, byte for
 * byte, what commander prints for the same program at the same terminal width. The built command
 * using it is tested in package.test.ts (the build writes dist/bin/help.json).
 */
import { Command, Option } from 'commander';
import { describe, expect, it } from 'vitest';
import { formatHelp, helpData } from '../src/cli/help.ts';
import { program } from '../src/cli/options.ts';
import { commanderHelp } from './cli-helpers.ts';

const WIDTHS = [undefined, 20, 39, 40, 41, 45, 60, 79, 80, 81, 100, 120, 132, 160, 200, 400];

describe('--help without commander', () => {
  it('equals commander’s help for multileg at every terminal width', () => {
    const data = helpData(program());
    for (const width of WIDTHS)
      expect(formatHelp(data, width ?? 80), `width ${width}`).toBe(commanderHelp(program(), width));
  });

  it('shows no `(default: [])` on the repeatable options (-H, -d, --data-binary, --data-raw, --trust, -o)', () => {
    const help = commanderHelp(program(), 200);
    expect(help).toMatch(
      /-H, --header <header> +extra request header "Name: value" \(repeatable\); a copied NTLM AUTHENTICATE in Authorization or Proxy-Authorization is not sent: give -u, -U\n/,
    );
    expect(help).not.toContain('(default: [])');
  });

  it('equals commander’s help for layouts multileg does not use yet (groups, preformatted text, no description)', () => {
    const made = () =>
      new Command('x')
        .argument('<a>')
        .argument('[b...]', 'optional operands\n  preformatted: kept as written')
        .option('-q', '')
        .addOption(new Option('--long-one <v>', 'a long description '.repeat(8)).helpGroup('Extra:'))
        .addOption(new Option('--choice <c>', 'pick').choices(['one', 'two']).default('one'))
        .option('--after', 'back in the first group');
    for (const width of WIDTHS)
      expect(formatHelp(helpData(made()), width ?? 80), `width ${width}`).toBe(commanderHelp(made(), width));
  });
});
