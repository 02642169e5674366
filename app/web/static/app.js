// The imgsim page: plain JavaScript against the public API, no build step, no dependencies.
// Every API error ends up in the #error box as text (never a blank page).
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  models: {},       // name -> GET /models entry (its card, calibration table included)
  model: null,      // the selected name
  pair: null,       // the last /verify answer, re-judged locally when the threshold moves
  profiles: [],     // GET /models/{model}/profiles
  galleries: [],    // GET /galleries
  gallery: null,    // the gallery picked in the Galleries tab
};

// ---- talking to the API --------------------------------------------------------------------

function readable(detail) {
  if (Array.isArray(detail)) {  // FastAPI's 422 list: "field: message"
    return detail.map((d) => `${(d.loc || []).slice(1).join(".") || "request"}: ${d.msg}`)
      .join("; ");
  }
  return typeof detail === "string" ? detail : JSON.stringify(detail);
}

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  const key = $("api-key").value.trim();
  if (key) headers.set("X-API-Key", key);
  let response;
  try {
    response = await fetch(path, { ...options, headers });
  } catch (e) {
    throw new Error(`Could not reach the server: ${e.message}`);
  }
  if (response.ok) {
    if (response.status === 204) return null;
    const type = response.headers.get("content-type") || "";
    return type.includes("json") ? response.json() : response.blob();
  }
  let detail = response.statusText || "error";
  try {
    detail = readable((await response.json()).detail);
  } catch (e) { /* not JSON: keep the status text */ }
  throw new Error(`${response.status}: ${detail}`);
}

