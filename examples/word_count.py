"""Word frequencies of a generated corpus, counted across local worker processes.

    .venv/bin/python examples/word_count.py [--workers N] [--chunks C] [--lines-per-chunk L]

The corpus is deterministic: chunk ``i`` is a few thousand lines of words drawn from a fixed
vocabulary (with a Zipf-like distribution) by a ``random.Random`` seeded with ``i``, so any
process can produce any chunk and the master never ships the text. Each worker:

* generates and counts whole chunks in ``count_chunk``, a plain ``def``: rpc_parallel runs it
  in a thread of the worker, so the worker's event loop (and its heartbeats) stay responsive
  while the CPU is busy;
* streams its progress through ``progress``, an ``@rp.pipe``: the counting thread posts the
  number of lines it has done, the pipe yields them to the master.

The master spawns one worker per core, hands out chunks, merges the counts, prints the most
frequent words, checks the result against a count made in this one process, and prints the
wall times and the speed-up.
"""

import argparse
import asyncio
import contextlib
import itertools
import os
import random
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator

import msgspec

import rpc_parallel as rp

SYLLABLES = ["ka", "lo", "mi", "ne", "su", "ta", "ri", "po", "ve", "du", "sha", "qi", "zo", "fe"]
PROGRESS_EVERY = 1000  # lines between two progress reports of a worker


class Corpus(msgspec.Struct, frozen=True):
    """Everything needed to regenerate the corpus, chunk by chunk, in any process."""

    seed: int = 2024
    chunks: int = 72
    lines_per_chunk: int = 5000
    words_per_line: int = 12
    vocabulary_size: int = 3000

    @property
    def lines(self) -> int:
        return self.chunks * self.lines_per_chunk


