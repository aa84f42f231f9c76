//! Helpers of the console's integration tests.

#![allow(dead_code)] // each test binary uses its own subset

use std::path::PathBuf;
use std::sync::Arc;

/// The options of a console on a free loopback port, writing its audit log to
/// `audit`.
pub fn options(audit: PathBuf) -> fvm_ui::Options {
    fvm_ui::Options {
        listen: "127.0.0.1:0".parse().expect("an address"),
        socket: None,
        allow_remote: false,
        read_only: false,
        allow_uids: Vec::new(),
        allow_gids: Vec::new(),
        audit: Some(audit),
    }
}

/// Serve `backend` from a thread of this process; returns what the console
/// printed (its URL with the token).
pub fn serve_with(backend: Arc<dyn fvm_ui::backend::Backend>, opts: fvm_ui::Options) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = fvm_ui::run(opts, backend, move |url| {
            let _ = tx.send(url.to_owned());
        });
        if let Err(e) = r {
            panic!("fvm ui: {e}");
        }
    });
    rx.recv_timeout(std::time::Duration::from_secs(30))
        .expect("the console started")
}

/// Serve `backend` on a free loopback port.
pub fn serve(backend: Arc<dyn fvm_ui::backend::Backend>, audit: PathBuf) -> String {
    serve_with(backend, options(audit))
}

/// The fvm binary cargo built beside this test (target/<profile>/fvm).
pub fn fvm_binary() -> Option<PathBuf> {
    std::env::current_exe()
        .ok()
        .and_then(|e| Some(e.parent()?.parent()?.join("fvm")))
        .filter(|f| f.is_file())
}
