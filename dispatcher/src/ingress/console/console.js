// Herald's console: a page over the tenant-scoped /v1 API, and nothing else (the process's
// /metrics count every tenant and answer on the operators' port only). Data is only ever
// written with textContent, never parsed as HTML.
"use strict";

const PRIORITIES = ["high", "medium", "low"];
const KEY = "herald.apiKey";
const $ = (id) => document.getElementById(id);

// ---- API ---------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    const e = (body && body.error) || {};
    super(e.message || `HTTP ${status}`);
    this.status = status;
    this.field = e.field;
  }
}

async function api(method, path, query) {
  const params = new URLSearchParams();
  for (const [k, v] of Object.entries(query || {})) if (v !== "" && v != null) params.set(k, v);
  const url = params.toString() ? `${path}?${params}` : path;
  const response = await fetch(url, {
    method,
    headers: { Authorization: `Bearer ${sessionStorage.getItem(KEY) || ""}` },
  });
  const text = await response.text();
  const body = text ? JSON.parse(text) : null;
  if (response.status === 401) {
    signOut("The API key was refused: sign in again.", true);
    throw new ApiError(401, body);
  }
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

let flashedAt = 0;

function flash(message, isError) {
  flashedAt = Date.now();
  const el = $("flash");
  el.textContent = message;
  el.className = isError ? "error" : "ok";
  el.hidden = !message;
}

function report(err) {
  const field = err.field ? ` (${err.field})` : "";
  flash(`${err.message}${field}`, true);
}

// ---- rendering helpers ---------------------------------------------------------------

function cell(row, value, className) {
  const td = row.insertCell();
  td.textContent = value == null ? "" : String(value);
  if (className) td.className = className;
  return td;
}

function time(value) {
  return value ? new Date(value).toLocaleString() : "";
}

function idLink(row, id) {
  const a = document.createElement("a");
  a.href = `#/n/${encodeURIComponent(id)}`;
  a.textContent = id;
  a.className = "id";
  row.insertCell().append(a);
}

function button(label, onClick, className) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  if (className) b.className = className;
  b.addEventListener("click", onClick);
  return b;
}

function formQuery(form) {
  return Object.fromEntries(new FormData(form).entries());
}

// ---- views -------------------------------------------------------------------------

const views = ["signin", "overview", "notifications", "detail", "dlq"];

function show(view) {
  for (const v of views) $(`view-${v}`).hidden = v !== view;
  for (const a of document.querySelectorAll("#nav a")) {
    a.classList.toggle("current", a.dataset.view === view);
  }
}

