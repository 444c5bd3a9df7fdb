// The eserveless console: hash routes over the /api, the token in sessionStorage only.
// Everything on screen is built with DOM calls (never innerHTML): names, logs and answers are
// text, whatever they contain.

import { chart } from "./chart.js";

const TOKEN = "eserveless.token";
const main = document.getElementById("main");
const statusLine = document.getElementById("status");
let me = null; // {user, admin}
let cleanups = []; // what the current page started (timers, streams), stopped on leaving it

// ---------------------------------------------------------------------------------------------
// DOM helpers

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (v === true) el.setAttribute(k, "");
    else el.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

let ids = 0;
/** A labelled input: `label` text, then the control. */
function field(label, control) {
  if (!control.id) control.id = `f${++ids}`;
  return h("label", { for: control.id }, label, control);
}

function say(text) {
  statusLine.textContent = text;
}

function when(t) {
  if (!t) return "—";
  const d = new Date(t);
  return isNaN(d) ? t : d.toLocaleString();
}

function short(commit) {
  return commit ? commit.slice(0, 12) : "—";
}

function state(s) {
  return h("span", { class: `state-${s}` }, s);
}

function page(title, ...children) {
  main.replaceChildren(h("h1", {}, title), ...children);
  document.title = `${title} · eserveless`;
}

function errorBox() {
  return h("p", { class: "error", role: "alert" });
}

function table(headers, rows, attrs = {}) {
  return h("div", { class: "scroll" },
    h("table", { class: "cards", ...attrs },
      h("thead", {}, h("tr", {}, headers.map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, rows.map((cells) => h("tr", {}, cells.map((c, i) => h("td", { "data-label": headers[i] }, c)))))));
}

const enc = encodeURIComponent;

// ---------------------------------------------------------------------------------------------
// The API

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function token() {
  return sessionStorage.getItem(TOKEN);
}

async function api(path, { method = "GET", body, tokenOverride, signal } = {}) {
  const headers = { Authorization: `Bearer ${tokenOverride || token() || ""}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), signal });
  const text = await r.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch { /* not JSON */ }
  if (!r.ok) {
    const e = json && json.error;
    throw new ApiError(r.status, e ? e.code : "http_" + r.status, e ? e.message : `${r.status} ${r.statusText}: ${text.slice(0, 200)}`);
  }
  return json;
}

/** Runs `fn`; an error lands in `box` (the API's own message), a dead token logs out. */
async function attempt(box, fn) {
  if (box) box.textContent = "";
  try {
    return await fn();
  } catch (e) {
    if (e instanceof ApiError && e.status === 401 && token()) {
      logout(e.message);
      return undefined;
    }
    if (e.name === "AbortError") return undefined;
    const msg = e instanceof ApiError ? `${e.message} (${e.code})` : String(e.message || e);
    if (box) box.textContent = msg; else say(msg);
    return undefined;
  }
}

// ---------------------------------------------------------------------------------------------
// Log in and out

function showLogin(message) {
  document.getElementById("nav").hidden = true;
  const input = h("input", { type: "password", name: "token", autocomplete: "off", required: true, spellcheck: "false" });
  const err = errorBox();
  if (message) err.textContent = message;
  const form = h("form", { id: "login", onsubmit: async (ev) => {
    ev.preventDefault();
    const t = input.value.trim();
    const who = await attempt(err, () => api("/api/whoami", { tokenOverride: t }));
    if (!who) return;
    sessionStorage.setItem(TOKEN, t);
    me = who;
    showNav();
    say(`Logged in as ${who.user}.`);
    if (!location.hash || location.hash === "#/login") location.hash = "#/projects"; else route();
  } },
  field("API token", input),
  h("p", { class: "muted" }, "Kept in this browser tab only (sessionStorage) and forgotten when you log out. An admin's first token is in the data directory's admin-token file."),
  h("button", { type: "submit" }, "Log in"),
  err);
  page("Log in", form);
  input.focus();
}

function showNav() {
  document.getElementById("nav").hidden = false;
  document.getElementById("who").textContent = `${me.user}${me.admin ? " (admin)" : ""}`;
  for (const el of document.querySelectorAll(".admin-only")) el.hidden = !me.admin;
}

function logout(message) {
  sessionStorage.removeItem(TOKEN);
  me = null;
  stopPage();
  // The next login starts from the projects, not from the last page (which may not be theirs).
  history.replaceState(null, "", "#/login");
  say(message ? "" : "Logged out.");
  showLogin(message);
}

// ---------------------------------------------------------------------------------------------
// Routing

function stopPage() {
  for (const c of cleanups) c();
  cleanups = [];
}

function every(ms, fn) {
  const id = setInterval(fn, ms);
  cleanups.push(() => clearInterval(id));
}

const routes = [
  [/^#\/projects$/, projectsPage],
  [/^#\/deploy$/, deployPage],
  [/^#\/users$/, usersPage],
  [/^#\/tokens$/, tokensPage],
  [/^#\/projects\/([^/]+)$/, projectPage],
  [/^#\/projects\/([^/]+)\/deployments\/(\d+)$/, deploymentPage],
  [/^#\/projects\/([^/]+)\/functions\/([^/]+)$/, functionPage],
];

async function route() {
  stopPage();
  if (!token()) return showLogin();
  if (!me) {
    me = await attempt(null, () => api("/api/whoami"));
    if (!me) return;
    showNav();
  }
  const hash = location.hash || "#/projects";
  for (const [re, fn] of routes) {
    const m = hash.match(re);
    if (m) {
      main.replaceChildren(h("p", { class: "muted" }, "Loading…"));
      await fn(...m.slice(1).map(decodeURIComponent));
      main.focus({ preventScroll: true });
      return;
    }
  }
  page("Not found", h("p", {}, "No such page. ", h("a", { href: "#/projects" }, "Projects")));
}

// ---------------------------------------------------------------------------------------------
// Projects

async function projectsPage() {
  const err = errorBox();
  const list = await attempt(err, () => api("/api/projects"));
  if (!list) return page("Projects", err);
  const rows = list.projects.map((p) => [
    h("a", { href: `#/projects/${enc(p.name)}` }, p.name),
    p.owner || "—",
    p.repository,
    short(p.live_commit),
    p.latest_deployment ? state(p.latest_deployment.status) : "—",
  ]);
  page("Projects",
    list.projects.length ? table(["Name", "Owner", "Repository", "Live commit", "Latest deployment"], rows, { id: "projects" })
      : h("p", { id: "projects" }, "No projects yet. ", h("a", { href: "#/deploy" }, "Deploy one.")),
    err);
}

