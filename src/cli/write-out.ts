/**
 * `-w/--write-out`: curl's `%{variable}` format, with `\n`, `\t`, `\\` and `%%`; `%{stderr}` and
 * `%{stdout}` send what follows to that stream, as curl does.
 */
export interface WriteOutPart {
  readonly to: 'stdout' | 'stderr';
  readonly text: string;
}

/** The format's output, in pieces by the stream each goes to (an unknown variable: a warning, nothing written). */
export function writeOut(format: string, vars: Readonly<Record<string, string>>): WriteOutPart[] {
  const parts: WriteOutPart[] = [];
  let to: WriteOutPart['to'] = 'stdout';
  let text = '';
  const pattern = /%\{([a-z_]+)\}|%%|\\([nrt\\])/g;
  let at = 0;
  for (let m = pattern.exec(format); m; m = pattern.exec(format)) {
    text += format.slice(at, m.index);
    at = m.index + m[0].length;
    const [match, name, esc] = m;
    if (match === '%%') text += '%';
    else if (esc !== undefined) text += esc === 'n' ? '\n' : esc === 'r' ? '\r' : esc === 't' ? '\t' : '\\';
    else if (name === 'stdout' || name === 'stderr') {
      if (text) parts.push({ to, text });
      text = '';
      to = name;
    } else if (vars[name!] !== undefined) text += vars[name!];
    else
      process.stderr.write(
        `multileg: -w: unknown variable %{${name}} (known: ${Object.keys(vars).join(', ')}, stdout, stderr)\n`,
      );
  }
  text += format.slice(at);
  if (text) parts.push({ to, text });
  return parts;
}
