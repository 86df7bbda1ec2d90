"""Evaluation reports: ``metrics.json``, figures drawn with matplotlib, and a self-contained page.

``write_report`` takes one or more :class:`training.evaluation.evaluate.Evaluation` results (one for
``pix2pix evaluate``, several side by side for ``pix2pix compare``) and writes into one folder:

- ``metrics.json``: every number, per model;
- ``table.md``: the metric table in Markdown (for READMEs and pull requests);
- ``samples.png``: input | each model's output | target for the same sample of the split;
- ``training.png``: loss, discriminator accuracy and validation L1 curves from each run's
  ``metrics.jsonl``, when the run directory is still beside the model;
- ``ab_accuracy.png``: the accuracy-vs-ab-threshold curves of colorization models;
- ``index.html``: all of the above on one page, linking only to files in the folder.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from model.atomic_files import write_text_atomic
from training.evaluation.evaluate import Evaluation

# Display name and which way is better, in table order.
METRICS: dict[str, tuple[str, str]] = {
    "l1": ("L1 (0-1 scale)", "lower"),
    "psnr": ("PSNR (dB)", "higher"),
    "ssim": ("SSIM", "higher"),
    "sharpness_ratio": ("Sharpness ratio (gradient)", "closer to 1"),
    "laplacian_ratio": ("Sharpness ratio (Laplacian var.)", "closer to 1"),
    "checkerboard": ("Checkerboard vs targets (dB)", "closer to 0"),
    "blob_rate": ("Outputs with a white blob", "lower"),
    "psnr_ab": ("PSNR ab (dB)", "higher"),
    "checkerboard_ab": ("Checkerboard on ab vs targets (dB)", "closer to 0"),
    "colorfulness_output": ("Colorfulness of outputs", "closer to targets"),
    "colorfulness_target": ("Colorfulness of targets", "reference"),
    "colorfulness_ratio": ("Colorfulness ratio", "closer to 1"),
    "ab_acc_5": ("ab within 5", "higher"),
    "ab_acc_10": ("ab within 10", "higher"),
    "ab_acc_20": ("ab within 20", "higher"),
    "ab_auc": ("ab accuracy AuC (0-150)", "higher"),
    "fcn_pixel_accuracy": ("FCN per-pixel acc.", "higher"),
    "fcn_class_accuracy": ("FCN per-class acc.", "higher"),
    "fcn_mean_iou": ("FCN mean IoU", "higher"),
    "real_pixel_accuracy": ("Real photos: per-pixel acc.", "upper bound"),
    "real_class_accuracy": ("Real photos: per-class acc.", "upper bound"),
    "real_mean_iou": ("Real photos: mean IoU", "upper bound"),
    "fid": ("FID", "lower"),
    "kid": ("KID", "lower"),
    "kid_std": ("KID std", ""),
}

TRAINING_CURVES = (
    ("Generator losses", ("G_GAN", "G_L1", "G_class")),  # G_class: train.color_loss only
    ("Discriminator losses", ("D_real", "D_fake")),
    ("Discriminator accuracy", ("D_acc_real", "D_acc_fake")),
)


def metric_rows(evaluations: list[Evaluation]) -> list[tuple[str, str, list[str]]]:
    """(label, better, one formatted value per model) for every metric any model has."""
    names = [key for key in METRICS if any(key in e.metrics for e in evaluations)]
    extra = sorted({k for e in evaluations for k in e.metrics} - set(METRICS))
    rows = []
    for key in [*names, *extra]:
        label, better = METRICS.get(key, (key, ""))
        rows.append((label, better, [_format(e.metrics.get(key)) for e in evaluations]))
    return rows


def _format(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:.1f}"
    if magnitude >= 10:
        return f"{value:.2f}"
    return f"{value:.4f}" if magnitude < 1 else f"{value:.3f}"


def _table(evaluations: list[Evaluation]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the terminal and page tables: the metrics, the images and the time."""
    header = ["metric", *[e.name for e in evaluations], "better"]
    rows = [[label, *values, better] for label, better, values in metric_rows(evaluations)]
    rows.append(["images", *[str(e.count) for e in evaluations], ""])
    rows.append(["seconds", *[f"{e.seconds:.1f}" for e in evaluations], ""])
    return header, rows


