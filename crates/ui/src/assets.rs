//! The console's static files, embedded in the binary: its own scripts and
//! stylesheet (web/src), and the third-party scripts `npm ci` installed at build
//! time (with the `ui-assets` feature; see build.rs).

/// (name, content type, bytes)
type File = (&'static str, &'static str, &'static [u8]);

const OWN: &[File] = &[
    (
        "app.js",
        "text/javascript",
        include_bytes!("../web/src/app.js"),
    ),
    (
        "term.js",
        "text/javascript",
        include_bytes!("../web/src/term.js"),
    ),
    (
        "graphs.js",
        "text/javascript",
        include_bytes!("../web/src/graphs.js"),
    ),
    (
        "picker.js",
        "text/javascript",
        include_bytes!("../web/src/picker.js"),
    ),
    (
        "logs.js",
        "text/javascript",
        include_bytes!("../web/src/logs.js"),
    ),
    ("app.css", "text/css", include_bytes!("../web/src/app.css")),
];

const VENDOR: &[File] = include!(concat!(env!("OUT_DIR"), "/vendor.rs"));

/// Whether the third-party scripts are built in.
pub fn available() -> bool {
    !VENDOR.is_empty()
}

pub fn get(name: &str) -> Option<(&'static str, &'static [u8])> {
    OWN.iter()
        .chain(VENDOR)
        .find(|(n, _, _)| *n == name)
        .map(|(_, kind, bytes)| (*kind, *bytes))
}
