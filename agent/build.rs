//! Builds tern's eBPF programs from agent-ebpf for the BPF target and leaves the object in
//! OUT_DIR, where src/probes.rs embeds it. Cargo reruns this on any change under agent-ebpf
//! or agent-common, so the binary never carries a stale object.

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-changed=../agent-common");
    let ebpf = aya_build::Package {
        name: "tern-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../agent-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], aya_build::Toolchain::Nightly)
}
