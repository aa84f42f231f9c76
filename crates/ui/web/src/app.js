// fvm ui: the page's behaviour. The token comes in the URL's fragment (never
// sent to the server by the browser), is kept in sessionStorage for reloads,
// and goes out as `Authorization: Bearer` on every request. No cookies.
// Nothing here puts VM data into HTML: the server renders (and escapes) it,
// terminal output goes to xterm, numbers to canvases.

const TOKEN_KEY = 'fvm-token';

function readToken() {
  const m = location.hash.match(/token=([0-9a-f]{64})/);
  if (m) {
    sessionStorage.setItem(TOKEN_KEY, m[1]);
    history.replaceState(null, '', location.pathname + location.search);
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

const token = readToken();
const main = document.getElementById('main');
const conn = document.getElementById('conn');

function say(text) {
  conn.textContent = text;
}

/** fetch with the token. */
function get(url, opts = {}) {
  opts.headers = Object.assign({ Authorization: 'Bearer ' + token }, opts.headers || {});
  return fetch(url, opts);
}

// ---------------------------------------------------------------------------
// The page's one WebSocket: samples and shells. Closed while the tab is hidden,
// opened again (with a new single-use ticket) when it is shown.

const listeners = new Set();
const binary = new Map();
let sock = null;
let retry = null;

const api = {
  get,
  send(msg) {
    if (sock && sock.readyState === WebSocket.OPEN) sock.send(JSON.stringify(msg));
  },
  listen(fn) {
    listeners.add(fn);
    return () => listeners.delete(fn);
  },
  onBinary(ch, fn) {
    binary.set(ch, fn);
  },
  offBinary(ch) {
    binary.delete(ch);
  },
  connected() {
    return sock && sock.readyState === WebSocket.OPEN;
  },
};

async function connect() {
  clearTimeout(retry);
  if (document.hidden || !token || (sock && sock.readyState <= WebSocket.OPEN)) return;
  let ticket;
  try {
    const r = await get('/api/ticket', { method: 'POST' });
    if (!r.ok) throw new Error(await r.text());
    ticket = await r.text();
  } catch (e) {
    say('offline');
    retry = setTimeout(connect, 3000);
    return;
  }
  const s = new WebSocket(`ws://${location.host}/ws?ticket=${encodeURIComponent(ticket)}`);
  s.binaryType = 'arraybuffer';
  sock = s;
  s.onopen = () => {
    say('live');
    for (const fn of listeners) fn({ op: 'connected' });
  };
  s.onmessage = (ev) => {
    if (typeof ev.data === 'string') {
      let m;
      try {
        m = JSON.parse(ev.data);
      } catch (e) {
        return;
      }
      for (const fn of listeners) fn(m);
    } else {
      const bytes = new Uint8Array(ev.data);
      const fn = binary.get(bytes[0]);
      if (fn) fn(bytes.subarray(1));
    }
  };
  s.onclose = () => {
    if (sock === s) sock = null;
    binary.clear();
    for (const fn of listeners) fn({ op: 'disconnected' });
    if (!document.hidden) {
      say('reconnecting');
      retry = setTimeout(connect, 2000);
    } else {
      say('paused');
    }
  };
}

document.addEventListener('visibilitychange', () => {
  if (document.hidden) {
    clearTimeout(retry);
    if (sock) sock.close();
  } else {
    connect();
  }
});

// ---------------------------------------------------------------------------
// Sparklines of the VM list: the last minute from the server's history, then
// the samples as they come.

const sparkData = new Map();

function drawSparks() {
  for (const c of document.querySelectorAll('canvas.spark')) {
    const pts = sparkData.get(c.dataset.vm) || [];
    const ctx = c.getContext('2d');
    ctx.clearRect(0, 0, c.width, c.height);
    const series = c.dataset.series;
    const vals = pts.map((p) => (series === 'cpu' ? p.cpu : p.mem)).map((v) => v ?? 0);
    if (vals.length < 2) continue;
    let max = series === 'cpu' ? 100 : 0;
    for (const p of pts) max = Math.max(max, series === 'mem' ? p.mem_limit || p.mem || 0 : p.cpu || 0);
    ctx.strokeStyle = series === 'cpu' ? '#2b6cb0' : '#2f855a';
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    vals.forEach((v, i) => {
      const x = (i / 59) * c.width;
      const y = c.height - 1 - (max ? (v / max) * (c.height - 2) : 0);
      if (i === 0) ctx.moveTo(x, y);
      else ctx.lineTo(x, y);
    });
    ctx.stroke();
  }
}

async function mountSparks() {
  if (!document.querySelector('canvas.spark')) return;
  try {
    const r = await get('/api/sparks');
    const data = await r.json();
    sparkData.clear();
    for (const [vm, pts] of Object.entries(data)) sparkData.set(vm, pts);
  } catch (e) {
    return;
  }
  drawSparks();
}

api.listen((m) => {
  if (m.op !== 'stats') return;
  for (const [vm, p] of Object.entries(m.vms)) {
    const pts = sparkData.get(vm) || [];
    pts.push(p);
    while (pts.length > 60) pts.shift();
    sparkData.set(vm, pts);
  }
  drawSparks();
});

// ---------------------------------------------------------------------------
// Widgets in swapped-in content; each may leave an unmount function.

let unmounts = [];

function mountWidgets(root) {
  for (const el of root.querySelectorAll('[data-widget]')) {
    if (el.dataset.mounted) continue;
    el.dataset.mounted = '1';
    const kind = el.dataset.widget;
    import(`./${kind === 'terminal' ? 'term' : kind}.js`).then((m) => {
      const un = m.mount(el, api);
      if (typeof un === 'function') unmounts.push(un);
    });
  }
  mountSparks();
}

document.body.addEventListener('htmx:configRequest', (e) => {
  e.detail.headers['Authorization'] = 'Bearer ' + token;
});

document.body.addEventListener('htmx:beforeSwap', (e) => {
  if (e.detail.target === main) {
    for (const un of unmounts) un();
    unmounts = [];
  }
  if (e.detail.xhr.status >= 400) {
    e.detail.shouldSwap = false;
    say(`error: ${e.detail.xhr.status} ${e.detail.xhr.responseText}`.slice(0, 200));
  }
});

document.body.addEventListener('htmx:afterSettle', (e) => mountWidgets(e.detail.elt));

document.body.addEventListener('htmx:sendError', () => say('offline'));

// Dialogs: close, and go where the result says.
document.body.addEventListener('click', (e) => {
  const b = e.target.closest('[data-close]');
  if (!b) return;
  document.getElementById('dialog').replaceChildren();
  if (b.dataset.go) {
    htmx.ajax('GET', b.dataset.go, { target: '#main', swap: 'innerHTML' }).then(() => {
      history.pushState(null, '', b.dataset.go);
    });
  }
});

document.addEventListener('keydown', (e) => {
  if (e.key === 'Escape') document.getElementById('dialog').replaceChildren();
});

if (!token) {
  main.textContent = 'Open the address `fvm ui` printed: it carries the token this page needs.';
} else {
  htmx.ajax('GET', location.pathname, { target: '#main', swap: 'innerHTML' });
  connect();
}

window.fvmUi = { api };
