// The library pages' live parts: notices, chat, online counter, leaderboard, catalog.
// Uses the repository's browser client, served by Django from clients/js/src.
import { Client } from '/static/ferrocast.js';

const $ = (sel, root = document) => root.querySelector(sel);
const el = (tag, attrs = {}, ...children) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') e.className = v;
    else if (k.startsWith('data-')) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) e.append(c);
  return e;
};
const csrf = () => (document.cookie.match(/(?:^|; )csrftoken=([^;]+)/) || [])[1] || '';
const json = (id) => JSON.parse(document.getElementById(id).textContent);
const time = (iso) => new Date(iso).toLocaleTimeString();

export const config = json('library-config');
let state = json('library-state');

// ------------------------------------------------------------------------------- the connection

async function fetchToken() {
  const r = await fetch('/token.json', { credentials: 'same-origin', cache: 'no-store' });
  if (!r.ok) throw new Error(`token: HTTP ${r.status}`);
  return r.json();
}

export async function connect() {
  const first = await fetchToken();
  const client = new Client(first.ws_url, {
    token: first.token,
    // called on reconnects and before the token expires: Django mints a fresh one
    getToken: async () => (await fetchToken()).token,
  });
  const stateEl = $('#conn-state');
  client.on('state', ({ state: s }) => {
    if (stateEl) {
      stateEl.textContent = s;
      stateEl.dataset.state = s;
    }
  });
  client.on('error', (err) => console.warn('ferrocast:', err.code, err.message));
  client.connect();
  window.ferrocast = client; // handy in the console (and for the e2e test)
  return client;
}

// ------------------------------------------------------------------------------- notices

export function notice(text, kind = 'info', extra = {}) {
  const list = $('#notices');
  if (!list) return;
  const item = el('li', { class: `notice notice-${kind}`, 'data-type': kind }, el('time', {}, new Date().toLocaleTimeString()), ' ', text);
  item.dataset.at = String(Date.now()); // when it arrived (the e2e test checks reminder timing)
  for (const [k, v] of Object.entries(extra)) item.dataset[k] = v;
  list.prepend(item);
}

async function onPersonal({ data }) {
  if (!data || typeof data !== 'object') return;
  if (data.type === 'overdue') {
    // Scheduled at borrow time; the node can't cancel it, so check the loan is still open.
    const r = await fetch(`/loans/${data.loan}.json`, { credentials: 'same-origin' });
    if (!r.ok || !(await r.json()).active) return;
  }
  notice(data.text, data.type, data.loan ? { loan: data.loan } : {});
  if (['borrowed', 'returned', 'reserved', 'reservation_ready', 'overdue'].includes(data.type)) refreshState();
}

export function watchPersonal(client) {
  if (!config.channels.user) return;
  client.subscribe(config.channels.user).on('publication', onPersonal);
}

// ------------------------------------------------------------------------------- online counter

export function watchOnline(client) {
  const out = $('#online-count');
  if (!config.channels.online || !out) return;
  const sub = client.subscribe(config.channels.online);
  let pending = null;
  const update = () => {
    // join/leave can come in bursts: one presence_stats round trip per burst
    clearTimeout(pending);
    pending = setTimeout(async () => {
      try {
        const { clients, users } = await client.presenceStats(config.channels.online);
        out.textContent = `${users} online · ${clients} ${clients === 1 ? 'connection' : 'connections'}`;
        out.dataset.users = users;
        out.dataset.clients = clients;
      } catch (err) {
        console.warn('presence_stats', err);
      }
    }, 50);
  };
  sub.on('subscribed', update);
  sub.on('join', update);
  sub.on('leave', update);
}

// ------------------------------------------------------------------------------- leaderboard + catalog

function renderLeaderboard(rows) {
  const ol = $('#leaderboard');
  if (!ol) return;
  ol.replaceChildren(
    ...(rows.length
      ? rows.map((r) => el('li', { 'data-book-id': r.id }, `${r.title} `, el('span', { class: 'count' }, `${r.loans} ${r.loans === 1 ? 'loan' : 'loans'}`)))
      : [el('li', { class: 'empty' }, 'nothing borrowed yet')]),
  );
}

