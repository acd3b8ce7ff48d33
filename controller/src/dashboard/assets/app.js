// skiff's dashboard: reads the controller through /ui/api/* (the JSON of the same gRPC calls
// the CLI makes) with the API token given at login, kept for this tab only.
"use strict";

const state = { token: sessionStorage.getItem("skiff-token") || "", timer: null, abort: null };
const $ = (sel) => document.querySelector(sel);

function esc(v) {
  return String(v ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}
function time(ms) {
  if (!ms) return "-";
  return new Date(Number(ms)).toISOString().replace(/\.\d+Z$/, "Z");
}
function ago(ms) {
  if (!ms) return "-";
  const s = Math.max(0, Math.round((Date.now() - Number(ms)) / 1000));
  if (s < 90) return s + " s ago";
  if (s < 5400) return Math.round(s / 60) + " min ago";
  return Math.round(s / 3600) + " h ago";
}
function statusCell(s) {
  return `<span class="status-${esc(s)}">${esc(s)}</span>`;
}

async function api(path, opts = {}) {
  const r = await fetch("/ui/api/" + path, { headers: { Authorization: "Bearer " + state.token }, signal: opts.signal });
  if (r.status === 401) { logout("The token was refused: log in again."); throw new Error("unauthorized"); }
  if (!r.ok) {
    let msg = r.statusText;
    try { msg = (await r.json()).error || msg; } catch (_) {}
    throw new Error(msg);
  }
  return opts.raw ? r : r.json();
}

/// A table from rows and columns [title, (row) => html]; rows clickable when `href` is given.
function table(rows, columns, href) {
  if (!rows.length) return `<p class="muted">None.</p>`;
  const head = columns.map(([t]) => `<th>${esc(t)}</th>`).join("");
  const body = rows.map((r) => {
    const link = href ? ` class="clickable" data-href="${esc(href(r))}"` : "";
    return `<tr${link}>${columns.map(([, f]) => `<td>${f(r)}</td>`).join("")}</tr>`;
  }).join("");
  return `<table><thead><tr>${head}</tr></thead><tbody>${body}</tbody></table>`;
}

function show(html) {
  const v = $("#view");
  v.innerHTML = html;
  v.querySelectorAll("tr[data-href]").forEach((tr) => tr.addEventListener("click", () => { location.hash = tr.dataset.href; }));
}

/// Re-renders a view every `every` ms while it is the current one.
function every(ms, render) {
  const run = async () => {
    try { await render(); } catch (e) { if (e.message !== "unauthorized") show(`<p class="error">${esc(e.message)}</p>`); }
  };
  run();
  state.timer = setInterval(run, ms);
}

// --- views ---

const views = {
  async overview() {
    every(5000, async () => {
      const [series, nodes, running] = await Promise.all([api("series"), api("nodes"), api("tasks?status=RUNNING&limit=1")]);
      const samples = series.samples || [];
      const cards = `<div class="cards">
        <div class="card">Nodes connected<b>${nodes.nodes.filter((n) => n.connected).length} / ${nodes.nodes.length}</b></div>
        <div class="card">Tasks running<b>${running.total}</b></div>
        <div class="card">Sampled every<b>${series.intervalSeconds} s</b></div></div>`;
      const started = { "tasks started": samples.map((s) => [s.tMs, s.started]) };
      const byKey = (field) => {
        const out = {};
        samples.forEach((s) => Object.entries(s[field] || {}).forEach(([k, v]) => { (out[k] = out[k] || []).push([s.tMs, v]); }));
        return out;
      };
      show(`<h1>Overview</h1>${cards}<div class="charts">
        ${chart("Task starts (per interval)", started)}
        ${chart("Queue depth (visible + in flight)", byKey("queues"))}
        ${chart("Service size (running tasks)", byKey("services"))}</div>`);
    });
  },

  async nodes() {
    every(3000, async () => {
      const { nodes } = await api("nodes");
      show(`<h1>Nodes</h1>` + table(nodes, [
        ["Node", (n) => esc(n.id)],
        ["State", (n) => esc(n.state) + (n.connected ? "" : ' <span class="error">(disconnected)</span>')],
        ["CPU", (n) => `${(n.cpuUsed || 0).toFixed(2)} / ${n.cpu}`],
        ["Memory MiB", (n) => `${n.memoryUsedMib || 0} / ${n.memoryMib}`],
        ["Tasks", (n) => esc(n.runningTasks)],
        ["Labels", (n) => esc(Object.entries(n.labels || {}).map(([k, v]) => `${k}=${v}`).join(", "))],
        ["Last heard", (n) => ago(n.lastHeartbeatMs)],
        ["Version", (n) => esc(n.version)],
      ]));
    });
  },

  async tasks(params) {
    const status = params.get("status") || "";
    const family = params.get("family") || "";
    every(2000, async () => {
      const q = new URLSearchParams({ limit: "100" });
      if (status) q.set("status", status);
      if (family) q.set("family", family);
      const r = await api("tasks?" + q);
      const options = ["", "PROVISIONING", "PENDING", "RUNNING", "STOPPING", "STOPPED"]
        .map((s) => `<option${s === status ? " selected" : ""}>${s}</option>`).join("");
      show(`<h1>Tasks</h1>
        <form class="filters" id="task-filters">Status <select name="status">${options}</select>
          Family <input name="family" value="${esc(family)}" size="14"> <button>Filter</button>
          <span class="muted">${r.total}${r.totalAtLeast ? "+" : ""} tasks</span></form>` +
        table(r.tasks, [
          ["Task", (t) => `<code>${esc(t.id)}</code>`],
          ["Definition", (t) => esc(t.taskDefinition || "-")],
          ["Group", (t) => esc(t.group)],
          ["Status", (t) => statusCell(t.lastStatus)],
          ["Desired", (t) => esc(t.desiredStatus)],
          ["Node", (t) => esc(t.nodeId || "-")],
          ["Stop code", (t) => esc(t.stopCode || "-")],
          ["Created", (t) => time(t.createdAtMs)],
        ], (t) => "#/task/" + t.id));
      $("#task-filters").addEventListener("submit", (e) => {
        e.preventDefault();
        const f = new FormData(e.target);
        location.hash = "#/tasks?" + new URLSearchParams({ status: f.get("status"), family: f.get("family") });
      });
    });
  },

  async task(params, id) {
    // The log pane is live: one follow stream for as long as the view is open.
    let logText = "";
    const controller = new AbortController();
    state.abort = controller;
    (async () => {
      try {
        const r = await api(`tasks/${encodeURIComponent(id)}/logs`, { raw: true, signal: controller.signal });
        const reader = r.body.getReader();
        const dec = new TextDecoder();
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          logText += dec.decode(value, { stream: true });
          const pre = $("#logs");
          if (pre) { pre.textContent = logText; pre.scrollTop = pre.scrollHeight; }
        }
      } catch (_) { /* view left or logs unavailable */ }
    })();
    every(2000, async () => {
      const t = await api("tasks/" + encodeURIComponent(id));
      const scroll = $("#logs") ? $("#logs").scrollTop : null;
      show(`<h1>Task <code>${esc(t.id)}</code></h1>
        <table>
          <tr><th>Status</th><td>${statusCell(t.lastStatus)} (desired ${esc(t.desiredStatus)})</td></tr>
          <tr><th>Definition</th><td>${esc(t.taskDefinition || "-")}</td></tr>
          <tr><th>Group</th><td>${esc(t.group)}</td></tr>
          <tr><th>Node</th><td>${esc(t.nodeId || "-")}</td></tr>
          <tr><th>Resources</th><td>${esc(t.cpu)} vCPU, ${esc(t.memoryMib)} MiB, network ${esc(t.networkMode)}</td></tr>
          <tr><th>Stop code</th><td>${esc(t.stopCode || "-")} ${esc(t.stoppedReason || "")}</td></tr>
          <tr><th>Created</th><td>${time(t.createdAtMs)}</td></tr>
          <tr><th>Started</th><td>${time(t.startedAtMs)}</td></tr>
          <tr><th>Stopped</th><td>${time(t.stoppedAtMs)}</td></tr>
          ${t.statusReason ? `<tr><th>Waiting because</th><td>${esc(t.statusReason)}</td></tr>` : ""}
        </table>
        <h2>Containers</h2>` + table(t.containers || [], [
          ["Name", (c) => esc(c.name)],
          ["Image", (c) => `<code>${esc(c.image)}</code>`],
          ["Status", (c) => statusCell(c.lastStatus)],
          ["Health", (c) => esc(c.health || "-")],
          ["Exit", (c) => esc(c.exitCode ?? "-")],
          ["Reason", (c) => esc(c.reason || "")],
        ]) + `<h2>Logs (live)</h2><pre class="log" id="logs"></pre>`);
      const pre = $("#logs");
      pre.textContent = logText;
      pre.scrollTop = scroll ?? pre.scrollHeight;
    });
  },

  async services() {
    every(3000, async () => {
      const { services } = await api("services");
      const blocks = services.map((st) => {
        const s = st.service || {};
        return `<h2>${esc(s.name)} <span class="muted">${esc(s.taskDefinition)} · desired ${st.desired}, running ${st.running}, pending ${st.pending}${st.draining ? " · draining" : ""}</span></h2>` +
          table(st.deployments || [], [
            ["Deployment", (d) => `<code>${esc(d.id)}</code>`],
            ["Task definition", (d) => esc(d.taskDefinition)],
            ["Status", (d) => esc(d.status)],
            ["Rollout", (d) => esc(d.rollout)],
            ["Failed tasks", (d) => esc(d.failedTasks)],
            ["Updated", (d) => time(d.updatedMs)],
          ]) + `<details data-key="${esc(s.name)}"><summary>Latest decisions</summary>` + table((st.decisions || []).slice(0, 10), [
            ["When", (d) => time(d.atMs)], ["Action", (d) => esc(d.action)], ["Why", (d) => esc(d.message)],
          ]) + `</details>`;
      }).join("");
      // An opened list of decisions stays open across refreshes.
      const open = new Set([...document.querySelectorAll("details[open]")].map((d) => d.dataset.key));
      show(`<h1>Services</h1>` + (blocks || `<p class="muted">None.</p>`));
      document.querySelectorAll("details[data-key]").forEach((d) => { d.open = open.has(d.dataset.key); });
    });
  },

  async queues() {
    every(2000, async () => {
      const { queues } = await api("queues");
      show(`<h1>Queues</h1>` + table(queues, [
        ["Queue", (q) => esc(q.queue.name) + (q.queue.fifo ? " (FIFO)" : "")],
        ["Visible", (q) => esc(q.visible)],
        ["In flight", (q) => esc(q.inFlight)],
        ["Delayed", (q) => esc(q.delayed)],
        ["Oldest", (q) => ago(q.oldestSentMs)],
        ["Dead letters to", (q) => esc(q.queue.redrive ? `${q.queue.redrive.deadLetterQueue} after ${q.queue.redrive.maxReceiveCount}` : "-")],
      ]));
    });
  },

  async rules() {
    every(3000, async () => {
      const { rules, recentMatches, deadLetters } = await api("rules");
      show(`<h1>Rules</h1>` + table(rules, [
        ["Rule", (r) => esc(r.name)],
        ["State", (r) => (r.enabled === false ? "disabled" : "enabled")],
        ["Pattern", (r) => `<code>${esc(r.patternJson)}</code>`],
        ["Targets", (r) => esc((r.targets || []).map((t) => t.id).join(", "))],
        ["Matched", (r) => esc(r.stats?.matched ?? 0)],
        ["Last match", (r) => ago(r.stats?.lastMatchedMs)],
        ["Recent matches", (r) => ((recentMatches || {})[r.name] || [])
          .map((e) => `${time(e.timeMs).slice(11)} ${esc(e.detailType)} <span class="muted">${esc((e.resources || []).join(", "))}</span>`)
          .join("<br>") || "-"],
        ["Failed", (r) => esc(r.stats?.failed ?? 0)],
        ["Dead letters", (r) => esc(r.stats?.deadLettered ?? 0)],
      ]) + `<h2>Dead letters</h2>` + table(deadLetters, [
        ["Rule", (d) => esc(d.rule)], ["Target", (d) => esc(d.target)], ["Event", (d) => `<code>${esc(d.eventId)}</code>`],
        ["Attempts", (d) => esc(d.attempts)], ["Last error", (d) => esc(d.lastError)], ["Dead since", (d) => time(d.deadMs)],
      ]));
    });
  },

  async schedules() {
    every(5000, async () => {
      const { schedules } = await api("schedules");
      show(`<h1>Schedules</h1>` + table(schedules, [
        ["Schedule", (s) => esc(s.schedule.name)],
        ["Expression", (s) => `<code>${esc(s.schedule.expression)}</code>`],
        ["Zone", (s) => esc(s.schedule.timezone || "UTC")],
        ["State", (s) => (s.schedule.enabled === false ? "disabled" : "enabled")],
        ["Next fire times", (s) => esc((s.nextFireTimes || []).slice(0, 3).join(", ") || "-")],
        ["Last run", (s) => { const r = (s.runs || [])[0]; return r ? esc(`${r.scheduledTime} ${r.outcome}`) : "-"; }],
      ]));
    });
  },

  async topics() {
    every(3000, async () => {
      const { topics, deadLetters } = await api("topics");
      const blocks = topics.map((st) => `<h2>${esc(st.topic.name)} <span class="muted">${esc(st.topic.description || "")}</span></h2>` +
        table(st.subscriptions || [], [
          ["Subscription", (s) => `<code>${esc(s.id)}</code>`],
          ["Protocol", (s) => esc(s.protocol)],
          ["Endpoint", (s) => esc(s.endpoint)],
          ["Status", (s) => esc(s.status)],
          ["Delivered", (s) => esc((st.delivered || {})[s.id] ?? 0)],
          ["Pending", (s) => esc((st.pending || {})[s.id] ?? 0)],
          ["Dead", (s) => esc((st.dead || {})[s.id] ?? 0)],
        ])).join("");
      show(`<h1>Topics</h1>` + (blocks || `<p class="muted">None.</p>`) + `<h2>Dead-lettered deliveries</h2>` + table(deadLetters || [], [
        ["Topic", (d) => esc(d.topic)], ["Subscription", (d) => esc(d.subscription)], ["Attempts", (d) => esc(d.attempts)],
        ["Last error", (d) => esc(d.lastError)],
      ]));
    });
  },

  async events() {
    show(`<h1>Events (live)</h1><table><thead><tr><th>Time</th><th>Source</th><th>Detail type</th><th>Resources</th><th>Detail</th></tr></thead><tbody id="events"></tbody></table>`);
    const controller = new AbortController();
    state.abort = controller;
    try {
      const r = await api("events", { raw: true, signal: controller.signal });
      const reader = r.body.getReader();
      const dec = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let nl;
        while ((nl = buf.indexOf("\n")) >= 0) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          if (!line.trim()) continue;
          const ev = JSON.parse(line);
          const tbody = $("#events");
          if (!tbody) return;
          const tr = document.createElement("tr");
          tr.innerHTML = `<td>${time(ev.timeMs)}</td><td>${esc(ev.source)}</td><td>${esc(ev.detailType)}</td>
            <td>${esc((ev.resources || []).join(", "))}</td><td><code>${esc(ev.detailJson).slice(0, 300)}</code></td>`;
          tbody.prepend(tr);
          while (tbody.children.length > 200) tbody.lastChild.remove();
        }
      }
    } catch (_) { /* view left */ }
  },
};

