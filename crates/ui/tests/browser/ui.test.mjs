// Browser tests of fvm ui: playwright-core drives the system's chromium
// (CHROMIUM, /usr/bin/chromium by default); nothing downloads a browser.
// Started by crates/ui/tests/browser.rs with the console already serving:
//   URL      the console's address with its token
//   MODE     "fake" (the fixed VMs of the fake backend) or "real" (a test store)
//   FAKE_DIR where the fake backend commits (fake mode)
//   VM, HOST_FILE  the VM and the host file the real-mode commit writes
//   SHOTS    a directory for screenshots (optional)
// Prints one line per check and "N passed, N failed" at the end.

import { chromium } from 'playwright-core';
import { readFileSync, readdirSync, existsSync, appendFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const AXE = readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');
const URL_ = process.env.URL;
const MODE = process.env.MODE || 'fake';
const SHOTS = process.env.SHOTS;
const origin = new URL(URL_).origin;
const port = new URL(URL_).port;

let passed = 0;
let failed = 0;
async function check(name, fn) {
  try {
    await fn();
    passed++;
    console.log(`ok - ${name}`);
  } catch (e) {
    failed++;
    console.log(`FAILED - ${name}: ${e && e.stack ? e.stack.split('\n').slice(0, 3).join(' | ') : e}`);
  }
}
function assert(cond, msg) {
  if (!cond) throw new Error(msg);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--host-resolver-rules=MAP evil.test 127.0.0.1'],
});
const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin });
const page = await context.newPage();
const problems = [];
const dialogs = [];
page.on('dialog', (d) => {
  dialogs.push(d.message());
  d.dismiss();
});
page.on('console', (m) => {
  if (m.type() === 'error' && !m.text().includes('Content Security Policy')) problems.push(`console: ${m.text()}`);
});
page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
await context.addInitScript(() => {
  document.addEventListener('securitypolicyviolation', (e) => {
    (window.__csp = window.__csp || []).push(`${e.violatedDirective} ${e.blockedURI} at ${e.sourceFile}:${e.lineNumber}:${e.columnNumber} (${location.pathname})`);
  });
});

// Violations seen on pages that were left (collected before each navigation).
const seenCsp = [];
async function keepCsp() {
  try {
    seenCsp.push(...(await page.evaluate(() => window.__csp || [])));
  } catch (e) {}
}

async function shot(name) {
  if (SHOTS) await page.screenshot({ path: `${SHOTS}/${name}.png` });
}

async function axe(name) {
  await page.evaluate(AXE);
  const r = await page.evaluate(() => window.axe.run(document, { resultTypes: ['violations'] }));
  const bad = r.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  assert(!bad.length, `${name}: ${bad.map((v) => `${v.id} (${v.nodes.length}): ${v.nodes[0].html}`).join('; ')}`);
}

async function tab(name) {
  await page.click(`nav.tabs a:text-is("${name}")`);
  await page.waitForSelector(`nav.tabs a[aria-current=page]:text-is("${name}")`);
}

async function cspClean() {
  const csp = [...seenCsp, ...(await page.evaluate(() => window.__csp || []))];
  assert(!csp.length, `CSP violations: ${csp.join(', ')}`);
  assert(!problems.length, problems.join('; '));
}

// A log line written like a hostile service would: HTML and an ANSI escape.
const HOSTILE_LOG = '<img src=x onerror=alert(1)> \u001b[31mred\u001b[0m';
const HOSTILE_SHOWN = '<img src=x onerror=alert(1)> \\x1b[31mred\\x1b[0m';

async function logCount(text) {
  return page.evaluate((t) => [...document.querySelectorAll('.loglines .logline')].filter((l) => l.textContent.includes(t)).length, text);
}

async function termText() {
  return page.evaluate(() => document.querySelector('.xterm-rows')?.textContent || '');
}

async function shell42(vm) {
  await keepCsp();
  await page.goto(`${origin}/vm/${vm}/shell`);
  await page.waitForSelector('.xterm-rows');
  await page.waitForFunction(() => document.querySelector('[data-widget=terminal]')?.dataset.session);
  await page.click('.term');
  await page.keyboard.type('echo $((6*7))\n');
  await page.waitForFunction(() => /(^|\s)42(\s|$)/m.test(document.querySelector('.xterm-rows').innerText), null, { timeout: 20000 });
}

