//! The architectures the matrix boots: how QEMU emulates each (TCG, this machine's KVM being
//! unusable), which devices carry the kernel's console and the guest's results, and the
//! Rust target tern is built for.

use std::{path::Path, process::Command};

use anyhow::{Result, ensure};

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Arch {
    Amd64,
    Arm64,
}

impl Arch {
    pub(super) const ALL: [Self; 2] = [Self::Amd64, Self::Arm64];

    /// Debian's name, as in package names and `dpkg --print-architecture`.
    pub(super) fn debian(self) -> &'static str {
        match self {
            Self::Amd64 => "amd64",
            Self::Arm64 => "arm64",
        }
    }

    /// The Rust target tern and the guest's helper are built for; None: this machine's own.
    pub(super) fn rust_target(self) -> Option<&'static str> {
        match self {
            Self::Amd64 => None,
            Self::Arm64 => Some(crate::setup::CROSS_TARGET),
        }
    }

    /// The multiarch folder of the architecture's libraries (lib/TRIPLET, usr/lib/TRIPLET).
    pub(super) fn triplet(self) -> &'static str {
        match self {
            Self::Amd64 => "x86_64-linux-gnu",
            Self::Arm64 => "aarch64-linux-gnu",
        }
    }

    /// The kernel's console, on the first serial port.
    pub(super) fn console(self) -> &'static str {
        match self {
            Self::Amd64 => "ttyS0",
            Self::Arm64 => "ttyAMA0",
        }
    }

    /// The guest's device for its results: a second 16550 on the PC; QEMU's `virt` board has
    /// one PL011 only, so a virtio console there (virtio-pci and virtio_console are built
    /// into Debian's arm64 kernels, so no module has to load before the channel opens).
    pub(super) fn results_device(self) -> &'static str {
        match self {
            Self::Amd64 => "ttyS1",
            Self::Arm64 => "hvc0",
        }
    }

    /// QEMU with the machine, the kernel's console written to `console` and the results
    /// channel to `results`; the kernel, initrd and command line are the caller's.
    pub(super) fn qemu(self, console: &Path, results: &Path) -> Result<Command> {
        let (program, machine): (&str, &[&str]) = match self {
            Self::Amd64 => ("qemu-system-x86_64", &["-M", "pc", "-cpu", "max"]),
            Self::Arm64 => ("qemu-system-aarch64", &["-M", "virt", "-cpu", "cortex-a72"]),
        };
        let mut qemu = Command::new(program);
        qemu.args(machine)
            .args([
                "-accel",
                "tcg,thread=multi",
                "-smp",
                "2",
                "-m",
                "1024",
                "-nodefaults",
                "-no-reboot",
                "-display",
                "none",
            ])
            .arg("-serial")
            .arg(format!("file:{}", console.display()));
        match self {
            Self::Amd64 => {
                qemu.arg("-serial")
                    .arg(format!("file:{}", results.display()));
            }
            Self::Arm64 => {
                // -chardev's options are separated by commas.
                ensure!(
                    !results.to_string_lossy().contains(','),
                    "QEMU cannot take {} as a -chardev path (it has a comma): move the \
                     checkout to a path without one",
                    results.display()
                );
                qemu.args(["-device", "virtio-serial-pci", "-chardev"])
                    .arg(format!("file,id=results,path={}", results.display()))
                    .args(["-device", "virtconsole,chardev=results"]);
            }
        }
        Ok(qemu)
    }
}
