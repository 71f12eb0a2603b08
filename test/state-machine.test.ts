import { describe, expect, it } from 'vitest';
import { FRESH, IllegalTransitionError, mustQueue, type SessionState, transition } from '../src/session/state.ts';

describe('session state machine', () => {
  const start = { type: 'handshake-start', scheme: 'NTLM', leader: 1 } as const;

  it('C1: a running handshake makes every new request queue', () => {
    const s = transition(FRESH, start);
    expect(s.kind).toBe('handshaking');
    expect(mustQueue(s)).toBe(true);
    expect(mustQueue(FRESH)).toBe(false);
  });

  it('C4: success with Persistent-Auth authenticates the session; without it, per-request', () => {
    const h = transition(FRESH, start);
    expect(transition(h, { type: 'handshake-success', leader: 1, scheme: 'NTLM', sessionAuthenticated: true })).toEqual(
      {
        kind: 'authenticated',
        scheme: 'NTLM',
      },
    );
    expect(
      transition(h, { type: 'handshake-success', leader: 1, scheme: 'Negotiate', sessionAuthenticated: false }),
    ).toEqual({
      kind: 'per-request',
      scheme: 'Negotiate',
    });
  });

  it('C4: a per-request (or fresh) session the server says it authenticated, after a handshake that blocked no one, is authenticated; not while one blocks it', () => {
    const said = { type: 'server-authenticated', scheme: 'Negotiate', identity: 'EXAMPLE\\alice' } as const;
    const authenticated = { kind: 'authenticated', scheme: 'Negotiate', identity: 'EXAMPLE\\alice' };
    expect(transition({ kind: 'per-request', scheme: 'Negotiate' }, said)).toEqual(authenticated);
    expect(transition(FRESH, said)).toEqual(authenticated);
    expect(() => transition(transition(FRESH, start), said)).toThrow(IllegalTransitionError);
    expect(() => transition(authenticated as SessionState, said)).toThrow(IllegalTransitionError);
  });

  it('C7: a new handshake on an authenticated session replaces the identity; a failed one drops it', () => {
    const auth: SessionState = { kind: 'authenticated', scheme: 'NTLM', identity: 'EXAMPLE\\alice' };
    const h = transition(auth, { ...start, leader: 2 });
    const bob = transition(h, {
      type: 'handshake-success',
      leader: 2,
      scheme: 'NTLM',
      sessionAuthenticated: true,
      identity: 'EXAMPLE\\bob',
    });
    expect(bob).toEqual({ kind: 'authenticated', scheme: 'NTLM', identity: 'EXAMPLE\\bob' });
    expect(transition(h, { type: 'handshake-failure', leader: 2 })).toEqual(FRESH);
  });

  it('C7: a failed handshake returns a fresh or per-request session to where it was', () => {
    const per: SessionState = { kind: 'per-request', scheme: 'Negotiate' };
    expect(transition(transition(per, start), { type: 'handshake-failure', leader: 1 })).toEqual(per);
    expect(transition(transition(FRESH, start), { type: 'handshake-failure', leader: 1 })).toEqual(FRESH);
  });

  it('C8: closing is terminal from every state', () => {
    const states: SessionState[] = [
      FRESH,
      transition(FRESH, start),
      { kind: 'authenticated', scheme: 'NTLM' },
      { kind: 'per-request', scheme: 'Negotiate' },
    ];
    for (const s of states) {
      const closed = transition(s, { type: 'closed' });
      expect(closed).toEqual({ kind: 'closed' });
      expect(transition(closed, start)).toEqual({ kind: 'closed' });
    }
  });

  it('C1: only the leader ends a handshake; a second start while one runs is a bug', () => {
    const h = transition(FRESH, start);
    expect(() => transition(h, { type: 'handshake-failure', leader: 99 })).toThrow(IllegalTransitionError);
    expect(() => transition(h, { ...start, leader: 2 })).toThrow(IllegalTransitionError);
    expect(() => transition(FRESH, { type: 'handshake-failure', leader: 1 })).toThrow(IllegalTransitionError);
  });
});
