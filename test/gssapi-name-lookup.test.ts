/**
 * R1/R3: which Kerberos targets may have their GSS-API steps on the event loop. MIT's mechglue makes
 * the target's Kerberos name in every `gss_init_sec_context` call (`krb5_sname_to_principal`), which
 * looks the host up in DNS unless krb5.conf says not to: a silent DNS server then stalled the event
 * loop for resolv.conf's timeouts (10 s in review r43), beyond any handshakeTimeout.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadGssFunctions, targetMayWaitOnDns } from '../src/mechanisms/gssapi/index.ts';
import { nameLookupProfile, PROFILE_REREAD_MS } from '../src/mechanisms/gssapi/krb5.ts';
import { requirePeer } from './lab/index.ts';

describe('R1/R3: a GSS-API step whose target name may be looked up in DNS never runs on the event loop', () => {
  it('R1/R3: only dns_canonicalize_hostname = false, or an IP address with rdns = false, makes the name without DNS', () => {
    const spn = 'HTTP@intranet.example.test';
    // MIT's defaults (dns_canonicalize_hostname and rdns true) and an unreadable profile: DNS.
    expect(targetMayWaitOnDns(spn, {})).toBe(true);
    expect(targetMayWaitOnDns(spn, undefined)).toBe(true);
    expect(targetMayWaitOnDns(spn, { dnsCanonicalizeHostname: 'true', rdns: 'false' })).toBe(true);
    // fallback looks the host up when the name as given finds no ticket.
    expect(targetMayWaitOnDns(spn, { dnsCanonicalizeHostname: 'fallback', rdns: 'false' })).toBe(true);
    // Not canonicalised (any spelling MIT reads as false): no lookup, rdns is not consulted then.
    for (const no of ['false', 'FALSE', 'no', 'n', 'nil', '0', 'off']) {
      expect(targetMayWaitOnDns(spn, { dnsCanonicalizeHostname: no })).toBe(false);
    }
    // A value MIT cannot read as a boolean: its default (true).
    expect(targetMayWaitOnDns(spn, { dnsCanonicalizeHostname: 'maybe' })).toBe(true);
    // DNS for the realm (dns_lookup_realm) even when the host is not canonicalised.
    expect(targetMayWaitOnDns(spn, { dnsCanonicalizeHostname: 'false', dnsLookupRealm: 'true' })).toBe(true);
    // An IP address is not resolved; only reversed, with rdns (MIT's default).
    expect(targetMayWaitOnDns('HTTP@10.0.0.5', { rdns: 'false' })).toBe(false);
    expect(targetMayWaitOnDns('HTTP@10.0.0.5', { rdns: 'true' })).toBe(true);
    expect(targetMayWaitOnDns('HTTP@10.0.0.5', {})).toBe(true);
    expect(targetMayWaitOnDns('HTTP@::1', { rdns: 'off' })).toBe(false);
  });
});

describe.skipIf(!requirePeer('gss-binding'))('R1/R3: the profile is read as MIT reads it', () => {
  let dir: string;
  const previous = process.env.KRB5_CONFIG;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'multileg-profile-'));
  });
  afterAll(async () => {
    if (previous === undefined) delete process.env.KRB5_CONFIG;
    else process.env.KRB5_CONFIG = previous;
    await rm(dir, { recursive: true, force: true });
  });

  it('R1/R3: KRB5_CONFIG (more than one file too) gives dns_canonicalize_hostname, rdns and dns_lookup_realm; a changed KRB5_CONFIG is read anew', async () => {
    const g = await loadGssFunctions();
    const first = join(dir, 'first.conf');
    const second = join(dir, 'second.conf');
    await writeFile(first, '[libdefaults]\n    dns_canonicalize_hostname = false\n');
    await writeFile(second, '[libdefaults]\n    rdns = false\n    dns_lookup_realm = no\n');
    process.env.KRB5_CONFIG = `${first}:${second}`;
    const now = Date.now();
    const profile = nameLookupProfile(g, now);
    expect(profile).toEqual({ dnsCanonicalizeHostname: 'false', rdns: 'false', dnsLookupRealm: 'no' });
    expect(targetMayWaitOnDns('HTTP@intranet.example.test', profile)).toBe(false);
    // Nothing set: MIT's defaults, which canonicalise.
    process.env.KRB5_CONFIG = second;
    expect(targetMayWaitOnDns('HTTP@intranet.example.test', nameLookupProfile(g, now))).toBe(true);
    // The same KRB5_CONFIG edited: seen after PROFILE_REREAD_MS.
    await writeFile(second, '[libdefaults]\n    dns_canonicalize_hostname = false\n');
    expect(nameLookupProfile(g, now + PROFILE_REREAD_MS + 1)?.dnsCanonicalizeHostname).toBe('false');
  });
});
