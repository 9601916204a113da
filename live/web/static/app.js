// mra-web page: portrait choice, driving video (upload or webcam recording), Generate with queue place and
// progress, result preview and download; the Webcam tab streams camera frames over a web socket and shows the
// animated portrait with its frame rate and latency. No framework, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { info: null, example: null, sourceFile: null, drivingFile: null, job: null, polling: null };

function showError(el, text) { el.textContent = text; el.hidden = !text; }
function setStatus(text, st) { const s = $("status"); s.textContent = text; s.dataset.state = st; }

async function api(path, options) {
  // JSON from the server; a failure becomes an Error whose message is the server's one line
  let r;
  try { r = await fetch(path, options); } catch (e) { throw new Error("error: the server cannot be reached (is mra-web still running?)"); }
  let body = null;
  try { body = await r.json(); } catch (e) { /* not JSON */ }
  if (!r.ok) throw new Error((body && body.error) || `error: the server answered ${r.status}`);
  return body;
}

// ---------------------------------------------------------------------------------------------- portrait
function fillModes(select, info) {
  select.innerHTML = "";
  for (const m of info.all_modes) {  // the ones this model cannot run are shown disabled
    const o = document.createElement("option");
    o.value = m; o.textContent = m + (m === "avd" && !info.has_avd ? " (this model has no AVD network)" : "");
    o.disabled = !info.modes.includes(m);
    select.appendChild(o);
  }
  select.value = info.defaults.mode;
}

function choosePortrait(kind, value) {
  const img = $("source-preview");
  document.querySelectorAll(".examples button").forEach((b) => b.classList.toggle("selected", kind === "example" && b.dataset.name === value));
  if (kind === "example") {
    state.example = value; state.sourceFile = null; $("source").value = "";
    img.src = `static/examples/${value}.png`; $("source-name").textContent = `example: ${value}`;
  } else {
    state.example = null; state.sourceFile = value;
    img.src = URL.createObjectURL(value); $("source-name").textContent = value.name;
  }
  img.hidden = false;
}

async function loadInfo() {
  try {
    const info = await api("api/info");
    state.info = info;
    $("model").textContent = `model: ${info.model} · uploads up to ${info.max_upload_mb} MB · results kept ${info.keep_minutes} min`;
    fillModes($("mode"), info); fillModes($("live-mode"), info);
    $("crop").value = info.defaults.crop; $("live-crop").value = info.defaults.crop;
    $("paste-back").checked = info.defaults.paste_back; $("live-paste-back").checked = info.defaults.paste_back;
    for (const id of ["expression", "live-expression"]) {
      const s = $(id);
      [s.min, s.max] = info.expression_range; s.value = info.defaults.expression;
      $(`${id}-value`).textContent = Number(s.value).toFixed(1);
    }
    const box = $("examples");
    for (const name of info.examples) {
      const b = document.createElement("button");
      b.type = "button"; b.dataset.name = name; b.title = name;
      b.innerHTML = `<img src="static/examples/${name}.png" alt="example portrait ${name}">`;
      b.addEventListener("click", () => choosePortrait("example", name));
      box.appendChild(b);
    }
    document.body.dataset.ready = "1";
  } catch (e) { showError($("error"), e.message); }
}

$("source").addEventListener("change", (ev) => { if (ev.target.files.length) choosePortrait("file", ev.target.files[0]); });

// ---------------------------------------------------------------------------------------------- driving video
function setDriving(file) {
  state.drivingFile = file;
  const v = $("driving-preview");
  v.srcObject = null; v.muted = false;
  v.src = URL.createObjectURL(file);
}
$("driving").addEventListener("change", (ev) => { if (ev.target.files.length) setDriving(ev.target.files[0]); });