async function projectPage(name) {
  const err = errorBox();
  const p = await attempt(err, () => api(`/api/projects/${enc(name)}`));
  if (!p) return page(name, err);
  const live = p.live;
  const facts = h("dl", { class: "facts" },
    h("dt", {}, "Repository"), h("dd", {}, p.repository, p.ref ? ` @ ${p.ref}` : ""),
    h("dt", {}, "Owner"), h("dd", {}, p.owner || "—"),
    h("dt", {}, "Live deployment"), h("dd", { id: "live" }, live
      ? h("span", {}, h("a", { href: `#/projects/${enc(name)}/deployments/${live.deployment}` }, `#${live.deployment}`), ` ${live.source} ${short(live.commit)} (${live.runtime || "?"})`)
      : "none"),
    h("dt", {}, "Latest deployment"), h("dd", {}, p.latest_deployment
      ? h("span", {}, h("a", { href: `#/projects/${enc(name)}/deployments/${p.latest_deployment.id}` }, `#${p.latest_deployment.id}`), " ", state(p.latest_deployment.status))
      : "—"));
  const fnRows = p.functions.map((f) => [
    h("a", { href: `#/projects/${enc(name)}/functions/${enc(f.name)}` }, f.name),
    f.type,
    f.type === "cron" ? f.schedule : f.invoke_path,
    f.instances ? `${f.instances.ready} ready, ${f.instances.starting} starting, ${f.instances.paused} paused` : "—",
  ]);
  const history = h("div", { id: "history" });
  const secrets = h("div", { id: "secrets" });
  const del = h("button", { type: "button", class: "danger", onclick: async () => {
    if (del.dataset.armed !== "1") { del.dataset.armed = "1"; del.textContent = `Really delete ${name}? Press again`; return; }
    const r = await attempt(err, () => api(`/api/projects/${enc(name)}`, { method: "DELETE" }));
    if (r) { say(`Deleted ${name}.`); location.hash = "#/projects"; }
  } }, "Delete project");
  page(`Project ${name}`, facts,
    h("h2", {}, "Functions"), table(["Function", "Type", "Invoke path / schedule", "Instances"], fnRows, { id: "functions" }),
    h("h2", {}, "Deployments"), history,
    h("h2", {}, "Secrets"), secrets,
    h("h2", {}, "Danger"), del, err);
  await Promise.all([renderHistory(name, history), renderSecrets(name, secrets)]);
}

