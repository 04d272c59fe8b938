// The technician page. It only calls the bin's public API (/health, /api/*, /predict/live) with the
// token the technician pasted; it keeps no data of its own beyond what is on screen.
"use strict";

const TOKEN_KEY = "recyclex.adminToken";
const HEALTH_EVERY_MS = 3000;
const STATE_EVERY_MS = 3000;
const CAMERA_EVERY_MS = 2000;
const HISTORY_POLL_MS = 5000; // without the WebSocket
const HISTORY_REFRESH_MS = 30000; // with it: charts only
const SOCKET_RETRY_MS = 15000; // new sockets are rate limited (6 a minute by default)
const MAX_EVENTS = 50;
const CHART_GROUP_MIN = 10;
const MODELS_EVERY_MS = 5000;

const $ = (id) => document.getElementById(id);
let token = sessionStorage.getItem(TOKEN_KEY) || "";
let auth = null; // the `auth` part of the last /api/state answer
let stateLoaded = false;
let socketLive = false;
let lastHistoryAt = 0;
let busy = false;
let refusal = { status: 0, error: "" }; // why /api/state was refused, while `auth` is null
const eventRows = new Map(); // event id -> <li>

// -- talking to the bin ---------------------------------------------------------------------------

function authHeaders() {
  return token ? { Authorization: "Bearer " + token } : {};
}

async function call(path, options = {}) {
  const response = await fetch(path, {
    ...options,
    cache: "no-store",
    headers: { ...authHeaders(), ...(options.headers || {}) },
  });
  const type = response.headers.get("content-type") || "";
  const body = type.includes("json") ? await response.json().catch(() => null) : null;
  return { status: response.status, ok: response.ok, body, response };
}

function retryAfterMs(result, fallbackMs) {
  const seconds = Number(result.response.headers.get("retry-after"));
  return seconds > 0 ? seconds * 1000 : fallbackMs;
}

// Runs `task` now and then again after the delay it returns (or `everyMs`), never overlapping itself.
function repeat(everyMs, task) {
  const tick = async () => {
    let waitMs = everyMs;
    try {
      const asked = await task();
      if (typeof asked === "number") waitMs = asked;
    } catch (error) {
      console.warn(error);
    }
    setTimeout(tick, waitMs);
  };
  tick();
}

function imagesAllowed() {
  return auth !== null && (!auth.enabled || auth.subject !== null);
}

async function loadImage(path) {
  const response = await fetch(path, { headers: authHeaders(), cache: "no-store" });
  if (!response.ok) return { status: response.status, url: null };
  return { status: response.status, url: URL.createObjectURL(await response.blob()) };
}

