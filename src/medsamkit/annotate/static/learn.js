// The learn panel: shows the background learn round of medsamkit annotate (GET /api/learn every 2 s),
// switches automatic rounds on/off, starts or stops one, and serves any earlier model version again.
// Uses api(), $() and escapeHtml() of annotate.js (loaded before this file).
"use strict";

const learnPanel = { version: null, timer: null };
const LEARN_WORDS = {
  waiting: "waiting for objects", ready: "ready to learn", training: "training",
  updated: "model updated", kept: "kept the old model", failed: "failed",
};

function learnFigures(job) {
  if (!job || !job.before) return "";
  const modes = Object.keys(job.before).map((k) => k.replace("val_dice_", ""));
  const cell = (d, m) => (d && d["val_dice_" + m] !== undefined ? d["val_dice_" + m].toFixed(3) : "-");
  return "<tr><th>Dice</th><th>before</th><th>after</th></tr>" + modes.map((m) =>
    `<tr><td>${escapeHtml(m)}</td><td>${cell(job.before, m)}</td><td>${cell(job.after, m)}</td></tr>`).join("");
}

function learnProgress(state) {
  const job = state.job;
  if (state.phase === "waiting") {
    return `${state.objects} objects on ${state.images} images; learning needs ${state.min_objects} on ` +
      `${state.min_images}`;
  }
  if (!job) return `${state.objects} objects on ${state.images} images`;
  if (state.phase === "training") {
    const pct = Math.round(100 * (job.progress || 0));
    return `round ${job.number}: ${escapeHtml(job.phase || "starting")} ${pct}% (${job.steps || 0} steps, ` +
      `${Math.round(job.seconds || 0)} of ${Math.round(state.budget)} s)`;
  }
  if (job.error) return `round ${job.number}: ${escapeHtml(job.error)}`;
  return `round ${job.number}: ${escapeHtml(job.reason || "")}`;
}

async function learnVersions(current) {
  const listing = await api("/api/learn/versions");
  $("learn-version").innerHTML = listing.versions.map((v) => {
    const label = v.version === 0 ? `v0 (${escapeHtml(v.model)})` : `v${v.version} (${v.created || ""})`;
    return `<option value="${v.version}"${v.version === current ? " selected" : ""}>${label}</option>`;
  }).join("");
}

async function learnRefresh() {
  let state;
  try { state = await api("/api/learn"); } catch (e) { $("learn-progress").textContent = e.message; return; }
  $("learn-phase").textContent = LEARN_WORDS[state.phase] || state.phase;
  $("learn-phase").className = "learn-" + state.phase;
  $("learn-auto").checked = state.auto;
  $("learn-start").disabled = state.phase === "training";
  $("learn-stop").disabled = state.phase !== "training";
  $("learn-progress").innerHTML = learnProgress(state);
  $("learn-validation").innerHTML = learnFigures(state.job);
  if (learnPanel.version !== state.current) {
    learnPanel.version = state.current;
    await learnVersions(state.current);
    if (typeof app !== "undefined" && app.info) app.info = await api("/api/info");  // the new model's click strategy
  }
}

async function learnCall(path, body) {
  try { await api(path, body || {}); } catch (e) { notice(e.message, true); }
  await learnRefresh();
}

$("learn-auto").onchange = (e) => learnCall("/api/learn/auto", { on: e.target.checked });
$("learn-start").onclick = () => learnCall("/api/learn/start");
$("learn-stop").onclick = () => learnCall("/api/learn/stop");
$("learn-revert").onclick = () => learnCall("/api/learn/revert", { version: Number($("learn-version").value) });
learnRefresh();
learnPanel.timer = setInterval(learnRefresh, 2000);
