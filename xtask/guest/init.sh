#!/bin/sh
# The kernel matrix's guest: PID 1 of the initramfs that `cargo xtask test-kernels` boots.
# It runs one scenario with tern in the root network namespace and a peer namespace across
# a veth pair, records the ground truth with ss, ip and /proc/net/snmp, writes everything in
# marked sections on the results channel (tern_results: a second serial port, or a virtio
# console where the machine has one serial port; the console carries the kernel's noise),
# and powers off. Three more runs of tern follow, one stopped with SIGTERM and one killed with
# kill -9, each followed by the interfaces' TC state (tern must leave none of its own), and one
# that must adopt the counts the killed one kept.
# Parameters come from the kernel command line: tern_interval, tern_count, the probes of
# closed ports the peer sends, tern_syns (TCP) and tern_probes (UDP), and tern_others, the
# number of each kind of packet that tern's namespace does not answer (or not alone), and
# tern_execs, the executions of one program the scenario makes in a burst.
# With tern_mode=memory the guest measures tern's resident memory instead: idle, then with
# tern_connections connections held across the veth pair.

export PATH=/sbin:/bin:/usr/sbin:/usr/bin
# The initramfs has busybox alone; its applets' links are made here, where it can run.
/bin/busybox --install -s /bin
# busybox's shell prefers its own applets to PATH; iproute2's ip and tc and kmod are meant.
ip() { /usr/sbin/ip "$@"; }
tc() { /usr/sbin/tc "$@"; }
modprobe() { /sbin/modprobe "$@"; }
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -t tracefs tracefs /sys/kernel/tracing
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t bpf bpf /sys/fs/bpf
echo /sbin/modprobe > /proc/sys/kernel/modprobe

results=ttyS1
mode=matrix
connections=1000
interval=2
count=5
syns=0
probes=0
others=0
execs=0
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        tern_results=*) results=${arg#tern_results=} ;;
        tern_interval=*) interval=${arg#tern_interval=} ;;
        tern_count=*) count=${arg#tern_count=} ;;
        tern_syns=*) syns=${arg#tern_syns=} ;;
        tern_probes=*) probes=${arg#tern_probes=} ;;
        tern_others=*) others=${arg#tern_others=} ;;
        tern_execs=*) execs=${arg#tern_execs=} ;;
        tern_mode=*) mode=${arg#tern_mode=} ;;
        tern_connections=*) connections=${arg#tern_connections=} ;;
    esac
done

# A virtio console's device appears once the host has announced its port.
waited=0
while [ ! -c "/dev/$results" ] && [ $waited -lt 100 ]; do
    sleep 0.1
    waited=$((waited + 1))
done
# One descriptor for the whole run: lines written through short-lived opens of the port
# were seen lost. Closing it at the end waits until the port has sent everything.
exec 3> "/dev/$results"
stty -F "/dev/$results" raw -echo
section() { echo "@@ $1" >&3; }

# The TC state of the interfaces tern counts, one line per line of tc, prefixed with the
# interface and what was asked: "DEV qdisc ...", "DEV ingress ...", "DEV egress ...".
tc_state() {
    for dev in veth0 other0 other1 late0; do
        tc qdisc show dev "$dev" | sed "s/^/$dev qdisc /"
        tc filter show dev "$dev" ingress | sed "s/^/$dev ingress /"
        tc filter show dev "$dev" egress | sed "s/^/$dev egress /"
    done
}

# Waits (bounded) until file $1 has a report or process $2 is gone.
await_report() {
    waited=0
    while [ ! -s "$1" ] && kill -0 "$2" 2> /dev/null && [ $waited -lt 120 ]; do
        sleep 0.5
        waited=$((waited + 1))
    done
}

# tern processes that are still running (zombies aside).
terns_running() {
    for stat in /proc/[0-9]*/stat; do
        read -r line < "$stat" 2> /dev/null || continue
        case "$line" in *"(tern) "[!Z]*) echo "$line" ;; esac
    done | wc -l
}

# syn_probes NAMESPACE ADDR PORT COUNT: connection attempts to a closed TCP port from
# NAMESPACE (empty: this one), each SYN answered with one reset.
syn_probes() {
    i=0
    while [ $i -lt "$4" ]; do
        if [ -n "$1" ]; then
            ip netns exec "$1" nc "$2" "$3" < /dev/null > /dev/null 2>&1
        else
            nc "$2" "$3" < /dev/null > /dev/null 2>&1
        fi
        i=$((i + 1))
    done
}

