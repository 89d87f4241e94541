/* videokv web page: sessions, ingest (upload or live source), streamed answers, an evidence timeline.
 *
 * Plain JavaScript, no build step and no framework. Every /v1 call carries `Authorization: Bearer <token>`
 * when a token is set (the field at the top; also read once from `?token=` in the page's URL and kept in
 * localStorage). Answers are read from `POST /v1/sessions/{id}/ask` with `"stream": true` through fetch's
 * ReadableStream (EventSource can neither POST nor send headers).
 */
"use strict";

const TOKEN_KEY = "videokv.token";
const STATUS_EVERY_MS = 1000;
const SESSIONS_EVERY_MS = 5000;
const MAX_THUMBS = 4;
const MiB = 1024 * 1024;

const state = {
  token: "",
  model: "", // the server's model (/v1/health)
  sessionCount: null, // sessions on the server, as the sessions list last showed them
  drafts: new Map(), // session id -> {question, choices} typed there and not yet asked
  current: null, // id of the open session
  status: null, // its last SessionStatus
  timeline: null, // its last timeline {clock, spans, thumbnails}
  timelineKey: "", // clock/blocks the timeline was fetched at
  evidence: [], // evidence spans of the last answer
  asking: false,
  statusTimer: null,
  thumbUrls: new Map(), // t -> object URL of a fetched thumbnail
  thumbRequest: 0,
};

const $ = (id) => document.getElementById(id);

/* ---------- text into the DOM ---------- */

// C0 controls but tab and newline, DEL, C1 controls: a model's raw bytes, a terminal's escape codes
const CONTROL = /[\u0000-\u0008\u000B-\u001F\u007F-\u009F]/g;

/** Text as it may reach the page: control characters (other than newline and tab) removed. */
function clean(text) {
  return String(text === null || text === undefined ? "" : text).replace(CONTROL, "");
}

/** Every text the page shows goes through here: textContent (never innerHTML), cleaned. */
function setText(node, text) {
  node.textContent = clean(text);
}

/* ---------- HTTP ---------- */

class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

function authHeaders(extra) {
  const headers = Object.assign({}, extra || {});
  if (state.token) headers.Authorization = "Bearer " + state.token;
  return headers;
}

/** The message of an error response: FastAPI's `detail` (a string, or a list of validation errors). */
function detailMessage(payload, status) {
  const detail = payload && payload.detail;
  let message;
  if (typeof detail === "string") message = detail;
  else if (Array.isArray(detail)) {
    message = detail
      .map((d) => {
        const loc = Array.isArray(d.loc) ? d.loc.filter((p) => p !== "body").join(".") : "";
        return (loc ? loc + ": " : "") + (d.msg || JSON.stringify(d));
      })
      .join("\n");
  } else if (detail) message = JSON.stringify(detail);
  else message = "the server answered HTTP " + status;
  if (status === 401) message += "\nEnter the server's token in the Token field at the top.";
  return message;
}

async function errorFrom(response) {
  let payload = null;
  try {
    payload = await response.json();
  } catch (_) {
    /* not JSON */
  }
  return new ApiError(detailMessage(payload, response.status), response.status);
}

/** Call a /v1 route; JSON in and out. Throws ApiError with the server's `detail`. */
async function api(method, path, body) {
  const init = { method, headers: authHeaders() };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch("/v1" + path, init);
  } catch (err) {
    throw new ApiError("cannot reach the server (" + err.message + "); is `videokv serve` running?", 0);
  }
  if (!response.ok) throw await errorFrom(response);
  if (response.status === 204) return null;
  return response.json();
}

/* ---------- messages ---------- */

function showError(err) {
  const box = $("error");
  setText(box, err instanceof Error ? err.message : String(err));
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
  setText($("error"), "");
}