let recorder = null, recordTimer = null;
async function toggleRecord() {
  const btn = $("record"), st = $("record-status");
  if (recorder) { recorder.stop(); return; }
  showError($("error"), "");
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: true })
      .catch(() => navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 } }));
  } catch (e) { showError($("error"), `error: no webcam available to the page (${e.name}); upload a video instead`); return; }
  const types = ["video/webm;codecs=vp8,opus", "video/webm", "video/mp4"];
  const mime = types.find((t) => window.MediaRecorder && MediaRecorder.isTypeSupported(t)) || "";
  recorder = new MediaRecorder(stream, mime ? { mimeType: mime } : undefined);
  const chunks = [];
  recorder.ondataavailable = (e) => { if (e.data.size) chunks.push(e.data); };
  recorder.onstop = () => {
    stream.getTracks().forEach((t) => t.stop());
    clearInterval(recordTimer);
    const type = recorder.mimeType || "video/webm";
    const ext = type.startsWith("video/mp4") ? "mp4" : "webm";
    const file = new File(chunks, `recording.${ext}`, { type });
    recorder = null;
    btn.textContent = "● Record with the webcam";
    st.textContent = `recorded ${(file.size / 1e6).toFixed(1)} MB`;
    $("driving").value = "";
    setDriving(file);
    st.dataset.state = "recorded";
  };
  const v = $("driving-preview");
  v.src = ""; v.srcObject = stream; v.muted = true; v.play();
  recorder.start(250);
  const t0 = Date.now();
  btn.textContent = "■ Stop recording"; st.dataset.state = "recording";
  recordTimer = setInterval(() => {
    const s = (Date.now() - t0) / 1000;
    st.textContent = `recording ${s.toFixed(0)} s`;
    if (s >= 60 && recorder) recorder.stop(); // keep recordings short
  }, 250);
}
$("record").addEventListener("click", toggleRecord);

// ---------------------------------------------------------------------------------------------- generate
function describe(j) {
  if (j.state === "queued") return `Waiting in the queue: place ${j.position} (${j.ahead} job${j.ahead === 1 ? "" : "s"} ahead of yours)`;
  if (j.state === "running") return j.total ? `Animating: ${j.done} / ${j.total} frames` : `Animating: ${j.done} frames`;
  if (j.state === "done") return `Done: ${j.frames} frames, ${j.width}×${j.height}, ${j.fps.toFixed(2)} fps${j.has_audio ? ", with the driving video's audio" : ""}, in ${j.seconds} s`;
  if (j.state === "cancelled") return "Cancelled";
  return "";
}

function busy(on) { $("generate").disabled = on; $("cancel").hidden = !on; }

async function poll() {
  const id = state.job;
  if (!id) return;
  let j;
  try { j = await api(`api/jobs/${id}`); } catch (e) { showError($("error"), e.message); busy(false); state.job = null; return; }
  if (id !== state.job) return;
  const p = $("progress");
  p.hidden = false;
  if (j.state === "running" && j.total) { p.max = j.total; p.value = j.done; }
  else if (j.state === "done") { p.max = 1; p.value = 1; }
  else if (j.state === "queued" || j.state === "running") { p.removeAttribute("value"); }
  setStatus(describe(j), j.state);
  if (j.state === "error") { showError($("error"), j.message); p.hidden = true; }
  if (j.state === "done") {
    const v = $("result");
    v.src = j.result_url;
    const a = $("download");
    a.href = j.download_url; a.download = j.download_name; a.hidden = false;
    a.textContent = `Download ${j.download_name}`;
    // play both side by side from the start
    const d = $("driving-preview");
    v.addEventListener("loadeddata", () => { try { d.currentTime = 0; v.currentTime = 0; d.play(); v.play(); } catch (e) {} }, { once: true });
  }
  if (["done", "error", "cancelled"].includes(j.state)) { busy(false); state.job = null; return; }
  state.polling = setTimeout(poll, 300);
}

async function generate() {
  showError($("error"), "");
  $("download").hidden = true;
  $("result").removeAttribute("src");
  if (!state.sourceFile && !state.example) { showError($("error"), "error: no portrait: upload an image or pick one of the examples"); return; }
  if (!state.drivingFile) { showError($("error"), "error: no driving video: upload one or record one with the webcam"); return; }
  const form = new FormData();
  form.append("mode", $("mode").value);
  form.append("crop", $("crop").value);
  form.append("paste_back", $("paste-back").checked ? "1" : "0");
  form.append("expression", $("expression").value);
  if (state.sourceFile) form.append("source", state.sourceFile, state.sourceFile.name);
  else form.append("example", state.example);
  form.append("driving", state.drivingFile, state.drivingFile.name);
  busy(true);
  const p = $("progress"); p.hidden = false; p.removeAttribute("value");
  setStatus("Uploading…", "uploading");
  try {
    const j = await api("api/jobs", { method: "POST", body: form });
    state.job = j.id;
    poll();
  } catch (e) {
    setStatus("", "error"); p.hidden = true; busy(false);
    showError($("error"), e.message);
  }
}
$("generate").addEventListener("click", generate);
$("cancel").addEventListener("click", async () => {
  if (state.job) { try { await api(`api/jobs/${state.job}`, { method: "DELETE" }); } catch (e) { /* finished meanwhile */ } }
});

