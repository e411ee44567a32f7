#!/usr/bin/env python3
"""Turns a loadtest/suite.sh run directory into the marked sections of docs/benchmarks.md.

usage: suite_report.py OUT_DIR DOC FERROCAST_PORT NAIVE_PORT

OUT_DIR holds meta.json and SECTION/SCENARIO/{args,SERVER-RUN.json} (wsbench --json output plus a
"suite" object). For every figure: the median over the runs for each server, min–max beside it
when there is more than one run, and the ratio ferrocast / baseline. Each section of DOC between
`<!-- BEGIN name -->` and `<!-- END name -->` is replaced (appended when the markers are missing).
"""

import json
import os
import re
import statistics
import sys

SERVERS = [("ferrocast", "ferrocast"), ("naive", "naive-baseline")]

# (label, JSON pointer, scale, decimals, better: "low" | "high" | "")
CONNECT = [
    ("sockets connected", "/connections/connected", 1, 0, "high"),
    ("failed to connect", "/connections/failed", 1, 0, "low"),
    ("sockets dropped", "@dropped", 1, 0, "low"),
    ("achieved connect rate (/s)", "/connections/achieved_rate_per_s", 1, 0, "high"),
    ("upgrade p50 (ms)", "/connections/upgrade_ms/p50_ms", 1, 2, "low"),
    ("upgrade p99 (ms)", "/connections/upgrade_ms/p99_ms", 1, 2, "low"),
    ("ready (upgrade → subscribed) p50 (ms)", "/connections/ready_ms/p50_ms", 1, 2, "low"),
    ("ready p99 (ms)", "/connections/ready_ms/p99_ms", 1, 2, "low"),
    ("server RSS growth per socket (bytes)", "/server/rss_per_socket_bytes", 1, 0, "low"),
    ("server RSS, all sockets open (MiB)", "/server/rss_connected_kib", 1 / 1024, 1, "low"),
    ("server CPU per connection (µs)", "/server/cpu_us_per_connection", 1, 1, "low"),
]
TRAFFIC = [
    ("sockets connected", "/connections/connected", 1, 0, "high"),
    ("sockets dropped", "@dropped", 1, 0, "low"),
    ("publications", "/traffic/publications", 1, 0, ""),
    ("expected deliveries", "/traffic/expected_deliveries", 1, 0, ""),
    ("deliveries", "/traffic/deliveries", 1, 0, "high"),
    ("lost", "/traffic/lost", 1, 0, "low"),
    ("duplicated", "/traffic/duplicated", 1, 0, "low"),
    ("deliveries/s", "/traffic/deliveries_per_s", 1, 0, "high"),
    ("latency p50 (ms)", "/traffic/latency_ms/p50_ms", 1, 2, "low"),
    ("latency p90 (ms)", "/traffic/latency_ms/p90_ms", 1, 2, "low"),
    ("latency p99 (ms)", "/traffic/latency_ms/p99_ms", 1, 2, "low"),
    ("latency p99.9 (ms)", "/traffic/latency_ms/p999_ms", 1, 2, "low"),
    ("latency max (ms)", "/traffic/latency_ms/max_ms", 1, 2, "low"),
    ("server CPU per delivery (µs)", "/server/cpu_us_per_delivery", 1, 3, "low"),
    ("server peak RSS (MiB)", "/server/rss_peak_kib", 1 / 1024, 1, "low"),
]
CHURN = TRAFFIC + [
    ("reconnects", "/churn/reconnects", 1, 0, ""),
    ("reconnect p50 (ms)", "/churn/reconnect_ms/p50_ms", 1, 2, "low"),
    ("reconnect p99 (ms)", "/churn/reconnect_ms/p99_ms", 1, 2, "low"),
    ("publications recovered on reconnect", "/churn/recovered_publications", 1, 0, ""),
    ("recoveries refused", "/churn/recover_failed", 1, 0, "low"),
]

