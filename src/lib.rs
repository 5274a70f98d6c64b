#![forbid(unsafe_code)]
//! `ipam-apiserver`: IP address management served as the Kubernetes API group
//! `ipam.miloapis.com/v1alpha1`.
//!
//! Layers, data flowing one way: [`http`] (routing, negotiation, auth) → [`registry`] (API
//! semantics per kind) → [`alloc`] (pure allocator) → [`store`] (one trait; sled behind it).
//! The typed client surface for kube-rs users is [`api`]; [`server`], [`auth`] and [`options`]
//! are the binary's shell.

pub mod alloc;
pub mod api;
pub mod audit;
pub mod auth;
pub mod cluster;
pub mod error;
pub mod http;
pub mod metrics;
pub mod options;
pub mod peer;
pub mod registry;
pub mod server;
pub mod store;
