#!/usr/bin/env python3
"""A stand-in for a Consul agent's HTTP API, for Signpost's tests (Consul itself is not installable here).

It follows Consul's documented behaviour for what Signpost uses:
  PUT  /v1/catalog/register      body as in Consul's docs (Node, Address, Datacenter, NodeMeta, Service, Check(s))
  PUT  /v1/catalog/deregister    {"Node": ..., "ServiceID": ...} or {"Node": ...}
  GET  /v1/catalog/services      {"name": ["tag", ...]}
  GET  /v1/catalog/nodes         every node (the nodes table's index)
  GET  /v1/health/service/<name> [{"Node": {...}, "Service": {...}, "Checks": [...]}] (the service's own index)
  GET  /v1/health/state/<status> any, passing, warning or critical: the checks in that status, with the checks
                                 table's index; a blocking one wakes only when that status's set changes
                                 (checksInStateTxn watches the status index), except `any`, which any check write wakes
  ?filter=                       `Selector == "value"` or `!=`, applied after the index is taken, as Consul's
                                 filter never narrows a wake; anything else is a 400
Reads cost their result: secondary indexes (by name, node and status; per-service, per-table and extinction
indexes) are kept by every write, and a write that changes nothing writes nothing (ensureNodeTxn, ensureCheckTxn).
The agent endpoints that registrars (grpc-go tutorials, go-micro, python-consul) use, on the agent's own node:
  PUT  /v1/agent/service/register       Name, ID, Tags, Address, Port, Meta, Check/Checks (TTL, CheckID, Status,
                                        DeregisterCriticalServiceAfter); keys in any case, as Consul's decoder
  PUT  /v1/agent/service/deregister/<id>
  PUT  /v1/agent/check/pass|warn|fail/<id>[?note=], PUT /v1/agent/check/update/<id> {"Status", "Output"}
  PUT  /v1/agent/service/maintenance/<id>?enable=true|false[&reason=]  (a critical _service_maintenance:<id> check)
A TTL check starts critical unless Status says otherwise (Consul's default), goes critical ("TTL expired") when
its TTL lapses without an update, and a service whose check stays critical past DeregisterCriticalServiceAfter is
deregistered. Consul reaps every 30 s; the stand-in checks every 50 ms, so tests can use short TTLs.
Blocking queries: with ?index=N (N > 0) the request waits until the index exceeds N or ?wait= passes
(default 5m, max 10m, plus up to wait/16 of jitter, as Consul adds), then answers with X-Consul-Index.
ACLs (with --token, default deny), as Consul answers them: the token gets everything; an unknown token gets 403
"ACL not found"; the anonymous token (no token) gets 200 with the results filtered away and no
X-Consul-Results-Filtered-By-ACLs header (Consul sets it only for requests that carry a token), and 403 from
/v1/agent/self; a --limited-token gets 200 with X-Consul-Results-Filtered-By-ACLs: true. Writes need the token.
Like every Consul catalog, the stand-in's lists the `consul` service (on the agent's node).
The token comes as Consul's agent takes it (`?token=`, then X-Consul-Token, then `Authorization: Bearer`);
--token-file names a file holding the token, read on every request, so replacing it rotates the token (the old
one is then "ACL not found", as after `consul acl token delete`).
HTTPS as an agent with `tls { https { cert_file, key_file, ca_file, verify_incoming } }`: --tls-cert, --tls-key,
--tls-ca and --verify-incoming (a client certificate from that CA is required). --unix PATH also serves the API on
a unix socket (`addresses { http = "unix:///PATH" }`).

Test controls, not part of Consul: POST /_test/fail-service {"name": S, "code": 500} makes one service's health
reads fail (code 0 ends it); POST /_test/leader {"known": false, "last_contact_ms": N} sets the
X-Consul-KnownLeader/X-Consul-LastContact headers (a follower cut off from its leader);
POST /_test/index {"index": N} forces the index (to make it go
backwards or to 0); POST /_test/noblock {"on": true} makes blocking queries return at once with the
same index (a misbehaving server, to exercise rate limiting); GET /_test/requests lists the requests seen; POST /_test/reset-requests clears them;
GET /_test/stats gives the connections (peak, refused, accepted) and the bytes sent for /v1/ (total and by endpoint),
and POST /_test/reset-stats zeroes the bytes.
"""
import argparse
import socketserver
import ssl
import gc
import json
import random
import re
import sys
import threading
import time
import uuid
import http.client
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

class Headers(dict):
    """Request headers by lower-cased name: the part of email.message.Message the stand-in and http.server use."""

    def get(self, name, default=None):
        return super().get(name.lower(), default)

    def __getitem__(self, name):
        return self.get(name)


