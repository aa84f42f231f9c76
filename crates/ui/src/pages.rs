//! The HTML of the console, server-rendered with maud (which escapes every
//! interpolated value: whatever a VM named a file or a process shows as text).
//! No inline script or style anywhere: behaviour is in /assets/*.js, looks in
//! /assets/app.css, so the CSP can forbid both.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use maud::{DOCTYPE, Markup, html};

use crate::backend::{Change, CommitPlan, Op, Preview, Process, ServiceRow, Side, Vm};
use crate::policy::{NET_KEYS, net_text};

pub const TABS: &[(&str, &str)] = &[
    ("overview", "Overview"),
    ("changes", "Changes"),
    ("graphs", "Graphs"),
    ("processes", "Processes"),
    ("policy", "Policy"),
    ("network", "Network"),
    ("services", "Services"),
    ("shell", "Shell"),
];

/// The page every navigation gets: no data, only the frame and the scripts,
/// which read the token from the URL's fragment and load the content.
pub fn frame(read_only: bool, assets: bool) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="no-referrer";
                meta name="htmx-config" content=r#"{"includeIndicatorStyles":false,"allowEval":false,"allowScriptTags":false,"historyCacheSize":0,"refreshOnHistoryMiss":true,"selfRequestsOnly":true,"attributesToSettle":["class","width","height"]}"#;
                title { "fvm" }
                link rel="stylesheet" href="/assets/app.css";
                @if assets {
                    link rel="stylesheet" href="/assets/xterm.css";
                    link rel="stylesheet" href="/assets/uPlot.min.css";
                    script src="/assets/htmx.min.js" {}
                    script type="module" src="/assets/app.js" {}
                }
            }
            body {
                header {
                    a href="/" class="brand" { "fvm" }
                    span class="sub" { "featherweight VMs" }
                    @if read_only { span class="badge" { "read-only" } }
                    span id="conn" class="conn" aria-live="polite" {}
                }
                main id="main" {
                    @if assets {
                        p { "Loading…" }
                    } @else {
                        p class="error" { (crate::NO_ASSETS) }
                    }
                }
                div id="dialog" {}
            }
        }
    }
}

fn nav(href: &str, label: &str) -> Markup {
    html! { a href=(href) hx-get=(href) hx-target="#main" hx-push-url="true" { (label) } }
}

pub use fvm_engine::limits::human_bytes as size;

fn uptime(started: Option<&str>) -> String {
    let Some(at) = started.and_then(|s| humantime::parse_rfc3339(s).ok()) else {
        return "-".to_owned();
    };
    let secs = std::time::SystemTime::now()
        .duration_since(at)
        .map_or(0, |d| d.as_secs());
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86400 => format!("{}h{}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d{}h", secs / 86400, secs % 86400 / 3600),
    }
}

/// The VM list.
pub fn list(vms: &[Vm], changed: &BTreeMap<String, Option<usize>>, read_only: bool) -> Markup {
    html! {
        div class="toolbar" {
            h1 { "Virtual machines" }
            @if !read_only {
                button hx-get="/dialog/create" hx-target="#dialog" { "Create…" }
            }
        }
        form id="bulk" hx-post="/bulk" hx-target="#dialog" {
            @if !read_only {
                div class="bulk" {
                    span { "Selected:" }
                    button name="action" value="start" { "Start" }
                    button name="action" value="stop" { "Stop" }
                    button name="action" value="delete" class="danger" { "Delete…" }
                }
            }
            table class="vms" {
                thead { tr {
                    @if !read_only { th { span class="sr" { "Select" } } }
                    th { "Name" } th { "State" } th { "IP" } th { "Uptime" }
                    th { "Changed files" } th { "CPU" } th { "Memory" }
                } }
                tbody {
                    @if vms.is_empty() {
                        tr { td colspan="8" { "No VMs in this store. " code { "fvm create NAME" } " makes one." } }
                    }
                    @for vm in vms {
                        tr data-vm=(vm.name) {
                            @if !read_only {
                                td { input type="checkbox" name="vm" value=(vm.name) aria-label={"Select " (vm.name)}; }
                            }
                            td { (nav(&format!("/vm/{}", vm.name), &vm.name)) }
                            td { span class={"state " (vm.status)} { (vm.status) } }
                            td { (vm.ip.as_deref().unwrap_or("-")) }
                            td { (if vm.running() { uptime(vm.started_at.as_deref()) } else { "-".to_owned() }) }
                            td { @match changed.get(&vm.name).copied().flatten() { Some(n) => (n), None => "-" } }
                            td { canvas class="spark" data-vm=(vm.name) data-series="cpu" width="100" height="24" role="img" aria-label={"CPU of " (vm.name)} {} }
                            td { canvas class="spark" data-vm=(vm.name) data-series="mem" width="100" height="24" role="img" aria-label={"Memory of " (vm.name)} {} }
                        }
                    }
                }
            }
        }
    }
}

