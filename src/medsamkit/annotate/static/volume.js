// The volume side of the annotation page: axis and slice (slider, wheel, Up/Down, PageUp/PageDown), the
// display window (CT presets, level/width by Alt+drag, MR percentiles; the model input never changes),
// propagation of the selected object, the 3D engine (a 3D box; clicks that correct the selected object and
// re-propagate it) and the per-slice strip of predicted IoU / area with its stop marks.
// Uses annotate.js's globals (app, api, $, status, notice) once the page has started.
"use strict";

const Vol = (() => {
  let embedTimer = null;

  function key(id) { return "msk-volume-" + id; }

  async function open(entry) {
    const geo = await api(`/api/volume/${encodeURIComponent(entry.id)}`);
    const saved = JSON.parse(localStorage.getItem(key(entry.id)) || "null");
    const axis = saved && saved.axis >= 0 && saved.axis < 3 ? saved.axis : 0;
    const n = geo.axes[axis].slices;
    const slice = saved && saved.slice >= 0 && saved.slice < n ? saved.slice : Math.floor(n / 2);
    app.vol = { geo, axis, slice, window: geo.windows.kind === "ct" ? "model" : "auto", level: null, width: null,
                stripObject: null };
    $("volume-panel").hidden = false;
    $("contrast").parentElement.hidden = true;  // volumes use the display window instead
    const win = $("window");
    const names = geo.windows.kind === "ct" ? Object.keys(geo.windows.presets) : Object.keys(geo.windows.percentiles);
    win.innerHTML = '<option value="model">model input</option>'
      + names.map((w) => `<option value="${w}">${w.replace("_", " ")}</option>`).join("")
      + (geo.windows.kind === "ct" ? '<option value="custom">level / width</option>' : "");
    win.value = app.vol.window;
    $("axis").value = String(axis);
    syncControls();
  }

  function close() { app.vol = null; $("volume-panel").hidden = true; $("contrast").parentElement.hidden = false; }

  function syncControls() {
    const v = app.vol, n = v.geo.axes[v.axis].slices;
    const s = $("slice");
    s.max = String(n - 1); s.value = String(v.slice);
    $("slice-label").textContent = `${v.geo.axes[v.axis].name} ${v.slice + 1}/${n}`;
    localStorage.setItem(key(app.image), JSON.stringify({ axis: v.axis, slice: v.slice }));
  }

  function viewUrl() {
    const v = app.vol;
    let q = `axis=${v.axis}&slice=${v.slice}`;
    if (v.window === "custom" && v.level !== null) q += `&level=${v.level}&width=${v.width}`;
    else if (v.window !== "custom") q += `&window=${v.window}`;
    return `/api/volume/${encodeURIComponent(app.image)}/view?${q}`;
  }

  function labelsUrl() {
    return `/api/volume/${encodeURIComponent(app.image)}/labels?axis=${app.vol.axis}&slice=${app.vol.slice}`;
  }

  function aspect() { return app.vol.geo.axes[app.vol.axis].aspect; }

  async function go(slice, axis) {
    const v = app.vol;
    if (!v) return;
    const nextAxis = axis === undefined ? v.axis : axis;
    const n = v.geo.axes[nextAxis].slices;
    const next = Math.max(0, Math.min(n - 1, slice));
    if (next === v.slice && nextAxis === v.axis) return;
    const refit = nextAxis !== v.axis;
    v.slice = next; v.axis = nextAxis;
    syncControls();
    resetPrompt(false);
    app.ready = false;
    await loadImagePixels();
    if (refit) MskView.fit();
    await refreshObjects();
    clearTimeout(embedTimer);
    embedTimer = setTimeout(embed, 120);  // scrolling through slices embeds only where the person stops
  }

  async function embed() {
    const v = app.vol, at = { image: app.image, axis: v.axis, slice: v.slice };
    const t0 = performance.now();
    status(`embedding slice ${v.slice + 1}`, true);
    try {
      await api("/api/open", { ...at, wait: true });
      if (!app.vol || app.vol.slice !== at.slice || app.vol.axis !== at.axis || app.image !== at.image) return;
      app.ready = true;
      status(`ready (${((performance.now() - t0) / 1000).toFixed(1)} s)`);
      prefetch(at);
    } catch (e) { status("error"); notice(e.message, true); }
  }

  function prefetch(at) {
    const n = app.vol.geo.axes[at.axis].slices;
    for (const k of [at.slice + 1, at.slice - 1]) {
      if (k >= 0 && k < n) api("/api/open", { ...at, slice: k, wait: false }).catch(() => {});
    }
  }

  function target() {
    return app.selected || (app.vol && app.vol.stripObject) || (app.objects.length ? app.objects[app.objects.length - 1].id : null);
  }

  async function propagate(direction) {
    const object = target();
    if (!object) { notice("commit an object first (or select one)"); return; }
    const v = app.vol;
    status(`propagating #${object} ${direction}...`, true);
    try {
      const res = await api("/api/propagate", { image: app.image, object, axis: v.axis, slice: v.slice, direction,
        min_iou: +$("min-iou").value || 0 });
      v.stripObject = object;
      await refreshObjects();
      status(`propagated ${res.visited.length} slices in ${res.seconds.toFixed(1)} s (${res.encoded} embedded)`);
      notice("");
    } catch (e) { status("error"); notice(e.message, true); }
  }

  async function box3d() {
    const v = app.vol, box = app.prompt.box;
    if (!box) { notice("drag a box on this slice first"); return; }
    const n = v.geo.axes[v.axis].slices;
    const lo = Math.max(1, +$("z-from").value || v.slice + 1), hi = Math.min(n, +$("z-to").value || v.slice + 1);
    status("3D box...", true);
    try {
      const res = await api("/api/box3d", { image: app.image, axis: v.axis, box3d: [lo - 1, hi - 1, v.slice, ...box],
        class: $("class").value || null, client });
      resetPrompt(true);
      app.selected = res.object; v.stripObject = res.object;
      await refreshObjects();
      status(`3D box: #${res.object} on ${res.changed.length} slices in ${res.seconds.toFixed(1)} s (${res.encoded} embedded)`);
      notice("");
    } catch (e) { status("error"); notice(e.message, true); }
  }

  function clicks3d() { return Boolean(app.vol && $("clicks3d").checked && target()); }

  async function click3d(x, y, positive) {
    const v = app.vol, object = target();
    status(`3D click on #${object}...`, true);
    try {
      const res = await api("/api/click3d", { image: app.image, object, axis: v.axis, slice: v.slice, x, y, positive,
        client });
      v.stripObject = object;
      await refreshObjects();
      status(`3D click: slices ${res.changed.map((k) => k + 1).join(", ")} changed in ${res.seconds.toFixed(1)} s`);
      notice("");
    } catch (e) { status("error"); notice(e.message, true); }
  }

  function renderStrip() {
    const v = app.vol;
    if (!v) return;
    const canvas = $("strip"), ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    const n = v.geo.axes[v.axis].slices, w = canvas.width / n, h = canvas.height;
    const object = target();
    const o = app.objects.find((x) => x.id === object);
    const info = $("strip-info");
    ctx.fillStyle = "#fff";
    ctx.fillRect(v.slice * w, 0, Math.max(w, 1), 3);
    if (!o) { info.textContent = ""; return; }
    const views = o.slices || {};
    const areas = Object.entries(views).filter(([k]) => k.startsWith(v.axis + ":")).map(([k, e]) => [+k.split(":")[1], e]);
    const top = Math.max(1, ...areas.map(([, e]) => e.area || 0));
    ctx.strokeStyle = "#fc6"; ctx.beginPath();
    for (const [k, e] of areas.sort((a, b) => a[0] - b[0])) {
      const iou = e.iou ?? e.predicted_iou ?? 0;
      ctx.fillStyle = e.source === "person" ? "#3c6" : e.source === "cleared" ? "#555" : "#39f";
      ctx.fillRect(k * w, h - iou * (h - 6), Math.max(w - 0.5, 1), iou * (h - 6));
      ctx.lineTo(k * w + w / 2, h - (e.area / top) * (h - 6));
    }
    ctx.stroke();
    const runs = (o.propagations || []).filter((r) => r.axis === v.axis && r.stops);  // 3D engine steps have none
    const last = runs[runs.length - 1];
    const lines = [];
    if (last) {
      ctx.fillStyle = "#f33";
      for (const s of last.stops) {
        // an edge stop marks the volume's end; any other the slice where the run gave up
        const edge = s.reason === "volume edge" ? (s.direction === "up" ? (s.slice + 1) * w - 3 : s.slice * w) : null;
        ctx.fillRect(edge ?? s.slice * w + w / 2 - 1.5, 0, 3, h);
        lines.push(`${s.direction}: stopped at ${s.slice + 1} (${s.reason})`);
      }
    }
    const here = views[`${v.axis}:${v.slice}`];
    const hereText = here ? `slice ${v.slice + 1}: ${here.source}` + (here.iou !== undefined ? `, IoU ${here.iou.toFixed(2)}` : "")
      + `, ${here.area} px` : `slice ${v.slice + 1}: -`;
    info.textContent = `#${o.id}: ${hereText}` + (lines.length ? " \u00b7 " + lines.join(" \u00b7 ") : "");
  }

  function adjustWindow(dx, dy) {
    const v = app.vol;
    if (!v || v.geo.windows.kind !== "ct") return;
    if (v.level === null) { v.level = 40; v.width = 400; }
    v.width = Math.max(1, v.width + dx * 4);
    v.level = v.level + dy * 2;
    v.window = "custom";
    $("window").value = "custom";
    $("level").value = Math.round(v.level); $("width").value = Math.round(v.width);
  }

  async function redraw() {
    await loadImagePixels();
    await refreshObjects();
    if (app.answer) await MskView.setMask(app.answer.masks[app.candidate]);
  }

  function wire() {
    $("slice").oninput = () => go(+$("slice").value);
    $("axis").onchange = () => go(Math.floor(app.vol.geo.axes[+$("axis").value].slices / 2), +$("axis").value);
    $("window").onchange = () => {
      const v = app.vol; v.window = $("window").value;
      if (v.window !== "custom" && v.geo.windows.presets && v.geo.windows.presets[v.window]) {
        [v.level, v.width] = v.geo.windows.presets[v.window];
        $("level").value = v.level; $("width").value = v.width;
      }
      redraw();
    };
    for (const id of ["level", "width"]) {
      $(id).onchange = () => {
        const v = app.vol; v.level = +$("level").value; v.width = +$("width").value; v.window = "custom";
        $("window").value = "custom"; redraw();
      };
    }
    $("prop-up").onclick = () => propagate("up");
    $("prop-down").onclick = () => propagate("down");
    $("prop-both").onclick = () => propagate("both");
    $("box3d").onclick = box3d;
    $("strip").onclick = (e) => {
      const r = e.target.getBoundingClientRect();
      go(Math.floor(((e.clientX - r.left) / r.width) * app.vol.geo.axes[app.vol.axis].slices));
    };
  }

  return { open, close, go, viewUrl, labelsUrl, aspect, propagate, box3d, clicks3d, click3d, renderStrip, adjustWindow,
    redraw, wire, embed };
})();
