// A browser shell: xterm.js on a session the server keeps. Reattaching (a tab
// switch, a reload, the WebSocket coming back) replays the session's
// scrollback; the pty follows the pane's size (fit addon, then a resize message
// that the server turns into TIOCSWINSZ).

import { Terminal } from '/assets/xterm.mjs';
import { FitAddon } from '/assets/addon-fit.mjs';

// xterm.js keeps its CSS in <style> elements it writes at run time, which the
// console's CSP (style-src 'self', no inline styles) blocks. Its style elements
// are made constructable stylesheets instead (document.adoptedStyleSheets, which
// the CSP allows since only script can make them): the same CSS, from the same
// code, and nothing from a terminal's output ever reaches CSS.
class SheetStyle extends HTMLElement {
  constructor() {
    super();
    this._sheet = new CSSStyleSheet();
    this._css = '';
  }
  get sheet() {
    return this._sheet;
  }
  get textContent() {
    return this._css;
  }
  set textContent(css) {
    this._css = String(css);
    this._sheet.replaceSync(this._css);
  }
  get innerText() {
    return this._css;
  }
  set innerText(css) {
    this.textContent = css;
  }
  connectedCallback() {
    if (!document.adoptedStyleSheets.includes(this._sheet)) {
      document.adoptedStyleSheets = [...document.adoptedStyleSheets, this._sheet];
    }
  }
  disconnectedCallback() {
    document.adoptedStyleSheets = document.adoptedStyleSheets.filter((s) => s !== this._sheet);
  }
}
if (!customElements.get('fvm-sheet-style')) {
  customElements.define('fvm-sheet-style', SheetStyle);
  const create = document.createElement.bind(document);
  document.createElement = (tag, opts) =>
    String(tag).toLowerCase() === 'style' ? create('fvm-sheet-style') : create(tag, opts);
}

export function mount(el, api) {
  const vm = el.dataset.vm;
  const key = 'fvm-shell-' + vm;
  const term = new Terminal({ cursorBlink: true, fontSize: 14, scrollback: 5000 });
  const fit = new FitAddon();
  term.loadAddon(fit);
  term.open(el);
  fit.fit();
  let ch = null;
  let waiting = false;

  const open = () => {
    if (waiting || !api.connected()) return;
    waiting = true;
    api.send({ op: 'open', vm, session: sessionStorage.getItem(key), cols: term.cols, rows: term.rows });
  };

  const off = api.listen((m) => {
    if (m.op === 'connected') {
      ch = null;
      waiting = false;
      open();
    } else if (m.op === 'disconnected') {
      ch = null;
      waiting = false;
    } else if (m.op === 'opened' && m.vm === vm && waiting) {
      waiting = false;
      ch = m.ch;
      sessionStorage.setItem(key, m.session);
      term.reset();
      api.onBinary(ch, (bytes) => term.write(bytes));
      el.dataset.session = m.session;
    } else if (m.op === 'ended' && m.ch === ch) {
      term.write('\r\n[the shell ended; "New shell" starts another]\r\n');
      sessionStorage.removeItem(key);
      api.offBinary(ch);
      ch = null;
    } else if (m.op === 'error' && waiting) {
      waiting = false;
      term.write('\r\n[' + m.msg + ']\r\n');
    }
  });

  term.onData((d) => {
    if (ch !== null) api.send({ op: 'in', ch, data: d });
  });
  term.onResize(({ cols, rows }) => {
    if (ch !== null) api.send({ op: 'resize', ch, cols, rows });
  });
  const ro = new ResizeObserver(() => fit.fit());
  ro.observe(el);

  // Copy and paste: the buttons, and Ctrl+Shift+C / Ctrl+Shift+V.
  const copy = () => navigator.clipboard.writeText(term.getSelection());
  const paste = () => navigator.clipboard.readText().then((t) => term.paste(t));
  term.attachCustomKeyEventHandler((e) => {
    if (e.type === 'keydown' && e.ctrlKey && e.shiftKey && (e.key === 'C' || e.key === 'V')) {
      (e.key === 'C' ? copy : paste)();
      return false;
    }
    return true;
  });
  const section = el.parentElement;
  const onClick = (e) => {
    if (e.target.closest('.term-copy')) copy();
    else if (e.target.closest('.term-paste')) paste();
    else if (e.target.closest('.term-new')) {
      if (ch !== null) api.send({ op: 'close', ch });
      sessionStorage.removeItem(key);
      ch = null;
      waiting = false;
      open();
    } else return;
    term.focus();
  };
  section.addEventListener('click', onClick);
  open();
  term.focus();

  return () => {
    off();
    ro.disconnect();
    section.removeEventListener('click', onClick);
    if (ch !== null) {
      api.send({ op: 'close', ch });
      api.offBinary(ch);
    }
    term.dispose();
  };
}
