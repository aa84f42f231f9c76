//! What a VM changed, read from its upper layers directly: `diff` lists it,
//! `commit` writes it back to the host, `copy` clones it into a new VM.

mod content;
pub mod copy;
pub mod layer;