SCENARIOS = {
    "connect": ("connect", "Idle sockets (authenticated, one subscription each): the ramp, then the hold; the server's memory and CPU per socket", CONNECT),
    "broadcast": ("broadcast at 10 publications/s", "Subscribers of one channel, API publications at 10/s", TRAFFIC),
    "flood": ("broadcast, flood", "Subscribers of one channel, API publications as fast as they are delivered (at most 64 ahead)", TRAFFIC),
    "notify": ("notify", "Every user on its own `user:<id>` channel, the API publishing to random users", TRAFFIC),
    "chat": ("chat", "Rooms of 10, every member publishing over its own socket", TRAFFIC),
    "churn": ("churn", "Sockets leaving and coming back with `recover` while API publications flow", CHURN),
    "idle": ("(a) idle sockets on `user:<id>` + one shared channel", "Issue 2 (a): every socket authenticated and subscribed to its personal channel and one shared channel", CONNECT),
    "fanout": ("(b) fan-out: publications of 64 bytes to every subscriber", "Issue 2 (b): subscribers of one channel, API publications of 64 bytes at 10/s (ferrocast only: the baseline's broadcast figures are in the suite below)", TRAFFIC),
}

SECTION_ORDER = {"suite": ["connect", "broadcast", "flood", "notify", "chat", "churn"],
                 "budget": ["idle", "fanout"]}


def pointer(v, p):
    if p == "@dropped":
        d = (v.get("connections") or {}).get("disconnects") or {}
        return float(sum(d.values()))
    cur = v
    for part in p.strip("/").split("/"):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return float(cur) if isinstance(cur, (int, float)) else None


def load_runs(out, section, name, server):
    d = os.path.join(out, section, name)
    runs = []
    if not os.path.isdir(d):
        return runs
    for f in sorted(os.listdir(d)):
        m = re.fullmatch(rf"{server}-(\d+)\.json", f)
        if m:
            with open(os.path.join(d, f)) as fh:
                runs.append(json.load(fh))
    return runs


def fmt(x, dec):
    if x is None:
        return "—"
    if dec == 0:
        return f"{x:,.0f}"
    return f"{x:,.{dec}f}"


def cell(values, dec):
    vals = [x for x in values if x is not None]
    if not vals:
        return None, "—"
    med = statistics.median(vals)
    s = fmt(med, dec)
    if len(vals) > 1 and min(vals) != max(vals):
        s += f" <sub>({fmt(min(vals), dec)}–{fmt(max(vals), dec)})</sub>"
    return med, s


def ratio(a, b):
    if a is None or b is None:
        return "—"
    if b == 0:
        return "=" if a == 0 else "—"
    r = a / b
    return f"{r:.3g}×"


def problems(runs):
    out = []
    for i, v in enumerate(runs, 1):
        if "error" in v:
            out.append(f"run {i}: {v['error']}")
            continue
        for p in (v.get("outcome") or {}).get("problems") or []:
            out.append(f"run {i}: {p}")
    return out


def scenario_block(out, section, name, meta, ports):
    title, what, figs = SCENARIOS[name]
    args_file = os.path.join(out, section, name, "args")
    if not os.path.exists(args_file):
        return None
    args = open(args_file).read().strip()
    servers = [s for s in SERVERS if s[0] in meta["servers"] and load_runs(out, section, name, s[0])]
    runs = {s: load_runs(out, section, name, s) for s, _ in servers}
    lines = [f"### {title}", "", f"{what}.", "", "```sh", f"wsbench {args} $COMMON --server-pid $PID", "```", ""]
    head = "| figure | " + " | ".join(label for _, label in servers)
    if len(servers) == 2:
        head += " | ferrocast / baseline |"
        lines += [head, "| --- | ---: | ---: | ---: |"]
    else:
        head += " |"
        lines += [head, "| --- |" + " ---: |" * len(servers)]
    medians = {}
    for label, ptr, scale, dec, better in figs:
        row = [label + {"low": " ↓", "high": " ↑", "": ""}[better]]
        meds = []
        for s, _ in servers:
            vals = [pointer(v, ptr) for v in runs[s] if "error" not in v]
            vals = [x * scale if x is not None else None for x in vals]
            med, text = cell(vals, dec)
            meds.append(med)
            row.append(text)
            medians[(s, ptr)] = med
        if len(servers) == 2:
            row.append(ratio(meds[0], meds[1]))
        lines.append("| " + " | ".join(row) + " |")
    notes = []
    for s, label in servers:
        probs = problems(runs[s])
        exits = [str((v.get("suite") or {}).get("exit_code", "?")) for v in runs[s]]
        notes.append(f"{label}: {len(runs[s])} run(s), wsbench exit status {', '.join(exits) or '—'}"
                     + (f"; {'; '.join(sorted(set(probs)))}" if probs else ""))
    lines += [""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines), medians, runs


