#!/usr/bin/env python3
"""Run every dashboard panel query and every alert expression through a real Prometheus.

    python3 grafana/check_queries.py PROMETHEUS_URL METRICS_URL [METRICS_URL ...]
        [--require-data] [--fail-nan] [--wait SECONDS] [--allow-empty REGEX] [--var NAME=VALUE]

PROMETHEUS_URL  base URL of a Prometheus that scrapes the node(s), e.g. http://127.0.0.1:9091
METRICS_URL     a node's admin /metrics URL, e.g. http://127.0.0.1:9090/metrics (one or more)

Checks, in order (exit status 1 when any fails, 2 on usage or connection errors):
 1. every panel `expr` of grafana/dashboards/*.json (template variables substituted: $node, $shard
    and other query variables -> their "All" value `.*`, $__rate_interval -> --rate-interval,
    $__interval, $__range ...) and every `expr` of grafana/alerts.yml goes through
    /api/v1/query; a parse or execution error fails;
 2. panels whose queries all return no series are listed; with --require-data they fail (unless
    their title matches --allow-empty). --wait retries the empty ones until data appears or the
    time runs out (the first scrapes after a node starts). Template variable queries
    (label_values(...)) are checked the same way. Targets returning only NaN are listed; with
    --fail-nan they fail;
 3. a legend like {{code}} needs the `code` label on every returned series (a panel grouping by a
    label the metric does not have shows blank legends);
 4. every `ferrocast_*` metric named in a dashboard or an alert must exist in the /metrics text
    (a histogram or summary counts with its base name and its _bucket/_sum/_count series).

Python 3 standard library only. Alert files are read with a small YAML subset reader that
understands what Prometheus rule files use for `expr:` (plain, quoted, `|` and `>` blocks).
"""
import argparse
import glob
import json
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
METRIC_RE = re.compile(r"\bferrocast_[A-Za-z0-9_]+")
VAR_RE = re.compile(r"\$\{(\w+)(?::[\w]+)?\}|\[\[(\w+)(?::\w+)?\]\]|\$(\w+)")
LEGEND_LABEL_RE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
HIST_SUFFIXES = ("_bucket", "_sum", "_count")


# --------------------------------------------------------------------------- extraction
class Query:
    """One PromQL expression and where it came from."""

    def __init__(self, source, title, ref, expr, legend="", kind="panel"):
        self.source, self.title, self.ref, self.raw, self.legend, self.kind = (
            source, title, ref, expr, legend, kind)
        self.expr = expr
        self.error = None
        self.series = None      # number of returned series, None until run
        self.all_nan = False
        self.missing_labels = set()

    def where(self):
        ref = f" [{self.ref}]" if self.ref else ""
        return f"{self.source}: {self.kind} \"{self.title}\"{ref}"


def walk_panels(panels):
    for p in panels or []:
        yield p
        yield from walk_panels(p.get("panels"))  # rows (collapsed or not) nest their panels


def dashboard_queries(path):
    with open(path) as f:
        dash = json.load(f)
    name = os.path.basename(path)
    variables = {}
    queries = []
    for v in dash.get("templating", {}).get("list", []):
        vtype, vname = v.get("type"), v.get("name")
        if vtype in ("query", "custom", "interval", "constant", "textbox"):
            all_value = v.get("allValue") or ".*"
            if vtype == "constant":
                all_value = v.get("query", "")
            elif vtype == "interval":
                all_value = (v.get("query") or "1m").split(",")[0].strip()
            elif vtype == "textbox":
                all_value = v.get("query") or ".*"
            variables[vname] = all_value
        if vtype == "query":
            q = v.get("query")
            q = q.get("query") if isinstance(q, dict) else q
            if q:
                queries.append(Query(name, vname, "", q, kind="variable"))
    for p in walk_panels(dash.get("panels")):
        for t in p.get("targets") or []:
            if t.get("expr") and not t.get("hide"):
                queries.append(Query(name, p.get("title", "(untitled)"), t.get("refId", ""),
                                     t["expr"], t.get("legendFormat", "")))
    return queries, variables


def _unquote(v):
    if len(v) >= 2 and v[0] == v[-1] == "'":
        return v[1:-1].replace("''", "'")
    if len(v) >= 2 and v[0] == v[-1] == '"':
        return json.loads(v)  # YAML double-quoted escapes are a superset of JSON's for PromQL
    return v


