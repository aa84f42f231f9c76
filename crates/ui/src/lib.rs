//! `fvm ui`: a local web console for featherweight VMs, on the engine the CLI
//! uses. It has no VM logic of its own: reads call the engine, operations run
//! `fvm` commands (see [`real`]). docs/ui.md has its threat model.

mod assets;
pub mod backend;
pub mod fake;
mod history;
mod pages;
pub mod policy;
mod procs;
pub mod real;
mod security;
mod server;
mod shell;

pub use server::{Options, Peer, run};

/// What `fvm ui` says when it was built without its scripts.
pub const NO_ASSETS: &str = "this fvm was built without the web console's scripts: install npm and rebuild (the default `ui-assets` feature runs `npm ci` at build time)";

/// Whether the console's scripts are built in.
pub fn has_assets() -> bool {
    assets::available()
}
