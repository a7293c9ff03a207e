// The featrec storefront: plain JS, no build step, nothing from another site.
// Every click and add-to-cart is POSTed to /events; the rail then asks /recommend (passing
// the list it shows, for stability) until the answer reflects the event, and reports how long
// that took to /shop/api/latency. window.featrecShop exposes the state for the browser test.
"use strict";

const COOKIE = "featrec_session";
const RAIL_K = 8;
const POLL_MS = 60;
const GIVE_UP_MS = 15000;

const state = {
  products: [], byId: new Map(), category: null, current: null, cart: 0,
  shown: [], railVersion: null, latencies: [], events: 0, refused: 0, degraded: false,
  token: new URLSearchParams(location.hash.slice(1)).get("token"),
};
window.featrecShop = state;

const $ = (id) => document.getElementById(id);

function randomHex(bytes) {
  const a = new Uint8Array(bytes);
  crypto.getRandomValues(a);
  return Array.from(a, (b) => b.toString(16).padStart(2, "0")).join("");
}

function sessionId(renew) {
  const found = document.cookie.split("; ").find((c) => c.startsWith(COOKIE + "="));
  let id = found && !renew ? decodeURIComponent(found.split("=")[1]) : "web-" + randomHex(8);
  document.cookie = `${COOKIE}=${encodeURIComponent(id)}; path=/; max-age=1800; SameSite=Lax`;
  state.session = id;
  $("session-id").textContent = id;
  return id;
}

function userId() {
  const u = $("user").value.trim();
  return u || null;
}

function banner(text) {
  const b = $("banner");
  b.hidden = !text;
  b.textContent = text || "";
}

function swatch(item) {
  // A colour per category and a shade per item: a picture without loading one.
  let h = 0;
  for (const ch of item.category) h = (h * 31 + ch.charCodeAt(0)) % 360;
  const n = parseInt(item.item_id.replace(/\D/g, ""), 10) || 0;
  return `linear-gradient(135deg, hsl(${h} 65% ${55 + (n % 5) * 5}%), hsl(${(h + 40) % 360} 70% 40%))`;
}

function card(item, onClick) {
  const el = document.createElement("button");
  el.type = "button";
  el.className = "card";
  el.dataset.item = item.item_id;
  el.innerHTML = `<div class="swatch"></div><span class="name"></span>
    <span class="meta"></span> <span class="price"></span>`;
  el.querySelector(".swatch").style.background = swatch(item);
  el.querySelector(".name").textContent = item.name;
  el.querySelector(".meta").textContent = `${item.category} · ${item.item_id}`;
  el.querySelector(".price").textContent = `€${item.price.toFixed(2)}`;
  el.addEventListener("click", onClick);
  return el;
}

function product(id) {
  return state.byId.get(id) || { item_id: id, name: id, category: "?", price: 0 };
}

function renderGrid() {
  const grid = $("grid");
  grid.replaceChildren();
  const items = state.products.filter((p) => !state.category || p.category === state.category);
  for (const item of items.slice(0, 48)) grid.append(card(item, () => openProduct(item.item_id)));
}

function renderCategories() {
  const cats = [...new Set(state.products.map((p) => p.category))].sort(
    (a, b) => parseInt(a.slice(1), 10) - parseInt(b.slice(1), 10));
  const nav = $("categories");
  const chip = (label, value) => {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = label;
    b.className = state.category === value ? "on" : "";
    b.addEventListener("click", () => { state.category = value; renderCategories(); showGrid(); });
    return b;
  };
  nav.replaceChildren(chip("all", null), ...cats.map((c) => chip(c, c)));
}

function showGrid() {
  state.current = null;
  $("product").hidden = true;
  $("catalogue").hidden = false;
  renderGrid();
}

async function openProduct(id) {
  const item = product(id);
  state.current = id;
  $("catalogue").hidden = true;
  $("product").hidden = false;
  $("product-swatch").style.background = swatch(item);
  $("product-name").textContent = item.name;
  $("product-category").textContent = item.category;
  $("product-id").textContent = item.item_id;
  $("product-price").textContent = `€${item.price.toFixed(2)}`;
  window.scrollTo(0, 0);
  sendEvent("click", item);
  const together = $("together");
  together.replaceChildren();
  try {
    const r = await fetch(`/shop/api/together/${encodeURIComponent(id)}?k=6`);
    const body = await r.json();
    for (const other of body.items || []) together.append(card(product(other), () => openProduct(other)));
    if (!(body.items || []).length) {
      together.textContent = body.degraded
        ? "unavailable: the online store cannot be read"
        : "nothing yet: no co-visits of this item";
    }
  } catch (e) {
    together.textContent = "unavailable";
  }
}

function addToCart() {
  if (!state.current) return;
  state.cart += 1;
  $("cart-count").textContent = state.cart;
  sendEvent("cart", product(state.current));
}

