"""A webhook receiver that verifies every request with the `standardwebhooks` package
from PyPI (not Herald's code). Prints its port, then one JSON line per request:
{"path", "id", "verified", "error"}. Answers 204 when verified (503 to the first request
on /flaky), 401 when the library refuses. The secret comes from WEBHOOK_SECRET.

With WEBHOOK_PUBLIC_KEY (`whpk_...`) instead, it verifies the `v1a` ed25519 signature
with the `cryptography` package from PyPI, as the Standard Webhooks spec defines it: one
of the header's `v1a,<base64>` signatures over "id.timestamp.body", and a timestamp
within 5 minutes (the standardwebhooks package verifies only `v1`)."""
import base64
import json
import os
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from standardwebhooks.webhooks import Webhook


class Ed25519Verifier:
    def __init__(self, public_key):
        raw = base64.b64decode(public_key.removeprefix("whpk_"))
        self.key = Ed25519PublicKey.from_public_bytes(raw)

    def verify(self, body, headers):
        headers = {k.lower(): v for k, v in headers.items()}
        msg_id, timestamp = headers["webhook-id"], headers["webhook-timestamp"]
        if abs(time.time() - int(timestamp)) > 300:
            raise ValueError("timestamp outside the tolerance")
        signed = f"{msg_id}.{timestamp}.".encode() + body
        for part in headers["webhook-signature"].split(" "):
            version, _, signature = part.partition(",")
            if version != "v1a":
                continue
            try:
                self.key.verify(base64.b64decode(signature), signed)
                return
            except Exception:
                pass
        raise ValueError("no v1a signature verifies")


if "WEBHOOK_PUBLIC_KEY" in os.environ:
    hook = Ed25519Verifier(os.environ["WEBHOOK_PUBLIC_KEY"])
else:
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


server = ThreadingHTTPServer(("127.0.0.1", int(os.environ.get("PORT", "0"))), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