/// A VM's page with one tab's content.
pub fn vm_page(vm: &Vm, tab: &str, read_only: bool, content: Markup) -> Markup {
    html! {
        nav class="crumbs" aria-label="Breadcrumb" { (nav("/", "VMs")) " / " span { (vm.name) } }
        div class="toolbar" {
            h1 { (vm.name) " " span class={"state " (vm.status)} { (vm.status) } }
            @if !read_only {
                div class="actions" {
                    @for (op, label) in vm_actions(vm) {
                        button hx-get={"/vm/" (vm.name) "/dialog/" (op)} hx-target="#dialog"
                            class=[(op == "delete").then_some("danger")] { (label) }
                    }
                }
            }
        }
        @if let Some(e) = &vm.error { p class="error" { (e) } }
        nav class="tabs" aria-label="VM" {
            @for (id, label) in TABS {
                @if !(read_only && *id == "shell") {
                    a href={"/vm/" (vm.name) "/" (id)} hx-get={"/vm/" (vm.name) "/" (id)}
                        hx-target="#main" hx-push-url="true"
                        aria-current=[(*id == tab).then_some("page")] { (label) }
                }
            }
        }
        section id="tab" data-tab=(tab) { (content) }
    }
}

fn vm_actions(vm: &Vm) -> Vec<(&'static str, &'static str)> {
    let mut v = Vec::new();
    match vm.status.as_str() {
        "running" => v.extend([("stop", "Stop…"), ("suspend", "Suspend…")]),
        "suspended" => v.extend([("resume", "Resume…"), ("stop", "Stop…")]),
        "stopped" => v.extend([("start", "Start…"), ("copy", "Copy…")]),
        _ => {}
    }
    v.push(("delete", "Delete…"));
    v
}

pub fn overview(vm: &Vm) -> Markup {
    html! {
        dl class="facts" {
            dt { "State" } dd { (vm.status) }
            dt { "IP" } dd { (vm.ip.as_deref().unwrap_or("-")) }
            dt { "Uptime" } dd { (if vm.running() { uptime(vm.started_at.as_deref()) } else { "-".to_owned() }) }
            dt { "Processes" } dd { (vm.processes.map_or("-".to_owned(), |p| p.to_string())) }
            dt { "Memory" } dd { (vm.memory.map_or("-".to_owned(), size)) }
            dt { "Disk (its layers)" } dd { (size(vm.disk)) }
            dt { "OOM kills" } dd { (vm.oom_kills.map_or("-".to_owned(), |n| n.to_string())) }
            dt { "Description" } dd { (vm.description) }
        }
    }
}

/// A dialog: what it does, the equivalent command, and a form that does it.
pub fn dialog(
    title: &str,
    command: &str,
    post: &str,
    extra: Markup,
    confirm: Option<&str>,
) -> Markup {
    html! {
        div class="modal" role="dialog" aria-modal="true" aria-labelledby="dlg-title" {
            form hx-post=(post) hx-target="#dialog" {
                h2 id="dlg-title" { (title) }
                (extra)
                p { "Equivalent command:" }
                pre class="cmd" { code { (command) } }
                @if let Some(name) = confirm {
                    label { "Type " strong { (name) } " to confirm: "
                        input type="text" name="confirm" autocomplete="off" required; }
                }
                div class="buttons" {
                    button type="submit" class=[confirm.map(|_| "danger")] { (title) }
                    button type="button" data-close="dialog" { "Cancel" }
                }
            }
        }
    }
}