async function renderHistory(name, box) {
  const err = errorBox();
  const d = await attempt(err, () => api(`/api/projects/${enc(name)}/deployments?limit=50`));
  if (!d) return box.replaceChildren(err);
  const rows = d.deployments.map((x) => [
    h("a", { href: `#/projects/${enc(name)}/deployments/${x.id}` }, `#${x.id}`),
    `${x.source} ${short(x.commit)}${x.ref ? ` (${x.ref})` : ""}${x.rollback_of ? ` rollback of #${x.rollback_of}` : ""}`,
    h("span", {}, state(x.status), x.live ? h("strong", {}, " live") : ""),
    when(x.created_at),
    x.submitted_by || "—",
    (!x.live && x.status === "ready" && x.images_present !== false)
      ? h("button", { type: "button", class: "secondary", onclick: async () => {
        const r = await attempt(err, () => api(`/api/projects/${enc(name)}/rollback`, { method: "POST", body: { deployment: x.id } }));
        if (r) { say(`Rolled back: deployment #${r.deployment} serves #${r.rollback_of}.`); route(); }
      } }, `Roll back to #${x.id}`)
      : "",
  ]);
  box.replaceChildren(table(["Id", "Source", "Status", "Created", "By", ""], rows), err);
}

async function renderSecrets(name, box) {
  const err = errorBox();
  const list = await attempt(err, () => api(`/api/projects/${enc(name)}/secrets`));
  if (!list) return box.replaceChildren(err);
  const rows = list.secrets.map((s) => [
    h("code", {}, s.name), when(s.updated_at),
    h("button", { type: "button", class: "danger", "aria-label": `Remove secret ${s.name}`, onclick: async () => {
      const r = await attempt(err, () => api(`/api/projects/${enc(name)}/secrets/${enc(s.name)}`, { method: "DELETE" }));
      if (r) { say(`Secret ${s.name} removed.`); renderSecrets(name, box); }
    } }, "Remove"),
  ]);
  const sname = h("input", { name: "secret-name", required: true, autocomplete: "off", spellcheck: "false" });
  const svalue = h("input", { type: "password", name: "secret-value", autocomplete: "new-password" });
  const form = h("form", { class: "inline", id: "secret-form", onsubmit: async (ev) => {
    ev.preventDefault();
    const n = sname.value.trim();
    const r = await attempt(err, () => api(`/api/projects/${enc(name)}/secrets`, { method: "POST", body: { set: { [n]: svalue.value } } }));
    if (r) { say(`Secret ${n} set; running instances restart with it.`); renderSecrets(name, box); }
  } }, field("Name", sname), field("Value", svalue), h("button", { type: "submit" }, "Set secret"));
  box.replaceChildren(
    list.secrets.length ? table(["Name", "Updated", ""], rows, { id: "secret-list" }) : h("p", { id: "secret-list", class: "muted" }, "No secrets."),
    h("p", { class: "muted" }, "Values are sealed on the server and never shown again."),
    form, err);
}

// ---------------------------------------------------------------------------------------------
// A deployment, live while it builds

