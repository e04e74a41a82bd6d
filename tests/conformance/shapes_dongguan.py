"""Dongguan pharmacy POS behind the public DLL header (index id 30211168990; repository not
identified): the C structs it fills and the ones it reads back.

Sources: `cal_druginfo_struct` / `cal_drugdetail_struct` (2101, no invono), `trans_druginfo_struct`
(2102, + invono), `pullback_struct` (2103: psn_no, setl_id, mdtrt_id), `postcanceloperation(psn_no,
omsgid, oinfno)` (2601), `postsignin(opter_no, netcardname)` / `postsignout` (9001/9002),
`clientinfo_struct` (1101 with card_sn), `query_trans_basi_struct` (5203), `query_insur_prod_struct`,
`query_prod_relat_struct`, `query_restr_pric_struct`, `query_own_pay_per_struct` (1312/1317/1318/
1319, `int page_num`, `int page_size`). Every amount and quantity is a C `double` (a JSON number);
answers are read into `double` (a JSON number, required) and `char *` (text or number); paged
answers give `int totalrecordscount`, `int totalpages`. The 2103 and 5203 answers are read with
`psn_pay` and `cash_payamt`.
"""

from tests.conformance.shapes import DEC, INT, TEXT, Shape, number

_SETLINFO = {
    **{k: TEXT for k in ("mdtrt_id", "psn_no", "psn_name", "psn_cert_type", "certno", "gend")},
    **{k: TEXT for k in ("naty", "brdy", "insutype", "psn_type", "cvlserv_flag", "setl_time")},
    **{k: TEXT for k in ("mdtrt_cert_type", "med_type", "medins_setl_id", "clr_optins")},
    **{k: TEXT for k in ("clr_way", "clr_type")},
    **{
        k: DEC
        for k in (
            "age", "medfee_sumamt", "fulamt_ownpay_amt", "overlmt_selfpay", "preselfpay_amt",
            "inscp_scp_amt", "act_pay_dedc", "hifp_pay", "pool_prop_selfpay", "cvlserv_pay",
            "hifes_pay", "hifmi_pay", "hifob_pay", "maf_pay", "oth_pay", "fund_pay_sumamt",
            "psn_part_amt", "acct_pay", "psn_cash_pay", "balc", "acct_mulaid_pay",
        )
    },
}  # fmt: skip
_SETLDETAIL = {
    "fund_pay_type": TEXT,
    "inscp_scp_amt": DEC,
    "crt_payb_lmt_amt": DEC,
    "fund_payamt": DEC,
    "fund_pay_type_name": TEXT,
    "setl_proc_info": TEXT,
}
_DETLCUTINFO = {
    **{k: TEXT for k in ("feedetl_sn", "chrgitm_lv", "med_chrgitm_type", "bas_medn_flag")},
    **{k: TEXT for k in ("hi_nego_drug_flag", "chld_medc_flag", "list_sp_item_flag")},
    **{k: TEXT for k in ("drt_reim_flag", "memo")},
    **{
        k: DEC
        for k in (
            "det_item_fee_sumamt", "cnt", "pric", "pric_uplmt_amt", "selfpay_prop",
            "fulamt_ownpay_amt", "overlmt_amt", "inscp_scp_amt", "preselfpay_amt",
        )
    },
}  # fmt: skip
_PULLBACK = {
    **{k: TEXT for k in ("mdtrt_id", "setl_id", "clr_optins", "setl_time", "medins_setl_id")},
    **{
        k: DEC
        for k in (
            "medfee_sumamt", "fulamt_ownpay_amt", "overlmt_selfpay", "preselfpay_amt",
            "inscp_scp_amt", "act_pay_dedc", "hifp_pay", "pool_prop_selfpay", "cvlserv_pay",
            "hifes_pay", "hifmi_pay", "hifob_pay", "maf_pay", "oth_pay", "fund_pay_sumamt",
            "psn_pay", "acct_pay", "cash_payamt", "balc", "acct_mulaid_pay",
        )
    },
}  # fmt: skip
_PAGED = {"recordCounts": INT, "pages": INT}
_ROW = {"hilist_code": TEXT, "begndate": TEXT, "enddate": TEXT, "vali_flag": TEXT}

SHAPE = Shape(
    name="dongguan",
    sources=("Dongguan pharmacy DLL header, index id 30211168990 (repository not identified)",),
    hospital="P33030000001",
    pharmacy="P33030000001",
    region="330300",
    psn_no="330300000000000001",
    certno="330302195209093333",
    insutype="310",
    envelope={"infver": "V1.0", "recer_sys_code": "YBXT", "signtype": "", "cainfo": ""},
    amount=number,
    line_amount=number,
    split_amount=None,
    card_no="WZ0000000001",
    page=int,
    page_size=3,
    reads={
        "2101": {
            "setlinfo": _SETLINFO,
            "setldetail[]": _SETLDETAIL,
            "detlcutinfo[]": _DETLCUTINFO,
        },
        "2102": {
            "setlinfo": {**_SETLINFO, "setl_id": TEXT},
            "setldetail[]": _SETLDETAIL,
            "detlcutinfo[]": _DETLCUTINFO,
        },
        "2103": {"setlinfo": _PULLBACK, "setldetail[]": _SETLDETAIL},
        "5203": {
            "setlinfo": {**_PULLBACK, "psn_no": TEXT, "med_type": TEXT, "refd_setl_flag": TEXT},
            "setldetail[]": _SETLDETAIL,
        },
        "1101": {
            "baseinfo": {"psn_no": TEXT, "certno": TEXT, "psn_name": TEXT, "age": DEC},
            "insuinfo[]": {"balc": DEC, "insutype": TEXT, "psn_type": TEXT},
        },
        "1312": {"": _PAGED, "data[]": {**_ROW, "hilist_name": TEXT, "chrgitm_lv": TEXT}},
        "1317": {
            "": _PAGED,
            "data[]": {
                "fixmedins_code": TEXT,
                "medins_list_codg": TEXT,
                "medins_list_name": TEXT,
                "list_type": TEXT,
                "med_list_codg": TEXT,
                "begndate": TEXT,
                "enddate": TEXT,
                "vali_flag": TEXT,
            },
        },
        "1318": {"": _PAGED, "data[]": {**_ROW, "hilist_pric_uplmt_amt": DEC}},
        "1319": {"": _PAGED, "data[]": {**_ROW, "selfpay_prop": TEXT}},
    },
    flows=frozenset({"signin", "person", "pharmacy", "query", "catalog"}),
)
