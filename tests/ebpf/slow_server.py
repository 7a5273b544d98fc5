"""A plain HTTP service with no OpenTelemetry, for the passive-mode
analysis test (issue 11).

python3 slow_server.py PORT_FILE DELAY_FILE
GET /api/checkout sleeps the seconds written in DELAY_FILE (read on every
request); GET /api/items sleeps 3 ms. Keep-alive.
"""

import sys
import time

import server  # the directory of this script is on sys.path


class Slow(server.Handler):
    def do_GET(self):
        path = self.path.split("?")[0]
        if path == "/api/checkout":
            with open(sys.argv[2]) as f:
                time.sleep(float(f.read().strip() or "0"))
        elif path == "/api/items":
            time.sleep(0.003)
        body = b"ok\n"
        self.send_response(200 if path in ("/api/checkout", "/api/items") else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


if __name__ == "__main__":
    server.main(Slow)
