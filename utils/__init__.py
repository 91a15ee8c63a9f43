"""The suite's library: each method once, over shared machinery.

Methods: ``nemo`` (NeMo: statistics, noise differences, scores, localization, neuron
selection, export), ``baselines`` (Wen's embedding adjustment, Ren's attention scaling,
random tokens), ``wanda`` (Chavhan et al.'s pruning of memorized weights), ``dori``
(Kowalczuk et al.'s attack and adversarial fine-tuning).

Shared: ``defaults`` (every flag's default and its source; torch-free), ``cli`` (flag
groups; torch-free), ``models`` (loading), ``diffusion`` (text conditioning, latents,
timesteps), ``layers`` (layer discovery), ``hooks`` (the one hook mechanism),
``generation`` and ``mitigation`` (images under any mitigation), ``files`` (file formats),
``distributed`` (sharding over processes).
"""
