// Hand-written SVG charts for the labtasker dashboard: scatter with mean and spread, parallel
// coordinates, and the timeline. No library, no network: plain DOM calls.
"use strict";
const SVGNS = "http://www.w3.org/2000/svg";
const PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777",
  "#65a30d", "#9f1239", "#475569"];
const STATE_COLOURS = { pending: "#0891b2", launching: "#a21caf", running: "#2563eb",
  succeeded: "#16a34a", failed: "#dc2626", cancelled: "#ca8a04", lost: "#9f1239" };

function svgEl(tag, attrs, parent) {
  const node = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  if (parent) parent.appendChild(node);
  return node;
}

function scaleOf(values, lo, hi, log) {
  const f = log ? Math.log10 : (v) => v;
  let min = Math.min(...values.map(f)), max = Math.max(...values.map(f));
  if (!isFinite(min)) { min = 0; max = 1; }
  if (min === max) { min -= 0.5; max += 0.5; }
  const s = (v) => lo + (f(v) - min) / (max - min) * (hi - lo);
  s.ticks = () => [0, 0.25, 0.5, 0.75, 1].map((t) => {
    const raw = min + t * (max - min);
    return log ? Math.pow(10, raw) : raw;
  });
  return s;
}

function fmt(v) {
  if (typeof v !== "number") return String(v);
  if (v !== 0 && (Math.abs(v) < 1e-3 || Math.abs(v) >= 1e5)) return v.toExponential(1);
  return String(Math.round(v * 1000) / 1000);
}

function axes(svg, sx, sy, w, h, m, xlabel, ylabel) {
  const g = svgEl("g", { class: "axis" }, svg);
  svgEl("line", { x1: m.l, y1: h - m.b, x2: w - m.r, y2: h - m.b }, g);
  svgEl("line", { x1: m.l, y1: m.t, x2: m.l, y2: h - m.b }, g);
  for (const t of sx.ticks()) {
    svgEl("text", { x: sx(t), y: h - m.b + 14, "text-anchor": "middle" }, g).textContent = fmt(t);
  }
  for (const t of sy.ticks()) {
    svgEl("text", { x: m.l - 4, y: sy(t) + 4, "text-anchor": "end" }, g).textContent = fmt(t);
  }
  svgEl("text", { x: (m.l + w - m.r) / 2, y: h - 4, "text-anchor": "middle" }, g).textContent = xlabel;
  svgEl("text", { x: 12, y: m.t - 6 }, g).textContent = ylabel;
}

// points: [{x, y, group, task}]; draws each point, and per group the mean over equal x with
// a band of +- one standard deviation (the spread over the other args, seeds say).
function scatterPlot(container, points, opts) {
  const w = 720, h = 380, m = { l: 60, r: 140, t: 20, b: 36 };
  const svg = svgEl("svg", { width: w, height: h, class: "scatter" });
  container.appendChild(svg);
  if (!points.length) return svg;
  const xs = points.map((p) => p.x);
  const log = xs.every((x) => x > 0) && Math.max(...xs) / Math.min(...xs) >= 100;
  const sx = scaleOf(xs, m.l, w - m.r, log), sy = scaleOf(points.map((p) => p.y), h - m.b, m.t, false);
  axes(svg, sx, sy, w, h, m, opts.x + (log ? " (log)" : ""), opts.y);
  const groups = [...new Set(points.map((p) => p.group))];
  groups.forEach((gname, gi) => {
    const colour = PALETTE[gi % PALETTE.length];
    const mine = points.filter((p) => p.group === gname);
    const byX = new Map();
    for (const p of mine) { if (!byX.has(p.x)) byX.set(p.x, []); byX.get(p.x).push(p.y); }
    const stats = [...byX.entries()].sort((a, b) => a[0] - b[0]).map(([x, ys]) => {
      const mean = ys.reduce((a, b) => a + b, 0) / ys.length;
      const sd = Math.sqrt(ys.reduce((a, b) => a + (b - mean) ** 2, 0) / ys.length);
      return { x, mean, sd };
    });
    if (stats.length > 1) {
      const upper = stats.map((s) => `${sx(s.x)},${sy(s.mean + s.sd)}`);
      const lower = stats.slice().reverse().map((s) => `${sx(s.x)},${sy(s.mean - s.sd)}`);
      svgEl("polygon", { points: [...upper, ...lower].join(" "), fill: colour, "fill-opacity": 0.12, class: "spread" }, svg);
      svgEl("polyline", { points: stats.map((s) => `${sx(s.x)},${sy(s.mean)}`).join(" "), fill: "none", stroke: colour, "stroke-width": 2, class: "mean" }, svg);
    }
    for (const p of mine) {
      const c = svgEl("circle", { cx: sx(p.x), cy: sy(p.y), r: 4, fill: colour, "fill-opacity": 0.8, class: "pt",
        "data-task": p.task, "data-x": p.x, "data-y": p.y }, svg);
      svgEl("title", {}, c).textContent = `task ${p.task}: ${opts.x}=${p.x} ${opts.y}=${p.y}`;
    }
    if (opts.by) {
      const ly = m.t + 16 * gi;
      svgEl("rect", { x: w - m.r + 12, y: ly - 9, width: 10, height: 10, fill: colour }, svg);
      svgEl("text", { x: w - m.r + 26, y: ly }, svg).textContent = `${opts.by}=${gname}`;
    }
  });
  return svg;
}

