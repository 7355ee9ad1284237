#!/bin/sh
# The kernel matrix's guest: PID 1 of the initramfs that `cargo xtask test-kernels` boots.
# It runs one scenario with tern in the root network namespace and a peer namespace across
# a veth pair, records the ground truth with ss, ip and /proc/net/snmp, writes everything in
# marked sections on the second serial port (the first carries the kernel's noise), and
# powers off. Parameters come from the kernel command line: tern_interval, tern_count.

export PATH=/sbin:/bin:/usr/sbin:/usr/bin
# busybox's shell prefers its own applets to PATH; the host's ip and kmod are meant.
ip() { /usr/sbin/ip "$@"; }
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

interval=2
count=5
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        tern_interval=*) interval=${arg#tern_interval=} ;;
        tern_count=*) count=${arg#tern_count=} ;;
    esac
done

# One descriptor for the whole run: lines written through short-lived opens of the port
# were seen lost. Closing it at the end waits until the port has sent everything.
exec 3> /dev/ttyS1
stty -F /dev/ttyS1 raw -echo
section() { echo "@@ $1" >&3; }

section "kernel $(uname -r) $(uname -m)"
for module in $(cat /etc/tern-modules); do
    modprobe "$module" 2> /dev/null
done

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

# Sockets older than tern: a TCP listener and a bound UDP socket here, and in the peer the
# ends of this side's connection and datagrams. busybox's nc closes at the end of its input,
# and a background job's input is /dev/null: a sleep holds each one open.
sleep 600 | nc -l -p 8080 > /dev/null &
xtask guest-udp bind 5353 &
sleep 600 | ip netns exec peer nc -l -p 9090 > /dev/null &
ip netns exec peer xtask guest-udp bind 5000 &
sleep 1

section link-before
ip -j -s link show dev veth0 >&3
section snmp-before
cat /proc/net/snmp >&3

timeout $((interval * count + 60)) tern run --output stdout --interval "$interval" \
    --count "$count" > /tmp/reports 2> /tmp/tern.err &
tern=$!
# The traffic starts once tern has reported, so every packet falls inside its intervals.
waited=0
while [ ! -s /tmp/reports ] && kill -0 $tern 2> /dev/null && [ $waited -lt 120 ]; do
    sleep 0.5
    waited=$((waited + 1))
done

if kill -0 $tern 2> /dev/null; then
    # Connections held open both ways, datagrams of a known size, and a ping.
    (echo hello; sleep 600) | ip netns exec peer nc 10.0.0.1 8080 > /dev/null &
    (echo hello; sleep 600) | nc 10.0.0.2 9090 > /dev/null &
    xtask guest-udp send 10.0.0.2:5000 20 512
    ping -c 3 10.0.0.2 > /dev/null
    sleep 1
    section ss-listening
    ss -H -tlnu >&3
    section ss-established
    ss -H -tn state established >&3
fi
wait $tern
status=$?

section link-after
ip -j -s link show dev veth0 >&3
section snmp-after
cat /proc/net/snmp >&3
section reports
cat /tmp/reports >&3
section tern-stderr
cat /tmp/tern.err >&3
section "exit $status"
section end
exec 3>&-
poweroff -f
