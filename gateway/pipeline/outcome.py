"""What became of a request: the answer's bytes and the labels the HTTP layer logs and counts.

Apart from gateway.pipeline.dispatch so that the group commit, which the process's runtime holds, can
answer requests without importing the dispatcher that imports the runtime.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass

from adapters.national.envelope import encode_response
from gateway.core.model import FundRow
from gateway.protocol.errors import GatewayError


class Result(enum.StrEnum):
    """What became of a request (the metrics' and the access log's `outcome` label)."""

    OK = "ok"
    REJECTED = "rejected"  # refused with infcode -1: nothing done
    REPLAYED = "replayed"  # a retry answered from the msgid journal
    BUSY = "busy"  # shed or over a share: nothing done, retry the same msgid
    ERROR = "error"  # a dependency failed or a bug: nothing done, retry the same msgid
    DEFERRED = "deferred"  # answered under the emergency plan, settled later
    LEGACY = "legacy"  # answered by the legacy system


@dataclass(slots=True)
class Outcome:
    """What the HTTP layer needs: the bytes, and labels for metrics and logs."""

    body: bytes
    infno: str
    outcome: Result
    msgid: str = ""
    fixmedins_code: str = ""
    terminal: str = ""
    identity_failure: bool = False  # the certificate did not identify the person
    timeout: bool = False  # a dependency timed out (as opposed to failing outright)
    paid: tuple[FundRow, ...] = ()
    content_type: str = "application/json"
    mismatch: bool = False


def failure(region: str, received: dt.datetime, exc: GatewayError) -> bytes:
    """The envelope of a refusal: `infcode -1` and the clerk's message."""
    return encode_response(region=region, received=received, output=None, err_msg=exc.err_msg)
