"""A webhook receiver for the scripts: answers every POST with STATUS and, given LOG,
appends the Herald-Priority header of each delivery to it in arrival order.

Usage: python3 scripts/lib/receiver.py PORT STATUS [LOG]
"""
import http.server
import sys

port, status = int(sys.argv[1]), int(sys.argv[2])
log = open(sys.argv[3], "a", buffering=1) if len(sys.argv) > 3 else None


class Receiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        if log:
            log.write(self.headers.get("Herald-Priority", "?") + "\n")
        self.send_response(status)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer(("127.0.0.1", port), Receiver).serve_forever()
