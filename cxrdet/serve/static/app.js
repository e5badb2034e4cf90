// cxrdet serve page: upload one image, draw the server's overlay layout, tables and downloads.
// Box and label positions come from the server (the layout of the overlay PNGs), so the page and
// `cxrdet infer --vis-dir` put every label in the same place; this file only draws them.
"use strict";

const CLASS_NAMES = ["Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Consolidation",
  "ILD", "Infiltration", "Lung Opacity", "Nodule/Mass", "Other lesion", "Pleural effusion",
  "Pleural thickening", "Pneumothorax", "Pulmonary fibrosis"];

const state = { result: null, image: null, heatmaps: new Map(), hidden: new Set(), tokenRequired: false };
const $ = (id) => document.getElementById(id);

function authHeaders() {
  const token = $("token").value || sessionStorage.getItem("cxrdet-token") || "";
  return token ? { Authorization: "Bearer " + token } : {};
}

function setStatus(text, kind) {
  const el = $("status");
  el.textContent = text;
  el.dataset.state = kind;
}

async function loadInfo() {
  const health = await (await fetch("/healthz")).json();
  state.tokenRequired = health.token_required;
  $("token-row").hidden = !health.token_required;
  $("min-score").value = health.min_score;
  $("min-score-value").textContent = Number(health.min_score).toFixed(2);
  const parts = [health.detectors + " detector(s)"];
  if (health.gate) parts.push("gate");
  if (health.classifier) parts.push("classifier");
  $("models").textContent = parts.join(" + ");
}

async function upload(file) {
  if (!file) return;
  const token = $("token").value;
  if (token) sessionStorage.setItem("cxrdet-token", token);
  setStatus("Predicting " + file.name + " ...", "busy");
  const form = new FormData();
  form.append("file", file);
  let response;
  try {
    response = await fetch("/v1/predict", { method: "POST", body: form, headers: authHeaders() });
  } catch (err) {
    setStatus("The server cannot be reached: " + err, "error");
    return;
  }
  const body = await response.json().catch(() => ({ detail: response.statusText }));
  if (!response.ok) {
    const retry = response.headers.get("Retry-After");
    setStatus("Refused (" + response.status + "): " + (body.detail || body.error) +
              (retry ? " Retry in " + retry + " s." : ""), "error");
    return;
  }
  const png = await fetch(body.display.image_url, { headers: authHeaders() });
  state.image = await createImageBitmap(await png.blob());
  state.heatmaps = new Map();
  for (const h of (body.classifier ? body.classifier.heatmaps : [])) {  // same picture size as the image
    const pic = await fetch(h.url, { headers: authHeaders() });
    if (pic.ok) state.heatmaps.set(h.class_index, await createImageBitmap(await pic.blob()));
  }
  state.result = body;
  state.hidden = new Set();
  showResult(body);
  setStatus("Done: " + body.findings.length + " finding(s) in " + Math.round(body.timings.total_ms) + " ms.", "done");
}

function showResult(r) {
  $("result").hidden = false;
  $("image-id").textContent = r.image_id;
  $("size").textContent = r.width + " x " + r.height + " px (original)";
  const gate = $("gate");
  gate.className = r.gate_zone ? "zone-" + r.gate_zone : "";
  gate.textContent = r.p_abnormal === null ? "No gate loaded: p(abnormal) unavailable."
    : "p(abnormal) = " + r.p_abnormal.toFixed(3) + ": " + r.gate_zone;
  $("prediction-string").textContent = r.prediction_string;
  $("timings").textContent = Object.entries(r.timings).map(([k, v]) => k + " " + Math.round(v)).join(", ");
  fillProbabilities(r.image_level.classes);
  fillClassToggles(r.display.items);
  $("classifier").hidden = !r.classifier;
  if (r.classifier) fillClassifier(r.classifier);
  $("download-sr").hidden = !(r.downloads && r.downloads.sr);  // hook: DICOM SR download
  draw();
}

function fillTable(tableId, rows) {
  // rows: [{name, p, data: {key: value}}] -> one "name | p" row each, data-* attributes set
  const body = $(tableId).querySelector("tbody");
  body.replaceChildren();
  for (const r of rows) {
    const row = body.insertRow();
    Object.assign(row.dataset, r.data);
    row.insertCell().textContent = r.name;
    const cell = row.insertCell();
    cell.className = "num";
    cell.textContent = r.p.toFixed(3);
  }
}

function fillProbabilities(classes) {
  fillTable("probs", classes.map((c) => ({ name: c.class_name, p: c.p, data: { classId: c.class_id } })));
}

function fillClassifier(c) {
  const sorted = [...c.classes].sort((a, b) => b.probability - a.probability);
  fillTable("clf-probs", sorted.map((k) => ({ name: k.class_name, p: k.probability, data: { classIndex: k.class_index } })));
  const select = $("heatmap-class");
  select.replaceChildren(...c.heatmaps.map((h) => {
    const option = document.createElement("option");
    option.value = String(h.class_index);
    option.textContent = h.class_name + " " + h.probability.toFixed(2);
    return option;
  }));
  $("heatmap-toggle").checked = false;
  $("heatmap-toggle").disabled = c.heatmaps.length === 0;
}

function baseImage() {
  // the heatmap picture of the chosen class when the overlay is on, else the display image
  if (!$("heatmap-toggle").checked) return state.image;
  return state.heatmaps.get(Number($("heatmap-class").value)) || state.image;
}