function showError(error) {
  const box = $("error");
  box.textContent = error instanceof Error ? error.message : String(error);
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

// Runs an event handler, showing whatever goes wrong.
const guarded = (fn) => async (event) => {
  try {
    await fn(event);
  } catch (e) {
    showError(e);
  }
};
window.addEventListener("error", (e) => showError(e.message));
window.addEventListener("unhandledrejection", (e) => showError(e.reason));

const fmt = (x, digits = 4) => {
  if (!Number.isFinite(x)) return "-";
  return Number.isInteger(x) && Math.abs(x) >= 10 ? String(x) : x.toFixed(digits);
};
const pct = (x) => (Number.isFinite(x) ? `${(100 * x).toFixed(2)}%` : "-");

// ---- thresholds: the same rules as app/thresholds.py ---------------------------------------

function table() {
  const rows = state.models[state.model]?.calibration?.table || [];
  return [...rows].sort((a, b) => a.threshold - b.threshold);
}

// FAR and FRR at a threshold, interpolated in the validation table, clamped to its ends.
function ratesAt(t) {
  const rows = table();
  if (!rows.length) return [NaN, NaN];
  if (t <= rows[0].threshold) return [rows[0].false_accept_rate, rows[0].false_reject_rate];
  for (let i = 1; i < rows.length; i++) {
    const a = rows[i - 1], b = rows[i];
    if (t <= b.threshold) {
      const w = (t - a.threshold) / (b.threshold - a.threshold);
      return [
        a.false_accept_rate + w * (b.false_accept_rate - a.false_accept_rate),
        a.false_reject_rate + w * (b.false_reject_rate - a.false_reject_rate),
      ];
    }
  }
  const last = rows[rows.length - 1];
  return [last.false_accept_rate, last.false_reject_rate];
}

// The threshold whose validation FAR is `far`; never extrapolated (as the server does).
function thresholdForFar(far) {
  const points = [];  // [far, largest threshold with that far], far rising
  for (const row of table()) {
    const last = points[points.length - 1];
    if (last && row.false_accept_rate <= last[0]) last[1] = row.threshold;
    else points.push([row.false_accept_rate, row.threshold]);
  }
  const measured = points.filter(([f]) => f > 0);
  if (!measured.length) throw new Error("this model has no validation false-accept rates");
  const lowest = measured[0][0], highest = measured[measured.length - 1][0];
  if (!(far >= lowest)) {
    throw new Error(`far=${far} is below what the validation pairs can support; ` +
      `the smallest supported far is ${lowest}`);
  }
  if (far > highest) throw new Error(`far=${far} is above the largest supported far, ${highest}`);
  for (let i = 1; i < measured.length; i++) {
    const [f0, t0] = measured[i - 1], [f1, t1] = measured[i];
    if (f0 <= far && far <= f1) return far === f0 ? t0 : t0 + ((far - f0) / (f1 - f0)) * (t1 - t0);
  }
  return measured[measured.length - 1][1];
}

const mode = () => document.querySelector("input[name=mode]:checked").value;

function setMode(value) {
  document.querySelector(`input[name=mode][value=${value}]`).checked = true;
}

// {value, source} of the threshold control; throws what the server would answer with.
function chosenThreshold() {
  const card = state.models[state.model];
  switch (mode()) {
    case "request":
      return { value: Number($("threshold").value), source: "request" };
    case "far": {
      const far = Number($("far").value);
      if (!(far > 0 && far < 1)) throw new Error("far: a target false-accept rate in (0, 1)");
      return { value: thresholdForFar(far), source: "far" };
    }
    case "profile": {
      const profile = state.profiles.find((p) => p.name === $("profile-select").value);
      if (!profile) throw new Error("no profile chosen; make one in the Calibrate tab");
      if (!profile.applicable) {
        throw new Error(`profile '${profile.name}' was calibrated on version ` +
          `${profile.model_version}; this model is another version`);
      }
      return { value: profile.threshold, source: "profile" };
    }
    default:
      return { value: card.threshold, source: "model" };
  }
}

// The form fields that send the current choice to the API.
function thresholdFields(form) {
  switch (mode()) {
    case "request": form.append("threshold", $("threshold").value); break;
    case "far": form.append("far", $("far").value); break;
    case "profile": form.append("profile", $("profile-select").value); break;
    default: break;
  }
}

// ---- compare two images --------------------------------------------------------------------

function showVerdict(distance, similarity, threshold, source) {
  const same = distance <= threshold;
  const verdict = $("verdict");
  verdict.textContent = same ? "same" : "different";
  verdict.className = `verdict ${same ? "same" : "different"}`;
  $("distance").textContent = fmt(distance);
  $("similarity").textContent = pct(similarity);
  $("similarity-bar").style.width = `${Math.round(100 * similarity)}%`;
  $("threshold-used").textContent = `${fmt(threshold)} (${source})`;
  const [far, frr] = ratesAt(threshold);
  $("rates").textContent = `FAR ${pct(far)}, FRR ${pct(frr)} on validation pairs`;
  $("result").hidden = false;
}

// Re-judge the last pair at the control's threshold, locally: the distance does not change.
function rejudge() {
  $("threshold-out").textContent = fmt(Number($("threshold").value));
  let chosen;
  try {
    chosen = chosenThreshold();
  } catch (e) {
    $("control-rates").textContent = "";
    showError(e);
    return;
  }
  clearError();
  const [far, frr] = ratesAt(chosen.value);
  $("control-rates").textContent = `threshold ${fmt(chosen.value)} (${chosen.source}): ` +
    `FAR ${pct(far)}, FRR ${pct(frr)} on the model's validation pairs`;
  if (state.pair) showVerdict(state.pair.distance, state.pair.similarity, chosen.value, chosen.source);
}

async function compare(event) {
  event.preventDefault();
  const a = $("image-a").files[0], b = $("image-b").files[0];
  if (!a || !b) throw new Error("Pick or drop two images first.");
  const form = new FormData();
  form.append("image_a", a);
  form.append("image_b", b);
  form.append("model", state.model);
  thresholdFields(form);
  $("submit").disabled = true;
  try {
    const answer = await api("/verify", { method: "POST", body: form });
    clearError();
    state.pair = answer;
    showVerdict(answer.distance, answer.similarity, answer.threshold, answer.threshold_source);
  } finally {
    $("submit").disabled = false;
  }
}

function thumbnail(input, img) {
  const file = input.files[0];
  if (img.src) URL.revokeObjectURL(img.src);
  img.hidden = !file;
  if (file) {
    img.onerror = () => { img.hidden = true; };  // not previewable; the API will say why
    img.src = URL.createObjectURL(file);
  }
  state.pair = null;
  $("result").hidden = true;
}

function dropZone(zone, input, img) {
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    if (e.dataTransfer.files.length) {
      input.files = e.dataTransfer.files;
      thumbnail(input, img);
    }
  });
  input.addEventListener("change", () => thumbnail(input, img));
}

