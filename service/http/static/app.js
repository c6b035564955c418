// The page: samples, scoring, interpolation and traversals, all through the public API.
import { api, ApiError, apiKey, modelParam, setApiKey, useModel } from "./api.js";
import { canvas, channels, drawHeatmap, drawItem, drawPixels, hw } from "./draw.js";
import { renderCard, startLive } from "./card.js";
import { offerLabels, startClosedLoop } from "./closed_loop.js";

const $ = (id) => document.getElementById(id);
// An item is what the API takes: a flat [0, 1] pixel array or a base64 PNG (a data: URL is fine).
const state = { card: null, shape: [28, 28], samples: [], current: null, start: null, end: null };
const runs = {}; // latest run per panel, so a slow stale answer never overwrites a newer one

// A number field as the API should see it: empty stays null, so the API names the problem.
const num = (id) => ($(id).value.trim() === "" ? null : Number($(id).value));

function report(id, err) {
  const el = $(id);
  el.hidden = !err;
  el.textContent = !err ? "" : err instanceof ApiError ? err.text : `error: ${err.message ?? err}`;
}

// Run one panel's work: busy while it runs, its error shown plainly, older runs dropped.
async function panel(name, errorId, work) {
  const run = (runs[name] = (runs[name] ?? 0) + 1);
  const section = $(errorId).closest("section");
  section.setAttribute("aria-busy", "true");
  try {
    await work(() => run === runs[name]);
    if (run === runs[name]) report(errorId, null);
  } catch (err) {
    if (run === runs[name]) report(errorId, err);
  } finally {
    if (run === runs[name]) section.removeAttribute("aria-busy");
  }
}

function strip(container, outputs, label) {
  container.style.setProperty("--n", outputs.length);
  container.replaceChildren(...outputs.map((pixels, i) => {
    const el = canvas(state.shape, `${label}, step ${i + 1} of ${outputs.length}`);
    drawPixels(el, pixels, state.shape);
    return el;
  }));
}

function drawSamples() {
  return panel("samples", "sample-error", async (current) => {
    const seed = num("seed");
    const out = await api.sample({ n: num("count"), seed, temperature: num("temperature") });
    if (!current()) return;
    $("sample-grid").replaceChildren(...out.samples.map((pixels, i) => {
      const button = Object.assign(document.createElement("button"), { type: "button", className: "tile" });
      button.setAttribute("aria-label", `Score sample ${i + 1}`);
      const el = canvas(state.shape, `sample ${i + 1}`);
      drawPixels(el, pixels, state.shape);
      button.append(el);
      button.addEventListener("click", () => select(pixels, `sample ${i + 1} (seed ${seed})`));
      return button;
    }));
    state.samples = out.samples;
  });
}

function select(item, label) {
  state.current = { item, label };
  return analyze();
}

function fact(dl, term, value, className = "") {
  dl.append(Object.assign(document.createElement("dt"), { textContent: term }),
    Object.assign(document.createElement("dd"), { textContent: value, className }));
}

function analyze() {
  return panel("analyze", "analyze-error", async (current) => {
    const { item, label } = state.current ?? {};
    if (item === undefined) return;
    for (const id of ["input-view", "recon-view", "heatmap"]) $(id).getContext("2d").clearRect(0, 0, 1e4, 1e4);
    $("score").replaceChildren();
    const options = { score: $("score-variant").value, mc_samples: num("mc-samples") };
    const [recon, scored] = await Promise.all([api.reconstruct([item]), api.score([item], options)]);
    if (!current()) return;
    const r = scored.results[0];
    await drawItem($("input-view"), item, state.shape);
    await drawItem($("recon-view"), recon.reconstructions[0], state.shape);
    $("heat-max").textContent = `0 – ${drawHeatmap($("heatmap"), r.feature_nll, state.shape).toFixed(2)} nats`;
    const dl = $("score");
    fact(dl, "Image", label);
    fact(dl, `Score (${{iwae: "IWAE", elbo_latent: "−ELBO + latent, standardized", elbo_knn: "−ELBO + neighbours, standardized"}[scored.score_variant] ?? "−ELBO"}, K=${scored.mc_samples})`, `${r.score.toFixed(2)}${scored.score_variant.startsWith("elbo_") ? " (standard units)" : " nats"}`);
    fact(dl, "Percentile", `${r.percentile.toFixed(1)} % of normal validation data score lower`);
    fact(dl, "Threshold", `${r.threshold.toFixed(1)} nats (quantile ${scored.threshold_quantile})`);
    fact(dl, "Verdict", r.is_anomaly ? "anomalous" : "normal", r.is_anomaly ? "bad" : "good");
    fact(dl, "Reconstruction NLL + KL", `${r.reconstruction_nll.toFixed(1)} + ${r.kl.toFixed(1)} nats`);
    offerLabels($("score-labels"), r);
  });
}

