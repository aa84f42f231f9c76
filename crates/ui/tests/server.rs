//! The console's guard over plain HTTP: read-only mode, the Unix socket and its
//! peer credentials, the token and the Host check.

use std::io::{Read, Write};
use std::sync::Arc;

mod common;

/// Send one HTTP/1.1 request (`Connection: close`) and return the response.
fn http(
    mut s: impl Read + Write,
    method: &str,
    path: &str,
    host: &str,
    headers: &[&str],
) -> String {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    if method == "POST" {
        req.push_str("Content-Type: application/x-www-form-urlencoded\r\n");
    }
    req.push_str("Content-Length: 0\r\n\r\n");
    s.write_all(req.as_bytes()).expect("send");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn status(resp: &str) -> &str {
    resp.split(' ').nth(1).unwrap_or("none")
}

fn fake() -> (tempfile::TempDir, Arc<fvm_ui::fake::FakeBackend>) {
    let dir = tempfile::Builder::new()
        .prefix("fvm-ui-srv-")
        .tempdir()
        .expect("a temp dir");
    let backend = Arc::new(fvm_ui::fake::FakeBackend::new(dir.path()));
    (dir, backend)
}

/// (host:port, token) of a URL the console printed.
fn parts(url: &str) -> (String, String) {
    let rest = url.strip_prefix("http://").expect("an http URL");
    let (host, token) = rest.split_once("/#token=").expect("a token");
    (host.to_owned(), token.to_owned())
}

#[test]
fn read_only_serves_reads_and_refuses_changes_and_shells() {
    let (dir, backend) = fake();
    let mut opts = common::options(dir.path().join("audit.log"));
    opts.read_only = true;
    let (host, token) = parts(&common::serve_with(backend, opts));
    let bearer = format!("Authorization: Bearer {token}");
    let origin = format!("Origin: http://{host}");
    let get = |path: &str, h: &[&str]| {
        http(
            std::net::TcpStream::connect(&host).unwrap(),
            "GET",
            path,
            &host,
            h,
        )
    };
    let post = |path: &str, h: &[&str]| {
        http(
            std::net::TcpStream::connect(&host).unwrap(),
            "POST",
            path,
            &host,
            h,
        )
    };
    let list = get("/", &[&bearer, "HX-Request: true"]);
    assert_eq!(status(&list), "200", "{list}");
    assert!(list.contains("web1") && !list.contains("Create"), "{list}");
    assert_eq!(
        status(&post("/vm/web1/op/stop", &[&bearer, &origin])),
        "403"
    );
    assert_eq!(
        status(&get("/vm/web1/shell", &[&bearer, "HX-Request: true"])),
        "403"
    );
    for mutating in [
        "/vm/web1/service/restart",
        "/vm/db/discard",
        "/vm/db/discard/dialog",
    ] {
        assert_eq!(
            status(&post(mutating, &[&bearer, &origin])),
            "403",
            "{mutating}"
        );
    }
    // The services tab and its logs are reads: shown, without buttons.
    let services = get("/vm/web1/services", &[&bearer, "HX-Request: true"]);
    assert_eq!(status(&services), "200", "{services}");
    assert!(
        services.contains("listening on 0.0.0.0:80") && !services.contains("Restart…"),
        "{services}"
    );
    // A check changes nothing and stays allowed.
    assert_eq!(
        status(&post("/vm/web1/policy/check", &[&bearer, &origin])),
        "200"
    );
    assert!(!dir.path().join("audit.log").exists(), "nothing to audit");
}

#[test]
fn token_host_and_origin_are_checked() {
    let (dir, backend) = fake();
    let (host, token) = parts(&common::serve(backend, dir.path().join("audit.log")));
    let bearer = format!("Authorization: Bearer {token}");
    let conn = || std::net::TcpStream::connect(&host).unwrap();
    // Without the token a navigation gets the frame, with no data in it.
    let frame = http(conn(), "GET", "/", &host, &[]);
    assert_eq!(status(&frame), "200");
    assert!(!frame.contains("web1"), "{frame}");
    assert_eq!(
        status(&http(conn(), "GET", "/", &host, &["HX-Request: true"])),
        "401"
    );
    let wrong = format!("Authorization: Bearer {}", "0".repeat(64));
    assert_eq!(
        status(&http(
            conn(),
            "GET",
            "/",
            &host,
            &[&wrong, "HX-Request: true"]
        )),
        "401"
    );
    let port = host.rsplit_once(':').unwrap().1;
    let evil = format!("evil.test:{port}");
    assert_eq!(status(&http(conn(), "GET", "/", &evil, &[&bearer])), "421");
    // A POST without an Origin, or with another one, is refused.
    assert_eq!(
        status(&http(conn(), "POST", "/vm/web1/op/stop", &host, &[&bearer])),
        "403"
    );
    let other = format!(
        "Origin: http://127.0.0.1:{}",
        port.parse::<u16>().unwrap() ^ 1
    );
    assert_eq!(
        status(&http(
            conn(),
            "POST",
            "/vm/web1/op/stop",
            &host,
            &[&bearer, &other]
        )),
        "403"
    );
    let origin = format!("Origin: http://{host}");
    let ok = http(
        conn(),
        "POST",
        "/vm/web1/op/stop",
        &host,
        &[&bearer, &origin],
    );
    assert_eq!(status(&ok), "200", "{ok}");
    let audit = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
    assert!(audit.contains("\"fvm stop web1\" \"ok\""), "{audit}");
    let csp = frame
        .lines()
        .find(|l| l.starts_with("content-security-policy:"));
    assert!(
        csp.is_some_and(|l| l.contains("script-src 'self'")),
        "{frame}"
    );
}

#[test]
fn unix_socket_lets_root_in_and_other_users_not() {
    let test = "unix_socket_lets_root_in_and_other_users_not";
    if !fvm_engine::testing::require_root(test) {
        return;
    }
    let (dir, backend) = fake();
    let sock = dir.path().join("ui.sock");
    let mut opts = common::options(dir.path().join("audit.log"));
    opts.socket = Some(sock.clone());
    let printed = common::serve_with(backend, opts);
    let token = printed
        .rsplit_once("#token=")
        .expect("a token")
        .1
        .to_owned();
    let bearer = format!("Authorization: Bearer {token}");
    let conn = || std::os::unix::net::UnixStream::connect(&sock).unwrap();
    let list = http(
        conn(),
        "GET",
        "/",
        "localhost:8123",
        &[&bearer, "HX-Request: true"],
    );
    assert_eq!(status(&list), "200", "{list}");
    assert_eq!(
        status(&http(conn(), "GET", "/", "evil.test:8123", &[&bearer])),
        "421"
    );
    // Another uid: the connection is closed unanswered.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::set_permissions(&sock, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let script = format!(
        "import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect({:?})\ntry:\n \
         s.sendall(b'GET / HTTP/1.1\\r\\nHost: localhost:1\\r\\n\\r\\n')\n \
         print('answered' if s.recv(100) else 'closed')\nexcept ConnectionError:\n print('closed')",
        sock.display().to_string()
    );
    // The distribution's python (a version manager's shim may be root's only).
    let python = if std::path::Path::new("/usr/bin/python3").is_file() {
        "/usr/bin/python3"
    } else {
        "python3"
    };
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            python,
            "-c",
            &script,
        ])
        .output()
        .expect("run setpriv");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "closed");
}