// -- formatting -----------------------------------------------------------------------------------

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function clock(date) {
  return date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

function ago(date) {
  const seconds = Math.max(0, Math.round((Date.now() - date.getTime()) / 1000));
  if (seconds < 60) return seconds + " s ago";
  if (seconds < 3600) return Math.round(seconds / 60) + " min ago";
  if (seconds < 86400) return (seconds / 3600).toFixed(1) + " h ago";
  return (seconds / 86400).toFixed(1) + " days ago";
}

function duration(seconds) {
  const s = Math.floor(seconds);
  if (s < 60) return s + " s";
  if (s < 3600) return Math.floor(s / 60) + " min";
  if (s < 86400) return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  return Math.floor(s / 86400) + " d " + Math.floor((s % 86400) / 3600) + " h";
}

function since(iso) {
  const date = new Date(iso);
  const sameDay = date.toDateString() === new Date().toDateString();
  return "since " + (sameDay ? "" : date.toLocaleDateString() + " ") + clock(date) + " (" + ago(date) + ")";
}

function setBanner(id, kind, text) {
  const banner = $(id);
  banner.hidden = !text;
  banner.className = "banner " + (kind || "");
  banner.textContent = text || "";
}

// -- health ---------------------------------------------------------------------------------------

// Problems first, then what the config turned off (a bin that publishes nothing must show it), then ok.
const RANK = { failing: 0, degraded: 1, disabled: 2, ok: 3 };

function renderHealth(health) {
  const overall = $("overall");
  overall.className = "overall " + health.status;
  overall.dataset.status = health.status;
  const components = Object.entries(health.components || {});
  const problems = components.filter(([, c]) => c.status !== "ok").map(([name, c]) => name + " " + c.status);
  $("overall-status").textContent =
    health.status.toUpperCase() + (problems.length ? " — " + problems.join(", ") : "");
  $("model").textContent = health.model ? health.model.name + " " + health.model.version : "not loaded";
  $("version").textContent = health.version;
  $("uptime").textContent = duration(health.uptime_s);
  $("updated").textContent = clock(new Date());

  components.sort(([a, x], [b, y]) => (RANK[x.status] ?? 4) - (RANK[y.status] ?? 4) || a.localeCompare(b));
  const list = $("components");
  list.replaceChildren(
    ...components.map(([name, component]) => {
      const row = el("li", component.status);
      row.dataset.component = name;
      row.dataset.status = component.status;
      row.append(
        el("span", "dot"),
        el("span", "component-name", name.replace("_", " ")),
        el("span", "component-status", component.status),
        el("span", "component-detail", component.detail),
        el("span", "component-since", since(component.since)),
      );
      return row;
    }),
  );
}

async function pollHealth() {
  let result;
  try {
    result = await call("/health");
  } catch (error) {
    setBanner("connection", "bad", "Cannot reach the bin (" + error.message + "); retrying every few seconds.");
    $("overall").className = "overall unknown";
    $("overall-status").textContent = "NO CONTACT";
    return HEALTH_EVERY_MS;
  }
  if (result.status === 429) return retryAfterMs(result, 10000);
  if (result.body && result.body.components) {
    setBanner("connection", "", "");
    renderHealth(result.body);
  } else if (result.status === 401 || result.status === 403) {
    setBanner("connection", "warn", "/health needs a token on this bin: paste one under Controls.");
  } else {
    setBanner("connection", "bad", "/health answered " + result.status + ": " + (result.body?.error || ""));
  }
  return HEALTH_EVERY_MS;
}

// -- state, counters, authentication --------------------------------------------------------------

function renderCounters(state) {
  const names = [...new Set([...state.categories, ...Object.keys(state.counters), ...Object.keys(state.bins)])];
  $("counters").replaceChildren(
    ...names.map((name) => {
      const row = el("tr");
      row.dataset.category = name;
      const level = state.fill_levels[name];
      const fill = el("td");
      if (level === undefined || level === null) {
        fill.append(el("span", "muted", level === null ? "no reading" : "no sensor"));
      } else {
        const bar = el("span", "fill-bar" + (level >= 90 ? " full" : level >= 75 ? " high" : ""));
        const inner = el("span");
        inner.style.width = Math.min(100, Math.max(0, level)) + "%";
        bar.append(inner);
        const wrap = el("span", "fill");
        wrap.append(bar, el("span", "", Math.round(level) + "%"));
        fill.append(wrap);
      }
      const counted = state.counters[name] ?? 0;
      const sorted = state.bins[name];
      row.append(
        el("td", "", name),
        el("td", "", String(counted) + (sorted !== undefined && sorted !== counted ? " (" + sorted + " into bin)" : "")),
        fill,
      );
      return row;
    }),
  );
}

function renderAuth() {
  const { status, error } = refusal;
  const box = $("auth-status");
  let kind = "bad";
  let text;
  let admin = false;
  if (auth && !auth.enabled) {
    kind = "warn";
    admin = true;
    text = "Authentication is OFF on this bin: anyone on its network can use these controls.";
  } else if (auth === null) {
    text = token
      ? "Token refused (" + status + "): " + (error || "not valid") + ". Paste a valid admin token."
      : "No token: this bin needs one. Paste an admin token to use the controls and see images.";
    kind = token ? "bad" : "warn";
  } else if (!token) {
    kind = "warn";
    text = "No token: paste an admin token to use the controls and see camera images.";
  } else if (auth.subject === null) {
    text = "Token refused: " + (auth.problem || "not valid") + ". Paste a valid admin token.";
  } else if (!auth.admin) {
    text = "Token accepted as " + auth.subject + ", but it lacks the admin scope: the controls will be refused.";
  } else {
    kind = "ok";
    admin = true;
    text = "Admin token accepted (" + auth.subject + "). Controls are enabled.";
  }
  box.className = "auth-status " + kind;
  box.dataset.kind = kind;
  box.textContent = text;
  // The top of the page says it too: on a phone the controls are far below.
  if (kind === "ok") setBanner("auth-banner", "", "");
  else if (auth && !auth.enabled) setBanner("auth-banner", "warn", text);
  else if (!token) setBanner("auth-banner", "info", "Read-only view: paste an admin token under Controls to test the bin and see images.");
  else setBanner("auth-banner", kind, text);
  for (const button of document.querySelectorAll("button[data-command], button[data-admin]")) {
    button.disabled = !admin || busy;
  }
}

function renderControls(state) {
  const modes = $("modes");
  if (modes.childElementCount !== state.modes.length) {
    modes.replaceChildren(
      ...state.modes.map((mode) => {
        const button = el("button", "", mode);
        button.type = "button";
        button.dataset.command = "mode";
        button.dataset.args = JSON.stringify({ mode });
        button.dataset.mode = mode;
        return button;
      }),
    );
  }
  for (const button of modes.children) button.classList.toggle("current", button.dataset.mode === state.mode);
  const actuators = $("actuators");
  if (actuators.childElementCount !== state.categories.length) {
    actuators.replaceChildren(
      ...state.categories.map((category) => {
        const button = el("button", "", category);
        button.type = "button";
        button.dataset.command = "test-actuator";
        button.dataset.args = JSON.stringify({ category });
        return button;
      }),
    );
  }
}

async function pollState() {
  let result;
  try {
    result = await call("/api/state");
  } catch (error) {
    return STATE_EVERY_MS; // /health reports the lost contact
  }
  if (result.status === 429) return retryAfterMs(result, 10000);
  if (!result.ok) {
    auth = null;
    refusal = { status: result.status, error: result.body?.error || "" };
    renderAuth();
    return STATE_EVERY_MS;
  }
  const state = result.body;
  const firstTime = !stateLoaded;
  stateLoaded = true;
  auth = state.auth;
  const device = state.device;
  $("device").textContent = device.id + (device.name ? " · " + device.name : "") + (device.location ? " · " + device.location : "");
  document.title = "RecycleX " + device.id;
  $("mode").textContent = state.mode;
  $("detector").textContent = state.detector;
  const chip = $("camera-detector");
  chip.textContent = "detector " + state.detector;
  chip.className = "chip " + state.detector;
  renderCounters(state);
  renderControls(state);
  renderAuth();
  if (firstTime) connectSocket();
  return STATE_EVERY_MS;
}

// -- events ---------------------------------------------------------------------------------------

function eventRow(event) {
  const row = el("li");
  row.dataset.eventId = event.id;
  row.dataset.class = event.class;
  const thumb = el("img", "thumb");
  thumb.alt = event.class;
  if (event.thumbnail !== false && imagesAllowed()) {
    const path = "/api/events/" + encodeURIComponent(event.id) + "/thumbnail.jpg";
    const show = ({ url }) => {
      if (url) thumb.src = url;
    };
    // A live event can arrive a moment before its thumbnail is stored: one retry covers that.
    loadImage(path)
      .then((first) => (first.status === 404 ? new Promise((r) => setTimeout(r, 1000)).then(() => loadImage(path)) : first))
      .then(show)
      .catch((error) => console.warn(error));
  }
  const confidence = Math.round(event.confidence * 100) + "%";
  const decision = el("span", event.decision === "uncertain" ? "uncertain" : "", event.decision);
  const action = String(event.action || "");
  const actionText = el("span", action.startsWith("sorted:") || action === "pass-through" ? "" : "problem", action);
  const line = el("span", "event-decision");
  line.append("decision ", decision, " → ", actionText);
  row.append(
    thumb,
    el("span", "event-class", event.class + " " + confidence),
    el("span", "event-time", clock(new Date(event.ts))),
    line,
  );
  return row;
}

function addEvent(event, isNew) {
  if (eventRows.has(event.id)) return;
  const row = eventRow(event);
  if (isNew) row.classList.add("new");
  eventRows.set(event.id, row);
  $("events").prepend(row);
  $("events-empty").hidden = true;
  while (eventRows.size > MAX_EVENTS) {
    const [oldest, oldRow] = eventRows.entries().next().value;
    eventRows.delete(oldest);
    const image = oldRow.querySelector("img");
    if (image && image.src.startsWith("blob:")) URL.revokeObjectURL(image.src);
    oldRow.remove();
  }
}

function socketUrl() {
  return (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/predict/live";
}

function connectSocket() {
  const needsToken = auth && auth.enabled;
  if (needsToken && !token) {
    // No token yet: poll /api/history, and look again once one has been pasted.
    $("feed").textContent = "(refreshed every " + HISTORY_POLL_MS / 1000 + " s)";
    setTimeout(connectSocket, SOCKET_RETRY_MS);
    return;
  }
  let socket;
  try {
    // Browsers cannot put an Authorization header on a WebSocket: the token travels as a subprotocol.
    socket = needsToken ? new WebSocket(socketUrl(), ["bearer." + token]) : new WebSocket(socketUrl());
  } catch (error) {
    setTimeout(connectSocket, SOCKET_RETRY_MS);
    return;
  }
  socket.onopen = () => socket.send(JSON.stringify({ subscribe: "events" }));
  socket.onmessage = (message) => {
    const data = JSON.parse(message.data);
    if (data.subscribed === "events") {
      socketLive = true;
      $("feed").textContent = "(live)";
      refreshHistory().catch((error) => console.warn(error));
    } else if (data.event) {
      addEvent({ ...data.event, thumbnail: true }, true);
      lastHistoryAt = 0; // charts: refresh at the next history tick
    }
  };
  socket.onclose = () => {
    socketLive = false;
    $("feed").textContent = "(live feed lost; refreshed every " + HISTORY_POLL_MS / 1000 + " s)";
    setTimeout(connectSocket, SOCKET_RETRY_MS);
  };
}

async function refreshHistory() {
  const result = await call("/api/history");
  if (result.status === 429) return retryAfterMs(result, 10000);
  if (!result.ok) return HISTORY_POLL_MS;
  lastHistoryAt = Date.now();
  for (const event of [...result.body.events].reverse()) addEvent(event, stateLoaded && eventRows.size > 0);
  renderCharts(result.body.series);
  return undefined;
}

async function pollHistory() {
  const due = socketLive ? HISTORY_REFRESH_MS : HISTORY_POLL_MS;
  if (lastHistoryAt && Date.now() - lastHistoryAt < due - 100) return Math.min(due, 5000);
  return (await refreshHistory()) ?? Math.min(due, 5000);
}

// -- camera ---------------------------------------------------------------------------------------

async function pollCamera() {
  if (document.hidden) return CAMERA_EVERY_MS;
  const image = $("camera");
  const note = $("camera-note");
  if (!imagesAllowed()) {
    image.hidden = true;
    note.textContent = "Paste a valid token to see the camera.";
    return CAMERA_EVERY_MS;
  }
  const { status, url } = await loadImage("/api/camera.jpg");
  if (status === 429) return 10000;
  if (!url) {
    note.textContent = status === 503 ? "No camera frame yet (see the camera component)." : "Camera view refused (" + status + ").";
    return CAMERA_EVERY_MS;
  }
  const old = image.src;
  image.src = url;
  image.hidden = false;
  if (old.startsWith("blob:")) URL.revokeObjectURL(old);
  note.textContent = "";
  $("camera-age").textContent = "(" + clock(new Date()) + ")";
  return CAMERA_EVERY_MS;
}

// -- charts (inline SVG) --------------------------------------------------------------------------

const SVG = "http://www.w3.org/2000/svg";
const W = 600;
const H = 150;
const PAD = { left: 40, right: 8, top: 8, bottom: 22 };

function svg(tag, attributes, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function niceMax(value) {
  if (value <= 0) return 1;
  const step = 10 ** Math.floor(Math.log10(value));
  for (const m of [1, 2, 5, 10]) if (value <= m * step) return m * step;
  return 10 * step;
}

function axes(chart, startS, endS, maxValue) {
  const x0 = PAD.left;
  const y0 = H - PAD.bottom;
  chart.append(
    svg("line", { class: "axis", x1: x0, y1: y0, x2: W - PAD.right, y2: y0 }),
    svg("line", { class: "axis", x1: x0, y1: PAD.top, x2: x0, y2: y0 }),
    svg("text", { x: x0 - 4, y: PAD.top + 9, "text-anchor": "end" }, String(maxValue)),
    svg("text", { x: x0 - 4, y: y0, "text-anchor": "end" }, "0"),
  );
  for (let i = 0; i <= 3; i++) {
    const t = startS + ((endS - startS) * i) / 3;
    const x = x0 + ((W - PAD.right - x0) * i) / 3;
    const label = new Date(t * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    chart.append(svg("text", { x, y: H - 6, "text-anchor": i === 0 ? "start" : i === 3 ? "end" : "middle" }, label));
  }
}

function renderCharts(series) {
  const minutes = series.items.length;
  const startS = series.start_s;
  const endS = startS + minutes * series.bucket_s;
  const plotW = W - PAD.left - PAD.right;
  const plotH = H - PAD.top - PAD.bottom;

  const groups = [];
  for (let i = 0; i < minutes; i += CHART_GROUP_MIN) {
    groups.push(series.items.slice(i, i + CHART_GROUP_MIN).reduce((a, b) => a + b, 0));
  }
  const itemsMax = niceMax(Math.max(...groups));
  const items = $("items-chart");
  items.replaceChildren();
  axes(items, startS, endS, itemsMax);
  const barW = plotW / groups.length;
  groups.forEach((count, i) => {
    if (!count) return;
    const h = (count / itemsMax) * plotH;
    const bar = svg("rect", { class: "bar", x: PAD.left + i * barW + 1, y: PAD.top + plotH - h, width: barW - 2, height: h });
    bar.append(svg("title", {}, count + " item(s)"));
    items.append(bar);
  });
  const lastHour = series.items.slice(-60).reduce((a, b) => a + b, 0);
  $("items-summary").textContent = "— " + lastHour + " in the last hour";

  const values = series.inference_ms;
  const known = values.filter((v) => v !== null);
  const msMax = niceMax(known.length ? Math.max(...known) : 0);
  const inference = $("inference-chart");
  inference.replaceChildren();
  axes(inference, startS, endS, msMax);
  const step = plotW / minutes;
  let path = "";
  values.forEach((value, i) => {
    if (value === null) return;
    const x = PAD.left + (i + 0.5) * step;
    const y = PAD.top + plotH - (value / msMax) * plotH;
    path += (path ? " L" : "M") + x.toFixed(1) + " " + y.toFixed(1);
    const point = svg("circle", { class: "point", cx: x, cy: y, r: 2.5 });
    point.append(svg("title", {}, value + " ms"));
    inference.append(point);
  });
  if (path) inference.append(svg("path", { class: "line", d: path }));
  $("inference-summary").textContent = known.length
    ? "— latest " + known[known.length - 1].toFixed(1) + " ms, mean " + (known.reduce((a, b) => a + b, 0) / known.length).toFixed(1) + " ms"
    : "— no item yet";
}

// -- controls -------------------------------------------------------------------------------------

function describe(name, result) {
  if (name === "test-actuator") return result.category + " → bin " + result.bin + ": " + result.outcome + (result.reason ? " (" + result.reason + ")" : "");
  if (name === "mode") return "mode is now " + result.mode;
  if (name === "reload-model") return "loaded " + result.model.name + " " + result.model.version;
  if (name === "snapshot") return "saved " + result.path + " (" + result.width + "×" + result.height + ")";
  return JSON.stringify(result);
}

async function runCommand(button) {
  const name = button.dataset.command;
  const output = $("command-result");
  busy = true;
  renderAuth();
  output.className = "command-result";
  output.textContent = "Running " + name + "…";
  try {
    const result = await call("/api/commands/" + name, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: button.dataset.args || "{}",
    });
    if (result.ok) {
      output.className = "command-result ok";
      output.dataset.outcome = "ok";
      output.textContent = "✓ " + name + ": " + describe(name, result.body.result);
    } else {
      output.className = "command-result bad";
      output.dataset.outcome = "error";
      output.textContent = "✗ " + name + " refused (" + result.status + "): " + (result.body?.error || "no answer");
    }
  } catch (error) {
    output.className = "command-result bad";
    output.dataset.outcome = "error";
    output.textContent = "✗ " + name + ": cannot reach the bin (" + error.message + ")";
  } finally {
    busy = false;
    await pollState();
  }
}

// -- models ---------------------------------------------------------------------------------------

function modelStatus(registry) {
  const parts = ["active " + registry.active];
  if (registry.watch) parts.push("watching " + registry.watch.version + " until " + clock(new Date(registry.watch.until)) + " (" + registry.watch.items + " items)");
  if (registry.shadow) {
    const s = registry.shadow;
    parts.push("shadow " + s.version + ": " + s.items + " items" + (s.agreement === null ? "" : ", " + Math.round(s.agreement * 100) + " % agreement"));
    if (s.labelled) parts.push("on " + s.labelled + " labelled items: active " + Math.round(s.active_accuracy * 100) + " % right, shadow " + Math.round(s.shadow_accuracy * 100) + " %");
  }
  if (registry.problem) parts.push(registry.problem);
  return parts.join(" · ");
}

function renderModels(registry) {
  $("models-summary").textContent = "promotion " + registry.promote;
  const status = $("models-status");
  const rollback = registry.last_rollback;
  const automatic = rollback && rollback.reason !== "requested";
  status.className = "models-status " + (automatic ? "warn" : "ok");
  status.textContent = modelStatus(registry) + (automatic
    ? " · rolled back automatically from " + rollback.from_version + " to " + rollback.to_version + " at " + clock(new Date(rollback.at)) + ": " + rollback.reason
    : "");
  $("models").tBodies[0].replaceChildren(
    ...registry.models.map((model) => {
      const row = el("tr");
      row.dataset.version = model.version;
      const role = model.active ? "active" : model.candidate ? "shadow" : "";
      const cells = [
        model.version,
        model.name + " " + model.model_version + (model.encrypted ? " (encrypted)" : ""),
        model.installed_at ? clock(new Date(model.installed_at)) : "—",
        model.installed_by || "—",
        model.source ? model.source.split("/").pop() : "—",
        role,
      ];
      for (const text of cells) row.append(el("td", "", text));
      if (model.source) row.children[4].title = model.source;
      const actions = el("td");
      if (!model.active) {
        const activate = el("button", "", model.candidate ? "Promote" : "Activate");
        activate.type = "button";
        activate.dataset.admin = "";
        activate.dataset.modelAction = "activate";
        activate.dataset.version = model.version;
        actions.append(activate);
        if (!model.factory) {
          const remove = el("button", "", "Remove");
          remove.type = "button";
          remove.dataset.admin = "";
          remove.dataset.modelAction = "remove";
          remove.dataset.version = model.version;
          actions.append(remove);
        }
      }
      row.append(actions);
      row.classList.toggle("current", model.active);
      return row;
    }),
  );
  const audit = registry.audit;
  if (!audit.length) {
    $("model-audit").replaceChildren(el("li", "none", "no model operation yet"));
    renderAuth();
    return;
  }
  $("model-audit").replaceChildren(
    ...audit.slice(0, 20).map((entry) => {
      const item = el("li", entry.ok ? "ok" : "bad");
      item.textContent = clock(new Date(entry.ts)) + " " + entry.who + " " + entry.action + (entry.target ? " " + entry.target : "") + ": " + (entry.ok ? "✓ " : "✗ ") + entry.detail;
      return item;
    }),
  );
  renderAuth();
}

async function pollModels() {
  if (!auth || !auth.admin) {
    $("models-status").textContent = "An admin token shows the bin's models.";
    return MODELS_EVERY_MS;
  }
  const result = await call("/api/models");
  if (result.status === 429) return retryAfterMs(result, 10000);
  if (result.ok) renderModels(result.body);
  else $("models-status").textContent = "Models unavailable (" + result.status + "): " + (result.body?.error || "");
  return MODELS_EVERY_MS;
}

async function modelOperation(what, path, options) {
  const output = $("model-result");
  busy = true;
  renderAuth();
  output.className = "command-result";
  output.textContent = what + "…";
  try {
    const result = await call(path, { method: "POST", ...options });
    output.className = "command-result " + (result.ok ? "ok" : "bad");
    output.dataset.outcome = result.ok ? "ok" : "error";
    output.textContent = result.ok
      ? "✓ " + result.body.detail
      : "✗ " + what + " refused (" + result.status + "): " + (result.body?.error || "no answer");
  } catch (error) {
    output.className = "command-result bad";
    output.dataset.outcome = "error";
    output.textContent = "✗ " + what + ": cannot reach the bin (" + error.message + ")";
  } finally {
    busy = false;
    await pollModels();
  }
}

function setUpModels() {
  $("model-upload").addEventListener("submit", (submit) => {
    submit.preventDefault();
    const file = $("model-file").files[0];
    if (!file) {
      $("model-result").textContent = "Choose a package file first.";
      return;
    }
    const shadow = $("model-shadow").checked ? "?shadow=true" : "";
    modelOperation("installing " + file.name, "/api/models" + shadow, {
      headers: { "Content-Type": "application/octet-stream" },
      body: file,
    });
  });
  $("model-rollback").addEventListener("click", () => modelOperation("rolling back", "/api/models/rollback", {}));
  $("models").addEventListener("click", (click) => {
    const button = click.target.closest("button[data-model-action]");
    if (!button || button.disabled) return;
    const version = encodeURIComponent(button.dataset.version);
    if (button.dataset.modelAction === "activate") {
      modelOperation("activating " + button.dataset.version, "/api/models/" + version + "/activate", {});
    } else {
      modelOperation("removing " + button.dataset.version, "/api/models/" + version, { method: "DELETE" });
    }
  });
  repeat(MODELS_EVERY_MS, pollModels);
}

// -- review: label captured items -------------------------------------------------------------------

const REVIEW_EVERY_MS = 15000;
const review = { labelled: false, items: [], labels: [], selected: null, undo: [], allowed: true, busy: false };
const reviewImages = new Map(); // item id -> blob URL, so a refresh does not fetch photos again

function reviewKey(label) {
  const index = review.labels.indexOf(label);
  if (label === "none") return "0";
  return index >= 0 && index < 9 ? String(index + 1) : "";
}

function setReviewResult(kind, text) {
  const output = $("review-result");
  output.className = "command-result " + kind;
  output.dataset.outcome = kind;
  output.textContent = text;
}

function renderReviewSummary(body) {
  const shown = body.backlog + " to review, " + body.labelled + " labelled";
  $("review-summary").textContent = "— " + shown;
  $("review-adaptation").textContent = "Site adaptation: " + body.adaptation_detail;
  $("review-counts").replaceChildren(
    ...Object.entries(body.counts).map(([label, count]) => {
      const item = el("li", "", label + " " + count);
      item.dataset.label = label;
      item.dataset.count = String(count);
      return item;
    }),
  );
}

function reviewRow(item) {
  const row = el("li");
  row.dataset.itemId = item.id;
  row.tabIndex = 0;
  const image = el("img");
  image.alt = "captured item " + item.id;
  const cached = reviewImages.get(item.id);
  if (cached) image.src = cached;
  else
    loadImage("/api/captures/" + encodeURIComponent(item.id) + "/image.jpg").then(({ url }) => {
      if (url) {
        reviewImages.set(item.id, url);
        image.src = url;
      }
    });
  const guess = el(
    "div",
    "review-guess",
    item.class + " " + Math.round(item.confidence * 100) + " %" + (item.decision === "uncertain" ? " (uncertain)" : "") +
      " · " + ago(new Date(item.captured_at)),
  );
  const buttons = el("div", "buttons");
  for (const label of review.labels) {
    const key = reviewKey(label);
    const button = el("button", "", (key ? key + " " : "") + label);
    button.type = "button";
    button.dataset.label = label;
    buttons.append(button);
  }
  const skip = el("button", "", "x skip");
  skip.type = "button";
  skip.dataset.skip = "1";
  buttons.append(skip);
  row.append(image, guess, buttons);
  markLabel(row, item.label);
  row.addEventListener("click", (click) => {
    selectItem(item.id);
    const button = click.target.closest("button");
    if (!button) return;
    if (button.dataset.skip) selectNext();
    else if (button.dataset.label) setLabel(item.id, button.dataset.label);
  });
  return row;
}

function markLabel(row, label) {
  if (label) {
    row.dataset.label = label;
    row.querySelector(".review-guess").dataset.labelText = label;
  } else delete row.dataset.label;
  for (const button of row.querySelectorAll("button[data-label]")) button.classList.toggle("chosen", button.dataset.label === label);
}

function reviewRowOf(id) {
  return $("review-items").querySelector('li[data-item-id="' + CSS.escape(id) + '"]');
}

function selectItem(id) {
  review.selected = id;
  for (const row of $("review-items").children) row.classList.toggle("selected", row.dataset.itemId === id);
  const row = id ? reviewRowOf(id) : null;
  if (row) row.scrollIntoView({ block: "nearest" });
}

function selectNext() {
  const rows = [...$("review-items").children];
  const at = rows.findIndex((row) => row.dataset.itemId === review.selected);
  const after = rows.slice(at + 1);
  // In "To review", move on to the next item still without a label.
  const next = after.find((row) => review.labelled || !row.dataset.label) || after[0];
  selectItem(next ? next.dataset.itemId : review.selected);
}

async function setLabel(id, label, { remember = true } = {}) {
  if (review.busy) return;
  const row = reviewRowOf(id);
  const previous = row && row.dataset.label ? row.dataset.label : null;
  review.busy = true;
  try {
    const result = await call("/api/captures/" + encodeURIComponent(id) + "/label", {
      method: "PUT",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ label }),
    });
    if (!result.ok) {
      setReviewResult("bad", "✗ label refused (" + result.status + "): " + (result.body?.error || "no answer"));
      return;
    }
    if (remember) review.undo.push({ id, label: previous });
    $("review-undo").disabled = review.undo.length === 0;
    if (row) markLabel(row, label);
    setReviewResult("ok", label ? "✓ " + id.slice(-6) + " labelled " + label : "✓ " + id.slice(-6) + ": label taken back");
    if (remember && label) selectNext();
  } finally {
    review.busy = false;
  }
  await pollReview();
}

async function undoLabel() {
  const last = review.undo.pop();
  $("review-undo").disabled = review.undo.length === 0;
  if (!last) return;
  selectItem(last.id);
  await setLabel(last.id, last.label, { remember: false });
}

async function pollReview() {
  if (auth === null || (auth.enabled && auth.subject === null)) {
    $("review-note").hidden = false;
    return REVIEW_EVERY_MS / 5;
  }
  let result;
  try {
    result = await call("/api/captures?limit=50&labelled=" + review.labelled);
  } catch (error) {
    return REVIEW_EVERY_MS;
  }
  if (result.status === 429) return retryAfterMs(result, REVIEW_EVERY_MS);
  if (!result.ok) {
    $("review-note").hidden = false;
    $("review-note").textContent = "Review unavailable (" + result.status + "): " + (result.body?.error || "no answer");
    return REVIEW_EVERY_MS;
  }
  $("review-note").hidden = true;
  const body = result.body;
  review.labels = body.labels;
  renderReviewSummary(body);
  const list = $("review-items");
  const known = new Map([...list.children].map((row) => [row.dataset.itemId, row]));
  const rows = body.items.map((item) => {
    const row = known.get(item.id) || reviewRow(item);
    markLabel(row, item.label);
    return row;
  });
  // Labelled items stay in "To review" until the next filter change, so a slip can be seen and fixed.
  for (const [id, row] of known) if (!body.items.some((item) => item.id === id) && row.dataset.label && !review.labelled) rows.push(row);
  rows.sort((a, b) => (a.dataset.itemId < b.dataset.itemId ? 1 : -1));
  list.replaceChildren(...rows);
  $("review-empty").hidden = rows.length > 0;
  if (!rows.some((row) => row.dataset.itemId === review.selected)) selectItem(rows.length ? rows[0].dataset.itemId : null);
  else selectItem(review.selected);
  return REVIEW_EVERY_MS;
}

function reviewKeys(key) {
  const typing = key.target.closest("input, textarea, select");
  if (typing || key.ctrlKey || key.metaKey || key.altKey || !review.selected) return;
  if (key.key === "x") selectNext();
  else if (key.key === "u") undoLabel();
  else if (key.key === "0") setLabel(review.selected, "none");
  else if (/^[1-9]$/.test(key.key)) {
    const label = review.labels[Number(key.key) - 1];
    if (label && label !== "none") setLabel(review.selected, label);
  } else return;
  key.preventDefault();
}

function setUp() {
  $("token").value = token ? "••••••••" : "";
  $("token-form").addEventListener("submit", (submit) => {
    submit.preventDefault();
    const pasted = $("token").value.trim();
    if (pasted && pasted !== "••••••••") {
      token = pasted;
      sessionStorage.setItem(TOKEN_KEY, token);
      $("token").value = "••••••••";
    }
    pollState();
  });
  $("forget-token").addEventListener("click", () => {
    token = "";
    sessionStorage.removeItem(TOKEN_KEY);
    $("token").value = "";
    pollState();
  });
  $("controls-section").addEventListener("click", (click) => {
    const button = click.target.closest("button[data-command]");
    if (button && !button.disabled) runCommand(button);
  });
  repeat(HEALTH_EVERY_MS, pollHealth);
  repeat(STATE_EVERY_MS, pollState);
  repeat(HISTORY_POLL_MS, pollHistory);
  repeat(CAMERA_EVERY_MS, pollCamera);
  setUpModels();
  for (const button of document.querySelectorAll("#review-section button[data-filter]")) {
    button.addEventListener("click", () => {
      review.labelled = button.dataset.filter === "true";
      for (const other of document.querySelectorAll("#review-section button[data-filter]")) other.classList.toggle("current", other === button);
      $("review-items").replaceChildren();
      pollReview();
    });
  }
  $("review-undo").addEventListener("click", undoLabel);
  document.addEventListener("keydown", reviewKeys);
  repeat(REVIEW_EVERY_MS, pollReview);
}

setUp();
