// The storefront: catalog, product pages, cart, checkout, orders that update live, notifications, account.
// Routes are URL fragments (#/product/ID), so every page has an address and the back button works.
import { api, currentUser, LiveNotifications, money, toMinor } from './api.js';
import { badge, decodeSegment, field, h, mount, onSubmit, pager, table, toast, when, words } from './ui.js';

const view = document.getElementById('view');
const state = { user: null, unread: 0, cartCount: 0 };
const PAGE_SIZE = 12;

const live = new LiveNotifications(onNotification, (s) => {
  document.body.dataset.live = s;
  // The session ended elsewhere (signed out in another tab, revoked): sign in again, then come back here.
  if (s === 'signed_out') signedOut(`#/signin?next=${encodeURIComponent(location.hash || '#/')}`);
  // (Re)connected: whatever changed while the socket was away is read again.
  if (s === 'live') refreshShown();
});

function refreshShown() {
  refreshCounts();
  const route = parseRoute();
  if (route.name === 'order') showOrder(route.id).catch(() => {});
}

function onNotification(n) {
  toast(n.title);
  refreshCounts();
  const route = parseRoute();
  if (route.name === 'order' && n.data?.orderId === route.id) showOrder(route.id);
  if (route.name === 'orders' && n.data?.orderId) showOrders(route.params);
  if (route.name === 'notifications') showNotifications(route.params);
}

// ---- navigation ----------------------------------------------------------------------------------------------