/** Run an async action from a button: disable it meanwhile, report errors. */
async function guarded(button, action) {
  clearError();
  if (button) button.disabled = true;
  try {
    return await action();
  } catch (err) {
    showError(err);
    return undefined;
  } finally {
    if (button) button.disabled = false;
  }
}

/* ---------- formatting ---------- */

function secs(t) {
  if (t === null || t === undefined || Number.isNaN(t)) return "–";
  if (t < 60) return t.toFixed(1) + " s";
  const m = Math.floor(t / 60);
  const s = t - 60 * m;
  if (m < 60) return m + ":" + s.toFixed(1).padStart(4, "0");
  return Math.floor(m / 60) + ":" + String(m % 60).padStart(2, "0") + ":" + s.toFixed(0).padStart(2, "0");
}

function mib(bytes) {
  if (bytes === null || bytes === undefined) return "–";
  return (bytes / MiB).toFixed(bytes < 10 * MiB ? 2 : 1) + " MiB";
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(node.dataset, v);
    else node.setAttribute(k, v === true ? "" : clean(v));
  }
  for (const c of children) {
    if (c !== null && c !== undefined) node.append(typeof c === "string" ? clean(c) : c);
  }
  return node;
}

/* ---------- token and health ---------- */

function loadToken() {
  const params = new URLSearchParams(window.location.search);
  const fromUrl = params.get("token");
  if (fromUrl !== null) {
    state.token = fromUrl.trim();
    try {
      localStorage.setItem(TOKEN_KEY, state.token);
    } catch (_) {
      /* storage disabled: keep it for this page only */
    }
    // keep the secret out of the address bar and the history
    params.delete("token");
    const rest = params.toString();
    history.replaceState(null, "", window.location.pathname + (rest ? "?" + rest : "") + window.location.hash);
  } else {
    try {
      state.token = localStorage.getItem(TOKEN_KEY) || "";
    } catch (_) {
      state.token = "";
    }
  }
  $("token").value = state.token;
}

async function refreshHealth() {
  const health = $("health");
  try {
    const h = await api("GET", "/health");
    state.model = h.model;
    state.sessionCount = h.sessions;
    health.classList.remove("state-error");
    renderHealth();
    return true;
  } catch (err) {
    setText(health, err.status === 401 ? "token needed: enter it above" : err.message);
    health.classList.add("state-error");
    return false;
  }
}

/** The header: the model, and as many sessions as the list beside it shows. */
function renderHealth() {
  if (!state.model) return;
  const n = state.sessionCount;
  const sessions = n === null ? "" : " · " + n + " session" + (n === 1 ? "" : "s");
  setText($("health"), "model " + state.model + sessions);
}

async function saveToken(event) {
  event.preventDefault();
  state.token = $("token").value.trim();
  try {
    localStorage.setItem(TOKEN_KEY, state.token);
  } catch (_) {
    /* ignore */
  }
  clearError();
  if (await refreshHealth()) await startup();
}

/* ---------- presets and sessions ---------- */

async function loadPresets() {
  const presets = await api("GET", "/presets");
  const select = $("preset");
  const previous = select.value;
  select.replaceChildren();
  for (const p of presets) {
    select.append(el("option", { value: p.name, title: p.description || "" }, p.name));
  }
  const names = presets.map((p) => p.name);
  select.value = names.includes(previous) ? previous : names.includes("videokv") ? "videokv" : names[0] || "";
  select.presets = presets;
  showPresetSummary();
}

/** The picked preset: one plain sentence; what it does exactly and its source behind "How it works". */
function showPresetSummary() {
  const select = $("preset");
  const p = (select.presets || []).find((x) => x.name === select.value);
  setText($("preset-summary"), p ? p.description || p.summary : "");
  setText($("preset-more"), p ? p.summary + (p.source ? " Source: " + p.source + "." : "") : "");
  $("preset-details").hidden = !p;
}

/** The meta line of a session in the list, from the same status the status panel shows. */
function sessionMeta(s) {
  return s.memory + " · " + s.state + " · " + secs(s.clock);
}

