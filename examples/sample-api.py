#!/usr/bin/env python3
"""The protected API of the long-lived queue worker walkthrough (README, walkthrough 2).

POST /work with `Authorization: Bearer $SAMPLE_API_A_TOKEN`, `X-Tenant-ID` and a JSON body
{"item": ...} answers 200 {"accepted": item}; without the token 401, without a tenant or an item
400. Each request is printed. Listens on 127.0.0.1:9000 (or the port given as an argument).

    SAMPLE_API_A_TOKEN=s3cret python3 examples/sample-api.py
"""

import hmac
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOKEN = os.environ.get("SAMPLE_API_A_TOKEN")


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        if self.path != "/work":
            return self.answer(404, {"error": "not found"})
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(min(length, 1 << 20))
        presented = self.headers.get("Authorization", "")
        tenant = self.headers.get("X-Tenant-ID")
        if not hmac.compare_digest(presented.encode(), f"Bearer {TOKEN}".encode()):
            return self.answer(401, {"error": "unauthorized"})
        if not tenant:
            return self.answer(400, {"error": "X-Tenant-ID missing"})
        try:
            item = json.loads(body)["item"]
        except (ValueError, KeyError, TypeError):
            return self.answer(400, {"error": 'expected {"item": ...}'})
        print(f"tenant {tenant}: {item}", flush=True)
        self.answer(200, {"accepted": item})

    def answer(self, status, document):
        data = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args):
        pass


if __name__ == "__main__":
    if not TOKEN:
        sys.exit("set SAMPLE_API_A_TOKEN to the token the API accepts")
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 9000
    print(f"sample API on http://127.0.0.1:{port}/work", flush=True)
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