function readFile(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

async function randomExample() {
  const seed = Math.floor(Math.random() * 2 ** 31);
  try {
    const { samples } = await api.sample({ n: 1, seed, temperature: 1 });
    await select(samples[0], `random sample (seed ${seed})`);
  } catch (err) {
    report("analyze-error", err);
  }
}

// The input as drawn, back to pixels: for derived examples such as the inverse of an upload.
function inputPixels() {
  const [h, w] = hw(state.shape);
  const { data } = $("input-view").getContext("2d").getImageData(0, 0, w, h);
  const plane = h * w;
  return Array.from({ length: channels(state.shape) * plane }, (_, j) => data[4 * (j % plane) + Math.floor(j / plane)] / 255);
}

async function setEnd(which) {
  if (!state.current) return;
  state[which] = state.current.item;
  await drawItem($(`interp-${which}`), state.current.item, state.shape);
}

function interpolate() {
  return panel("interpolate", "interp-error", async (current) => {
    if (state.start === null || state.end === null) throw new Error("choose a start and an end image first");
    const out = await api.interpolate({ start: state.start, end: state.end, steps: num("steps"), method: $("method").value });
    if (current()) strip($("interp-strip"), out.outputs, `${out.method} interpolation`);
  });
}

function traverse() {
  return panel("traverse", "traverse-error", async (current) => {
    if (!state.card) throw new Error("the model card has not loaded yet");
    const dim = state.card.latent_dim, span = num("traverse-span"), steps = num("traverse-steps");
    let base = new Array(dim).fill(0);
    if ($("traverse-base").value === "current") {
      if (!state.current) throw new Error("score an image first, or traverse around z = 0");
      base = (await api.encode([state.current.item])).mu[0];
    }
    const rows = await Promise.all(base.map((_, j) => api.interpolate({
      z_start: base.map((v, k) => (k === j ? -span : v)), z_end: base.map((v, k) => (k === j ? span : v)), steps,
    })));
    if (current()) renderTraversals(rows.map((r) => r.outputs));
  });
}

function renderTraversals(rows) {
  const latent = state.card.latent ?? {}, config = state.card.training?.train_config ?? {};
  const kls = latent.kl_per_dim ?? [], activity = latent.activity_per_dim ?? [];
  const maxKl = Math.max(...kls, 1e-12);
  $("traversals").replaceChildren(...rows.map((outputs, j) => {
    const li = document.createElement("li");
    const kl = kls[j];
    // The training run's own rule (training.evaluate.collapsed_dimensions): low KL or no activity.
    const collapsed = kl !== undefined && (kl < (config.collapse_kl_threshold ?? 0.01) ||
      (activity[j] ?? Infinity) <= (config.active_unit_threshold ?? 0.01));
    li.className = collapsed ? "collapsed" : "";
    const head = document.createElement("div");
    head.className = "dim";
    head.innerHTML = `<strong>z<sub>${j}</sub></strong> <span class="bar" aria-hidden="true"><span></span></span>`;
    head.querySelector(".bar span").style.width = `${(100 * (kl ?? 0)) / maxKl}%`;
    head.append(` KL ${kl === undefined ? "?" : kl.toFixed(3)} nats${collapsed ? " · collapsed" : ""}`);
    const row = document.createElement("div");
    row.className = "strip";
    strip(row, outputs, `dimension ${j}`);
    li.append(head, row);
    return li;
  }));
}

function wire() {
  const submit = (id, fn) => $(id).addEventListener("submit", (e) => { e.preventDefault(); fn(); });
  submit("sample-form", drawSamples);
  submit("score-form", analyze);
  submit("interp-form", interpolate);
  submit("traverse-form", traverse);
  $("new-seed").addEventListener("click", () => { $("seed").value = Math.floor(Math.random() * 1e6); drawSamples(); });
  $("random-example").addEventListener("click", randomExample);
  $("noise-example").addEventListener("click", () => select(Array.from({ length: channels(state.shape) * hw(state.shape)[0] * hw(state.shape)[1] }, Math.random), "uniform noise"));
  $("invert-example").addEventListener("click", () => {
    if (!state.current) return;
    const pixels = typeof state.current.item === "string" ? inputPixels() : state.current.item;
    select(pixels.map((v) => 1 - v), `inverse of ${state.current.label}`);
  });
  $("upload").addEventListener("change", async (e) => {
    const file = e.target.files[0];
    if (file) select(await readFile(file), `upload ${file.name}`);
  });
  $("set-start").addEventListener("click", () => setEnd("start"));
  $("set-end").addEventListener("click", () => setEnd("end"));
}

// With several models, a picker (the choice lives in the address: ?model=name, so it can be shared).
async function pickModel() {
  let listing;
  try {
    listing = await api.models();
  } catch {
    return; // an older service or no key yet: the default model's routes still work
  }
  const names = listing.models.map((m) => m.name);
  const chosen = modelParam() ?? listing.default_model ?? names[0];
  if (!modelParam() && !listing.default_model && chosen) useModel(chosen);
  if (names.length < 2) return;
  const picker = $("model-picker");
  for (const m of listing.models) {
    const ready = m.versions.some((v) => v.ready);
    picker.add(new Option(`${m.name} (v${m.default_version}${ready ? "" : ", not loaded"})`, m.name, false, m.name === chosen));
  }
  picker.parentElement.hidden = false;
  picker.addEventListener("change", () => {
    const url = new URL(location.href);
    url.searchParams.set("model", picker.value);
    location.assign(url);
  });
}

async function boot() {
  wire();
  $("api-key").value = apiKey();
  $("api-key").addEventListener("change", () => {
    setApiKey($("api-key").value.trim());
    location.reload();
  });
  startLive($("live-table").tBodies[0], (err) => report("live-error", err));
  await pickModel();
  while (!state.card) {
    try {
      state.card = await api.model();
    } catch (err) {
      $("status").textContent = `not ready — ${err instanceof ApiError ? err.text : err.message}; retrying`;
      $("status").className = "pill bad";
      await new Promise((resolve) => setTimeout(resolve, 2000));
    }
  }
  const card = state.card;
  state.shape = card.input.shape;
  $("model-name").textContent = `${card.model.name} v${card.model.version}`;
  $("status").textContent = `ready · ${card.backend} on ${card.device}`;
  $("status").className = "pill good";
  renderCard($("model-card"), card);
  startClosedLoop();
  if (card.input.table) {
    const { bootTable } = await import("./table.js");
    await bootTable(card);
    document.body.dataset.loaded = "true";
    return;
  }
  if (!card.input.range) {
    report("sample-error", new Error("this page draws image models; this model takes feature vectors (use the API)"));
    return;
  }
  await drawSamples();
  const samples = state.samples;
  if (samples.length) await select(samples[0], "sample 1 (seed 0)");
  [state.start, state.end] = [samples[0] ?? null, samples[1] ?? samples[0] ?? null];
  if (state.start) {
    await Promise.all([drawItem($("interp-start"), state.start, state.shape), drawItem($("interp-end"), state.end, state.shape)]);
  }
  await Promise.all([interpolate(), traverse()]);
  document.body.dataset.loaded = "true";
}

boot();