function sessionItem(s) {
  const current = s.id === state.current;
  return el(
    "li",
    { class: current ? "current" : "", dataset: { id: s.id } },
    el(
      "button",
      {
        type: "button",
        class: "open",
        "aria-current": current ? "true" : null,
        onclick: () => openSession(s.id),
      },
      clean(s.name) || s.id,
      el("span", { class: "meta" }, sessionMeta(s)),
    ),
  );
}

async function refreshSessions() {
  const sessions = await api("GET", "/sessions");
  $("sessions").replaceChildren(...sessions.map(sessionItem));
  $("sessions-empty").hidden = sessions.length > 0;
  state.sessionCount = sessions.length;
  renderHealth();
  // the open session's row and the status panel show the same status, whichever arrived last
  const open = sessions.find((s) => s.id === state.current);
  if (open) renderStatus(open);
  return sessions;
}

/** Keep the open session's row in the list in step with the status panel. */
function renderSessionRow(s) {
  const row = $("sessions").querySelector('li[data-id="' + CSS.escape(s.id) + '"] .meta');
  if (row) setText(row, sessionMeta(s)); // in place: a focused button keeps its focus
}

/** Each session keeps its own unsent question and options: nothing typed for one shows up in another. */
function switchDraft(from, to) {
  if (from) state.drafts.set(from, { question: $("question").value, choices: $("choices").value });
  const draft = state.drafts.get(to) || { question: "", choices: "" };
  $("question").value = draft.question;
  $("choices").value = draft.choices;
}

async function createSession(event) {
  event.preventDefault();
  await guarded($("session-create"), async () => {
    const fps = parseFloat($("fps").value);
    const body = {
      memory: $("preset").value || "videokv",
      memory_set: [],
      fps: Number.isFinite(fps) ? fps : 1.0,
      name: $("session-name").value.trim() || null,
    };
    const status = await api("POST", "/sessions", body);
    $("session-name").value = "";
    await openSession(status.id, status);
  });
}

async function openSession(id, status) {
  clearError();
  if (state.current !== id) {
    switchDraft(state.current, id);
    state.current = id;
    state.status = null;
    state.timeline = null;
    state.timelineKey = "";
    state.evidence = [];
    clearThumbs();
    setText($("answer"), "");
    setText($("answer-meta"), "");
    $("evidence-list").replaceChildren();
    setText($("upload-result"), "");
  }
  history.replaceState(null, "", window.location.pathname + window.location.search + "#session=" + id);
  $("session-panel").hidden = false;
  if (status) renderStatus(status);
  await refreshSessions().catch(showError);
  scheduleStatus(0);
}

function closeSession() {
  state.current = null;
  state.status = null;
  clearTimeout(state.statusTimer);
  $("session-panel").hidden = true;
  history.replaceState(null, "", window.location.pathname + window.location.search);
}

async function deleteSession() {
  if (!state.current) return;
  if (!window.confirm("Delete this session and its files?")) return;
  await guarded($("session-delete"), async () => {
    await api("DELETE", "/sessions/" + encodeURIComponent(state.current));
    state.drafts.delete(state.current);
    closeSession();
    await refreshSessions();
  });
}

/* ---------- status polling ---------- */

function scheduleStatus(delay) {
  clearTimeout(state.statusTimer);
  state.statusTimer = setTimeout(pollStatus, delay);
}

async function pollStatus() {
  const id = state.current;
  if (!id) return;
  try {
    const status = await api("GET", "/sessions/" + encodeURIComponent(id));
    if (id !== state.current) return;
    renderStatus(status);
    await refreshTimeline(false);
  } catch (err) {
    if (err.status === 404) {
      closeSession();
      showError("session " + id + " no longer exists: " + err.message);
      refreshSessions().catch(() => {});
      return;
    }
    setText($("st-state"), "unreachable");
  }
  if (id === state.current) scheduleStatus(STATUS_EVERY_MS);
}

