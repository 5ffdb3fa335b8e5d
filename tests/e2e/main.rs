//! End-to-end tests: the real `cairn` binary on real components and files,
//! checking what a user sees (stdout, stderr, exit code, `--json` reports).
//!
//! The guest components are built once per test run from `guest-examples/`
//! (`cargo build --release --target wasm32-wasip2`).

mod support;

mod artifacts;
mod browser;
mod bundles;
mod dashboard;
mod determinism;
mod examples;
mod host_streams;
mod http;
mod live_display;
mod malformed;
mod manifest_errors;
mod pipelines;
mod policy;
mod readme;
mod runner;
mod sandbox_denials;
mod sandbox_limits;
mod sandbox_scratch;
mod schedule_faults;
mod secrets;
mod server;
mod store;
mod trust_boundary;
mod watching;
