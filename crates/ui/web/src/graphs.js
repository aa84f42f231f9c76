// Resource graphs of one VM: the server's history (an hour at 1 Hz), then the
// samples as they come. Markers (OOM kills, limit changes) are drawn as
// vertical lines and listed below.

import uPlot from '/assets/uPlot.esm.js';

const SERIES = {
  cpu: [{ label: 'CPU %', stroke: '#2b6cb0', get: (p) => p.cpu }],
  mem: [
    { label: 'memory', stroke: '#2f855a', get: (p) => p.mem },
    { label: 'limit', stroke: '#c53030', dash: [4, 4], get: (p) => p.mem_limit },
  ],
  procs: [
    { label: 'processes', stroke: '#6b46c1', get: (p) => p.procs },
    { label: 'limit', stroke: '#c53030', dash: [4, 4], get: (p) => p.procs_limit },
  ],
  io: [
    { label: 'read', stroke: '#2b6cb0', get: (p) => p.read },
    { label: 'written', stroke: '#dd6b20', get: (p) => p.write },
  ],
};

// Bytes on an axis: K, M, G.
function bytes(v) {
  if (v == null) return '';
  const units = ['', 'K', 'M', 'G', 'T'];
  let i = 0;
  while (Math.abs(v) >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(v < 10 && i ? 1 : 0)}${units[i]}`;
}

const AXIS = {
  mem: (u, vals) => vals.map(bytes),
  io: (u, vals) => vals.map((v) => bytes(v) + '/s'),
};

export function mount(el, api) {
  const vm = el.dataset.vm;
  let points = [];
  let markers = [];
  const charts = {};
  const list = el.querySelector('.markers');

  const markerPlugin = {
    hooks: {
      draw: [
        (u) => {
          const ctx = u.ctx;
          ctx.save();
          ctx.strokeStyle = '#c53030';
          for (const m of markers) {
            const x = u.valToPos(m.t, 'x', true);
            if (x < u.bbox.left || x > u.bbox.left + u.bbox.width) continue;
            ctx.beginPath();
            ctx.moveTo(x, u.bbox.top);
            ctx.lineTo(x, u.bbox.top + u.bbox.height);
            ctx.stroke();
          }
          ctx.restore();
        },
      ],
    },
  };

  const data = (id) => [points.map((p) => p.t), ...SERIES[id].map((s) => points.map((p) => s.get(p) ?? null))];

  const build = () => {
    for (const box of el.querySelectorAll('[data-chart]')) {
      const id = box.dataset.chart;
      const opts = {
        width: Math.max(300, box.clientWidth),
        height: 160,
        plugins: [markerPlugin],
        series: [{}, ...SERIES[id].map((s) => ({ label: s.label, stroke: s.stroke, dash: s.dash, width: 1.5 }))],
        axes: [{}, AXIS[id] ? { size: 70, values: AXIS[id] } : { size: 70 }],
      };
      charts[id] = new uPlot(opts, data(id), box);
    }
  };

  const redraw = () => {
    for (const id of Object.keys(charts)) charts[id].setData(data(id));
    list.replaceChildren(
      ...markers.map((m) => {
        const li = document.createElement('li');
        li.textContent = `${new Date(m.t * 1000).toLocaleTimeString()}: ${m.what}`;
        return li;
      }),
    );
    el.dataset.points = String(points.length);
  };

  let off = () => {};
  let alive = true;
  api
    .get('/api/history/' + encodeURIComponent(vm))
    .then((r) => r.json())
    .then((snap) => {
      if (!alive) return;
      points = snap.points;
      markers = snap.markers;
      build();
      redraw();
      off = api.listen((m) => {
        if (m.op !== 'stats' || !m.vms[vm]) return;
        points.push(m.vms[vm]);
        if (points.length > 3600) points.shift();
        redraw();
      });
    });
  const ro = new ResizeObserver(() => {
    for (const box of el.querySelectorAll('[data-chart]')) {
      const c = charts[box.dataset.chart];
      if (c) c.setSize({ width: Math.max(300, box.clientWidth), height: 160 });
    }
  });
  ro.observe(el);
  return () => {
    alive = false;
    off();
    ro.disconnect();
    for (const c of Object.values(charts)) c.destroy();
  };
}
