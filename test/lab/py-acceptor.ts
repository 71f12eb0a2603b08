/** TS driver for test/lab/py_acceptor.py (a python3-gssapi acceptor that can require channel bindings). */
import { type ChildProcessWithoutNullStreams, spawn } from 'node:child_process';
import { dirname, join } from 'node:path';
import { createInterface, type Interface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { PYTHON } from './peers.ts';

export type AcceptorMech = 'ntlm' | 'krb5' | 'spnego';

export type AcceptorReply =
  | { readonly kind: 'continue'; readonly token: string }
  | { readonly kind: 'complete'; readonly user: string; readonly token?: string }
  | { readonly kind: 'error'; readonly message: string };

export const PY_ACCEPTOR_SCRIPT = join(dirname(fileURLToPath(import.meta.url)), 'py_acceptor.py');

export interface PyAcceptor {
  /**
   * Starts a new acceptor context; `channelBinding` is the tls-server-end-point hash the acceptor checks.
   * `requireBindings`: refuse a token that carries none (MIT alone accepts it), like IIS EPA "Required".
   */
  reset(mech: AcceptorMech, channelBinding?: Buffer, requireBindings?: boolean): Promise<void>;
  /** Feeds one base64 token from the initiator. */
  step(tokenB64: string): Promise<AcceptorReply>;
  close(): Promise<void>;
}

/** Spawns the acceptor with `env` (lab.env: NTLM_USER_FILE, KRB5_KTNAME, KRB5_CONFIG...). */
export async function startPyAcceptor(env: NodeJS.ProcessEnv): Promise<PyAcceptor> {
  const child: ChildProcessWithoutNullStreams = spawn(PYTHON, [PY_ACCEPTOR_SCRIPT], {
    env: { ...env, PYTHONDONTWRITEBYTECODE: '1' },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (c: Buffer) => {
    stderr += c.toString();
  });
  const rl: Interface = createInterface({ input: child.stdout });
  const waiting: Array<(line: string) => void> = [];
  const lines: string[] = [];
  let exited = false;
  rl.on('line', (line) => {
    const w = waiting.shift();
    if (w) w(line);
    else lines.push(line);
  });
  const exitP = new Promise<void>((resolve) => {
    child.once('exit', () => {
      exited = true;
      for (const w of waiting.splice(0)) w(`ERROR acceptor exited: ${stderr.slice(-500)}`);
      resolve();
    });
  });
  const next = (): Promise<string> =>
    new Promise((resolve) => {
      const l = lines.shift();
      if (l !== undefined) resolve(l);
      else if (exited) resolve(`ERROR acceptor exited: ${stderr.slice(-500)}`);
      else waiting.push(resolve);
    });
  const send = async (cmd: string): Promise<string> => {
    child.stdin.write(`${cmd}\n`);
    return await next();
  };
  const ready = await next();
  if (ready !== 'READY') throw new Error(`lab: py_acceptor did not start: ${ready} ${stderr}`);
  return {
    async reset(mech, channelBinding, requireBindings) {
      const cb = channelBinding ? channelBinding.toString('hex') : '-';
      const r = await send(`NEW ${mech} ${cb}${requireBindings ? ' require' : ''}`);
      if (r !== 'OK') throw new Error(`lab: py_acceptor NEW failed: ${r}`);
    },
    async step(tokenB64) {
      const r = await send(`STEP ${tokenB64}`);
      const sp = r.indexOf(' ');
      const word = sp < 0 ? r : r.slice(0, sp);
      const rest = sp < 0 ? '' : r.slice(sp + 1);
      if (word === 'CONTINUE') return { kind: 'continue', token: rest };
      if (word === 'COMPLETE') {
        const [user = '', token] = rest.split(' ');
        return token ? { kind: 'complete', user, token } : { kind: 'complete', user };
      }
      return { kind: 'error', message: rest };
    },
    async close() {
      if (!exited) {
        child.stdin.end('QUIT\n');
        const t = setTimeout(() => child.kill('SIGKILL'), 3000);
        await exitP;
        clearTimeout(t);
      }
      rl.close();
    },
  };
}
