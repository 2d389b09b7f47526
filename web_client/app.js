// step-realtime browser client: one WebRTC call to the server, OpenAI Realtime events on the
// "oai-events" data channel. Plain JS, no build step.
//
// Every notable thing is also logged as a machine-readable console line, "STEP <kind>: <value>",
// which headless Chromium prints on stderr (tests/test_browser.py reads them).
"use strict";

const $ = (id) => document.getElementById(id);
const ui = {
  start: $("start"), connection: $("connection"), states: $("states"), speculation: $("speculation"),
  micLevel: $("mic-level"), replyLevel: $("reply-level"), errors: $("errors"),
  conversation: $("conversation"), audio: $("remote-audio"),
};

const REPLY_AUDIO_RMS = 0.01; // remote audio louder than this counts as "the reply is audible"
const LEVEL_TICK_MS = 20;
const LEVEL_LOG_MS = 1000;

let call = null; // {pc, channel, stream, audioCtx, timer}
const userItems = new Map(); // item_id -> <li>
const replies = new Map(); // response_id -> {li, text}
let lastReply = null;
let speechStoppedAt = null; // performance.now() of the last speech_stopped, until audio is heard

function log(kind, value) {
  console.log(`STEP ${kind}: ${String(value).replace(/\n/g, " ")}`); // one line per entry
}

function showError(message) {
  log("error", message);
  const li = document.createElement("li");
  li.textContent = `${new Date().toLocaleTimeString()} ${message}`;
  ui.errors.append(li);
}

function setConnection(text) {
  ui.connection.textContent = text;
  ui.connection.dataset.status = text;
  log("connection", text);
}

function setState(state) {
  for (const li of ui.states.children) li.classList.toggle("active", li.dataset.state === state);
  if (state) log("state", state);
}

// ---- conversation view ----

function scrollToEnd() {
  ui.conversation.scrollTop = ui.conversation.scrollHeight;
}

function addBubble(role) {
  const li = document.createElement("li");
  li.className = role;
  li.innerHTML = `<span class="who">${role === "user" ? "you" : "assistant"}</span>` +
    `<span class="text"></span><span class="metrics"></span>`;
  ui.conversation.append(li);
  scrollToEnd();
  return li;
}

function setText(li, text) {
  li.querySelector(".text").textContent = text;
  scrollToEnd();
}

function userBubble(itemId) {
  if (!userItems.has(itemId)) {
    const li = addBubble("user");
    li.classList.add("pending");
    setText(li, "…");
    userItems.set(itemId, li);
  }
  return userItems.get(itemId);
}

function reply(responseId) {
  if (!replies.has(responseId)) {
    replies.set(responseId, {li: addBubble("assistant"), text: ""});
  }
  lastReply = replies.get(responseId);
  return lastReply;
}

function addMetric(r, text) {
  const span = document.createElement("span");
  span.textContent = text;
  r.li.querySelector(".metrics").append(span);
  scrollToEnd();
}

function formatMs(ms) {
  return `${ms < 10 ? ms.toFixed(1) : Math.round(ms)} ms`;
}

const METRIC_LABELS = { // step.turn_metrics values worth a glance, in pipeline order
  end_of_turn_delay_ms: "end-of-turn wait", asr_ms: "asr", llm_ttft_ms: "llm first token",
  tts_first_audio_ms: "tts first audio", eot_to_first_audio_ms: "end of turn → audio out",
  saved_ms: "saved by speculation",
};

function showTurnMetrics(ev) {
  const values = ev.values || {};
  log("turn_metrics", JSON.stringify(values));
  const id = ev.response_id || (ev.response && ev.response.id);
  const r = (id && replies.get(id)) || lastReply;
  if (!r) return;
  const parts = Object.entries(METRIC_LABELS)
    .filter(([key]) => values[key] !== null && values[key] !== undefined)
    .map(([key, label]) => `${label} ${formatMs(values[key])}`);
  if (parts.length) addMetric(r, `server: ${parts.join(" · ")}`);
}

function finalTranscript(response) {
  for (const item of response.output || []) {
    for (const part of item.content || []) {
      if (typeof part.transcript === "string") return part.transcript;
    }
  }
  return null;
}

// ---- server events ----

