//! A VM's filesystem: overlays of every host mount, planned then applied.

pub mod apply;
pub mod disk;
pub mod mountinfo;
pub mod plan;
pub mod volatile;

pub use apply::{Layout, MountError};
pub use plan::{MountPlan, PlanError};
