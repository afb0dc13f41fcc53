// The input recipes in JavaScript: a port of contract/recipes.py, line for line, for the page's "classify on
// this device". Same arithmetic (integer resampling with 12-bit weights, float64 element by element in the
// same order, Gaussian elimination as written there, floor(x + 0.5) rounding), so the same decoded pixels give
// the same bytes; tests/test_web_page.py checks it against contract/ in Chromium.
//
// A picture is {h, w, c, data}: data a Uint8Array of h * w * c values, row by row, channels last.

export const RECIPES = ["crop", "pad", "product_photo"];
const REDUCING_GAP = 3;
const WEIGHT_BITS = 12;
const TRIM_MIN_CONTRAST = 12.75;
const BORDER_SHARE = 0.05;
export const BORDER_CLUTTER_LIMIT = 0.4;
export const NOTHING_FOUND = 2.0;
const CORNER_TOLERANCE = 51.0;
const SPECK_SHARE = 0.004;
const SHARPEN = 5;
const LEVELS_PERCENTILE = 99;
export const WORKING_SCALE = { crop: 2, pad: 2, product_photo: 2 };

export function picture(h, w, c, data) {
  return { h, w, c, data: data || new Uint8Array(h * w * c) };
}

const roundHalfUp = (value) => Math.floor(value + 0.5);

// Python's float floor division (CPython's float_floor_div), which Math.floor(a / b) is not in every case.
function floorDivide(a, b) {
  let mod = a % b;
  let div = (a - mod) / b;
  if (mod && (b < 0) !== (mod < 0)) div -= 1.0;
  if (!div) return 0;
  let result = Math.floor(div);
  if (div - result > 0.5) result += 1.0;
  return result;
}

// Pillow's convert("L"): (R * 19595 + G * 38470 + B * 7471 + 32768) >> 16.
export function grey(p) {
  if (p.c === 1) return p;
  const out = picture(p.h, p.w, 1);
  for (let i = 0, j = 0; i < p.h * p.w; i++, j += 3) {
    out.data[i] = (p.data[j] * 19595 + p.data[j + 1] * 38470 + p.data[j + 2] * 7471 + 32768) >>> 16;
  }
  return out;
}

function repeatChannels(p) {
  const out = picture(p.h, p.w, 3);
  for (let i = 0; i < p.h * p.w; i++) out.data[3 * i] = out.data[3 * i + 1] = out.data[3 * i + 2] = p.data[i];
  return out;
}

// --- resampling, in integers -------------------------------------------------------------------------------

export function reduce(p, factor) {
  factor = Math.min(factor, p.h, p.w);
  if (factor < 2) return p;
  const h = Math.floor(p.h / factor), w = Math.floor(p.w / factor), c = p.c;
  const area = factor * factor, half = Math.floor(area / 2);
  const out = picture(h, w, c);
  const sums = new Float64Array(w * c);
  for (let by = 0; by < h; by++) {
    sums.fill(0);
    for (let dy = 0; dy < factor; dy++) {
      const row = (by * factor + dy) * p.w * c;
      for (let x = 0; x < w * factor; x++) {
        const target = Math.floor(x / factor) * c;
        for (let k = 0; k < c; k++) sums[target + k] += p.data[row + x * c + k];
      }
    }
    for (let i = 0; i < w * c; i++) out.data[by * w * c + i] = Math.floor((sums[i] + half) / area);
  }
  return out;
}

// Integer weights of the antialiased triangle filter mapping [start, stop) of sizeIn pixels onto sizeOut:
// for each output pixel, its first input pixel and its weights.
function weights(sizeIn, start, stop, sizeOut) {
  const scale = (stop - start) / sizeOut;
  const support = Math.max(scale, 1.0);
  const rows = [];
  for (let x = 0; x < sizeOut; x++) {
    const center = start + (x + 0.5) * scale;
    const low = Math.max(0, Math.floor(center - support + 0.5));
    const high = Math.min(sizeIn, Math.floor(center + support + 0.5));
    const row = [];
    for (let i = low; i < high; i++) row.push(Math.max(0.0, 1.0 - Math.abs((i + 0.5 - center) / support)));
    let total = 0.0;
    for (const value of row) total = total + value;
    if (total <= 0.0) {
      const nearest = Math.min(Math.max(Math.floor(center), 0), sizeIn - 1);
      rows.push({ low: nearest, values: [1 << WEIGHT_BITS], sum: 1 << WEIGHT_BITS });
      continue;
    }
    const values = row.map((value) => roundHalfUp(value / total * (1 << WEIGHT_BITS)));
    rows.push({ low, values, sum: values.reduce((a, b) => a + b, 0) });
  }
  return rows;
}

