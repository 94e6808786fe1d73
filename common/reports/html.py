"""One self-contained HTML report per run, rendered from a Jinja2 template.

The page (`templates/report.html.j2`) has inline CSS and PNGs embedded as data URIs, no links
out and no scripts. Its header names the data set's path, the software and its version, and says
that the report is for research use only and not a medical device.
"""

from __future__ import annotations

import base64
import datetime
import functools
from importlib import metadata
from pathlib import Path

import jinja2
import numpy as np
import pandas as pd

from common.fileio import atomic_write_bytes
from common.reports import plots
from common.reports import stats
from common.reports.files import check_png
from common.reports.stats import NotAvailable
from common.reports.stats import Published
from common.reports.stats import ValueCI
from common.reports.stats import format_value

DISTRIBUTION = "msk-radiology-suite"


def software_version() -> str:
    """Returns "msk-radiology-suite X.Y.Z": the installed distribution's version, else setup.cfg's."""
    try:
        return f"{DISTRIBUTION} {metadata.version(DISTRIBUTION)}"
    except metadata.PackageNotFoundError:
        pass
    setup = Path(__file__).resolve().parents[2] / "setup.cfg"
    if setup.is_file():
        for line in setup.read_text(encoding="utf-8").splitlines():
            if line.replace(" ", "").startswith("version="):
                return f"{DISTRIBUTION} {line.split('=', 1)[1].strip()}"
    return f"{DISTRIBUTION} (version unknown)"


@functools.cache
def _template():
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).with_name("templates")),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    return environment.get_template("report.html.j2")


