/**
 * The leg handler's mutual-authentication gate (M2): a final response is held until the server's
 * last token verified, then delivered with what arrived meanwhile — and the caller's own pause
 * survives the release.
 */
import type { Dispatcher } from 'undici';
import { describe, expect, it } from 'vitest';
import { LegHandler } from '../src/handshake/leg.ts';
import { UserSink } from '../src/handshake/user-sink.ts';

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

describe('LegHandler: the mutual-auth gate', () => {
  it('M2: a gated response is released with its buffered body, and a caller that paused stays paused', async () => {
    const seen: string[] = [];
    const sink = new UserSink({
      onRequestStart() {},
      onResponseStart(c) {
        seen.push('start');
        c.pause(); // the caller's own back-pressure
      },
      onResponseData(_c, chunk) {
        seen.push(`data ${chunk.toString()}`);
      },
      onResponseEnd() {
        seen.push('end');
      },
      onResponseError(_c, e) {
        seen.push(`error ${e.message}`);
      },
    });
    sink.begin();
    let verify!: () => void;
    const gate = new Promise<void>((resolve) => {
      verify = resolve;
    });
    const leg = new LegHandler({ sink, classify: () => gate, beforeStart: () => {}, maxDrainBytes: 1024 });
    const { controller, calls } = fakeController();
    leg.onRequestStart(controller);
    leg.onResponseStart(controller, 200, {}, '');
    leg.onResponseData(controller, Buffer.from('body'));
    leg.onResponseEnd(controller, {});
    expect(seen).toEqual([]); // nothing before the server proved itself
    verify();
    const result = await leg.result;
    expect(result.kind).toBe('delivered');
    expect(seen).toEqual(['start', 'data body', 'end']);
    // A small body is held without pausing the leg: the caller's own pause only, and no resume
    // that would override it.
    expect(calls).toEqual(['pause']);
  });

  it("M2: a gate that fails becomes the caller's error and aborts the leg; nothing of the body is shown", async () => {
    const seen: string[] = [];
    const sink = new UserSink({
      onRequestStart() {},
      onResponseStart() {
        seen.push('start');
      },
      onResponseData() {
        seen.push('data');
      },
      onResponseEnd() {
        seen.push('end');
      },
      onResponseError(_c, e) {
        seen.push(`error ${e.message}`);
      },
    });
    sink.begin();
    let fail!: (e: Error) => void;
    const gate = new Promise<void>((_, reject) => {
      fail = reject;
    });
    const leg = new LegHandler({ sink, classify: () => gate, beforeStart: () => {}, maxDrainBytes: 1024 });
    const { controller, calls } = fakeController();
    leg.onRequestStart(controller);
    leg.onResponseStart(controller, 200, {}, '');
    leg.onResponseData(controller, Buffer.from('secret'));
    fail(new Error('impostor'));
    await leg.result;
    expect(seen).toEqual(['error impostor']);
    expect(calls).toEqual(['abort impostor']);
  });

  it('M2: a small gated body is held without pausing or resuming the leg', async () => {
    const seen: string[] = [];
    const sink = new UserSink({
      onRequestStart() {},
      onResponseStart() {
        seen.push('start');
      },
      onResponseData(_c, chunk) {
        seen.push(`data ${chunk.toString()}`);
      },
      onResponseEnd() {
        seen.push('end');
      },
      onResponseError(_c, e) {
        seen.push(`error ${e.message}`);
      },
    });
    sink.begin();
    const leg = new LegHandler({ sink, classify: () => Promise.resolve(), beforeStart: () => {}, maxDrainBytes: 1024 });
    const { controller, calls } = fakeController();
    leg.onRequestStart(controller);
    leg.onResponseStart(controller, 200, {}, '');
    leg.onResponseData(controller, Buffer.from('body'));
    leg.onResponseEnd(controller, {});
    expect(seen).toEqual([]);
    await leg.result;
    expect(seen).toEqual(['start', 'data body', 'end']);
    expect(calls).toEqual([]);
  });

  it('M2: a gated body beyond 64 KiB pauses the leg until the gate opens, then resumes it', async () => {
    const seen: string[] = [];
    const sink = new UserSink({
      onRequestStart() {},
      onResponseStart() {
        seen.push('start');
      },
      onResponseData(_c, chunk) {
        seen.push(`data ${chunk.length}`);
      },
      onResponseEnd() {
        seen.push('end');
      },
      onResponseError(_c, e) {
        seen.push(`error ${e.message}`);
      },
    });
    sink.begin();
    let verify!: () => void;
    const gate = new Promise<void>((resolve) => {
      verify = resolve;
    });
    const leg = new LegHandler({ sink, classify: () => gate, beforeStart: () => {}, maxDrainBytes: 1024 });
    const { controller, calls } = fakeController();
    leg.onRequestStart(controller);
    leg.onResponseStart(controller, 200, {}, '');
    leg.onResponseData(controller, Buffer.alloc(40 * 1024));
    expect(calls).toEqual([]);
    leg.onResponseData(controller, Buffer.alloc(40 * 1024));
    expect(calls).toEqual(['pause']); // back-pressure while the server's proof is pending
    expect(seen).toEqual([]);
    verify();
    await leg.result;
    expect(seen).toEqual(['start', `data ${40 * 1024}`, `data ${40 * 1024}`]);
    expect(calls).toEqual(['pause', 'resume']);
  });
});
