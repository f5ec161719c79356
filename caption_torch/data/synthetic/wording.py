"""How the embedded dataset's captions word a scene: vocabulary, templates, synonyms and rare words.

The scene itself (nouns, colours, sizes, settings, relations, positions) is
``caption_torch.data.synthetic.scenes``'; ``caption_torch.data.synthetic.generate`` draws scenes and writes the
files. :func:`describe` turns one scene into ``CAPTIONS_PER_IMAGE`` different captions.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from caption_torch.data.synthetic.scenes import COLOURS, NOUN_SHAPES

CAPTION_LENGTH = 17  # tokens per caption row incl. <START> and <END>, as cs231n
MAX_WORDS = CAPTION_LENGTH - 2
CAPTIONS_PER_IMAGE = 5


def pick_one(rng: np.random.Generator, options: Sequence[Any]) -> Any:
    # One float per draw: cheaper than rng.integers, which matters at COCO size (benchmarks/micro.py --groups rng).
    return options[int(rng.random() * len(options))]


def _usual_or_other(rng: np.random.Generator, words: Sequence[str], usual: float) -> str:
    return words[0] if len(words) == 1 or rng.random() < usual else pick_one(rng, words[1:])


# --------------------------------------------------------------------------- #
# How captions word a scene. The scene vocabulary itself (nouns, colours, sizes,
# settings, relations) is caption_torch.data.synthetic.scenes'.
# --------------------------------------------------------------------------- #

NOUN_WORDS = {  # the first word is the usual one
    "ball": ("ball", "sphere"),
    "box": ("box", "crate"),
    "cone": ("cone",),
    "star": ("star",),
    "ring": ("ring", "hoop"),
    "kite": ("kite",),
    "cup": ("cup", "mug"),
    "hat": ("hat",),
    "umbrella": ("umbrella",),
    "car": ("car",),
    "bicycle": ("bicycle", "bike"),
    "chair": ("chair",),
    "book": ("book",),
    "clock": ("clock",),
    "dog": ("dog", "puppy"),
    "cat": ("cat", "kitten"),
    "horse": ("horse",),
    "cow": ("cow",),
    "sheep": ("sheep", "lamb"),
    "pig": ("pig",),
    "rabbit": ("rabbit", "bunny"),
    "bear": ("bear",),
    "bird": ("bird",),
    "duck": ("duck",),
}
ANIMATE = frozenset(noun for noun, shape in NOUN_SHAPES.items() if shape in ("animal", "bird"))
COLOUR_WORDS = {colour: (colour,) for colour in COLOURS} | {"grey": ("grey", "gray")}
SIZE_WORDS = {"small": ("small", "little", "tiny"), "medium": (), "big": ("big", "large", "huge")}
COUNT_WORDS = {1: ("a", "one"), 2: ("two", "a pair of"), 3: ("three", "several")}
RELATION_WORDS = {  # relation: (phrases for objects[0] -> objects[1], phrases for the inverse)
    "next_to": (("next to", "beside", "near", "by"), ("next to", "beside", "near", "by")),
    "on": (("on", "on top of"), ("under", "below", "beneath")),
    "left_of": (("to the left of", "left of"), ("to the right of", "right of")),
    "in_front_of": (("in front of",), ("behind",)),
}
SETTING_WORDS = {
    "beach": ("on a beach", "on the beach", "on the sand", "at the beach"),
    "kitchen": ("in a kitchen", "in the kitchen", "on a kitchen floor"),
    "park": ("in a park", "in the park", "on the grass"),
    "street": ("on a street", "on the road", "in the street"),
    "living_room": ("in a living room", "in a room", "on a carpet"),
    "snow": ("in the snow", "on a snowy field", "in the snowy hills"),
    "forest": ("in a forest", "in the woods", "among the trees"),
    "desert": ("in a desert", "in the desert", "on the dry sand"),
    "lake": ("by a lake", "near the water", "at the lake"),
    "field": ("in a field", "in a grassy field", "in an open field"),
    "office": ("in an office", "in the office", "on an office floor"),
    "garden": ("in a garden", "in the garden", "among the flowers"),
}
PICTURE_PREFIXES = ("a photo of", "a picture of", "an image of")
POSES = ("sitting", "standing", "lying", "resting")
# Deliberately rare words (see RARE_WORD_EXPECTED_COUNT): one may replace a word of a caption.
RARE_SYNONYMS = {
    "red": ("crimson", "scarlet"),
    "blue": ("azure", "navy"),
    "green": ("emerald",),
    "yellow": ("golden",),
    "orange": ("amber",),
    "purple": ("violet", "lilac"),
    "pink": ("magenta",),
    "white": ("ivory",),
    "black": ("ebony",),
    "brown": ("chestnut",),
    "grey": ("charcoal",),
    "small": ("teeny", "minuscule"),
    "big": ("gigantic", "enormous"),
    "large": ("colossal",),
    "dog": ("pooch", "hound"),
    "cat": ("feline",),
    "horse": ("stallion", "pony"),
    "cow": ("heifer",),
    "pig": ("piglet",),
    "rabbit": ("hare",),
    "bird": ("sparrow",),
    "duck": ("mallard",),
    "ball": ("orb",),
    "box": ("carton",),
    "cup": ("tumbler",),
    "car": ("sedan",),
    "hat": ("bonnet",),
    "umbrella": ("parasol",),
    "chair": ("stool",),
    "book": ("novel",),
    "clock": ("timepiece",),
    "beach": ("seashore", "shore"),
    "forest": ("woodland",),
    "woods": ("thicket",),
    "street": ("avenue", "boulevard"),
    "kitchen": ("scullery",),
    "field": ("pasture",),
    "garden": ("orchard",),
    "office": ("workplace",),
    "near": ("alongside",),
    "photo": ("snapshot",),
    "picture": ("photograph",),
    "sitting": ("perched",),
    "lying": ("lounging",),
    "standing": ("posing",),
}
# Slots: A, B the groups; rel / inv the relation read from A / from B; S the setting (may be
# left out); isA / isB "is" or "are"; pose a posture (animate A only); photo "a photo of"...
TWO_GROUP_TEMPLATES = (
    "A rel B S",
    "there isA A rel B S",
    "B inv A S",
    "S there isA A rel B",
    "A and B S",
    "photo A rel B S",
    "A isA rel B S",
    "A pose rel B S",
    "there isB B inv A S",
)
ONE_GROUP_TEMPLATES = ("A S", "there isA A S", "S there isA A", "photo A S", "A isA S", "A pose S")
SETTING_OMITTED_PROBABILITY = 0.3  # two-group captions only: "a dog next to a red ball"
ONE_GROUP_PROBABILITY = 0.45  # with the line above: COCO-like lengths, ~10.5 words on average


def _plural(word: str) -> str:
    if word == "sheep":
        return word
    if word.endswith(("s", "x", "ch", "sh")):
        return word + "es"
    return word[:-1] + "ies" if word.endswith("y") and word[-2] not in "aeiou" else word + "s"


# Every form with rare alternatives: "dog" -> ("pooch", "hound") and "dogs" -> ("pooches", "hounds").
_RARE_FORMS = dict(RARE_SYNONYMS) | {
    _plural(word): tuple(map(_plural, rares))
    for word, rares in RARE_SYNONYMS.items()
    if any(word in words for words in NOUN_WORDS.values())
}


# --------------------------------------------------------------------------- #
# Captions
# --------------------------------------------------------------------------- #


def _noun_phrase(rng: np.random.Generator, obj: dict, compact: bool) -> list[str]:
    words = _usual_or_other(rng, COUNT_WORDS[obj["count"]], 1.0 if compact else 0.85).split()
    if not compact and obj["size"] != "medium" and rng.random() < 0.5:
        words.append(pick_one(rng, SIZE_WORDS[obj["size"]]))
    if rng.random() < 0.9:  # people do not always say the colour
        words.append(_usual_or_other(rng, COLOUR_WORDS[obj["colour"]], 0.7))
    noun = _usual_or_other(rng, NOUN_WORDS[obj["noun"]], 0.75)
    return words + [noun if obj["count"] == 1 else _plural(noun)]


def _fill(rng: np.random.Generator, template: str, scene: dict, compact: bool, with_setting: bool) -> list[str]:
    objects, words = scene["objects"], []
    for slot in template.split():
        if slot in ("A", "B"):
            words += _noun_phrase(rng, objects[slot == "B"], compact)
        elif slot in ("rel", "inv"):
            words += pick_one(rng, RELATION_WORDS[scene["relation"]][slot == "inv"]).split()
        elif slot == "S":
            words += pick_one(rng, SETTING_WORDS[scene["setting"]]).split() if with_setting else []
        elif slot in ("isA", "isB"):
            words.append("is" if objects[slot == "isB"]["count"] == 1 else "are")
        elif slot == "pose":
            words.append(pick_one(rng, POSES))
        elif slot == "photo":
            words += pick_one(rng, PICTURE_PREFIXES).split()
        else:
            words.append(slot)
    return words


def _caption(rng: np.random.Generator, template: str, scene: dict, with_setting: bool) -> list[str]:
    """One caption from one template, at most ``MAX_WORDS`` words."""
    # Too long for 17 tokens: drop the size words and "a pair of", then the setting.
    for compact, keep_setting in ((False, with_setting), (True, with_setting), (True, False)):
        words = _fill(rng, template, scene, compact, keep_setting)
        if len(words) <= MAX_WORDS:
            break
    return words


def describe(rng: np.random.Generator, scene: dict, rare_probability: float) -> list[list[str]]:
    """``CAPTIONS_PER_IMAGE`` different captions of a scene, each from a different template."""
    two_groups = len(scene["objects"]) == 2
    templates = [
        template
        for template in (TWO_GROUP_TEMPLATES if two_groups else ONE_GROUP_TEMPLATES)
        if "pose" not in template or scene["objects"][0]["noun"] in ANIMATE
    ]
    captions: list[list[str]] = []
    for index in rng.permutation(len(templates))[:CAPTIONS_PER_IMAGE]:
        with_setting = templates[index][0] == "S" or not two_groups or rng.random() >= SETTING_OMITTED_PROBABILITY
        words = _caption(rng, templates[index], scene, with_setting)
        for _ in range(5):  # dropping the setting can make two templates say the same: reword
            if words not in captions:
                break
            words = _caption(rng, templates[index], scene, with_setting)
        if rng.random() < rare_probability:
            replaceable = [i for i, word in enumerate(words) if word in _RARE_FORMS]
            if replaceable:
                i = pick_one(rng, replaceable)
                words[i] = pick_one(rng, _RARE_FORMS[words[i]])
        for i in range(len(words) - 1):  # articles last, after any rare word: "an azure ball"
            if words[i] in ("a", "an"):
                words[i] = "an" if words[i + 1][0] in "aeiou" else "a"
        captions.append(words)
    return captions
