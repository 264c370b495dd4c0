#!/usr/bin/env python3
"""A sensor on another host, for tests/bench/devicecut.sh: publishes QoS 1 to cut/<seq> at
RATE a second until N, and connects again when the broker goes away. A message the broker
did not acknowledge is not sent again, so that every duplicate the agent meets comes from
the broker. Prints how many the broker acknowledged and how many are in doubt.

Usage: sensor.py HOST PORT N RATE [BASE [CLIENT_ID [ACKED_FILE]]]
  BASE        the first seq (default 0): topics cut/BASE to cut/BASE+N-1
  CLIENT_ID   default cut-sensor
  ACKED_FILE  where to write the acknowledged seqs, one a line
(Python 3 standard library only: MQTT 3.1.1 by hand)"""
import socket, struct, sys, threading, time
host, port, n, rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
base = int(sys.argv[5]) if len(sys.argv) > 5 else 0
cid = (sys.argv[6] if len(sys.argv) > 6 else "cut-sensor").encode()

def rl(x):
    out = b""
    while True:
        b = x % 128; x //= 128
        out += bytes([b | (0x80 if x else 0)])
        if not x: return out

def connect():
    while True:
        try:
            s = socket.create_connection((host, port), timeout=2)
            vh = b"\x00\x04MQTT\x04\x02\x00\x3c"
            body = vh + struct.pack(">H", len(cid)) + cid
            s.sendall(b"\x10" + rl(len(body)) + body)
            h = s.recv(4)
            if len(h) == 4 and h[0] == 0x20 and h[3] == 0:
                s.settimeout(None)
                return s
        except OSError:
            pass
        time.sleep(0.2)

acked = set(); pending = {}; lock = threading.Lock()
def reader(s):
    buf = b""
    try:
        while True:
            d = s.recv(65536)
            if not d: return
            buf += d
            while len(buf) >= 4:
                if buf[0] == 0x40:
                    mid = struct.unpack(">H", buf[2:4])[0]
                    with lock:
                        seq = pending.pop(mid, None)
                        if seq is not None: acked.add(base + seq)
                    buf = buf[4:]
                else:
                    buf = buf[2 + buf[1]:]
    except OSError:
        return

s = connect(); threading.Thread(target=reader, args=(s,), daemon=True).start()
t0 = time.time(); mid = 0; doubt = []
for seq in range(n):
    while time.time() < t0 + seq / rate: time.sleep(0.0005)
    mid = mid % 65535 + 1
    topic = f"cut/{base + seq}".encode()
    body = struct.pack(">H", len(topic)) + topic + struct.pack(">H", mid) + b"{}"
    with lock: pending[mid] = seq
    try:
        s.sendall(b"\x32" + rl(len(body)) + body)
    except OSError:
        with lock:
            doubt += list(pending.values()); pending.clear()
        s = connect(); threading.Thread(target=reader, args=(s,), daemon=True).start()
        print(f"reconnected at seq {seq}", file=sys.stderr, flush=True)
time.sleep(2)
with lock: doubt += list(pending.values())
print(f"acked {len(acked)} doubt {len(doubt)}")
if len(sys.argv) > 7:
    with open(sys.argv[7], "w") as f: f.write("".join(f"{a}\n" for a in sorted(acked)))
