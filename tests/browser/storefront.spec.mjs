// Browser test of the storefront page: starts the platform (`shop all`, the
// debug build) on free ports with a fresh database, drives Debian's Chromium
// headless through Playwright, and checks the two checkout scenarios:
//
//   1. add to cart, pay with the approving card: the order's timeline
//      reaches CONFIRMED and the stock shown drops;
//   2. pay with the declining card: the timeline reaches REJECTED with the
//      reason, and the stock shown comes back;
//   3. the WebSocket is cut and kept from reconnecting while an order is
//      placed and confirmed elsewhere: once it may, the page reconnects by
//      itself and shows that order, CONFIRMED, with its whole timeline;
//   4. another customer buys a mug: the stock shown drops, pushed over the
//      WebSocket, well before the page would re-read the catalogue.
//
// Then it saves a screenshot under target/browser/ (or to
// docs/storefront.png, the README's picture, with UPDATE_SCREENSHOT=1: the
// tracked image changes only on purpose), stops the platform and drops the
// database. Run with `node storefront.spec.mjs` (no test
// runner); it exits non-zero on the first failure.
//
// Environment: SHOP_BIN (default $CARGO_TARGET_DIR or ./target, then
// debug/shop), CHROMIUM (default /usr/bin/chromium), TEST_POSTGRES_URL
// (default postgres://postgres@127.0.0.1:5432).

import { chromium } from "playwright-core";
import { spawn, execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { createServer } from "node:net";
import { mkdirSync, mkdtempSync, openSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import assert from "node:assert/strict";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const TARGET_DIR = process.env.CARGO_TARGET_DIR || join(ROOT, "target");
const SHOP_BIN = process.env.SHOP_BIN || join(TARGET_DIR, "debug", "shop");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const POSTGRES = process.env.TEST_POSTGRES_URL || "postgres://postgres@127.0.0.1:5432";
const SCREENSHOT =
  process.env.UPDATE_SCREENSHOT === "1"
    ? join(ROOT, "docs", "storefront.png")
    : join(TARGET_DIR, "browser", "storefront.png");
const MUG = "00000000-0000-4000-8000-000000000001";
const STEP_TIMEOUT_MS = 30_000;

const started = Date.now();
const log = (line) => console.log(`[${((Date.now() - started) / 1000).toFixed(1).padStart(5)}s] ${line}`);

function freePort() {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.unref();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolvePort(port));
    });
  });
}

