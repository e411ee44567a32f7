#!/usr/bin/env python3
"""Checks grafana/test_prometheus_live.sh runs against a real node and a real Prometheus.

    live_checks.py counters METRICS_URL        the load (grafana/load_node.py) shows in /metrics
    live_checks.py docs METRICS_URL            docs/metrics.md == the node's metric families
                                               (name, type, label names), both ways, and every
                                               reason/source/command/op/route value is named
    live_checks.py fake METRICS_URL            grafana/testdata/fake_metrics.prom has the same
                                               families, types and label names as the node
    live_checks.py jobs                        every job label in the dashboards, alerts.yml,
                                               provisioning and prometheus.yml is "ferrocast"
    live_checks.py rules PROM_URL              Prometheus loaded alerts.yml, every rule evaluates
                                               without error, none is pending or firing
    live_checks.py query PROM_URL EXPR [MIN]   EXPR returns a series with a value >= MIN (default 1)
    live_checks.py alert PROM_URL NAME STATE [SECONDS]
                                               alert NAME reaches STATE (pending|firing) within SECONDS

Each prints what it found; exit 0 when it holds, 1 when not. Python standard library only.
"""
import json
import os
import re
import sys
import time
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def parse_exposition(text):
    """{family: {"type": t, "labels": set(label names), "samples": {(name, labels tuple): value}}}"""
    fams, types = {}, {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, typ = line.split(None, 3)
            types[name] = typ
            fams[name] = {"type": typ, "labels": set(), "samples": {}}
    sample_re = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')
    label_re = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = sample_re.match(line)
        if not m:
            continue
        name, labels, value = m.group(1), m.group(2) or "", float(m.group(3))
        fam = name
        for suffix in ("_bucket", "_sum", "_count"):
            if name.endswith(suffix) and types.get(name[:-len(suffix)]) in ("histogram", "summary"):
                fam = name[:-len(suffix)]
        lab = tuple(sorted(label_re.findall(labels)))
        f = fams.setdefault(fam, {"type": "untyped", "labels": set(), "samples": {}})
        f["labels"].update(k for k, _ in lab if k not in ("le", "quantile"))
        f["samples"][(name, lab)] = value
    return fams


def total(fams, name, **want):
    """Sum of the samples of series `name` whose labels include `want`."""
    fam = name
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and name[:-len(suffix)] in fams:
            fam = name[:-len(suffix)]
    s = 0.0
    for (n, lab), v in fams.get(fam, {}).get("samples", {}).items():
        d = dict(lab)
        if n == name and all(d.get(k) == v2 for k, v2 in want.items()):
            s += v
    return s


# ----------------------------------------------------------------------------------- counters
# (what, series, labels, minimum) -- what grafana/load_node.py does must show up in /metrics.
EXPECTED = [
    ("open sockets", "ferrocast_sockets", {}, 20),
    ("subscriptions", "ferrocast_subscriptions", {}, 40),
    ("channels", "ferrocast_channels", {}, 4),
    ("connects", "ferrocast_connects_total", {}, 24),
    ("bad/expired ?token= counted as handshake failures (auth)", "ferrocast_handshake_failures_total", {"reason": "auth"}, 2),
    ("plain GET /ws counted as handshake failure (bad_request)", "ferrocast_handshake_failures_total", {"reason": "bad_request"}, 1),
    ("stalled handshake counted as handshake failure (timeout)", "ferrocast_handshake_failures_total", {"reason": "timeout"}, 1),
    ("client close 1000", "ferrocast_disconnects_total", {"code": "1000"}, 1),
    ("aborted connection 1006", "ferrocast_disconnects_total", {"code": "1006"}, 1),
    ("API disconnect 4000", "ferrocast_disconnects_total", {"code": "4000"}, 1),
    ("auth timeout 4001", "ferrocast_disconnects_total", {"code": "4001"}, 1),
    ("forbidden 4003", "ferrocast_disconnects_total", {"code": "4003"}, 2),
    ("bad request 4004", "ferrocast_disconnects_total", {"code": "4004"}, 1),
    ("message too big 4009", "ferrocast_disconnects_total", {"code": "4009"}, 1),
    ("protocol error 1002", "ferrocast_disconnects_total", {"code": "1002"}, 1),
    ("invalid UTF-8 1007", "ferrocast_disconnects_total", {"code": "1007"}, 1),
    ("too many requests 4006: the command flood and the frame flood", "ferrocast_disconnects_total", {"code": "4006"}, 2),
    ("frame with a reserved opcode counted as protocol error (protocol)", "ferrocast_protocol_errors_total", {"kind": "protocol"}, 1),
    ("invalid UTF-8 counted as protocol error (utf8)", "ferrocast_protocol_errors_total", {"kind": "utf8"}, 1),
    ("frame over max_message_size counted as protocol error (too_big)", "ferrocast_protocol_errors_total", {"kind": "too_big"}, 1),
    ("frame flood counted as protocol error (frame_rate)", "ferrocast_protocol_errors_total", {"kind": "frame_rate"}, 1),
    ("token expired 4011", "ferrocast_disconnects_total", {"code": "4011"}, 1),
    ("slow-consumer closes", "ferrocast_slow_consumer_closes_total", {}, 1),
    ("client error 101", "ferrocast_client_errors_total", {"code": "101"}, 1),
    ("client error 102", "ferrocast_client_errors_total", {"code": "102"}, 1),
    ("client error 103", "ferrocast_client_errors_total", {"code": "103"}, 2),
    ("client error 104", "ferrocast_client_errors_total", {"code": "104"}, 1),
    ("client error 107", "ferrocast_client_errors_total", {"code": "107"}, 2),
    ("client error 110", "ferrocast_client_errors_total", {"code": "110"}, 1),
    ("API publications", "ferrocast_publications_total", {"source": "api"}, 40),
    ("client publications", "ferrocast_publications_total", {"source": "client"}, 8),
    ("scheduled publications delivered", "ferrocast_publications_total", {"source": "scheduled"}, 1),
    ("scheduled publications pending", "ferrocast_scheduled_pending", {}, 1),
    ("deliveries", "ferrocast_deliveries_total", {}, 100),
    ("bytes out", "ferrocast_bytes_out_total", {}, 10000),
    ("delivery latency observations", "ferrocast_delivery_latency_seconds_count", {}, 10),
    ("broker publish latency observations", "ferrocast_broker_latency_seconds_count", {"op": "publish"}, 40),
    ("broker subscribe latency observations (one per channel the node takes up)", "ferrocast_broker_latency_seconds_count", {"op": "subscribe"}, 4),
    ("broker history latency observations", "ferrocast_broker_latency_seconds_count", {"op": "history"}, 1),
    ("broker up", "ferrocast_broker_up", {}, 1),
    ("build info", "ferrocast_build_info", {}, 1),
    ("socket capacity", "ferrocast_socket_capacity", {}, 1),
    ("API publish 200", "ferrocast_api_requests_total", {"route": "publish", "status": "200"}, 40),
    ("API broadcast 200", "ferrocast_api_requests_total", {"route": "broadcast", "status": "200"}, 1),
    ("API history 200", "ferrocast_api_requests_total", {"route": "history", "status": "200"}, 1),
    ("API presence 200", "ferrocast_api_requests_total", {"route": "presence", "status": "200"}, 1),
    ("API info 200", "ferrocast_api_requests_total", {"route": "info", "status": "200"}, 1),
    ("API disconnect 200", "ferrocast_api_requests_total", {"route": "disconnect", "status": "200"}, 1),
    ("API cancel 200", "ferrocast_api_requests_total", {"route": "cancel", "status": "200"}, 1),
    ("API cancel again 404", "ferrocast_api_requests_total", {"route": "cancel", "status": "404"}, 1),
    ("API wrong key 401", "ferrocast_api_requests_total", {"status": "401"}, 1),
    ("API unknown route 404", "ferrocast_api_requests_total", {"status": "404"}, 1),
    ("API malformed body 400", "ferrocast_api_requests_total", {"status": "400"}, 1),
] + [(f"client command {c}", "ferrocast_client_commands_total", {"command": c}, 1)
     for c in ("connect", "subscribe", "unsubscribe", "publish", "presence", "presence_stats",
               "history", "ping", "refresh")]


def cmd_counters(url):
    fams = parse_exposition(get(url))
    bad = []
    for what, name, labels, minimum in EXPECTED:
        v = total(fams, name, **labels)
        sel = ",".join(f'{k}="{v2}"' for k, v2 in labels.items())
        line = f"{name}{{{sel}}} = {v:g} (want >= {minimum:g}): {what}"
        if v < minimum:
            bad.append(line)
    shards = {dict(lab).get("shard") for (_, lab) in fams.get("ferrocast_sockets", {}).get("samples", {})}
    print("\n".join(bad) or f"{len(EXPECTED)} expectations hold; ferrocast_sockets on shards {sorted(shards)}")
    return 1 if bad else 0


# ----------------------------------------------------------------------------------- docs
def doc_table(rows=None):
    """{metric: (type, set(label names))} from the table in docs/metrics.md; `rows` (a dict)
    gets each metric's whole table row."""
    out = {}
    row = re.compile(r"^\|\s*`(ferrocast_[a-z0-9_]+)`\s*\|\s*([a-z]+)\s*\|\s*([^|]*)\|")
    with open(os.path.join(ROOT, "docs", "metrics.md")) as f:
        for line in f:
            m = row.match(line)
            if m:
                labels = set(re.findall(r"`([a-z_]+)`", m.group(3)))
                out[m.group(1)] = (m.group(2), labels)
                if rows is not None:
                    rows[m.group(1)] = line
    return out


# Labels whose every value the node exports must be named in the metric's row of docs/metrics.md
# (as `value`): the fixed sets an SRE filters on. Codes are covered by docs/protocol.md.
ENUM_LABELS = ("reason", "kind", "source", "command", "op", "route")


def undocumented_values(real, rows):
    bad = []
    for name, f in sorted(real.items()):
        row = rows.get(name)
        if not row:
            continue
        for lab in ENUM_LABELS:
            values = {dict(l).get(lab) for (_, l) in f["samples"]} - {None}
            missing = sorted(v for v in values if f"`{v}`" not in row)
            if missing:
                bad.append(f"{name}: {lab} values {missing} are exported but not named in docs/metrics.md")
    return bad


def compare(real, other, other_name):
    bad = []
    for name, f in sorted(real.items()):
        if not name.startswith("ferrocast_"):
            continue
        if name not in other:
            bad.append(f"{name} ({f['type']}, labels {sorted(f['labels'])}) is exported but missing from {other_name}")
            continue
        typ, labels = other[name]
        if typ != f["type"]:
            bad.append(f"{name}: type {f['type']} on the node, {typ} in {other_name}")
        if labels != f["labels"]:
            bad.append(f"{name}: labels {sorted(f['labels'])} on the node, {sorted(labels)} in {other_name}")
    for name in sorted(set(other) - set(real)):
        bad.append(f"{name} is in {other_name} but the node does not export it")
    return bad


def cmd_docs(url):
    real = parse_exposition(get(url))
    rows = {}
    bad = compare(real, doc_table(rows), "docs/metrics.md") + undocumented_values(real, rows)
    print("\n".join(bad) or f"docs/metrics.md documents all {sum(n.startswith('ferrocast_') for n in real)} "
          "families with their types and labels")
    return 1 if bad else 0


def cmd_fake(url):
    real = parse_exposition(get(url))
    with open(os.path.join(HERE, "testdata", "fake_metrics.prom")) as f:
        fake = {n: (v["type"], v["labels"]) for n, v in parse_exposition(f.read()).items()}
    bad = compare(real, fake, "grafana/testdata/fake_metrics.prom")
    print("\n".join(bad) or "fake_metrics.prom has the node's families, types and label names")
    return 1 if bad else 0


# ----------------------------------------------------------------------------------- jobs
def cmd_jobs():
    bad, seen = [], 0
    files = [os.path.join(HERE, "dashboards", f) for f in sorted(os.listdir(os.path.join(HERE, "dashboards")))]
    # alerts_test.yml is left out on purpose: its input series include another job's target
    # (job="node") to prove FerrocastNodeDown ignores it.
    files += [os.path.join(HERE, "alerts.yml")]
    files += [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(HERE, "provisioning")) for f in fs]
    for path in files:
        text = open(path).read()
        for m in re.finditer(r'job\s*(=~|!=|!~|=)\s*\\?"([^"\\]*)\\?"', text):
            seen += 1
            if m.group(1) != "=" or m.group(2) != "ferrocast":
                bad.append(f"{os.path.relpath(path, ROOT)}: job{m.group(1)}\"{m.group(2)}\"")
    for path in (os.path.join(HERE, "prometheus.yml"),):
        for m in re.finditer(r"job_name:\s*\"?([\w-]+)", open(path).read()):
            seen += 1
            if m.group(1) != "ferrocast":
                bad.append(f"{os.path.relpath(path, ROOT)}: job_name {m.group(1)}")
    if not seen:
        bad.append("no job label found at all")
    print("\n".join(bad) or f"{seen} job selectors/names, all \"ferrocast\"")
    return 1 if bad else 0