def format_table(evaluations: list[Evaluation]) -> str:
    """The metric table as aligned plain text, for the terminal."""
    header, body = _table(evaluations)
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]

    def line(row: list[str]) -> str:
        return "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(header).rstrip(), rule, *[line(row).rstrip() for row in body]])


def markdown_table(evaluations: list[Evaluation]) -> str:
    header = ["Metric", *[e.name for e in evaluations], "Better"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, better, values in metric_rows(evaluations):
        lines.append("| " + " | ".join([label, *values, better]) + " |")
    return "\n".join(lines) + "\n"


# -- figures -----------------------------------------------------------------------------------


def _same_size(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if image.shape[:2] == size:
        return image
    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.Resampling.BICUBIC))


def draw_samples(evaluations: list[Evaluation], path: Path, cell_inches: float = 1.6) -> bool:
    """Rows of input | output of each model | target; False when there is nothing to draw."""
    count = min((len(e.samples) for e in evaluations), default=0)
    if count == 0:
        return False
    titles = ["input", *[e.name for e in evaluations], "target"]
    size = evaluations[0].samples[0][2].shape[:2]
    figure = Figure(figsize=(cell_inches * len(titles), cell_inches * count + 0.3))
    axes = figure.subplots(count, len(titles), squeeze=False)
    for row in range(count):
        first = evaluations[0].samples[row]
        images = [first[0], *[e.samples[row][1] for e in evaluations], first[2]]
        for column, image in enumerate(images):
            axis = axes[row][column]
            axis.imshow(_same_size(image, size), interpolation="nearest")
            axis.set(xticks=[], yticks=[])
            if row == 0:
                axis.set_title(titles[column], fontsize=9)
    figure.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.3 / figure.get_figheight())
    figure.subplots_adjust(wspace=0.04, hspace=0.04)
    figure.savefig(path, dpi=100)
    return True


def read_training_log(path: str | Path) -> tuple[list[dict], list[dict]]:
    """The ``train`` and ``val`` records of a run's ``metrics.jsonl`` (bad lines skipped)."""
    train, val = [], []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a run killed mid-write leaves a partial last line
        if record.get("kind") == "train":
            train.append(record)
        elif record.get("kind") == "val":
            val.append(record)
    return train, val


def draw_training(evaluations: list[Evaluation], path: Path) -> bool:
    """Loss, D accuracy and val L1 curves of every evaluated run that left its log."""
    logs = [(e.name, read_training_log(e.training_log)) for e in evaluations if e.training_log]
    logs = [(name, records) for name, records in logs if records[0] or records[1]]
    if not logs:
        return False
    panels = [*TRAINING_CURVES, ("Validation L1", ("val_l1",))]
    figure = Figure(figsize=(4.2 * len(panels), 3.4), layout="constrained")
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for axis, (title, keys) in zip(axes, panels, strict=True):
        drawn = False
        for name, (train, val) in logs:
            records = val if keys == ("val_l1",) else train
            for key in keys:
                points = [(r["step"], r[key]) for r in records if key in r]
                if not points or not any(value for _, value in points):
                    continue  # an L1-only run logs zeros for every adversarial term
                steps, values = zip(*points, strict=True)
                label = key if len(logs) == 1 else f"{name}: {key}"
                axis.plot(steps, values, label=label, linewidth=1.2)
                drawn = True
        if title == "Discriminator accuracy":
            axis.axhline(0.95, color="gray", linestyle=":", linewidth=1)
            axis.set_ylim(0, 1.02)
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("step")
        if drawn:
            axis.legend(fontsize=7)
        else:
            axis.text(0.5, 0.5, "not logged", ha="center", va="center", transform=axis.transAxes)
    figure.savefig(path, dpi=100)
    return True


def draw_ab_accuracy(evaluations: list[Evaluation], path: Path) -> bool:
    curves = [e for e in evaluations if "ab_accuracy" in e.curves]
    if not curves:
        return False
    figure = Figure(figsize=(5, 3.6), layout="constrained")
    axis = figure.subplots()
    for evaluation in curves:
        auc = evaluation.metrics.get("ab_auc", float("nan"))
        axis.plot(
            evaluation.curves["ab_thresholds"],
            evaluation.curves["ab_accuracy"],
            label=f"{evaluation.name} (AuC {auc:.3f})",
        )
    axis.set(xlabel="ab error threshold", ylabel="share of pixels within", ylim=(0, 1.01))
    axis.set_title("Colorization accuracy vs threshold", fontsize=10)
    axis.legend(fontsize=8)
    figure.savefig(path, dpi=100)
    return True


