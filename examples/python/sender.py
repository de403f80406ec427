#!/usr/bin/env python3
"""A sender process for pg_throttle, with psycopg 3.

    sender.py send DSN PROVIDER_URL [--exit-when-done]
        Wait for releases (LISTEN throttle_ready), read them with a visibility timeout, call
        the provider, and acknowledge each with its outcome. A message this process never
        acknowledges (it crashed) comes back after the visibility timeout: at least once.
    sender.py enqueue DSN SENDER N
        Queue N messages, waiting and retrying while a queue cap is full (SQLSTATE PT429);
        prints each id.
"""
import json
import select
import sys
import time
import urllib.error
import urllib.request

import psycopg

VISIBILITY = "30 seconds"  # longer than a provider call, retries included
BATCH = 50


def call_provider(url, msg):
    """Send one message: (outcome, provider message id, error code, retry after in s)."""
    body = json.dumps(msg).encode()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return "sent", json.load(r)["message_id"], None, None
    except urllib.error.HTTPError as e:
        code = str(json.load(e).get("code", e.code)) if e.headers.get("Content-Type") == "application/json" else str(e.code)
        if e.code == 429:  # throttled: again, after the provider's Retry-After
            return "failed", None, code, float(e.headers.get("Retry-After", "1"))
        if e.code >= 500:  # the provider's trouble: again, after pg_throttle's back-off
            return "failed", None, code, None
        return "rejected", None, code, None  # never valid (a bad number): dead now
    except (urllib.error.URLError, TimeoutError):
        return "failed", None, "network", None


def send(dsn, url, exit_when_done):
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("LISTEN throttle_ready")
        while True:
            rows = conn.execute(
                "SELECT id, sender, recipient, payload, attempt FROM throttle.read(%s, %s)",
                (BATCH, VISIBILITY),
            ).fetchall()
            for id_, sender, recipient, payload, attempt in rows:
                outcome, provider_id, code, retry_after = call_provider(
                    url, {"id": id_, "from": sender, "to": recipient, "body": payload}
                )
                conn.execute(
                    "SELECT throttle.ack(%s, %s, %s, %s, make_interval(secs => %s), %s)",
                    (id_, outcome, provider_id, code, retry_after, attempt),
                )
            if rows:
                continue
            if exit_when_done and conn.execute(
                "SELECT NOT EXISTS (SELECT 1 FROM throttle.pending)"
                " AND NOT EXISTS (SELECT 1 FROM throttle.ready)"
                " AND NOT EXISTS (SELECT 1 FROM throttle.inflight)"
            ).fetchone()[0]:
                return
            # Sleep until the worker's NOTIFY arrives (the next read consumes it), or a
            # second: a retry comes back to ready without a notification to this session.
            select.select([conn.fileno()], [], [], 1.0)


def enqueue(dsn, sender, n):
    with psycopg.connect(dsn, autocommit=True) as conn:
        for i in range(n):
            delay = 0.1
            while True:
                try:
                    (id_,) = conn.execute(
                        "SELECT throttle.enqueue(%s, 'att', %s, %s)",
                        (sender, f"+1555020{i:04d}", json.dumps({"text": f"hello {i}"})),
                    ).fetchone()
                    print(id_, flush=True)
                    break
                except psycopg.Error as e:
                    if e.sqlstate != "PT429":
                        raise
                    time.sleep(delay)  # the queue is full: wait for the worker to release
                    delay = min(delay * 2, 2.0)


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "send" and len(sys.argv) >= 4:
        send(sys.argv[2], sys.argv[3], "--exit-when-done" in sys.argv[4:])
    elif cmd == "enqueue" and len(sys.argv) == 5:
        enqueue(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        sys.exit(__doc__)