async function waitUntil(what, check, timeoutMs = STEP_TIMEOUT_MS) {
  const deadline = Date.now() + timeoutMs;
  let last;
  while (Date.now() < deadline) {
    try {
      const value = await check();
      if (value) return value;
    } catch (error) {
      last = error;
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`timed out waiting for ${what}${last ? `: ${last.message}` : ""}`);
}

/** Starts `shop all` and returns its ports, process and clean-up. */
async function startPlatform() {
  const suffix = randomBytes(6).toString("hex");
  const database = `shop_browser_${suffix}`;
  const dir = mkdtempSync(join(tmpdir(), "shop-browser-"));
  const ports = {
    order: await freePort(),
    product: await freePort(),
    payment: await freePort(),
    gateway: await freePort(),
  };
  const env = { ...process.env };
  // Development mode (so the customer picker works) with a secret kept in
  // the temporary directory, not in $HOME; and nothing pointing elsewhere.
  for (const name of ["JWT_SECRET", "JWT_PUBLIC_KEY_FILE", "KAFKA_BROKERS", "PRODUCT_URL", "ORDER_URL", "PUBLIC_PRODUCT_URL", "PUBLIC_ORDER_URL"]) {
    delete env[name];
  }
  Object.assign(env, {
    DATABASE_URL: `${POSTGRES}/${database}`,
    REDIS_PREFIX: database,
    JWT_DEV_SECRET_FILE: join(dir, "dev-jwt-secret"),
    HTTP_HOST: "127.0.0.1",
    ORDER_PORT: String(ports.order),
    PRODUCT_PORT: String(ports.product),
    PAYMENT_PORT: String(ports.payment),
    GATEWAY_PORT: String(ports.gateway),
    KAFKA_PARTITIONS: "3",
    SHUTDOWN_GRACE_SECONDS: "5",
    RUST_LOG: env.RUST_LOG || "info",
  });
  const logFile = join(dir, "shop.log");
  const out = openSync(logFile, "a");
  const child = spawn(SHOP_BIN, ["all"], { env, stdio: ["ignore", out, out] });
  let exited = null;
  child.on("exit", (code, signal) => (exited = { code, signal }));

  const stop = async () => {
    if (!exited) {
      child.kill("SIGTERM");
      await waitUntil("the platform to stop", () => exited, 20_000).catch(() => child.kill("SIGKILL"));
    }
    try {
      execFileSync("psql", ["-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-qc", `DROP DATABASE IF EXISTS "${database}" WITH (FORCE)`], { stdio: "ignore" });
    } catch (error) {
      console.error(`could not drop database ${database}: ${error.message}`);
    }
    rmSync(dir, { recursive: true, force: true });
  };
  const tail = () => readFileSync(logFile, "utf8").split("\n").slice(-40).join("\n");

  log(`starting ${SHOP_BIN} all (gateway :${ports.gateway}, database ${database})`);
  try {
    for (const [name, port] of Object.entries(ports)) {
      await waitUntil(`${name} /readyz`, async () => {
        if (exited) throw new Error(`shop exited early (${JSON.stringify(exited)}):\n${tail()}`);
        const response = await fetch(`http://127.0.0.1:${port}/readyz`);
        return response.ok;
      }, 120_000);
    }
  } catch (error) {
    console.error(tail());
    await stop();
    throw error;
  }
  log("platform ready on all four ports");
  return { ports, stop, tail };
}

async function shownStock(page, productId) {
  const value = await page.locator(`[data-product-id="${productId}"] .stock`).getAttribute("data-stock");
  return value == null ? null : Number(value);
}

async function apiStock(ports, productId) {
  const response = await fetch(`http://127.0.0.1:${ports.product}/products/${productId}`);
  return (await response.json()).stock;
}

/** Places an order of `quantity` mugs with the payment choice `payment`; returns its id. */
async function checkout(page, quantity, payment, known) {
  const add = page.getByRole("button", { name: "Add Enamel camp mug to cart" });
  for (let i = 0; i < quantity; i += 1) {
    // By keyboard: the grid must be usable without a mouse.
    await add.focus();
    await page.keyboard.press("Enter");
  }
  await page.getByRole("radio", { name: new RegExp(`^${payment}`) }).check();
  await page.getByRole("button", { name: "Place order" }).click();
  const id = await waitUntil("the new order to appear", async () => {
    const ids = await page.locator("#orders > li").evaluateAll((items) => items.map((li) => li.dataset.orderId));
    return ids.find((candidate) => !known.has(candidate));
  });
  known.add(id);
  return id;
}

async function devToken(ports, customer) {
  const response = await fetch(`http://127.0.0.1:${ports.gateway}/dev/token`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ customer }),
  });
  return (await response.json()).token;
}

/** Places an order of `quantity` mugs over REST, paid with the approving card. */
async function placeOrder(ports, token, quantity) {
  const response = await fetch(`http://127.0.0.1:${ports.order}/orders`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
    body: JSON.stringify({ items: [{ product_id: MUG, quantity }], payment_token: "tok_visa" }),
  });
  assert.equal(response.status, 202, "order accepted");
  return response.json();
}

async function timeline(page, orderId) {
  return page.locator(`[data-order-id="${orderId}"] .timeline li`).evaluateAll((steps) =>
    steps.map((step) => ({ step: step.dataset.step, done: step.classList.contains("done"), text: step.textContent })),
  );
}