def parse_headers(fp, _class=None):
    """http.client.parse_headers without the email parser, which cost most of each request's time: a catalog of
    10,000 services is read with 10,000 requests, and the stand-in's own time should not be what a benchmark sees."""
    headers = Headers()
    for _ in range(100):
        line = fp.readline(65537)
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("iso-8859-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return headers


http.client.parse_headers = parse_headers

lock = threading.Condition()
state = {"index": 10, "nodes": {}, "services": {}, "checks": {}, "noblock": False, "known_leader": True, "last_contact_ms": 0,
         "services_index": 10, "checks_index": 10, "nodes_index": 10, "extinction_index": None, "epoch": 0,
         "failing": {}}
# Secondary indexes, kept current by every write as Consul's memdb indexes are, so that each read costs its result
# and not the catalog.
by_name = {}           # lower-cased service name -> {(node, service ID)}
services_by_node = {}  # node -> {service ID}
checks_by_node = {}    # node -> {check ID}
by_status = {"passing": set(), "warning": set(), "critical": set()}  # status -> {(node, check ID)}
# Consul's per-service index ("service.<name>" in its index table): moved by writes to the service's instances, their
# checks, their nodes' checks and their nodes.
service_idx = {}
# The index of the last write inside each status's set of checks: what wakes a blocking /v1/health/state/<status>.
status_changed = {"passing": 0, "warning": 0, "critical": 0}
body_cache = {}        # lower-cased service name -> (its index, its /v1/health/service body)
touched = set()        # the tables the write under way has changed
requests_seen = []
stats = {"bytes": 0, "requests": 0, "by_path": {}}
TOKEN = None
LIMITED = None
TOKEN_FILE = None
DC = "dc1"
AGENT_NODE = "standin-agent"
AGENT_LOCALITY = None  # --agent-zone/--agent-region: the agent's `locality`, which becomes its node's
# TTL checks by (node, check ID): {"ttl": s, "expires": t, "deregister_after": s or None, "critical_since": t or None}
ttl_checks = {}
CHECK_FIELDS = ("Status", "Output", "Notes", "Name", "ServiceID", "ServiceName", "Type")


def go_duration(text):
    """Go's time.ParseDuration for the units Consul's registrars send ("31s", "1m35s", "500ms", "1h")."""
    total = 0.0
    for value, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|us|ns|h|m|s)", text or ""):
        total += float(value) * {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}[unit]
    return total


def lower_keys(d):
    return {k.lower(): v for k, v in d.items()} if isinstance(d, dict) else {}


def pending():
    """The index the write under way will commit at."""
    return state["index"] + 1


def commit():
    """Ends a write. As in Consul's state store, a write that changed nothing (the same node, service or check
    registered again) moves no table's index; otherwise the index moves, and with it each changed table's."""
    if not touched:
        return
    state["index"] += 1
    for table in touched:
        state[table + "_index"] = state["index"]
    touched.clear()
    lock.notify_all()


def bump(*tables):
    """A test control's write: the named tables (all when none is named, which also wakes every blocking query)."""
    touched.update(tables or ("services", "checks", "nodes"))
    if not tables:
        state["epoch"] += 1
    commit()


def touch_service(name):
    service_idx[name.lower()] = pending()


def touch_node_services(node):
    """updateAllServiceIndexesOfNode: a node's write, or a node-level check's, moves every service index on it."""
    for sid in services_by_node.get(node, ()):
        touch_service(state["services"][(node, sid)]["Service"])


def touch_check_services(node, check):
    if check["ServiceID"]:
        svc = state["services"].get((node, check["ServiceID"]))
        if svc:
            touch_service(svc["Service"])
    else:
        touch_node_services(node)


def put_node(name, address, datacenter=None, tagged=None, meta=None, locality=None):
    """ensureNodeTxn: a node the same as the stored one is not written."""
    old = state["nodes"].get(name)
    new = {"Address": address, "Datacenter": datacenter or DC, "TaggedAddresses": tagged or {}, "Meta": meta or {},
           "Locality": locality}
    if old and all(old.get(k) == v for k, v in new.items()):
        return
    new["CreateIndex"] = old["CreateIndex"] if old else pending()
    new["ModifyIndex"] = pending()
    state["nodes"][name] = new
    touched.add("nodes")
    touch_node_services(name)


def put_service(node, svc):
    key = (node, svc["ID"])
    old = state["services"].get(key)
    if old and old["Service"].lower() != svc["Service"].lower():
        unlink_service(key, old)
    svc["CreateIndex"] = old["CreateIndex"] if old else pending()
    svc["ModifyIndex"] = pending()
    state["services"][key] = svc
    by_name.setdefault(svc["Service"].lower(), set()).add(key)
    services_by_node.setdefault(node, set()).add(svc["ID"])
    touch_service(svc["Service"])
    touched.add("services")


def unlink_service(key, svc):
    name = svc["Service"].lower()
    members = by_name.get(name, set())
    members.discard(key)
    if members:
        touch_service(name)
    else:
        # The last instance: the name's index goes, and the extinction index answers for it from now on.
        by_name.pop(name, None)
        service_idx.pop(name, None)
        body_cache.pop(name, None)
        state["extinction_index"] = pending()
    on_node = services_by_node.get(key[0], set())
    on_node.discard(key[1])
    if not on_node:
        services_by_node.pop(key[0], None)


def del_service(node, sid):
    svc = state["services"].pop((node, sid), None)
    if svc is None:
        return
    unlink_service((node, sid), svc)
    for cid in [c for c in checks_by_node.get(node, ()) if state["checks"][(node, c)]["ServiceID"] == sid]:
        del_check((node, cid))
    touched.add("services")