// ---- one query against many ----------------------------------------------------------------

async function rank(event) {
  event.preventDefault();
  const query = $("query").files[0], candidates = [...$("candidates").files];
  if (!query || !candidates.length) throw new Error("Pick a query image and some candidates.");
  const form = new FormData();
  form.append("query", query);
  for (const c of candidates) form.append("candidates", c);
  form.append("model", state.model);
  thresholdFields(form);
  const answer = await api("/similarity/one-to-many", { method: "POST", body: form });
  clearError();
  $("rank-summary").textContent =
    `threshold ${fmt(answer.threshold)} (${answer.threshold_source}); closest first`;
  const list = $("rank-results");
  list.replaceChildren();
  for (const r of answer.results) {
    const li = document.createElement("li");
    const img = document.createElement("img");
    img.src = URL.createObjectURL(candidates[r.index]);
    img.alt = candidates[r.index].name;
    li.append(img);
    li.append(r.error !== undefined
      ? `${candidates[r.index].name}: ${r.error}`
      : `${candidates[r.index].name}: ${r.same ? "same" : "different"}, distance ` +
        `${fmt(r.distance)}, similarity ${pct(r.similarity)}`);
    list.append(li);
  }
}

// ---- calibration and profiles --------------------------------------------------------------

async function calibrate(event) {
  event.preventDefault();
  const zip = $("pairs").files[0];
  if (!zip) throw new Error("Pick a zip of labelled pairs first.");
  const form = new FormData();
  form.append("pairs", zip);
  form.append("model", state.model);
  const name = $("profile-name").value.trim();
  if (name) form.append("profile", name);
  $("calibrate-submit").disabled = true;
  try {
    const c = await api("/calibrate", { method: "POST", body: form });
    clearError();
    $("roc").src = `data:image/png;base64,${c.roc_png}`;
    const rows = [
      ["pairs", c.pairs], ["ROC AUC", fmt(c.auc)], ["EER", pct(c.eer)],
      ["recommended threshold", `${fmt(c.threshold)} (best balanced accuracy)`],
      ["FAR / FRR there", `${pct(c.far)} / ${pct(c.frr)}`],
      ["saved as profile", c.profile || "(not saved: no name given)"],
    ];
    $("calibration-numbers").replaceChildren(...rows.flatMap(([k, v]) => {
      const dt = document.createElement("dt"), dd = document.createElement("dd");
      dt.textContent = k;
      dd.textContent = v;
      return [dt, dd];
    }));
    $("calibration").hidden = false;
    await loadProfiles();
  } finally {
    $("calibrate-submit").disabled = false;
  }
}

async function loadProfiles() {
  const answer = await api(`/models/${encodeURIComponent(state.model)}/profiles`);
  state.profiles = answer.profiles;
  const select = $("profile-select");
  const keep = select.value;
  select.replaceChildren(...state.profiles.map((p) => new Option(
    p.applicable ? p.name : `${p.name} (other version)`, p.name)));
  if (state.profiles.some((p) => p.name === keep)) select.value = keep;
  const list = $("profiles");
  list.replaceChildren();
  if (!state.profiles.length) list.append(Object.assign(document.createElement("li"),
    { textContent: "none yet" }));
  for (const p of state.profiles) {
    const li = document.createElement("li");
    li.textContent = `${p.name}: threshold ${fmt(p.threshold)}, FAR ${pct(p.far)}, ` +
      `FRR ${pct(p.frr)} on ${p.pairs} pairs` + (p.applicable ? "" : " (another model version)");
    const remove = document.createElement("button");
    remove.type = "button";
    remove.textContent = "delete";
    remove.addEventListener("click", guarded(async () => {
      await api(`/models/${encodeURIComponent(state.model)}/profiles/` +
        `${encodeURIComponent(p.name)}`, { method: "DELETE" });
      await loadProfiles();
    }));
    li.append(remove);
    list.append(li);
  }
}

