// The dashboard: every REFRESH ms it reads the admin API (/config, /clusters,
// /requests/failed, /ready, /certs, /metrics) and redraws the page. Rates and quantiles
// come from the difference between two scrapes of /metrics; their history lives here, in
// the browser, for WINDOW seconds: the proxy keeps nothing for the page.
"use strict";

const REFRESH = 1500;            // ms between refreshes
const WINDOW = 300;              // seconds of history in the charts
const SHARE_WINDOW = 60;         // seconds of the "last minute" split shares
const FAILED_SHOWN = 10;

const history = {};              // listener -> [{t, rps, errors, p50, p99, o50, o99}]
const scrapes = [];              // [{t, listeners, requests}] of the last SHARE_WINDOW s

// -- DOM ---------------------------------------------------------------------------------
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    else el.setAttribute(k, v);
  }
  el.append(...children.flat().filter(c => c !== undefined && c !== null).map(
    c => (c instanceof Node ? c : String(c))));
  return el;
}

function fill(id, ...children) {
  document.querySelector(`#${id} .body`).replaceChildren(...children.flat());
}

function bar(fraction, cls) {
  const inner = h("div");
  inner.style.width = `${Math.max(0, Math.min(1, fraction)) * 100}%`;
  return h("div", {class: `bar ${cls || ""}`}, inner);
}

// -- formatting ---------------------------------------------------------------------------
const clock = iso => (iso ? new Date(iso).toISOString().slice(11, 19) : "—");
const pct = (x, digits = 1) => (x === null || x === undefined || isNaN(x) ? "—" : `${(x * 100).toFixed(digits)}%`);

function seconds(s) {
  if (s === null || s === undefined || isNaN(s)) return "—";
  if (s < 1e-3) return `${(s * 1e6).toFixed(0)} µs`;
  if (s < 1) return `${(s * 1e3).toFixed(s < 0.01 ? 2 : 1)} ms`;
  return `${s.toFixed(2)} s`;
}

function duration(s) {
  const abs = Math.abs(s);
  if (abs < 90) return `${abs.toFixed(abs < 10 ? 1 : 0)} s`;
  if (abs < 5400) return `${Math.round(abs / 60)} min`;
  if (abs < 172800) return `${Math.floor(abs / 3600)} h ${Math.floor((abs % 3600) / 60)} min`;
  return `${Math.round(abs / 86400)} days`;
}

