"""The prompt set for self-distillation: instruction templates x topics per kind of prompt
(facts, lists, code, arithmetic, stories, how-tos), plus Python stdlib docstrings.

Everything is built offline from this file and the standard library. The held-out set is disjoint
from the training set by TOPIC (every kind's topic list is split, so a held-out prompt never shares
its subject with a training prompt), and its prompts use their own templates, so measuring on it
says how the drafts generalize rather than how well they memorized.
"""

from __future__ import annotations

import importlib
import inspect
import random
import re
from dataclasses import dataclass

from fluid_rt.adapt.extra_topics import EXTRA_TEMPLATES, EXTRA_TOPICS

KINDS = ("facts", "lists", "code", "arithmetic", "stories", "howto")

_TOPICS = {
    "facts": [
        "the Moon",
        "photosynthesis",
        "volcanoes",
        "the Roman Empire",
        "DNA",
        "the Sahara",
        "black holes",
        "honey bees",
        "the Pacific Ocean",
        "electricity",
        "the printing press",
        "glaciers",
        "the human heart",
        "the Amazon rainforest",
        "earthquakes",
        "Mount Everest",
        "the Great Wall of China",
        "penguins",
        "rainbows",
        "the internet",
        "vaccines",
        "the Nile",
        "dinosaurs",
        "the solar system",
        "coral reefs",
        "tea",
        "the piano",
        "the Olympic Games",
        "magnets",
        "the water cycle",
        "whales",
        "Jupiter",
        "bread",
        "the Eiffel Tower",
        "clouds",
        "coffee",
        "the French Revolution",
        "chess",
        "the immune system",
        "gravity",
        "owls",
        "the Arctic",
        "bicycles",
        "paper",
        "the telescope",
        "tides",
        "lightning",
        "deserts",
        "the brain",
        "salt",
    ],
    "lists": [
        "fruits",
        "programming languages",
        "countries in Europe",
        "musical instruments",
        "kitchen tools",
        "planets",
        "breakfast foods",
        "board games",
        "flowers",
        "sports",
        "rivers",
        "birds",
        "vegetables",
        "colors",
        "farm animals",
        "hobbies",
        "tree species",
        "famous painters",
        "units of measurement",
        "cloud services",
        "spices",
        "dog breeds",
        "types of weather",
        "office supplies",
        "camping gear",
        "ocean animals",
        "metals",
        "gemstones",
        "dances",
        "desserts",
        "car parts",
        "insects",
        "cheeses",
        "jobs",
        "winter clothes",
        "languages spoken in Asia",
        "fonts",
        "network protocols",
        "chemical elements",
        "data structures",
    ],
    "code": [
        "reverses a string",
        "checks whether a number is prime",
        "returns the factorial of n",
        "computes the n-th Fibonacci number",
        "counts the vowels in a string",
        "finds the largest element of a list",
        "removes duplicates from a list",
        "checks whether a string is a palindrome",
        "sorts a list of tuples by their second item",
        "merges two dictionaries",
        "flattens a nested list",
        "computes the average of a list",
        "converts Celsius to Fahrenheit",
        "counts the words in a sentence",
        "returns the greatest common divisor of two numbers",
        "reads a text file into a list of lines",
        "checks whether two strings are anagrams",
        "returns the squares of a list of numbers",
        "finds the second largest number in a list",
        "capitalizes every word of a string",
        "sums the digits of an integer",
        "checks whether a year is a leap year",
        "transposes a matrix",
        "returns the even numbers of a list",
        "counts character frequencies",
        "implements binary search",
        "computes the length of the longest word",
        "converts a list of strings to integers",
        "returns the union of two sets",
        "checks whether a list is sorted",
    ],
    "arithmetic": [],  # generated below
    "stories": [
        "a lost dog",
        "a robot who learns to paint",
        "a girl who finds a map",
        "a dragon",
        "a lighthouse keeper",
        "a talking cat",
        "a trip to the Moon",
        "a magic garden",
        "a brave little mouse",
        "a snowy night",
        "a pirate ship",
        "a kind giant",
        "a forgotten key",
        "a rainy day in the city",
        "a young wizard",
        "an old clock",
        "a friendly ghost",
        "a race between a turtle and a rabbit",
        "a baker",
        "a tiny star",
        "a boy and his kite",
        "a secret door",
        "a whale who sings",
        "a train journey",
        "a fox in the forest",
        "a library at midnight",
        "an astronaut",
        "a lonely tree",
        "a treasure hunt",
        "a new school",
    ],
    "howto": [
        "make a cup of tea",
        "learn a new language",
        "plant a tree",
        "write a good email",
        "save money",
        "fall asleep faster",
        "study for an exam",
        "bake bread",
        "start running",
        "clean a laptop keyboard",
        "prepare for a job interview",
        "make a paper airplane",
        "keep houseplants alive",
        "organize a closet",
        "learn to play guitar",
        "cook rice",
        "reduce stress",
        "change a flat tire",
        "make new friends",
        "brew coffee",
        "start a vegetable garden",
        "write a resume",
        "take better photos",
        "memorize a speech",
        "care for a puppy",
        "be more productive",
        "make pancakes",
        "learn to code",
        "wash a wool sweater",
        "plan a trip",
    ],
}

