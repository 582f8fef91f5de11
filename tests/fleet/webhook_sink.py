#!/usr/bin/env python3
"""A webhook receiver for the fleet tier: answers the first FAIL requests
with 500 (so the controller must retry), then 200, and appends every body it
accepted to OUT, one JSON document per line. Listens on PORT of ADDRESS
(127.0.0.1 unless given)."""
import http.server
import sys

port, fail, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
address = sys.argv[4] if len(sys.argv) > 4 else "127.0.0.1"
seen = 0


class Sink(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        global seen
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        seen += 1
        code = 500 if seen <= fail else 200
        if code == 200:
            with open(out, "ab") as f:
                f.write(body + b"\n")
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


http.server.HTTPServer((address, port), Sink).serve_forever()