export function resample(p, box, width, height) {
  let [left, top, right, bottom] = box;
  const factor = floorDivide(Math.min((right - left) / width, (bottom - top) / height), REDUCING_GAP);
  if (factor >= 2) {
    p = reduce(p, factor);
    [left, top, right, bottom] = [left / factor, top / factor, Math.min(right / factor, p.w),
      Math.min(bottom / factor, p.h)];
  }
  const across = weights(p.w, left, right, width), down = weights(p.h, top, bottom, height);
  const c = p.c;
  // Whole numbers below 2**53: exact, as in contract/ (horizontal pass, then vertical).
  const rows = new Float64Array(p.h * width * c);
  for (let y = 0; y < p.h; y++) {
    for (let x = 0; x < width; x++) {
      const { low, values } = across[x];
      for (let k = 0; k < c; k++) {
        let acc = 0;
        for (let i = 0; i < values.length; i++) acc += values[i] * p.data[(y * p.w + low + i) * c + k];
        rows[(y * width + x) * c + k] = acc;
      }
    }
  }
  const out = picture(height, width, c);
  for (let y = 0; y < height; y++) {
    const { low, values, sum } = down[y];
    for (let x = 0; x < width; x++) {
      const area = sum * across[x].sum;
      for (let k = 0; k < c; k++) {
        let acc = 0;
        for (let i = 0; i < values.length; i++) acc += values[i] * rows[((low + i) * width + x) * c + k];
        out.data[(y * width + x) * c + k] = Math.min(255, Math.max(0, Math.floor((acc + Math.floor(area / 2)) / area)));
      }
    }
  }
  return out;
}

function fitSize(widthIn, heightIn, height, width) {
  const scale = Math.min(width / widthIn, height / heightIn);
  return [Math.max(1, Math.min(width, roundHalfUp(widthIn * scale))),
    Math.max(1, Math.min(height, roundHalfUp(heightIn * scale)))];
}

function pasteCentred(fitted, height, width, fill) {
  const out = picture(height, width, fitted.c);
  for (let i = 0; i < height * width; i++) for (let k = 0; k < fitted.c; k++) out.data[i * fitted.c + k] = fill[k];
  const top = Math.floor((height - fitted.h) / 2), left = Math.floor((width - fitted.w) / 2);
  for (let y = 0; y < fitted.h; y++) {
    out.data.set(fitted.data.subarray(y * fitted.w * fitted.c, (y + 1) * fitted.w * fitted.c),
      ((top + y) * width + left) * fitted.c);
  }
  return out;
}

function lowerMedian(values) {
  const sorted = Array.from(values).sort((a, b) => a - b);
  return sorted[Math.floor((sorted.length - 1) / 2)];
}

// The four edges' pixels, per channel: first row, last row, first column, last column.
function borderRing(p, k) {
  const ring = [];
  for (let x = 0; x < p.w; x++) ring.push(p.data[x * p.c + k]);
  for (let x = 0; x < p.w; x++) ring.push(p.data[((p.h - 1) * p.w + x) * p.c + k]);
  for (let y = 0; y < p.h; y++) ring.push(p.data[(y * p.w) * p.c + k]);
  for (let y = 0; y < p.h; y++) ring.push(p.data[(y * p.w + p.w - 1) * p.c + k]);
  return ring;
}

function cropWindow(p, top, bottom, left, right) {
  const out = picture(bottom - top, right - left, p.c);
  for (let y = top; y < bottom; y++) {
    out.data.set(p.data.subarray((y * p.w + left) * p.c, (y * p.w + right) * p.c), (y - top) * out.w * p.c);
  }
  return out;
}

