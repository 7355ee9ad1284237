//! Collection: reads the kernel maps and turns them into the numbers and lists of one
//! report. Never reads /proc or /sys counters: those are ground truth for the tests.

mod sockets;
mod traffic;

pub use sockets::{SocketCollector, SocketOptions};
pub use traffic::TrafficCollector;
