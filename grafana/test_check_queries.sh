#!/usr/bin/env bash
# test_check_queries.sh -- the Grafana/Prometheus kit against the real programs, no ferrocast needed:
#   * promtool check rules / test rules / check config;
#   * a real Prometheus (Debian package `prometheus`) scraping two fake nodes (python3 -m
#     http.server serving grafana/testdata/fake_metrics.prom, every metric of the contract) with
#     grafana/alerts.yml loaded, then check_queries.py --require-data must pass;
#   * check_queries.py must FAIL on a broken query, a missing metric, an empty panel, a legend
#     label the metric lacks, a broken alert and an unknown template variable.
# Prints "N passed, N failed"; exit 1 on any failure, 77 when prometheus/promtool are missing.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CHECK="$HERE/check_queries.py"
for bin in prometheus promtool python3; do
    command -v "$bin" >/dev/null || { echo "SKIP: $bin not installed (apt-get install -y prometheus)"; exit 77; }
done

. "$HERE/.."/tests/lib.sh grafana



# --- promtool -------------------------------------------------------------------------
out="$(promtool check rules "$HERE/alerts.yml" 2>&1)" && pass "promtool check rules alerts.yml" || fail "promtool check rules alerts.yml" "$out"
out="$(cd "$HERE" && promtool test rules alerts_test.yml 2>&1)" && pass "promtool test rules alerts_test.yml" || fail "promtool test rules alerts_test.yml" "$out"
out="$(promtool check config "$HERE/prometheus.yml" 2>&1)" && pass "promtool check config prometheus.yml" || fail "promtool check config prometheus.yml" "$out"
out="$(promtool check metrics <"$HERE/testdata/fake_metrics.prom" 2>&1)" && pass "fake metrics are valid exposition text" || fail "fake metrics are valid exposition text" "$out"

# --- dashboards are well-formed -------------------------------------------------------------
out="$(python3 - "$HERE"/dashboards/*.json <<'EOF' 2>&1
import json, sys
bad = []
for path in sys.argv[1:]:
    d = json.load(open(path))
    names = [v["name"] for v in d["templating"]["list"]]
    if names[:3] != ["datasource", "node", "shard"]:
        bad.append(f"{path}: variables {names}")
    ids, cells = set(), {}
    def walk(ps):
        for p in ps:
            yield p
            yield from walk(p.get("panels", []))
    for p in walk(d["panels"]):
        if p["id"] in ids:
            bad.append(f"{path}: duplicate panel id {p['id']}")
        ids.add(p["id"])
        g = p["gridPos"]
        if g["x"] + g["w"] > 24:
            bad.append(f"{path}: {p['title']} wider than the grid")
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                if (x, y) in cells:
                    bad.append(f"{path}: {p['title']} overlaps {cells[(x, y)]}")
                cells[(x, y)] = p["title"]
        if p["type"] != "row":
            if p.get("datasource", {}).get("uid") != "${datasource}":
                bad.append(f"{path}: {p['title']} does not use $datasource")
            if not p.get("targets"):
                bad.append(f"{path}: {p['title']} has no query")
            for t in p.get("targets", []):
                if 'instance=~"$node"' not in t["expr"]:
                    bad.append(f"{path}: {p['title']} ignores $node: {t['expr']}")
print("\n".join(sorted(set(bad))))
sys.exit(1 if bad else 0)
EOF
)" && pass "dashboards: unique ids, no overlap, \$datasource and \$node everywhere" || fail "dashboards well-formed" "$out"

# the checked-in JSON is what build_dashboards.py produces
GEN="$TMP/gen"; mkdir -p "$GEN"; cp "$HERE/build_dashboards.py" "$GEN/"
out="$(python3 "$GEN/build_dashboards.py" 2>&1 && diff -r "$HERE/dashboards" "$GEN/dashboards" 2>&1)" \
    && pass "dashboards/*.json are up to date with build_dashboards.py" || fail "dashboards/*.json are up to date with build_dashboards.py (run python3 grafana/build_dashboards.py)" "$out"

# --- docs stay in step: every metric documented, every alert's runbook heading exists -----------
DOCS="$HERE/../docs"
out="$(python3 - "$HERE/testdata/fake_metrics.prom" "$DOCS/metrics.md" "$HERE/alerts.yml" "$DOCS/operations.md" <<'EOF'
import re, sys
fams = re.findall(r"^# TYPE (\S+)", open(sys.argv[1]).read(), re.M)
doc = open(sys.argv[2]).read()
bad = [f"docs/metrics.md lacks {f}" for f in fams if f"| `{f}` |" not in doc]
anchors = re.findall(r"docs/operations\.md#([a-z0-9-]+)", open(sys.argv[3]).read())
heads = {re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
         for h in re.findall(r"^#+ (.+)$", open(sys.argv[4]).read(), re.M)}
