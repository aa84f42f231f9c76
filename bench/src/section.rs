//! The sections measured after the startup rounds: which ones a run measures, in
//! what order, and the sizes each gets from the command line.

use anyhow::Result;

use crate::store::Store;
use crate::{
    Args, changes, copy, density, dns, host_changes, invocation, io, network, oci, scale, services,
    ui, watcher_cost,
};

/// The sections measured after the startup rounds, in the order of a full run.
#[derive(Debug, Clone, Copy)]
pub enum Section {
    Copy,
    Changes,
    Network,
    HostChanges,
    Io,
    Watcher,
    Density,
    Services,
    Dns,
    Ui,
    /// Only with `--oci-only` (it needs containerd): not in [`Section::ALL`].
    Oci,
    /// Only with `--scale-only` (it takes many minutes): not in [`Section::ALL`].
    Scale,
}

impl Section {
    pub const ALL: [Section; 10] = [
        Section::Copy,
        Section::Changes,
        Section::Network,
        Section::Dns,
        Section::HostChanges,
        Section::Io,
        Section::Watcher,
        Section::Density,
        Section::Services,
        Section::Ui,
    ];

    /// The section an `--X-only` flag asks for.
    pub fn only(args: &Args) -> Option<Section> {
        [
            (args.copy_only, Section::Copy),
            (args.changes_only, Section::Changes),
            (args.network_only, Section::Network),
            (args.host_changes_only, Section::HostChanges),
            (args.io_only, Section::Io),
            (args.density_only, Section::Density),
            (args.services_only, Section::Services),
            (args.dns_only, Section::Dns),
            (args.watcher_only, Section::Watcher),
            (args.ui_only, Section::Ui),
            (args.oci_only, Section::Oci),
            (args.scale_only, Section::Scale),
        ]
        .into_iter()
        .find_map(|(asked, section)| asked.then_some(section))
    }

    /// Measure this section in `store` and render it; `only`: run alone.
    pub fn measure(
        self,
        args: &Args,
        store: &Store,
        only: bool,
        date: &str,
        kernel: &str,
        place: &str,
    ) -> Result<String> {
        let inv = invocation();
        Ok(match self {
            Section::Copy => {
                let (files, rounds) = if args.quick {
                    (64, 2)
                } else {
                    (args.copy_files, args.copy_rounds.max(1))
                };
                copy::render(
                    &copy::measure(store, files, rounds)?,
                    &inv,
                    date,
                    kernel,
                    place,
                )
            }
            Section::Changes => {
                let sizes = if args.quick {
                    changes::Sizes {
                        diff_files: 5000,
                        commit_files: 1000,
                        plan_files: 100_000,
                        rounds: 1,
                    }
                } else {
                    changes::Sizes {
                        diff_files: args.diff_files,
                        commit_files: args.commit_files,
                        plan_files: args.plan_files,
                        rounds: args.changes_rounds.max(1),
                    }
                };
                let measured = changes::measure(store, &sizes)?;
                changes::render(&measured, &inv, date, kernel, place)
            }
            Section::Network => {
                let measured = network::measure(store, &network_params(args))?;
                network::render(&measured, &inv, date, kernel, place)
            }
            Section::HostChanges => {
                let measured = host_changes::measure(store, &host_changes_params(args, only))?;
                host_changes::render(&measured, &inv, date, kernel, place)
            }
            Section::Io => io::render(
                &io::measure(store, &io_params(args))?,
                &inv,
                date,
                kernel,
                place,
            ),
            Section::Watcher => {
                // An earlier fvm's store beside this one's, for a before/after in
                // the same run.
                let parent = store.root().parent().unwrap_or(store.root());
                let before = match &args.watcher_fvm_before {
                    Some(fvm) => Some((
                        crate::store::Store::new(&std::path::absolute(fvm)?, parent)?,
                        fvm.display().to_string(),
                    )),
                    None => None,
                };
                let mut stores = vec![(store, "this fvm".to_owned())];
                stores.extend(before.as_ref().map(|(s, l)| (s, l.clone())));
                let measured = watcher_cost::measure(&stores, &watcher_params(args))?;
                watcher_cost::render(&measured, &inv, date, kernel, place)
            }
            Section::Density => {
                let measured = density::measure(store, &density_params(args))?;
                density::render(&measured, &inv, date, kernel, place)
            }
            Section::Services => {
                let params = if args.quick {
                    services::Params {
                        rounds: 3,
                        log_mib: 8,
                    }
                } else {
                    services::Params {
                        rounds: args.services_rounds.max(1),
                        log_mib: args.services_log_mib.max(1),
                    }
                };
                services::render(
                    &services::measure(store, &params)?,
                    &inv,
                    date,
                    kernel,
                    place,
                )
            }
            Section::Dns => {
                let params = dns::Params {
                    rounds: if args.quick {
                        2
                    } else {
                        args.dns_rounds.max(1)
                    },
                    lookups: if args.quick {
                        500
                    } else {
                        args.dns_lookups.max(1)
                    },
                    subnet: args.net_subnet.clone(),
                };
                dns::render(&dns::measure(store, &params)?, &inv, date, kernel, place)
            }
            Section::Ui => {
                let params = if args.quick {
                    ui::Params {
                        vms: 10,
                        window: std::time::Duration::from_secs(5),
                        rounds: 2,
                    }
                } else {
                    ui::Params {
                        vms: args.ui_vms,
                        window: std::time::Duration::from_secs(args.ui_window.max(1)),
                        rounds: 2,
                    }
                };
                ui::render(&ui::measure(store, &params)?, &inv, date, kernel, place)
            }
            Section::Oci => {
                let rounds = if args.quick {
                    3
                } else {
                    args.oci_rounds.max(1)
                };
                let measured = oci::measure(store, &oci::Params { rounds })?;
                oci::render(&measured, &inv, date, kernel, place)
            }
            Section::Scale => {
                let params = scale::Params {
                    vms: if args.quick { 20 } else { args.scale_vms },
                    subnet: args.net_subnet.clone(),
                };
                scale::render(&scale::measure(store, &params)?, &inv, date, kernel, place)
            }
        })
    }
}

