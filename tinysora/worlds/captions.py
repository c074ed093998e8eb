"""Caption variants for training and evaluation: attributes left out, synonyms used.

docs/WORLD.md: prompts users type may leave out size, background or the article and may
use other words. :func:`paraphrase` turns a scene into such a prompt; training
uses it as caption augmentation and the evaluation's 'paraphrased' group uses it
with every variant switched on.
"""

from __future__ import annotations

from tinysora.worlds.shapes import (
    BACKGROUNDS,
    COLORS,
    MOTIONS,
    SHAPES,
    SIZES,
    ObjectSpec,
    Scene,
    SplitMix64,
)

SYNONYMS: dict[str, tuple[str, ...]] = {
    "circle": ("ball", "disc"),
    "square": ("box", "block"),
    "triangle": ("pyramid",),
    "red": ("crimson",),
    "purple": ("violet",),
    "pink": ("rose",),
    "cyan": ("turquoise",),
    "large": ("big",),
    "small": ("little", "tiny"),
    "standing still": ("still", "not moving"),
    "growing": ("gets bigger", "expanding"),
    "shrinking": ("gets smaller",),
    "bouncing": ("hopping",),
    "moving left": ("going left", "sliding left"),
    "moving right": ("going right", "sliding right"),
    "moving up": ("going up", "rising"),
    "moving down": ("going down", "falling"),
}


def _word(value: str, rng: SplitMix64, p_synonym: float) -> str:
    options = SYNONYMS.get(value, ())
    if options and rng.uniform() < p_synonym:
        return rng.choice(options)
    return value


def paraphrase(
    scene: Scene,
    rng: SplitMix64,
    p_drop_size: float = 0.3,
    p_drop_background: float = 0.3,
    p_drop_article: float = 0.2,
    p_synonym: float = 0.3,
) -> str:
    """A prompt for ``scene`` with attributes randomly left out and words swapped."""

    def phrase(o: ObjectSpec) -> str:
        article = rng.uniform() >= p_drop_article
        words = [_word(o.size, rng, p_synonym)] if rng.uniform() >= p_drop_size else []
        words += [
            _word(o.color, rng, p_synonym),
            _word(o.shape, rng, p_synonym),
            _word(o.motion, rng, p_synonym),
        ]
        if article:
            words.insert(0, "an" if words[0][0] in "aeiou" else "a")
        return " ".join(words)

    text = " and ".join(phrase(o) for o in scene.objects)
    if rng.uniform() >= p_drop_background:
        text += f" on a {scene.background} background"
    return text


def vocabulary() -> dict[str, list[str]]:
    """Every word the training captions use (:func:`paraphrase` of the grammar in
    docs/WORLD.md), by kind, canonical words before synonyms: what a DiT trained on the
    Shapes World knows (saved as ``pipeline.json``'s ``vocabulary``)."""

    def kind(values) -> list[str]:
        return [*values, *(s for v in values for s in SYNONYMS.get(v, ()))]

    return {
        "colours": kind(COLORS),
        "shapes": kind(SHAPES),
        "motions": kind(MOTIONS),
        "sizes": kind(SIZES),
        "backgrounds": [*BACKGROUNDS, "background"],
    }