async function sendEvent(type, item) {
  const sentAt = performance.now();
  const ts = Date.now() / 1000;
  const event = {
    event_id: "web-" + randomHex(12), session_id: state.session, item_id: item.item_id,
    type, ts, category: item.category, price: item.price,
  };
  if (type === "cart") event.quantity = 1;
  const user = userId();
  if (user) event.user_id = user;
  const headers = { "content-type": "application/json" };
  if (state.token) headers.authorization = `Bearer ${state.token}`;
  let r;
  try {
    r = await fetch("/events", { method: "POST", headers, body: JSON.stringify(event) });
  } catch (e) {
    banner("The server cannot be reached: events are not being collected.");
    return;
  }
  if (r.status !== 202) {
    state.refused += 1;
    const body = await r.json().catch(() => ({}));
    const why = (body.refused && body.refused[0] && body.refused[0].reason) || body.detail || r.status;
    state.refusal = `Event refused (${r.status}): ${why}`;
    banner(state.refusal);
    refreshRail(null, type, sentAt);
    return;
  }
  state.events += 1;
  refreshRail(Math.floor(ts * 1e6) - 1000, type, sentAt);
}

let railTicket = 0;

async function refreshRail(wantVersion, kind, sentAt) {
  // Poll until the session version reaches the event's time (the flow has folded it).
  const ticket = ++railTicket;
  const started = performance.now();
  for (;;) {
    if (ticket !== railTicket) return;  // a newer click took over
    let answer = null;
    try {
      answer = await recommend();
    } catch (e) {
      banner("The server cannot be reached.");
    }
    const reached = answer && wantVersion !== null && (answer.session_version || 0) >= wantVersion;
    const late = performance.now() - started > GIVE_UP_MS;
    // Until the flow has written the session's row the answer is degraded ("no session"):
    // keep asking; only a refused or unsent event (wantVersion null) takes the first answer.
    if (answer && (reached || wantVersion === null || late)) {
      renderRail(answer);
      if (reached && sentAt !== undefined) reportLatency(kind, performance.now() - sentAt);
      return;
    }
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
}

async function recommend() {
  const body = { session_id: state.session, k: RAIL_K };
  const user = userId();
  if (user) body.user_id = user;
  if (state.shown.length) body.shown = state.shown;
  const r = await fetch("/recommend", {
    method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body),
  });
  if (!r.ok) throw new Error(`recommend ${r.status}`);
  return r.json();
}

function renderRail(answer) {
  const before = new Set(state.shown);
  state.shown = answer.items.map((i) => i.item_id);
  state.railVersion = answer.session_version;
  state.degraded = answer.degraded;
  state.lastAnswer = answer;
  const list = $("rail-items");
  list.replaceChildren();
  for (const it of answer.items) {
    const li = document.createElement("li");
    li.dataset.item = it.item_id;
    if (!before.has(it.item_id)) li.className = "new";
    const p = product(it.item_id);
    li.innerHTML = `<span class="name"></span> <span class="meta"></span><span class="why"></span>`;
    li.querySelector(".name").textContent = p.name;
    li.querySelector(".meta").textContent = `${it.item_id} · ${it.score.toFixed(3)}`;
    li.querySelector(".why").textContent = it.reasons.join("; ");
    li.addEventListener("click", () => openProduct(it.item_id));
    list.append(li);
  }
  const age = answer.session_version ? Date.now() / 1000 - answer.session_version / 1e6 : null;
  const scorer = answer.scorer + (answer.model_version ? ` ${answer.model_version}` : "");
  $("freshness").textContent = (age === null
    ? "no session features yet (popular items)"
    : `session features from ${Math.max(0, age).toFixed(1)} s ago`) + ` · ${scorer}` +
    (answer.cached ? " · cached" : "");
  const degraded = answer.degraded ? `Degraded recommendations: ${answer.degraded_reason}` : null;
  banner([state.refusal, degraded].filter(Boolean).join(" · ") || null);
}

function reportLatency(kind, ms) {
  state.latencies.push(ms);
  const sorted = [...state.latencies].sort((a, b) => a - b);
  const p50 = sorted[Math.floor((sorted.length - 1) / 2)];
  $("latency").textContent = `click to updated rail: ${ms.toFixed(0)} ms (median ${p50.toFixed(0)} ms over ${sorted.length})`;
  fetch("/shop/api/latency", {
    method: "POST", headers: { "content-type": "application/json" },
    body: JSON.stringify({ ms, kind: kind === "cart" ? "cart" : "click" }),
  }).catch(() => {});
}

async function start() {
  sessionId(false);
  $("home").addEventListener("click", (e) => { e.preventDefault(); showGrid(); });
  $("back").addEventListener("click", showGrid);
  $("add-to-cart").addEventListener("click", addToCart);
  $("new-session").addEventListener("click", () => {
    sessionId(true); state.shown = []; state.cart = 0; state.refusal = null;
    $("cart-count").textContent = "0"; banner(null); refreshRail(null);
  });
  $("user").addEventListener("change", () => { state.refusal = null; banner(null); refreshRail(null); });
  try {
    const r = await fetch("/shop/api/catalogue");
    const body = await r.json();
    state.products = body.products;
    state.byId = new Map(state.products.map((p) => [p.item_id, p]));
  } catch (e) {
    banner("The catalogue could not be loaded.");
  }
  renderCategories();
  renderGrid();
  refreshRail(null);
  state.ready = true;
}

start();
