// tinysora web page: submit a job, follow its progress, play the result, browse history.
"use strict";

const $ = (id) => document.getElementById(id);
let apiKey = localStorage.getItem("tinysora-key") || "";
let current = null;   // id of the job shown in the "current" card
let cursor = null;    // history paging
let limits = { max_frames: 65, max_side: 256, max_steps: 100, side_multiple: 16, frames_rule: [1, 4] };

function headers(extra = {}) {
  return apiKey ? { ...extra, Authorization: "Bearer " + apiKey } : extra;
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: headers(options.headers || {}) });
  if (response.status === 401) {
    $("key-box").hidden = false;
    throw new Error("this server wants an API key: enter it next to Generate");
  }
  const body = response.headers.get("content-type")?.includes("json") ? await response.json() : null;
  if (!response.ok) throw new Error(describe(response.status, body));
  return body;
}

function describe(status, body) {
  const detail = body && body.detail;
  if (Array.isArray(detail)) {
    return detail.map((e) => `${e.loc[e.loc.length - 1]}: ${e.msg}`).join("; ");
  }
  return detail ? String(detail) : `HTTP ${status}`;
}

function fillSelect(select, values, chosen) {
  select.innerHTML = "";
  for (const v of values) {
    const option = document.createElement("option");
    option.value = option.textContent = v;
    option.selected = v === chosen;
    select.append(option);
  }
}

function fillControls() {
  const sides = [];
  const step = limits.side_multiple;
  for (let s = Math.ceil(32 / step) * step; s <= limits.max_side; s += step) sides.push(s);
  const frames = [];
  const [first, every] = limits.frames_rule;
  for (let f = first; f <= limits.max_frames; f += every) frames.push(f);
  fillSelect($("width"), sides, 64);
  fillSelect($("height"), sides, 64);
  fillSelect($("num_frames"), frames, 17);
  $("num_inference_steps").max = limits.max_steps;
}

async function health() {
  try {
    const h = await api("/health");
    limits = h.limits;
    $("health").textContent = `${h.device} · ${h.queue.queued} queued`;
    return true;
  } catch (e) {
    $("health").textContent = e.message;
    return false;
  }
}

function formBody() {
  const fields = {};
  for (const name of ["prompt", "negative_prompt", "width", "height", "num_frames", "fps",
                      "num_inference_steps", "guidance_scale", "seed", "sampler", "narrate"]) {
    const value = $(name).value.trim();
    if (value !== "") fields[name] = value;
  }
  for (const name of ["width", "height", "num_frames", "num_inference_steps", "seed"]) {
    if (name in fields) fields[name] = parseInt(fields[name], 10);
  }
  for (const name of ["fps", "guidance_scale"]) {
    if (name in fields) fields[name] = parseFloat(fields[name]);
  }
  if ($("loop").checked) fields.loop = true;
  const files = { image: $("image").files[0], voice: $("voice").files[0] };
  if (!files.image && !files.voice) {
    return { body: JSON.stringify(fields), headers: { "Content-Type": "application/json" } };
  }
  const form = new FormData();
  for (const [k, v] of Object.entries(fields)) form.append(k, String(v));
  for (const [k, file] of Object.entries(files)) if (file) form.append(k, file);
  return { body: form, headers: {} };
}

async function submit(event) {
  event.preventDefault();
  $("form-error").textContent = "";
  apiKey = $("api-key").value.trim() || apiKey;
  if (apiKey) localStorage.setItem("tinysora-key", apiKey);
  $("generate").disabled = true;
  try {
    const { body, headers: h } = formBody();
    const job = await api("/v1/videos", { method: "POST", body, headers: h });
    showJob(job.id);
    loadHistory(true);
  } catch (e) {
    $("form-error").textContent = e.message;
  } finally {
    $("generate").disabled = false;
  }
}