def yaml_exprs(path):
    """(name, expr) for every `expr:` in a Prometheus rule file (a YAML subset reader)."""
    with open(path) as f:
        lines = f.read().splitlines()
    out, name, i = [], "(unnamed)", 0
    key_re = re.compile(r"^(\s*)(-\s+)?(alert|record|expr):\s*(.*?)\s*$")
    while i < len(lines):
        m = key_re.match(lines[i])
        i += 1
        if not m:
            continue
        indent = len(m.group(1)) + len(m.group(2) or "")
        key, value = m.group(3), m.group(4)
        if key in ("alert", "record"):
            name = _unquote(value)
            continue
        block = []
        while i < len(lines) and (not lines[i].strip() or
                                  len(lines[i]) - len(lines[i].lstrip()) > indent):
            block.append(lines[i])
            i += 1
        while block and not block[-1].strip():
            block.pop()
        if value[:1] in ("|", ">"):
            body = [b for b in block]
            ind = min((len(b) - len(b.lstrip()) for b in body if b.strip()), default=0)
            body = [b[ind:] for b in body]
            expr = ("\n" if value[0] == "|" else " ").join(body)
        else:
            expr = " ".join([value] + [b.strip() for b in block if b.strip()])
            expr = _unquote(expr.strip())
        out.append((name, expr.strip()))
    return out


def substitute(q, variables, builtins):
    unknown = []

    def repl(m):
        var = m.group(1) or m.group(2) or m.group(3)
        if var in builtins:
            return builtins[var]
        if var in variables:
            return variables[var]
        unknown.append(var)
        return m.group(0)

    q.expr = VAR_RE.sub(repl, q.raw)
    if unknown:
        q.error = f"unknown template variable(s): {', '.join(sorted(set(unknown)))}"


def variable_to_promql(expr):
    """Grafana's Prometheus variable functions as PromQL (so Prometheus can check them)."""
    m = re.fullmatch(r"\s*label_values\(\s*(.+?)\s*,\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*", expr)
    if m:
        return f"count by ({m.group(2)}) ({m.group(1)})", m.group(2)
    m = re.fullmatch(r"\s*query_result\(\s*(.+)\s*\)\s*", expr, re.S)
    if m:
        return m.group(1), None
    m = re.fullmatch(r"\s*metrics\(\s*(.+?)\s*\)\s*", expr)
    if m:
        return f'count by (__name__) ({{__name__=~"{m.group(1)}"}})', None
    return None, None