await keepCsp();
await page.goto(URL_);
await page.waitForSelector('table.vms');

if (MODE === 'fake') {
  await check('the list shows every VM with state and IP', async () => {
    const rows = await page.$$eval('table.vms tbody tr', (t) => t.map((r) => r.innerText));
    assert(rows.length === 2, rows.join('|'));
    assert(rows.some((r) => r.includes('web1') && r.includes('running') && r.includes('10.77.0.2')), rows.join('|'));
    await page.waitForFunction(() => document.getElementById('conn').textContent === 'live');
    await shot('list');
    await axe('list');
  });

  await check('a file named like HTML shows as text, and nothing runs', async () => {
    await page.click('a:text-is("web1")');
    await tab('Changes');
    await page.waitForSelector('ul.tree');
    const t = await page.locator('ul.tree').innerText();
    assert(t.includes('<img src=x onerror=alert(1)>'), t);
    assert((await page.locator('ul.tree img').count()) === 0, 'an img element in the tree');
    await page.click('button.link:text-is("<img src=x onerror=alert(1)>")');
    await page.waitForSelector('#preview .diff');
    const pv = await page.locator('#preview').innerText();
    assert(pv.includes('<script>alert(2)</script>'), pv);
    assert(dialogs.length === 0, `dialogs: ${dialogs}`);
    await axe('changes');
  });

  await check('the preview shows a text diff, mode changes and binaries', async () => {
    await page.click('button.link:text-is("hosts")');
    // The previous preview has added lines too: wait for this file's own.
    await page.waitForFunction(() => {
      const pv = document.querySelector('#preview');
      return pv && pv.querySelector('.dadd') && pv.innerText.includes('/etc/hosts');
    });
    const pv = await page.locator('#preview').innerText();
    assert(pv.includes('10.77.0.1 gateway') && pv.includes('mode 0644') && pv.includes('mode 0600'), pv);
    await page.click('button.link:text-is("tool")');
    await page.waitForFunction(() => document.querySelector('#preview').innerText.includes('binary file'));
  });

  await check('the commit picker: tri-state boxes, a conflict choice, exactly the selected files committed', async () => {
    const box = (p) => page.locator(`input.pick[data-path="${p}"]`);
    await box('/etc/nginx/nginx.conf').check();
    assert(await box('/etc/nginx').isChecked(), 'a directory whose only child is picked is checked');
    const etc = await box('/etc').evaluate((b) => [b.checked, b.indeterminate]);
    assert(!etc[0] && etc[1], `/etc is partly picked: ${etc}`);
    await box('/etc').check();
    assert(await box('/etc/old.conf').isChecked(), 'checking /etc picks all below');
    await box('/etc/old.conf').uncheck();
    const etc2 = await box('/etc').evaluate((b) => [b.checked, b.indeterminate]);
    assert(!etc2[0] && etc2[1], `/etc is partly picked again: ${etc2}`);
    await box('/usr/bin/tool').check();
    const paths = JSON.parse(await page.locator('#picked input[name=paths]').inputValue());
    assert(JSON.stringify(paths) === JSON.stringify(['/etc/hosts', '/etc/nginx', '/usr']), JSON.stringify(paths));
    await page.click('button.review');
    await page.waitForSelector('form.plan');
    const plan = await page.locator('form.plan').innerText();
    assert(plan.includes('/etc/hosts') && plan.includes('Conflicts'), plan);
    await shot('commit');
    await axe('commit plan');
    await page.check('input[name="c:/etc/hosts"][value=vm]');
    await page.click('form.plan button[type=submit]');
    await page.waitForSelector('#job, #plan h2:text-is("Done")');
    await page.waitForSelector('#plan h2:text-is("Done")');
    const out = await page.locator('#plan').innerText();
    assert(out.includes('fvm commit web1 -- /etc/nginx /usr') && out.includes('fvm commit --force web1 -- /etc/hosts'), out);
    const host = readdirSync(`${process.env.FAKE_DIR}/host`).sort();
    assert(JSON.stringify(host) === JSON.stringify(['%etc%hosts', '%etc%nginx', '%etc%nginx%nginx.conf', '%usr%bin%tool']), host.join(','));
  });

  await check('discard of picked files: refused plainly on a running VM, done on a stopped one', async () => {
    await keepCsp();
    await page.goto(`${origin}/vm/web1/changes`);
    await page.waitForSelector('ul.tree');
    await page.locator('input.pick[data-path="/etc/old.conf"]').check();
    await page.click('button.discard');
    await page.waitForSelector('.modal pre.cmd');
    const running = await page.locator('.modal').innerText();
    assert(running.includes('Stop the VM first') && running.includes('fvm discard web1 -- /etc/old.conf'), running);
    assert((await page.locator('.modal button[type=submit]').count()) === 0, 'a running VM has nothing to submit');
    await page.click('.modal button:text-is("Close")');
    await keepCsp();
    await page.goto(`${origin}/vm/db/changes`);
    await page.waitForSelector('ul.tree');
    await page.locator('input.pick[data-path="/etc/db.conf"]').check();
    await page.locator('input.pick[data-path="/var/lib/db/data"]').check();
    await page.click('button.discard');
    await page.waitForSelector('.modal pre.cmd');
    const cmd = await page.locator('.modal pre.cmd').innerText();
    assert(cmd === 'fvm discard db -- /etc/db.conf /var/lib/db/data', cmd);
    await shot('discard');
    await axe('discard dialog');
    await page.click('.modal button[type=submit]');
    await page.waitForSelector('.modal h2:text-is("Done")');
    await page.click('.modal button:text-is("Close")');
    await page.waitForFunction(() => document.querySelector('ul.tree') && !document.querySelector('input.pick[data-path="/etc/db.conf"]'));
    const tree = await page.locator('ul.tree').innerText();
    assert(!tree.includes('db.conf') && !tree.includes('data') && tree.includes('wal'), tree);
  });

  await check('read-only mode: no discard, and a discard request is refused', async () => {
    const p = await context.newPage();
    await p.goto(process.env.RO_URL.replace('/#', '/vm/db/changes#'));
    await p.waitForSelector('ul.tree');
    assert((await p.locator('button.discard').count()) === 0 && (await p.locator('input.pick').count()) === 0, 'a picker in read-only mode');
    const r = await p.evaluate(async () => {
      const token = sessionStorage.getItem('fvm-token');
      const x = await fetch('/vm/db/discard', {
        method: 'POST',
        headers: { Authorization: 'Bearer ' + token, 'content-type': 'application/x-www-form-urlencoded' },
        body: 'paths=' + encodeURIComponent(JSON.stringify(['/var/lib/db/data'])),
      });
      return [x.status, await x.text()];
    });
    assert(r[0] === 403 && r[1].includes('read-only'), r.join(' '));
    await p.reload();
    await p.waitForSelector('ul.tree');
    const tree = await p.locator('ul.tree').innerText();
    assert(tree.includes('data'), tree);
    await p.close();
  });

  await check('graphs keep their history across navigation', async () => {
    await keepCsp();
    await page.goto(`${origin}/vm/web1/graphs`);
    await page.waitForFunction(() => Number(document.querySelector('[data-widget=graphs]')?.dataset.points) >= 3, null, { timeout: 15000 });
    await shot('graphs');
    await axe('graphs');
    const before = Number(await page.locator('[data-widget=graphs]').getAttribute('data-points'));
    await page.click('a:text-is("VMs")');
    await page.waitForSelector('table.vms');
    await page.click('a:text-is("web1")');
    await tab('Graphs');
    await page.waitForFunction((n) => Number(document.querySelector('[data-widget=graphs]')?.dataset.points) >= n, before);
    const sparks = await page.evaluate(() => document.querySelectorAll('canvas.spark').length);
    assert(sparks === 0, 'left the list');
  });

  await check('the process tree, and kill', async () => {
    await tab('Processes');
    const rows = await page.locator('table.procs tbody tr').count();
    assert(rows === 4, `rows ${rows}`);
    await shot('processes');
    await axe('processes');
    await page.locator('tr:has-text("5009") button:text-is("Kill")').click();
    await page.waitForFunction(() => document.querySelectorAll('table.procs tbody tr').length === 3);
  });

  await check('the policy editor checks with the CLI rules and says what applies live', async () => {
    await tab('Policy');
    await page.fill('#limit-memory', 'lots');
    await page.click('form.policy button:text-is("Check")');
    await page.waitForSelector('#policy-result .error');
    await page.fill('#limit-memory', '1G');
    await page.fill('#limit-open-files', '64');
    await page.click('form.policy button:text-is("Check")');
    await page.waitForSelector('#policy-result pre.cmd');
    const r = await page.locator('#policy-result').innerText();
    assert(r.includes('fvm config web1 --memory 1G --open-files 64'), r);
    assert(r.includes('Applied to the running VM at once: memory') && r.includes('started from now on: open-files'), r);
    await shot('policy');
    await axe('policy');
    await page.click('#policy-result button:text-is("Save")');
    await page.waitForSelector('.modal h2:text-is("Done")');
    await page.click('.modal button:text-is("Close")');
    await page.waitForFunction(() => document.querySelector('#limit-memory')?.value === '1G');
  });

  await check('the network panel', async () => {
    await tab('Network');
    const t = await page.locator('#tab').innerText();
    assert(t.includes('bridge') && t.includes('8080:80'), t);
    await axe('network');
  });

  await check('services: state, restart policy, last end, and a restart through its dialog', async () => {
    await tab('Services');
    await page.waitForSelector('table.services');
    const web = await page.locator('tr[data-service=web]').innerText();
    assert(web.includes('running') && web.includes('always') && web.includes("nginx -g 'daemon off;'"), web);
    const worker = await page.locator('tr[data-service=worker]').innerText();
    assert(worker.includes('failed') && worker.includes('on-failure') && worker.includes('exit status 1'), worker);
    const logs = await page.locator('.loglines').innerText();
    assert(logs.includes('listening on 0.0.0.0:80') && logs.includes('worker: no such queue'), logs);
    await shot('services');
    await axe('services');
    await page.click('tr[data-service=web] button:text-is("Restart…")');
    await page.waitForSelector('.modal pre.cmd');
    const cmd = await page.locator('.modal pre.cmd').innerText();
    assert(cmd === 'fvm service web1 web restart', cmd);
    await page.click('.modal button[type=submit]');
    await page.waitForSelector('.modal h2:text-is("Done")');
    // The log view follows: the restart's note comes over the WebSocket.
    await page.waitForFunction(() => document.querySelector('.loglines').innerText.includes('restarted'));
    await page.click('.modal button:text-is("Close")');
    await page.waitForSelector('tr[data-service=web]');
  });

  await check('a hostile log line is followed over the WebSocket, without polling, and shows as text', async () => {
    await page.waitForFunction(() => document.querySelector('.loglines')?.innerText.includes('restarted'));
    await page.waitForFunction(() => document.getElementById('conn').textContent === 'live');
    // Let the page send its follow request before the line is written.
    await page.evaluate(() => new Promise((r) => setTimeout(r, 300)));
    const requests = [];
    const onRequest = (r) => requests.push(r.url());
    page.on('request', onRequest);
    appendFileSync(
      `${process.env.FAKE_DIR}/logs/web1/web.log`,
      JSON.stringify({ time: new Date().toISOString(), source: 'web', pid: 7, stream: 'stdout', line: HOSTILE_LOG }) + '\n',
    );
    await page.waitForFunction((t) => document.querySelector('.loglines').innerText.includes(t), HOSTILE_SHOWN);
    page.off('request', onRequest);
    assert(!requests.length, `requests while following: ${requests.join(', ')}`);
    assert((await page.locator('.loglines img').count()) === 0, 'an img element in the logs');
    assert(dialogs.length === 0, `dialogs: ${dialogs}`);
    // The server renders the same line the same way.
    await page.reload();
    await page.waitForSelector('.loglines');
    assert((await logCount(HOSTILE_SHOWN)) === 1, 'the line after a reload');
    assert((await page.locator('.loglines img').count()) === 0, 'an img element in the rendered logs');
    // One source.
    await page.selectOption('select[name=source]', 'worker');
    await page.waitForFunction(() => location.search === '?source=worker');
    await page.waitForSelector('.logs[data-source=worker]');
    const only = await page.locator('.loglines').innerText();
    assert(only.includes('no such queue') && !only.includes('listening'), only);
    assert(dialogs.length === 0, `dialogs: ${dialogs}`);
  });

  await check('the log view catches up after a hidden tab, and follows again', async () => {
    const visibility = (hidden) =>
      page.evaluate((h) => {
        Object.defineProperty(document, 'hidden', { value: h, configurable: true });
        document.dispatchEvent(new Event('visibilitychange'));
      }, hidden);
    const line = (text) =>
      appendFileSync(
        `${process.env.FAKE_DIR}/logs/web1/worker.log`,
        JSON.stringify({ time: new Date().toISOString(), source: 'worker', pid: 9, stream: 'stderr', line: text }) + '\n',
      );
    await visibility(true);
    await page.waitForFunction(() => document.getElementById('conn').textContent === 'paused');
    line('written while the tab was hidden');
    await visibility(false);
    await page.waitForFunction(() => document.querySelector('.loglines').innerText.includes('written while the tab was hidden'));
    await page.evaluate(() => new Promise((r) => setTimeout(r, 300)));
    line('written after it came back');
    await page.waitForFunction(() => document.querySelector('.loglines').innerText.includes('written after it came back'));
    assert((await logCount('written while the tab was hidden')) === 1, 'the line once');
  });

  await check('the browser shell prints 42, and keeps it across a tab switch and a reload', async () => {
    await shell42('web1');
    await shot('shell');
    await tab('Overview');
    await tab('Shell');
    await page.waitForFunction(() => /(^|\s)42(\s|$)/m.test(document.querySelector('.xterm-rows')?.innerText || ''));
    const id = await page.evaluate(() => document.querySelector('[data-widget=terminal]').dataset.session);
    await keepCsp();
    await page.reload();
    await page.waitForFunction(() => /(^|\s)42(\s|$)/m.test(document.querySelector('.xterm-rows')?.innerText || ''));
    const again = await page.evaluate(() => document.querySelector('[data-widget=terminal]').dataset.session);
    assert(id === again, 'the same session after a reload');
    const cols = await page.evaluate(() => document.querySelector('.xterm-rows').parentElement.clientWidth);
    assert(cols > 600, 'the terminal fills the pane');
  });

  await check('a hidden tab closes its WebSocket; shown again, the shell comes back', async () => {
    const visibility = (hidden) =>
      page.evaluate((h) => {
        Object.defineProperty(document, 'hidden', { value: h, configurable: true });
        document.dispatchEvent(new Event('visibilitychange'));
      }, hidden);
    await visibility(true);
    await page.waitForFunction(() => document.getElementById('conn').textContent === 'paused');
    await visibility(false);
    await page.waitForFunction(() => document.getElementById('conn').textContent === 'live');
    await page.waitForFunction(() => /(^|\s)42(\s|$)/m.test(document.querySelector('.xterm-rows')?.innerText || ''));
  });

  await check('the pty of the shell has the size of the pane, and follows it; paste works', async () => {
    const size = async () => {
      await page.click('.term');
      await page.keyboard.type('stty size\n');
      await page.waitForFunction(() => /\n\d+ \d+\s*\n/.test(document.querySelector('.xterm-rows').innerText));
      const t = await page.evaluate(() => document.querySelector('.xterm-rows').innerText);
      const all = [...t.matchAll(/^(\d+) (\d+)\s*$/gm)];
      return all[all.length - 1].slice(1, 3).map(Number);
    };
    const [rows, cols] = await size();
    assert(rows > 10 && cols > 80, `stty size ${rows} ${cols}`);
    await page.setViewportSize({ width: 900, height: 700 });
    await page.keyboard.type('clear\n');
    await page.waitForFunction(() => !document.querySelector('.xterm-rows').innerText.includes('stty'));
    const [rows2, cols2] = await size();
    assert(cols2 < cols && rows2 < rows, `after a resize: ${rows2} ${cols2}, before ${rows} ${cols}`);
    await page.setViewportSize({ width: 1280, height: 860 });
    await page.evaluate(() => navigator.clipboard.writeText('echo pasted-$((40+2))'));
    await page.click('.term-paste');
    await page.waitForFunction(() => document.querySelector('.xterm-rows').innerText.includes('echo pasted-'));
    await page.keyboard.press('Enter');
    await page.waitForFunction(() => document.querySelector('.xterm-rows').innerText.includes('pasted-42'));
  });

  await check('dialogs show the command; delete needs the typed name', async () => {
    await keepCsp();
    await page.goto(`${origin}/vm/db`);
    await page.waitForSelector('.actions');
    await page.click('button:text-is("Start…")');
    await page.waitForSelector('.modal pre.cmd');
    assert((await page.locator('.modal pre.cmd').innerText()) === 'fvm start db');
    await axe('dialog');
    await page.click('.modal button[type=submit]');
    await page.waitForSelector('.modal h2:text-is("Done")');
    await page.click('.modal button:text-is("Close")');
    await page.waitForSelector('h1 .state.running');
    await page.click('button:text-is("Stop…")');
    await page.click('.modal button[type=submit]');
    await page.waitForSelector('.modal h2:text-is("Done")');
    await page.click('.modal button:text-is("Close")');
    await page.click('button:text-is("Copy…")');
    await page.fill('.modal input[name=dst]', 'db2');
    await page.click('.modal button[type=submit]');
    await page.waitForSelector('.modal h2:text-is("Done")');
    await page.click('.modal button:text-is("Close")');
    await page.waitForSelector('h1:has-text("db2")');
    await page.click('button:text-is("Delete…")');
    await page.fill('.modal input[name=confirm]', 'db');
    await page.click('.modal button[type=submit]');
    await page.waitForSelector('.modal h2:text-is("Failed")');
    await page.click('.modal button:text-is("Close")');
    await page.click('button:text-is("Delete…")');
    await page.fill('.modal input[name=confirm]', 'db2');
    await page.click('.modal button[type=submit]');
    await page.waitForSelector('.modal h2:text-is("Done")');
    await page.click('.modal button:text-is("Close")');
    await page.waitForSelector('table.vms');
    const names = await page.$$eval('table.vms tbody tr', (t) => t.map((r) => r.dataset.vm));
    assert(JSON.stringify(names) === '["db","web1"]', names.join(','));
  });

  await check('bulk stop, start and delete', async () => {
    await page.check('input[name=vm][value=web1]');
    await page.check('input[name=vm][value=db]');
    await page.click('.bulk button:text-is("Stop")');
    await page.waitForSelector('.modal h2');
    await page.click('.modal button:text-is("Close")');
    await page.waitForFunction(() => [...document.querySelectorAll('table.vms .state')].every((s) => s.textContent === 'stopped'));
    await page.check('input[name=vm][value=web1]');
    await page.click('.bulk button:text-is("Start")');
    await page.waitForSelector('.modal h2:text-is("Done")');
    await page.click('.modal button:text-is("Close")');
    await page.waitForSelector('tr[data-vm=web1] .state.running');
    await page.check('input[name=vm][value=db]');
    await page.click('.bulk button:text-is("Delete…")');
    await page.waitForSelector('.modal pre.cmd');
    assert((await page.locator('.modal pre.cmd').innerText()) === 'fvm delete --force db');
    await page.fill('.modal input[name=confirm]', '1');
    await page.click('.modal button[type=submit]');
    await page.waitForSelector('.modal h2:text-is("Done")');
    await page.click('.modal button:text-is("Close")');
    await page.waitForFunction(() => document.querySelectorAll('table.vms tbody tr').length === 1);
  });
} else {
  const vm = process.env.VM;
  await check('real engine: the list shows the test VM running', async () => {
    const row = await page.locator(`tr[data-vm="${vm}"]`).innerText();
    assert(row.includes('running'), row);
  });
  await check('real engine: a browser shell in the VM prints 42', async () => {
    await shell42(vm);
    await page.keyboard.type(`echo committed-by-ui > ${process.env.HOST_FILE}\n`);
    await page.keyboard.type(`echo a > ${process.env.DISCARD_A}; echo b > ${process.env.DISCARD_B}\n`);
    await page.keyboard.type('exit\n');
    await page.waitForFunction(() => document.querySelector('.xterm-rows').innerText.includes('the shell ended'), null, { timeout: 20000 });
  });
  await check('real engine: diff and commit of one file', async () => {
    await keepCsp();
    await page.goto(`${origin}/vm/${vm}/changes`);
    await page.waitForSelector('ul.tree');
    await page.locator(`input.pick[data-path="${process.env.HOST_FILE}"]`).check();
    await page.click('button.review');
    await page.waitForSelector('form.plan');
    await page.click('form.plan button[type=submit]');
    await page.waitForSelector('#plan h2:text-is("Done")', { timeout: 30000 });
    assert(readFileSync(process.env.HOST_FILE, 'utf8') === 'committed-by-ui\n', 'the host has the file');
  });
  await check('real engine: discard of two files, refused while the VM runs', async () => {
    const pick = async () => {
      await page.waitForSelector('ul.tree');
      await page.locator(`input.pick[data-path="${process.env.DISCARD_A}"]`).check();
      await page.locator(`input.pick[data-path="${process.env.DISCARD_B}"]`).check();
      await page.click('button.discard');
      await page.waitForSelector('.modal pre.cmd');
      const cmd = await page.locator('.modal pre.cmd').innerText();
      assert(cmd === `fvm discard ${vm} -- ${process.env.DISCARD_A} ${process.env.DISCARD_B}`, cmd);
    };
    await keepCsp();
    await page.goto(`${origin}/vm/${vm}/changes`);
    await pick();
    assert((await page.locator('.modal').innerText()).includes('Stop the VM first'), 'says why not');
    await page.click('.modal button:text-is("Close")');
    await keepCsp();
    await page.goto(`${origin}/vm/${vm}`);
    await page.click('button:text-is("Stop…")');
    await page.click('.modal button[type=submit]');
    await page.waitForSelector('.modal h2:text-is("Done")', { timeout: 30000 });
    await page.click('.modal button:text-is("Close")');
    await page.waitForSelector('h1 .state.stopped');
    await tab('Changes');
    await pick();
    await page.click('.modal button[type=submit]');
    await page.waitForSelector('.modal h2:text-is("Done")', { timeout: 30000 });
    await page.click('.modal button:text-is("Close")');
    await page.waitForFunction((a) => document.querySelector('ul.tree') && !document.querySelector(`input.pick[data-path="${a}"]`), process.env.DISCARD_A);
    const tree = await page.locator('#tab').innerText();
    assert(!tree.includes('discard-a.txt') && !tree.includes('discard-b.txt'), tree);
    await page.click('button:text-is("Start…")');
    await page.click('.modal button[type=submit]');
    await page.waitForSelector('.modal h2:text-is("Done")', { timeout: 30000 });
    await page.click('.modal button:text-is("Close")');
    await page.waitForSelector('h1 .state.running');
  });
  await check('real engine: services and their followed logs, escaped', async () => {
    await keepCsp();
    await page.goto(`${origin}/vm/${vm}/services`);
    await page.waitForSelector('tr[data-service=hello]');
    await page.waitForFunction(() => document.querySelector('tr[data-service=hello]').innerText.includes('running'), null, { timeout: 20000 });
    const row = await page.locator('tr[data-service=hello]').innerText();
    assert(row.includes('always'), row);
    await page.waitForFunction((t) => document.querySelector('.loglines').innerText.includes(t), HOSTILE_SHOWN, { timeout: 20000 });
    await page.waitForFunction(() => document.getElementById('conn').textContent === 'live');
    await page.evaluate(() => new Promise((r) => setTimeout(r, 300)));
    const before = await logCount(HOSTILE_SHOWN);
    await page.click('tr[data-service=hello] button:text-is("Restart…")');
    await page.waitForSelector('.modal pre.cmd');
    const cmd = await page.locator('.modal pre.cmd').innerText();
    assert(cmd === `fvm service ${vm} hello restart`, cmd);
    await page.click('.modal button[type=submit]');
    await page.waitForSelector('.modal h2:text-is("Done")', { timeout: 30000 });
    // The restarted service writes the line again; the open view follows it.
    await page.waitForFunction(({ t, n }) => [...document.querySelectorAll('.loglines .logline')].filter((l) => l.textContent.includes(t)).length > n, { t: HOSTILE_SHOWN, n: before }, { timeout: 20000 });
    assert((await page.locator('.loglines img').count()) === 0, 'an img element in the logs');
    assert(dialogs.length === 0, `dialogs: ${dialogs}`);
    await page.click('.modal button:text-is("Close")');
    await page.waitForSelector('tr[data-service=hello]');
  });
  await check('real engine: stop and start from the dialogs', async () => {
    await keepCsp();
    await page.goto(`${origin}/vm/${vm}`);
    await page.click('button:text-is("Stop…")');
    await page.click('.modal button[type=submit]');
    await page.waitForSelector('.modal h2:text-is("Done")', { timeout: 30000 });
    await page.click('.modal button:text-is("Close")');
    await page.waitForSelector('h1 .state.stopped');
    await page.click('button:text-is("Start…")');
    await page.click('.modal button[type=submit]');
    await page.waitForSelector('.modal h2:text-is("Done")', { timeout: 30000 });
    await page.click('.modal button:text-is("Close")');
    await page.waitForSelector('h1 .state.running');
  });
}

