"""The third shape of the interface's address: one path per service, the transaction named by
the path (protocol.md §1.1, "one path per service"). A HIS built this way posts its 1101 to
`…/fsi/api/fsiPsnInfoService/queryPsnInfo`, not to `callService`; found from outside, every
such request was answered 404 and the HIS could reach nothing.

Read from public clients: newtouch-cloud/openhis `WinServiceAPI/YiBaoInterface/ClassHelper.cs`
(`GetPubWay`, Hebei's table) and a Zhejiang C client posting its sign-in, sign-out, 9101 and
2205/2206A to the same paths. Only the transactions the gateway serves are listed; 3302 is not
(the openhis table maps it to 3202's path, a copying slip the spec notes), nor the pharmacy
sale, 5201 and 5202, for which no client of this shape was found: they go to `callService`.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

# path -> the infno the path names (a revision's own path names the revision: 2207A is the
# older `saveSettletment`, 2207 the `…V2` the table gives the base code).
SERVICE_PATHS: Mapping[str, str] = MappingProxyType(
    {
        "/fsi/api/signInSignOutService/signIn": "9001",
        "/fsi/api/signInSignOutService/signOut": "9002",
        "/fsi/api/fileupload/upload": "9101",
        "/fsi/api/fileupload/download": "9102",
        "/fsi/api/fsiPsnInfoService/queryPsnInfo": "1101",
        "/fsi/api/catalogqueryservice/queryHilist": "1312",
        "/fsi/api/catalogqueryservice/queryMedListMapByPage": "1317",
        "/fsi/api/catalogqueryservice/queryLmtprcByPage": "1318",
        "/fsi/api/catalogqueryservice/querySelfpayByPage": "1319",
        "/fsi/api/fsiPsnPriorityInfoService/queryPsnPriorityInfo": "2001",
        "/fsi/api/outpatientDocInfoService/outpatientRregistration": "2201",
        "/fsi/api/outpatientDocInfoService/outpatientRegistrationCancel": "2202",
        "/fsi/api/outpatientDocInfoService/outpatientMdtrtinfoUp": "2203",
        "/fsi/api/outpatientDocInfoService/outpatientMdtrtinfoUpA": "2203A",
        "/fsi/api/outpatientDocInfoService/outpatientFeeListUp": "2204",
        "/fsi/api/outpatientDocInfoService/outpatientFeeListUpCancel": "2205",
        "/fsi/api/outpatientSettleService/preSettletment": "2206",
        "/fsi/api/outpatientSettleService/preSettletmentA": "2206A",
        "/fsi/api/outpatientSettleService/saveSettletmentV2": "2207",
        "/fsi/api/outpatientSettleService/saveSettletment": "2207A",
        "/fsi/api/outpatientSettleService/cancleSettletment": "2208",
        "/fsi/api/hospFeeDtlService/feeDtlUp": "2301",
        "/fsi/api/hospFeeDtlService/feeDtlCl": "2302",
        "/fsi/api/hospSettService/preSett": "2303",
        "/fsi/api/hospSettService/settV2": "2304",
        "/fsi/api/hospSettService/settCl": "2305",
        "/fsi/api/hospitalRegisterService/hospitalRegisterSave": "2401",
        "/fsi/api/dscgService/dischargeProcess": "2402",
        "/fsi/api/hospitalRegisterService/hospitalRegisterEdit": "2403",
        "/fsi/api/hospitalRegisterService/hospitalRegisterCancel": "2404",
        "/fsi/api/dscgService/dischargeUndo": "2405",
        "/fsi/api/reverseService/revsMethod": "2601",
        "/fsi/api/ybSettlementStmtService/stmtTotal": "3201",
        "/fsi/api/ybSettlementStmtService/stmtDetail": "3202",
        "/fsi/api/catalogCompService/catalogCompUp": "3301",
        "/fsi/api/fsiIntegratedQueryService/querySetlInfo": "5203",
        "/fsi/api/fsiIntegratedQueryService/queryFeeList": "5204",
    }
)
