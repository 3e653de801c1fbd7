// Small DOM helpers shared by the storefront and the admin console. Text always goes in as text, never as HTML.

/** h('button', {class: 'primary', onclick}, 'Save') builds an element; children may be strings, nodes or arrays. */
/** One segment of a route in the location's hash, decoded; a malformed `%` sequence is left as it is rather than
 * throwing (which would leave the page blank). */
export function decodeSegment(segment) {
  try {
    return decodeURIComponent(segment);
  } catch {
    return segment;
  }
}

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs ?? {})) {
    if (value == null || value === false) continue;
    if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else if (key === 'class') el.className = value;
    else if (key === 'dataset') Object.assign(el.dataset, value);
    else if (key in el && typeof value !== 'string') el[key] = value;
    else el.setAttribute(key, value === true ? '' : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child == null || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

/** Replaces the children of `el`. */
export function mount(el, ...children) {
  el.replaceChildren(...children.flat(Infinity).filter((c) => c != null && c !== false));
}

/** A labelled input: the label names it, and errors about it are announced next to it. */
export function field(label, attrs) {
  const { tag = 'input', options = [], value, ...rest } = attrs;
  const id = attrs.id ?? `f-${attrs.name}-${Math.random().toString(36).slice(2, 8)}`;
  const input = h(tag, { ...rest, id });
  for (const [optionValue, text] of options) input.append(h('option', { value: optionValue }, text));
  if (value != null) input.value = value;
  const error = h('span', { class: 'field-error', id: `${id}-error`, 'aria-live': 'polite' });
  input.setAttribute('aria-describedby', error.id);
  return h('div', { class: 'field' }, h('label', { for: id }, label), input, error);
}

/** Clears the errors shown in `form`. */
export function clearErrors(form) {
  for (const el of form.querySelectorAll('.field-error, .form-error')) el.textContent = '';
  for (const el of form.querySelectorAll('[aria-invalid]')) el.removeAttribute('aria-invalid');
}

/**
 * Shows an API error in words next to what caused it: under the field the message names (`price: must be ...`)
 * when the form has one, else in the form's own error line. Focuses the field or the message.
 */
export function showError(form, error) {
  clearErrors(form);
  const message = error?.message ?? String(error);
  const named = /^([A-Za-z][A-Za-z0-9_.]*)(?:\[\d+\])?: (.+)$/.exec(message);
  const fieldName = named?.[1]?.split('.').pop();
  const input = fieldName && form.querySelector(`[name="${CSS.escape(fieldName)}"]`);
  if (input) {
    input.setAttribute('aria-invalid', 'true');
    document.getElementById(`${input.id}-error`).textContent = named[2];
    input.focus();
    return;
  }
  let line = form.querySelector('.form-error');
  if (!line) {
    line = h('p', { class: 'form-error', role: 'alert' });
    form.append(line);
  }
  line.textContent = message;
}

/** Runs `action` for a submitted form: disables its buttons meanwhile and shows any error next to what caused it. */
export function onSubmit(form, action) {
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const buttons = form.querySelectorAll('button');
    buttons.forEach((b) => { b.disabled = true; });
    clearErrors(form);
    try {
      await action(Object.fromEntries(new FormData(form)), event.submitter);
    } catch (e) {
      showError(form, e);
    } finally {
      buttons.forEach((b) => { b.disabled = false; });
    }
  });
  return form;
}

/** A short message for everyone, read out by screen readers. */
export function toast(text) {
  const box = document.getElementById('toast');
  if (!box) return;
  box.textContent = text;
  box.hidden = false;
  clearTimeout(box.timer);
  box.timer = setTimeout(() => { box.hidden = true; }, 4000);
}

/** A date-time for people. */
export function when(iso) {
  return iso ? new Date(iso).toLocaleString() : '';
}

/** `payment_failed` as `payment failed`. */
export function words(code) {
  return String(code ?? '').replaceAll('_', ' ');
}

/** A status as a coloured badge. */
export function badge(status) {
  return h('span', { class: `badge status-${status}` }, words(status));
}

/** A table with a header row of `headers`, the body `rows` and an optional footer `foot` (rows). */
export function table(headers, rows, foot = null) {
  return h('table', { class: 'table' },
    h('thead', {}, h('tr', {}, headers.map((t) => h('th', { scope: 'col' }, t)))),
    h('tbody', {}, rows),
    foot ? h('tfoot', {}, foot) : null);
}

/** Previous / next links for a page of a listing. */
export function pager(page, onPage) {
  if (!page || page.totalPages <= 1) return null;
  return h('nav', { class: 'pager', 'aria-label': 'Pages' },
    h('button', { type: 'button', disabled: page.page <= 1, onclick: () => onPage(page.page - 1) }, 'Previous'),
    h('span', {}, `Page ${page.page} of ${page.totalPages}${page.totalIsExact ? '' : '+'}`),
    h('button', { type: 'button', disabled: page.page >= page.totalPages, onclick: () => onPage(page.page + 1) },
      'Next'));
}
