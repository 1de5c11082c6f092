// albumsync pages: actions through /api/v1 with the session's CSRF token, live progress, the
// photo grid (lazy thumbnails, pages loaded as it scrolls) and the photo viewer. No framework,
// no inline scripts (the CSP forbids them); text from the API is set with textContent only.
"use strict";

const CSRF = document.querySelector('meta[name="csrf-token"]').content;
const POLL_MS = 2000;
const GRID_PAGE = 240;

// --- the API -------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || `the daemon answered ${status}`);
    this.status = status;
    this.code = body && body.error;
  }
}

async function api(method, path, body) {
  const init = { method, headers: { "X-CSRF-Token": CSRF }, credentials: "same-origin" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(path, init);
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
  if (!resp.ok) {
    if (resp.status === 401 || (resp.status === 403 && data && data.error === "csrf")) {
      throw new ApiError(resp.status, { message: "Your session has expired (the daemon restarted?): reload the page." });
    }
    throw new ApiError(resp.status, data);
  }
  return data;
}

async function fetchBlob(path) {
  const resp = await fetch(path, { headers: { "X-CSRF-Token": CSRF }, credentials: "same-origin" });
  if (!resp.ok) throw new ApiError(resp.status, null);
  return { blob: await resp.blob(), generic: resp.headers.get("X-Albumsync-Tile") === "generic" };
}

// --- small helpers -------------------------------------------------------------------------

let toastTimer = 0;
function toast(message, isError) {
  const el = document.getElementById("toast");
  el.textContent = message;
  el.classList.toggle("error", Boolean(isError));
  el.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { el.hidden = true; }, isError ? 8000 : 3500);
}

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function humanSize(n) {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return i === 0 ? `${n} B` : `${n.toFixed(1)} ${units[i]}`;
}

