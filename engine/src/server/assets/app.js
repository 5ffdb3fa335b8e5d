// The Cairn dashboard: a plain ES module over the public /v1 API.
//
// The token is sent once, to POST /v1/session, and forgotten: the server
// answers with an HttpOnly session cookie (which this script cannot read)
// and a CSRF token, kept in memory here and sent with every change.

const main = document.getElementById("main");
const who = document.getElementById("who");
const signOutButton = document.getElementById("sign-out");
const signInForm = document.getElementById("sign-in");

const session = { tenant: null, role: null, csrf: null };
let stopView = () => {};

const STATUS_MARK = {
  pending: "○", queued: "○", running: "◐", succeeded: "✓", cached: "✓",
  resumed: "✓", failed: "✗", skipped: "–", cancelled: "⊘", live: "◐",
};

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (value !== undefined && value !== null) node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) {
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
  }
  return node;
}

function status(text) {
  return el("span", { class: `status status-${text}`, "data-status": text },
    `${STATUS_MARK[text] ?? "•"} ${text}`);
}

function when(ms) {
  return ms ? new Date(ms).toLocaleString() : "";
}

function took(ms) {
  if (ms === null || ms === undefined) return "";
  if (ms < 1000) return `${ms} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
  return `${Math.floor(ms / 60000)} min ${Math.round((ms % 60000) / 1000)} s`;
}

async function api(method, path, { token } = {}) {
  const headers = {};
  if (token) headers.authorization = `Bearer ${token}`;
  if (method !== "GET" && session.csrf) headers["x-csrf-token"] = session.csrf;
  const response = await fetch(path, { method, headers, credentials: "same-origin" });
  let body = null;
  try { body = await response.json(); } catch { body = null; }
  if (response.status === 401 && !token) {
    signedOut();
  }
  return { ok: response.ok, status: response.status, body };
}

function signedIn(view) {
  session.tenant = view.tenant;
  session.role = view.role;
  session.csrf = view.csrf;
  who.textContent = `${view.tenant} · ${view.role}`;
  signOutButton.hidden = false;
  route();
}

function signedOut() {
  stopView();
  session.tenant = session.role = session.csrf = null;
  who.textContent = "";
  signOutButton.hidden = true;
  main.replaceChildren(signInForm);
  document.getElementById("token").focus();
}

signInForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = document.getElementById("token");
  const error = document.getElementById("sign-in-error");
  const token = input.value.trim();
  input.value = "";
  const answer = await api("POST", "/v1/session", { token });
  if (answer.ok) {
    error.textContent = "";
    if (!location.hash) location.hash = "#/runs";
    signedIn(answer.body);
  } else {
    error.textContent = "That token was refused.";
  }
});

signOutButton.addEventListener("click", async () => {
  await api("DELETE", "/v1/session");
  signedOut();
});

function canAct() {
  return session.role === "operator" || session.role === "admin";
}

// The runs list, filtered and refreshed while it is shown.
function showRuns() {
  const params = new URLSearchParams(location.hash.split("?")[1] ?? "");
  const statusFilter = el("select", { id: "filter-status", "aria-label": "status" },
    ["", "running", "succeeded", "failed", "cancelled"].map((s) =>
      el("option", { value: s, ...(params.get("status") === s ? { selected: "" } : {}) }, s || "any status")));
  const pipelineFilter = el("input", {
    id: "filter-pipeline", placeholder: "pipeline", "aria-label": "pipeline",
    value: params.get("pipeline") ?? "",
  });
  const apply = () => {
    const q = new URLSearchParams();
    if (statusFilter.value) q.set("status", statusFilter.value);
    if (pipelineFilter.value) q.set("pipeline", pipelineFilter.value);
    location.hash = `#/runs${q.toString() ? "?" + q : ""}`;
  };
  statusFilter.addEventListener("change", apply);
  pipelineFilter.addEventListener("change", apply);
  const body = el("tbody");
  const table = el("table", { id: "runs" },
    el("thead", {}, el("tr", {}, ["run", "pipeline", "status", "started", "duration", "steps"].map((h) => el("th", { scope: "col" }, h)))),
    body);
  main.replaceChildren(el("section", {}, el("h1", {}, "Runs"), el("div", { class: "filters" }, statusFilter, pipelineFilter), table));

  let stopped = false;
  let timer = null;
  const load = async () => {
    const q = new URLSearchParams();
    if (params.get("status")) q.set("status", params.get("status"));
    if (params.get("pipeline")) q.set("pipeline", params.get("pipeline"));
    const answer = await api("GET", `/v1/runs${q.toString() ? "?" + q : ""}`);
    if (stopped || !answer.ok) return;
    body.replaceChildren(...answer.body.runs.map((run) => {
      const shown = run.live ? "running" : run.status;
      const end = run.finished_ms ?? (run.live ? Date.now() : null);
      return el("tr", { "data-run": run.id },
        el("td", {}, el("a", { href: `#/runs/${run.id}` }, run.id)),
        el("td", {}, run.pipeline),
        el("td", {}, status(shown)),
        el("td", {}, when(run.started_ms)),
        el("td", {}, end ? took(end - run.started_ms) : ""),
        el("td", {}, run.steps));
    }));
    timer = setTimeout(load, 2000);
  };
  load();
  return () => { stopped = true; clearTimeout(timer); };
}