// rows: [[v, ...]], cols: names; the last column colours the lines.
function parallelPlot(container, rows, cols) {
  const w = Math.max(480, 130 * cols.length), h = 340, m = { l: 40, r: 40, t: 24, b: 20 };
  const svg = svgEl("svg", { width: w, height: h, class: "parallel" });
  container.appendChild(svg);
  const step = (w - m.l - m.r) / Math.max(1, cols.length - 1);
  const scales = cols.map((_, j) => {
    const vals = rows.map((r) => r[j]).filter((v) => typeof v === "number");
    return scaleOf(vals.length ? vals : [0, 1], h - m.b, m.t, false);
  });
  const last = cols.length - 1;
  const colourScale = scaleOf(rows.map((r) => r[last]).filter((v) => typeof v === "number"), 0, 1, false);
  for (const r of rows) {
    if (r.some((v) => typeof v !== "number")) continue;
    const t = Math.max(0, Math.min(1, colourScale(r[last])));
    const pts = r.map((v, j) => `${m.l + j * step},${scales[j](v)}`).join(" ");
    svgEl("polyline", { points: pts, fill: "none", stroke: `hsl(${220 - 200 * t}, 70%, 45%)`, "stroke-opacity": 0.6, class: "pline" }, svg);
  }
  cols.forEach((c, j) => {
    const x = m.l + j * step, g = svgEl("g", { class: "axis" }, svg);
    svgEl("line", { x1: x, y1: m.t, x2: x, y2: h - m.b }, g);
    svgEl("text", { x, y: m.t - 8, "text-anchor": "middle" }, g).textContent = c;
    for (const tk of [scales[j].ticks()[0], scales[j].ticks()[4]]) {
      svgEl("text", { x: x + 4, y: scales[j](tk) + 4 }, g).textContent = fmt(tk);
    }
  });
  return svg;
}

// bars: [{task, attempt, host, gpus, state, start, end}]; one lane per host GPU and per CPU
// slot; bars that overlap in a lane (tasks packed on one GPU) stack in sub-rows.
function timelinePlot(container, bars, now, idle) {
  const lanes = new Map((idle || []).map((name) => [name, []]));
  const cpuSlots = new Map();
  const sorted = bars.slice().sort((a, b) => a.start - b.start);
  for (const b of sorted) {
    const end = b.end == null ? now : b.end;
    let keys = b.gpus.map((g) => `${b.host} gpu ${g}`);
    if (!keys.length) {
      const slots = cpuSlots.get(b.host) || [];
      let i = slots.findIndex((free) => free <= b.start);
      if (i < 0) { i = slots.length; slots.push(0); }
      slots[i] = end; cpuSlots.set(b.host, slots);
      keys = [`${b.host} cpu ${i}`];
    }
    for (const k of keys) { if (!lanes.has(k)) lanes.set(k, []); lanes.get(k).push({ ...b, end }); }
  }
  const names = [...lanes.keys()].sort();
  const rowH = 16, m = { l: 120, r: 20, t: 10, b: 24 }, w = 1000;
  const layout = names.map((n) => {
    const rows = [];
    for (const b of lanes.get(n)) {
      let r = rows.findIndex((free) => free <= b.start);
      if (r < 0) { r = rows.length; rows.push(0); }
      rows[r] = b.end; b.row = r;
    }
    return { name: n, depth: Math.max(1, rows.length) };
  });
  const h = m.t + m.b + layout.reduce((a, l) => a + l.depth * rowH + 6, 0);
  const svg = svgEl("svg", { width: w, height: h, class: "timeline" });
  container.appendChild(svg);
  if (!bars.length) return svg;
  const t0 = Math.min(...bars.map((b) => b.start)), t1 = Math.max(now, t0 + 1);
  const sx = (t) => m.l + (t - t0) / (t1 - t0) * (w - m.l - m.r);
  let y = m.t;
  for (const lane of layout) {
    svgEl("text", { x: 4, y: y + rowH - 4 }, svg).textContent = lane.name;
    svgEl("rect", { x: m.l, y, width: w - m.l - m.r, height: lane.depth * rowH, fill: "#f3f4f6" }, svg);
    for (const b of lanes.get(lane.name)) {
      const r = svgEl("rect", { x: sx(b.start), y: y + b.row * rowH + 1, width: Math.max(2, sx(b.end) - sx(b.start)),
        height: rowH - 2, fill: STATE_COLOURS[b.state] || "#999", class: `tbar s-${b.state}`, "data-task": b.task }, svg);
      svgEl("title", {}, r).textContent = `task ${b.task} attempt ${b.attempt}: ${b.state}`;
    }
    y += lane.depth * rowH + 6;
  }
  const g = svgEl("g", { class: "axis" }, svg);
  for (const t of [0, 0.25, 0.5, 0.75, 1]) {
    const at = t0 + t * (t1 - t0), anchor = t === 1 ? "end" : t === 0 ? "start" : "middle";
    svgEl("text", { x: sx(at), y: h - 6, "text-anchor": anchor }, g).textContent = new Date(at * 1000).toLocaleTimeString();
  }
  return svg;
}

window.charts = { scatterPlot, parallelPlot, timelinePlot, STATE_COLOURS, fmt };
