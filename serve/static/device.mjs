// "Classify on this device": the served version's ONNX file run by onnxruntime-web (WebAssembly) in the
// browser, the photo decoded by the browser and put through the model's input recipe (recipes.mjs, a port of
// contract/recipes.py), the out-of-distribution score computed from the file's features output as the service
// does. Everything comes from this service (serve/in_browser.py): no CDN, and the photo never leaves the device.

import { applyRecipe, picture, WORKING_SCALE } from "./recipes.mjs";

const MAX_PIXELS = 64000000;  // as the service: a bigger photo is refused before decoding

export async function loadDevice(onProgress = () => {}) {
  onProgress("Fetching the model's description…");
  const described = await fetch("ondevice/model.json", { cache: "no-cache" });
  const meta = await described.json().catch(() => ({}));
  if (!described.ok || !meta.available) {
    throw new Error(meta.reason || `the service answered HTTP ${described.status}`);
  }
  onProgress(`Loading onnxruntime-web ${meta.runtime.version}…`);
  const ort = await import(new URL("ondevice/runtime/ort.wasm.min.mjs", location.href).href);
  ort.env.wasm.wasmPaths = new URL("ondevice/runtime/", location.href).href;  // never a CDN
  ort.env.wasm.numThreads = 1;  // threads would need cross-origin isolation; one is enough for one photo
  onProgress(`Downloading the model (${(meta.bytes / 1e6).toFixed(1)} MB, once)…`);
  const fetched = await fetch(meta.model_url, { cache: "no-cache" });
  if (!fetched.ok) throw new Error(`the model file could not be downloaded (HTTP ${fetched.status})`);
  const bytes = new Uint8Array(await fetched.arrayBuffer());
  if (globalThis.crypto && crypto.subtle) {  // only in a secure context (https, or this computer)
    const digest = Array.from(new Uint8Array(await crypto.subtle.digest("SHA-256", bytes)),
      (b) => b.toString(16).padStart(2, "0")).join("");
    if (digest !== meta.sha256) throw new Error("the downloaded model does not match its sha256: refused");
  }
  const session = await ort.InferenceSession.create(bytes, { executionProviders: ["wasm"] });
  const detector = meta.ood ? await loadDetector(meta.ood) : null;
  // The ONNX file's outputs by name (their order in outputNames is the runtime's): probabilities, features.
  const outputs = session.outputNames;
  const probabilitiesName = outputs.includes("probabilities") ? "probabilities" : outputs[0];
  const featuresName = outputs.find((name) => name !== probabilitiesName) || null;
  const device = {
    meta, ort,
    info: { runtime: "onnxruntime-web", version: meta.runtime.version, format: meta.format },
    async run(pixels) {  // model-size uint8 pixels (h * w * c) -> {probabilities, features}
      const { height, width, channels } = meta.input;
      const tensor = new ort.Tensor("float32", Float32Array.from(pixels), [1, height, width, channels]);
      const found = await session.run({ [session.inputNames[0]]: tensor });
      const result = { probabilities: Float32Array.from(found[probabilitiesName].data),
        features: featuresName ? Float32Array.from(found[featuresName].data) : null };
      tensor.dispose();
      outputs.forEach((name) => found[name].dispose());
      return result;
    },
    oodScore(features, photoDoubt) { return oodScore(detector, features, photoDoubt); },
    recipe(p, notes) {
      const { height, width, channels, recipe } = meta.input;
      return applyRecipe(p, height, width, channels, recipe, notes).data;
    },
    draftSide() { return draftSide(meta.input); },
    async classify(file) {
      const started = performance.now();
      const notes = {};
      const pixels = device.recipe(await decode(file, device.draftSide()), notes);
      const decoded = performance.now();
      const { probabilities, features } = await device.run(pixels);
      const score = device.oodScore(features, notes.photo_doubt);
      const total = probabilities.reduce((a, b) => a + b, 0);
      const order = Array.from(probabilities.keys()).sort((a, b) => probabilities[b] - probabilities[a] || a - b);
      return {
        model: { name: meta.name, version: meta.version, format: `${meta.format} on this device` },
        predictions: order.map((i) => ({ label: meta.labels[i], index: i,
          percent: Math.round(probabilities[i] / total * 10000) / 100 })),
        out_of_distribution: score === null ? null : score > 1,
        ood_score: score === null ? null : Math.round(score * 10000) / 10000,
        timing_ms: { decode: decoded - started, inference: performance.now() - decoded,
          total: performance.now() - started },
      };
    },
  };
  return device;
}

