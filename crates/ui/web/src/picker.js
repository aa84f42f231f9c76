// The commit picker: tri-state checkboxes over the tree of changes. A
// directory's box is checked when everything below it is, indeterminate when
// some is; clicking it selects or clears all below. What is sent is the
// smallest set of paths that covers exactly the selected changes.

function kids(li) {
  const ul = li.querySelector(':scope > ul');
  return ul ? [...ul.children] : [];
}

function box(li) {
  return li.querySelector(':scope > .row > input.pick');
}

function setDown(li, on) {
  const b = box(li);
  b.checked = on;
  b.indeterminate = false;
  for (const k of kids(li)) setDown(k, on);
}

function refresh(li) {
  const ks = kids(li);
  if (!ks.length) return;
  const bs = ks.map(box);
  const all = bs.every((b) => b.checked && !b.indeterminate);
  const none = bs.every((b) => !b.checked && !b.indeterminate);
  const b = box(li);
  b.checked = all;
  b.indeterminate = !all && !none;
}

function refreshUp(li) {
  for (let p = li.parentElement.closest('li[role=treeitem]'); p; p = p.parentElement.closest('li[role=treeitem]')) refresh(p);
}

function cover(lis, out) {
  for (const li of lis) {
    const b = box(li);
    if (b.checked && !b.indeterminate) out.push(b.dataset.path);
    else if (b.indeterminate) cover(kids(li), out);
  }
  return out;
}

// For a discard: the selected paths that are changes themselves (a directory
// that only holds changes is not one: discarding it would drop whatever else
// the VM's layer has there).
function exact(lis, out) {
  for (const li of lis) {
    const b = box(li);
    if (b.checked && !b.indeterminate && b.dataset.change) out.push(b.dataset.path);
    else if (b.checked || b.indeterminate) exact(kids(li), out);
  }
  return out;
}

export function mount(el) {
  const top = () => [...el.querySelectorAll(':scope > ul.tree > li')];
  const hidden = el.querySelector('#picked input[name=paths]');
  const discard = el.querySelector('#picked-exact input[name=paths]');
  const all = el.querySelector('.pick-all');
  const update = () => {
    const paths = cover(top(), []);
    if (hidden) hidden.value = JSON.stringify(paths);
    if (discard) discard.value = JSON.stringify(exact(top(), []));
    if (all) {
      const bs = top().map(box);
      all.checked = bs.length > 0 && bs.every((b) => b.checked && !b.indeterminate);
      all.indeterminate = !all.checked && bs.some((b) => b.checked || b.indeterminate);
    }
  };
  const onChange = (e) => {
    const t = e.target;
    if (t.classList.contains('pick')) {
      const li = t.closest('li[role=treeitem]');
      setDown(li, t.checked);
      refreshUp(li);
    } else if (t.classList.contains('pick-all')) {
      for (const li of top()) setDown(li, t.checked);
    } else return;
    update();
  };
  el.addEventListener('change', onChange);
  update();
  return () => el.removeEventListener('change', onChange);
}