// ---------------------------------------------------------------------------------------------- tabs
function showTab(name) {
  for (const t of ["video", "webcam"]) {
    $(`tab-${t}`).classList.toggle("active", t === name);
    $(`tab-${t}`).setAttribute("aria-selected", t === name);
    $(`panel-${t}`).hidden = t !== name;
  }
}
$("tab-video").addEventListener("click", () => showTab("video"));
$("tab-webcam").addEventListener("click", () => showTab("webcam"));

// ---------------------------------------------------------------------------------------------- webcam (live)
// Frames: page -> server "<uint32 frame id LE><JPEG>", server -> page "<uint32 id of the camera frame it came from><JPEG>".
// At most MAX_IN_FLIGHT frames are on their way at once (the server keeps only the newest anyway), so latency cannot
// build up. Latency = from grabbing a camera frame to drawing the animated frame made from it.
const MAX_IN_FLIGHT = 2;
const live = { ws: null, stream: null, running: false, nextId: 0, inFlight: new Map(), latencies: [], shown: [], server: null };
window.mraLive = { frames: 0, fps: 0, p50: NaN, p95: NaN, sent: 0, server: null };
const grabCanvas = document.createElement("canvas");

function pct(values, q) {
  if (!values.length) return NaN;
  const s = [...values].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * (s.length - 1) + 0.5))];
}

function liveStatsText() {
  const m = window.mraLive, s = live.server;
  let t = `${m.fps.toFixed(1)} fps · latency ${isNaN(m.p50) ? "–" : m.p50.toFixed(0)} ms (p95 ${isNaN(m.p95) ? "–" : m.p95.toFixed(0)} ms)`;
  if (s) {
    const st = Object.entries(s.stages_ms || {}).map(([k, v]) => `${k} ${Number(v).toFixed(0)}`).join(", ");
    t += ` · server ${Number(s.server_latency_ms.p50 || 0).toFixed(0)} ms, ${s.dropped} frames dropped${st ? ` [${st} ms]` : ""}`;
    if (s.frames_in > 10 && s.frames_out === 0) t += " · looking for a face… (or choose crop: none)";
  }
  return t;
}

function grab() {
  if (!live.running) return;
  const cam = $("camera");
  if ("requestVideoFrameCallback" in cam) cam.requestVideoFrameCallback(grab); else setTimeout(grab, 33);
  const now = performance.now();
  for (const [id, t] of live.inFlight) if (now - t > 1000) live.inFlight.delete(id); // lost or dropped
  if (live.inFlight.size >= MAX_IN_FLIGHT || !cam.videoWidth || live.ws.bufferedAmount > 2e6) return;
  const scale = Math.min(1, 640 / Math.max(cam.videoWidth, cam.videoHeight));
  grabCanvas.width = Math.round(cam.videoWidth * scale); grabCanvas.height = Math.round(cam.videoHeight * scale);
  grabCanvas.getContext("2d").drawImage(cam, 0, 0, grabCanvas.width, grabCanvas.height);
  const id = ++live.nextId;
  live.inFlight.set(id, now);
  grabCanvas.toBlob(async (blob) => {
    if (!blob || !live.running || live.ws.readyState !== WebSocket.OPEN) return;
    const jpeg = new Uint8Array(await blob.arrayBuffer());
    const msg = new Uint8Array(4 + jpeg.length);
    new DataView(msg.buffer).setUint32(0, id, true);
    msg.set(jpeg, 4);
    live.ws.send(msg);
    window.mraLive.sent += 1;
  }, "image/jpeg", 0.8);
}

