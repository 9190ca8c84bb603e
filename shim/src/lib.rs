//! containerd-shim-podnet-v2: one process per pod. It serves containerd's Task API over ttrpc
//! on a single thread, runs containers with `podnet-runtime`, and sets the pod network up
//! in-process with the CNI engine (`cni-bridge`). The same binary is the `podnet` CNI plugin.
pub mod bundle;
pub mod cni;
pub mod config;
pub mod create;
pub mod error;
pub mod events;
pub mod info;
pub mod log;
pub mod metrics;
pub mod mount;
pub mod network;
pub mod oom;
pub mod pod_shim;
pub mod server;
pub mod service;
pub mod start;
pub mod task;
pub mod ttrpc;
