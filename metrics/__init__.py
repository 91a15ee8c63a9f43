"""Evaluation metrics of the paper's Table 1 and App. B.4 (SPEC §6); see metrics/README.md."""
