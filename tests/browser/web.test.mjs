// The storefront and the admin console driven in Debian's headless Chromium, against a commercex process that
// scripts/browser.sh starts (BASE_URL, ADMIN_EMAIL, ADMIN_PASSWORD). Screenshots of the main pages go to
// SCREENSHOT_DIR. Run: scripts/browser.sh
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { after, before, describe, test } from 'node:test';
import { deflateSync } from 'node:zlib';
import { chromium } from 'playwright-core';

const BASE = process.env.BASE_URL ?? 'http://127.0.0.1:18200';
const ADMIN = { email: process.env.ADMIN_EMAIL ?? 'admin@example.com', password: process.env.ADMIN_PASSWORD ?? 'change-me-1' };
// An existing shopper (the demo's, which scripts/browser.sh seeds).
const SHOPPER = { email: process.env.SHOPPER_EMAIL ?? 'shopper@example.com', password: process.env.SHOPPER_PASSWORD ?? 'demo-shopper-1' };
const SHOTS = process.env.SCREENSHOT_DIR ?? 'screenshots';
const ACCESS_TTL_MS = Number(process.env.ACCESS_TTL_SECS ?? 0) * 1000;
const RUN = Date.now().toString(36);
const PRODUCT = `Aurora lamp ${RUN}`;

