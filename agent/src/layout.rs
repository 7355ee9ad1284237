//! Where this kernel keeps what tern's programs read: the fields of the tracepoint
//! `sock:inet_sock_set_state` (from its format file) and the namespace cookie behind a
//! `struct sock` (from the kernel's BTF). Offsets differ between kernels and
//! architectures, so none is compiled in.

use std::{fs, path::Path};

use anyhow::{Context, Result, bail};
use log::warn;
use tern_common::Layout;

const FORMAT: &str = "events/sock/inet_sock_set_state/format";
const TRACEFS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];
const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

pub fn read() -> Result<Layout> {
    let format = TRACEFS
        .iter()
        .map(|root| Path::new(root).join(FORMAT))
        .find(|p| p.exists())
        .context(
            "the tracepoint sock:inet_sock_set_state is not visible: mount tracefs \
             (mount -t tracefs nodev /sys/kernel/tracing); it needs Linux 4.16 or later",
        )?;
    let text =
        fs::read_to_string(&format).with_context(|| format!("reading {}", format.display()))?;
    let mut layout = tracepoint_layout(&text)
        .with_context(|| format!("unexpected tracepoint format in {}", format.display()))?;
    match fs::read(VMLINUX_BTF)
        .map_err(anyhow::Error::from)
        .and_then(|btf| {
            Ok((
                member_offset(&btf, "sock_common", "skc_net")?,
                member_offset(&btf, "net", "net_cookie")?,
            ))
        }) {
        Ok((sock_net, net_cookie)) => {
            layout.sock_net = sock_net;
            layout.net_cookie = net_cookie;
        }
        Err(err) => warn!(
            "cannot tell network namespaces apart for TCP ({VMLINUX_BTF}: {err:#}); \
             TCP sockets of every namespace are reported"
        ),
    }
    Ok(layout)
}

fn tracepoint_layout(format: &str) -> Result<Layout> {
    let offset = |name: &str| -> Result<u32> {
        format
            .lines()
            .filter_map(|line| {
                let decl = line.trim().strip_prefix("field:")?.split(';').next()?;
                let field = decl.rsplit(' ').next()?.split('[').next()?;
                (field == name).then_some(line)
            })
            .find_map(|line| {
                line.split(';')
                    .find_map(|part| part.trim().strip_prefix("offset:"))
                    .and_then(|n| n.parse().ok())
            })
            .with_context(|| format!("no field {name}"))
    };
    Ok(Layout {
        skaddr: offset("skaddr")?,
        oldstate: offset("oldstate")?,
        newstate: offset("newstate")?,
        sport: offset("sport")?,
        dport: offset("dport")?,
        family: offset("family")?,
        protocol: offset("protocol")?,
        saddr: offset("saddr")?,
        daddr: offset("daddr")?,
        saddr_v6: offset("saddr_v6")?,
        daddr_v6: offset("daddr_v6")?,
        ..Layout::default()
    })
}

/// Byte offset of `member` in the struct `name`, from raw BTF (the format is in the kernel's
/// Documentation/bpf/btf.rst: a header, then the type section, then the string section).
fn member_offset(btf: &[u8], name: &str, member: &str) -> Result<u32> {
    let u32_at = |at: usize| -> Result<u32> {
        btf.get(at..at + 4)
            .map(|b| u32::from_ne_bytes(b.try_into().expect("4 bytes")))
            .context("BTF ends early")
    };
    if btf.get(..2) != Some(&0xeb9f_u16.to_ne_bytes()[..]) {
        bail!("not BTF of this machine's byte order");
    }
    let header_len = u32_at(4)? as usize;
    let (type_off, type_len) = (u32_at(8)? as usize, u32_at(12)? as usize);
    let str_off = u32_at(16)? as usize;
    let types = header_len + type_off;
    let strings = header_len + str_off;
    let string = |at: u32| -> &[u8] {
        let start = strings + at as usize;
        let rest = btf.get(start..).unwrap_or_default();
        &rest[..rest.iter().position(|&b| b == 0).unwrap_or(rest.len())]
    };

    let mut at = types;
    while at < types + type_len {
        let name_off = u32_at(at)?;
        let info = u32_at(at + 4)?;
        let kind = (info >> 24) & 0x1f;
        let vlen = (info & 0xffff) as usize;
        let kind_flag = info >> 31 == 1;
        at += 12;
        let members = at;
        at += match kind {
            1 | 14 | 17 => 4,     // int, var, decl_tag
            3 => 12,              // array
            4 | 5 => vlen * 12,   // struct, union
            6 | 13 => vlen * 8,   // enum, func_proto
            15 | 19 => vlen * 12, // datasec, enum64
            _ => 0,
        };
        if kind == 4 && string(name_off) == name.as_bytes() {
            for i in 0..vlen {
                let m = members + i * 12;
                if string(u32_at(m)?) == member.as_bytes() {
                    let bits = u32_at(m + 8)?;
                    let bits = if kind_flag { bits & 0x00ff_ffff } else { bits };
                    return Ok(bits / 8);
                }
            }
            bail!("struct {name} has no member {member}");
        }
    }
    bail!("no struct {name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const X86_64_FORMAT: &str = "name: inet_sock_set_state
ID: 2287
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;
\tfield:int newstate;\toffset:20;\tsize:4;\tsigned:1;
\tfield:__u16 sport;\toffset:24;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:26;\tsize:2;\tsigned:0;
\tfield:__u16 family;\toffset:28;\tsize:2;\tsigned:0;
\tfield:__u16 protocol;\toffset:30;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:36;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:56;\tsize:16;\tsigned:0;
";

    #[test]
    fn reads_field_offsets_from_the_format_file() {
        let layout = tracepoint_layout(X86_64_FORMAT).unwrap();
        assert_eq!(
            (layout.skaddr, layout.oldstate, layout.sport, layout.saddr),
            (8, 16, 24, 32)
        );
        assert_eq!((layout.saddr_v6, layout.daddr_v6), (40, 56));
    }

    #[test]
    fn a_format_without_a_field_is_refused() {
        let broken = X86_64_FORMAT.replace("saddr_v6", "src6");
        assert!(tracepoint_layout(&broken).is_err());
    }

    #[test]
    fn finds_struct_members_in_this_kernels_btf() {
        let Ok(btf) = fs::read(VMLINUX_BTF) else {
            panic!("{VMLINUX_BTF} is missing: this machine's kernel has BTF");
        };
        let net = member_offset(&btf, "sock_common", "skc_net").unwrap();
        assert!(net > 0 && net < 136, "skc_net at {net}");
        assert!(member_offset(&btf, "net", "net_cookie").unwrap() > 0);
        assert!(member_offset(&btf, "net", "no_such_member").is_err());
        assert!(member_offset(&btf, "no_such_struct", "x").is_err());
        assert!(member_offset(&btf[..10], "net", "ns").is_err());
    }
}
