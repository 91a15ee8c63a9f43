"""The work a step will do, in units that can be counted before it runs (U-Net calls of a batch
shape, decoded images, model loads), and their time on the loaded model: a few calls of each
shape after one warm-up (``calibrate``). Projected seconds are counts times measured times
(``Timings.seconds``), so a projection is only as exact as its counts; a count that depends on
the data says how it was estimated (``Work.estimate``).

Torch-free at import: the step modules' ``cost`` functions build ``Work`` from their flags.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

# How each U-Net call of a ``Passes`` is run: without gradients; forward and backward to its
# inputs with the U-Net frozen (an optimized embedding or latent); forward and backward to
# the U-Net's weights (fine-tuning).
FORWARD, BACKWARD, TRAIN = "forward", "backward", "train"
KINDS = (FORWARD, BACKWARD, TRAIN)
CALIBRATION_CALLS = 3  # timed calls of each shape after one warm-up at most (ours: seconds on the test bed)
CALIBRATION_SECONDS = 2.0  # ours: no further timed call of a shape once its calls took this long (SD on a CPU)
CALIBRATION_TIMESTEP = 500  # any timestep costs the same (ours)


@dataclass(frozen=True)
class Passes:
    """``calls`` U-Net calls of ``batch`` latents each, run as ``kind`` (FORWARD, BACKWARD, TRAIN)."""

    calls: float
    batch: int
    kind: str = FORWARD

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"Passes kind: expected one of {KINDS}, got {self.kind!r}")

    @property
    def forwards(self) -> float:
        """U-Net sample-forwards (one per latent per call)."""
        return self.calls * self.batch

    @property
    def backwards(self) -> float:
        """U-Net sample-backwards (one per latent per call backpropagated)."""
        return 0.0 if self.kind == FORWARD else self.calls * self.batch

    def times(self, factor: float) -> Passes:
        return Passes(self.calls * factor, self.batch, self.kind)


@dataclass(frozen=True)
class PromptCost:
    """What a mitigation of script 4 changes in one prompt's work: its own U-Net calls before
    the generation (``passes``), whether the denoising loop computes both guidance halves at
    every step whatever ``-g`` (a guidance schedule of its own), whether each prompt needs a
    pipeline call of its own (per-prompt hooks), and how a data-dependent count was estimated."""

    passes: tuple[Passes, ...] = ()
    both_halves: bool = False
    own_call: bool = False
    estimate: str = ""


@dataclass
class Work:
    """A step's units of work: prompts, images decoded, U-Net calls, text-encoder prompts,
    attack steps, model loads (each script run loads its model) and images measured (the
    table's columns); ``estimate`` says how a data-dependent count was projected ("" when every
    count is exact)."""

    prompts: int = 0
    images: int = 0
    passes: list[Passes] = field(default_factory=list)
    texts: int = 0
    attack_steps: int = 0
    loads: int = 0
    measured: int = 0
    estimate: str = ""

    @property
    def forwards(self) -> float:
        return sum(p.forwards for p in self.passes)

    @property
    def backwards(self) -> float:
        return sum(p.backwards for p in self.passes)

    def __add__(self, other: Work) -> Work:
        notes = [note for note in dict.fromkeys((self.estimate, other.estimate)) if note]
        return Work(self.prompts + other.prompts, self.images + other.images, self.passes + other.passes,
                    self.texts + other.texts, self.attack_steps + other.attack_steps, self.loads + other.loads,
                    self.measured + other.measured, "; ".join(notes))


@dataclass
class Timings:
    """Measured seconds on one device: per U-Net call by (batch, kind), per decoded image (at
    the batch it was timed at), per text-encoder prompt, per model load, per image measured,
    and the calibration's own."""

    device: str
    calls: dict[tuple[int, str], float] = field(default_factory=dict)
    image: float = 0.0
    text: float = 0.0
    load: float = 0.0
    measure: float = 0.0
    calibration: float = 0.0

    def describe(self) -> str:
        """The measured times in one paragraph."""
        calls = ", ".join(f"{batch} latents {kind} {seconds * 1000:.1f} ms"
                          for (batch, kind), seconds in sorted(self.calls.items()))
        return (f"Calibrated in {self.calibration:.1f} s on {self.device}: U-Net call of {calls}; "
                f"VAE decode {self.image * 1000:.1f} ms an image; text encoder {self.text * 1000:.1f} ms a prompt; "
                f"model load {self.load:.1f} s; measures {self.measure * 1000:.1f} ms an image.")

    def seconds(self, work: Work) -> float:
        """The projected seconds of ``work`` (every shape must have been calibrated)."""
        missing = {(p.batch, p.kind) for p in work.passes} - set(self.calls)
        if missing:
            raise ValueError(f"U-Net shapes {sorted(missing)} were not calibrated")
        return (sum(p.calls * self.calls[(p.batch, p.kind)] for p in work.passes) + work.images * self.image
                + work.texts * self.text + work.loads * self.load + work.measured * self.measure)


