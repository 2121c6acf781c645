"""Python's own repr() for the guest-kit cross-check. Modes (argv[1]):
  str   - each stdin line holds a string's code points in hex, space-separated ("" for empty);
  float - each stdin line holds a float's IEEE 754 bits as 16 hex digits;
  chars - no input: repr(chr(c)) for every code point but the surrogates.
Prints one repr per line, UTF-8."""
import struct
import sys

out = open(sys.stdout.fileno(), "w", encoding="utf-8", newline="\n", closefd=False)
mode = sys.argv[1]
if mode == "chars":
    for c in range(0x110000):
        if not 0xD800 <= c <= 0xDFFF:
            out.write(repr(chr(c)) + "\n")
else:
    for line in sys.stdin:
        line = line.strip()
        if mode == "str":
            value = "".join(chr(int(c, 16)) for c in line.split())
        else:
            value = struct.unpack(">d", bytes.fromhex(line))[0]
        out.write(repr(value) + "\n")
out.flush()
