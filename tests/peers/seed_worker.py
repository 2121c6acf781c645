"""A worker that behaves exactly like Stably Discordant's Python worker, for tests.

Same socket (DEALER, no identity), same messages (Python json.dumps defaults), same loop: send
READY, block on recv, "make" the image, send OUTPUT with the PNG in base64, repeat. Instead of
a diffusion model it writes a small real PNG whose colour comes from the prompt, and prints
each job it receives as one JSON line on stdout so tests can check what was sent.

It also checks the one-job-per-worker rule: after finishing a job, a second job must not be
waiting already (the host may only send after READY).
"""

import argparse
import base64
import hashlib
import json
import socket
import struct
import sys
import time
import zlib

import zmq


def png(width, height, rgb):
    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def make_image(prompt, cfg, steps):
    digest = hashlib.sha256(prompt.encode()).digest()
    return png(24, 16, digest[:3])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--host-ip", required=True)
    parser.add_argument("--host-port", default="5555")
    parser.add_argument("--hostname", default=socket.gethostname())
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()

    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.connect(f"tcp://{args.host_ip}:{args.host_port}")
    while True:
        sock.send(json.dumps({"type": "READY", "hostname": args.hostname}).encode())
        job = json.loads(sock.recv())
        print(json.dumps(job), flush=True)
        id_num = job.pop("id_num")
        time.sleep(args.delay)
        image = make_image(**job)  # TypeError on any extra key, like the real worker
        if sock.poll(0):
            print("VIOLATION: a second job arrived before READY", flush=True)
        sock.send(
            json.dumps(
                {
                    "type": "OUTPUT",
                    "image_data": base64.b64encode(image).decode(),
                    "id_num": id_num,
                    "hostname": args.hostname,
                }
            ).encode()
        )


if __name__ == "__main__":
    sys.exit(main())
