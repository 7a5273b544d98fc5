"""The demo's sample shop, instrumented with OpenTelemetry like any real app:
a frontend that calls an api that queries PostgreSQL. Spans go to the local
Coral agent over OTLP/HTTP.

  shop.py api PORT DSN         GET /orders?user=N, GET /health
  shop.py frontend PORT API    GET /checkout (calls the api), GET /health
  shop.py load URL RPS SECONDS open-loop load at a fixed rate; prints a summary
"""

import json
import os
import random
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from opentelemetry import propagate, trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

ORDERS_SQL = "SELECT id, total FROM orders WHERE user_id = %s"
USERS = int(os.environ.get("SHOP_USERS", "20000"))


def tracer_for(service):
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    endpoint = os.environ.get("OTLP_HTTP", "http://127.0.0.1:4318") + "/v1/traces"
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint), schedule_delay_millis=500))
    trace.set_tracer_provider(provider)
    return trace.get_tracer("coral-demo-shop")


class Quiet(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def api(port, dsn):
    import psycopg

    tracer = tracer_for("api")
    local = threading.local()

    def conn():
        if getattr(local, "conn", None) is None:
            local.conn = psycopg.connect(dsn, autocommit=True)
        return local.conn

    class Handler(Quiet):
        def do_GET(self):
            url = urlparse(self.path)
            if url.path == "/health":
                return self.reply(200, {"ok": True})
            if url.path != "/orders":
                return self.reply(404, {"error": "not found"})
            ctx = propagate.extract(dict(self.headers))
            with tracer.start_as_current_span(
                "GET /orders", context=ctx, kind=SpanKind.SERVER,
                attributes={"http.request.method": "GET", "http.route": "/orders"},
            ) as span:
                user = int(parse_qs(url.query).get("user", ["1"])[0])
                try:
                    with tracer.start_as_current_span(
                        "SELECT orders", kind=SpanKind.CLIENT,
                        attributes={
                            "db.system": "postgresql", "db.name": "shop", "db.user": "shop",
                            "peer.service": "db", "db.statement": ORDERS_SQL,
                            "server.address": "127.0.0.1", "server.port": 5432,
                        },
                    ):
                        rows = conn().execute(ORDERS_SQL, (user,)).fetchall()
                except Exception as e:  # a real app reports, then answers 500
                    local.conn = None
                    span.set_status(Status(StatusCode.ERROR, str(e)))
                    span.set_attribute("http.response.status_code", 500)
                    return self.reply(500, {"error": str(e)})
                span.set_attribute("http.response.status_code", 200)
                self.reply(200, {"user": user, "orders": [[r[0], float(r[1])] for r in rows]})

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


def frontend(port, api_base):
    tracer = tracer_for("frontend")

    class Handler(Quiet):
        def do_GET(self):
            url = urlparse(self.path)
            if url.path == "/health":
                return self.reply(200, {"ok": True})
            if url.path != "/checkout":
                return self.reply(404, {"error": "not found"})
            with tracer.start_as_current_span(
                "GET /checkout", kind=SpanKind.SERVER,
                attributes={"http.request.method": "GET", "http.route": "/checkout"},
            ) as span:
                user = random.randint(1, USERS)
                with tracer.start_as_current_span(
                    "GET api /orders", kind=SpanKind.CLIENT, attributes={"peer.service": "api"},
                ) as call:
                    headers = {}
                    propagate.inject(headers)
                    req = urllib.request.Request(f"{api_base}/orders?user={user}", headers=headers)
                    try:
                        with urllib.request.urlopen(req, timeout=10) as r:
                            body = json.loads(r.read())
                    except Exception as e:
                        call.set_status(Status(StatusCode.ERROR, str(e)))
                        span.set_status(Status(StatusCode.ERROR, str(e)))
                        return self.reply(502, {"error": str(e)})
                self.reply(200, {"user": user, "orders": len(body["orders"])})

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


def load(url, rps, seconds):
    """Open-loop: a request every 1/rps seconds whatever the latency, so a
    slow backend shows up as latency, not as fewer requests."""
    lat, errors, lock = [], [0], threading.Lock()

    def one():
        t = time.monotonic()
        try:
            with urllib.request.urlopen(url, timeout=15) as r:
                r.read()
        except Exception:
            with lock:
                errors[0] += 1
        with lock:
            lat.append((time.monotonic() - t) * 1000)

    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=64) as pool:
        i = 0
        while (now := time.monotonic()) < start + seconds:
            due = start + i / rps
            if due > now:
                time.sleep(due - now)
            pool.submit(one)
            i += 1
    lat.sort()
    p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] if lat else 0
    print(f"  {len(lat)} requests, {errors[0]} errors, p50 {p(0.5):.0f} ms, p95 {p(0.95):.0f} ms")


if __name__ == "__main__":
    role = sys.argv[1]
    if role == "api":
        api(int(sys.argv[2]), sys.argv[3])
    elif role == "frontend":
        frontend(int(sys.argv[2]), sys.argv[3])
    elif role == "load":
        load(sys.argv[2], float(sys.argv[3]), float(sys.argv[4]))
    else:
        sys.exit(f"unknown role {role}")