section "kernel $(uname -r) $(uname -m)"
for module in $(cat /etc/tern-modules); do
    modprobe "$module" 2> /dev/null
done
# What this kernel offers the programs, as files show it: the checks expect tern to use each.
section features
{
    [ -f /sys/kernel/btf/vmlinux ] && echo btf
    [ -d /sys/module/cls_bpf ] && echo cls_bpf
    grep -q '^cgroup2 /sys/fs/cgroup ' /proc/mounts && echo cgroup2
    for event in sock/inet_sock_set_state tcp/tcp_retransmit_skb sched/sched_process_exec; do
        [ -d "/sys/kernel/tracing/events/$event" ] && echo "$event"
    done
} >&3

# No IPv6 on the pair, in either namespace (a moved interface takes its new namespace's
# defaults): router solicitations and DAD would send packets at moments of their own.
sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
ip link set lo up
ip netns add peer
ip netns exec peer sysctl -qw net.ipv6.conf.all.disable_ipv6=1 \
    net.ipv6.conf.default.disable_ipv6=1
ip link add veth0 type veth peer name veth1
ip link set veth1 netns peer
ip addr add 10.0.0.1/24 dev veth0
ip link set veth0 up
ip netns exec peer ip addr add 10.0.0.2/24 dev veth1
ip netns exec peer ip link set veth1 up
ip netns exec peer ip link set lo up
# A second pair tern counts: other0 has a clsact qdisc with another program's filter (a
# classic BPF program that matches nothing) from before tern, which must stay as it was.
ip link add other0 type veth peer name other1
ip link set other0 up
ip link set other1 up
tc qdisc add dev other0 clsact
tc filter add dev other0 ingress pref 10 bpf bytecode '1,6 0 0 0,'
# ICMP errors are rate-limited per peer; the scan's every datagram is to be answered, on
# either side.
sysctl -qw net.ipv4.icmp_ratemask=0
ip netns exec peer sysctl -qw net.ipv4.icmp_ratemask=0

# VmRSS and VmHWM of process $1, as "NAME KIB" lines.
memory_of() {
    grep -E '^(VmRSS|VmHWM):' "/proc/$1/status" | while read -r name kib _; do
        echo "${name%:} $kib"
    done
}

if [ "$mode" = memory ]; then
    # One descriptor per connection on each side.
    ulimit -n 16384
    ip netns exec peer xtask guest-sockets listen 7100 &
    tern run --output stdout --interval "$interval" > /tmp/reports 2> /tmp/tern.err &
    tern=$!
    await_report /tmp/reports $tern
    # Idle: one more interval, with nothing but tern's own work.
    sleep "$interval"
    section rss-idle
    memory_of $tern >&3
    xtask guest-sockets connect 10.0.0.2:7100 "$connections" &
    waited=0
    while [ "$(ss -H -tn state established | wc -l)" -lt "$connections" ] && [ $waited -lt 120 ]; do
        sleep 0.5
        waited=$((waited + 1))
    done
    # Two reports with the connections in them.
    sleep $((interval * 2 + 1))
    section rss-connections
    memory_of $tern >&3
    section established
    ss -H -tn state established | wc -l >&3
    kill -TERM $tern
    wait $tern
    section reports
    tail -n 1 /tmp/reports >&3
    section tern-stderr
    cat /tmp/tern.err >&3
    section end
    exec 3>&-
    poweroff -f
fi

# Sockets older than tern: a TCP listener and a bound UDP socket here, and in the peer the
# ends of this side's connection and datagrams. busybox's nc closes at the end of its input,
# and a background job's input is /dev/null: a sleep holds each one open.
sleep 600 | nc -l -p 8080 > /dev/null &
xtask guest-sockets bind 5353 &
sleep 600 | ip netns exec peer nc -l -p 9090 > /dev/null &
ip netns exec peer xtask guest-sockets bind 5000 &
# A listener that closes each connection at once: the short-lived connection.
ip netns exec peer nc -l -p 9091 < /dev/null > /dev/null &
sleep 1

section link-before
ip -j -s link show dev veth0 >&3
section snmp-before
cat /proc/net/snmp >&3
section stat-before
grep '^processes ' /proc/stat >&3

timeout $((interval * count + 60)) tern run --output stdout --interval "$interval" \
    --count "$count" > /tmp/reports 2> /tmp/tern.err &
tern=$!
# The traffic starts once tern has reported, so every packet falls inside its intervals.
await_report /tmp/reports $tern
# Listeners when tern starts counting: busybox's nc stops listening once it has accepted.
section ss-listening-start
ss -H -tlnu >&3

