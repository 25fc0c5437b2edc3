// The jetfn console's pages: plain DOM over the JSON API (/api/openapi.json). No framework, no build step.
"use strict";

const ROLES = ["viewer", "operator", "admin"];
let me = null;
let timer = null;
// Bumped on every page change, so an answer that arrives after the person moved on is not drawn over the new page.
let generation = 0;
const stale = (gen) => gen !== generation;

// ---- helpers -------------------------------------------------------------------------------------------------

/** An element: h("td", {class: "num"}, "42"). Text is always set as text, never as HTML. */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

async function api(method, path, body) {
  const init = { method, credentials: "same-origin", headers: {} };
  if (method !== "GET") {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body === undefined ? {} : body);
  }
  const response = await fetch(path, init);
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = { error: text }; }
  if (!response.ok) {
    const err = new Error((data && data.error) || response.statusText);
    err.status = response.status;
    err.roleNeeded = data && data.role_needed;
    err.signIn = data && data.sign_in;
    throw err;
  }
  return data;
}

function toast(message, error) {
  const box = document.getElementById("toast");
  const item = h("div", { class: error ? "error" : "" }, message);
  box.append(item);
  setTimeout(() => item.remove(), error ? 9000 : 4000);
}

function can(role) {
  return me && ROLES.indexOf(me.role) >= ROLES.indexOf(role);
}

/** Seconds as "3m 12s", "2h 5m", "4d 1h". */
function duration(secs) {
  if (secs === null || secs === undefined) return "–";
  secs = Math.max(0, Math.round(secs));
  const d = Math.floor(secs / 86400), hrs = Math.floor((secs % 86400) / 3600);
  const m = Math.floor((secs % 3600) / 60), s = secs % 60;
  if (d) return `${d}d ${hrs}h`;
  if (hrs) return `${hrs}h ${m}m`;
  if (m) return `${m}m ${s}s`;
  return `${s}s`;
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

function when(rfc3339) {
  if (!rfc3339) return "–";
  const at = new Date(rfc3339);
  const ago = (Date.now() - at.getTime()) / 1000;
  const text = at.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
  return ago >= 0 ? `${text} (${duration(ago)} ago)` : `${text} (in ${duration(-ago)})`;
}

function ofLimit(used, max) {
  return max === null || max === undefined ? `${used} / unlimited` : `${used} / ${max}`;
}

function fillBar(fill) {
  if (fill === null || fill === undefined) return h("span", { class: "muted" }, "no limit set");
  const pct = Math.min(100, Math.round(fill * 100));
  // A meter, not a styled bar: the console's Content-Security-Policy allows no inline style.
  return h("span", {}, h("meter", { min: 0, max: 1, low: 0.6, high: 0.8, optimum: 0, value: Math.min(1, fill) }), ` ${pct}% full`);
}

/** A datetime-local input's value as RFC 3339 (UTC), or "". */
function localToRfc3339(value) {
  return value ? new Date(value).toISOString().replace(/\.\d+Z$/, "Z") : "";
}

function table(headers, rows, empty) {
  return h("table", {},
    h("thead", {}, h("tr", {}, headers.map((head) => typeof head === "string" ? h("th", {}, head) : head))),
    h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: headers.length, class: "muted" }, empty))));
}

function stopPolling() {
  if (timer) clearInterval(timer);
  timer = null;
}

function poll(fn, ms) {
  stopPolling();
  fn();
  timer = setInterval(fn, ms);
}

/** Replaces an element's children, skipping null, undefined and false as h() does. */
function put(el, ...children) {
  el.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
  return el;
}

function main(...children) {
  return put(document.getElementById("main"), ...children);
}

// ---- sign-in -------------------------------------------------------------------------------------------------

function signInPage(mode, problem) {
  generation++;
  stopPolling();
  document.getElementById("nav").hidden = true;
  document.getElementById("me").hidden = true;
  const error = h("p", { class: "errors", id: "sign-in-error" }, problem || "");
  const tokenForm = h("form", { id: "sign-in-token" },
    h("label", { for: "token" }, "Token (from `jetfn console token`)"),
    h("input", { id: "token", type: "password", autocomplete: "current-password" }),
    h("p", {}, h("button", { class: "primary", type: "submit" }, "Sign in")));
  const natsForm = h("form", { id: "sign-in-nats" },
    h("label", { for: "nats-user" }, "NATS user"),
    h("input", { id: "nats-user", autocomplete: "username" }),
    h("label", { for: "nats-password" }, "Password"),
    h("input", { id: "nats-password", type: "password", autocomplete: "current-password" }),
    h("label", { for: "nats-creds" }, "…or a creds file's content"),
    h("textarea", { id: "nats-creds", rows: 4 }),
    h("p", {}, h("button", { class: "primary", type: "submit" }, "Sign in")));
  tokenForm.addEventListener("submit", (e) => {
    e.preventDefault();
    signIn({ token: document.getElementById("token").value }, error);
  });
  natsForm.addEventListener("submit", (e) => {
    e.preventDefault();
    const creds = document.getElementById("nats-creds").value.trim();
    signIn(creds ? { creds } : {
      user: document.getElementById("nats-user").value,
      password: document.getElementById("nats-password").value,
    }, error);
  });
  main(h("section", { class: "card signin" },
    h("h1", {}, "Sign in"),
    h("p", { class: "muted" }, mode === "nats"
      ? "Sign in with your own NATS credentials: the server's permissions apply to everything you do here."
      : "Sign in with your console token."),
    mode === "nats" ? natsForm : tokenForm,
    mode ? null : h("details", {}, h("summary", {}, "Sign in with NATS credentials instead"), natsForm),
    error));
}