/// The dialog of a discard: what goes, the command, and on a running VM why it
/// must be stopped first (the engine refuses to change a mounted layer).
pub fn discard_dialog(vm: &Vm, paths: &[PathBuf], command: &str) -> Markup {
    let joined: Vec<String> = paths
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let title = format!("Discard changes of {}", vm.name);
    if vm.running() {
        return html! {
            div class="modal" role="dialog" aria-modal="true" aria-labelledby="dlg-title" {
                h2 id="dlg-title" { (title) }
                p class="error" role="alert" {
                    "The VM is " (vm.status) ": a discard works on a stopped VM only (overlayfs doesn't support changing the layer of a mounted overlay), and fvm refuses it. Stop the VM first, then discard."
                }
                p { "Equivalent command:" }
                pre class="cmd" { code { (command) } }
                div class="buttons" { button type="button" data-close="dialog" { "Close" } }
            }
        };
    }
    let extra = html! {
        p { "The VM's changes at or under these " (paths.len()) " paths are dropped: it sees the host's version there again. Nothing is written to the host, and what is dropped can't be brought back." }
        ul class="discard-paths" { @for p in &joined { li { code { (shown(p)) } } } }
        input type="hidden" name="paths" value=(serde_json::to_string(&joined).unwrap_or_default());
    };
    dialog(
        &title,
        command,
        &format!("/vm/{}/discard", vm.name),
        extra,
        None,
    )
}

/// The result of an operation, in the dialog area.
pub fn outcome(op_line: &str, result: &Result<String, String>, then: Option<&str>) -> Markup {
    html! {
        div class="modal" role="dialog" aria-modal="true" aria-labelledby="dlg-title" {
            @match result {
                Ok(out) => {
                    h2 id="dlg-title" { "Done" }
                    pre class="cmd" { code { (op_line) } }
                    @if !out.trim().is_empty() { pre class="out" { (out) } }
                }
                Err(e) => {
                    h2 id="dlg-title" class="error" { "Failed" }
                    pre class="cmd" { code { (op_line) } }
                    p class="error" role="alert" { (e) }
                }
            }
            div class="buttons" {
                @if let Some(href) = then {
                    button type="button" data-close="dialog" data-go=(href) { "Close" }
                } @else {
                    button type="button" data-close="dialog" { "Close" }
                }
            }
        }
    }
}

/// A node of the changes tree: a path's components, with the change at it.
#[derive(Debug, Default)]
struct Node {
    change: Option<Change>,
    children: BTreeMap<String, Node>,
}

fn tree(changes: &[Change]) -> Node {
    let mut root = Node::default();
    for c in changes {
        let mut node = &mut root;
        for part in c.path.iter().skip(1) {
            node = node
                .children
                .entry(part.to_string_lossy().into_owned())
                .or_default();
        }
        node.change = Some(c.clone());
    }
    root
}

/// A name or path from a VM as a person should see it: quoted, with its
/// control, invisible and direction characters escaped, as `fvm diff` shows it
/// (a right-to-left override would make it read as another name). Attributes
/// that name the path for a request keep it as it is.
fn shown(name: &str) -> String {
    fvm_engine::os::quote::bytes(name.as_bytes()).into_owned()
}

/// Other text from a VM (a command line, a user name): control, invisible and
/// direction characters escaped, as `fvm ps` shows them.
fn text(s: &str) -> std::borrow::Cow<'_, str> {
    fvm_engine::os::quote::line(s)
}

fn render_node(vm: &str, path: &Path, name: &str, node: &Node, read_only: bool) -> Markup {
    let p = path.to_string_lossy();
    html! {
        li role="treeitem" aria-expanded=[(!node.children.is_empty()).then_some("true")] {
            span class="row" {
                @if !read_only {
                    input type="checkbox" class="pick" data-path=(p) data-change=[node.change.as_ref().map(|_| "1")] aria-label={"Select " (shown(&p))};
                }
                @if let Some(c) = &node.change {
                    span class={"kind k" (c.kind)} title=(kind_name(c.kind)) { (c.kind) }
                    button type="button" class="link" hx-get={"/vm/" (vm) "/preview"}
                        hx-vals=(serde_json::json!({"path": p}).to_string()) hx-target="#preview" { (shown(name)) }
                } @else {
                    span class="kind" {}
                    span class="dir" { (shown(name)) "/" }
                }
            }
            @if !node.children.is_empty() {
                ul role="group" {
                    @for (n, child) in &node.children {
                        (render_node(vm, &path.join(n), n, child, read_only))
                    }
                }
            }
        }
    }
}

