"use strict";

// Photos larger than this are scaled down in the browser before upload: quicker on phones.
const MAX_UPLOAD_SIDE = 2048;
const SLIDER_PAUSE_MS = 250;
// a close-up shows this many times the detected face box, so that hair, chin and ears are in it
const CLOSEUP_MARGIN = 1.6;
const CLOSEUP_MAX_SIDE = 640;
const SERIES_STEPS = 6;

const $ = (id) => document.getElementById(id);
const elements = {
  dropZone: $("drop-zone"),
  chooseLabel: $("choose-label"),
  photo: $("photo"),
  camera: $("camera"),
  result: $("result"),
  showCloseups: $("show-closeups"),
  showWhole: $("show-whole"),
  closeups: $("closeups"),
  whole: $("whole"),
  download: $("download"),
  seriesButton: $("series-button"),
  series: $("series"),
  seriesRow: $("series-row"),
  controls: $("controls"),
  years: $("years"),
  yearsValue: $("years-value"),
  scaleLow: $("scale-low"),
  scaleMid: $("scale-mid"),
  scaleHigh: $("scale-high"),
  clampNote: $("clamp-note"),
  keyForm: $("key-form"),
  apiKey: $("api-key"),
  status: $("status"),
  statusText: $("status-text"),
};

const state = {
  file: null, // the photo as chosen
  upload: null, // the blob sent to the service
  name: "photo", // the chosen file's name without its suffix, for downloads
  original: null, // the upload as an upright ImageBitmap, decoded here or by the service
  faces: [], // usable faces from /v1/faces, largest first
  ageRange: [1, 90], // replaced by the model's own range from /v1/model
  mode: "years",
  values: { years: 20, target: null },
  split: 50, // where the before/after divider stands, percent from the left
  view: "closeups",
  inFlight: null,
  pause: null,
  scrollPending: false,
  objectUrls: [],
};

function signed(years) {
  return years > 0 ? `+${years}` : `${years}`;
}

function plural(count, word) {
  return count === 1 ? word : `${word}s`;
}

function showStatus(message, { error = false, working = false } = {}) {
  elements.statusText.textContent = message;
  elements.status.classList.toggle("error", error);
  elements.status.classList.toggle("working", working);
  elements.result.classList.toggle("working", working);
}

function authorization() {
  const key = sessionStorage.getItem("apiKey");
  return key ? { Authorization: `Bearer ${key}` } : {};
}

// Calls the service; resolves to { response, body }, or null when the call was replaced or cannot be made.
async function callService(path, form, controller) {
  let response;
  try {
    response = await fetch(path, {
      method: form ? "POST" : "GET",
      body: form,
      headers: { Accept: "application/json", ...authorization() },
      signal: controller?.signal,
    });
  } catch (error) {
    if (error.name !== "AbortError") {
      showStatus("The service cannot be reached. Check the connection, then try again.", { error: true });
    }
    return null;
  }
  const body = await response.json().catch(() => null);
  if (controller && controller !== state.inFlight) return null; // a newer request has replaced this one
  if (!response.ok) {
    if (response.status === 401) elements.keyForm.hidden = false;
    showStatus(body?.error?.message || `The service answered with an error (${response.status}). Try again.`,
      { error: true });
    return null;
  }
  return { response, body };
}

function startRequest() {
  if (state.inFlight) state.inFlight.abort();
  state.inFlight = new AbortController();
  return state.inFlight;
}

function photoForm(fields) {
  const form = new FormData();
  form.append("image", state.upload, "photo");
  for (const [name, value] of Object.entries(fields)) form.append(name, String(value));
  return form;
}

// --- the photo ---

async function decodeInBrowser(file) {
  try {
    return await createImageBitmap(file, { imageOrientation: "from-image" });
  } catch {
    return null; // a format this browser cannot show (e.g. HEIC): the service reads it, and says if it cannot
  }
}

async function scaledForUpload(file, bitmap) {
  const side = Math.max(bitmap.width, bitmap.height);
  if (side <= MAX_UPLOAD_SIDE) return { upload: file, original: bitmap };
  const scale = MAX_UPLOAD_SIDE / side;
  const canvas = document.createElement("canvas");
  canvas.width = Math.round(bitmap.width * scale);
  canvas.height = Math.round(bitmap.height * scale);
  canvas.getContext("2d").drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  bitmap.close();
  const upload = await new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", 0.92));
  return { upload, original: await createImageBitmap(canvas) };
}

function base64Blob(image) {
  const bytes = Uint8Array.from(atob(image.data), (c) => c.charCodeAt(0));
  return new Blob([bytes], { type: image.media_type });
}

