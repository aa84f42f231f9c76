//! The HTTP server: routes, the security layer every request passes, the page's
//! WebSocket (resource samples and shells, multiplexed), and the sampler.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Form, Path, Query, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use maud::Markup;
use tokio::sync::{broadcast, mpsc};

use crate::backend::{Backend, Op};
use crate::history::History;
use crate::pages;
use crate::security::{Audit, Auth, CSP, Hosts};
use crate::shell::{Event, Shells};

/// Where the console listens and who may use it.
#[derive(Debug, Clone)]
pub struct Options {
    /// A TCP address (loopback unless `allow_remote`).
    pub listen: SocketAddr,
    /// A Unix socket instead of TCP.
    pub socket: Option<PathBuf>,
    pub allow_remote: bool,
    pub read_only: bool,
    /// On a Unix socket: the uids and gids besides root that may connect.
    pub allow_uids: Vec<u32>,
    pub allow_gids: Vec<u32>,
    /// The audit log of mutating actions.
    pub audit: Option<PathBuf>,
}

/// Who is on the other end of a connection.
#[derive(Debug, Clone)]
pub enum Peer {
    Tcp(SocketAddr),
    Unix { uid: u32, gid: u32 },
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Tcp(a) => write!(f, "token@{a}"),
            Peer::Unix { uid, gid } => write!(f, "uid={uid},gid={gid}"),
        }
    }
}

struct TcpL(tokio::net::TcpListener);
struct UnixL {
    l: tokio::net::UnixListener,
    uids: Vec<u32>,
    gids: Vec<u32>,
}

impl axum::serve::Listener for TcpL {
    type Io = tokio::net::TcpStream;
    type Addr = Peer;
    async fn accept(&mut self) -> (Self::Io, Peer) {
        loop {
            match self.0.accept().await {
                Ok((s, a)) => return (s, Peer::Tcp(a)),
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    fn local_addr(&self) -> std::io::Result<Peer> {
        self.0.local_addr().map(Peer::Tcp)
    }
}

impl axum::serve::Listener for UnixL {
    type Io = tokio::net::UnixStream;
    type Addr = Peer;
    async fn accept(&mut self) -> (Self::Io, Peer) {
        loop {
            let s = match self.l.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            // SO_PEERCRED: who connected, as the kernel saw it at connect().
            match rustix::net::sockopt::socket_peercred(&s) {
                Ok(c) => {
                    let (uid, gid) = (c.uid.as_raw(), c.gid.as_raw());
                    if uid == 0 || self.uids.contains(&uid) || self.gids.contains(&gid) {
                        return (s, Peer::Unix { uid, gid });
                    }
                    tracing::warn!("refused a connection from uid {uid} gid {gid}");
                }
                Err(e) => tracing::warn!("cannot read a peer's credentials: {e}"),
            }
        }
    }
    fn local_addr(&self) -> std::io::Result<Peer> {
        Ok(Peer::Unix { uid: 0, gid: 0 })
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TcpL>> for Peer {
    fn connect_info(s: axum::serve::IncomingStream<'_, TcpL>) -> Peer {
        s.remote_addr().clone()
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, UnixL>> for Peer {
    fn connect_info(s: axum::serve::IncomingStream<'_, UnixL>) -> Peer {
        s.remote_addr().clone()
    }
}

pub struct App {
    backend: Arc<dyn Backend>,
    auth: Auth,
    hosts: Hosts,
    read_only: bool,
    audit: Option<Audit>,
    history: History,
    shells: Arc<Shells>,
    stats: broadcast::Sender<Arc<str>>,
    changed: Mutex<HashMap<String, (Instant, Option<usize>)>>,
    jobs: Mutex<HashMap<String, Arc<Job>>>,
}

type AppState = Arc<App>;

/// How long a VM's changed-file count shown in the list is reused.
const CHANGED_TTL: Duration = Duration::from_secs(30);

/// Bind, print (through `ready`) the URL with its token, and serve until the
/// process is interrupted.
pub fn run(
    opts: Options,
    backend: Arc<dyn Backend>,
    ready: impl FnOnce(&str) + Send + 'static,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(8)
        .enable_all()
        .build()?;
    rt.block_on(serve(opts, backend, ready))
}

async fn serve(
    opts: Options,
    backend: Arc<dyn Backend>,
    ready: impl FnOnce(&str) + Send + 'static,
) -> anyhow::Result<()> {
    let token = crate::security::random_token();
    let (stats, _) = broadcast::channel(16);
    let mk = |hosts: Hosts| {
        Arc::new(App {
            backend: backend.clone(),
            auth: Auth::new(token.clone()),
            hosts,
            read_only: opts.read_only,
            audit: opts.audit.clone().map(Audit::new),
            history: History::default(),
            shells: Arc::new(Shells::default()),
            stats: stats.clone(),
            changed: Mutex::new(HashMap::new()),
            jobs: Mutex::new(HashMap::new()),
        })
    };
    if let Some(path) = &opts.socket {
        if path.exists() {
            anyhow::bail!(
                "{} exists: remove it, or name another socket",
                path.display()
            );
        }
        let l = tokio::net::UnixListener::bind(path)
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", path.display()))?;
        let app = mk(Hosts::LoopbackAnyPort);
        start_tasks(&app);
        ready(&format!(
            "unix socket {}; forward a local port to it and open http://localhost:PORT/#token={token}",
            path.display()
        ));
        let l = UnixL {
            l,
            uids: opts.allow_uids.clone(),
            gids: opts.allow_gids.clone(),
        };
        let result = axum::serve(
            l,
            router(app.clone()).into_make_service_with_connect_info::<Peer>(),
        )
        .with_graceful_shutdown(shutdown())
        .await;
        app.shells.end_all();
        let _ = std::fs::remove_file(path);
        return result.map_err(Into::into);
    }
    if !opts.listen.ip().is_loopback() && !opts.allow_remote {
        anyhow::bail!(
            "{} is not a loopback address: the console is a root shell on a clone of this host; add --allow-remote to listen there anyway",
            opts.listen
        );
    }
    let l = tokio::net::TcpListener::bind(opts.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", opts.listen))?;
    let local = l.local_addr()?;
    if !local.ip().is_loopback() {
        tracing::warn!(
            "listening on {local}, beyond this host: anyone who can reach it and has the token gets root on clones of this host; use TLS in front of it"
        );
    }
    let own = (!local.ip().is_loopback()).then(|| local.to_string());
    let app = mk(Hosts::for_port(local.port(), own));
    start_tasks(&app);
    let host = if local.ip().is_loopback() {
        format!("127.0.0.1:{}", local.port())
    } else {
        local.to_string()
    };
    ready(&format!("http://{host}/#token={token}"));
    let result = axum::serve(
        TcpL(l),
        router(app.clone()).into_make_service_with_connect_info::<Peer>(),
    )
    .with_graceful_shutdown(shutdown())
    .await;
    app.shells.end_all();
    result.map_err(Into::into)
}

async fn shutdown() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}

/// The sampler (1 Hz, running VMs only) and the idle-shell reaper.
fn start_tasks(app: &AppState) {
    let a = app.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            let b = a.backend.clone();
            let Ok(samples) = tokio::task::spawn_blocking(move || b.samples()).await else {
                continue;
            };
            let points = a.history.record(samples);
            if a.stats.receiver_count() > 0 {
                let map: BTreeMap<String, crate::history::Point> = points.into_iter().collect();
                let msg = serde_json::json!({"op": "stats", "vms": map}).to_string();
                let _ = a.stats.send(msg.into());
            }
        }
    });
    let a = app.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(60)).await;
            a.shells.reap_idle();
        }
    });
}

