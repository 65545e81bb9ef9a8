"""Small utilities for reading records, counting words and scheduling jobs.

This file is test data for Kiln's quantization checks: Python source the code model reads
to compare a quantized checkpoint with its bf16 source.
"""

import collections
import heapq
import json
import os


class Record:
    def __init__(self, name, value, tags=None):
        self.name = name
        self.value = value
        self.tags = list(tags or [])

    def __repr__(self):
        return f"Record({self.name!r}, {self.value!r}, tags={self.tags!r})"

    def to_dict(self):
        return {"name": self.name, "value": self.value, "tags": self.tags}

    @classmethod
    def from_dict(cls, data):
        return cls(data["name"], data.get("value", 0), data.get("tags"))


def read_records(path):
    records = []
    with open(path, "r", encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            records.append(Record.from_dict(json.loads(line)))
    return records


def write_records(path, records):
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record.to_dict()) + "\n")


def count_words(text):
    counts = collections.Counter()
    for word in text.split():
        word = word.strip(".,;:!?\"'()[]{}").lower()
        if word:
            counts[word] += 1
    return counts


def top_words(text, n=10):
    return [word for word, _ in count_words(text).most_common(n)]


def merge_sorted(a, b):
    result = []
    i = j = 0
    while i < len(a) and j < len(b):
        if a[i] <= b[j]:
            result.append(a[i])
            i += 1
        else:
            result.append(b[j])
            j += 1
    result.extend(a[i:])
    result.extend(b[j:])
    return result


def merge_sort(items):
    if len(items) <= 1:
        return list(items)
    middle = len(items) // 2
    return merge_sorted(merge_sort(items[:middle]), merge_sort(items[middle:]))


def binary_search(items, target):
    low, high = 0, len(items) - 1
    while low <= high:
        mid = (low + high) // 2
        if items[mid] == target:
            return mid
        if items[mid] < target:
            low = mid + 1
        else:
            high = mid - 1
    return -1


class Scheduler:
    def __init__(self):
        self.queue = []
        self.counter = 0

    def add(self, priority, job):
        heapq.heappush(self.queue, (priority, self.counter, job))
        self.counter += 1

    def pop(self):
        if not self.queue:
            raise IndexError("pop from an empty scheduler")
        priority, _, job = heapq.heappop(self.queue)
        return priority, job

    def __len__(self):
        return len(self.queue)

    def run(self, limit=None):
        done = []
        while self.queue and (limit is None or len(done) < limit):
            _, job = self.pop()
            done.append(job())
        return done


def walk_files(root, suffix=".py"):
    for directory, _, names in os.walk(root):
        for name in sorted(names):
            if name.endswith(suffix):
                yield os.path.join(directory, name)


def fibonacci(n):
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


def is_prime(n):
    if n < 2:
        return False
    for k in range(2, int(n ** 0.5) + 1):
        if n % k == 0:
            return False
    return True


def primes_below(limit):
    return [n for n in range(limit) if is_prime(n)]


if __name__ == "__main__":
    print(top_words("the cat and the dog and the bird", 3))
    print(merge_sort([5, 3, 8, 1, 9, 2]))
    print(binary_search([1, 3, 5, 7, 9], 7))
    print(fibonacci(20), primes_below(30))