async function signIn(body, errorBox) {
  try {
    me = await api("POST", "/api/session", body);
    start();
  } catch (err) {
    errorBox.textContent = err.message;
  }
}

async function start() {
  try {
    me = await api("GET", "/api/session");
  } catch (err) {
    me = null;
    signInPage(err.signIn || null, err.status === 401 ? "" : err.message);
    return;
  }
  document.body.classList.toggle("can-operator", can("operator"));
  document.body.classList.toggle("can-admin", can("admin"));
  document.getElementById("nav").hidden = false;
  document.getElementById("me").hidden = false;
  document.getElementById("me-name").textContent = me.name;
  document.getElementById("me-role").textContent = me.role;
  route();
}

/** Two lines over the last hour, one point a minute: processed (blue) and failed (red), on one scale. */
function sparkline(processed, failed) {
  const width = 120, height = 26, n = Math.max(processed.length, 2);
  const top = Math.max(1, ...processed, ...failed);
  const points = (series) => series.map((v, i) => `${(i * (width - 2)) / (n - 1) + 1},${height - 2 - (v / top) * (height - 4)}`).join(" ");
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  svg.setAttribute("role", "img");
  const total = (series) => series.reduce((a, b) => a + b, 0);
  const title = document.createElementNS(ns, "title");
  title.textContent = `last 60 min: ${total(processed)} processed, ${total(failed)} failed (peak ${top}/min)`;
  svg.append(title);
  for (const [series, color] of [[processed, "#2456c8"], [failed, "#b3261e"]]) {
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", points(series));
    line.setAttribute("fill", "none");
    line.setAttribute("stroke", color);
    line.setAttribute("stroke-width", "1.5");
    svg.append(line);
  }
  return svg;
}

/** Per-minute counts of a function's replicas, summed minute by minute (aligned on each minute's start). */
function perMinute(replicas) {
  const byStart = new Map();
  for (const r of replicas) for (const m of r.minutes || []) {
    const at = byStart.get(m.start) || { processed: 0, failed: 0 };
    at.processed += m.succeeded + m.failed;
    at.failed += m.failed;
    byStart.set(m.start, at);
  }
  const starts = Array.from(byStart.keys()).sort().slice(-60);
  return { processed: starts.map((s) => byStart.get(s).processed), failed: starts.map((s) => byStart.get(s).failed) };
}

function replicaHealth(replicas) {
  if (!replicas.length) return h("span", { class: "muted", title: "no replica heartbeat" }, "–");
  const ready = replicas.filter((r) => r.ready).length, open = replicas.filter((r) => r.breaker_open).length;
  return h("span", {},
    h("span", { class: ready === replicas.length ? "ok" : "warn" }, `${ready} / ${replicas.length} ready`), ", ",
    h("span", { class: open ? "bad" : "ok" }, open ? `breaker open on ${open}` : "breakers closed"));
}

// ---- overview ------------------------------------------------------------------------------------------------

// What was typed in a "pause until" field survives the overview's refresh every 2 s.
const pauseUntil = {};

function pauseControls(fn, paused) {
  const until = h("input", { type: "datetime-local", title: "Pause until (empty: until resumed)", "aria-label": `pause ${fn} until`,
    value: pauseUntil[fn] || "", oninput: (e) => { pauseUntil[fn] = e.target.value; } });
  return h("span", { class: "actions", "data-role": "operator" },
    paused
      ? h("button", { type: "button", id: `resume-${fn}`, onclick: () => act("POST", `/api/functions/${encodeURIComponent(fn)}/resume`, {}, `${fn} resumed`) }, "Resume")
      : [until, h("button", { type: "button", id: `pause-${fn}`, onclick: () => {
          const body = until.value ? { until: localToRfc3339(until.value) } : {};
          delete pauseUntil[fn];
          act("POST", `/api/functions/${encodeURIComponent(fn)}/pause`, body, `${fn} paused ${until.value ? "until " + body.until : "until resumed"}`);
        } }, "Pause")]);
}

async function act(method, path, body, done) {
  try {
    const result = await api(method, path, body);
    toast(done);
    route();
    return result;
  } catch (err) {
    toast(err.message, true);
    return null;
  }
}

