"""HTTP/1.1 test server for the eBPF accuracy tests (issue 5).

python3 server.py PORT_FILE
Binds 127.0.0.1:0, writes the port to PORT_FILE, serves until killed.
GET /api/orders/<id>: status 500 if id % 10 == 0, 404 if id % 10 == 1,
else 200; sleeps 20 ms if id % 10 == 9, else 2 ms. Keep-alive.
"""

import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; without TCP_NODELAY the client
    # waits for a delayed ACK (40 ms) that no server-side clock sees.
    disable_nagle_algorithm = True

    def do_GET(self):
        parts = self.path.split("?")[0].strip("/").split("/")
        status, sleep_s = 404, 0.0
        if len(parts) == 3 and parts[:2] == ["api", "orders"] and parts[2].isdigit():
            i = int(parts[2])
            status = {0: 500, 1: 404}.get(i % 10, 200)
            sleep_s = 0.020 if i % 10 == 9 else 0.002
        time.sleep(sleep_s)
        body = b"order\n"
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def main(handler=Handler):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    srv.daemon_threads = True
    with open(sys.argv[1] + ".tmp", "w") as f:
        f.write(str(srv.server_address[1]))
    import os

    os.rename(sys.argv[1] + ".tmp", sys.argv[1])
    srv.serve_forever()


if __name__ == "__main__":
    main()
