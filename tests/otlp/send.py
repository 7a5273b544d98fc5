"""Sends traces, metrics and logs to a Coral agent with the real
OpenTelemetry Python SDK and its OTLP exporters, then prints a JSON manifest
of exactly what it sent (ids, parents, attributes, counts).

usage: send.py grpc|http HOST:PORT SERVICE TRACES
"""
import json
import logging
import sys

from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

protocol, addr, service, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

if protocol == "grpc":
    from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    spans_out = OTLPSpanExporter(endpoint=addr, insecure=True)
    metrics_out = OTLPMetricExporter(endpoint=addr, insecure=True)
    logs_out = OTLPLogExporter(endpoint=addr, insecure=True)
else:
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    spans_out = OTLPSpanExporter(endpoint=f"http://{addr}/v1/traces")
    metrics_out = OTLPMetricExporter(endpoint=f"http://{addr}/v1/metrics")
    logs_out = OTLPLogExporter(endpoint=f"http://{addr}/v1/logs")

resource = Resource.create({"service.name": service, "deployment.environment": "test"})

tp = TracerProvider(resource=resource)
tp.add_span_processor(BatchSpanProcessor(spans_out, max_export_batch_size=64))
tracer = tp.get_tracer("coral-test")

reader = PeriodicExportingMetricReader(metrics_out, export_interval_millis=3_600_000)
mp = MeterProvider(resource=resource, metric_readers=[reader])
meter = mp.get_meter("coral-test")
orders = meter.create_counter("orders_total", unit="1")
latency = meter.create_histogram("checkout_latency_ms", unit="ms")

lp = LoggerProvider(resource=resource)
lp.add_log_record_processor(BatchLogRecordProcessor(logs_out))
log = logging.getLogger("coral-test")
log.setLevel(logging.INFO)
log.propagate = False
log.addHandler(LoggingHandler(level=logging.INFO, logger_provider=lp))

sent = {"spans": [], "logs": [], "orders_total": 0, "latency_count": 0}


def record(span, parent):
    ctx = span.get_span_context()
    sent["spans"].append(
        {
            "trace_id": format(ctx.trace_id, "032x"),
            "span_id": format(ctx.span_id, "016x"),
            "parent_span_id": format(parent, "016x") if parent else None,
            "name": span.name,
            "attributes": dict(span.attributes),
        }
    )


for i in range(n):
    with tracer.start_as_current_span("POST /checkout", attributes={"order.id": i, "http.route": "/checkout"}) as root:
        root_id = root.get_span_context().span_id
        with tracer.start_as_current_span("db.query", attributes={"db.statement": "SELECT 1", "rows": i * 2}) as q:
            record(q, root_id)
        with tracer.start_as_current_span("payment", attributes={"ok": i % 3 != 0, "amount": i * 1.5}) as p:
            record(p, root_id)
            log.warning("payment %d slow", i)
            sent["logs"].append({"trace_id": format(p.get_span_context().trace_id, "032x"), "body": f"payment {i} slow"})
        orders.add(2, {"route": "/checkout"})
        latency.record(10.0 + i)
        sent["orders_total"] += 2
        sent["latency_count"] += 1
    record(root, None)

ok = tp.force_flush(30_000)
ok = mp.force_flush(30_000) and ok
ok = lp.force_flush(30_000) and ok
tp.shutdown()
mp.shutdown()
lp.shutdown()
sent["flushed"] = bool(ok)
print(json.dumps(sent))
