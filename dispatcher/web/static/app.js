// The labtasker dashboard: a hash-routed page over the JSON API; the overview is pushed by
// server-sent events. Every request carries the token; writes are same-origin POSTs.
"use strict";
const TOKEN = document.querySelector('meta[name="labtasker-token"]').content;
const STATES = ["pending", "launching", "running", "succeeded", "failed", "cancelled", "lost"];
const main = document.getElementById("main");
let latest = null, readOnly = false, timer = null;

function h(tag, attrs, ...kids) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== null && v !== undefined && v !== false) node.setAttribute(k, v === true ? "" : v);
  }
  for (const kid of kids.flat()) if (kid !== null && kid !== undefined) node.append(kid instanceof Node ? kid : String(kid));
  return node;
}

async function api(path, params) {
  const q = new URLSearchParams(params || {});
  q.set("token", TOKEN);
  const res = await fetch(`${path}?${q}`, { headers: { "X-Labtasker-Token": TOKEN } });
  const body = await res.json();
  if (!res.ok) throw new Error(body.error || res.statusText);
  return body;
}

async function act(id, action, body) {
  const res = await fetch(`/api/task/${id}/${action}?token=${encodeURIComponent(TOKEN)}`, {
    method: "POST", headers: { "Content-Type": "application/json", "X-Labtasker-Token": TOKEN },
    body: JSON.stringify(body || {}),
  });
  const said = await res.json();
  if (!res.ok) { alert(said.error); return null; }
  return said;
}