function parseRoute() {
  const [path, query = ''] = location.hash.replace(/^#/, '').split('?');
  const parts = path.split('/').filter(Boolean).map(decodeSegment);
  const params = new URLSearchParams(query);
  const [first, id] = parts;
  const names = { product: 'product', cart: 'cart', orders: id ? 'order' : 'orders', signin: 'signin',
    signup: 'signup', profile: 'profile', notifications: 'notifications' };
  return { name: names[first] ?? 'catalog', id, params };
}

function go(hash) {
  if (location.hash === hash) render();
  else location.hash = hash;
}

async function render() {
  const route = parseRoute();
  const needsUser = ['cart', 'order', 'orders', 'profile', 'notifications'].includes(route.name);
  if (needsUser && !state.user) return go(`#/signin?next=${encodeURIComponent(location.hash)}`);
  const pages = {
    catalog: () => showCatalog(route.params),
    product: () => showProduct(route.id),
    cart: () => showCart(),
    orders: () => showOrders(route.params),
    order: () => showOrder(route.id),
    signin: () => showSignIn(route.params),
    signup: () => showSignUp(route.params),
    profile: () => showProfile(),
    notifications: () => showNotifications(route.params),
  };
  try {
    await pages[route.name]();
  } catch (e) {
    if (e.status === 401) {
      // The session ended elsewhere (signed out, expired, revoked): sign in again.
      return signedOut(`#/signin?next=${encodeURIComponent(location.hash)}`);
    }
    mount(view, h('h1', {}, 'Something went wrong'), h('p', { class: 'form-error', role: 'alert' }, e.message));
  }
  view.focus({ preventScroll: true });
}

function renderNav() {
  const nav = document.getElementById('account-nav');
  if (!state.user) {
    mount(nav, h('a', { href: '#/signin' }, 'Sign in'), h('a', { href: '#/signup', class: 'button' }, 'Sign up'));
    return;
  }
  mount(nav,
    h('a', { href: '#/cart', id: 'cart-link' }, 'Cart ', h('span', { class: 'count', id: 'cart-count' }, state.cartCount)),
    h('a', { href: '#/orders' }, 'Orders'),
    h('a', { href: '#/notifications', id: 'bell', 'aria-label': `Notifications, ${state.unread} unread` },
      bellIcon(),
      h('span', { class: state.unread ? 'count unread' : 'count', id: 'unread-count' }, state.unread)),
    h('a', { href: '#/profile' }, state.user.name),
    h('button', { type: 'button', class: 'link', onclick: signOut }, 'Sign out'));
}

function bellIcon() {
  const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
  svg.setAttribute('viewBox', '0 0 24 24');
  svg.setAttribute('aria-hidden', 'true');
  svg.setAttribute('class', 'icon');
  const path = document.createElementNS('http://www.w3.org/2000/svg', 'path');
  path.setAttribute('d', 'M12 3a6 6 0 0 0-6 6v4l-2 3h16l-2-3V9a6 6 0 0 0-6-6zm-2 15a2 2 0 0 0 4 0');
  svg.append(path);
  return svg;
}

async function refreshCounts() {
  if (!state.user) return;
  const [notes, cart] = await Promise.all([
    api('GET', '/api/notifications?limit=1').catch(() => null),
    api('GET', '/api/cart').catch(() => null),
  ]);
  if (notes) state.unread = notes.unreadCount;
  if (cart) state.cartCount = cart.itemCount;
  renderNav();
}

async function signedIn(user) {
  state.user = user;
  live.start();
  await refreshCounts();
}

function signedOut(next = '#/') {
  live.stop();
  Object.assign(state, { user: null, unread: 0, cartCount: 0 });
  renderNav();
  go(next);
}

async function signOut() {
  await api('POST', '/api/users/signout').catch(() => null);
  signedOut();
  toast('Signed out');
}

// ---- catalog ----------------------------------------------------------------------------------------------------

function availability(p) {
  if (p.stockAvailable <= 0) return h('span', { class: 'stock out' }, 'Sold out');
  if (p.stockAvailable <= 5) return h('span', { class: 'stock low' }, `Only ${p.stockAvailable} left`);
  return h('span', { class: 'stock' }, 'In stock');
}

function picture(p, size) {
  return p.imageUrl
    ? h('img', { src: p.imageUrl, alt: p.title, class: `picture ${size}`, loading: 'lazy' })
    : h('div', { class: `picture ${size} none`, role: 'img', 'aria-label': 'No image' }, p.title.slice(0, 1));
}

async function showCatalog(params) {
  const page = Number(params.get('page') ?? 1);
  const query = new URLSearchParams({ page, limit: PAGE_SIZE });
  for (const key of ['q', 'category', 'sort']) if (params.get(key)) query.set(key, params.get(key));
  for (const [key, name] of [['min', 'minPrice'], ['max', 'maxPrice']]) {
    const minor = toMinor(params.get(key) ?? '', 'USD');
    if (!Number.isNaN(minor)) query.set(name, minor);
  }
  document.getElementById('search-q').value = params.get('q') ?? '';

  const filters = h('form', { class: 'filters', 'aria-label': 'Filter products' },
    field('Search', { name: 'q', type: 'search', value: params.get('q') ?? '', maxlength: 100 }),
    field('Category', { name: 'category', value: params.get('category') ?? '', list: 'categories' }),
    h('datalist', { id: 'categories' }),
    field('Price from', { name: 'min', inputmode: 'decimal', value: params.get('min') ?? '', size: 6 }),
    field('to', { name: 'max', inputmode: 'decimal', value: params.get('max') ?? '', size: 6 }),
    field('Sort by', { tag: 'select', name: 'sort', value: params.get('sort') ?? 'newest', options: [
      ['newest', 'Newest'], ['price_asc', 'Price: low to high'], ['price_desc', 'Price: high to low'],
      ['title_asc', 'Name: A to Z'], ['title_desc', 'Name: Z to A'], ['oldest', 'Oldest']] }),
    h('button', { type: 'submit' }, 'Apply'));
  onSubmit(filters, async (values) => {
    const next = new URLSearchParams(Object.entries(values).filter(([, v]) => v !== ''));
    go(`#/?${next}`);
  });

  const found = await api('GET', `/api/products?${query}`).catch((e) => e);
  if (found instanceof Error) {
    mount(view, h('h1', {}, 'Products'), filters, h('p', { class: 'form-error', role: 'alert' }, found.message));
    return;
  }
  const categories = [...new Set(found.items.map((p) => p.category))];
  const grid = h('ul', { class: 'grid', 'aria-label': 'Products' }, found.items.map((p) =>
    h('li', { class: 'card' },
      h('a', { href: `#/product/${encodeURIComponent(p.id)}`, class: 'card-link' },
        picture(p, 'thumb'), h('h2', {}, p.title)),
      h('p', { class: 'price' }, money(p.price, p.currency)),
      availability(p),
      addToCartForm(p, false))));
  const flip = (n) => { params.set('page', n); go(`#/?${params}`); };
  mount(view,
    h('h1', {}, params.get('q') ? `Results for “${params.get('q')}”` : 'Products'),
    filters,
    h('p', { class: 'muted' }, `${found.total}${found.totalIsExact ? '' : '+'} products`),
    found.items.length ? grid : h('p', {}, 'No products match.'),
    pager(found, flip));
  mount(view.querySelector('#categories'), categories.map((c) => h('option', { value: c })));
}

function addToCartForm(p, withQuantity) {
  const form = h('form', { class: 'add-to-cart' },
    withQuantity ? field('Quantity', { name: 'quantity', type: 'number', min: 1, max: 999, value: 1 }) : null,
    h('button', { type: 'submit', class: 'primary', disabled: p.stockAvailable <= 0,
      'aria-label': `Add ${p.title} to cart` }, 'Add to cart'));
  return onSubmit(form, async (values) => {
    if (!state.user) return go(`#/signin?next=${encodeURIComponent(`#/product/${p.id}`)}`);
    const cart = await api('POST', '/api/cart/items', { productId: p.id, quantity: Number(values.quantity ?? 1) });
    state.cartCount = cart.itemCount;
    renderNav();
    toast(`${p.title} added to your cart`);
  });
}

async function showProduct(id) {
  const p = await api('GET', `/api/products/${encodeURIComponent(id)}`).catch((e) => e);
  if (p instanceof Error) {
    mount(view, h('h1', {}, 'Product not found'), h('p', {}, p.message), h('a', { href: '#/' }, 'Back to products'));
    return;
  }
  mount(view, h('article', { class: 'product' },
    picture(p, 'large'),
    h('div', { class: 'details' },
      h('p', { class: 'muted' }, h('a', { href: `#/?category=${encodeURIComponent(p.category)}` }, p.category)),
      h('h1', {}, p.title),
      h('p', { class: 'price big' }, money(p.price, p.currency)),
      availability(p),
      h('p', { class: 'description' }, p.description),
      addToCartForm(p, true))));
}

// ---- cart and checkout -------------------------------------------------------------------------------------------

const TEST_CARDS = [
  ['pm_card_visa', 'Visa test card (succeeds)'],
  ['pm_card_mastercard', 'Mastercard test card (succeeds)'],
  ['pm_card_chargeDeclined', 'Test card that is declined'],
  ['pm_card_chargeDeclinedInsufficientFunds', 'Test card with insufficient funds'],
  ['pm_card_flaky', 'Test card that fails twice, then succeeds'],
];

async function showCart() {
  const cart = await api('GET', '/api/cart');
  state.cartCount = cart.itemCount;
  renderNav();
  if (!cart.items.length) {
    mount(view, h('h1', {}, 'Your cart'), h('p', {}, 'Your cart is empty. ', h('a', { href: '#/' }, 'Browse products')));
    return;
  }
  const rows = cart.items.map((line) => {
    const quantity = h('form', { class: 'inline' },
      field(`Quantity of ${line.title}`, { name: 'quantity', type: 'number', min: 1, max: 999, value: line.quantity,
        class: 'qty' }),
      h('button', { type: 'submit' }, 'Update'));
    onSubmit(quantity, async (values) => {
      await api('PATCH', `/api/cart/items/${encodeURIComponent(line.productId)}`, { quantity: Number(values.quantity) });
      showCart();
    });
    const remove = h('button', { type: 'button', class: 'link', 'aria-label': `Remove ${line.title}`,
      onclick: async () => {
        await api('DELETE', `/api/cart/items/${encodeURIComponent(line.productId)}`);
        showCart();
      } }, 'Remove');
    return h('tr', { class: line.available ? '' : 'unavailable' },
      h('th', { scope: 'row' }, h('a', { href: `#/product/${encodeURIComponent(line.productId)}` }, line.title),
        line.available ? null : h('span', { class: 'stock out' }, ' Unavailable')),
      h('td', {}, money(line.unitPrice, line.currency)),
      h('td', {}, quantity),
      h('td', { class: 'num' }, money(line.lineTotal, line.currency)),
      h('td', {}, remove));
  });
  const address = state.user.address ?? {};
  // One key per checkout form: a retry of the same submission names the same order.
  const idempotencyKey = crypto.randomUUID();
  const checkout = h('form', { class: 'checkout', 'aria-labelledby': 'checkout-title' },
    h('h2', { id: 'checkout-title' }, 'Checkout'),
    h('fieldset', {}, h('legend', {}, 'Shipping address'),
      field('Address line 1', { name: 'line1', required: true, value: address.line1 ?? '', autocomplete: 'address-line1' }),
      field('Address line 2', { name: 'line2', value: address.line2 ?? '', autocomplete: 'address-line2' }),
      field('City', { name: 'city', required: true, value: address.city ?? '', autocomplete: 'address-level2' }),
      field('Postal code', { name: 'postalCode', required: true, value: address.postalCode ?? '',
        autocomplete: 'postal-code' }),
      field('Country (2 letters)', { name: 'country', required: true, maxlength: 2, value: address.country ?? '',
        autocomplete: 'country' })),
    field('Payment', { tag: 'select', name: 'paymentMethod', options: TEST_CARDS }),
    field('Coupon code', { name: 'couponCode', autocomplete: 'off' }),
    h('button', { type: 'submit', class: 'primary' }, `Place order · ${money(cart.subtotal, cart.currency)}`));
  onSubmit(checkout, async (v) => {
    const shippingAddress = { line1: v.line1, city: v.city, postalCode: v.postalCode, country: v.country.toUpperCase() };
    if (v.line2) shippingAddress.line2 = v.line2;
    const body = { paymentMethod: v.paymentMethod, shippingAddress };
    if (v.couponCode.trim()) body.couponCode = v.couponCode.trim();
    const order = await api('POST', '/api/cart/checkout', body, { idempotencyKey });
    go(`#/orders/${encodeURIComponent(order.id)}`);
  });
  mount(view,
    h('h1', {}, 'Your cart'),
    table(['Product', 'Price', 'Quantity', 'Total', ''], rows,
      h('tr', {}, h('th', { scope: 'row', colspan: 3 }, 'Subtotal'),
        h('td', { class: 'num', id: 'subtotal' }, money(cart.subtotal, cart.currency)), h('td'))),
    checkout);
}

// ---- orders ------------------------------------------------------------------------------------------------------

const CANCELLABLE = ['pending', 'stock_reserved', 'paid'];
const STEPS = ['pending', 'stock_reserved', 'paid', 'shipped', 'delivered'];

async function showOrders(params) {
  const page = Number(params.get('page') ?? 1);
  const found = await api('GET', `/api/orders?page=${page}&limit=10`);
  mount(view, h('h1', {}, 'Your orders'),
    found.items.length
      ? table(['Order', 'Placed', 'Status', 'Total'], found.items.map((o) => h('tr', {},
        h('th', { scope: 'row' }, h('a', { href: `#/orders/${encodeURIComponent(o.id)}` }, o.id)),
        h('td', {}, when(o.createdAt)), h('td', {}, badge(o.status)), h('td', { class: 'num' }, money(o.total, o.currency)))))
      : h('p', {}, 'No orders yet.'),
    pager(found, (n) => go(`#/orders?page=${n}`)));
}

function failureReason(order) {
  const last = order.history[order.history.length - 1];
  return last?.reason ? words(last.reason) : null;
}

async function showOrder(id) {
  const order = await api('GET', `/api/orders/${encodeURIComponent(id)}`);
  const reason = failureReason(order);
  const reached = new Set(order.history.map((e) => e.status));
  const progress = STEPS.includes(order.status)
    ? h('ol', { class: 'steps', 'aria-label': 'Progress' }, STEPS.map((s) =>
      h('li', { class: reached.has(s) ? 'done' : '', 'aria-current': s === order.status ? 'step' : null }, words(s))))
    : null;
  const cancel = CANCELLABLE.includes(order.status)
    ? onSubmit(h('form', { class: 'inline' }, h('button', { type: 'submit' }, 'Cancel order')), async () => {
      await api('POST', `/api/orders/${encodeURIComponent(order.id)}/cancel`);
      toast('Cancellation requested');
      showOrder(order.id);
    })
    : null;
  mount(view,
    h('h1', {}, 'Order ', h('code', {}, order.id)),
    h('p', { class: 'order-status', 'aria-live': 'polite' }, 'Status: ', h('span', { id: 'order-status' }, badge(order.status)),
      reason ? h('span', { class: 'reason', id: 'order-reason' }, ` — ${reason}`) : null),
    progress,
    table(['Product', 'Price', 'Quantity', 'Total'], order.lines.map((l) => h('tr', {}, h('th', { scope: 'row' }, l.title),
      h('td', {}, money(l.unitPrice, order.currency)), h('td', {}, l.quantity),
      h('td', { class: 'num' }, money(l.lineTotal, order.currency)))), [
      order.discount ? h('tr', {}, h('th', { scope: 'row', colspan: 3 }, `Discount (${order.couponCode})`),
        h('td', { class: 'num' }, `−${money(order.discount, order.currency)}`)) : null,
      h('tr', {}, h('th', { scope: 'row', colspan: 3 }, 'Total'),
        h('td', { class: 'num' }, money(order.total, order.currency)))]),
    h('h2', {}, 'History'),
    h('ol', { class: 'history' }, order.history.map((e) =>
      h('li', {}, badge(e.status), ' ', h('time', { datetime: e.at }, when(e.at)), e.reason ? ` — ${words(e.reason)}` : ''))),
    cancel);
}

// ---- notifications -----------------------------------------------------------------------------------------------

async function showNotifications(params) {
  const page = Number(params.get('page') ?? 1);
  const found = await api('GET', `/api/notifications?page=${page}&limit=20`);
  state.unread = found.unreadCount;
  renderNav();
  const markRead = async (ids) => {
    await Promise.all(ids.map((id) => api('POST', `/api/notifications/${id}/read`)));
    showNotifications(params);
  };
  const unreadHere = found.items.filter((n) => !n.read).map((n) => n.id);
  mount(view,
    h('h1', {}, 'Notifications'),
    unreadHere.length ? h('button', { type: 'button', onclick: () => markRead(unreadHere) }, 'Mark all as read') : null,
    found.items.length
      ? h('ul', { class: 'notifications' }, found.items.map((n) => h('li', { class: n.read ? 'read' : 'unread' },
        h('p', {}, h('strong', {}, n.title), ' ', h('time', { class: 'muted', datetime: n.createdAt }, when(n.createdAt))),
        h('p', {}, n.body),
        n.data?.orderId ? h('a', { href: `#/orders/${encodeURIComponent(n.data.orderId)}` }, 'View order') : null,
        n.read ? null : h('button', { type: 'button', class: 'link', onclick: () => markRead([n.id]) }, 'Mark as read'))))
      : h('p', {}, 'Nothing yet.'),
    pager(found, (n) => go(`#/notifications?page=${n}`)));
}

// ---- account -----------------------------------------------------------------------------------------------------

function afterSignIn(params) {
  const next = params.get('next');
  go(next && next.startsWith('#/') ? next : '#/');
}

function showSignIn(params) {
  const form = h('form', { class: 'narrow', 'aria-labelledby': 'signin-title' },
    h('h1', { id: 'signin-title' }, 'Sign in'),
    field('Email', { name: 'email', type: 'email', required: true, autocomplete: 'email' }),
    field('Password', { name: 'password', type: 'password', required: true, autocomplete: 'current-password' }),
    h('button', { type: 'submit', class: 'primary' }, 'Sign in'),
    h('p', {}, 'New here? ', h('a', { href: `#/signup?${params}` }, 'Create an account')));
  onSubmit(form, async (v) => {
    const session = await api('POST', '/api/users/signin?session=cookie', { email: v.email, password: v.password });
    await signedIn(session.user);
    toast(`Welcome back, ${session.user.name}`);
    afterSignIn(params);
  });
  mount(view, form);
}

function showSignUp(params) {
  const form = h('form', { class: 'narrow', 'aria-labelledby': 'signup-title' },
    h('h1', { id: 'signup-title' }, 'Create an account'),
    field('Name', { name: 'name', required: true, autocomplete: 'name' }),
    field('Email', { name: 'email', type: 'email', required: true, autocomplete: 'email' }),
    field('Password (at least 10 characters)', { name: 'password', type: 'password', required: true,
      autocomplete: 'new-password' }),
    h('button', { type: 'submit', class: 'primary' }, 'Sign up'),
    h('p', {}, 'Already have an account? ', h('a', { href: `#/signin?${params}` }, 'Sign in')));
  onSubmit(form, async (v) => {
    const session = await api('POST', '/api/users/signup?session=cookie', v);
    await signedIn(session.user);
    toast(`Welcome, ${session.user.name}`);
    afterSignIn(params);
  });
  mount(view, form);
}

function showProfile() {
  const u = state.user;
  const a = u.address ?? {};
  const form = h('form', { class: 'narrow', 'aria-labelledby': 'profile-title' },
    h('h1', { id: 'profile-title' }, 'Your profile'),
    h('p', { class: 'muted' }, u.email),
    field('Name', { name: 'name', required: true, value: u.name, autocomplete: 'name' }),
    field('Phone', { name: 'phone', type: 'tel', value: u.phone ?? '', autocomplete: 'tel' }),
    h('fieldset', {}, h('legend', {}, 'Address'),
      field('Address line 1', { name: 'line1', value: a.line1 ?? '' }),
      field('Address line 2', { name: 'line2', value: a.line2 ?? '' }),
      field('City', { name: 'city', value: a.city ?? '' }),
      field('Postal code', { name: 'postalCode', value: a.postalCode ?? '' }),
      field('Country (2 letters)', { name: 'country', maxlength: 2, value: a.country ?? '' })),
    h('button', { type: 'submit', class: 'primary' }, 'Save'));
  onSubmit(form, async (v) => {
    const body = { name: v.name, phone: v.phone || null };
    if (v.line1 || v.city || v.postalCode || v.country) {
      body.address = { line1: v.line1, city: v.city, postalCode: v.postalCode, country: v.country.toUpperCase() };
      if (v.line2) body.address.line2 = v.line2;
    }
    state.user = await api('PATCH', '/api/users/me', body);
    renderNav();
    toast('Profile saved');
  });
  mount(view, form);
}

// ---- start -------------------------------------------------------------------------------------------------------

document.getElementById('search').addEventListener('submit', (event) => {
  event.preventDefault();
  const q = new FormData(event.target).get('q').trim();
  go(q ? `#/?q=${encodeURIComponent(q)}` : '#/');
});
window.addEventListener('hashchange', render);

const user = await currentUser().catch(() => null);
if (user) await signedIn(user);
else renderNav();
await render();
document.body.dataset.ready = 'true';
