"""The reference ceiling: a bare aiohttp + uvloop POST handler answering a fixed envelope."""

from __future__ import annotations

import argparse

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
    args = p.parse_args()
    app = web.Application()
    app.router.add_post("/fsi/api/rsfComIfsService/callService", handle)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