function renderStatus(s) {
  state.status = s;
  setText($("session-title"), (s.name || "Session") + " · " + s.id + " · " + s.memory);
  const st = $("st-state");
  setText(st, s.state + (s.error ? ": " + s.error : ""));
  st.className = "state-" + s.state;
  setText($("st-clock"), secs(s.clock));
  setText($("st-frames"), String(s.frames));
  setText($("st-blocks"), String(s.blocks));
  // one definition of memory (videokv.api.kv_memory): resident = ingest context + resident blocks
  const kv = s.kv || { resident_bytes: 0, context_bytes: 0, blocks_bytes: {}, offloaded_bytes: 0 };
  const tiers = Object.entries(kv.blocks_bytes || {}).filter(([, n]) => n > 0);
  setText($("st-resident"), mib(kv.resident_bytes));
  $("st-resident").title =
    "context " + mib(kv.context_bytes) + "; blocks: " +
    (tiers.length ? tiers.map(([t, n]) => t + " " + mib(n)).join(", ") : mib(0));
  setText($("st-offloaded"), mib(kv.offloaded_bytes));
  setText($("st-budget"), s.budget_bytes ? mib(s.budget_bytes) : "none");
  setText($("st-fps"), s.ingest_fps ? s.ingest_fps.toFixed(1) + " frames/s" : "–");
  const src = s.source;
  setText($("st-source"), src ? src.state + (src.error ? ": " + src.error : "") : "none");
  $("st-source").title = src ? src.url : "";
  $("source-stop").disabled = !(src && src.state === "running");
  renderSessionRow(s);
}

/* ---------- timeline ---------- */

async function refreshTimeline(force) {
  const s = state.status;
  if (!state.current || !s) return;
  const key = s.clock + "/" + s.blocks + "/" + s.frames;
  if (!force && key === state.timelineKey) return;
  const id = state.current;
  const timeline = await api("GET", "/sessions/" + encodeURIComponent(id) + "/timeline");
  if (id !== state.current) return;
  state.timeline = timeline;
  state.timelineKey = key;
  renderTimeline();
}

/** Left offset and width (percent) of [t0, t1] on a bar 0..clock. */
function place(node, t0, t1, clock) {
  const a = Math.max(0, Math.min(t0, clock));
  const b = Math.max(a, Math.min(t1, clock));
  node.style.left = ((100 * a) / clock).toFixed(3) + "%";
  node.style.width = ((100 * (b - a)) / clock).toFixed(3) + "%";
}

function renderTimeline() {
  const bar = $("timeline");
  const tl = state.timeline || { clock: 0, spans: [], thumbnails: [] };
  const clock = Math.max(tl.clock || 0, 1e-6);
  bar.dataset.clock = String(tl.clock || 0);
  bar.replaceChildren();
  for (const sp of tl.spans || []) {
    const node = el("div", {
      class: "span kind-" + sp.kind,
      title: sp.kind + " " + secs(sp.t0) + "–" + secs(sp.t1) + " (" + sp.level + ")",
      dataset: { t0: sp.t0, t1: sp.t1, kind: sp.kind, level: sp.level },
    });
    place(node, sp.t0, sp.t1, clock);
    bar.append(node);
  }
  state.evidence.forEach((ev, i) => {
    const label = "evidence " + (i + 1) + ": " + evidenceLabel(ev);
    const node = el("button", {
      type: "button",
      class: isText(ev) ? "evidence lane-text" : "evidence", // over the text lane: frames stay reachable
      "aria-label": label + (isText(ev) ? " (show its lines)" : " (show its frames)"),
      title: label,
      dataset: { t0: ev.t0, t1: ev.t1, kind: ev.kind, level: ev.level },
      onmouseenter: () => showEvidence(ev, node),
      onfocus: () => showEvidence(ev, node),
      onclick: () => showEvidence(ev, node),
    });
    place(node, ev.t0, ev.t1, clock);
    bar.append(node);
  });
  setText($("axis-end"), secs(tl.clock || 0));
}

