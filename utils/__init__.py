"""The suite's library: shared machinery, and each method once over it (``utils.methods``).

Methods (``utils/methods/<name>``, each registering what script 2, script 4 and Table 1 run of
it): ``nemo``, ``wen``, ``ren``, ``random_tokens``, ``wanda``, ``dori``.

Machinery, which knows no method: ``defaults`` (the shared defaults and their sources;
torch-free), ``cli`` (flag groups, settings records, steps run by name; torch-free), ``models``
(loading), ``diffusion`` (text conditioning, latents, timesteps), ``layers`` (layer
discovery), ``hooks`` (the one hook mechanism), ``generation`` (images under any prompt
condition), ``images`` (image files by name), ``files`` (what the files contain: prompt,
results and score formats), ``outputs`` (how anything is written: atomically, with its
settings record), ``distributed`` (sharding over processes), ``assets`` and ``download``
(fetching the authors' files and the training images), ``crashpoints`` (planned crashes of
the crash test).
"""
