// Durable's web console: a page over the management API of the server that serves it. No
// framework and no build step; every value from the API is shown as text (never as HTML).
'use strict';

// The status words a listing filters by: the server writes durable_schemas::Status::LISTED here.
const STATUSES = [/*STATUSES*/];
const PAGE = 50;
const main = () => document.getElementById('main');

// --- DOM ---------------------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else if (k === 'text') node.textContent = v;
    else node.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

// Replace `node`'s children with `children` (nested lists flattened, null and false left out).
function fill(node, ...children) {
  node.replaceChildren(...children.flat(2).filter((c) => c !== null && c !== undefined && c !== false));
}

function show(...nodes) {
  fill(main(), ...nodes);
}

function banner(message, kind) {
  const b = document.getElementById('banner');
  b.textContent = message || '';
  b.className = kind || '';
  b.hidden = !message;
}

function time(ms) {
  if (ms === null || ms === undefined) return '';
  return new Date(ms).toISOString().replace('T', ' ').slice(0, 19) + 'Z';
}

function json(v) {
  return el('pre', { text: v === undefined ? '' : JSON.stringify(v, null, 2) });
}

function status(s) {
  return el('span', { class: 'status ' + (s || ''), text: s || '?' });
}

function instanceLink(id) {
  return el('a', { href: '#/i/' + encodeURIComponent(id), text: id });
}

// --- API ---------------------------------------------------------------------------------------

function token() {
  return sessionStorage.getItem('durable-token') || '';
}

// One sign-in at a time: requests refused together wait for the same dialog.
let signingIn = null;

function signIn(why) {
  if (!signingIn) signingIn = askForToken(why).finally(() => { signingIn = null; });
  return signingIn;
}

function askForToken(why) {
  return new Promise((resolve) => {
    const dialog = document.getElementById('login');
    document.getElementById('login-why').textContent = why;
    document.getElementById('login-token').value = '';
    document.getElementById('login-form').onsubmit = (e) => {
      e.preventDefault();
      dialog.close();
    };
    dialog.onclose = () => {
      const t = document.getElementById('login-token').value.trim();
      if (t) sessionStorage.setItem('durable-token', t);
      else sessionStorage.removeItem('durable-token');
      who();
      resolve(Boolean(t));
    };
    dialog.showModal();
  });
}

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(method, path, body) {
  // Every write is JSON: the API takes no other from a caller without a token.
  if (method !== 'GET' && body === undefined) body = {};
  for (;;) {
    const headers = { Accept: 'application/json' };
    if (token()) headers.Authorization = 'Bearer ' + token();
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    let answer = null;
    try {
      answer = await response.json();
    } catch (_) {
      throw new ApiError(response.status, 'not_json', `${path} answered ${response.status} with something that is not JSON`);
    }
    if (response.status === 401) {
      if (await signIn(answer.message || 'This deployment needs a bearer token.')) continue;
      throw new ApiError(401, answer.code, answer.message + ' (sign in with a token)');
    }
    if (!response.ok) throw new ApiError(response.status, answer.code, answer.message || response.statusText);
    return answer;
  }
}

function who() {
  const w = document.getElementById('who');
  w.replaceChildren();
  if (token()) {
    w.append('signed in with a token · ', el('a', { href: '#', id: 'sign-out', onclick: (e) => {
      e.preventDefault();
      sessionStorage.removeItem('durable-token');
      who();
      route();
    }, text: 'sign out' }));
  } else {
    w.append('anonymous · ', el('a', { href: '#', id: 'sign-in', onclick: async (e) => {
      e.preventDefault();
      await signIn('Paste a bearer token to act as its user.');
      route();
    }, text: 'sign in' }));
  }
}

// --- instance list -----------------------------------------------------------------------------

function query(hash) {
  const q = hash.indexOf('?');
  return new URLSearchParams(q < 0 ? '' : hash.slice(q + 1));
}

