//! Running VMs: launch (clone into new namespaces), the VM's init, commands inside a
//! VM, the terminal relay, and stopping.

pub mod channel;
pub mod command;
pub mod control;
pub mod enter;
mod init;
pub mod launch;
pub mod relay;
pub mod services;
pub mod stdio;
pub mod stop;

pub use crate::os::procid::ProcId;
pub use command::{CommandSpec, Program};
pub use stdio::TtyMode;
