// Server-sent events over fetch. EventSource can neither send the admin key (a header) nor POST
// a body, and every stream here needs one of the two: GET /events and the log follow need the
// key, the playground POSTs a chat request to the proxy. So one small reader serves all three.
'use strict';

/**
 * Reads an SSE response: calls onEvent({event, id, data}) per event until the stream ends or
 * `signal` aborts. Resolves when the stream ends; rejects with MV.ApiError on a non-2xx answer.
 * `onResponse(r)` sees the response first (its headers).
 */
MV.stream = async (url, { method = 'GET', headers = {}, body, signal, onEvent, onResponse } = {}) => {
  const r = await fetch(url, { method, headers: { accept: 'text/event-stream', ...headers }, body, signal });
  if (onResponse) onResponse(r);
  if (!r.ok) {
    const text = await r.text();
    let d = {};
    try {
      d = JSON.parse(text);
    } catch (_) {
      d = {};
    }
    const msg = (d.error && (d.error.message || d.error)) || text || r.statusText;
    const err = new MV.ApiError(r.status, d.code || (d.error && d.error.code) || 'HTTP_' + r.status, String(msg));
    if ((r.status === 401 || r.status === 403) && url.startsWith('/')) Alpine.store('auth').rejected(err.message);
    throw err;
  }
  const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  let ev = { event: 'message', id: null, data: [] };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += value;
    let nl;
    while ((nl = buf.indexOf('\n')) >= 0) {
      let line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      if (line.endsWith('\r')) line = line.slice(0, -1);
      if (line === '') {
        if (ev.data.length) onEvent({ event: ev.event, id: ev.id, data: ev.data.join('\n') });
        ev = { event: 'message', id: ev.id, data: [] };
        continue;
      }
      if (line[0] === ':') continue; // comment: keep-alive, lagged notes
      const c = line.indexOf(':');
      const field = c < 0 ? line : line.slice(0, c);
      let v = c < 0 ? '' : line.slice(c + 1);
      if (v[0] === ' ') v = v.slice(1);
      if (field === 'data') ev.data.push(v);
      else if (field === 'event') ev.event = v;
      else if (field === 'id') ev.id = v;
    }
  }
};

/**
 * Follows the control plane's GET /events for as long as `signal` is not aborted, reconnecting
 * with `since=<last id>` (so nothing is missed or repeated) after a drop. `onEvent(e)` gets the
 * parsed event JSON; `onState('live' | 'reconnecting' | 'off')` the connection state.
 */
MV.followEvents = async (query, { signal, onEvent, onState }) => {
  let last = null;
  let delay = 1000;
  while (!signal.aborted) {
    const q = new URLSearchParams(query || '');
    if (last != null) q.set('since', last);
    else q.set('since', String(Number.MAX_SAFE_INTEGER)); // live only on the first connection
    try {
      await MV.stream('/events?' + q, {
        headers: MV.authHeaders(),
        signal,
        onResponse: (r) => r.ok && (onState('live'), (delay = 1000)),
        onEvent: (e) => {
          if (e.id != null) last = e.id;
          try {
            onEvent(JSON.parse(e.data));
          } catch (_) {
            /* not JSON: ignore */
          }
        },
      });
    } catch (e) {
      if (signal.aborted) return;
      if (e.status === 401 || e.status === 403) return onState('off');
    }
    if (signal.aborted) return;
    onState('reconnecting');
    await new Promise((res) => setTimeout(res, delay));
    delay = Math.min(delay * 2, 10000);
  }
};
