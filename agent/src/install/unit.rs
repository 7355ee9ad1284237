//! What `install` puts on a device: the file layout, as path templates where NAME stands for
//! the service's name, and the systemd unit's text. Writes nothing itself.
//!
//! Layout, for service NAME and account USER:
//! - /usr/local/lib/NAME/NAME: the binary (root, 0755); its file name is the process name;
//! - /etc/NAME/config.json: the configuration (root:USER, 0640), /etc/NAME (root:USER, 0750);
//! - /etc/NAME/installed: what uninstall must undo;
//! - /var/lib/NAME: the state directory (USER:USER, 0700), where `run` looks by default;
//! - /etc/systemd/system/NAME.service: the unit (0644).

use std::path::PathBuf;

use crate::{config, process};

/// Stands for the service's name in the path templates.
const NAME: &str = "NAME";
pub const BIN_DIR: &str = "/usr/local/lib/NAME";
pub const BIN: &str = "/usr/local/lib/NAME/NAME";
pub const CONFIG_DIR: &str = "/etc/NAME";
pub const CONFIG: &str = "/etc/NAME/config.json";
pub const MANIFEST: &str = "/etc/NAME/installed";
pub const UNIT_DIR: &str = "/etc/systemd/system";
pub const UNIT: &str = "/etc/systemd/system/NAME.service";

/// The state directory's template: where `run` looks for it when the binary is named NAME.
pub fn state_dir() -> String {
    config::default_state_dir(NAME).display().to_string()
}

/// The paths of one service on the device file system mounted at `root`.
pub struct DeviceLayout {
    pub root: PathBuf,
    pub name: String,
}

impl DeviceLayout {
    /// A path of the device, as the service sees it.
    pub fn device(&self, path: &str) -> String {
        path.replace(NAME, &self.name)
    }

    /// The same path under the install root.
    pub fn local(&self, path: &str) -> PathBuf {
        self.root.join(self.device(path).trim_start_matches('/'))
    }
}

/// The unit: tern starts as root inside a bounding set limited to what loading and dropping
/// need, then drops itself (see `process`); everything else systemd can forbid, it does.
pub fn unit(layout: &DeviceLayout, user: &str) -> String {
    let bounding_set = process::START
        .iter()
        .map(|grant| grant.cap.to_string())
        .collect::<Vec<_>>()
        .join(" ");
    format!(
        "[Unit]
Description={name}
Wants=network-online.target
After=network-online.target

[Service]
Type=notify
NotifyAccess=main
ExecStart={bin} run --user {user} --config {config}
Restart=always
RestartSec=5
WatchdogSec=60
TimeoutStopSec=20
UMask=0077
NoNewPrivileges=yes
CapabilityBoundingSet={bounding_set}
AmbientCapabilities=
ProtectSystem=strict
PrivateMounts=yes
ReadWritePaths={state}
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
DevicePolicy=closed
PrivateIPC=yes
ProtectHostname=yes
ProtectClock=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectProc=invisible
KeyringMode=private
RestrictAddressFamilies=AF_UNIX AF_NETLINK AF_INET AF_INET6
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service bpf perf_event_open
SystemCallErrorNumber=EPERM

[Install]
WantedBy=multi-user.target
",
        name = layout.name,
        bin = layout.device(BIN),
        config = layout.device(CONFIG),
        state = layout.device(&state_dir()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bounding_set_names_the_start_capabilities_in_order() {
        let layout = DeviceLayout {
            root: PathBuf::from("/"),
            name: "edge".to_owned(),
        };
        let text = unit(&layout, "edge");
        assert!(
            text.contains(
                "\nCapabilityBoundingSet=CAP_BPF CAP_PERFMON CAP_NET_ADMIN CAP_SETUID CAP_SETGID \
                 CAP_SETPCAP\nAmbientCapabilities=\n"
            ),
            "{text}"
        );
        assert!(text.contains("\nReadWritePaths=/var/lib/edge\n"), "{text}");
    }
}
