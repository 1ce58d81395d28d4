#!/usr/bin/env python3
"""A server on a registry's address that is not the registry, for the tests of what Signpost says then.

  bad_registry.py MODE   (prints "listening on 127.0.0.1:PORT")

MODE: html (a proxy's 502 page), truncated (JSON cut short), shape (JSON of the wrong shape), huge (a body of
SIZE_MB megabytes, default 40, streamed), empty (200 with no body), hold-watch (passes every request to the etcd
at UPSTREAM but holds /v3/watch unanswered, as a restarting member does until it is ready)."""
import sys, os, threading, urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODE = sys.argv[1]
SIZE = int(os.environ.get("SIZE_MB", "40")) << 20


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self):
        if MODE == "hold-watch":
            length = int(self.headers.get("Content-Length", "0"))
            data = self.rfile.read(length) if length else None
            if self.path.startswith("/v3/watch"):
                threading.Event().wait()  # never answers; the thread ends with the process
            request = urllib.request.Request(os.environ["UPSTREAM"] + self.path, data=data, method=self.command,
                                             headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=10) as r:
                    status, body = r.status, r.read()
            except urllib.error.HTTPError as e:
                status, body = e.code, e.read()
            self.send_response(status); self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body))); self.end_headers()
            self.wfile.write(body)
            return
        if MODE == "html":
            body = b"<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1><hr>nginx</body></html>\n"
            self.send_response(502); self.send_header("Content-Type", "text/html"); ctype_done = True
        elif MODE == "truncated":
            body = b'[{"Node": "n1", "CheckID": "serfHealth", "Stat'
            self.send_response(200); self.send_header("Content-Type", "application/json")
        elif MODE == "shape":
            body = b'["web"]' if "/v1/catalog/services" in self.path else b'{"unexpected": true}'
            self.send_response(200); self.send_header("Content-Type", "application/json")
        elif MODE == "empty":
            body = b""
            self.send_response(200); self.send_header("Content-Type", "application/json")
        else:  # huge, with no Content-Length: the reader must stop by itself
            self.send_response(200); self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked"); self.end_headers()
            chunk = b"[" + b"0," * (1 << 19)
            sent = 0
            try:
                while sent < SIZE:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk)); sent += len(chunk)
                self.wfile.write(b"0\r\n\r\n")
            except OSError:
                pass
            return
        self.send_header("Content-Length", str(len(body))); self.send_header("X-Consul-Index", "5"); self.end_headers()
        self.wfile.write(body)

    do_GET = answer
    do_POST = answer

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
print(f"listening on 127.0.0.1:{server.server_address[1]}", flush=True)
server.serve_forever()
