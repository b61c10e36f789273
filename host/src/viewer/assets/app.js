// The drover run viewer: runs and their event timelines (and a model-backed run's conversation),
// live long-lived agents, agent types and the queue, kept current by polling the host's HTTP
// API. No build step, no dependencies.
"use strict";

const POLL_MS = 2000;
const PAGE = 50;
const state = { timers: [], view: null };

// ---- API ------------------------------------------------------------------------------------

// The token is kept for this tab only, and a token given in the address is dropped from it at
// once (out of the history, bookmarks and screen).
const params = new URLSearchParams(location.search);
if (params.has("token")) {
  if (params.get("token")) sessionStorage.setItem("drover-token", params.get("token"));
  params.delete("token");
  const rest = params.toString();
  history.replaceState(null, "", location.pathname + (rest ? `?${rest}` : "") + location.hash);
}

async function api(path, options = {}) {
  const headers = { "content-type": "application/json", ...(options.headers || {}) };
  const token = sessionStorage.getItem("drover-token");
  if (token) headers.authorization = `Bearer ${token}`;
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) {
    askForToken();
    throw new Error("this host requires an access token");
  }
  const body = await response.json().catch(() => null);
  if (!response.ok && response.status !== 408) {
    const e = body && body.error;
    throw new Error(e ? `${e.tag}: ${e.message}` : `HTTP ${response.status}`);
  }
  return body;
}

function askForToken() {
  const dialog = document.getElementById("token-dialog");
  if (!dialog.open) dialog.showModal();
}

document.getElementById("token-form").addEventListener("submit", () => {
  sessionStorage.setItem("drover-token", document.getElementById("token-input").value);
  render();
});

// ---- formatting -----------------------------------------------------------------------------

function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) =>
    ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}
const short = (id) => (id && id.length > 16 ? `${id.slice(0, 8)}…${id.slice(-4)}` : id || "");
function ago(ms) {
  if (!ms) return "—";
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ago`;
  return `${Math.floor(s / 86400)}d ago`;
}
function duration(start, end) {
  if (!start) return "—";
  return span((end || Date.now()) - start);
}
function span(ms) {
  if (ms < 1000) return `${ms} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
  return `${Math.floor(ms / 60000)}m ${Math.round((ms % 60000) / 1000)}s`;
}
function bytes(n) {
  if (n == null) return "—";
  if (n >= 1 << 20) return `${(n / (1 << 20)).toFixed(1)} MiB`;
  if (n >= 1 << 10) return `${(n / (1 << 10)).toFixed(0)} KiB`;
  return `${n} B`;
}
const number = (n) => (n == null ? "—" : Number(n).toLocaleString("en-US"));
// US dollars, with enough places for the fractions of a cent a model call costs.
function usd(n) {
  if (n == null) return "—";
  const v = Number(n);
  if (v === 0) return "$0";
  return `$${v.toFixed(v >= 1 ? 2 : v >= 0.01 ? 4 : 6)}`;
}
const tokens = (u) => (u ? number(u.inputTokens + u.outputTokens) : "—");
const clock = (ms) => new Date(ms).toISOString().slice(11, 23);
const stamp = (ms) => (ms ? new Date(ms).toISOString().replace("T", " ").slice(0, 19) + " UTC" : "—");
const badge = (status, extra = "") =>
  `<span class="badge s-${esc(status)} ${extra}" data-status="${esc(status)}">${esc(status)}</span>`;
const pretty = (value) => esc(JSON.stringify(value, null, 2));

function toast(message, bad = false) {
  const el = document.getElementById("toast");
  el.textContent = message;
  el.className = bad ? "toast bad" : "toast";
  el.hidden = false;
  clearTimeout(el.timer);
  el.timer = setTimeout(() => (el.hidden = true), 4000);
}

// ---- routing --------------------------------------------------------------------------------

const views = {
  runs: viewRuns,
  run: viewRun,
  job: viewJob,
  agents: viewAgents,
  templates: viewTemplates,
  queue: viewQueue,
};

