// The annotation page: talks to the medsamkit annotate API (token from the URL, sent as a header),
// keeps the current prompts (box + clicks, with their own undo/redo) and the object list. Volumes: the
// view is (axis, slice) from volume.js (`Vol`), and Enter on a selected object corrects it on the slice.
"use strict";

const token = new URLSearchParams(location.search).get("token");
// this tab's client id: the server keeps a prompt session per client, so two tabs (or people) never commit
// each other's answer; getRandomValues also works where randomUUID does not (plain http on a LAN address)
const client = Array.from(crypto.getRandomValues(new Uint8Array(12)), (b) => b.toString(16).padStart(2, "0")).join("");
const $ = (id) => document.getElementById(id);
const app = {
  info: null, index: 0, image: null, ready: false, prompt: { box: null, points: [] },
  history: [], future: [], answer: null, candidate: 0, objects: [], selected: null,
  proposals: [], seq: 0, hiddenIds: new Set(), suggestion: null, vol: null,
};

async function api(path, body) {
  const headers = token ? { Authorization: "Bearer " + token } : {};
  const init = body === undefined ? { headers } : {
    method: "POST", headers: { ...headers, "Content-Type": "application/json" }, body: JSON.stringify(body),
  };
  const res = await fetch(path, init);
  if (!res.ok) {
    let msg = res.statusText;
    try { msg = (await res.json()).error || msg; } catch (e) { /* not JSON */ }
    const err = new Error(msg); err.status = res.status; throw err;
  }
  const type = res.headers.get("content-type") || "";
  return type.includes("json") ? res.json() : res.blob();
}

function status(text, busy) { const s = $("status"); s.textContent = text; s.classList.toggle("busy", !!busy); }
function notice(text, error) { const n = $("notice"); n.textContent = text || ""; n.classList.toggle("error", !!error); }
function view() {
  const at = app.vol ? { slice: app.vol.slice, axis: app.vol.axis } : { slice: null, axis: 0 };
  return { image: app.image, ...at, client };
}

async function start() {
  try {
    app.info = await api("/api/info");
  } catch (e) { status("cannot reach the server: " + e.message); notice(e.message, true); return; }
  const cls = $("class");
  const names = app.info.classes.length ? app.info.classes : [];
  cls.innerHTML = (app.info.class_head ? '<option value="">model suggests</option>' : "")
    + (names.length ? "" : '<option value="">(no class)</option>')
    + names.map((n) => `<option>${escapeHtml(n)}</option>`).join("");
  const list = $("images");
  app.info.images.forEach((im, i) => {
    const d = document.createElement("div");
    d.textContent = im.name; d.title = `${im.name} ${(im.shape || []).join("x")}`;
    d.onclick = () => openImage(i);
    list.appendChild(d);
  });
  MskView.resize();
  const at = app.info.images.findIndex((im) => im.id === app.info.current);
  await openImage(Math.max(0, at));
}

function escapeHtml(s) { return String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[c])); }

async function openImage(i) {
  const images = app.info.images;
  if (i < 0 || i >= images.length) return;
  app.index = i; app.image = images[i].id; app.ready = false; app.proposals = []; app.selected = null;
  resetPrompt(false);
  [...$("images").children].forEach((d, k) => d.classList.toggle("current", k === i));
  $("image-name").textContent = `${images[i].name} (${i + 1}/${images.length})`;
  $("proposal-panel").hidden = true;
  const t0 = performance.now();
  const timer = setInterval(() => status(`embedding ${images[i].name}: ${((performance.now() - t0) / 1000).toFixed(1)} s`, true), 200);
  try {
    if (images[i].kind === "volume") await Vol.open(images[i]); else Vol.close();
    await loadImagePixels();
    MskView.fit();
    await refreshObjects();
    const opened = api("/api/open", { ...view(), wait: true });
    await opened;
    if (app.image !== images[i].id) return;  // the person moved on meanwhile
    app.ready = true;
    status(`ready (${((performance.now() - t0) / 1000).toFixed(1)} s)`);
    if (app.vol) Vol.embed();
    else if (i + 1 < images.length) api("/api/open", { image: images[i + 1].id, slice: null, axis: 0, wait: false }).catch(() => {});
  } catch (e) { status("error"); notice(e.message, true); } finally { clearInterval(timer); }
}

async function loadImagePixels() {
  if (app.vol) { MskView.setImage(await createImageBitmap(await api(Vol.viewUrl())), Vol.aspect()); return; }
  const blob = await api(`/api/image/${encodeURIComponent(app.image)}?contrast=${$("contrast").value}`);
  MskView.setImage(await createImageBitmap(blob));
}