// --- crop and pad ------------------------------------------------------------------------------------------

export function crop(p, height, width) {
  if (p.w === width && p.h === height) return p;
  let box;
  if (p.w * height > width * p.h) {
    const cropWidth = p.h * width / height;
    const left = (p.w - cropWidth) / 2;
    box = [left, 0.0, left + cropWidth, p.h];
  } else {
    const cropHeight = p.w * height / width;
    const top = (p.h - cropHeight) / 2;
    box = [0.0, top, p.w, top + cropHeight];
  }
  return resample(p, box, width, height);
}

export function pad(p, height, width) {
  if (p.w === width && p.h === height) return p;
  const fill = [];
  for (let k = 0; k < p.c; k++) fill.push(lowerMedian(borderRing(p, k)));
  const [fittedWidth, fittedHeight] = fitSize(p.w, p.h, height, width);
  return pasteCentred(resample(p, [0.0, 0.0, p.w, p.h], fittedWidth, fittedHeight), height, width, fill);
}

// --- product_photo -----------------------------------------------------------------------------------------

export function productPhoto(p, height, width, channels, notes = {}) {
  notes.photo_doubt = 0.0;
  if (channels === 3 && p.c === 1) p = repeatChannels(p);
  if (p.h === height && p.w === width) {
    if (channels === 3) return p;
    const greyPixels = grey(p);
    if (lowerMedian(borderRing(greyPixels, 0)) < 128) return greyPixels;
  }
  p = reduce(p, Math.floor(Math.max(p.h, p.w) / (WORKING_SCALE.product_photo * Math.max(height, width))));
  const { h, w, c } = p;
  const values = Float64Array.from(p.data);
  const surface = backgroundSurface(values, h, w, c);
  const background = evaluate(surface, h, w);
  const centre = evaluateAt(surface, (w - 1) / 2, (h - 1) / 2);
  const light = lumaOf(centre, 0, c) >= 128;
  const { mask, neighbours, clutter } = garment(values, background, h, w, c);
  const found = mask.some((v) => v);
  notes.photo_doubt = found ? clutter / BORDER_CLUTTER_LIMIT : NOTHING_FOUND;
  const [top, bottom, left, right] = found ? boundingBox(mask, h, w) : [0, h, 0, w];
  const [fittedWidth, fittedHeight] = fitSize(right - left, bottom - top, height, width);
  const window = [0.0, 0.0, right - left, bottom - top];
  if (channels === 3) {
    const fill = centre.map((v) => roundHalfUp(Math.min(Math.max(v, 0.0), 255.0)));
    return pasteCentred(resample(cropWindow(p, top, bottom, left, right), window, fittedWidth, fittedHeight),
      height, width, fill);
  }
  const strength = levels(strengthOf(values, background, light, neighbours, h, w, c, top, bottom, left, right));
  let fitted = resample(strength, window, fittedWidth, fittedHeight);
  if (light) fitted = sharpen(fitted);
  return pasteCentred(fitted, height, width, [0]);
}

// 0.299 R + 0.587 G + 0.114 B in this order (a single channel is its own luma), of the c values at `at`.
function lumaOf(values, at, c) {
  if (c === 1) return values[at];
  return (values[at] * 0.299 + values[at + 1] * 0.587) + values[at + 2] * 0.114;
}

// Row-major (ys, xs) of the border band and of its four corner squares.
function band(h, w) {
  const b = Math.max(1, roundHalfUp(BORDER_SHARE * Math.min(h, w)));
  const found = { ys: [], xs: [], cornerYs: [], cornerXs: [] };
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const nearY = y < b || y >= h - b, nearX = x < b || x >= w - b;
      if (nearY || nearX) { found.ys.push(y); found.xs.push(x); }
      if (nearY && nearX) { found.cornerYs.push(y); found.cornerXs.push(x); }
    }
  }
  return found;
}