fn router(app: AppState) -> Router {
    Router::new()
        .route("/assets/{file}", get(asset))
        .route("/api/ticket", post(ticket))
        .route("/api/history/{name}", get(history))
        .route("/api/sparks", get(sparks))
        .route("/ws", get(ws))
        .route("/", get(list))
        .route("/dialog/create", get(create_dialog))
        .route("/create", post(create))
        .route("/bulk", post(bulk))
        .route("/bulk/delete", post(bulk_delete))
        .route("/vm/{name}", get(vm_overview))
        .route("/vm/{name}/{tab}", get(vm_tab))
        .route("/vm/{name}/dialog/{op}", get(op_dialog))
        .route("/vm/{name}/op/{op}", post(op_run))
        .route("/vm/{name}/preview", get(preview))
        .route("/vm/{name}/commit/plan", post(commit_plan))
        .route("/vm/{name}/commit", post(commit))
        .route("/vm/{name}/commit/job/{id}", get(commit_job))
        .route("/vm/{name}/logs", get(logs))
        .route("/vm/{name}/service/dialog/{action}", get(service_dialog))
        .route("/vm/{name}/service/{action}", post(service_op))
        .route("/vm/{name}/discard/dialog", post(discard_dialog))
        .route("/vm/{name}/discard", post(discard))
        .route("/vm/{name}/kill", post(kill))
        .route("/vm/{name}/policy/check", post(policy_check))
        .route("/vm/{name}/policy/save", post(policy_save))
        .layer(axum::middleware::from_fn_with_state(app.clone(), guard))
        .with_state(app)
}

fn status(code: StatusCode, msg: &str) -> Response {
    (code, msg.to_owned()).into_response()
}

/// Every request: the Host allowlist, then the token (or a page navigation,
/// which gets the frame only), the Origin of anything that is not a GET, the
/// read-only mode; and the security headers on every response.
async fn guard(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let mut resp = check(&app, req, next).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

async fn check(app: &App, req: Request, next: Next) -> Response {
    let headers = req.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if !app.hosts.allows(host) {
        return status(StatusCode::MISDIRECTED_REQUEST, "unknown host");
    }
    let path = req.uri().path();
    let method = req.method().clone();
    if method == Method::GET && path.starts_with("/assets/") {
        return next.run(req).await;
    }
    let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok());
    let is_ws = path == "/ws";
    if (method != Method::GET || is_ws) && !origin.is_some_and(|o| app.hosts.origin_ok(o, host)) {
        return status(StatusCode::FORBIDDEN, "cross-origin request refused");
    }
    if is_ws {
        // Authorized by its single-use ticket (a browser can't set headers on
        // a WebSocket), checked by the handler.
        return next.run(req).await;
    }
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|a| a.to_str().ok());
    if !app.auth.bearer_ok(auth) {
        let navigation =
            method == Method::GET && auth.is_none() && !headers.contains_key("hx-request");
        if navigation {
            // The page frame: no data; its script brings the token.
            return html(pages::frame(app.read_only, crate::assets::available()));
        }
        return status(StatusCode::UNAUTHORIZED, "missing or wrong token");
    }
    let mutating = method != Method::GET
        && path != "/api/ticket"
        && !path.ends_with("/policy/check")
        && !path.ends_with("/commit/plan");
    if app.read_only && (mutating || path.ends_with("/shell")) {
        return status(StatusCode::FORBIDDEN, "the console is read-only");
    }
    next.run(req).await
}

