// Request rate and latency from the service's Prometheus exposition at /metrics.

const SAMPLE = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)/;
const LABEL = /(\w+)="((?:[^"\\]|\\.)*)"/g;

// Prometheus writes infinities as +Inf / -Inf, which Number() does not read.
const number = (text) => ({ "+Inf": Infinity, "-Inf": -Infinity })[text] ?? Number(text);

export function parsePrometheus(text) {
  const samples = [];
  for (const line of text.split("\n")) {
    const m = line.startsWith("#") ? null : SAMPLE.exec(line);
    if (!m) continue;
    const labels = Object.fromEntries([...(m[2] ?? "").matchAll(LABEL)].map((l) => [l[1], l[2]]));
    samples.push({ name: m[1], labels, value: number(m[3]) });
  }
  return samples;
}

// Cumulative counters per endpoint: {endpoint: {requests, errors, count, sum, buckets: [[le, n]]}}.
export function endpointTotals(samples) {
  const totals = {};
  const of = (e) => (totals[e] ??= { requests: 0, errors: 0, count: 0, sum: 0, buckets: [] });
  for (const { name, labels, value } of samples) {
    if (name === "vaeserve_requests_total") {
      of(labels.endpoint).requests += value;
      if (Number(labels.status) >= 400) of(labels.endpoint).errors += value;
    } else if (name === "vaeserve_request_latency_seconds_count") of(labels.endpoint).count = value;
    else if (name === "vaeserve_request_latency_seconds_sum") of(labels.endpoint).sum = value;
    else if (name === "vaeserve_request_latency_seconds_bucket") of(labels.endpoint).buckets.push([number(labels.le), value]);
  }
  return totals;
}

// The q-quantile of a cumulative histogram, interpolated inside its bucket (as PromQL does).
export function histogramQuantile(q, buckets) {
  const sorted = [...buckets].sort((a, b) => a[0] - b[0]);
  const total = sorted.at(-1)?.[1] ?? 0;
  if (total <= 0) return NaN;
  const rank = q * total;
  let [lowLe, lowN] = [0, 0];
  for (const [le, n] of sorted) {
    if (n >= rank) return le === Infinity ? lowLe : lowLe + (le - lowLe) * ((rank - lowN) / Math.max(n - lowN, 1e-12));
    [lowLe, lowN] = [le, n];
  }
  return lowLe;
}

// Rates and latency over the window between two scrapes, per endpoint that saw traffic.
export function windowStats(before, after, seconds) {
  const rows = [];
  for (const [endpoint, now] of Object.entries(after)) {
    const then = before?.[endpoint] ?? { requests: 0, errors: 0, count: 0, sum: 0, buckets: [] };
    const count = now.count - then.count;
    const buckets = now.buckets.map(([le, n]) => [le, n - (then.buckets.find((b) => b[0] === le)?.[1] ?? 0)]);
    if (now.requests === 0) continue;
    rows.push({
      endpoint, total: now.requests, errors: now.errors,
      rate: before ? (now.requests - then.requests) / seconds : NaN,
      meanMs: before && count > 0 ? (1000 * (now.sum - then.sum)) / count : NaN,
      p95Ms: before && count > 0 ? 1000 * histogramQuantile(0.95, buckets) : NaN,
    });
  }
  return rows.sort((a, b) => b.total - a.total);
}
