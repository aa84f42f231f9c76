//! The bottom layer: what fvm needs of the operating system, and nothing of fvm.
//!
//! - [`sys`]: the raw system calls, and every `unsafe` block of the crate;
//! - [`files`]: store files, read and written without following symlinks or
//!   leaving half-written files, and locks;
//! - [`dirchain`]: the bounded chain of directory fds every deep walk uses;
//! - [`procid`]: a process's identity (pid, start time, boot), and its
//!   `/proc/PID/stat`;
//! - [`quote`]: how a string a VM chose is shown to a person;
//! - [`detach`]: processes that outlive the command that starts them.

pub mod detach;
pub mod dirchain;
pub mod files;
pub mod procid;
pub mod quote;
pub(crate) mod sys;