async function choose(file) {
  if (!file) return;
  state.file = file;
  const controller = startRequest();
  state.name = (file.name || "photo").replace(/\.[^.]*$/, "") || "photo";
  state.faces = [];
  state.scrollPending = true;
  elements.result.hidden = true;
  elements.series.hidden = true;
  elements.clampNote.hidden = true;
  showStatus("Reading the photo…", { working: true });
  const bitmap = await decodeInBrowser(file);
  if (state.original) state.original.close();
  ({ upload: state.upload, original: state.original } = bitmap ? await scaledForUpload(file, bitmap)
    : { upload: file, original: null });
  if (controller !== state.inFlight) return;
  document.body.classList.add("has-photo");
  elements.chooseLabel.textContent = "Another photo";
  showStatus("Finding the faces…", { working: true });
  const found = await callService("/v1/faces", photoForm({ faces: "all" }), controller);
  if (!found) return;
  state.faces = found.body.faces.filter((face) => !face.too_small && face.age !== null);
  fitAgeControl();
  await age();
}

// --- the age control ---

function currentAge() {
  return state.faces.length ? state.faces[0].age : null;
}

function yearsRange() {
  const age = currentAge();
  if (age === null) return [-40, 50];
  const [low, high] = state.ageRange;
  return [Math.max(-100, Math.ceil(low - age)), Math.min(100, Math.floor(high - age))];
}

function fitAgeControl() {
  const [low, high] = state.mode === "years" ? yearsRange() : state.ageRange.map(Math.round);
  const age = currentAge();
  let value = state.values[state.mode];
  if (value === null) value = Math.round((age ?? 35) + 20);
  value = Math.min(high, Math.max(low, value));
  state.values[state.mode] = value;
  Object.assign(elements.years, { min: low, max: high });
  elements.years.value = String(value);
  const years = state.mode === "years";
  elements.scaleLow.textContent = years ? signed(low) : String(low);
  elements.scaleMid.textContent = years ? "0" : "";
  elements.scaleHigh.textContent = years ? signed(high) : String(high);
  describeControl();
}

function currentEdit() {
  return { mode: state.mode, value: Number(elements.years.value) };
}

function describeControl() {
  const { mode, value } = currentEdit();
  const age = currentAge();
  const who = state.faces.length > 1 ? "largest face" : "about";
  if (mode === "years") {
    const to = age === null ? "" : ` · ${who} ${Math.round(age)} → ${Math.round(age + value)}`;
    elements.yearsValue.textContent = `${signed(value)} ${plural(Math.abs(value), "year")}${to}`;
  } else {
    const by = age === null ? "" : ` · ${who} ${Math.round(age)} → ${value}`;
    elements.yearsValue.textContent = `To age ${value}${by}`;
  }
}

function workingMessage({ mode, value }, count) {
  const faces = count > 1 ? "the faces" : "the face";
  if (mode === "target") return `Taking ${faces} to age ${value}…`;
  if (value === 0) return "Showing the photo unchanged…";
  return `Making ${faces} ${Math.abs(value)} ${plural(Math.abs(value), "year")} ${value > 0 ? "older" : "younger"}…`;
}

function editName({ mode, value }) {
  if (mode === "target") return `age-${value}`;
  if (value === 0) return "unchanged";
  return `${Math.abs(value)}-${plural(Math.abs(value), "year")}-${value > 0 ? "older" : "younger"}`;
}

// --- the edit and its result ---

async function age() {
  if (!state.upload) return;
  const controller = startRequest();
  const edit = currentEdit();
  const fields = edit.mode === "years" ? { years: edit.value } : { target_age: edit.value };
  showStatus(workingMessage(edit, Math.max(1, state.faces.length)), { working: true });
  const answer = await callService("/v1/age", photoForm({ ...fields, output: "photo", format: "jpeg" }),
    controller);
  if (!answer) return;
  if (!state.original) {
    // the browser could not show the upload itself: the service's unchanged copy stands in for it
    const unchanged = await callService("/v1/age", photoForm({ years: 0, output: "photo", format: "jpeg" }),
      controller);
    if (!unchanged) return;
    state.original = await createImageBitmap(base64Blob(unchanged.body.image));
  }
  const resultBlob = base64Blob(answer.body.image);
  const edited = await createImageBitmap(resultBlob);
  if (controller !== state.inFlight) return;
  state.inFlight = null;
  render(answer.body, edited, resultBlob, edit);
  showStatus("");
}

function cropSquare(box, width, height) {
  const [x1, y1, x2, y2] = box;
  const side = Math.min(width, height, Math.max(x2 - x1, y2 - y1) * CLOSEUP_MARGIN);
  const clamp = (start, size) => Math.min(Math.max(0, start), size - side);
  return { x: clamp((x1 + x2 - side) / 2, width), y: clamp((y1 + y2 - side) / 2, height), side };
}

