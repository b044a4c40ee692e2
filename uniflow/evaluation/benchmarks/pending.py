"""The paper's benchmarks that need models this project does not have yet (none at present).

They are in the table with the published numbers and the reason they are not run. The stage that
implements one exports an entry of the same name with a runner from its own module and deletes the
entry here (see :mod:`uniflow.evaluation.registry`). ``data`` describes the layout the data is
commonly packaged in (the dataset's release, LLaVA-1.5's evaluation folders, BTS's NYU split), the
one the data package's readers (``uniflow.data.vqa_formats``) read,
so a user can prepare the data before the stage lands.
"""

from __future__ import annotations

from uniflow.evaluation.entry import Benchmark

# Every paper benchmark has a runner now (the MLLM rows: uniflow/evaluation/benchmarks/mllm.py);
# a benchmark added to the table before its stage exists goes here with its pending reason.
BENCHMARKS: tuple[Benchmark, ...] = ()
