/**
 * Who the newest handshake proved the agent to be at one place (S6): an origin, or a proxy, which
 * all the agent's origin pools share. Handshakes are ordered by when they got leave to send
 * credentials (`Ticket.admitted`): a slower one that ends later carried older credentials.
 */

/**
 * Whether two reported identities name the same account, case aside as Windows compares them: equal,
 * or spelled by different mechanisms (NTLM's `DOMAIN\user` or `user`, Kerberos' `user@REALM`) with
 * the same user name. Two Kerberos principals, or two NTLM names, compare whole: a `kinit bob` after
 * alice is a switch, and so is another realm's alice.
 */
export function sameAccount(a: string, b: string): boolean {
  if (a.toLowerCase() === b.toLowerCase()) return true;
  const kerberos = (id: string) => !id.includes('\\') && id.includes('@');
  if (kerberos(a) === kerberos(b)) return false;
  const user = (id: string) =>
    (kerberos(id) ? id.slice(0, id.lastIndexOf('@')) : id.slice(id.lastIndexOf('\\') + 1)).toLowerCase();
  return user(a) === user(b);
}

/**
 * The account the newest-admitted handshake proved at one place, and its place in the order
 * handshakes got leave to send credentials (`Ticket.admitted`, S6). `version` counts the accounts
 * recorded, so that the pools sharing a proxy's record can tell it changed.
 */
export class ProvedIdentity {
  #last: { readonly identity: string; readonly admitted: number } | undefined;
  #version = 0;

  /** The account proved last, in leave order. */
  get identity(): string | undefined {
    return this.#last?.identity;
  }

  /** Grows each time another account is recorded as the newest. */
  get version(): number {
    return this.#version;
  }

  /**
   * A handshake admitted `admitted`-th proved `identity` here: `newest` (recorded), `same` (admitted
   * before the newest, but the same account: nothing to do), or `stale` (admitted before a handshake
   * that proved another account: it carried the old credentials and merely ended later).
   */
  place(identity: string, admitted: number): 'newest' | 'same' | 'stale' {
    const last = this.#last;
    if (last !== undefined && admitted < last.admitted) return sameAccount(last.identity, identity) ? 'same' : 'stale';
    if (last === undefined || !sameAccount(last.identity, identity)) this.#version += 1;
    this.#last = { identity, admitted };
    return 'newest';
  }
}
