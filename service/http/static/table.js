// A table model's page: a form of its columns (from the model card's schema), the score of a record
// with each column's share of it, and samples as rows. Everything through the public API.
import { api, ApiError } from "./api.js";
import { offerLabels } from "./closed_loop.js";

const $ = (id) => document.getElementById(id);
const MISSING = "<missing>";

function report(err) {
  const el = $("table-error");
  el.hidden = !err;
  el.textContent = !err ? "" : err instanceof ApiError ? err.text : `error: ${err.message ?? err}`;
}

function field(column) {
  const label = document.createElement("label");
  label.textContent = column.name + " ";
  let input;
  if (column.kind === "numeric") {
    input = document.createElement("input");
    Object.assign(input, { type: "number", step: "any", inputMode: "decimal", value: column.mean.toPrecision(4) });
    input.placeholder = column.nullable ? "empty: missing" : "required";
  } else {
    // A text box with the training levels offered: any other value is allowed and reported as unseen.
    input = document.createElement("input");
    input.setAttribute("list", `levels-${column.name}`);
    input.value = column.levels[0] === MISSING ? "" : column.levels[0];
    input.placeholder = column.nullable ? "empty: missing" : "required";
    const list = document.createElement("datalist");
    list.id = `levels-${column.name}`;
    for (const level of column.levels.filter((l) => l !== MISSING)) list.append(new Option(level));
    label.append(list);
  }
  input.name = column.name;
  input.dataset.kind = column.kind;
  label.append(input);
  return label;
}

function record(form) {
  const out = {};
  for (const input of form.querySelectorAll("input[name]")) {
    const text = input.value.trim();
    out[input.name] = text === "" ? null : input.dataset.kind === "numeric" ? Number(text) : text;
  }
  return out;
}

function fill(form, values) {
  for (const input of form.querySelectorAll("input[name]")) {
    const value = values[input.name];
    input.value = value === null || value === undefined ? "" : typeof value === "number" ? value.toPrecision(4) : value;
  }
}

function showScore(result) {
  const facts = $("table-score");
  facts.replaceChildren();
  const add = (term, value) => facts.append(Object.assign(document.createElement("dt"), { textContent: term }),
    Object.assign(document.createElement("dd"), { textContent: value }));
  add("Score (−ELBO)", `${result.score.toFixed(2)} nats`);
  add("Percentile", `${result.percentile.toFixed(1)} %`);
  add("p-value", result.p_value === null ? "—" : result.p_value.toPrecision(3));
  add("Flagged", result.is_anomaly ? `yes (threshold ${result.threshold.toFixed(2)})` : "no");
  if (result.unseen_categories?.length) {
    add("Never seen in training", result.unseen_categories.map((u) => `${u.column} = ${u.value}`).join(", "));
  }
  const body = $("table-explanation").tBodies[0];
  body.replaceChildren();
  const top = Math.max(...result.explanation.map((e) => e.nll), 1e-9);
  for (const { column, nll } of result.explanation) {
    const row = body.insertRow();
    row.insertCell().textContent = column;
    row.insertCell().textContent = nll.toFixed(2);
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = `${Math.max(0, (100 * nll) / top).toFixed(1)}%`;
    row.insertCell().append(bar);
  }
}

async function drawSamples(columns) {
  const { samples } = await api.sample({ n: 8, seed: 0 });
  const table = $("table-samples");
  table.tHead.replaceChildren();
  const head = table.tHead.insertRow();
  for (const c of columns) head.append(Object.assign(document.createElement("th"), { textContent: c.name }));
  table.tBodies[0].replaceChildren();
  for (const sample of samples) {
    const row = table.tBodies[0].insertRow();
    for (const c of columns) {
      const v = sample[c.name];
      row.insertCell().textContent = v === null ? "—" : typeof v === "number" ? v.toPrecision(4) : v;
    }
  }
  return samples;
}

export async function bootTable(card) {
  for (const id of ["samples", "analyze", "interpolate", "traverse"]) {
    $(id).hidden = true;
    for (const link of document.querySelectorAll(`a[href="#${id}"]`)) link.hidden = true;
  }
  $("table-section").hidden = false;
  document.querySelector('a[href="#table-section"]').hidden = false;
  const columns = card.input.table.columns;
  const form = $("table-form");
  form.replaceChildren(...columns.map(field));
  const score = async () => {
    try {
      const answer = await api.score([record(form)], {});
      showScore(answer.results[0]);
      offerLabels($("table-labels"), answer.results[0]);
      report(null);
    } catch (err) {
      report(err);
    }
  };
  $("table-score-button").addEventListener("click", score);
  form.addEventListener("submit", (event) => { event.preventDefault(); score(); });
  try {
    const samples = await drawSamples(columns);
    $("table-sample-button").addEventListener("click", () => { fill(form, samples[Math.floor(Math.random() * samples.length)]); score(); });
    fill(form, samples[0]);
  } catch (err) {
    report(err);
  }
  await score();
}
