//! tern's eBPF programs: passive counters attached to kernel hooks.
//!
//! They only count into maps that user space reads; they never change, drop or redirect a
//! packet, and always let the rest of the TC chain run.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod shared;
#[cfg(target_arch = "bpf")]
mod signals;
#[cfg(target_arch = "bpf")]
mod tcp;
#[cfg(target_arch = "bpf")]
mod traffic;
#[cfg(target_arch = "bpf")]
mod trouble;
#[cfg(target_arch = "bpf")]
mod udp;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that could reach here.
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
