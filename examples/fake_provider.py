#!/usr/bin/env python3
"""A fake SMS provider for the example senders' tests: POST /messages with a JSON body
{"id": <pg_throttle id>, "from": ..., "to": ..., "body": ...} answers 200 with a provider
message id, 429 with Retry-After (throttled), or 500, at the rates given. It logs every
message it accepted (one id per line) to --log, so a test can check that each went once.

    fake_provider.py --port 8099 --throttle 0.3 --error 0.1 --log accepted.txt
"""
import argparse
import json
import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--throttle", type=float, default=0.0, help="share answered 429")
    ap.add_argument("--error", type=float, default=0.0, help="share answered 500")
    ap.add_argument("--log", required=True, help="file of accepted ids")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    lock = threading.Lock()
    log = open(args.log, "a", buffering=1)
    accepted = [0]

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def reply(self, status, body, headers=()):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in headers:
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):
            n = int(self.headers.get("Content-Length", "0"))
            try:
                msg = json.loads(self.rfile.read(n))
                mid = int(msg["id"])
            except (ValueError, KeyError, TypeError):
                return self.reply(400, {"error": "bad request", "code": "21211"})
            with lock:
                roll = rng.random()
                if roll < args.throttle:
                    return self.reply(429, {"error": "too many requests", "code": "429"},
                                      [("Retry-After", "1")])
                if roll < args.throttle + args.error:
                    return self.reply(500, {"error": "internal error", "code": "500"})
                accepted[0] += 1
                log.write(f"{mid}\n")
                return self.reply(200, {"message_id": f"fake-{mid}-{accepted[0]}"})

    ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
