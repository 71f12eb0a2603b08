#!/usr/bin/python3
"""GSS-API acceptor test peer (python3-gssapi; NTLM via gss-ntlmssp, or krb5 / SPNEGO).

Run with /usr/bin/python3 (Debian's python3-gssapi). Line protocol on stdin/stdout:
  startup                 -> READY
  NEW <mech> <cb> [require] -> OK                new context; mech: ntlm | krb5 | spnego;
                                                  cb: hex tls-server-end-point hash, or '-' for none;
                                                  require: a token without channel bindings is refused
                                                  (like IIS Extended Protection "Required"; MIT alone
                                                  accepts a token that carries none)
  STEP <base64>           -> CONTINUE <base64>    more legs needed
                          -> COMPLETE <user> [<base64>]
                          -> ERROR <message>
  QUIT                    -> (exits)
Command line: [--mech M] [--cb HEX] creates the first context, so a client may STEP right after READY.
Channel bindings: ChannelBindings(application_data=b'tls-server-end-point:' + hash) (RFC 5929, RFC 5056).
Env: NTLM_USER_FILE (ntlm), KRB5_KTNAME / KRB5_CONFIG / KRB5RCACHEDIR (krb5).
"""
import base64
import sys

import gssapi
import gssapi.raw as raw

MECHS = {
    'ntlm': gssapi.OID.from_int_seq('1.3.6.1.4.1.311.2.2.10'),
    'krb5': gssapi.OID.from_int_seq('1.2.840.113554.1.2.2'),
    'spnego': gssapi.OID.from_int_seq('1.3.6.1.5.5.2'),
}


def out(line):
    sys.stdout.write(line + '\n')
    sys.stdout.flush()


def new_context(mech_name, cb_hex):
    mech = MECHS[mech_name]
    cb = None
    if cb_hex and cb_hex != '-':
        cb = raw.ChannelBindings(application_data=b'tls-server-end-point:' + bytes.fromhex(cb_hex))
    creds = gssapi.Credentials(usage='accept', mechs=[mech])
    return gssapi.SecurityContext(creds=creds, usage='accept', channel_bindings=cb)


CHANNEL_BOUND = 0x800  # GSS_C_CHANNEL_BOUND_FLAG (gssapi_ext.h)


def one_line(msg):
    return ' '.join(str(msg).split())


def main():
    args = sys.argv[1:]
    mech = None
    cb = '-'
    i = 0
    while i < len(args):
        if args[i] == '--mech':
            mech = args[i + 1]
            i += 2
        elif args[i] == '--cb':
            cb = args[i + 1]
            i += 2
        else:
            out('ERROR unknown argument ' + args[i])
            return 2
    ctx = None
    require_cb = False
    if mech:
        try:
            ctx = new_context(mech, cb)
        except Exception as e:  # noqa: BLE001
            out('ERROR ' + one_line(e))
            return 1
    out('READY')
    for line in sys.stdin:
        parts = line.strip().split(' ')
        cmd = parts[0]
        try:
            if cmd == 'QUIT':
                return 0
            if cmd == 'NEW':
                ctx = new_context(parts[1], parts[2] if len(parts) > 2 else '-')
                require_cb = len(parts) > 3 and parts[3] == 'require'
                out('OK')
            elif cmd == 'STEP':
                if ctx is None:
                    out('ERROR no context: send NEW first')
                    continue
                token = base64.b64decode(parts[1] if len(parts) > 1 else '', validate=True)
                reply = ctx.step(token)
                b64 = base64.b64encode(reply).decode() if reply else ''
                if ctx.complete and require_cb and not any(int(f) & CHANNEL_BOUND for f in ctx.actual_flags):
                    ctx = None
                    out('ERROR the token carries no channel bindings (required)')
                elif ctx.complete:
                    user = str(ctx.initiator_name).strip('\x00 \t\r\n').replace(' ', '_')
                    out(('COMPLETE ' + user + ' ' + b64).rstrip())
                    ctx = None
                else:
                    out('CONTINUE ' + b64)
            else:
                out('ERROR unknown command ' + cmd)
        except Exception as e:  # noqa: BLE001
            ctx = None
            out('ERROR ' + one_line(e))
    return 0


if __name__ == '__main__':
    sys.exit(main())
