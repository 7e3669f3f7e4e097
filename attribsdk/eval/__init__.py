"""Evaluation: datasets with gold feature labels, the metrics that score attributions, and the
benchmark runner.

* :mod:`.datasets` -- HotpotQA (paper and full-context protocols), MMLU word labels, ERASER movie
  rationales and your own JSONL, as :class:`~.datasets.LabeledExample` objects.
* :mod:`.metrics` -- plausibility against gold labels (IoU, F1, AUROC) and aggregation (mean ± std,
  median [IQR]).
* :mod:`.faithfulness` -- MoRF/LeRF/ABPC, Soft-NC/NS, π-Soft-NC/NS, top-k log-probability drop and
  LDS, re-scored by a surrogate.
* :mod:`.bench` -- the resumable runner; :mod:`.report` -- markdown, JSON and plots;
  :mod:`.reference` -- published reference points; :mod:`.cli` -- ``attribsdk bench``.

Submodules are imported on demand (the runner and faithfulness metrics need the scoring stack).
"""
