// The model card from /model and the live request table from /metrics.
import { api } from "./api.js";
import { endpointTotals, parsePrometheus, windowStats } from "./metrics.js";

const fmt = (v, digits = 4) => (typeof v === "number" ? Number(v.toPrecision(digits)).toString() : String(v ?? "—"));

function facts(entries) {
  const dl = document.createElement("dl");
  dl.className = "facts";
  for (const [term, value] of entries) {
    if (value === undefined || value === null || value === "") continue;
    dl.append(Object.assign(document.createElement("dt"), { textContent: term }),
      Object.assign(document.createElement("dd"), { textContent: value }));
  }
  return dl;
}

function table(caption, head, rows) {
  const el = document.createElement("table");
  el.createCaption().textContent = caption;
  const tr = el.createTHead().insertRow();
  for (const h of head) tr.append(Object.assign(document.createElement("th"), { scope: "col", textContent: h }));
  const body = el.createTBody();
  for (const row of rows) {
    const r = body.insertRow();
    row.forEach((cell, i) => {
      if (i === 0) r.append(Object.assign(document.createElement("th"), { scope: "row", textContent: cell }));
      else r.insertCell().textContent = cell;
    });
  }
  const wrap = Object.assign(document.createElement("div"), { className: "table-wrap" });
  wrap.append(el);
  return wrap;
}

export function renderCard(container, card) {
  const train = card.training ?? {}, dataset = train.dataset ?? {}, cal = card.calibration ?? {};
  const tc = train.train_config ?? {};
  const latent = card.latent ?? {};
  const scalarMetrics = Object.entries(card.metrics ?? {}).filter(([, v]) => typeof v === "number");
  const variants = Object.entries(cal.variants ?? {});
  const quantiles = [...new Set(variants.flatMap(([, v]) => Object.keys(v)))];
  container.replaceChildren(
    facts([
      ["Model", `${card.model.name} v${card.model.version}`],
      ["Created", card.created],
      ["Dataset", !dataset.name ? undefined : card.input.table ? `${dataset.name} (table, ${card.input.table.columns.length} columns${card.input.table.ignored.length ? `; ignored: ${card.input.table.ignored.join(", ")}` : ""})`
        : `${dataset.name} (${(dataset.class_names ?? dataset.classes ?? []).length} classes)`],
      ["Backend", `${card.backend} on ${card.device}`],
      ["Architecture", `${(card.input?.shape ?? []).join("×")} → ${card.config?.architecture === "conv" ? "conv 32→64 → " : ""}${(card.config?.hidden_sizes ?? []).join("→")} → z∈ℝ^${card.latent_dim}`],
      ["Likelihood", card.likelihood],
      ["Active units", latent.active_units !== undefined ? `${latent.active_units} of ${card.latent_dim}` : undefined],
      ["Training", train.epoch !== undefined ? `best at epoch ${train.epoch}, β=${fmt(tc.beta)}, validation −ELBO ${fmt(train.val_neg_elbo)}` : undefined],
    ]),
    scalarMetrics.length
      ? table("Test metrics", ["metric", "value"], scalarMetrics.map(([k, v]) => [k, fmt(v)]))
      : facts([["Test metrics", "none in the manifest (model exported without evaluation)"]]),
    facts([["Calibration", `${cal.examples ?? "?"} examples, ${cal.split ?? "?"}, ${cal.mc_samples ?? "?"} MC samples; ` +
      `default threshold at quantile ${cal.default_threshold_quantile ?? "?"}`]]),
    table("Anomaly score quantiles on normal data (nats)", ["score", ...quantiles],
      variants.map(([name, v]) => [name, ...quantiles.map((q) => fmt(v[q]))])),
  );
}

// Scrape /metrics every interval_ms while the page is visible; onError(null) clears the error.
export function startLive(tbody, onError, interval_ms = 2000) {
  let previous = null, previousAt = 0;
  async function tick() {
    if (!document.hidden) {
      try {
        const totals = endpointTotals(parsePrometheus(await api.metrics()));
        const now = performance.now();
        const rows = windowStats(previous, totals, (now - previousAt) / 1000);
        [previous, previousAt] = [totals, now];
        tbody.replaceChildren(...rows.map((row) => {
          const tr = document.createElement("tr");
          tr.append(Object.assign(document.createElement("th"), { scope: "row", textContent: row.endpoint }));
          for (const v of [row.rate, row.meanMs, row.p95Ms]) tr.insertCell().textContent = Number.isNaN(v) ? "—" : v.toFixed(v < 10 ? 2 : 1);
          tr.insertCell().textContent = row.total;
          tr.insertCell().textContent = row.errors;
          return tr;
        }));
        onError(null);
      } catch (err) {
        onError(err);
      }
    }
    setTimeout(tick, interval_ms);
  }
  tick();
}