fn kind_name(k: char) -> &'static str {
    match k {
        'A' => "added",
        'C' => "changed",
        _ => "deleted",
    }
}

/// The changes tab: a tree of A/C/D with tri-state checkboxes, a preview pane,
/// and the commit controls.
pub fn changes(vm: &str, changes: &[Change], read_only: bool) -> Markup {
    let root = tree(changes);
    html! {
        p { (changes.len()) " changed paths. " code { "fvm diff " (vm) } }
        div class="changes" {
            div class="picker" data-widget="picker" {
                @if !read_only && !changes.is_empty() {
                    div class="bulk" {
                        label { input type="checkbox" class="pick-all" aria-label="Select all"; " all" }
                        button type="button" class="review" hx-post={"/vm/" (vm) "/commit/plan"}
                            hx-target="#plan" hx-include="#picked" { "Review commit…" }
                        button type="button" class="discard danger" hx-post={"/vm/" (vm) "/discard/dialog"}
                            hx-target="#dialog" hx-include="#picked-exact" { "Discard…" }
                    }
                    form id="picked" { input type="hidden" name="paths" value=""; }
                    form id="picked-exact" { input type="hidden" name="paths" value=""; }
                }
                ul role="tree" aria-label="Changes" class="tree" {
                    @for (n, child) in &root.children {
                        (render_node(vm, &PathBuf::from("/").join(n), n, child, read_only))
                    }
                }
            }
            div id="preview" class="preview" aria-live="polite" { p class="hint" { "Pick a file to see what changed." } }
        }
        div id="plan" {}
    }
}

fn side(title: &str, s: Option<&Side>) -> Markup {
    html! {
        div class="side" {
            h3 { (title) }
            @match s {
                None => p { "absent" }
                Some(s) => {
                    p { (s.kind) ", mode " (format!("{:04o}", s.mode)) ", owner " (s.uid) ":" (s.gid)
                        @if s.kind == "file" { ", " (size(s.size)) } }
                    @if let Some(t) = &s.target { p { "→ " code { (shown(t)) } } }
                    @if s.kind == "file" && s.text.is_none() { p { "binary file" } }
                }
            }
        }
    }
}

/// One file's preview: both versions' kind, mode, owner and target, and a line
/// diff of text.
pub fn preview(path: &Path, p: &Preview) -> Markup {
    let diff = match (
        p.host.as_ref().and_then(|s| s.text.as_deref()),
        p.vm.as_ref().and_then(|s| s.text.as_deref()),
    ) {
        (None, None) => None,
        (h, v) => Some(line_diff(h.unwrap_or(""), v.unwrap_or(""))),
    };
    html! {
        h3 class="path" { (shown(&path.to_string_lossy())) }
        div class="sides" { (side("Host", p.host.as_ref())) (side("VM", p.vm.as_ref())) }
        @if let Some(lines) = diff {
            pre class="diff" {
                @for (mark, line) in lines {
                    span class={"d" (match mark { '+' => "add", '-' => "del", _ => "same" })} { (mark) " " (line) "\n" }
                }
            }
        }
    }
}