async function main() {
  const platform = await startPlatform();
  const { ports } = platform;
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
  });
  const failures = [];
  try {
    const page = await browser.newPage({ viewport: { width: 1360, height: 940 } });
    page.on("pageerror", (error) => failures.push(`page error: ${error.message}`));
    page.on("console", (message) => {
      if (message.type() === "error") failures.push(`console error: ${message.text()}`);
    });
    // Every WebSocket goes through the test, so it can cut them.
    const sockets = { blocked: false, open: [] };
    await page.routeWebSocket(/\/ws$/, (route) => {
      if (sockets.blocked) return route.close({ code: 1001, reason: "test: gateway away" });
      sockets.open.push({ route, server: route.connectToServer() });
    });
    await page.goto(`http://127.0.0.1:${ports.gateway}/`);
    await page.locator(`[data-product-id="${MUG}"] .stock[data-stock]`).waitFor();
    log("page loaded with the catalogue");

    // Every form control has a label.
    const unlabelled = await page.locator("input, select, textarea").evaluateAll((inputs) =>
      inputs.filter((i) => i.type !== "hidden" && i.labels.length === 0 && !i.getAttribute("aria-label")).map((i) => i.id || i.name),
    );
    assert.deepEqual(unlabelled, [], "unlabelled form controls");

    // Development mode: the customer picker gets a token from the gateway.
    // A fresh database: alice has no orders yet.
    await page.getByLabel("Customer").fill("alice");
    await page.getByRole("button", { name: "Sign in" }).click();
    await waitUntil("the WebSocket to be live", async () => (await page.locator("#connection").getAttribute("data-state")) === "live");
    log("signed in with a development token; WebSocket live");

    const known = new Set();

    // Scenario 1: approve.
    const before = await shownStock(page, MUG);
    const approved = await checkout(page, 2, "Approve", known);
    log(`scenario 1: placed order ${approved} (2 mugs, tok_visa); stock shown ${before}`);
    await waitUntil("CONFIRMED", async () => (await page.locator(`[data-order-id="${approved}"]`).getAttribute("data-status")) === "CONFIRMED");
    const steps1 = await timeline(page, approved);
    assert.deepEqual(
      steps1.map((s) => [s.step, s.done]),
      [["PENDING", true], ["INVENTORY_RESERVED", true], ["PAYMENT_AUTHORIZED", true], ["CONFIRMED", true]],
      "the approved order's timeline",
    );
    await waitUntil(`the stock shown to drop to ${before - 2}`, async () => (await shownStock(page, MUG)) === before - 2);
    assert.equal(await apiStock(ports, MUG), before - 2, "the product service agrees");
    log(`ok - scenario 1: timeline PENDING → stock reserved → payment authorized → CONFIRMED; stock shown ${before} → ${before - 2}`);

    // Scenario 2: decline.
    const before2 = await shownStock(page, MUG);
    let lowest = before2;
    const watching = setInterval(async () => {
      const now = await shownStock(page, MUG).catch(() => null);
      if (now != null) lowest = Math.min(lowest, now);
    }, 50);
    const declined = await checkout(page, 1, "Decline", known);
    log(`scenario 2: placed order ${declined} (1 mug, tok_chargeDeclined); stock shown ${before2}`);
    await waitUntil("REJECTED", async () => (await page.locator(`[data-order-id="${declined}"]`).getAttribute("data-status")) === "REJECTED");
    const steps2 = await timeline(page, declined);
    const rejected = steps2.find((s) => s.step === "REJECTED");
    assert.ok(rejected && rejected.done, `the declined order's timeline ends REJECTED: ${JSON.stringify(steps2)}`);
    assert.match(rejected.text, /payment declined/i, "the reason is shown");
    assert.ok(steps2.find((s) => s.step === "INVENTORY_RESERVED")?.done, "stock was reserved first");
    assert.equal(steps2.some((s) => s.step === "CONFIRMED"), false, "no CONFIRMED step on a rejected order");
    await waitUntil(`the stock shown to be back at ${before2}`, async () => (await shownStock(page, MUG)) === before2);
    clearInterval(watching);
    assert.equal(await apiStock(ports, MUG), before2, "the product service agrees");
    log(
      `ok - scenario 2: timeline … → REJECTED (payment declined); stock shown back at ${before2}` +
        (lowest < before2 ? ` (the page showed the reservation: ${lowest})` : " (the reservation was too brief to be shown)"),
    );

    // Scenario 3: reconnect and catch up.
    const before3 = await shownStock(page, MUG);
    sockets.blocked = true;
    for (const { route, server } of sockets.open.splice(0)) {
      server.close();
      route.close({ code: 1001, reason: "test: gateway away" });
    }
    await waitUntil("the page to notice", async () => (await page.locator("#connection").getAttribute("data-state")) !== "live");
    const token = await devToken(ports, "alice");
    const placed = await placeOrder(ports, token, 1);
    await waitUntil("the offline order to be confirmed", async () => {
      const response = await fetch(`http://127.0.0.1:${ports.order}/orders/${placed.order_id}`, { headers: { authorization: `Bearer ${token}` } });
      return (await response.json()).status === "CONFIRMED";
    });
    assert.equal(await page.locator(`[data-order-id="${placed.order_id}"]`).count(), 0, "not shown while offline");
    log(`scenario 3: socket cut; order ${placed.order_id} placed and confirmed meanwhile`);
    sockets.blocked = false;
    await waitUntil("the page to reconnect by itself", async () => (await page.locator("#connection").getAttribute("data-state")) === "live");
    await waitUntil("the missed order, CONFIRMED", async () => (await page.locator(`[data-order-id="${placed.order_id}"]`).getAttribute("data-status")) === "CONFIRMED");
    // Every step with the time it happened: the history was caught up, not guessed.
    const steps3 = await waitUntil("the missed order's timeline with times", async () => {
      const steps = await timeline(page, placed.order_id);
      return steps.every((s) => /\d:\d\d/.test(s.text)) && steps;
    });
    assert.deepEqual(
      steps3.map((s) => [s.step, s.done]),
      [["PENDING", true], ["INVENTORY_RESERVED", true], ["PAYMENT_AUTHORIZED", true], ["CONFIRMED", true]],
      "the missed order's whole timeline",
    );
    await waitUntil(`the stock shown to drop to ${before3 - 1}`, async () => (await shownStock(page, MUG)) === before3 - 1);
    known.add(placed.order_id);
    log(`ok - scenario 3: reconnected by itself; the missed order shows CONFIRMED with its whole timeline; stock ${before3} → ${before3 - 1}`);

    // Scenario 4: someone else's order; only a push can show it this soon
    // (with a live socket the page re-reads the catalogue once a minute).
    const before4 = await shownStock(page, MUG);
    const bob = await devToken(ports, "bob");
    await placeOrder(ports, bob, 1);
    log(`scenario 4: bob ordered a mug over REST; stock shown ${before4}`);
    await waitUntil(`the pushed stock ${before4 - 1}`, async () => (await shownStock(page, MUG)) === before4 - 1, 10_000);
    log(`ok - scenario 4: stock shown ${before4} → ${before4 - 1}, pushed`);

    // Something in the cart, so the picture shows the checkout too.
    await page.getByRole("button", { name: "Add Waxed canvas tote to cart" }).click();
    await page.evaluate(() => window.scrollTo(0, 0));
    mkdirSync(dirname(SCREENSHOT), { recursive: true });
    await page.screenshot({ path: SCREENSHOT });
    log(`screenshot saved to ${SCREENSHOT}`);
    assert.deepEqual(failures, [], "no errors in the page");
  } finally {
    await browser.close();
    await platform.stop();
    log("platform stopped, database dropped");
  }
}

main().then(
  () => {
    log("browser test passed");
  },
  (error) => {
    console.error(`not ok - ${error.stack || error.message}`);
    process.exitCode = 1;
  },
);