await check('no CSP violations, console errors or dialogs', cspClean);

await check('DNS rebinding: another host name is refused', async () => {
  const p = await context.newPage();
  const r = await p.goto(`http://evil.test:${port}/`);
  assert(r.status() >= 400 && r.status() < 500, `status ${r.status()}`);
  await p.close();
});

await check('a reused WebSocket ticket is refused', async () => {
  const r = await page.evaluate(async () => {
    const token = sessionStorage.getItem('fvm-token');
    const t = await (await fetch('/api/ticket', { method: 'POST', headers: { Authorization: 'Bearer ' + token } })).text();
    const open = (u) =>
      new Promise((res) => {
        const s = new WebSocket(u);
        s.onopen = () => {
          s.close();
          res('open');
        };
        s.onerror = () => res('refused');
      });
    const u = `ws://${location.host}/ws?ticket=${t}`;
    return [await open(u), await open(u)];
  });
  assert(r[0] === 'open' && r[1] === 'refused', r.join(','));
  problems.length = 0;
});

await check('a page on another loopback port can neither POST nor open the WebSocket', async () => {
  const token = await page.evaluate(() => sessionStorage.getItem('fvm-token'));
  const ticket = await page.evaluate(async () => {
    const token = sessionStorage.getItem('fvm-token');
    return (await fetch('/api/ticket', { method: 'POST', headers: { Authorization: 'Bearer ' + token } })).text();
  });
  const evil = createServer((req, res) => {
    res.setHeader('content-type', 'text/html');
    res.end('<!doctype html><title>x</title><p>evil</p>');
  });
  await new Promise((r) => evil.listen(0, '127.0.0.1', r));
  const p = await context.newPage();
  await p.goto(`http://127.0.0.1:${evil.address().port}/`);
  const r = await p.evaluate(
    async ({ console, token, ticket }) => {
      const out = {};
      try {
        const x = await fetch(`${console}/create`, {
          method: 'POST',
          headers: { Authorization: 'Bearer ' + token, 'content-type': 'application/x-www-form-urlencoded' },
          body: 'name=evil',
        });
        out.post = x.status;
      } catch (e) {
        out.post = 'blocked';
      }
      try {
        await fetch(`${console}/create`, { method: 'POST', mode: 'no-cors', body: new URLSearchParams('name=evil2') });
        out.simple = 'sent';
      } catch (e) {
        out.simple = 'blocked';
      }
      out.ws = await new Promise((res) => {
        const s = new WebSocket(`${console.replace('http', 'ws')}/ws?ticket=${ticket}`);
        s.onopen = () => res('open');
        s.onerror = () => res('refused');
      });
      return out;
    },
    { console: origin, token, ticket },
  );
  await p.close();
  evil.close();
  assert(r.post === 'blocked' && r.ws === 'refused', JSON.stringify(r));
  const names = await page.evaluate(async () => {
    const token = sessionStorage.getItem('fvm-token');
    return (await fetch('/', { headers: { Authorization: 'Bearer ' + token, 'HX-Request': 'true' } })).text();
  });
  assert(!names.includes('evil'), 'no VM was created');
});

await browser.close();
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
