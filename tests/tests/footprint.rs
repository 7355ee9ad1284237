//! tern's own memory, from /proc/<pid>/status: what it reads only at start leaves no mark on
//! the peak of the process that runs for life.

use std::time::Duration;

use tern_tests::{Pair, Tern, proc_status};

/// Kibibytes of a `VmXXX:` line.
fn kib(status: &std::collections::HashMap<String, String>, key: &str) -> u64 {
    status[key]
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{key}: {e}"))
}

#[test]
fn reading_the_kernels_btf_leaves_no_mark_on_the_peak_memory() {
    let btf = std::fs::metadata("/sys/kernel/btf/vmlinux")
        .expect("this machine's kernel has BTF")
        .len();
    let pair = Pair::new();
    let tern = Tern::start(&pair.a, &["--interval", "1"]);
    tern.next_report(Duration::from_secs(5));
    let status = proc_status(tern.pid());
    let (peak, now) = (kib(&status, "VmHWM"), kib(&status, "VmRSS"));
    // Read in tern's own process, the file alone would raise the peak by its whole size.
    assert!(
        peak < now + btf / 1024 / 2,
        "peak {peak} KiB against {now} KiB resident now: the kernel's BTF ({btf} bytes) was \
         read in tern's own process"
    );
}
