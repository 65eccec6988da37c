"""A webhook receiver that verifies every request with the `standardwebhooks` package
from PyPI (not Herald's code). Prints its port, then one JSON line per request:
{"path", "id", "verified", "error"}. Answers 204 when verified (503 to the first request
on /flaky), 401 when the library refuses. The secret comes from WEBHOOK_SECRET."""
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook

hook = Webhook(os.environ["WEBHOOK_SECRET"])
seen = set()


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        line = {"path": self.path, "id": self.headers.get("webhook-id"), "verified": False}
        try:
            hook.verify(body, dict(self.headers))
            line["verified"] = True
            status = 204
            if self.path == "/flaky" and line["id"] not in seen:
                seen.add(line["id"])
                status = 503
        except Exception as e:  # the library's refusal, reported to the test
            line["error"] = f"{type(e).__name__}: {e}"
            status = 401
        print(json.dumps(line), flush=True)
        self.send_response(status)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
