"""results.json and results.md: our numbers beside the paper's and the anchors', each with its provenance."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from uniflow.evaluation.references import Reference
from uniflow.evaluation.results import OK, BenchmarkResult, SuiteResults
from uniflow.io import atomic_write_text

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
_SHORT_HASH = 12


def format_value(value: float) -> str:
    return f"{value:.4f}" if abs(value) < 1 else f"{value:.2f}"


def _short(value: Any) -> str:
    text = str(value)
    is_hash = len(text) == 64 and all(c in "0123456789abcdef" for c in text)
    return text[:_SHORT_HASH] if is_hash else text


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _reference_text(refs: list[Reference]) -> str:
    parts = []
    for ref in refs:
        who = "" if ref.paper else f"{ref.system} "
        if ref.value is None:
            parts.append(f"{who}{ref.note or 'not reported'}")
        else:
            parts.append(f"{who}{ref.value}" + (f" ({ref.note})" if ref.note else ""))
    return "; ".join(parts)


class _Footnotes:
    """Provenance sets, numbered in order of first use. Entries equal to the run-wide settings (stated
    once above the table) are left out; results.json keeps every entry with every number."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = settings
        self.labels: dict[str, str] = {}
        self.lines: list[str] = []

    def label(self, provenance: dict[str, Any]) -> str:
        own = {k: v for k, v in provenance.items() if k not in self.settings or self.settings[k] != v}
        text = "; ".join(f"{k}: {_short(v)}" for k, v in own.items())
        if text not in self.labels:
            self.labels[text] = f"P{len(self.labels) + 1}"
            self.lines.append(f"- **{self.labels[text]}**: {text}")
        return self.labels[text]


def _rows(result: BenchmarkResult, footnotes: _Footnotes, notes: list[str]) -> list[str]:
    rows = []
    for metric, value in result.metrics.items():
        refs = [r for r in result.references if r.metric == metric]
        paper = _reference_text([r for r in refs if r.paper]) or "not reported"
        anchors = _reference_text([r for r in refs if not r.paper])
        if result.status != OK:
            ours, samples, provenance = f"not run: {result.reason}", "", ""
        else:
            samples = str(value.provenance.get("samples", ""))
            provenance = footnotes.label(value.provenance)
            if value.value is None:
                ours = "n/a (see notes)"
                notes.append(f"{result.name} {metric}: {value.reason}")
            else:
                ours = format_value(value.value)
        cells = [
            result.family,
            f"{result.title} (`{result.name}`)",
            metric,
            ours,
            samples,
            paper,
            anchors,
            provenance,
        ]
        rows.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return rows


def render_markdown(suite: SuiteResults) -> str:
    s = suite.settings
    lines = [
        f"# UniFlow evaluation: {suite.run['name']}",
        "",
        f"Tokenizer `{suite.run['tokenizer_dir']}`, model.safetensors sha256 `{s['tokenizer_sha256']}`; "
        f"decoding: {s['sampler']} sampler, {s['steps']} step(s), guidance {s['guidance']}, precision "
        f"{s['precision']}, noise seed {s['noise_seed']}; {s['device']} x {s['world_size']} rank(s); "
        f"{suite.created}. These settings hold for every number below unless its provenance says otherwise.",
        "",
        "Paper and anchor numbers are ImageNet 256 px unless the row says otherwise, as the UniFlow paper "
        "and the anchors' papers report them (uniflow/evaluation/references.py); "
        "embedded rows are this project's CPU stand-ins and compare with no published number.",
        "",
        "| family | benchmark | metric | ours | samples | UniFlow (paper) | anchors | provenance |",
        "|---|---|---|---:|---:|---|---|---|",
    ]
    footnotes, notes = _Footnotes(suite.settings), []
    for result in suite.benchmarks:
        lines += _rows(result, footnotes, notes)
        notes += result.notes
    lines += ["", "## Provenance", "", *footnotes.lines]
    if notes:
        lines += ["", "## Notes", "", *(f"- {n}" for n in notes)]
    return "\n".join(lines) + "\n"


def _strict_json(obj: Any) -> Any:
    """Non-finite floats (PSNR of identical images is inf) as strings, so the file stays strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict_json(v) for v in obj]
    return obj


def write_results(suite: SuiteResults, output_dir: str | Path) -> tuple[Path, Path]:
    """Write results.json and results.md into ``output_dir``, each atomically (temporary file + rename)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = output_dir / RESULTS_JSON, output_dir / RESULTS_MD
    atomic_write_text(json_path, json.dumps(_strict_json(suite.to_dict()), indent=2, allow_nan=False) + "\n")
    atomic_write_text(md_path, render_markdown(suite))
    return json_path, md_path
