"""Training prompts for distillation, made here: no dataset is downloaded, and none of them is a
Spec-Bench question, so the benchmark questions stay held out.

Two sources, mixed: instruction templates over small word lists (the Spec-Bench categories:
writing, roleplay, reasoning, math, coding, extraction, stem, humanities, summarization), and
the Python standard library's docstrings (summarise, explain, write the function). Seeded, so a
rebuild asks the same questions.
"""

from __future__ import annotations

import ast
import random
import sysconfig
from pathlib import Path

TOPICS = ["the ocean", "a small village", "winter", "friendship", "a lost key", "the moon", "a robot",
          "a library", "the first day of school", "a thunderstorm", "an old map", "a garden", "music",
          "a long journey", "a mountain", "the city at night", "a bakery", "a forgotten letter", "time",
          "a volcano", "a chess game", "a river", "the desert", "a lighthouse", "a festival"]
JOBS = ["chef", "pilot", "teacher", "detective", "farmer", "astronaut", "doctor", "librarian",
        "software engineer", "museum guide", "ship captain", "gardener", "journalist", "architect"]
SCIENCE = ["photosynthesis", "gravity", "the water cycle", "vaccines", "plate tectonics", "electricity",
           "the immune system", "black holes", "DNA replication", "climate change", "magnetism",
           "the human heart", "sound waves", "rainbows", "nuclear fusion", "evolution", "batteries"]
HISTORY = ["the French Revolution", "the Industrial Revolution", "the Roman Empire", "the Renaissance",
           "the printing press", "the Silk Road", "the Cold War", "ancient Egypt", "the invention of the telephone",
           "the moon landing", "the fall of the Berlin Wall", "the Age of Exploration"]
CODE_TASKS = ["reverse a string", "check whether a number is prime", "count the words in a sentence",
              "find the largest element of a list", "merge two sorted lists", "compute the factorial of n",
              "remove duplicates from a list", "check whether a string is a palindrome",
              "compute the nth Fibonacci number", "sort a list of dictionaries by a key",
              "read a text file and count its lines", "convert Celsius to Fahrenheit",
              "find the common elements of two lists", "flatten a nested list", "compute the average of numbers"]
ITEMS = ["apples", "pencils", "books", "tickets", "cookies", "marbles", "stickers", "notebooks"]
NAMES = ["Anna", "Ben", "Carlos", "Dina", "Emma", "Farid", "Grace", "Hiro", "Ines", "Jamal"]

TEMPLATES = {
    "writing": ["Write a short story about {topic}.", "Write a poem about {topic}.",
                "Write a blog post about {topic}.", "Describe {topic} in vivid detail."],
    "roleplay": ["Pretend you are a {job}. Describe a typical day at work.",
                 "You are a {job}. Give advice to someone who wants to do your job.",
                 "Act as a {job} and explain the hardest part of your work."],
    "stem": ["Explain how {science} works.", "What is {science}? Explain it to a child.",
             "Give three facts about {science}."],
    "humanities": ["What were the main causes of {history}?", "Why was {history} important?",
                   "Summarize the history of {history} in a few sentences."],
    "coding": ["Write a Python function to {code}.", "How do I {code} in Python? Show an example.",
               "Write a JavaScript function to {code}."],
    "math": ["{name} has {a} {item} and buys {b} more. Then {name} gives away {c}. How many {item} are left?",
             "What is {a} times {b}? Explain step by step.",
             "A train travels {a} miles in {b2} hours. What is its average speed?",
             "{name} saves {b} dollars every week. How many weeks until {name} has {a}0 dollars?"],
    "reasoning": ["If all {item} are blue and some blue things are heavy, are some {item} heavy? Explain.",
                  "{name} is taller than {name2}, and {name2} is taller than {name3}. Who is the shortest?"],
    "extraction": ["List the main ideas in this sentence: {name} moved to {topic} in {year} and started working as a {job}.",
                   "Extract the names and numbers from: {name} bought {a} {item} for {b} dollars on {year}-05-{c}."],
}


def _template_prompt(rng: random.Random) -> str:
    category = rng.choice(sorted(TEMPLATES))
    names = rng.sample(NAMES, 3)
    return rng.choice(TEMPLATES[category]).format(
        topic=rng.choice(TOPICS), job=rng.choice(JOBS), science=rng.choice(SCIENCE), history=rng.choice(HISTORY),
        code=rng.choice(CODE_TASKS), item=rng.choice(ITEMS), name=names[0], name2=names[1], name3=names[2],
        a=rng.randint(12, 99), b=rng.randint(3, 19), b2=rng.randint(2, 9), c=rng.randint(1, 11),
        year=rng.randint(1950, 2020))


def stdlib_docstrings(limit_files: int = 400) -> list[tuple[str, str]]:
    """(kind, text) pairs: module docstrings of at least 200 characters, and first lines of
    function docstrings (a sentence that says what the function does)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for path in sorted(root.glob("*.py"))[:limit_files]:
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        doc = ast.get_docstring(tree)
        if doc and 200 <= len(doc) <= 1500:
            out.append(("module", doc))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
                d = ast.get_docstring(node)
                line = d.strip().splitlines()[0].strip() if d else ""
                if 25 <= len(line) <= 120 and line.endswith("."):
                    out.append(("function", line))
    return out


def _docstring_prompt(rng: random.Random, docs: list[tuple[str, str]]) -> str:
    kind, text = rng.choice(docs)
    if kind == "module":
        return rng.choice(["Summarize the following text in two sentences:\n\n{t}",
                           "Explain the following documentation in simple words:\n\n{t}"]).format(t=text)
    verb = text[0].lower() + text[1:-1]
    return rng.choice(["Write a Python function that does the following: {t}",
                       "Explain what a function that does this is useful for: {t}",
                       "Write a function in Python to {v}."]).format(t=text, v=verb)


def distill_prompts(n: int, seed: int = 0, docstring_share: float = 0.3) -> list[str]:
    """``n`` distinct prompts, reproducible for a seed."""
    rng = random.Random(seed)
    docs = stdlib_docstrings()
    seen, out = set(), []
    while len(out) < n:
        p = _docstring_prompt(rng, docs) if docs and rng.random() < docstring_share else _template_prompt(rng)
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out