_TEMPLATES = {  # (training templates, held-out templates)
    "facts": (
        [
            "Tell me about {t}.",
            "What is {t}? Explain briefly.",
            "Give me three facts about {t}.",
            "Explain {t} to a child.",
        ],
        ["Describe {t} in a few sentences.", "Why is {t} interesting?"],
    ),
    "lists": (
        ["List five {t}.", "Name some {t}.", "Give me a list of {t}."],
        ["What are some common {t}? Answer with a list.", "Write a numbered list of {t}."],
    ),
    "code": (
        ["Write a Python function that {t}.", "Show me Python code that {t}."],
        ["How would I write a function in Python that {t}?"],
    ),
    "arithmetic": (
        ["What is {t}?", "Calculate {t}.", "Compute {t} and explain the steps."],
        ["Please work out {t}.", "Solve {t}."],
    ),
    "stories": (
        ["Write a short story about {t}.", "Tell me a story about {t}."],
        ["Write a very short tale about {t}."],
    ),
    "howto": (
        ["How do I {t}?", "Give me step-by-step instructions to {t}.", "What is the best way to {t}?"],
        ["Explain how to {t}.", "I want to {t}. Where do I start?"],
    ),
}

_DOC_MODULES = (
    "string",
    "os.path",
    "json",
    "math",
    "random",
    "textwrap",
    "itertools",
    "functools",
    "collections",
    "shutil",
    "statistics",
    "fractions",
    "heapq",
    "bisect",
    "datetime",
    "re",
    "csv",
    "difflib",
    "glob",
    "fnmatch",
    "base64",
    "hashlib",
    "copy",
    "operator",
)


@dataclass(frozen=True)
class Prompt:
    kind: str
    text: str


def _arithmetic_topics(rng: random.Random, n: int) -> list[str]:
    ops = ["{a} + {b}", "{a} - {b}", "{a} * {b}", "{a} plus {b}", "{a} times {b}"]
    out = []
    while len(out) < n:
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        out.append(rng.choice(ops).format(a=a, b=b))
    return list(dict.fromkeys(out))


def _docstring_prompts(rng: random.Random) -> list[Prompt]:
    """'What does <module>.<name> do?' plus the first line of its docstring as context: real
    technical text from the stdlib, whose answers are explanations with code."""
    out = []
    for mod_name in _DOC_MODULES:
        try:
            mod = importlib.import_module(mod_name)
        except ImportError:
            continue
        for name, obj in sorted(vars(mod).items()):
            if name.startswith("_") or not callable(obj):
                continue
            doc = inspect.getdoc(obj)
            if not doc:
                continue
            first = doc.strip().splitlines()[0][:160]
            out.append(
                Prompt(
                    "code",
                    f"In Python, what does {mod_name}.{name} do? The docs say: "
                    f'"{first}" Explain with an example.',
                )
            )
    rng.shuffle(out)
    return out


def _numbers(text: str) -> tuple[int, ...]:
    return tuple(sorted(int(n) for n in re.findall(r"\d+", text)))


def _extra_prompts(seed: int, held_topics: set[str], held_sums: set[tuple[int, ...]]) -> list[Prompt]:
    """The second round's training prompts (``extra_topics``): every extra topic under two of its
    kind's extra templates, fresh arithmetic, and the remaining stdlib docstrings, minus anything
    that names a held-out topic (either contains the other) or reuses a held-out sum's numbers."""
    rng = random.Random(seed + 1)  # its own stream: the first round's prompts stay as they were

    def unseen(topic: str) -> bool:
        low = topic.lower()
        return not any(h in low or low in h for h in held_topics)

    out = []
    for kind in KINDS:
        topics = EXTRA_TOPICS.get(kind) or [
            t for t in _arithmetic_topics(rng, 120) if _numbers(t) not in held_sums
        ]
        for t in dict.fromkeys(t for t in topics if unseen(t)):
            out += [Prompt(kind, tpl.format(t=t)) for tpl in rng.sample(EXTRA_TEMPLATES[kind], 2)]
    rng.shuffle(out)
    return out


def build_prompts(
    seed: int = 0, held_out_fraction: float = 0.2, docstrings: int = 150, extra: bool = False
) -> tuple[list[Prompt], list[Prompt]]:
    """(train, held_out): every kind's topics are shuffled and split; the training prompts use the
    training templates on the training topics, the held-out prompts the held-out templates on the
    held-out topics. ``docstrings`` stdlib-docstring prompts join the training set only.
    ``extra``: then the second round's prompts (``_extra_prompts``: more topics, templates and the
    other stdlib docstrings), appended after the first round's (which, and the held-out set, do
    not depend on it). Off by default: the shipped adapter was trained on the first round, and
    645 more steps over both rounds did not raise its held-out tokens per forward (see
    ``extra_topics``)."""
    rng = random.Random(seed)
    train, held = [], []
    held_topics: set[str] = set()
    for kind in KINDS:
        topics = list(_TOPICS[kind]) or _arithmetic_topics(rng, 60)
        rng.shuffle(topics)
        cut = max(1, int(len(topics) * held_out_fraction))
        held_topics.update(t.lower() for t in topics[:cut])
        train_t, held_t = _TEMPLATES[kind]
        train += [Prompt(kind, tpl.format(t=t)) for t in topics[cut:] for tpl in train_t]
        held += [Prompt(kind, tpl.format(t=t)) for t in topics[:cut] for tpl in held_t]
    docs = _docstring_prompts(rng)
    train += docs[:docstrings]
    rng.shuffle(train)
    rng.shuffle(held)
    if extra:
        held_sums = {_numbers(p.text) for p in held if p.kind == "arithmetic"}
        words = {t for t in held_topics if not _numbers(t)}
        train += _extra_prompts(seed, words, held_sums) + docs[docstrings:]
    return train, held