fn html(m: Markup) -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        m.into_string(),
    )
        .into_response()
}

/// A backend call on a blocking thread; a failure as the error fragment.
async fn call<T: Send + 'static>(
    app: &App,
    f: impl FnOnce(&dyn Backend) -> Result<T, String> + Send + 'static,
) -> Result<T, Response> {
    let b = app.backend.clone();
    blocking(move || f(&*b))
        .await
        .map_err(|e| html(pages::error(&e)))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("a backend call panicked")
}

async fn asset(Path(file): Path<String>) -> Response {
    match crate::assets::get(&file) {
        Some((kind, bytes)) => ([(header::CONTENT_TYPE, kind)], bytes).into_response(),
        None => status(StatusCode::NOT_FOUND, "no such file"),
    }
}

async fn ticket(State(app): State<AppState>) -> Response {
    app.auth.ticket().into_response()
}

async fn history(State(app): State<AppState>, Path(name): Path<String>) -> Response {
    axum::Json(app.history.snapshot(&name, crate::history::POINTS)).into_response()
}

async fn sparks(State(app): State<AppState>) -> Response {
    let b = app.backend.clone();
    let names: Vec<String> = blocking(move || b.list())
        .await
        .map(|l| l.into_iter().map(|v| v.name).collect())
        .unwrap_or_default();
    app.history.retain(&names);
    let map: BTreeMap<&String, _> = names
        .iter()
        .map(|n| (n, app.history.snapshot(n, 60).points))
        .collect();
    axum::Json(map).into_response()
}

async fn list(State(app): State<AppState>) -> Response {
    let b = app.backend.clone();
    let vms = match blocking(move || b.list()).await {
        Ok(v) => v,
        Err(e) => return html(pages::error(&e)),
    };
    let mut changed = BTreeMap::new();
    let stale: Vec<String> = {
        let cache = app.changed.lock().unwrap_or_else(|e| e.into_inner());
        vms.iter()
            .filter(|v| {
                cache
                    .get(&v.name)
                    .is_none_or(|(at, _)| at.elapsed() > CHANGED_TTL)
            })
            .map(|v| v.name.clone())
            .collect()
    };
    let b = app.backend.clone();
    let fresh: Vec<(String, Option<usize>)> = blocking(move || {
        stale
            .into_iter()
            .map(|n| {
                let c = b.changes(&n).ok().map(|c| c.len());
                (n, c)
            })
            .collect()
    })
    .await;
    {
        let mut cache = app.changed.lock().unwrap_or_else(|e| e.into_inner());
        for (n, c) in fresh {
            cache.insert(n, (Instant::now(), c));
        }
        cache.retain(|n, _| vms.iter().any(|v| &v.name == n));
        for v in &vms {
            changed.insert(v.name.clone(), cache.get(&v.name).and_then(|c| c.1));
        }
    }
    html(pages::list(&vms, &changed, app.read_only))
}

async fn vm_overview(state: State<AppState>, Path(name): Path<String>) -> Response {
    vm_tab(
        state,
        Path((name, "overview".to_owned())),
        Query(HashMap::new()),
    )
    .await
}

