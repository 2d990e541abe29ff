"use strict";

// Photos larger than this are scaled down in the browser before upload: quicker on phones.
const MAX_UPLOAD_SIDE = 2048;
const SLIDER_PAUSE_MS = 250;

const elements = {
  dropZone: document.getElementById("drop-zone"),
  photo: document.getElementById("photo"),
  camera: document.getElementById("camera"),
  years: document.getElementById("years"),
  yearsValue: document.getElementById("years-value"),
  keyForm: document.getElementById("key-form"),
  apiKey: document.getElementById("api-key"),
  status: document.getElementById("status"),
  before: document.getElementById("before"),
  beforeCaption: document.getElementById("before-caption"),
  after: document.getElementById("after"),
  afterCaption: document.getElementById("after-caption"),
  download: document.getElementById("download"),
};

const state = { upload: null, inFlight: null, pause: null };

function signed(years) {
  return years > 0 ? `+${years}` : `${years}`;
}

function showStatus(message, isError = false) {
  elements.status.textContent = message;
  elements.status.classList.toggle("error", isError);
}

async function scaledForUpload(file) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(file, { imageOrientation: "from-image" });
  } catch {
    return file; // a format this browser cannot decode (e.g. HEIC): the server reads it
  }
  const side = Math.max(bitmap.width, bitmap.height);
  if (side <= MAX_UPLOAD_SIDE) {
    bitmap.close();
    return file;
  }
  const scale = MAX_UPLOAD_SIDE / side;
  const canvas = document.createElement("canvas");
  canvas.width = Math.round(bitmap.width * scale);
  canvas.height = Math.round(bitmap.height * scale);
  canvas.getContext("2d").drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  bitmap.close();
  return new Promise((resolve) => canvas.toBlob((blob) => resolve(blob || file), "image/jpeg", 0.92));
}

async function choose(file) {
  if (!file) return;
  showStatus("Reading the photo…");
  state.upload = await scaledForUpload(file);
  if (elements.before.src.startsWith("blob:")) URL.revokeObjectURL(elements.before.src);
  elements.before.src = URL.createObjectURL(state.upload);
  elements.beforeCaption.textContent = "Before";
  elements.after.removeAttribute("src");
  elements.afterCaption.textContent = "After";
  elements.download.hidden = true;
  await age();
}

function authorization() {
  const key = sessionStorage.getItem("apiKey");
  return key ? { Authorization: `Bearer ${key}` } : {};
}

function describeAges(faces) {
  const pairs = faces.map((f) => `${Math.round(f.age_before)} → ${Math.round(f.age_after)}`);
  const noun = faces.length === 1 ? "Estimated age" : `${faces.length} faces, estimated ages`;
  return `${noun}: ${pairs.join(", ")}`;
}

async function age() {
  if (!state.upload) return;
  if (state.inFlight) state.inFlight.abort();
  const controller = new AbortController();
  state.inFlight = controller;
  const years = Number(elements.years.value);
  const form = new FormData();
  form.append("image", state.upload, "photo");
  form.append("years", String(years));
  form.append("output", "photo");
  form.append("format", "jpeg");
  showStatus(`Ageing by ${signed(years)} years…`);
  let response;
  try {
    response = await fetch("/v1/age", {
      method: "POST",
      body: form,
      headers: { Accept: "application/json", ...authorization() },
      signal: controller.signal,
    });
  } catch (error) {
    if (error.name !== "AbortError") showStatus("The service cannot be reached. Try again.", true);
    return;
  }
  const body = await response.json().catch(() => null);
  if (controller !== state.inFlight) return; // a newer request has replaced this one
  state.inFlight = null;
  if (!response.ok) {
    if (response.status === 401) elements.keyForm.hidden = false;
    showStatus(body?.error?.message || `The request failed (${response.status}).`, true);
    return;
  }
  const url = `data:${body.image.media_type};base64,${body.image.data}`;
  elements.after.src = url;
  elements.afterCaption.textContent = `After (${signed(years)} years)`;
  elements.beforeCaption.textContent = describeAges(body.faces);
  elements.download.href = url;
  elements.download.hidden = false;
  showStatus("");
}

elements.years.addEventListener("input", () => {
  elements.yearsValue.textContent = signed(Number(elements.years.value));
  clearTimeout(state.pause);
  state.pause = setTimeout(age, SLIDER_PAUSE_MS);
});

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

elements.before.addEventListener("error", () => {
  elements.before.removeAttribute("src");
  elements.beforeCaption.textContent = "Before (this browser cannot show this photo format)";
});

elements.keyForm.addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem("apiKey", elements.apiKey.value.trim());
  elements.keyForm.hidden = true;
  age();
});