fn density_params(args: &Args) -> density::Params {
    density::Params {
        sizes: density::sizes(args.quick, args.density_max),
    }
}

fn watcher_params(args: &Args) -> watcher_cost::Params {
    if args.quick {
        return watcher_cost::Params {
            rounds: 2,
            tree_mib: 20,
            fleet: 10,
        };
    }
    watcher_cost::Params {
        rounds: args.watcher_rounds.max(1),
        tree_mib: args.watcher_tree_mib.max(1),
        fleet: args.watcher_vms.max(1),
    }
}

fn io_params(args: &Args) -> io::Params {
    if args.quick {
        return io::Params {
            rounds: 1,
            tree_mib: 20,
            files: 200,
        };
    }
    io::Params {
        rounds: args.io_rounds.max(1),
        tree_mib: args.io_tree_mib.max(1),
        files: args.io_files.max(1),
    }
}

/// The host-changes benchmark's sizes; `only`: run alone, with time for 1000 changes.
fn host_changes_params(args: &Args, only: bool) -> host_changes::Params {
    if args.quick {
        return host_changes::Params {
            changes: 50,
            rounds: 2,
            vms: 10,
            tree_mib: 20,
        };
    }
    host_changes::Params {
        changes: args
            .host_changes
            .unwrap_or(if only { 1000 } else { 300 })
            .max(1),
        rounds: args.host_rounds.max(1),
        vms: args.host_vms.max(1),
        tree_mib: args.host_tree_mib.max(1),
    }
}

fn network_params(args: &Args) -> network::Params {
    let (rounds, mib, transfers, vms) = if args.quick {
        (5, 256, 2, 10)
    } else {
        (
            args.net_rounds.max(1),
            args.net_mib.max(1),
            args.net_transfers.max(1),
            args.net_vms.max(1),
        )
    };
    network::Params {
        rounds,
        warmup: 2,
        mib,
        transfers,
        vms,
        subnet: args.net_subnet.clone(),
    }
}