# ----------------------------------------------------------------------------------- Prometheus
def prom(base, path, **params):
    q = urllib.parse.urlencode(params)
    return json.loads(get(f"{base.rstrip('/')}{path}" + (f"?{q}" if q else "")))


def cmd_rules(base):
    groups = prom(base, "/api/v1/rules")["data"]["groups"]
    rules = [r for g in groups for r in g["rules"]]
    bad = [f"{r['name']}: health {r.get('health')} {r.get('lastError', '')}" for r in rules
           if r.get("health") != "ok" or r.get("lastError")]
    active = [f"{r['name']} is {r['state']}" for r in rules if r.get("state") not in (None, "inactive")]
    names = sorted(r["name"] for r in rules)
    if len(rules) < 6:
        bad.append(f"only {len(rules)} rules loaded: {names}")
    print("\n".join(bad + active) or f"{len(rules)} rules loaded and evaluated, none pending or firing: {', '.join(names)}")
    return 1 if bad or active else 0


def cmd_query(base, expr, minimum="1"):
    res = prom(base, "/api/v1/query", query=expr)["data"]["result"]
    vals = [float(r["value"][1]) for r in res]
    ok = any(v >= float(minimum) for v in vals)
    print(f"{expr} -> {vals or 'no data'} (want a value >= {minimum})")
    return 0 if ok else 1


def cmd_alert(base, name, state, seconds="20"):
    deadline = time.monotonic() + float(seconds)
    last = []
    while time.monotonic() < deadline:
        alerts = prom(base, "/api/v1/alerts")["data"]["alerts"]
        last = [(a["labels"].get("alertname"), a["state"]) for a in alerts]
        if (name, state) in last or (state == "pending" and (name, "firing") in last):
            print(f"{name} is {state} (active alerts: {last})")
            return 0
        time.sleep(0.5)
    print(f"{name} did not become {state} within {seconds}s (active alerts: {last})")
    return 1


def main(argv):
    cmds = {"counters": cmd_counters, "docs": cmd_docs, "fake": cmd_fake, "jobs": cmd_jobs,
            "rules": cmd_rules, "query": cmd_query, "alert": cmd_alert}
    if not argv or argv[0] not in cmds:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        return cmds[argv[0]](*argv[1:])
    except (OSError, ValueError, KeyError) as e:
        print(f"{argv[0]}: {type(e).__name__}: {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