#[test]
fn reads_of_a_vm_whose_layers_are_an_image() {
    use fvm_ui::backend::Backend;
    let test = "reads_of_a_vm_whose_layers_are_an_image";
    if !fvm_engine::testing::require_root(test) {
        return;
    }
    let Some(fvm) = common::fvm_binary() else {
        fvm_engine::testing::skip(test, "needs the fvm binary (cargo build -p fvm)");
        return;
    };
    let root = tempfile::Builder::new()
        .prefix("fvm-ui-img-")
        .tempdir_in("/tmp")
        .expect("a store");
    let vm = format!("fvm-ui-img-{}", std::process::id());
    let run = |args: &[&str]| {
        let out = std::process::Command::new(&fvm)
            .arg("--root")
            .arg(root.path())
            .args(args)
            .output()
            .expect("run fvm");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    struct Delete<'a>(&'a dyn Fn(&[&str]), &'a str);
    impl Drop for Delete<'_> {
        fn drop(&mut self) {
            (self.0)(&["delete", "--force", self.1]);
        }
    }
    // A disk limit on a filesystem without project quotas: an image.
    run(&["create", "--disk", "64M", &vm]);
    let _delete = Delete(&run, &vm);
    run(&["start", &vm]);
    if !root.path().join("vms").join(&vm).join("disk.img").exists() {
        fvm_engine::testing::part_skipped(
            test,
            "this filesystem holds the disk limit with project quotas",
        );
        return;
    }
    run(&[
        "run",
        &vm,
        "--",
        "sh",
        "-c",
        "echo hi > /root/fvm-ui-img.txt",
    ]);
    // This test process has threads: the reads must not enter the image's
    // mount namespace here.
    let backend = fvm_ui::real::RealBackend::open(root.path(), fvm.clone()).expect("open");
    let changes = backend.changes(&vm).expect("changes");
    let path = std::path::Path::new("/root/fvm-ui-img.txt");
    assert!(
        changes.iter().any(|c| c.path == path && c.kind == 'A'),
        "{changes:?}"
    );
    let preview = backend.preview(&vm, path).expect("preview");
    assert_eq!(preview.vm.and_then(|v| v.text).as_deref(), Some("hi\n"));
    assert!(preview.host.is_none());
    run(&["stop", &vm]);
}