// ---- the model page ------------------------------------------------------------------------

function fillTable(tableEl, entries) {
  tableEl.replaceChildren(...entries.map(([k, v]) => {
    const tr = document.createElement("tr");
    for (const text of [k, typeof v === "object" ? JSON.stringify(v) : String(v)]) {
      tr.append(Object.assign(document.createElement("td"), { textContent: text }));
    }
    return tr;
  }));
}

async function loadModelPage() {
  const name = state.model;
  const { card, plots } = await api(`/models/${encodeURIComponent(name)}/card`);
  $("model-title").textContent = `${card.name} (version ${card.version}, ${card.dataset}, ` +
    `${card.input.channels}x${card.input.height}x${card.input.width} -> ${card.embedding_dim}-d)`;
  const test = card.metrics.test || {};
  fillTable($("model-metrics"), [
    ["threshold", fmt(card.threshold)],
    ["P(same) at threshold", pct(similarityAt(card, card.threshold))],
    ...Object.entries(test).map(([k, v]) => [k, typeof v === "number" ? fmt(v) : v]),
  ]);
  fillTable($("model-training"), Object.entries(card.training));
  const holder = $("model-plots");
  holder.replaceChildren();
  for (const plot of plots) {
    const blob = await api(`/models/${encodeURIComponent(name)}/plots/${plot}`);
    const figure = document.createElement("figure");
    const img = Object.assign(document.createElement("img"),
      { src: URL.createObjectURL(blob), alt: plot });
    figure.append(img, Object.assign(document.createElement("figcaption"),
      { textContent: plot.replace(".png", "") }));
    holder.append(figure);
  }
}

function similarityAt(card, d) {
  const z = card.calibration.intercept + card.calibration.slope * d;
  return 1 / (1 + Math.exp(-z));
}

// ---- galleries: enroll, list, identify, verify ---------------------------------------------

const gpath = (gallery, ...rest) =>
  ["/galleries", gallery, ...rest].map((part, i) => (i ? encodeURIComponent(part) : part))
    .join("/");

// One line of a listing: "name: details [delete]"; the name picks the entry when onPick is given.
function item(name, details, onDelete, onPick) {
  const li = document.createElement("li");
  const label = document.createElement(onPick ? "button" : "span");
  label.textContent = name;
  if (onPick) {
    label.type = "button";
    label.className = "link";
    label.addEventListener("click", guarded(onPick));
  }
  const remove = Object.assign(document.createElement("button"),
    { type: "button", textContent: "delete" });
  remove.addEventListener("click", guarded(onDelete));
  li.append(label, `: ${details}`, remove);
  return li;
}

async function loadGalleries() {
  const { galleries } = await api("/galleries");
  state.galleries = galleries;
  const list = $("gallery-list");
  list.replaceChildren();
  if (!galleries.length) list.append(Object.assign(document.createElement("li"),
    { textContent: "none yet: enroll some images" }));
  for (const g of galleries) {
    list.append(item(g.gallery, `model ${g.model} version ${g.model_version}, ${g.subjects} ` +
      `subject(s), ${g.images} image(s)`, async () => {
      await api(gpath(g.gallery), { method: "DELETE" });
      if (state.gallery === g.gallery) state.gallery = null;
      await loadGalleries();
    }, () => pickGallery(g.gallery)));
  }
  const select = $("identify-gallery");
  const keep = state.gallery || select.value;
  select.replaceChildren(...galleries.map((g) => new Option(g.gallery, g.gallery)));
  if (galleries.some((g) => g.gallery === keep)) select.value = keep;
  await loadSubjects(select.value || null);
}