bad += [f"docs/operations.md has no heading for #{a}" for a in anchors if a not in heads]
print("\n".join(bad) or f"{len(fams)} metrics documented, {len(anchors)} runbook anchors found")
sys.exit(1 if bad else 0)
EOF
)" && pass "docs: $out" || fail "docs/metrics.md and docs/operations.md match the metrics and alerts" "$out"

# --- two fake nodes and a real Prometheus -----------------------------------------------------
N1="$(free_port)"; N2="$(free_port)"; PP="$(free_port)"
mkdir -p "$TMP/n1/reduced" "$TMP/n2" "$TMP/prom"
cp "$HERE/testdata/fake_metrics.prom" "$TMP/n1/metrics"
cp "$HERE/testdata/fake_metrics.prom" "$TMP/n2/metrics"
# the same exposition without ferrocast_broker_up (for the missing-metric case)
grep -v 'ferrocast_broker_up' "$HERE/testdata/fake_metrics.prom" >"$TMP/n1/reduced/metrics"
python3 -m http.server "$N1" --bind 127.0.0.1 --directory "$TMP/n1" >"$TMP/n1.log" 2>&1 & PIDS+=($!)
python3 -m http.server "$N2" --bind 127.0.0.1 --directory "$TMP/n2" >"$TMP/n2.log" 2>&1 & PIDS+=($!)
cp "$HERE/alerts.yml" "$TMP/alerts.yml"
cat >"$TMP/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [alerts.yml]
scrape_configs:
  - job_name: ferrocast
    static_configs:
      - targets: ["127.0.0.1:$N1", "127.0.0.1:$N2"]
EOF
prometheus --config.file="$TMP/prometheus.yml" --storage.tsdb.path="$TMP/prom" \
    --web.listen-address="127.0.0.1:$PP" --log.level=warn >"$TMP/prometheus.log" 2>&1 & PIDS+=($!)
PROM="http://127.0.0.1:$PP"

# ready, both targets up, and enough samples for rate() over 1m (two scrapes at least)
ready=0
for _ in $(seq 1 60); do
    n="$(python3 - "$PROM" <<'EOF' 2>/dev/null
import json, sys, urllib.request, urllib.parse
q = urllib.parse.quote('count_over_time(up{job="ferrocast"}[1m]) >= 3 and up == 1')
r = json.load(urllib.request.urlopen(sys.argv[1] + "/api/v1/query?query=" + q, timeout=2))
print(len(r["data"]["result"]))
EOF
)"
    [[ "$n" == 2 ]] && { ready=1; break; }
    sleep 1
done
if (( ready )); then pass "prometheus scrapes both fake nodes"; else fail "prometheus scrapes both fake nodes" "$(tail -20 "$TMP/prometheus.log")"; fi

# Prometheus itself loaded the rule file
out="$(python3 - "$PROM" <<'EOF' 2>&1
import json, sys, urllib.request
r = json.load(urllib.request.urlopen(sys.argv[1] + "/api/v1/rules", timeout=5))
rules = [x for g in r["data"]["groups"] for x in g["rules"]]
bad = [x["name"] for x in rules if x.get("health") not in ("ok", "unknown")]
print(len(rules), "rules", "unhealthy:", bad)
sys.exit(0 if len(rules) >= 6 and not bad else 1)
EOF
)" && pass "prometheus loads alerts.yml ($out)" || fail "prometheus loads alerts.yml" "$out"

M1="http://127.0.0.1:$N1/metrics"; M2="http://127.0.0.1:$N2/metrics"

# --- the real check: every panel and alert parses, returns data, every metric exists ---------
out="$(python3 "$CHECK" "$PROM" "$M1" "$M2" --require-data --wait 20 2>&1)"; rc=$?
if [[ $rc -eq 0 ]] && grep -q '^PASSED' <<<"$out"; then pass "check_queries --require-data passes on the contract's metrics"
else fail "check_queries --require-data passes on the contract's metrics (rc=$rc)" "$out"; fi
if grep -q 'exposed but not used' <<<"$out"; then fail "every contract metric is used by a panel or alert" "$(grep -A1 'exposed but not used' <<<"$out")"
else pass "every contract metric is used by a panel or alert"; fi

# a single node selected through --var
out="$(python3 "$CHECK" "$PROM" "$M1" --require-data --var "node=127.0.0.1:$N1" --var shard=0 2>&1)"; rc=$?
[[ $rc -eq 0 ]] && pass "check_queries with --var node=... shard=0" || fail "check_queries with --var node=... shard=0 (rc=$rc)" "$out"

# --- negative cases ------------------------------------------------------------------------
mutate() { # mutate OUT.json PYTHON-EXPR-ON-d
    python3 - "$HERE/dashboards/ferrocast-fleet.json" "$1" "$2" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
exec(sys.argv[3])
json.dump(d, open(sys.argv[2], "w"))
EOF
}
SOCKETS_PANEL='p = next(p for p in d["panels"] if p["title"] == "Sockets per node")'