# --------------------------------------------------------------------------- Prometheus
def http_get(url, timeout):
    req = urllib.request.Request(url, headers={"Accept": "text/plain;version=0.0.4, */*"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.read().decode("utf-8", "replace")


def prom_query(base, expr, timeout):
    data = urllib.parse.urlencode({"query": expr}).encode()
    req = urllib.request.Request(base.rstrip("/") + "/api/v1/query", data=data,
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            body = json.load(r)
    except urllib.error.HTTPError as e:  # 400 bad_data (parse), 422 execution
        try:
            body = json.load(e)
        except ValueError:
            return None, f"HTTP {e.code}"
        return None, f"{body.get('errorType', 'error')}: {body.get('error', '')}"
    if body.get("status") != "success":
        return None, f"{body.get('errorType', 'error')}: {body.get('error', '')}"
    return body["data"], None


def run_query(base, q, timeout):
    data, err = prom_query(base, q.expr, timeout)
    if err:
        q.error = err
        return
    rtype, result = data.get("resultType"), data.get("result")
    if rtype in ("scalar", "string"):
        q.series, q.all_nan = 1, str(result[1]).lower() == "nan"
        return
    q.series = len(result)
    values = [r["value"][1] for r in result if "value" in r] + \
             [v[1] for r in result for v in r.get("values", [])]
    q.all_nan = bool(values) and all(str(v).lower() == "nan" for v in values)
    want = set(LEGEND_LABEL_RE.findall(q.legend or "")) - {"__name__"}
    q.missing_labels = {lab for lab in want for r in result if lab not in r.get("metric", {})}


# --------------------------------------------------------------------------- /metrics
def exposed_metrics(text):
    """(names, histogram_bases) a Prometheus text exposition provides.

    names includes the base name and the _bucket/_sum/_count series of every histogram or
    summary, whether it was recognised by its # TYPE line or by its _bucket samples."""
    names, bases = set(), set()
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            parts = line.split()
            if len(parts) >= 4 and parts[1] == "TYPE":
                names.add(parts[2])
                if parts[3] in ("histogram", "summary", "gaugehistogram"):
                    bases.add(parts[2])
            continue
        m = re.match(r"([A-Za-z_:][A-Za-z0-9_:]*)", line)
        if m:
            names.add(m.group(1))
            if m.group(1).endswith("_bucket"):
                bases.add(m.group(1)[: -len("_bucket")])
    for base in bases:
        names.add(base)
        names.update(base + s for s in HIST_SUFFIXES)
    return names, bases


def family(name, bases):
    """The metric family a series name belongs to (histogram series -> base name)."""
    for s in HIST_SUFFIXES:
        if name.endswith(s) and name[: -len(s)] in bases:
            return name[: -len(s)]
    return name


# --------------------------------------------------------------------------- main
def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("prometheus", help="Prometheus base URL, e.g. http://127.0.0.1:9091")
    p.add_argument("metrics", nargs="+", help="admin /metrics URL(s) of the node(s)")
    p.add_argument("--dashboard", action="append", dest="dashboards", metavar="FILE",
                   help="dashboard JSON (repeatable; default grafana/dashboards/*.json)")
    p.add_argument("--alerts", action="append", metavar="FILE",
                   help="Prometheus rule file (repeatable; default grafana/alerts.yml)")
    p.add_argument("--require-data", action="store_true",
                   help="fail when a panel or variable query returns no series")
    p.add_argument("--allow-empty", metavar="REGEX",
                   help="with --require-data: panel titles allowed to be empty")
    p.add_argument("--fail-nan", action="store_true",
                   help="fail when a panel target returns only NaN (e.g. a quantile of a histogram "
                        "with no observations in the window)")
    p.add_argument("--wait", type=float, default=0, metavar="SECONDS",
                   help="retry empty panel queries for up to this long")
    p.add_argument("--var", action="append", default=[], metavar="NAME=VALUE",
                   help="value for a template variable (default: its All value, .*)")
    p.add_argument("--rate-interval", default="1m",
                   help="value for $__rate_interval (default 1m: 4 x a 15s scrape)")
    p.add_argument("--timeout", type=float, default=10, help="HTTP timeout, seconds")
    p.add_argument("-v", "--verbose", action="store_true", help="print every query")
    a = p.parse_args(argv)
    a.dashboards = a.dashboards or sorted(glob.glob(os.path.join(HERE, "dashboards", "*.json")))
    a.alerts = a.alerts or [os.path.join(HERE, "alerts.yml")]
    return a


def main(argv=None):
    a = parse_args(argv)
    builtins = {"__rate_interval": a.rate_interval, "__interval": "30s", "__interval_ms": "30000",
                "__range": "1h", "__range_s": "3600", "__range_ms": "3600000"}
    overrides = {}
    for kv in a.var:
        if "=" not in kv:
            print(f"--var needs NAME=VALUE, got {kv!r}", file=sys.stderr)
            return 2
        k, v = kv.split("=", 1)
        overrides[k] = v

    queries = []
    if not a.dashboards:
        print("no dashboards found", file=sys.stderr)
        return 2
    for path in a.dashboards:
        qs, variables = dashboard_queries(path)
        variables.update(overrides)
        for q in qs:
            substitute(q, variables, builtins)
        queries.extend(qs)
    for path in a.alerts:
        for name, expr in yaml_exprs(path):
            q = Query(os.path.basename(path), name, "", expr, kind="alert")
            substitute(q, overrides, builtins)
            queries.append(q)

    # 4. metric names against /metrics (done first: it needs no Prometheus)
    exposed, hist_bases = set(), set()
    for url in a.metrics:
        try:
            names, bases = exposed_metrics(http_get(url, a.timeout))
        except (urllib.error.URLError, OSError) as e:
            print(f"cannot fetch {url}: {e}", file=sys.stderr)
            return 2
        exposed |= names
        hist_bases |= bases
    referenced = {}
    for q in queries:
        for name in METRIC_RE.findall(q.raw):
            referenced.setdefault(name, []).append(q)
    missing = {n: qs for n, qs in referenced.items() if n not in exposed}

    # 1.-3. every query through Prometheus
    try:
        http_get(a.prometheus.rstrip("/") + "/-/ready", a.timeout)
    except (urllib.error.URLError, OSError) as e:
        print(f"Prometheus at {a.prometheus} is not ready: {e}", file=sys.stderr)
        return 2
    for q in queries:
        if q.error:
            continue
        if q.kind == "variable":
            promql, _ = variable_to_promql(q.expr)
            if promql is None:
                q.error = f"unsupported variable query: {q.expr}"
                continue
            q.expr = promql
        run_query(a.prometheus, q, a.timeout)

    def panel_key(q):
        return (q.source, q.kind, q.title)

    def empty_panels():
        groups = {}
        for q in queries:
            if q.kind in ("panel", "variable") and not q.error:
                groups.setdefault(panel_key(q), []).append(q)
        return {k: qs for k, qs in groups.items() if all(q.series == 0 for q in qs)}

    deadline = time.monotonic() + a.wait
    empties = empty_panels()
    while empties and time.monotonic() < deadline:
        time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
        for qs in empties.values():
            for q in qs:
                run_query(a.prometheus, q, a.timeout)
        empties = empty_panels()

    # report
    failures = 0
    if a.verbose:
        for q in queries:
            state = "ERROR" if q.error else ("empty" if q.series == 0 else f"{q.series} series")
            print(f"{state:>10}  {q.where()}\n            {q.expr}")
    errors = [q for q in queries if q.error]
    print(f"{len(queries)} queries: {sum(q.kind == 'panel' for q in queries)} panel targets, "
          f"{sum(q.kind == 'variable' for q in queries)} variables, "
          f"{sum(q.kind == 'alert' for q in queries)} alert rules "
          f"from {len(a.dashboards)} dashboard(s) and {len(a.alerts)} rule file(s)")
    if errors:
        print(f"\nFAIL  {len(errors)} quer{'y' if len(errors) == 1 else 'ies'} rejected by Prometheus:")
        for q in errors:
            print(f"  {q.where()}\n    {q.expr}\n    -> {q.error}")
        failures += len(errors)
    else:
        print("ok    every query parses and executes")

    allow = re.compile(a.allow_empty) if a.allow_empty else None
    if empties:
        bad = {k: v for k, v in empties.items() if not (allow and allow.search(k[2]))}
        tag = "FAIL " if a.require_data and bad else "note "
        print(f"\n{tag} {len(empties)} panel(s)/variable(s) returned no data:")
        for (src, kind, title), qs in sorted(empties.items()):
            allowed = " (allowed)" if (src, kind, title) not in bad else ""
            print(f"  {src}: {kind} \"{title}\"{allowed}")
            for q in qs:
                print(f"    {q.expr}")
        if a.require_data:
            failures += len(bad)
    else:
        print("ok    every panel and variable returned data")

    nan_only = [q for q in queries if q.kind == "panel" and not q.error and q.series and q.all_nan]
    if nan_only:
        tag = "FAIL " if a.fail_nan else "note "
        print(f"\n{tag} {len(nan_only)} target(s) returned only NaN (e.g. a latency quantile with "
              "no observations in the window):")
        for q in nan_only:
            print(f"  {q.where()}")
        if a.fail_nan:
            failures += len(nan_only)

    label_bad = [q for q in queries if q.missing_labels]
    if label_bad:
        print(f"\nFAIL  {len(label_bad)} target(s) whose legend names a label missing from the result:")
        for q in label_bad:
            print(f"  {q.where()}: {', '.join(sorted(q.missing_labels))}  ({q.expr})")
        failures += len(label_bad)
    else:
        print("ok    every legend label is present in the results")

    if missing:
        print(f"\nFAIL  {len(missing)} metric(s) used but absent from {', '.join(a.metrics)}:")
        for name, qs in sorted(missing.items()):
            users = sorted({q.where() for q in qs})
            print(f"  {name}  (used by {users[0]}{f' and {len(users) - 1} more' if len(users) > 1 else ''})")
        failures += len(missing)
    else:
        print(f"ok    all {len(referenced)} ferrocast_* metrics used by dashboards and alerts exist in /metrics")

    used_families = {family(n, hist_bases) for n in referenced}
    unused = sorted({family(n, hist_bases) for n in exposed if n.startswith("ferrocast_")}
                    - used_families)
    if unused:
        print(f"\nnote  exposed but not used by any panel or alert: {', '.join(unused)}")

    print(f"\n{'FAILED' if failures else 'PASSED'}: {failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
