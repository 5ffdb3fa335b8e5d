//! Cairn: a workflow engine whose tasks are sandboxed WebAssembly components.
//!
//! Data flows one way through the modules: [`manifest`] → [`plan`] →
//! [`schedule`] → [`sandbox`] → [`store`]. A lower module never imports a higher one, and the
//! [`cli`] is a thin layer over this library so tests can drive the same code.
//! [`model`] is the vocabulary under all of them; [`runner`] is the run
//! service over them (plan, admit, record, execute, resume, replay) that the
//! CLI calls.

pub mod allocator;
pub mod bundle;
pub mod cli;
pub mod files;
pub mod manifest;
pub mod model;
pub mod plan;
pub mod policy;
pub mod runner;
pub mod sandbox;
pub mod schedule;
pub mod server;
pub mod store;