// -- /metrics ----------------------------------------------------------------------------
function parseMetrics(text) {
  const samples = [];
  for (const line of text.split("\n")) {
    const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const labels = {};
    for (const [, k, v] of (m[2] || "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) {
      labels[k] = v.replace(/\\(.)/g, (_, c) => (c === "n" ? "\n" : c));
    }
    samples.push({name: m[1], labels, value: parseFloat(m[3])});
  }
  return samples;
}

// Per listener: requests, 5xx answers, and the two histograms' buckets (summed over clusters);
// requests by "listener/cluster" for the splits.
function summarise(samples) {
  const listeners = {}, requests = {};
  const of = name => (listeners[name] ??= {requests: 0, errors: 0, duration: {}, overhead: {}});
  const add = (buckets, le, v) => { buckets[le] = (buckets[le] || 0) + v; };
  for (const {name, labels, value} of samples) {
    if (labels.listener === undefined) continue;
    if (name === "fastproxy_requests_total") {
      const l = of(labels.listener);
      l.requests += value;
      if (Number(labels.code) >= 500) l.errors += value;
      const key = `${labels.listener}/${labels.cluster}`;
      requests[key] = (requests[key] || 0) + value;
    } else if (name === "fastproxy_request_duration_seconds_bucket") {
      add(of(labels.listener).duration, labels.le, value);
    } else if (name === "fastproxy_proxy_overhead_seconds_bucket") {
      add(of(labels.listener).overhead, labels.le, value);
    }
  }
  return {listeners, requests};
}

// The q-quantile of the observations between two scrapes of a histogram (linear within a
// bucket, as Prometheus's histogram_quantile); null when nothing was observed.
function quantile(q, now, before) {
  const les = Object.keys(now).sort((a, b) => parseFloat(a) - parseFloat(b));
  const counts = les.map(le => now[le] - ((before && before[le]) || 0));
  const total = counts[counts.length - 1];
  if (!(total > 0)) return null;
  const rank = q * total;
  let lower = 0, below = 0;
  for (let i = 0; i < les.length; i++) {
    const upper = parseFloat(les[i]);
    if (counts[i] >= rank) {
      if (upper === Infinity) return lower;
      return lower + (upper - lower) * (rank - below) / Math.max(counts[i] - below, 1e-12);
    }
    lower = upper;
    below = counts[i];
  }
  return lower;
}

function record(t, summary) {
  const last = scrapes[scrapes.length - 1];
  scrapes.push({t, ...summary});
  while (scrapes.length > 2 && scrapes[1].t < t - SHARE_WINDOW) scrapes.shift();
  if (!last) return;
  const dt = t - last.t;
  for (const [name, now] of Object.entries(summary.listeners)) {
    const before = last.listeners[name] || {requests: 0, errors: 0, duration: {}, overhead: {}};
    const n = now.requests - before.requests;
    if (n < 0 || dt <= 0) continue;   // a restarted proxy: its counters began again
    const points = (history[name] ??= []);
    points.push({
      t, rps: n / dt, errors: n ? (now.errors - before.errors) / n : null,
      p50: quantile(0.5, now.duration, before.duration), p99: quantile(0.99, now.duration, before.duration),
      o50: quantile(0.5, now.overhead, before.overhead), o99: quantile(0.99, now.overhead, before.overhead),
    });
    while (points.length && points[0].t < t - WINDOW) points.shift();
  }
}

// -- charts (SVG, by hand) ---------------------------------------------------------------
const SVG = "http://www.w3.org/2000/svg";

// The time axis spans what the page has seen, from half a minute up to WINDOW.
const span = (points, now) => Math.min(WINDOW, Math.max(30, points.length ? now - points[0].t : 0));

function chart(title, points, series, format, now) {
  const W = 300, H = 56, x0 = now - span(points, now);
  const values = series.flatMap(s => points.map(p => p[s.key])).filter(v => v !== null && v !== undefined);
  const top = Math.max(...values, 0) * 1.15 || 1;
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("preserveAspectRatio", "none");
  series.forEach((s, i) => {
    const line = document.createElementNS(SVG, "polyline");
    line.setAttribute("class", s.cls || `s${i}`);
    line.setAttribute("points", points.filter(p => p[s.key] !== null && p[s.key] !== undefined)
      .map(p => `${((p.t - x0) / (now - x0) * W).toFixed(1)},${(H - 2 - p[s.key] / top * (H - 4)).toFixed(1)}`)
      .join(" "));
    svg.append(line);
  });
  const latest = points[points.length - 1];
  const shown = series.map((s, i) => h("span", {class: s.label ? `key${i}` : "value"},
    `${s.label ? `${s.label} ` : ""}${latest ? format(latest[s.key]) : "—"}`));
  return h("div", {class: "chart", "data-chart": title},
    h("div", {class: "label"}, h("span", null, title), h("span", null, ...shown.flatMap((e, i) => (i ? [" · ", e] : [e])))),
    svg);
}

// -- the sections ------------------------------------------------------------------------
function showListeners(config, now) {
  fill("listeners", config.config.listeners.map(l => {
    const points = history[l.name] || [];
    return h("div", {class: "listener", "data-listener": l.name},
      h("h3", null, l.name, " ", h("small", null, `${l.bind.host}:${l.bind.port} · ${l.direction}`,
        l.tls !== "off" ? ` · ${l.tls}` : "", ` · last ${duration(span(points, now))}`)),
      h("div", {class: "charts"},
        chart("requests/s", points, [{key: "rps"}], v => (v === null ? "—" : v.toFixed(v < 10 ? 1 : 0)), now),
        chart("errors (5xx)", points, [{key: "errors", cls: "s-bad"}], v => pct(v), now),
        chart("latency", points, [{key: "p50", label: "p50"}, {key: "p99", label: "p99"}], seconds, now),
        chart("proxy overhead", points, [{key: "o50", label: "p50"}, {key: "o99", label: "p99"}], seconds, now)));
  }));
}

function shares(listener, members, scrape, since) {
  const count = (s, c) => (s ? s.requests[`${listener}/${c}`] || 0 : 0);
  const n = members.map(m => count(scrape, m.cluster) - count(since, m.cluster));
  const total = n.reduce((a, b) => a + b, 0);
  return {n, total, share: n.map(x => (total > 0 ? x / total : null))};
}

function showSplits(config) {
  const latest = scrapes[scrapes.length - 1], oldest = scrapes[0];
  const splits = config.config.listeners.flatMap(l => l.routes.filter(r => r.split.length)
    .map(r => ({listener: l.name, route: r})));
  if (!splits.length) return fill("splits", h("p", {class: "muted"}, "No route splits its traffic."));
  fill("splits", splits.map(({listener, route}) => {
    const weights = route.split.reduce((a, m) => a + m.weight, 0);
    const all = shares(listener, route.split, latest, null);
    const recent = shares(listener, route.split, latest, oldest !== latest ? oldest : null);
    return h("div", {class: "split", "data-route": `${listener}/${route.name}`},
      h("h3", null, `${listener} / ${route.name}`, " ",
        h("small", null, `${all.total.toLocaleString("en")} requests`)),
      h("table", null,
        h("tr", null, h("th", null, "cluster"), h("th", null, "weight"), h("th"),
          h("th", null, "observed"), h("th"), h("th", null, "last min")),
        route.split.map((m, i) => h("tr", {"data-cluster": m.cluster},
          h("td", null, m.cluster),
          h("td", {class: "weight"}, pct(m.weight / weights, 0)), h("td", null, bar(m.weight / weights, "weight")),
          h("td", {class: "share"}, pct(all.share[i])), h("td", null, bar(all.share[i] || 0)),
          h("td", {class: "recent"}, pct(recent.share[i]))))),
      h("p", {class: "muted"}, "Observed: fastproxy_requests_total of the listener, by cluster."));
  }));
}

function circuitFacts(c, now) {
  const facts = [h("span", null, "failures in window ", h("b", {class: "failures"}, c.failures),
    c.max_failures !== undefined ? ` / max ${c.max_failures} in ${duration(c.window)}` : "")];
  facts.push(h("span", null, "trips ", h("b", null, c.trips)));
  if (c.opened_at) {
    const probe = (new Date(c.probe_at) - now) / 1000;
    facts.push(h("span", {class: "opened"}, c.state === "closed" ? "last opened " : "opened ",
      clock(c.opened_at)));
    if (c.state === "open") facts.push(h("span", {class: "probe"}, `probes in ${duration(probe)} (${clock(c.probe_at)})`));
    if (c.state === "half_open") facts.push(h("span", {class: "probe"}, `probing since ${clock(c.probe_at)}`));
  }
  return facts;
}

function showClusters(clusters, now) {
  const stateClass = {closed: "ok", open: "bad", half_open: "warn"};
  fill("clusters", clusters.clusters.map(c => {
    const eps = c.endpoints;
    const sum = k => eps.reduce((a, e) => a + (e[k] || 0), 0);
    const breaker = c.circuit.max_failures !== undefined;
    return h("div", {class: "cluster", "data-cluster": c.name},
      h("h3", null, c.name, " ",
        h("span", {class: `badge state ${breaker ? stateClass[c.circuit.state] : ""}`},
          breaker ? c.circuit.state.replace("_", "-") : "no breaker")),
      h("div", {class: "facts"}, breaker ? circuitFacts(c.circuit, now) : [],
        h("span", null, `connections: ${sum("active")} active, ${sum("idle")} idle`,
          sum("http2_connections") ? `, ${sum("http2_connections")} HTTP/2` : "")),
      h("table", null,
        h("tr", null, ["endpoint", "health", "ejections", "active", "idle", "HTTP/2"].map(t => h("th", null, t))),
        eps.map(e => h("tr", {"data-endpoint": e.address},
          h("td", {class: "mono"}, e.address),
          h("td", {class: `health ${e.healthy ? "ok" : "bad"}`},
            e.healthy ? "healthy" : `ejected until ${clock(e.ejected_until)}`),
          h("td", null, e.ejections), h("td", null, e.active), h("td", null, e.idle),
          h("td", null, e.http2_connections || 0)))));
  }));
}

function showIdentity(certs, now) {
  if (!certs) return fill("identity", h("p", {class: "muted"}, "No identity is configured: no mTLS."));
  if (!certs.identity) return fill("identity", h("p", {class: "warn"}, certs.error || "No certificate yet."));
  const id = certs.identity;
  const from = new Date(id.not_before), to = new Date(id.not_after);
  const left = (to - now) / 1000, life = (to - from) / 1000;
  const cls = left <= 0 ? "bad" : left < 0.1 * life ? "warn" : "ok";
  fill("identity", h("dl", null,
    h("dt", null, "SPIFFE id"), h("dd", {class: "spiffe mono"}, id.id),
    h("dt", null, "serial"), h("dd", {class: "mono"}, id.serial),
    h("dt", null, "valid"), h("dd", null, `${id.not_before} → ${id.not_after}`),
    h("dt", null, "expires"), h("dd", null,
      h("span", {class: `expiry ${cls}`}, left > 0 ? `in ${duration(left)}` : `${duration(left)} ago`),
      h("span", {class: "muted"}, ` · ${pct(Math.max(0, left) / life, 0)} of the lifetime left`),
      bar(Math.max(0, left) / life, cls === "ok" ? "" : cls)),
    h("dt", null, "rotations"), h("dd", null, `${certs.rotations} applied, ${certs.rotation_failures} refused`),
    h("dt", null, "trust bundle"), h("dd", {class: "trust"},
      certs.trust.map(t => h("div", null, h("span", {class: "mono"}, t.subject),
        h("span", {class: "muted"}, ` until ${t.not_after.slice(0, 10)}`))))));
}

function showFailed(failed) {
  const rows = [...failed.requests].sort((a, b) => (a.time < b.time ? 1 : -1)).slice(0, FAILED_SHOWN);
  if (!rows.length) return fill("failed", h("p", {class: "muted"}, "None."));
  fill("failed", h("table", null,
    h("tr", null, ["time", "status", "reason", "listener", "route", "cluster", "request", "trace id"].map(t => h("th", null, t))),
    rows.map(r => h("tr", {class: "request"},
      h("td", {class: "mono"}, r.time.slice(11, 23)),
      h("td", {class: "status bad"}, r.status), h("td", {class: "reason"}, r.reason || "—"),
      h("td", null, r.listener), h("td", null, r.route ?? "—"), h("td", null, r.cluster ?? "—"),
      h("td", {class: "mono"}, `${r.method || ""} ${r.path || ""}`),
      h("td", {class: "trace mono"}, r.trace_id || "—")))),
    failed.requests.length > FAILED_SHOWN
      ? h("p", {class: "muted"}, `${FAILED_SHOWN} newest of the ${failed.requests.length} kept.`) : null);
}

function showConfig(config) {
  const refused = config.last_refused;
  fill("config", h("dl", null,
    h("dt", null, "generation"), h("dd", {class: "generation"}, config.generation),
    h("dt", null, "loaded"), h("dd", null, config.loaded_at),
    h("dt", null, "file"), h("dd", {class: "mono"}, config.path),
    h("dt", null, "last refused reload"), h("dd", {class: "refused"},
      refused ? [h("span", {class: "bad"}, refused.time),
        config.last_error ? " (the file's current content)" : " (a later reload succeeded)",
        h("pre", null, refused.error)] : h("span", {class: "muted"}, "none"))));
}

// -- the loop ----------------------------------------------------------------------------
async function get(path) {
  const response = await fetch(path, {cache: "no-store"});
  return path === "/metrics" ? response.text() : response.json();
}

async function refresh() {
  const [config, clusters, failed, ready, metrics] = await Promise.all([
    get("/config"), get("/clusters"), get("/requests/failed"), get("/ready"), get("/metrics")]);
  // only with an identity: without one /certs is a 404, which the browser reports as an error
  const certs = config.config.identity ? await get("/certs") : null;
  const now = new Date();
  record(now / 1000, summarise(parseMetrics(metrics)));
  document.getElementById("who").textContent =
    certs && certs.identity ? certs.identity.id : config.path;
  const badge = document.getElementById("ready");
  badge.textContent = ready.ready ? "ready" : `not ready: ${ready.reason}`;
  badge.className = `badge ${ready.ready ? "ok" : "bad"}`;
  document.getElementById("updated").textContent = `updated ${now.toISOString().slice(11, 19)} UTC`;
  showListeners(config, now / 1000);
  showSplits(config);
  showClusters(clusters, now);
  showIdentity(certs, now);
  showFailed(failed);
  showConfig(config);
}

async function loop() {
  const problem = document.getElementById("problem");
  try {
    await refresh();
    problem.hidden = true;
  } catch (error) {
    problem.textContent = `The admin API did not answer (${error.message}); showing the last figures.`;
    problem.hidden = false;
  }
  setTimeout(loop, REFRESH);
}

loop();
