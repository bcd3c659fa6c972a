// The storefront's behaviour: the catalogue with live stock, the cart and
// checkout, and each of the customer's orders with a live status timeline.
//
// Where things come from:
// - /config.json (this origin): the product and order services' URLs, and
//   whether development tokens can be had from POST /dev/token;
// - the product service: GET /products (public);
// - the order service: POST /orders, GET /orders, GET /orders/{id} (bearer);
// - this origin's /ws: order status updates and stock changes (protocol in
//   the README).
//
// While the WebSocket is live, stock changes are pushed (scope `stock`) and
// the catalogue is re-read only now and then, to reconcile; without one
// (signed out, or reconnecting) it is re-read every few seconds.

const STORAGE_KEY = "shop.session";
const STOCK_POLL_MS = 5000;
const STOCK_RECONCILE_MS = 60000;
// A catalogue read and a pushed change may cross: a figure pushed while the
// read was on its way wins over the read's (which may predate it).
const RECONNECT_BASE_MS = 500;
const RECONNECT_MAX_MS = 15000;
const ORDERS_SHOWN = 10;
const FINAL = new Set(["CONFIRMED", "REJECTED", "FAILED"]);
const HAPPY_PATH = ["PENDING", "INVENTORY_RESERVED", "PAYMENT_AUTHORIZED", "CONFIRMED"];
const STATUS_TEXT = {
  PENDING: "Order placed",
  INVENTORY_RESERVED: "Stock reserved",
  PAYMENT_AUTHORIZED: "Payment authorized",
  COMPENSATING: "Releasing reserved stock",
  CONFIRMED: "Confirmed",
  REJECTED: "Rejected",
  FAILED: "Needs attention",
};
const BADGE_TEXT = {
  PENDING: "Pending",
  INVENTORY_RESERVED: "Reserved",
  PAYMENT_AUTHORIZED: "Paid",
  COMPENSATING: "Cancelling",
  CONFIRMED: "Confirmed",
  REJECTED: "Rejected",
  FAILED: "Needs attention",
};
const REASON_TEXT = {
  OUT_OF_STOCK: "not enough stock",
  PAYMENT_DECLINED: "payment declined",
  TIMEOUT: "a step took too long",
};

const state = {
  config: null,
  session: null, // {customer, token}
  products: new Map(), // id -> product
  stockPushes: new Map(), // product id -> {at, received} of its last pushed change
  catalogueReadAt: 0, // when the whole catalogue was last read
  cart: new Map(), // id -> quantity
  checkoutKey: null, // Idempotency-Key of the cart as it is
  orders: new Map(), // id -> order (see upsertOrder)
  socket: null,
  reconnects: 0,
  reconnectTimer: null,
};

const $ = (id) => document.getElementById(id);

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === false || value == null) continue;
    if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child == null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function money(cents, currency = "EUR") {
  return new Intl.NumberFormat("en", { style: "currency", currency }).format(cents / 100);
}

