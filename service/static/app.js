// The live detection page: webcam frames -> WebSocket /ws -> boxes on a canvas overlay.
// With "Track objects" on, the socket asks for tracking (/ws?track=true&tracker=...&line=...&zone=...):
// boxes carry track IDs and replies carry line and zone counts, drawn over the video and listed below.
// Plain browser JavaScript, no build step. `window.ssdlite` exposes the page's state (tests read it).
"use strict";

const $ = (id) => document.getElementById(id);
const MAX_FRAME_WIDTH = 640;  // frames are scaled down to this before JPEG encoding
const JPEG_QUALITY = 0.8;

const state = {
  running: false, connected: false, needsKey: false, frames: 0, errors: 0, lastError: null,
  detections: [], fps: 0, latencyMs: null, serverLatencyMs: null,
  // Tracking: what the open socket asked for, the latest reply and its counts, recent count events.
  tracking: false, tracker: null, regions: { lines: [], zones: [] }, lastReply: null, counts: null,
  trackIds: [], events: [], refused: null,
};
window.ssdlite = state;

let stream = null, socket = null, inFlight = false, framesSent = 0, reconnectTimer = null;
// The server's API key, when it asks for one (401); kept for this tab only.
let apiKey = sessionStorage.getItem("ssdlite-api-key") || "";
const sentAt = new Map();
const replyTimes = [];
const capture = document.createElement("canvas");

const MAX_EVENTS = 6;  // count events listed under the video
const REGION_COLOURS = ["#ffd400", "#00e5ff", "#ff4fd8", "#7cff4f", "#ff8a3d", "#b38cff"];

function colour(classId) {
  return `hsl(${(classId * 94) % 360} 90% 50%)`;
}

// One colour per track ID (golden-angle hues: neighbouring IDs look different).
function trackColour(trackId) {
  return `hsl(${Math.round((trackId * 137.508) % 360)} 95% 55%)`;
}

function isTracked(d) {
  return d.track_id !== undefined && d.track_id !== null;
}

// Draws detections whose boxes are in (frameWidth x frameHeight) pixels onto ctx's canvas.
function drawDetections(ctx, detections, frameWidth, frameHeight) {
  const sx = ctx.canvas.width / frameWidth, sy = ctx.canvas.height / frameHeight;
  const line = Math.max(2, Math.round(ctx.canvas.width / 320));
  ctx.lineWidth = line;
  ctx.font = `${6 + 5 * line}px system-ui, sans-serif`;
  ctx.textBaseline = "top";
  for (const d of detections) {
    const [x1, y1, x2, y2] = d.box;
    const x = x1 * sx, y = y1 * sy, w = (x2 - x1) * sx, h = (y2 - y1) * sy;
    const tracked = isTracked(d);
    ctx.strokeStyle = ctx.fillStyle = tracked ? trackColour(d.track_id) : colour(d.class_id);
    ctx.strokeRect(x, y, w, h);
    const text = tracked ? `#${d.track_id} ${d.label}` : `${d.label} ${d.score.toFixed(2)}`;
    const tw = ctx.measureText(text).width + 6, th = 8 + 5 * line;
    const ty = y - th >= 0 ? y - th : y;
    ctx.fillRect(x, ty, tw, th);
    ctx.fillStyle = "#000";
    ctx.fillText(text, x + 3, ty + 2);
  }
  ctx.canvas.dataset.boxes = String(detections.length);
  ctx.canvas.dataset.labels = detections.map((d) => d.label).join(",");
  ctx.canvas.dataset.trackIds = detections.filter(isTracked).map((d) => d.track_id).join(",");
}

// A line or zone as the server reads it: x,y pairs, fractions of the frame when every value is in [0, 1].
function parseRegion(text) {
  const values = text.split(",").map(Number);
  const points = [];
  for (let i = 0; i + 1 < values.length; i += 2) points.push([values[i], values[i + 1]]);
  return { text, points, fractional: values.every((v) => v >= 0 && v <= 1), valid: values.every(Number.isFinite) };
}