async function deploymentPage(name, id) {
  const err = errorBox();
  const statusEl = h("span", { id: "deployment-status", "aria-live": "polite" });
  const facts = h("dl", { class: "facts" });
  const logs = h("div", { id: "build-logs" });
  page(`Deployment #${id} of ${name}`, h("p", {}, h("a", { href: `#/projects/${enc(name)}` }, `← ${name}`)),
    h("p", {}, "Status: ", statusEl), facts, h("h2", {}, "Build log"), logs, err);
  let done = false;
  const load = async () => {
    if (done) return;
    const d = await attempt(err, () => api(`/api/projects/${enc(name)}/deployments/${id}`));
    if (!d) return;
    const text = d.status + (d.live ? " (live)" : "");
    if (statusEl.textContent !== text) statusEl.replaceChildren(state(d.status), d.live ? " (live)" : "");
    facts.replaceChildren(
      h("dt", {}, "Source"), h("dd", {}, `${d.source} ${d.commit}${d.ref ? ` (${d.ref})` : ""}`),
      h("dt", {}, "Repository"), h("dd", {}, d.repository),
      h("dt", {}, "Runtime"), h("dd", {}, d.runtime || "—"),
      h("dt", {}, "Submitted"), h("dd", {}, `${when(d.created_at)} by ${d.submitted_by || "—"}`),
      h("dt", {}, "Finished"), h("dd", {}, when(d.finished_at)),
      d.rollback_of ? [h("dt", {}, "Rollback of"), h("dd", {}, `#${d.rollback_of}`)] : [],
      d.error ? [h("dt", {}, "Error"), h("dd", { class: "error" }, d.error)] : [],
      d.warnings && d.warnings.length ? [h("dt", {}, "Warnings"), h("dd", {}, d.warnings.join("\n"))] : []);
    const parts = [];
    if (d.log) parts.push(h("h3", {}, "Deployment"), h("pre", {}, d.log));
    for (const f of d.functions || []) {
      parts.push(h("h3", {}, `${f.name} `, state(f.build_state)), h("pre", { "data-function": f.name }, f.build_log || "(nothing yet)"));
    }
    // Keep the reader's place: replace only what changed.
    const key = JSON.stringify([d.log, (d.functions || []).map((f) => [f.build_state, f.build_log])]);
    if (logs.dataset.key !== key) {
      logs.dataset.key = key;
      logs.replaceChildren(...parts);
      // While it builds, show the newest lines.
      if (d.status === "queued" || d.status === "building") for (const pre of logs.querySelectorAll("pre")) pre.scrollTop = pre.scrollHeight;
    }
    if (d.status === "ready" || d.status === "failed") { done = true; say(`Deployment #${id}: ${d.status}.`); }
  };
  await load();
  every(1000, load);
}

// ---------------------------------------------------------------------------------------------
// A function: instances, charts, invoke, runs, logs

async function functionPage(name, fname) {
  const err = errorBox();
  const p = await attempt(err, () => api(`/api/projects/${enc(name)}`));
  if (!p) return page(fname, err);
  const f = p.functions.find((x) => x.name === fname);
  if (!f) return page(fname, h("p", { class: "error", role: "alert" }, `${name} has no live function ${fname}.`));
  const instances = h("div", { id: "instances" });
  const renderInstances = (fn) => {
    const list = fn.instance_list || [];
    instances.replaceChildren(list.length
      ? table(["Instance", "State", "Node"], list.map((i) => [h("code", {}, i.id.slice(0, 12)), state(i.state), i.node || "—"]))
      : h("p", { class: "muted" }, "No instances (one starts on the first request)."));
  };
  renderInstances(f);
  const sections = [
    h("p", {}, h("a", { href: `#/projects/${enc(name)}` }, `← ${name}`)),
    h("dl", { class: "facts" },
      h("dt", {}, "Type"), h("dd", {}, f.type),
      f.invoke_path ? [h("dt", {}, "Invoke path"), h("dd", {}, h("code", {}, f.invoke_path))] : [],
      f.schedule ? [h("dt", {}, "Schedule"), h("dd", {}, f.schedule, f.next_run ? ` (next ${when(f.next_run)})` : "")] : [],
      h("dt", {}, "Limits"), h("dd", {}, `${Math.round(f.memory_bytes / 1048576)} MiB, ${f.cpu_millis / 1000} CPU, timeout ${f.timeout_ms} ms`),
      f.auth ? [h("dt", {}, "Auth"), h("dd", {}, String(f.auth))] : []),
  ];
  if (f.type === "http") {
    const charts = h("div", { class: "charts", id: "charts" });
    sections.push(h("h2", {}, "Last hour"), charts);
    const drawCharts = async () => {
      const m = await attempt(null, () => api(`/api/projects/${enc(name)}/functions/${enc(fname)}/metrics`));
      if (!m) return;
      const pts = m.points;
      charts.replaceChildren(
        chart("Requests per second", "rps", pts.map((x) => [x.at, x.requests_per_second]), (v) => v.toFixed(2)),
        chart("Latency p50 / p99 (ms)", "latency", pts.map((x) => [x.at, x.p50_ms]), (v) => v.toFixed(1), pts.map((x) => [x.at, x.p99_ms])),
        chart("Instances", "instances", pts.map((x) => [x.at, x.instances]), (v) => v.toFixed(0)));
    };
    drawCharts();
    every(10000, drawCharts);
  }
  sections.push(h("h2", {}, "Instances"), instances);
  if (f.type === "http") sections.push(h("h2", {}, "Invoke"), invokeForm(name, fname, f));
  if (f.type === "cron") sections.push(h("h2", {}, "Cron runs"), runsSection(name, fname));
  const logBox = h("div", { id: "logs" });
  sections.push(h("h2", {}, "Logs"), logBox, err);
  page(`Function ${fname}`, ...sections);
  followLogs(name, fname, logBox);
  every(5000, async () => {
    const q = await attempt(null, () => api(`/api/projects/${enc(name)}`));
    const fn = q && q.functions.find((x) => x.name === fname);
    if (fn) renderInstances(fn);
  });
}