async function overview() {
  const gen = generation;
  const view = main(h("h1", {}, "Overview"), h("p", { class: "muted", id: "overview-at" }, "loading…"));
  let data;
  try {
    data = await api("GET", "/api/overview");
  } catch (err) {
    if (stale(gen)) return;
    view.append(h("p", { class: "errors" }, err.message));
    return;
  }
  if (stale(gen)) return;
  const dead = data.dead_letters || {};
  const replicas = data.replicas || [];
  const replicasOf = (fn) => replicas.filter((r) => r.function === fn);
  const rows = data.status.consumers.map((c) => {
    const mine = replicasOf(c.function);
    const counts = perMinute(mine);
    const state = c.paused
      ? h("span", { class: "badge warn" }, c.paused_until ? `paused until ${when(c.paused_until)}` : "paused until resumed")
      : h("span", { class: "badge ok" }, "delivering");
    const oldest = c.oldest_age_secs !== null ? duration(c.oldest_age_secs) : (c.oldest_unknown ? "unknown" : "–");
    const letters = dead[c.consumer] || 0;
    return h("tr", { id: `fn-${c.consumer}`, "data-function": c.function },
      h("td", {}, h("strong", {}, c.function), h("div", { class: "muted small" }, `${c.stream} / ${c.consumer}`)),
      h("td", { class: "num waiting" }, c.waiting),
      h("td", { class: "num" }, ofLimit(c.in_flight, c.max_ack_pending)),
      h("td", { class: "num" }, c.redelivered),
      h("td", { class: "num", title: c.oldest_unknown || "" }, oldest),
      h("td", { class: "num" }, letters ? h("a", { href: `#/dlq?function=${encodeURIComponent(c.consumer)}` }, letters) : "0"),
      h("td", { class: "replicas" }, replicaHealth(mine)),
      h("td", {}, counts.processed.length ? [sparkline(counts.processed, counts.failed), ` ${counts.processed[counts.processed.length - 1]}/min`] : h("span", { class: "muted" }, "–")),
      h("td", { class: "state" }, state),
      h("td", {}, pauseControls(c.function, c.paused)));
  });
  const streams = data.status.streams.map((s) => h("tr", {},
    h("td", {}, h("strong", {}, s.name)),
    h("td", { class: "num" }, ofLimit(s.messages, s.max_messages)),
    h("td", { class: "num" }, `${bytes(s.bytes)} / ${s.max_bytes ? bytes(s.max_bytes) : "unlimited"}`),
    h("td", { class: "num" }, `${duration(s.oldest_age_secs)} / ${s.max_age_secs ? duration(s.max_age_secs) : "unlimited"}`),
    h("td", {}, fillBar(s.fill)),
    h("td", {}, s.discard === "new" ? "refuses new" : "drops oldest"),
    h("td", { class: "num" }, s.consumers)));
  put(view, 
    h("h1", {}, "Overview"),
    h("p", { class: "muted", id: "overview-at" }, `As of ${when(data.status.at)}; updated every 2 s.`),
    h("section", { class: "card" }, h("h2", {}, "Functions"),
      table(["Function (stream / consumer)", h("th", { class: "num" }, "Waiting"), h("th", { class: "num" }, "In flight / max"),
        h("th", { class: "num" }, "Redelivered"), h("th", { class: "num" }, "Oldest waiting"), h("th", { class: "num" }, "Dead letters"),
        "Replicas", "Processed · failed per min (1 h)", "State", h("th", { "data-role": "operator" }, "Actions")], rows, "No function on the server (run `jetfn infra apply`).")),
    (data.status.consumers_unknown || []).map((why) => h("p", { class: "warn" }, `Consumer unknown: ${why}`)),
    data.dead_letters_unknown ? h("p", { class: "warn" }, `Dead letters unknown: ${data.dead_letters_unknown}`) : null,
    h("section", { class: "card" }, h("h2", {}, "Replicas"),
      data.replicas_unknown ? h("p", { class: "warn" }, `Replicas unknown: ${data.replicas_unknown}`) : null,
      table(["Function", "Host / instance", "Version", "Health", "Breaker", h("th", { class: "num" }, "In flight"), "Processed · failed per min (1 h)", "Up for", "Last heartbeat"],
        replicas.map((r) => {
          const counts = perMinute([r]);
          return h("tr", { class: "replica" },
            h("td", {}, h("strong", {}, r.function)), h("td", { class: "muted" }, `${r.host} / ${r.instance}`), h("td", {}, r.version),
            h("td", {}, h("span", { class: "badge " + (r.ready ? "ok" : "warn") }, r.ready ? "ready" : "not ready")),
            h("td", {}, h("span", { class: "badge " + (r.breaker_open ? "bad" : "ok") }, r.breaker_open ? "open" : "closed")),
            h("td", { class: "num" }, r.in_flight),
            h("td", {}, sparkline(counts.processed, counts.failed)),
            h("td", { class: "num" }, duration((Date.now() - new Date(r.started)) / 1000)),
            h("td", { class: "num" }, when(r.seen)));
        }), "No replica heartbeat: no function is running, or none writes heartbeats yet.")),
    h("section", { class: "card" }, h("h2", {}, "Streams"),
      table(["Stream", h("th", { class: "num" }, "Messages / max"), h("th", { class: "num" }, "Bytes / max"), h("th", { class: "num" }, "Oldest / max age"),
        "Use of the tightest limit", "When full", h("th", { class: "num" }, "Consumers")], streams, "No stream.")));
}

// ---- dead letters --------------------------------------------------------------------------------------------

function hashQuery() {
  const hash = location.hash.split("?")[1] || "";
  return new URLSearchParams(hash);
}

function filterFromForm() {
  const filter = {};
  for (const name of ["function", "kind", "reason"]) {
    const value = document.getElementById(`f-${name}`).value.trim();
    if (value) filter[name] = value;
  }
  for (const name of ["since", "until"]) {
    const value = localToRfc3339(document.getElementById(`f-${name}`).value);
    if (value) filter[name] = value;
  }
  return filter;
}