function handleEvent(ev) {
  switch (ev.type) {
    case "session.created":
      log("session", (ev.session && ev.session.id) || "created");
      break;
    case "input_audio_buffer.speech_started":
      speechStoppedAt = null;
      userBubble(ev.item_id);
      log("speech_started", ev.item_id);
      break;
    case "input_audio_buffer.speech_stopped":
      speechStoppedAt = performance.now();
      log("speech_stopped", ev.item_id);
      break;
    case "conversation.item.input_audio_transcription.completed": {
      const li = userBubble(ev.item_id);
      li.classList.remove("pending");
      setText(li, ev.transcript || "(nothing recognised)");
      log("user_transcript", ev.transcript);
      break;
    }
    case "response.created":
      reply(ev.response.id);
      log("response_created", ev.response.id);
      break;
    case "response.output_audio_transcript.delta":
    case "response.audio_transcript.delta": { // the older (beta) name of the same event
      const r = reply(ev.response_id);
      r.text += ev.delta;
      setText(r.li, r.text);
      break;
    }
    case "conversation.item.deleted": { // e.g. a turn taken back: it goes on as a new item
      const li = userItems.get(ev.item_id);
      if (li) li.remove();
      userItems.delete(ev.item_id);
      break;
    }
    case "step.turn_taken_back": // the user went on before hearing the reply: it is withdrawn
      if (ev.response_id && replies.has(ev.response_id)) {
        replies.get(ev.response_id).li.remove();
        replies.delete(ev.response_id);
      }
      log("turn_taken_back", `${ev.item_id} → ${ev.new_item_id}`);
      break;
    case "step.response_resumed": // a cough or an "mm-hm" over the reply: it plays on
      log("response_resumed", `${ev.response_id} at ${ev.audio_start_ms} ms`);
      break;
    case "response.done": {
      const r = reply(ev.response.id);
      const status = ev.response.status || "completed";
      // After a barge-in the server reports what was actually heard: show that.
      const heard = finalTranscript(ev.response);
      if (heard !== null) r.text = heard;
      setText(r.li, r.text || "…");
      if (status !== "completed") {
        r.li.classList.add(status);
        addMetric(r, status === "cancelled" ? "interrupted" : status === "incomplete" ? "cut at the token limit" : status);
      }
      log("assistant_transcript", r.text);
      log("response_done", status);
      break;
    }
    case "error":
      showError((ev.error && ev.error.message) || JSON.stringify(ev));
      break;
    case "step.state":
      setState(ev.state);
      break;
    case "step.speculation":
      ui.speculation.textContent = `speculation ${ev.action}`;
      log("speculation", ev.action);
      break;
    case "step.turn_metrics":
      showTurnMetrics(ev);
      break;
  }
}

// ---- audio levels: meters, and the latency the caller actually hears ----

function analyser(ctx, stream) {
  const node = ctx.createAnalyser();
  node.fftSize = 1024;
  ctx.createMediaStreamSource(stream).connect(node); // not connected onward: <audio> plays it
  return {node, buf: new Float32Array(node.fftSize), peak: 0};
}

function rms(a) {
  a.node.getFloatTimeDomainData(a.buf);
  let sum = 0;
  for (const x of a.buf) sum += x * x;
  const value = Math.sqrt(sum / a.buf.length);
  a.peak = Math.max(a.peak, value);
  return value;
}

function meterLevel(value) {
  return Math.max(0, 1 + Math.log10(value + 1e-9) / 3); // -60 dBFS .. 0 dBFS → 0 .. 1
}

function startLevels(c) {
  let lastLog = performance.now();
  c.timer = setInterval(() => {
    const logNow = performance.now() - lastLog >= LEVEL_LOG_MS;
    if (logNow) lastLog = performance.now();
    if (c.mic) {
      ui.micLevel.value = meterLevel(rms(c.mic));
      if (logNow && c.mic.peak > 0.001) log("mic_rms", c.mic.peak.toFixed(4));
      if (logNow) c.mic.peak = 0;
    }
    if (!c.remote) return;
    const remote = rms(c.remote);
    ui.replyLevel.value = meterLevel(remote);
    if (speechStoppedAt !== null && remote > REPLY_AUDIO_RMS) {
      const ms = Math.round(performance.now() - speechStoppedAt);
      speechStoppedAt = null;
      log("first_audio_latency_ms", ms);
      if (lastReply) addMetric(lastReply, `heard ${ms} ms after speech stopped (measured here)`);
    }
    if (logNow && c.remote.peak > 0.001) log("reply_audio_rms", c.remote.peak.toFixed(4));
    if (logNow) c.remote.peak = 0;
  }, LEVEL_TICK_MS);
}

// ---- the call ----

function iceGatheringDone(pc, timeoutMs) {
  // The server does not trickle ICE: send the offer once it holds all (host) candidates.
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { if (pc.iceGatheringState === "complete") resolve(); };
    pc.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, timeoutMs);
  });
}