function duration(s) {
  if (s == null) return "";
  s = Math.max(0, Math.floor(s));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h${String(Math.floor(s % 3600 / 60)).padStart(2, "0")}m`;
  return `${Math.floor(s / 86400)}d${String(Math.floor(s % 86400 / 3600)).padStart(2, "0")}h`;
}
const argText = (args) => Object.entries(args || {}).map(([k, v]) => `${k}=${typeof v === "string" ? v : JSON.stringify(v)}`).join(" ");
const stateCell = (s) => h("td", { class: `state s-${s}` }, s);
const taskLink = (id) => h("a", { href: `#task/${id}` }, String(id));

function actions(t, after) {
  if (readOnly) return h("td");
  const buttons = [];
  if (["pending", "launching", "running"].includes(t.state)) {
    buttons.push(h("button", { class: "cancel", "data-task": t.id, onclick: async () => { if (await act(t.id, "cancel")) after(); } }, "cancel"));
  }
  if (["failed", "cancelled", "lost"].includes(t.state)) {
    buttons.push(h("button", { class: "retry", "data-task": t.id, onclick: async () => { if (await act(t.id, "retry")) after(); } }, "retry"));
  }
  if (t.state === "pending") {
    buttons.push(h("button", { class: "priority", "data-task": t.id, onclick: async () => {
      const v = prompt(`priority of task ${t.id}`, String(t.priority));
      if (v !== null && /^-?\d+$/.test(v.trim()) && await act(t.id, "priority", { priority: parseInt(v, 10) })) after();
    } }, "priority"));
  }
  return h("td", {}, buttons);
}

// -- overview -------------------------------------------------------------------------------

function renderOverview() {
  const o = latest;
  main.replaceChildren();
  if (!o) { main.append(h("p", { class: "dim" }, "Loading…")); return; }
  if (o.error) { main.append(h("p", { class: "error" }, o.error)); return; }
  const total = STATES.reduce((a, s) => a + (o.counts[s] || 0), 0);
  const done = ["succeeded", "failed", "cancelled", "lost"].reduce((a, s) => a + (o.counts[s] || 0), 0);
  main.append(h("div", { class: "cards" }, STATES.map((s) => h("div", { class: "card" },
    h("div", { class: `n s-${s}`, id: `count-${s}` }, String(o.counts[s] || 0)), h("div", { class: "dim" }, s)))));
  const bar = h("div", { class: "bar" });
  for (const s of ["succeeded", "failed", "cancelled", "lost", "running", "launching"]) {
    const span = h("span", { title: s });
    span.style.width = `${total ? 100 * (o.counts[s] || 0) / total : 0}%`;
    span.style.background = charts.STATE_COLOURS[s];
    bar.append(span);
  }
  main.append(bar, h("p", { id: "progress" }, `${done} of ${total} done`,
    o.eta != null ? ` · ETA ${duration(o.eta)}` : "", o.dispatcher ? "" : " · no dispatcher is running"));
  for (const [reason, n] of o.pending_reasons || []) main.append(h("p", { class: "s-pending" }, `${n} pending: ${reason}`));
  main.append(h("h2", {}, "GPUs"), gpuPanel(o.hosts || {}));
  main.append(h("h2", {}, `Running (${o.active.length})`));
  const rows = o.active.map((t) => h("tr", {}, h("td", {}, taskLink(t.id)), stateCell(t.state),
    h("td", {}, t.host ? `${t.host}${t.gpus && t.gpus.length ? ":" + t.gpus.join(",") : ""}` : ""),
    h("td", {}, t.started_at ? duration(Date.now() / 1000 - Date.parse(t.started_at) / 1000) : ""),
    h("td", { class: "wrap" }, argText(t.args)), h("td", { class: "wrap dim" }, o.last_lines[String(t.id)] || ""),
    actions(t, () => {})));
  main.append(h("table", { id: "running" }, h("tr", {}, ["id", "state", "where", "elapsed", "args", "last output", ""].map((c) => h("th", {}, c))), rows));
}

function gpuPanel(hosts) {
  const names = Object.keys(hosts).sort();
  if (!names.length) return h("p", { class: "dim" }, "No GPU view: it shows while a dispatcher runs.");
  const legend = h("div", { class: "legend" }, [["ours", "var(--ours)"], ["another user's", "var(--other)"], ["free", "var(--free)"]].map(([n, c]) => {
    const sw = h("span", { class: "sw" }); sw.style.background = c; return h("span", {}, sw, n);
  }));
  const boxes = names.map((name) => {
    const v = hosts[name];
    const gpus = (v.gpus || []).map((g) => {
      const total = g.total_mib || 1, used = g.used_mib || 0;
      const mine = g.task != null || (g.shared_by || []).length > 0;
      const mem = h("div", { class: "mem" });
      const part = h("span", { class: mine ? "ours" : g.other ? "other" : "ours" });
      part.style.width = `${100 * used / total}%`;
      mem.append(part);
      const who = g.task != null ? `task ${g.task}` : (g.shared_by || []).length ? `tasks ${g.shared_by.join(", ")}` : g.other ? String(g.other) : "free";
      return h("div", { class: "gpu", "data-host": name, "data-gpu": g.index }, h("span", {}, `gpu ${g.index}`), mem,
        h("span", { class: "dim" }, `${(used / 1024).toFixed(1)}/${(total / 1024).toFixed(1)} GiB · ${who}`));
    });
    return h("div", { class: "host" }, h("b", {}, name), " ", h("span", { class: "dim" }, v.status || ""),
      v.error ? h("div", { class: "error" }, v.error) : null,
      gpus.length ? gpus : h("div", { class: "dim" }, "no GPUs: CPU slots only"));
  });
  return h("div", {}, legend, h("div", { class: "hosts" }, boxes));
}

// -- timeline, queue, task, results ---------------------------------------------------------

async function renderTimeline() {
  const t = await api("/api/timeline");
  main.replaceChildren(h("h2", {}, "Timeline"), h("p", { class: "dim" }, "One lane per host GPU and CPU slot, one bar per attempt, coloured by state."));
  const box = h("div", { id: "timeline" });
  main.append(box);
  // Every GPU the dispatcher sees gets a lane, so an idle one shows as an empty lane.
  const idle = [];
  for (const [host, view] of Object.entries((latest && latest.hosts) || {})) {
    for (const g of view.gpus || []) idle.push(`${host} gpu ${g.index}`);
  }
  charts.timelinePlot(box, t.bars, t.now, idle);
}

async function renderQueue(params) {
  const p = Object.assign({ sort: "id", offset: "0", limit: "50" }, params);
  const page = await api("/api/queue", p);
  const go = (change) => { location.hash = "queue?" + new URLSearchParams(Object.assign({}, p, change)); };
  const stateSel = h("select", { name: "state" }, h("option", { value: "" }, "any state"),
    STATES.map((s) => h("option", { value: s, selected: p.state === s }, s)));
  const inputs = ["name", "sweep", "q"].map((n) => h("input", { name: n, placeholder: n === "q" ? "args contain…" : n, value: p[n] || "" }));
  const form = h("form", { class: "filters", onsubmit: (e) => {
    e.preventDefault();
    const f = { state: stateSel.value, offset: "0" };
    for (const i of inputs) f[i.name] = i.value;
    go(f);
  } }, stateSel, inputs, h("button", { type: "submit" }, "filter"));
  const cols = [["id", "id"], ["state", "state"], ["name", "name"], ["priority", "priority"], ["host", "where"], ["attempt", "attempt"], [null, "args"], [null, "reason"], [null, ""]];
  const head = h("tr", {}, cols.map(([key, label]) => key ? h("th", { class: "sort", onclick: () => go({ sort: key, desc: p.sort === key && p.desc !== "1" ? "1" : "0" }) },
    label + (p.sort === key ? (p.desc === "1" ? " ↓" : " ↑") : "")) : h("th", {}, label)));
  const reload = () => renderQueue(params);
  const rows = page.tasks.map((t) => h("tr", { "data-task": t.id }, h("td", {}, taskLink(t.id)), stateCell(t.state), h("td", {}, t.name || ""),
    h("td", {}, String(t.priority)), h("td", {}, t.host ? `${t.host}${t.gpus && t.gpus.length ? ":" + t.gpus.join(",") : ""}` : ""),
    h("td", {}, String(t.attempt)), h("td", { class: "wrap" }, argText(t.args)), h("td", { class: "wrap dim" }, t.reason || ""), actions(t, reload)));
  const off = parseInt(p.offset, 10), lim = parseInt(p.limit, 10);
  const pager = h("p", {}, h("button", { disabled: off <= 0, onclick: () => go({ offset: String(Math.max(0, off - lim)) }) }, "‹ prev"),
    ` ${page.total ? off + 1 : 0}–${off + page.tasks.length} of ${page.total} `,
    h("button", { disabled: off + lim >= page.total, onclick: () => go({ offset: String(off + lim) }) }, "next ›"));
  main.replaceChildren(h("h2", {}, "Queue"), form, h("table", { id: "queue" }, head, rows), pager);
}

async function renderTask(id) {
  const d = await api(`/api/task/${id}`);
  const t = d.task;
  const field = (k, v) => h("tr", {}, h("th", {}, k), h("td", { class: "wrap" }, v == null ? "" : typeof v === "object" ? JSON.stringify(v) : String(v)));
  const log = h("pre", { class: "log", id: "log" });
  main.replaceChildren(h("h2", {}, `Task ${t.id} `, h("span", { class: `s-${t.state}` }, t.state)),
    h("table", { id: "task" }, h("tr", {}, actions(t, () => renderTask(id))), field("name", t.name), field("args", argText(t.args)), field("command", t.command),
      field("reason", t.reason), field("where", t.host ? `${t.host}${t.gpus && t.gpus.length ? ":" + t.gpus.join(",") : ""}` : ""),
      field("attempt", `${t.attempt} of ${t.max_attempts}`), field("priority", t.priority), field("result", t.result), field("exit code", t.exit_code)),
    h("h2", {}, "Attempts"),
    h("table", { id: "attempts" }, h("tr", {}, ["#", "outcome", "where", "exit", "ran", "reason"].map((c) => h("th", {}, c))),
      d.attempts.map((a) => h("tr", {}, h("td", {}, String(a.attempt)), stateCell(a.outcome), h("td", {}, a.host || ""),
        h("td", {}, a.exit_code == null ? "" : String(a.exit_code)), h("td", {}, a.started_at && a.finished_at ? duration(a.finished_at - a.started_at) : ""),
        h("td", { class: "wrap" }, a.reason || "")))),
    h("h2", {}, "Output"), log);
  let offset = 0;
  const more = async () => {
    if (location.hash !== `#task/${id}`) return;
    const chunk = await api(`/api/task/${id}/log`, { offset: String(offset) });
    log.append(chunk.text); offset = chunk.offset;
    if (!chunk.done) timer = setTimeout(more, 2000);
  };
  more();
}

async function renderResults() {
  const r = await api("/api/results");
  main.replaceChildren(h("h2", {}, "Results"));
  if (!r.metrics.length) { main.append(h("p", { class: "dim" }, "No finished task has reported a result yet.")); return; }
  const choose = (name, options, value) => h("select", { name }, options.map((o) => h("option", { value: o, selected: o === value }, o)));
  const metric = choose("metric", r.metrics, r.metrics[0]), xarg = choose("x", r.args, r.args[0]);
  // Split by the first other arg that is not a seed: the seeds are what the mean is taken over.
  const other = r.args.find((a) => a !== r.args[0] && !/seed/i.test(a)) || "";
  const by = choose("by", ["", ...r.args], other);
  const order = choose("order", ["highest", "lowest"], "highest");
  const plot = h("div", { id: "plot" }), best = h("div", { id: "best" }), par = h("div", { id: "parallel" });
  const col = (n) => r.columns.indexOf(n);
  const draw = () => {
    const mi = col(metric.value), xi = col(xarg.value), bi = by.value ? col(by.value) : -1, ti = col("id");
    const pts = r.rows.filter((row) => typeof row[mi] === "number" && typeof row[xi] === "number")
      .map((row) => ({ x: row[xi], y: row[mi], group: bi >= 0 ? String(row[bi]) : "all", task: row[ti] }));
    plot.replaceChildren(); charts.scatterPlot(plot, pts, { x: xarg.value, y: metric.value, by: by.value });
    const sorted = r.rows.filter((row) => typeof row[mi] === "number").sort((a, b) => order.value === "highest" ? b[mi] - a[mi] : a[mi] - b[mi]).slice(0, 10);
    const shown = ["id", ...r.args, ...r.metrics];
    best.replaceChildren(h("table", {}, h("tr", {}, shown.map((c) => h("th", {}, c))),
      sorted.map((row) => h("tr", {}, shown.map((c) => h("td", {}, c === "id" ? taskLink(row[col(c)]) : charts.fmt(row[col(c)])))))));
    const pcols = [...r.args.filter((a) => r.rows.some((row) => typeof row[col(a)] === "number")), metric.value];
    par.replaceChildren(); charts.parallelPlot(par, r.rows.map((row) => pcols.map((c) => row[col(c)])), pcols);
  };
  for (const s of [metric, xarg, by, order]) s.addEventListener("change", draw);
  const table = h("table", { id: "results" }, h("tr", {}, r.columns.map((c) => h("th", {}, c))),
    r.rows.slice(0, 200).map((row) => h("tr", {}, row.map((v, i) => h("td", {}, r.columns[i] === "id" ? taskLink(v) : v == null ? "" : typeof v === "object" ? JSON.stringify(v) : charts.fmt(v))))));
  main.append(h("div", { class: "controls" }, h("label", {}, "metric ", metric), h("label", {}, "against ", xarg), h("label", {}, "split by ", by)), plot,
    h("h2", {}, "Best 10 by ", metric.value, " ", order), best, h("h2", {}, "Parallel coordinates"), par,
    h("h2", {}, `All rows (${r.rows.length})`), table);
  draw();
}

// -- routing and the live stream ------------------------------------------------------------

async function route() {
  clearTimeout(timer);
  const hash = location.hash.slice(1);
  const cut = hash.search(/[?/]/);
  const page = (cut < 0 ? hash : hash.slice(0, cut)) || "overview";
  const rest = cut < 0 ? "" : hash.slice(cut + 1);
  for (const a of document.querySelectorAll("header nav a")) a.classList.toggle("on", a.getAttribute("href") === `#${page}`);
  try {
    if (page === "overview") renderOverview();
    else if (page === "timeline") { await renderTimeline(); timer = setTimeout(route, 3000); }
    else if (page === "queue") await renderQueue(Object.fromEntries(new URLSearchParams(rest)));
    else if (page === "task") await renderTask(parseInt(rest, 10));
    else if (page === "results") await renderResults();
    else main.replaceChildren(h("p", {}, "No such page."));
  } catch (err) {
    main.replaceChildren(h("p", { class: "error" }, String(err.message || err)));
  }
}

const events = new EventSource(`/api/events?token=${encodeURIComponent(TOKEN)}`);
events.addEventListener("overview", (e) => {
  latest = JSON.parse(e.data);
  readOnly = !!latest.read_only;
  document.getElementById("live").textContent = `live · ${new Date().toLocaleTimeString()}`;
  const page = location.hash.slice(1) || "overview";
  if (page === "overview") renderOverview();
});
events.onerror = () => { document.getElementById("live").textContent = "disconnected: retrying…"; };
window.addEventListener("hashchange", route);
route();
