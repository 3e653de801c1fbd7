// The admin console: products (with stock and images), orders, users, coupons, payments, emails, the cluster.
// Every action is an API call an administrator may make; the API decides who is one, and the console says so.
import { api, currentUser, fractionDigits, money, toMinor } from './api.js';
import { badge, decodeSegment, field, h, mount, onSubmit, pager, table, toast, when, words } from './ui.js';

const view = document.getElementById('view');
const SECTIONS = [
  ['products', 'Products'], ['orders', 'Orders'], ['users', 'Users'], ['coupons', 'Coupons'],
  ['payments', 'Payments'], ['emails', 'Emails'], ['cluster', 'Cluster'],
];
const ORDER_STATUSES = ['pending', 'stock_reserved', 'paid', 'shipped', 'delivered', 'cancelled', 'refunded',
  'rejected', 'payment_failed'];
let me = null;

function route() {
  const [path, query = ''] = location.hash.replace(/^#\/?/, '').split('?');
  const [section, id] = path.split('/').map(decodeSegment);
  return { section: SECTIONS.some(([s]) => s === section) ? section : 'products', id, params: new URLSearchParams(query) };
}

function go(hash) {
  if (location.hash === hash) render();
  else location.hash = hash;
}

function renderChrome() {
  const current = route().section;
  mount(document.getElementById('sections'), me?.role === 'admin'
    ? SECTIONS.map(([s, label]) => h('a', { href: `#/${s}`, 'aria-current': s === current ? 'page' : null }, label))
    : []);
  mount(document.getElementById('account-nav'), me
    ? [h('span', { class: 'muted' }, me.email), h('button', { type: 'button', class: 'link', onclick: signOut }, 'Sign out')]
    : []);
}

async function signOut() {
  await api('POST', '/api/users/signout').catch(() => null);
  me = null;
  render();
}

function showSignIn(message) {
  const form = h('form', { class: 'narrow', 'aria-labelledby': 'signin-title' },
    h('h1', { id: 'signin-title' }, 'Admin sign in'),
    message ? h('p', { class: 'form-error', role: 'alert' }, message) : null,
    field('Email', { name: 'email', type: 'email', required: true, autocomplete: 'username' }),
    field('Password', { name: 'password', type: 'password', required: true, autocomplete: 'current-password' }),
    h('button', { type: 'submit', class: 'primary' }, 'Sign in'));
  onSubmit(form, async (v) => {
    const session = await api('POST', '/api/users/signin?session=cookie', v);
    me = session.user;
    render();
  });
  mount(view, form);
}

async function render() {
  renderChrome();
  if (!me) return showSignIn();
  const { section, id, params } = route();
  const pages = { products: () => (id ? editProduct(id) : products(params)), orders: () => orders(params),
    users: () => users(params), coupons: () => coupons(params), payments: () => payments(params),
    emails: () => emails(params), cluster: () => cluster() };
  try {
    // Reading pages (products) are public: ask an admin-only one first, so a non-admin hears the API's refusal.
    if (me.role !== 'admin') await api('GET', '/api/admin/users?limit=1');
    await pages[section]();
  } catch (e) {
    if (e.status === 403) {
      mount(view, h('h1', {}, 'Not an administrator'),
        h('p', { class: 'form-error', role: 'alert', id: 'refused' },
          `The API refused this account (${me.email}): ${e.message}. Sign in with an administrator account.`),
        h('button', { type: 'button', onclick: signOut }, 'Sign out'));
    } else if (e.status === 401) {
      me = null;
      showSignIn('Your session ended. Sign in again.');
    } else {
      mount(view, h('h1', {}, 'Something went wrong'), h('p', { class: 'form-error', role: 'alert' }, e.message));
    }
  }
  view.focus({ preventScroll: true });
}

function paged(section, params) {
  return (n) => { params.set('page', n); go(`#/${section}?${params}`); };
}

const majorUnits = (minor, currency) => (minor / 10 ** fractionDigits(currency)).toFixed(fractionDigits(currency));

// ---- products ----------------------------------------------------------------------------------------------------

function productFields(p = {}) {
  return [
    field('Title', { name: 'title', required: true, value: p.title ?? '', maxlength: 200 }),
    field('Description', { tag: 'textarea', name: 'description', rows: 3, value: p.description ?? '' }),
    field('Price', { name: 'price', inputmode: 'decimal', required: true,
      value: p.price != null ? majorUnits(p.price, p.currency) : '' }),
    field('Currency', { name: 'currency', required: true, maxlength: 3, value: p.currency ?? 'USD' }),
    field('Category', { name: 'category', required: true, value: p.category ?? '' }),
  ];
}

function productDetails(v) {
  const currency = v.currency.trim().toUpperCase();
  const price = toMinor(v.price, currency);
  if (Number.isNaN(price)) throw new Error('price: enter an amount such as 12.50');
  return { title: v.title, description: v.description, price, currency, category: v.category };
}

async function products(params) {
  const page = Number(params.get('page') ?? 1);
  const query = new URLSearchParams({ page, limit: 20 });
  if (params.get('q')) query.set('q', params.get('q'));
  const found = await api('GET', `/api/products?${query}`);
  const create = h('form', { class: 'panel', 'aria-labelledby': 'new-product' },
    h('h2', { id: 'new-product' }, 'New product'),
    h('div', { class: 'row' }, productFields(),
      field('Initial stock', { name: 'stock', type: 'number', min: 0, value: 0 }),
      field('Image (JPEG, PNG or WebP)', { name: 'image', type: 'file', accept: 'image/jpeg,image/png,image/webp' })),
    h('button', { type: 'submit', class: 'primary' }, 'Create product'));
  onSubmit(create, async (v) => {
    const product = await api('POST', '/api/products', { ...productDetails(v), stock: Number(v.stock || 0) });
    if (v.image?.size) await api('POST', `/api/products/${encodeURIComponent(product.id)}/image`, v.image);
    toast(`Created ${product.title}`);
    products(params);
  });
  const search = onSubmit(h('form', { class: 'inline', role: 'search' },
    field('Find products', { name: 'q', type: 'search', value: params.get('q') ?? '' }),
    h('button', { type: 'submit' }, 'Find')), async (v) => go(`#/products?q=${encodeURIComponent(v.q)}`));
  mount(view, h('h1', {}, 'Products'), search,
    table(['Product', 'Category', 'Price', 'Available', 'On hand', 'Version', ''], found.items.map((p) => h('tr', {},
      h('th', { scope: 'row' }, h('a', { href: `#/products/${encodeURIComponent(p.id)}` }, p.title)),
      h('td', {}, p.category), h('td', { class: 'num' }, money(p.price, p.currency)),
      h('td', { class: 'num' }, p.stockAvailable), h('td', { class: 'num' }, p.stockOnHand), h('td', {}, p.version),
      h('td', {}, h('a', { href: `#/products/${encodeURIComponent(p.id)}`, 'aria-label': `Edit ${p.title}` }, 'Edit'))))),
    pager(found, paged('products', params)),
    create);
}

async function editProduct(id) {
  const p = await api('GET', `/api/products/${encodeURIComponent(id)}`);
  const edit = h('form', { class: 'panel', 'aria-labelledby': 'edit-title' },
    h('h2', { id: 'edit-title' }, 'Details'),
    h('p', { class: 'muted' }, `Version ${p.version}: saving is refused if someone else saved since.`),
    h('div', { class: 'row' }, productFields(p)),
    h('button', { type: 'submit', class: 'primary' }, 'Save'));
  onSubmit(edit, async (v) => {
    try {
      await api('PATCH', `/api/products/${encodeURIComponent(id)}`, { version: p.version, ...productDetails(v) });
    } catch (e) {
      if (e.code === 'version_conflict') {
        throw new Error(`Not saved: this product was changed by someone else since you opened it (${e.message}). ` +
          'Reload it to see the current details, then edit again.');
      }
      throw e;
    }
    toast('Saved');
    editProduct(id);
  });
  const stock = h('form', { class: 'panel', 'aria-labelledby': 'stock-title' },
    h('h2', { id: 'stock-title' }, 'Stock'),
    h('p', {}, `On hand ${p.stockOnHand}, reserved ${p.stockReserved}, available ${p.stockAvailable}.`),
    h('div', { class: 'row' },
      field('Change (+ received, − removed)', { name: 'delta', type: 'number', required: true }),
      field('Reason', { name: 'reason', required: true, placeholder: 'delivery, damaged, count' })),
    h('button', { type: 'submit' }, 'Adjust stock'));
  onSubmit(stock, async (v) => {
    await api('POST', `/api/products/${encodeURIComponent(id)}/stock`, { delta: Number(v.delta), reason: v.reason });
    toast('Stock adjusted');
    editProduct(id);
  });
  const image = h('form', { class: 'panel', 'aria-labelledby': 'image-title' },
    h('h2', { id: 'image-title' }, 'Image'),
    p.imageUrl ? h('img', { src: p.imageUrl, alt: p.title, class: 'picture thumb' }) : h('p', {}, 'No image yet.'),
    field('New image (JPEG, PNG or WebP)', { name: 'image', type: 'file', required: true,
      accept: 'image/jpeg,image/png,image/webp' }),
    h('button', { type: 'submit' }, 'Upload'));
  onSubmit(image, async (v) => {
    await api('POST', `/api/products/${encodeURIComponent(id)}/image?version=${p.version}`, v.image);
    toast('Image uploaded');
    editProduct(id);
  });
  const remove = h('form', { class: 'panel danger' }, h('h2', {}, 'Delete'),
    h('button', { type: 'submit' }, `Delete ${p.title}`));
  onSubmit(remove, async () => {
    if (!confirm(`Delete ${p.title}? It leaves the catalog; orders keep their lines.`)) return;
    await api('DELETE', `/api/products/${encodeURIComponent(id)}?version=${p.version}`);
    toast('Deleted');
    go('#/products');
  });
  mount(view, h('p', {}, h('a', { href: '#/products' }, '← Products')), h('h1', {}, p.title), edit, stock, image, remove);
}

// ---- orders ------------------------------------------------------------------------------------------------------

async function orders(params) {
  const query = new URLSearchParams({ page: params.get('page') ?? 1, limit: 20 });
  for (const key of ['status', 'userId']) if (params.get(key)) query.set(key, params.get(key));
  const found = await api('GET', `/api/admin/orders?${query}`);
  const filter = onSubmit(h('form', { class: 'inline', 'aria-label': 'Filter orders' },
    field('Status', { tag: 'select', name: 'status', value: params.get('status') ?? '',
      options: [['', 'Any'], ...ORDER_STATUSES.map((s) => [s, words(s)])] }),
    field('User id', { name: 'userId', value: params.get('userId') ?? '' }),
    h('button', { type: 'submit' }, 'Filter')), async (v) => {
    go(`#/orders?${new URLSearchParams(Object.entries(v).filter(([, x]) => x))}`);
  });
  const act = (order, action) => onSubmit(h('form', { class: 'inline' },
    h('button', { type: 'submit', 'aria-label': `${action} ${order.id}` }, action === 'ship' ? 'Ship' : 'Deliver')),
  async () => {
    await api('POST', `/api/admin/orders/${encodeURIComponent(order.id)}/${action}`);
    toast(`Order ${order.id}: ${action === 'ship' ? 'shipped' : 'delivered'}`);
    orders(params);
  });
  mount(view, h('h1', {}, 'Orders'), filter,
    table(['Order', 'User', 'Placed', 'Status', 'Total', ''], found.items.map((o) => h('tr', {},
      h('th', { scope: 'row' }, orderDetails(o)),
      h('td', {}, h('a', { href: `#/orders?userId=${encodeURIComponent(o.userId)}` }, h('code', {}, o.userId))),
      h('td', {}, when(o.createdAt)), h('td', {}, badge(o.status)),
      h('td', { class: 'num' }, money(o.total, o.currency)),
      h('td', {}, o.status === 'paid' ? act(o, 'ship') : o.status === 'shipped' ? act(o, 'deliver') : null)))),
    pager(found, paged('orders', params)));
}

/** The order's id, opening onto its lines, shipping address, payment and status history. */
function orderDetails(o) {
  const a = o.shippingAddress;
  return h('details', {},
    h('summary', {}, h('code', {}, o.id)),
    h('ul', {}, o.lines.map((l) => h('li', {}, `${l.quantity} × ${l.title} at ${money(l.unitPrice, o.currency)}`))),
    o.discount ? h('p', {}, `Coupon ${o.couponCode}: −${money(o.discount, o.currency)}`) : null,
    a ? h('p', {}, 'Ship to: ', [a.line1, a.line2, a.city, a.postalCode, a.country].filter(Boolean).join(', ')) : null,
    h('p', {}, `Payment ${o.paymentMethod ?? ''} (${o.paymentId ?? 'none'})`),
    h('ol', { class: 'history' }, o.history.map((e) =>
      h('li', {}, badge(e.status), ` ${when(e.at)}`, e.reason ? ` — ${words(e.reason)}` : ''))));
}

// ---- users -------------------------------------------------------------------------------------------------------

async function users(params) {
  const found = await api('GET', `/api/admin/users?page=${encodeURIComponent(params.get('page') ?? 1)}&limit=20`);
  const toggle = (u) => onSubmit(h('form', { class: 'inline' },
    h('button', { type: 'submit', 'aria-label': `${u.status === 'blocked' ? 'Unblock' : 'Block'} ${u.email}` },
      u.status === 'blocked' ? 'Unblock' : 'Block')), async () => {
    await api('POST', `/api/admin/users/${encodeURIComponent(u.id)}/${u.status === 'blocked' ? 'unblock' : 'block'}`);
    users(params);
  });
  mount(view, h('h1', {}, 'Users'),
    table(['Email', 'Name', 'Role', 'Status', 'Since', ''], found.items.map((u) => h('tr', {},
      h('th', { scope: 'row' }, u.email), h('td', {}, u.name), h('td', {}, u.role), h('td', {}, badge(u.status)),
      h('td', {}, when(u.createdAt)), h('td', {}, u.id === me.id ? null : toggle(u))))),
    pager(found, paged('users', params)));
}

// ---- coupons -----------------------------------------------------------------------------------------------------

function discountText(d) {
  return d.kind === 'percent' ? `${d.percent}%` : money(d.amount, d.currency);
}

async function coupons(params) {
  const found = await api('GET', `/api/admin/coupons?page=${encodeURIComponent(params.get('page') ?? 1)}&limit=20`);
  const create = h('form', { class: 'panel', 'aria-labelledby': 'new-coupon' },
    h('h2', { id: 'new-coupon' }, 'New coupon'),
    h('div', { class: 'row' },
      field('Code', { name: 'code', required: true, pattern: '[A-Za-z0-9_-]{3,32}' }),
      field('Kind', { tag: 'select', name: 'kind', options: [['percent', 'Percent off'], ['fixed', 'Amount off']] }),
      field('Percent or amount', { name: 'value', inputmode: 'decimal', required: true }),
      field('Currency (amount off, minimum)', { name: 'currency', maxlength: 3, value: 'USD' }),
      field('Minimum order', { name: 'minOrder', inputmode: 'decimal' }),
      field('Uses in all', { name: 'usageLimit', type: 'number', min: 1 }),
      field('Uses per customer', { name: 'perUserLimit', type: 'number', min: 1 }),
      field('Expires', { name: 'expiresAt', type: 'datetime-local' })),
    h('button', { type: 'submit', class: 'primary' }, 'Create coupon'));
  onSubmit(create, async (v) => {
    const currency = v.currency.trim().toUpperCase() || 'USD';
    const discount = v.kind === 'percent'
      ? { kind: 'percent', percent: Number(v.value) }
      : { kind: 'fixed', amount: toMinor(v.value, currency), currency };
    const body = { code: v.code, discount };
    if (v.minOrder) {
      body.minOrder = toMinor(v.minOrder, currency);
      body.minOrderCurrency = currency;
    }
    if (v.usageLimit) body.usageLimit = Number(v.usageLimit);
    if (v.perUserLimit) body.perUserLimit = Number(v.perUserLimit);
    if (v.expiresAt) body.expiresAt = new Date(v.expiresAt).toISOString();
    await api('POST', '/api/admin/coupons', body);
    toast(`Coupon ${v.code.toUpperCase()} created`);
    coupons(params);
  });
  mount(view, h('h1', {}, 'Coupons'),
    table(['Code', 'Discount', 'Minimum', 'Uses', 'Limit', 'Expires', 'Active'], found.items.map((c) => h('tr', {},
      h('th', { scope: 'row' }, h('code', {}, c.code)), h('td', {}, discountText(c.discount)),
      h('td', {}, c.minOrder != null ? money(c.minOrder, c.minOrderCurrency ?? 'USD') : ''), h('td', { class: 'num' }, c.uses),
      h('td', {}, [c.usageLimit ?? '∞', c.perUserLimit ? ` (${c.perUserLimit} each)` : '']),
      h('td', {}, when(c.expiresAt)), h('td', {}, c.active ? 'yes' : 'no')))),
    pager(found, paged('coupons', params)), create);
}

// ---- payments, emails, cluster -----------------------------------------------------------------------------------

async function payments(params) {
  const status = params.get('status') ?? '';
  const found = await api('GET', `/api/admin/payments?page=${encodeURIComponent(params.get('page') ?? 1)}&limit=20${status ? `&status=${encodeURIComponent(status)}` : ''}`);
  mount(view, h('h1', {}, 'Payments'),
    table(['Payment', 'Order', 'Amount', 'Method', 'Status', 'Attempts', 'Failure', 'Updated'], found.items.map((p) =>
      h('tr', {}, h('th', { scope: 'row' }, h('code', {}, p.id)), h('td', {}, h('code', {}, p.orderId)),
        h('td', { class: 'num' }, money(p.amount, p.currency)), h('td', {}, p.method), h('td', {}, badge(p.status)),
        h('td', { class: 'num' }, p.attempts), h('td', {}, words(p.failure ?? '')), h('td', {}, when(p.updatedAt))))),
    pager(found, paged('payments', params)));
}

async function emails(params) {
  const found = await api('GET', `/api/admin/emails?page=${encodeURIComponent(params.get('page') ?? 1)}&limit=20`);
  mount(view, h('h1', {}, 'Emails'),
    h('ul', { class: 'emails' }, found.items.map((e) => h('li', {},
      h('details', {}, h('summary', {}, h('strong', {}, e.subject), ` to ${e.to} · ${when(e.createdAt)}`),
        h('pre', {}, e.body))))),
    pager(found, paged('emails', params)));
}

async function cluster() {
  let status;
  try {
    status = await api('GET', '/api/admin/cluster');
  } catch (e) {
    if (e.code !== 'not_clustered') throw e;
    mount(view, h('h1', {}, 'Cluster'), h('p', {}, `${e.message}. This node serves every entity itself.`));
    return;
  }
  mount(view, h('h1', {}, 'Cluster'),
    h('p', {}, 'This node: ', h('code', {}, status.node), `, hosting shards ${status.owned.join(', ') || 'none'} of `,
      `${status.partitions}; ${status.commandsLag} forwarded requests not yet read.`),
    table(['Node', 'Host', 'Shards (Kafka partitions)'], status.members.map((m) => h('tr', {},
      h('th', { scope: 'row' }, h('code', {}, m.node), m.node === status.node ? ' (this node)' : ''),
      h('td', {}, m.host), h('td', {}, m.partitions.join(', '))))));
}

window.addEventListener('hashchange', render);
me = await currentUser().catch(() => null);
await render();
document.body.dataset.ready = 'true';