async function listPage(params) {
  const filter = new URLSearchParams();
  for (const k of ['kind', 'name', 'status']) if (params.get(k)) filter.set(k, params.get(k));
  const select = (id, options, value) =>
    el('select', { id }, options.map(([v, label]) => el('option', { value: v, selected: v === (value || ''), text: label })));
  const kind = select('f-kind', [['', 'any'], ['orch', 'orchestration'], ['entity', 'entity']], params.get('kind'));
  const name = el('input', { id: 'f-name', placeholder: 'e.g. Approval', value: params.get('name') || '', size: 16 });
  const stat = select('f-status', [['', 'any'], ...STATUSES.map((s) => [s, s])], params.get('status'));
  const apply = (e) => {
    e.preventDefault();
    const q = new URLSearchParams();
    if (kind.value) q.set('kind', kind.value);
    if (kind.value && name.value.trim()) q.set('name', name.value.trim());
    if (stat.value) q.set('status', stat.value);
    location.hash = '#/?' + q.toString();
  };
  const filters = el('form', { class: 'filters', onsubmit: apply },
    el('label', {}, 'Type', kind), el('label', {}, 'Name (with a type)', name), el('label', {}, 'Status', stat),
    el('button', { class: 'primary', id: 'f-apply', type: 'submit', text: 'Filter' }),
    el('a', { href: '#/', text: 'clear' }));

  const [counts, registry] = await Promise.all([api('GET', '/v1/counts?' + filter), api('GET', '/v1/registry')]);
  const countBoxes = el('div', { class: 'counts', id: 'counts' },
    el('div', { class: 'count' }, el('b', { text: counts.total }), ' in all'),
    counts.counts.map((c) => el('div', { class: 'count' }, el('b', { text: c.count }), ` ${c.kind}:${c.name} `, status(c.status))));

  const table = el('table', { id: 'instances' });
  const pager = await paged('/v1/instances', filter, { prev: '← Previous', next: 'Next →', ids: true }, (page) => fill(table,
    el('tr', {}, el('th', { text: 'Instance' }), el('th', { text: 'Status' }), el('th', { text: 'Updated' }), el('th', { text: 'Created' })),
    page.instances.length === 0 ? el('tr', {}, el('td', { colspan: 4, class: 'muted', text: 'No instances match.' })) : null,
    page.instances.map((s) => el('tr', { 'data-instance': s.instance },
      el('td', { class: 'id' }, instanceLink(s.instance)), el('td', {}, status(s.status)),
      el('td', { text: time(s.updated_at) }), el('td', { text: time(s.created_at) })))));
  show(el('h1', { text: 'Instances' }), filters, countBoxes, table, pager, startForm(registry));
}

function startForm(registry) {
  const name = el('select', { id: 's-name' }, registry.orchestrations.map((n) => el('option', { value: n, text: n })));
  const key = el('input', { id: 's-key', placeholder: 'key (default: fresh)', size: 18 });
  const input = el('input', { id: 's-input', placeholder: 'input JSON, e.g. ["Tokyo"]', size: 28 });
  return el('div', {}, el('h2', { text: 'Start an orchestration' }),
    el('form', { class: 'actions', onsubmit: async (e) => {
      e.preventDefault();
      const body = {};
      if (key.value.trim()) body.key = key.value.trim();
      try {
        if (input.value.trim()) body.input = JSON.parse(input.value);
        const sent = await api('POST', '/v1/orchestrations/' + encodeURIComponent(name.value), body);
        location.hash = '#/i/' + encodeURIComponent(sent.instance);
      } catch (err) {
        banner(err.message);
      }
    } }, el('div', { class: 'action' }, el('label', {}, 'Orchestration', name), el('label', {}, 'Key', key),
      el('label', {}, 'Input', input), el('button', { class: 'primary', type: 'submit', text: 'Start' }))));
}

// --- one instance ------------------------------------------------------------------------------

