"""The inference-time mitigations NeMo's Table 1 compares with: Wen et al.'s prompt-embedding
adjustment and detection score (``wen``), Ren et al.'s attention scaling (``ren``), random
tokens (Somepalli et al., ``random_tokens``)."""