function invokeForm(project, fname, f) {
  const method = h("select", { name: "method" }, ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"].map((m) => h("option", { value: m }, m)));
  const path = h("input", { name: "path", value: "/", spellcheck: "false" });
  const headers = h("textarea", { name: "headers", rows: "3", spellcheck: "false", placeholder: f.auth === "private" ? "X-Invoke-Key: eik_…" : "Content-Type: application/json" });
  const body = h("textarea", { name: "body", rows: "4", spellcheck: "false" });
  const out = h("div", { id: "invoke-result", "aria-live": "polite" });
  const err = errorBox();
  const send = h("button", { type: "submit" }, "Send");
  const form = h("form", { id: "invoke-form", onsubmit: async (ev) => {
    ev.preventDefault();
    err.textContent = "";
    const hdrs = new Headers();
    for (const line of headers.value.split("\n")) {
      if (!line.trim()) continue;
      const i = line.indexOf(":");
      if (i <= 0) { err.textContent = `Header line "${line}" has no "Name: value" form.`; return; }
      try { hdrs.append(line.slice(0, i).trim(), line.slice(i + 1).trim()); } catch (e) { err.textContent = `Header "${line}": ${e.message}`; return; }
    }
    let rest = path.value.trim() || "/";
    if (!rest.startsWith("/") && !rest.startsWith("?")) rest = "/" + rest;
    const url = `/invoke/${enc(project)}/${enc(fname)}${rest === "/" ? "" : rest}`;
    const withBody = !["GET", "HEAD"].includes(method.value);
    send.disabled = true;
    const began = performance.now();
    try {
      // Never the console's token: a function is not the API.
      const r = await fetch(url, { method: method.value, headers: hdrs, body: withBody ? body.value : undefined, credentials: "omit" });
      const text = await r.text();
      const ms = (performance.now() - began).toFixed(1);
      const headerRows = [...r.headers.entries()].map(([k, v]) => [h("code", {}, k), v]);
      out.replaceChildren(
        h("p", {}, "Status ", h("strong", { id: "invoke-status" }, `${r.status} ${r.statusText}`), ` in ${ms} ms`),
        h("p", {}, "Server-Timing: ", h("code", { id: "invoke-timing" }, r.headers.get("server-timing") || "—")),
        h("details", {}, h("summary", {}, "Headers"), table(["Header", "Value"], headerRows)),
        h("h3", {}, "Body"),
        h("pre", { id: "invoke-body" }, text.length > 65536 ? text.slice(0, 65536) + "\n… (cut at 64 KiB)" : text));
    } catch (e) {
      err.textContent = `The request failed: ${e.message}`;
    } finally {
      send.disabled = false;
    }
  } },
  h("div", { class: "toolbar" }, field("Method", method), field("Path and query", path)),
  field("Headers (one “Name: value” a line)", headers),
  field("Body", body),
  send, err);
  return h("div", {}, form, out);
}

function runsSection(project, fname) {
  const box = h("div", { id: "runs" });
  const err = errorBox();
  const load = async () => {
    const r = await attempt(err, () => api(`/api/projects/${enc(project)}/functions/${enc(fname)}/runs?limit=50`));
    if (!r) return;
    const rows = r.runs.map((x) => [`#${x.id}`, state(x.status), x.trigger, when(x.started_at),
      x.duration_ms == null ? "—" : `${x.duration_ms} ms`, x.exit_code == null ? "—" : String(x.exit_code),
      h("details", {}, h("summary", {}, "Output"), h("pre", {}, x.output || "(none)"))]);
    list.replaceChildren(rows.length ? table(["Run", "Status", "Trigger", "Started", "Took", "Exit", "Output"], rows) : h("p", { class: "muted" }, "No runs yet."));
  };
  const list = h("div", {});
  const start = h("button", { type: "button", onclick: async () => {
    const r = await attempt(err, () => api(`/api/projects/${enc(project)}/functions/${enc(fname)}/runs`, { method: "POST" }));
    if (r) { say(`Run #${r.run} started.`); load(); }
  } }, "Run now");
  box.append(start, list, err);
  load();
  every(5000, load);
  return box;
}

function followLogs(project, fname, box) {
  const list = h("ol", { class: "log", id: "log-lines", role: "log", "aria-live": "polite", "aria-label": `Logs of ${fname}` });
  const note = h("p", { class: "muted", id: "log-state" }, "Connecting…");
  const pause = h("button", { type: "button", class: "secondary", "aria-pressed": "false" }, "Pause");
  box.replaceChildren(h("div", { class: "toolbar" }, pause, note), list);
  let paused = false;
  pause.addEventListener("click", () => { paused = !paused; pause.setAttribute("aria-pressed", String(paused)); pause.textContent = paused ? "Resume" : "Pause"; });
  const ctl = new AbortController();
  cleanups.push(() => ctl.abort());
  const add = (l) => {
    if (paused) return;
    const t = new Date(l.time);
    list.append(h("li", { class: l.stream }, `${isNaN(t) ? "" : t.toLocaleTimeString()} ${l.source === "run" ? `run ${l.run}` : (l.instance || "").slice(0, 12)} ${l.line}`));
    while (list.childElementCount > 1000) list.firstElementChild.remove();
    list.scrollTop = list.scrollHeight;
  };
  (async () => {
    try {
      const r = await fetch(`/api/projects/${enc(project)}/functions/${enc(fname)}/logs?follow=true&tail=200`, { headers: { Authorization: `Bearer ${token()}` }, signal: ctl.signal });
      if (!r.ok) {
        let m = `${r.status}`;
        try { const j = await r.json(); m = `${j.error.message} (${j.error.code})`; } catch { /* not JSON */ }
        note.textContent = m;
        note.className = "error";
        return;
      }
      note.textContent = "Following (new lines appear as they are written).";
      const reader = r.body.getReader();
      const dec = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let i;
        while ((i = buf.indexOf("\n")) >= 0) {
          const line = buf.slice(0, i);
          buf = buf.slice(i + 1);
          if (!line.trim()) continue; // keep-alive
          try { add(JSON.parse(line)); } catch { /* a broken line is skipped */ }
        }
      }
      note.textContent = "The stream ended.";
    } catch (e) {
      if (e.name !== "AbortError") note.textContent = `Logs stopped: ${e.message}`;
    }
  })();
}