/* ---------- evidence: subtitle lines or thumbnails ---------- */

/** A span of timed text (subtitles, a transcript): shown as its lines, not as frames. */
function isText(ev) {
  return ev.kind === "text";
}

/** The lines of a text span (`[12.0s] ...` each), cleaned; none when the server did not send them. */
function evidenceLines(ev) {
  return clean(ev.text || "")
    .split("\n")
    .map((line) => line.trim())
    .filter((line) => line.length > 0);
}

function evidenceLabel(ev) {
  const span = ev.kind + " " + secs(ev.t0) + "–" + secs(ev.t1) + " (" + ev.level + ")";
  const first = evidenceLines(ev)[0];
  if (!first) return span;
  return span + ": " + (first.length > 60 ? first.slice(0, 59) + "…" : first);
}

/** Show what an evidence span holds: a text span's lines, or thumbnails of the frames inside it. */
function showEvidence(ev, node) {
  $("timeline").querySelectorAll(".evidence.active").forEach((n) => n.classList.remove("active"));
  if (node) node.classList.add("active");
  if (isText(ev)) showLines(ev);
  else showThumbs(ev);
}

function showLines(ev) {
  state.thumbRequest++; // a thumbnail request still on its way must not replace the lines
  const lines = evidenceLines(ev);
  $("thumbs").hidden = true;
  const box = $("thumb-text");
  box.replaceChildren(...lines.map((line) => el("p", {}, line)));
  box.hidden = lines.length === 0;
  const caption = "text evidence " + secs(ev.t0) + "–" + secs(ev.t1) + " (" + ev.level + ")";
  setText($("thumb-caption"), lines.length ? caption : caption + ": the server sent no text for it");
  $("thumb-box").hidden = false;
}

function clearThumbs() {
  for (const url of state.thumbUrls.values()) URL.revokeObjectURL(url);
  state.thumbUrls.clear();
  $("thumb-box").hidden = true;
  $("thumb-box").querySelectorAll("img.extra").forEach((n) => n.remove());
  $("thumbnail").removeAttribute("src");
  $("thumb-text").replaceChildren();
}

/** Up to MAX_THUMBS stored thumbnail times inside [t0, t1] (evenly picked), or the middle of the span. */
function thumbTimes(t0, t1) {
  const known = ((state.timeline && state.timeline.thumbnails) || []).filter((t) => t >= t0 && t <= t1);
  if (known.length === 0) return [(t0 + t1) / 2];
  if (known.length <= MAX_THUMBS) return known;
  const step = (known.length - 1) / (MAX_THUMBS - 1);
  return Array.from({ length: MAX_THUMBS }, (_, i) => known[Math.round(i * step)]);
}

async function thumbUrl(id, t) {
  const key = id + "@" + t;
  if (state.thumbUrls.has(key)) return state.thumbUrls.get(key);
  const response = await fetch(
    "/v1/sessions/" + encodeURIComponent(id) + "/thumbnail?t=" + encodeURIComponent(t),
    { headers: authHeaders() },
  );
  if (!response.ok) throw await errorFrom(response);
  const url = URL.createObjectURL(await response.blob());
  state.thumbUrls.set(key, url);
  return url;
}