function drawn(bitmap, region, width, height) {
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  const context = canvas.getContext("2d");
  context.imageSmoothingQuality = "high";
  context.drawImage(bitmap, region.x, region.y, region.width, region.height, 0, 0, width, height);
  return canvas;
}

function compareView(before, after, caption) {
  const figure = document.createElement("figure");
  figure.className = "compare-figure";
  figure.style.setProperty("--aspect", String(before.width / before.height));
  const frame = document.createElement("div");
  frame.className = "compare";
  frame.style.setProperty("--split", `${state.split}%`);
  before.classList.add("before");
  after.classList.add("after");
  const tags = ["Before", "After"].map((text) => {
    const tag = document.createElement("span");
    tag.className = `tag ${text.toLowerCase()}-tag`;
    tag.textContent = text;
    return tag;
  });
  const split = document.createElement("input");
  Object.assign(split, { type: "range", min: 0, max: 100, step: 1, value: state.split, className: "split" });
  split.setAttribute("aria-label", `${caption}: before on the left of the divider, after on the right`);
  split.addEventListener("input", () => {
    state.split = Number(split.value);
    for (const other of document.querySelectorAll(".compare")) other.style.setProperty("--split", `${state.split}%`);
    for (const other of document.querySelectorAll(".compare .split")) if (other !== split) other.value = split.value;
  });
  frame.append(before, after, ...tags, split);
  const text = document.createElement("figcaption");
  text.textContent = caption;
  figure.append(frame, text);
  return figure;
}

function faceCaption(face, index, count) {
  const name = count > 1 ? `Face ${index + 1}` : "The face";
  return `${name}: estimated age ${Math.round(face.age_before)} → ${Math.round(face.age_after)}`;
}

function clampNote(faces, edit) {
  const [low, high] = state.ageRange;
  const wanted = (face) => (edit.mode === "years" ? face.age_before + edit.value : edit.value);
  // the service says which targets it clamped; an older answer without `clamped` is judged by its ages
  const isClamped = (face) => (face.clamped !== undefined ? face.clamped
    : Math.abs(wanted(face) - face.age_after) >= 0.5);
  const clamped = faces.map((face, index) => ({ face, index })).filter(({ face }) => isClamped(face));
  if (!clamped.length) return "";
  const names = clamped.map(({ index }) => (faces.length > 1 ? `face ${index + 1}` : "the face"));
  const limit = wanted(clamped[0].face) > high ? `the oldest age the model knows, ${high}`
    : `the youngest age the model knows, ${low}`;
  const who = names.join(" and ");
  return `${who.charAt(0).toUpperCase()}${who.slice(1)} stopped at ${limit}.`;
}

// faces the likelihood guard scaled back: the edit went only part of the way, to keep a real-looking face
function strengthNote(faces) {
  const scaled = faces.map((face, index) => ({ face, index }))
    .filter(({ face }) => face.strength !== undefined && face.strength < 0.995);
  if (!scaled.length) return "";
  const parts = scaled.map(({ face, index }) => {
    const name = faces.length > 1 ? `face ${index + 1}` : "the face";
    return `${name} ${Math.round(100 * face.strength)} % of the way, to ${Math.round(face.age_after)}`;
  });
  const text = parts.join(" and ");
  return `Aged ${text}: further, it would no longer look like a real face.`;
}

// faces the service found and did not edit (too small, or past its limit per photo), with its reasons
function skippedNote(skipped = []) {
  if (!skipped.length) return "";
  const reasons = [...new Set(skipped.map((face) => face.explanation))].join("; ");
  const were = skipped.length === 1 ? "was" : "were";
  return `${skipped.length} more ${plural(skipped.length, "face")} ${were} not edited: ${reasons}.`;
}

function render({ faces, skipped }, edited, resultBlob, edit) {
  const { width, height } = state.original;
  elements.closeups.replaceChildren(...faces.map((face, index) => {
    const square = cropSquare(face.box, width, height);
    const region = { x: square.x, y: square.y, width: square.side, height: square.side };
    const side = Math.round(Math.min(CLOSEUP_MAX_SIDE, Math.max(256, square.side)));
    return compareView(drawn(state.original, region, side, side), drawn(edited, region, side, side),
      faceCaption(face, index, faces.length));
  }));
  const whole = { x: 0, y: 0, width, height };
  elements.whole.replaceChildren(compareView(drawn(state.original, whole, width, height),
    drawn(edited, whole, width, height), `The whole photo, ${faces.length} ${plural(faces.length, "face")} edited`));
  edited.close();

  const note = [clampNote(faces, edit), strengthNote(faces), skippedNote(skipped)].filter(Boolean).join(" ");
  elements.clampNote.textContent = note;
  elements.clampNote.hidden = !note;

  for (const url of state.objectUrls.splice(0)) URL.revokeObjectURL(url);
  const url = URL.createObjectURL(resultBlob);
  state.objectUrls.push(url);
  elements.download.href = url;
  elements.download.download = `${state.name}-${editName(edit)}.jpg`;
  elements.download.textContent = `Download (${editName(edit).replaceAll("-", " ")})`;
  elements.download.hidden = false;
  elements.result.hidden = false;
  showView(state.view);
  if (state.scrollPending) {
    state.scrollPending = false;
    bringResultIntoView();
  }
}