async function refreshObjects() {
  const res = await api(`/api/objects/${encodeURIComponent(app.image)}`);
  app.objects = res.objects;
  app.hiddenIds = new Set(res.objects.filter((o) => o.hidden).map((o) => o.id));
  const blob = await api(app.vol ? Vol.labelsUrl() : `/api/labels/${encodeURIComponent(app.image)}?format=rgba`);
  await MskView.setObjects(blob, app.hiddenIds, app.selected);
  renderObjects();
  if (app.vol) Vol.renderStrip();
}

function renderObjects() {
  const ul = $("objects");
  ul.innerHTML = "";
  $("object-count").textContent = `(${app.objects.length})`;
  const names = app.info.classes;
  for (const o of app.objects) {
    const li = document.createElement("li");
    li.dataset.id = o.id;
    li.classList.toggle("selected", o.id === app.selected);
    li.classList.toggle("hidden-object", !!o.hidden);
    const [r, g, b] = MskView.colour(o.id);
    const options = names.map((n) => `<option ${n === o.class ? "selected" : ""}>${escapeHtml(n)}</option>`).join("");
    li.innerHTML = `<span class="swatch"></span>`
      + `<span class="grow">#${o.id} ${escapeHtml(o.class ?? "")} <small>${o.area}px</small></span>`
      + (names.length ? `<select title="class">${options}</select>` : "")
      + `<button class="hide" title="hide / show">${o.hidden ? "show" : "hide"}</button>`
      + `<button class="del" title="delete">&times;</button>`;
    li.querySelector(".swatch").style.background = `rgb(${r},${g},${b})`;  // no inline style: the page's CSP
    li.onclick = (ev) => { if (ev.target.tagName === "SPAN") select(o.id); };
    const sel = li.querySelector("select");
    if (sel) sel.onchange = () => change("/api/objects/update", { image: app.image, object: o.id, class: sel.value });
    li.querySelector(".hide").onclick = () => change("/api/objects/update", { image: app.image, object: o.id, hidden: !o.hidden });
    li.querySelector(".del").onclick = () => change("/api/objects/delete", { image: app.image, object: o.id });
    ul.appendChild(li);
  }
}

async function select(id) {
  app.selected = app.selected === id ? null : id;
  await refreshObjects();
}

async function change(path, body) {
  try { await api(path, body); await refreshObjects(); notice(""); } catch (e) { notice(e.message, true); }
}

// --- prompts ------------------------------------------------------------------------------------
function resetPrompt(tellServer) {
  app.prompt = { box: null, points: [] }; app.history = []; app.future = []; app.answer = null;
  app.suggestion = null;
  MskView.setPrompt({ ...app.prompt, drag: null });
  MskView.clearMask();
  renderCandidates();
  if (tellServer && app.image) api("/api/clear", view()).catch(() => {});
}

function pushPrompt(next) {
  app.history.push(app.prompt); app.future = [];
  app.prompt = next;
  predict();
}

async function predict() {
  MskView.setPrompt({ ...app.prompt, drag: null });
  if (!app.prompt.box && !app.prompt.points.length) { app.answer = null; MskView.clearMask(); renderCandidates(); return; }
  const seq = ++app.seq;
  const body = { ...view(), box: app.prompt.box, points: app.prompt.points, multimask: $("multimask").checked,
    mask_from: app.prompt.maskFrom ?? null };
  if (!app.ready) status("embedding... the mask follows", true);
  try {
    const res = await api("/api/predict", body);
    if (seq !== app.seq) return;  // a newer prompt was sent meanwhile
    app.answer = res; app.candidate = res.best; app.suggestion = res.class_suggestion || null;
    await MskView.setMask(res.masks[app.candidate]);
    performance.mark("overlay-drawn");
    if (performance.getEntriesByName("release").length) performance.measure("release-to-overlay", "release", "overlay-drawn");
    status(`mask in ${(res.seconds * 1000).toFixed(0)} ms`);
    notice("");
  } catch (e) {
    if (seq !== app.seq) return;
    app.answer = null; MskView.clearMask();
    notice(e.message, true);
    if (e.status === 400 && !app.prompt.box) { app.prompt = app.history.pop() || { box: null, points: [] }; MskView.setPrompt({ ...app.prompt, drag: null }); }
  }
  renderCandidates();
}

