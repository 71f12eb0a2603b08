/**
 * `-w/--write-out`: curl's `%{variable}` format, with `\n`, `\t`, `\\` and `%%`; `%{stderr}` and
 * `%{stdout}` send what follows to that stream, `%{onerror}` ends the output of a transfer that did
 * not fail, and `%header{name}` is the final response's header, as curl's are.
 */
export interface WriteOutPart {
  readonly to: 'stdout' | 'stderr';
  readonly text: string;
}

/**
 * The format's output, in pieces by the stream each goes to (an unknown variable: a warning,
 * nothing written). `header(name)` is the final response's header `name` (lower case), '' if none.
 */
export function writeOut(
  format: string,
  vars: Readonly<Record<string, string>>,
  header: (name: string) => string = () => '',
): WriteOutPart[] {
  const parts: WriteOutPart[] = [];
  let to: WriteOutPart['to'] = 'stdout';
  let text = '';
  const pattern = /%\{([a-z_]+)\}|%header\{([^}]*)\}|%%|\\([nrt\\])/g;
  let at = 0;
  for (let m = pattern.exec(format); m; m = pattern.exec(format)) {
    text += format.slice(at, m.index);
    at = m.index + m[0].length;
    const [match, name, headerName, esc] = m;
    if (match === '%%') text += '%';
    else if (esc !== undefined) text += esc === 'n' ? '\n' : esc === 'r' ? '\r' : esc === 't' ? '\t' : '\\';
    else if (headerName !== undefined) text += header(headerName.toLowerCase());
    else if (name === 'onerror') {
      // curl's: what follows is written only for a transfer that failed.
      if (vars.exitcode === '0') {
        at = format.length;
        break;
      }
    } else if (name === 'stdout' || name === 'stderr') {
      if (text) parts.push({ to, text });
      text = '';
      to = name;
    } else if (vars[name!] !== undefined) text += vars[name!];
    else
      process.stderr.write(
        `multileg: -w: unknown variable %{${name}} (known: ${Object.keys(vars).join(', ')}, onerror, stdout, stderr; %header{name})\n`,
      );
  }
  text += format.slice(at);
  if (text) parts.push({ to, text });
  return parts;
}
