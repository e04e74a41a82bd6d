"""The national code lists (字典) the gateway speaks, each code with its label.

What 1901 (字典表下载) answers, and where the gateway names a code itself (setldetail's
fund_pay_type_name, the monthly clearing's 医疗类别).
protocol.md §4 and §3.2: only codes cross-checked there, in the order given there; the local
extensions it names as regional (4-digit medical categories, Hunan's certificate types) and the
lists it leaves unverified (`clr_way`) are not served. A region's own list is the centre's to
publish; the gateway answers the national one, whatever `admdvs` a client asks for.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

_YES_NO = (("0", "否"), ("1", "是"))

DICTIONARIES: Mapping[str, tuple[tuple[str, str], ...]] = MappingProxyType(
    {
        "mdtrt_cert_type": (("01", "医保电子凭证"), ("02", "居民身份证"), ("03", "社会保障卡")),
        "psn_cert_type": (
            ("01", "居民身份证(户口簿)"),
            ("02", "军官证"),
            ("03", "武警警官证"),
            ("04", "香港特区护照/港澳居民来往内地通行证"),
            ("05", "澳门特区护照/港澳居民来往内地通行证"),
            ("06", "台湾居民来往大陆通行证"),
            ("07", "外国人永久居留证"),
            ("08", "外国人护照"),
            ("09", "残疾人证"),
            ("10", "军烈属证明"),
            ("11", "外国人就业证"),
            ("12", "外国专家证"),
            ("13", "外国人常驻记者证"),
            ("14", "台港澳人员就业证"),
            ("15", "回国(来华)定居专家证"),
            ("90", "社会保障卡"),
            ("99", "其他身份证件"),
        ),
        "insutype": (
            ("310", "职工基本医疗保险"),
            ("320", "公务员医疗补助"),
            ("330", "大额医疗费用补助"),
            ("340", "离休人员医疗保障"),
            ("350", "一至六级残废军人医疗补助"),
            ("360", "老红军医疗保障"),
            ("370", "企业补充医疗保险"),
            ("380", "新型农村合作医疗"),
            ("390", "城乡居民基本医疗保险"),
            ("391", "城镇居民基本医疗保险"),
            ("392", "城乡居民大病医疗保险"),
            ("399", "其他特殊人员医疗保障"),
            ("410", "长期照护保险"),
            ("510", "生育保险"),
        ),
        "med_type": (
            ("11", "普通门诊"),
            ("12", "门诊挂号"),
            ("13", "急诊"),
            ("14", "门诊慢特病"),
            ("19", "意外伤害门诊"),
            ("21", "普通住院"),
            ("22", "外伤住院"),
            ("23", "转外诊治住院"),
            ("24", "急诊转住院"),
            ("41", "定点药店购药"),
            ("51", "生育门诊"),
            ("52", "生育住院"),
            ("53", "计划生育手术费"),
        ),
        "chrgitm_lv": (("01", "甲类"), ("02", "乙类"), ("03", "丙类")),
        "med_chrgitm_type": (
            ("01", "床位费"),
            ("02", "诊察费"),
            ("03", "检查费"),
            ("04", "化验费"),
            ("05", "治疗费"),
            ("06", "手术费"),
            ("07", "护理费"),
            ("08", "卫生材料费"),
            ("09", "西药费"),
            ("10", "中药饮片费"),
            ("11", "中成药费"),
            ("12", "一般诊疗费"),
            ("13", "挂号费"),
            ("14", "其他费"),
        ),
        "list_type": (
            ("101", "西药中成药"),
            ("102", "中药饮片"),
            ("106", "中药颗粒"),
            ("201", "医疗服务项目"),
            ("301", "医用耗材"),
            ("501", "长期服务项目"),
        ),
        "psn_type": (
            ("1101", "职工在职"),
            ("1102", "公务员在职"),
            ("1103", "灵活就业在职"),
            ("1201", "职工退休"),
            ("1202", "公务员退休"),
            ("1203", "灵活就业退休"),
            ("1300", "离休"),
            ("1401", "新生儿"),
            ("1402", "学龄前儿童"),
            ("1403", "中小学生"),
            ("1404", "大学生"),
            ("1405", "未成年(未入学)"),
            ("1501", "普通居民(成年)"),
        ),
        "psn_setlway": (("01", "按项目结算"), ("02", "按定额结算")),
        "acct_used_flag": _YES_NO,
        "mid_setl_flag": _YES_NO,
        "vali_flag": _YES_NO,
        "opter_type": (("1", "经办人"), ("2", "自助终端"), ("3", "移动终端")),
        "diag_type": (("1", "西医诊断"), ("2", "中医主病诊断"), ("3", "中医主证诊断")),
        "dscg_way": (("1", "医嘱离院"), ("2", "医嘱转院"), ("5", "死亡")),
        "clr_type": (("11", "门诊"), ("21", "住院"), ("41", "药店"), ("51", "暂缓")),
        "stmt_rslt": (("0", "对平"), ("1", "中心多"), ("2", "医药机构多"), ("3", "数据不一致")),
        "refd_setl_flag": (("0", "正常结算"), ("1", "退费")),
        "fund_pay_type": (
            ("310100", "城镇职工基本医疗保险统筹基金"),
            ("310200", "城镇职工基本医疗保险个人账户基金"),
            ("320100", "公务员医疗补助基金"),
            ("330100", "大额医疗费用补助基金"),
            ("340100", "离休人员医疗保障基金"),
            ("350100", "一至六级残疾军人医疗补助基金"),
            ("370100", "企业补充医疗保险基金"),
            ("390100", "城乡居民基本医疗保险基金"),
            ("390200", "城乡居民大病医疗保险基金"),
            ("510100", "生育基金"),
            ("610100", "医疗救助基金"),
            ("999996", "医院垫付/医院负担"),
            ("999997", "其他基金"),
        ),
        "psn_insu_stas": (("1", "正常参保"),),
        "pay_loc": (("1", "中心"), ("2", "医院"), ("3", "省内异地"), ("4", "省外异地")),
        "setl_type": (("1", "中心报销"), ("2", "联网结算"), ("3", "补充报销")),
    }
)


def labels(kind: str) -> dict[str, str]:
    """A dictionary's labels by code (empty for a dictionary not served)."""
    return dict(DICTIONARIES.get(kind, ()))


def label_of(kind: str, value: str) -> str:
    """The label of a code the gateway itself names (a KeyError is a slip in this table)."""
    return labels(kind)[value]