def put_check(key, check):
    """ensureCheckTxn: inserts or updates a check; a check the same as the stored one is not written."""
    old = state["checks"].get(key)
    if old and all(old.get(f) == check.get(f) for f in CHECK_FIELDS):
        return
    check["CreateIndex"] = old.get("CreateIndex", pending()) if old else pending()
    check["ModifyIndex"] = pending()
    if old:
        by_status.setdefault(old["Status"], set()).discard(key)
        status_changed[old["Status"]] = pending()
        touch_check_services(key[0], old)
    state["checks"][key] = check
    by_status.setdefault(check["Status"], set()).add(key)
    status_changed[check["Status"]] = pending()
    checks_by_node.setdefault(key[0], set()).add(key[1])
    touch_check_services(key[0], check)
    touched.add("checks")


def del_check(key):
    check = state["checks"].pop(key, None)
    if check is None:
        return
    by_status.setdefault(check["Status"], set()).discard(key)
    status_changed[check["Status"]] = pending()
    checks_by_node.get(key[0], set()).discard(key[1])
    ttl_checks.pop(key, None)
    touch_check_services(key[0], check)
    touched.add("checks")


def del_node(name):
    for sid in list(services_by_node.get(name, ())):
        del_service(name, sid)
    for cid in list(checks_by_node.get(name, ())):
        del_check((name, cid))
    checks_by_node.pop(name, None)
    if state["nodes"].pop(name, None) is not None:
        touched.add("nodes")


def new_check(node, cid, name, status, service_id="", notes="", output="", type_=""):
    return {"Node": node, "CheckID": cid, "Name": name, "Status": status, "Notes": notes, "Output": output,
            "ServiceID": service_id,
            "ServiceName": state["services"].get((node, service_id), {}).get("Service", "") if service_id else "",
            "Type": type_}


def ensure_agent_node():
    if AGENT_NODE not in state["nodes"]:
        put_node(AGENT_NODE, "127.0.0.1", locality=AGENT_LOCALITY)
        put_check((AGENT_NODE, "serfHealth"), new_check(AGENT_NODE, "serfHealth", "Serf Health Status", "passing",
                                                        output="Agent alive and reachable"))


def set_check(key, status, output):
    """A check's new status (its TTL bookkeeping too); a write only when something changed."""
    check = state["checks"][key]
    if key in ttl_checks:
        if status == "critical" and check["Status"] != "critical":
            ttl_checks[key]["critical_since"] = time.time()
        if status != "critical":
            ttl_checks[key]["critical_since"] = None
    put_check(key, dict(check, Status=status, Output=output))


def reaper():
    while True:
        time.sleep(0.05)
        with lock:
            now = time.time()
            for key, t in list(ttl_checks.items()):
                if key not in state["checks"]:
                    continue
                if now > t["expires"] and state["checks"][key]["Status"] != "critical":
                    set_check(key, "critical", "TTL expired")
                since, after = t["critical_since"], t["deregister_after"]
                if since is not None and after is not None and now - since > after:
                    del_service(key[0], state["checks"][key]["ServiceID"])
            commit()


def parse_wait(text):
    """Go's time.ParseDuration, as Consul's parseWait uses it: None for what it rejects ("5" has no unit)."""
    if not text:
        return 300.0
    if text == "0" or not re.fullmatch(r"(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+", text):
        return 0.0 if text == "0" else None
    return min(go_duration(text), 600.0)


def compile_filter(text, fields):
    """The subset of Consul's filter language (go-bexpr) the watcher sends: `Selector == "value"` and `!=`, where the
    selector's first part is a field of the endpoint's result. None for anything else (Consul answers 400)."""
    m = re.fullmatch(r'\s*([A-Za-z]\w*(?:\.\w+)*)\s*(==|!=)\s*"((?:[^"\\]|\\.)*)"\s*', text)
    if not m or m.group(1).split(".")[0] not in fields:
        return None
    path, equal, value = m.group(1).split("."), m.group(2) == "==", m.group(3)

    def matches(item):
        for part in path:
            item = item.get(part) if isinstance(item, dict) else None
        return (item == value) == equal
    return matches


_table_cache = {}


def cached(table, make):
    """A whole-table answer, made once per change of the table's index (a read that wakes often costs nothing more)."""
    hit = _table_cache.get(table)
    if hit is None or hit[0] != state[table + "_index"]:
        hit = _table_cache[table] = (state[table + "_index"], make())
    return hit[1]


def catalog_services():
    out = {}
    for name in by_name:
        for key in sorted(by_name[name]):
            svc = state["services"][key]
            tags = out.setdefault(svc["Service"], [])
            for t in svc.get("Tags") or []:
                if t not in tags:
                    tags.append(t)
    return out


def all_nodes_json():
    return [node_json(n, state["nodes"][n]) for n in sorted(state["nodes"])]


def node_uuid(name):
    """A stable UUID per node name, as Consul gives every node an ID."""
    return str(uuid.uuid5(uuid.NAMESPACE_DNS, name + ".node.standin"))


