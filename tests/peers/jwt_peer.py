"""PyJWT (from PyPI) as a test peer for easel's HS256 tokens.

Usage:
  python3 jwt_peer.py verify SECRET TOKEN   -> prints the verified payload as JSON
  python3 jwt_peer.py mint SECRET PAYLOAD   -> prints an HS256 token for the JSON PAYLOAD
A token PyJWT refuses prints {"error": "<exception class>: <message>"} and exits 1.
"""

import json
import sys

import jwt


def main() -> int:
    command, secret, arg = sys.argv[1], sys.argv[2], sys.argv[3]
    if command == "verify":
        try:
            payload = jwt.decode(arg, secret, algorithms=["HS256"])
        except jwt.PyJWTError as err:
            print(json.dumps({"error": f"{type(err).__name__}: {err}"}))
            return 1
        print(json.dumps(payload))
        return 0
    if command == "mint":
        print(jwt.encode(json.loads(arg), secret, algorithm="HS256"))
        return 0
    print(f"unknown command {command!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
