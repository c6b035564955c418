// Closing the loop on the page: label a scored item (its score_id), the live precision and recall per
// version from the labels, and the bulk jobs with their progress and results. Public API only.
import { api, ApiError, modelParam } from "./api.js";

const $ = (id) => document.getElementById(id);
const pct = (rate) => (rate?.value == null ? "—" : `${(100 * rate.value).toFixed(1)} % [${rate.ci95.map((v) => (100 * v).toFixed(0)).join("–")}]`);

function report(err) {
  const el = $("loop-error");
  el.hidden = !err;
  el.textContent = !err ? "" : err instanceof ApiError ? err.text : `error: ${err.message ?? err}`;
}

// Two buttons under a score: the operator's verdict goes to /feedback with the result's score_id.
export function offerLabels(container, result) {
  container.replaceChildren();
  if (!result?.score_id) return;
  const status = Object.assign(document.createElement("span"), { className: "muted" });
  for (const [label, text] of [["anomaly", "Label: a real anomaly"], ["normal", "Label: normal (false alarm if flagged)"]]) {
    const button = Object.assign(document.createElement("button"), { type: "button", textContent: text });
    button.dataset.label = label;
    button.addEventListener("click", async () => {
      try {
        const answer = await api.feedback([{ score_id: result.score_id, label }]);
        status.textContent = answer.created ? ` labelled ${label}` : answer.updated ? ` relabelled ${label}` : ` already ${label}`;
        report(null);
        await showSummary();
      } catch (err) {
        report(err);
      }
    });
    container.append(button);
  }
  container.append(status);
}

export async function showSummary() {
  const { versions } = await api.feedbackSummary();
  const body = $("feedback-summary").tBodies[0];
  body.replaceChildren();
  for (const v of versions) {
    const row = body.insertRow();
    for (const text of [v.version, v.score_variant, `${v.labels.anomaly} / ${v.labels.normal}`,
      `${v.threshold?.toFixed?.(2) ?? "—"} (${v.threshold_source})`, pct(v.precision), pct(v.recall), pct(v.false_alarm_rate)]) {
      row.insertCell().textContent = text;
    }
  }
  $("feedback-empty").hidden = versions.length > 0;
}

async function showJobs() {
  const { jobs } = await api.jobs();
  const body = $("jobs-table").tBodies[0];
  body.replaceChildren();
  for (const job of jobs.slice(-10).reverse()) {
    const row = body.insertRow();
    const rate = job.items_per_s == null ? "—" : `${Math.round(job.items_per_s)}/s`;
    for (const text of [job.id.slice(0, 8), `${job.model} v${job.version}`, job.state,
      `${job.done ?? 0} / ${job.items ?? "?"} (${(100 * job.progress).toFixed(0)} %)`, rate,
      job.seconds_left == null ? "—" : `${job.seconds_left.toFixed(0)} s`]) {
      row.insertCell().textContent = text;
    }
    const cell = row.insertCell();
    if (job.state === "succeeded") {
      cell.append(Object.assign(document.createElement("a"), { href: `/jobs/${job.id}/result`, textContent: "CSV" }));
    } else if (job.state === "queued" || job.state === "running") {
      const cancel = Object.assign(document.createElement("button"), { type: "button", textContent: "Cancel" });
      cancel.addEventListener("click", () => api.cancelJob(job.id).then(showJobs, report));
      cell.append(cancel);
    }
  }
  $("jobs-empty").hidden = jobs.length > 0;
}

export function startClosedLoop() {
  $("job-upload").addEventListener("change", async (event) => {
    const file = event.target.files[0];
    if (!file) return;
    try {
      await api.submitJob(file, modelParam());
      report(null);
      await showJobs();
    } catch (err) {
      report(err);
    }
  });
  const refresh = () => Promise.all([showSummary(), showJobs()]).then(() => report(null), report);
  refresh();
  setInterval(refresh, 3000);
}