// The gallery named in the enroll form and chosen for identify, with its subjects listed.
async function pickGallery(name) {
  state.gallery = name;
  $("gallery-name").value = name;
  $("identify-gallery").value = name;
  const g = state.galleries.find((x) => x.gallery === name);
  if (g && state.models[g.model]) $("enroll-model").value = g.model;
  await loadSubjects(name);
}

async function loadSubjects(gallery) {
  const list = $("subject-list"), select = $("verify-subject");
  list.replaceChildren();
  select.replaceChildren();
  $("subjects-of").textContent = gallery || "(pick a gallery)";
  if (!gallery) return;
  const { subjects } = await api(gpath(gallery, "subjects"));
  for (const s of subjects) {
    list.append(item(s.subject, `${s.images} image(s)`, async () => {
      await api(gpath(gallery, "subjects", s.subject), { method: "DELETE" });
      await loadGalleries();
    }));
  }
  select.replaceChildren(...subjects.map((s) => new Option(s.subject, s.subject)));
}

async function enroll(event) {
  event.preventDefault();
  const gallery = $("gallery-name").value.trim(), subject = $("subject-name").value.trim();
  const images = [...$("enroll-images").files];
  if (!gallery || !subject) throw new Error("Name the gallery and the subject.");
  if (!images.length) throw new Error("Pick one or more images to enroll.");
  const form = new FormData();
  for (const image of images) form.append("images", image);
  form.append("model", $("enroll-model").value);
  form.append("keep_images", $("keep-images").checked ? "true" : "false");
  $("enroll-submit").disabled = true;
  $("enrolled").textContent = "";  // a failed call must not leave the last success on show
  try {
    const a = await api(gpath(gallery, "subjects", subject, "images"),
      { method: "POST", body: form });
    clearError();
    $("enrolled").textContent = `Enrolled ${a.image_ids.length} image(s) of '${a.subject}' in ` +
      `'${a.gallery}' (model ${a.model} version ${a.model_version}): ` +
      `ids ${a.image_ids.join(", ")}; the subject now has ${a.images}.`;
    state.gallery = a.gallery;
    await loadGalleries();
  } finally {
    $("enroll-submit").disabled = false;
  }
}

// The image and threshold fields shared by identify and verify.
function galleryQuery() {
  const gallery = $("identify-gallery").value, image = $("identify-image").files[0];
  if (!gallery) throw new Error("No gallery yet: enroll some images first.");
  if (!image) throw new Error("Pick an image to identify.");
  const form = new FormData();
  form.append("image", image);
  const threshold = $("identify-threshold").value.trim(), far = $("identify-far").value.trim();
  if (threshold) form.append("threshold", threshold);
  if (far) form.append("far", far);  // both given: the API's 422 says to pick one
  return { gallery, form };
}

async function identify(event) {
  event.preventDefault();
  const { gallery, form } = galleryQuery();
  $("identify-submit").disabled = true;
  try {
    const a = await api(gpath(gallery, "identify"), { method: "POST", body: form });
    clearError();
    const match = $("match");
    // Open set: nothing within the threshold is "no match", not the nearest subject.
    match.textContent = a.match ? a.match.subject : "no match";
    match.className = `verdict ${a.match ? "same" : "different"}`;
    $("identify-summary").textContent = `threshold ${fmt(a.threshold)} (${a.threshold_source}), ` +
      `model ${a.model} version ${a.model_version}; nearest subject first`;
    $("identify-candidates").replaceChildren(...a.candidates.map((c) => Object.assign(
      document.createElement("li"), { textContent: `${c.subject}: distance ${fmt(c.distance)}, ` +
        `similarity ${pct(c.similarity)} (nearest image ${c.image_id})` })));
    $("identified").hidden = false;
  } finally {
    $("identify-submit").disabled = false;
  }
}

