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
  box.textContent = err instanceof Error ? err.message : String(err);
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
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
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
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
    health.textContent =
      "model " + h.model + " · " + h.sessions + " session" + (h.sessions === 1 ? "" : "s");
    health.classList.remove("state-error");
    return true;
  } catch (err) {
    health.textContent = err.status === 401 ? "token needed: enter it above" : err.message;
    health.classList.add("state-error");
    return false;
  }
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
    select.append(el("option", { value: p.name, title: p.summary || "" }, p.name));
  }
  const names = presets.map((p) => p.name);
  select.value = names.includes(previous) ? previous : names.includes("videokv") ? "videokv" : names[0] || "";
  select.presets = presets;
  showPresetSummary();
}

function showPresetSummary() {
  const select = $("preset");
  const p = (select.presets || []).find((x) => x.name === select.value);
  $("preset-summary").textContent = p ? p.summary + (p.source ? " (" + p.source + ")" : "") : "";
}

async function refreshSessions() {
  const sessions = await api("GET", "/sessions");
  const list = $("sessions");
  list.replaceChildren();
  for (const s of sessions) {
    const label = s.name || s.id;
    const item = el(
      "li",
      { class: s.id === state.current ? "current" : "", dataset: { id: s.id } },
      el(
        "button",
        {
          type: "button",
          class: "open",
          "aria-current": s.id === state.current ? "true" : null,
          onclick: () => openSession(s.id),
        },
        label,
        el("span", { class: "meta" }, s.memory + " · " + s.state + " · " + secs(s.clock)),
      ),
    );
    list.append(item);
  }
  $("sessions-empty").hidden = sessions.length > 0;
  return sessions;
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
    state.current = id;
    state.status = null;
    state.timeline = null;
    state.timelineKey = "";
    state.evidence = [];
    clearThumbs();
    $("answer").textContent = "";
    $("answer-meta").textContent = "";
    $("evidence-list").replaceChildren();
    $("upload-result").textContent = "";
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
    $("st-state").textContent = "unreachable";
  }
  if (id === state.current) scheduleStatus(STATUS_EVERY_MS);
}

function renderStatus(s) {
  state.status = s;
  $("session-title").textContent = (s.name || "Session") + " · " + s.id + " · " + s.memory;
  const st = $("st-state");
  st.textContent = s.state + (s.error ? ": " + s.error : "");
  st.className = "state-" + s.state;
  $("st-clock").textContent = secs(s.clock);
  $("st-frames").textContent = String(s.frames);
  $("st-blocks").textContent = String(s.blocks);
  // one definition of memory (videokv.api.kv_memory): resident = ingest context + resident blocks
  const kv = s.kv || { resident_bytes: 0, context_bytes: 0, blocks_bytes: {}, offloaded_bytes: 0 };
  const tiers = Object.entries(kv.blocks_bytes || {}).filter(([, n]) => n > 0);
  $("st-resident").textContent = mib(kv.resident_bytes);
  $("st-resident").title =
    "context " + mib(kv.context_bytes) + "; blocks: " +
    (tiers.length ? tiers.map(([t, n]) => t + " " + mib(n)).join(", ") : mib(0));
  $("st-offloaded").textContent = mib(kv.offloaded_bytes);
  $("st-budget").textContent = s.budget_bytes ? mib(s.budget_bytes) : "none";
  $("st-fps").textContent = s.ingest_fps ? s.ingest_fps.toFixed(1) + " frames/s" : "–";
  const src = s.source;
  $("st-source").textContent = src ? src.state + (src.error ? ": " + src.error : "") : "none";
  $("st-source").title = src ? src.url : "";
  $("source-stop").disabled = !(src && src.state === "running");
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
    const label = "evidence " + (i + 1) + ": " + ev.kind + " " + secs(ev.t0) + "–" + secs(ev.t1);
    const node = el("button", {
      type: "button",
      class: "evidence",
      "aria-label": label + " (show its frames)",
      title: label,
      dataset: { t0: ev.t0, t1: ev.t1, kind: ev.kind, level: ev.level },
      onmouseenter: () => showThumbs(ev, node),
      onfocus: () => showThumbs(ev, node),
      onclick: () => showThumbs(ev, node),
    });
    place(node, ev.t0, ev.t1, clock);
    bar.append(node);
  });
  $("axis-end").textContent = secs(tl.clock || 0);
}

