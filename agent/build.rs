//! Builds tern's eBPF programs from agent-ebpf for the BPF target and leaves the object in
//! OUT_DIR, where src/probes.rs embeds it. Cargo reruns this on any change under agent-ebpf
//! or agent-common, so the binary never carries a stale object.
//!
//! The object keeps only what loading needs: its BTF (function and type names, source
//! file names and lines, which the kernel would show to anyone with bpftool) and its debug
//! information are removed. tern's programs use no BTF-only feature, and kernels without BTF
//! load the same object.

use std::{path::PathBuf, process::Command};

use anyhow::{Context, bail};

/// Where setup installs LLVM; else the first llvm-objcopy on PATH.
const OBJCOPY: [&str; 2] = ["/usr/lib/llvm-22/bin/llvm-objcopy", "llvm-objcopy"];

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-changed=../agent-common");
    let ebpf = aya_build::Package {
        name: "tern-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../agent-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], aya_build::Toolchain::Nightly)?;
    let object = PathBuf::from(std::env::var("OUT_DIR")?).join("tern-ebpf");
    for objcopy in OBJCOPY {
        let status = Command::new(objcopy)
            .args([
                "--strip-debug",
                "--remove-section=.BTF",
                "--remove-section=.rel.BTF",
                "--remove-section=.BTF.ext",
                "--remove-section=.rel.BTF.ext",
            ])
            .arg(&object)
            .status();
        match status {
            Ok(status) if status.success() => return Ok(()),
            Ok(status) => bail!("{objcopy} failed on {}: {status}", object.display()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(err).with_context(|| format!("running {objcopy}")),
        }
    }
    bail!("llvm-objcopy not found: run `cargo xtask run` or `cargo xtask test`, which install LLVM")
}
