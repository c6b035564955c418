// The service's public API, as any client would call it. Every failure becomes an ApiError
// carrying the API's own {error, error_type} body, so the page can show it as it is.

export class ApiError extends Error {
  constructor(status, type, message) {
    super(message);
    this.status = status; // 0: no HTTP answer at all
    this.type = type;
  }

  get text() {
    return this.status ? `${this.status} ${this.type}: ${this.message}` : `${this.type}: ${this.message}`;
  }
}

const KEY_STORE = "vaeserve-api-key"; // this tab only: sessionStorage, never a cookie

export const apiKey = () => sessionStorage.getItem(KEY_STORE) ?? "";
export const setApiKey = (key) => (key ? sessionStorage.setItem(KEY_STORE, key) : sessionStorage.removeItem(KEY_STORE));

async function call(path, body, method) {
  const headers = apiKey() ? { Authorization: `Bearer ${apiKey()}` } : {};
  const init = body === undefined ? { headers, method: method ?? "GET" } : body instanceof Blob ? {
    method: "POST", headers: { ...headers, "Content-Type": "application/octet-stream" }, body,
  } : {
    method: "POST", headers: { ...headers, "Content-Type": "application/json" }, body: JSON.stringify(body),
  };
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    throw new ApiError(0, "network_error", `the service did not answer ${path} (${err.message})`);
  }
  const text = await response.text();
  if (!response.ok) {
    let message = text || response.statusText, type = "http_error";
    try {
      const data = JSON.parse(text);
      message = data.error ?? message;
      type = data.error_type ?? type;
    } catch { /* not JSON: show the raw text */ }
    throw new ApiError(response.status, type, message);
  }
  return response.headers.get("content-type")?.includes("json") ? JSON.parse(text) : text;
}

// The model this page talks to: `?model=` in the address, or the service's default model.
let modelPrefix = "";
export const modelParam = () => new URLSearchParams(location.search).get("model");
export const useModel = (name) => { modelPrefix = name ? `/models/${encodeURIComponent(name)}` : ""; };
useModel(modelParam());
const routed = (path) => modelPrefix + path;

export const api = {
  ready: () => call("/readyz"),
  models: () => call("/models"),
  model: () => call(modelPrefix || "/model"),
  metrics: () => call("/metrics"),
  sample: (options) => call(routed("/sample"), options),
  encode: (inputs) => call(routed("/encode"), { inputs }),
  reconstruct: (inputs) => call(routed("/reconstruct"), { inputs }),
  score: (inputs, options) => call(routed("/anomaly-score"), { inputs, explain: true, ...options }),
  interpolate: (body) => call(routed("/interpolate"), body),
  feedback: (items) => call(routed("/feedback"), { items }),
  feedbackSummary: () => call(routed("/feedback/summary")),
  jobs: () => call("/jobs"),
  submitJob: (file, model) => call(`/jobs?filename=${encodeURIComponent(file.name)}${model ? `&model=${encodeURIComponent(model)}` : ""}`, file),
  cancelJob: (id) => call(`/jobs/${encodeURIComponent(id)}`, undefined, "DELETE"),
};
