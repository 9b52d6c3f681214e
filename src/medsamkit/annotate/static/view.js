// The canvas side of the annotation page: image and overlay canvases, zoom/pan transform, and the
// image-resolution layers (committed objects, candidate mask, proposals) drawn through that transform.
// view.aspect (a volume view's row spacing / column spacing) stretches rows so millimetres look square.
"use strict";

const MskView = (() => {
  const imageCanvas = document.getElementById("image-canvas");
  const overlay = document.getElementById("overlay");
  const viewport = document.getElementById("viewport");
  const view = { scale: 1, x: 0, y: 0, width: 0, height: 0, aspect: 1 };
  const layers = { image: null, objects: null, mask: null, proposals: null };
  let prompt = { box: null, points: [], drag: null };

  function layer(width, height) {
    const c = document.createElement("canvas");
    c.width = width; c.height = height;
    return c;
  }

  function colour(id) {
    // golden-angle hues: neighbouring ids get far-apart colours
    const h = (id * 137.508) % 360;
    return hsl(h, 0.75, 0.55);
  }

  function hsl(h, s, l) {
    const k = (n) => (n + h / 30) % 12;
    const a = s * Math.min(l, 1 - l);
    const f = (n) => l - a * Math.max(-1, Math.min(k(n) - 3, Math.min(9 - k(n), 1)));
    return [Math.round(255 * f(0)), Math.round(255 * f(8)), Math.round(255 * f(4))];
  }

  function resize() {
    const w = viewport.clientWidth, h = viewport.clientHeight;
    for (const c of [imageCanvas, overlay]) { c.width = w; c.height = h; }
    draw();
  }

  function fit() {
    if (!layers.image) return;
    const w = viewport.clientWidth, h = viewport.clientHeight;
    view.scale = Math.min(w / view.width, h / (view.height * view.aspect)) * 0.98;
    view.x = (w - view.width * view.scale) / 2;
    view.y = (h - view.height * view.aspect * view.scale) / 2;
    draw();
  }

  function toImage(clientX, clientY) {
    const r = overlay.getBoundingClientRect();
    return [(clientX - r.left - view.x) / view.scale, (clientY - r.top - view.y) / (view.scale * view.aspect)];
  }

  function zoomAt(clientX, clientY, factor) {
    const r = overlay.getBoundingClientRect();
    const sx = clientX - r.left, sy = clientY - r.top;
    const next = Math.max(0.05, Math.min(64, view.scale * factor));
    view.x = sx - (sx - view.x) * (next / view.scale);
    view.y = sy - (sy - view.y) * (next / view.scale);
    view.scale = next;
    draw();
  }

  function pan(dx, dy) { view.x += dx; view.y += dy; draw(); }

  function setImage(bitmap, aspect) {
    view.width = bitmap.width; view.height = bitmap.height; view.aspect = aspect || 1;
    const c = layer(bitmap.width, bitmap.height);
    c.getContext("2d").drawImage(bitmap, 0, 0);
    layers.image = c; layers.mask = null; layers.proposals = null;
  }

  function withTransform(ctx, fn) {
    ctx.save();
    ctx.setTransform(view.scale, 0, 0, view.scale * view.aspect, view.x, view.y);
    ctx.imageSmoothingEnabled = false;
    fn(ctx);
    ctx.restore();
  }

  function drawPrompt(ctx) {
    const box = prompt.drag || prompt.box;
    ctx.lineWidth = 2;
    if (box) {
      ctx.strokeStyle = "#4df";
      const [x0, y0] = screen(box[0], box[1]), [x1, y1] = screen(box[2], box[3]);
      ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
    }
    for (const [x, y, label] of prompt.points) {
      const [sx, sy] = screen(x, y);
      ctx.fillStyle = label ? "#3f3" : "#f33";
      ctx.beginPath(); ctx.arc(sx, sy, 5, 0, 2 * Math.PI); ctx.fill();
      ctx.strokeStyle = "#000"; ctx.lineWidth = 1; ctx.stroke();
    }
  }

  function screen(x, y) { return [x * view.scale + view.x, y * view.scale * view.aspect + view.y]; }

  function draw() {
    const ic = imageCanvas.getContext("2d");
    ic.setTransform(1, 0, 0, 1, 0, 0);
    ic.clearRect(0, 0, imageCanvas.width, imageCanvas.height);
    if (layers.image) withTransform(ic, (ctx) => ctx.drawImage(layers.image, 0, 0));
    const oc = overlay.getContext("2d");
    oc.setTransform(1, 0, 0, 1, 0, 0);
    oc.clearRect(0, 0, overlay.width, overlay.height);
    withTransform(oc, (ctx) => {
      for (const key of ["objects", "proposals", "mask"]) if (layers[key]) ctx.drawImage(layers[key], 0, 0);
    });
    drawPrompt(oc);
  }

  function paint(width, height, fill) {
    // an image-resolution RGBA layer whose pixels fill(data, index) sets
    const c = layer(width, height);
    const ctx = c.getContext("2d");
    const img = ctx.createImageData(width, height);
    fill(img.data);
    ctx.putImageData(img, 0, 0);
    return c;
  }

  async function pixelsOf(blob) {
    const bmp = await createImageBitmap(blob, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
    const c = layer(bmp.width, bmp.height);
    const ctx = c.getContext("2d", { willReadFrequently: true });
    ctx.drawImage(bmp, 0, 0);
    return ctx.getImageData(0, 0, bmp.width, bmp.height);
  }

  function b64Blob(b64) {
    const bin = atob(b64);
    const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    return new Blob([bytes], { type: "image/png" });
  }

  async function setMask(b64) {
    if (!b64) { layers.mask = null; draw(); return; }
    const src = (await pixelsOf(b64Blob(b64))).data;
    layers.mask = paint(view.width, view.height, (d) => {
      for (let i = 0; i < src.length; i += 4) {
        if (src[i] > 127) { d[i] = 40; d[i + 1] = 220; d[i + 2] = 255; d[i + 3] = 160; }
      }
    });
    draw();
  }

  async function setObjects(blob, hidden, selected) {
    const src = (await pixelsOf(blob)).data;
    const palette = new Map();
    layers.objects = paint(view.width, view.height, (d) => {
      for (let i = 0; i < src.length; i += 4) {
        const id = src[i] + 256 * src[i + 1];
        if (!id || hidden.has(id)) continue;
        if (!palette.has(id)) palette.set(id, colour(id));
        const [r, g, b] = palette.get(id);
        d[i] = r; d[i + 1] = g; d[i + 2] = b; d[i + 3] = id === selected ? 220 : 140;
      }
    });
    draw();
  }

  async function setProposals(rows, highlighted) {
    if (!rows || !rows.length) { layers.proposals = null; draw(); return; }
    const c = layer(view.width, view.height);
    const ctx = c.getContext("2d");
    for (const row of rows) {
      if (!row) continue;
      const src = await pixelsOf(b64Blob(row.mask));
      const [x0, y0] = row.box;
      const tile = ctx.createImageData(src.width, src.height);
      const on = row.index === highlighted ? [255, 255, 0, 200] : [255, 200, 0, 90];
      for (let i = 0; i < src.data.length; i += 4) {
        if (src.data[i] > 127) tile.data.set(on, i);
      }
      const t = layer(src.width, src.height);
      t.getContext("2d").putImageData(tile, 0, 0);
      ctx.drawImage(t, x0, y0);
    }
    layers.proposals = c;
    draw();
  }

  function setPrompt(next) { prompt = next; draw(); }

  function clearMask() { layers.mask = null; draw(); }

  window.addEventListener("resize", resize);
  return { view, resize, fit, toImage, zoomAt, pan, setImage, setMask, setObjects, setProposals,
           setPrompt, clearMask, draw, colour, overlay, viewport };
})();
