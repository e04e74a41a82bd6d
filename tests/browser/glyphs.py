"""Whether a page's Chinese text is drawn with real glyphs, or as the boxes ("tofu") Chromium
draws when no installed font covers CJK.

Each probe character is drawn on a canvas in the page's own body font; with a CJK font they
are distinct shapes, without one every character is the same box. A page screenshot cannot be
judged this way (a page of boxes is as large a PNG as a page of text), the drawn shapes can.
"""

from __future__ import annotations

from typing import Any

PROBES = "中国医保结算"

_DRAW = r"""
const family = getComputedStyle(document.body).fontFamily;
const shapes = [];
for (const ch of arguments[0]) {
  const canvas = document.createElement('canvas');
  canvas.width = 64; canvas.height = 64;
  const ctx = canvas.getContext('2d');
  ctx.font = '48px ' + family;
  ctx.textBaseline = 'top';
  ctx.fillText(ch, 4, 4);
  const alpha = ctx.getImageData(0, 0, 64, 64).data;
  let bits = '';
  let ink = 0;
  for (let i = 3; i < alpha.length; i += 4) {
    const on = alpha[i] > 127;
    bits += on ? '1' : '0';
    if (on) ink += 1;
  }
  shapes.push({ch: ch, bits: bits, ink: ink});
}
return {family: family, shapes: shapes};
"""


def cjk_glyphs(driver: Any) -> dict[str, Any]:
    """The page's body font and, per probe character, whether it is drawn as its own shape."""
    drawn: dict[str, Any] = driver.execute_script(_DRAW, PROBES)
    shapes = drawn["shapes"]
    distinct = len({s["bits"] for s in shapes})
    return {
        "family": drawn["family"],
        "distinct_shapes": distinct,
        "inked": all(s["ink"] > 0 for s in shapes),
        "rendered": distinct == len(PROBES) and all(s["ink"] > 0 for s in shapes),
    }