async function deadLetters() {
  const gen = generation;
  const params = hashQuery();
  const input = (name, attrs) => h("label", {}, attrs.label, h(attrs.tag || "input", Object.assign({ id: `f-${name}`, name }, attrs.extra || {}), attrs.options || []));
  const kind = params.get("kind") || "";
  const form = h("form", { class: "filters", id: "dlq-filter" },
    input("function", { label: "Function", extra: { value: params.get("function") || "", size: 14 } }),
    input("kind", { label: "Kind", tag: "select", options: ["", "invalid", "permanent", "exhausted", "no-answer"].map((k) => h("option", { value: k, selected: k === kind }, k || "any")) }),
    input("reason", { label: "Reason contains", extra: { value: params.get("reason") || "", size: 18 } }),
    input("since", { label: "Last failure from", extra: { type: "datetime-local" } }),
    input("until", { label: "Last failure before", extra: { type: "datetime-local" } }),
    h("button", { type: "submit", class: "primary" }, "Filter"));
  const results = h("div", { id: "dlq-results" }, h("p", { class: "muted" }, "loading…"));
  const job = h("div", { id: "job" });
  main(h("h1", {}, "Dead letters"), h("section", { class: "card" }, form), job, results);
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const query = new URLSearchParams(filterFromForm()).toString();
    location.hash = `#/dlq${query ? "?" + query : ""}`;
  });
  const filter = {};
  for (const name of ["function", "kind", "reason", "since", "until"]) if (params.get(name)) filter[name] = params.get(name);
  let data;
  try {
    data = await api("GET", `/api/dlq?${new URLSearchParams(filter)}`);
  } catch (err) {
    if (stale(gen)) return;
    put(results, h("p", { class: "errors" }, err.message));
    return;
  }
  if (stale(gen)) return;
  const checks = [];
  const rows = data.records.map((r) => {
    const box = h("input", { type: "checkbox", value: r.dlq_sequence, "aria-label": `select dlq #${r.dlq_sequence}` });
    checks.push(box);
    const open = () => { location.hash = `#/dlq/${r.dlq_sequence}`; };
    return h("tr", { class: "clickable", id: `dlq-${r.dlq_sequence}` },
      h("td", { onclick: (e) => e.stopPropagation() }, box),
      h("td", { class: "num", onclick: open }, `#${r.dlq_sequence}`),
      h("td", { onclick: open }, when(r.last_failure)),
      h("td", { onclick: open }, r.consumer),
      h("td", { onclick: open }, h("span", { class: "badge bad" }, r.kind)),
      h("td", { class: "num", onclick: open }, r.attempts),
      h("td", { class: "wrap muted", onclick: open }, r.event_id || "–"),
      h("td", { class: "wrap", onclick: open }, r.reason));
  });
  const selected = () => checks.filter((c) => c.checked).map((c) => Number(c.value));
  const everything = Object.keys(filter).length ? { filter } : { all: true };
  const label = Object.keys(filter).length ? "all matching the filter" : "all";
  const run = async (kind, body) => {
    try {
      const started = await api("POST", `/api/dlq/${kind}`, body);
      watchJob(started.id, job);
    } catch (err) {
      toast(err.message, true);
    }
  };
  put(results, 
    h("div", { class: "actions" },
      h("span", { class: "muted" }, `${data.records.length} dead letter(s)`),
      h("button", { type: "button", id: "replay-selected", "data-role": "operator", onclick: () => {
        const seqs = selected();
        if (!seqs.length) return toast("Select records first", true);
        run("replay", { sequences: seqs });
      } }, "Replay selected"),
      h("button", { type: "button", id: "replay-all", "data-role": "operator", disabled: !data.records.length, onclick: () => {
        if (confirm(`Replay ${label} (${data.records.length} listed)?`)) run("replay", everything);
      } }, `Replay ${label}`),
      h("button", { type: "button", class: "danger", id: "purge-selected", "data-role": "admin", onclick: () => {
        const seqs = selected();
        if (!seqs.length) return toast("Select records first", true);
        if (confirm(`Delete ${seqs.length} dead letter(s) for good?`)) run("purge", { sequences: seqs });
      } }, "Purge selected"),
      h("button", { type: "button", class: "danger", id: "purge-all", "data-role": "admin", disabled: !data.records.length, onclick: () => {
        if (confirm(`Delete ${label} dead letters for good?`)) run("purge", everything);
      } }, `Purge ${label}`)),
    h("section", { class: "card" }, table([h("th", {}, ""), h("th", { class: "num" }, "DLQ #"), "Last failure", "Function", "Kind", h("th", { class: "num" }, "Attempts"), "Event id", "Last reason"], rows, "No dead letters match.")),
    data.unreadable.length ? h("p", { class: "warn" }, `${data.unreadable.length} record(s) on the DLQ's subjects are not dead letters: ${data.unreadable.map((u) => "#" + u.dlq_sequence).join(", ")}`) : null);
}

