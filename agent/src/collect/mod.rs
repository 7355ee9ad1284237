//! Collection: reads the kernel maps and turns them into the numbers and lists of one
//! report. Never reads network counters from /proc or /sys: those are ground truth for the
//! tests. (CPU and memory readings, which no kernel program counts, come from /proc.)

mod device;
mod sockets;
mod traffic;

pub use device::DeviceCollector;
pub use sockets::{SocketCollector, SocketOptions};
pub use traffic::TrafficCollector;
