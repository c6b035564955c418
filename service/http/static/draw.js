// Pixels onto canvases: grayscale images (flat [0, 1] arrays or base64 PNGs) and heatmaps.

// A perceptually ordered dark-to-bright ramp (after matplotlib's "magma"), so "hot" reads as "bad".
const RAMP = [[0, 0, 4], [59, 15, 112], [140, 41, 129], [222, 73, 104], [254, 159, 109], [252, 253, 191]];

export function canvas(shape, label) {
  const el = document.createElement("canvas");
  [el.height, el.width] = shape;
  el.setAttribute("role", "img");
  el.setAttribute("aria-label", label);
  return el;
}

function put(el, shape, rgbAt) {
  const [h, w] = shape;
  [el.height, el.width] = shape;
  const image = el.getContext("2d").createImageData(w, h);
  for (let i = 0; i < h * w; i++) {
    image.data.set([...rgbAt(i), 255], 4 * i);
  }
  el.getContext("2d").putImageData(image, 0, 0);
}

export function drawPixels(el, pixels, shape) {
  put(el, shape, (i) => {
    const v = Math.round(255 * Math.min(1, Math.max(0, pixels[i])));
    return [v, v, v];
  });
}

export function rampColor(t) {
  const x = Math.min(1, Math.max(0, t)) * (RAMP.length - 1);
  const i = Math.min(RAMP.length - 2, Math.floor(x));
  return RAMP[i].map((c, k) => Math.round(c + (RAMP[i + 1][k] - c) * (x - i)));
}

// Per-pixel values scaled to [0, max]; returns max so the legend can name it.
export function drawHeatmap(el, values, shape) {
  const max = Math.max(...values, 1e-12);
  put(el, shape, (i) => rampColor(values[i] / max));
  return max;
}

function loadImage(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("the browser could not decode this image"));
    img.src = src;
  });
}

// An API item: a flat pixel array, or a base64 PNG (with or without a data: prefix).
export async function drawItem(el, item, shape) {
  if (typeof item !== "string") {
    drawPixels(el, item, shape);
    return;
  }
  const img = await loadImage(item.startsWith("data:") ? item : `data:image/png;base64,${item}`);
  [el.height, el.width] = shape;
  const ctx = el.getContext("2d");
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, el.width, el.height);
  ctx.drawImage(img, 0, 0, el.width, el.height);
}
