// The live detection page: webcam frames -> WebSocket /ws -> boxes on a canvas overlay.
// Plain browser JavaScript, no build step. `window.ssdlite` exposes the page's state (tests read it).
"use strict";

const $ = (id) => document.getElementById(id);
const MAX_FRAME_WIDTH = 640;  // frames are scaled down to this before JPEG encoding
const JPEG_QUALITY = 0.8;

const state = {
  running: false, connected: false, needsKey: false, frames: 0, errors: 0, lastError: null,
  detections: [], fps: 0, latencyMs: null, serverLatencyMs: null,
};
window.ssdlite = state;

let stream = null, socket = null, inFlight = false, framesSent = 0;
// The server's API key, when it asks for one (401); kept for this tab only.
let apiKey = sessionStorage.getItem("ssdlite-api-key") || "";
const sentAt = new Map();
const replyTimes = [];
const capture = document.createElement("canvas");

function colour(classId) {
  return `hsl(${(classId * 94) % 360} 90% 50%)`;
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
    ctx.strokeStyle = ctx.fillStyle = colour(d.class_id);
    ctx.strokeRect(x, y, w, h);
    const text = `${d.label} ${d.score.toFixed(2)}`;
    const tw = ctx.measureText(text).width + 6, th = 8 + 5 * line;
    const ty = y - th >= 0 ? y - th : y;
    ctx.fillRect(x, ty, tw, th);
    ctx.fillStyle = "#000";
    ctx.fillText(text, x + 3, ty + 2);
  }
  ctx.canvas.dataset.boxes = String(detections.length);
  ctx.canvas.dataset.labels = detections.map((d) => d.label).join(",");
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
  state.running = false;
  if (socket) socket.close();
  if (stream) stream.getTracks().forEach((track) => track.stop());
  stream = socket = null;
  $("start").disabled = false;
  $("stop").disabled = true;
  setStatus($("status"), "camera off");
}

function connect() {
  const url = new URL("/ws", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  url.searchParams.set("score_threshold", $("threshold").value);
  // Browsers cannot set headers on a WebSocket: the key travels as a subprotocol next to "ssdlite".
  socket = apiKey ? new WebSocket(url, ["ssdlite", `ssdlite.key.${apiKey}`]) : new WebSocket(url);
  socket.binaryType = "arraybuffer";
  let opened = false;
  framesSent = 0;
  inFlight = false;
  sentAt.clear();
  socket.onopen = () => {
    opened = true;
    state.connected = true;
    setStatus($("status"), "streaming");
    sendFrame();
  };
  socket.onmessage = (event) => onReply(JSON.parse(event.data));
  socket.onclose = async () => {
    state.connected = false;
    // A refused handshake looks like any failed one: ask /model whether a key is what is missing.
    if (!opened && !(await showModel())) return;
    if (state.running) {  // the server restarted or the threshold changed: reconnect
      setStatus($("status"), "reconnecting…", true);
      setTimeout(() => state.running && connect(), 1000);
    }
  };
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
    setStatus($("status"), reply.error || "refused", true);
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
    if (started !== undefined) state.latencyMs = now - started;
    state.serverLatencyMs = reply.latency_ms;
    replyTimes.push(now);
    while (replyTimes.length && replyTimes[0] < now - 1000) replyTimes.shift();
    state.fps = replyTimes.length > 1 ? (replyTimes.length - 1) * 1000 / (now - replyTimes[0]) : 0;
    const video = $("video"), overlay = $("overlay");
    overlay.width = video.videoWidth;
    overlay.height = video.videoHeight;
    drawDetections(overlay.getContext("2d"), reply.detections, reply.width, reply.height);
    $("fps").textContent = state.fps.toFixed(1);
    $("latency").textContent = state.latencyMs === null ? "–" : state.latencyMs.toFixed(0);
    $("server-latency").textContent = reply.latency_ms.toFixed(0);
    $("count").textContent = String(reply.detections.length);
    $("frames").textContent = String(state.frames);
    setStatus($("status"), "streaming");
  }
  sendFrame();
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
$("threshold").addEventListener("change", () => { if (socket) socket.close(); });
$("upload-form").addEventListener("submit", uploadImage);
$("key-form").addEventListener("submit", useKey);
showModel();
if (new URLSearchParams(location.search).has("autostart")) startCamera();
