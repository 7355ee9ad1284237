//! Everything that goes through bpf(): the preflight check, whole-map reads, the file systems the programs
//! need, this kernel's offsets, the programs tern loads and attaches, the maps handed to
//! collection (those that hold counts pinned for the next tern), and the programs' own log.

pub mod batch;
pub mod log;
pub mod maps;
pub mod mounts;
pub mod object;
pub mod offsets;
pub mod pins;
pub mod preflight;
pub mod programs;
pub mod tc;