function duration(seconds) {
  if (seconds < 60) return `${Math.ceil(seconds)} s`;
  if (seconds < 3600) return `${Math.ceil(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

function splitEndpoint(spec) {
  const at = spec.indexOf(" ");
  return [spec.slice(0, at), spec.slice(at + 1)];
}

function afterAction(done, result) {
  if (!done || done === "reload") { location.reload(); return; }
  if (done.startsWith("goto:")) { location.assign(done.slice(5)); return; }
  if (done === "goto-album" && result && result.album_id) { location.assign(`/albums/${result.album_id}`); return; }
  location.reload();
}

// --- forms, buttons, selects that call the API -----------------------------------------------

function formBody(form) {
  const body = {};
  for (const field of form.elements) {
    if (!field.name || field.disabled) continue;
    if (field.type === "checkbox") { body[field.name] = field.checked; continue; }
    if (field.type === "radio") { if (field.checked) body[field.name] = field.value; continue; }
    const value = field.value.trim();
    if (value !== "") body[field.name] = value;
  }
  return body;
}

async function submitForm(form) {
  const [method, path] = splitEndpoint(form.dataset.api);
  const error = form.querySelector("[data-error]");
  const submit = form.querySelector('[type="submit"]');
  if (error) error.hidden = true;
  if (submit) submit.disabled = true;
  try {
    const result = await api(method, path, formBody(form));
    if (form.dataset.done === "show-code") { showCode(form, result); return; }
    afterAction(form.dataset.done, result);
  } catch (err) {
    if (error) { error.textContent = err.message; error.hidden = false; } else { toast(err.message, true); }
  } finally {
    if (submit) submit.disabled = false;
  }
}

function showCode(form, result) {
  if (!result.code) { toast("Invite sent: it reaches that device when it is online."); setTimeout(() => location.reload(), 800); return; }
  const box = form.querySelector("[data-code]");
  box.querySelector("code").textContent = result.code;
  box.hidden = false;
  form.querySelector('[type="submit"]').hidden = true;
  form.closest("dialog").addEventListener("close", () => location.reload(), { once: true });
}

async function clickAction(button) {
  if (button.dataset.confirm && !window.confirm(button.dataset.confirm)) return;
  const [method, path] = splitEndpoint(button.dataset.api);
  const body = {};
  for (const [key, value] of Object.entries(button.dataset)) {
    if (key.startsWith("body")) body[key.slice(4).replace(/^./, (c) => c.toLowerCase())] = value;
  }
  button.disabled = true;
  try {
    afterAction(button.dataset.done, await api(method, path, body));
  } catch (err) {
    toast(err.message, true);
    button.disabled = false;
  }
}

async function changeAction(select) {
  const [method, path] = splitEndpoint(select.dataset.api);
  select.disabled = true;
  try {
    await api(method, path, { [select.name]: select.value });
    toast("Saved.");
    afterAction(select.dataset.done);
  } catch (err) {
    toast(err.message, true);
    select.disabled = false;
  }
}

function openDialog(button) {
  const dialog = document.getElementById(button.dataset.open);
  const form = dialog.querySelector("form[data-api]");
  if (form) {
    form.dataset.api = (form.dataset.apiTemplate || (form.dataset.apiTemplate = form.dataset.api))
      .replace("{device}", encodeURIComponent(button.dataset.fillDevice || ""));
    const error = form.querySelector("[data-error]");
    if (error) error.hidden = true;
  }
  for (const slot of dialog.querySelectorAll("[data-fill]")) {
    slot.textContent = button.dataset["fill" + slot.dataset.fill[0].toUpperCase() + slot.dataset.fill.slice(1)] || "";
  }
  dialog.showModal();
  const first = dialog.querySelector("input:not([type=hidden]), textarea, select");
  if (first) first.focus();
}

async function copy(text) {
  try {
    await navigator.clipboard.writeText(text);
    toast("Copied.");
  } catch (err) {
    toast("Select the text and copy it (the browser refused the clipboard).", true);
  }
}

document.addEventListener("submit", (event) => {
  const form = event.target.closest("form[data-api]");
  if (!form) return;
  event.preventDefault();
  submitForm(form);
});

document.addEventListener("click", (event) => {
  const target = event.target.closest("button, [data-open]");
  if (!target) return;
  if (target.dataset.open) { openDialog(target); return; }
  if (target.hasAttribute("data-close")) { target.closest("dialog").close(); return; }
  if (target.dataset.copy) { copy(document.querySelector(target.dataset.copy).textContent); return; }
  if (target.dataset.copyText) { copy(target.dataset.copyText); return; }
  if (target.dataset.api && target.tagName === "BUTTON" && target.type === "button") clickAction(target);
});

document.addEventListener("change", (event) => {
  if (event.target.matches("select[data-api]")) changeAction(event.target);
});

// --- thumbnails --------------------------------------------------------------------------------

const blobs = new Map(); // thumbnail URL -> object URL, kept for the page's life
const thumbObserver = "IntersectionObserver" in window
  ? new IntersectionObserver(onThumbsVisible, { rootMargin: "600px 0px" }) : null;
let thumbsInFlight = 0;
const thumbQueue = [];

function watchThumbs(root) {
  for (const img of root.querySelectorAll("img[data-thumb]")) {
    if (img.hasAttribute("data-pending")) { img.closest(".tile, .cover")?.classList.add("pending"); continue; }
    if (thumbObserver) thumbObserver.observe(img); else queueThumb(img);
  }
}

function onThumbsVisible(entries) {
  for (const entry of entries) {
    if (!entry.isIntersecting) continue;
    thumbObserver.unobserve(entry.target);
    queueThumb(entry.target);
  }
}

function queueThumb(img) {
  thumbQueue.push(img);
  pumpThumbs();
}

function pumpThumbs() {
  while (thumbsInFlight < 6 && thumbQueue.length) {
    const img = thumbQueue.shift();
    thumbsInFlight++;
    loadThumb(img).finally(() => { thumbsInFlight--; pumpThumbs(); });
  }
}

async function loadThumb(img) {
  const url = img.dataset.thumb;
  const holder = img.closest(".tile, .cover");
  try {
    if (!blobs.has(url)) {
      const { blob, generic } = await fetchBlob(url);
      blobs.set(url, { src: URL.createObjectURL(blob), generic });
    }
    const { src, generic } = blobs.get(url);
    img.src = src;
    if (holder) holder.classList.add(generic ? "generic" : "loaded");
  } catch (err) {
    if (holder) holder.classList.add("pending");
  }
}

// --- the album page ----------------------------------------------------------------------------

function albumPage(root) {
  const albumId = root.dataset.album;
  const grid = document.getElementById("grid");
  const more = document.getElementById("grid-more");
  let total = Number(root.dataset.files);
  let loading = false;

  function tile(file) {
    const li = el("li", { class: "tile", "data-id": file.id, "data-captured": file.captured ?? "",
      "data-size": file.size, "data-local": file.local });
    const open = el("button", { type: "button", class: "tile-open", "aria-label": `Open ${file.path}` });
    const img = el("img", { alt: "", "data-thumb": `/api/v1/albums/${albumId}/files/${file.id}/thumbnail` });
    if (file.local !== "synced" && file.local !== "local_only") img.setAttribute("data-pending", "");
    open.append(img);
    const meta = el("div", { class: "tile-meta" });
    meta.append(el("span", { class: "tile-name" }, file.path), el("span", { class: "tile-by" }, file.added_by_name));
    li.append(open, meta);
    return li;
  }

  async function loadMore() {
    if (loading || grid.children.length >= total) { updateMore(); return; }
    loading = true;
    try {
      const page = await api("GET", `/api/v1/albums/${albumId}/files?offset=${grid.children.length}&limit=${GRID_PAGE}`);
      const frag = document.createDocumentFragment();
      for (const file of page) frag.append(tile(file));
      grid.append(frag);
      watchThumbs(grid);
      if (!page.length) total = grid.children.length;
    } catch (err) {
      toast(err.message, true);
    } finally {
      loading = false;
      updateMore();
    }
  }

  function updateMore() {
    more.textContent = grid.children.length < total ? `Showing ${grid.children.length} of ${total}` : "";
  }

  async function reloadGrid() {
    // The album changed: fetch what is shown again (same length, or the first page).
    const want = Math.max(GRID_PAGE, grid.children.length);
    const files = [];
    for (let offset = 0; offset < want; offset += 500) {
      const page = await api("GET", `/api/v1/albums/${albumId}/files?offset=${offset}&limit=${Math.min(500, want - offset)}`);
      files.push(...page);
      if (page.length < 500) break;
    }
    const frag = document.createDocumentFragment();
    for (const file of files) frag.append(tile(file));
    grid.replaceChildren(frag);
    document.getElementById("grid-empty")?.remove();
    watchThumbs(grid);
    updateMore();
  }

  if (more && "IntersectionObserver" in window) {
    new IntersectionObserver((entries) => { if (entries.some((e) => e.isIntersecting)) loadMore(); },
      { rootMargin: "800px 0px" }).observe(more);
  }
  updateMore();

  let signature = root.dataset.signature;
  async function poll() {
    try {
      const album = await api("GET", `/api/v1/albums/${albumId}`);
      showProgress(album.progress);
      const counts = document.getElementById("album-counts");
      counts.textContent = `${album.files} photo${album.files === 1 ? "" : "s"} · ${humanSize(album.bytes)}`;
      total = album.files + album.local_only;
      const next = `${album.files}/${album.local_only}/${album.bytes}/${album.progress.files_to_go}`;
      if (next !== signature) await reloadGrid();
      signature = next;
      if (album.state !== root.dataset.state) location.reload(); // removed, deleted, joined...
    } catch (err) {
      if (err.status === 401 || err.code === "csrf") toast(err.message, true);
    } finally {
      setTimeout(poll, POLL_MS);
    }
  }
  setTimeout(poll, POLL_MS);
  setupViewer(albumId, grid);
}

let barStart = 0;
function showProgress(p) {
  const box = document.getElementById("progress");
  const title = box.querySelector('[data-progress="title"]');
  const detail = box.querySelector('[data-progress="detail"]');
  const bar = box.querySelector('[data-progress="bar"]');
  if (p.files_to_go) {
    barStart = Math.max(barStart, p.bytes_to_go);
    box.removeAttribute("data-idle");
    title.textContent = "Syncing";
    const parts = [`${p.files_to_go} file${p.files_to_go === 1 ? "" : "s"}, ${humanSize(p.bytes_to_go)} to go`];
    if (p.rate > 0) parts.push(`${humanSize(Math.round(p.rate))}/s`);
    if (p.eta) parts.push(`about ${duration(p.eta)} left`);
    detail.textContent = parts.join(" · ");
    bar.style.width = `${barStart ? Math.round(100 * (1 - p.bytes_to_go / barStart)) : 0}%`;
  } else {
    barStart = 0;
    box.setAttribute("data-idle", "");
    title.textContent = p.waiting_for_peers ? "Waiting for a member to come online" : "Up to date";
    detail.textContent = "";
    bar.style.width = "100%";
  }
}

// --- the photo viewer ----------------------------------------------------------------------------

function setupViewer(albumId, grid) {
  const dialog = document.getElementById("viewer");
  const img = document.getElementById("viewer-img");
  const generic = document.getElementById("viewer-generic");
  const name = document.getElementById("viewer-name");
  const info = document.getElementById("viewer-info");
  const cover = document.getElementById("viewer-cover");
  let current = null;
  let objectUrl = "";

  async function show(tileEl) {
    current = tileEl;
    const id = tileEl.dataset.id;
    name.textContent = tileEl.querySelector(".tile-name").textContent;
    const by = tileEl.querySelector(".tile-by").textContent;
    const captured = tileEl.dataset.captured ? new Date(Number(tileEl.dataset.captured) * 1000).toLocaleString() : "";
    info.textContent = [`added by ${by}`, captured && `taken ${captured}`, humanSize(Number(tileEl.dataset.size))].filter(Boolean).join(" · ");
    if (cover) cover.hidden = id.startsWith("local-");
    if (!dialog.open) dialog.showModal();
    img.hidden = false;
    generic.hidden = true;
    img.src = tileEl.querySelector("img").src || "";
    if (objectUrl) { URL.revokeObjectURL(objectUrl); objectUrl = ""; }
    try {
      const { blob } = await fetchBlob(`/api/v1/albums/${albumId}/files/${id}/original`);
      if (current !== tileEl) return;
      if (!blob.type.startsWith("image/")) { img.hidden = true; generic.hidden = false; return; }
      objectUrl = URL.createObjectURL(blob);
      img.src = objectUrl;
    } catch (err) {
      toast(err.status === 409 ? "This photo is still on its way to this device." : err.message, true);
    }
  }

  function step(delta) {
    if (!current) return;
    const next = delta > 0 ? current.nextElementSibling : current.previousElementSibling;
    if (next) show(next);
  }

  grid.addEventListener("click", (event) => {
    const open = event.target.closest(".tile-open");
    if (open) show(open.closest(".tile"));
  });
  document.getElementById("viewer-prev").addEventListener("click", () => step(-1));
  document.getElementById("viewer-next").addEventListener("click", () => step(1));
  dialog.addEventListener("keydown", (event) => {
    if (event.key === "ArrowRight") step(1);
    if (event.key === "ArrowLeft") step(-1);
  });
  dialog.addEventListener("close", () => { current = null; });
  document.getElementById("viewer-download").addEventListener("click", async () => {
    if (!current) return;
    try {
      const { blob } = await fetchBlob(`/api/v1/albums/${albumId}/files/${current.dataset.id}/original`);
      const a = el("a", { href: URL.createObjectURL(blob), download: name.textContent.split("/").pop() });
      document.body.append(a);
      a.click();
      a.remove();
    } catch (err) {
      toast(err.message, true);
    }
  });
  if (cover) {
    cover.addEventListener("click", async () => {
      try {
        await api("POST", `/api/v1/albums/${albumId}/cover`, { file: current.dataset.id });
        toast("Cover set. Every member sees it.");
      } catch (err) {
        toast(err.message, true);
      }
    });
  }
}

// --- start ---------------------------------------------------------------------------------------

watchThumbs(document);
const albumRoot = document.getElementById("album");
if (albumRoot) albumPage(albumRoot);