// Steps in layers: each step one layer below the deepest step it runs after.
function layers(graph) {
  const depth = new Map();
  for (const node of graph) {
    depth.set(node.name, Math.max(0, ...node.after.map((a) => (depth.get(a) ?? 0) + 1)));
  }
  const rows = [];
  for (const node of graph) {
    const d = depth.get(node.name);
    (rows[d] ??= []).push(node.name);
  }
  return rows;
}

function dag(graph, steps) {
  const rows = layers(graph);
  const box = { w: 150, h: 44, gx: 24, gy: 36 };
  const width = Math.max(...rows.map((r) => r.length)) * (box.w + box.gx) + box.gx;
  const height = rows.length * (box.h + box.gy) + box.gy;
  const at = new Map();
  rows.forEach((row, y) => row.forEach((name, x) => at.set(name, {
    x: box.gx + x * (box.w + box.gx), y: box.gy + y * (box.h + box.gy),
  })));
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("id", "dag");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", "the run's steps and what each waits for");
  for (const node of graph) {
    for (const after of node.after) {
      const from = at.get(after), to = at.get(node.name);
      const line = document.createElementNS(ns, "line");
      line.setAttribute("x1", from.x + box.w / 2); line.setAttribute("y1", from.y + box.h);
      line.setAttribute("x2", to.x + box.w / 2); line.setAttribute("y2", to.y);
      line.setAttribute("class", "edge");
      svg.append(line);
    }
  }
  for (const node of graph) {
    const view = steps[node.name];
    const state = view?.status ?? "pending";
    const g = document.createElementNS(ns, "g");
    g.setAttribute("class", `node status-${state}`);
    g.setAttribute("data-step", node.name);
    g.setAttribute("data-status", state);
    const { x, y } = at.get(node.name);
    const rect = document.createElementNS(ns, "rect");
    rect.setAttribute("x", x); rect.setAttribute("y", y);
    rect.setAttribute("width", box.w); rect.setAttribute("height", box.h);
    rect.setAttribute("rx", 6);
    const name = document.createElementNS(ns, "text");
    name.setAttribute("x", x + 8); name.setAttribute("y", y + 18);
    name.textContent = node.name;
    const label = document.createElementNS(ns, "text");
    label.setAttribute("x", x + 8); label.setAttribute("y", y + 36);
    label.setAttribute("class", "state");
    const elements = view?.elements ? ` · ${view.elements} elements` : "";
    label.textContent = `${STATUS_MARK[state] ?? "•"} ${state}${elements}`;
    g.append(rect, name, label);
    svg.append(g);
  }
  return svg;
}

