"""Go pharmacy ERP of YingmoY/Pharmacy-ERP: a retail pharmacy's sale, settled through its own
medicare gateway (a third pharmacy lineage, independent of TeaHZ and of the Dongguan DLL).

Sources (repository YingmoY/Pharmacy-ERP):
`PharmacyERP/internal/sales/service/sales_service.go` (`doMedicareSettle`: the 2101 and 2102
inputs; `Refund`: the 2103 input), `PharmacyERP/internal/pkg/medicare/client.go`
(`ExtractSetlInfo`, `ExtractPersonInfo`: what it reads from the answers),
`medicare-gateway/internal/gateway/service.go` (`envelope`, `SignIn`, `PersonInfo`),
`medicare-gateway/internal/gateway/types.go` (`MedicareEnvelope`), `.../gateway/id.go`
(`NewMsgID`), `medicare-gateway/internal/medicare/client.go` (POST to base URL + `/` + infno;
`Infcode` takes 0 or "0"). Its README says it was run against a local simulator of the centre,
not a production one: it shows what this client sends and reads, not what a centre accepted.

Shapes: the envelope's business node under the key `Input` (capital I; the Go struct tag), no
`cainfo`, `signtype`, `dev_no`, `dev_safe_info` (empty, dropped by `omitempty`),
`recer_sys_code "CSB"`, `infver "1.0.0"`, msgid = yyyyMMddHHmmss + infno + 12 hex digits, the
sign-in's `sign_no` carried on every later call. 2101 `druginfo` without `psn_setlway`,
`dise_codg`, `invono`, with integer `minpacunt_drug_trac_cnt` and `mcs_trac_cnt`; 2102 the same
without those two counts and without `invono`; `drugdetail[]` with only `feedetl_sn`, `rxno`,
`rx_circ_flag "1"`, `fee_ocur_time`, `med_list_codg` (the national code), `medins_list_codg`,
`det_item_fee_sumamt`, `cnt`, `pric`. Amounts are Go float64 values marshalled by
encoding/json (shortest text: 19.8, 40), `cnt` an int32. Answers are read into
`map[string]any`: text by a `.(string)` assertion (anything else reads as ""), amounts by a
`.(float64)` assertion (a JSON number; a string reads as 0).
"""

import datetime as dt
import secrets
from decimal import Decimal

from tests.conformance.shapes import DEC, GO_STRING, Shape


def go_float(text: str) -> Decimal:
    """A float64 as Go's encoding/json writes it: the shortest text, no trailing zeros
    (19.80 -> 19.8, 40.00 -> 40)."""
    value = Decimal(text).normalize()
    return value.quantize(Decimal(1)) if value == value.to_integral_value() else value


def msgid(infno: str) -> str:
    """`NewMsgID`: yyyyMMddHHmmss + infno + the first 12 hex digits of a random UUID."""
    return f"{dt.datetime.now():%Y%m%d%H%M%S}{infno}{secrets.token_hex(6)}"


# `ExtractSetlInfo` after 2102 (setl_id, mdtrt_id, psn_no feed 2103 and the 3505 upload;
# fund_pay_sumamt and acct_pay the order's medicare and personal amounts).
SETLINFO_READS = {
    "setl_id": GO_STRING,
    "mdtrt_id": GO_STRING,
    "psn_no": GO_STRING,
    "fund_pay_sumamt": DEC,
    "acct_pay": DEC,
}

SHAPE = Shape(
    name="yingmo",
    sources=(
        "YingmoY/Pharmacy-ERP PharmacyERP/internal/sales/service/sales_service.go",
        "YingmoY/Pharmacy-ERP PharmacyERP/internal/pkg/medicare/client.go",
        "YingmoY/Pharmacy-ERP medicare-gateway/internal/gateway/service.go",
        "YingmoY/Pharmacy-ERP medicare-gateway/internal/gateway/types.go",
    ),
    hospital="P44180000001",
    pharmacy="P44180000001",
    region="441800",
    psn_no="441800000000000002",
    certno="441802195505052345",
    insutype="310",
    envelope={"recer_sys_code": "CSB", "infver": "1.0.0", "opter_type": "1"},
    amount=go_float,
    line_amount=go_float,
    split_amount=None,
    reads={
        "9001": {"signinoutb": {"sign_no": GO_STRING}},
        "1101": {"baseinfo": {"psn_no": GO_STRING, "psn_name": GO_STRING}},
        "2102": {"setlinfo": SETLINFO_READS},
    },
    flows=frozenset(),  # its own flow (test_flows_yingmo.py): the generic ones send other shapes
    path_per_infno=True,
)

# Envelope fields the Go struct leaves out when empty (`omitempty`).
DROPPED = ("cainfo", "signtype", "dev_no", "dev_safe_info")
INPUT_KEY = "Input"
