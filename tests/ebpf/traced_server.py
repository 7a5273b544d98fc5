"""The eBPF test server (server.py's routes and status mix) instrumented
with OpenTelemetry: each request is also a SERVER span sent over OTLP/HTTP
to $OTLP_HTTP, so eBPF RED and tracing see the same requests (issue 6).

python traced_server.py PORT_FILE
"""

import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

provider = TracerProvider(resource=Resource.create({"service.name": "traced"}))
provider.add_span_processor(
    BatchSpanProcessor(OTLPSpanExporter(endpoint=os.environ["OTLP_HTTP"] + "/v1/traces"), schedule_delay_millis=200)
)
tracer = provider.get_tracer("coral-ebpf-test")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_GET(self):
        with tracer.start_as_current_span(
            "GET /api/orders/{id}", kind=SpanKind.SERVER,
            attributes={"http.request.method": "GET", "http.route": "/api/orders/{id}"},
        ) as span:
            parts = self.path.split("?")[0].strip("/").split("/")
            status, sleep_s = 404, 0.0
            if len(parts) == 3 and parts[:2] == ["api", "orders"] and parts[2].isdigit():
                i = int(parts[2])
                status = {0: 500, 1: 404}.get(i % 10, 200)
                sleep_s = 0.020 if i % 10 == 9 else 0.002
            time.sleep(sleep_s)
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR))
            span.set_attribute("http.response.status_code", status)
            body = b"order\n"
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def log_message(self, *args):
        pass


def main():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    with open(sys.argv[1] + ".tmp", "w") as f:
        f.write(str(srv.server_address[1]))
    os.rename(sys.argv[1] + ".tmp", sys.argv[1])
    srv.serve_forever()


if __name__ == "__main__":
    main()