async function showThumbs(ev) {
  const id = state.current;
  if (!id) return;
  const request = ++state.thumbRequest;
  const box = $("thumb-box");
  const times = thumbTimes(ev.t0, ev.t1);
  let urls;
  try {
    urls = await Promise.all(times.map((t) => thumbUrl(id, t)));
  } catch (err) {
    if (request !== state.thumbRequest) return;
    showFramesBox();
    box.querySelectorAll("img.extra").forEach((n) => n.remove());
    $("thumbnail").removeAttribute("src");
    $("thumbnail").alt = "";
    setText($("thumb-caption"), "no frames to show near " + secs(ev.t0) + ": " + err.message);
    return;
  }
  if (request !== state.thumbRequest || id !== state.current) return;
  showFramesBox();
  box.querySelectorAll("img.extra").forEach((n) => n.remove());
  const first = $("thumbnail");
  first.src = urls[0];
  first.alt = "frame near " + secs(times[0]);
  let after = first;
  urls.slice(1).forEach((url, i) => {
    const img = el("img", { class: "extra", src: url, alt: "frame near " + secs(times[i + 1]) });
    after.after(img);
    after = img;
  });
  const span = secs(ev.t0) + "–" + secs(ev.t1) + " (" + ev.level + ")";
  setText($("thumb-caption"), ev.kind + " evidence " + span);
}

function showFramesBox() {
  $("thumb-text").hidden = true;
  $("thumbs").hidden = false;
  $("thumb-box").hidden = false;
}

/* ---------- ingest ---------- */

function uploadVideo(event) {
  event.preventDefault();
  clearError();
  const id = state.current;
  const file = $("upload-file").files[0];
  if (!id) return showError("open or create a session first");
  if (!file) return showError("choose a video file to upload");
  const form = new FormData();
  form.append("file", file, file.name);
  const subs = $("upload-subtitles").files[0];
  if (subs) form.append("subtitles", subs, subs.name);
  const fps = $("upload-fps").value.trim();
  if (fps) form.append("fps", fps);

  const button = $("upload");
  const bar = $("upload-progress");
  const result = $("upload-result");
  button.disabled = true;
  bar.hidden = false;
  bar.value = 0;
  setText(result, "uploading " + file.name + "…");
  // XMLHttpRequest rather than fetch: it reports upload progress
  const xhr = new XMLHttpRequest();
  xhr.open("POST", "/v1/sessions/" + encodeURIComponent(id) + "/video");
  for (const [k, v] of Object.entries(authHeaders())) xhr.setRequestHeader(k, v);
  xhr.upload.onprogress = (e) => {
    if (e.lengthComputable) bar.value = e.loaded / e.total;
  };
  xhr.upload.onload = () => {
    bar.removeAttribute("value"); // indeterminate while the server ingests
    setText(result, "ingesting " + file.name + "…");
    scheduleStatus(0);
  };
  const done = () => {
    button.disabled = false;
    bar.hidden = true;
  };
  xhr.onerror = () => {
    done();
    setText(result, "");
    showError("the upload failed: the connection to the server was lost");
  };
  xhr.onload = () => {
    done();
    let payload = null;
    try {
      payload = JSON.parse(xhr.responseText);
    } catch (_) {
      /* not JSON */
    }
    if (xhr.status >= 200 && xhr.status < 300 && payload) {
      setText(result, "added " + payload.added + " blocks from " + file.name);
      if (payload.status && id === state.current) renderStatus(payload.status);
      refreshTimeline(true).catch(showError);
      refreshSessions().catch(() => {});
    } else {
      setText(result, "");
      showError("upload of " + file.name + " failed: " + detailMessage(payload, xhr.status));
    }
  };
  xhr.send(form);
}

async function startSource(event) {
  event.preventDefault();
  const id = state.current;
  if (!id) return showError("open or create a session first");
  await guarded($("source-start"), async () => {
    const url = $("source-url").value.trim();
    if (!url) throw new ApiError("enter a stream URL or a file path on the server", 400);
    const fps = parseFloat($("source-fps").value);
    const status = await api("POST", "/sessions/" + encodeURIComponent(id) + "/source", {
      url,
      fps: Number.isFinite(fps) ? fps : null,
      realtime: $("source-realtime").checked,
      subtitles: null,
    });
    renderStatus(status);
    scheduleStatus(STATUS_EVERY_MS);
  });
}