// The browser decodes (EXIF orientation applied, transparency on white); a photo whose every pixel has R = G = B
// is greyscale, as Pillow would decode the file. Given `side` (the device's draftSide()), a JPEG is then brought
// to the size the service decodes it at: see draft().
export async function decode(file, side = 0) {
  let bitmap, head;
  try {
    head = new Uint8Array(await file.slice(0, JPEG_HEAD_BYTES).arrayBuffer());
    bitmap = await createImageBitmap(file, { imageOrientation: "from-image", colorSpaceConversion: "none",
      premultiplyAlpha: "none" });
  } catch (err) {
    throw new Error("This browser cannot decode the file as a picture; is it a JPEG, PNG, WebP, GIF or BMP?");
  }
  const { width, height } = bitmap;
  if (width * height > MAX_PIXELS) {
    bitmap.close();
    throw new Error(`The image is ${width}x${height} pixels; the limit is ${MAX_PIXELS.toLocaleString()}.`);
  }
  const canvas = new OffscreenCanvas(width, height);
  const context = canvas.getContext("2d", { willReadFrequently: true });
  context.fillStyle = "#ffffff";
  context.fillRect(0, 0, width, height);
  context.drawImage(bitmap, 0, 0);
  bitmap.close();
  const rgba = context.getImageData(0, 0, width, height).data;
  const scale = side > 0 && isJpeg(head) ? draftScale(height, width, side) : 1;
  if (scale === 1) return fromRGBA(rgba, height, width);
  const drafted = draft(rgba, height, width, scale, jpegOrientation(head));
  return fromRGBA(drafted.rgba, drafted.height, drafted.width);
}

// --- a JPEG as the service decodes it --------------------------------------------------------------------------
// The service (contract/image.py decode_image) lets libjpeg decode a JPEG at a reduced DCT scale (Pillow's draft):
// 1/8, 1/4 or 1/2 of its size, the smallest that leaves both sides at least the recipe's draft side, so a 640x480
// photo for a 28x28 model is decoded at 80x60, and the recipe works at that size. A browser decodes at full size
// only; the recipe would then work at another size and frame the garment differently. libjpeg's 1/s decode keeps
// the low frequencies of each block: close to the mean of each s x s block of the full decode, which is what
// draft() computes. Measured on 300 phone-like product photos (bench/product_photos.py): always Pillow's size, every
// value within 6 levels of its draft decode, 89 % equal; the recipe's answer then has the service's top class on
// 99 % of them (96 % from the full-size decode).

const JPEG_HEAD_BYTES = 1 << 17;  // the start of the file, where the EXIF segment (at most 64 KiB) is

// contract/recipes.py InputRecipe.draft_side: the smallest side the service lets libjpeg decode a JPEG at.
export function draftSide(input) {
  const { height, width, recipe } = input;
  const name = typeof recipe === "string" ? recipe : (recipe && recipe.name) || "crop";
  return (WORKING_SCALE[name] || 0) * Math.max(height, width);
}

export function isJpeg(head) {
  return head.length >= 3 && head[0] === 0xff && head[1] === 0xd8 && head[2] === 0xff;
}

// Pillow's JpegImagePlugin.draft: scale = min(W // side, H // side), then the largest of 8, 4, 2, 1 not above it.
export function draftScale(height, width, side) {
  const scale = Math.min(Math.floor(width / side), Math.floor(height / side));
  return [8, 4, 2].find((s) => scale >= s) || 1;
}

// The mean of each scale x scale block of an upright RGBA picture, rounded half up (libjpeg's scaled decode rounds
// to the nearest; the mean of the pixels present in a partial block): ceil(h / s) x ceil(w / s) pixels, as Pillow's
// draft size. The blocks are the stored picture's: Pillow decodes, then turns the picture upright, so when an EXIF
// orientation flips or turns it, the partial blocks (of a side that is no multiple of the scale) are at the upright
// picture's left or top.
export function draft(rgba, height, width, scale, orientation = 1) {
  const outHeight = Math.ceil(height / scale), outWidth = Math.ceil(width / scale);
  const shiftX = [2, 3, 6, 7].includes(orientation) ? (scale - (width % scale)) % scale : 0;
  const shiftY = [3, 4, 7, 8].includes(orientation) ? (scale - (height % scale)) % scale : 0;
  const column = new Int32Array(width);
  for (let x = 0; x < width; x++) column[x] = Math.floor((x + shiftX) / scale);
  const sums = new Uint32Array(outHeight * outWidth * 3), counts = new Uint32Array(outHeight * outWidth);
  for (let y = 0; y < height; y++) {
    const row = Math.floor((y + shiftY) / scale) * outWidth;
    for (let x = 0, i = y * width * 4; x < width; x++, i += 4) {
      const block = row + column[x];
      sums[3 * block] += rgba[i];
      sums[3 * block + 1] += rgba[i + 1];
      sums[3 * block + 2] += rgba[i + 2];
      counts[block] += 1;
    }
  }
  const out = new Uint8ClampedArray(outHeight * outWidth * 4);
  for (let block = 0; block < counts.length; block++) {
    const n = counts[block], half = n >> 1;
    out[4 * block] = Math.floor((sums[3 * block] + half) / n);
    out[4 * block + 1] = Math.floor((sums[3 * block + 1] + half) / n);
    out[4 * block + 2] = Math.floor((sums[3 * block + 2] + half) / n);
    out[4 * block + 3] = 255;
  }
  return { rgba: out, height: outHeight, width: outWidth };
}