# -- the page ----------------------------------------------------------------------------------

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 72rem; color: #222; }
table { border-collapse: collapse; margin: 1rem 0; }
th, td { border: 1px solid #ccc; padding: 0.3rem 0.7rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
td.better { color: #666; font-style: italic; text-align: left; }
img { max-width: 100%; }
.notes { color: #7a4b00; }
"""


def _html_table(header: list[str], rows: list[list[str]], classes: dict[int, str]) -> str:
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
    body = []
    for row in rows:
        cells = []
        for index, cell in enumerate(row):
            attribute = f' class="{classes[index]}"' if index in classes else ""
            cells.append(f"<td{attribute}>{html.escape(cell)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def render_html(evaluations: list[Evaluation], figures: dict[str, str], title: str) -> str:
    first = evaluations[0]
    header, rows = _table(evaluations)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>Data <code>{html.escape(first.data)}</code>, split <code>"
        f"{html.escape(first.split)}</code>, {first.count} images at each model's training "
        'size. Numbers are also in <a href="metrics.json">metrics.json</a>.</p>',
        "<ul>"
        + "".join(
            f"<li><b>{html.escape(e.name)}</b>: <code>{html.escape(e.model)}</code>"
            f"{' (' + html.escape(e.task) + ')' if e.task else ''}</li>"
            for e in evaluations
        )
        + "</ul>",
        "<h2>Metrics</h2>",
        _html_table(header, rows, {len(header) - 1: "better"}),
    ]
    notes = sorted({note for e in evaluations for note in e.notes})
    if notes:
        parts.append(
            '<ul class="notes">' + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>"
        )
    if any(e.per_class for e in evaluations):
        parts.append("<h2>FCN-score per class (IoU)</h2>")
        classes = next(e.per_class for e in evaluations if e.per_class)
        class_rows = []
        for position, entry in enumerate(classes):
            values = [
                _format(e.per_class[position]["iou"]) if e.per_class else "-" for e in evaluations
            ]
            class_rows.append(
                [entry["name"], str(entry["pixels"]), *values, _format(entry["real_iou"])]
            )
        class_header = ["class", "pixels", *[e.name for e in evaluations], "real photos"]
        parts.append(_html_table(class_header, class_rows, {}))
    captions = {
        "samples": "Samples: input | output | target",
        "ab_accuracy": "Colorization accuracy vs ab threshold",
        "training": "Training curves (from the run's metrics.jsonl)",
    }
    for key, caption in captions.items():
        if key in figures:
            parts.append(f"<h2>{html.escape(caption)}</h2>")
            parts.append(f'<img src="{figures[key]}" alt="{html.escape(caption)}">')
    if "training" not in figures:
        parts.append("<p>No training log found beside the model(s), so no training curves.</p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(evaluations: list[Evaluation], out: str | Path, title: str | None = None) -> Path:
    """Write the report folder; returns the path of ``index.html``."""
    if not evaluations:
        raise ValueError("nothing to report")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if title is None:
        names = ", ".join(e.name for e in evaluations)
        title = f"Evaluation of {names}" if len(evaluations) == 1 else f"Comparison: {names}"
    figures = {}
    for key, draw in (
        ("samples", draw_samples),
        ("ab_accuracy", draw_ab_accuracy),
        ("training", draw_training),
    ):
        path = out / f"{key}.png"
        if draw(evaluations, path):
            figures[key] = path.name
        else:
            path.unlink(missing_ok=True)  # a stale figure from an earlier report would mislead
    data: dict[str, Any] = {
        "title": title,
        "data": evaluations[0].data,
        "split": evaluations[0].split,
        "models": [e.summary() for e in evaluations],
        "figures": figures,
    }
    write_text_atomic(out / "metrics.json", json.dumps(data, indent=2) + "\n")
    write_text_atomic(out / "table.md", markdown_table(evaluations))
    page = out / "index.html"
    write_text_atomic(page, render_html(evaluations, figures, title))
    return page