def machine_block(meta, out, ports):
    loads = []
    for root, _, files in os.walk(out):
        for f in files:
            if f.endswith(".json") and f != "meta.json":
                try:
                    v = json.load(open(os.path.join(root, f)))
                    loads.append(v["suite"]["loadavg_1m"])
                except Exception:
                    pass
    fc, naive = ports
    lines = [
        f"- Machine: {meta['nproc']} CPUs ({meta['cpu_model']}), {meta['ram_gib']} GiB RAM, "
        f"Linux {meta['kernel']}, open-file limit {meta['nofile']}",
        f"- Build: {meta['rustc']}, release profile, commit {meta['commit']}; run started {meta['started_utc']}",
        f"- Runs: {meta['runs']} per scenario and server, interleaved (ferrocast 1, baseline 1, "
        "ferrocast 2, …), each against a freshly started server; figures are medians with "
        "min–max in small print; ↓ = lower is better, ↑ = higher is better",
    ]
    if loads:
        lines.append(
            f"- Conditions: server, wsbench and everything else share the {meta['nproc']} CPUs; the "
            f"1-minute load average before each run was {min(loads):.1f}–{max(loads):.1f} "
            f"(median {statistics.median(loads):.1f})" + (f". {meta['note']}" if meta.get("note") else ""))
    lines += [
        "- `$COMMON` = `-u ws://127.0.0.1:PORT/ws --token-secret suite-token-secret --api-key "
        "suite-api-key --channel bench:load --src 127.0.0.2-127.0.0.50 --timeout 240s --json -q`; "
        f"`$PID` = the server's pid (ferrocast on port {fc}, naive-baseline on port {naive} in this run)",
        "- ferrocast config: `target/loadtest/…/ferrocast.toml` as written by the suite: "
        "`shards = 0` (one per CPU), namespace `bench` with `publish = true`, `join_leave = false`, "
        "`presence = false`, `history_size = 1000`, `history_ttl = \"300s\"`; namespace `user` "
        "with `history_size = 32`",
    ]
    if meta.get("quick"):
        lines.append("- **SUITE_QUICK=1 smoke run: small counts, not a benchmark.**")
    return "\n".join(lines)