// The EXIF orientation (1 to 8) in a JPEG's first bytes: tag 0x0112 of the first image's directory in the first
// APP1 "Exif" segment, as Pillow reads it; 1 when there is none or it cannot be read.
export function jpegOrientation(head) {
  const view = new DataView(head.buffer, head.byteOffset, head.byteLength);
  try {
    let at = 2;
    while (at + 4 <= head.length && head[at] === 0xff) {
      const marker = head[at + 1];
      if (marker === 0xff) { at += 1; continue; }  // fill byte
      if (marker === 0xda || marker === 0xd9) break;  // the pixels start: no EXIF before them
      const length = view.getUint16(at + 2);
      const exif = [0x45, 0x78, 0x69, 0x66, 0, 0].every((b, k) => head[at + 4 + k] === b);
      if (marker === 0xe1 && exif) {
        const tiff = at + 10;
        const little = view.getUint16(tiff) === 0x4949;  // "II": little-endian, "MM": big-endian
        const directory = tiff + view.getUint32(tiff + 4, little);
        const entries = view.getUint16(directory, little);
        for (let k = 0; k < entries; k++) {
          const entry = directory + 2 + 12 * k;
          if (view.getUint16(entry, little) === 0x0112) {
            const value = view.getUint16(entry + 8, little);
            return value >= 1 && value <= 8 ? value : 1;
          }
        }
        return 1;
      }
      at += 2 + length;
    }
  } catch (err) {  // a segment that runs past the bytes read: no orientation found
    return 1;
  }
  return 1;
}

export function fromRGBA(rgba, height, width) {
  let isGrey = true;
  for (let i = 0; i < rgba.length && isGrey; i += 4) isGrey = rgba[i] === rgba[i + 1] && rgba[i] === rgba[i + 2];
  const channels = isGrey ? 1 : 3;
  const data = new Uint8Array(height * width * channels);
  for (let i = 0, j = 0; i < height * width; i++, j += 4) {
    if (isGrey) data[i] = rgba[j];
    else { data[3 * i] = rgba[j]; data[3 * i + 1] = rgba[j + 1]; data[3 * i + 2] = rgba[j + 2]; }
  }
  return picture(height, width, channels, data);
}

// The out-of-distribution detector (contract/ood.py): class means, the shared class precision's factor, the
// global mean and its factor, float32 one after the other in ood.bin.
async function loadDetector(ood) {
  const response = await fetch(ood.url, { cache: "no-cache" });
  if (!response.ok) throw new Error(`the out-of-distribution detector could not be downloaded (HTTP ${response.status})`);
  const all = new Float32Array(await response.arrayBuffer());
  const arrays = {};
  let offset = 0;
  for (const { name, shape } of ood.arrays) {
    const size = shape.reduce((a, b) => a * b, 1);
    arrays[name] = { data: all.subarray(offset, offset + size), shape };
    offset += size;
  }
  if (offset !== all.length) throw new Error("the out-of-distribution detector's file has the wrong size");
  return { ...ood, ...arrays };
}

// contract/ood.py: the relative Mahalanobis distance of the features on the file's validation scale, and the
// photo's doubt (product_photo); null without a detector.
export function oodScore(detector, features, photoDoubt) {
  if (!detector || !features) return null;
  const d = features.length;
  const squaredNorm = (vector, mean, meanOffset, factor) => {  // |(vector - mean) L|^2, L: d x d row-major
    let total = 0;
    for (let j = 0; j < d; j++) {
      let acc = 0;
      for (let i = 0; i < d; i++) acc += (vector[i] - mean[meanOffset + i]) * factor[i * d + j];
      total += acc * acc;
    }
    return total;
  };
  const classes = detector.class_means.shape[0];
  let toClass = Infinity;
  for (let c = 0; c < classes; c++) {
    toClass = Math.min(toClass, squaredNorm(features, detector.class_means.data, c * d, detector.class_factor.data));
  }
  const toAll = squaredNorm(features, detector.global_mean.data, 0, detector.global_factor.data);
  let score = (toClass - toAll - detector.center) / (detector.threshold - detector.center);
  if (detector.uses_photo_doubt && typeof photoDoubt === "number") score = Math.max(score, photoDoubt);
  return Math.max(score, 0.0);
}
