"""discordproxy's own PyPI client (discordproxy==1.5.1) against easel's gRPC API.

Usage: discordproxy_client.py '<json request>'; prints one JSON line with the outcome:
{"ok": <message or channels as MessageToDict>} or {"http": {status, code, text}} or
{"timeout": str} or {"grpc": {status, details}} or {"value_error": str}.

Requests: {"target", "op": "channel"|"direct"|"channels"|"burst", "id", "content", "embed"
(dict, optional), "timeout" (s, optional), "n" (burst)}.
"""

import json
import sys
from concurrent.futures import ThreadPoolExecutor

from google.protobuf import json_format

from discordproxy.client import DiscordClient
from discordproxy.discord_api_pb2 import Embed
from discordproxy.exceptions import (
    DiscordProxyGrpcError,
    DiscordProxyHttpError,
    DiscordProxyTimeoutError,
)


def as_dict(message):
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def run(request):
    client = DiscordClient(target=request["target"], timeout=request.get("timeout"))
    op = request["op"]
    embed = None
    if "embed" in request:
        embed = json_format.ParseDict(request["embed"], Embed())
    try:
        if op == "channel":
            message = client.create_channel_message(
                request["id"], content=request.get("content", ""), embed=embed
            )
            return {"ok": as_dict(message)}
        if op == "direct":
            message = client.create_direct_message(
                request["id"], content=request.get("content", ""), embed=embed
            )
            return {"ok": as_dict(message)}
        if op == "channels":
            channels = client.get_guild_channels(request["id"])
            return {"ok": [as_dict(c) for c in channels]}
        if op == "burst":
            def one(i):
                return client.create_channel_message(request["id"], content=f"burst {i}")

            with ThreadPoolExecutor(max_workers=request["n"]) as pool:
                sent = list(pool.map(one, range(request["n"])))
            return {"ok": sorted(m.content for m in sent)}
        raise SystemExit(f"unknown op {op}")
    except DiscordProxyHttpError as err:
        return {
            "http": {"status": err.status, "code": err.code, "text": err.text},
            "str": str(err),
        }
    except DiscordProxyTimeoutError as err:
        return {"timeout": str(err)}
    except DiscordProxyGrpcError as err:
        return {"grpc": {"status": err.status.name, "details": err.details}, "str": str(err)}
    except ValueError as err:
        return {"value_error": str(err)}


if __name__ == "__main__":
    print(json.dumps(run(json.loads(sys.argv[1]))))