async function videoSource(id) {
  const url = `/v1/videos/${id}/content`;
  if (!apiKey) return url;  // direct: the browser seeks with Range requests
  const response = await fetch(url, { headers: headers() });
  return URL.createObjectURL(await response.blob());
}

async function play(id) {
  const player = $("player");
  player.hidden = false;
  player.src = await videoSource(id);
  player.play().catch(() => {});
}

function showJob(id) {
  current = id;
  $("current").hidden = false;
  $("player").hidden = true;
  $("player").removeAttribute("src");
  $("current-title").textContent = id;
  $("cancel").hidden = false;
  poll(id);
}

async function poll(id) {
  if (id !== current) return;
  let job;
  try {
    job = await api(`/v1/videos/${id}`);
  } catch (e) {
    $("status-line").textContent = e.message;
    return;
  }
  $("bar-fill").style.width = `${Math.round(100 * job.progress)}%`;
  $("current-title").textContent = job.params.prompt;
  let line = job.status;
  if (job.status === "running") {
    line += ` · ${Math.round(100 * job.progress)}%`;
    if (job.eta_s != null) line += ` · about ${Math.ceil(job.eta_s)} s left`;
  }
  if (job.status === "failed") line += `: ${job.error}`;
  $("status-line").textContent = line;
  $("status-line").className = `muted status-${job.status}`;
  if (job.status === "queued" || job.status === "running") {
    setTimeout(() => poll(id), 400);
    return;
  }
  $("cancel").hidden = true;
  if (job.status === "succeeded") {
    await play(id);
    $("status-line").textContent =
      `done · ${job.params.num_frames} frames at ${job.params.fps} fps · seed ${job.params.seed}`;
  }
  loadHistory(true);
}

async function remove(id) {
  await api(`/v1/videos/${id}`, { method: "DELETE" });
  if (id === current) {
    $("player").hidden = true;
  }
  loadHistory(true);
}

async function download(id) {
  const a = document.createElement("a");
  a.href = await videoSource(id);
  a.download = `${id}.mp4`;
  a.click();
}

function historyItem(job) {
  const li = document.createElement("li");
  li.dataset.id = job.id;
  const prompt = document.createElement("span");
  prompt.className = "prompt";
  prompt.textContent = job.params.prompt;
  const actions = document.createElement("span");
  actions.className = "actions";
  const button = (text, action) => {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "secondary";
    b.textContent = text;
    b.addEventListener("click", action);
    actions.append(b);
  };
  if (job.status === "succeeded") {
    button("Play", () => { current = job.id; $("current").hidden = false;
      $("current-title").textContent = job.params.prompt; $("cancel").hidden = true; play(job.id); });
    button("Download", () => download(job.id));
  }
  const active = job.status === "queued" || job.status === "running";
  button(active ? "Cancel" : "Delete", () => remove(job.id));
  const meta = document.createElement("span");
  meta.className = "meta";
  const when = new Date(job.created_at * 1000).toLocaleTimeString();
  const p = job.params;
  meta.innerHTML = `<span class="status-${job.status}">${job.status}</span> · ` +
    `${p.width}×${p.height}×${p.num_frames} · ${when}`;
  li.append(prompt, actions, meta);
  return li;
}

async function loadHistory(reset) {
  if (reset) cursor = null;
  let page;
  try {
    page = await api(`/v1/videos?limit=10${cursor ? "&cursor=" + cursor : ""}`);
  } catch (e) {
    return;
  }
  if (reset) $("history").innerHTML = "";
  for (const job of page.data) $("history").append(historyItem(job));
  cursor = page.next_cursor;
  $("more").hidden = !cursor;
}

$("form").addEventListener("submit", submit);
$("cancel").addEventListener("click", () => current && remove(current));
$("refresh").addEventListener("click", () => loadHistory(true));
$("more").addEventListener("click", () => loadHistory(false));
$("api-key").value = apiKey;
fillControls();
health().then((ok) => { if (ok) fillControls(); loadHistory(true); });
setInterval(health, 5000);