// One run: its DAG, its steps, the failed steps' logs, live while it runs.
function showRun(id) {
  let stopped = false;
  let source = null;
  let pending = null;
  const load = async () => {
    pending = null;
    const answer = await api("GET", `/v1/runs/${encodeURIComponent(id)}`);
    if (stopped) return;
    if (!answer.ok) {
      main.replaceChildren(el("p", { role: "alert", id: "not-found" }, answer.body?.message ?? "No such run."));
      return;
    }
    const { run, steps, graph } = answer.body;
    const shown = run.live ? "running" : run.status;
    const actions = el("div", { class: "actions" });
    if (canAct()) {
      const act = (label, path, question) => el("button", {
        type: "button", "data-action": label,
        onclick: async () => {
          if (!confirm(question)) return;
          const result = await api("POST", `/v1/runs/${run.id}/${path}`);
          if (result.ok && result.body?.id && result.body.id !== run.id) location.hash = `#/runs/${result.body.id}`;
          else load();
        },
      }, label);
      if (run.live) actions.append(act("Cancel", "cancel", `Cancel run ${run.id}?`));
      if (!run.live && (run.status === "failed" || run.status === "cancelled" || run.status === "running")) {
        actions.append(act("Resume", "resume", `Resume run ${run.id}?`));
      }
      if (!run.live) actions.append(act("Replay", "replay", `Replay run ${run.id} and verify its outputs?`));
    }
    const rows = (graph ?? Object.keys(steps).map((name) => ({ name, after: [] }))).map((node) => {
      const s = steps[node.name] ?? { status: "pending", attempts: 0, fuel: 0, detail: "" };
      return el("tr", { "data-step": node.name },
        el("th", { scope: "row" }, node.name),
        el("td", {}, status(s.status)),
        el("td", {}, s.attempts),
        el("td", {}, took(s.duration_ms)),
        el("td", {}, s.fuel?.toLocaleString() ?? ""),
        el("td", { class: "detail" }, s.detail));
    });
    const logs = el("section", { id: "failures" });
    const failed = Object.entries(steps).filter(([, s]) => s.status === "failed");
    for (const [name] of failed) {
      const log = await api("GET", `/v1/runs/${run.id}/logs?step=${encodeURIComponent(name)}`);
      if (stopped || !log.ok) continue;
      for (const attempt of log.body) {
        logs.append(el("article", { class: "attempt", "data-step": name },
          el("h3", {}, `${name} · attempt ${attempt.attempt}${attempt.class ? " · " + attempt.class : ""}`),
          attempt.message ? el("p", { class: "message" }, attempt.message) : null,
          el("pre", {}, attempt.lines.map((l) => `${l.level}: ${l.message}`).join("\n"))));
      }
    }
    main.replaceChildren(el("section", {},
      el("p", {}, el("a", { href: "#/runs" }, "← runs")),
      el("h1", {}, `${run.pipeline} `, el("span", { id: "run-status" }, status(shown))),
      el("p", { class: "meta" }, `run ${run.id} · started ${when(run.started_ms)}`,
        run.finished_ms ? ` · took ${took(run.finished_ms - run.started_ms)}` : ""),
      actions,
      graph ? dag(graph, steps) : el("p", {}, "The pipeline's graph is not available."),
      el("table", { id: "steps" },
        el("thead", {}, el("tr", {}, ["step", "status", "attempts", "duration", "fuel", "detail"].map((h) => el("th", { scope: "col" }, h)))),
        el("tbody", {}, rows)),
      logs));
    if (run.live && !source) follow();
  };
  const follow = () => {
    source = new EventSource(`/v1/runs/${encodeURIComponent(id)}/events`);
    const changed = () => { if (!pending) pending = setTimeout(load, 150); };
    source.onmessage = changed;
    for (const kind of ["step-scheduled", "attempt-started", "attempt-finished", "item-succeeded",
      "step-succeeded", "step-failed", "step-skipped", "step-cancelled"]) {
      source.addEventListener(kind, changed);
    }
    source.addEventListener("run-finished", () => { source.close(); source = null; load(); });
    // The stream ends when the run does; a dropped one reconnects by itself
    // and carries on from the last event it had.
    source.onerror = () => { if (source && source.readyState === EventSource.CLOSED) { source = null; load(); } };
  };
  load();
  return () => { stopped = true; if (source) source.close(); clearTimeout(pending); };
}

function route() {
  if (!session.role) return;
  stopView();
  const hash = location.hash || "#/runs";
  const run = hash.match(/^#\/runs\/([0-9a-f]{1,64})$/);
  stopView = run ? showRun(run[1]) : showRuns();
}

window.addEventListener("hashchange", route);

const start = await api("GET", "/v1/session");
if (start.ok && start.body.csrf) signedIn(start.body);
else signedOut();
