#!/usr/bin/env bash
# Builds a flashable Raspberry Pi image from Debian packages only: Debian 12 bookworm
# arm64 (linux-image-arm64, raspi-firmware, firmware-brcm80211, as Debian's own Pi images),
# with the agent's aarch64 .deb installed, your config and precompiled functions staged,
# Mosquitto as the broker, and the agent's unit enabled.
#
# Usage: sudo cross/image.sh --board pi3|pi4|pi-zero-2w --config FILE --modules DIR
#            [--ssh-key FILE] [--wifi FILE] [--hostname NAME] [--read-only-root]
#            [--deb FILE] [--dry-run] -o edge-agent-<board>.img
#   --board      pi3 (3 B/B+, CM3), pi4 (4 B, 400, CM4) or pi-zero-2w: which firmware
#                files and device trees go on the FAT partition (the root is the same)
#   --config     the agent's config: /etc/edge-agent/config.toml (checked with the
#                image's own agent before the image is written)
#   --modules    a folder of functions for /usr/lib/edge-agent/modules/: components
#                (*.wasm), precompiled here for aarch64 by the host's `precompile` build,
#                and functions already precompiled (*.cwasm, by `edge-agent precompile
#                --target aarch64-unknown-linux-gnu` of the same version)
#   --ssh-key    a public key file (e.g. ~/.ssh/id_ed25519.pub) written into the settings
#                file as ssh_key= lines: root may log in with it
#   --wifi       a file of ssid=, psk= and country= lines, written into the settings file
#   --hostname   hostname= in the settings file (default edge-agent)
#   --read-only-root  mount / read-only; the state directory /var/lib/edge-agent gets a
#                partition of its own (ext4, grown to the rest of the card at first boot)
#   --deb        the agent's package (default: built now by cross/deb.sh aarch64)
#   --dry-run    check the arguments, say what would be built, and stop (needs no root)
#   -o           the image file to write (*.img); flash it with dd, bmaptool or rpi-imager
#
# The FAT partition holds edge-agent-settings.txt, which a person can edit after
# flashing (hostname, SSH keys, Wi-Fi, Mosquitto on the LAN); edge-agent-firstboot.service
# applies it at the next boot (cross/image/). Needs root, and from Debian's packages
# mmdebstrap, arch-test, qemu-user-static, binfmt-support, dosfstools, mtools, fdisk, e2fsprogs
# (installed when missing). Downloads the packages from the Debian mirror (MIRROR,
# default http://deb.debian.org/debian). Work files go to a temporary folder (TMPDIR).
# Exit status: 64 usage, 66 an input is missing or wrong, 69 a tool is missing, 77 not
# root, 1 the build failed.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
here="$repo/cross/image"
me=cross/image.sh
# shellcheck source=lib.sh
source "$repo/cross/lib.sh"

usage() { sed -n '2,34s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2; exit 64; }
die() { echo "$me: $1" >&2; exit "${2:-1}"; }
say() { echo "$me: $*" >&2; }

board="" config="" modules="" ssh_key="" wifi="" hostname=edge-agent read_only="" deb="" out="" dry_run=""
need_value() { [[ $# -ge 2 && -n $2 ]] || die "$1 needs a value (--help for usage)" 64; }
while (($#)); do
    case $1 in
        --board) need_value "$@"; board=$2; shift ;;
        --config) need_value "$@"; config=$2; shift ;;
        --modules) need_value "$@"; modules=$2; shift ;;
        --ssh-key) need_value "$@"; ssh_key=$2; shift ;;
        --wifi) need_value "$@"; wifi=$2; shift ;;
        --hostname) need_value "$@"; hostname=$2; shift ;;
        --read-only-root) read_only=yes ;;
        --dry-run) dry_run=yes ;;
        --deb) need_value "$@"; deb=$2; shift ;;
        -o | --output) need_value "$@"; out=$2; shift ;;
        -h | --help) usage ;;
        *) die "unknown argument '$1' (--help for usage)" 64 ;;
    esac
    shift
done

# --- validation: everything that can be wrong in the arguments, before anything runs ------
case $board in
    pi3 | pi4 | pi-zero-2w) ;;
    '') die "--board is required: pi3, pi4 or pi-zero-2w" 64 ;;
    *) die "unknown board '$board': pi3, pi4 or pi-zero-2w (Debian's arm64 kernel does not boot the Pi 5)" 64 ;;