// ---------------------------------------------------------------------------------------------
// Deploy

function deployPage() {
  const repo = h("input", { name: "repository", required: true, spellcheck: "false", placeholder: "https://git.example.com/team/app.git" });
  const ref = h("input", { name: "ref", spellcheck: "false", placeholder: "main" });
  const name = h("input", { name: "name", spellcheck: "false", placeholder: "from the repository's name" });
  const err = errorBox();
  const out = h("div", { id: "deploy-result", "aria-live": "polite" });
  const form = h("form", { id: "deploy-form", onsubmit: async (ev) => {
    ev.preventDefault();
    out.textContent = "";
    const body = { repository: repo.value.trim() };
    if (ref.value.trim()) body.ref = ref.value.trim();
    if (name.value.trim()) body.name = name.value.trim();
    say("Checking the repository…");
    const r = await attempt(err, () => api("/api/projects", { method: "POST", body }));
    say("");
    if (!r) return;
    if (r.invoke_key) out.append(h("p", {}, "The project's invoke key (shown once): ", h("span", { class: "secret-once" }, r.invoke_key)));
    if (r.status === "unchanged") {
      out.append(h("p", { class: "ok" }, `${r.project}: commit ${short(r.commit)} is already live; nothing to build.`));
      return;
    }
    out.append(h("p", { class: "ok" }, `Deployment #${r.deployment} of ${r.project} queued. `,
      h("a", { href: `#/projects/${enc(r.project)}/deployments/${r.deployment}` }, "Watch its build")));
    if (!r.invoke_key) location.hash = `#/projects/${enc(r.project)}/deployments/${r.deployment}`;
  } },
  field("Repository URL", repo), field("Ref (branch, tag or commit; optional)", ref), field("Project name (optional)", name),
  h("button", { type: "submit" }, "Deploy"), err);
  page("Deploy", form, out);
}