async fn vm_tab(
    State(app): State<AppState>,
    Path((name, tab)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let n = name.clone();
    let vm = match call(&app, move |b| b.vm(&n)).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let b = app.backend.clone();
    let ro = app.read_only;
    let content = match tab.as_str() {
        "overview" => pages::overview(&vm),
        "changes" => match blocking(move || b.changes(&name)).await {
            Ok(c) => pages::changes(&vm.name, &c, ro),
            Err(e) => pages::error(&e),
        },
        "graphs" => pages::graphs(&vm.name),
        "processes" => match blocking(move || b.processes(&name)).await {
            Ok(p) => pages::processes(&vm.name, &p, ro),
            Err(e) => pages::error(&e),
        },
        "policy" => pages::policy(&vm, ro),
        "network" => pages::network(&vm, ro),
        "services" => {
            let source = q.get("source").filter(|s| !s.is_empty()).cloned();
            let read = blocking(move || {
                let services = b.services(&name)?;
                let logs = b.logs(&name)?;
                let lines = read_logs(&logs, source.clone());
                Ok::<_, String>((services, logs.sources(), source, lines))
            });
            match read.await {
                Ok((services, sources, source, lines)) => {
                    pages::services(&vm, &services, &sources, source.as_deref(), &lines, ro)
                }
                Err(e) => pages::error(&e),
            }
        }
        "shell" if !ro => pages::shell(&vm),
        _ => return status(StatusCode::NOT_FOUND, "no such tab"),
    };
    html(pages::vm_page(&vm, &tab, ro, content))
}

/// The last [`pages::LOG_TAIL`] lines of a VM's logs (of one source, a
/// service's name or `run`, if given).
fn read_logs(
    logs: &fvm_engine::logs::Logs,
    source: Option<String>,
) -> Vec<fvm_engine::logs::Entry> {
    logs.read(&fvm_engine::logs::Query {
        source: source.filter(|s| logs.sources().contains(s)),
        since: None,
        tail: Some(pages::LOG_TAIL),
    })
}

/// The log lines alone (the page takes them again after its WebSocket was
/// away, then follows).
async fn logs(
    State(app): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let source = q.get("source").filter(|s| !s.is_empty()).cloned();
    match call(&app, move |b| Ok(read_logs(&b.logs(&name)?, source))).await {
        Ok(lines) => html(pages::log_lines(&lines)),
        Err(r) => r,
    }
}

/// A service operation: `action` start, stop or restart; `service` a valid
/// service name, or none for all of them.
fn service_op_for(name: &str, action: &str, service: Option<&String>) -> Result<Op, String> {
    if !["start", "stop", "restart"].contains(&action) {
        return Err("no such service action".to_owned());
    }
    let service = service.filter(|s| !s.is_empty()).cloned();
    if let Some(s) = &service {
        fvm_engine::store::service::ServiceName::new(s).map_err(|e| e.to_string())?;
    }
    Ok(Op::Service {
        name: name.to_owned(),
        service,
        action: action.to_owned(),
    })
}

async fn service_dialog(
    Path((name, action)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let op = match service_op_for(&name, &action, q.get("service")) {
        Ok(o) => o,
        Err(e) => return status(StatusCode::BAD_REQUEST, &e),
    };
    let Op::Service { service, .. } = &op else {
        unreachable!("a service operation")
    };
    let what = service.as_deref().unwrap_or("every service");
    let title = match action.as_str() {
        "start" => "Start",
        "stop" => "Stop",
        _ => "Restart",
    };
    let extra = maud::html! {
        @if let Some(s) = service { input type="hidden" name="service" value=(s); }
        p { (title) " " (what) " of " (name) "." }
    };
    html(pages::dialog(
        &format!("{title} {what}"),
        &op.command_line(),
        &format!("/vm/{name}/service/{action}"),
        extra,
        None,
    ))
}

async fn service_op(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path((name, action)): Path<(String, String)>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let op = match service_op_for(&name, &action, form.get("service")) {
        Ok(o) => o,
        Err(e) => return status(StatusCode::BAD_REQUEST, &e),
    };
    let line = op.command_line();
    let result = run_op(&app, &peer, op).await;
    let then = format!("/vm/{name}/services");
    html(pages::outcome(
        &line,
        &result,
        result.is_ok().then_some(then.as_str()),
    ))
}

fn op_for(name: &str, op: &str, form: &HashMap<String, String>) -> Option<Op> {
    let n = name.to_owned();
    Some(match op {
        "start" => Op::Start(n),
        "stop" => Op::Stop(n),
        "suspend" => Op::Suspend(n),
        "resume" => Op::Resume(n),
        "delete" => Op::Delete(n),
        "copy" => Op::Copy {
            src: n,
            dst: form.get("dst").cloned().unwrap_or_else(|| "NEW".to_owned()),
        },
        _ => return None,
    })
}

async fn op_dialog(Path((name, op)): Path<(String, String)>) -> Response {
    let Some(o) = op_for(&name, &op, &HashMap::new()) else {
        return status(StatusCode::NOT_FOUND, "no such operation");
    };
    let post = format!("/vm/{name}/op/{op}");
    let title = match op.as_str() {
        "start" => "Start",
        "stop" => "Stop",
        "suspend" => "Suspend",
        "resume" => "Resume",
        "delete" => "Delete",
        _ => "Copy",
    };
    let extra = if op == "copy" {
        maud::html! { label { "New VM's name: " input type="text" name="dst" required pattern=r"[a-z0-9][a-z0-9_.\-]{0,62}"; } }
    } else if op == "delete" {
        maud::html! { p class="error" { "This deletes the VM and every change it holds." } }
    } else {
        maud::html! {}
    };
    let confirm = (op == "delete").then_some(name.as_str());
    html(pages::dialog(
        &format!("{title} {name}"),
        &o.command_line(),
        &post,
        extra,
        confirm,
    ))
}

async fn run_op(app: &AppState, peer: &Peer, op: Op) -> Result<String, String> {
    run_op_progress(app, peer, op, Arc::new(|_, _| {})).await
}

async fn run_op_progress(
    app: &AppState,
    peer: &Peer,
    op: Op,
    progress: Arc<dyn Fn(usize, usize) + Send + Sync>,
) -> Result<String, String> {
    let line = op.command_line();
    let b = app.backend.clone();
    let o = op.clone();
    let result = match op.check_names() {
        Ok(()) => blocking(move || b.run_progress(&o, &*progress)).await,
        Err(e) => Err(e),
    };
    if let Some(audit) = &app.audit {
        let outcome = match &result {
            Ok(_) => "ok".to_owned(),
            Err(e) => format!("failed: {e}"),
        };
        audit.record(&peer.to_string(), &line, &outcome);
    }
    app.changed
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(op.vm());
    result
}

async fn op_run(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path((name, op)): Path<(String, String)>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let Some(o) = op_for(&name, &op, &form) else {
        return status(StatusCode::NOT_FOUND, "no such operation");
    };
    if op == "delete" && form.get("confirm").map(|c| c.trim()) != Some(name.as_str()) {
        return html(pages::outcome(
            &o.command_line(),
            &Err(format!("type {name} to delete it")),
            None,
        ));
    }
    let line = o.command_line();
    let result = run_op(&app, &peer, o).await;
    let then = if op == "delete" {
        "/".to_owned()
    } else if op == "copy" {
        format!("/vm/{}", form.get("dst").map_or("", String::as_str))
    } else {
        format!("/vm/{name}")
    };
    html(pages::outcome(
        &line,
        &result,
        result.is_ok().then_some(then.as_str()),
    ))
}

async fn create_dialog() -> Response {
    let op = Op::Create {
        name: "NAME".to_owned(),
        args: Vec::new(),
    };
    let extra = maud::html! {
        label { "Name: " input type="text" name="name" required pattern=r"[a-z0-9][a-z0-9_.\-]{0,62}"; }
        label { "Memory limit (optional): " input type="text" name="memory" placeholder="512M"; }
        label { "Description (optional): " input type="text" name="description"; }
    };
    html(pages::dialog(
        "Create",
        &op.command_line(),
        "/create",
        extra,
        None,
    ))
}

async fn create(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let name = form
        .get("name")
        .map(|n| n.trim().to_owned())
        .unwrap_or_default();
    let mut args = Vec::new();
    if let Some(m) = form.get("memory").filter(|m| !m.trim().is_empty()) {
        // One word each: a value starting with `-` stays a value.
        args.push(format!("--memory={}", m.trim()));
    }
    if let Some(d) = form.get("description").filter(|d| !d.trim().is_empty()) {
        args.push(format!("--description={}", d.trim()));
    }
    let op = Op::Create {
        name: name.clone(),
        args,
    };
    let line = op.command_line();
    let result = run_op(&app, &peer, op).await;
    html(pages::outcome(&line, &result, Some(&format!("/vm/{name}"))))
}

fn field<'a>(form: &'a [(String, String)], key: &str) -> impl Iterator<Item = &'a str> {
    form.iter()
        .filter(move |(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Run `ops` one after another; one outcome for all.
async fn run_all(app: &AppState, peer: &Peer, ops: Vec<Op>) -> Response {
    let mut lines = Vec::new();
    let mut failed = Vec::new();
    for op in ops {
        lines.push(op.command_line());
        if let Err(e) = run_op(app, peer, op).await {
            failed.push(e);
        }
    }
    let result = if failed.is_empty() {
        Ok(String::new())
    } else {
        Err(failed.join("\n"))
    };
    html(pages::outcome(&lines.join("\n"), &result, Some("/")))
}

/// Bulk start and stop run at once; bulk delete asks first.
async fn bulk(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let names: Vec<String> = field(&form, "vm").map(str::to_owned).collect();
    let action = field(&form, "action").next().unwrap_or("");
    if names.is_empty() {
        return html(pages::outcome(
            "",
            &Err("select VMs first".to_owned()),
            None,
        ));
    }
    let op: fn(String) -> Op = match action {
        "start" => Op::Start,
        "stop" => Op::Stop,
        "delete" => Op::Delete,
        _ => return status(StatusCode::BAD_REQUEST, "no such action"),
    };
    let ops: Vec<Op> = names.iter().cloned().map(op).collect();
    if action == "delete" {
        let extra = maud::html! {
            p { "Delete " (names.len()) " VMs and every change they hold: " strong { (names.join(" ")) } }
            @for n in &names { input type="hidden" name="vm" value=(n); }
        };
        let lines: Vec<String> = ops.iter().map(Op::command_line).collect();
        return html(pages::dialog(
            "Delete",
            &lines.join("\n"),
            "/bulk/delete",
            extra,
            Some(&names.len().to_string()),
        ));
    }
    run_all(&app, &peer, ops).await
}

async fn bulk_delete(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let names: Vec<String> = field(&form, "vm").map(str::to_owned).collect();
    if field(&form, "confirm").next().map(str::trim) != Some(names.len().to_string().as_str()) {
        return html(pages::outcome(
            "",
            &Err(format!("type {} to delete them", names.len())),
            None,
        ));
    }
    run_all(&app, &peer, names.into_iter().map(Op::Delete).collect()).await
}

#[derive(serde::Deserialize)]
struct PathQuery {
    path: String,
}

async fn preview(
    State(app): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<PathQuery>,
) -> Response {
    let b = app.backend.clone();
    let path = PathBuf::from(&q.path);
    let p = path.clone();
    // Only a changed path: a preview must not read any host file it is asked
    // for (in read-only mode, say).
    let previewed = blocking(move || {
        if !b.changes(&name)?.iter().any(|c| c.path == p) {
            return Err(format!("{} is not a change of this vm", p.display()));
        }
        b.preview(&name, &p)
    });
    match previewed.await {
        Ok(pv) => html(pages::preview(&path, &pv)),
        Err(e) => html(pages::error(&e)),
    }
}

fn paths_of(form: &[(String, String)]) -> Vec<PathBuf> {
    form.iter()
        .filter(|(k, _)| k == "paths")
        .filter_map(|(_, v)| serde_json::from_str::<Vec<String>>(v).ok())
        .flatten()
        .map(PathBuf::from)
        .collect()
}

async fn commit_plan(
    State(app): State<AppState>,
    Path(name): Path<String>,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let paths = paths_of(&form);
    if paths.is_empty() {
        return html(pages::error("select changes to commit first"));
    }
    let b = app.backend.clone();
    let (n, p) = (name.clone(), paths.clone());
    match blocking(move || b.commit_plan(&n, &p)).await {
        Ok(plan) => html(pages::plan(&name, &paths, &plan)),
        Err(e) => html(pages::error(&e)),
    }
}

/// Commit the selected paths: conflicts the user let the VM win go in a second
/// commit with `--force` for those paths only; skipped conflicts are left out.
async fn commit(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(name): Path<String>,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let paths = paths_of(&form);
    let choice: Vec<(PathBuf, bool)> = form
        .iter()
        .filter_map(|(k, v)| Some((PathBuf::from(k.strip_prefix("c:")?), v == "vm")))
        .collect();
    let n = name.clone();
    let changes = match call(&app, move |b| b.changes(&n)).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let (plain, forced) = split_selection(&paths, &choice, &changes);
    let job = Arc::new(Job::default());
    let id = crate::security::random_token();
    app.jobs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id.clone(), job.clone());
    let a = app.clone();
    let vm = name.clone();
    tokio::spawn(async move {
        let name = vm;
        let mut lines = Vec::new();
        let mut result = Ok(String::new());
        for (paths, force) in [(plain, false), (forced, true)] {
            if paths.is_empty() {
                continue;
            }
            let op = Op::Commit {
                name: name.clone(),
                paths,
                force,
            };
            lines.push(op.command_line());
            let j = job.clone();
            let progress = Arc::new(move |done, all| {
                *j.progress.lock().unwrap_or_else(|e| e.into_inner()) = (done, all);
            });
            match run_op_progress(&a, &peer, op, progress).await {
                Ok(o) => {
                    if let Ok(out) = &mut result {
                        out.push_str(&o);
                    }
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        let then = result.is_ok().then(|| format!("/vm/{name}/changes"));
        *job.done.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((lines.join("\n"), result, then));
    });
    html(pages::job(&name, &id, (0, 0)))
}

/// The dialog of a discard of the picked paths: the `fvm discard` command, and
/// on a running VM why it can't be done now (the engine refuses it: stop the
/// VM first).
async fn discard_dialog(
    State(app): State<AppState>,
    Path(name): Path<String>,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let paths = paths_of(&form);
    let op = Op::Discard {
        name: name.clone(),
        paths: paths.clone(),
    };
    if paths.is_empty() {
        return html(pages::outcome(
            &op.command_line(),
            &Err("select changes to discard first".to_owned()),
            None,
        ));
    }
    let n = name.clone();
    let vm = match call(&app, move |b| b.vm(&n)).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    html(pages::discard_dialog(&vm, &paths, &op.command_line()))
}

/// Discard the picked paths: the VM's changes at or under them go, and it sees
/// the host's version there again. Nothing is written to the host.
async fn discard(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(name): Path<String>,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let paths = paths_of(&form);
    let op = Op::Discard {
        name: name.clone(),
        paths: paths.clone(),
    };
    let line = op.command_line();
    if paths.is_empty() {
        return html(pages::outcome(
            &line,
            &Err("select changes to discard first".to_owned()),
            None,
        ));
    }
    let result = run_op(&app, &peer, op).await;
    let then = format!("/vm/{name}/changes");
    html(pages::outcome(
        &line,
        &result,
        result.is_ok().then_some(then.as_str()),
    ))
}

/// A commit running in the background: how far it got, and its outcome.
#[derive(Default)]
pub struct Job {
    progress: Mutex<(usize, usize)>,
    /// (command lines, outcome, where to go after)
    #[allow(clippy::type_complexity)]
    done: Mutex<Option<(String, Result<String, String>, Option<String>)>>,
}

/// A commit's progress, polled by its page until it is done.
async fn commit_job(
    State(app): State<AppState>,
    Path((name, id)): Path<(String, String)>,
) -> Response {
    let job = app
        .jobs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&id)
        .cloned();
    let Some(job) = job else {
        return html(pages::error("no such commit"));
    };
    let done = job.done.lock().unwrap_or_else(|e| e.into_inner()).take();
    match done {
        Some((lines, result, then)) => {
            app.jobs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
            html(pages::outcome(&lines, &result, then.as_deref()))
        }
        None => {
            let p = *job.progress.lock().unwrap_or_else(|e| e.into_inner());
            html(pages::job(&name, &id, p))
        }
    }
}

/// The two commits of a selection: `paths` (each covering everything below it)
/// less the conflicts, and the conflicts the VM wins (`choice`: path, VM wins).
/// A covering path with a conflict below it is replaced by the changes below it,
/// so that a skipped conflict is left out and a won one goes only with `--force`.
fn split_selection(
    paths: &[PathBuf],
    choice: &[(PathBuf, bool)],
    changes: &[crate::backend::Change],
) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let conflict = |p: &PathBuf| choice.iter().any(|(c, _)| c == p);
    let mut plain = Vec::new();
    for p in paths {
        if conflict(p) {
            continue;
        }
        if choice.iter().any(|(c, _)| c.starts_with(p)) {
            plain.extend(
                changes
                    .iter()
                    .map(|c| &c.path)
                    .filter(|c| c.starts_with(p) && !conflict(c))
                    .cloned(),
            );
        } else {
            plain.push(p.clone());
        }
    }
    let selected = |c: &PathBuf| paths.iter().any(|p| c.starts_with(p));
    let forced = choice
        .iter()
        .filter(|(c, vm)| *vm && selected(c))
        .map(|(c, _)| c.clone())
        .collect();
    (plain, forced)
}

async fn kill(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(name): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let pid: i32 = form.get("pid").and_then(|p| p.parse().ok()).unwrap_or(0);
    let signal: i32 = form
        .get("signal")
        .and_then(|p| p.parse().ok())
        .unwrap_or(15);
    let tree = form.get("tree").is_some_and(|t| t == "true");
    let b = app.backend.clone();
    let n = name.clone();
    let result = blocking(move || -> Result<Vec<crate::backend::Process>, String> {
        let procs = b.processes(&n)?;
        // The process and, for a tree, its descendants, deepest first.
        let mut targets = vec![pid];
        if tree {
            let mut i = 0;
            while i < targets.len() {
                let parent = targets[i];
                let children: Vec<i32> = procs
                    .iter()
                    .filter(|p| p.host_ppid == parent && !targets.contains(&p.host_pid))
                    .map(|p| p.host_pid)
                    .collect();
                targets.extend(children);
                i += 1;
            }
        }
        let mut first_err = None;
        for t in targets.iter().rev() {
            if let Err(e) = b.kill(&n, *t, signal) {
                first_err.get_or_insert(e);
            }
        }
        if let Some(e) = first_err.filter(|_| !tree) {
            return Err(e);
        }
        b.processes(&n)
    })
    .await;
    if let Some(audit) = &app.audit {
        let what = format!(
            "kill -{signal} {pid}{} (vm {name})",
            if tree { " and its descendants" } else { "" }
        );
        let outcome = result
            .as_ref()
            .map_or_else(|e| format!("failed: {e}"), |_| "ok".to_owned());
        audit.record(&peer.to_string(), &what, &outcome);
    }
    match result {
        Ok(p) => html(pages::processes(&name, &p, app.read_only)),
        Err(e) => html(pages::error(&e)),
    }
}

async fn policy_check(
    State(app): State<AppState>,
    Path(name): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let n = name.clone();
    let vm = match call(&app, move |b| b.vm(&n)).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    html(pages::policy_check(
        &name,
        &crate::policy::edit(&vm, &form),
        app.read_only,
    ))
}

async fn policy_save(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(name): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let n = name.clone();
    let vm = match call(&app, move |b| b.vm(&n)).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let edit = match crate::policy::edit(&vm, &form) {
        Ok(e) => e,
        Err(e) => return html(pages::error(&e)),
    };
    let op = Op::Config {
        name: name.clone(),
        args: edit.args,
    };
    let line = op.command_line();
    let result = run_op(&app, &peer, op).await;
    html(pages::outcome(
        &line,
        &result,
        Some(&format!("/vm/{name}/policy")),
    ))
}

#[derive(serde::Deserialize)]
struct TicketQuery {
    ticket: String,
}

async fn ws(
    State(app): State<AppState>,
    Query(q): Query<TicketQuery>,
    upgrade: WebSocketUpgrade,
) -> Response {
    if !app.auth.redeem(&q.ticket) {
        return status(StatusCode::FORBIDDEN, "unknown, used or expired ticket");
    }
    upgrade
        .max_message_size(1 << 20)
        .on_upgrade(move |socket| client(app, socket))
}

#[derive(serde::Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum ClientMsg {
    Open {
        vm: String,
        session: Option<String>,
        cols: u16,
        rows: u16,
    },
    In {
        ch: u8,
        data: String,
    },
    Resize {
        ch: u8,
        cols: u16,
        rows: u16,
    },
    Close {
        ch: u8,
    },
    /// Follow a VM's logs (of one source, if given): new lines come as `log`
    /// messages. One per page; a new one replaces it.
    Follow {
        vm: String,
        source: Option<String>,
    },
    Unfollow,
}

/// A log follower: a thread in the engine's `Logs::follow` (inotify, no
/// polling), which ends once this is dropped (its pipe's write end closes).
struct Follower {
    _stop: std::os::fd::OwnedFd,
}

/// Follow `logs` on a thread of its own (it blocks until the page stops it),
/// sending each new line to `tx`.
fn follow(
    vm: String,
    logs: fvm_engine::logs::Logs,
    source: Option<String>,
    tx: mpsc::Sender<Message>,
) -> std::io::Result<Follower> {
    let (stop_rx, stop_tx) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    let q = fvm_engine::logs::Query {
        source,
        since: None,
        tail: None,
    };
    std::thread::Builder::new()
        .name("fvm-ui-logs".to_owned())
        .spawn(move || {
            let sent = logs.follow(
                &q,
                &mut |e| {
                    let msg =
                        serde_json::json!({"op": "log", "vm": vm, "line": pages::log_json(e)});
                    tx.blocking_send(Message::Text(msg.to_string().into()))
                        .map_err(|_| std::io::Error::other("the page went away"))
                },
                std::os::fd::AsFd::as_fd(&stop_rx),
            );
            if let Err(e) = sent {
                tracing::debug!("following the logs of {vm}: {e}");
            }
        })?;
    Ok(Follower { _stop: stop_tx })
}

/// One page's WebSocket: resource samples out; shells in and out, each on a
/// channel number (binary frames: the channel, then the output bytes).
async fn client(app: AppState, mut socket: WebSocket) {
    let mut stats = app.stats.subscribe();
    let (out_tx, mut out_rx) = mpsc::channel::<Message>(64);
    let mut channels: HashMap<u8, (Arc<crate::shell::Session>, tokio::task::JoinHandle<()>)> =
        HashMap::new();
    let mut next_ch: u8 = 1;
    let mut follower: Option<Follower> = None;
    loop {
        tokio::select! {
            msg = socket.recv() => {
                let Some(Ok(msg)) = msg else { break };
                let Message::Text(text) = msg else { continue };
                let Ok(m) = serde_json::from_str::<ClientMsg>(text.as_str()) else { continue };
                match m {
                    ClientMsg::Open { vm, session, cols, rows } => {
                        if app.read_only {
                            let _ = socket.send(Message::Text(r#"{"op":"error","msg":"the console is read-only"}"#.into())).await;
                            continue;
                        }
                        let existing = session.and_then(|id| app.shells.get(&id, &vm));
                        let s = match existing {
                            Some(s) => Ok(s),
                            None => {
                                let b = app.backend.clone();
                                let v = vm.clone();
                                match blocking(move || b.shell(&v)).await {
                                    Ok(cmd) => app.shells.open(&vm, cmd, cols, rows),
                                    Err(e) => Err(e),
                                }
                            }
                        };
                        let s = match s {
                            Ok(s) => s,
                            Err(e) => {
                                let msg = serde_json::json!({"op": "error", "msg": e}).to_string();
                                let _ = socket.send(Message::Text(msg.into())).await;
                                continue;
                            }
                        };
                        s.resize(cols, rows).await;
                        let ch = next_ch;
                        next_ch = next_ch.wrapping_add(1).max(1);
                        let (scrollback, mut rx) = s.attach();
                        let hello = serde_json::json!({"op": "opened", "ch": ch, "session": s.id, "vm": s.vm}).to_string();
                        let _ = socket.send(Message::Text(hello.into())).await;
                        let mut first = vec![ch];
                        first.extend(scrollback);
                        let _ = socket.send(Message::Binary(first.into())).await;
                        let tx = out_tx.clone();
                        let task = tokio::spawn(async move {
                            loop {
                                match rx.recv().await {
                                    Ok(Event::Output(data)) => {
                                        let mut f = Vec::with_capacity(data.len() + 1);
                                        f.push(ch);
                                        f.extend_from_slice(&data);
                                        if tx.send(Message::Binary(f.into())).await.is_err() { break; }
                                    }
                                    Ok(Event::Ended) | Err(broadcast::error::RecvError::Closed) => {
                                        let msg = serde_json::json!({"op": "ended", "ch": ch}).to_string();
                                        let _ = tx.send(Message::Text(msg.into())).await;
                                        break;
                                    }
                                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                                }
                            }
                        });
                        if let Some((old, t)) = channels.insert(ch, (s, task)) {
                            t.abort();
                            old.detach();
                        }
                    }
                    ClientMsg::In { ch, data } => {
                        if let Some((s, _)) = channels.get(&ch) {
                            let _ = s.input(data.as_bytes()).await;
                        }
                    }
                    ClientMsg::Resize { ch, cols, rows } => {
                        if let Some((s, _)) = channels.get(&ch) {
                            s.resize(cols, rows).await;
                        }
                    }
                    ClientMsg::Close { ch } => {
                        if let Some((s, t)) = channels.remove(&ch) {
                            t.abort();
                            s.detach();
                        }
                    }
                    ClientMsg::Follow { vm, source } => {
                        follower = None;
                        let b = app.backend.clone();
                        let v = vm.clone();
                        match blocking(move || b.logs(&v)).await {
                            Ok(logs) => match follow(vm, logs, source.filter(|s| !s.is_empty()), out_tx.clone()) {
                                Ok(f) => follower = Some(f),
                                Err(e) => tracing::warn!("cannot follow logs: {e}"),
                            },
                            Err(e) => {
                                let msg = serde_json::json!({"op": "error", "msg": e}).to_string();
                                let _ = socket.send(Message::Text(msg.into())).await;
                            }
                        }
                    }
                    ClientMsg::Unfollow => follower = None,
                }
            }
            Some(out) = out_rx.recv() => {
                if socket.send(out).await.is_err() { break; }
            }
            s = stats.recv() => {
                match s {
                    Ok(text) => {
                        if socket.send(Message::Text(text.as_ref().into())).await.is_err() { break; }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        }
    }
    drop(follower);
    for (_, (s, t)) in channels {
        t.abort();
        s.detach();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_conflict_under_a_selected_directory_is_split_out() {
        let change = |p: &str| crate::backend::Change {
            path: PathBuf::from(p),
            kind: 'C',
            size: 0,
        };
        let changes = [
            change("/etc/a"),
            change("/etc/hosts"),
            change("/etc/z"),
            change("/usr/x"),
        ];
        let paths = [PathBuf::from("/etc"), PathBuf::from("/usr")];
        let p = |s: &str| PathBuf::from(s);
        // Skipped: the rest of /etc goes, /etc/hosts does not.
        let (plain, forced) = split_selection(&paths, &[(p("/etc/hosts"), false)], &changes);
        assert_eq!(plain, [p("/etc/a"), p("/etc/z"), p("/usr")]);
        assert!(forced.is_empty());
        // The VM wins: it goes in the forced commit alone.
        let (plain, forced) = split_selection(&paths, &[(p("/etc/hosts"), true)], &changes);
        assert_eq!(plain, [p("/etc/a"), p("/etc/z"), p("/usr")]);
        assert_eq!(forced, [p("/etc/hosts")]);
        // A conflict that is itself selected, and one that is not selected at all.
        let (plain, forced) = split_selection(
            &[p("/etc/hosts"), p("/usr")],
            &[(p("/etc/hosts"), true), (p("/var/y"), true)],
            &changes,
        );
        assert_eq!(plain, [p("/usr")]);
        assert_eq!(forced, [p("/etc/hosts")]);
    }
}