function renderCatalog() {
  const tbody = $('#books tbody');
  if (!tbody) return;
  const mine = new Set(state.loans.map((l) => l.book));
  const reserved = new Map(state.reservations.map((r) => [r.book, r.status]));
  tbody.replaceChildren(
    ...state.books.map((b) => {
      const actions = el('td', { class: 'actions' });
      if (config.user && !config.librarian) {
        if (mine.has(b.id)) actions.append(el('span', { class: 'tag' }, 'on loan to you'));
        else if (reserved.get(b.id) === 'ready') actions.append(el('button', { class: 'borrow', onclick: () => act(`/books/${b.id}/borrow`) }, 'Borrow (ready for you)'));
        else if (reserved.has(b.id)) actions.append(el('span', { class: 'tag' }, 'reserved'));
        else if (b.available > 0) actions.append(el('button', { class: 'borrow', onclick: () => act(`/books/${b.id}/borrow`) }, 'Borrow'));
        else actions.append(el('button', { class: 'reserve', onclick: () => act(`/books/${b.id}/reserve`) }, 'Reserve'));
      }
      return el('tr', { 'data-book-id': b.id, 'data-title': b.title },
        el('td', { class: 'title' }, b.title), el('td', {}, b.author),
        el('td', { class: 'available' }, `${b.available}/${b.copies}`), actions);
    }),
  );
  const loans = $('#loans');
  if (loans) {
    loans.replaceChildren(
      ...(state.loans.length
        ? state.loans.map((l) => el('li', { 'data-loan-id': l.id, class: l.overdue ? 'overdue' : '' },
            `《${l.title}》 due ${time(l.due_at)} `,
            el('button', { class: 'return', onclick: () => act(`/loans/${l.id}/return`) }, 'Return')))
        : [el('li', { class: 'empty' }, 'no books on loan')]),
      ...state.reservations.map((r) => el('li', { 'data-reservation-id': r.id, class: `reservation ${r.status}` }, `reserved 《${r.title}》 — ${r.status}`)),
    );
  }
}

async function act(url) {
  const r = await fetch(url, { method: 'POST', credentials: 'same-origin', headers: { 'X-CSRFToken': csrf() } });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) notice(body.error || `HTTP ${r.status}`, 'error');
  await refreshState();
}

let refreshing = null;
export async function refreshState() {
  // coalesce: a borrow brings a response, a notice and a leaderboard push at about the same time
  if (refreshing) return refreshing;
  refreshing = (async () => {
    try {
      const r = await fetch('/state.json', { credentials: 'same-origin', cache: 'no-store' });
      if (r.ok) state = await r.json();
      renderCatalog();
      renderLeaderboard(state.leaderboard);
    } finally {
      refreshing = null;
    }
  })();
  return refreshing;
}

export function watchLeaderboard(client) {
  renderLeaderboard(state.leaderboard);
  renderCatalog();
  client.subscribe(config.channels.leaderboard).on('publication', ({ data }) => {
    if (!data || data.type !== 'leaderboard') return;
    renderLeaderboard(data.leaderboard);
    for (const b of state.books) {
      if (data.availability[b.id] !== undefined) b.available = data.availability[b.id];
    }
    renderCatalog();
  });
}

// ------------------------------------------------------------------------------- chat

/** Wires one chat panel (`root` holds .chat-log and a form with an input) to `channel`. */
export async function chat(client, channel, root) {
  const log = $('.chat-log', root);
  const shown = new Set();
  const show = ({ offset, data, info }) => {
    if (offset && shown.has(offset)) return;
    if (offset) shown.add(offset);
    const from = info && info.user;
    const mine = from === config.user;
    const name = mine ? 'me' : (config.names[from] || (data && data.name) || 'someone');
    log.append(el('li', { class: `msg ${mine ? 'mine' : 'theirs'}`, 'data-from': from || '' },
      el('b', {}, `${name}: `), String((data && data.text) || '')));
    log.scrollTop = log.scrollHeight;
  };
  // Earlier messages first, then live ones recovered from exactly where the history ended.
  let since;
  try {
    const h = await client.history(channel, { limit: 50 });
    h.publications.forEach(show);
    since = { offset: h.offset, epoch: h.epoch };
  } catch (err) {
    console.warn('chat history', channel, err);
  }
  const sub = client.subscribe(channel, since ? { since } : {});
  sub.on('publication', show);
  const form = $('form', root);
  const input = $('input', root);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const text = input.value.trim();
    if (!text) return;
    input.value = '';
    try {
      await client.publish(channel, { text, name: config.username });
    } catch (err) {
      notice(`chat: ${err.message}`, 'error');
      input.value = text;
    }
  });
  root.dataset.ready = '1';
  return sub;
}