/** A real PNG of `width` x `height`, a diagonal gradient, so the browser decodes and shows it. */
function png(width, height) {
  const crcTable = Array.from({ length: 256 }, (_, n) => {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    return c >>> 0;
  });
  const crc = (buf) => {
    let c = 0xffffffff;
    for (const b of buf) c = crcTable[(c ^ b) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  };
  const chunk = (type, data) => {
    const out = Buffer.alloc(12 + data.length);
    out.writeUInt32BE(data.length, 0);
    out.write(type, 4, 'ascii');
    data.copy(out, 8);
    out.writeUInt32BE(crc(out.subarray(4, 8 + data.length)), 8 + data.length);
    return out;
  };
  const header = Buffer.alloc(13);
  header.writeUInt32BE(width, 0);
  header.writeUInt32BE(height, 4);
  header.set([8, 2, 0, 0, 0], 8); // 8-bit RGB
  const rows = Buffer.alloc((width * 3 + 1) * height);
  for (let y = 0; y < height; y++) {
    const row = y * (width * 3 + 1);
    for (let x = 0; x < width; x++) {
      const t = (x + y) / (width + height);
      rows.set([Math.round(250 - 120 * t), Math.round(180 + 40 * t), Math.round(60 + 180 * t)], row + 1 + x * 3);
    }
  }
  return Buffer.concat([Buffer.from('\x89PNG\r\n\x1a\n', 'latin1'), chunk('IHDR', header),
    chunk('IDAT', deflateSync(rows)), chunk('IEND', Buffer.alloc(0))]);
}

let browser;
const errors = [];

async function newPage(options = {}) {
  const context = await browser.newContext({ baseURL: BASE, viewport: { width: 1280, height: 860 }, ...options });
  const page = await context.newPage();
  page.on('pageerror', (e) => errors.push(`${page.url()}: ${e.message}`));
  page.on('console', (m) => { if (m.type() === 'error' && !/status of 4\d\d/.test(m.text())) errors.push(m.text()); });
  return page;
}

async function shot(page, name) {
  await page.evaluate(() => { document.getElementById('toast').hidden = true; });
  await page.screenshot({ path: `${SHOTS}/${name}.png`, fullPage: true });
}

/** Loads `path` afresh (a URL differing only in its fragment would otherwise not reload) and waits for the app. */
async function ready(page, path) {
  await page.goto('about:blank');
  await page.goto(path);
  await page.waitForSelector('body[data-ready="true"]');
}

async function signUp(page, name) {
  const email = `${name.toLowerCase()}-${RUN}@example.com`;
  await ready(page, '/#/signup');
  await page.getByLabel('Name').fill(name);
  await page.getByLabel('Email').fill(email);
  await page.getByLabel('Password (at least 10 characters)').fill('a-long-password-1');
  await page.getByRole('button', { name: 'Sign up' }).click();
  await page.getByRole('link', { name: name }).waitFor();
  return email;
}

async function adminSignIn(page, account = ADMIN) {
  await ready(page, '/admin');
  await page.getByLabel('Email').fill(account.email);
  await page.getByLabel('Password').fill(account.password);
  await page.getByRole('button', { name: 'Sign in' }).click();
}

/** Signs `page`'s context in as the admin unless it already is. */
async function adminSignInOnce(page) {
  const me = await page.request.get('/api/users/me');
  if (me.ok() && (await me.json()).role === 'admin') return;
  await page.request.post('/api/users/signout');
  await adminSignIn(page);
  await page.getByRole('heading', { name: 'Products' }).waitFor();
}

async function addToCartFromSearch(page, productName) {
  await page.getByRole('searchbox', { name: 'Search products' }).fill(productName);
  await page.getByRole('button', { name: 'Search', exact: true }).click();
  await page.getByRole('link', { name: productName }).first().click();
  await page.getByRole('heading', { level: 1, name: productName }).waitFor();
  await page.getByLabel('Quantity').fill('2');
  await page.getByRole('button', { name: `Add ${productName} to cart` }).click();
  await page.locator('#cart-count', { hasText: /^[1-9]/ }).waitFor();
}

async function checkout(page, card) {
  await page.getByRole('link', { name: /^Cart/ }).click();
  await page.getByRole('heading', { name: 'Checkout' }).waitFor();
  await page.getByLabel('Address line 1').fill('1 Main St');
  await page.getByLabel('City').fill('London');
  await page.getByLabel('Postal code').fill('N1 9GU');
  await page.getByLabel('Country (2 letters)').fill('GB');
  await page.getByLabel('Payment').selectOption(card);
  await page.getByRole('button', { name: /^Place order/ }).click();
  await page.getByRole('heading', { name: /^Order ord_/ }).waitFor();
  return (await page.locator('h1 code').textContent()).trim();
}

describe('storefront and admin console in Chromium', () => {
  before(async () => {
    mkdirSync(SHOTS, { recursive: true });
    browser = await chromium.launch({
      executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
    });
  });
  after(async () => {
    await browser?.close();
  });

  let admin;
  let productId;

  test('the admin creates a product with an image and it appears in the storefront', async () => {
    admin = await newPage();
    await adminSignIn(admin);
    await admin.getByRole('heading', { name: 'New product' }).waitFor();
    const form = admin.locator('form', { has: admin.getByRole('heading', { name: 'New product' }) });
    await form.getByLabel('Title').fill(PRODUCT);
    await form.getByLabel('Description').fill('A warm desk lamp with a dimmer.\nBulb included.');
    await form.getByLabel('Price').fill('49.90');
    await form.getByLabel('Category').fill('lighting');
    await form.getByLabel('Initial stock').fill('25');
    await form.getByLabel('Image (JPEG, PNG or WebP)').setInputFiles({ name: 'lamp.png', mimeType: 'image/png',
      buffer: png(320, 240) });
    await form.getByRole('button', { name: 'Create product' }).click();
    const row = admin.getByRole('row', { name: new RegExp(PRODUCT) });
    await row.waitFor();
    assert.match(await row.textContent(), /\$49\.90/);
    await shot(admin, 'admin-products');

    const visitor = await newPage();
    await ready(visitor, '/');
    const card = visitor.locator('.card', { hasText: PRODUCT });
    await card.waitFor();
    productId = decodeURIComponent((await card.locator('a.card-link').getAttribute('href')).split('/').pop());
    const image = card.getByRole('img', { name: PRODUCT });
    // Loaded (or failed) and decoded: a broken image ends with no width.
    await visitor.waitForFunction((img) => img.complete, await image.elementHandle());
    assert.equal(await image.evaluate((img) => img.naturalWidth), 320, 'the uploaded image is shown');
    const served = await visitor.request.get(await image.getAttribute('src'));
    assert.equal(served.status(), 200);
    assert.equal(served.headers()['content-type'], 'image/png');
    assert.match(served.headers()['cache-control'], /max-age=31536000/);
    await visitor.context().close();
  });

  let shopper;
  let otherFrames;
  let other;

  test('a shopper signs up, searches, adds to cart, checks out and sees the order turn paid live', async () => {
    // Another shopper is signed in meanwhile, watching their own notifications.
    other = await newPage();
    otherFrames = [];
    other.on('websocket', (ws) => ws.on('framereceived', (f) => otherFrames.push(String(f.payload))));
    await signUp(other, 'Otto');
    await other.getByRole('link', { name: /Notifications/ }).click();
    await other.getByRole('heading', { name: 'Notifications' }).waitFor();

    shopper = await newPage();
    await signUp(shopper, 'Sofia');
    await ready(shopper, '/');
    await shopper.locator('body[data-live="live"]').waitFor();
    // Opening a page replays nothing old (the admin's new products were broadcast before this page was opened).
    await shopper.waitForTimeout(300);
    assert.ok(await shopper.locator('#toast').isHidden(), 'no old notification popped up');
    await shot(shopper, 'storefront-catalog');
    await addToCartFromSearch(shopper, PRODUCT);
    await shot(shopper, 'storefront-product');
    await shopper.getByRole('link', { name: /^Cart/ }).click();
    await shopper.getByRole('heading', { name: 'Checkout' }).waitFor();
    assert.equal(await shopper.locator('#subtotal').textContent(), '$99.80');
    await shot(shopper, 'storefront-cart');

    // The page is never reloaded from here on: a marker set now must survive to the end.
    await shopper.evaluate(() => { window.sameDocument = true; });
    const orderId = await checkout(shopper, 'pm_card_visa');
    await shopper.locator('#order-status', { hasText: 'paid' }).waitFor({ timeout: 15000 });
    assert.equal(await shopper.evaluate(() => window.sameDocument), true, 'updated without a reload');
    await shopper.locator('.history li', { hasText: 'stock reserved' }).waitFor();
    await shopper.locator('#unread-count', { hasText: /^[1-9]/ }).waitFor();
    await shot(shopper, 'storefront-order-paid');
    shopper.orderId = orderId;
  });

  test('a declined card shows its reason', async () => {
    await addToCartFromSearch(shopper, PRODUCT);
    await checkout(shopper, 'pm_card_chargeDeclined');
    await shopper.locator('#order-status', { hasText: 'payment failed' }).waitFor({ timeout: 15000 });
    assert.match(await shopper.locator('#order-reason').textContent(), /card declined/);
  });

  test('the shopper\'s notifications reach the bell and are marked read; the other shopper gets none of them', async () => {
    await shopper.locator('#bell').click();
    await shopper.getByRole('heading', { name: 'Notifications' }).waitFor();
    assert.ok(await shopper.locator('.notifications li.unread').count() > 0);
    await shot(shopper, 'storefront-notifications');
    await shopper.getByRole('button', { name: 'Mark all as read' }).click();
    await shopper.locator('#unread-count', { hasText: /^0$/ }).waitFor();

    // Give the other shopper's socket time to have seen anything it was (wrongly) sent.
    await other.waitForTimeout(1000);
    const leaked = otherFrames.filter((f) => f.includes(shopper.orderId) || /"kind":"(order|payment)\./.test(f));
    assert.deepEqual(leaked, [], 'the other shopper received none of the first shopper\'s notifications');
    await other.reload();
    await other.waitForSelector('body[data-ready="true"]');
    assert.equal(await other.locator('.notifications li', { hasText: 'Order' }).count(), 0);
    await other.context().close();
  });

  test('an expired access token is renewed without the shopper noticing', async () => {
    assert.ok(ACCESS_TTL_MS > 0, 'ACCESS_TTL_SECS: the access-token lifetime the server was started with');
    await shopper.waitForTimeout(ACCESS_TTL_MS + 1500);
    await shopper.getByRole('link', { name: 'Orders' }).click();
    await shopper.getByRole('heading', { name: 'Your orders' }).waitFor();
    assert.ok(await shopper.getByRole('link', { name: shopper.orderId }).isVisible());
  });

  test('a session ended elsewhere takes the shopper to the sign-in page, and back after signing in', async () => {
    const page = await newPage();
    await signUp(page, 'Rita');
    await ready(page, '/#/cart');
    await page.getByRole('heading', { name: 'Your cart' }).waitFor();
    // Signed out from another tab: the socket is closed by the server, and the page notices by itself.
    assert.equal((await page.request.post('/api/users/signout')).status(), 204);
    await page.getByRole('heading', { name: 'Sign in' }).waitFor();
    await page.getByLabel('Email').fill(`rita-${RUN}@example.com`);
    await page.getByLabel('Password').fill('a-long-password-1');
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByRole('heading', { name: 'Your cart' }).waitFor();
    // A page whose request finds the session gone goes the same way.
    assert.equal((await page.request.post('/api/users/signout')).status(), 204);
    await page.evaluate(() => { location.hash = '#/orders'; });
    await page.getByRole('heading', { name: 'Sign in' }).waitFor();
    await page.context().close();
  });

  test('a shopper is refused by the admin console, which says so', async () => {
    const page = await newPage();
    await signUp(page, 'Nadia');
    await ready(page, '/admin');
    const refused = page.locator('#refused');
    await refused.waitFor();
    assert.match(await refused.textContent(), /not allowed/);
    await page.context().close();
  });

  test('a stale product edit shows the conflict instead of overwriting', async () => {
    const second = await admin.context().newPage();
    for (const page of [admin, second]) {
      await ready(page, `/admin#/products/${encodeURIComponent(productId)}`);
      await page.getByRole('heading', { name: 'Details' }).waitFor();
    }
    await admin.getByLabel('Price').fill('44.90');
    await admin.getByRole('button', { name: 'Save', exact: true }).click();
    await admin.getByText('Version 3', { exact: false }).waitFor();
    await second.getByLabel('Title').fill(`${PRODUCT} (renamed)`);
    await second.getByRole('button', { name: 'Save', exact: true }).click();
    const conflict = second.locator('.form-error');
    await conflict.waitFor();
    assert.match(await conflict.textContent(), /changed by someone else/);
    await shot(second, 'admin-product-edit');
    const product = await (await admin.request.get(`/api/products/${encodeURIComponent(productId)}`)).json();
    assert.equal(product.title, PRODUCT, 'the stale edit changed nothing');
    assert.equal(product.price, 4490);
  });

  test('the admin ships the paid order', async () => {
    await ready(admin, '/admin#/orders');
    const details = admin.locator('details', { has: admin.locator('summary', { hasText: shopper.orderId }) });
    await details.locator('summary').click();
    await details.getByText(`2 × ${PRODUCT} at $49.90`).waitFor();
    await details.getByText('Ship to: 1 Main St, London, N1 9GU, GB').waitFor();
    await admin.getByRole('button', { name: `ship ${shopper.orderId}` }).click();
    await admin.getByRole('button', { name: `deliver ${shopper.orderId}` }).waitFor();
    await shot(admin, 'admin-orders');
    await shopper.locator('.toast', { hasText: /shipped/i }).waitFor({ timeout: 10000 });
  });

  test('a link with a malformed escape in its route still shows a page', async () => {
    const page = await newPage();
    await ready(page, '/#/product/%E0%A4%A');
    await page.getByRole('heading').first().waitFor();
    await ready(page, '/admin#/orders/%');
    await page.getByRole('heading').first().waitFor();
    await page.context().close();
  });

  test('the storefront fits a phone-width screen', async () => {
    const phone = await newPage({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
    await ready(phone, '/');
    await phone.locator('.card').first().waitFor();
    const overflow = await phone.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 0, `the page is ${overflow}px wider than the screen`);
    await shot(phone, 'storefront-phone');
    await phone.context().close();
  });

  test('every control has a name, and a shopper signs in and adds to the cart with the keyboard alone', async () => {
    const page = await newPage();
    await ready(page, '/#/signin');
    // Focus starts on the page's content; Tab reaches the fields in order and Enter submits.
    await page.keyboard.press('Tab');
    await page.keyboard.type(SHOPPER.email);
    await page.keyboard.press('Tab');
    await page.keyboard.type(SHOPPER.password);
    await page.keyboard.press('Enter');
    await page.getByRole('button', { name: 'Sign out' }).waitFor();
    await ready(page, `/#/product/${encodeURIComponent(productId)}`);
    const add = page.getByRole('button', { name: `Add ${PRODUCT} to cart` });
    await add.focus();
    await page.keyboard.press('Enter');
    await page.locator('#cart-count', { hasText: /^[1-9]/ }).waitFor();

    const unnamed = async () => page.evaluate(() => [...document.querySelectorAll('input, select, textarea, button, a[href]')]
      .filter((el) => {
        const labels = el.labels ? [...el.labels].map((l) => l.textContent).join('') : '';
        return !(labels || el.getAttribute('aria-label') || el.textContent || el.getAttribute('alt') || '').trim();
      })
      .map((el) => el.outerHTML.slice(0, 120)));
    for (const path of ['/', `/#/product/${encodeURIComponent(productId)}`, '/#/cart', '/#/orders', '/#/profile',
      '/admin#/products', '/admin#/orders', '/admin#/coupons', '/admin#/users']) {
      if (path.startsWith('/admin')) await adminSignInOnce(page);
      await ready(page, path);
      await page.locator('main h1').first().waitFor();
      assert.deepEqual(await unnamed(), [], `${path}: controls without a name`);
    }
    await page.context().close();
  });

  test('the API docs page shows every operation', async () => {
    const page = await newPage();
    await page.goto('/docs');
    await page.locator('.opblock').first().waitFor();
    const documented = Object.values((await (await page.request.get('/api/openapi.json')).json()).paths)
      .reduce((n, item) => n + Object.keys(item).length, 0);
    assert.equal(await page.locator('.opblock').count(), documented);
    await page.context().close();
  });

  test('no page logged a script error', () => {
    assert.deepEqual(errors, []);
  });
});