function renderCandidates() {
  const div = $("candidates");
  if (!app.answer) { div.innerHTML = "<em>drag a box or click on the object</em>"; $("suggestion").textContent = ""; return; }
  div.innerHTML = app.answer.iou.map((q, k) =>
    `<button data-k="${k}" class="${k === app.candidate ? "chosen" : ""}">${k + 1}: IoU ${q.toFixed(2)}</button>`).join("");
  div.querySelectorAll("button").forEach((b) => { b.onclick = () => chooseCandidate(+b.dataset.k); });
  const s = app.suggestion;
  $("suggestion").textContent = s ? `suggested class: ${s.class} (${(100 * s.probability).toFixed(0)}%)` : "";
}

async function chooseCandidate(k) {
  if (!app.answer || k >= app.answer.masks.length) return;
  app.candidate = k;
  await MskView.setMask(app.answer.masks[k]);
  renderCandidates();
}

async function commit() {
  if (!app.answer) { notice("nothing to commit: drag a box or click on the object first"); return; }
  const cls = $("class").value || null;
  if (app.vol && app.selected) {
    try {
      await api("/api/correct", { ...view(), object: app.selected, candidate: app.candidate });
      resetPrompt(false);
      await refreshObjects();
      notice(`object #${app.selected} corrected on this slice (propagation keeps it)`);
    } catch (e) { notice(e.message, true); }
    return;
  }
  try {
    const res = await api("/api/commit", { ...view(), candidate: app.candidate, class: cls });
    app.selected = null;
    resetPrompt(false);
    await refreshObjects();
    notice(`object #${res.committed.id} saved` + (res.committed.suggested_class ? ` (suggested ${res.committed.suggested_class})` : ""));
  } catch (e) { notice(e.message, true); }
}

async function undo(redo) {
  const from = redo ? app.future : app.history, to = redo ? app.history : app.future;
  if (from.length) { to.push(app.prompt); app.prompt = from.pop(); predict(); return; }
  await change(redo ? "/api/redo" : "/api/undo", { image: app.image });
}

async function everything() {
  status("everything mode running...", true);
  try {
    const res = await api("/api/everything", view());
    app.proposals = res.proposals;
    renderProposals();
    status(`${res.proposals.length} proposals in ${res.seconds.toFixed(1)} s`);
  } catch (e) { status("error"); notice(e.message, true); }
}

async function renderProposals(highlight) {
  $("proposal-panel").hidden = false;
  const left = app.proposals.filter(Boolean);
  $("proposal-count").textContent = `(${left.length})`;
  const ul = $("proposals");
  ul.innerHTML = "";
  for (const p of left) {
    const li = document.createElement("li");
    li.innerHTML = `<span class="grow">#${p.index} IoU ${p.iou.toFixed(2)}</span><button class="ok">accept</button><button class="no">reject</button>`;
    li.onmouseenter = () => MskView.setProposals(app.proposals, p.index);
    li.querySelector(".ok").onclick = () => decide("/api/proposals/accept", [p.index]);
    li.querySelector(".no").onclick = () => decide("/api/proposals/reject", [p.index]);
    ul.appendChild(li);
  }
  await MskView.setProposals(app.proposals, highlight);
}

async function decide(path, indices) {
  try {
    await api(path, { ...view(), indices, class: $("class").value || null });
    for (const i of indices || app.proposals.map((p, k) => (p ? k : -1)).filter((k) => k >= 0)) app.proposals[i] = null;
    await renderProposals();
    await refreshObjects();
  } catch (e) { notice(e.message, true); }
}

// --- mouse and keys -----------------------------------------------------------------------------
const drag = { mode: null, x: 0, y: 0, start: null };
let spaceDown = false;
const ov = MskView.overlay;
ov.addEventListener("contextmenu", (e) => e.preventDefault());
ov.addEventListener("wheel", (e) => {
  e.preventDefault();
  if (app.vol && !e.ctrlKey) { Vol.go(app.vol.slice + (e.deltaY > 0 ? 1 : -1)); return; }
  MskView.zoomAt(e.clientX, e.clientY, e.deltaY < 0 ? 1.15 : 1 / 1.15); }, { passive: false });