const FIELDS = ['status', 'kind', 'name', 'key', 'generation', 'version', 'created_at', 'updated_at', 'reason', 'held', 'raised', 'locked_by'];

async function instancePage(id) {
  const path = '/v1/instances/' + encodeURIComponent(id);
  let view;
  try {
    view = await api('GET', path);
  } catch (err) {
    if (err.status === 404) return show(el('h1', { text: id }), el('p', { class: 'muted', text: err.message }));
    throw err;
  }
  const history = await api('GET', path + '/history?limit=200');
  const grid = el('dl', { class: 'grid', id: 'view' });
  for (const f of FIELDS) {
    if (view[f] === undefined || view[f] === null) continue;
    const value = f === 'status' ? status(view[f]) : f.endsWith('_at') ? time(view[f]) : String(view[f]);
    grid.append(el('dt', { text: f.replace('_', ' ') }), el('dd', { id: 'i-' + f }, value));
  }
  for (const f of ['input', 'output', 'failure', 'custom_status', 'state']) {
    if (view[f] !== undefined && view[f] !== null) grid.append(el('dt', { text: f.replace('_', ' ') }), el('dd', { id: 'i-' + f }, json(view[f])));
  }
  show(el('h1', { id: 'i-id', text: view.instance }), grid, actions(view, path), el('h2', { text: 'History' }), timeline(history),
    el('p', {}, el('button', { id: 'refresh', onclick: () => route(), text: 'Refresh' })));
}

function actions(view, path) {
  const box = el('div', { class: 'actions', id: 'actions' });
  const act = (name, label, fields, build, danger) => {
    const inputs = fields.map(([id, placeholder]) => el('input', { id: `a-${name}-${id}`, placeholder, size: 18 }));
    const button = el('button', { id: 'a-' + name, class: danger ? 'danger' : 'primary', type: 'submit', text: label });
    box.append(el('form', { class: 'action', onsubmit: async (e) => {
      e.preventDefault();
      button.disabled = true;
      try {
        const [suffix, body] = build(...inputs.map((i) => i.value.trim()));
        await api('POST', suffix.startsWith('/') ? suffix : path + '/' + suffix, body);
        banner(`${label}: sent. Waiting for it to apply…`, 'info');
        await changed(path, view.version);
      } catch (err) {
        banner(err.message);
      } finally {
        button.disabled = false;
      }
    } }, inputs.map((i, n) => el('label', {}, fields[n][1], i)), button));
  };
  const reason = (r) => (r ? { reason: r } : {});
  const parsed = (text) => (text ? JSON.parse(text) : null);
  // What the instance allows now is the API's to say (view.actions); here only how each is asked.
  const forms = {
    raise: () => act('raise', 'Raise event', [['name', 'event name'], ['payload', 'payload JSON']], (n, p) => [`events/${encodeURIComponent(n)}`, { payload: parsed(p) }]),
    signal: () => act('signal', 'Signal', [['operation', 'operation'], ['input', 'input JSON']], (op, input) =>
      [`/v1/entities/${encodeURIComponent(view.name)}/${encodeURIComponent(view.key)}/${encodeURIComponent(op)}`, { input: parsed(input) }]),
    suspend: () => act('suspend', 'Suspend', [['reason', 'reason']], (r) => ['suspend', reason(r)]),
    resume: () => act('resume', 'Resume', [['reason', 'reason']], (r) => ['resume', reason(r)]),
    terminate: () => act('terminate', 'Terminate', [['reason', 'reason']], (r) => ['terminate', reason(r)], true),
    rewind: () => act('rewind', 'Rewind', [['reason', 'reason']], (r) => ['rewind', reason(r)]),
    restart: () => act('restart', 'Restart', [], () => ['restart', {}]),
    purge: () => act('purge', 'Purge', [['reason', 'reason']], (r) => ['purge', reason(r)], true),
  };
  for (const name of view.actions || []) if (forms[name]) forms[name]();
  return box.childElementCount ? el('div', {}, el('h2', { text: 'Actions' }), box) : el('div');
}

