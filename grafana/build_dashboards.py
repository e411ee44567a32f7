#!/usr/bin/env python3
"""Generate grafana/dashboards/*.json (the files Grafana provisions).

The JSON files are checked in and are what Grafana, check_queries.py and docs/metrics.md use; this
script only keeps the two dashboards consistent (same variables, datasource, units and layout).
Edit here, then run `python3 grafana/build_dashboards.py` and commit both.

Only metric names from the implementation contract (docs/metrics.md) may appear in a query, plus
Prometheus' own `up`. Label selectors always carry `instance=~"$node"` so the node variable (and
`shard=~"$shard"` where the metric has a shard label) filters every panel.
"""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "dashboards")

DS = {"type": "prometheus", "uid": "${datasource}"}
RI = "$__rate_interval"
N = 'instance=~"$node"'
NS = 'instance=~"$node", shard=~"$shard"'
NODE_LINK = {
    "title": "Node drill-down: ${__field.labels.instance}",
    "url": "/d/ferrocast-node/ferrocast-node?var-node=${__field.labels.instance}&${datasource:queryparam}&${__url_time_range}",
}


def rate(metric, sel=N):
    return f"rate({metric}{{{sel}}}[{RI}])"


def quantile(q, metric, by=""):
    by_clause = f"{by}, le" if by else "le"
    return f"histogram_quantile({q}, sum by ({by_clause}) ({rate(metric + '_bucket')}))"


def target(expr, legend="", ref="A", instant=False, fmt=None):
    t = {"datasource": DS, "refId": ref, "expr": expr, "legendFormat": legend or "__auto"}
    if instant:
        t.update({"instant": True, "range": False, "format": fmt or "table"})
    else:
        t.update({"instant": False, "range": True})
        if fmt:
            t["format"] = fmt
    return t


