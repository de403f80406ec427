#!/usr/bin/env node
// A sender process for pg_throttle, with node-postgres (`pg`) and the built-in fetch.
//
//   node sender.js send DSN PROVIDER_URL [--exit-when-done]
//     Wait for releases (LISTEN throttle_ready), read them with a visibility timeout, call
//     the provider, and acknowledge each with its outcome. A message this process never
//     acknowledges (it crashed) comes back after the visibility timeout: at least once.
//   node sender.js enqueue DSN SENDER N
//     Queue N messages, waiting and retrying while a queue cap is full (SQLSTATE PT429);
//     prints each id.
'use strict';
const { Client } = require('pg');

const VISIBILITY = '30 seconds'; // longer than a provider call, retries included
const BATCH = 50;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Send one message: { outcome, providerId, code, retryAfter (s) }.
async function callProvider(url, msg) {
  let res;
  try {
    res = await fetch(url, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify(msg),
      signal: AbortSignal.timeout(10000),
    });
  } catch (e) {
    return { outcome: 'failed', code: 'network' };
  }
  const body = await res.json().catch(() => ({}));
  if (res.ok) return { outcome: 'sent', providerId: body.message_id };
  const code = String(body.code ?? res.status);
  if (res.status === 429) {
    // throttled: again, after the provider's Retry-After
    return { outcome: 'failed', code, retryAfter: Number(res.headers.get('retry-after') ?? 1) };
  }
  if (res.status >= 500) return { outcome: 'failed', code }; // again, after the back-off
  return { outcome: 'rejected', code }; // never valid (a bad number): dead now
}

async function send(dsn, url, exitWhenDone) {
  const db = new Client({ connectionString: dsn });
  await db.connect();
  let wake = () => {};
  db.on('notification', () => wake());
  await db.query('LISTEN throttle_ready');
  for (;;) {
    const { rows } = await db.query(
      'SELECT id, sender, recipient, payload, attempt FROM throttle.read($1, $2)',
      [BATCH, VISIBILITY],
    );
    for (const m of rows) {
      const r = await callProvider(url, { id: m.id, from: m.sender, to: m.recipient, body: m.payload });
      await db.query(
        'SELECT throttle.ack($1::bigint, $2, $3, $4, make_interval(secs => $5), $6)',
        [m.id, r.outcome, r.providerId ?? null, r.code ?? null, r.retryAfter ?? null, m.attempt],
      );
    }
    if (rows.length > 0) continue;
    if (exitWhenDone) {
      const done = await db.query(
        `SELECT NOT EXISTS (SELECT 1 FROM throttle.pending)
            AND NOT EXISTS (SELECT 1 FROM throttle.ready)
            AND NOT EXISTS (SELECT 1 FROM throttle.inflight) AS done`,
      );
      if (done.rows[0].done) break;
    }
    // Sleep until the worker's NOTIFY, or a second: a retry comes back to ready by itself.
    await new Promise((resolve) => {
      wake = resolve;
      setTimeout(resolve, 1000);
    });
    wake = () => {};
  }
  await db.end();
}

async function enqueue(dsn, sender, n) {
  const db = new Client({ connectionString: dsn });
  await db.connect();
  for (let i = 0; i < n; i++) {
    for (let delay = 100; ; delay = Math.min(delay * 2, 2000)) {
      try {
        const { rows } = await db.query("SELECT throttle.enqueue($1, 'att', $2, $3) AS id", [
          sender,
          `+1555030${String(i).padStart(4, '0')}`,
          JSON.stringify({ text: `hello ${i}` }),
        ]);
        console.log(rows[0].id);
        break;
      } catch (e) {
        if (e.code !== 'PT429') throw e;
        await sleep(delay); // the queue is full: wait for the worker to release
      }
    }
  }
  await db.end();
}

const [cmd, ...args] = process.argv.slice(2);
let run;
if (cmd === 'send' && args.length >= 2) run = send(args[0], args[1], args.includes('--exit-when-done'));
else if (cmd === 'enqueue' && args.length === 3) run = enqueue(args[0], args[1], Number(args[2]));
else {
  console.error('usage: sender.js send DSN PROVIDER_URL [--exit-when-done] | enqueue DSN SENDER N');
  process.exit(2);
}
run.catch((e) => {
  console.error(e);
  process.exit(1);
});