/// A line diff by longest common subsequence (small inputs; larger ones show
/// the two sides whole).
pub fn line_diff<'a>(a: &'a str, b: &'a str) -> Vec<(char, &'a str)> {
    let a: Vec<&str> = a.lines().collect();
    let b: Vec<&str> = b.lines().collect();
    if a.len() * b.len() > 4_000_000 {
        let mut out: Vec<(char, &str)> = a.iter().map(|l| ('-', *l)).collect();
        out.extend(b.iter().map(|l| ('+', *l)));
        return out;
    }
    let (n, m) = (a.len(), b.len());
    let mut lcs = vec![0u32; (n + 1) * (m + 1)];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i * (m + 1) + j] = if a[i] == b[j] {
                lcs[(i + 1) * (m + 1) + j + 1] + 1
            } else {
                lcs[(i + 1) * (m + 1) + j].max(lcs[i * (m + 1) + j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            out.push((' ', a[i]));
            i += 1;
            j += 1;
        } else if j < m && (i == n || lcs[i * (m + 1) + j + 1] >= lcs[(i + 1) * (m + 1) + j]) {
            out.push(('+', b[j]));
            j += 1;
        } else {
            out.push(('-', a[i]));
            i += 1;
        }
    }
    out
}

/// The dry run of a commit: its steps, and a choice for each conflict.
pub fn plan(vm: &str, paths: &[PathBuf], plan: &CommitPlan) -> Markup {
    let joined: Vec<String> = paths
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    html! {
        form class="plan" hx-post={"/vm/" (vm) "/commit"} hx-target="#plan" {
            h2 { "Commit " (paths.len()) " selected" }
            input type="hidden" name="paths" value=(serde_json::to_string(&joined).unwrap_or_default());
            @if !plan.conflicts.is_empty() {
                h3 { "Conflicts: the host changed these after the VM copied them" }
                ul class="conflicts" {
                    @for c in &plan.conflicts {
                        @let p = c.path.to_string_lossy();
                        li class="conflict" {
                            code { (shown(&p)) } (if c.deleted_on_host { " (deleted on the host)" } else { "" })
                            fieldset {
                                legend class="sr" { "Choice for " (shown(&p)) }
                                label { input type="radio" name={"c:" (p)} value="skip" checked; " skip" }
                                label { input type="radio" name={"c:" (p)} value="vm"; " VM wins" }
                            }
                        }
                    }
                }
            }
            h3 { "Dry run: " (plan.steps.len()) " steps" }
            pre class="steps" { @for s in &plan.steps { (s) "\n" } }
            @for (p, why) in &plan.skipped { p { "skipped " code { (shown(&p.to_string_lossy())) } ": " (why) } }
            div class="buttons" {
                button type="submit" { "Commit" }
            }
        }
    }
}

/// A commit at work: it asks again for its progress until it is done.
pub fn job(vm: &str, id: &str, (done, all): (usize, usize)) -> Markup {
    html! {
        div id="job" hx-get={"/vm/" (vm) "/commit/job/" (id)} hx-trigger="load delay:400ms" hx-swap="outerHTML" {
            p role="status" {
                "Committing… "
                @if all > 0 {
                    progress max=(all) value=(done) aria-label="Commit progress" {}
                    " " (done) "/" (all)
                }
            }
        }
    }
}

pub fn processes(vm: &str, procs: &[Process], read_only: bool) -> Markup {
    // Children by parent, roots are those whose parent is not in the VM.
    let pids: Vec<i32> = procs.iter().map(|p| p.host_pid).collect();
    let mut rows = Vec::new();
    fn walk<'a>(
        p: &'a Process,
        all: &'a [Process],
        depth: usize,
        rows: &mut Vec<(usize, &'a Process)>,
    ) {
        rows.push((depth, p));
        for c in all
            .iter()
            .filter(|c| c.host_ppid == p.host_pid && c.host_pid != p.host_pid)
        {
            if depth < 64 {
                walk(c, all, depth + 1, rows);
            }
        }
    }
    for p in procs.iter().filter(|p| !pids.contains(&p.host_ppid)) {
        walk(p, procs, 0, &mut rows);
    }
    html! {
        p { code { "fvm ps " (vm) } }
        table class="procs" {
            thead { tr { th { "PID" } th { "Host PID" } th { "User" } th { "%CPU" } th { "RSS" } th { "Command" } @if !read_only { th { "Signal" } } } }
            tbody {
                @for (depth, p) in rows {
                    tr {
                        td { (p.pid) } td { (p.host_pid) } td { (text(&p.user)) }
                        td { (format!("{:.1}", p.cpu_percent)) } td { (size(p.rss)) }
                        td class={"cmd depth" (depth.min(8))} { (text(&p.command)) }
                        @if !read_only {
                            td {
                                button hx-post={"/vm/" (vm) "/kill"} hx-target="#tab"
                                    hx-vals=(serde_json::json!({"pid": p.host_pid, "signal": 15, "tree": false}).to_string()) { "Kill" }
                                " "
                                button hx-post={"/vm/" (vm) "/kill"} hx-target="#tab" class="danger"
                                    hx-vals=(serde_json::json!({"pid": p.host_pid, "signal": 9, "tree": true}).to_string()) { "Kill tree" }
                            }
                        }
                    }
                }
            }
        }
    }
}