async function stopSource() {
  const id = state.current;
  if (!id) return;
  await guarded($("source-stop"), async () => {
    renderStatus(await api("DELETE", "/sessions/" + encodeURIComponent(id) + "/source"));
  });
}

/* ---------- asking: server-sent events over fetch ---------- */

/** Parse one SSE event block into {event, data}; null for a comment-only block. */
function parseEvent(block) {
  let event = "message";
  const data = [];
  let seen = false;
  for (const line of block.split(/\r\n|\r|\n/)) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") event = value;
    else if (field === "data") data.push(value);
    else continue;
    seen = true;
  }
  return seen ? { event, data: data.join("\n") } : null;
}

/** Yield the events of a text/event-stream response as they arrive. */
async function* readEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  const boundary = /\r\n\r\n|\n\n|\r\r/;
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    buffer += done ? decoder.decode() : decoder.decode(value, { stream: true });
    let match;
    while ((match = boundary.exec(buffer)) !== null) {
      const event = parseEvent(buffer.slice(0, match.index));
      buffer = buffer.slice(match.index + match[0].length);
      if (event) yield event;
    }
    if (done) break;
  }
  const last = parseEvent(buffer);
  if (last) yield last;
}

function choicesList() {
  return $("choices")
    .value.split("\n")
    .map((c) => c.trim())
    .filter((c) => c.length > 0);
}

async function ask(event) {
  event.preventDefault();
  const id = state.current;
  if (!id) return showError("open or create a session first");
  if (state.asking) return;
  const question = $("question").value.trim();
  if (!question) return showError("type a question first");
  const choices = choicesList();
  const maxTokens = parseInt($("max-tokens").value, 10);
  const answerEl = $("answer");
  clearError();
  state.asking = true;
  $("ask").disabled = true;
  setText(answerEl, "");
  answerEl.setAttribute("aria-busy", "true");
  setText($("answer-meta"), "thinking…");
  $("evidence-list").replaceChildren();
  state.evidence = [];
  renderTimeline();
  try {
    let response;
    try {
      response = await fetch("/v1/sessions/" + encodeURIComponent(id) + "/ask", {
        method: "POST",
        headers: authHeaders({ "Content-Type": "application/json", Accept: "text/event-stream" }),
        body: JSON.stringify({
          question,
          choices: choices.length ? choices : null,
          max_new_tokens: Number.isFinite(maxTokens) ? maxTokens : 48,
          stream: true,
        }),
      });
    } catch (err) {
      throw new ApiError("cannot reach the server (" + err.message + ")", 0);
    }
    if (!response.ok) throw await errorFrom(response);
    const type = response.headers.get("Content-Type") || "";
    if (!type.includes("text/event-stream")) {
      await showAnswer(await response.json(), choices);
      return;
    }
    let answered = false;
    for await (const ev of readEvents(response)) {
      const data = ev.data ? JSON.parse(ev.data) : {};
      if (ev.event === "token") {
        answerEl.textContent += clean(data.text);
        setText($("answer-meta"), "answering…");
      } else if (ev.event === "answer") {
        answered = true;
        await showAnswer(data, choices);
      } else if (ev.event === "error") {
        throw new ApiError(detailMessage(data, 500), 500);
      }
    }
    if (!answered) throw new ApiError("the answer stream ended before the answer arrived; ask again", 0);
  } catch (err) {
    setText($("answer-meta"), "");
    showError(err);
  } finally {
    state.asking = false;
    $("ask").disabled = false;
    answerEl.setAttribute("aria-busy", "false");
  }
}