function fillClassToggles(items) {
  const box = $("classes");
  box.querySelectorAll("label").forEach((el) => el.remove());
  const present = [...new Set(items.map((i) => i.class_id))].sort((a, b) => a - b);
  for (const id of present) {
    const colour = items.find((i) => i.class_id === id).colour;
    const label = document.createElement("label");
    const input = document.createElement("input");
    input.type = "checkbox";
    input.checked = true;
    input.dataset.classId = id;
    input.addEventListener("change", () => {
      if (input.checked) state.hidden.delete(id); else state.hidden.add(id);
      draw();
    });
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = colour;
    label.append(input, swatch, CLASS_NAMES[id] || "class " + id);
    box.append(label);
  }
}

function visibleItems() {
  const min = Number($("min-score").value);
  return state.result.display.items.filter((i) => i.score >= min && !state.hidden.has(i.class_id));
}

function drawTag(ctx, text, rect, colour) {
  const [x0, y0, x1, y1] = rect;
  const w = x1 - x0, h = y1 - y0;
  ctx.fillStyle = colour;
  ctx.fillRect(x0, y0, w, h);
  let size = Math.max(6, h - 3);
  ctx.font = size + "px sans-serif";
  while (size > 6 && ctx.measureText(text).width > w - 2) {
    size -= 1;
    ctx.font = size + "px sans-serif";
  }
  ctx.fillStyle = isLight(colour) ? "#000" : "#fff";
  ctx.textBaseline = "middle";
  ctx.fillText(text, x0 + 1, y0 + h / 2);
}

function isLight(rgb) {
  const [r, g, b] = rgb.match(/\d+/g).map(Number);
  return r + g + b > 380;  // the overlay PNG's rule for black ink
}

function draw() {
  const r = state.result, d = r.display, canvas = $("view"), ctx = canvas.getContext("2d");
  canvas.width = d.width;
  canvas.height = d.height;
  ctx.imageSmoothingEnabled = true;
  const base = baseImage();
  ctx.drawImage(base, 0, 0, d.width, d.height);
  canvas.dataset.heatmap = base === state.image ? "" : $("heatmap-class").value;
  const items = visibleItems();
  const thick = Math.max(1, Math.round(Math.max(d.width, d.height) / 400));
  ctx.lineWidth = thick;
  for (const item of [...items].reverse()) {  // lowest score first: the most confident on top
    const [x0, y0, x1, y1] = item.box;
    ctx.strokeStyle = item.colour;
    ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
  }
  let labels = 0;
  for (const item of items) {
    if (!item.label) continue;
    const rect = item.label.rect;
    if (item.label.leader) {
      const [ax, ay] = item.label.leader;
      ctx.strokeStyle = item.colour;
      ctx.lineWidth = Math.max(1, Math.floor(thick / 2));
      ctx.beginPath();
      ctx.moveTo(Math.min(Math.max(ax, rect[0]), rect[2] - 1), Math.min(Math.max(ay, rect[1]), rect[3] - 1));
      ctx.lineTo(ax, ay);
      ctx.stroke();
      ctx.lineWidth = thick;
    }
    drawTag(ctx, item.text, rect, item.colour);
    labels += 1;
  }
  if (d.banner) drawTag(ctx, d.banner.text, d.banner.rect, "rgb(255,255,255)");
  canvas.dataset.boxesDrawn = String(items.length);
  canvas.dataset.labelsDrawn = String(labels);
  canvas.dataset.requestId = r.request_id;
}

function save(blob, name) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 1000);
}

async function downloadOverlay() {
  const r = state.result;
  const shown = [...new Set(r.display.items.map((i) => i.class_id))].filter((id) => !state.hidden.has(id));
  const params = new URLSearchParams({ min_score: $("min-score").value });
  if (state.hidden.size) params.set("classes", shown.join(","));
  const response = await fetch(r.downloads.overlay_png + "?" + params, { headers: authHeaders() });
  if (!response.ok) {
    setStatus("Overlay refused (" + response.status + "): the result may have expired; upload again.", "error");
    return;
  }
  save(await response.blob(), r.image_id + "_overlay.png");
}

async function downloadSR() {
  const r = state.result;
  const params = new URLSearchParams({ min_score: $("min-score").value });
  const response = await fetch(r.downloads.sr + "?" + params, { headers: authHeaders() });
  if (!response.ok) {
    const reason = (await response.json().catch(() => ({}))).detail || "the result may have expired; upload again";
    setStatus("DICOM SR refused (" + response.status + "): " + reason, "error");
    return;
  }
  save(await response.blob(), r.image_id + ".sr.dcm");
}

function init() {
  const drop = $("drop"), input = $("file");
  input.addEventListener("change", () => upload(input.files[0]));
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    upload(e.dataTransfer.files[0]);
  });
  $("min-score").addEventListener("input", () => {
    $("min-score-value").textContent = Number($("min-score").value).toFixed(2);
    if (state.result) draw();
  });
  $("download-json").addEventListener("click", () => {
    const r = state.result;
    save(new Blob([JSON.stringify(r, null, 2)], { type: "application/json" }), r.image_id + ".json");
  });
  $("download-overlay").addEventListener("click", downloadOverlay);
  $("download-sr").addEventListener("click", downloadSR);
  for (const id of ["heatmap-toggle", "heatmap-class"]) $(id).addEventListener("change", () => state.result && draw());
  $("token").value = sessionStorage.getItem("cxrdet-token") || "";
  loadInfo().catch((err) => setStatus("Cannot read /healthz: " + err, "error"));
}

document.addEventListener("DOMContentLoaded", init);
