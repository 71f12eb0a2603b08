/**
 * The authenticated fast path (FastExchange) leaves nothing out: while someone traces legs
 * (`multileg:leg`), requests on an authenticated session are reported like every other leg.
 */
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { afterEach, describe, expect, it } from 'vitest';
import { LEG_CHANNEL, type LegEvent } from '../src/index.ts';
import { get, type Rig, rig } from './helpers.ts';

describe('fast path and diagnostics', () => {
  let r: Rig | undefined;
  afterEach(async () => {
    await r?.close();
    r = undefined;
  });

  it('C2/S2: requests on an authenticated session are reported on multileg:leg too, one event pair per wire request', async () => {
    r = await rig({ mode: 'session' });
    expect((await get(r, '/auth/first')).status).toBe(200);
    const legs: LegEvent[] = [];
    const onLeg = (m: unknown) => legs.push(m as LegEvent);
    subscribe(LEG_CHANNEL, onLeg);
    try {
      const results = await Promise.all([get(r, '/auth/a'), get(r, '/auth/b'), get(r, '/auth/c')]);
      expect(results.map((x) => x.status)).toEqual([200, 200, 200]);
    } finally {
      unsubscribe(LEG_CHANNEL, onLeg);
    }
    const requests = legs.filter((e) => e.phase === 'request');
    expect(requests.map((e) => [e.path, e.scheme]).sort()).toEqual([
      ['/auth/a', undefined],
      ['/auth/b', undefined],
      ['/auth/c', undefined],
    ]);
    expect(legs.filter((e) => e.phase === 'response').map((e) => e.phase === 'response' && e.status)).toEqual([
      200, 200, 200,
    ]);
    expect(r.agent.stats().handshakes).toBe(1);
  });
});
