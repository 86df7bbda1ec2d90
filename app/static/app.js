// The pix2pix studio page: pick a model, upload a picture or paint a label map (or start from
// one of the scenes and examples the model ships), translate.
//
// Plain browser JavaScript, no framework and no build step. Label maps are painted into a
// Uint8Array of palette indices and rendered with putImageData, never with canvas strokes, so
// every pixel is exactly one palette color (the server rejects any other color).
"use strict";

(() => {
  const STORAGE_KEYS = {
    apiKey: "pix2pix.apiKey",
    theme: "pix2pix.theme",
    model: "pix2pix.model",
    resize: "pix2pix.resize",
    format: "pix2pix.format",
    autoTranslate: "pix2pix.autoTranslate",
  };
  const CANVAS_SIZE = 256;
  const MAX_CANVAS_SIDE = 2048;
  const AUTO_TRANSLATE_DELAY_MS = 450;
  const UNDO_DEPTH = 30;
  const INPUT_KIND_NAMES = { photo: "Photo", grayscale: "Grayscale", label_map: "Label map" };
  const FORMAT_EXTENSIONS = { png: "png", jpeg: "jpg", webp: "webp" };

  const element = (id) => document.getElementById(id);
  const ui = {
    modelSelect: element("model-select"),
    modelMeta: element("model-meta"),
    modelAbout: element("model-about"),
    settings: element("settings"),
    apiKey: element("api-key"),
    themeSelect: element("theme-select"),
    error: element("error-message"),
    errorText: element("error-text"),
    errorDismiss: element("error-dismiss"),
    inputNote: element("input-note"),
    uploadMode: element("upload-mode"),
    dropZone: element("drop-zone"),
    fileInput: element("file-input"),
    inputPreview: element("input-preview"),
    dropPrompt: element("drop-prompt"),
    inputCaption: element("input-caption"),
    paintMode: element("paint-mode"),
    palette: element("palette"),
    toolButtons: Array.from(document.querySelectorAll("[data-tool]")),
    brushSize: element("brush-size"),
    brushSizeValue: element("brush-size-value"),
    undo: element("tool-undo"),
    scene: element("tool-scene"),
    clear: element("tool-clear"),
    labelFileInput: element("label-file-input"),
    canvasFrame: element("canvas-frame"),
    canvas: element("paint-canvas"),
    brushCursor: element("brush-cursor"),
    autoTranslate: element("auto-translate"),
    examples: element("examples"),
    exampleList: element("example-list"),
    formatSelect: element("format-select"),
    resizeInputs: Array.from(document.querySelectorAll('input[name="resize"]')),
    translateButton: element("translate-button"),
    busyNote: element("busy-note"),
    outputFrame: element("output-frame"),
    outputImage: element("output-image"),
    outputEmpty: element("output-empty"),
    stats: element("stats"),
    downloadLink: element("download-link"),
  };

  const state = {
    models: [],
    model: null,
    painter: null,
    paletteKey: "",
    classIndex: 0,
    tool: "brush",
    upload: null, // {blob, name}
    inputUrl: null,
    outputUrl: null,
    controller: null,
    sequence: 0,
    autoTimer: 0,
    sceneIndex: -1,
    exampleToken: 0,
  };

  // -- small helpers -------------------------------------------------------------------------

  const storage = {
    get(key, fallback = "") {
      try {
        return window.localStorage.getItem(key) ?? fallback;
      } catch {
        return fallback;
      }
    },
    set(key, value) {
      try {
        if (value === "" || value === null) window.localStorage.removeItem(key);
        else window.localStorage.setItem(key, value);
      } catch {
        // Storage can be disabled (private windows); the page works without it.
      }
    },
  };

  function formatBytes(bytes) {
    if (bytes < 1024) return `${bytes} B`;
    if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
    return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
  }

  function fileStem(name) {
    const base = (name || "image").split(/[\\/]/).pop();
    const dot = base.lastIndexOf(".");
    return (dot > 0 ? base.slice(0, dot) : base).replace(/[^\w.-]+/g, "_") || "image";
  }

  function rgbCss(color) {
    return `rgb(${color[0]}, ${color[1]}, ${color[2]})`;
  }

  function isLight(color) {
    return 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2] > 150;
  }

  // -- errors and theme ----------------------------------------------------------------------

  function showError(message) {
    ui.errorText.textContent = message;
    ui.error.hidden = false;
  }

  function clearError() {
    ui.error.hidden = true;
    ui.errorText.textContent = "";
  }

  const systemDark = window.matchMedia("(prefers-color-scheme: dark)");

  // "auto" follows the system setting; the stylesheet only knows data-theme="dark".
  function applyTheme(theme) {
    const dark = theme === "dark" || (theme !== "light" && systemDark.matches);
    document.documentElement.dataset.theme = dark ? "dark" : "light";
  }

  // -- the HTTP API --------------------------------------------------------------------------

  function apiFetch(path, options = {}) {
    const headers = new Headers(options.headers || {});
    const key = ui.apiKey.value.trim();
    if (key) headers.set("X-API-Key", key);
    return fetch(path, { ...options, headers });
  }

  async function responseError(response) {
    let message = "";
    try {
      const body = await response.json();
      message = body?.error?.message || body?.detail || "";
      if (typeof message !== "string") message = JSON.stringify(message);
    } catch {
      // Not JSON (a proxy's HTML page, say): fall back to the status line.
    }
    if (!message) message = `${response.status} ${response.statusText || "error"}`.trim();
    if (response.status === 401 || response.status === 403) {
      ui.settings.open = true;
      message += " Set the API key under Settings.";
    }
    return new Error(message);
  }

  function networkError(error) {
    return new Error(`Could not reach the server (${error.message}).`);
  }

  // -- models --------------------------------------------------------------------------------

  async function loadModels() {
    let models;
    try {
      const response = await apiFetch("/v1/models");
      if (!response.ok) throw await responseError(response);
      models = (await response.json()).models || [];
    } catch (error) {
      ui.modelSelect.replaceChildren(new Option("No models", ""));
      showError(error instanceof TypeError ? networkError(error).message : error.message);
      return;
    }
    state.models = models;
    ui.modelSelect.replaceChildren();
    for (const model of models) {
      const ready = model.status === "ready";
      const label = ready
        ? model.task && model.task !== model.name
          ? `${model.name} · ${model.task}`
          : model.name
        : `${model.name} (unavailable: ${model.error || "not loaded"})`;
      const option = new Option(label, model.name);
      option.disabled = !ready;
      if (!ready) option.title = model.error || "This model could not be loaded.";
      ui.modelSelect.append(option);
    }
    const ready = models.filter((model) => model.status === "ready");
    if (!ready.length) {
      ui.modelSelect.disabled = models.length === 0;
      showError(
        models.length
          ? "No model is ready: see the reasons in the model list."
          : "The server has no models. Export a generator into its models folder.",
      );
      if (models.length) selectModel(models[0].name);
      return;
    }
    ui.modelSelect.disabled = false;
    const saved = storage.get(STORAGE_KEYS.model);
    const initial = ready.find((model) => model.name === saved) || ready[0];
    ui.modelSelect.value = initial.name;
    selectModel(initial.name);
  }

  function renderModelMeta(model) {
    const items = [];
    if (model) {
      items.push(["Input", INPUT_KIND_NAMES[model.input_kind] || model.input_kind]);
      items.push(["Trained at", `${model.train_size} px`]);
      if (model.color_space === "lab") items.push(["Color", "Lab"]);
      if (model.runtime) items.push(["Runtime", model.runtime]);
      if (model.version) items.push(["Version", model.version]);
      if (model.status !== "ready") items.push(["Status", "unavailable"]);
    }
    ui.modelMeta.replaceChildren(
      ...items.map(([name, value]) => {
        const item = document.createElement("li");
        const label = document.createElement("span");
        label.textContent = name;
        item.append(label, document.createTextNode(` ${value}`));
        if (name === "Status") item.classList.add("is-warning");
        return item;
      }),
    );
    ui.modelAbout.textContent = model?.description || "";
    ui.modelAbout.hidden = !model?.description;
  }

  function selectModel(name) {
    const model = state.models.find((candidate) => candidate.name === name) || null;
    state.model = model;
    renderModelMeta(model);
    cancelRequest();
    clearOutput();
    clearError();
    if (!model) return;
    storage.set(STORAGE_KEYS.model, model.status === "ready" ? model.name : "");
    if (model.status !== "ready") {
      showError(`Model “${model.name}” is unavailable: ${model.error || "it could not be loaded"}.`);
    }
    const painting = model.input_kind === "label_map";
    ui.paintMode.hidden = !painting;
    ui.uploadMode.hidden = painting;
    const ready = model.status === "ready";
    renderExamples(ready ? model : null);
    let freshCanvas = false;
    if (painting) {
      freshCanvas = setupPainter(model);
      ui.inputNote.textContent = `Paint with ${model.palette.length} classes`;
    } else {
      ui.inputNote.textContent =
        model.input_kind === "grayscale"
          ? model.color_space === "lab"
            ? "Colorizes the lightness of any picture"
            : "Color pictures are read as grayscale"
          : "Any picture, any size";
    }
    updateTranslateButton();
    if (!ready) return;
    // A first view shows a translation: the model's first scene, or its first example.
    if (painting && freshCanvas && model.scenes?.length) {
      openExample(model.scenes[0], { initial: true, translate: ui.autoTranslate.checked });
    } else if (painting ? ui.autoTranslate.checked : state.upload) {
      translate();
    } else if (model.examples?.length) {
      openExample(model.examples[0], { initial: true });
    }
  }

  function inputReady() {
    const model = state.model;
    if (!model || model.status !== "ready") return false;
    return model.input_kind === "label_map" ? Boolean(state.painter) : Boolean(state.upload);
  }

  function updateTranslateButton() {
    ui.translateButton.disabled = !inputReady();
  }

  // -- translating ---------------------------------------------------------------------------

  function cancelRequest() {
    window.clearTimeout(state.autoTimer);
    if (state.controller) state.controller.abort();
    state.controller = null;
    state.sequence += 1;
    setBusy(false);
  }

  function setBusy(busy) {
    ui.outputFrame.setAttribute("aria-busy", String(busy));
    ui.outputFrame.classList.toggle("is-busy", busy);
    ui.translateButton.classList.toggle("is-busy", busy);
    ui.translateButton.querySelector(".button-text").textContent = busy
      ? "Translating…"
      : "Translate";
    ui.busyNote.textContent = busy ? "Translating…" : "";
  }

  function scheduleAutoTranslate() {
    window.clearTimeout(state.autoTimer);
    if (!ui.autoTranslate.checked || !inputReady()) return;
    state.autoTimer = window.setTimeout(translate, AUTO_TRANSLATE_DELAY_MS);
  }

  async function translate() {
    window.clearTimeout(state.autoTimer);
    if (!inputReady()) {
      if (state.model && !state.upload) showError("Choose an image to translate first.");
      return;
    }
    const model = state.model;
    if (state.controller) state.controller.abort();
    const controller = new AbortController();
    const sequence = ++state.sequence;
    state.controller = controller;
    setBusy(true);
    try {
      let blob;
      let name;
      if (model.input_kind === "label_map") {
        blob = await state.painter.toBlob();
        name = "label-map.png";
      } else {
        ({ blob, name } = state.upload);
      }
      const format = ui.formatSelect.value;
      const resize = ui.resizeInputs.find((input) => input.checked)?.value || "pad";
      const form = new FormData();
      form.append("image", blob, name);
      const query = new URLSearchParams({ format, resize });
      const url = `/v1/models/${encodeURIComponent(model.name)}/translate?${query}`;
      const started = performance.now();
      let response;
      try {
        response = await apiFetch(url, { method: "POST", body: form, signal: controller.signal });
      } catch (error) {
        if (error.name === "AbortError") throw error;
        throw networkError(error);
      }
      if (!response.ok) throw await responseError(response);
      const result = await response.blob();
      const roundTripMs = performance.now() - started;
      if (sequence !== state.sequence) return;
      await showOutput(result, {
        model: response.headers.get("X-Model") || model.name,
        inferenceMs: response.headers.get("X-Inference-Ms"),
        version: response.headers.get("X-Model-Version"),
        roundTripMs,
        stem: fileStem(name),
        extension: FORMAT_EXTENSIONS[format] || format,
      });
      const version = response.headers.get("X-Model-Version");
      if (version && state.model === model && model.version !== version) {
        // The server swapped in a new version of this model since the list was read.
        model.version = version;
        renderModelMeta(model);
      }
      if (sequence === state.sequence) clearError();
    } catch (error) {
      if (error.name === "AbortError" || sequence !== state.sequence) return;
      showError(error.message || String(error));
    } finally {
      if (sequence === state.sequence) {
        state.controller = null;
        setBusy(false);
      }
    }
  }

  async function showOutput(blob, info) {
    const url = URL.createObjectURL(blob);
    const image = ui.outputImage;
    image.src = url;
    try {
      await image.decode();
    } catch {
      URL.revokeObjectURL(url);
      throw new Error("The server's reply is not an image this browser can show.");
    }
    if (state.outputUrl) URL.revokeObjectURL(state.outputUrl);
    state.outputUrl = url;
    image.alt = `Translation of ${info.stem} by the model ${info.model}`;
    image.hidden = false;
    ui.outputEmpty.hidden = true;

    const rows = [];
    if (info.inferenceMs !== null && info.inferenceMs !== "") {
      rows.push(["Inference", `${Number(info.inferenceMs).toFixed(1)} ms`]);
    }
    rows.push(["Round trip", `${Math.round(info.roundTripMs)} ms`]);
    if (info.version) rows.push(["Version", info.version]);
    rows.push(["Size", `${image.naturalWidth} × ${image.naturalHeight} px`]);
    rows.push(["File", `${info.extension.toUpperCase()} · ${formatBytes(blob.size)}`]);
    ui.stats.replaceChildren(
      ...rows.flatMap(([term, value]) => {
        const dt = document.createElement("dt");
        const dd = document.createElement("dd");
        dt.textContent = term;
        dd.textContent = value;
        const row = document.createElement("div");
        row.append(dt, dd);
        return [row];
      }),
    );
    ui.downloadLink.href = url;
    ui.downloadLink.download = `${info.model}-${info.stem}.${info.extension}`;
    ui.downloadLink.removeAttribute("aria-disabled");
    ui.downloadLink.hidden = false;
  }

  function clearOutput() {
    ui.outputImage.hidden = true;
    ui.outputImage.removeAttribute("src");
    ui.outputImage.alt = "";
    ui.outputEmpty.hidden = false;
    ui.stats.replaceChildren();
    ui.downloadLink.hidden = true;
    ui.downloadLink.setAttribute("aria-disabled", "true");
    ui.downloadLink.href = "#";
    if (state.outputUrl) URL.revokeObjectURL(state.outputUrl);
    state.outputUrl = null;
  }

  // -- uploads (photo and grayscale models) --------------------------------------------------

  async function setUpload(file) {
    if (!file) return;
    markExample(null);
    if (file.type && !file.type.startsWith("image/")) {
      showError(`“${file.name}” is not an image (${file.type}).`);
      return;
    }
    const url = URL.createObjectURL(file);
    const preview = ui.inputPreview;
    preview.src = url;
    let shown = true;
    try {
      await preview.decode();
    } catch {
      // The browser cannot show it (TIFF, say); the server may still read it.
      shown = false;
    }
    if (state.inputUrl) URL.revokeObjectURL(state.inputUrl);
    state.inputUrl = url;
    const name = file.name || "pasted-image.png";
    state.upload = { blob: file, name };
    preview.alt = shown ? `Input image ${name}` : "";
    preview.hidden = !shown;
    ui.dropZone.classList.toggle("has-image", shown);
    const size = shown ? `${preview.naturalWidth} × ${preview.naturalHeight} px` : "no preview";
    ui.inputCaption.textContent = `${name} · ${size} · ${formatBytes(file.size)}`;
    clearOutput();
    clearError();
    updateTranslateButton();
    translate();
  }

  function firstImageFile(list) {
    return Array.from(list || []).find((file) => file.type.startsWith("image/")) || null;
  }

  // -- scenes and examples (listed by the model's spec, served beside it) --------------------

  // The scenes (label-map models) and then the examples, each tagged with its kind.
  function listedExamples(model) {
    if (!model) return [];
    const scenes = model.input_kind === "label_map" ? model.scenes || [] : [];
    return [
      ...scenes.map((entry) => ({ ...entry, kind: "scene" })),
      ...(model.examples || []).map((entry) => ({ ...entry, kind: "example" })),
    ];
  }

  function renderExamples(model) {
    const entries = listedExamples(model);
    ui.examples.hidden = entries.length === 0;
    ui.exampleList.replaceChildren(
      ...entries.map((entry) => {
        const button = document.createElement("button");
        button.type = "button";
        button.className = "example";
        button.dataset.testid = "example-button";
        button.dataset.kind = entry.kind;
        button.dataset.url = entry.url;
        button.setAttribute("aria-pressed", "false");
        button.title =
          entry.kind === "scene" ? `Paint from the scene “${entry.name}”` : `Try “${entry.name}”`;
        const thumbnail = document.createElement("img");
        thumbnail.src = entry.url;
        thumbnail.alt = "";
        thumbnail.decoding = "async";
        const name = document.createElement("span");
        name.className = "example-name";
        name.textContent = entry.name;
        button.append(thumbnail, name);
        if (entry.kind === "scene") {
          const tag = document.createElement("span");
          tag.className = "example-tag";
          tag.textContent = "scene";
          button.append(tag);
        }
        button.addEventListener("click", () => openExample(entry));
        return button;
      }),
    );
  }

  function markExample(url) {
    for (const button of ui.exampleList.children) {
      button.setAttribute("aria-pressed", String(button.dataset.url === url));
    }
  }

  // Fetch a scene or example and put it in as the input: into the canvas for label-map models
  // (undoable, except the first view's), as the upload otherwise; then translate it.
  async function openExample(entry, { initial = false, translate: translateIt = true } = {}) {
    const model = state.model;
    if (!model) return;
    const token = ++state.exampleToken;
    let file;
    try {
      const response = await apiFetch(entry.url);
      if (!response.ok) throw await responseError(response);
      const blob = await response.blob();
      file = new File([blob], entry.url.split("/").pop(), { type: blob.type });
    } catch (error) {
      if (token !== state.exampleToken) return;
      const reason = error instanceof TypeError ? networkError(error).message : error.message;
      showError(`Could not load the example “${entry.name}”: ${reason}`);
      return;
    }
    // A later click, or another model, wins over this one.
    if (token !== state.exampleToken || state.model !== model) return;
    const scenes = model.scenes || [];
    if (model.input_kind !== "label_map") {
      await setUpload(file);
      markExample(entry.url);
      return;
    }
    if (!state.painter) return;
    try {
      await state.painter.load(file);
    } catch (error) {
      showError(`Could not read the example “${entry.name}” as a label map: ${error.message}`);
      return;
    }
    if (initial) {
      state.painter.history = [];
      ui.undo.disabled = true;
    }
    const sceneIndex = scenes.findIndex((scene) => scene.url === entry.url);
    if (sceneIndex >= 0) state.sceneIndex = sceneIndex;
    markExample(entry.url);
    clearError();
    ui.inputNote.textContent = `${entry.name} · paint with ${model.palette.length} classes`;
    if (translateIt) translate();
  }

  // -- the label-map painter -----------------------------------------------------------------

  class LabelPainter {
    constructor(canvas, palette) {
      this.canvas = canvas;
      this.context = canvas.getContext("2d", { willReadFrequently: true });
      this.palette = palette;
      this.colors = palette.map((entry) => entry.color.map(Number));
      this.history = [];
      this.frame = 0;
      this.resize(CANVAS_SIZE, CANVAS_SIZE);
    }

    resize(width, height) {
      this.width = width;
      this.height = height;
      this.ids = new Uint8Array(width * height);
      this.canvas.width = width;
      this.canvas.height = height;
      this.image = this.context.createImageData(width, height);
    }

    // History -------------------------------------------------------------------------------

    remember() {
      this.history.push({ width: this.width, height: this.height, ids: this.ids.slice() });
      if (this.history.length > UNDO_DEPTH) this.history.shift();
      ui.undo.disabled = false;
    }

    undo() {
      const previous = this.history.pop();
      ui.undo.disabled = this.history.length === 0;
      if (!previous) return false;
      if (previous.width !== this.width || previous.height !== this.height) {
        this.resize(previous.width, previous.height);
      }
      this.ids.set(previous.ids);
      this.render();
      return true;
    }

    // Rendering -----------------------------------------------------------------------------

    render() {
      const { data } = this.image;
      const { ids, colors } = this;
      for (let pixel = 0, offset = 0; pixel < ids.length; pixel += 1, offset += 4) {
        const color = colors[ids[pixel]];
        data[offset] = color[0];
        data[offset + 1] = color[1];
        data[offset + 2] = color[2];
        data[offset + 3] = 255;
      }
      this.context.putImageData(this.image, 0, 0);
    }

    requestRender() {
      if (this.frame) return;
      this.frame = window.requestAnimationFrame(() => {
        this.frame = 0;
        this.render();
      });
    }

    toBlob() {
      if (this.frame) {
        window.cancelAnimationFrame(this.frame);
        this.frame = 0;
      }
      this.render();
      return new Promise((resolve, reject) => {
        this.canvas.toBlob(
          (blob) => (blob ? resolve(blob) : reject(new Error("Could not encode the canvas."))),
          "image/png",
        );
      });
    }

    // Painting ------------------------------------------------------------------------------

    disc(centerX, centerY, diameter, index) {
      const radius = diameter / 2;
      const limit = radius * radius;
      const top = Math.max(0, Math.floor(centerY - radius));
      const bottom = Math.min(this.height - 1, Math.ceil(centerY + radius));
      const left = Math.max(0, Math.floor(centerX - radius));
      const right = Math.min(this.width - 1, Math.ceil(centerX + radius));
      for (let y = top; y <= bottom; y += 1) {
        const dy = y + 0.5 - centerY;
        for (let x = left; x <= right; x += 1) {
          const dx = x + 0.5 - centerX;
          if (dx * dx + dy * dy <= limit) this.ids[y * this.width + x] = index;
        }
      }
      // A one-pixel brush must still mark the pixel under the pointer.
      const x = Math.floor(centerX);
      const y = Math.floor(centerY);
      if (x >= 0 && y >= 0 && x < this.width && y < this.height) {
        this.ids[y * this.width + x] = index;
      }
    }

    line(fromX, fromY, toX, toY, diameter, index) {
      const distance = Math.hypot(toX - fromX, toY - fromY);
      const step = Math.max(0.5, diameter / 4);
      const steps = Math.max(1, Math.ceil(distance / step));
      for (let i = 1; i <= steps; i += 1) {
        const t = i / steps;
        this.disc(fromX + (toX - fromX) * t, fromY + (toY - fromY) * t, diameter, index);
      }
      this.requestRender();
    }

    // Scanline flood fill over 4-connected pixels of the same class.
    fill(startX, startY, index) {
      const { width, height, ids } = this;
      const x0 = Math.floor(startX);
      const y0 = Math.floor(startY);
      if (x0 < 0 || y0 < 0 || x0 >= width || y0 >= height) return false;
      const target = ids[y0 * width + x0];
      if (target === index) return false;
      const stack = [x0, y0];
      while (stack.length) {
        const y = stack.pop();
        let x = stack.pop();
        let offset = y * width + x;
        while (x > 0 && ids[offset - 1] === target) {
          x -= 1;
          offset -= 1;
        }
        let spanAbove = false;
        let spanBelow = false;
        for (; x < width && ids[offset] === target; x += 1, offset += 1) {
          ids[offset] = index;
          if (y > 0) {
            const above = ids[offset - width] === target;
            if (above && !spanAbove) stack.push(x, y - 1);
            spanAbove = above;
          }
          if (y < height - 1) {
            const below = ids[offset + width] === target;
            if (below && !spanBelow) stack.push(x, y + 1);
            spanBelow = below;
          }
        }
      }
      this.render();
      return true;
    }

    clear(index = 0) {
      this.ids.fill(index);
      this.render();
    }

    // A simple landscape when the palette has a sky and a ground class; else the first class.
    scene() {
      const find = (pattern) => this.palette.findIndex((entry) => pattern.test(entry.name));
      const sky = find(/sky/i);
      const ground = find(/grass|ground|field|meadow|land|earth|dirt|sand|road|floor/i);
      const mountain = find(/mountain|rock|hill|stone/i);
      const { width, height, ids } = this;
      if (sky < 0 || ground < 0) {
        this.clear(0);
        return;
      }
      for (let x = 0; x < width; x += 1) {
        const u = x / width;
        const horizon = Math.round(height * (0.62 + 0.03 * Math.sin(u * Math.PI * 2.4 + 0.6)));
        const peak =
          mountain >= 0
            ? Math.round(
                height *
                  Math.min(
                    0.62,
                    0.3 + 1.1 * Math.abs(u - 0.33),
                    0.42 + 1.3 * Math.abs(u - 0.72),
                  ),
              )
            : horizon;
        for (let y = 0; y < height; y += 1) {
          let index = sky;
          if (y >= horizon) index = ground;
          else if (y >= peak) index = mountain;
          ids[y * width + x] = index;
        }
      }
      this.render();
    }

    // Load an image as a label map: exact palette colors, or class ids stored as gray levels.
    // Returns a note for the person when pixels had to be snapped to the nearest color.
    async load(file) {
      const bitmap = await createImageBitmap(file, {
        colorSpaceConversion: "none",
        premultiplyAlpha: "none",
      });
      const { width, height } = bitmap;
      if (width > MAX_CANVAS_SIDE || height > MAX_CANVAS_SIDE) {
        bitmap.close();
        throw new Error(
          `The label map is ${width} × ${height} px; the canvas takes at most ${MAX_CANVAS_SIDE} px a side.`,
        );
      }
      const scratch = document.createElement("canvas");
      scratch.width = width;
      scratch.height = height;
      const context = scratch.getContext("2d", { willReadFrequently: true });
      context.drawImage(bitmap, 0, 0);
      bitmap.close();
      const { data } = context.getImageData(0, 0, width, height);

      const byColor = new Map(
        this.colors.map((color, index) => [(color[0] << 16) | (color[1] << 8) | color[2], index]),
      );
      const byId = new Map(this.palette.map((entry, index) => [Number(entry.id), index]));
      const ids = new Uint8Array(width * height);
      let exact = true;
      let gray = true;
      for (let pixel = 0, offset = 0; pixel < ids.length; pixel += 1, offset += 4) {
        const r = data[offset];
        const g = data[offset + 1];
        const b = data[offset + 2];
        if (data[offset + 3] === 0) continue; // transparent: the first class
        const index = byColor.get((r << 16) | (g << 8) | b);
        if (index === undefined) exact = false;
        else ids[pixel] = index;
        if (r !== g || g !== b || !byId.has(r)) gray = false;
      }
      let note = "";
      if (!exact) {
        if (gray) {
          for (let pixel = 0, offset = 0; pixel < ids.length; pixel += 1, offset += 4) {
            ids[pixel] = data[offset + 3] === 0 ? 0 : byId.get(data[offset]);
          }
          note = "Read as class ids.";
        } else {
          let snapped = 0;
          for (let pixel = 0, offset = 0; pixel < ids.length; pixel += 1, offset += 4) {
            if (data[offset + 3] === 0) continue;
            const key = (data[offset] << 16) | (data[offset + 1] << 8) | data[offset + 2];
            if (byColor.has(key)) continue;
            ids[pixel] = this.nearest(data[offset], data[offset + 1], data[offset + 2]);
            snapped += 1;
          }
          note = `${snapped} pixel(s) had colors outside the palette and were snapped to the nearest class.`;
        }
      }
      this.remember();
      this.resize(width, height);
      this.ids.set(ids);
      this.render();
      return note;
    }

    nearest(r, g, b) {
      let best = 0;
      let bestDistance = Infinity;
      this.colors.forEach((color, index) => {
        const distance = (color[0] - r) ** 2 + (color[1] - g) ** 2 + (color[2] - b) ** 2;
        if (distance < bestDistance) {
          best = index;
          bestDistance = distance;
        }
      });
      return best;
    }
  }

  function paletteKey(palette) {
    return JSON.stringify(palette.map((entry) => [entry.id, entry.color]));
  }

  // A new canvas for a model whose palette differs from the last one's; returns whether it is
  // new (a model with the same palette keeps what was painted).
  function setupPainter(model) {
    if (!model.palette?.length) {
      state.painter = null;
      ui.palette.replaceChildren();
      showError(`Model “${model.name}” takes label maps but lists no palette.`);
      return false;
    }
    const key = paletteKey(model.palette);
    if (state.painter && state.paletteKey === key) return false;
    state.paletteKey = key;
    state.painter = new LabelPainter(ui.canvas, model.palette);
    state.sceneIndex = -1;
    // Blank while the model's first scene is fetched; the built-in landscape if it lists none.
    if (model.scenes?.length) state.painter.clear(0);
    else state.painter.scene();
    ui.undo.disabled = true;
    state.classIndex = Math.min(1, model.palette.length - 1);
    renderPalette(model.palette);
    setTool("brush");
    return true;
  }

  function renderPalette(palette) {
    ui.palette.replaceChildren(
      ...palette.map((entry, index) => {
        const button = document.createElement("button");
        button.type = "button";
        button.className = "swatch";
        button.dataset.testid = "palette-swatch";
        button.dataset.classId = String(entry.id);
        button.dataset.index = String(index);
        button.title = index < 9 ? `${entry.name} (key ${index + 1})` : entry.name;
        const chip = document.createElement("span");
        chip.className = "swatch-color";
        chip.style.backgroundColor = rgbCss(entry.color);
        const name = document.createElement("span");
        name.className = "swatch-name";
        name.textContent = entry.name;
        button.append(chip, name);
        if (index < 9) {
          const key = document.createElement("kbd");
          key.textContent = String(index + 1);
          key.setAttribute("aria-hidden", "true");
          button.append(key);
        }
        button.addEventListener("click", () => selectClass(index));
        return button;
      }),
    );
    selectClass(state.classIndex);
  }

  function selectClass(index) {
    const palette = state.model?.palette || [];
    if (index < 0 || index >= palette.length) return;
    state.classIndex = index;
    for (const button of ui.palette.children) {
      button.setAttribute("aria-pressed", String(Number(button.dataset.index) === index));
    }
    if (state.tool === "eraser") setTool("brush");
    updateBrushCursorStyle();
  }

  function setTool(tool) {
    state.tool = tool;
    for (const button of ui.toolButtons) {
      button.setAttribute("aria-pressed", String(button.dataset.tool === tool));
    }
    ui.canvasFrame.dataset.tool = tool;
    updateBrushCursorStyle();
  }

  function setBrushSize(size) {
    const clamped = Math.max(Number(ui.brushSize.min), Math.min(Number(ui.brushSize.max), size));
    ui.brushSize.value = String(clamped);
    ui.brushSizeValue.textContent = `${clamped} px`;
  }

  function paintIndex() {
    return state.tool === "eraser" ? 0 : state.classIndex;
  }

  function canvasPoint(event) {
    const rect = ui.canvas.getBoundingClientRect();
    const painter = state.painter;
    return {
      x: ((event.clientX - rect.left) / rect.width) * painter.width,
      y: ((event.clientY - rect.top) / rect.height) * painter.height,
    };
  }

  function updateBrushCursorStyle() {
    const color = state.model?.palette?.[paintIndex()]?.color;
    if (!color) return;
    ui.brushCursor.style.setProperty("--brush-color", rgbCss(color));
    ui.brushCursor.classList.toggle("on-light", isLight(color));
  }

  function moveBrushCursor(event) {
    const painter = state.painter;
    if (!painter || state.tool === "fill" || event.pointerType === "touch") {
      ui.brushCursor.hidden = true;
      return;
    }
    const rect = ui.canvas.getBoundingClientRect();
    const frame = ui.canvasFrame.getBoundingClientRect();
    const scale = rect.width / painter.width;
    const diameter = Math.max(4, Number(ui.brushSize.value) * scale);
    ui.brushCursor.style.width = `${diameter}px`;
    ui.brushCursor.style.height = `${diameter}px`;
    ui.brushCursor.style.transform = `translate(${event.clientX - frame.left - diameter / 2}px, ${
      event.clientY - frame.top - diameter / 2
    }px)`;
    ui.brushCursor.hidden = false;
  }

  const stroke = { active: false, pointerId: null, x: 0, y: 0 };

  function onPointerDown(event) {
    const painter = state.painter;
    if (!painter || (event.pointerType === "mouse" && event.button !== 0)) return;
    event.preventDefault();
    ui.canvas.focus({ preventScroll: true });
    const point = canvasPoint(event);
    if (state.tool === "fill") {
      painter.remember();
      if (painter.fill(point.x, point.y, state.classIndex)) scheduleAutoTranslate();
      else painter.undo();
      return;
    }
    window.clearTimeout(state.autoTimer);
    markExample(null);
    painter.remember();
    ui.canvas.setPointerCapture(event.pointerId);
    Object.assign(stroke, { active: true, pointerId: event.pointerId, ...point });
    painter.disc(point.x, point.y, Number(ui.brushSize.value), paintIndex());
    painter.requestRender();
  }

  function onPointerMove(event) {
    moveBrushCursor(event);
    if (!stroke.active || event.pointerId !== stroke.pointerId) return;
    const painter = state.painter;
    const size = Number(ui.brushSize.value);
    const index = paintIndex();
    const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
    for (const sample of events.length ? events : [event]) {
      const point = canvasPoint(sample);
      painter.line(stroke.x, stroke.y, point.x, point.y, size, index);
      stroke.x = point.x;
      stroke.y = point.y;
    }
  }

  function onPointerUp(event) {
    if (!stroke.active || event.pointerId !== stroke.pointerId) return;
    stroke.active = false;
    if (ui.canvas.hasPointerCapture(event.pointerId)) {
      ui.canvas.releasePointerCapture(event.pointerId);
    }
    state.painter.render();
    scheduleAutoTranslate();
  }

  function onKeyDown(event) {
    if (!state.painter || ui.paintMode.hidden) return;
    const target = event.target;
    const typing =
      target instanceof HTMLInputElement && target.type !== "range" && target.type !== "checkbox";
    if (typing || target instanceof HTMLSelectElement || target instanceof HTMLTextAreaElement) {
      return;
    }
    if ((event.ctrlKey || event.metaKey) && event.key.toLowerCase() === "z") {
      event.preventDefault();
      if (state.painter.undo()) scheduleAutoTranslate();
      return;
    }
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const key = event.key.toLowerCase();
    if (/^[1-9]$/.test(key)) selectClass(Number(key) - 1);
    else if (key === "b") setTool("brush");
    else if (key === "f") setTool("fill");
    else if (key === "e") setTool("eraser");
    else if (key === "[") setBrushSize(Number(ui.brushSize.value) - 2);
    else if (key === "]") setBrushSize(Number(ui.brushSize.value) + 2);
    else return;
    event.preventDefault();
  }

  async function loadLabelFile(file) {
    if (!file || !state.painter) return;
    try {
      const note = await state.painter.load(file);
      markExample(null);
      clearError();
      ui.inputNote.textContent = note || `Loaded ${file.name}`;
      scheduleAutoTranslate();
    } catch (error) {
      showError(`Could not read “${file.name}” as a label map: ${error.message}`);
    }
  }

  // -- wiring --------------------------------------------------------------------------------

  function wire() {
    ui.apiKey.value = storage.get(STORAGE_KEYS.apiKey);
    ui.apiKey.addEventListener("change", () => {
      storage.set(STORAGE_KEYS.apiKey, ui.apiKey.value.trim());
      if (!state.models.length) loadModels();
    });

    ui.themeSelect.value = storage.get(STORAGE_KEYS.theme, "auto");
    applyTheme(ui.themeSelect.value);
    ui.themeSelect.addEventListener("change", () => {
      storage.set(STORAGE_KEYS.theme, ui.themeSelect.value === "auto" ? "" : ui.themeSelect.value);
      applyTheme(ui.themeSelect.value);
    });
    systemDark.addEventListener("change", () => applyTheme(ui.themeSelect.value));

    const savedFormat = storage.get(STORAGE_KEYS.format);
    if (savedFormat in FORMAT_EXTENSIONS) ui.formatSelect.value = savedFormat;
    const savedResize = storage.get(STORAGE_KEYS.resize);
    for (const input of ui.resizeInputs) input.checked = input.value === (savedResize || "pad");
    ui.autoTranslate.checked = storage.get(STORAGE_KEYS.autoTranslate, "on") !== "off";

    const optionChanged = () => {
      storage.set(STORAGE_KEYS.format, ui.formatSelect.value);
      storage.set(
        STORAGE_KEYS.resize,
        ui.resizeInputs.find((input) => input.checked)?.value || "pad",
      );
      if (inputReady() && (state.model.input_kind !== "label_map" || ui.autoTranslate.checked)) {
        translate();
      }
    };
    ui.formatSelect.addEventListener("change", optionChanged);
    for (const input of ui.resizeInputs) input.addEventListener("change", optionChanged);
    ui.autoTranslate.addEventListener("change", () => {
      storage.set(STORAGE_KEYS.autoTranslate, ui.autoTranslate.checked ? "on" : "off");
    });

    ui.modelSelect.addEventListener("change", () => selectModel(ui.modelSelect.value));
    ui.translateButton.addEventListener("click", translate);
    ui.errorDismiss.addEventListener("click", clearError);

    ui.fileInput.addEventListener("change", () => {
      setUpload(ui.fileInput.files[0]);
      ui.fileInput.value = "";
    });
    for (const type of ["dragenter", "dragover"]) {
      ui.dropZone.addEventListener(type, (event) => {
        event.preventDefault();
        event.dataTransfer.dropEffect = "copy";
        ui.dropZone.classList.add("is-dragging");
      });
    }
    ui.dropZone.addEventListener("dragleave", (event) => {
      if (!ui.dropZone.contains(event.relatedTarget)) ui.dropZone.classList.remove("is-dragging");
    });
    ui.dropZone.addEventListener("drop", (event) => {
      event.preventDefault();
      ui.dropZone.classList.remove("is-dragging");
      const file = firstImageFile(event.dataTransfer.files);
      if (file) setUpload(file);
      else showError("Drop an image file (PNG, JPEG, WebP…).");
    });
    ui.canvasFrame.addEventListener("dragover", (event) => event.preventDefault());
    ui.canvasFrame.addEventListener("drop", (event) => {
      event.preventDefault();
      loadLabelFile(firstImageFile(event.dataTransfer.files));
    });
    // A file dropped outside a drop target must not navigate away from the page.
    window.addEventListener("dragover", (event) => event.preventDefault());
    window.addEventListener("drop", (event) => event.preventDefault());
    document.addEventListener("paste", (event) => {
      const file = firstImageFile(event.clipboardData?.files);
      if (!file || !state.model) return;
      if (state.model.input_kind === "label_map") loadLabelFile(file);
      else setUpload(file);
    });

    for (const button of ui.toolButtons) {
      button.addEventListener("click", () => setTool(button.dataset.tool));
    }
    setBrushSize(Number(ui.brushSize.value));
    ui.brushSize.addEventListener("input", () => setBrushSize(Number(ui.brushSize.value)));
    ui.undo.addEventListener("click", () => {
      if (state.painter?.undo()) scheduleAutoTranslate();
    });
    ui.clear.addEventListener("click", () => {
      if (!state.painter) return;
      markExample(null);
      state.painter.remember();
      state.painter.clear(0);
      scheduleAutoTranslate();
    });
    ui.scene.addEventListener("click", () => {
      if (!state.painter) return;
      const scenes = state.model?.scenes || [];
      if (scenes.length) {
        openExample(scenes[(state.sceneIndex + 1) % scenes.length]);
        return;
      }
      state.painter.remember();
      if (state.painter.width !== CANVAS_SIZE || state.painter.height !== CANVAS_SIZE) {
        state.painter.resize(CANVAS_SIZE, CANVAS_SIZE);
      }
      state.painter.scene();
      scheduleAutoTranslate();
    });
    ui.labelFileInput.addEventListener("change", () => {
      loadLabelFile(ui.labelFileInput.files[0]);
      ui.labelFileInput.value = "";
    });

    ui.canvas.addEventListener("pointerdown", onPointerDown);
    ui.canvas.addEventListener("pointermove", onPointerMove);
    ui.canvas.addEventListener("pointerup", onPointerUp);
    ui.canvas.addEventListener("pointercancel", onPointerUp);
    ui.canvas.addEventListener("lostpointercapture", onPointerUp);
    ui.canvas.addEventListener("pointerleave", () => {
      ui.brushCursor.hidden = true;
    });
    ui.canvas.addEventListener("contextmenu", (event) => event.preventDefault());
    document.addEventListener("keydown", onKeyDown);
  }

  wire();
  loadModels();
})();