async function showAnswer(answer, choices) {
  const answerEl = $("answer");
  const text = clean(answer.answer);
  if (text && text !== answerEl.textContent.trim()) setText(answerEl, text);
  const meta = [];
  if (answer.choice !== undefined && answer.choice !== null) {
    const letter = String.fromCharCode(65 + answer.choice);
    meta.push("choice (" + letter + ") " + (choices[answer.choice] || ""));
  }
  const st = answer.stats || {};
  if (st.ttft_s !== undefined) meta.push("first token " + st.ttft_s.toFixed(2) + " s");
  if (st.prefill_s !== undefined && st.decode_s !== undefined) {
    meta.push("total " + (st.prefill_s + st.decode_s).toFixed(2) + " s");
  }
  if (st.answer_tokens !== undefined) meta.push(st.answer_tokens + " tokens");
  setText($("answer-meta"), meta.join(" · "));
  state.evidence = (answer.evidence || []).filter((e) => Number.isFinite(e.t0) && Number.isFinite(e.t1));
  const list = $("evidence-list");
  list.replaceChildren();
  state.evidence.forEach((ev) => {
    list.append(
      el(
        "li",
        {},
        el(
          "button",
          {
            type: "button",
            class: "secondary",
            title: clean(ev.text) || null,
            onclick: () => showEvidence(ev, null),
          },
          evidenceLabel(ev),
        ),
      ),
    );
  });
  try {
    await refreshTimeline(true);
  } catch (err) {
    renderTimeline();
    showError(err);
  }
}

/* ---------- snapshots ---------- */

async function saveSnapshot() {
  const id = state.current;
  if (!id) return;
  await guarded($("session-save"), async () => {
    const saved = await api("POST", "/sessions/" + encodeURIComponent(id) + "/save");
    setText($("upload-result"), "saved snapshot " + saved.snapshot);
    $("snapshots-panel").open = true;
    await refreshSnapshots();
  });
}

async function refreshSnapshots() {
  const snaps = await api("GET", "/snapshots");
  const list = $("snapshots");
  list.replaceChildren();
  for (const s of snaps) {
    list.append(
      el(
        "li",
        { dataset: { snapshot: s.snapshot } },
        el(
          "button",
          {
            type: "button",
            class: "open",
            title: "restore as a new session",
            onclick: (e) => restoreSnapshot(s.snapshot, e.currentTarget),
          },
          s.snapshot,
          el("span", { class: "meta" }, s.memory + " · " + secs(s.clock)),
        ),
      ),
    );
  }
  if (snaps.length === 0) list.append(el("li", { class: "muted small" }, "no snapshots"));
}

async function restoreSnapshot(name, button) {
  await guarded(button, async () => {
    const status = await api("POST", "/snapshots/" + encodeURIComponent(name) + "/restore");
    await openSession(status.id, status);
  });
}

/* ---------- start-up ---------- */

let sessionsTimer = null;

async function startup() {
  try {
    await loadPresets();
    await refreshSessions();
  } catch (err) {
    showError(err);
    return;
  }
  clearInterval(sessionsTimer);
  sessionsTimer = setInterval(() => refreshSessions().catch(() => {}), SESSIONS_EVERY_MS);
  const m = /session=([^&]+)/.exec(window.location.hash);
  if (m && !state.current) await openSession(decodeURIComponent(m[1]));
}

function init() {
  loadToken();
  $("token-form").addEventListener("submit", saveToken);
  $("create-form").addEventListener("submit", createSession);
  $("preset").addEventListener("change", showPresetSummary);
  $("upload-form").addEventListener("submit", uploadVideo);
  $("source-form").addEventListener("submit", startSource);
  $("source-stop").addEventListener("click", stopSource);
  $("ask-form").addEventListener("submit", ask);
  $("question").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) $("ask-form").requestSubmit();
  });
  $("session-save").addEventListener("click", saveSnapshot);
  $("session-delete").addEventListener("click", deleteSession);
  $("snapshots-refresh").addEventListener("click", () => refreshSnapshots().catch(showError));
  $("snapshots-panel").addEventListener("toggle", () => {
    if ($("snapshots-panel").open) refreshSnapshots().catch(showError);
  });
  refreshHealth().then((ok) => {
    if (ok) startup();
  });
}

document.addEventListener("DOMContentLoaded", init);
