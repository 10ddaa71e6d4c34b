#!/usr/bin/python3
"""A small HTTP server that misbehaves on purpose, for udm's remote tests.

Usage: fault_server.py PORT DIR. GET /MODE/NAME serves DIR/NAME with fault MODE:
  ok           correct ranged replies (206, Content-Range, ETag "v1")
  drop         the first `drop` (default 2) data requests send half the body, then close
  busy         the first `busy` (default 2) requests answer 503 with Retry-After: 1
  full200      ignores Range: 200 with the whole object
  full200data  probe (bytes=0-0) correct, data requests answered 200 with the whole object
  badrange     data requests get a Content-Range shifted by one byte
  short        data requests get a correct Content-Range but a shorter body
  stall        data requests get the headers, then nothing for 60 s
  etag         the ETag changes after the probe
  redirect     302 to http://localhost:PORT/signed/NAME?exp=<now+ttl> (ttl default 2 s);
               /signed/ answers 403 once exp is past
  slow         each reply delayed by `delay_ms` (default 20)
  down         503 (no Retry-After) while /_set?down=1, else ok
GET /_set?key=value&... sets drop, busy, ttl, delay_ms, down; /_reset zeroes counters;
/_stats returns JSON {"requests": {mode: n}, "data_bytes": n, "log": [[mode, range, status, t], ...]}.
"""
import json, os, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse, parse_qs

PORT = int(sys.argv[1]); DIR = sys.argv[2]
LOCK = threading.Lock()
CFG = {"drop": 2, "busy": 2, "ttl": 2.0, "delay_ms": 20, "down": 0}
ST = {"requests": {}, "data_bytes": 0, "log": [], "drop_done": 0, "busy_done": 0, "etag_probed": 0}

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass

    def reply(self, code, body=b"", headers=()):
        self.send_response(code)
        for k, v in headers: self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD": self.wfile.write(body)

    def do_HEAD(self): self.do_GET()

    def do_GET(self):
        u = urlparse(self.path); q = parse_qs(u.query)
        if u.path == "/_set":
            with LOCK:
                for k, v in q.items(): CFG[k] = float(v[0]) if k == "ttl" else int(v[0])
            return self.reply(200, b"ok")
        if u.path == "/_reset":
            with LOCK:
                ST.update({"requests": {}, "data_bytes": 0, "log": [], "drop_done": 0, "busy_done": 0, "etag_probed": 0})
            return self.reply(200, b"ok")
        if u.path == "/_stats":
            with LOCK: body = json.dumps(ST).encode()
            return self.reply(200, body, [("Content-Type", "application/json")])
        parts = u.path.split("/", 2)
        if len(parts) < 3: return self.reply(404, b"no")
        mode, name = parts[1], parts[2]
        path = os.path.join(DIR, name)
        if not os.path.isfile(path): return self.reply(404, b"not found")
        data = open(path, "rb").read(); size = len(data)
        rng = self.headers.get("Range", "")
        probe = rng == "bytes=0-0"
        with LOCK:
            ST["requests"][mode] = ST["requests"].get(mode, 0) + 1
        status = [0]
        def log(code):
            with LOCK: ST["log"].append([mode, rng, code, time.time(), self.headers.get("Authorization", "")])
        if mode == "redirect":
            exp = time.time() + CFG["ttl"]
            log(302)
            return self.reply(302, b"", [("Location", "http://localhost:%d/signed/%s?exp=%f" % (PORT, name, exp))])
        if mode == "signed" and float(q.get("exp", ["0"])[0]) < time.time():
            log(403); return self.reply(403, b"expired")
        if mode == "busy":
            with LOCK:
                hit = ST["busy_done"] < CFG["busy"]
                if hit: ST["busy_done"] += 1
            if hit:
                log(503); return self.reply(503, b"busy", [("Retry-After", "1")])
        if mode == "down" and CFG["down"]:
            log(503); return self.reply(503, b"down")
        if mode == "slow":
            time.sleep(CFG["delay_ms"] / 1000.0)
        if mode == "full200" or (mode == "full200data" and not probe):
            log(200); return self.reply(200, data, [("ETag", '"v1"')])
        if not rng.startswith("bytes="):
            log(200); return self.reply(200, data, [("ETag", '"v1"'), ("Accept-Ranges", "bytes")])
        a, b = rng[6:].split("-")
        a = int(a); b = min(int(b), size - 1)
        if a >= size:
            log(416); return self.reply(416, b"", [("Content-Range", "bytes */%d" % size)])
        body = data[a:b + 1]
        etag = '"v1"'
        if mode == "etag":
            with LOCK:
                if not probe: etag = '"v2"'
        cr = "bytes %d-%d/%d" % (a, b, size)
        if mode == "badrange" and not probe: cr = "bytes %d-%d/%d" % (a + 1, b + 1, size)
        if mode == "short" and not probe: body = body[: len(body) // 2]
        hdrs = [("Content-Range", cr), ("ETag", etag), ("Accept-Ranges", "bytes")]
        if mode == "drop" and not probe:
            with LOCK:
                hit = ST["drop_done"] < CFG["drop"]
                if hit: ST["drop_done"] += 1
            if hit:
                log(-206)
                self.send_response(206)
                for k, v in hdrs: self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2]); self.wfile.flush()
                self.close_connection = True
                return
        if mode == "stall" and not probe:
            log(-1)
            self.send_response(206)
            for k, v in hdrs: self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers(); self.wfile.flush()
            time.sleep(60); self.close_connection = True
            return
        with LOCK:
            if not probe: ST["data_bytes"] += len(body)
        log(206)
        self.reply(206, body, hdrs)

class S(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

S(("127.0.0.1", PORT), H).serve_forever()