mutate "$TMP/broken.json" "$SOCKETS_PANEL; p['targets'][0]['expr'] = 'sum by (instance) (ferrocast_sockets{instance=~\"\$node\"}'"
out="$(python3 "$CHECK" "$PROM" "$M1" --dashboard "$TMP/broken.json" 2>&1)"; rc=$?
if [[ $rc -eq 1 ]] && grep -q 'Sockets per node' <<<"$out" && grep -q 'bad_data' <<<"$out"; then pass "a query that does not parse fails"
else fail "a query that does not parse fails (rc=$rc)" "$out"; fi

out="$(python3 "$CHECK" "$PROM" "http://127.0.0.1:$N1/reduced/metrics" 2>&1)"; rc=$?
if [[ $rc -eq 1 ]] && grep -q '^  ferrocast_broker_up ' <<<"$out"; then pass "a metric missing from /metrics fails"
else fail "a metric missing from /metrics fails (rc=$rc)" "$out"; fi

mutate "$TMP/empty.json" "$SOCKETS_PANEL; p['targets'][0]['expr'] = 'sum by (instance) (ferrocast_sockets{instance=~\"\$node\", shard=\"999\"})'"
out="$(python3 "$CHECK" "$PROM" "$M1" --dashboard "$TMP/empty.json" 2>&1)"; rc=$?
if [[ $rc -eq 0 ]] && grep -q 'returned no data' <<<"$out"; then pass "an empty panel is reported (without --require-data: exit 0)"
else fail "an empty panel is reported (without --require-data: exit 0) (rc=$rc)" "$out"; fi
out="$(python3 "$CHECK" "$PROM" "$M1" --dashboard "$TMP/empty.json" --require-data --wait 2 2>&1)"; rc=$?
if [[ $rc -eq 1 ]] && grep -q 'Sockets per node' <<<"$out"; then pass "an empty panel fails with --require-data"
else fail "an empty panel fails with --require-data (rc=$rc)" "$out"; fi
out="$(python3 "$CHECK" "$PROM" "$M1" --dashboard "$TMP/empty.json" --require-data --allow-empty '^Sockets per node$' 2>&1)"; rc=$?
[[ $rc -eq 0 ]] && pass "--allow-empty exempts a panel" || fail "--allow-empty exempts a panel (rc=$rc)" "$out"

mutate "$TMP/legend.json" "$SOCKETS_PANEL; p['targets'][0]['legendFormat'] = '{{instance}} shard {{shard}}'"
out="$(python3 "$CHECK" "$PROM" "$M1" --dashboard "$TMP/legend.json" 2>&1)"; rc=$?
if [[ $rc -eq 1 ]] && grep -q 'legend names a label missing' <<<"$out"; then pass "a legend label absent from the result fails"
else fail "a legend label absent from the result fails (rc=$rc)" "$out"; fi

mutate "$TMP/unknownvar.json" "$SOCKETS_PANEL; p['targets'][0]['expr'] = 'sum(ferrocast_sockets{instance=~\"\$nodes\"})'"
out="$(python3 "$CHECK" "$PROM" "$M1" --dashboard "$TMP/unknownvar.json" 2>&1)"; rc=$?
if [[ $rc -eq 1 ]] && grep -q 'unknown template variable' <<<"$out"; then pass "an unknown template variable fails"
else fail "an unknown template variable fails (rc=$rc)" "$out"; fi

sed 's/expr: ferrocast_broker_up == 0/expr: ferrocast_broker_up ==/' "$HERE/alerts.yml" >"$TMP/bad_alerts.yml"
out="$(python3 "$CHECK" "$PROM" "$M1" --alerts "$TMP/bad_alerts.yml" 2>&1)"; rc=$?
if [[ $rc -eq 1 ]] && grep -q 'FerrocastBrokerDown' <<<"$out"; then pass "an alert expression that does not parse fails"
else fail "an alert expression that does not parse fails (rc=$rc)" "$out"; fi

sed 's/ferrocast_slow_consumer_closes_total/ferrocast_slow_consumers_closed_total/' "$HERE/alerts.yml" >"$TMP/renamed_alerts.yml"
out="$(python3 "$CHECK" "$PROM" "$M1" --alerts "$TMP/renamed_alerts.yml" 2>&1)"; rc=$?
if [[ $rc -eq 1 ]] && grep -q 'ferrocast_slow_consumers_closed_total' <<<"$out"; then pass "an alert on a metric the node does not export fails"
else fail "an alert on a metric the node does not export fails (rc=$rc)" "$out"; fi

out="$(python3 "$CHECK" "http://127.0.0.1:1" "$M1" 2>&1)"; rc=$?
[[ $rc -eq 2 ]] && pass "unreachable Prometheus exits 2" || fail "unreachable Prometheus exits 2 (rc=$rc)" "$out"

summary