def node_json(name, node):
    """Consul's structs.Node: an ID, TaggedAddresses with lan/wan and their _ipv4/_ipv6 forms, Meta null when unset."""
    family = "ipv6" if ":" in node["Address"] else "ipv4"
    tagged = {"lan": node["Address"], f"lan_{family}": node["Address"], "wan": node["Address"], f"wan_{family}": node["Address"]}
    tagged.update(node.get("TaggedAddresses") or {})
    return {"ID": node_uuid(name), "Node": name, "Address": node["Address"], "Datacenter": node["Datacenter"],
            "TaggedAddresses": tagged, "Meta": node.get("Meta") or None,
            "CreateIndex": node["CreateIndex"], "ModifyIndex": node["ModifyIndex"]} | locality_json(node.get("Locality"))


def locality_json(locality):
    """Consul's structs.Locality (1.16+), `omitempty` on the pointer and on Region and Zone."""
    if not locality:
        return {}
    out = {k: locality.get(k) or locality.get(k.lower()) for k in ("Region", "Zone")}
    out = {k: v for k, v in out.items() if v}
    return {"Locality": out} if out else {}


def service_json(sid, svc):
    """Consul's structs.NodeService: Kind, Proxy and Connect always there; Port omitted when 0 (omitempty);
    TaggedAddresses omitted when empty; Meta null when unset."""
    out = {"Kind": "", "ID": sid, "Service": svc["Service"], "Tags": svc.get("Tags") or [], "Address": svc.get("Address", ""),
           "Meta": svc.get("Meta") or None, "Weights": svc.get("Weights") or {"Passing": 1, "Warning": 1},
           "EnableTagOverride": False, "Proxy": {"Mode": "", "MeshGateway": {}, "Expose": {}}, "Connect": {},
           "PeerName": "", "CreateIndex": svc["CreateIndex"], "ModifyIndex": svc["ModifyIndex"]}
    if svc.get("Port"):
        out["Port"] = svc["Port"]
    if svc.get("TaggedAddresses"):
        out["TaggedAddresses"] = svc["TaggedAddresses"]
    out |= locality_json(svc.get("Locality"))
    return out


def check_json(c):
    """Consul's structs.HealthCheck: Type, Definition (empty fields omitted), ServiceTags (never null)."""
    out = dict(c)
    svc = state["services"].get((c["Node"], c["ServiceID"]), {}) if c.get("ServiceID") else {}
    out.setdefault("Type", "")
    out["Definition"] = {}
    out["ServiceTags"] = svc.get("Tags") or []
    out.setdefault("Interval", "")
    out.setdefault("Timeout", "")
    out.setdefault("ExposedPort", 0)
    out.setdefault("CreateIndex", c.get("ModifyIndex", 0))
    return out


def service_index(name):
    """maxIndexAndWatchChForService: the service's own index; for a name with no instances, the index at which the
    last service went extinct, or failing that the catalog's."""
    idx = service_idx.get(name.lower())
    if idx is not None:
        return idx
    if state["extinction_index"] is not None:
        return state["extinction_index"]
    return max(state["services_index"], state["checks_index"], state["nodes_index"])


def health_service(name):
    """/v1/health/service/<name>'s entries: Consul matches names case-insensitively."""
    out = []
    for node_name, sid in sorted(by_name.get(name.lower(), ())):
        svc, node = state["services"][(node_name, sid)], state["nodes"][node_name]
        checks = [state["checks"][(node_name, cid)] for cid in sorted(checks_by_node.get(node_name, ()))]
        out.append({"Node": node_json(node_name, node), "Service": service_json(sid, svc),
                    "Checks": [check_json(c) for c in checks if c["ServiceID"] in ("", sid)]})
    return out


def health_service_cached(name):
    """The entries and their JSON, made once per change of the service's index (their only input)."""
    key, idx = name.lower(), service_index(name)
    hit = body_cache.get(key)
    if hit is None or hit[0] != idx:
        entries = health_service(name)
        hit = body_cache[key] = (idx, json.dumps(entries).encode(), entries)
    return hit


def health_service_body(name):
    return health_service_cached(name)[1]


