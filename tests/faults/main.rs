//! Faults and bad input: misbehaving upstreams, hostile clients, bad admin
//! input and crashes. canopy keeps serving, answers clearly and leaks
//! nothing (open file descriptors and the in-flight gauge return to their
//! baseline). Real sockets on 127.0.0.1 only; no fixed ports.
//!
//! One test binary (its tests run in parallel), one module per kind of
//! fault; `rig` holds what they share: the measurements, a raw upstream that
//! misbehaves on purpose, and canopy set up with a preview release on it.

mod admin;
mod client;
mod restart;
mod rig;
mod upstream;