async function start() {
  setConnection("connecting");
  const c = {pc: new RTCPeerConnection(), audioCtx: new AudioContext()};
  call = c;
  if (c.audioCtx.state === "suspended") await c.audioCtx.resume();

  c.stream = await navigator.mediaDevices.getUserMedia({
    audio: {echoCancellation: true, noiseSuppression: true, autoGainControl: true},
  });
  for (const track of c.stream.getTracks()) c.pc.addTrack(track, c.stream);
  c.mic = analyser(c.audioCtx, c.stream);

  c.pc.ontrack = (e) => {
    const remote = e.streams[0] || new MediaStream([e.track]);
    ui.audio.srcObject = remote; // Chrome only feeds WebAudio from a remote stream that also plays
    c.remote = analyser(c.audioCtx, remote);
    log("remote_track", e.track.kind);
  };
  c.pc.onconnectionstatechange = () => {
    log("peer_connection", c.pc.connectionState);
    if (c.pc.connectionState === "failed") showError("WebRTC connection failed");
  };

  c.channel = c.pc.createDataChannel("oai-events");
  c.channel.onopen = () => setConnection("connected");
  c.channel.onclose = () => { if (call === c) setConnection("closed"); };
  c.channel.onmessage = (m) => {
    try { handleEvent(JSON.parse(m.data)); } catch (err) { showError(`bad event: ${err.message}`); }
  };

  await c.pc.setLocalDescription(await c.pc.createOffer());
  await iceGatheringDone(c.pc, 3000);
  const headers = {"Content-Type": "application/sdp"};
  const secret = await clientSecret();
  if (secret) headers.Authorization = `Bearer ${secret}`;
  const resp = await fetch("v1/realtime/calls", {method: "POST", headers, body: c.pc.localDescription.sdp});
  const body = await resp.text();
  if (resp.status === 401) {
    sessionStorage.removeItem("step-realtime-secret"); // expired or wrong: not tried again
    throw new Error("this server asks for a key: open the page as …/#key=YOUR_API_KEY, or with " +
                    "#client_secret=ek_… from your backend (docs/operations.md#authentication)");
  }
  if (!resp.ok) throw new Error(`POST v1/realtime/calls: ${resp.status} ${body}`);
  if (call !== c) return; // stopped while waiting
  await c.pc.setRemoteDescription({type: "answer", sdp: body});
  startLevels(c);
}

// With auth on, the call is made with a short-lived client secret (ek_…), never the API key:
// #client_secret=ek_… is one your backend minted; #key=… is an API key (trusted operators), kept in
// this tab's sessionStorage and exchanged for a fresh secret at each Start. The fragment is removed
// from the address bar once read (it never reaches the server's logs: fragments are not sent).
async function clientSecret() {
  const given = new URLSearchParams(location.hash.slice(1));
  if (given.get("key")) sessionStorage.setItem("step-realtime-key", given.get("key"));
  if (given.get("client_secret")) sessionStorage.setItem("step-realtime-secret", given.get("client_secret"));
  if (location.hash) history.replaceState(null, "", location.pathname + location.search);
  const secret = sessionStorage.getItem("step-realtime-secret");
  if (secret) return secret;
  const key = sessionStorage.getItem("step-realtime-key");
  if (!key) return null; // auth off (make run), or the call is refused with 401 and says how
  const resp = await fetch("v1/realtime/client_secrets", {
    method: "POST", headers: {"Authorization": `Bearer ${key}`, "Content-Type": "application/json"},
    body: JSON.stringify({expires_after: {anchor: "created_at", seconds: 60}}),
  });
  if (!resp.ok) throw new Error(`POST v1/realtime/client_secrets: ${resp.status} ${await resp.text()}`);
  return (await resp.json()).value;
}

function stop() {
  const c = call;
  call = null;
  if (!c) return;
  clearInterval(c.timer);
  if (c.channel) c.channel.close();
  c.pc.close();
  if (c.stream) for (const track of c.stream.getTracks()) track.stop();
  c.audioCtx.close();
  ui.audio.srcObject = null;
  ui.micLevel.value = ui.replyLevel.value = 0;
  speechStoppedAt = null;
  setState(null);
  setConnection("idle");
}

async function toggle() {
  if (call) {
    stop();
    ui.start.textContent = "Start";
    return;
  }
  ui.start.textContent = "Stop";
  try {
    await start();
  } catch (err) {
    showError(err.message || String(err));
    stop();
    ui.start.textContent = "Start";
  }
}

ui.start.addEventListener("click", toggle);
window.addEventListener("error", (e) => showError(e.message));
window.addEventListener("unhandledrejection", (e) => showError(String(e.reason)));
if (new URLSearchParams(location.search).get("autostart") === "1") toggle();
