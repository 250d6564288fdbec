"""One plot style per method: colour by family, marker and line style by member, the bound dashed.

Every registered method (`rismvdr.localize.registry.METHODS`) and the sqrt(CRB) curve has a
`(colour, marker, linestyle)` that no other has. The families and their colours:

| family | methods | colour |
|---|---|---|
| `reference` | the truth-reading references: `mvdr-oracle`, `music-oracle-k`, `somp-ml-oracle-k` | purple |
| `classical` | spectrum methods: `mvdr-*`, `music-mdl`, `music-aic`, `bartlett` | blue |
| `compressive` | `somp`, `somp-ml` | green |
| `learned` | `learned`, `learned-refiner`, `learned-ml` | orange |
| `bound` | `ml-oracle` (dashed) and sqrt(CRB) (dotted), no markers | black |

Within a family the line style says the estimator (MVDR solid, MUSIC dash-dot, Bartlett and the
compressive order-forced reference dotted) and the marker the member. A name not in the table
(a user's own method) gets a deterministic style from colours no family uses, so it never
looks like a registered method.

>>> method_style("mvdr-als").color == method_style("mvdr-mf").color == FAMILY_COLORS["classical"]
True
>>> method_style("ml-oracle").linestyle
'--'
"""
from __future__ import annotations

import zlib
from typing import NamedTuple

__all__ = ["MethodStyle", "FAMILY_COLORS", "OTHER_COLORS", "CRB_CURVE", "METHOD_STYLES", "method_style",
           "bound_style"]

#: Colour of each method family.
FAMILY_COLORS = {
    "reference": "#9467bd",  # purple
    "classical": "#1f77b4",  # blue
    "compressive": "#2ca02c",  # green
    "learned": "#ff7f0e",  # orange
    "bound": "#000000",  # black
}

#: Colours of methods outside the table (family `other`): none of them is a family's.
OTHER_COLORS = ("#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f", "#d62728")
_OTHER_MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*", "h", "<", ">", "p")
_OTHER_LINESTYLES = ("-", "-.", ":")

#: Key of the sqrt(CRB) curve in `METHOD_STYLES`.
CRB_CURVE = "sqrt(CRB)"


class MethodStyle(NamedTuple):
    """How one method's curve looks.

    Attributes:
      family: `reference`, `classical`, `compressive`, `learned`, `bound` or `other`.
      color: hex colour, the family's (`FAMILY_COLORS`).
      marker: Matplotlib marker ("" for none).
      linestyle: Matplotlib line style.
    """

    family: str
    color: str
    marker: str
    linestyle: str

    def kwargs(self) -> dict:
        """Keyword arguments of `Axes.plot` for this style (the bound: thicker, drawn on top)."""
        out = dict(color=self.color, marker=self.marker or "None", linestyle=self.linestyle, markersize=5,
                   linewidth=1.4)
        if self.family == "bound":
            out.update(linewidth=1.8, zorder=5)
        return out


def _styles(family: str, members: dict[str, tuple[str, str]]) -> dict[str, MethodStyle]:
    return {name: MethodStyle(family, FAMILY_COLORS[family], marker, ls) for name, (marker, ls) in members.items()}


#: The style of every registered method and of the sqrt(CRB) curve.
METHOD_STYLES: dict[str, MethodStyle] = {
    **_styles("reference", {"mvdr-oracle": ("o", "-"), "music-oracle-k": ("s", "-."),
                            "somp-ml-oracle-k": ("D", ":")}),
    **_styles("classical", {"mvdr-als": ("o", "-"), "mvdr-ridge": ("s", "-"), "mvdr-mf": ("^", "-"),
                            "mvdr-sample": ("v", "-"), "music-mdl": ("D", "-."), "music-aic": ("P", "-."),
                            "bartlett": ("X", ":")}),
    **_styles("compressive", {"somp": ("s", "-"), "somp-ml": ("o", "-")}),
    **_styles("learned", {"learned": ("o", "-"), "learned-refiner": ("s", "-."), "learned-ml": ("^", ":")}),
    **_styles("bound", {"ml-oracle": ("", "--"), CRB_CURVE: ("", ":")}),
}


def method_style(name: str) -> MethodStyle:
    """The style of a method (or `CRB_CURVE`); a name outside `METHOD_STYLES` gets a style
    of family `other` chosen by a hash of the name (the same in every run and process)."""
    if name in METHOD_STYLES:
        return METHOD_STYLES[name]
    h = zlib.crc32(name.encode())
    return MethodStyle("other", OTHER_COLORS[h % len(OTHER_COLORS)],
                       _OTHER_MARKERS[h // len(OTHER_COLORS) % len(_OTHER_MARKERS)],
                       _OTHER_LINESTYLES[h // (len(OTHER_COLORS) * len(_OTHER_MARKERS)) % len(_OTHER_LINESTYLES)])


def bound_style() -> MethodStyle:
    """The style of the curve a plot draws as the bound (whatever method that is): black dashed."""
    return METHOD_STYLES["ml-oracle"]