function time(at) {
  return new Date(at).toLocaleTimeString("en", { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

function announce(text) {
  const announcer = $("announcer");
  announcer.textContent = "";
  // A fresh text node, so screen readers read a repeated message again.
  setTimeout(() => (announcer.textContent = text), 50);
}

// Order ids are UUIDv7: the first characters are a timestamp shared by
// orders placed close together, the last ones are random.
function shortId(orderId) {
  return orderId.slice(-8);
}

function randomKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

async function api(base, path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (options.auth && state.session) headers.set("authorization", `Bearer ${state.session.token}`);
  if (options.body) headers.set("content-type", "application/json");
  const response = await fetch(base + path, {
    method: options.method || "GET",
    headers,
    body: options.body ? JSON.stringify(options.body) : undefined,
  });
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    const error = new Error((body && body.message) || `HTTP ${response.status}`);
    error.status = response.status;
    throw error;
  }
  return body;
}

// ---- catalogue ------------------------------------------------------------

async function loadProducts(ids) {
  const query = ids && ids.length ? `?ids=${ids.join(",")}` : "";
  const sentAt = Date.now();
  try {
    const products = await api(state.config.product_url, `/products${query}`);
    for (const product of products) updateProduct(product, sentAt);
    $("catalogue-status").textContent = "";
    $("catalogue-status").hidden = true;
  } catch (error) {
    const status = $("catalogue-status");
    status.hidden = false;
    status.textContent = state.products.size
      ? "Stock figures may be out of date: the catalogue is not answering."
      : `The catalogue is not available right now (${error.message}). Retrying…`;
  }
}

// A pushed stock change. Changes of one product may arrive out of order
// (they travel on several partitions), so the newest `at` wins.
function applyStock(change) {
  const product = state.products.get(change.product_id);
  if (!product) return loadProducts([change.product_id]);
  const at = Date.parse(change.at);
  const seen = state.stockPushes.get(change.product_id);
  if (seen && seen.at > at) return;
  state.stockPushes.set(change.product_id, { at, received: Date.now() });
  updateProduct({ ...product, stock: change.stock });
}

function stockText(stock) {
  if (stock <= 0) return "Sold out";
  if (stock <= 5) return `Only ${stock} left`;
  return `${stock} in stock`;
}

function hue(text) {
  let h = 0;
  for (const c of text) h = (h * 31 + c.charCodeAt(0)) % 360;
  return h;
}

// `readAt`: when the catalogue read that brought `product` was sent; none
// for a pushed change.
function updateProduct(product, readAt = null) {
  const before = state.products.get(product.id);
  const push = state.stockPushes.get(product.id);
  if (readAt != null && before && push && push.received >= readAt) {
    product = { ...product, stock: before.stock };
  }
  state.products.set(product.id, product);
  let card = document.querySelector(`[data-product-id="${product.id}"]`);
  if (!card) {
    card = renderProduct(product);
    $("products").append(card);
  }
  const stock = card.querySelector(".stock");
  stock.textContent = stockText(product.stock);
  stock.dataset.stock = String(product.stock);
  stock.classList.toggle("stock-low", product.stock > 0 && product.stock <= 5);
  stock.classList.toggle("stock-out", product.stock <= 0);
  const add = card.querySelector(".add");
  const inCart = state.cart.get(product.id) || 0;
  add.disabled = product.stock <= inCart;
  add.textContent = product.stock <= 0 ? "Sold out" : "Add to cart";
  add.setAttribute("aria-label", `Add ${product.name} to cart`);
  if (before && before.stock !== product.stock) {
    stock.classList.remove("changed");
    void stock.offsetWidth; // restart the highlight
    stock.classList.add("changed");
  }
}

function renderProduct(product) {
  const initials = product.name.split(/\s+/).slice(0, 2).map((w) => w[0].toUpperCase()).join("");
  const h = hue(product.sku);
  const art = el("div", { class: "art", "aria-hidden": "true" }, el("span", {}, initials));
  art.style.setProperty("--h", String(h));
  const headingId = `product-${product.id}`;
  return el(
    "li",
    { class: "card", "data-product-id": product.id, "aria-labelledby": headingId },
    art,
    el(
      "div",
      { class: "card-body" },
      el("h3", { id: headingId }, product.name),
      el("p", { class: "description" }, product.description),
      el(
        "div",
        { class: "card-foot" },
        el("p", { class: "price" }, money(product.price_cents, product.currency)),
        el("p", { class: "stock" }),
      ),
      el("button", { type: "button", class: "button add", onclick: () => addToCart(product.id) }, "Add to cart"),
    ),
  );
}

// ---- cart -----------------------------------------------------------------

function addToCart(id) {
  const product = state.products.get(id);
  const quantity = (state.cart.get(id) || 0) + 1;
  if (!product || quantity > product.stock) return;
  state.cart.set(id, quantity);
  state.checkoutKey = null;
  renderCart();
  updateProduct(product);
  announce(`${product.name} added to cart (${quantity}).`);
}

function setQuantity(id, quantity) {
  const product = state.products.get(id);
  if (quantity <= 0) state.cart.delete(id);
  else state.cart.set(id, Math.min(quantity, product ? product.stock : quantity));
  state.checkoutKey = null;
  renderCart();
  if (product) updateProduct(product);
}

function renderCart() {
  const lines = $("cart-lines");
  lines.replaceChildren();
  let total = 0;
  let currency = "EUR";
  for (const [id, quantity] of state.cart) {
    const product = state.products.get(id);
    if (!product) continue;
    total += product.price_cents * quantity;
    currency = product.currency;
    lines.append(
      el(
        "li",
        { class: "cart-line" },
        el("span", { class: "cart-name" }, product.name),
        el(
          "span",
          { class: "stepper", role: "group", "aria-label": `Quantity of ${product.name}` },
          el("button", { type: "button", class: "icon-button", "aria-label": `One less ${product.name}`, onclick: () => setQuantity(id, quantity - 1) }, "−"),
          el("output", { "aria-live": "polite" }, String(quantity)),
          el("button", { type: "button", class: "icon-button", "aria-label": `One more ${product.name}`, disabled: quantity >= product.stock, onclick: () => setQuantity(id, quantity + 1) }, "+"),
        ),
        el("span", { class: "cart-amount" }, money(product.price_cents * quantity, product.currency)),
      ),
    );
  }
  const empty = state.cart.size === 0;
  $("cart-empty").hidden = !empty;
  $("checkout").hidden = empty;
  $("cart-total").textContent = money(total, currency);
  $("place-order").disabled = !state.session;
  $("checkout-hint").hidden = Boolean(state.session);
}

async function checkout(event) {
  event.preventDefault();
  if (!state.session || state.cart.size === 0) return;
  const message = $("checkout-message");
  const button = $("place-order");
  const paymentToken = new FormData($("checkout")).get("payment");
  // One key per cart: pressing again after a lost answer replays the first
  // attempt instead of placing a second order.
  state.checkoutKey = state.checkoutKey || randomKey();
  const items = Array.from(state.cart, ([product_id, quantity]) => ({ product_id, quantity }));
  button.disabled = true;
  button.textContent = "Placing order…";
  message.textContent = "";
  try {
    const placed = await api(state.config.order_url, "/orders", {
      method: "POST",
      auth: true,
      headers: { "idempotency-key": state.checkoutKey },
      body: { items, payment_token: paymentToken },
    });
    // The socket may have reported the order (and later statuses) already.
    const seen = state.orders.has(placed.order_id);
    const order = upsertOrder({ order_id: placed.order_id });
    if (!seen) order.status = placed.status;
    order.items = items.map((item) => ({ ...item, name: state.products.get(item.product_id)?.name }));
    state.cart.clear();
    state.checkoutKey = null;
    renderCart();
    renderOrder(order);
    follow(order);
    fetchOrder(order.order_id);
    announce("Order placed. Its progress appears under Your orders.");
    for (const product of state.products.values()) updateProduct(product);
  } catch (error) {
    message.textContent = `The order was not placed: ${error.message}`;
  } finally {
    button.textContent = "Place order";
    button.disabled = !state.session;
  }
}

// ---- orders ---------------------------------------------------------------

function upsertOrder(fields) {
  let order = state.orders.get(fields.order_id);
  if (!order) {
    order = { order_id: fields.order_id, status: "PENDING", seq: 0, history: [], items: null };
    state.orders.set(fields.order_id, order);
  }
  for (const [key, value] of Object.entries(fields)) if (value !== undefined) order[key] = value;
  return order;
}

// A status from the WebSocket or the order service; `seq` orders them.
function applyStatus(orderId, entry, fromSnapshot) {
  const known = state.orders.has(orderId);
  const order = upsertOrder({ order_id: orderId });
  if (entry.seq <= order.seq) return; // already shown (a replay, or both subscriptions)
  const gap = order.seq > 0 && entry.seq > order.seq + 1;
  if (!fromSnapshot) order.history.push({ status: entry.status, reason: entry.reason, at: entry.at, seq: entry.seq });
  order.status = entry.status;
  order.reason = entry.reason;
  order.seq = entry.seq;
  renderOrder(order);
  // A snapshot, an order first seen here, or a hole: the order service has
  // the whole history (and the items, for the stock refresh).
  if (fromSnapshot || !known || gap || !order.items) fetchOrder(orderId);
  if (FINAL.has(entry.status)) {
    const reason = entry.reason ? ` (${REASON_TEXT[entry.reason] || entry.reason})` : "";
    announce(`Order ${shortId(orderId)} ${BADGE_TEXT[entry.status].toLowerCase()}${reason}.`);
  }
}

async function fetchOrder(orderId) {
  try {
    const view = await api(state.config.order_url, `/orders/${orderId}`, { auth: true });
    const order = upsertOrder({ order_id: orderId });
    order.items = view.items;
    order.total_cents = view.total_cents;
    order.currency = view.currency;
    order.created_at = view.created_at;
    const last = view.history[view.history.length - 1];
    // Keep whichever is newer: this answer or what the socket said since.
    if (last && last.seq >= order.seq) {
      order.history = view.history;
      order.status = view.status;
      order.reason = view.reason;
      order.seq = last.seq;
    } else {
      const seen = new Set(order.history.map((h) => h.seq));
      order.history = view.history.filter((h) => !seen.has(h.seq)).concat(order.history);
      order.history.sort((a, b) => a.seq - b.seq);
    }
    renderOrder(order);
    return true;
  } catch (error) {
    // The socket keeps the status current; details come on the next change.
    return false;
  }
}

async function loadOrders() {
  try {
    const summaries = await api(state.config.order_url, `/orders?limit=${ORDERS_SHOWN}`, { auth: true });
    for (const summary of summaries.reverse()) {
      const fresh = !state.orders.has(summary.order_id);
      const order = upsertOrder({ order_id: summary.order_id, total_cents: summary.total_cents, currency: summary.currency, created_at: summary.created_at });
      if (fresh) {
        order.status = summary.status;
        order.reason = summary.reason;
        // Shown once its history is here (fetchOrder renders it), so a
        // timeline never appears half-empty; with the summary if that fails.
        if (!(await fetchOrder(order.order_id))) renderOrder(order);
      }
    }
  } catch (error) {
    if (error.status === 401) return signOut("Your session has expired; please sign in again.");
  }
  renderOrdersEmpty();
}

function renderOrdersEmpty() {
  const empty = $("orders-empty");
  empty.hidden = state.orders.size > 0;
  empty.textContent = state.session ? "No orders yet." : "Sign in to follow your orders live.";
}

function timelineSteps(order) {
  const reached = new Map(order.history.map((h) => [h.status, h]));
  reached.set(order.status, reached.get(order.status) || { status: order.status, reason: order.reason });
  const failed = ["COMPENSATING", "REJECTED", "FAILED"].some((s) => reached.has(s));
  // Steps before the current one were passed even if their entries are
  // not known yet (a summary without its history).
  const at = HAPPY_PATH.indexOf(order.status);
  const steps = HAPPY_PATH.filter((s) => !failed || reached.has(s) || s === "PENDING").map((status, i) => ({
    status,
    entry: reached.get(status) || (i <= at ? { status } : undefined),
  }));
  if (failed) {
    for (const status of ["COMPENSATING", "REJECTED", "FAILED"]) {
      if (reached.has(status)) steps.push({ status, entry: reached.get(status) });
    }
  }
  return steps;
}

function renderOrder(order) {
  const list = $("orders");
  let item = list.querySelector(`[data-order-id="${order.order_id}"]`);
  if (!item) {
    item = el("li", { class: "order", "data-order-id": order.order_id });
    list.prepend(item);
    renderOrdersEmpty();
  }
  item.dataset.status = order.status;
  const label = `Order ${shortId(order.order_id)}`;
  const summary = order.items
    ? order.items.map((i) => `${i.quantity} × ${i.name || "item"}`).join(", ")
    : "";
  const steps = timelineSteps(order);
  const current = order.status;
  item.replaceChildren(
    el(
      "div",
      { class: "order-head" },
      el("h3", {}, label),
      el("span", { class: `badge badge-${current.toLowerCase()}`, "data-testid": "order-status" }, BADGE_TEXT[current] || current),
    ),
    summary && el("p", { class: "order-items" }, summary, order.total_cents != null ? ` · ${money(order.total_cents, order.currency)}` : ""),
    el(
      "ol",
      { class: "timeline", "aria-label": `${label} progress` },
      steps.map(({ status, entry }) => {
        const done = Boolean(entry);
        const isCurrent = status === current && !FINAL.has(status);
        const bad = status === "REJECTED" || status === "FAILED" || status === "COMPENSATING";
        // The reason once, on the outcome, not on the compensation step too.
        const reason = entry && entry.reason && status !== "COMPENSATING" ? ` — ${REASON_TEXT[entry.reason] || entry.reason}` : "";
        return el(
          "li",
          {
            class: ["step", done ? "done" : "todo", isCurrent ? "current" : "", bad ? "bad" : ""].join(" ").trim(),
            "data-step": status,
            "aria-current": isCurrent ? "step" : false,
          },
          el("span", { class: "step-label" }, STATUS_TEXT[status] + reason),
          el("span", { class: "step-time" }, entry && entry.at ? time(entry.at) : done ? "" : "waiting"),
        );
      }),
    ),
  );
}

// ---- live updates -----------------------------------------------------------

function wsUrl() {
  return `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}/ws`;
}

function setConnection(kind, text) {
  $("connection").dataset.state = kind;
  $("connection-text").textContent = text;
}

function send(message) {
  if (state.socket && state.socket.readyState === WebSocket.OPEN) state.socket.send(JSON.stringify(message));
}

// Catch up on one order: the updates after the last one shown, or a
// snapshot if none was.
function follow(order) {
  if (FINAL.has(order.status)) return;
  send(order.seq > 0 ? { type: "subscribe", order_id: order.order_id, last_seq: order.seq } : { type: "subscribe", order_id: order.order_id });
}

function connect() {
  clearTimeout(state.reconnectTimer);
  if (!state.session) return;
  if (tokenExpired(state.session.token)) return signOut("Your session has expired; please sign in again.");
  setConnection("connecting", state.reconnects ? "Reconnecting…" : "Connecting…");
  const socket = new WebSocket(wsUrl(), ["shop.v1", `bearer.${state.session.token}`]);
  state.socket = socket;
  socket.addEventListener("open", async () => {
    state.reconnects = 0;
    setConnection("live", "Live");
    send({ type: "subscribe", scope: "mine" });
    send({ type: "subscribe", scope: "stock" });
    // Stock moved while the socket was down: read it once, then follow it.
    loadProducts();
    state.catalogueReadAt = Date.now();
    // Orders placed while the socket was down (another tab, say), then
    // the missed updates of every order still in flight.
    await loadOrders();
    for (const order of state.orders.values()) follow(order);
  });
  socket.addEventListener("message", (event) => {
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      return;
    }
    if (message.type === "update" || message.type === "snapshot") {
      applyStatus(message.order_id, message, message.type === "snapshot");
    } else if (message.type === "stock") {
      applyStock(message);
    } else if (message.type === "error" && message.error !== "not_found") {
      setConnection("live", `Live (${message.message})`);
    }
  });
  socket.addEventListener("close", () => {
    if (state.socket !== socket) return; // replaced on purpose
    state.socket = null;
    if (!state.session) return setConnection("offline", "Offline");
    // Exponential backoff with jitter, so a restarted gateway is not
    // met by every client at the same instant.
    const delay = Math.min(RECONNECT_MAX_MS, RECONNECT_BASE_MS * 2 ** state.reconnects) * (0.5 + Math.random() / 2);
    state.reconnects += 1;
    setConnection("reconnecting", `Reconnecting in ${Math.ceil(delay / 1000)} s…`);
    state.reconnectTimer = setTimeout(connect, delay);
  });
}

// ---- session ----------------------------------------------------------------

function tokenExpired(token) {
  try {
    const claims = JSON.parse(atob(token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/")));
    return typeof claims.exp === "number" && claims.exp * 1000 < Date.now();
  } catch {
    return true;
  }
}

function tokenSubject(token) {
  try {
    return JSON.parse(atob(token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/"))).sub;
  } catch {
    return null;
  }
}

async function signIn(event) {
  event.preventDefault();
  const message = $("checkout-message");
  message.textContent = "";
  try {
    let session;
    if (state.config.dev_tokens) {
      const customer = $("customer").value.trim();
      const minted = await api("", "/dev/token", { method: "POST", body: { customer } });
      session = { customer: minted.customer, token: minted.token };
    } else {
      const token = $("token").value.trim();
      if (tokenExpired(token)) throw new Error("that token is malformed or has expired");
      session = { customer: tokenSubject(token), token };
    }
    startSession(session);
    $("sign-out").focus();
  } catch (error) {
    message.textContent = `Could not sign in: ${error.message}`;
  }
}

function startSession(session) {
  state.session = session;
  sessionStorage.setItem(STORAGE_KEY, JSON.stringify(session));
  state.orders.clear();
  $("orders").replaceChildren();
  renderAccount();
  renderCart();
  renderOrdersEmpty();
  connect();
}

function signOut(why) {
  state.session = null;
  sessionStorage.removeItem(STORAGE_KEY);
  const socket = state.socket;
  state.socket = null;
  if (socket) socket.close(1000, "signed out");
  clearTimeout(state.reconnectTimer);
  state.orders.clear();
  $("orders").replaceChildren();
  setConnection("offline", "Offline");
  renderAccount();
  renderCart();
  renderOrdersEmpty();
  if (typeof why === "string") $("checkout-message").textContent = why;
}

function renderAccount() {
  const signedIn = Boolean(state.session);
  $("sign-in").hidden = signedIn;
  $("signed-in").hidden = !signedIn;
  $("customer-field").hidden = !state.config.dev_tokens;
  $("token-field").hidden = state.config.dev_tokens;
  $("dev-hint").hidden = !state.config.dev_tokens;
  $("customer").required = state.config.dev_tokens;
  $("token").required = !state.config.dev_tokens;
  $("who").textContent = signedIn ? state.session.customer : "";
}

// ---- start ------------------------------------------------------------------

async function start() {
  try {
    state.config = await api("", "/config.json");
  } catch (error) {
    $("catalogue-status").textContent = `The storefront is not configured (${error.message}).`;
    return;
  }
  $("sign-in").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", () => {
    signOut();
    $("customer").focus();
  });
  $("checkout").addEventListener("submit", checkout);
  renderAccount();
  renderCart();
  await loadProducts();
  state.catalogueReadAt = Date.now();
  setInterval(() => {
    const live = state.socket && state.socket.readyState === WebSocket.OPEN;
    const due = Date.now() - state.catalogueReadAt >= (live ? STOCK_RECONCILE_MS : STOCK_POLL_MS) - 100;
    if (document.hidden || !due) return;
    state.catalogueReadAt = Date.now();
    loadProducts();
  }, STOCK_POLL_MS);
  try {
    const saved = JSON.parse(sessionStorage.getItem(STORAGE_KEY) || "null");
    if (saved && saved.token && !tokenExpired(saved.token)) startSession(saved);
  } catch {
    sessionStorage.removeItem(STORAGE_KEY);
  }
  renderOrdersEmpty();
}

start();
