#!/usr/bin/env python3
"""Run a program through execbox's live WebSocket protocol (`execbox.v2`, docs/live-protocol.md)
and talk to it: its output is printed as it arrives, lines typed here go to its stdin,
Ctrl-C sends it SIGINT, Ctrl-D (end of input) closes its stdin. Exits with the program's exit
code (1 when the run did not end with one).

    pip install -r examples/live/requirements.txt
    EXECBOX_TOKEN=<jwt> python examples/live/client.py [--url ws://localhost:8080/v1/ws] \
        [--language python] FILE [ARGS...]
"""

import argparse
import asyncio
import json
import os
import signal
import sys
import threading

from websockets.asyncio.client import connect


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="ws://localhost:8080/v1/ws")
    p.add_argument("--language", default="python")
    p.add_argument("--stages", action="store_true", help="print stage changes on stderr")
    p.add_argument("file")
    p.add_argument("args", nargs="*")
    return p.parse_args()


async def run(a) -> int:
    token = os.environ.get("EXECBOX_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with open(a.file, encoding="utf-8") as f:
        source = f.read()
    async with connect(a.url, subprotocols=["execbox.v2"], additional_headers=headers) as ws:
        ready = json.loads(await ws.recv())
        if ready["type"] != "ready":
            print(f"execbox: {ready}", file=sys.stderr)
            return 1
        request = {
            "language": a.language,
            "files": [{"name": os.path.basename(a.file), "content": source}],
            "args": a.args,
        }
        await ws.send(json.dumps({"type": "run", "request": request}))

        loop = asyncio.get_running_loop()

        def send_soon(message):
            asyncio.run_coroutine_threadsafe(ws.send(json.dumps(message)), loop)

        # Ctrl-C goes to the program, not to this client.
        loop.add_signal_handler(signal.SIGINT, send_soon, {"type": "signal", "signal": "INT"})

        def pump_stdin():
            for line in sys.stdin:
                send_soon({"type": "stdin", "data": line})
            send_soon({"type": "stdin", "eof": True})

        threading.Thread(target=pump_stdin, daemon=True).start()

        async for text in ws:
            m = json.loads(text)
            kind = m["type"]
            if kind == "stdout":
                sys.stdout.write(m["data"])
                sys.stdout.flush()
            elif kind == "stderr":
                sys.stderr.write(m["data"])
                sys.stderr.flush()
            elif kind == "stage" and a.stages:
                print(f"[{m['stage']}]", file=sys.stderr)
            elif kind == "error":
                # Stdin typed after the program ended is refused (no_run): not worth a word.
                if m["error"]["code"] != "no_run":
                    print(f"[execbox: {m['error']['code']}: {m['error']['message']}]", file=sys.stderr)
            elif kind == "exit":
                record = m["record"]
                run = record.get("run") or {}
                print(f"[{record['status']}, exit code {run.get('exit_code')}]", file=sys.stderr)
                code = run.get("exit_code")
                return code if isinstance(code, int) else 1
    return 1


if __name__ == "__main__":
    sys.exit(asyncio.run(run(parse_args())))
