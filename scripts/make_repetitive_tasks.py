"""Writes specplug/data/repetitive_tasks.jsonl: copy-heavy requests (code edits, reformatting,
extraction with quoting) written for this repository. Outputs of such requests repeat long
spans of their prompt, which is where model-free drafters (suffix, ngram) are meant to shine."""
import json

CODE = [
'''def moving_average(values, window):
    if window <= 0:
        raise ValueError("window must be positive")
    out = []
    total = 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        if i >= window - 1:
            out.append(total / window)
    return out''',
'''class Inventory:
    def __init__(self):
        self.items = {}

    def add(self, name, count):
        self.items[name] = self.items.get(name, 0) + count

    def remove(self, name, count):
        if self.items.get(name, 0) < count:
            raise KeyError(name)
        self.items[name] -= count

    def total(self):
        return sum(self.items.values())''',
'''def parse_config(lines):
    config = {}
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, value = line.split("=", 1)
        config[key.strip()] = value.strip()
    return config''',
'''function countWords(text) {
  const counts = {};
  for (const word of text.toLowerCase().split(/\\s+/)) {
    if (word.length === 0) continue;
    counts[word] = (counts[word] || 0) + 1;
  }
  return counts;
}''',
'''def binary_search(items, target):
    low, high = 0, len(items) - 1
    while low <= high:
        mid = (low + high) // 2
        if items[mid] == target:
            return mid
        if items[mid] < target:
            low = mid + 1
        else:
            high = mid - 1
    return -1''',
'''SELECT customers.name, orders.id, orders.total
FROM customers
JOIN orders ON orders.customer_id = customers.id
WHERE orders.total > 100
ORDER BY orders.total DESC;''',
]
CODE_TASKS = [
    "Rename every variable to a longer, more descriptive name and return the full code.",
    "Add a short comment above every line and return the full code.",
    "Add type hints where possible and return the complete code unchanged otherwise.",
    "Return the same code with four-space indentation replaced by two spaces.",
]
TEXT = [
    "The library opens at nine in the morning and closes at six in the evening. Members may borrow up to five books at a time. Books are due back after three weeks. Late returns cost ten cents per day. The reading room on the second floor is quiet at all times.",
    "To make the bread, mix the flour, water, salt and yeast in a large bowl. Knead the dough for ten minutes until it is smooth. Let it rise for one hour in a warm place. Shape it into a loaf, let it rise again for thirty minutes, and bake it at two hundred degrees for forty minutes.",
    "Our team meets every Monday at ten. On Tuesdays we review pull requests. On Wednesdays we plan the next release. On Thursdays we test the release candidate. On Fridays we ship, write release notes and answer questions from users.",
    "The train leaves the central station at 7:15, stops at the airport at 7:40, at the university at 8:05 and at the harbour at 8:30. The return train leaves the harbour at 17:10, stops at the university at 17:35, at the airport at 18:00 and arrives at the central station at 18:25.",
]
TEXT_TASKS = [
    "Repeat the text above exactly, but put each sentence on its own numbered line.",
    "Rewrite the text above word for word, changing only every number into digits or words (the other form).",
    "Copy the text above and put every noun in capital letters.",
]
LIST_TASKS = [
    ("apple, banana, cherry, date, elderberry, fig, grape, honeydew, kiwi, lemon, mango, nectarine",
     "Write each item of this list on its own line as '- item: fruit'."),
    ("Monday, Tuesday, Wednesday, Thursday, Friday, Saturday, Sunday",
     "For each day in this list write one line 'Day N: <day> - open from 9 to 17'."),
    ("red, orange, yellow, green, blue, indigo, violet",
     "Write a markdown table with one row per colour and the columns Colour, Warm or cool, Example object."),
]

rows, qid = [], 1000
for code in CODE:
    for task in CODE_TASKS[:3] if "SELECT" not in code else CODE_TASKS[3:]:
        rows.append({"question_id": qid, "category": "code_edit", "turns": [f"{task}\n\n```\n{code}\n```"]}); qid += 1
for text in TEXT:
    for task in TEXT_TASKS:
        rows.append({"question_id": qid, "category": "rewrite", "turns": [f"{text}\n\n{task}"]}); qid += 1
for items, task in LIST_TASKS:
    rows.append({"question_id": qid, "category": "list_format", "turns": [f"{items}\n\n{task}"]}); qid += 1
with open("specplug/data/repetitive_tasks.jsonl", "w") as f:
    for r in rows:
        f.write(json.dumps(r) + "\n")
print(len(rows), {c: sum(r["category"] == c for r in rows) for c in {r["category"] for r in rows}})