pub fn graphs(vm: &str) -> Markup {
    html! {
        p { "One point a second, kept by the server for an hour: the history survives leaving this page. " code { "fvm stats --watch " (vm) } }
        div class="graphs" data-widget="graphs" data-vm=(vm) {
            @for (id, title) in [("cpu", "CPU (% of one core)"), ("mem", "Memory and its limit"), ("procs", "Processes and their limit"), ("io", "I/O (bytes/s)")] {
                figure { figcaption { (title) } div class="chart" data-chart=(id) {} }
            }
            ul class="markers" aria-label="Events" {}
        }
    }
}

pub fn policy(vm: &Vm, read_only: bool) -> Markup {
    html! {
        form class="policy" hx-post={"/vm/" (vm.name) "/policy/check"} hx-target="#policy-result" {
            fieldset {
                legend { "Limits (empty: none)" }
                @for key in fvm_engine::limits::Key::ALL {
                    @let id = format!("limit-{}", key.name());
                    label for=(id) { (key.name()) }
                    input id=(id) name=(id) type="text" value=(vm.limits.get(key).unwrap_or_default()) disabled[read_only];
                }
            }
            (net_fields(vm, read_only))
            @if !read_only {
                div class="buttons" { button type="submit" { "Check" } }
            }
        }
        div id="policy-result" aria-live="polite" {}
    }
}

fn net_fields(vm: &Vm, read_only: bool) -> Markup {
    html! {
        fieldset {
            legend { "Network" }
            @for key in NET_KEYS {
                @let id = format!("net-{}", key.name());
                @let value = net_text(&vm.network, key);
                label for=(id) { (key.name()) }
                @match key {
                    fvm_engine::net::NetKey::Nat => input id=(id) name=(id) type="checkbox" checked[vm.network.nat()] disabled[read_only];,
                    fvm_engine::net::NetKey::Net | fvm_engine::net::NetKey::Ip => input id=(id) name=(id) type="text" value=(value) disabled[read_only];,
                    _ => textarea id=(id) name=(id) rows="2" disabled[read_only] { (value) },
                }
            }
        }
    }
}

pub fn policy_check(
    vm: &str,
    edit: &Result<crate::policy::Edit, String>,
    read_only: bool,
) -> Markup {
    html! {
        @match edit {
            Err(e) => p class="error" role="alert" { (e) },
            Ok(e) if e.args.is_empty() => p { "Nothing changed." },
            Ok(e) => {
                @let op = Op::Config { name: vm.to_owned(), args: e.args.clone() };
                pre class="cmd" { code { (op.command_line()) } }
                ul {
                    @if !e.live.is_empty() { li { "Applied to the running VM at once: " (e.live.join(", ")) } }
                    @if !e.new_processes.is_empty() { li { "Reach processes started from now on: " (e.new_processes.join(", ")) } }
                    @if !e.next_start.is_empty() { li { "Take effect when the VM next starts: " (e.next_start.join(", ")) } }
                }
                @if !read_only {
                    form hx-post={"/vm/" (vm) "/policy/save"} hx-target="#dialog" hx-include=".policy" {
                        button type="submit" { "Save" }
                    }
                }
            }
        }
    }
}