/// A line chart (SVG) of named series of [time ms, value] points.
function chart(title, series) {
  const names = Object.keys(series);
  const colors = ["#0b6bcb", "#d35400", "#1e8449", "#8e44ad", "#c0392b", "#16a085", "#7f8c8d"];
  const points = names.flatMap((n) => series[n]);
  if (!points.length) return `<div class="chart"><b>${esc(title)}</b><p class="muted">No samples yet.</p></div>`;
  const [w, h, pad] = [400, 160, 28];
  const t0 = Math.min(...points.map((p) => p[0])), t1 = Math.max(...points.map((p) => p[0]));
  const vmax = Math.max(1, ...points.map((p) => p[1]));
  const x = (t) => pad + (t1 === t0 ? 0 : ((t - t0) / (t1 - t0)) * (w - pad - 4));
  const y = (v) => h - 16 - (v / vmax) * (h - 28);
  const lines = names.map((n, i) => `<polyline data-series="${esc(n)}" fill="none" stroke="${colors[i % colors.length]}" stroke-width="1.6" points="${series[n].map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`).join(" ")}"/>`).join("");
  const legend = names.map((n, i) => `<span style="color:${colors[i % colors.length]}">■ ${esc(n)}</span>`).join("");
  return `<div class="chart"><b>${esc(title)}</b>
    <svg viewBox="0 0 ${w} ${h}" preserveAspectRatio="none">
      <line x1="${pad}" y1="${h - 16}" x2="${w}" y2="${h - 16}" stroke="#d9dee3"/>
      <text x="2" y="12" font-size="10" fill="#66707a">${vmax}</text><text x="2" y="${h - 16}" font-size="10" fill="#66707a">0</text>
      <text x="${pad}" y="${h - 2}" font-size="10" fill="#66707a">${esc(time(t0).slice(11))}</text>
      <text x="${w - 60}" y="${h - 2}" font-size="10" fill="#66707a">${esc(time(t1).slice(11))}</text>
      ${lines}</svg><div class="legend">${legend}</div></div>`;
}