esac
[[ -n $config ]] || die "--config FILE is required (e.g. configs/device.toml)" 64
[[ -n $modules ]] || die "--modules DIR is required (a folder of .wasm or .cwasm files)" 64
[[ -n $out ]] || die "-o FILE is required (e.g. -o edge-agent-$board.img)" 64
[[ $out == *.img ]] || die "the output '$out' must end in .img" 64
[[ -f $config && -r $config ]] || die "config '$config' not found" 66
[[ -d $modules ]] || die "modules folder '$modules' not found" 66
modules=$(cd "$modules" && pwd)
shopt -s nullglob
cwasm=("$modules"/*.cwasm)
wasm=("$modules"/*.wasm)
shopt -u nullglob
((${#cwasm[@]} + ${#wasm[@]} > 0)) || die "no .wasm or .cwasm in '$modules'" 66
for w in "${wasm[@]}"; do
    [[ ! -f ${w%.wasm}.cwasm ]] || die "'$modules' has both $(basename "$w") and its .cwasm: keep one" 66
done
# Every module the config names under /usr/lib/edge-agent/modules must be there, as is or
# to be precompiled (or come with the package, which carries the examples).
while IFS= read -r m; do
    name=$(basename "$m")
    [[ -f $modules/$name || -f $modules/${name%.cwasm}.wasm ]] || [[ $name == threshold-alert.cwasm || $name == echo.cwasm ]] ||
        die "the config names $m, but '$modules' has no $name (or ${name%.cwasm}.wasm)" 66
done < <(sed -n 's|^[[:space:]]*module[[:space:]]*=[[:space:]]*"\(/usr/lib/edge-agent/modules/[^"]*\)".*|\1|p' "$config")
if [[ -n $ssh_key ]]; then
    [[ -f $ssh_key && -r $ssh_key ]] || die "SSH key '$ssh_key' not found" 66
    grep -q 'PRIVATE KEY' "$ssh_key" && die "'$ssh_key' is a private key: give the .pub file" 66
    grep -Eq '^(ssh-|ecdsa-|sk-)' "$ssh_key" || die "'$ssh_key' has no public key line (ssh-ed25519 AAAA...)" 66
fi
wifi_ssid="" wifi_psk="" wifi_country=""
if [[ -n $wifi ]]; then
    [[ -f $wifi && -r $wifi ]] || die "Wi-Fi file '$wifi' not found" 66
    wifi_ssid=$(sed -n 's/^ssid=//p' "$wifi" | tr -d '\r' | head -n 1)
    wifi_psk=$(sed -n 's/^psk=//p' "$wifi" | tr -d '\r' | head -n 1)
    wifi_country=$(sed -n 's/^country=//p' "$wifi" | tr -d '\r' | head -n 1)
    [[ -n $wifi_ssid ]] || die "'$wifi' has no ssid= line" 66
    [[ -z $wifi_psk || (${#wifi_psk} -ge 8 && ${#wifi_psk} -le 63) ]] ||
        die "'$wifi': psk must be 8 to 63 characters (WPA2)" 66
    [[ $wifi_country =~ ^[A-Z]{2}$ ]] || die "'$wifi' needs country=XX (two capital letters, e.g. GB): it sets the legal channels" 66
fi
[[ $hostname =~ ^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$ ]] ||
    die "hostname '$hostname': letters, digits and inner hyphens, at most 63" 64
[[ -z $deb || -f $deb ]] || die "package '$deb' not found" 66
[[ -z $deb ]] || deb=$(realpath "$deb")
[[ -d $(dirname "$out") ]] || die "no folder for '$out'" 66

if [[ -n $dry_run ]]; then
    echo "$me: would build $out for $board: Debian bookworm arm64, $((${#cwasm[@]} + ${#wasm[@]})) module(s) from $modules" \
        "(${#wasm[@]} to precompile)," \
        "config $config, hostname $hostname${ssh_key:+, SSH key from $ssh_key}${wifi:+, Wi-Fi '$wifi_ssid'}${read_only:+, read-only root with a state partition}"
    exit 0
fi

# --- tools ----------------------------------------------------------------------------------
((EUID == 0)) || die "needs root (a chroot, device files and file ownership in the image): sudo $me ..." 77
missing=()
for tool in mmdebstrap:mmdebstrap arch-test:arch-test qemu-aarch64-static:qemu-user-static update-binfmts:binfmt-support \
    mkfs.vfat:dosfstools mcopy:mtools sfdisk:fdisk mkfs.ext4:e2fsprogs; do
    command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
done
if ((${#missing[@]})); then
    say "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null ||
        die "could not install ${missing[*]}" 69
fi
# arm64 maintainer scripts run in the chroot through qemu-user, found by binfmt_misc.
if [[ ! -e /proc/sys/fs/binfmt_misc/status ]]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || die "cannot mount binfmt_misc" 69
fi
[[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]] || update-binfmts --enable qemu-aarch64 ||
    die "cannot register qemu-aarch64 with binfmt_misc" 69

[[ -n $deb ]] || command -v cargo-deb >/dev/null || die "cargo-deb not found (cargo install cargo-deb), or give --deb FILE" 69
[[ -z $deb ]] || dpkg-deb -f "$deb" Architecture | grep -qx arm64 || die "'$deb' is not an arm64 package" 66

start=$(date +%s)
work=$(mktemp -d "${TMPDIR:-/tmp}/edge-agent-image.XXXXXX")
rootfs=$work/rootfs
mkdir -p "$work/precompiled"
# The agent's package (cross/deb.sh: the device build) and the precompiling of the .wasm
# (the host's `precompile` build) are built while mmdebstrap makes the root file system:
# mmdebstrap keeps about one core busy (dpkg and maintainer scripts under qemu-user), the
# compilers the rest. (Sequentially, a fresh clone took 18.6 min; docs/device-build.md.)
build() {
    cd "$repo"
    [[ -n $deb ]] || deb=$(cross/deb.sh aarch64 | tail -n 1)
    echo "$deb" >"$work/deb-path"
    if ((${#wasm[@]})); then
        host=$(precompiler)
        "$host" precompile --target aarch64-unknown-linux-gnu --out "$work/precompiled" "${wasm[@]}"
    fi
}
say "${deb:+not }building the agent's package${deb:+ (--deb)}, precompiling ${#wasm[@]} function(s): beside the root file system"
# In a process group of its own (set -m), so that a failure or Ctrl-C here stops cargo too.
set -m
build >"$work/build.log" 2>&1 &
build_pid=$!
set +m
trap 'kill -- "-$build_pid" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT

# --- the root file system ---------------------------------------------------------------------
# Only what the agent and a headless Pi need. systemd-networkd (DHCP on eth0 and wlan0)
# and systemd-resolved instead of ifupdown and a DHCP client package; wpasupplicant for
# Wi-Fi; openssh-server for keys from the settings file; Mosquitto, the broker the agent's
# config normally names (the .deb recommends it); no documentation, manuals or locales
# (copyright files stay).
packages=(
    systemd-sysv systemd-resolved systemd-timesyncd udev kmod
    linux-image-arm64 raspi-firmware firmware-brcm80211 wireless-regdb initramfs-tools zstd
    wpasupplicant openssh-server mosquitto mosquitto-clients
    iproute2 procps netbase e2fsprogs fdisk dosfstools adduser
)
say "mmdebstrap bookworm arm64 ($(IFS=,; echo "${packages[*]}"))"
# The raspi-firmware kernel hook writes the kernel, initrd, device trees, config.txt and
# cmdline.txt into /boot/firmware: there a folder that becomes the FAT partition.
mmdebstrap --arch=arm64 --variant=minbase --components=main,non-free-firmware \
    --include="$(IFS=,; echo "${packages[*]}")" \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --essential-hook='mkdir -p "$1/boot/firmware" "$1/etc/default" "$1/etc/initramfs-tools/hooks" "$1/etc/initramfs-tools/conf.d"' \
    --essential-hook="install -m 0755 '$here/initramfs-hook' \"\$1/etc/initramfs-tools/hooks/edge-agent-image\"" \
    --essential-hook='echo MODULES=list >"$1/etc/initramfs-tools/conf.d/edge-agent-image"' \
    bookworm "$rootfs" "${MIRROR:-http://deb.debian.org/debian}" >"$work/mmdebstrap.log" 2>&1 ||
    { tail -n 20 "$work/mmdebstrap.log" >&2; die "mmdebstrap failed (log above)"; }
say "root file system in $(($(date +%s) - start)) s"
wait "$build_pid" || { tail -n 20 "$work/build.log" >&2; die "building the package or precompiling failed (log above)"; }
deb=$(cat "$work/deb-path")
say "package $(basename "$deb") and functions ready at $(($(date +%s) - start)) s"

# --- configure it ---------------------------------------------------------------------------
# /proc and /dev for the chroot (the kernel hook's chroot detection, the agent's check).
mount -t proc proc "$rootfs/proc"
mount --bind /dev "$rootfs/dev"
trap 'umount "$rootfs/dev" "$rootfs/proc" 2>/dev/null || true; rm -rf "$work"' EXIT
in_root() { chroot "$rootfs" "$@"; }
# Its dependencies (libc6, libgcc-s1, adduser) are in the root already: no download.
cp "$deb" "$rootfs/tmp/edge-agent.deb"
in_root dpkg -i /tmp/edge-agent.deb >"$work/dpkg.log" 2>&1 || { tail -n 20 "$work/dpkg.log" >&2; die "installing $deb failed (log above)"; }
rm -f "$rootfs/tmp/edge-agent.deb"
shopt -s nullglob
cwasm+=("$work"/precompiled/*.cwasm)
shopt -u nullglob
install -m 0644 "${cwasm[@]}" -t "$rootfs/usr/lib/edge-agent/modules/"
install -m 0640 "$config" "$rootfs/etc/edge-agent/config.toml"
in_root chown root:edge-agent /etc/edge-agent/config.toml
# The image's own agent (arm64, through qemu-user) checks the config and the modules now,
# rather than the device at its first boot. (Under qemu-user the pooling probe may fail:
# the fallback says so, and that is not the device's answer.)
if ! check=$(in_root env -i PATH=/usr/bin:/bin /usr/bin/edge-agent check --config /etc/edge-agent/config.toml 2>&1); then
    echo "$check" | tail -n 15 >&2
    die "the config does not pass the image's edge-agent check (above)" 66
fi
say "edge-agent check in the image: $(echo "$check" | tail -n 1)"

# Network: DHCP on Ethernet and Wi-Fi (net.ifnames=0 in cmdline.txt: eth0, wlan0).
for nic in eth wlan; do
    printf '%s\n' "[Match]" "Name=$nic*" "" "[Network]" "DHCP=yes" "MulticastDNS=yes" \
        >"$rootfs/etc/systemd/network/20-$nic.network"
done
in_root systemctl enable systemd-networkd.service systemd-resolved.service >/dev/null 2>&1
# Online once one link is: by default systemd-networkd-wait-online waits for every link it
# manages, and a Pi has one without a carrier (the Wi-Fi when it uses Ethernet, or the
# other way round), which held network-online.target, and the agent, for its 2 min timeout.
mkdir -p "$rootfs/etc/systemd/system/systemd-networkd-wait-online.service.d"
printf '%s\n' "# cross/image.sh: online once any link is (a Pi has an interface it does not use)." \
    "[Service]" "ExecStart=" "ExecStart=/lib/systemd/systemd-networkd-wait-online --any --timeout=60" \
    >"$rootfs/etc/systemd/system/systemd-networkd-wait-online.service.d/any.conf"
echo "$hostname" >"$rootfs/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' "$hostname" >"$rootfs/etc/hosts"
# A 512 MB device: the journal in RAM is capped.
mkdir -p "$rootfs/etc/systemd/journald.conf.d"
printf '%s\n' "[Journal]" "RuntimeMaxUse=16M" "SystemMaxUse=64M" >"$rootfs/etc/systemd/journald.conf.d/edge-agent-image.conf"
# Every copy of the image makes its own SSH host keys and machine id at first boot.
rm -f "$rootfs"/etc/ssh/ssh_host_*
: >"$rootfs/etc/machine-id"
rm -f "$rootfs/var/lib/dbus/machine-id"
install -D -m 0755 "$here/firstboot" "$rootfs/usr/lib/edge-agent-image/firstboot"
install -m 0644 "$here/edge-agent-firstboot.service" "$rootfs/etc/systemd/system/"
in_root systemctl enable edge-agent-firstboot.service >/dev/null 2>&1
in_root systemctl is-enabled edge-agent.service >/dev/null || die "the package did not enable edge-agent.service"

fstab="LABEL=RASPIROOT / ext4 rw,noatime,errors=remount-ro 0 1
LABEL=RASPIFIRM /boot/firmware vfat rw,noatime,umask=0077 0 2"
if [[ -n $read_only ]]; then
    # Read-only root: writes go to the state partition (the agent's sled store), to RAM
    # (/tmp, /var/tmp, /var/log, the journal) or nowhere (Mosquitto keeps no persistence
    # file: its queue for the agent lives through agent restarts, not reboots). /var/log
    # in RAM also because mosquitto.service creates and chowns /var/log/mosquitto before
    # it starts, and fails on a read-only root.
    fstab="LABEL=RASPIROOT / ext4 ro,noatime 0 1
LABEL=RASPIFIRM /boot/firmware vfat rw,noatime,umask=0077 0 2
LABEL=EA-STATE /var/lib/edge-agent ext4 rw,noatime,nodev,nosuid,noexec 0 2
tmpfs /tmp tmpfs rw,nosuid,nodev,size=64M 0 0
tmpfs /var/tmp tmpfs rw,nosuid,nodev,size=16M 0 0
tmpfs /var/log tmpfs rw,nosuid,nodev,noexec,size=16M,mode=0755 0 0"
    echo "ro" >"$rootfs/etc/default/raspi-extra-cmdline"
    printf '%s\n' "[Journal]" "Storage=volatile" "RuntimeMaxUse=16M" >"$rootfs/etc/systemd/journald.conf.d/edge-agent-image.conf"
    sed -i 's/^persistence true/persistence false/' "$rootfs/etc/mosquitto/mosquitto.conf"
    # systemd makes a transient machine id on a read-only root; the first-boot unit
    # commits it.
fi
echo "$fstab" >"$rootfs/etc/fstab"
mkdir -p "$rootfs/var/lib/edge-agent"

# Kernel, initrd, device trees, config.txt and cmdline.txt into /boot/firmware, by the
# package's own hook, with the root found by its label (the card may be /dev/mmcblk0, a
# USB disk or, in cross/image-check.sh, /dev/vda) and the Pi's serial console.
sed -i 's/^#\?ROOTPART=.*/ROOTPART=LABEL=RASPIROOT/; s/^#\?CONSOLES=.*/CONSOLES="ttyS1,115200 tty0"/' \
    "$rootfs/etc/default/raspi-firmware"
grep -q '^ROOTPART=LABEL=RASPIROOT' "$rootfs/etc/default/raspi-firmware" || die "raspi-firmware's defaults changed: no ROOTPART"
# The hook leaves cma= out on a Pi 4 (where it "might render it unbootable"), but it
# tells a Pi 4 by the machine it runs on, here the build host: CMA=0 does the same.
[[ $board != pi4 ]] || sed -i 's/^#\?CMA=.*/CMA=0/' "$rootfs/etc/default/raspi-firmware"
in_root env DEB_MAINT_PARAMS=configure /etc/kernel/postinst.d/z50-raspi-firmware "$(basename "$(ls "$rootfs"/boot/vmlinuz-* | sort -V | tail -n 1)")"
fw=$rootfs/boot/firmware
[[ -f $fw/config.txt && -f $fw/cmdline.txt ]] || die "raspi-firmware wrote no config.txt/cmdline.txt"
# Only the board's firmware and device trees (an upgrade of raspi-firmware or the kernel
# copies them all again: the partition has room for that).
case $board in
    pi4) rm -f "$fw"/bootcode.bin "$fw"/start{,_cd,_db,_x}.elf "$fw"/fixup{,_cd,_db,_x}.dat "$fw"/start4{cd,db,x}.elf "$fw"/fixup4{cd,db,x}.dat "$fw"/bcm2837-*.dtb ;;
    pi3 | pi-zero-2w) rm -f "$fw"/start4*.elf "$fw"/fixup4*.dat "$fw"/start{_cd,_db,_x}.elf "$fw"/fixup{_cd,_db,_x}.dat "$fw"/bcm2711-*.dtb ;;
