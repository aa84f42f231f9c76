//! What a VM changed, read from its upper layers directly: `diff` lists it,
//! `commit` writes it back to the host, `copy` clones it into a new VM.

pub mod commit;
mod content;
pub mod copy;
pub mod data;
pub mod diff;
pub mod discard;
pub mod record;
mod same;
pub mod scan;
pub mod show;
pub mod tree;
