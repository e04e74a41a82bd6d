"""1901 字典表下载: the national code lists the gateway speaks (gateway.core.dictionaries)."""

from __future__ import annotations

from typing import Any

from adapters.national import wire
from adapters.national.envelope import decode_input, text
from gateway.core.dictionaries import DICTIONARIES
from gateway.emergency.plan.rules import TxClass
from gateway.protocol.errors import BadRequest
from gateway.protocol.transaction import Answer, Call, register


@register("1901", "字典表下载", writes=False, klass=TxClass.QUERY, input=wire.In1901)
async def dictionary(call: Call) -> Answer:
    """The rows of one dictionary (`type`), or of every one where none is named, under `list`
    (openhis `Output_1901`). Each row carries the parent and validity in both spellings public
    clients read (parent_value and parentValue, vali_flag and valiFlag). Found from outside: a
    HIS that downloads its dictionaries when it is set up was refused 1901 outright."""
    data = decode_input(call.req, wire.In1901).data
    if data is None:
        raise BadRequest("缺少输入节点data")
    kind = text(data.type)
    parent = text(data.parentValue) or text(data.parent_value)
    valid = text(data.valiFlag) or text(data.vali_Flag) or text(data.vali_flag)
    if valid not in ("", "0", "1"):
        raise BadRequest(f"有效标志valiFlag只能为0或1（收到{valid}）")
    if kind and kind not in DICTIONARIES:
        served = "、".join(DICTIONARIES)
        return Answer(
            {"list": []},
            warn_msg=f"本系统未提供字典类型{kind}（以医保中心发布的为准）；可下载：{served}",
        )
    rows: list[dict[str, Any]] = []
    # Every code served is in force and none has a parent: asked for invalid codes, or the
    # children of a code, the answer is an empty list.
    if not parent and valid != "0":
        for name in [kind] if kind else list(DICTIONARIES):
            for sort, (value, label) in enumerate(DICTIONARIES[name], start=1):
                rows.append(
                    {
                        "type": name,
                        "label": label,
                        "value": value,
                        "parent_value": "",
                        "parentValue": "",
                        "sort": sort,
                        "vali_flag": "1",
                        "valiFlag": "1",
                    }
                )
    return Answer({"list": rows})