/** Polls a replay or purge job until it ends, then shows its summary. */
function watchJob(id, box) {
  const render = (job) => {
    const verb = job.action === "dlq-purge" ? "Purge" : "Replay";
    const parts = [h("h2", {}, `${verb} of ${job.target}`)];
    parts.push(h("progress", { class: "progress", max: job.total || 1, value: job.finished ? (job.total || 1) : job.done }));
    parts.push(h("p", { id: "job-progress" }, `${job.done} / ${job.total} record(s)${job.finished ? ", finished" : "…"}`));
    if (job.error) parts.push(h("p", { class: "errors" }, job.error));
    if (job.report) {
      const r = job.report;
      parts.push(h("p", { id: "job-summary", class: r.failed + r.refused ? "warn" : "ok" },
        `${r.dry_run ? "Dry run: " : ""}${r.done} done, ${r.refused} refused (payload lost), ${r.failed} failed.`));
      const bad = r.steps.filter((s) => s.result === "failed" || s.result === "refused");
      if (bad.length) parts.push(table([h("th", { class: "num" }, "DLQ #"), "Result", "Why"],
        bad.map((s) => h("tr", {}, h("td", { class: "num" }, `#${s.dlq_sequence}`), h("td", {}, s.result), h("td", { class: "wrap" }, s.error || s.reason))), ""));
    }
    put(box, h("section", { class: "card" }, parts));
  };
  const tick = async () => {
    try {
      const job = await api("GET", `/api/jobs/${id}`);
      render(job);
      if (!job.finished) setTimeout(tick, 500);
      else if (location.hash.startsWith("#/dlq")) setTimeout(() => refreshList(), 0);
    } catch (err) {
      put(box, h("p", { class: "errors" }, err.message));
    }
  };
  tick();
}

async function refreshList() {
  const job = document.getElementById("job");
  const keep = job ? Array.from(job.childNodes) : [];
  if (location.hash.match(/^#\/dlq\/\d+/)) return;
  await deadLetters();
  const fresh = document.getElementById("job");
  if (fresh) put(fresh, ...keep);
}

async function deadLetter(seq) {
  const gen = generation;
  const view = main(h("h1", {}, `Dead letter #${seq}`), h("p", { class: "muted" }, "loading…"));
  let d;
  try {
    d = await api("GET", `/api/dlq/${seq}`);
  } catch (err) {
    if (stale(gen)) return;
    view.append(h("p", { class: "errors" }, err.message));
    return;
  }
  if (stale(gen)) return;
  const s = d.summary;
  const facts = [
    ["Function", s.consumer], ["Kind", s.kind], ["Original", `${s.stream} #${s.sequence} on ${s.subject || "(unknown subject)"}`],
    ["Event id", s.event_id ? h("a", { href: `#/event/${encodeURIComponent(s.event_id)}` }, s.event_id) : "–"],
    ["Attempts", `${d.attempts.count} failed, from ${when(d.attempts.first_failure)} to ${when(d.attempts.last_failure)}`],
    ["Last reason", d.attempts.last_reason], ["Written by", s.writer],
    ["Trace", d.trace_url ? h("a", { href: d.trace_url, target: "_blank", rel: "noopener" }, s.trace_id) : (s.trace_id ? `${s.trace_id} (set JETFN_TRACE_URL_TEMPLATE for a link)` : "–")],
  ];
  if (s.payload_lost) facts.push(["Payload", h("span", { class: "bad" }, `lost: ${s.payload_lost}. It cannot be replayed; purge it.`)]);
  const job = h("div", { id: "job" });
  const editor = h("div", { id: "editor" });
  put(view, 
    h("p", {}, h("a", { href: "#/dlq" }, "← Dead letters")),
    h("h1", {}, `Dead letter #${seq}`),
    h("section", { class: "card" }, h("dl", { class: "facts" }, facts.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]))),
    h("div", { class: "actions" },
      h("button", { type: "button", class: "primary", id: "replay-one", "data-role": "operator", disabled: !!s.payload_lost, onclick: async () => {
        try { watchJob((await api("POST", "/api/dlq/replay", { sequences: [Number(seq)] })).id, job); } catch (err) { toast(err.message, true); }
      } }, "Replay"),
      h("button", { type: "button", id: "edit", "data-role": "operator", disabled: !!s.payload_lost, onclick: () => edit(seq, editor) }, "Edit and replay"),
      h("button", { type: "button", class: "danger", id: "purge-one", "data-role": "admin", onclick: async () => {
        if (!confirm(`Delete dead letter #${seq} for good?`)) return;
        try { watchJob((await api("POST", "/api/dlq/purge", { sequences: [Number(seq)] })).id, job); } catch (err) { toast(err.message, true); }
      } }, "Purge")),
    job, editor,
    h("section", { class: "card" }, h("h2", {}, `Failed attempts (the last ${d.attempts.kept} kept, oldest first)`),
      table(["Delivery", "Time", "Reason"], d.attempts.list.map((a) => h("tr", {},
        h("td", { class: "num" }, a.delivery), h("td", {}, when(a.at)), h("td", { class: "wrap" }, a.reason))),
        "Not kept: this record was written before jetfn kept every attempt.")),
    h("section", { class: "card" }, h("h2", {}, `Payload (${bytes(d.payload_bytes)}; personal data masked)`),
      d.payload ? h("pre", { id: "payload" }, JSON.stringify(d.payload, null, 2)) : h("p", { class: "muted" }, s.payload_lost ? "lost" : "not JSON")),
    h("section", { class: "card" }, h("h2", {}, "Headers"),
      table(["Name", "Value"], d.headers.map((x) => h("tr", {}, h("td", {}, x.name), h("td", { class: "wrap" }, x.value))), "No headers.")));
}

