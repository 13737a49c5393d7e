"""Plots, one model per chart: speed against accuracy (each variant on each runtime a point, the
gates drawn, the Pareto front marked) and per-class Dice bars. Axis limits are computed from
everything drawn (points, fold whiskers, gate lines), labels are placed where they overlap nothing,
and figures are saved with their tight bounding box, so nothing is clipped."""

from __future__ import annotations

import io
import math
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402
from matplotlib.transforms import Bbox  # noqa: E402
from PIL import Image  # noqa: E402  (matplotlib's own dependency)

from .cards import Point, gate_lines, runtime_name  # noqa: E402

RUNTIME_COLOURS = {"torch": "#4c72b0", "torchscript": "#64b5cd", "onnxruntime": "#55a868", "openvino": "#c44e52"}
PRECISION_MARKERS = {"fp32": "o", "int8": "^", "fp16": "s", "bf16": "D", "other": "P"}
CLASS_COLOURS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c"]
DPI = 100
POINT_LABEL = "point-label"  # the gid of the labels naming the points


def _title(ax, text: str) -> None:
    ax.set_title("\n".join(textwrap.wrap(text, 90)), fontsize=10, loc="left")


def speed_accuracy_chart(model: str, points: list[Point], front: list[Point], deploy: Point | None) -> Figure:
    """Latency (log) against worst-class Dice vs PyTorch: one point per variant×runtime that ran
    (whiskers: fastest and slowest fold), hollow when it failed its gate; the gates as dashed lines;
    the Pareto front joined; the recommended deployment starred."""
    shown = [p for p in points if p.p50_ms is not None and p.dice_for_chart is not None]
    fig, ax = plt.subplots(figsize=(9, 5.6), dpi=DPI, layout="constrained")
    gates = gate_lines(shown)
    for p in shown:
        colour = RUNTIME_COLOURS.get(p.runtime, "#8c8c8c")
        marker = "*" if p is deploy else PRECISION_MARKERS.get(p.precision, "P")
        size = 260 if p is deploy else 60
        if p.p50_range and p.p50_range[1] > p.p50_range[0]:
            ax.plot(p.p50_range, [p.dice_for_chart] * 2, color=colour, lw=1.2, alpha=0.7, zorder=2,
                    solid_capstyle="butt")
        ax.scatter([p.p50_ms], [p.dice_for_chart], s=size, marker=marker, zorder=4,
                   facecolors=colour if p.passed else "white", edgecolors="#b00020" if not p.passed else
                   ("black" if p in front else colour), linewidths=1.6 if (p in front or not p.passed) else 0.8)
    if len(front) > 1:
        ax.step([p.p50_ms for p in front], [p.dice_for_chart for p in front], where="post", color="black",
                lw=1, ls=":", zorder=3)
    xs = [x for p in shown for x in ((p.p50_range or (p.p50_ms, p.p50_ms)) + (p.p50_ms,))]
    ys = [p.dice_for_chart for p in shown] + [g for g, _ in gates]
    if not xs:
        ax.text(0.5, 0.5, "no variant was timed", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        _title(ax, f"{model}: speed against accuracy")
        return fig
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    lo, hi = min(xs), max(xs)
    span = math.log10(hi / lo) if hi > lo else 0.3
    ax.set_xlim(lo / 10 ** (0.12 * span + 0.05), hi * 10 ** (0.22 * span + 0.05))
    ymin, ymax = min(ys), max(ys)
    pad = max(ymax - ymin, 0.002) * 0.12
    ax.set_ylim(ymin - pad, ymax + pad * 1.5)
    for value, precisions in gates:
        ax.axhline(value, color="0.45", lw=0.9, ls="--", zorder=1)
        gate = ax.annotate(f"gate: Dice ≥ {value:g} ({precisions})", xy=(1, value),
                           xycoords=("axes fraction", "data"), xytext=(-4, 3), textcoords="offset points",
                           ha="right", va="bottom", fontsize=7.5, color="0.3", zorder=5)
        gate.set_in_layout(False)
    ax.set_xlabel("p50 latency per patch, ms (log scale; median over folds, line: fastest to slowest fold)")
    ax.set_ylabel("worst-class Dice vs PyTorch (patches)")
    ax.grid(True, which="both", alpha=0.25)
    _title(ax, f"{model}: speed against accuracy")
    handles = [plt.Line2D([], [], ls="", marker="o", color=c, label=runtime_name(b))
               for b, c in RUNTIME_COLOURS.items() if any(p.runtime == b for p in shown)]
    handles += [plt.Line2D([], [], ls="", marker=m, color="0.35", label=prec)
                for prec, m in PRECISION_MARKERS.items() if any(p.precision == prec for p in shown)]
    handles.append(plt.Line2D([], [], ls=":", color="black", marker="o", mfc="white", mec="black",
                              label="Pareto front (gate passed)"))
    if any(not p.passed for p in shown):
        handles.append(plt.Line2D([], [], ls="", marker="o", mfc="white", mec="#b00020", label="failed its gate"))
    if deploy is not None:
        handles.append(plt.Line2D([], [], ls="", marker="*", ms=12, color="0.35", label="recommended"))
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 5), fontsize=8, frameon=False)
    _label_points(fig, ax, shown, deploy)
    return fig


