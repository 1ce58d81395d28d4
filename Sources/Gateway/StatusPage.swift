/// The status page served at `/ui`: one document with its own style and script, no external assets, no build step.
/// It refreshes itself every 2 s from `/v1/*`. Every value that comes from a registry (service names, tags, check
/// output, node names) is put in the page as text (`textContent`, `createTextNode`), never parsed as HTML.
enum StatusPage {
    static let html = #"""
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Signpost</title>
<style>
  :root { --fg: #1d2330; --muted: #667085; --line: #e4e7ec; --ok: #12805c; --warn: #b54708; --bad: #b42318; --bg: #f8f9fb; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg); background: var(--bg); }
  header { display: flex; gap: 16px; align-items: baseline; padding: 12px 20px; background: #fff; border-bottom: 1px solid var(--line); }
  header h1 { margin: 0; font-size: 18px; }
  header .meta { color: var(--muted); }
  main { display: grid; grid-template-columns: minmax(0, 3fr) minmax(0, 2fr); gap: 16px; padding: 16px 20px; }
  section { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 12px 14px; min-width: 0; }
  section h2 { margin: 0 0 8px; font-size: 15px; }
  .wide { grid-column: 1 / -1; }
  table { width: 100%; border-collapse: collapse; }
  th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid var(--line); vertical-align: top; overflow-wrap: anywhere; }
  th { color: var(--muted); font-weight: 600; font-size: 12px; }
  td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
  #services tbody tr { cursor: pointer; }
  #services tbody tr:hover, #services tbody tr.selected { background: #eef4ff; }
  .state-connected, .ok { color: var(--ok); }
  .state-stale, .state-loading, .warn { color: var(--warn); }
  .state-problem, .bad { color: var(--bad); }
  .pill { display: inline-block; padding: 0 6px; border-radius: 9px; font-size: 12px; border: 1px solid currentColor; }
  .muted { color: var(--muted); }
  .toolbar { display: flex; gap: 8px; align-items: center; margin-bottom: 8px; }
  input[type=search] { flex: 1; padding: 5px 8px; border: 1px solid var(--line); border-radius: 6px; font: inherit; }
  button { font: inherit; padding: 3px 10px; border: 1px solid var(--line); border-radius: 6px; background: #fff; cursor: pointer; }
  button:disabled { opacity: .4; cursor: default; }
  pre, code { font: 12px/1.4 ui-monospace, SFMono-Regular, Menlo, monospace; }
  pre { margin: 4px 0; white-space: pre-wrap; overflow-wrap: anywhere; }
  #chart svg { width: 100%; height: 140px; border-bottom: 1px solid var(--line); }
  .legend span { margin-right: 12px; font-size: 12px; }
  .legend i { display: inline-block; width: 10px; height: 10px; margin-right: 4px; border-radius: 2px; }
  #changes-list { max-height: 420px; overflow: auto; }
</style>
</head>
<body>
<header>
  <h1>Signpost</h1>
  <span class="meta" id="summary">loading…</span>
  <span class="meta" id="updated"></span>
</header>
<main>
  <section class="wide">
    <h2>Registries</h2>
    <table id="registries"><thead><tr><th>kind</th><th>target</th><th>state</th><th>staleness</th><th>last change</th><th class="num">watch restarts</th><th>problem</th></tr></thead><tbody></tbody></table>
  </section>
  <section>
    <h2>Services</h2>
    <div class="toolbar">
      <input type="search" id="search" placeholder="Search services" autocomplete="off">
      <button id="prev" type="button">‹</button><span id="page" class="muted"></span><button id="next" type="button">›</button>
    </div>
    <table id="services"><thead><tr><th>service</th><th class="num">instances</th><th class="num">healthy</th><th class="num">warning</th><th class="num">excluded</th></tr></thead><tbody></tbody></table>
  </section>
  <section>
    <h2>Traffic <span class="muted" style="font-weight:400">queries per second by response code, last 5 minutes</span></h2>
    <div id="chart"></div>
    <div class="legend" id="legend"></div>
  </section>
  <section class="wide">
    <h2>Explain</h2>
    <div id="explain"><p class="muted">Click a service to see what DNS answers for it, and why each instance is in or out.</p></div>
  </section>
  <section class="wide">
    <h2>Recent changes</h2>
    <div id="changes-list">
      <table id="changes"><thead><tr><th>time</th><th>registry</th><th>service</th><th>instance</th><th>node</th><th>what changed</th></tr></thead><tbody></tbody></table>
    </div>
  </section>
</main>
<script>
"use strict";
const PAGE = 100;
const COLORS = { NOERROR: "#12805c", NXDOMAIN: "#b54708", SERVFAIL: "#b42318", REFUSED: "#7a5af8", FORMERR: "#667085",
                 NOTIMP: "#0e9384", BADVERS: "#c11574", other: "#98a2b3", dropped: "#344054" };
const state = { offset: 0, query: "", selected: null, domain: "consul", matching: 0, servicesSeq: 0, explainSeq: 0 };

// Builds an element; every string child becomes a text node, so nothing from a registry is ever parsed as HTML.
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else if (k.startsWith("data-")) node.setAttribute(k, v); else node[k] = v;
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    node.appendChild(typeof c === "string" || typeof c === "number" ? document.createTextNode(String(c)) : c);
  }
  return node;
}
function replaceRows(tbody, rows) { tbody.replaceChildren(...rows); }
function ago(t) {
  if (!t) return "–";
  const s = Math.max(0, Date.now() / 1000 - t);
  return s < 60 ? Math.round(s) + " s ago" : s < 3600 ? Math.round(s / 60) + " min ago" : Math.round(s / 3600) + " h ago";
}
function clock(t) { return new Date(t * 1000).toLocaleTimeString(); }
async function get(path) {
  const r = await fetch(path, { cache: "no-store" });
  if (!r.ok) throw new Error(path + ": HTTP " + r.status);
  return r.json();
}

async function refreshRegistries() {
  const d = await get("/v1/registries");
  state.domain = d.domain.replace(/\.$/, "");
  document.getElementById("summary").textContent =
    d.services + " services · domain " + state.domain + " · snapshot " + d.generation +
    (d.staleness != null ? " · data " + Math.round(d.staleness) + " s stale" : "");
  replaceRows(document.querySelector("#registries tbody"), d.registries.map(r => el("tr", {},
    el("td", {}, r.kind), el("td", {}, el("code", {}, r.target)),
    el("td", {}, el("span", { class: "pill state-" + r.state }, r.state + (r.fromState ? " (from state file)" : ""))),
    el("td", {}, r.staleness != null ? Math.round(r.staleness) + " s" : "–"),
    el("td", {}, ago(r.lastChange)), el("td", { class: "num" }, r.restarts), el("td", {}, r.problem || ""))));
}

async function refreshServices() {
  const q = encodeURIComponent(state.query);
  const seq = ++state.servicesSeq;
  const d = await get("/v1/services?q=" + q + "&offset=" + state.offset + "&limit=" + PAGE);
  if (seq !== state.servicesSeq) return;  // a newer search or page was asked for meanwhile
  state.matching = d.matching;
  replaceRows(document.querySelector("#services tbody"), d.services.map(s => {
    const row = el("tr", { "data-service": s.name, class: s.name === state.selected ? "selected" : "" },
      el("td", { class: "name" }, s.name), el("td", { class: "num" }, s.instances),
      el("td", { class: "num ok" }, s.healthy), el("td", { class: "num" + (s.warning ? " warn" : "") }, s.warning),
      el("td", { class: "num" + (s.excluded ? " bad" : "") }, s.excluded));
    row.addEventListener("click", () => select(s.name));
    return row;
  }));
  const last = Math.min(d.offset + d.services.length, d.matching);
  document.getElementById("page").textContent = d.matching ? (d.offset + 1) + "–" + last + " of " + d.matching : "none";
  document.getElementById("prev").disabled = d.offset === 0;
  document.getElementById("next").disabled = last >= d.matching;
}

async function refreshChanges() {
  const d = await get("/v1/changes");
  replaceRows(document.querySelector("#changes tbody"), d.changes.map(c => el("tr", { "data-service": c.service, "data-instance": c.instance },
    el("td", {}, clock(c.time)), el("td", {}, c.registry), el("td", {}, c.service), el("td", {}, c.instance),
    el("td", {}, c.node), el("td", { class: "what" }, c.what))));
}

async function refreshTraffic() {
  const d = await get("/v1/traffic");
  const W = 600, H = 140, P = 4;
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", "0 0 " + W + " " + H);
  svg.setAttribute("role", "img");
  // The last five minutes; less while the samples cover less, so a fresh server's first points spread out.
  const now = Date.now() / 1000;
  const span = d.points.length ? Math.max(10, Math.min(300, now - d.points[0].time + d.interval)) : 300;
  let max = 1;
  for (const p of d.points) for (const v of p.qps) max = Math.max(max, v);
  const legend = [];
  d.rcodes.forEach((rcode, i) => {
    const pts = d.points.filter(p => p.time >= now - span);
    if (!pts.some(p => p.qps[i] > 0)) return;
    const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    line.setAttribute("fill", "none");
    line.setAttribute("stroke", COLORS[rcode] || "#000");
    line.setAttribute("stroke-width", "1.5");
    line.setAttribute("points", pts.map(p => ((p.time - (now - span)) / span * W).toFixed(1) + "," +
      (H - P - p.qps[i] / max * (H - 2 * P)).toFixed(1)).join(" "));
    line.setAttribute("data-rcode", rcode);
    svg.appendChild(line);
    for (const p of pts) {
      const dot = document.createElementNS("http://www.w3.org/2000/svg", "circle");
      dot.setAttribute("cx", ((p.time - (now - span)) / span * W).toFixed(1));
      dot.setAttribute("cy", (H - P - p.qps[i] / max * (H - 2 * P)).toFixed(1));
      dot.setAttribute("r", "2");
      dot.setAttribute("fill", COLORS[rcode] || "#000");
      svg.appendChild(dot);
    }
    const latest = pts.length ? pts[pts.length - 1].qps[i] : 0;
    legend.push(el("span", {}, el("i", { style: "background:" + (COLORS[rcode] || "#000") }), rcode + " " + latest.toFixed(1) + "/s"));
  });
  const axis = document.createElementNS("http://www.w3.org/2000/svg", "text");
  axis.setAttribute("x", "4"); axis.setAttribute("y", "12"); axis.setAttribute("font-size", "11"); axis.setAttribute("fill", "#667085");
  axis.textContent = "max " + max.toFixed(1) + " q/s";
  svg.appendChild(axis);
  document.getElementById("chart").replaceChildren(svg);
  document.getElementById("legend").replaceChildren(...(legend.length ? legend : [el("span", { class: "muted" }, "no queries yet")]));
}

function select(name) {
  state.selected = name;
  location.hash = "explain=" + encodeURIComponent(name);
  for (const tr of document.querySelectorAll("#services tbody tr")) tr.classList.toggle("selected", tr.dataset.service === name);
  refreshExplain();
}

async function refreshExplain() {
  if (!state.selected) return;
  const name = state.selected + ".service." + state.domain;
  const seq = ++state.explainSeq;
  const d = await get("/v1/explain?name=" + encodeURIComponent(name) + "&type=SRV");
  if (seq !== state.explainSeq) return;  // another service was clicked meanwhile
  const box = document.getElementById("explain");
  const parse = d.parse;
  const records = d.answer.answers.map(r => r.name + " " + r.ttl + " " + r.type + " " + r.data).join("\n");
  const rows = d.instances.map(i => el("tr", { "data-instance": i.id, class: i.answered ? "answered" : "excluded" },
    el("td", {}, i.id, el("div", { class: "muted" }, i.node + (i.datacenter ? " · " + i.datacenter : ""))),
    el("td", {}, i.address + ":" + i.port, i.locality ? el("div", { class: "muted" }, i.locality + (i.group ? " · " + i.group : "")) : ""),
    el("td", {}, el("span", { class: "pill " + (i.health === "passing" ? "ok" : i.health === "warning" ? "warn" : "bad") }, i.health)),
    el("td", { class: "why" }, i.answered ? el("span", { class: "ok" }, "answered") :
      i.reasons.map(r => el("div", { class: "reason bad" }, r))),
    el("td", { class: "origin" }, i.origin, el("div", { class: "muted" }, "changed " + ago(i.changed)))));
  // Healthy instances per zone (what nearest-first answers group by).
  const zones = {};
  for (const i of d.instances) if (i.locality && i.health !== "critical" && i.health !== "maintenance") zones[i.locality] = (zones[i.locality] || 0) + 1;
  const zoneLine = Object.keys(zones).sort().map(z => z + " " + zones[z]).join(" · ");
  box.replaceChildren(
    el("div", {}, el("b", {}, d.name + " " + d.type), " → ", el("b", {}, d.answer.rcode)),
    zoneLine ? el("div", { class: "muted zones" }, "healthy by zone: " + zoneLine) : "",
    el("div", { class: "muted" }, "read as " + parse.kind + (parse.service ? " " + parse.service : "") +
      (parse.tag ? ", tag " + parse.tag : "") + (parse.datacenter ? ", datacenter " + parse.datacenter : "") + ": " + parse.rule),
    el("pre", {}, records || "(no records)"),
    el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "instance"), el("th", {}, "address"), el("th", {}, "health"),
      el("th", {}, "in the answer?"), el("th", {}, "from"))), el("tbody", {}, rows)));
}

async function tick() {
  const jobs = [refreshRegistries().then(refreshServices), refreshChanges(), refreshTraffic()];
  if (state.selected) jobs.push(refreshExplain());
  const results = await Promise.allSettled(jobs);
  const failed = results.find(r => r.status === "rejected");
  document.getElementById("updated").textContent = failed ? "update failed: " + failed.reason.message : "updated " + new Date().toLocaleTimeString();
}

document.getElementById("search").addEventListener("input", e => { state.query = e.target.value; state.offset = 0; refreshServices(); });
document.getElementById("prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - PAGE); refreshServices(); });
document.getElementById("next").addEventListener("click", () => { if (state.offset + PAGE < state.matching) { state.offset += PAGE; refreshServices(); } });
const m = /explain=([^&]+)/.exec(location.hash);
try { if (m) state.selected = decodeURIComponent(m[1]); } catch (e) { state.selected = null; }
tick();
setInterval(tick, 2000);
</script>
</body>
</html>
"""#
}
