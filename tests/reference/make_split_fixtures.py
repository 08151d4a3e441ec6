"""Build tests/fixtures/splits/numpy_shuffle.json, the reference for tests/data.rs.

NOT run by CI or by `cargo test`: the output is committed. Regenerate from the repository root:

    /work/refvenv/bin/python tests/reference/make_split_fixtures.py

(numpy 2.4.6; only numpy's *legacy* global/RandomState generator is used, whose streams numpy
guarantees to stay fixed.) Deterministic: two runs write byte-identical files.

What the file holds:

* ``shuffle``: for each seed in SEEDS and size in SIZES, the permutation that the FedCLIP
  reference builds (``np.random.seed(seed); idx = np.arange(n); np.random.shuffle(idx)``,
  PersonalizedFL fedclip/utils/prepare_data_dg_clip.py lines 83-85). Sizes up to 200 are stored
  whole (``perm``); larger ones as ``head`` (first 50), ``tail`` (last 50) and ``fnv1a64``: FNV-1a
  64 over the permutation written as little-endian uint32, as a decimal string.
* ``raw``: per seed, the first 8 words of the MT19937 key after seeding, the first 12 raw 32-bit
  outputs (``randint(0, 2**32, dtype=uint32)`` returns them unchanged) and the first 6
  ``random_sample()`` doubles as IEEE-754 bit patterns (decimal strings).
* ``init_by_array``: the same for ``RandomState(init_key)`` with a list ``init_key`` (numpy's
  array seeding, MT19937 ``init_by_array``), which fedclip uses to derive independent streams.
* ``dirichlet``: ``RandomState(key).dirichlet([alpha] * k)`` draws (legacy gamma sampler), bit
  patterns.
* ``pacs_splits``: the reference 60/20/20 split (``datapercent`` 0.6) of the four full PACS
  domain sizes and of pacs-mini's 140 for seed 0: ``train``, ``val``, ``test`` index lists.
* ``dirichlet_partition`` / ``sample_clients``: fedclip's own label-skew partition and client
  sampling (not in the reference), written here in numpy exactly as src/data/split.rs
  documents them, so that the Rust code is checked against an independent implementation.
"""

import json
import struct
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent.parent / "fixtures" / "splits" / "numpy_shuffle.json"

SEEDS = [0, 1, 42, 2**31 - 1, 2**32 - 1]
# 1..7: tiny; 140: a pacs-mini domain; 2048/2344/1670/3929: the PACS domains; 100003 > 65536
# exercises a 17-bit rejection mask; 65537 sits just above a power of two.
SIZES = [1, 2, 7, 140, 2048, 2344, 1670, 3929, 65537, 100003]
WHOLE_UP_TO = 200

TAG_PARTITION = 1
TAG_SAMPLE = 2


def fnv1a64(values):
    h = 0xCBF29CE484222325
    for b in np.asarray(values, dtype="<u4").tobytes():
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return str(h)


def bits(x):
    return str(struct.unpack("<Q", struct.pack("<d", float(x)))[0])


def reference_shuffle(seed, n):
    np.random.seed(seed)
    idx = np.arange(n)
    np.random.shuffle(idx)
    return idx


def reference_split(seed, n, datapercent=0.6):
    # prepare_data_dg_clip.py lines 82-89: the seed is re-set for every domain.
    idx = reference_shuffle(seed, n)
    l1, l2, l3 = int(n * datapercent), int(n * 0.2), int(n * 0.2)
    return {
        "n": n,
        "seed": seed,
        "train": idx[:l1].tolist(),
        "val": idx[l1 : l1 + l2].tolist(),
        "test": idx[l1 + l2 : l1 + l2 + l3].tolist(),
    }


def raw_draws(rs):
    key = rs.get_state()[1][:8].tolist()
    u32 = rs.randint(0, 2**32, size=12, dtype=np.uint32).tolist()
    doubles = [bits(rs.random_sample()) for _ in range(6)]
    return {"key": key, "u32": u32, "random_sample_bits": doubles}


