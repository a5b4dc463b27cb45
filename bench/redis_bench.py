#!/usr/bin/env python3
"""Client side of bench/redis_bench.sh (stdlib only): latency of sequential runs, and
throughput of concurrent clients, against one execbox endpoint (HTTP or HTTPS).

  redis_bench.py latency URL TOKEN N          -> JSON {p50_ms, p90_ms, mean_ms, n}
  redis_bench.py throughput URL TOKEN C SECS [CA]  -> JSON {runs_per_s, ok, errors, ...}
"""
import http.client
import json
import ssl
import statistics
import sys
import threading
import time
import urllib.parse

HELLO = json.dumps({"script": "def main():\n    return {'ok': 1}\n"}).encode()


def connect(url, ca=None):
    u = urllib.parse.urlsplit(url)
    if u.scheme == "https":
        ctx = ssl.create_default_context(cafile=ca)
        ctx.check_hostname = False  # the bench's self-signed certificate, on loopback
        return http.client.HTTPSConnection(u.hostname, u.port, context=ctx, timeout=120)
    return http.client.HTTPConnection(u.hostname, u.port, timeout=120)


def one(conn, token):
    conn.request("POST", "/execute", body=HELLO,
                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    r = conn.getresponse()
    body = r.read()
    return r.status, body


def latency(url, token, n, ca=None):
    conn = connect(url, ca)
    for _ in range(3):  # warm-up
        one(conn, token)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        status, body = one(conn, token)
        times.append((time.perf_counter() - t) * 1000)
        if status != 200:
            raise SystemExit(f"status {status}: {body[:200]!r}")
    times.sort()
    return {"n": n, "p50_ms": round(statistics.median(times), 2),
            "p90_ms": round(times[int(0.9 * (n - 1))], 2), "mean_ms": round(statistics.mean(times), 2)}


def throughput(url, token, clients, secs, ca=None):
    stop = time.monotonic() + secs
    ok = [0] * clients
    err = [0] * clients
    lat = [[] for _ in range(clients)]

    def worker(i):
        conn = connect(url, ca)
        while time.monotonic() < stop:
            t = time.perf_counter()
            try:
                status, _ = one(conn, token)
            except Exception:
                err[i] += 1
                conn = connect(url, ca)
                continue
            if status == 200:
                ok[i] += 1
                lat[i].append((time.perf_counter() - t) * 1000)
            else:
                err[i] += 1
                time.sleep(0.05)

    t0 = time.monotonic()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.monotonic() - t0
    all_lat = sorted(x for l in lat for x in l)
    return {"clients": clients, "secs": round(took, 1), "ok": sum(ok), "errors": sum(err),
            "runs_per_s": round(sum(ok) / took, 2),
            "p50_ms": round(statistics.median(all_lat), 1) if all_lat else None}


if __name__ == "__main__":
    mode, url, token = sys.argv[1:4]
    if mode == "latency":
        out = latency(url, token, int(sys.argv[4]))
    else:
        ca = sys.argv[6] if len(sys.argv) > 6 else None
        out = throughput(url, token, int(sys.argv[4]), float(sys.argv[5]), ca)
    print(json.dumps(out))
