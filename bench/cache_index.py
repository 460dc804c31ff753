"""The semantic cache's index at one tenant's 100,000 entries: lookup time (p50, p99) and memory.

    python3 bench/cache_index.py [--entries 100000] [--dtype f16] [--lookups 2000]

Vectors are the local embedding model's (256 dimensions) for generated questions, so the
graph has the shape real prompts give it; figures go in docs/cache.md.
"""

import argparse
import os
import random
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from usearch.index import Index  # noqa: E402


def rss_mib() -> float:
    with open(f"/proc/{os.getpid()}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def questions(n: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    words = ("capital price weather history recipe python list sort error database invoice refund password "
             "flight hotel contract tax salary budget server deploy cache latency river mountain planet").split()
    starts = ("what is the", "how do i fix the", "explain the", "why is my", "where can i find the", "compare the")
    return [f"{rng.choice(starts)} {' '.join(rng.sample(words, 4))} {i}" for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--dtype", default="f16", choices=["f32", "f16", "i8"])
    parser.add_argument("--lookups", type=int, default=2000)
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_project.settings")
    import django

    django.setup()
    from routing.cache import embedding  # deferred: needs the app registry

    texts = questions(args.entries)
    started = time.perf_counter()
    vectors = np.vstack([embedding.local_model().embed(texts[i:i + 1000], norm=True)
                         for i in range(0, len(texts), 1000)]).astype(np.float32)
    embedded = time.perf_counter() - started
    before = rss_mib()
    index = Index(ndim=vectors.shape[1], metric="cos", dtype=args.dtype)
    started = time.perf_counter()
    index.add(np.arange(len(vectors)), vectors)
    built = time.perf_counter() - started
    after = rss_mib()
    probes = vectors[np.random.default_rng(1).integers(0, len(vectors), args.lookups)]
    times = []
    for probe in probes:
        t = time.perf_counter()
        index.search(probe, 1)
        times.append(time.perf_counter() - t)
    one = embedding.local_model()
    embed_times = []
    for text in texts[: args.lookups]:
        t = time.perf_counter()
        one.embed([text], norm=True)
        embed_times.append(time.perf_counter() - t)
    times.sort()
    embed_times.sort()
    print(f"entries {len(vectors)}, {vectors.shape[1]} dimensions, dtype {args.dtype}")
    print(f"embedding: {embedded:.1f} s for all; one text p50 {embed_times[len(embed_times) // 2] * 1e3:.3f} ms, "
          f"p99 {embed_times[int(len(embed_times) * 0.99)] * 1e3:.3f} ms")
    print(f"index build {built:.1f} s; memory {after - before:.1f} MiB (RSS growth), "
          f"{index.memory_usage / 2**20:.1f} MiB (usearch's own count)")
    print(f"lookup (top 1) p50 {times[len(times) // 2] * 1e3:.3f} ms, p99 {times[int(len(times) * 0.99)] * 1e3:.3f} ms, "
          f"max {times[-1] * 1e3:.3f} ms")


if __name__ == "__main__":
    main()