function backgroundSurface(values, h, w, c) {
  const { ys, xs, cornerYs, cornerXs } = band(h, w);
  const n = ys.length;
  const samples = ys.map((y, i) => Array.from({ length: c }, (_, k) => values[(y * w + xs[i]) * c + k]));
  if (n < 12) {
    const median = [];
    for (let k = 0; k < c; k++) {
      const all = [];
      for (let i = 0; i < h * w; i++) all.push(values[i * c + k]);
      median.push(lowerMedian(all));
    }
    return median.map((m) => [m, 0.0, 0.0, 0.0, 0.0, 0.0]);
  }
  const corner = [];
  for (let k = 0; k < c; k++) corner.push(lowerMedian(cornerYs.map((y, i) => values[(y * w + cornerXs[i]) * c + k])));
  let keep = samples.map((s) => Math.max(...s.map((v, k) => Math.abs(v - corner[k]))) <= CORNER_TOLERANCE);
  if (keep.filter(Boolean).length < 12) keep = keep.map(() => true);
  const terms = ys.map((y, i) => [1.0, xs[i], y, xs[i] * xs[i], y * y, xs[i] * y]);
  let coefficients = fit(terms, samples, keep);
  const residual = samples.map((s, i) => Math.max(...s.map((v, k) => Math.abs(v - evaluateTerms(terms[i], coefficients[k])))));
  const cutoff = Math.max(4.4478 * lowerMedian(residual.filter((_, i) => keep[i])), TRIM_MIN_CONTRAST);
  const tighter = residual.map((r) => r <= cutoff);
  if (tighter.filter(Boolean).length >= 12 && tighter.some((t, i) => t !== keep[i])) {
    coefficients = fit(terms, samples, tighter);
  }
  return coefficients;
}

// Least squares per channel through the normal equations (sums of whole numbers: exact), solved as contract/ does.
function fit(terms, samples, chosen) {
  const c = samples[0].length;
  const matrix = Array.from({ length: 6 }, () => new Array(6).fill(0.0));
  const rhs = Array.from({ length: 6 }, () => new Array(c).fill(0.0));
  for (let i = 0; i < terms.length; i++) {
    if (!chosen[i]) continue;
    const t = terms[i];
    for (let r = 0; r < 6; r++) {
      for (let k = 0; k < 6; k++) matrix[r][k] += t[r] * t[k];
      for (let ch = 0; ch < c; ch++) rhs[r][ch] += t[r] * samples[i][ch];
    }
  }
  return solve(matrix, rhs);
}

function solve(matrix, rhs) {
  const size = matrix.length, channels = rhs[0].length;
  for (let col = 0; col < size; col++) {
    let pivot = col;
    for (let r = col + 1; r < size; r++) if (Math.abs(matrix[r][col]) > Math.abs(matrix[pivot][col])) pivot = r;
    if (Math.abs(matrix[pivot][col]) < 1e-9) {
      for (let r = 0; r < size; r++) matrix[r][col] = 0.0;
      matrix[col] = Array.from({ length: size }, (_, k) => (k === col ? 1.0 : 0.0));
      rhs[col] = new Array(channels).fill(0.0);
      continue;
    }
    [matrix[col], matrix[pivot]] = [matrix[pivot], matrix[col]];
    [rhs[col], rhs[pivot]] = [rhs[pivot], rhs[col]];
    for (let r = col + 1; r < size; r++) {
      const factor = matrix[r][col] / matrix[col][col];
      if (factor === 0.0) continue;
      for (let k = col; k < size; k++) matrix[r][k] = matrix[r][k] - factor * matrix[col][k];
      for (let ch = 0; ch < channels; ch++) rhs[r][ch] = rhs[r][ch] - factor * rhs[col][ch];
    }
  }
  const solution = Array.from({ length: channels }, () => new Array(size).fill(0.0));
  for (let ch = 0; ch < channels; ch++) {
    for (let r = size - 1; r >= 0; r--) {
      let acc = rhs[r][ch];
      for (let k = r + 1; k < size; k++) acc = acc - matrix[r][k] * solution[ch][k];
      solution[ch][r] = acc / matrix[r][r];
    }
  }
  return solution;
}