def budget_summary(blocks):
    lines = []
    idle = blocks.get("idle")
    if idle:
        _, med, runs = idle
        per = med.get(("ferrocast", "/server/rss_per_socket_bytes"))
        vals = [pointer(v, "/server/rss_per_socket_bytes") for v in runs.get("ferrocast", [])]
        vals = [x for x in vals if x is not None]
        if per is not None:
            verdict = "within" if per <= 4096 else "**over**"
            over = sum(1 for x in vals if x > 4096)
            n = int(runs["ferrocast"][0]["config"]["connections"])
            lines.append(
                f"- **(a) memory per idle socket** ({n:,} sockets, each authenticated and subscribed "
                f"to its `user:<id>` channel and one shared channel): median **{per:,.0f} bytes** of "
                f"RSS growth per socket (runs: {', '.join(f'{x:,.0f}' for x in vals)}), {verdict} the "
                f"4 KiB (4,096 B) budget" + (f"; {over} of {len(vals)} runs above it" if over else "") + ".")
    fan = blocks.get("fanout")
    if fan:
        _, med, runs = fan
        fr = runs.get("ferrocast", [])
        ok = [v for v in fr if "error" not in v]
        all_delivered = ok and all(
            v["traffic"]["lost"] == 0 and v["traffic"]["duplicated"] == 0
            and v["traffic"]["deliveries"] == v["traffic"]["expected_deliveries"] for v in ok)
        p50 = med.get(("ferrocast", "/traffic/latency_ms/p50_ms"))
        p99 = med.get(("ferrocast", "/traffic/latency_ms/p99_ms"))
        exp = [int(v["traffic"]["expected_deliveries"]) for v in ok]
        got = [int(v["traffic"]["deliveries"]) for v in ok]
        subs = int(ok[0]["config"]["connections"]) if ok else 0
        pubs = int(ok[0]["traffic"]["publications"]) if ok else 0
        rate = ok[0]["config"]["rate"] if ok else None
        lines.append(
            f"- **(b) fan-out**: {subs:,} subscribers × {pubs:,} API publications of 64 bytes "
            f"at {rate:g}/s: "
            + ("**all delivered** in every run" if all_delivered else "**not all delivered**")
            + f" ({', '.join(f'{g:,}/{e:,}' for g, e in zip(got, exp))}); latency median "
            f"**{fmt(p50, 2)} ms**, p99 **{fmt(p99, 2)} ms** (medians of the runs).")
    return "\n".join(lines)


def replace_section(doc, name, body):
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    block = f"{begin}\n<!-- written by loadtest/suite.sh; edits here are overwritten -->\n\n{body.strip()}\n\n{end}"
    if begin in doc and end in doc:
        pre = doc[: doc.index(begin)]
        post = doc[doc.index(end) + len(end):]
        return pre + block + post
    return doc.rstrip() + "\n\n" + block + "\n"


def one_line(path):
    """A progress line for one run."""
    v = json.load(open(path))
    if "error" in v:
        return v["error"]
    c, t, s = v["connections"], v.get("traffic") or {}, v.get("server") or {}
    parts = [f"connected {c['connected']}/{c['target']}"]
    if t:
        lat = t["latency_ms"]
        parts += [f"lost {t['lost']}", f"dup {t['duplicated']}", f"p50 {lat['p50_ms']} ms",
                  f"p99 {lat['p99_ms']} ms", f"{t['deliveries_per_s']:.0f} deliveries/s"]
    else:
        parts.append(f"{s.get('rss_per_socket_bytes', 0):.0f} B/socket")
    return ", ".join(parts)


def main():
    if sys.argv[1] == "--line":
        print(one_line(sys.argv[2]))
        return
    out, doc_path, fc_port, naive_port = sys.argv[1:5]
    meta = json.load(open(os.path.join(out, "meta.json")))
    ports = (fc_port, naive_port)
    machine = machine_block(meta, out, ports)
    doc = open(doc_path).read() if os.path.exists(doc_path) else "# ferrocast benchmarks\n"
    for section in ("suite", "budget"):
        if section not in meta["sections"]:
            continue
        blocks = {}
        for name in SECTION_ORDER[section]:
            b = scenario_block(out, section, name, meta, ports)
            if b:
                blocks[name] = b
        if not blocks:
            continue
        parts = [machine, ""]
        if section == "budget":
            parts += [budget_summary(blocks), ""]
        parts += [b[0] for b in blocks.values()]
        doc = replace_section(doc, f"wsbench-{section}", "\n".join(parts))
    os.makedirs(os.path.dirname(os.path.abspath(doc_path)), exist_ok=True)
    with open(doc_path, "w") as fh:
        fh.write(doc)


if __name__ == "__main__":
    main()