class Vocabulary:
    """The corpus's words and their cumulative weights (word of rank r has weight 1/r)."""

    def __init__(self, corpus: Corpus) -> None:
        rng = random.Random(corpus.seed)
        words: set[str] = set()
        while len(words) < corpus.vocabulary_size:
            words.add("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 4))))
        self.words = sorted(words)
        rng.shuffle(self.words)  # rank order: a deterministic shuffle
        self.cumulative = list(itertools.accumulate(1 / rank for rank in range(1, len(words) + 1)))


def chunk_lines(corpus: Corpus, vocabulary: Vocabulary, chunk: int) -> Iterator[str]:
    """The lines of one chunk of the corpus: the same in every process."""
    rng = random.Random(corpus.seed * 1_000_003 + chunk)
    for _ in range(corpus.lines_per_chunk):
        yield " ".join(
            rng.choices(vocabulary.words, cum_weights=vocabulary.cumulative, k=corpus.words_per_line)
        )


def count_chunk(
    corpus: Corpus,
    vocabulary: Vocabulary,
    chunk: int,
    on_progress: Callable[[int], None] | None = None,
) -> Counter[str]:
    """Generate one chunk and count its words (pure CPU work)."""
    counts: Counter[str] = Counter()
    for number, line in enumerate(chunk_lines(corpus, vocabulary, chunk), 1):
        counts.update(line.split())
        if on_progress is not None and number % PROGRESS_EVERY == 0:
            on_progress(PROGRESS_EVERY)
    if on_progress is not None and corpus.lines_per_chunk % PROGRESS_EVERY:
        on_progress(corpus.lines_per_chunk % PROGRESS_EVERY)
    return counts


class WordCounter(rp.Worker[Corpus]):
    """A worker that counts chunks of the corpus; the init argument describes the corpus."""

    async def init_worker_state(self, corpus: Corpus) -> None:
        self.corpus = corpus
        self.vocabulary = Vocabulary(corpus)
        self.loop = asyncio.get_running_loop()
        self.lines_done: asyncio.Queue[int] = asyncio.Queue()

    def _report(self, lines: int) -> None:
        # Called from the counting thread: hand the number over to the event loop.
        self.loop.call_soon_threadsafe(self.lines_done.put_nowait, lines)

    @rp.rpc
    def count_chunk(self, chunk: int) -> dict[str, int]:
        """A plain def: runs in a thread of the worker, off its event loop."""
        return dict(count_chunk(self.corpus, self.vocabulary, chunk, self._report))

    @rp.pipe
    async def progress(self) -> AsyncIterator[int]:
        """Lines counted since the last item, for as long as the caller reads."""
        while True:
            yield await self.lines_done.get()


class ProgressLine:
    """Prints ``counted 37% (177000/480000 lines)``: in place on a terminal, else every 25%."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.tty = sys.stdout.isatty()
        self.next_step = 25

    def add(self, lines: int) -> None:
        self.done += lines
        percent = 100 * self.done // self.total
        if self.tty:
            print(f"\r  counted {percent:3d}% ({self.done}/{self.total} lines)", end="", flush=True)
        elif percent >= self.next_step:
            print(f"  counted {percent:3d}% ({self.done}/{self.total} lines)", flush=True)
            self.next_step = (percent // 25 + 1) * 25

    def finish(self) -> None:
        if self.tty:
            print()


async def follow(reader: rp.PipeReader[int], line: ProgressLine) -> None:
    async for lines in reader:
        line.add(lines)


async def count_in_parallel(
    corpus: Corpus, workers: list[rp.WorkerHandle[WordCounter]]
) -> Counter[str]:
    """Hand out chunks to the workers (one at a time each) and merge their counts."""
    progress = ProgressLine(corpus.lines)
    readers = [await w.run(WordCounter.progress) for w in workers]
    followers = [asyncio.ensure_future(follow(reader, progress)) for reader in readers]
    chunks = iter(range(corpus.chunks))
    total: Counter[str] = Counter()

    async def feed(worker: rp.WorkerHandle[WordCounter]) -> None:
        for chunk in chunks:  # shared iterator: whichever worker is free takes the next chunk
            total.update(await worker.run(WordCounter.count_chunk, chunk))

    try:
        await asyncio.gather(*(feed(w) for w in workers))
    finally:
        for follower in followers:
            follower.cancel()
        for reader in readers:
            await reader.aclose()  # closes the worker's progress generator
    progress.finish()
    return total


def count_in_one_process(corpus: Corpus) -> Counter[str]:
    vocabulary = Vocabulary(corpus)
    total: Counter[str] = Counter()
    for chunk in range(corpus.chunks):
        total.update(count_chunk(corpus, vocabulary, chunk))
    return total


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=default_workers(),
                        help="worker processes (default: one per core)")
    parser.add_argument("--chunks", type=int, default=Corpus().chunks)
    parser.add_argument("--lines-per-chunk", type=int, default=Corpus().lines_per_chunk)
    parser.add_argument("--top", type=int, default=10, help="how many words to print")
    return parser.parse_args()


async def main() -> None:
    options = arguments()
    corpus = Corpus(chunks=options.chunks, lines_per_chunk=options.lines_per_chunk)
    words = corpus.lines * corpus.words_per_line
    print(f"corpus: {corpus.lines} lines, {words} words, {corpus.chunks} chunks, "
          f"vocabulary of {corpus.vocabulary_size} words (seed {corpus.seed})")

    started = time.perf_counter()
    async with contextlib.AsyncExitStack() as stack:
        workers = await asyncio.gather(*(
            WordCounter.spawn(corpus, name=f"counter-{i}",
                              on_failure=lambda failure: print(failure, file=sys.stderr))
            for i in range(options.workers)
        ))
        for worker in workers:
            stack.push_async_exit(worker)
        spawned = time.perf_counter()
        print(f"spawned {len(workers)} workers in {spawned - started:.2f} s "
              f"(pids {', '.join(str(w.pid) for w in workers)})")
        parallel = await count_in_parallel(corpus, workers)
        counted = time.perf_counter()
    parallel_time = counted - spawned
    print(f"{len(workers)} workers counted in {parallel_time:.2f} s "
          f"({words / parallel_time / 1e6:.2f} M words/s; {counted - started:.2f} s with spawning)")

    print(f"top {options.top} words:")
    for rank, (word, count) in enumerate(parallel.most_common(options.top), 1):
        print(f"  {rank:2d}. {word:<10} {count:9d}  {100 * count / words:5.2f}%")

    print("counting again in this one process ...", flush=True)
    one_started = time.perf_counter()
    single = count_in_one_process(corpus)
    one_time = time.perf_counter() - one_started
    print(f"one process counted in {one_time:.2f} s ({words / one_time / 1e6:.2f} M words/s)")
    if parallel != single:
        differing = [w for w in single.keys() | parallel.keys() if single[w] != parallel[w]]
        print(f"MISMATCH: {len(differing)} words counted differently, e.g. {differing[:5]}")
        raise SystemExit(1)
    print(f"the {len(workers)}-worker count equals the single-process count: "
          f"{len(single)} distinct words, {sum(single.values())} in all")
    print(f"speed-up over one process: {one_time / parallel_time:.2f}x with {len(workers)} "
          f"workers ({one_time / (counted - started):.2f}x counting the spawn)")
    load = os.getloadavg()[0]
    if load > default_workers():
        print(f"(note: the load average is {load:.1f} on {default_workers()} cores: other "
              "processes compete for the CPUs, so these timings understate the speed-up)")


if __name__ == "__main__":
    rp.start_app(main)