function evaluateTerms(t, c) {
  return ((((c[0] + c[1] * t[1]) + c[2] * t[2]) + c[3] * t[3]) + c[4] * t[4]) + c[5] * t[5];
}

function evaluate(coefficients, h, w) {
  const channels = coefficients.length;
  const out = new Float64Array(h * w * channels);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const xx = x * x, yy = y * y, xy = x * y;
      for (let k = 0; k < channels; k++) {
        const c = coefficients[k];
        out[(y * w + x) * channels + k] = ((((c[0] + c[1] * x) + c[2] * y) + c[3] * xx) + c[4] * yy) + c[5] * xy;
      }
    }
  }
  return out;
}

function evaluateAt(coefficients, x, y) {
  return coefficients.map((c) => ((((c[0] + c[1] * x) + c[2] * y) + c[3] * (x * x)) + c[4] * (y * y)) + c[5] * (x * y));
}

function garment(values, background, h, w, c) {
  const difference = new Float64Array(h * w);
  for (let i = 0; i < h * w; i++) {
    let most = Math.abs(values[i * c] - background[i * c]);
    for (let k = 1; k < c; k++) most = Math.max(most, Math.abs(values[i * c + k] - background[i * c + k]));
    difference[i] = most;
  }
  const { ys, xs } = band(h, w);
  const ring = ys.map((y, i) => difference[y * w + xs[i]]);
  const clutter = ring.filter((v) => v > TRIM_MIN_CONTRAST).length / ring.length;
  const sorted = ring.slice().sort((a, b) => a - b);
  const n = ring.length;
  const [low, middle, high] = [sorted[Math.floor(n / 4)], sorted[Math.floor(n / 2)], sorted[Math.floor(3 * n / 4)]];
  const noise = (high - low) / 1.349;
  const threshold = Math.max(TRIM_MIN_CONTRAST, middle + 4.0 * noise, 0.5 * otsu(difference));
  let mask = Array.from(difference, (v) => v > threshold);
  const around = neighbours(mask, h, w);
  mask = mask.map((v, i) => v && around[i] >= 3);
  if (mask.some((v) => v)) {
    const minimum = Math.max(1, Math.floor(SPECK_SHARE * Math.max(h, w)));
    const rowCounts = new Array(h).fill(0), colCounts = new Array(w).fill(0);
    mask.forEach((v, i) => { if (v) { rowCounts[Math.floor(i / w)]++; colCounts[i % w]++; } });
    const rows = mainRun(rowCounts.map((v) => v >= minimum)), cols = mainRun(colCounts.map((v) => v >= minimum));
    mask = mask.map((v, i) => v && rows[Math.floor(i / w)] && cols[i % w]);
  }
  return { mask, neighbours: neighbours(mask, h, w), clutter };
}

function otsu(values) {
  const histogram = new Array(256).fill(0);
  for (const v of values) histogram[Math.trunc(Math.min(v, 255.0))]++;
  let total = 0, meanTotal = 0;
  for (let i = 0; i < 256; i++) { total += histogram[i]; meanTotal += histogram[i] * i; }
  let best = -Infinity, found = 0, weight = 0, mean = 0;
  for (let t = 0; t < 255; t++) {
    weight += histogram[t];
    mean += histogram[t] * t;
    const spread = weight * (total - weight);
    const difference = meanTotal * weight - mean * total;
    const between = spread > 0.0 ? difference * difference / spread : -1.0;
    if (between > best) { best = between; found = t; }
  }
  return found;
}

function neighbours(mask, h, w) {
  const out = new Int16Array(h * w);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      let count = 0;
      for (let dy = -1; dy <= 1; dy++) {
        const yy = y + dy;
        if (yy < 0 || yy >= h) continue;
        for (let dx = -1; dx <= 1; dx++) {
          const xx = x + dx;
          if (xx >= 0 && xx < w && mask[yy * w + xx]) count++;
        }
      }
      out[y * w + x] = count;
    }
  }
  return out;
}