def _timed(run, device, repeats: int) -> float:
    """Seconds of one ``run()`` after a warm-up: the mean of ``repeats`` calls, fewer (at least
    one) once they took ``CALIBRATION_SECONDS``."""
    import torch

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    run()
    sync()
    start, calls = time.perf_counter(), 0
    while calls < repeats and (calls == 0 or time.perf_counter() - start < CALIBRATION_SECONDS):
        run()
        sync()
        calls += 1
    return (time.perf_counter() - start) / calls


def calibrate(pipe, shapes: set[tuple[int, str]], image_batch: int, load_seconds: float = 0.0,
              repeats: int = CALIBRATION_CALLS) -> Timings:
    """Time ``pipe``'s U-Net at every (batch, kind) of ``shapes`` on random latents [batch, 4,
    h, w] and embeddings [batch, 77, dim]; the VAE decode (and post-processing to PIL) of
    ``image_batch`` latents, per image; the text encoder on one prompt. The U-Net's gradient
    flags and gradients are left as they were."""
    import torch

    from utils.diffusion import encode_prompts, latent_shape
    from utils.models import frozen

    unet, vae = pipe.unet, pipe.vae
    device = unet.device
    tokens = pipe.tokenizer.model_max_length
    timestep = torch.tensor(CALIBRATION_TIMESTEP, device=device)
    threads = torch.get_num_threads()
    timings = Timings(f"{device.type}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else
                                          f" ({threads} thread{'s' if threads > 1 else ''})"), load=load_seconds)

    def call(batch: int, kind: str):
        latents = torch.randn(batch, *latent_shape(unet), device=device, dtype=unet.dtype)
        embeddings = torch.randn(batch, tokens, unet.config.cross_attention_dim, device=device, dtype=unet.dtype)
        if kind == FORWARD:
            def forward():
                with torch.no_grad():
                    unet(latents, timestep, encoder_hidden_states=embeddings)
            return forward
        if kind == BACKWARD:
            inputs = latents.requires_grad_(True)

            def backward():
                with frozen(unet), torch.enable_grad():
                    unet(inputs, timestep, encoder_hidden_states=embeddings).sample.float().square().mean().backward()
            return backward

        def train():
            with torch.enable_grad():
                unet(latents, timestep, encoder_hidden_states=embeddings).sample.float().square().mean().backward()
            unet.zero_grad(set_to_none=True)
        return train

    flags = [(p, p.requires_grad) for p in unet.parameters()]
    try:
        for batch, kind in sorted(shapes):
            for p, flag in flags:
                p.requires_grad_(kind == TRAIN or flag)
            timings.calls[(batch, kind)] = _timed(call(batch, kind), device, repeats)
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        unet.zero_grad(set_to_none=True)
    with torch.no_grad():
        latents = torch.randn(image_batch, *latent_shape(unet), device=device, dtype=vae.dtype)
        decode = lambda: pipe.image_processor.postprocess(vae.decode(latents / vae.config.scaling_factor).sample,
                                                          output_type="pil")
        timings.image = _timed(decode, device, 1) / image_batch
        timings.text = _timed(lambda: encode_prompts(pipe.tokenizer, pipe.text_encoder, ["a photo"]), device, repeats)
    return timings
