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

async function api(method, path, { token, body } = {}) {
  const headers = {};
  if (token) headers.authorization = `Bearer ${token}`;
  if (method !== "GET" && session.csrf) headers["x-csrf-token"] = session.csrf;
  if (body !== undefined) headers["content-type"] = "application/json";
  const response = await fetch(path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let answer = null;
  try { answer = await response.json(); } catch { answer = null; }
  if (response.status === 401 && !token) {
    signedOut();
  }
  return { ok: response.ok, status: response.status, body: answer };
}

const nav = document.getElementById("nav");

function signedIn(view) {
  session.tenant = view.tenant;
  session.role = view.role;
  session.csrf = view.csrf;
  who.textContent = `${view.tenant} · ${view.role}`;
  signOutButton.hidden = false;
  const links = [["#/runs", "Runs"], ["#/bundles", "Bundles"], ["#/usage", "Usage"]];
  if (session.role === "admin") links.push(["#/audit", "Audit"]);
  nav.replaceChildren(...links.map(([href, text]) => el("a", { href }, text)));
  route();
}

function signedOut() {
  stopView();
  session.tenant = session.role = session.csrf = null;
  who.textContent = "";
  nav.replaceChildren();
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

// The runs list: filtered by status, pipeline and age on the server, a
// page at a time, refreshed while it is shown.
const AGES = { "": 0, "1h": 3600e3, "24h": 86400e3, "7d": 7 * 86400e3 };

function showRuns() {
  const params = new URLSearchParams(location.hash.split("?")[1] ?? "");
  const statusFilter = el("select", { id: "filter-status", "aria-label": "status" },
    ["", "running", "succeeded", "failed", "cancelled"].map((s) =>
      el("option", { value: s, ...(params.get("status") === s ? { selected: "" } : {}) }, s || "any status")));
  const pipelineFilter = el("input", {
    id: "filter-pipeline", placeholder: "pipeline", "aria-label": "pipeline",
    value: params.get("pipeline") ?? "",
  });
  const ageFilter = el("select", { id: "filter-age", "aria-label": "started within" },
    Object.keys(AGES).map((a) => el("option", { value: a, ...(params.get("age") === a ? { selected: "" } : {}) }, a ? `last ${a}` : "any time")));
  const apply = () => {
    const q = new URLSearchParams();
    if (statusFilter.value) q.set("status", statusFilter.value);
    if (pipelineFilter.value) q.set("pipeline", pipelineFilter.value);
    if (ageFilter.value) q.set("age", ageFilter.value);
    location.hash = `#/runs${q.toString() ? "?" + q : ""}`;
  };
  for (const f of [statusFilter, pipelineFilter, ageFilter]) f.addEventListener("change", apply);
  const body = el("tbody");
  const table = el("table", { id: "runs" },
    el("thead", {}, el("tr", {}, ["run", "pipeline", "status", "started", "duration", "steps done", "cache hits"].map((h) => el("th", { scope: "col" }, h)))),
    body);
  // Pages: the `before` cursor of each page shown, newest first.
  const cursors = [null];
  const pager = el("div", { class: "filters" });
  main.replaceChildren(el("section", {}, el("h1", {}, params.get("bundle") ? `Runs of bundle ${params.get("bundle").slice(0, 16)}` : "Runs"),
    el("div", { class: "filters" }, statusFilter, pipelineFilter, ageFilter), table, pager));

  let stopped = false;
  let timer = null;
  const load = async () => {
    clearTimeout(timer);
    const q = new URLSearchParams();
    if (params.get("status")) q.set("status", params.get("status"));
    if (params.get("pipeline")) q.set("pipeline", params.get("pipeline"));
    if (params.get("bundle")) q.set("bundle", params.get("bundle"));
    const age = AGES[params.get("age") ?? ""];
    if (age) q.set("since_ms", String(Date.now() - age));
    const before = cursors[cursors.length - 1];
    if (before) q.set("before", before);
    q.set("limit", "50");
    const answer = await api("GET", `/v1/runs?${q}`);
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
        el("td", {}, run.tally ? `${run.tally.succeeded}/${run.steps}` : `–/${run.steps}`),
        el("td", {}, run.tally ? run.tally.cached : "–"));
    }));
    const next = answer.body.next;
    pager.replaceChildren(
      cursors.length > 1 ? el("button", { type: "button", id: "newer", onclick: () => { cursors.pop(); load(); } }, "← newer") : null,
      el("span", { class: "meta" }, `page ${cursors.length}`),
      next ? el("button", { type: "button", id: "older", onclick: () => { cursors.push(next); load(); } }, "older →") : null);
    // Only the first page changes as runs start and end.
    if (cursors.length === 1) timer = setTimeout(load, 2000);
  };
  load();
  return () => { stopped = true; clearTimeout(timer); };
}

