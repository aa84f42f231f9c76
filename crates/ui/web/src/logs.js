// The log view of the Services tab: the server rendered the last lines; new
// ones come over the page's WebSocket (`follow`: the server watches the log
// files with inotify, nothing polls). Every part of a line came from the VM:
// the server escaped its control characters, and it goes in with textContent
// only, never as HTML.

const MAX_LINES = 2000;

export function mount(el, api) {
  const vm = el.dataset.vm;
  const source = el.dataset.source || null;
  const view = el.querySelector('.loglines');
  // Mounted while the page's WebSocket is down (a hidden tab, a reconnect):
  // what the server rendered may miss lines written since, so the first
  // connection takes the last lines again before it follows.
  let away = !api.connected();

  const follow = () => api.send({ op: 'follow', vm, source });

  const append = (l) => {
    const atEnd = view.scrollTop + view.clientHeight >= view.scrollHeight - 4;
    view.querySelector(':scope > p.hint')?.remove();
    const row = document.createElement('div');
    row.className = `logline s-${l.stream === 'err' ? 'err' : l.stream === 'fvm' ? 'fvm' : 'out'}`;
    const part = (cls, text) => {
      const s = document.createElement('span');
      s.className = cls;
      s.textContent = text;
      row.append(s, ' ');
    };
    part('t', String(l.time));
    part('src', l.pid == null ? String(l.source) : `${l.source}[${Number(l.pid)}]`);
    part('stream', String(l.stream));
    part('text', String(l.text));
    row.lastChild.remove();
    view.append(row);
    while (view.children.length > MAX_LINES) view.firstElementChild.remove();
    if (atEnd) view.scrollTop = view.scrollHeight;
  };

  const off = api.listen((m) => {
    if (m.op === 'log' && m.vm === vm && m.line) {
      append(m.line);
    } else if (m.op === 'disconnected') {
      away = true;
    } else if (m.op === 'connected') {
      if (!away) {
        follow();
        return;
      }
      // Back after a hidden tab or a lost connection: take the last lines
      // again (what was written meanwhile), then follow.
      away = false;
      const q = source ? `?source=${encodeURIComponent(source)}` : '';
      htmx.ajax('GET', `/vm/${encodeURIComponent(vm)}/logs${q}`, { target: view, swap: 'innerHTML' }).then(() => {
        view.scrollTop = view.scrollHeight;
        follow();
      });
    }
  });
  view.scrollTop = view.scrollHeight;
  if (api.connected()) follow();
  return () => {
    off();
    api.send({ op: 'unfollow' });
  };
}