async function verifyInGallery(event) {
  event.preventDefault();
  const { gallery, form } = galleryQuery();
  const subject = $("verify-subject").value;
  if (!subject) throw new Error("This gallery has no subject to verify against.");
  form.append("subject", subject);
  const a = await api(gpath(gallery, "verify"), { method: "POST", body: form });
  clearError();
  const verdict = $("gallery-verdict");
  verdict.textContent = `${a.same ? "same" : "different"}: '${a.subject}' at distance ` +
    `${fmt(a.distance)} (similarity ${pct(a.similarity)}, threshold ${fmt(a.threshold)} ` +
    `${a.threshold_source})`;
  verdict.className = `verdict ${a.same ? "same" : "different"}`;
}

// ---- models and start-up -------------------------------------------------------------------

async function selectModel(name) {
  state.model = name;
  state.pair = null;
  $("result").hidden = true;
  const card = state.models[name];
  const rows = table();
  const top = Math.max(card.threshold * 1.5, rows.length ? rows[rows.length - 1].threshold : 0);
  const slider = $("threshold");
  slider.max = top.toFixed(3);
  slider.step = "any";  // a snapped step would show a value the model does not use
  slider.value = card.threshold;
  $("threshold-out").textContent = fmt(card.threshold);
  $("model-summary").textContent = `version ${card.version}, threshold ${fmt(card.threshold)}`;
  setMode("model");
  rejudge();
  await loadProfiles();
  await loadModelPage();
}

async function loadModels() {
  const answer = await api("/models");
  state.models = Object.fromEntries(answer.models.map((m) => [m.name, m]));
  const select = $("model-select");
  select.replaceChildren(...answer.models.map((m) => new Option(m.name, m.name)));
  if (!answer.models.length) throw new Error("The server has no model loaded.");
  select.value = answer.default && state.models[answer.default] ? answer.default
    : answer.models[0].name;
  $("enroll-model").replaceChildren(...answer.models.map((m) => new Option(m.name, m.name)));
  $("enroll-model").value = select.value;
  clearError();
  await selectModel(select.value);
}

function showTab(name) {
  for (const button of document.querySelectorAll("nav button")) {
    button.classList.toggle("active", button.dataset.tab === name);
  }
  for (const panel of document.querySelectorAll("main > .panel")) panel.hidden = panel.id !== name;
  // Loaded when opened, not at start: a server whose gallery store is down then only
  // complains in this tab, and the lists are fresh after work in another tab or client.
  if (name === "galleries") guarded(loadGalleries)();
}

document.addEventListener("DOMContentLoaded", () => {
  for (const button of document.querySelectorAll("nav button")) {
    button.addEventListener("click", () => showTab(button.dataset.tab));
  }
  dropZone($("drop-a"), $("image-a"), $("thumb-a"));
  dropZone($("drop-b"), $("image-b"), $("thumb-b"));
  $("compare-form").addEventListener("submit", guarded(compare));
  $("rank-form").addEventListener("submit", guarded(rank));
  $("calibrate-form").addEventListener("submit", guarded(calibrate));
  $("enroll-form").addEventListener("submit", guarded(enroll));
  $("identify-form").addEventListener("submit", guarded(identify));
  $("gallery-verify-form").addEventListener("submit", guarded(verifyInGallery));
  $("identify-gallery").addEventListener("change", guarded((e) => pickGallery(e.target.value)));
  $("model-select").addEventListener("change", guarded((e) => selectModel(e.target.value)));
  $("threshold").addEventListener("input", () => { setMode("request"); rejudge(); });
  $("far").addEventListener("input", () => { setMode("far"); rejudge(); });
  $("profile-select").addEventListener("change", () => { setMode("profile"); rejudge(); });
  for (const radio of document.querySelectorAll("input[name=mode]")) {
    radio.addEventListener("change", rejudge);
  }
  const key = $("api-key");
  key.value = sessionStorage.getItem("imgsim-api-key") || "";
  key.addEventListener("change", guarded(() => {
    sessionStorage.setItem("imgsim-api-key", key.value.trim());
    return loadModels();
  }));
  guarded(loadModels)();
});