function size(bytes) {
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (bytes >= 1024 && i < units.length - 1) { bytes /= 1024; i++; }
  return `${i ? bytes.toFixed(1) : bytes} ${units[i]}`;
}

function tablePage(title, id, headings, rows) {
  main.replaceChildren(el("section", {}, el("h1", {}, title),
    el("table", { id },
      el("thead", {}, el("tr", {}, headings.map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, rows))));
}

// The tenant's bundles: what each pipeline is, who pushed it, who signed
// it, what each step may reach, and its runs.
function showBundles() {
  let stopped = false;
  api("GET", "/v1/bundles").then((answer) => {
    if (stopped || !answer.ok) return;
    tablePage("Bundles", "bundles", ["bundle", "pipeline", "steps", "size", "uploaded", "pushed by", "signed by", "capabilities", ""],
      answer.body.map((b) => {
        const caps = Object.entries(b.capabilities ?? {});
        return el("tr", { "data-bundle": b.id },
          el("td", { class: "mono" }, b.id.slice(0, 16)), el("td", {}, b.pipeline), el("td", {}, b.steps),
          el("td", {}, size(b.size)), el("td", {}, when(b.uploaded_ms)),
          el("td", { class: "mono" }, b.pushed_by ?? ""),
          el("td", { class: "mono" }, (b.signers ?? []).length ? b.signers.map((k) => k.slice(0, 16) + "…").join(", ") : "unsigned"),
          el("td", { class: "detail" }, caps.length
            ? el("ul", { class: "caps" }, caps.map(([step, list]) => el("li", {}, `${step}: ${list.join(", ")}`)))
            : "none"),
          el("td", {}, el("a", { href: `#/runs?bundle=${b.id}` }, "runs")));
      }));
  });
  return () => { stopped = true; };
}

// The tenant's quotas and what is used now.
function showUsage() {
  let stopped = false;
  api("GET", "/v1/quota").then((answer) => {
    if (stopped || !answer.ok) return;
    const { quotas: q, usage: u } = answer.body;
    tablePage("Usage", "usage", ["", "in use", "quota"], [
      ["runs executing", u.runs_in_flight, q.runs_in_flight],
      ["runs waiting", u.queued_runs, q.queued_runs],
      ["sandboxes", u.sandboxes_in_flight, q.sandboxes_in_flight],
      ["bundle storage", size(u.bundle_storage_bytes), size(q.bundle_storage_bytes)],
      ["uploads", u.uploads_in_flight, q.uploads_in_flight],
      ["largest upload", "", size(q.upload_bytes)],
      ["runs kept for", "", q.keep_runs ?? "ever"],
    ].map(([what, used, quota]) => el("tr", {}, el("th", { scope: "row" }, what), el("td", {}, used), el("td", {}, quota))));
  });
  return () => { stopped = true; };
}

// The tenant's audit log (admins), filtered by event as it is read.
function showAudit() {
  let stopped = false;
  api("GET", "/v1/audit").then((answer) => {
    if (stopped) return;
    if (!answer.ok) {
      main.replaceChildren(el("p", { role: "alert" }, answer.body?.message ?? "The audit log is for admins."));
      return;
    }
    const entries = answer.body.slice().reverse();
    const filter = el("select", { id: "filter-event", "aria-label": "event" },
      ["", "granted", "denied", "api"].map((e) => el("option", { value: e }, e || "any event")));
    const body = el("tbody");
    const fill = () => body.replaceChildren(...entries.filter((e) => !filter.value || e.event === filter.value)
      .map((e) => el("tr", { "data-event": e.event },
        el("td", {}, when(e.at_ms)), el("td", {}, e.event), el("td", {}, e.capability),
        el("td", { class: "mono" }, e.run ?? ""), el("td", {}, e.step ?? ""), el("td", { class: "detail" }, e.detail))));
    filter.addEventListener("change", fill);
    fill();
    main.replaceChildren(el("section", {}, el("h1", {}, "Audit"), el("div", { class: "filters" }, filter),
      el("table", { id: "audit" },
        el("thead", {}, el("tr", {}, ["when", "event", "capability", "run", "step", "detail"].map((h) => el("th", { scope: "col" }, h)))),
        body)));
  });
  return () => { stopped = true; };
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

// At most this many nodes side by side; a wider layer wraps onto more rows.
const PER_ROW = 24;
// A layer of more steps than this is drawn as one node until it is opened.
const COLLAPSE_OVER = 2 * PER_ROW;

// Each layer ordered by the mean place of the steps its steps wait for,
// so that edges cross less (one pass down the layers).
function ordered(graph) {
  const after = new Map(graph.map((n) => [n.name, n.after]));
  const place = new Map();
  return layers(graph).map((layer, d) => {
    if (d > 0) {
      const mean = (name) => {
        const known = after.get(name).map((a) => place.get(a)).filter((p) => p !== undefined);
        return known.length ? known.reduce((a, b) => a + b, 0) / known.length : 0;
      };
      const keyed = layer.map((name, i) => [mean(name), i, name]);
      keyed.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
      layer = keyed.map((k) => k[2]);
    }
    layer.forEach((name, i) => place.set(name, layer.length > 1 ? i / (layer.length - 1) : 0.5));
    return layer;
  });
}

// A collapsed layer's state: failed before running before pending before done.
function groupState(names, steps) {
  const count = {};
  for (const name of names) {
    const s = steps[name]?.status ?? "pending";
    count[s] = (count[s] ?? 0) + 1;
  }
  const state = ["failed", "running", "queued", "pending", "cancelled", "skipped"].find((s) => count[s])
    ?? (count.cached === names.length ? "cached" : "succeeded");
  return { state, count };
}

// The run's DAG as SVG. `view` outlives redraws (a live run redraws as its
// events come): the zoom and which large layers are open.
function dag(graph, steps, view) {
  const rows = [];
  const collapsible = [];
  ordered(graph).forEach((layer, d) => {
    if (layer.length > COLLAPSE_OVER) {
      collapsible.push([d, layer.length]);
      if (!view.opened.has(d)) { rows.push([{ group: d, names: layer }]); return; }
    }
    for (let i = 0; i < layer.length; i += PER_ROW) rows.push(layer.slice(i, i + PER_ROW).map((name) => ({ name })));
  });
  const box = { w: 150, h: 44, gx: 24, gy: 36 };
  const width = Math.max(...rows.map((r) => r.length)) * (box.w + box.gx) + box.gx;
  const height = rows.length * (box.h + box.gy) + box.gy;
  // Where each step is drawn: its own node, or its layer's.
  const at = new Map();
  const items = [];
  rows.forEach((row, y) => row.forEach((item, x) => {
    const pos = { x: box.gx + x * (box.w + box.gx), y: box.gy + y * (box.h + box.gy), item };
    items.push(pos);
    for (const name of item.names ?? [item.name]) at.set(name, pos);
  }));
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("id", "dag");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", "the run's steps and what each waits for");
  const drawn = new Set();
  for (const node of graph) {
    for (const after of node.after) {
      const from = at.get(after), to = at.get(node.name);
      // Edges into or out of a closed layer are drawn once.
      const key = `${from.x},${from.y}>${to.x},${to.y}`;
      if (drawn.has(key)) continue;
      drawn.add(key);
      const line = document.createElementNS(ns, "line");
      line.setAttribute("x1", from.x + box.w / 2); line.setAttribute("y1", from.y + box.h);
      line.setAttribute("x2", to.x + box.w / 2); line.setAttribute("y2", to.y);
      line.setAttribute("class", "edge");
      svg.append(line);
    }
  }
  const root = el("div", { class: "dag" });
  const redraw = () => root.replaceWith(dag(graph, steps, view));
  const toggle = (d) => { if (view.opened.has(d)) view.opened.delete(d); else view.opened.add(d); redraw(); };
  for (const { x, y, item } of items) {
    let state, title, label, open, attrs;
    if (item.group !== undefined) {
      const { state: s, count } = groupState(item.names, steps);
      state = s;
      title = `layer ${item.group + 1} · ${item.names.length} steps`;
      label = Object.entries(count).map(([k, n]) => `${STATUS_MARK[k] ?? "•"} ${n} ${k}`).join(" ");
      open = () => toggle(item.group);
      attrs = { "data-layer": item.group, "aria-label": `${title}: ${label}; press to show them`, "aria-expanded": "false" };
    } else {
      const stepView = steps[item.name];
      state = stepView?.status ?? "pending";
      title = item.name;
      const elements = stepView?.elements ? ` · ${stepView.elements} elements` : "";
      label = `${STATUS_MARK[state] ?? "•"} ${state}${elements}`;
      open = () => { location.hash = `${location.hash.split("?")[0]}?step=${encodeURIComponent(item.name)}`; };
      attrs = { "data-step": item.name, "aria-label": `${item.name}: ${state}` };
    }
    const g = document.createElementNS(ns, "g");
    g.setAttribute("class", `node${item.group !== undefined ? " group" : ""} status-${state}`);
    g.setAttribute("data-status", state);
    g.setAttribute("tabindex", "0");
    g.setAttribute("role", "button");
    for (const [k, v] of Object.entries(attrs)) g.setAttribute(k, v);
    g.addEventListener("click", open);
    g.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); open(); } });
    const rect = document.createElementNS(ns, "rect");
    rect.setAttribute("x", x); rect.setAttribute("y", y);
    rect.setAttribute("width", box.w); rect.setAttribute("height", box.h);
    rect.setAttribute("rx", 6);
    const name = document.createElementNS(ns, "text");
    name.setAttribute("x", x + 8); name.setAttribute("y", y + 18);
    name.textContent = title;
    const stateText = document.createElementNS(ns, "text");
    stateText.setAttribute("x", x + 8); stateText.setAttribute("y", y + 36);
    stateText.setAttribute("class", "state");
    stateText.textContent = label;
    const tip = document.createElementNS(ns, "title");
    tip.textContent = `${title}: ${label}`;
    g.append(tip, rect, name, stateText);
    svg.append(g);
  }
  // Zoom with the buttons, pan by scrolling (the box takes the keyboard too).
  const fit = () => Math.min(1, 1100 / width);
  const zoom = (factor) => {
    view.scale = factor === 0 ? fit() : Math.min(4, Math.max(0.05, (view.scale ?? fit()) * factor));
    svg.setAttribute("width", Math.round(width * view.scale));
    svg.setAttribute("height", Math.round(height * view.scale));
  };
  zoom(view.scale === undefined ? 0 : 1);
  root.append(
    el("div", { class: "filters" },
      el("button", { type: "button", id: "zoom-in", "aria-label": "zoom in", onclick: () => zoom(1.25) }, "+"),
      el("button", { type: "button", id: "zoom-out", "aria-label": "zoom out", onclick: () => zoom(0.8) }, "−"),
      el("button", { type: "button", id: "zoom-fit", onclick: () => zoom(0) }, "fit"),
      collapsible.map(([d, n]) => el("button", {
        type: "button", class: "layer-toggle", "data-layer": d, "aria-expanded": String(view.opened.has(d)),
        onclick: () => toggle(d),
      }, `${view.opened.has(d) ? "close" : "open"} layer ${d + 1} (${n} steps)`)),
      el("span", { class: "meta" }, `${graph.length} steps`)),
    el("div", { id: "dag-box", tabindex: "0", "aria-label": "the graph; scroll to pan" }, svg));
  return root;
}

