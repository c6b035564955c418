// Pixels onto canvases: grey or colour images (flat [0, 1] arrays, channels first, or base64 PNGs)
// and heatmaps. A shape is the model's input shape: [C, H, W] (or [H, W]).

// A perceptually ordered dark-to-bright ramp (after matplotlib's "magma"), so "hot" reads as "bad".
const RAMP = [[0, 0, 4], [59, 15, 112], [140, 41, 129], [222, 73, 104], [254, 159, 109], [252, 253, 191]];

// [H, W] and the number of channels of an input shape.
export function hw(shape) {
  return shape.slice(-2);
}

export function channels(shape) {
  return shape.length === 3 ? shape[0] : 1;
}

export function canvas(shape, label) {
  const el = document.createElement("canvas");
  [el.height, el.width] = hw(shape);
  el.setAttribute("role", "img");
  el.setAttribute("aria-label", label);
  return el;
}

function put(el, shape, rgbAt) {
  const [h, w] = hw(shape);
  [el.height, el.width] = [h, w];
  const image = el.getContext("2d").createImageData(w, h);
  for (let i = 0; i < h * w; i++) {
    image.data.set([...rgbAt(i), 255], 4 * i);
  }
  el.getContext("2d").putImageData(image, 0, 0);
}

const byte = (v) => Math.round(255 * Math.min(1, Math.max(0, v)));

export function drawPixels(el, pixels, shape) {
  const [h, w] = hw(shape);
  const plane = h * w;
  put(el, shape, (i) => (channels(shape) === 3
    ? [byte(pixels[i]), byte(pixels[plane + i]), byte(pixels[2 * plane + i])]
    : [byte(pixels[i]), byte(pixels[i]), byte(pixels[i])]));
}

export function rampColor(t) {
  const x = Math.min(1, Math.max(0, t)) * (RAMP.length - 1);
  const i = Math.min(RAMP.length - 2, Math.floor(x));
  return RAMP[i].map((c, k) => Math.round(c + (RAMP[i + 1][k] - c) * (x - i)));
}

// Per-pixel values (summed over a colour model's channels) scaled to [0, max]; returns max so the
// legend can name it.
export function drawHeatmap(el, values, shape) {
  const [h, w] = hw(shape);
  const plane = h * w;
  const perPixel = Array.from({ length: plane }, (_, i) => {
    let sum = 0;
    for (let c = 0; c < channels(shape); c++) sum += values[c * plane + i];
    return sum;
  });
  const max = Math.max(...perPixel, 1e-12);
  put(el, shape, (i) => rampColor(perPixel[i] / max));
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
  [el.height, el.width] = hw(shape);
  const ctx = el.getContext("2d");
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, el.width, el.height);
  ctx.drawImage(img, 0, 0, el.width, el.height);
}
