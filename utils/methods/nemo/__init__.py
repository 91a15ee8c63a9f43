"""NeMo (Hintersdorf et al., NeurIPS 2024), SPEC §2-5: text-only activation statistics
(``statistics``), first-step noise differences (``noise``), MS-SSIM memorization and blocked
scores (``score``), initial selection and refinement (``localization``), the neuron sets of
script 4 (``selection``) and the pruned model (``export``)."""