if kill -0 $tern 2> /dev/null; then
    # An interface that appears while tern runs: the link child attaches to it.
    ip link add late0 type veth peer name late1
    ip link set late0 up
    ip link set late1 up
    waited=0
    while ! grep -q "counting traffic on late0" /tmp/tern.err && [ $waited -lt 100 ]; do
        sleep 0.1
        waited=$((waited + 1))
    done
    section tc-running
    tc_state >&3
    # Connections held open both ways, datagrams of a known size, and a ping.
    (echo hello; sleep 600) | ip netns exec peer nc 10.0.0.1 8080 > /dev/null &
    (echo hello; sleep 600) | nc 10.0.0.2 9090 > /dev/null &
    xtask guest-sockets send 10.0.0.2:5000 20 512 >> /tmp/udp-bound
    ping -c 3 10.0.0.2 > /dev/null
    # A connection that the peer closes as soon as it is established.
    nc 10.0.0.2 9091 < /dev/null > /dev/null
    # A burst of executions, each a process of its own.
    i=0
    while [ $i -lt "$execs" ]; do
        /usr/sbin/ip -V > /dev/null
        i=$((i + 1))
    done
    # A scan of closed ports of this namespace from the peer, TCP and UDP; datagrams to an
    # open port and bare resets to a closed one, which this namespace does not answer.
    syn_probes peer 10.0.0.1 7000 "$syns"
    ip netns exec peer xtask guest-sockets send 10.0.0.1:7001 "$probes" 32 > /dev/null
    ip netns exec peer xtask guest-sockets send 10.0.0.1:5353 "$others" 32 > /dev/null
    ip netns exec peer xtask guest-sockets reset 10.0.0.2 10.0.0.1:7002 "$others"
    # The same from here to the peer: its answers are the peer namespace's, not tern's.
    syn_probes "" 10.0.0.2 7000 "$others"
    xtask guest-sockets send 10.0.0.2:7001 "$others" 32 >> /tmp/udp-bound
    sleep 1
    section ss-listening
    ss -H -tlnu >&3
    section ss-established
    ss -H -tn state established >&3
    section udp-bound
    cat /tmp/udp-bound >&3
fi
wait $tern
status=$?
section tc-after-count
tc_state >&3

section link-after
ip -j -s link show dev veth0 >&3
section snmp-after
cat /proc/net/snmp >&3
section stat-after
grep '^processes ' /proc/stat >&3
section reports
cat /tmp/reports >&3
section tern-stderr
cat /tmp/tern.err >&3
section "exit $status"
# Every file a path of interval_new_executables may name (busybox runs some applets
# through /proc/self/exe).
section files
{
    find /bin /sbin /usr -type f -o -type l
    echo /proc/self/exe
} >&3

# A second run stopped with SIGTERM: its filters must be gone when the main process is.
tern run --output stdout --interval "$interval" > /tmp/reports-term 2> /tmp/tern-term.err &
tern=$!
await_report /tmp/reports-term $tern
kill -TERM $tern 2> /dev/null
wait $tern
status=$?
section "sigterm-run $(wc -l < /tmp/reports-term) reports, exit $status"
tc_state >&3

# A third killed with kill -9: the link child notices and releases what tern held.
tern run --output stdout --interval "$interval" > /tmp/reports-kill 2> /tmp/tern-kill.err &
tern=$!
await_report /tmp/reports-kill $tern
kill -KILL $tern 2> /dev/null
wait $tern 2> /dev/null
waited=0
while [ "$(terns_running)" -gt 0 ] && [ $waited -lt 100 ]; do
    sleep 0.1
    waited=$((waited + 1))
done
section "kill-run $(wc -l < /tmp/reports-kill) reports, $(terns_running) running after"
tc_state >&3

# A fourth after the kill: it adopts the maps the killed one kept, and continues its counts.
timeout 60 tern run --output stdout --interval "$interval" --count 1 > /tmp/reports-resume \
    2> /tmp/tern-resume.err
status=$?
if grep -q 'continuing from the last report of the tern before: every count since' \
    /tmp/tern-resume.err; then
    section "resume-run adopted, exit $status"
else
    section "resume-run not-adopted, exit $status"
fi
section tern-stderr-runs
cat /tmp/tern-term.err /tmp/tern-kill.err /tmp/tern-resume.err >&3
section end
exec 3>&-
poweroff -f