esac
{
    sed -n '1,/^#ssh_key/p' "$here/edge-agent-settings.txt" | sed "s/^hostname=.*/hostname=$hostname/"
    [[ -z $ssh_key ]] || grep -E '^(ssh-|ecdsa-|sk-)' "$ssh_key" | sed 's/^/ssh_key=/'
    sed -n '/^#ssh_key/,$p' "$here/edge-agent-settings.txt" | sed 1d
} >"$fw/edge-agent-settings.txt"
if [[ -n $wifi ]]; then
    sed -i "s/^#wifi_ssid=.*/wifi_ssid=$wifi_ssid/; s/^#wifi_psk=.*/wifi_psk=$wifi_psk/; s/^#wifi_country=.*/wifi_country=$wifi_country/" \
        "$fw/edge-agent-settings.txt"
fi
# FAT wants CR LF for editors on Windows; firstboot strips the CRs.
sed -i 's/$/\r/' "$fw/edge-agent-settings.txt"
rm -rf "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log "$rootfs"/var/cache/debconf/*-old

umount "$rootfs/dev" "$rootfs/proc"

# --- the image ----------------------------------------------------------------------------------
# MBR: FAT (firmware, kernel, settings), ext4 root, and with --read-only-root an ext4 state
# partition. Partitions start on 4 MiB boundaries (SD cards' erase blocks). The file
# systems are made from folders (mkfs.ext4 -d, mtools): no loop device or mount needed.
mib() { du -sm --apparent-size "$1" | cut -f1; }
fw_used=$(mib "$fw")
# Room for a second kernel and initrd during an upgrade, and the firmware files removed above.
fat_mib=$(( (fw_used * 2 + 64 + 3) / 4 * 4 ))
mkdir -p "$work/fat"
mv "$fw"/* "$work/fat/"
root_used=$(mib "$rootfs")
# The writable root grows to the card at first boot; a read-only one keeps 25 % for upgrades.
slack=$((root_used / 8 + 64))
[[ -z $read_only ]] || slack=$((root_used / 4 + 64))
root_mib=$(( (root_used + slack + 3) / 4 * 4 ))
state_mib=0
[[ -z $read_only ]] || state_mib=160
total_mib=$((4 + fat_mib + root_mib + state_mib))

say "file systems: FAT ${fat_mib} MiB (${fw_used} used), root ${root_mib} MiB (${root_used} used)${read_only:+, state ${state_mib} MiB}"
mkfs.vfat -F 32 -n RASPIFIRM -C "$work/fat.img" $((fat_mib * 1024)) >/dev/null
mcopy -s -m -i "$work/fat.img" "$work/fat"/* ::/
truncate -s "${root_mib}M" "$work/root.img"
mkfs.ext4 -q -L RASPIROOT -d "$rootfs" -m 1 -i 8192 "$work/root.img"
parts=("start=4MiB, size=${fat_mib}MiB, type=c, bootable" "size=${root_mib}MiB, type=83")
if [[ -n $read_only ]]; then
    mkdir -p "$work/state"
    truncate -s "${state_mib}M" "$work/state.img"
    mkfs.ext4 -q -L EA-STATE -d "$work/state" -m 0 "$work/state.img"
    parts+=("size=${state_mib}MiB, type=83")
fi
rm -f "$out"
truncate -s "${total_mib}M" "$out"
printf '%s\n' "label: dos" "${parts[@]}" | sfdisk -q "$out"
dd if="$work/fat.img" of="$out" bs=1M seek=4 conv=notrunc,sparse status=none
dd if="$work/root.img" of="$out" bs=1M seek=$((4 + fat_mib)) conv=notrunc,sparse status=none
[[ -z $read_only ]] || dd if="$work/state.img" of="$out" bs=1M seek=$((4 + fat_mib + root_mib)) conv=notrunc,sparse status=none

elapsed=$(($(date +%s) - start))
say "$(basename "$out"): $(stat -c %s "$out") bytes ($total_mib MiB; $(du -m "$out" | cut -f1) MiB allocated), built in $((elapsed / 60)) min $((elapsed % 60)) s"
echo "$out"
