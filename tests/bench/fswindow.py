#!/usr/bin/env python3
"""Does an fsync that a file system answers with success at its fault keep what it confirmed?

The state store's flush, without the agent, on an image mounted on a loop device: a loop
appends 3,000 bytes, writes them out (sync_file_range, as sled does) and fdatasyncs the
file, and counts the size as confirmed when fdatasync succeeded and, with --check, when a
change begun after it (fallocate FALLOC_FL_KEEP_SIZE over the first byte, the store's
check) succeeds too. The fault comes 5-50 ms in:
- ext4 (mounted errors=remount-ro, Raspberry Pi OS's root): an ext4 error
  (trigger_fs_error). A confirmed size also needs /sys/fs/ext4/<dev>/errors_count still at
  0 (the store's check until 2026-12-06). The disk is then checked with e2fsck.
- xfs: a shutdown that drops the log not yet written (xfs_io -x -c shutdown, as a crash
  does). The disk is then mounted again (XFS replays its log).
The loop ends at the first failed call. A file shorter than the last confirmed size lost
a confirmed write. docs/state.md has the figures.

Usage (root: loop devices, mount): fswindow.py ext4|xfs TRIALS [--check]
(Python 3 standard library, util-linux, e2fsprogs or xfsprogs.)"""
import ctypes
import os
import random
import subprocess
import sys
import tempfile
import threading

SYNC_FILE_RANGE = 1 | 2 | 4  # WAIT_BEFORE | WRITE | WAIT_AFTER
FALLOC_FL_KEEP_SIZE = 1
libc = ctypes.CDLL(None, use_errno=True)


def call(name, *args):
    if getattr(libc, name)(*args) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{name}: {os.strerror(e)}")


def run(*cmd):
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


def trial(work, fs, check):
    img, mnt = os.path.join(work, "disk.img"), os.path.join(work, "mnt")
    os.makedirs(mnt, exist_ok=True)
    with open(img, "wb") as f:
        f.truncate((64 if fs == "ext4" else 320) << 20)
    if fs == "ext4":
        run("mkfs.ext4", "-q", "-F", "-e", "remount-ro", img)
    else:
        run("mkfs.xfs", "-q", "-f", img)
    dev = run("losetup", "-f", "--show", img)
    name = os.path.basename(dev)
    run("mount", dev, mnt)
    path = os.path.join(mnt, "db")
    fd = os.open(path, os.O_CREAT | os.O_RDWR)
    errors = open(f"/sys/fs/ext4/{name}/errors_count") if fs == "ext4" else None

    def error_count():
        if errors is None:
            return 0
        errors.seek(0)
        return int(errors.read())

    if fs == "ext4":
        knob = f"/sys/fs/ext4/{name}/trigger_fs_error"
        fault = lambda: open(knob, "w").write("x")
    else:
        fault = lambda: subprocess.run(["xfs_io", "-x", "-c", "shutdown", mnt], check=True)
    trigger = threading.Timer(random.uniform(0.005, 0.05), fault)
    trigger.start()
    size = confirmed = 0
    try:
        while True:
            n = os.pwrite(fd, b"z" * 3000, size)
            call("sync_file_range", fd, ctypes.c_longlong(size), ctypes.c_longlong(n), SYNC_FILE_RANGE)
            size += n
            # As the store does: a descriptor of its own for the flush.
            log = os.open(path, os.O_WRONLY)
            try:
                os.fdatasync(log)
                if error_count() != 0:
                    continue
                if check:
                    call("fallocate", log, FALLOC_FL_KEEP_SIZE, ctypes.c_longlong(0), ctypes.c_longlong(1))
            finally:
                os.close(log)
            confirmed = size
    except OSError:
        pass
    trigger.join()
    os.close(fd)
    if errors is not None:
        errors.close()
    run("umount", mnt)
    if fs == "ext4":
        subprocess.run(["e2fsck", "-f", "-y", img], capture_output=True)
    else:
        # A new device: the log replay reads the image as the shutdown left it.
        run("losetup", "-d", dev)
        dev = run("losetup", "-f", "--show", img)
    run("mount", dev, mnt)
    kept = os.path.getsize(path)
    run("umount", mnt)
    run("losetup", "-d", dev)
    return confirmed, kept


def main():
    if len(sys.argv) < 3 or sys.argv[1] not in ("ext4", "xfs"):
        sys.exit(__doc__)
    fs, trials, check = sys.argv[1], int(sys.argv[2]), "--check" in sys.argv[3:]
    lost = 0
    with tempfile.TemporaryDirectory() as work:
        for k in range(trials):
            confirmed, kept = trial(work, fs, check)
            if kept < confirmed:
                lost += 1
                print(f"trial {k}: confirmed {confirmed} bytes, {kept} after the fault: LOST", flush=True)
    how = "fdatasync"
    if fs == "ext4":
        how += " and errors_count"
    if check:
        how += " and a change begun after it"
    print(f"{fs}: {lost} of {trials} faults lost a confirmed write (confirmed by {how})")


if __name__ == "__main__":
    main()
