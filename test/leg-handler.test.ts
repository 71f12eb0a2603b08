/**
 * The leg handler's mutual-authentication gate (M2): a final response is held until the server's
 * last token verified, then delivered with what arrived meanwhile — and the caller's own pause
 * survives the release.
 */
import type { Dispatcher } from 'undici';
import { describe, expect, it } from 'vitest';
import { LegHandler } from '../src/handshake/leg.ts';
import { UserSink } from '../src/handshake/user-sink.ts';
import { deferred } from './helpers.ts';

function fakeController() {
  const calls: string[] = [];
  const controller = {
    abort: (e: Error) => calls.push(`abort ${e.message}`),
    pause: () => calls.push('pause'),
    resume: () => calls.push('resume'),
    aborted: false,
    paused: false,
    reason: null,
  } as unknown as Dispatcher.DispatchController;
  return { controller, calls };
}

/** A caller that records what reaches it (`data` as text, or as its length with `lengths`). */
function recordingSink(opts: { pauseOnStart?: boolean; lengths?: boolean } = {}) {
  const seen: string[] = [];
  const sink = new UserSink({
    onRequestStart() {},
    onResponseStart(c) {
      seen.push('start');
      if (opts.pauseOnStart) c.pause(); // the caller's own back-pressure
    },
    onResponseData(_c, chunk) {
      seen.push(`data ${opts.lengths ? chunk.length : chunk.toString()}`);
    },
    onResponseEnd() {
      seen.push('end');
    },
    onResponseError(_c, e) {
      seen.push(`error ${e.message}`);
    },
  });
  sink.begin();
  return { sink, seen };
}

/** A leg whose 200 is held by `gate`, its response head already in. */
function gatedLeg(sink: UserSink, gate: Promise<void>) {
  const leg = new LegHandler({
    sink,
    classify: () => gate,
    beforeStart: () => {},
    maxDrainBytes: 1024,
    maxDrainMs: 1000,
  });
  const { controller, calls } = fakeController();
  leg.onRequestStart(controller);
  leg.onResponseStart(controller, 200, {}, '');
  return { leg, controller, calls };
}

describe('LegHandler: the mutual-auth gate', () => {
  it('M2: a gated response is released with its buffered body, and a caller that paused stays paused', async () => {
    const { sink, seen } = recordingSink({ pauseOnStart: true });
    const gate = deferred();
    const { leg, controller, calls } = gatedLeg(sink, gate.promise);
    leg.onResponseData(controller, Buffer.from('body'));
    leg.onResponseEnd(controller, {});
    expect(seen).toEqual([]); // nothing before the server proved itself
    gate.resolve();
    const result = await leg.result;
    expect(result.kind).toBe('delivered');
    expect(seen).toEqual(['start', 'data body', 'end']);
    // A small body is held without pausing the leg: the caller's own pause only, and no resume
    // that would override it.
    expect(calls).toEqual(['pause']);
  });

  it("M2: a gate that fails becomes the caller's error and aborts the leg; nothing of the body is shown", async () => {
    const { sink, seen } = recordingSink();
    const gate = deferred();
    const { leg, controller, calls } = gatedLeg(sink, gate.promise);
    leg.onResponseData(controller, Buffer.from('secret'));
    gate.reject(new Error('impostor'));
    await leg.result;
    expect(seen).toEqual(['error impostor']);
    expect(calls).toEqual(['abort impostor']);
  });

  it('M2: a small gated body is held without pausing or resuming the leg', async () => {
    const { sink, seen } = recordingSink();
    const { leg, controller, calls } = gatedLeg(sink, Promise.resolve());
    leg.onResponseData(controller, Buffer.from('body'));
    leg.onResponseEnd(controller, {});
    expect(seen).toEqual([]);
    await leg.result;
    expect(seen).toEqual(['start', 'data body', 'end']);
    expect(calls).toEqual([]);
  });

  it('M2: a gated body beyond 64 KiB pauses the leg until the gate opens, then resumes it', async () => {
    const { sink, seen } = recordingSink({ lengths: true });
    const gate = deferred();
    const { leg, controller, calls } = gatedLeg(sink, gate.promise);
    leg.onResponseData(controller, Buffer.alloc(40 * 1024));
    expect(calls).toEqual([]);
    leg.onResponseData(controller, Buffer.alloc(40 * 1024));
    expect(calls).toEqual(['pause']); // back-pressure while the server's proof is pending
    expect(seen).toEqual([]);
    gate.resolve();
    await leg.result;
    expect(seen).toEqual(['start', `data ${40 * 1024}`, `data ${40 * 1024}`]);
    expect(calls).toEqual(['pause', 'resume']);
  });
});