async function edit(seq, box) {
  let event;
  try {
    event = (await api("GET", `/api/dlq/${seq}/event`)).event;
  } catch (err) {
    toast(err.message, true);
    return;
  }
  const area = h("textarea", { id: "edit-event", rows: 18, spellcheck: "false" }, JSON.stringify(event, null, 2));
  const errors = h("div", { class: "errors", id: "edit-errors" });
  put(box, h("section", { class: "card" },
    h("h2", {}, "Edit the event, then replay it"),
    h("p", { class: "muted" }, "The edit is checked against the event type's JSON Schema before anything is published; the type and id must stay. " +
      "Sensitive fields show sealed (jetfn:enc:v1:…): leave them as they are, or type a new value in clear and the console seals it with its keyring (JETFN_KEYRING); without one, that edit is refused."),
    area, errors,
    h("div", { class: "actions" },
      h("button", { type: "button", class: "primary", id: "edit-replay", onclick: async () => {
        let parsed;
        try { parsed = JSON.parse(area.value); } catch (err) { errors.textContent = `Not JSON: ${err.message}`; return; }
        try {
          const step = await api("POST", `/api/dlq/${seq}/replay-edited`, { event: parsed });
          toast(`Replayed the edited event as ${step.subject} #${step.sequence}`);
          location.hash = "#/dlq";
        } catch (err) {
          errors.textContent = err.message;
        }
      } }, "Validate and replay"),
      h("button", { type: "button", onclick: () => put(box) }, "Cancel"))));
}

// ---- event lookup --------------------------------------------------------------------------------------------