async function showFrame(buf) {
  const id = new DataView(buf).getUint32(0, true);
  const bmp = await createImageBitmap(new Blob([buf.slice(4)], { type: "image/jpeg" }));
  const c = $("live-output");
  if (c.width !== bmp.width || c.height !== bmp.height) { c.width = bmp.width; c.height = bmp.height; }
  c.getContext("2d").drawImage(bmp, 0, 0);
  bmp.close();
  const now = performance.now();
  const t0 = live.inFlight.get(id);
  for (const k of [...live.inFlight.keys()]) if (k <= id) live.inFlight.delete(k);
  if (t0 !== undefined) { live.latencies.push(now - t0); if (live.latencies.length > 200) live.latencies.shift(); }
  live.shown.push(now);
  while (live.shown.length && now - live.shown[0] > 2000) live.shown.shift();
  const m = window.mraLive;
  m.frames += 1;
  m.fps = live.shown.length > 1 ? (live.shown.length - 1) / ((now - live.shown[0]) / 1000) : 0;
  m.p50 = pct(live.latencies, 0.5); m.p95 = pct(live.latencies, 0.95);
}

function liveUi(running) {
  $("live-start").disabled = running; $("live-stop").disabled = !running; $("live-recalibrate").disabled = !running;
}

function liveStop() {
  live.running = false;
  if (live.ws && live.ws.readyState === WebSocket.OPEN) live.ws.send(JSON.stringify({ type: "stop" }));
  if (live.stream) live.stream.getTracks().forEach((t) => t.stop());
  live.stream = null;
  liveUi(false);
}

async function liveStart() {
  showError($("live-error"), "");
  if (!state.sourceFile && !state.example) { showError($("live-error"), "error: no portrait: upload an image or pick one of the examples"); return; }
  liveUi(true);
  try {
    live.stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: false });
  } catch (e) {
    liveUi(false);
    showError($("live-error"), `error: no webcam available to the page (${e.name}); allow the camera, or use the Driving video tab`);
    return;
  }
  const cam = $("camera");
  cam.srcObject = live.stream;
  await cam.play();
  Object.assign(window.mraLive, { frames: 0, fps: 0, p50: NaN, p95: NaN, sent: 0, server: null });
  Object.assign(live, { nextId: 0, inFlight: new Map(), latencies: [], shown: [], server: null });
  const ws = new WebSocket(new URL("api/live", location.href.replace(/^http/, "ws")));
  ws.binaryType = "arraybuffer";
  live.ws = ws;
  $("live-stats").dataset.state = "starting"; $("live-stats").textContent = "starting…";
  ws.onopen = async () => {
    const start = { type: "start", mode: $("live-mode").value, crop: $("live-crop").value,
                    paste_back: $("live-paste-back").checked, expression: Number($("live-expression").value) };
    if (state.sourceFile) {
      start.upload = state.sourceFile.name;
      start.size = state.sourceFile.size;  // the server refuses one over the limit before it is sent
      ws.send(JSON.stringify(start));
      ws.send(await state.sourceFile.arrayBuffer());
    } else { start.example = state.example; ws.send(JSON.stringify(start)); }
  };
  ws.onmessage = (ev) => {
    if (typeof ev.data !== "string") { showFrame(ev.data).then(() => { $("live-stats").textContent = liveStatsText(); }); return; }
    const msg = JSON.parse(ev.data);
    if (msg.type === "ready") { live.running = true; $("live-stats").dataset.state = "running"; grab(); }
    else if (msg.type === "stats" || msg.type === "stopped") {
      live.server = msg; window.mraLive.server = msg; $("live-stats").textContent = liveStatsText();
      if (msg.type === "stopped") $("live-stats").dataset.state = "stopped";
    } else if (msg.type === "error") { showError($("live-error"), msg.message); }
  };
  ws.onclose = () => { if (live.ws === ws) { liveStop(); if ($("live-stats").dataset.state !== "stopped") $("live-stats").dataset.state = "stopped"; } };
}
$("live-start").addEventListener("click", liveStart);
$("live-stop").addEventListener("click", liveStop);
for (const id of ["expression", "live-expression"]) {
  $(id).addEventListener("input", () => { $(`${id}-value`).textContent = Number($(id).value).toFixed(1); });
}
$("live-expression").addEventListener("input", () => {
  if (live.ws && live.running) live.ws.send(JSON.stringify({ type: "expression", gain: Number($("live-expression").value) }));
});
$("live-recalibrate").addEventListener("click", () => { if (live.ws) live.ws.send(JSON.stringify({ type: "command", key: "r" })); });

loadInfo();