class Layout:
    """Places panels left to right on Grafana's 24-column grid, wrapping as needed."""

    def __init__(self):
        self.panels, self.x, self.y, self.row_h, self.next_id = [], 0, 0, 0, 1

    def row(self, title):
        self._newline()
        self.panels.append({"type": "row", "title": title, "collapsed": False, "panels": [],
                            "id": self._id(), "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}})
        self.y += 1

    def add(self, panel, w, h):
        if self.x + w > 24:
            self._newline()
        panel["id"] = self._id()
        panel["gridPos"] = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.panels.append(panel)
        self.x += w
        self.row_h = max(self.row_h, h)

    def _newline(self):
        if self.x:
            self.y += self.row_h
        self.x, self.row_h = 0, 0

    def _id(self):
        self.next_id += 1
        return self.next_id - 1


def timeseries(title, desc, targets, unit="short", links=False, stack=False, min0=True, step=False):
    defaults = {
        "unit": unit,
        "custom": {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never",
                   "spanNulls": False, "lineInterpolation": "stepAfter" if step else "linear",
                   "stacking": {"mode": "normal" if stack else "none", "group": "A"}},
    }
    if min0:
        defaults["min"] = 0
    if links:
        defaults["links"] = [NODE_LINK]
    return {"type": "timeseries", "title": title, "description": desc, "datasource": DS,
            "targets": targets, "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": {"legend": {"displayMode": "table", "placement": "bottom",
                                   "calcs": ["lastNotNull", "max"]},
                        "tooltip": {"mode": "multi", "sort": "desc"}}}


def stat(title, desc, expr, unit="short", thresholds=None, mappings=None, legend=""):
    steps = thresholds or [{"color": "green", "value": None}]
    return {"type": "stat", "title": title, "description": desc, "datasource": DS,
            "targets": [target(expr, legend)],
            "fieldConfig": {"defaults": {"unit": unit, "mappings": mappings or [],
                                         "thresholds": {"mode": "absolute", "steps": steps}},
                            "overrides": []},
            "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "colorMode": "value", "graphMode": "area", "textMode": "auto",
                        "justifyMode": "auto", "orientation": "auto"}}


def gauge(title, desc, expr):
    return {"type": "gauge", "title": title, "description": desc, "datasource": DS,
            "targets": [target(expr)],
            "fieldConfig": {"defaults": {"unit": "percentunit", "min": 0, "max": 1,
                                         "thresholds": {"mode": "absolute", "steps": [
                                             {"color": "green", "value": None},
                                             {"color": "orange", "value": 0.75},
                                             {"color": "red", "value": 0.9}]}},
                            "overrides": []},
            "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "showThresholdLabels": False, "showThresholdMarkers": True}}


UP_DOWN = [{"type": "value", "options": {"0": {"text": "DOWN", "color": "red"},
                                         "1": {"text": "UP", "color": "green"}}}]
RED_AT_1 = [{"color": "green", "value": None}, {"color": "red", "value": 1}]
RED_BELOW_1 = [{"color": "red", "value": None}, {"color": "green", "value": 1}]
ORANGE_AT_1 = [{"color": "green", "value": None}, {"color": "orange", "value": 1}]
PANICS_DESC = ("Connection handlers that panicked in the dashboard's time range "
               "(ferrocast_connection_panics_total): each such connection was closed (counted as "
               "disconnect 1011) and its slot freed. Any panic is a bug; alert "
               "FerrocastConnectionPanics.")
PROTO_DESC = ("Connections failed by the frame layer, by kind: protocol (broke RFC 6455, close "
              "1002), utf8 (invalid UTF-8 text, 1007), too_big (a message past "
              "limits.max_message_size, 4009; 1009 on the conformance echo route), frame_rate "
              "(more frames per second than limits.frames_per_second, 4006).")
BACKLOG_DESC = ("ferrocast_inbox_backlog: deliveries handed to the shards' inboxes and not yet "
                "fanned out (one per publication and shard), sampled every second. Past "
                "limits.max_inbox_backlog new publications are refused (API 503, client error "
                "108) until the shards catch up.")
HANDSHAKE_DESC = ("bad_request, timeout, throttled, auth, limit, draining, upgrade, origin "
                  "(Origin not allowed, 403), per_ip (per-IP caps, 429); see docs/metrics.md.")


def variables(node_multi):
    ds = {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
          "current": {}, "hide": 0, "refresh": 1, "regex": "", "options": []}
    node = {"name": "node", "label": "Node", "type": "query", "datasource": DS,
            "query": {"query": "label_values(ferrocast_build_info, instance)", "refId": "node"},
            "definition": "label_values(ferrocast_build_info, instance)",
            "refresh": 2, "sort": 1, "multi": node_multi, "includeAll": node_multi,
            "current": {}, "options": [], "hide": 0, "regex": ""}
    if node_multi:
        node["allValue"] = ".*"
    shard = {"name": "shard", "label": "Shard", "type": "query", "datasource": DS,
             "query": {"query": 'label_values(ferrocast_sockets{instance=~"$node"}, shard)',
                       "refId": "shard"},
             "definition": 'label_values(ferrocast_sockets{instance=~"$node"}, shard)',
             "refresh": 2, "sort": 3, "multi": True, "includeAll": True, "allValue": ".*",
             "current": {}, "options": [], "hide": 0, "regex": ""}
    return {"list": [ds, node, shard]}


def dashboard(uid, title, desc, panels, node_multi, links):
    return {
        "uid": uid, "title": title, "description": desc, "tags": ["ferrocast"],
        "editable": True, "graphTooltip": 1, "refresh": "30s", "schemaVersion": 39, "version": 1,
        "time": {"from": "now-3h", "to": "now"}, "timezone": "", "fiscalYearStartMonth": 0,
        "liveNow": False, "weekStart": "",
        "timepicker": {"refresh_intervals": ["10s", "30s", "1m", "5m", "15m"]},
        "annotations": {"list": [{
            "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
            "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
            "name": "Annotations & Alerts", "type": "dashboard"}]},
        "links": links, "templating": variables(node_multi), "panels": panels,
    }


def fleet():
    L = Layout()
    L.row("Fleet overview")
    L.add(stat("Nodes up", "Scrape targets of job=\"ferrocast\" answering /metrics (Prometheus' `up`).",
               f'sum(up{{job="ferrocast", {N}}})', thresholds=RED_BELOW_1), 3, 4)
    L.add(stat("Sockets", "Open WebSockets across the selected nodes and shards.",
               f"sum(ferrocast_sockets{{{NS}}})"), 3, 4)
    L.add(gauge("Socket capacity used", "Sockets ÷ RLIMIT_NOFILE-derived capacity, whole fleet. "
                "Alert FerrocastSocketsNearCapacity fires per node at 90%.",
                f"sum(ferrocast_sockets{{{N}}}) / sum(ferrocast_socket_capacity{{{N}}})"), 3, 4)
    L.add(stat("Deliveries/s", "Frames queued to sockets per second, fleet total.",
               f"sum({rate('ferrocast_deliveries_total')})", unit="ops"), 3, 4)
    L.add(stat("Delivery p99", "Publish accepted → socket write, 99th percentile over the fleet.",
               quantile(0.99, "ferrocast_delivery_latency_seconds"), unit="s",
               thresholds=[{"color": "green", "value": None}, {"color": "orange", "value": 0.005},
                           {"color": "red", "value": 0.025}]), 3, 4)
    L.add(stat("Broker", "Lowest ferrocast_broker_up over the selected nodes: DOWN when any node "
               "has lost its broker.", f"min(ferrocast_broker_up{{{N}}})",
               mappings=UP_DOWN, thresholds=RED_BELOW_1), 3, 4)
    L.add(stat("Draining", "Nodes draining after SIGTERM (closing sockets with 4010).",
               f"sum(ferrocast_draining{{{N}}})", thresholds=RED_AT_1), 3, 4)
    L.add(stat("Connection panics", PANICS_DESC + " All selected nodes.",
               f"sum(increase(ferrocast_connection_panics_total{{{N}}}[$__range]))",
               thresholds=ORANGE_AT_1), 3, 4)

    L.row("Connections")
    L.add(timeseries("Sockets per node", "ferrocast_sockets summed over the selected shards.",
                     [target(f"sum by (instance) (ferrocast_sockets{{{NS}}})", "{{instance}}")],
                     links=True), 8, 8)
    L.add(timeseries("Socket capacity used per node", "Sockets ÷ socket capacity (fd limit). "
                     "Alert at 0.9.",
                     [target(f"sum by (instance) (ferrocast_sockets{{{N}}}) / "
                             f"max by (instance) (ferrocast_socket_capacity{{{N}}})", "{{instance}}")],
                     unit="percentunit", links=True), 8, 8)
    L.add(timeseries("Connects/s per node", "Accepted and authenticated connections per second.",
                     [target(f"sum by (instance) ({rate('ferrocast_connects_total')})", "{{instance}}")],
                     unit="ops", links=True), 8, 8)
    L.add(timeseries("Disconnects/s by close code", "4005 slow consumer, 4010 drain, 1006 abrupt, "
                     "1000 client closes, 1002/1007/4009 protocol errors, 1011 a panicked "
                     "connection; see docs/metrics.md.",
                     [target(f"sum by (code) ({rate('ferrocast_disconnects_total')})", "{{code}}")],
                     unit="ops", stack=True), 12, 8)
    L.add(timeseries("Handshake failures/s by reason", HANDSHAKE_DESC + " Alert "
                     "FerrocastHandshakeFailureSpike.",
                     [target(f"sum by (reason) ({rate('ferrocast_handshake_failures_total')})",
                             "{{reason}}")], unit="ops", stack=True), 12, 8)
    L.add(timeseries("Protocol errors/s by kind", PROTO_DESC + " A rise in one kind after a "
                     "client release points at that client; a steady trickle is scanners.",
                     [target(f"sum by (kind) ({rate('ferrocast_protocol_errors_total')})", "{{kind}}")],
                     unit="ops", stack=True), 12, 8)
    L.add(timeseries("Connection panics/s per node", "Connection handlers that panicked "
                     "(ferrocast_connection_panics_total); each one closed its connection (1011) "
                     "and freed its slot. Any panic is a bug: alert FerrocastConnectionPanics.",
                     [target(f"sum by (instance) ({rate('ferrocast_connection_panics_total')})",
                             "{{instance}}")], unit="ops", links=True), 12, 8)

    L.row("Delivery")
    L.add(timeseries("Deliveries/s per node", "Frames queued to sockets per second.",
                     [target(f"sum by (instance) ({rate('ferrocast_deliveries_total')})", "{{instance}}")],
                     unit="ops", links=True), 8, 8)
    L.add(timeseries("Publications/s by source", "api, client, scheduled: publications accepted "
                     "by the nodes. broker (Redis brokers): publications each node received back "
                     "from Redis on the channels it serves, its own included, so do not add it to "
                     "the others.",
                     [target(f"sum by (source) ({rate('ferrocast_publications_total')})", "{{source}}")],
                     unit="ops"), 8, 8)
    L.add(timeseries("Bytes out/s per node", "WebSocket bytes written to sockets.",
                     [target(f"sum by (instance) ({rate('ferrocast_bytes_out_total')})", "{{instance}}")],
                     unit="Bps", links=True), 8, 8)
    L.add(timeseries("Delivery latency p50 / p99", "Publish accepted → socket write "
                     "(ferrocast_delivery_latency_seconds), whole fleet.",
                     [target(quantile(0.5, "ferrocast_delivery_latency_seconds"), "p50", "A"),
                      target(quantile(0.99, "ferrocast_delivery_latency_seconds"), "p99", "B")],
                     unit="s"), 8, 8)
    L.add(timeseries("Delivery latency p99 per node", "Alert FerrocastDeliveryLatencyHigh at 25 ms.",
                     [target(quantile(0.99, "ferrocast_delivery_latency_seconds", "instance"),
                             "{{instance}}")], unit="s", links=True), 8, 8)
    L.add(timeseries("Slow-consumer closes/s per node", "Sockets closed with 4005 because their "
                     "outbound queue passed limits.outbound_queue_bytes.",
                     [target(f"sum by (instance) ({rate('ferrocast_slow_consumer_closes_total')})",
                             "{{instance}}")], unit="ops", links=True), 8, 8)
    L.add(timeseries("Outbound queue bytes per node", "Bytes queued for sockets, not yet written.",
                     [target(f"sum by (instance) (ferrocast_outbound_queue_bytes{{{NS}}})",
                             "{{instance}}")], unit="bytes", links=True), 8, 8)
    L.add(timeseries("Inbox backlog per node", BACKLOG_DESC,
                     [target(f"max by (instance) (ferrocast_inbox_backlog{{{N}}})", "{{instance}}")],
                     links=True), 8, 8)
    L.add(timeseries("Client errors/s by code", "Error replies to client commands (100..112, "
                     "see docs/protocol.md).",
                     [target(f"sum by (code) ({rate('ferrocast_client_errors_total')})", "{{code}}")],
                     unit="ops", stack=True), 8, 8)

    L.row("Broker and API")
    L.add(timeseries("Broker up per node", "1 = connected to its broker (memory broker: always 1).",
                     [target(f"max by (instance) (ferrocast_broker_up{{{N}}})", "{{instance}}")],
                     step=True, links=True), 8, 8)
    L.add(timeseries("Broker latency p99 by op", "Round trip of broker operations.",
                     [target(quantile(0.99, "ferrocast_broker_latency_seconds", "op"), "{{op}}")],
                     unit="s"), 8, 8)
    L.add(timeseries("Broker errors, reconnects, resubscribes /s", "Failed broker operations by op, "
                     "connection re-establishments and channel resubscriptions after failover.",
                     [target(f"sum by (op) ({rate('ferrocast_broker_errors_total')})", "errors {{op}}", "A"),
                      target(f"sum({rate('ferrocast_broker_reconnects_total')})", "reconnects", "B"),
                      target(f"sum({rate('ferrocast_broker_resubscribes_total')})", "resubscribes", "C")],
                     unit="ops"), 8, 8)
    L.add(timeseries("API requests/s by status", "Server HTTP API (/api/*) requests by status.",
                     [target(f"sum by (status) ({rate('ferrocast_api_requests_total')})", "{{status}}")],
                     unit="reqps", stack=True), 12, 8)
    L.add(timeseries("Scheduled publications pending", "Publications with a future deliver_at, "
                     "as each node sees them in the broker.",
                     [target(f"max by (instance) (ferrocast_scheduled_pending{{{N}}})", "{{instance}}")],
                     links=True), 12, 8)
    L.add(timeseries("Webhook events/s", "Webhook events by name and outcome (sent, failed after "
                     "retries, dropped on a full queue) and the events waiting in the nodes' queues.",
                     [target(f"sum by (event, result) ({rate('ferrocast_webhook_events_total')})",
                             "{{event}} {{result}}", "A"),
                      target(f"sum(ferrocast_webhook_queue{{{N}}})", "queued", "B")],
                     unit="ops"), 24, 8)

    L.row("Nodes")
    table = {
        "type": "table", "title": "Nodes", "description": "One row per node; click a node to drill down.",
        "datasource": DS,
        "targets": [
            target(f"max by (instance, version) (ferrocast_build_info{{{N}}})", ref="A", instant=True),
            target(f"sum by (instance) (ferrocast_sockets{{{N}}})", ref="B", instant=True),
            target(f"max by (instance) (ferrocast_socket_capacity{{{N}}})", ref="C", instant=True),
            target(f"sum by (instance) ({rate('ferrocast_deliveries_total')})", ref="D", instant=True),
            target(f"max by (instance) (ferrocast_broker_up{{{N}}})", ref="E", instant=True),
            target(f"max by (instance) (ferrocast_draining{{{N}}})", ref="F", instant=True),
        ],
        "transformations": [
            {"id": "merge", "options": {}},
            {"id": "organize", "options": {
                "excludeByName": {"Time": True, "Value #A": True},
                "renameByName": {"instance": "Node", "version": "Version", "Value #B": "Sockets",
                                 "Value #C": "Capacity", "Value #D": "Deliveries/s",
                                 "Value #E": "Broker up", "Value #F": "Draining"}}},
        ],
        "fieldConfig": {"defaults": {"links": [], "custom": {"align": "auto"}}, "overrides": [
            {"matcher": {"id": "byName", "options": "Node"}, "properties": [{"id": "links", "value": [{
                "title": "Node drill-down",
                "url": "/d/ferrocast-node/ferrocast-node?var-node=${__value.raw}&${datasource:queryparam}&${__url_time_range}"}]}]},
            {"matcher": {"id": "byName", "options": "Broker up"},
             "properties": [{"id": "mappings", "value": UP_DOWN}]},
        ]},
        "options": {"showHeader": True, "cellHeight": "sm"},
    }
    L.add(table, 24, 8)
    return dashboard("ferrocast-fleet", "ferrocast fleet",
                     "Every ferrocast node behind the load balancer: sockets, traffic, delivery latency, "
                     "errors and broker health. Pick one node to drill down.", L.panels, True,
                     [{"title": "Node drill-down", "type": "link", "icon": "dashboard",
                       "url": "/d/ferrocast-node/ferrocast-node", "includeVars": True,
                       "keepTime": True, "targetBlank": False, "tags": [], "asDropdown": False,
                       "tooltip": ""}])


def node():
    L = Layout()
    L.row("Node")
    L.add(stat("Version", "ferrocast_build_info{version}.",
               f"max by (version) (ferrocast_build_info{{{N}}})", legend="{{version}}")
          | {"options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                         "textMode": "name", "colorMode": "none", "graphMode": "none",
                         "justifyMode": "auto", "orientation": "auto"}}, 3, 4)
    L.add(stat("Sockets", "Open WebSockets on the selected shards.",
               f"sum(ferrocast_sockets{{{NS}}})"), 3, 4)
    L.add(stat("Socket capacity", "Sockets the fd limit (RLIMIT_NOFILE) allows.",
               f"max(ferrocast_socket_capacity{{{N}}})"), 3, 4)
    L.add(gauge("Capacity used", "All shards' sockets ÷ capacity. Alert at 0.9.",
                f"sum(ferrocast_sockets{{{N}}}) / max(ferrocast_socket_capacity{{{N}}})"), 3, 4)
    L.add(stat("Broker", "ferrocast_broker_up.", f"max(ferrocast_broker_up{{{N}}})",
               mappings=UP_DOWN, thresholds=RED_BELOW_1), 3, 4)
    L.add(stat("Draining", "1 while the node drains after SIGTERM.",
               f"max(ferrocast_draining{{{N}}})", thresholds=RED_AT_1), 3, 4)
    L.add(stat("Scheduled pending", "Scheduled publications waiting for their delivery time.",
               f"max(ferrocast_scheduled_pending{{{N}}})"), 3, 4)
    L.add(stat("Connection panics", PANICS_DESC,
               f"sum(increase(ferrocast_connection_panics_total{{{N}}}[$__range]))",
               thresholds=ORANGE_AT_1), 3, 4)

    L.row("Shards")
    by_shard = [("Sockets by shard", "ferrocast_sockets", "short",
                 "SO_REUSEPORT spreads accepts over shards; a lopsided shard shows here."),
                ("Subscriptions by shard", "ferrocast_subscriptions", "short",
                 "Channel subscriptions held by sockets on each shard."),
                ("Channels by shard", "ferrocast_channels", "short",
                 "Channels with at least one local subscriber on each shard."),
                ("Outbound queue bytes by shard", "ferrocast_outbound_queue_bytes", "bytes",
                 "Bytes queued for sockets and not yet written, per shard.")]
    for title, metric, unit, desc in by_shard:
        L.add(timeseries(title, desc, [target(f"sum by (shard) ({metric}{{{NS}}})", "shard {{shard}}")],
                         unit=unit), 12, 8)

    L.row("Connections")
    L.add(timeseries("Connects and disconnects/s", "Connects, and disconnects by close code.",
                     [target(f"sum({rate('ferrocast_connects_total')})", "connects", "A"),
                      target(f"sum by (code) ({rate('ferrocast_disconnects_total')})",
                             "disconnect {{code}}", "B")], unit="ops"), 8, 8)
    L.add(timeseries("Handshake failures/s by reason", HANDSHAKE_DESC,
                     [target(f"sum by (reason) ({rate('ferrocast_handshake_failures_total')})",
                             "{{reason}}")], unit="ops", stack=True), 8, 8)
    L.add(timeseries("Client commands/s by command", "connect, subscribe, publish, ... per second.",
                     [target(f"sum by (command) ({rate('ferrocast_client_commands_total')})",
                             "{{command}}")], unit="ops", stack=True), 8, 8)
    L.add(timeseries("Protocol errors/s by kind", PROTO_DESC,
                     [target(f"sum by (kind) ({rate('ferrocast_protocol_errors_total')})", "{{kind}}")],
                     unit="ops", stack=True), 12, 8)
    L.add(timeseries("Connection panics/s", "Connection handlers that panicked "
                     "(ferrocast_connection_panics_total); each one closed its connection (1011) "
                     "and freed its slot. Any panic is a bug: alert FerrocastConnectionPanics; the "
                     "node's log has the panic message.",
                     [target(f"sum({rate('ferrocast_connection_panics_total')})", "panics/s")],
                     unit="ops"), 12, 8)

    L.row("Delivery")
    L.add(timeseries("Publications/s by source", "api, client, scheduled: accepted by this node; "
                     "broker: received from Redis on the channels this node serves (its own "
                     "included).",
                     [target(f"sum by (source) ({rate('ferrocast_publications_total')})", "{{source}}")],
                     unit="ops"), 6, 8)
    L.add(timeseries("Deliveries/s and bytes out/s", "Frames queued to sockets; bytes written.",
                     [target(f"sum({rate('ferrocast_deliveries_total')})", "deliveries/s", "A"),
                      target(f"sum({rate('ferrocast_bytes_out_total')})", "bytes/s", "B")],
                     unit="short")
          | {"fieldConfig": {"defaults": {"unit": "ops", "min": 0}, "overrides": [
              {"matcher": {"id": "byName", "options": "bytes/s"},
               "properties": [{"id": "unit", "value": "Bps"},
                              {"id": "custom.axisPlacement", "value": "right"}]}]}}, 6, 8)
    L.add(timeseries("Slow-consumer closes/s", "Sockets closed with 4005 (outbound queue over limit).",
                     [target(f"sum({rate('ferrocast_slow_consumer_closes_total')})", "closes/s")],
                     unit="ops"), 6, 8)
    L.add(timeseries("Inbox backlog", BACKLOG_DESC,
                     [target(f"max(ferrocast_inbox_backlog{{{N}}})", "backlog")]), 6, 8)
    L.add(timeseries("Delivery latency quantiles", "Publish accepted → socket write.",
                     [target(quantile(0.5, "ferrocast_delivery_latency_seconds"), "p50", "A"),
                      target(quantile(0.9, "ferrocast_delivery_latency_seconds"), "p90", "B"),
                      target(quantile(0.99, "ferrocast_delivery_latency_seconds"), "p99", "C"),
                      target(quantile(0.999, "ferrocast_delivery_latency_seconds"), "p99.9", "D")],
                     unit="s"), 12, 8)
    L.add({"type": "heatmap", "title": "Delivery latency distribution",
           "description": "ferrocast_delivery_latency_seconds buckets (deliveries per bucket).",
           "datasource": DS,
           "targets": [target(f"sum by (le) (increase(ferrocast_delivery_latency_seconds_bucket{{{N}}}[{RI}]))",
                              "{{le}}", fmt="heatmap")],
           "fieldConfig": {"defaults": {}, "overrides": []},
           "options": {"calculate": False, "yAxis": {"unit": "s"}, "cellGap": 1,
                       "color": {"mode": "scheme", "scheme": "Oranges", "steps": 64},
                       "rowsFrame": {"layout": "auto"}, "tooltip": {"show": True, "yHistogram": True},
                       "legend": {"show": True}}}, 12, 8)

    L.row("Errors and API")
    L.add(timeseries("Client errors/s by code", "Error replies to client commands.",
                     [target(f"sum by (code) ({rate('ferrocast_client_errors_total')})", "{{code}}")],
                     unit="ops", stack=True), 12, 8)
    L.add(timeseries("API requests/s by route and status", "Server HTTP API.",
                     [target(f"sum by (route, status) ({rate('ferrocast_api_requests_total')})",
                             "{{route}} {{status}}")], unit="reqps", stack=True), 12, 8)

    L.row("Broker")
    L.add(timeseries("Broker up", "1 = connected.", [target(f"max(ferrocast_broker_up{{{N}}})", "up")],
                     step=True), 6, 8)
    L.add(timeseries("Broker latency by op", "p50 and p99 per broker operation.",
                     [target(quantile(0.5, "ferrocast_broker_latency_seconds", "op"), "p50 {{op}}", "A"),
                      target(quantile(0.99, "ferrocast_broker_latency_seconds", "op"), "p99 {{op}}", "B")],
                     unit="s"), 6, 8)
    L.add(timeseries("Broker errors/s by op", "Failed broker operations.",
                     [target(f"sum by (op) ({rate('ferrocast_broker_errors_total')})", "{{op}}")],
                     unit="ops"), 6, 8)
    L.add(timeseries("Broker reconnects and resubscribes/s", "After a Redis failover expect one "
                     "burst of each, then quiet.",
                     [target(f"sum({rate('ferrocast_broker_reconnects_total')})", "reconnects", "A"),
                      target(f"sum({rate('ferrocast_broker_resubscribes_total')})", "resubscribes", "B")],
                     unit="ops"), 6, 8)
    L.row("Fallback transport and backend proxies")
    L.add(timeseries("SSE streams", "Open SSE streams (GET /sse, the WebSocket fallback); they are "
                     "also counted in the sockets panels.",
                     [target(f"sum(ferrocast_sse_streams{{{N}}})", "sse streams")]), 8, 8)
    L.add(timeseries("Subscribe/publish proxy calls/s by outcome", "auth.subscribe_proxy_url and "
                     "auth.publish_proxy_url: allowed (2xx), refused (4xx), unavailable (5xx, "
                     "timeout: the client got 108).",
                     [target(f"sum by (proxy, result) ({rate('ferrocast_proxy_requests_total')})",
                             "{{proxy}} {{result}}")], unit="ops", stack=True), 8, 8)
    L.row("Webhooks")
    L.add(timeseries("Webhooks", "Events by outcome, requests by outcome, retries and the queue "
                     "(bounded by webhooks.queue_size; past it events are dropped).",
                     [target(f"sum by (result) ({rate('ferrocast_webhook_events_total')})", "events {{result}}", "A"),
                      target(f"sum by (result) ({rate('ferrocast_webhook_requests_total')})", "requests {{result}}", "B"),
                      target(f"sum({rate('ferrocast_webhook_retries_total')})", "retries", "C"),
                      target(f"sum(ferrocast_webhook_queue{{{N}}})", "queued", "D")],
                     unit="ops"), 12, 8)
    L.add(timeseries("Webhook request duration", "p50 and p99 of webhook requests.",
                     [target(quantile(0.5, "ferrocast_webhook_request_duration_seconds"), "p50", "A"),
                      target(quantile(0.99, "ferrocast_webhook_request_duration_seconds"), "p99", "B")],
                     unit="s"), 12, 8)
    L.row("Pusher protocol")
    L.add(timeseries("Pusher connections by app", "Open /app/{key} connections (docs/pusher.md); "
                     "they are also counted in the sockets panels.",
                     [target(f"sum by (app) (ferrocast_pusher_connections{{{N}}})", "{{app}}")]), 12, 8)
    L.add(timeseries("Pusher events/s by app and source", "api = HTTP API events (once per "
                     "channel), client = client-* events.",
                     [target(f"sum by (app, source) ({rate('ferrocast_pusher_events_total')})",
                             "{{app}} {{source}}")], unit="ops", stack=True), 12, 8)
    return dashboard("ferrocast-node", "ferrocast node",
                     "One ferrocast node, per shard: sockets, subscriptions, queues, traffic, latency, "
                     "errors and broker.", L.panels, False,
                     [{"title": "Fleet", "type": "link", "icon": "dashboard",
                       "url": "/d/ferrocast-fleet/ferrocast-fleet", "includeVars": False,
                       "keepTime": True, "targetBlank": False, "tags": [], "asDropdown": False,
                       "tooltip": ""}])


def main():
    os.makedirs(OUT, exist_ok=True)
    for name, dash in (("ferrocast-fleet.json", fleet()), ("ferrocast-node.json", node())):
        path = os.path.join(OUT, name)
        with open(path, "w") as f:
            json.dump(dash, f, indent=2, ensure_ascii=False)
            f.write("\n")
        print(f"wrote {os.path.relpath(path)} ({len(dash['panels'])} panels)", file=sys.stderr)


if __name__ == "__main__":
    main()
