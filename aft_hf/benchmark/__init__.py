"""The field's robust zero-shot benchmark (clip_benchmark / RobustVLM protocol) over webdataset copies of
its datasets: clean accuracy on the whole test split, APGD-CE + APGD-T on the first 1000 images, sharded
across processes, resumable, into report.json / report.md / a figure / model-card entries.
See docs/benchmark.md.
"""

from .errors import BenchmarkError
from .protocol import Protocol, attack_runs, robust_verdicts
from .report import build_report, card_report, markdown, write_reports
from .run import run_benchmark
from .runner import DatasetRequest, cost_lines, plan_dataset, summarise
from .suites import SUITES, SuiteDataset, suite_datasets
from .wds import WdsDataset, open_wds

__all__ = ["BenchmarkError", "DatasetRequest", "Protocol", "SUITES", "SuiteDataset", "WdsDataset", "attack_runs",
           "build_report", "card_report", "cost_lines", "markdown", "open_wds", "plan_dataset", "robust_verdicts",
           "run_benchmark", "suite_datasets", "summarise", "write_reports"]
