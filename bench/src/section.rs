//! The sections measured after the startup rounds: which ones a run measures, in
//! what order, and the sizes each gets from the command line.

use anyhow::Result;

use crate::store::Store;
use crate::{Args, changes, copy, density, host_changes, invocation, io, network, oci};

/// The sections measured after the startup rounds, in the order of a full run.
#[derive(Debug, Clone, Copy)]
pub enum Section {
    Copy,
    Changes,
    Network,
    HostChanges,
    Io,
    Density,
    /// Only with `--oci-only` (it needs containerd): not in [`Section::ALL`].
    Oci,
}

impl Section {
    pub const ALL: [Section; 6] = [
        Section::Copy,
        Section::Changes,
        Section::Network,
        Section::HostChanges,
        Section::Io,
        Section::Density,
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
            (args.oci_only, Section::Oci),
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
            Section::Density => {
                let measured = density::measure(store, &density_params(args))?;
                density::render(&measured, &inv, date, kernel, place)
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
        })
    }
}

fn density_params(args: &Args) -> density::Params {
    density::Params {
        sizes: density::sizes(args.quick, args.density_max),
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
