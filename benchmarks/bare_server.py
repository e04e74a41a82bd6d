"""The reference ceiling: a bare aiohttp + uvloop POST handler answering a fixed envelope.

`--workers N` runs N such processes on one port (SO_REUSEPORT, as `serve --workers N` does): the
ceiling to set a gateway of N workers against."""

from __future__ import annotations

import argparse
import os
import signal

import uvloop
from aiohttp import web

BODY = (
    b'{"infcode":0,"inf_refmsgid":"441800202601010000000000000001","refmsg_time":"20260101000000000",'
    b'"respond_time":"20260101000000001","err_msg":"\xe6\x88\x90\xe5\x8a\x9f","output":{},"warn_msg":null}'
)


async def handle(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=BODY, content_type="application/json")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--workers", type=int, default=1)
    args = p.parse_args()
    children: list[int] = []
    for _ in range(args.workers - 1):
        pid = os.fork()
        if pid == 0:
            children.clear()
            break  # a child serves; the parent forks the rest and serves too
        children.append(pid)
    app = web.Application()
    app.router.add_post("/fsi/api/rsfComIfsService/callService", handle)
    uvloop.install()
    web.run_app(
        app,
        host="127.0.0.1",
        port=args.port,
        access_log=None,
        print=None,
        reuse_port=args.workers > 1,
    )
    for pid in children:  # the parent, stopped: its children with it
        os.kill(pid, signal.SIGTERM)


if __name__ == "__main__":
    main()