def dirichlet_partition(labels, num_classes, n_clients, alpha, seed, domain, min_files):
    """fedclip's label-skew partition of one domain (src/data/split.rs)."""
    n = len(labels)
    min_files = min(min_files, n // n_clients)
    for attempt in range(1000):
        rs = np.random.RandomState([seed, TAG_PARTITION, domain, attempt])
        parts = [[] for _ in range(n_clients)]
        ok = True
        for c in range(num_classes):
            members = [i for i in range(n) if labels[i] == c]
            m = len(members)
            p = rs.dirichlet([alpha] * n_clients)
            perm = rs.permutation(m)
            if not np.all(np.isfinite(p)):
                ok = False
                break
            cum = np.cumsum(p)
            start = 0
            for k in range(n_clients):
                end = m if k == n_clients - 1 else min(max(int(cum[k] * m), start), m)
                parts[k].extend(members[j] for j in perm[start:end])
                start = end
        if ok and min(len(p) for p in parts) >= min_files:
            return attempt, [sorted(p) for p in parts]
    raise RuntimeError("no partition")


def sample_clients(n, fraction, seed, rnd):
    if fraction >= 1.0:
        return list(range(n))
    m = max(1, min(n, int(np.floor(fraction * n + 1e-9))))
    perm = np.random.RandomState([seed, TAG_SAMPLE, rnd]).permutation(n)
    return sorted(perm[:m].tolist())


def main():
    shuffle = []
    for seed in SEEDS:
        for n in SIZES:
            perm = reference_shuffle(seed, n)
            entry = {"seed": seed, "n": n}
            if n <= WHOLE_UP_TO:
                entry["perm"] = perm.tolist()
            else:
                entry["head"] = perm[:50].tolist()
                entry["tail"] = perm[-50:].tolist()
            entry["fnv1a64"] = fnv1a64(perm)
            shuffle.append(entry)

    raw = []
    for seed in SEEDS:
        raw.append({"seed": seed, **raw_draws(np.random.RandomState(seed))})

    arrays = [[0], [1, 2, 3], [0, 1, 0, 0], [2**32 - 1, 7], list(range(700))]
    init_by_array = []
    for key in arrays:
        init_by_array.append({"init_key": key, **raw_draws(np.random.RandomState(key))})

    dirichlet = []
    for key, alpha, k, draws in [
        ([0], 0.5, 4, 5),
        ([42, 1, 0, 0], 0.1, 3, 5),
        ([7], 1.0, 5, 3),
        ([7], 2.5, 6, 3),
        ([123, 1, 2, 3], 100.0, 3, 2),
        ([5], 0.01, 4, 4),
    ]:
        rs = np.random.RandomState(key)
        rows = [[bits(v) for v in rs.dirichlet([alpha] * k)] for _ in range(draws)]
        dirichlet.append({"key": key, "alpha": alpha, "k": k, "rows_bits": rows})

    pacs_splits = [reference_split(0, n) for n in [2048, 2344, 1670, 3929, 140]]

    # Labels laid out like an ImageFolder domain: class blocks in order.
    mini = [c for c in range(7) for _ in range(20)]
    uneven = [c for c, size in enumerate([3, 50, 17, 0 + 1, 29, 8, 40]) for _ in range(size)]
    partitions = []
    for labels, nc, clients, alpha, seed, domain, min_files in [
        (mini, 7, 3, 0.5, 0, 1, 10),
        (mini, 7, 5, 0.1, 42, 0, 10),
        (mini, 7, 4, 100.0, 2**32 - 1, 3, 10),
        (uneven, 7, 6, 0.3, 1, 2, 5),
        (mini, 7, 6, 0.05, 3, 0, 10),  # needs 12 redraws to give every client 10 files
    ]:
        attempt, parts = dirichlet_partition(labels, nc, clients, alpha, seed, domain, min_files)
        partitions.append(
            {
                "labels": labels,
                "num_classes": nc,
                "clients": clients,
                "alpha": alpha,
                "seed": seed,
                "domain": domain,
                "min_files": min_files,
                "attempt": attempt,
                "parts": parts,
            }
        )

    sampling = []
    for n, fraction, seed, rounds in [(3, 0.5, 0, 6), (12, 0.25, 42, 5), (100, 0.29, 1, 3), (4, 1.0, 0, 2)]:
        for rnd in range(rounds):
            sampling.append(
                {"n": n, "fraction": fraction, "seed": seed, "round": rnd, "chosen": sample_clients(n, fraction, seed, rnd)}
            )

    doc = {
        "numpy": np.__version__,
        "shuffle": shuffle,
        "raw": raw,
        "init_by_array": init_by_array,
        "dirichlet": dirichlet,
        "pacs_splits": pacs_splits,
        "dirichlet_partition": partitions,
        "sample_clients": sampling,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(doc, separators=(",", ":")) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