class HTMLReport:
    """Builds one self-contained HTML page: inline CSS, PNGs embedded as data URIs, no links out.

    Every `add_*` method returns the report, so calls chain. Text is HTML-escaped (Jinja2's
    autoescape).

    Args:
        title: the page title and top heading.
        data_path: the data set the run read (shown in the header); None shows "not given".
        software: the software and version shown in the header (default `software_version()`).

    Example:
        report = HTMLReport("kneeoa: demo run", data_path="data/kneeoa")
        report.add_metrics({"accuracy": 0.61}, ci={"accuracy": (0.58, 0.64)},
                           reference={"accuracy": 0.647}, reference_note="Table 3, OAI test set")
        report.add_image(plot_learning_curves(read_history("run/history.csv")), "learning curves")
        report.write("run/report.html")
    """

    def __init__(self, title, data_path=None, software=None):
        self.title = str(title)
        self.data_path = None if data_path is None else str(data_path)
        self.software = software or software_version()
        self._parts = []

    def add_heading(self, text, level=2) -> HTMLReport:
        """Adds a section heading (`<h2>` by default; level 2..4)."""
        level = int(level)
        if not 2 <= level <= 4:
            raise ValueError(f"level must be 2, 3 or 4, got {level}")
        self._parts.append({"kind": "heading", "level": level, "text": str(text)})
        return self

    def add_paragraph(self, text) -> HTMLReport:
        """Adds a paragraph of plain text (escaped; line breaks kept)."""
        self._parts.append({"kind": "paragraph", "lines": str(text).split("\n")})
        return self

    def add_table(self, rows, caption=None) -> HTMLReport:
        """Adds a table from a list of dicts (columns in order of first appearance) or a DataFrame.

        Args:
            rows: `list[dict]` or `pandas.DataFrame` (its index is not shown). Cells are formatted
                by `format_value`: floats to 3 significant figures, `ValueCI` or
                `(value, (low, high))` as `0.630 [0.580, 0.680]`, `NotAvailable` as `n/a (...)`.
            caption: optional caption under the table.
        """
        if isinstance(rows, pd.DataFrame):
            columns = [str(c) for c in rows.columns]
            records = [dict(zip(columns, values, strict=True)) for values in rows.itertuples(False)]
        else:
            records = [dict(row) for row in rows]
            columns = []
            for row in records:
                columns.extend(str(k) for k in row if str(k) not in columns)
            records = [{str(k): v for k, v in row.items()} for row in records]
        body = []
        for row in records:
            cells = []
            for column in columns:
                value = row.get(column)
                numeric = isinstance(
                    value, (int, float, np.number, ValueCI, NotAvailable, Published)
                ) and not isinstance(value, bool)
                numeric = numeric or stats._is_value_with_ci(value)
                cells.append({"text": format_value(value), "numeric": numeric})
            body.append(cells)
        self._parts.append({"kind": "table", "caption": caption, "columns": columns, "rows": body})
        return self

    def add_metrics(
        self, metrics, ci=None, reference=None, reference_note="", reference_label="paper"
    ) -> HTMLReport:
        """Adds a table of this run's metrics with 95% CIs, beside the paper's figures.

        Nested dicts (`{"per_branch_accuracy": {"att0": ...}}`) become rows named
        `per_branch_accuracy / att0`; `ci` and `reference` use the same keys and nesting.

        Args:
            metrics: `{name: value}` (values numbers, `ValueCI` or `NotAvailable`; nested dicts
                allowed).
            ci: `{name: (low, high)}`, same nesting; None, a missing key or a `(None, None)`
                interval shows the value with `n/a (no interval)`.
            reference: `{name: number or text}`, the paper's figures, shown as published (not
                re-rounded); None omits the column.
            reference_note: where the paper's figures come from, e.g. "Table 3, OAI/MOST test set".
            reference_label: the reference column's heading, e.g. "MURA paper (MURA test set)"
                when the figures are not the paper's own.
        """
        flat_metrics = _flatten(metrics)
        flat_ci = _flatten(ci or {})
        flat_reference = _flatten(reference or {})
        rows = []
        for name, value in flat_metrics.items():
            interval = flat_ci.get(name)
            if interval is not None and not stats._is_interval(interval):
                if isinstance(interval, (list, tuple)) and None in interval:
                    interval = None  # the bootstrap could not give an interval
                else:
                    raise ValueError(f"ci for '{name}' must be (low, high), got {interval!r}")
            if isinstance(value, (ValueCI, NotAvailable)):
                shown = value
            elif interval is not None:
                shown = stats.value_with_ci(value, interval)
            elif ci and name in flat_ci:
                shown = stats.value_with_ci(value, None)
            else:
                shown = value
            row = {"metric": _metric_label(name), "this run [95% CI]": shown}
            if reference is not None:
                row[reference_label] = _published(flat_reference.get(name))
            rows.append(row)
        for name, value in flat_reference.items():
            if name not in flat_metrics:
                rows.append(
                    {
                        "metric": _metric_label(name),
                        "this run [95% CI]": None,
                        reference_label: _published(value),
                    }
                )
        sentences = []
        if reference is not None:
            label = reference_label[:1].upper() + reference_label[1:]
            sentences.append(f"{label}: {reference_note or 'figure as published'}")
        if ci:
            sentences.append("Brackets: 95% bootstrap interval")
        return self.add_table(rows, caption=_sentences(sentences) or None)

    def add_localisation(self, block, panels=(), *, what="map") -> HTMLReport:
        """Adds the `localisation` block of `metrics.json` (`common.localisation`): a table and a
        bar chart of the model's score beside the chance level and the three content-blind
        controls, a one-line verdict, then example panels (the model's map beside the controls').

        Args:
            block: the dict `common.localisation.localisation_block` returned.
            panels: `(png_bytes, caption)` pairs, e.g. from `localisation_panel_png`.
            what: the map's name in the package ("attention mask", "CAM", "evidence hotspots").
        """
        from common.localisation import beats_controls

        names = {"model": f"model ({what})", "chance": "chance (uniform map)"}
        names.update(
            center_prior="control: centre prior (mean lesion mask, leave one out)",
            untrained="control: untrained network",
            shuffled="control: another image's map",
        )
        entries = {"model": block["model"], "chance": block["chance"], **block["controls"]}
        rows = [
            {
                "map": names[key],
                "score [95% CI]": stats.value_with_ci(
                    entry["value"], (entry["ci_low"], entry["ci_high"])
                ),
            }
            for key, entry in entries.items()
        ]
        self.add_heading(f"Localisation: does the {what} find the lesion?", level=3)
        self.add_table(
            rows,
            caption=f"Share of the map's energy inside the phantom's lesion mask, per "
            f"{block['unit']} (n = {block['n']}); brackets: 95% bootstrap interval",
        )
        short = {
            "model": "model",
            "chance": "chance",
            "center_prior": "centre\nprior",
            "untrained": "untrained",
            "shuffled": "other\nimage",
        }
        self.add_image(
            plots.plot_bars(
                {short[key]: {"score": entry["value"]} for key, entry in entries.items()},
                ylabel="energy inside the lesion",
            ),
            caption="The model's map against maps that cannot see the image",
        )
        verdict = "beats" if beats_controls(block) else "does not beat"
        self.add_paragraph(
            f"The model's {what} {verdict} the best content-blind control "
            f"({names[block['best_control']].replace('control: ', '')}) by "
            f"{format_value(block['margin'])} (one-sided paired bootstrap p = "
            f"{format_value(block['p_value'])})."
        )
        if panels:
            self.add_images_grid(panels)
        return self

    def add_image(self, png_bytes, caption=None) -> HTMLReport:
        """Embeds PNG bytes as a `data:` URI, with an optional caption."""
        self._parts.append({"kind": "figure", **_figure(png_bytes, caption)})
        return self

    def add_images_grid(self, items) -> HTMLReport:
        """Embeds several `(png_bytes, caption)` pairs in a responsive grid."""
        figures = [_figure(png, caption) for png, caption in items]
        self._parts.append({"kind": "grid", "figures": figures})
        return self

    def add_classification(
        self, y_true, prob, class_names, *, what, y_pred=None, groups=None, n_bins=10
    ) -> HTMLReport:
        """Adds a classification task's three figures: confusion matrix, ROC curves, reliability.

        Args:
            y_true: `(N,)` true class indices (0/1 for a binary task).
            prob: `(N,)` positive-class probabilities (binary) or `(N, C)` class probabilities.
            class_names: C names (binary: two, negative first).
            what: what the task is, for the captions (e.g. "study abnormality").
            y_pred: `(N,)` predicted classes as `predictions.csv` has them; default: the arg max
                (binary: probability >= 0.5).
            groups: optional `(N,)` groups (binary): one ROC curve overall and one per group.
            n_bins: probability bins of the reliability diagram.
        """
        y_true = np.asarray(y_true).reshape(-1).astype(int)
        prob = np.asarray(prob, dtype=np.float64)
        names = [str(n) for n in class_names]
        if y_pred is None:
            y_pred = (prob >= 0.5).astype(int) if prob.ndim == 1 else prob.argmax(-1)
        counts = stats.confusion_counts(y_true, y_pred, len(names))
        items = [
            (
                plots.plot_confusion_matrix(counts, names),
                f"Confusion matrix, {what} (rows: true class; fraction of the row and count)",
            )
        ]
        curves = stats.roc_curves(
            y_true, prob, class_names=names if prob.ndim == 2 else None, groups=groups
        )
        if curves:
            per = "group" if groups is not None else ("class" if prob.ndim == 2 else "task")
            items.append(
                (plots.plot_roc(curves, title=f"ROC, {what}"), f"ROC curves per {per}, {what}")
            )
        else:
            items.append((plots._message_png("ROC: n/a (1 class)"), f"ROC, {what}"))
        items.append(
            (
                plots.plot_calibration(
                    y_true,
                    prob,
                    n_bins=n_bins,
                    class_names=names if prob.ndim == 2 else None,
                ),
                f"Reliability of the predicted probabilities, {what}, with the expected "
                "calibration error (ECE)",
            )
        )
        return self.add_images_grid(items)

    def add_regression(self, y_true, y_pred, *, what, unit="") -> HTMLReport:
        """Adds a regression task's three figures: scatter, Bland–Altman, interval calibration.

        Args:
            y_true: `(N,)` reference values.
            y_pred: `(N,)` predictions.
            what: the quantity, for labels and captions (e.g. "bone age").
            unit: its unit (e.g. "months"), or "".
        """
        suffix = f" ({unit})" if unit else ""
        items = [
            (
                plots.plot_scatter(
                    y_true,
                    y_pred,
                    xlabel=f"true {what}{suffix}",
                    ylabel=f"predicted {what}{suffix}",
                ),
                f"Predicted against true {what}",
            )
        ]
        if len(np.ravel(y_true)) >= 2:
            items.append(
                (plots.plot_bland_altman(y_true, y_pred, unit=unit), f"Bland–Altman, {what}")
            )
            items.append(
                (
                    plots.plot_interval_calibration(y_true, y_pred, unit=unit),
                    f"Calibration of the prediction intervals of {what} implied by the "
                    "Bland–Altman bias and SD (points on the diagonal: intervals hold)",
                )
            )
        return self.add_images_grid(items)

    def to_html(self) -> str:
        """Returns the complete HTML document as text."""
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        return _template().render(
            title=self.title,
            data_path=self.data_path,
            software=self.software,
            stamp=stamp,
            parts=self._parts,
        )

    def write(self, path) -> Path:
        """Writes the report to `path` (UTF-8), atomically; parent folders are created."""
        return atomic_write_bytes(path, self.to_html().encode("utf-8"))


def _metric_label(name):
    """A metrics-table row label: `per_branch_accuracy / att0` -> `per branch accuracy / att0`
    (`plots.readable_label` on each level; the JSON keys stay as they are)."""
    return " / ".join(plots.readable_label(part) for part in str(name).split(" / "))


def _published(value):
    if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
        return Published(value)
    return value


def _sentences(parts):
    parts = [str(p).strip() for p in parts if p and str(p).strip()]
    return " ".join(p if p.endswith((".", "!", "?")) else p + "." for p in parts)


def _flatten(tree, prefix=""):
    flat = {}
    if not hasattr(tree, "items"):
        raise ValueError(f"expected a dict of metrics, got {type(tree).__name__}")
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if hasattr(value, "items"):
            flat.update(_flatten(value, prefix=f"{name} / "))
        else:
            flat[name] = value
    return flat


def _figure(png_bytes, caption):
    check_png(png_bytes)
    data = base64.b64encode(bytes(png_bytes)).decode("ascii")
    return {"data": data, "caption": None if caption is None else str(caption)}