function mainRun(flags) {
  const indices = [];
  flags.forEach((v, i) => { if (v) indices.push(i); });
  if (!indices.length) return flags;
  const gap = Math.max(2, Math.floor(flags.length / 10));
  let bestStart = indices[0], start = indices[0], previous = indices[0], bestEnd = indices[0];
  for (const index of indices.slice(1)) {
    if (index - previous > gap) start = index;
    previous = index;
    if (previous - start > bestEnd - bestStart) { bestStart = start; bestEnd = previous; }
  }
  return flags.map((_, i) => i >= bestStart && i <= bestEnd);
}

function boundingBox(mask, h, w) {
  let top = h, bottom = -1, left = w, right = -1;
  mask.forEach((v, i) => {
    if (!v) return;
    const y = Math.floor(i / w), x = i % w;
    top = Math.min(top, y); bottom = Math.max(bottom, y); left = Math.min(left, x); right = Math.max(right, x);
  });
  return [top, bottom + 1, left, right + 1];
}

function strengthOf(values, background, light, around, h, w, c, top, bottom, left, right) {
  const out = picture(bottom - top, right - left, 1);
  for (let y = top; y < bottom; y++) {
    for (let x = left; x < right; x++) {
      const at = (y * w + x) * c;
      const luma = lumaOf(values, at, c), base = Math.max(lumaOf(background, at, c), 1.0);
      let strength = light ? 1.0 - luma / base : (luma - base) / Math.max(255.0 - base, 1.0);
      strength = Math.min(Math.max(strength, 0.0), 1.0);
      const soft = Math.min(around[y * w + x] / 3.0, 1.0);
      out.data[(y - top) * out.w + (x - left)] = Math.floor(strength * 255.0 * soft + 0.5);
    }
  }
  return out;
}

function levels(p) {
  const garment = Array.from(p.data).filter((v) => v > 0).sort((a, b) => a - b);
  if (!garment.length) return p;
  const top = garment[Math.floor((garment.length - 1) * LEVELS_PERCENTILE / 100)];
  const out = picture(p.h, p.w, 1);
  for (let i = 0; i < p.data.length; i++) out.data[i] = Math.min(Math.floor((p.data[i] * 255 + Math.floor(top / 2)) / top), 255);
  return out;
}

function sharpen(p) {
  const { h, w } = p;
  const at = (y, x) => p.data[Math.min(Math.max(y, 0), h - 1) * w + Math.min(Math.max(x, 0), w - 1)];
  const out = picture(h, w, 1);
  const kernel = [[1, 2, 1], [2, 4, 2], [1, 2, 1]];
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      let blur = 0;
      for (let dy = 0; dy < 3; dy++) for (let dx = 0; dx < 3; dx++) blur += kernel[dy][dx] * at(y + dy - 1, x + dx - 1);
      const value = at(y, x);
      const sharpened = Math.floor((128 * value + SHARPEN * (16 * value - blur) + 64) / 128);
      out.data[y * w + x] = Math.min(255, Math.max(0, sharpened));
    }
  }
  return out;
}

// --- the recipe a model records ------------------------------------------------------------------------------

// Decoded pixels (h, w, 1 or 3 channels: a photo whose every pixel has R = G = B counts as greyscale, as Pillow
// decodes a greyscale file) -> the model's input, through its recipe. notes.photo_doubt: what product_photo measured.
export function applyRecipe(p, height, width, channels, recipe, notes = {}) {
  const name = typeof recipe === "string" ? recipe : (recipe && recipe.name) || "crop";
  if (!RECIPES.includes(name)) throw new Error(`unknown input recipe ${name}; this page knows ${RECIPES.join(", ")}`);
  if (recipe && typeof recipe === "object" && (recipe.version || 1) !== 1) {
    throw new Error(`input recipe ${name} version ${recipe.version} is newer than this page (1)`);
  }
  notes.photo_doubt = 0.0;
  if (name === "product_photo") return productPhoto(p, height, width, channels, notes);
  const converted = channels === 1 ? grey(p) : p.c === 1 ? repeatChannels(p) : p;
  return (name === "crop" ? crop : pad)(converted, height, width);
}