async function eventLookup(id) {
  const gen = generation;
  const input = h("input", { id: "event-id", size: 42, value: id || "", placeholder: "a CloudEvents id" });
  const form = h("form", { class: "filters", id: "event-form" }, h("label", {}, "Event id", input), h("button", { class: "primary", type: "submit" }, "Look up"));
  form.addEventListener("submit", (e) => { e.preventDefault(); location.hash = `#/event/${encodeURIComponent(input.value.trim())}`; });
  const result = h("div", { id: "event-result" });
  main(h("h1", {}, "Event lookup"), h("section", { class: "card" }, form), result);
  if (!id) return;
  result.append(h("p", { class: "muted" }, "looking…"));
  let r;
  try {
    r = await api("GET", `/api/events/${encodeURIComponent(id)}`);
  } catch (err) {
    if (stale(gen)) return;
    put(result, h("p", { class: "errors" }, err.message));
    return;
  }
  if (stale(gen)) return;
  const parts = [];
  if (!r.copies.length) parts.push(h("p", { class: "warn" }, `Not found (${r.scanned} message(s) read).`));
  for (const c of r.copies) {
    parts.push(h("section", { class: "card copy" },
      h("h2", {}, `${c.stream} #${c.sequence} on ${c.subject}${c.replay_of ? ` (replay of dead letter #${c.replay_of})` : ""}`),
      h("p", {}, `Stored ${when(c.stored)}. Trace: `, c.trace_url ? h("a", { href: c.trace_url, target: "_blank", rel: "noopener" }, c.trace_id) : (c.trace_id || "–")),
      table(["Function", "Consumer", "State", h("th", { class: "num" }, "Attempts"), "Last error", "Dead letter"],
        c.consumers.map((f) => h("tr", {},
          h("td", {}, f.function), h("td", {}, f.consumer),
          h("td", {}, h("span", { class: "badge " + (f.state === "acknowledged" ? "ok" : f.state === "dead-lettered" ? "bad" : "warn") }, f.state + (f.paused ? " (paused)" : ""))),
          h("td", { class: "num" }, f.attempts === null ? "–" : f.attempts),
          h("td", { class: "wrap" }, f.last_error || "–"),
          h("td", {}, f.dlq_sequence ? h("a", { href: `#/dlq/${f.dlq_sequence}` }, `#${f.dlq_sequence}`) : "–"))), "No consuming function."),
      ...c.consumers.filter((f) => (f.failed_attempts || []).length).map((f) => h("div", {},
        h("h3", {}, `Failed attempts of ${f.function} (oldest first)`),
        table(["Delivery", "Time", "Reason"], f.failed_attempts.map((a) => h("tr", {},
          h("td", { class: "num" }, a.delivery), h("td", {}, when(new Date(a.at_ms).toISOString())), h("td", { class: "wrap" }, a.reason))),
          "None kept.")))));
  }
  parts.push(h("section", { class: "card" }, h("h2", {}, "Effects the ledger recorded"),
    table(["Function", "Effect", "State", "email.sent", "Written"], r.effects.map((e) => h("tr", {}, h("td", {}, e.function), h("td", {}, e.effect), h("td", {}, e.state), h("td", {}, e.email_sent == null ? "-" : e.email_sent ? "recorded" : "not recorded"), h("td", {}, when(e.written)))), "None looked up.")));
  if (r.dead_letters.length) parts.push(h("section", { class: "card" }, h("h2", {}, "Dead letters"),
    h("ul", {}, r.dead_letters.map((d) => h("li", {}, h("a", { href: `#/dlq/${d.dlq_sequence}` }, `#${d.dlq_sequence}`), ` ${d.consumer}: ${d.kind}, ${d.reason}`)))));
  parts.push(h("section", { class: "card" }, h("h2", {}, "What cannot be told"), h("ul", { class: "muted" }, r.unknown.map((u) => h("li", {}, u)))));
  put(result, ...parts);
}

// ---- schedules ----------------------------------------------------------------------------------------------

async function schedulesPage() {
  const gen = generation;
  const list = h("div", { id: "schedule-list" }, h("p", { class: "muted" }, "loading…"));
  const kind = h("select", { id: "s-kind" }, [["every", "every (interval: 5m)"], ["in", "once, in (30m)"], ["at", "once, at (a time)"], ["cron", "cron (6 fields or @daily)"]]
    .map(([v, label]) => h("option", { value: v }, label)));
  const value = h("input", { id: "s-when", size: 22, placeholder: "5m" });
  const at = h("input", { id: "s-at", type: "datetime-local", hidden: true });
  const zone = h("input", { id: "s-zone", size: 16, placeholder: "Europe/Amsterdam" });
  const type = h("input", { id: "s-type", size: 24, placeholder: "cleanup.requested" });
  const name = h("input", { id: "s-name", size: 18, placeholder: "(default: generated)" });
  const replace = h("input", { id: "s-replace", type: "checkbox" });
  const data = h("textarea", { id: "s-data", rows: 5 }, "{}");
  const errors = h("div", { class: "errors", id: "s-errors" });
  kind.addEventListener("change", () => { at.hidden = kind.value !== "at"; value.hidden = kind.value === "at"; });
  const form = h("form", { id: "schedule-form" },
    h("div", { class: "filters" },
      h("label", {}, "Event type", type), h("label", {}, "When", kind), h("label", {}, "Value", value, at),
      h("label", {}, "Time zone (cron)", zone), h("label", {}, "Name", name), h("label", {}, "Replace a schedule of that name", replace)),
    h("label", { class: "muted" }, "Event data (JSON, checked against the type's schema)"), data, errors,
    h("div", { class: "actions" }, h("button", { type: "submit", class: "primary", id: "s-add" }, "Add schedule")));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    let parsed;
    try { parsed = JSON.parse(data.value); } catch (err) { errors.textContent = `data: not JSON (${err.message})`; return; }
    const body = { event_type: type.value.trim(), data: parsed, replace: replace.checked };
    if (name.value.trim()) body.name = name.value.trim();
    if (kind.value === "at") body.at = localToRfc3339(at.value);
    else body[kind.value] = value.value.trim();
    if (kind.value === "cron" && zone.value.trim()) body.time_zone = zone.value.trim();
    try {
      const added = await api("POST", "/api/schedules", body);
      errors.textContent = "";
      toast(`Schedule ${added.name} added`);
      load();
    } catch (err) {
      errors.textContent = err.message;
    }
  });
  main(h("h1", {}, "Schedules"),
    h("section", { class: "card", "data-role": "admin" }, h("h2", {}, "Add a schedule"), form),
    list);
  const load = async () => {
    try {
      const schedules = await api("GET", "/api/schedules?next=3");
      if (stale(gen)) return;
      put(list, h("section", { class: "card" }, h("p", { class: "muted" }, "The schedules NATS holds (stream SCHEDULES); next run times in UTC."),
        table(["Name", "Event type", "When", "Next runs", "Target", "Defined in", h("th", { "data-role": "admin" }, "")],
          schedules.map((s) => h("tr", { class: "schedule", id: `schedule-${s.name}` },
            h("td", {}, h("strong", {}, s.name)), h("td", {}, s.event_type || "–"),
            h("td", {}, s.spec + (s.time_zone ? ` (${s.time_zone})` : "")),
            h("td", {}, s.next_runs.length ? h("ul", { class: "plain" }, s.next_runs.map((r) => h("li", {}, when(r)))) : h("span", { class: "muted" }, "none (fired)")),
            h("td", { class: "muted" }, s.target), h("td", { class: "muted" }, s.defined_in || "added by hand"),
            h("td", { "data-role": "admin" }, h("button", { type: "button", class: "danger", id: `cancel-${s.name}`, onclick: async () => {
              if (!confirm(`Cancel schedule ${s.name}?`)) return;
              try { await api("DELETE", `/api/schedules/${encodeURIComponent(s.name)}`, {}); toast(`Schedule ${s.name} cancelled`); load(); } catch (err) { toast(err.message, true); }
            } }, "Cancel")))), "No schedules.")));
    } catch (err) {
      if (!stale(gen)) put(list, h("p", { class: "errors" }, err.message));
    }
  };
  poll(load, 5000);
}

// ---- audit ---------------------------------------------------------------------------------------------------

