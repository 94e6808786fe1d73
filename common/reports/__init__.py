"""Run outputs: files, the numbers behind the plots, the plots, and one self-contained HTML report.

Split by job: `files` (metrics.json, predictions.csv, PNGs, history.csv), `stats` (the number
format, intervals, calibration and agreement statistics), `plots` (PNG figures and overlays with
colour bars) and `html` (the Jinja2-rendered report). The names below stay importable from
`common.reports` as before.
"""

from common.reports.files import PNG_SIGNATURE  # noqa: F401
from common.reports.files import anonymize_id  # noqa: F401
from common.reports.files import read_history  # noqa: F401
from common.reports.files import save_png  # noqa: F401
from common.reports.files import write_csv  # noqa: F401
from common.reports.files import write_json  # noqa: F401
from common.reports.html import HTMLReport  # noqa: F401
from common.reports.html import software_version  # noqa: F401
from common.reports.plots import encode_png  # noqa: F401
from common.reports.plots import figure_png  # noqa: F401
from common.reports.plots import image_png  # noqa: F401
from common.reports.plots import localisation_panel_png  # noqa: F401
from common.reports.plots import overlay_map  # noqa: F401
from common.reports.plots import overlay_png  # noqa: F401
from common.reports.plots import plot_bars  # noqa: F401
from common.reports.plots import plot_bland_altman  # noqa: F401
from common.reports.plots import plot_calibration  # noqa: F401
from common.reports.plots import plot_confusion_matrix  # noqa: F401
from common.reports.plots import plot_error_by_group  # noqa: F401
from common.reports.plots import plot_interval_calibration  # noqa: F401
from common.reports.plots import plot_learning_curves  # noqa: F401
from common.reports.plots import plot_roc  # noqa: F401
from common.reports.plots import plot_scatter  # noqa: F401
from common.reports.plots import readable_label  # noqa: F401
from common.reports.stats import NotAvailable  # noqa: F401
from common.reports.stats import Published  # noqa: F401
from common.reports.stats import ValueCI  # noqa: F401
from common.reports.stats import bland_altman_stats  # noqa: F401
from common.reports.stats import count_noun  # noqa: F401
from common.reports.stats import expected_calibration_error  # noqa: F401
from common.reports.stats import format_value  # noqa: F401
from common.reports.stats import interval_calibration_table  # noqa: F401
from common.reports.stats import reliability_table  # noqa: F401
from common.reports.stats import roc_curves  # noqa: F401
from common.reports.stats import value_with_ci  # noqa: F401