// Reload the page once the instance's version moves on (or it is gone), for up to 15 s.
async function changed(path, version) {
  for (let i = 0; i < 60; i++) {
    await new Promise((r) => setTimeout(r, 250));
    try {
      const v = await api('GET', path);
      if (v.version !== version) break;
    } catch (err) {
      if (err.status === 404) break;
    }
  }
  banner('');
  await route();
}

function timeline(h) {
  if (h.commands) {
    const answered = new Map((h.deliveries || []).map((d) => [d.slot, d]));
    const rows = h.commands.map((c) => {
      const d = answered.get(c.slot);
      return el('tr', {}, el('td', { text: d ? time(d.at) : '' }), el('td', { text: `#${c.slot}` }),
        el('td', { text: `${c.kind} ${c.name}` }),
        el('td', {}, d ? json(d.completion) : el('span', { class: 'muted', text: c.answered === false ? 'sent' : 'waiting' })));
    });
    const inbox = (h.inbox || []).map((e) => el('tr', {}, el('td', { text: '' }), el('td', { text: 'inbox' }),
      el('td', { text: e.name }), el('td', {}, json(e.payload))));
    return el('div', {},
      el('table', { class: 'timeline', id: 'timeline' },
        el('tr', {}, el('th', { text: 'Answered' }), el('th', { text: 'Slot' }), el('th', { text: 'Command' }), el('th', { text: 'Result' })),
        el('tr', {}, el('td', { text: time(h.started_at) }), el('td', { text: 'start' }), el('td', { text: `generation ${h.generation}` }), el('td', {}, json(h.input))),
        rows, inbox),
      h.page && h.page.totals.commands > h.commands.length ? el('p', { class: 'muted', text: `first ${h.commands.length} of ${h.page.totals.commands} commands` }) : null);
  }
  if (h.queued !== undefined) {
    return el('div', {}, el('p', {}, 'Locked by: ', h.locked_by || el('span', { class: 'muted', text: 'nobody' })),
      el('table', { class: 'timeline', id: 'timeline' }, el('tr', {}, el('th', { text: 'Queued operation' }), el('th', { text: 'Event id' })),
        h.queued.map((q) => el('tr', {}, el('td', { text: q.event }), el('td', { class: 'id', text: q.id })))));
  }
  return el('p', { class: 'muted', text: 'No history.' });
}

// One pager for every paged listing: `path?query&limit=PAGE&cursor=…`, each page drawn by
// `draw`, the cursors kept so that the first button goes back. Resolves to the pager's buttons
// once the first page is drawn.
async function paged(path, query, labels, draw) {
  const pager = el('div', { class: 'pager' });
  const cursors = [null];
  async function load(i) {
    const q = new URLSearchParams(query);
    q.set('limit', PAGE);
    if (cursors[i]) q.set('cursor', cursors[i]);
    const page = await api('GET', path + '?' + q);
    cursors[i + 1] = page.next;
    draw(page);
    fill(pager,
      el('button', { id: labels.ids ? 'prev' : undefined, disabled: i === 0, onclick: () => load(i - 1), text: labels.prev }),
      labels.ids ? el('span', { class: 'muted', text: `page ${i + 1}` }) : null,
      el('button', { id: labels.ids ? 'next' : undefined, disabled: !page.next, onclick: () => load(i + 1), text: labels.next }));
  }
  await load(0);
  return pager;
}

// --- dead letters ------------------------------------------------------------------------------