async function auditLog() {
  const params = hashQuery();
  const action = h("select", { id: "a-action" }, ["", "pause", "resume", "dlq-replay", "dlq-purge", "schedule-add", "schedule-cancel", "infra-apply"]
    .map((a) => h("option", { value: a, selected: a === (params.get("action") || "") }, a || "any")));
  const who = h("input", { id: "a-who", value: params.get("who") || "", size: 14 });
  const form = h("form", { class: "filters" }, h("label", {}, "Action", action), h("label", {}, "Who", who), h("button", { class: "primary", type: "submit" }, "Filter"));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const q = new URLSearchParams();
    if (action.value) q.set("action", action.value);
    if (who.value.trim()) q.set("who", who.value.trim());
    location.hash = `#/audit${q.toString() ? "?" + q : ""}`;
  });
  const list = h("div", { id: "audit-list" }, h("p", { class: "muted" }, "loading…"));
  main(h("h1", {}, "Audit log"), h("section", { class: "card" }, form), list);
  const query = new URLSearchParams();
  for (const name of ["action", "who"]) if (params.get(name)) query.set(name, params.get(name));
  const gen = generation;
  const load = async () => {
    try {
      const entries = (await api("GET", `/api/audit?${query}`)).reverse();
      if (stale(gen)) return;
      put(list, h("section", { class: "card" }, h("p", { class: "muted" }, "Newest first; updated every 5 s."),
        table(["Time", "Who", "NATS user", "Action", "Target", "Result", "Detail"], entries.map((e) => h("tr", { class: "audit-entry" },
          h("td", { class: "num" }, when(e.time)), h("td", {}, e.actor), h("td", { class: "muted" }, e.user), h("td", {}, e.action),
          h("td", { class: "wrap" }, e.target), h("td", {}, h("span", { class: "badge " + (e.result === "ok" ? "ok" : e.result === "partial" ? "warn" : "bad") }, e.result)),
          h("td", { class: "wrap muted" }, e.detail))), "No audit entries.")));
    } catch (err) {
      if (!stale(gen)) put(list, h("p", { class: "errors" }, err.message));
    }
  };
  poll(load, 5000);
}

// ---- infra (admin) -------------------------------------------------------------------------------------------

async function infraPage() {
  const gen = generation;
  const result = h("div", { id: "infra-result" });
  const list = h("div", { id: "infra-plan" }, h("p", { class: "muted" }, "loading…"));
  const show = (plan) => put(list, h("section", { class: "card" },
    h("p", { class: "muted" }, `${plan.dir}: ${plan.summary}.`),
    plan.refused ? h("p", { class: "errors" }, "Apply would refuse, applying nothing: the server cannot make the changes marked impossible (recreate the object, or revert the file).") : "",
    table(["Kind", "Name", "Change", "Fields"], plan.changes.map((c) => h("tr", { class: "infra-change" },
      h("td", {}, c.kind), h("td", {}, c.name),
      h("td", {}, h("span", { class: "badge " + (c.action === "unchanged" ? "ok" : c.action === "impossible" ? "bad" : "warn") }, c.action)),
      h("td", { class: "wrap muted" }, c.fields.map((f) => h("div", {}, `${f.field}: ${f.old} → ${f.new}${f.refused ? ` (refused: ${f.refused})` : ""}`))))), "No definitions.")));
  const load = async () => {
    try {
      const plan = await api("GET", "/api/infra/plan");
      if (!stale(gen)) show(plan);
    } catch (err) {
      if (!stale(gen)) put(list, h("p", { class: "errors" }, err.message));
    }
  };
  main(h("h1", {}, "Infra"),
    h("p", { class: "muted" }, "The streams, KV buckets, consumers and schedules the console's infra definitions name, against the server: what `jetfn infra plan` shows. Apply makes the changes, as `jetfn infra apply` does, and is audited."),
    h("div", { class: "actions" },
      h("button", { type: "button", id: "infra-refresh", onclick: load }, "Plan again"),
      h("button", { type: "button", class: "primary", id: "infra-apply", onclick: async () => {
        if (!confirm("Apply the infra definitions to the server?")) return;
        try {
          const applied = await api("POST", "/api/infra/apply", {});
          put(result, h("p", {}, `Applied: ${applied.applied}.`));
          toast(`Applied: ${applied.applied}`);
          load();
        } catch (err) {
          put(result, h("p", { class: "errors" }, err.message));
        }
      } }, "Apply")),
    result, list);
  load();
}

// ---- routing -------------------------------------------------------------------------------------------------

function route() {
  generation++;
  if (!me) return;
  stopPolling();
  const path = location.hash.replace(/^#/, "").split("?")[0] || "/overview";
  const [, page, arg] = path.split("/");
  for (const link of document.querySelectorAll("nav a")) link.classList.toggle("active", link.dataset.page === page);
  if (page === "dlq" && arg) deadLetter(arg);
  else if (page === "dlq") deadLetters();
  else if (page === "event") eventLookup(arg ? decodeURIComponent(arg) : "");
  else if (page === "audit") auditLog();
  else if (page === "schedules") schedulesPage();
  else if (page === "infra") infraPage();
  else poll(overview, 2000);
}

window.addEventListener("hashchange", route);
window.addEventListener("DOMContentLoaded", () => {
  document.getElementById("sign-out").addEventListener("click", async () => {
    try { await api("DELETE", "/api/session", {}); } catch (_) { /* signed out either way */ }
    me = null;
    start();
  });
  start();
});