def _label_points(fig: Figure, ax, points: list[Point], deploy: Point | None) -> None:
    """Name every point; points closer than a few pixels share one label; each label goes to the
    first of several positions around its point that overlaps no other label, marker or the axes' edge."""
    fig.draw_without_rendering()  # the layout is final: labels stay out of it
    renderer = fig.canvas.get_renderer()
    to_px = ax.transData.transform
    pixels = {id(p): to_px((p.p50_ms, p.dice_for_chart)) for p in points}
    clusters: list[list[Point]] = []
    for p in sorted(points, key=lambda p: (p is not deploy, p.p50_ms)):
        x, y = pixels[id(p)]
        for cluster in clusters:
            cx, cy = pixels[id(cluster[0])]
            if abs(cx - x) < 9 and abs(cy - y) < 9:
                cluster.append(p)
                break
        else:
            clusters.append([p])
    axes_box = ax.get_window_extent(renderer)
    taken = [Bbox.from_bounds(x - 6, y - 6, 12, 12) for x, y in pixels.values()]
    offsets = [(7, 5, "left", "bottom"), (7, -5, "left", "top"), (-7, 5, "right", "bottom"),
               (-7, -5, "right", "top"), (0, 10, "center", "bottom"), (0, -10, "center", "top")]
    offsets += [(dx * r, dy * r, ha, va) for r in (2.5, 4, 6) for dx, dy, ha, va in offsets[:6]]
    for cluster in clusters:
        text = "\n".join(p.label + ("" if p.passed else " (FAIL)") + (" ★" if p is deploy else "") for p in cluster)
        anchor = (cluster[0].p50_ms, cluster[0].dice_for_chart)
        best = None
        for dx, dy, ha, va in offsets:
            far = abs(dx) > 10 or abs(dy) > 12
            label = ax.annotate(text, anchor, xytext=(dx, dy), textcoords="offset points", ha=ha, va=va,
                                fontsize=7, zorder=6, linespacing=1.1,
                                arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "0.5"} if far else None)
            label.set_in_layout(False)
            label.set_gid(POINT_LABEL)
            box = label.get_window_extent(renderer).expanded(1.02, 1.08)
            inside = (box.x0 >= axes_box.x0 and box.x1 <= axes_box.x1 and box.y0 >= axes_box.y0
                      and box.y1 <= axes_box.y1)
            overlaps = sum(box.overlaps(t) for t in taken)
            score = (not inside, overlaps)
            if best is None or score < best[0]:
                if best is not None:
                    best[1].remove()
                best = (score, label, box)
            else:
                label.remove()
            if score == (False, 0):
                break
        taken.append(best[2])