// The journal's events as a timeline: one row per step (and element), a
// bar per attempt from its start to its end, the gaps between them the
// waits and backoffs; a step answered from the cache is a diamond.
// The chain of steps that decided when the run ended: from the step that
// finished last, back through the dependency of each that finished last.
function criticalPath(graph, finish) {
  const after = new Map((graph ?? []).map((n) => [n.name, n.after]));
  // Times are in ms: on a tie, the step later in dependency order is the
  // one that waited for the other.
  const order = new Map((graph ?? []).map((n, i) => [n.name, i]));
  const later = (a, b) => finish.get(b) - finish.get(a) || (order.get(b) ?? 0) - (order.get(a) ?? 0);
  let step = [...finish.keys()].sort(later)[0];
  const path = [];
  while (step !== undefined && !path.includes(step)) {
    path.unshift(step);
    step = (after.get(step) ?? []).filter((d) => finish.has(d)).sort(later)[0];
  }
  return path;
}

// A timeline of more rows than this keeps only the ones that matter.
const TIMELINE_ROWS = 200;

function timeline(events, graph) {
  // From the first step's start: a run that waited for a slot did nothing before.
  const t0 = (events.find((e) => e.step !== undefined) ?? events.find((e) => e.event === "run-started"))?.at_ms;
  if (t0 === undefined) return null;
  const rows = new Map();
  const row = (step, index) => {
    const key = index === null || index === undefined ? step : `${step}[${index}]`;
    if (!rows.has(key)) rows.set(key, []);
    return rows.get(key);
  };
  const open = new Map();
  let end = t0;
  for (const e of events) {
    end = Math.max(end, e.at_ms ?? end);
    if (e.event === "attempt-started") open.set(`${e.step}/${e.index}/${e.attempt}`, e.at_ms);
    if (e.event === "attempt-finished") {
      const start = open.get(`${e.step}/${e.index}/${e.attempt}`) ?? e.at_ms - Math.round(e.duration_us / 1000);
      open.delete(`${e.step}/${e.index}/${e.attempt}`);
      row(e.step, e.index).push({ start, end: e.at_ms, class: e.class ?? "ok", attempt: e.attempt });
    }
    if (e.event === "step-succeeded" && e.source === "cached") {
      row(e.step, null).push({ start: e.at_ms, end: e.at_ms, class: "cached", attempt: 0 });
    }
  }
  for (const [key, start] of open) {
    const [step, index] = key.split("/");
    row(step, index === "null" ? null : index).push({ start, end: Date.now(), class: "running", attempt: 0 });
    end = Math.max(end, Date.now());
  }
  const finish = new Map();
  for (const [key, bars] of rows) {
    const step = key.replace(/\[\d+\]$/, "");
    for (const bar of bars) finish.set(step, Math.max(finish.get(step) ?? 0, bar.end));
  }
  const critical = new Set(criticalPath(graph, finish));
  const span = Math.max(1, end - t0);
  // A large run shows the rows that matter: the critical path's, then the
  // longest (by time from first start to last end), in journal order.
  const total = rows.size;
  if (total > TIMELINE_ROWS) {
    const length = (bars) => Math.max(...bars.map((b) => b.end)) - Math.min(...bars.map((b) => b.start));
    const kept = new Set([...rows.keys()].filter((k) => critical.has(k.replace(/\[\d+\]$/, ""))).slice(0, TIMELINE_ROWS));
    for (const [key] of [...rows].sort((a, b) => length(b[1]) - length(a[1]))) {
      if (kept.size >= TIMELINE_ROWS) break;
      kept.add(key);
    }
    for (const key of [...rows.keys()]) if (!kept.has(key)) rows.delete(key);
  }
  const ns = "http://www.w3.org/2000/svg";
  const label = 170, width = 900, h = 18, gap = 6;
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("id", "timeline");
  svg.setAttribute("viewBox", `0 0 ${width} ${rows.size * (h + gap) + 24}`);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", `attempts over ${took(span)}`);
  const x = (t) => label + ((t - t0) / span) * (width - label - 10);
  let y = 4;
  for (const [key, bars] of rows) {
    const onPath = critical.has(key.replace(/\[\d+\]$/, ""));
    const name = document.createElementNS(ns, "text");
    name.setAttribute("x", 0); name.setAttribute("y", y + 13);
    name.textContent = onPath ? `★ ${key}` : key;
    if (onPath) name.setAttribute("class", "critical");
    svg.append(name);
    bars.forEach((bar, i) => {
      // The wait before a retry: from the attempt that failed to the next.
      const prior = bars[i - 1];
      if (prior && bar.start > prior.end) {
        const wait = document.createElementNS(ns, "line");
        wait.setAttribute("x1", x(prior.end)); wait.setAttribute("x2", x(bar.start));
        wait.setAttribute("y1", y + h / 2); wait.setAttribute("y2", y + h / 2);
        wait.setAttribute("class", "wait");
        const tip = document.createElementNS(ns, "title");
        tip.textContent = `${key}: waited ${took(bar.start - prior.end)} before attempt ${bar.attempt}`;
        wait.append(tip);
        svg.append(wait);
      }
      const shape = document.createElementNS(ns, "rect");
      shape.setAttribute("x", x(bar.start));
      shape.setAttribute("y", y);
      shape.setAttribute("width", Math.max(3, x(bar.end) - x(bar.start)));
      shape.setAttribute("height", h);
      shape.setAttribute("class", `bar bar-${bar.class === "ok" ? "ok" : bar.class === "cached" || bar.class === "running" ? bar.class : "failed"}${onPath ? " on-path" : ""}`);
      shape.setAttribute("data-step", key);
      const tip = document.createElementNS(ns, "title");
      tip.textContent = `${key} attempt ${bar.attempt}: ${bar.class}, ${took(bar.end - bar.start)}`;
      shape.append(tip);
      svg.append(shape);
    });
    y += h + gap;
  }
  const axis = document.createElementNS(ns, "text");
  axis.setAttribute("x", width - 10); axis.setAttribute("y", y + 14);
  axis.setAttribute("text-anchor", "end");
  axis.textContent = took(span);
  svg.append(axis);
  return el("div", {},
    el("p", { class: "meta", id: "critical-path" }, `critical path (★): ${[...critical].join(" → ")}`),
    total > rows.size ? el("p", { class: "meta", id: "timeline-cut" },
      `${rows.size} of ${total} rows: the critical path and the longest; every step is in the table below.`) : null,
    el("p", { class: "meta" }, "Bars: ", el("span", { class: "key key-ok" }, "ran"), " ",
      el("span", { class: "key key-failed" }, "failed"), " ", el("span", { class: "key key-cached" }, "cache hit"), " ",
      el("span", { class: "key key-running" }, "running"), " · a thin line is the wait before a retry"),
    svg);
}