// --- routing and login ---

function route() {
  clearInterval(state.timer);
  if (state.abort) { state.abort.abort(); state.abort = null; }
  if (!state.token) return;
  const [path, query] = (location.hash.slice(1) || "/overview").split("?");
  const parts = path.split("/").filter(Boolean);
  const name = parts[0] || "overview";
  document.querySelectorAll("#nav a").forEach((a) => a.classList.toggle("active", a.getAttribute("href") === "#/" + name));
  const view = views[name] || views.overview;
  view(new URLSearchParams(query || ""), decodeURIComponent(parts[1] || ""));
}

async function login(token) {
  const r = await fetch("/ui/api/whoami", { headers: { Authorization: "Bearer " + token } });
  if (!r.ok) {
    let msg = "the controller refused this token";
    try { msg = (await r.json()).error || msg; } catch (_) {}
    throw new Error(msg);
  }
  return r.json();
}

function signedIn(who) {
  $("#login").hidden = true;
  $("#nav").hidden = false;
  $("#view").hidden = false;
  $("#logout").hidden = false;
  $("#who").textContent = `${who.role} token ${who.tokenId}`;
  route();
}

function logout(message) {
  clearInterval(state.timer);
  if (state.abort) state.abort.abort();
  state.token = "";
  sessionStorage.removeItem("skiff-token");
  $("#login").hidden = false;
  $("#nav").hidden = true;
  $("#view").hidden = true;
  $("#logout").hidden = true;
  $("#who").textContent = "";
  $("#login-error").textContent = message || "";
}

$("#login").addEventListener("submit", async (e) => {
  e.preventDefault();
  const token = $("#token").value.trim();
  try {
    const who = await login(token);
    state.token = token;
    sessionStorage.setItem("skiff-token", token);
    $("#token").value = "";
    signedIn(who);
  } catch (err) {
    $("#login-error").textContent = "Not logged in: " + err.message;
  }
});
$("#logout").addEventListener("click", () => logout());
window.addEventListener("hashchange", route);

(async () => {
  if (!state.token) return logout();
  try { signedIn(await login(state.token)); } catch (_) { logout(); }
})();