async function deadPage() {
  const table = el('table', { id: 'letters' });
  const pager = await paged('/v1/dead', '', { prev: '← Newer', next: 'Older →' }, (page) => fill(table,
    el('tr', {}, el('th', { text: 'Letter' }), el('th', { text: 'When' }), el('th', { text: 'Event → target' }), el('th', { text: 'Why' })),
    page.letters.length === 0 ? el('tr', {}, el('td', { colspan: 4, class: 'muted', text: 'No dead letters.' })) : null,
    page.letters.map((l) => el('tr', { 'data-letter': l.id },
      el('td', { class: 'id' }, el('a', { href: '#/dead/' + encodeURIComponent(l.id), text: l.id })),
      el('td', { text: time(l.at) }),
      el('td', { class: 'id' }, l.event ? `${l.event} → ` : '(undecodable) ', l.target ? instanceLink(l.target) : ''),
      el('td', { text: l.reason })))));
  show(el('h1', { text: 'Dead letters' }),
    el('p', { class: 'muted', text: 'Records a processor or the projector refused, newest first. A redrive sends the event back as your own write.' }),
    table, pager);
}

async function letterPage(id) {
  const letter = await api('GET', '/v1/dead/' + encodeURIComponent(id));
  const grid = el('dl', { class: 'grid' },
    el('dt', { text: 'reason' }), el('dd', { id: 'l-reason', text: letter.reason }),
    el('dt', { text: 'when' }), el('dd', { text: time(letter.at) }),
    el('dt', { text: 'component' }), el('dd', { text: letter.component || '' }),
    el('dt', { text: 'from' }), el('dd', { text: letter.source_topic || '' }),
    el('dt', { text: 'size' }), el('dd', { text: `${letter.size} bytes` + (letter.truncated_from ? ` (of ${letter.truncated_from})` : '') }));
  const redrive = letter.redrive.possible
    ? el('button', { class: 'primary', id: 'redrive', onclick: async () => {
      try {
        const sent = await api('POST', `/v1/dead/${encodeURIComponent(id)}/redrive`, {});
        banner(`Sent back to ${sent.instance} as event ${sent.event_id}.`, 'info');
      } catch (err) {
        banner(err.message);
      }
    }, text: 'Redrive' })
    : el('p', { class: 'muted', text: 'Cannot be redriven: ' + letter.redrive.why });
  show(el('h1', { text: 'Dead letter ' + letter.id }), grid, el('h2', { text: 'Redrive' }), redrive,
    el('h2', { text: letter.envelope ? 'Event' : 'Content' }),
    letter.envelope ? json(letter.envelope) : el('div', {}, el('p', { text: letter.undecodable }), el('pre', { text: letter.head_hex })),
    el('h2', { text: 'Headers' }), json(letter.headers));
}

// --- routing -----------------------------------------------------------------------------------

async function route() {
  const hash = location.hash.replace(/^#\/?/, '');
  const path = hash.split('?')[0];
  for (const a of document.querySelectorAll('header nav a')) a.classList.remove('active');
  try {
    if (path.startsWith('i/')) {
      document.getElementById('nav-instances').classList.add('active');
      await instancePage(decodeURIComponent(path.slice(2)));
    } else if (path === 'dead') {
      document.getElementById('nav-dead').classList.add('active');
      await deadPage();
    } else if (path.startsWith('dead/')) {
      document.getElementById('nav-dead').classList.add('active');
      await letterPage(decodeURIComponent(path.slice(5)));
    } else {
      document.getElementById('nav-instances').classList.add('active');
      await listPage(query(location.hash));
    }
  } catch (err) {
    show(el('h1', { text: 'Cannot show this page' }), el('p', { id: 'error', text: err.message }));
  }
}

// /metrics and /status live on the processor's metrics address: hide the links where this
// server does not serve them (the API on an address of its own).
async function probeLinks() {
  for (const id of ['nav-metrics', 'nav-status']) {
    const a = document.getElementById(id);
    try {
      const r = await fetch(a.getAttribute('href'), { method: 'GET' });
      a.hidden = !r.ok;
    } catch (_) {
      a.hidden = true;
    }
  }
}

window.addEventListener('hashchange', () => {
  banner('');
  route();
});
who();
route();
probeLinks();