/* ---------- thumbnails ---------- */

function clearThumbs() {
  for (const url of state.thumbUrls.values()) URL.revokeObjectURL(url);
  state.thumbUrls.clear();
  $("thumb-box").hidden = true;
  $("thumb-box").querySelectorAll("img.extra").forEach((n) => n.remove());
  $("thumbnail").removeAttribute("src");
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

async function showThumbs(ev, node) {
  const id = state.current;
  if (!id) return;
  const request = ++state.thumbRequest;
  $("timeline").querySelectorAll(".evidence.active").forEach((n) => n.classList.remove("active"));
  if (node) node.classList.add("active");
  const box = $("thumb-box");
  const times = thumbTimes(ev.t0, ev.t1);
  let urls;
  try {
    urls = await Promise.all(times.map((t) => thumbUrl(id, t)));
  } catch (err) {
    if (request !== state.thumbRequest) return;
    box.hidden = false;
    box.querySelectorAll("img.extra").forEach((n) => n.remove());
    $("thumbnail").removeAttribute("src");
    $("thumbnail").alt = "";
    $("thumb-caption").textContent = "no frames to show near " + secs(ev.t0) + ": " + err.message;
    return;
  }
  if (request !== state.thumbRequest || id !== state.current) return;
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
  $("thumb-caption").textContent =
    ev.kind + " evidence " + secs(ev.t0) + "–" + secs(ev.t1) + " (" + ev.level + ")";
  box.hidden = false;
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
  result.textContent = "uploading " + file.name + "…";
  // XMLHttpRequest rather than fetch: it reports upload progress
  const xhr = new XMLHttpRequest();
  xhr.open("POST", "/v1/sessions/" + encodeURIComponent(id) + "/video");
  for (const [k, v] of Object.entries(authHeaders())) xhr.setRequestHeader(k, v);
  xhr.upload.onprogress = (e) => {
    if (e.lengthComputable) bar.value = e.loaded / e.total;
  };
  xhr.upload.onload = () => {
    bar.removeAttribute("value"); // indeterminate while the server ingests
    result.textContent = "ingesting " + file.name + "…";
    scheduleStatus(0);
  };
  const done = () => {
    button.disabled = false;
    bar.hidden = true;
  };
  xhr.onerror = () => {
    done();
    result.textContent = "";
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
      result.textContent = "added " + payload.added + " blocks from " + file.name;
      if (payload.status && id === state.current) renderStatus(payload.status);
      refreshTimeline(true).catch(showError);
      refreshSessions().catch(() => {});
    } else {
      result.textContent = "";
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
  answerEl.textContent = "";
  answerEl.setAttribute("aria-busy", "true");
  $("answer-meta").textContent = "thinking…";
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
        answerEl.textContent += data.text || "";
        $("answer-meta").textContent = "answering…";
      } else if (ev.event === "answer") {
        answered = true;
        await showAnswer(data, choices);
      } else if (ev.event === "error") {
        throw new ApiError(detailMessage(data, 500), 500);
      }
    }
    if (!answered) throw new ApiError("the answer stream ended before the answer arrived; ask again", 0);
  } catch (err) {
    $("answer-meta").textContent = "";
    showError(err);
  } finally {
    state.asking = false;
    $("ask").disabled = false;
    answerEl.setAttribute("aria-busy", "false");
  }
}

async function showAnswer(answer, choices) {
  const answerEl = $("answer");
  if (answer.answer && answer.answer !== answerEl.textContent.trim()) answerEl.textContent = answer.answer;
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
  $("answer-meta").textContent = meta.join(" · ");
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
          { type: "button", class: "secondary", onclick: () => showThumbs(ev, null) },
          ev.kind + " " + secs(ev.t0) + "–" + secs(ev.t1) + " (" + ev.level + ")",
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
    $("upload-result").textContent = "saved snapshot " + saved.snapshot;
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
