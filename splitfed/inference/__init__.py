"""Private split inference: generation across the cut with K/V caches on both sides.

The client holds Bottom and Top and sees tokens; the trunk (server) sees only activations
and the 2-D attention mask, through a `DecodeLink`.
"""

from splitfed.inference.generate import GenerationOutput, SplitGenerator, left_align
from splitfed.inference.link import DecodeLink, LocalDecodeLink
from splitfed.inference.sampling import TokenChooser, logits_processors, make_generator
from splitfed.inference.settings import GenerationSettings

__all__ = [
    "DecodeLink",
    "GenerationOutput",
    "GenerationSettings",
    "LocalDecodeLink",
    "SplitGenerator",
    "TokenChooser",
    "left_align",
    "logits_processors",
    "make_generator",
]