pub fn network(vm: &Vm, read_only: bool) -> Markup {
    let n = &vm.network;
    html! {
        dl class="facts" {
            dt { "Mode" } dd { (n.mode.as_str()) }
            dt { "Address" } dd { (n.ip.map(|i| i.to_string()).unwrap_or_else(|| "-".to_owned())) }
            dt { "NAT" } dd { (if n.nat() { "on" } else { "off" }) }
            dt { "Published" } dd { (net_text(n, fvm_engine::net::NetKey::Publish)) }
            dt { "Allowed" } dd { (net_text(n, fvm_engine::net::NetKey::Allow)) }
            dt { "Denied" } dd { (net_text(n, fvm_engine::net::NetKey::Deny)) }
            dt { "DNS" } dd { (net_text(n, fvm_engine::net::NetKey::Dns)) }
        }
        p { code { "fvm network" } " shows the store's bridge." }
        form class="policy" hx-post={"/vm/" (vm.name) "/policy/check"} hx-target="#policy-result" {
            (net_fields(vm, read_only))
            @if !read_only { div class="buttons" { button type="submit" { "Check" } } }
        }
        div id="policy-result" aria-live="polite" {}
    }
}

/// How many log lines the Services tab shows before it follows new ones.
pub const LOG_TAIL: usize = 200;

