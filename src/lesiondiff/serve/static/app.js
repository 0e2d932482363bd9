// The page of `lesiondiff serve`: choose or drop an image, queue a job through the JSON API (app.py), poll it
// for progress, then show and offer its files. No library and nothing from outside the machine.
"use strict";

const $ = (id) => document.getElementById(id);
const POLL_MS = 300;
const IMAGES = { overlay: "overlay", mask: "mask", maps: "maps", samples: "sample-masks" };
let models = {};
let maxUpload = Infinity;
let chosen = null; // the File to upload: from the file input or a drop

async function readJson(response) {
  try {
    return await response.json();
  } catch {
    return {};
  }
}

function detail(body, response) {
  const d = body.detail;
  if (typeof d === "string") return d;
  return `the server refused the request (HTTP ${response.status})`;
}

async function loadModels() {
  const response = await fetch("/api/models");
  const body = await readJson(response);
  maxUpload = body.max_upload_bytes || Infinity;
  for (const m of body.models || []) {
    models[m.name] = m;
    const option = new Option(`${m.name} (${m.source === "run" ? "--run" : "shipped"}, ${m.defaults.preset})`, m.name);
    $("model").add(option);
  }
  $("model").value = body.default;
  applyDefaults();
}

function applyDefaults() {
  const m = models[$("model").value];
  if (!m) return;
  const d = m.defaults;
  $("samples").value = d.samples;
  $("steps").value = d.steps;
  $("seed").value = d.seed;
  $("steps").disabled = d.feedforward;
  $("model-note").textContent = `${d.sampler} sampler; masks at threshold ${d.threshold}` +
    (d.feedforward ? "; a feed-forward run: one network evaluation per sample, steps do not apply" : "");
}

function choose(file) {
  chosen = file || null;
  $("drop-text").textContent = chosen ? `${chosen.name} (${(chosen.size / 1024).toFixed(0)} kB)` :
    "Drop an image here, or click to choose one";
}

function showMessage(text) {
  $("message").textContent = text;
  $("message").hidden = !text;
}

function showProgress(done, total, text) {
  $("progress-box").hidden = false;
  $("progress").max = Math.max(total, 1);
  $("progress").value = done;
  $("status").textContent = text;
}

function fail(text) {
  $("progress-box").hidden = true;
  $("run").disabled = false;
  showMessage(text);
}

function describe(job) {
  const p = job.progress;
  if (job.status === "queued") return job.ahead ? `queued (${job.ahead} job(s) ahead)` : "queued";
  if (job.stage === "sampling") return `sampling: ${p.done} of ${p.total} network evaluations`;
  return job.stage;
}

async function submit(event) {
  event.preventDefault();
  if (!chosen) return fail("Choose or drop an image first.");
  if (chosen.size > maxUpload) {
    return fail(`${chosen.name} is ${(chosen.size / 2 ** 20).toFixed(1)} MB; uploads are limited to ` +
      `${Number((maxUpload / 2 ** 20).toPrecision(3))} MB.`);
  }
  showMessage("");
  $("results").hidden = true;
  $("run").disabled = true;
  const form = new FormData();
  form.append("file", chosen, chosen.name);
  for (const key of ["model", "samples", "steps", "seed"]) form.append(key, $(key).value);
  showProgress(0, 1, "uploading");
  let response;
  try {
    response = await fetch("/api/jobs", { method: "POST", body: form });
  } catch (err) {
    return fail(`The server did not answer (${err}).`);
  }
  const body = await readJson(response);
  if (!response.ok) return fail(detail(body, response));
  poll(body.id);
}

async function poll(id) {
  let response;
  try {
    response = await fetch(`/api/jobs/${id}`);
  } catch (err) {
    return fail(`The server did not answer (${err}).`);
  }
  const job = await readJson(response);
  if (!response.ok) return fail(detail(job, response));
  if (job.status === "error") return fail(`The job failed: ${job.error}`);
  showProgress(job.progress.done, job.progress.total, describe(job));
  if (job.status === "done") return showResults(job);
  setTimeout(() => poll(id), POLL_MS);
}

const SCORE_WORDS = {
  agreement: "the members' agreement (mean pairwise Dice)",
  lesion_fraction: "share of members finding a lesion",
  entropy: "mean entropy (bits)",
  band_entropy: "entropy over the uncertain band (bits)",
};

function trustText(trust) {
  const scores = Object.entries(trust.scores || {})
    .map(([name, value]) => `${SCORE_WORDS[name] || name} ${value.toFixed(3)}`).join("; ");
  if (!trust.review) return `${scores}. The run is not calibrated for these settings: no accept / review mark.`;
  const verdict = trust.review === "accept" ? "ACCEPT" : "REVIEW";
  return `${verdict}: ${scores}. Calibrated on ${trust.score}: the images accepted have a mean Dice of at least ` +
    `${trust.target_dice} with probability ${1 - trust.delta}.`;
}

function showResults(job) {
  $("run").disabled = false;
  $("trust").textContent = trustText(job.trust || {});
  $("trust").className = `trust ${job.trust && job.trust.review ? job.trust.review : ""}`;
  $("result-title").textContent =
    `${job.image} — ${job.model}, S = ${job.samples}, ${job.steps} steps, seed ${job.seed}`;
  $("samples-caption").textContent = `Every sample's mask (S = ${job.samples}, at the run's threshold)`;
  for (const [kind, id] of Object.entries(IMAGES)) $(id).src = job.files[kind];
  for (const kind of ["mask", "overlay", "maps", "samples", "probs"]) {
    const link = $(`download-${kind}`);
    link.href = job.files[kind];
    link.setAttribute("download", `${job.image_id}_${kind}.${kind === "probs" ? "npz" : "png"}`);
  }
  $("results").hidden = false;
}

function setUpDrop() {
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    choose(e.dataTransfer.files[0]);
  });
}

$("file").addEventListener("change", () => choose($("file").files[0]));
$("model").addEventListener("change", applyDefaults);
$("form").addEventListener("submit", submit);
setUpDrop();
loadModels().catch((err) => showMessage(`Could not read the models from the server (${err}).`));
