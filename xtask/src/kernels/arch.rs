//! The architectures the matrix boots: how QEMU emulates each (TCG, this machine's KVM being
//! unusable), which devices carry the kernel's console and the guest's results, and the
//! release artifact (`cargo xtask dist`) each runs.

use std::{path::Path, process::Command};

use anyhow::{Result, ensure};

use crate::dist::{self, Target};

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Arch {
    Amd64,
    Arm64,
    Armhf,
}

impl Arch {
    pub(super) const ALL: [Self; 3] = [Self::Amd64, Self::Arm64, Self::Armhf];

    /// Debian's name, as in package names and `dpkg --print-architecture`.
    pub(super) fn debian(self) -> &'static str {
        match self {
            Self::Amd64 => "amd64",
            Self::Arm64 => "arm64",
            Self::Armhf => "armhf",
        }
    }

    /// The release target whose binaries (tern, and the xtask as the guest's helper) run in
    /// the guest.
    pub(super) fn release(self) -> &'static Target {
        match self {
            Self::Amd64 => &dist::X86_64,
            Self::Arm64 => &dist::AARCH64,
            Self::Armhf => &dist::ARMV7,
        }
    }

    /// The multiarch folder of the architecture's libraries (lib/TRIPLET, usr/lib/TRIPLET).
    pub(super) fn triplet(self) -> &'static str {
        match self {
            Self::Amd64 => "x86_64-linux-gnu",
            Self::Arm64 => "aarch64-linux-gnu",
            Self::Armhf => "arm-linux-gnueabihf",
        }
    }

    /// The kernel's console, on the first serial port.
    pub(super) fn console(self) -> &'static str {
        match self {
            Self::Amd64 => "ttyS0",
            Self::Arm64 | Self::Armhf => "ttyAMA0",
        }
    }

    /// The guest's device for its results: a second 16550 on the PC; QEMU's `virt` board has
    /// one PL011 only, so a virtio console there (virtio-pci and virtio_console are built
    /// into Debian's arm64 kernels, so no module has to load before the channel opens).
    pub(super) fn results_device(self) -> &'static str {
        match self {
            Self::Amd64 => "ttyS1",
            Self::Arm64 | Self::Armhf => "hvc0",
        }
    }

    /// QEMU with the machine, the kernel's console written to `console` and the results
    /// channel to `results`; the kernel, initrd and command line are the caller's.
    pub(super) fn qemu(self, console: &Path, results: &Path) -> Result<Command> {
        let (program, machine): (&str, &[&str]) = match self {
            Self::Amd64 => ("qemu-system-x86_64", &["-M", "pc", "-cpu", "max"]),
            // A CPU with the 16 KiB translation granule (no Cortex-A72 has it) for the 16k
            // kernel; its pointer authentication emulated the fast way.
            Self::Arm64 => (
                "qemu-system-aarch64",
                &["-M", "virt", "-cpu", "max,pauth-impdef=on"],
            ),
            // No PCI window above 4 GiB for a 32-bit guest.
            Self::Armhf => (
                "qemu-system-arm",
                &["-M", "virt,highmem=off", "-cpu", "cortex-a15"],
            ),
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
            Self::Arm64 | Self::Armhf => {
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