def checks_in_state(status):
    keys = state["checks"].keys() if status == "any" else by_status.get(status, ())
    return [check_json(state["checks"][k]) for k in sorted(keys)]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, code, body, index=None, filtered=False, raw=None):
        """Answers; `raw` is a body already encoded. Every byte sent for /v1/ is counted (GET /_test/stats)."""
        data = raw if raw is not None else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if index is not None:
            self.send_header("X-Consul-Index", str(index))
            self.send_header("X-Consul-KnownLeader", "true" if state["known_leader"] else "false")
            self.send_header("X-Consul-LastContact", str(state["last_contact_ms"]))
        if filtered:
            self.send_header("X-Consul-Results-Filtered-By-ACLs", "true")
        path = urlparse(self.path).path
        if path.startswith("/v1/"):
            sent = len(data) + sum(len(h) for h in getattr(self, "_headers_buffer", [])) + 2
            kind = "/v1/health/service/" if path.startswith("/v1/health/service/") else path
            with lock:
                stats["bytes"] += sent
                stats["requests"] += 1
                entry = stats["by_path"].setdefault(kind, {"bytes": 0, "requests": 0})
                entry["bytes"] += sent
                entry["requests"] += 1
        # Head and body in one write, as Go's HTTP server sends a small answer (the handler writes through a buffer).
        self._headers_buffer.append(b"\r\n")
        self.wfile.write(b"".join(self._headers_buffer) + data)
        self._headers_buffer = []

    def access(self, query):
        """"full", "limited", "anonymous" or "unknown", for the request's token."""
        token = TOKEN
        if TOKEN_FILE:
            with open(TOKEN_FILE) as f:
                token = f.read().strip()
        if token is None:
            return "full"
        bearer = self.headers.get("Authorization") or ""
        bearer = bearer.split(None, 1)[1].strip() if bearer.lower().startswith("bearer ") and " " in bearer else None
        given = (query.get("token") or [None])[0] or self.headers.get("X-Consul-Token") or bearer
        if not given:
            return "anonymous"
        return {token: "full", LIMITED: "limited"}.get(given, "unknown")

    def authorised(self, query):
        return self.access(query) == "full"

    def do_GET(self):
        url = urlparse(self.path)
        query = parse_qs(url.query, keep_blank_values=True)
        with lock:
            if len(requests_seen) >= 200_000:
                del requests_seen[:100_000]
            requests_seen.append({"path": url.path, "query": {k: v[0] for k, v in query.items()},
                                  "token": self.headers.get("X-Consul-Token"), "time": time.time()})
        if url.path == "/_test/requests":
            with lock:
                return self.reply(200, requests_seen)
        if url.path == "/_test/stats":
            with conn_lock, lock:
                return self.reply(200, {"peak": connections["peak"], "rejected": connections["rejected"],
                                        "current": sum(connections["current"].values()), "accepted": connections["accepted"],
                                        "bytes": stats["bytes"],
                                        "requests": stats["requests"], "by_path": stats["by_path"]})
        if url.path.startswith("/v1/agent/check/") or url.path.startswith("/v1/agent/service/"):
            # PUT-only since Consul 1.0 (its HTTP handlers enforce the verb).
            return self.reply(405, f"method GET not allowed")
        access = self.access(query)
        if access == "unknown":
            return self.reply(403, "ACL not found")
        if url.path == "/v1/agent/self":
            if access == "anonymous":
                return self.reply(403, f'Permission denied: anonymous token lacks permission \'agent:read\' on "{AGENT_NODE}". '
                                       'The anonymous token is used implicitly when a request does not specify a token.')
            return self.reply(200, {"Config": {"Datacenter": DC, "PrimaryDatacenter": DC, "NodeName": AGENT_NODE,
                                               "NodeID": "5e4ba1a9-7a2c-4c3b-9f0d-4f1c2a9b8e61", "Server": False,
                                               "Version": "1.17.0", "Revision": "", "BuildDate": "2023-11-01T00:00:00Z"},
                                    "Member": {"Name": AGENT_NODE, "Addr": "127.0.0.1", "Port": 8301, "Status": 1}})
        # What each read answers, and the condition a blocking one waits for (Consul's watch set for it).
        filter_text = (query.get("filter") or [None])[0]
        fields = None
        if url.path == "/v1/catalog/services":
            make, current = (lambda: cached("services", catalog_services)), lambda: state["services_index"]
            moved = lambda wanted: state["services_index"] > wanted
        elif url.path == "/v1/catalog/nodes":
            make = lambda: cached("nodes", all_nodes_json)
            current = lambda: state["nodes_index"]
            moved = lambda wanted: state["nodes_index"] > wanted
            fields = {"ID", "Node", "Address", "Datacenter", "TaggedAddresses", "Meta"}
        elif url.path.startswith("/v1/health/state/"):
            status = url.path[len("/v1/health/state/"):]
            if status not in ("any", "passing", "warning", "critical"):
                return self.reply(400, "Bad check state")
            make, current = (lambda: checks_in_state(status)), lambda: state["checks_index"]
            fields = {"Node", "CheckID", "Name", "Status", "Notes", "Output", "ServiceID", "ServiceName", "ServiceTags", "Type"}
            if status == "any":
                moved = lambda wanted: state["checks_index"] > wanted
            else:
                # checksInStateTxn: the index is the whole checks table's, but the watch is on the status index, so
                # a blocking query wakes only when a check enters, leaves or changes inside this status.
                since = status_changed[status]
                moved = lambda wanted: status_changed[status] != since
        elif url.path.startswith("/v1/catalog/node/"):
            # structs.NodeServices: the node, and its services by ID (null Node for a node that does not exist).
            name = unquote(url.path[len("/v1/catalog/node/"):])
            def node_services():
                node = state["nodes"].get(name)
                if node is None:
                    return None
                return {"Node": node_json(name, node),
                        "Services": {sid: service_json(sid, state["services"][(name, sid)]) for sid in sorted(services_by_node.get(name, ()))}}
            make, current = node_services, lambda: state["nodes_index"]
            moved = lambda wanted: state["nodes_index"] > wanted
            fields = None
        elif url.path.startswith("/v1/health/service/"):
            name = unquote(url.path[len("/v1/health/service/"):])
            if name in state["failing"]:
                return self.reply(state["failing"][name], "rpc error: test failure")
            make, current = (lambda: health_service_cached(name)[2]), lambda: service_index(name)
            moved = lambda wanted: service_index(name) > wanted
            fields = {"Node", "Service", "Checks"}
        else:
            return self.reply(404, "not found")
        if "dc" in query and query["dc"][0] != DC:
            return self.reply(500, "No path to datacenter")
        if "stale" in query and "consistent" in query:
            return self.reply(400, "Cannot specify ?stale with ?consistent, conflicting semantics.")
        keep = None
        if filter_text is not None and filter_text != "":
            keep = compile_filter(filter_text, fields or set())
            if keep is None:
                return self.reply(400, f"Failed to create boolean expression evaluator: {filter_text}")
        try:
            wanted = int(query.get("index", ["0"])[0] or 0)
        except ValueError:
            return self.reply(400, "Invalid index")
        wait = parse_wait(query.get("wait", [""])[0])
        if wait is None:
            return self.reply(400, "Invalid wait time")
        deadline = time.time() + wait + random.uniform(0, wait / 16)
        with lock:
            # blockingQuery: an index already past the client's answers at once; otherwise wait for the watch.
            if wanted > 0 and current() <= wanted:
                if url.path.startswith("/v1/health/state/") and url.path != "/v1/health/state/any":
                    since = status_changed[status]
                epoch = state["epoch"]
                while (not state["noblock"] and not moved(wanted) and state["epoch"] == epoch
                       and time.time() < deadline):
                    lock.wait(timeout=max(0.0, deadline - time.time()))
            index = current()
            raw = None
            if access == "anonymous":
                body = {} if url.path == "/v1/catalog/services" else []
            elif keep is None and url.path.startswith("/v1/health/service/"):
                body, raw = None, health_service_body(name)
            else:
                body = make()
                # The filter runs on the result, after the index is taken: it never narrows what wakes a query.
                if keep is not None:
                    body = [item for item in body if keep(item)] if isinstance(body, list) else body
        self.reply(200, body, index, filtered=access == "limited", raw=raw)

    def do_PUT(self):
        url = urlparse(self.path)
        query = parse_qs(url.query)
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        if not self.authorised(query):
            return self.reply(403, "ACL not found")
        with lock:
            if url.path == "/v1/agent/service/register":
                return self.agent_register(lower_keys(body))
            if url.path.startswith("/v1/agent/service/deregister/"):
                sid = unquote(url.path[len("/v1/agent/service/deregister/"):])
                if (AGENT_NODE, sid) not in state["services"]:
                    return self.reply(404, f'Unknown service ID "{sid}". Ensure that the service ID is passed, not the service name.')
                del_service(AGENT_NODE, sid)
                commit()
                return self.reply(200, None)
            m = re.fullmatch(r"/v1/agent/service/maintenance/(.+)", url.path)
            if m:
                # As Consul's agent: a critical check _service_maintenance:<id>, "Service Maintenance Mode", with the
                # reason (or Consul's default text) in its Notes; enable=false removes it.
                sid = unquote(m.group(1))
                if (AGENT_NODE, sid) not in state["services"]:
                    return self.reply(404, f'Unknown service ID "{sid}"')
                key = (AGENT_NODE, f"_service_maintenance:{sid}")
                if (query.get("enable") or [""])[0] == "true":
                    reason = (query.get("reason") or [""])[0] or ("Maintenance mode is enabled for this service, "
                                                                  "but no reason was provided. This is a default message.")
                    put_check(key, new_check(AGENT_NODE, key[1], "Service Maintenance Mode", "critical", service_id=sid,
                                             notes=reason, type_="maintenance"))
                else:
                    del_check(key)
                commit()
                return self.reply(200, None)
            m = re.fullmatch(r"/v1/agent/check/(pass|warn|fail|update)/(.+)", url.path)
            if m:
                key = (AGENT_NODE, unquote(m.group(2)))
                if key not in state["checks"]:
                    return self.reply(404, f'CheckID "{key[1]}" does not have associated TTL')
                if m.group(1) == "update":
                    b = lower_keys(body)
                    status, output = b.get("status") or "", b.get("output") or ""
                    if status not in ("passing", "warning", "critical"):
                        return self.reply(400, f"Invalid check status: \"{status}\"")
                else:
                    status = {"pass": "passing", "warn": "warning", "fail": "critical"}[m.group(1)]
                    output = (query.get("note") or [""])[0]
                if key in ttl_checks:
                    ttl_checks[key]["expires"] = time.time() + ttl_checks[key]["ttl"]
                set_check(key, status, output)
                commit()
                return self.reply(200, None)
            if url.path == "/v1/catalog/register":
                # Keys match case-insensitively, as Consul's decoder does (python-consul sends lower-case ones).
                b = lower_keys(body)
                node = b["node"]
                svc_body = lower_keys(b.get("service") or {})
                sid = (svc_body.get("id") or svc_body.get("service")) if svc_body else None
                checks = [lower_keys(c) for c in (b.get("checks") or ([b["check"]] if b.get("check") else []))]
                for c in checks:
                    csid = c.get("serviceid") or ""
                    if csid and csid != sid and (node, csid) not in state["services"]:
                        # Consul's catalog endpoint (vetRegisterWithACL) refuses a check on a service it does not know.
                        return self.reply(500, f"Unknown service ID '{csid}' for check ID '{c.get('checkid') or c.get('name')}'")
                put_node(node, b["address"], b.get("datacenter"), b.get("taggedaddresses"), b.get("nodemeta"), b.get("locality"))
                if svc_body:
                    put_service(node, {"ID": sid, "Service": svc_body["service"], "Tags": svc_body.get("tags") or [],
                                       "Address": svc_body.get("address") or "", "Port": svc_body.get("port") or 0,
                                       "Meta": svc_body.get("meta") or {}, "Weights": svc_body.get("weights"),
                                       "TaggedAddresses": svc_body.get("taggedaddresses"), "Locality": svc_body.get("locality")})
                for c in checks:
                    cid = c.get("checkid") or c.get("name")
                    # The catalog endpoint stores the check as sent, Output included.
                    put_check((node, cid), new_check(node, cid, c.get("name", cid), c.get("status") or "critical",
                                                     service_id=c.get("serviceid") or "", notes=c.get("notes") or "",
                                                     output=c.get("output") or ""))
                commit()
                return self.reply(200, True)
            if url.path == "/v1/catalog/deregister":
                node = body["Node"]
                if body.get("ServiceID"):
                    del_service(node, body["ServiceID"])
                elif body.get("CheckID"):
                    del_check((node, body["CheckID"]))
                else:
                    del_node(node)
                commit()
                return self.reply(200, True)
        self.reply(404, "not found")

    def agent_register(self, b):
        name = b.get("name") or ""
        if not name:
            return self.reply(400, "Missing service name")
        sid = b.get("id") or name
        ensure_agent_node()
        del_service(AGENT_NODE, sid)
        put_service(AGENT_NODE, {
            "ID": sid, "Service": name, "Tags": b.get("tags") or [], "Address": b.get("address") or "",
            "Port": b.get("port") or 0, "Meta": b.get("meta") or {}, "Weights": b.get("weights") or {"Passing": 1, "Warning": 1},
            "Locality": b.get("locality")})
        checks = ([b["check"]] if b.get("check") else []) + list(b.get("checks") or [])
        for i, raw in enumerate(checks):
            c = lower_keys(raw)
            # Consul names a service's checks service:<id>, or service:<id>:<n> when there are several.
            cid = c.get("checkid") or c.get("id") or (f"service:{sid}" if len(checks) == 1 else f"service:{sid}:{i + 1}")
            key = (AGENT_NODE, cid)
            put_check(key, new_check(AGENT_NODE, cid, c.get("name") or f"Service '{name}' check", c.get("status") or "critical",
                                     service_id=sid, notes=c.get("notes") or "", type_="ttl" if c.get("ttl") else ""))
            if c.get("ttl"):
                after = c.get("deregistercriticalserviceafter")
                ttl_checks[key] = {"ttl": go_duration(c["ttl"]), "expires": time.time() + go_duration(c["ttl"]),
                                   "deregister_after": go_duration(after) if after else None,
                                   "critical_since": time.time() if state["checks"][key]["Status"] == "critical" else None}
        commit()
        return self.reply(200, None)

    def do_POST(self):
        url = urlparse(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        with lock:
            if url.path == "/_test/index":
                # Every index to N (a restored snapshot, a new cluster): blocking queries wake and see it.
                n = int(body["index"])
                state["index"] = state["services_index"] = state["checks_index"] = state["nodes_index"] = n
                for name in service_idx:
                    service_idx[name] = n
                state["epoch"] += 1
                lock.notify_all()
                return self.reply(200, True)
            if url.path == "/_test/bulk":
                # `services` services of `instances` instances each (svc<i>, on nodes bulk-<i>-<j>), all passing.
                for i in range(int(body["services"])):
                    for j in range(int(body["instances"])):
                        node, sid = f"bulk-{i}-{j}", f"svc{i}-{j}"
                        put_node(node, f"10.{i // 250}.{i % 250}.{j + 1}")
                        put_service(node, {"ID": sid, "Service": f"svc{i}", "Tags": [], "Address": "", "Port": 8080, "Meta": {}})
                        put_check((node, f"service:{sid}"), new_check(node, f"service:{sid}", "check", "passing", service_id=sid))
                bump()
                # Each service's answer, and the catalog's and the nodes' lists, made now rather than by the first
                # read: a load then measures the reader, not this stand-in's Python.
                for i in range(int(body["services"])):
                    health_service_cached(f"svc{i}")
                cached("services", catalog_services)
                cached("nodes", all_nodes_json)
                # The bulk data is long-lived: out of the cyclic collector's sight, whose full passes over it would
                # otherwise stall every answer for most of a second, now and then, in the middle of a measurement.
                gc.collect()
                gc.freeze()
                return self.reply(200, True)
            if url.path == "/_test/set-status":
                key = (body["node"], body["check"])
                set_check(key, body["status"], state["checks"][key]["Output"])
                commit()
                return self.reply(200, True)
            if url.path == "/_test/flap":
                # A flapping check: `times` status changes, `every_ms` apart, in a thread of its own; then
                # state["flaps_done"] is set, ending on passing.
                key = (body["node"], body["check"])
                state["flaps_done"] = False

                def flap():
                    for i in range(int(body["times"])):
                        time.sleep(int(body["every_ms"]) / 1000)
                        with lock:
                            set_check(key, "warning" if i % 2 == 0 else "passing", state["checks"][key]["Output"])
                            commit()
                    with lock:
                        set_check(key, "passing", state["checks"][key]["Output"])
                        commit()
                        state["flaps_done"] = True
                threading.Thread(target=flap, daemon=True).start()
                return self.reply(200, True)
            if url.path == "/_test/flaps-done":
                return self.reply(200, state.get("flaps_done", False))
            if url.path == "/_test/fail-service":
                # One service's health reads fail with this HTTP code (0 ends it).
                if int(body["code"]):
                    state["failing"][body["name"]] = int(body["code"])
                else:
                    state["failing"].pop(body["name"], None)
                bump()
                return self.reply(200, True)
            if url.path == "/_test/leader":
                # A follower that lost its leader: stale reads still answer, with the last contact's age.
                state["known_leader"] = bool(body["known"])
                state["last_contact_ms"] = int(body.get("last_contact_ms", 0))
                bump()
                return self.reply(200, True)
            if url.path == "/_test/noblock":
                state["noblock"] = bool(body["on"])
                lock.notify_all()
                return self.reply(200, True)
            if url.path == "/_test/reset-requests":
                requests_seen.clear()
                return self.reply(200, True)
            if url.path == "/_test/reset-stats":
                stats.update(bytes=0, requests=0, by_path={})
                return self.reply(200, True)
        self.reply(404, "not found")


MAX_CONNS = 200
conn_lock = threading.Lock()
connections = {"current": {}, "peak": 0, "rejected": 0, "accepted": 0}


class CappedServer(ThreadingHTTPServer):
    """Consul's limits.http_max_conns_per_client: past the cap, a new connection from that IP gets a raw 429 and is
    closed, as hashicorp/go-connlimit answers (the count is of concurrent connections, not requests)."""

    def process_request(self, request, client_address):
        ip = client_address[0]
        with conn_lock:
            current = connections["current"].get(ip, 0)
            if current >= MAX_CONNS:
                connections["rejected"] += 1
                reject = True
            else:
                connections["current"][ip] = current + 1
                connections["peak"] = max(connections["peak"], current + 1)
                connections["accepted"] += 1
                reject = False
        if reject:
            try:
                request.sendall(b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"
                                b"Your IP is issuing too many concurrent connections, please rate limit your calls\n")
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            with conn_lock:
                connections["current"][client_address[0]] -= 1


class UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class UnixHandler(Handler):
    def address_string(self):
        return "unix"


def main():
    global TOKEN, DC, LIMITED, MAX_CONNS, TOKEN_FILE, AGENT_LOCALITY
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--token")
    ap.add_argument("--limited-token")
    ap.add_argument("--max-conns", type=int, default=200, help="limits.http_max_conns_per_client (Consul's default 200)")
    ap.add_argument("--dc", default="dc1")
    ap.add_argument("--token-file")
    ap.add_argument("--tls-cert")
    ap.add_argument("--tls-key")
    ap.add_argument("--tls-ca")
    ap.add_argument("--verify-incoming", action="store_true")
    ap.add_argument("--unix")
    ap.add_argument("--agent-zone", help="the agent's locality zone (its node's Locality)")
    ap.add_argument("--agent-region", help="the agent's locality region")
    args = ap.parse_args()
    TOKEN, DC, LIMITED, TOKEN_FILE = args.token, args.dc, args.limited_token, args.token_file
    if args.agent_zone or args.agent_region:
        AGENT_LOCALITY = {"Region": args.agent_region or "", "Zone": args.agent_zone or ""}
    with lock:
        ensure_agent_node()
        put_service(AGENT_NODE, {"ID": "consul", "Service": "consul", "Tags": [], "Address": "", "Port": 8300, "Meta": {},
                                 "Weights": {"Passing": 1, "Warning": 1}})
        commit()
    MAX_CONNS = args.max_conns
    server = CappedServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    if args.tls_cert:
        # Tests write through a plain listener on the same state (an agent's http and https ports).
        plain = CappedServer(("127.0.0.1", 0), Handler)
        plain.daemon_threads = True
        threading.Thread(target=plain.serve_forever, daemon=True).start()
        print(f"plain on 127.0.0.1:{plain.server_address[1]}", flush=True)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.tls_cert, args.tls_key)
        if args.tls_ca:
            ctx.load_verify_locations(args.tls_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED if args.verify_incoming else ssl.CERT_NONE
        server.socket = ctx.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    if args.unix:
        unix = UnixServer(args.unix, UnixHandler)
        threading.Thread(target=unix.serve_forever, daemon=True).start()
    threading.Thread(target=reaper, daemon=True).start()
    print(f"listening on 127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