/// The Services tab: each service's state, restart policy and last end, with
/// start, stop and restart; then the last lines of the logs, followed live.
pub fn services(
    vm: &Vm,
    services: &[ServiceRow],
    sources: &[String],
    source: Option<&str>,
    lines: &[fvm_engine::logs::Entry],
    read_only: bool,
) -> Markup {
    let actions: &[(&str, &str)] = &[
        ("start", "Start…"),
        ("stop", "Stop…"),
        ("restart", "Restart…"),
    ];
    let base = format!("/vm/{}/services", vm.name);
    html! {
        p { code { "fvm service " (vm.name) " status" } }
        @if services.is_empty() {
            p { "This VM has no services. " code { "fvm config " (vm.name) " --service NAME='CMD'" } " adds one." }
        } @else {
            table class="services" {
                thead { tr {
                    th { "Service" } th { "State" } th { "PID" } th { "Restart" } th { "Restarts" }
                    th { "Since" } th { "Last end" } th { "Command" }
                    @if !read_only { th { "Actions" } }
                } }
                tbody {
                    @for s in services {
                        tr data-service=(s.name) {
                            td { (text(&s.name)) }
                            td { span class={"state svc-" (s.state)} { (s.state) } }
                            td { (s.pid.map_or("-".to_owned(), |p| p.to_string())) }
                            td { (s.restart) }
                            td { (s.restarts) }
                            td { (s.since.as_deref().unwrap_or("-")) }
                            td { (text(s.last_end.as_deref().unwrap_or("-"))) }
                            td class="cmd" { code { (text(&s.command)) } }
                            @if !read_only {
                                td {
                                    @if vm.running() {
                                        @for (action, label) in actions {
                                            button hx-get={"/vm/" (vm.name) "/service/dialog/" (action)}
                                                hx-vals=(serde_json::json!({"service": s.name}).to_string())
                                                hx-target="#dialog" aria-label={(label) " " (s.name)} { (label) }
                                            " "
                                        }
                                    } @else {
                                        "VM stopped"
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Logs" }
        div class="toolbar" {
            p { code { "fvm logs " (vm.name) @if let Some(s) = source { " " (text(s)) } " --tail " (LOG_TAIL) " -f" } }
            label { "Source: "
                select name="source" hx-get=(base) hx-target="#main" hx-push-url="true" {
                    option value="" selected[source.is_none()] { "all" }
                    @for s in sources {
                        option value=(s) selected[source == Some(s.as_str())] { (text(s)) }
                    }
                }
            }
        }
        div class="logs" data-widget="logs" data-vm=(vm.name) data-source=(source.unwrap_or("")) {
            div class="loglines" role="log" aria-label="Log lines" tabindex="0" {
                (log_lines(lines))
            }
        }
    }
}

/// Log lines, each escaped as hostile: the markup escapes HTML, and control,
/// invisible and direction characters (an ANSI escape) show as `\x1b`.
pub fn log_lines(lines: &[fvm_engine::logs::Entry]) -> Markup {
    html! {
        @if lines.is_empty() { p class="hint" { "No log lines yet." } }
        @for e in lines {
            div class={"logline s-" (stream(e))} {
                span class="t" { (e.time) } " "
                span class="src" { (text(&e.source)) @if let Some(p) = e.pid { "[" (p) "]" } } " "
                span class="stream" { (stream(e)) } " "
                span class="text" { (text(&e.line)) }
            }
        }
    }
}

fn stream(e: &fvm_engine::logs::Entry) -> &'static str {
    match e.stream {
        fvm_engine::logs::Stream::Stdout => "out",
        fvm_engine::logs::Stream::Stderr => "err",
        fvm_engine::logs::Stream::Fvm => "fvm",
    }
}

/// One log line as the page's script gets it over the WebSocket: its parts,
/// the VM's text already escaped as [`log_lines`] does.
pub fn log_json(e: &fvm_engine::logs::Entry) -> serde_json::Value {
    serde_json::json!({
        "time": e.time,
        "source": text(&e.source),
        "pid": e.pid,
        "stream": stream(e),
        "text": text(&e.line),
    })
}

pub fn shell(vm: &Vm) -> Markup {
    html! {
        @if vm.running() {
            p { "A new shell in the VM, like " code { "fvm shell " (vm.name) } ". It keeps running when you leave this page; " code { "exit" } " ends it." }
            div class="term" data-widget="terminal" data-vm=(vm.name) {}
            div class="buttons" {
                button type="button" class="term-new" { "New shell" }
                button type="button" class="term-copy" { "Copy selection" }
                button type="button" class="term-paste" { "Paste" }
            }
        } @else {
            p { "The VM is not running: start it for a shell." }
        }
    }
}

pub fn error(msg: &str) -> Markup {
    html! { p class="error" role="alert" { (msg) } }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_running_commit_shows_its_progress_and_asks_again() {
        let html = job("web1", "abc", (2, 3)).into_string();
        assert!(
            html.contains(r#"hx-get="/vm/web1/commit/job/abc""#),
            "{html}"
        );
        assert!(html.contains(r#"<progress max="3" value="2""#), "{html}");
        assert!(
            !job("web1", "abc", (0, 0))
                .into_string()
                .contains("<progress")
        );
    }

    #[test]
    fn diff_of_lines() {
        let d = line_diff("a\nb\nc\n", "a\nc\nd\n");
        assert_eq!(d, [(' ', "a"), ('-', "b"), (' ', "c"), ('+', "d")]);
    }

    #[test]
    fn direction_overrides_from_a_vm_are_escaped() {
        let p = Process {
            pid: 7,
            host_pid: 1007,
            host_ppid: 1,
            user: "ro\u{202e}ot".into(),
            cpu_percent: 0.0,
            rss: 0,
            command: "sleep 1 \u{202e}# a comment".into(),
        };
        let html = processes("web1", &[p], true).into_string();
        assert!(!html.contains('\u{202e}'), "{html}");
        assert!(html.contains("sleep 1 \\u{202e}# a comment"), "{html}");
    }

    #[test]
    fn log_lines_from_a_vm_are_escaped() {
        let e = fvm_engine::logs::Entry::now(
            "web",
            Some(7),
            fvm_engine::logs::Stream::Stdout,
            b"<img src=x onerror=alert(1)> \x1b[31mred\x1b[0m \xe2\x80\xae",
        );
        let html = log_lines(std::slice::from_ref(&e)).into_string();
        assert!(!html.contains("<img") && !html.contains('\x1b'), "{html}");
        assert!(!html.contains('\u{202e}'), "{html}");
        assert!(
            html.contains(r"&lt;img src=x onerror=alert(1)&gt; \x1b[31mred\x1b[0m"),
            "{html}"
        );
        let json = log_json(&e).to_string();
        assert!(
            !json.contains("\\u001b") && json.contains(r"\\x1b[31m"),
            "{json}"
        );
    }

    #[test]
    fn hostile_names_are_escaped() {
        let c = Change {
            path: PathBuf::from(crate::fake::HOSTILE_NAME),
            kind: 'A',
            size: 1,
        };
        let html = changes("web1", &[c], false).into_string();
        assert!(!html.contains("<img"), "{html}");
        assert!(
            html.contains("&lt;img src=x onerror=alert(1)&gt;"),
            "{html}"
        );
    }
}