function route() {
  const [name, id] = location.hash.replace(/^#\/?/, "").split("/");
  if (name === "runs" && id) return { view: "run", id: decodeURIComponent(id) };
  if (name === "jobs" && id) return { view: "job", id: decodeURIComponent(id) };
  return { view: views[name] ? name : "runs" };
}

function every(fn, ms = POLL_MS) {
  state.timers.push(setInterval(() => fn().catch(showError), ms));
}

function showError(e) {
  toast(e.message || String(e), true);
}

async function render() {
  state.timers.forEach(clearInterval);
  state.timers = [];
  const r = route();
  document.querySelectorAll("[data-nav]").forEach((a) =>
    a.classList.toggle("active", a.dataset.nav === (r.view === "run" || r.view === "job" ? "runs" : r.view)));
  const main = document.getElementById("main");
  main.dataset.view = r.view;
  try {
    await views[r.view](main, r);
  } catch (e) {
    main.innerHTML = `<div class="panel error-box">${esc(e.message)}</div>`;
  }
}

window.addEventListener("hashchange", render);

// Host-wide counts need an admin token; with a tenant's token there are none (null).
async function hostStats() {
  try {
    return await api("/v1/stats");
  } catch (e) {
    if (String(e.message).startsWith("Forbidden")) return null;
    throw e;
  }
}

async function refreshSummary() {
  const el = document.getElementById("summary");
  try {
    const stats = await hostStats();
    el.innerHTML = stats ? `<span><span class="dot"></span>host up</span>
      <span><b>${number(stats.jobs.queued)}</b> queued</span>
      <span><b>${number(stats.jobs.leased)}</b> running</span>
      <span><b>${number(stats.jobs.failed)}</b> failed</span>` : `<span><span class="dot"></span>host up</span>`;
  } catch {
    el.innerHTML = `<span><span class="dot down"></span>host unreachable</span>`;
  }
}

// ---- runs -----------------------------------------------------------------------------------

const RUN_STATUSES = ["running", "success", "error", "cancelled", "quota", "timeout", "interrupted", "lost"];

async function viewRuns(main) {
  const q = new URLSearchParams(location.hash.split("?")[1] || "");
  const filter = { status: q.get("status") || "", agentId: q.get("agent") || "", page: Number(q.get("page") || 0) };
  const templates = await api("/v1/templates");
  main.innerHTML = `
    <h1>Runs</h1><p class="sub">Every run of every agent, newest first.</p>
    <div class="toolbar">
      <select id="f-status" data-testid="filter-status"><option value="">all statuses</option>
        ${RUN_STATUSES.map((s) => `<option ${s === filter.status ? "selected" : ""}>${s}</option>`).join("")}</select>
      <select id="f-agent" data-testid="filter-agent"><option value="">all agents</option>
        ${templates.templates.map((t) => `<option ${t.id === filter.agentId ? "selected" : ""}>${esc(t.id)}</option>`).join("")}</select>
      <span class="right muted" id="runs-updated"></span>
    </div>
    <div class="panel flush"><table data-testid="runs-table">
      <thead><tr><th>Run</th><th>Agent</th><th>Status</th><th>Job</th><th>Attempt</th><th>Started</th><th>Duration</th><th class="num">Fuel</th><th class="num">Memory</th><th class="num">Tokens</th><th class="num">Cost</th></tr></thead>
      <tbody id="runs-body"></tbody></table>
      <div class="pager"><button id="prev">← Newer</button><span id="page-label"></span><button id="next">Older →</button></div>
    </div>`;
  const go = (changes) => {
    const next = { ...filter, ...changes };
    const p = new URLSearchParams();
    if (next.status) p.set("status", next.status);
    if (next.agentId) p.set("agent", next.agentId);
    if (next.page) p.set("page", next.page);
    location.hash = `#/runs${p.toString() ? "?" + p : ""}`;
  };
  main.querySelector("#f-status").onchange = (e) => go({ status: e.target.value, page: 0 });
  main.querySelector("#f-agent").onchange = (e) => go({ agentId: e.target.value, page: 0 });
  main.querySelector("#prev").onclick = () => go({ page: Math.max(0, filter.page - 1) });
  main.querySelector("#next").onclick = () => go({ page: filter.page + 1 });
  main.querySelector("#prev").disabled = filter.page === 0;

  const load = async () => {
    const p = new URLSearchParams({ limit: PAGE, offset: filter.page * PAGE });
    if (filter.status) p.set("status", filter.status);
    if (filter.agentId) p.set("agentId", filter.agentId);
    const { runs } = await api(`/v1/runs?${p}`);
    syncRows(main.querySelector("#runs-body"), runs, (r) => r.id, (tr, r) => {
      tr.className = "link";
      tr.dataset.run = r.id;
      tr.dataset.testid = "run-row";
      tr.onclick = (e) => { if (e.target.tagName !== "A") location.hash = `#/runs/${encodeURIComponent(r.id)}`; };
      fillRow(tr, [
        [`<a href="#/runs/${encodeURIComponent(r.id)}">${esc(short(r.id))}</a>`, "mono"],
        [esc(r.agentId)],
        [badge(r.status)],
        [esc(short(r.jobId)), "mono"],
        [String(r.attempt), "num"],
        [`<span title="${esc(stamp(r.startedAt))}">${ago(r.startedAt)}</span>`],
        [r.status === "running" ? "running" : duration(r.startedAt, r.endedAt)],
        [number(r.fuelUsed), "num"],
        [bytes(r.peakMemory), "num"],
        [r.usage ? `<span title="${number(r.usage.inputTokens)} in / ${number(r.usage.outputTokens)} out">${tokens(r.usage)}</span>` : "—", "num tokens"],
        [r.usage ? usd(r.usage.costUsd) : "—", "num cost"],
      ]);
    }, `<td colspan="11" class="empty">No runs yet. Enqueue a job from <a href="#/templates">Agent types</a>.</td>`);
    main.querySelector("#next").disabled = runs.length < PAGE;
    main.querySelector("#page-label").textContent = `page ${filter.page + 1}`;
    main.querySelector("#runs-updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  };
  await load();
  every(load);
}

// ---- one job: its latest run -----------------------------------------------------------------

// A job's page is its latest run's; a job that has not run yet says so (and opens its run once
// it has one).
async function viewJob(main, { id }) {
  const latest = async () => {
    const { runs } = await api(`/v1/runs?jobId=${encodeURIComponent(id)}&limit=1`);
    if (runs.length) location.replace(`#/runs/${encodeURIComponent(runs[0].id)}`);
    return runs.length > 0;
  };
  if (await latest()) return;
  const { job } = await api(`/v1/jobs/${encodeURIComponent(id)}`);
  main.innerHTML = `
    <p class="sub"><a href="#/queue">← Queue</a></p>
    <div class="title-row"><h1>Job <span class="mono">${esc(short(job.id))}</span></h1>${badge(job.status)}</div>
    <p class="sub mono">${esc(job.id)}</p>
    <div class="panel"><p class="muted" data-testid="job-not-run">${esc(job.agentId)} has not run this job yet.</p></div>`;
  every(latest, 1000);
}

// ---- a job's tree: the jobs its root's runs spawned, and theirs -------------------------------

// Renders the jobs of one tree (each with `parentJobId`) as nested lists, oldest first under
// each parent; `currentId`'s job is marked and not linked.
function treeHtml(jobs, currentId) {
  jobs = [...jobs].sort((a, b) => a.createdAt - b.createdAt || (a.id < b.id ? -1 : 1));
  const ids = new Set(jobs.map((j) => j.id));
  const below = new Map();
  jobs.forEach((j) => {
    const parent = j.parentJobId && ids.has(j.parentJobId) ? j.parentJobId : "";
    if (!below.has(parent)) below.set(parent, []);
    below.get(parent).push(j);
  });
  const node = (j) => {
    const name = j.id === currentId
      ? `<strong>${esc(j.agentId)}</strong>`
      : `<a href="#/jobs/${encodeURIComponent(j.id)}" data-testid="tree-link">${esc(j.agentId)}</a>`;
    const children = (below.get(j.id) || []).map(node).join("");
    return `<li data-testid="tree-node" data-job="${esc(j.id)}" data-depth="${Number(j.depth)}"${j.id === currentId ? ' class="current"' : ""}>
      <span class="node">${name} ${badge(j.status)} <span class="mono muted">${esc(short(j.id))}</span></span>
      ${children ? `<ul>${children}</ul>` : ""}</li>`;
  };
  return (below.get("") || []).map(node).join("");
}

// The tree panel of a run's page: shown when the run's job has a parent or children.
function treePanel(main, job) {
  const panel = main.querySelector("#tree-panel");
  return async () => {
    if (!job) return;
    const { jobs } = await api(`/v1/jobs?rootJobId=${encodeURIComponent(job.rootJobId)}&limit=500`);
    panel.hidden = jobs.length < 2;
    if (panel.hidden) return;
    main.querySelector("#tree-summary").textContent =
      `${jobs.length} jobs${jobs.length === 500 ? " (the first 500)" : ""}, root ${short(job.rootJobId)}`;
    main.querySelector("#tree").innerHTML = treeHtml(jobs, job.id);
  };
}

// ---- one run --------------------------------------------------------------------------------

async function viewRun(main, { id }) {
  const { run } = await api(`/v1/runs/${encodeURIComponent(id)}`);
  const events = [];
  const hidden = new Set();
  main.innerHTML = `
    <p class="sub"><a href="#/runs">← Runs</a></p>
    <div class="title-row"><h1>Run <span class="mono">${esc(short(run.id))}</span></h1>
      <span id="run-status" data-testid="run-status"></span><span class="grow"></span>
      <span id="run-actions"></span></div>
    <p class="sub mono">${esc(run.id)}</p>
    <div class="panel"><div class="facts" id="facts"></div></div>
    <div class="panel flush" id="tree-panel" data-testid="tree-panel" hidden>
      <div class="panel-head"><h2>Tree</h2><span class="muted" id="tree-summary"></span></div>
      <ul class="tree" id="tree" data-testid="tree"></ul></div>
    <div class="two">
      <div class="panel"><h2>Input</h2><pre class="json" data-testid="run-input">${pretty(run.input)}</pre></div>
      <div class="panel" id="result"></div>
    </div>
    <div class="panel flush" id="chat-panel" data-testid="chat-panel" hidden>
      <div class="panel-head"><h2>Chat</h2><span class="muted" id="chat-summary"></span></div>
      <div class="conversation" id="chat" data-testid="chat"></div>
      <form id="chat-form" class="toolbar chat-form">
        <input id="chat-input" class="wide" data-testid="chat-input" placeholder="a message: JSON, or plain text" autocomplete="off">
        <button class="primary" data-testid="chat-send">Send</button></form>
    </div>
    <div class="panel flush" id="conversation-panel" hidden>
      <div class="panel-head"><h2>Conversation</h2><span class="muted" id="conversation-summary"></span></div>
      <div class="conversation" id="conversation" data-testid="conversation"></div>
    </div>
    <div class="panel flush">
      <div class="panel-head"><h2>Events</h2><span class="muted" id="event-count"></span><span class="grow"></span>
        <div class="chips" id="kinds" data-testid="event-kinds"></div></div>
      <ul class="timeline" id="timeline" data-testid="timeline"></ul>
    </div>`;

  // The job, for its attempts (a run shows which claim of the job it is).
  let job = null;
  const loadJob = async () => {
    if (!run.jobId) return;
    try { job = (await api(`/v1/jobs/${encodeURIComponent(run.jobId)}`)).job; } catch { job = null; }
  };
  const attempts = (run) => job
    ? `${run.attempt} <span class="muted">· ${job.attempts} failed of ${job.maxAttempts} allowed</span>`
    : `${run.attempt}`;

  const renderRun = (run) => {
    main.querySelector("#run-status").innerHTML = badge(run.status);
    const fact = (label, value) => `<div class="fact"><div class="label">${label}</div><div class="value">${value}</div></div>`;
    main.querySelector("#facts").innerHTML = [
      fact("Agent", esc(run.agentId)),
      fact("Job", `<span class="mono">${esc(run.jobId || "—")}</span>`),
      fact("Attempt", attempts(run)),
      fact("Sandbox", esc(run.sandbox || "—")),
      fact("Lifecycle", esc(run.lifecycle)),
      fact("Started", esc(stamp(run.startedAt))),
      fact("Ended", run.endedAt ? esc(stamp(run.endedAt)) : "—"),
      fact("Duration", run.status === "running" ? `running for ${duration(run.startedAt)}` : duration(run.startedAt, run.endedAt)),
      fact("Fuel used", number(run.fuelUsed)),
      fact("Peak memory", bytes(run.peakMemory)),
      ...(run.usage ? [
        fact("Model calls", number(run.usage.turns)),
        fact("Tokens", `${number(run.usage.inputTokens)} in · ${number(run.usage.outputTokens)} out`),
        fact("Cost", usd(run.usage.costUsd)),
        fact("Tool calls", number(run.usage.toolCalls)),
      ] : []),
      fact("Last heartbeat", !run.heartbeatAt ? "—" : run.status === "running" ? ago(run.heartbeatAt) : esc(stamp(run.heartbeatAt))),
      fact("Parent run", run.parentRunId ? `<a href="#/runs/${encodeURIComponent(run.parentRunId)}" data-testid="parent-run">${esc(short(run.parentRunId))}</a>` : "—"),
      fact("Worker", `<span class="mono">${esc(run.workerId || "—")}</span>`),
    ].join("");
    main.querySelector("#result").innerHTML = run.error
      ? `<h2>Error</h2><div class="error-box" data-testid="run-error"><span class="tag">${esc(run.error.tag)}</span>${esc(run.error.message)}</div>`
      : run.status === "running"
        ? `<h2>Output</h2><p class="muted">Still running.</p>`
        : `<h2>Output</h2><pre class="json" data-testid="run-output">${pretty(run.output)}</pre>`;
    const live = run.status === "running" && run.jobId;
    setButtons(main.querySelector("#run-actions"), live ? `live ${run.lifecycle}` : "", () => live
      ? [
        ...(run.lifecycle === "long-lived" ? [button("Stop", "", () => act(run.jobId, "stop"), "stop-run")] : []),
        button("Cancel", "danger", () => act(run.jobId, "cancel"), "cancel-run"),
      ]
      : []);
  };

  const renderEvents = () => {
    const counts = {};
    events.forEach((e) => (counts[e.kind] = (counts[e.kind] || 0) + 1));
    main.querySelector("#kinds").innerHTML = Object.keys(counts).sort().map((k) =>
      `<span class="chip ${hidden.has(k) ? "off" : ""}" data-kind="${esc(k)}">${esc(k)}<span class="n">${counts[k]}</span></span>`).join("");
    main.querySelectorAll(".chip").forEach((chip) => (chip.onclick = () => {
      const k = chip.dataset.kind;
      hidden.has(k) ? hidden.delete(k) : hidden.add(k);
      renderEvents();
    }));
    const shown = events.filter((e) => !hidden.has(e.kind));
    main.querySelector("#event-count").textContent = `${events.length} events`;
    main.querySelector("#timeline").innerHTML = shown.length
      ? shown.map((e) => `<li class="event k-${esc(e.kind)}" data-testid="event" data-kind="${esc(e.kind)}">
          <span class="seq">#${e.seq}</span><span class="ts">${clock(e.ts)}</span>
          <details><summary><span class="kind">${esc(e.kind)}</span><span class="preview">${esc(JSON.stringify(e.payload))}</span></summary>
          <pre class="json">${pretty(e.payload)}</pre></details></li>`).join("")
      : `<li class="empty">No events${events.length ? " of the selected kinds" : " yet"}.</li>`;
  };

  const conversation = conversationView(main.querySelector("#conversation"), main.querySelector("#conversation-panel"),
    main.querySelector("#conversation-summary"));
  let current = run;
  const load = async () => {
    const after = events.length ? events[events.length - 1].seq : 0;
    const page = await api(`/v1/runs/${encodeURIComponent(id)}/events?after=${after}&limit=1000`);
    if (page.events.length) {
      events.push(...page.events);
      renderEvents();
      conversation.add(page.events);
    }
    if (current.status === "running") {
      current = (await api(`/v1/runs/${encodeURIComponent(id)}`)).run;
      if (current.status !== "running") await loadJob();
      renderRun(current);
    }
  };
  await loadJob();
  renderRun(run);
  renderEvents();
  await load();
  every(load, 1000);
  const tree = treePanel(main, job);
  await tree();
  every(tree, 2000);
  if (run.lifecycle === "long-lived" && run.jobId) {
    const chat = chatPanel(main, run.jobId, load);
    await chat();
    every(chat, 1000);
  }
}

// ---- chatting with a long-lived agent -------------------------------------------------------

// The messages posted to a long-lived agent's inbox and its replies, oldest first, and a form
// to post one (JSON, or else the text as a JSON string) and wait a while for the reply. Returns
// the function that refreshes it.
function chatPanel(main, jobId, reloadEvents) {
  main.querySelector("#chat-panel").hidden = false;
  const root = main.querySelector("#chat");
  const shownMessages = new Map();
  const show = (value) => (typeof value === "string" ? value : JSON.stringify(value, null, 2));
  const bubble = (role, label, value) => {
    const node = el("div", `msg role-${role}`);
    node.append(el("div", "role", label), textBlock(show(value)));
    return node;
  };
  const load = async () => {
    const { messages } = await api(`/v1/agents/${encodeURIComponent(jobId)}/messages?limit=100`);
    for (const m of messages) {
      let seen = shownMessages.get(m.id);
      if (!seen) {
        const sent = bubble("user", "message", m.body);
        sent.dataset.testid = "chat-message";
        const answer = el("div", "msg pending", "no reply yet");
        answer.dataset.testid = "chat-pending";
        root.append(sent, answer);
        seen = { answer, replied: false };
        shownMessages.set(m.id, seen);
      }
      if (m.reply != null && !seen.replied) {
        const reply = bubble("assistant", "reply", m.reply);
        reply.dataset.testid = "chat-reply";
        seen.answer.replaceWith(reply);
        seen.answer = reply;
        seen.replied = true;
      }
    }
    const replied = messages.filter((m) => m.reply != null).length;
    main.querySelector("#chat-summary").textContent = messages.length
      ? `${messages.length} message${messages.length === 1 ? "" : "s"} · ${replied} replied`
      : "No messages yet.";
  };
  const form = main.querySelector("#chat-form");
  form.onsubmit = async (e) => {
    e.preventDefault();
    const input = main.querySelector("#chat-input");
    const text = input.value.trim();
    if (!text) return;
    let message;
    try { message = JSON.parse(text); } catch { message = text; }
    const send = form.querySelector("button");
    send.disabled = true;
    try {
      const posted = api(`/v1/agents/${encodeURIComponent(jobId)}/messages?waitMs=10000`,
        { method: "POST", body: JSON.stringify({ message }) });
      input.value = "";
      await load().catch(() => {});
      await posted;
      await load();
      await reloadEvents();
    } catch (err) { showError(err); } finally { send.disabled = false; }
  };
  return load;
}

// ---- a run's conversation -------------------------------------------------------------------

// Content longer than this is collapsed, with a toggle to show all of it.
const COLLAPSE_CHARS = 400;
const CONVERSATION_KINDS = new Set(["model_request", "model_response", "model_error", "tool_call", "tool_result"]);

// An element with text content only: whatever a model, a tool or an agent wrote is never parsed
// as markup.
function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text != null) node.textContent = String(text);
  return node;
}

// Text as a block, collapsed past COLLAPSE_CHARS with a "show all" toggle.
function textBlock(text, cls = "text") {
  const full = String(text ?? "");
  const wrap = el("div", "block");
  const body = el("pre", cls, full);
  wrap.append(body);
  if (full.length > COLLAPSE_CHARS) {
    const cut = `${full.slice(0, COLLAPSE_CHARS)}…`;
    const toggle = el("button", "toggle");
    toggle.type = "button";
    toggle.dataset.testid = "show-all";
    const set = (open) => {
      wrap.classList.toggle("collapsed", !open);
      body.textContent = open ? full : cut;
      toggle.textContent = open ? "show less" : `show all (${number(full.length)} characters)`;
    };
    toggle.onclick = () => set(wrap.classList.contains("collapsed"));
    set(false);
    wrap.append(toggle);
  }
  return wrap;
}

// Arguments and results as the tool saw them: JSON is indented, anything else shown as written.
function jsonText(text) {
  if (typeof text !== "string") return JSON.stringify(text ?? null, null, 2);
  try { return JSON.stringify(JSON.parse(text), null, 2); } catch { return text; }
}

// Renders the conversation events of a run (`model_request`, `model_response`, `model_error`,
// `tool_call`, `tool_result`) as chat messages, appended as they arrive.
function conversationView(root, panel, summary) {
  let seen = 0; // conversation messages shown so far (`firstMessage` counts in these)
  let calls = 0, input = 0, output = 0, cost = 0;
  const cards = new Map(); // tool call id → card
  const answered = new Set(); // tool call ids with a result shown

  const meta = (parts) => el("div", "meta", parts.filter(Boolean).join(" · "));

  const bubble = (role, content, extra = []) => {
    const msg = el("div", `msg role-${role}`);
    msg.dataset.testid = "message";
    msg.dataset.role = role;
    msg.append(el("div", "role", role));
    if (content) msg.append(textBlock(content));
    msg.append(...extra);
    root.append(msg);
    return msg;
  };

  const toolCard = (id, name, args) => {
    const card = el("div", "tool-call");
    card.dataset.testid = "tool-call";
    card.dataset.tool = String(name ?? "");
    if (id != null) card.dataset.callId = String(id);
    const head = el("div", "tool-head");
    head.append(el("span", "tool-label", "tool call"), el("span", "tool-name", name ?? "?"));
    if (id != null) head.append(el("span", "muted mono", id));
    card.append(head, el("div", "label", "arguments"), textBlock(jsonText(args ?? ""), "text args"));
    const result = el("div", "tool-result pending", "waiting for the result…");
    result.dataset.testid = "tool-result";
    card.append(result);
    if (id != null) cards.set(String(id), card);
    return card;
  };

  const fillResult = (card, p) => {
    const slot = card.querySelector(".tool-result");
    slot.replaceChildren();
    slot.className = `tool-result ${p.ok ? "ok" : "failed"}`;
    slot.dataset.ok = String(!!p.ok);
    const head = el("div", "tool-head");
    head.append(el("span", `badge ${p.ok ? "s-success" : "s-error"}`, p.ok ? "ok" : "error"));
    head.append(meta([p.durationMs != null && span(Math.round(p.durationMs)), p.fuel != null && `${number(p.fuel)} fuel`]));
    slot.append(head);
    if (p.ok) slot.append(textBlock(jsonText(p.result ?? ""), "text result"));
    else {
      const error = p.error || {};
      const box = el("div", "error-box");
      box.append(el("span", "tag", error.tag ?? "Error"), document.createTextNode(String(error.message ?? "")));
      slot.append(box);
    }
  };

  const message = (m) => {
    if (!m || typeof m !== "object") return;
    const role = ["system", "user", "assistant", "tool"].includes(m.role) ? m.role : "unknown";
    if (role === "tool" && m.toolCallId != null && answered.has(String(m.toolCallId))) return;
    const extra = [];
    if (role === "tool" && m.toolCallId != null) extra.push(meta([`result of ${m.toolCallId}`]));
    const msg = bubble(role, m.content, extra);
    for (const call of Array.isArray(m.toolCalls) ? m.toolCalls : []) {
      if (call.id != null && cards.has(String(call.id))) continue;
      msg.append(toolCard(call.id, call.name, call.arguments));
    }
    return msg;
  };

  const handlers = {
    model_request(p) {
      const first = Number.isInteger(p.firstMessage) ? p.firstMessage : seen;
      (Array.isArray(p.messages) ? p.messages : []).forEach((m, i) => {
        if (first + i < seen) return; // already shown (a model's own answer, fed back)
        message(m);
        seen = first + i + 1;
      });
      const divider = el("div", "turn");
      divider.dataset.testid = "model-request";
      divider.textContent = [`turn ${p.turn ?? "?"}`, p.alias && `model ${p.alias}`,
        Array.isArray(p.tools) && p.tools.length && `tools ${p.tools.join(", ")}`].filter(Boolean).join(" · ");
      root.append(divider);
    },
    model_response(p) {
      const u = p.usage || {};
      calls += 1;
      input += Number(u.inputTokens) || 0;
      output += Number(u.outputTokens) || 0;
      cost += Number(p.costUsd) || 0;
      const msg = message(p.message || { role: "assistant", content: "" });
      seen += 1;
      if (!msg) return;
      const line = meta([
        p.model ? `${p.alias} (${p.model})` : p.alias,
        u.inputTokens != null && `${number(u.inputTokens)} in / ${number(u.outputTokens)} out tokens`,
        p.costUsd != null && usd(p.costUsd),
        p.durationMs != null && span(Math.round(p.durationMs)),
        p.finishReason && `finish: ${p.finishReason}`,
        p.attempts > 1 && `${p.attempts} attempts`,
      ]);
      line.dataset.testid = "model-call";
      msg.insertBefore(line, msg.children[1] || null);
    },
    model_error(p) {
      calls += 1;
      const box = el("div", "msg model-error");
      box.dataset.testid = "model-error";
      box.append(el("div", "role", "model call failed"));
      const err = el("div", "error-box");
      err.append(el("span", "tag", p.tag ?? "Error"), document.createTextNode(String(p.message ?? "")));
      box.append(err, meta([p.alias, p.turn != null && `turn ${p.turn}`, p.durationMs != null && span(Math.round(p.durationMs))]));
      root.append(box);
    },
    tool_call(p) {
      if (p.id != null && cards.has(String(p.id))) return; // shown with the answer that asked for it
      root.append(toolCard(p.id, p.name, p.arguments));
    },
    tool_result(p) {
      let card = p.id != null ? cards.get(String(p.id)) : null;
      if (!card) {
        // A call without an id: the oldest of that tool's calls still waiting.
        card = [...root.querySelectorAll(".tool-call")].find((c) =>
          c.dataset.tool === String(p.name ?? "") && c.querySelector(".tool-result.pending"));
      }
      if (!card) {
        card = toolCard(p.id, p.name, "");
        root.append(card);
      }
      if (p.id != null) answered.add(String(p.id));
      fillResult(card, p);
    },
  };

  return {
    add(events) {
      for (const e of events) {
        if (!CONVERSATION_KINDS.has(e.kind)) continue;
        const p = e.payload && typeof e.payload === "object" ? e.payload : {};
        try { handlers[e.kind](p); } catch (err) { console.error("cannot show event", e.seq, err); }
        panel.hidden = false;
      }
      summary.textContent = calls
        ? `${number(calls)} model call${calls === 1 ? "" : "s"} · ${number(input)} in / ${number(output)} out tokens · ${usd(cost)}`
        : "";
    },
  };
}

function button(label, cls, onclick, testid) {
  const b = document.createElement("button");
  b.textContent = label;
  if (cls) b.className = cls;
  if (testid) b.dataset.testid = testid;
  b.onclick = async () => {
    b.disabled = true;
    try { await onclick(); } catch (e) { showError(e); } finally { b.disabled = false; }
  };
  return b;
}

// Refreshes change tables in place, keyed by row, and rebuild a row's buttons only when what
// they can do changes: a button the user is pressing is never swapped for a copy under the
// pointer (which would swallow the click).
function syncRows(body, items, key, fill, empty) {
  const rows = new Map([...body.querySelectorAll(":scope > tr[data-key]")].map((tr) => [tr.dataset.key, tr]));
  if (items.length) body.querySelector(":scope > tr.empty-row")?.remove();
  items.forEach((item, i) => {
    const k = key(item);
    let tr = rows.get(k);
    if (tr) rows.delete(k);
    else { tr = document.createElement("tr"); tr.dataset.key = k; }
    fill(tr, item);
    if (body.children[i] !== tr) body.insertBefore(tr, body.children[i] || null);
  });
  rows.forEach((tr) => tr.remove());
  if (!items.length && !body.querySelector(":scope > tr.empty-row")) body.innerHTML = `<tr class="empty-row">${empty}</tr>`;
}

// What each cell and button holder last showed.
const shown = new WeakMap();

// Sets a row's cells (`[html, class]` pairs, touched only when they change) and, given `make`,
// a last cell of buttons.
function fillRow(tr, cells, state, make) {
  const count = cells.length + (make ? 1 : 0);
  while (tr.children.length < count) tr.append(document.createElement("td"));
  cells.forEach(([html, cls], i) => {
    const td = tr.children[i];
    if (shown.get(td) !== html) { shown.set(td, html); td.innerHTML = html; }
    td.className = cls || "";
  });
  if (make) {
    tr.lastElementChild.className = "actions";
    setButtons(tr.lastElementChild, state, make);
  }
}

// Puts the buttons `make` returns into `el`, whenever `state` (what they can do) changes.
function setButtons(el, state, make) {
  if (shown.get(el) !== state) { shown.set(el, state); el.replaceChildren(...make()); }
}

async function act(jobId, action) {
  const { job } = await api(`/v1/jobs/${encodeURIComponent(jobId)}/${action}`, { method: "POST" });
  toast(`${action === "stop" ? "Stop" : "Cancel"} requested for ${short(job.id)}`);
}

// ---- live agents ----------------------------------------------------------------------------

async function viewAgents(main) {
  const templates = (await api("/v1/templates")).templates.filter((t) => t.lifecycle === "long-lived");
  main.innerHTML = `
    <h1>Live agents</h1><p class="sub">Long-lived agents: running until stopped, heartbeating as they go.</p>
    <div class="panel"><h2>Spawn</h2><form id="spawn" class="toolbar">
      <select id="spawn-type" data-testid="spawn-type">${templates.map((t) => `<option>${esc(t.id)}</option>`).join("")}</select>
      <input id="spawn-input" class="wide" placeholder='input JSON, e.g. {"itemsPerBatch": 2}'>
      <button class="primary" ${templates.length ? "" : "disabled"} data-testid="spawn">Spawn</button></form></div>
    <div class="panel flush"><table data-testid="agents-table">
      <thead><tr><th>Agent</th><th>Type</th><th>Phase</th><th>Last heartbeat</th><th>Started</th><th>Restarts</th><th></th></tr></thead>
      <tbody id="agents-body"></tbody></table></div>`;
  main.querySelector("#spawn").onsubmit = async (e) => {
    e.preventDefault();
    try {
      const text = main.querySelector("#spawn-input").value.trim();
      const input = text ? JSON.parse(text) : null;
      const out = await api("/spawn", { method: "POST", body: JSON.stringify({ agentType: main.querySelector("#spawn-type").value, input }) });
      toast(`Spawned ${out.workloadName}`);
      await load();
    } catch (err) { showError(err); }
  };
  const load = async () => {
    const { agents } = await api("/v1/agents?limit=200");
    syncRows(main.querySelector("#agents-body"), agents, (a) => a.id, (tr, a) => {
      tr.dataset.testid = "agent-row";
      tr.dataset.agent = a.id;
      const stoppable = a.phase === "Running" || a.phase === "Pending";
      fillRow(tr, [
        [a.run ? `<a href="#/runs/${encodeURIComponent(a.run.id)}">${esc(a.id)}</a>` : esc(a.id), "mono"],
        [esc(a.agentType)],
        [`${badge(a.phase)} ${a.stale ? `<span class="badge stale" data-testid="stale">stale</span>` : ""}`],
        [a.lastHeartbeatAt ? ago(a.lastHeartbeatAt) : "—"],
        [ago(a.job.createdAt)],
        [String(a.job.restarts), "num"],
      ], stoppable ? "stop" : "", () => stoppable ? [button("Stop", "", async () => {
        await api(`/v1/agents/${encodeURIComponent(a.id)}`, { method: "DELETE" });
        toast(`Stop requested for ${a.id}`);
        await load();
      }, "stop-agent")] : []);
    }, `<td colspan="7" class="empty">No long-lived agents yet.</td>`);
  };
  await load();
  every(load);
}

// ---- agent types ----------------------------------------------------------------------------

// An agent's model aliases, tools and budgets, where its manifest names any.
function agentUses(t) {
  const list = (label, items, testid) => Array.isArray(items) && items.length
    ? `<span>${label}</span><span data-testid="${testid}">${items.map((i) => `<span class="pill">${esc(i)}</span>`).join(" ")}</span>` : "";
  const q = t.quota || {};
  const budget = (label, v, fmt = number) => (v == null ? "" : `<span>${label}</span><span>${esc(fmt(v))}</span>`);
  return [
    list("models", t.models, "template-models"),
    list("tools", t.tools, "template-tools"),
    budget("max turns", q.maxTurns),
    budget("max tokens", q.maxTokens),
    budget("max cost", q.maxCostUsd, usd),
    budget("max tool calls", q.maxToolCalls),
  ].join("");
}

async function viewTemplates(main) {
  const { templates, problems } = await api("/v1/templates");
  const limit = (v, fmt = number) => (v == null ? "unlimited" : fmt(v));
  main.innerHTML = `
    <h1>Agent types</h1><p class="sub">The agents this host has loaded, their limits, and a form to enqueue a job.</p>
    ${problems.length ? `<div class="panel problems"><h2>Problems</h2><ul>${problems.map((p) =>
      `<li><span class="mono">${esc(p.path)}</span>: ${esc(p.error)}</li>`).join("")}</ul></div>` : ""}
    <div class="cards">${templates.map((t) => `
      <div class="card" data-testid="template" data-agent="${esc(t.id)}">
        <h3>${esc(t.id)} <span class="pill ${t.lifecycle === "long-lived" ? "ll" : ""}">${esc(t.lifecycle)}</span>
          <span class="pill">${esc(t.sandbox)}</span><span class="muted version">v${esc(t.version)}</span></h3>
        <p class="desc">${esc(t.description || "No description.")}</p>
        <div class="limits">
          <span>fuel</span><span>${limit(t.limits.fuel)}</span>
          <span>memory</span><span>${bytes(t.limits.memoryBytes)}</span>
          <span>timeout</span><span>${t.limits.timeout == null ? "none" : span(t.limits.timeout)}</span>
          <span>events</span><span>${limit(t.limits.maxEvents)}</span>
          <span>output</span><span>${bytes(t.limits.maxOutputBytes)}</span>
          <span>scratch dir</span><span>${t.scratchDir ? "yes" : "no"}</span>
          ${agentUses(t)}
        </div>
        ${t.inputSchema ? `<details><summary class="muted">input schema</summary><pre class="json">${pretty(t.inputSchema)}</pre></details>` : ""}
        <form class="enqueue" data-agent="${esc(t.id)}">
          <textarea name="input" data-testid="enqueue-input" placeholder="input JSON">${t.inputSchema && t.inputSchema.properties && t.inputSchema.properties.n ? '{"n": 42}' : "null"}</textarea>
          <div class="toolbar tight"><label class="muted">priority <input name="priority" type="number" value="0" class="narrow"></label>
          <label class="muted">attempts <input name="maxAttempts" type="number" value="1" min="1" class="narrow"></label>
          <button class="primary right" data-testid="enqueue">Enqueue</button></div>
        </form>
      </div>`).join("") || `<div class="panel empty">No agents loaded. Put <code>.wasm</code> files into the agent directory.</div>`}
    </div>`;
  main.querySelectorAll("form.enqueue").forEach((form) => (form.onsubmit = async (e) => {
    e.preventDefault();
    try {
      const input = JSON.parse(form.input.value || "null");
      const body = { agentId: form.dataset.agent, input, priority: Number(form.priority.value), maxAttempts: Number(form.maxAttempts.value) };
      const { job } = await api("/v1/jobs", { method: "POST", body: JSON.stringify(body) });
      toast(`Queued ${short(job.id)}`);
      const view = await api(`/v1/jobs/${encodeURIComponent(job.id)}/wait?timeoutMs=3000`);
      if (view.run) location.hash = `#/runs/${encodeURIComponent(view.run.id)}`;
    } catch (err) { showError(err); }
  }));
}

// ---- queue ----------------------------------------------------------------------------------

async function viewQueue(main) {
  main.innerHTML = `
    <h1>Queue</h1><p class="sub">Jobs by status, and the most recent ones.</p>
    <div class="grid" id="counts" data-testid="queue-counts"></div>
    <h2 class="spaced">Runs by status</h2><div class="grid" id="run-counts"></div>
    <div class="panel flush spaced"><div class="panel-head"><h2>Recent jobs</h2></div>
      <table><thead><tr><th>Job</th><th>Agent</th><th>Status</th><th>Attempts</th><th>Priority</th><th>Created</th><th></th></tr></thead>
      <tbody id="jobs-body"></tbody></table></div>`;
  const tone = { queued: "", leased: "info", done: "ok", failed: "bad", cancelled: "", success: "ok", error: "bad", running: "info", quota: "warn", timeout: "warn" };
  const tiles = (counts) => Object.entries(counts).map(([k, v]) =>
    `<div class="stat ${tone[k] || ""}" data-count="${esc(k)}"><div class="label">${esc(k)}</div><div class="value">${number(v)}</div></div>`).join("");
  const load = async () => {
    const [stats, { jobs }] = await Promise.all([hostStats(), api("/v1/jobs?limit=25")]);
    main.querySelector("#counts").innerHTML = stats ? tiles(stats.jobs) : "";
    main.querySelector("#run-counts").innerHTML = stats ? tiles(stats.runs) : "";
    syncRows(main.querySelector("#jobs-body"), jobs, (j) => j.id, (tr, j) => {
      const cancellable = j.status === "queued" || j.status === "leased";
      fillRow(tr, [
        [j.runId ? `<a href="#/runs/${encodeURIComponent(j.runId)}">${esc(short(j.id))}</a>` : esc(short(j.id)), "mono"],
        [esc(j.agentId)],
        [`${badge(j.status)} ${j.resultError ? `<span class="muted">${esc(j.resultError.tag)}</span>` : ""}`],
        [`${j.attempts}/${j.maxAttempts}`, "num"],
        [String(j.priority), "num"],
        [ago(j.createdAt)],
      ], cancellable ? "cancel" : "", () => cancellable
        ? [button("Cancel", "danger", async () => { await act(j.id, "cancel"); await load(); }, "cancel-job")]
        : []);
    }, `<td colspan="7" class="empty">The queue is empty.</td>`);
  };
  await load();
  every(load);
}

// ---- start ----------------------------------------------------------------------------------

refreshSummary();
setInterval(refreshSummary, 5000);
render();