ov.addEventListener("mousedown", (e) => {
  drag.x = e.clientX; drag.y = e.clientY;
  if (e.button === 1 || spaceDown) { drag.mode = "pan"; e.preventDefault(); return; }
  if (app.vol && e.altKey) { drag.mode = "window"; e.preventDefault(); return; }
  drag.mode = e.button === 0 && !e.shiftKey ? "box" : "negative";
  drag.start = MskView.toImage(e.clientX, e.clientY);
});
window.addEventListener("mousemove", (e) => {
  if (drag.mode === "window") { Vol.adjustWindow(e.clientX - drag.x, e.clientY - drag.y); drag.x = e.clientX; drag.y = e.clientY; return; }
  if (drag.mode === "pan") { MskView.pan(e.clientX - drag.x, e.clientY - drag.y); drag.x = e.clientX; drag.y = e.clientY; return; }
  if (drag.mode === "box" && Math.hypot(e.clientX - drag.x, e.clientY - drag.y) > 4) {
    MskView.setPrompt({ ...app.prompt, drag: boxFrom(drag.start, MskView.toImage(e.clientX, e.clientY)) });
  }
});
window.addEventListener("mouseup", (e) => {
  const mode = drag.mode; drag.mode = null;
  if (mode === "window") { Vol.redraw(); return; }
  if (!mode || mode === "pan" || !app.image) return;
  performance.mark("release");
  const end = MskView.toImage(e.clientX, e.clientY);
  const moved = Math.hypot(e.clientX - drag.x, e.clientY - drag.y) > 4;
  if (mode === "box" && moved) { pushPrompt({ box: boxFrom(drag.start, end), points: [] }); return; }
  const [x, y] = clampPoint(end);
  if (Vol.clicks3d()) { Vol.click3d(x, y, mode === "box"); return; }  // the 3D engine corrects the object
  // the click refines the candidate on screen: its logits go back in as the mask prompt
  const maskFrom = app.answer ? app.candidate : null;
  pushPrompt({ box: app.prompt.box, points: [...app.prompt.points, [x, y, mode === "box" ? 1 : 0]], maskFrom });
});

function clampPoint([x, y]) {
  const v = MskView.view;
  return [Math.min(Math.max(x, 0), v.width - 1), Math.min(Math.max(y, 0), v.height - 1)];
}

function boxFrom(a, b) {
  const [x0, y0] = clampPoint([Math.min(a[0], b[0]), Math.min(a[1], b[1])]);
  const [x1, y1] = clampPoint([Math.max(a[0], b[0]), Math.max(a[1], b[1])]);
  return [Math.round(x0), Math.round(y0), Math.round(x1), Math.round(y1)];
}

window.addEventListener("keyup", (e) => { if (e.key === " ") spaceDown = false; });
window.addEventListener("keydown", (e) => {
  if (e.target.tagName === "SELECT" || e.target.tagName === "INPUT") return;
  const k = e.key, ctrl = e.ctrlKey || e.metaKey;
  if (k === " ") { spaceDown = true; e.preventDefault(); }
  else if (ctrl && (k === "z" || k === "Z")) { e.preventDefault(); undo(e.shiftKey); }
  else if (ctrl && k === "y") { e.preventDefault(); undo(true); }
  else if (k === "Enter") { e.preventDefault(); commit(); }
  else if (k === "Escape") resetPrompt(true);
  else if (app.vol && (k === "ArrowUp" || k === "ArrowDown")) { e.preventDefault(); Vol.go(app.vol.slice + (k === "ArrowUp" ? 1 : -1)); }
  else if (app.vol && (k === "PageUp" || k === "PageDown")) { e.preventDefault(); Vol.go(app.vol.slice + (k === "PageUp" ? 10 : -10)); }
  else if (app.vol && ["u", "d", "b"].includes(k)) Vol.propagate({ u: "up", d: "down", b: "both" }[k]);
  else if (k === "ArrowRight" || k === "n" || k === "PageDown") openImage(app.index + 1);
  else if (k === "ArrowLeft" || k === "p" || k === "PageUp") openImage(app.index - 1);
  else if (["1", "2", "3"].includes(k)) chooseCandidate(+k - 1);
  else if (k === "m") { $("multimask").checked = !$("multimask").checked; predict(); }
  else if (k === "e") everything();
  else if (k === "a" && app.proposals.some(Boolean)) decide("/api/proposals/accept", null);
  else if (k === "f") MskView.fit();
  else if ((k === "Delete" || k === "Backspace") && app.selected) change("/api/objects/delete", { image: app.image, object: app.selected });
  else if (k === "h" && app.selected) {
    const o = app.objects.find((x) => x.id === app.selected);
    if (o) change("/api/objects/update", { image: app.image, object: o.id, hidden: !o.hidden });
  }
});

$("prev").onclick = () => openImage(app.index - 1);
$("next").onclick = () => openImage(app.index + 1);
$("fit").onclick = () => MskView.fit();
$("everything").onclick = () => everything();
$("accept-all").onclick = () => decide("/api/proposals/accept", null);
$("reject-all").onclick = () => decide("/api/proposals/reject", null);
$("multimask").onchange = () => predict();
Vol.wire();
$("contrast").onchange = async () => {
  await loadImagePixels(); await refreshObjects();
  if (app.answer) await MskView.setMask(app.answer.masks[app.candidate]);
};

start();
