// "Classify on this device": the served version's ONNX file run by onnxruntime-web (WebAssembly) in the
// browser, the photo decoded by the browser and put through the model's input recipe (recipes.mjs, a port of
// contract/recipes.py), the out-of-distribution score computed from the file's features output as the service
// does. Everything comes from this service (serve/in_browser.py): no CDN, and the photo never leaves the device.

import { applyRecipe, picture } from "./recipes.mjs";

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
    async classify(file) {
      const started = performance.now();
      const notes = {};
      const pixels = device.recipe(await decode(file), notes);
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
// is greyscale, as Pillow would decode the file.
export async function decode(file) {
  let bitmap;
  try {
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
  return fromRGBA(context.getImageData(0, 0, width, height).data, height, width);
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
