"""The eBPF test server (server.py, same routes and status mix) with each
request also a SERVER span sent over OTLP/HTTP to $OTLP_HTTP, so eBPF RED
and tracing see the same requests (issue 6).

python traced_server.py PORT_FILE
"""

import os

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

import server  # the directory of this script is on sys.path

provider = TracerProvider(resource=Resource.create({"service.name": "traced"}))
provider.add_span_processor(
    BatchSpanProcessor(OTLPSpanExporter(endpoint=os.environ["OTLP_HTTP"] + "/v1/traces"), schedule_delay_millis=200)
)
tracer = provider.get_tracer("coral-ebpf-test")


class Traced(server.Handler):
    def send_response(self, code, message=None):
        self.status = code
        super().send_response(code, message)

    def do_GET(self):
        with tracer.start_as_current_span(
            "GET /api/orders/{id}", kind=SpanKind.SERVER,
            attributes={"http.request.method": "GET", "http.route": "/api/orders/{id}"},
        ) as span:
            super().do_GET()
            if self.status >= 500:
                span.set_status(Status(StatusCode.ERROR))
            span.set_attribute("http.response.status_code", self.status)


if __name__ == "__main__":
    server.main(Traced)