// The region's points in overlay pixels (the frame is frameWidth x frameHeight, the canvas may differ).
function placeRegion(region, ctx, frameWidth, frameHeight) {
  const sx = ctx.canvas.width / frameWidth, sy = ctx.canvas.height / frameHeight;
  const fx = region.fractional ? frameWidth : 1, fy = region.fractional ? frameHeight : 1;
  return region.points.map(([x, y]) => [x * fx * sx, y * fy * sy]);
}

function arrowHead(ctx, [x1, y1], [x2, y2], size) {
  const angle = Math.atan2(y2 - y1, x2 - x1);
  ctx.beginPath();
  ctx.moveTo(x2, y2);
  ctx.lineTo(x2 - size * Math.cos(angle - 0.45), y2 - size * Math.sin(angle - 0.45));
  ctx.lineTo(x2 - size * Math.cos(angle + 0.45), y2 - size * Math.sin(angle + 0.45));
  ctx.closePath();
  ctx.fill();
}

// Text on a dark box, so it reads over any picture.
function tag(ctx, text, x, y, colour, line) {
  const tw = ctx.measureText(text).width + 8, th = 8 + 5 * line;
  x = Math.max(0, Math.min(x, ctx.canvas.width - tw));
  y = Math.max(0, Math.min(y, ctx.canvas.height - th));
  ctx.fillStyle = "rgba(0, 0, 0, 0.65)";
  ctx.fillRect(x, y, tw, th);
  ctx.fillStyle = colour;
  ctx.fillText(text, x + 4, y + 2);
}

function lineSummary(c) {
  return `in ${c.in} · out ${c.out}`;
}

function zoneSummary(c) {
  return `inside ${c.inside} · entered ${c.entered} · exited ${c.exited}`;
}