// On a phone the result arrives below the fold: scroll it up to where it and the age control both show.
function bringResultIntoView() {
  const result = elements.result.getBoundingClientRect();
  const first = elements.result.querySelector(state.view === "whole" ? "#whole .compare" : ".compare");
  const controls = elements.controls.getBoundingClientRect();
  const stacked = controls.left < result.right - 1; // the control is under the result, not beside it
  const visibleBottom = stacked ? Math.min(window.innerHeight, controls.top) : window.innerHeight;
  if (result.top >= 0 && first.getBoundingClientRect().bottom <= visibleBottom) return;
  const smooth = !window.matchMedia("(prefers-reduced-motion: reduce)").matches;
  window.scrollBy({ top: result.top - 8, behavior: smooth ? "smooth" : "auto" });
}

function showView(view) {
  state.view = view;
  elements.closeups.hidden = view !== "closeups";
  elements.whole.hidden = view !== "whole";
  elements.showCloseups.setAttribute("aria-pressed", String(view === "closeups"));
  elements.showWhole.setAttribute("aria-pressed", String(view === "whole"));
}

// --- the series ---

function seriesAges() {
  const [low, high] = state.ageRange;
  const start = Math.ceil(low / 5) * 5;
  const end = Math.floor(high / 5) * 5;
  const step = (end - start) / (SERIES_STEPS - 1);
  return [...new Set(Array.from({ length: SERIES_STEPS }, (_, i) => Math.round((start + step * i) / 5) * 5))];
}

async function showSeries() {
  if (!state.upload) return;
  const controller = startRequest();
  const ages = seriesAges();
  showStatus(`Making the series, ages ${ages[0]} to ${ages[ages.length - 1]}…`, { working: true });
  const answer = await callService("/v1/age/series",
    photoForm({ ages: ages.join(","), output: "face", format: "jpeg" }), controller);
  if (!answer) return;
  state.inFlight = null;
  elements.seriesRow.replaceChildren(...answer.body.steps.map((step) => {
    const figure = document.createElement("figure");
    const image = document.createElement("img");
    const url = URL.createObjectURL(base64Blob(step.image));
    state.objectUrls.push(url);
    image.src = url;
    image.alt = `The faces at age ${step.target_age}`;
    const label = document.createElement("figcaption");
    label.textContent = `Age ${Math.round(step.target_age)}`;
    figure.append(image, label);
    return figure;
  }));
  elements.series.hidden = false;
  showStatus("");
  elements.series.scrollIntoView({ block: "nearest" });
}

// --- wiring ---

async function loadModelInfo() {
  const answer = await fetch("/v1/model", { headers: { Accept: "application/json", ...authorization() } })
    .then((response) => (response.ok ? response.json() : null)).catch(() => null);
  if (answer?.age_range?.length === 2) state.ageRange = answer.age_range;
  fitAgeControl();
}

elements.years.addEventListener("input", () => {
  state.values[state.mode] = Number(elements.years.value);
  describeControl();
  clearTimeout(state.pause);
  state.pause = setTimeout(age, SLIDER_PAUSE_MS);
});

for (const radio of document.querySelectorAll('input[name="mode"]')) {
  radio.addEventListener("change", () => {
    state.mode = radio.value;
    fitAgeControl();
    clearTimeout(state.pause);
    state.pause = setTimeout(age, SLIDER_PAUSE_MS);
  });
}

for (const input of [elements.photo, elements.camera]) {
  input.addEventListener("change", () => choose(input.files[0]));
}

elements.dropZone.addEventListener("dragover", (event) => {
  event.preventDefault();
  elements.dropZone.classList.add("dragging");
});
elements.dropZone.addEventListener("dragleave", () => elements.dropZone.classList.remove("dragging"));
elements.dropZone.addEventListener("drop", (event) => {
  event.preventDefault();
  elements.dropZone.classList.remove("dragging");
  choose(event.dataTransfer.files[0]);
});

elements.showCloseups.addEventListener("click", () => showView("closeups"));
elements.showWhole.addEventListener("click", () => showView("whole"));
elements.seriesButton.addEventListener("click", showSeries);

elements.keyForm.addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem("apiKey", elements.apiKey.value.trim());
  elements.keyForm.hidden = true;
  loadModelInfo();
  if (state.file) choose(state.file);
});

loadModelInfo();
