#!/usr/bin/env python3
"""Does an fdatasync that ext4 answers with success at an error keep what it confirmed?

The state store's flush, without the agent: on an ext4 image mounted on a loop device
with errors=remount-ro (Raspberry Pi OS's root), a loop appends 3,000 bytes, writes them
out (sync_file_range, as sled does) and fdatasyncs the file, and counts the size as
confirmed when fdatasync succeeded and /sys/fs/ext4/<dev>/errors_count still reads 0
(the store's check until 2026-12-06) and, with --journal-check, when a journal
transaction begun after it (fallocate FALLOC_FL_KEEP_SIZE over the first byte, the
store's check since) succeeds too. An ext4 error is triggered 5-50 ms in
(trigger_fs_error); the loop ends at the first failed call. After e2fsck, a file shorter
than the last confirmed size lost a confirmed write. docs/state.md has the figures.

Usage (root: loop devices, mount): ext4window.py TRIALS [--journal-check]
(Python 3 standard library, e2fsprogs, util-linux.)"""
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


def trial(work, journal_check):
    img, mnt = os.path.join(work, "disk.img"), os.path.join(work, "mnt")
    os.makedirs(mnt, exist_ok=True)
    with open(img, "wb") as f:
        f.truncate(64 << 20)
    run("mkfs.ext4", "-q", "-F", "-e", "remount-ro", img)
    dev = run("losetup", "-f", "--show", img)
    name = os.path.basename(dev)
    run("mount", dev, mnt)
    path = os.path.join(mnt, "db")
    fd = os.open(path, os.O_CREAT | os.O_RDWR)
    errors = open(f"/sys/fs/ext4/{name}/errors_count")

    def error_count():
        errors.seek(0)
        return int(errors.read())

    knob = f"/sys/fs/ext4/{name}/trigger_fs_error"
    trigger = threading.Timer(random.uniform(0.005, 0.05), lambda: open(knob, "w").write("x"))
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
                if journal_check:
                    call("fallocate", log, FALLOC_FL_KEEP_SIZE, ctypes.c_longlong(0), ctypes.c_longlong(1))
            finally:
                os.close(log)
            confirmed = size
    except OSError:
        pass
    trigger.join()
    os.close(fd)
    errors.close()
    run("umount", mnt)
    subprocess.run(["e2fsck", "-f", "-y", img], capture_output=True)
    run("mount", dev, mnt)
    kept = os.path.getsize(path)
    run("umount", mnt)
    run("losetup", "-d", dev)
    return confirmed, kept


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    trials, journal_check = int(sys.argv[1]), "--journal-check" in sys.argv[2:]
    lost = 0
    with tempfile.TemporaryDirectory() as work:
        for k in range(trials):
            confirmed, kept = trial(work, journal_check)
            if kept < confirmed:
                lost += 1
                print(f"trial {k}: confirmed {confirmed} bytes, {kept} after e2fsck: LOST", flush=True)
    check = "errors_count and a journal transaction" if journal_check else "errors_count only"
    print(f"{lost} of {trials} errors lost a confirmed write (confirmed by fdatasync and {check})")


if __name__ == "__main__":
    main()
