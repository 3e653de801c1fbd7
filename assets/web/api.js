// The REST API and the notification socket, as the storefront and the admin console use them.
// Sessions are the server's HttpOnly cookies: this code never sees a token. An expired access token is renewed
// once through /api/users/refresh and the request repeated; only then does a 401 reach the page.

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

let refreshing = null;

/** Renews the session from the refresh cookie; resolves to whether it worked. Concurrent callers share one try. */
export function refreshSession() {
  refreshing ??= fetch('/api/users/refresh', { method: 'POST', credentials: 'same-origin' })
    .then((r) => r.ok, () => false)
    .finally(() => { refreshing = null; });
  return refreshing;
}

/**
 * Calls the API. `body` is sent as JSON, or as is when it is a Blob/File (with its own type).
 * Resolves to the parsed answer (null for 204); rejects with an ApiError carrying the API's stable code.
 */
export async function api(method, path, body, { idempotencyKey, renew = true } = {}) {
  const headers = {};
  let payload;
  if (body instanceof Blob) {
    payload = body;
    headers['content-type'] = body.type || 'application/octet-stream';
  } else if (body !== undefined) {
    payload = JSON.stringify(body);
    headers['content-type'] = 'application/json';
  }
  if (idempotencyKey) headers['idempotency-key'] = idempotencyKey;
  let res;
  try {
    res = await fetch(path, { method, headers, body: payload, credentials: 'same-origin' });
  } catch {
    throw new ApiError(0, 'network_error', 'The server could not be reached. Check your connection and try again.');
  }
  const sessionCall = path.startsWith('/api/users/sign') || path === '/api/users/refresh';
  if (res.status === 401 && renew && !sessionCall && (await refreshSession())) {
    return api(method, path, body, { idempotencyKey, renew: false });
  }
  if (res.status === 204) return null;
  const data = await res.json().catch(() => null);
  if (!res.ok) {
    const error = data?.error ?? { code: `http_${res.status}`, message: res.statusText || 'Request failed' };
    throw new ApiError(res.status, error.code, error.message);
  }
  return data;
}

/** The signed-in user, or null. */
export async function currentUser() {
  try {
    return await api('GET', '/api/users/me');
  } catch (e) {
    if (e.status === 401) return null;
    throw e;
  }
}

const digitsCache = new Map();
/** Minor units per major unit of an ISO 4217 currency (USD 2, JPY 0). */
export function fractionDigits(currency) {
  if (!digitsCache.has(currency)) {
    let digits = 2;
    try {
      digits = new Intl.NumberFormat('en', { style: 'currency', currency }).resolvedOptions().maximumFractionDigits;
    } catch { /* unknown code: two */ }
    digitsCache.set(currency, digits);
  }
  return digitsCache.get(currency);
}

/** An amount in minor units, for people: `12.50 USD` as `$12.50`. */
export function money(minor, currency) {
  if (minor == null || !currency) return '';
  const major = minor / 10 ** fractionDigits(currency);
  try {
    return new Intl.NumberFormat(undefined, { style: 'currency', currency }).format(major);
  } catch {
    return `${major.toFixed(fractionDigits(currency))} ${currency}`;
  }
}

/** A price typed by a person ("12.5") in minor units (1250), or NaN. */
export function toMinor(text, currency) {
  const value = Number(String(text).trim().replace(',', '.'));
  if (!Number.isFinite(value) || String(text).trim() === '') return NaN;
  return Math.round(value * 10 ** fractionDigits(currency));
}

/**
 * The live notification socket of the signed-in user. Calls `onNotification(n)` for each notification pushed while
 * the page is open (nothing older: the page reads what it shows from the API, and `onState('live')` on every
 * (re)connection is the cue to read it again), resumes after the last one seen when it reconnects, and renews the
 * session when the server ends it for an expired token.
 */
export class LiveNotifications {
  constructor(onNotification, onState = () => {}) {
    this.onNotification = onNotification;
    this.onState = onState;
    this.after = null;
    this.delay = 500;
    this.stopped = false;
  }

  start() {
    this.after = null;
    this.stopped = false;
    this.connect();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    this.socket?.close(1000);
    this.socket = null;
  }

  connect() {
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const resume = this.after == null ? '' : `?after=${this.after}`;
    const socket = new WebSocket(`${scheme}//${location.host}/ws/notifications${resume}`);
    this.socket = socket;
    socket.onmessage = (event) => {
      const message = JSON.parse(event.data);
      if (message.type === 'ready') {
        this.delay = 500;
        this.onState('live');
      } else if (message.type === 'notification') {
        this.after = Math.max(this.after ?? 0, message.notification.id);
        this.onNotification(message.notification);
      }
    };
    socket.onclose = async (event) => {
      if (this.socket !== socket || this.stopped) return;
      this.onState('reconnecting');
      if (event.code === 4403) return this.onState('blocked');
      if (event.code === 4401 && !(await refreshSession())) return this.onState('signed_out');
      this.timer = setTimeout(() => this.connect(), this.delay);
      this.delay = Math.min(this.delay * 2, 10000);
    };
  }
}
