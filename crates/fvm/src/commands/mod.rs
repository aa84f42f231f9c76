//! One module per verb. Each takes the parsed arguments and an engine and returns
//! the process exit status.

mod commit;
mod completions;
mod config;
mod copy;
mod create;
mod delete;
mod diff;
mod discard;
mod doctor;
mod inspect;
mod list;
mod logs;
mod man;
mod network;
pub mod oci;
mod ps;
mod run;
mod service;
mod start;
mod stats;
mod stop;
mod suspend;
mod ui;

use std::path::{Path, PathBuf};

use anyhow::Result;
use fvm_engine::Engine;
use fvm_engine::store::{DEFAULT_ROOT, Store, VmName};

use crate::cli::{Cli, Command};

pub fn dispatch(cli: &Cli) -> Result<u8> {
    let ctx = Context { cli };
    match &cli.command {
        Command::Create(a) => create::run(&ctx, a),
        Command::List(a) => list::run(&ctx, a),
        Command::Start(a) => start::run(&ctx, a),
        Command::Shell(a) => run::shell(&ctx, a),
        Command::Run(a) => run::run(&ctx, a),
        Command::Stop(a) => stop::run(&ctx, a),
        Command::Suspend(a) => suspend::suspend(&ctx, a),
        Command::Resume(a) => suspend::resume(&ctx, a),
        Command::Ps(a) => ps::run(&ctx, a),
        Command::Stats(a) => stats::run(&ctx, a),
        Command::Delete(a) => delete::run(&ctx, a),
        Command::Copy(a) => copy::run(&ctx, a),
        Command::Inspect(a) => inspect::run(&ctx, a),
        Command::Diff(a) => diff::run(&ctx, a),
        Command::Commit(a) => commit::run(&ctx, a),
        Command::Discard(a) => discard::run(&ctx, a),
        Command::Config(a) => config::run(&ctx, a),
        Command::Doctor(a) => doctor::run(&ctx, a),
        Command::Network(a) => network::run(&ctx, a),
        Command::Completions(a) => completions::run(&ctx, a),
        Command::Man(a) => man::run(&ctx, a),
        Command::Service(a) => service::run(&ctx, a),
        Command::Logs(a) => logs::run(&ctx, a),
        Command::Ui(a) => ui::run(&ctx, a),
        Command::Oci(a) => Ok(oci::main(a.args.clone())),
    }
}

/// Whether `command` needs root: everything but what only reads the command
/// line's definition, and `doctor`, which says what it can't check without.
pub fn needs_root(command: &Command) -> bool {
    !matches!(
        command,
        Command::Doctor(_) | Command::Completions(_) | Command::Man(_)
    )
}

/// Do `each` for every VM of `names`, in order. A failure is reported (one line,
/// or a JSON object with --json) and the rest are still done; the status is the
/// last failure's, 0 if none failed.
pub fn for_each_vm(
    ctx: &Context<'_>,
    names: &[String],
    mut each: impl FnMut(&VmName) -> Result<()>,
) -> Result<u8> {
    let mut status = 0;
    for given in names {
        if let Err(err) = vm_name(given).and_then(|name| each(&name)) {
            status = crate::report_error(ctx.json(), &err);
        }
    }
    Ok(status)
}

/// A note on stderr for a VM that already was as asked: the verb succeeds.
pub fn note_already(name: &VmName, what: &str) {
    eprintln!("fvm: vm {name} is already {what}");
}

/// What every verb needs: the global flags and a way to the store.
pub struct Context<'a> {
    pub cli: &'a Cli,
}

impl Context<'_> {
    fn root(&self) -> PathBuf {
        self.cli
            .root
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT))
    }

    /// The engine on the store. A store named with `--root`/`FVM_ROOT` must exist
    /// (a typo must not silently make a new one); the default store is created by
    /// the verbs that add VMs.
    pub fn engine(&self, create: bool) -> Result<Engine> {
        let root = self.root();
        let store = if create && self.cli.root.is_none() {
            Store::open_or_create(&root)?
        } else {
            Store::open(&root)?
        };
        // A delete that was killed left its trash: finish it now (in the
        // background; `doctor --cleanup` removes it before it returns).
        let cleanup = matches!(&self.cli.command, crate::cli::Command::Doctor(d) if d.cleanup);
        match if cleanup {
            Ok(Vec::new())
        } else {
            store.finish_deletes()
        } {
            Ok(done) => {
                for p in done {
                    tracing::info!(path = %p.display(), "finished an interrupted delete");
                }
            }
            Err(err) => tracing::warn!(
                "cannot finish an interrupted delete: {:#}",
                anyhow::Error::new(err)
            ),
        }
        Ok(Engine::new(store))
    }

    /// The engine if the store exists; `None` for the missing default store.
    pub fn engine_if_any(&self) -> Result<Option<Engine>> {
        if self.cli.root.is_none() && !Path::new(DEFAULT_ROOT).exists() {
            return Ok(None);
        }
        self.engine(false).map(Some)
    }

    /// The engine for a verb on an existing VM: with no store at all, the VM
    /// simply does not exist.
    pub fn engine_for(&self, name: &VmName) -> Result<Engine> {
        match self.engine_if_any()? {
            Some(e) => Ok(e),
            None => Err(fvm_engine::store::StoreError::NoSuchVm {
                name: name.to_string(),
            }
            .into()),
        }
    }

    pub fn json(&self) -> bool {
        self.cli.json
    }
}

pub fn vm_name(name: &str) -> Result<VmName> {
    Ok(VmName::new(name)?)
}