// ---------------------------------------------------------------------------------------------
// Users and tokens

async function usersPage() {
  const err = errorBox();
  const list = await attempt(err, () => api("/api/users"));
  if (!list) return page("Users", err);
  const rows = list.users.map((u) => [u.name, u.admin ? "yes" : "no", u.projects.join(", ") || "—", when(u.created_at),
    h("button", { type: "button", class: "danger", "aria-label": `Remove user ${u.name}`, onclick: async () => {
      const r = await attempt(err, () => api(`/api/users/${enc(u.name)}`, { method: "DELETE" }));
      if (r) { say(`User ${u.name} removed.`); route(); }
    } }, "Remove")]);
  const uname = h("input", { name: "user-name", required: true, autocomplete: "off", spellcheck: "false" });
  const admin = h("input", { type: "checkbox", name: "admin" });
  admin.id = `f${++ids}`;
  const out = h("div", { "aria-live": "polite" });
  const form = h("form", { id: "user-form", onsubmit: async (ev) => {
    ev.preventDefault();
    const r = await attempt(err, () => api("/api/users", { method: "POST", body: { name: uname.value.trim(), admin: admin.checked } }));
    if (!r) return;
    await usersPage();
    main.append(h("p", { role: "status" }, `User ${r.name} created. Its token (shown once): `, h("span", { class: "secret-once", id: "new-token" }, r.token.token)));
  } }, field("Name", uname), h("label", { class: "check", for: admin.id }, admin, "Admin"), h("button", { type: "submit" }, "Create user"));
  page("Users", table(["User", "Admin", "Projects", "Created", ""], rows, { id: "users" }), h("h2", {}, "New user"), form, out, err);
}

async function tokensPage() {
  const err = errorBox();
  const list = await attempt(err, () => api(me.admin ? "/api/tokens?all=true" : "/api/tokens"));
  if (!list) return page("Tokens", err);
  const rows = list.tokens.map((t) => [String(t.id), t.user, t.name, when(t.created_at), when(t.last_used_at),
    t.revoked_at ? `revoked ${when(t.revoked_at)}` : h("button", { type: "button", class: "danger", "aria-label": `Revoke token ${t.name}`, onclick: async () => {
      const r = await attempt(err, () => api(`/api/tokens/${t.id}`, { method: "DELETE" }));
      if (r) { say(`Token ${t.name} revoked.`); route(); }
    } }, "Revoke")]);
  const tname = h("input", { name: "token-name", required: true, autocomplete: "off" });
  const tuser = h("input", { name: "token-user", autocomplete: "off", placeholder: me.user });
  const form = h("form", { id: "token-form", onsubmit: async (ev) => {
    ev.preventDefault();
    const body = { name: tname.value.trim() };
    if (tuser.value.trim()) body.user = tuser.value.trim();
    const r = await attempt(err, () => api("/api/tokens", { method: "POST", body }));
    if (!r) return;
    await tokensPage();
    main.append(h("p", { role: "status" }, `Token ${r.name} created (shown once): `, h("span", { class: "secret-once", id: "new-token" }, r.token)));
  } }, field("Name", tname), me.admin ? field("For user (optional)", tuser) : null, h("button", { type: "submit" }, "Create token"));
  page("Tokens", table(["Id", "User", "Name", "Created", "Last used", ""], rows, { id: "tokens" }), h("h2", {}, "New token"), form, err);
}

// ---------------------------------------------------------------------------------------------

document.getElementById("logout").addEventListener("click", () => logout());
// The skip link must not change the route.
document.getElementById("skip").addEventListener("click", (ev) => { ev.preventDefault(); main.focus(); });
window.addEventListener("hashchange", route);
route();