def dice_bars(model: str, points: list[Point]) -> Figure | None:
    """Per variant×runtime (fastest first), the Dice of each class against PyTorch (lowest over
    folds), with the variant's gate marked; variants not measured are left out."""
    shown = sorted((p for p in points if p.class_dice and not p.reference),
                   key=lambda p: p.p50_ms if p.p50_ms is not None else math.inf)
    if not shown:
        return None
    classes = list(dict.fromkeys(c for p in shown for c in p.class_dice))
    height = 0.8 / len(classes)
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(shown) * max(1, len(classes) / 2) + 1.6), dpi=DPI,
                           layout="constrained")
    values = [v for p in shown for v in p.class_dice.values()] + [p.gate_dice for p in shown if p.gate_dice]
    floor = min(values)
    floor -= max(1.0 - floor, 0.002) * 0.15
    ys = list(range(len(shown)))[::-1]
    for i, cls in enumerate(classes):
        offsets = [y + 0.4 - height * (i + 0.5) for y in ys]
        ax.barh(offsets, [p.class_dice.get(cls, floor) - floor for p in shown], left=floor, height=height * 0.9,
                color=CLASS_COLOURS[i % len(CLASS_COLOURS)], label=cls)
    for y, p in zip(ys, shown):
        if p.gate_dice is not None:
            ax.plot([p.gate_dice] * 2, [y - 0.45, y + 0.45], color="black", lw=1.4)
    ax.plot([], [], color="black", lw=1.4, label="gate (Dice it must reach)")
    ax.set_yticks(ys, [p.label + ("" if p.passed else " (FAIL)") + (f" · {p.p50_ms:.1f} ms" if p.p50_ms else "")
                       for p in shown], fontsize=8)
    ax.set_xlim(floor, 1.0 + (1.0 - floor) * 0.02)
    ax.set_ylim(-0.6, len(shown) - 0.4)
    ax.set_xlabel(f"Dice of the label maps vs PyTorch, per class (lowest over folds; axis starts at {floor:.4f})")
    ax.grid(True, axis="x", alpha=0.25)
    _title(ax, f"{model}: per-class Dice against PyTorch")
    fig.legend(loc="outside lower center", ncol=len(classes) + 1, fontsize=8, frameon=False)
    return fig


def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG, cropped to everything drawn (never to the axes), in 256 colours (a chart
    looks the same and the self-contained HTML report carries a third of the bytes)."""
    drawn = io.BytesIO()
    fig.savefig(drawn, format="png", dpi=DPI, bbox_inches="tight", pad_inches=0.12)
    buffer = io.BytesIO()
    Image.open(drawn).convert("RGB").quantize(256).save(buffer, format="png", optimize=True)
    return buffer.getvalue()


def save(fig: Figure, path: Path) -> bytes:
    data = png_bytes(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    plt.close(fig)
    return data


def clipped(fig: Figure) -> list[str]:
    """What a chart would not show in full: data (points, whiskers, bars) outside its axes' limits,
    and point labels that overlap each other or leave the axes. Empty for a chart drawn right."""
    fig.draw_without_rendering()
    renderer = fig.canvas.get_renderer()
    problems = []
    for ax in fig.axes:
        (x0, x1), (y0, y1) = sorted(ax.get_xlim()), sorted(ax.get_ylim())
        for line in ax.lines:
            for x, y in line.get_xydata():
                if not (x0 <= x <= x1 and y0 <= y <= y1) and line.get_transform() == ax.transData:
                    problems.append(f"{line.get_label()}: ({x:g}, {y:g}) outside the axes")
        for coll in ax.collections:
            for x, y in coll.get_offsets():
                if not (x0 <= x <= x1 and y0 <= y <= y1):
                    problems.append(f"point ({x:g}, {y:g}) outside the axes")
        for patch in ax.patches:
            box = patch.get_bbox()
            if box.x1 > x1 + 1e-9 or box.x0 < x0 - 1e-9:
                problems.append(f"bar {box} beyond the x limits")
        axes_box = ax.get_window_extent(renderer)
        labels = [t for t in ax.texts if t.get_gid() == POINT_LABEL]
        boxes = [t.get_window_extent(renderer) for t in labels]
        for i, (text, box) in enumerate(zip(labels, boxes)):
            if box.x0 < axes_box.x0 - 1 or box.x1 > axes_box.x1 + 1 or box.y0 < axes_box.y0 - 1 or box.y1 > axes_box.y1 + 1:
                problems.append(f"label {text.get_text()!r} leaves the axes")
            for other, obox in zip(labels[i + 1:], boxes[i + 1:]):
                if box.overlaps(obox):
                    problems.append(f"labels {text.get_text()!r} and {other.get_text()!r} overlap")
    return problems
