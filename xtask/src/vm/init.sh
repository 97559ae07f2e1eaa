#!/busybox sh
# PID 1 of a `cargo xtask vm` guest. The root is this initramfs; the host's
# /usr and /etc are mounted read-only over 9p below a tmpfs overlay (the
# guest's writes never reach the host), the workspace read-only at its host
# path, the guest kernel's modules where modprobe looks, and the job share
# (the test binaries, run.sh, and out/ for the results) read-write.
# The kernel passes WARDEN_WS (the workspace path) from its command line.
B=/busybox
$B mount -t proc proc /proc
$B mount -t sysfs sysfs /sys
$B mount -t devtmpfs dev /dev
for m in $($B cat /modules/order); do
    $B insmod /modules/"$m" || echo "vm: insmod $m failed"
done

share() { # TAG DIR OPTIONS
    $B mkdir -p "$2"
    $B mount -t 9p -o "trans=virtio,version=9p2000.L,msize=512000,$3" "$1" "$2" ||
        echo "vm: mounting the $1 share failed"
}
overlay() { # TAG DIR
    share "$1" "/lower/$1" ro,cache=loose
    $B mkdir -p "/upper/$1/data" "/upper/$1/work"
    $B mount -t overlay overlay \
        -o "lowerdir=/lower/$1,upperdir=/upper/$1/data,workdir=/upper/$1/work" "$2"
}
$B mkdir -p /upper && $B mount -t tmpfs tmpfs /upper
overlay usr /usr
overlay etc /etc
# Before the workspace: it may live under one of these (a clone in /tmp).
$B mount -t tmpfs tmpfs /tmp
$B mount -t tmpfs tmpfs /run
share ws "$WARDEN_WS" ro,cache=loose
share job /job cache=none
release=$($B uname -r)
$B mkdir -p "/usr/lib/modules/$release"
share mods "/usr/lib/modules/$release" ro,cache=loose

$B mkdir -p /run/netns
$B mount -t cgroup2 cgroup2 /sys/fs/cgroup
$B mount -t bpf bpf /sys/fs/bpf -o mode=0700
$B mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
export PATH=/usr/sbin:/usr/bin HOME=/root LANG=C.UTF-8
/usr/bin/ip link set lo up
# Device nodes that appear only once their module is loaded (systemd would
# create them from modules.devname).
/usr/sbin/modprobe -a tun
# Not `sh`: busybox runs its own applets (its ip) in preference.
/usr/bin/sh /job/run.sh
$B sync
echo o > /proc/sysrq-trigger
$B sleep 10
