//! Cairn: a workflow engine whose tasks are sandboxed WebAssembly components.
//!
//! Data flows one way through the modules: [`manifest`] → [`plan`] →
//! [`schedule`] → [`sandbox`] → [`store`]. A lower module never imports a higher one, and the
//! [`cli`] is a thin layer over this library so tests can drive the same code.

pub mod allocator;
pub mod bundle;
pub mod cli;
pub mod files;
pub mod manifest;
pub mod plan;
pub mod policy;
pub mod sandbox;
pub mod schedule;
pub mod store;