async function route() {
  const signedIn = !!sessionStorage.getItem(KEY);
  $("nav").hidden = $("sign-out").hidden = $("lookup").hidden = !signedIn;
  stopLive();
  if (!signedIn) return show("signin");
  const hash = location.hash.replace(/^#\/?/, "");
  try {
    if (hash.startsWith("n/")) {
      const id = decodeURIComponent(hash.slice(2));
      $("detail-id").textContent = id;
      $("detail-fields").textContent = "";
      $("attempts").tBodies[0].textContent = "";
      $("detail-actions").hidden = true;
      show("detail");
      await loadDetail(id);
      // Until it is settled, follow it: a retry, a replay, the recorder catching up.
      startLive(() => ($("detail-status").textContent === "delivered" ? null : loadDetail(id)));
    } else if (hash === "notifications") {
      show("notifications");
      await loadNotifications(false);
    } else if (hash === "dlq") {
      show("dlq");
      await loadDeadLetters(false);
    } else {
      show("overview");
      startLive(pollSummary, 5000);
    }
  } catch (err) {
    report(err);
  }
}

function signOut(message, isError) {
  sessionStorage.removeItem(KEY);
  flash(message, isError);
  location.hash = "#/";
  route();
}

async function signIn(event) {
  event.preventDefault();
  sessionStorage.setItem(KEY, $("api-key").value.trim());
  $("api-key").value = "";
  try {
    // Any tenant-scoped read tells a valid key from a refused one.
    await api("GET", "/v1/notifications", { limit: 1 });
    flash("", false);
    location.hash = "#/overview";
    route();
  } catch (err) {
    if (err.status !== 401) report(err);
  }
}

// ---- overview: the tenant's own summary ------------------------------------------------

let live = null;
const history = [];
// Seconds the overview looks back; each poll reads that window's rows once.
const WINDOW = 60;
const FAMILIES = ["accepted", "pending", "retrying", "delivered", "dead", "canceled", "expired"];

async function pollSummary() {
  const summary = await api("GET", "/v1/summary", { window: WINDOW });
  const rows = $("rates").tBodies[0];
  rows.textContent = "";
  for (const counts of summary.priorities) {
    const row = rows.insertRow();
    row.dataset.priority = counts.priority;
    cell(row, counts.priority, `priority ${counts.priority}`);
    for (const family of FAMILIES) cell(row, counts[family], "number").dataset.family = family;
    cell(row, (counts.delivered / summary.window_seconds).toFixed(1), "number").dataset.family = "delivered-rate";
  }
  $("dlq-size").textContent = summary.dead_letters;
  history.push(PRIORITIES.map((p) => {
    const counts = summary.priorities.find((c) => c.priority === p);
    return counts ? counts.delivered / summary.window_seconds : 0;
  }));
  if (history.length > 60) history.shift();
  drawChart();
  $("metrics-age").textContent = `Updated ${new Date().toLocaleTimeString()}.`;
}

function drawChart() {
  const canvas = $("chart");
  const g = canvas.getContext("2d");
  const { width, height } = canvas;
  g.clearRect(0, 0, width, height);
  const top = Math.max(1, ...history.flat());
  const colors = { high: "#c0392b", medium: "#d68910", low: "#2874a6" };
  PRIORITIES.forEach((p, i) => {
    g.strokeStyle = colors[p];
    g.beginPath();
    history.forEach((point, x) => {
      const px = (x / 59) * (width - 1);
      const py = height - 14 - (point[i] / top) * (height - 24);
      if (x === 0) g.moveTo(px, py);
      else g.lineTo(px, py);
    });
    g.stroke();
    g.fillStyle = colors[p];
    g.fillText(`${p} delivered/s (${WINDOW} s average)`, 8 + i * 200, height - 2);
  });
  g.fillStyle = "#555";
  g.fillText(`max ${top.toFixed(1)}/s`, width - 90, 10);
}

// Runs `poll` now and every `every` ms (2 s unless told) while its view is shown.
function startLive(poll, every = 2000) {
  const tick = () => Promise.resolve(poll()).catch(report);
  tick();
  live = setInterval(tick, every);
}

function stopLive() {
  if (live) clearInterval(live);
  live = null;
}

// ---- notifications -------------------------------------------------------------------

let notificationsCursor = null;

async function loadNotifications(more) {
  const query = formQuery($("filter-notifications"));
  if (query.since) query.since = new Date(query.since).toISOString();
  if (more && notificationsCursor) query.cursor = notificationsCursor;
  query.limit = 50;
  const page = await api("GET", "/v1/notifications", query);
  const rows = $("notifications").tBodies[0];
  if (!more) rows.textContent = "";
  for (const n of page.items) {
    const row = rows.insertRow();
    idLink(row, n.id);
    cell(row, n.priority, `priority ${n.priority}`);
    cell(row, n.channel);
    cell(row, n.recipient, "recipient");
    cell(row, n.status, `status ${n.status}`);
    cell(row, n.attempts, "number");
    cell(row, time(n.accepted_at));
    cell(row, n.last_error, "error");
  }
  if (!more && page.items.length === 0) cell(rows.insertRow(), "Nothing matches.", "empty").colSpan = 8;
  notificationsCursor = page.next_cursor || null;
  $("notifications-more").hidden = !notificationsCursor;
}

// ---- one notification ----------------------------------------------------------------

const replayed = new Set();

async function loadDetail(id) {
  const [n, attempts] = await Promise.all([
    api("GET", `/v1/notifications/${encodeURIComponent(id)}`),
    api("GET", `/v1/notifications/${encodeURIComponent(id)}/attempts`).catch((err) => {
      if (err.status === 404) return { attempts: [] };
      throw err;
    }),
  ]);
  $("detail-id").textContent = id;
  const fields = $("detail-fields");
  fields.textContent = "";
  const shown = [
    ["status", n.status], ["priority", n.priority], ["channel", n.channel],
    ["recipient", n.recipient], ["attempts", n.attempts], ["accepted", time(n.accepted_at)],
    ["updated", time(n.updated_at)], ["delivered", time(n.delivered_at)],
    ["last error", n.last_error], ["last status", n.last_status],
    ["next attempt", time(n.next_attempt_at)], ["trace id", n.trace_id],
  ];
  for (const [name, value] of shown) {
    if (value == null || value === "") continue;
    const dt = document.createElement("dt");
    dt.textContent = name;
    const dd = document.createElement("dd");
    dd.textContent = String(value);
    if (name === "status") {
      dd.className = `status ${value}`;
      dd.id = "detail-status";
    }
    fields.append(dt, dd);
  }
  $("detail-actions").hidden = n.status !== "dead" || replayed.has(id);
  const rows = $("attempts").tBodies[0];
  rows.textContent = "";
  for (const a of attempts.attempts) {
    const row = rows.insertRow();
    cell(row, a.attempt, "number");
    cell(row, time(a.at));
    cell(row, a.outcome, `status ${a.outcome}`);
    cell(row, a.status_code, "number");
    cell(row, a.duration_ms == null ? "" : `${a.duration_ms} ms`, "number");
    cell(row, a.error, "error");
    cell(row, a.response, "response");
    cell(row, time(a.next_attempt_at));
  }
  if (attempts.attempts.length === 0) cell(rows.insertRow(), "No attempt recorded yet.", "empty").colSpan = 8;
}

function currentDetailId() {
  return $("detail-id").textContent;
}

// ---- dead letters --------------------------------------------------------------------

let dlqCursor = null;
let dlqUntil = null;

async function loadDeadLetters(more) {
  const query = formQuery($("filter-dlq"));
  if (more && dlqCursor) Object.assign(query, { cursor: dlqCursor, until: dlqUntil });
  query.limit = 50;
  const page = await api("GET", "/v1/dlq", query);
  const rows = $("dead-letters").tBodies[0];
  if (!more) rows.textContent = "";
  for (const d of page.items) {
    const row = rows.insertRow();
    row.dataset.id = d.id;
    idLink(row, d.id);
    cell(row, d.priority, `priority ${d.priority}`);
    cell(row, d.channel);
    cell(row, d.error, "error");
    cell(row, d.status, "number");
    cell(row, d.attempts, "number");
    cell(row, time(d.dead_at));
    const actions = row.insertCell();
    actions.append(
      button("Replay", () => replayOne(d.id).then(() => row.remove())),
      button("Delete", () => deleteOne(d.id).then(() => row.remove()), "danger"),
    );
  }
  if (!more && page.items.length === 0) cell(rows.insertRow(), "No dead letters match.", "empty").colSpan = 8;
  dlqCursor = page.next_cursor || null;
  dlqUntil = page.until;
  $("dlq-more").hidden = !dlqCursor;
}

async function replayOne(id) {
  try {
    await api("POST", `/v1/dlq/${encodeURIComponent(id)}/replay`);
    replayed.add(id);
    flash(`Replayed ${id}: it is back in the queue with a fresh attempt budget.`, false);
  } catch (err) {
    report(err);
    throw err;
  }
}

async function deleteOne(id) {
  if (!confirm(`Delete the dead letter ${id} for good?`)) throw new Error("kept");
  try {
    await api("DELETE", `/v1/dlq/${encodeURIComponent(id)}`);
    flash(`Deleted ${id}.`, false);
  } catch (err) {
    report(err);
    throw err;
  }
}

// Replays or deletes every match, a page at a time (the API's bulk routes take one page).
async function bulk(action) {
  const query = formQuery($("filter-dlq"));
  const what = [query.priority, query.channel].filter(Boolean).join(" ") || "every";
  const [verb, past] = action === "replay" ? ["Replay", "Replayed"] : ["Delete", "Deleted"];
  if (!confirm(`${verb} ${what} dead letter of this tenant?`)) return;
  let done = 0;
  let failed = 0;
  let cursor = null;
  let until = null;
  try {
    // `until` (from the first page) stops the paging at what was dead when it began, so
    // a replay that dies again is not replayed again.
    do {
      const page = await api(action === "replay" ? "POST" : "DELETE",
        action === "replay" ? "/v1/dlq/replay" : "/v1/dlq", { ...query, cursor, until, limit: 200 });
      done += action === "replay" ? page.replayed : page.deleted;
      failed += page.failed;
      cursor = page.next_cursor;
      until = page.until;
    } while (cursor);
    flash(`${past} ${done}${failed ? `, ${failed} failed` : ""}.`, failed > 0);
  } catch (err) {
    report(err);
  }
  await loadDeadLetters(false).catch(report);
}

// ---- wiring --------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("signin").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", () => signOut("Signed out."));
  $("lookup").addEventListener("submit", (event) => {
    event.preventDefault();
    const id = $("lookup-id").value.trim();
    if (id) location.hash = `#/n/${encodeURIComponent(id)}`;
  });
  $("filter-notifications").addEventListener("submit", (event) => {
    event.preventDefault();
    loadNotifications(false).catch(report);
  });
  $("notifications-more").addEventListener("click", () => loadNotifications(true).catch(report));
  $("filter-dlq").addEventListener("submit", (event) => {
    event.preventDefault();
    loadDeadLetters(false).catch(report);
  });
  $("dlq-more").addEventListener("click", () => loadDeadLetters(true).catch(report));
  $("dlq-replay-all").addEventListener("click", () => bulk("replay"));
  $("dlq-delete-all").addEventListener("click", () => bulk("delete"));
  $("detail-replay").addEventListener("click", () => {
    $("detail-actions").hidden = true;
    replayOne(currentDetailId()).catch(() => { $("detail-actions").hidden = false; });
  });
  $("detail-delete").addEventListener("click", () =>
    deleteOne(currentDetailId()).then(() => { location.hash = "#/dlq"; }).catch(() => {}));
  window.addEventListener("hashchange", () => {
    // A message belongs to the view it was shown on, unless an action just led here.
    if (Date.now() - flashedAt > 1500) flash("", false);
    route();
  });
  route();
});