// One step: where its result came from, every attempt, its output and its
// logs (filtered by level, searched), from the run's journal events.
function stepPanel(runId, bundle, name, view, events) {
  const mine = events.filter((e) => e.step === name);
  const succeeded = mine.filter((e) => e.event === "step-succeeded").pop();
  const attempts = mine.filter((e) => e.event === "attempt-finished");
  const lines = attempts.flatMap((a) => (a.logs ?? []).map((l) => ({ ...l, attempt: a.attempt, index: a.index })));
  const source = succeeded ? { executed: "ran", cached: "from the cache (a hit on its key)", journal: "kept from the run it resumes" }[succeeded.source] ?? succeeded.source : null;
  const level = el("select", { id: "log-level", "aria-label": "lowest level" },
    ["trace", "debug", "info", "warn", "error"].map((l) => el("option", { value: l, ...(l === "trace" ? { selected: "" } : {}) }, l)));
  const search = el("input", { id: "log-search", type: "search", placeholder: "search the logs", "aria-label": "search the logs" });
  const order = ["trace", "debug", "info", "warn", "error"];
  const logBox = el("pre", { id: "step-logs" });
  const fill = () => {
    const floor = order.indexOf(level.value);
    const needle = search.value.toLowerCase();
    logBox.textContent = lines
      .filter((l) => order.indexOf(l.level) >= floor && (!needle || l.message.toLowerCase().includes(needle)))
      .map((l) => `#${l.attempt}${l.index === null || l.index === undefined ? "" : "[" + l.index + "]"} ${l.level}: ${l.message}`)
      .join("\n") || "(no lines)";
  };
  level.addEventListener("change", fill);
  search.addEventListener("input", fill);
  fill();
  const output = el("div", { id: "step-output" }, succeeded ? "…" : "No output: the step has not succeeded.");
  const cache = el("p", { class: "meta", id: "step-cache" });
  const outputUrl = `/v1/runs/${runId}/steps/${encodeURIComponent(name)}/output`;
  if (succeeded) {
    api("GET", outputUrl).then((answer) => {
      if (!answer.ok) { output.textContent = answer.body?.message ?? "The output is not available."; return; }
      cache.textContent = answer.body.cache ?? "";
      output.replaceChildren(
        el("p", { class: "meta" }, `cache key${answer.body.keys.length > 1 ? "s" : ""}: `,
          answer.body.keys.map((k) => el("code", { title: k }, k.slice(0, 16) + "… "))),
        ...document_(answer.body.output, outputUrl, `${name}.json`));
    });
  }
  // The input, rebuilt on the server from what the step's dependencies left.
  const input = el("div", { id: "step-input" }, "…");
  const inputUrl = `/v1/runs/${runId}/steps/${encodeURIComponent(name)}/input`;
  api("GET", inputUrl).then((answer) => {
    if (!answer.ok) { input.textContent = answer.body?.message ?? "The input is not available."; return; }
    const { verified, unrenderable } = answer.body;
    if (unrenderable) { input.textContent = `It could not be built: ${unrenderable}`; return; }
    input.replaceChildren(
      el("p", { class: "meta", id: "input-verified" }, verified === true
        ? "✓ the same bytes the step was given (their hash matches its stored result)"
        : verified === false ? "✗ rebuilt, but its hash differs from the one the stored result keeps"
          : "rebuilt from the outputs the step's dependencies left"),
      ...document_(answer.body.input, inputUrl, `${name}.input.json`));
  });
  const grants = el("p", { class: "meta", id: "step-grants" });
  if (bundle) {
    api("GET", `/v1/bundles/${bundle}`).then((answer) => {
      if (!answer.ok) return;
      const caps = answer.body.capabilities?.[name] ?? [];
      grants.textContent = `Granted: ${caps.length ? caps.join(", ") : "nothing (no files, network, clock or randomness)"}`;
    });
  }
  return el("section", { id: "step-panel", "aria-label": `step ${name}` },
    el("h2", {}, `Step ${name} `, status(view?.status ?? "pending")),
    grants,
    el("p", { class: "meta" },
      source ? `Result ${source}. ` : "",
      view?.elements ? `${view.elements} elements. ` : "",
      view?.detail ?? ""),
    el("table", { id: "attempts" },
      el("thead", {}, el("tr", {}, ["attempt", "element", "class", "fuel", "peak memory", "duration", "message"].map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, attempts.map((a) => el("tr", {},
        el("td", {}, a.attempt), el("td", {}, a.index ?? ""), el("td", {}, a.class ?? "ok"),
        el("td", {}, a.fuel.toLocaleString()), el("td", {}, a.peak_memory ? size(a.peak_memory) : ""),
        el("td", {}, took(Math.round(a.duration_us / 1000))),
        el("td", { class: "detail" }, a.message ?? ""))))),
    cache,
    el("h3", {}, "Input"), input,
    el("h3", {}, "Output"), output,
    el("h3", {}, "Logs"), el("div", { class: "filters" }, level, search), logBox);
}

// A JSON document, pretty, cut past 20 kB with a link to all of it.
function document_(value, url, file) {
  const text = JSON.stringify(value, null, 2) ?? "null";
  const limit = 20000;
  return [
    el("pre", {}, text.length > limit ? text.slice(0, limit) + "\n… (cut)" : text),
    el("a", { href: url, download: file }, text.length > limit ? "download it whole" : "download"),
  ];
}

function parseEvents(text) {
  return text.split("\n").filter((l) => l.startsWith("data:"))
    .map((l) => { try { return JSON.parse(l.slice(5)); } catch { return null; } })
    .filter(Boolean);
}

// One run: its DAG, its steps, the failed steps' logs, live while it runs.
function showRun(id) {
  let stopped = false;
  let source = null;
  let pending = null;
  let events = null;
  // The stream said the run finished: its events are all here, and the
  // run is only waiting for its end to be recorded.
  let finished = false;
  let lastDrawn = null;
  // The step panel's place, filled from what was last drawn: choosing
  // another step fetches nothing but that step's output.
  const panelSlot = el("div", { id: "panel-slot" });
  // The DAG's zoom and open layers, kept across redraws.
  const dagView = { opened: new Set(), scale: undefined };
  let drawnRun = null;
  // What the panel was last built from: a live run redraws often, and the
  // panel (which fetches the step's input, output and grants) is built
  // again only when its step, state, attempts or events changed.
  let panelShown = null;
  const fillPanel = () => {
    const chosen = new URLSearchParams(location.hash.split("?")[1] ?? "").get("step");
    if (!chosen || !drawnRun) { panelSlot.replaceChildren(); panelShown = null; return; }
    const view = drawnRun.steps[chosen];
    const seen = (events ?? []).filter((e) => e.step === chosen).length;
    const shown = `${drawnRun.run.id}|${chosen}|${view?.status}|${view?.attempts}|${seen}`;
    if (shown === panelShown) return;
    panelShown = shown;
    panelSlot.replaceChildren(stepPanel(drawnRun.run.id, drawnRun.run.bundle, chosen, view, events ?? []));
  };
  const load = async () => {
    pending = null;
    // The journal is asked for at once, beside the run: an ended run's
    // stream ends by itself; a live run's is dropped (its events come
    // through the EventSource).
    const early = source ? null : new AbortController();
    const journalText = early
      ? fetch(`/v1/runs/${encodeURIComponent(id)}/events`, { credentials: "same-origin", signal: early.signal })
        .then((r) => (r.ok ? r.text() : "")).catch(() => "")
      : null;
    const answer = await api("GET", `/v1/runs/${encodeURIComponent(id)}`);
    if (stopped) { early?.abort(); return; }
    if (!answer.ok) {
      early?.abort();
      main.replaceChildren(el("p", { role: "alert", id: "not-found" }, answer.body?.message ?? "No such run."));
      return;
    }
    const { run, steps, graph } = answer.body;
    const shown = run.live ? "running" : run.status;
    if (!run.live && journalText) {
      events = parseEvents(await journalText);
      if (stopped) return;
    } else {
      early?.abort();
    }
    // Drawn again only when something changed: a redraw loses focus.
    const drawn = JSON.stringify(answer.body) + (events?.length ?? 0);
    if (drawn === lastDrawn) {
      goOn(run);
      return;
    }
    lastDrawn = drawn;
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
      if (!run.live && run.bundle) {
        actions.append(el("button", {
          type: "button", "data-action": "Rerun",
          onclick: async () => {
            if (!confirm(`Start a new run of ${run.pipeline}?`)) return;
            const result = await api("POST", "/v1/runs", { body: { bundle: run.bundle } });
            if (result.ok) location.hash = `#/runs/${result.body.id}`;
          },
        }, "Rerun"));
      }
    }
    // A replay says how its outputs compare with the run it replayed.
    let verification = null;
    if (run.replay_of && !run.live) {
      const answer = await api("GET", `/v1/runs/${run.id}/verification`);
      if (stopped) return;
      if (answer.ok) {
        const v = answer.body;
        verification = el("section", { id: "verification" },
          el("h2", {}, "Verification"),
          el("p", {}, `Replay of `, el("a", { href: `#/runs/${run.replay_of}` }, run.replay_of), `: ${v.compared} steps compared, `,
            v.mismatches.length ? `${v.mismatches.length} differ.` : "all identical."),
          v.mismatches.length ? el("ul", {}, v.mismatches.map((m) => el("li", { "data-step": m.step }, `${m.step}: `,
            m.replay.startsWith("failed: ") ? m.replay : `output ${m.original.slice(0, 12)}… became ${m.replay.slice(0, 12)}…`))) : null);
      }
    }
    drawnRun = { run, steps };
    fillPanel();
    const rows = (graph ?? Object.keys(steps).map((name) => ({ name, after: [] }))).map((node) => {
      const s = steps[node.name] ?? { status: "pending", attempts: 0, fuel: 0, detail: "" };
      return el("tr", { "data-step": node.name },
        el("th", { scope: "row" }, el("a", { href: `#/runs/${run.id}?step=${encodeURIComponent(node.name)}` }, node.name)),
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
    // Left while the logs were read: this page is no longer the one shown.
    if (stopped) return;
    main.replaceChildren(el("section", {},
      el("p", {}, el("a", { href: "#/runs" }, "← runs")),
      el("h1", {}, `${run.pipeline} `, el("span", { id: "run-status" }, status(shown))),
      el("p", { class: "meta" }, `run ${run.id} · started ${when(run.started_ms)}`,
        run.finished_ms ? ` · took ${took(run.finished_ms - run.started_ms)}` : ""),
      actions,
      verification,
      graph ? dag(graph, steps, dagView) : el("p", {}, "The pipeline's graph is not available."),
      panelSlot,
      el("h2", {}, "Timeline"),
      (events && timeline(events, graph)) ?? el("p", {}, "…"),
      el("table", { id: "steps" },
        el("thead", {}, el("tr", {}, ["step", "status", "attempts", "duration", "fuel", "detail"].map((h) => el("th", { scope: "col" }, h)))),
        el("tbody", {}, rows)),
      logs));
    goOn(run);
  };
  // A live run is followed; one whose end is being recorded is asked for
  // again shortly (following it anew would start its events over).
  const goOn = (run) => {
    if (!run.live || source) return;
    if (finished) { if (!pending) pending = setTimeout(load, 100); }
    else follow();
  };
  const follow = () => {
    source = new EventSource(`/v1/runs/${encodeURIComponent(id)}/events`);
    events = [];
    const seen = new Set();
    const changed = (message) => {
      // A reconnected stream goes on after the last event it had; an id
      // seen already is not counted twice.
      if (message?.data && !seen.has(message.lastEventId)) {
        seen.add(message.lastEventId);
        try { events.push(JSON.parse(message.data)); } catch { /* not an event */ }
      }
      if (!pending) pending = setTimeout(load, 150);
    };
    source.onmessage = changed;
    for (const kind of ["step-scheduled", "attempt-started", "attempt-finished", "item-succeeded",
      "step-succeeded", "step-failed", "step-skipped", "step-cancelled"]) {
      source.addEventListener(kind, changed);
    }
    source.addEventListener("run-finished", (message) => {
      changed(message); finished = true; source.close(); source = null; load();
    });
    // The stream ends when the run does; a dropped one reconnects by itself
    // and carries on from the last event it had.
    source.onerror = () => { if (source && source.readyState === EventSource.CLOSED) { source = null; load(); } };
  };
  load();
  const stop = () => { stopped = true; if (source) source.close(); clearTimeout(pending); };
  stop.runId = id;
  stop.select = () => { fillPanel(); panelSlot.scrollIntoView?.({ block: "nearest" }); };
  return stop;
}

function route() {
  if (!session.role) return;
  const hash = location.hash || "#/runs";
  const run = hash.match(/^#\/runs\/([0-9a-f]{1,64})(\?.*)?$/);
  // Another step of the run on show: only its panel changes.
  if (run && stopView.runId === run[1]) {
    stopView.select();
    return;
  }
  stopView();
  if (run) stopView = showRun(run[1]);
  else if (hash.startsWith("#/bundles")) stopView = showBundles();
  else if (hash.startsWith("#/usage")) stopView = showUsage();
  else if (hash.startsWith("#/audit")) stopView = showAudit();
  else stopView = showRuns();
}

window.addEventListener("hashchange", route);

const start = await api("GET", "/v1/session");
if (start.ok && start.body.csrf) signedIn(start.body);
else signedOut();