// Draws the counting lines (an arrow along each, and one towards its "in" side) and zones, each
// tagged with its name (L1, Z1, ...), and all their counts in the bottom-left corner.
function drawRegions(ctx, regions, counts, frameWidth, frameHeight) {
  const line = Math.max(2, Math.round(ctx.canvas.width / 320));
  ctx.font = `bold ${6 + 5 * line}px system-ui, sans-serif`;
  ctx.textBaseline = "top";
  ctx.lineWidth = line;
  const lineCounts = [], zoneCounts = [];
  regions.zones.forEach((zone, i) => {
    if (!zone.valid || zone.points.length < 3) return;
    const points = placeRegion(zone, ctx, frameWidth, frameHeight);
    const hue = REGION_COLOURS[(regions.lines.length + i) % REGION_COLOURS.length];
    ctx.beginPath();
    points.forEach(([x, y], k) => (k ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
    ctx.closePath();
    ctx.save();
    ctx.globalAlpha = 0.15;
    ctx.fillStyle = hue;
    ctx.fill();
    ctx.restore();
    ctx.strokeStyle = hue;
    ctx.setLineDash([4 * line, 3 * line]);
    ctx.stroke();
    ctx.setLineDash([]);
    const c = counts && counts.zones && counts.zones[i];
    const [x, y] = points.reduce((a, p) => (p[1] < a[1] || (p[1] === a[1] && p[0] < a[0]) ? p : a));
    tag(ctx, `Z${i + 1}`, x + line, y + line, hue, line);
    if (c) zoneCounts.push([`Z${i + 1} ${zoneSummary(c)}`, hue]);
  });
  regions.lines.forEach((region, i) => {
    if (!region.valid || region.points.length !== 2) return;
    const [a, b] = placeRegion(region, ctx, frameWidth, frameHeight);
    const length = Math.hypot(b[0] - a[0], b[1] - a[1]);
    if (!length) return;
    const hue = REGION_COLOURS[i % REGION_COLOURS.length];
    const head = 5 * line + 6;
    ctx.strokeStyle = ctx.fillStyle = hue;
    ctx.lineWidth = line + 1;
    ctx.beginPath();
    ctx.moveTo(...a);
    ctx.lineTo(...b);
    ctx.stroke();
    arrowHead(ctx, a, b, head);
    // "in" is the right of a -> b in image coordinates (y down): the normal (-dy, dx).
    const nx = -(b[1] - a[1]) / length, ny = (b[0] - a[0]) / length;
    const mid = [(a[0] + b[0]) / 2, (a[1] + b[1]) / 2];
    const tip = [mid[0] + nx * head * 2.2, mid[1] + ny * head * 2.2];
    ctx.lineWidth = line;
    ctx.beginPath();
    ctx.moveTo(...mid);
    ctx.lineTo(...tip);
    ctx.stroke();
    arrowHead(ctx, mid, tip, head * 0.8);
    tag(ctx, "in", tip[0] + nx * line * 2 - 2 * line, tip[1] + ny * line * 2 - 2 * line, hue, line);
    const c = counts && counts.lines && counts.lines[i];
    // Its name sits on the "out" side near the arrow's head: away from the "in" arrow and (often) the boxes.
    const text = `L${i + 1}`, away = 3 * line + 6, at = [a[0] + (b[0] - a[0]) * 0.9, a[1] + (b[1] - a[1]) * 0.9];
    const tw = ctx.measureText(text).width + 8, th = 8 + 5 * line;
    tag(ctx, text, at[0] - nx * (away + tw / 2) - tw / 2, at[1] - ny * (away + th / 2) - th / 2, hue, line);
    if (c) lineCounts.push([`L${i + 1} ${lineSummary(c)}`, hue]);
  });
  const summary = [...lineCounts, ...zoneCounts];  // in the order of the counts panel
  const rowHeight = 9 + 5 * line, bottom = ctx.canvas.height - line - summary.length * rowHeight;
  summary.forEach(([text, hue], k) => tag(ctx, text, line, bottom + k * rowHeight, hue, line));
}

function setStatus(element, text, isError = false) {
  element.textContent = text;
  element.classList.toggle("error", isError);
}

function authHeaders() {
  return apiKey ? { "X-API-Key": apiKey } : {};
}

// The server answered 401: show the key form (with the server's reason) until a key is entered.
function askForKey(reason) {
  state.needsKey = true;
  $("key-form").hidden = false;
  $("key-status").textContent = reason || "this server needs an API key";
  $("api-key").focus();
}

function useKey(event) {
  event.preventDefault();
  apiKey = $("api-key").value.trim();
  sessionStorage.setItem("ssdlite-api-key", apiKey);
  $("api-key").value = "";
  $("key-form").hidden = true;
  state.needsKey = false;
  showModel();
  if (state.running && !state.connected) connect();
}

async function startCamera() {
  if (state.running) return;
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    setStatus($("status"), "this browser cannot open a camera here (it needs https or localhost)", true);
    return;
  }
  try {
    stream = await navigator.mediaDevices.getUserMedia({ video: { width: { ideal: 640 }, height: { ideal: 480 } }, audio: false });
  } catch (error) {
    setStatus($("status"), `camera unavailable: ${error.message || error.name}`, true);
    return;
  }
  const video = $("video");
  video.srcObject = stream;
  await video.play();
  state.running = true;
  $("start").disabled = true;
  $("stop").disabled = false;
  connect();
}

function stopCamera() {
  state.running = state.connected = false;
  clearTimeout(reconnectTimer);
  if (socket) socket.close();
  if (stream) stream.getTracks().forEach((track) => track.stop());
  stream = socket = null;
  $("start").disabled = false;
  $("stop").disabled = true;
  setStatus($("status"), "camera off");
}

// The tracking switch, tracker and lines/zones box as query options. Each row of the box is
// "line x1,y1,x2,y2" or "zone x1,y1,x2,y2,x3,y3,..." (commas or spaces between numbers; "#" starts
// a comment); the server checks the numbers. Throws an Error for a row that is neither.
function trackingOptions() {
  const options = { track: $("track").checked, tracker: $("tracker").value, lines: [], zones: [] };
  if (!options.track) return options;
  $("regions").value.split("\n").forEach((row, i) => {
    const text = row.replace(/#.*/, "").trim();
    if (!text) return;
    const match = /^(line|zone)\b\s*[:=]?\s*(.*)$/i.exec(text);
    if (!match) throw new Error(`lines and zones, row ${i + 1}: start it with "line" or "zone" (got "${text}")`);
    const values = match[2].split(/[\s,()[\]]+/).filter(Boolean).join(",");
    (match[1].toLowerCase() === "line" ? options.lines : options.zones).push(values);
  });
  return options;
}

function showTrackingControls() {
  $("tracking-options").hidden = !$("track").checked;
}

// Clears what the last stream showed about tracks and counts (a new stream counts from zero).
function resetTracking() {
  Object.assign(state, { counts: null, trackIds: [], events: [], lastReply: null, refused: null });
  $("tracks").textContent = "–";
  $("tracks-stat").hidden = !state.tracking;
  renderCounts();
}

// Options changed: open a new stream with them now (a camera that is off uses them when started).
function reconnect() {
  showTrackingControls();
  if (!state.running) return;
  clearTimeout(reconnectTimer);
  const old = socket;
  socket = null;
  if (old) {
    old.onclose = old.onmessage = null;
    old.close();
  }
  state.connected = false;
  connect();
}

function streamUrl(options) {
  const url = new URL("/ws", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  url.searchParams.set("score_threshold", $("threshold").value);
  if (options.track) {
    url.searchParams.set("track", "true");
    url.searchParams.set("tracker", options.tracker);
    options.lines.forEach((line) => url.searchParams.append("line", line));
    options.zones.forEach((zone) => url.searchParams.append("zone", zone));
  }
  return url;
}

// The lines/zones box was edited or "Apply" clicked: a new stream unless this one already has them.
function applyRegions() {
  try {
    const same = socket && !state.refused && socket.url === streamUrl(trackingOptions()).href;
    if (same) return;
  } catch (error) {
    // connect() shows what is wrong with the box
  }
  reconnect();
}

function connect() {
  let options;
  try {
    options = trackingOptions();
  } catch (error) {
    state.refused = error.message;
    setStatus($("status"), error.message, true);
    return;
  }
  const url = streamUrl(options);
  state.tracking = options.track;
  state.tracker = options.track ? options.tracker : null;
  state.regions = { lines: options.lines.map(parseRegion), zones: options.zones.map(parseRegion) };
  resetTracking();
  // Browsers cannot set headers on a WebSocket: the key travels as a subprotocol next to "ssdlite".
  const current = apiKey ? new WebSocket(url, ["ssdlite", `ssdlite.key.${apiKey}`]) : new WebSocket(url);
  socket = current;
  socket.binaryType = "arraybuffer";
  let opened = false, serverError = null;
  framesSent = 0;
  inFlight = false;
  sentAt.clear();
  socket.onopen = () => {
    opened = true;
    state.connected = true;
    setStatus($("status"), streamingText());
    sendFrame();
  };
  socket.onmessage = (event) => {
    const reply = JSON.parse(event.data);
    if (reply.error) serverError = reply.error;
    onReply(reply);
  };
  socket.onclose = async (event) => {
    if (socket !== current) return;  // replaced by a newer stream
    state.connected = false;
    // 1008: the server refused these options (before any frame, or a zone outside the first frame)
    // and said why in its last message. Its error stays in view until the options change.
    if (event.code === 1008) {
      state.refused = serverError || event.reason || "the server refused this stream";
      if (!serverError) setStatus($("status"), state.refused, true);
      clearOverlay();
      return;
    }
    // A refused handshake looks like any failed one: ask /model whether a key is what is missing.
    if (!opened && !(await showModel())) return;
    if (state.running) {  // the server restarted: reconnect
      setStatus($("status"), "reconnecting…", true);
      reconnectTimer = setTimeout(() => state.running && socket === current && connect(), 1000);
    }
  };
}

function streamingText() {
  return state.tracking ? `streaming, tracking (${state.tracker})` : "streaming";
}

// One frame in flight at a time: the next frame is captured when the answer arrives, so
// the boxes always belong to a fresh frame and latency never builds up.
function sendFrame() {
  const video = $("video");
  if (!state.running || !socket || socket.readyState !== WebSocket.OPEN || inFlight) return;
  if (video.readyState < 2 || !video.videoWidth) {
    requestAnimationFrame(sendFrame);
    return;
  }
  const width = Math.min(MAX_FRAME_WIDTH, video.videoWidth);
  const height = Math.round(video.videoHeight * width / video.videoWidth);
  capture.width = width;
  capture.height = height;
  capture.getContext("2d").drawImage(video, 0, 0, width, height);
  inFlight = true;
  const target = socket;
  capture.toBlob(async (blob) => {
    if (!blob || target !== socket || target.readyState !== WebSocket.OPEN) { inFlight = false; return; }
    const data = await blob.arrayBuffer();
    framesSent += 1;
    sentAt.set(framesSent, performance.now());
    target.send(data);
  }, "image/jpeg", JPEG_QUALITY);
}

function onReply(reply) {
  const now = performance.now();
  inFlight = false;
  if (reply.frame_id === undefined) {  // the connection was refused (e.g. a bad parameter)
    state.lastError = state.refused = reply.error || "refused";
    setStatus($("status"), state.refused, true);
    clearOverlay();
    return;
  }
  const started = sentAt.get(reply.frame_id);
  for (const id of sentAt.keys()) if (id <= reply.frame_id) sentAt.delete(id);
  if (reply.error) {
    state.errors += 1;
    state.lastError = reply.error;
    setStatus($("status"), `frame ${reply.frame_id}: ${reply.error}`, true);
  } else {
    state.frames += 1;
    state.detections = reply.detections;
    state.lastReply = reply;
    if (started !== undefined) state.latencyMs = now - started;
    state.serverLatencyMs = reply.latency_ms;
    replyTimes.push(now);
    while (replyTimes.length && replyTimes[0] < now - 1000) replyTimes.shift();
    state.fps = replyTimes.length > 1 ? (replyTimes.length - 1) * 1000 / (now - replyTimes[0]) : 0;
    const video = $("video"), overlay = $("overlay");
    overlay.width = video.videoWidth;
    overlay.height = video.videoHeight;
    const ctx = overlay.getContext("2d");
    if (state.tracking) drawRegions(ctx, state.regions, reply.counts, reply.width, reply.height);
    drawDetections(ctx, reply.detections, reply.width, reply.height);
    if (state.tracking) showTracks(reply);
    $("fps").textContent = state.fps.toFixed(1);
    $("latency").textContent = state.latencyMs === null ? "–" : state.latencyMs.toFixed(0);
    $("server-latency").textContent = reply.latency_ms.toFixed(0);
    $("count").textContent = String(reply.detections.length);
    $("frames").textContent = String(state.frames);
    setStatus($("status"), streamingText());
  }
  sendFrame();
}

function clearOverlay() {
  const overlay = $("overlay");
  overlay.getContext("2d").clearRect(0, 0, overlay.width, overlay.height);
  overlay.dataset.boxes = "0";
  overlay.dataset.labels = overlay.dataset.trackIds = "";
}

// The reply's track IDs and counts into the state, the stats line and the counts panel.
function showTracks(reply) {
  state.trackIds = reply.detections.filter(isTracked).map((d) => d.track_id);
  $("tracks").textContent = state.trackIds.length ? state.trackIds.map((id) => `#${id}`).join(" ") : "none";
  if (reply.counts) state.counts = reply.counts;
  for (const event of reply.events || []) state.events.push({ ...event, frame_id: reply.frame_id });
  state.events.splice(0, Math.max(0, state.events.length - MAX_EVENTS));
  renderCounts();
}

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (className) node.className = className;
  return node;
}

// Per-class counts, e.g. " (person: in 2, out 1; car: in 0, out 1)".
function perClass(classes, keys) {
  const parts = Object.entries(classes || {}).map(([label, c]) => `${label}: ${keys.map((k) => `${k} ${c[k]}`).join(", ")}`);
  return parts.length ? ` (${parts.join("; ")})` : "";
}

const EVENT_WORDS = { in: "crossed in", out: "crossed out", enter: "entered", exit: "left" };

// The counts panel under the video: one row per line and zone, in the order given, then recent events.
function renderCounts() {
  const panel = $("counts");
  const counts = state.tracking ? state.counts : null;
  panel.hidden = !counts;
  panel.replaceChildren();
  if (!counts) return;
  counts.lines.forEach((c, i) => {
    const row = element("div", undefined, "count-row");
    row.dataset.kind = "line";
    row.dataset.index = String(i);
    row.style.borderColor = REGION_COLOURS[i % REGION_COLOURS.length];
    const region = state.regions.lines[i];
    row.append(element("b", `Line ${i + 1}`), element("code", region ? region.text : ""));
    row.append(element("span", `${lineSummary(c)}${perClass(c.classes, ["in", "out"])}`, "values"));
    panel.append(row);
  });
  counts.zones.forEach((c, i) => {
    const row = element("div", undefined, "count-row");
    row.dataset.kind = "zone";
    row.dataset.index = String(i);
    row.style.borderColor = REGION_COLOURS[(counts.lines.length + i) % REGION_COLOURS.length];
    const region = state.regions.zones[i];
    row.append(element("b", `Zone ${i + 1}`), element("code", region ? region.text : ""));
    row.append(element("span", `${zoneSummary(c)}${perClass(c.classes, ["entered", "exited"])}`, "values"));
    const inside = Object.entries(c.seconds_inside || {}).map(([id, s]) => `#${id} ${Number(s).toFixed(1)} s`);
    if (inside.length) row.append(element("small", `time inside: ${inside.join(", ")}`));
    panel.append(row);
  });
  if (state.events.length) {
    const list = element("div", "recent (newest first): ", "events");
    list.append(state.events.slice().reverse().map((e) => {
      const where = e.kind === "line" ? `line ${e.index + 1}` : `zone ${e.index + 1}`;
      return `#${e.track_id} ${e.label} ${EVENT_WORDS[e.direction] || e.direction} ${where}`;
    }).join(" · "));
    panel.append(list);
  }
}

async function uploadImage(event) {
  event.preventDefault();
  const file = $("file").files[0];
  if (!file) return;
  const status = $("upload-status");
  setStatus(status, "detecting…");
  const body = new FormData();
  body.append("file", file);
  const url = `/detect?score_threshold=${encodeURIComponent($("threshold").value)}`;
  let reply;
  try {
    const response = await fetch(url, { method: "POST", body, headers: authHeaders() });
    reply = await response.json();
    if (response.status === 401) askForKey(reply.detail);
    if (!response.ok) throw new Error(typeof reply.detail === "string" ? reply.detail : JSON.stringify(reply.detail));
  } catch (error) {
    setStatus(status, `error: ${error.message}`, true);
    return;
  }
  $("upload-result").textContent = JSON.stringify(reply, null, 2);
  setStatus(status, `${reply.detections.length} detections in ${reply.timing_ms.total.toFixed(0)} ms`);
  try {
    const bitmap = await createImageBitmap(file, { imageOrientation: "from-image" });
    const canvas = $("upload-canvas");
    canvas.width = bitmap.width;
    canvas.height = bitmap.height;
    const ctx = canvas.getContext("2d");
    ctx.drawImage(bitmap, 0, 0);
    drawDetections(ctx, reply.detections, reply.width, reply.height);
  } catch (error) {
    setStatus(status, `${status.textContent} (this browser cannot show the image)`);
  }
}

// Shows the model in the header; false when the server wants an API key (the key form is then shown).
async function showModel() {
  try {
    const response = await fetch("/model", { headers: authHeaders() });
    const info = await response.json();
    if (response.status === 401) {
      $("model").textContent = "API key required";
      askForKey(apiKey ? `that key was refused: ${info.detail}` : info.detail);
      return false;
    }
    $("model").textContent = `${info.name} · ${info.input_size}px · ${info.backend} ${info.precision} · ${info.classes.length} classes`;
  } catch (error) {
    $("model").textContent = "model info unavailable";
  }
  return true;
}

$("start").addEventListener("click", startCamera);
$("stop").addEventListener("click", stopCamera);
$("threshold").addEventListener("change", reconnect);
$("track").addEventListener("change", reconnect);
$("tracker").addEventListener("change", reconnect);
$("regions").addEventListener("change", applyRegions);
$("apply-regions").addEventListener("click", applyRegions);
showTrackingControls();
$("upload-form").addEventListener("submit", uploadImage);
$("key-form").addEventListener("submit", useKey);
showModel();
if (new URLSearchParams(location.search).has("autostart")) startCamera();
