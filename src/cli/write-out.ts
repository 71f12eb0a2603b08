/** `-w/--write-out`: curl's `%{variable}` format, with `\n`, `\t`, `\\` and `%%`. */
export function writeOut(format: string, vars: Readonly<Record<string, string>>): string {
  return format.replace(
    /%\{([a-z_]+)\}|%%|\\([nrt\\])/g,
    (match, name: string | undefined, esc: string | undefined) => {
      if (match === '%%') return '%';
      if (esc !== undefined) return esc === 'n' ? '\n' : esc === 'r' ? '\r' : esc === 't' ? '\t' : '\\';
      const value = vars[name!];
      if (value === undefined) {
        process.stderr.write(`multileg: -w: unknown variable %{${name}} (known: ${Object.keys(vars).join(', ')})\n`);
        return '';
      }
      return value;
    },
  );
}
