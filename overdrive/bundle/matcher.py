"""A linear-time bsdiff matcher: bsdiff's control/diff/extra streams without a suffix sort.

bsdiff4's ``diff`` suffix-sorts the whole source window (``O(m log m)`` with large constants, and
quadratic on long runs of one byte) and then walks the new data looking up, at every position,
the longest exact match in the old data. What makes its patches small, though, is not those exact
matches but what it builds around them: it follows one *diagonal* (``old_pos - new_pos``) as long
as at least half the bytes agree along it, and stores the bytewise difference ``new - old`` there.
For shifted code that difference is almost all zeros plus a few small values where relocated
addresses changed, which zstd compresses extremely well. This module keeps that construction and
replaces the search by anchors that are cheap to find:

1. *Anchors.* Every ``K``-byte substring ("k-gram") of both inputs is hashed (vectorised with
   numpy) and a k-gram is kept when its hash falls in a fixed 1/``2**SAMPLE_BITS`` of the hash
   space. The sampling depends only on content, so a k-gram that occurs in both inputs is sampled
   in both: an exact match of a few dozen bytes yields several anchors wherever it sits. K-grams
   that recur more than ``MAX_REPEAT`` times in the old data (zero runs, padding, tables) are
   ignored; the extension step below still covers such regions along the current diagonal.
2. *Voting.* A new position may have several candidate diagonals (one per occurrence of its k-gram
   in the old data). Each candidate scores the number of anchors on the same diagonal within
   ``VOTE_SPAN`` bytes; the best-supported one wins. Consecutive anchors on one diagonal form a
   *run*.
3. *bsdiff's loop over runs.* As bsdiff does for each match it finds, a run is accepted only if
   some exact match along its diagonal is longer, by more than ``MIN_GAIN`` bytes, than what the
   current diagonal matches over the same bytes (most runs fail this and are judged in bulk,
   vectorised, against the likeliest current diagonals). For an accepted run the current
   diagonal is extended forwards and the new one backwards, each as far as it keeps a match
   density above one half (bsdiff's ``2*matches - length`` rule, overlaps split where they match
   best), and the bytes between them become an extra (literal) region. Every control tuple but
   the first spans at least ``MIN_TUPLE`` bytes (shorter stretches become extra bytes of the
   previous tuple), so the control stream stays within the format's one-tuple-per-64-bytes limit.

Time is linear in the input sizes plus ``O(a log a)`` sorting for ``a`` anchors, about a quarter
of the inputs' size; a long run of one byte costs nothing special, and a work budget bounds the
extension scans on adversarial inputs (the rest of the chunk then becomes one tuple). Memory is
about ten bytes per input byte at the default sampling (arrays of packed 64-bit keys; hashing and
comparisons run in slices). The output is exactly what ``bsdiff4.core.patch`` consumes, so the
decoder does not know which matcher produced a payload. Measured on 4 MiB chunks of executables
against their 8 MiB windows: zstd-19 streams 2-9% smaller than ``bsdiff4.core.diff``'s in total,
at about a quarter of its CPU time.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from overdrive.bundle.format import CONTROL_TUPLE_SIZE

__all__ = ["MAX_NEW", "MAX_OLD", "K", "diff"]

K = 12  # anchor length (bytes); 9 <= K <= 16
SAMPLE_BITS = 2  # one k-gram in 2**SAMPLE_BITS is an anchor candidate
MAX_REPEAT = 8  # k-grams occurring more often than this in the old data are not anchors
VOTE_SPAN = 2048  # anchors on one diagonal within this many bytes support each other
MAX_GAP = 512  # anchors further apart than this start a new run even on the same diagonal
MIN_GAIN = 8  # a new diagonal must match this many more bytes than the current one (bsdiff: 8)
MIN_TUPLE = 64  # bytes per control tuple, at least (the format allows one tuple per 64 bytes)
SLICE = 1 << 20  # positions hashed per numpy step (bounds temporaries to a few MiB)
_LOOKUP_SLICE = 1 << 18  # anchors looked up per step
_BATCH = 1 << 18  # bytes compared per step when judging runs in bulk

_M1 = np.uint64(0x9E3779B97F4A7C15)
_M2 = np.uint64(0xC2B2AE3D27D4EB4F)
_LIMIT = np.uint64(1 << (64 - SAMPLE_BITS))
MAX_OLD = 1 << 27  # old (window) bytes, at most: the format's largest window, 128 MiB
MAX_NEW = 1 << 26  # new (chunk) bytes, at most: the format's largest chunk, 64 MiB
# Packed int64 sort keys: (diagonal, new position) and (new position, score, diagonal). A
# diagonal lies in (-MAX_NEW, MAX_OLD), so diagonal + _D_OFFSET fits _D_BITS bits.
_P_BITS = 27
_D_BITS = 28
_D_OFFSET = MAX_OLD
_S_BITS = 9
_WORK_FACTOR = 8
_MAX_SCORE = (1 << _S_BITS) - 1
_U8 = np.uint8
_I64 = np.int64

_Bytes = npt.NDArray[np.uint8]
_Ints = npt.NDArray[np.int64]


def _keys(buf: bytes, pos_bits: int) -> npt.NDArray[np.uint64]:
    """Sorted ``hash | position`` keys of the sampled k-grams of ``buf``.

    The low ``pos_bits`` bits of a key are the k-gram's position, the rest its hash (whose top
    ``SAMPLE_BITS`` are zero: that is the sampling rule), so one sort groups equal k-grams.
    """
    n = len(buf) - K + 1  # k-gram start positions
    high = ~np.uint64((1 << pos_bits) - 1)
    out = np.empty((max(n, 0) >> SAMPLE_BITS) + (max(n, 0) >> 6) + 1024, np.uint64)
    at = 0
    for base in range(0, max(n, 0), SLICE):
        stop = min(n, base + SLICE)
        for a in range(8):  # positions base+a, base+a+8, ...: contiguous uint64 views
            first = base + a
            count = (stop - first + 7) // 8
            if count <= 0:
                continue
            h = np.frombuffer(buf, "<u8", count=count, offset=first) * _M1
            h ^= np.frombuffer(buf, "<u8", count=count, offset=first + K - 8)
            h *= _M2
            h ^= h >> np.uint64(31)
            h *= _M1
            keep = np.flatnonzero(h < _LIMIT)
            if at + len(keep) > len(out):  # more samples than expected (repetitive data)
                out = np.resize(out, 2 * len(out) + len(keep))
            key = out[at : at + len(keep)]
            np.bitwise_and(h[keep], high, out=key)
            key |= keep.astype(np.uint64) * np.uint64(8) + np.uint64(first)
            at += len(keep)
    out = out[:at]
    out.sort()
    return out


def _runs(old: bytes, new: bytes) -> tuple[_Ints, _Ints, _Ints]:
    """Runs of anchors as (start, end, delta) arrays, sorted by start; delta = old - new pos."""
    empty = np.empty(0, _I64)
    if len(old) > MAX_OLD or len(new) > MAX_NEW:
        raise ValueError(f"matcher inputs are limited to {MAX_OLD} / {MAX_NEW} bytes")
    pos_bits = max(len(old), len(new), 1).bit_length()
    low = np.uint64((1 << pos_bits) - 1)
    okeys = _keys(old, pos_bits)
    nkeys = _keys(new, pos_bits)
    if not len(okeys) or not len(nkeys):
        return empty, empty, empty
    # Look the new k-grams up in slices (bounded temporaries), keeping those found at most
    # MAX_REPEAT times: repeated k-grams (padding, tables) say little about where a region came
    # from and multiply the work.
    found: list[tuple[_Ints, _Ints, _Ints]] = []
    for a in range(0, len(nkeys), _LOOKUP_SLICE):
        query = nkeys[a : a + _LOOKUP_SLICE] & ~low
        lo = np.searchsorted(okeys, query, "left")
        count = np.searchsorted(okeys, query | low, "right") - lo
        ok = (count > 0) & (count <= MAX_REPEAT)
        position = query[ok] ^ nkeys[a : a + _LOOKUP_SLICE][ok]
        found.append(
            (lo[ok].astype(np.int32), count[ok].astype(np.uint8), position.astype(np.int32))
        )
    anchors = len(nkeys)
    del nkeys, query, lo, count, ok, position
    lo = np.concatenate([f[0] for f in found])
    count = np.concatenate([f[1] for f in found])
    p = np.concatenate([f[2] for f in found])
    del found
    # At most 2 candidates per anchor on average: lower the repeat limit if needed.
    per = np.bincount(count, minlength=MAX_REPEAT + 1).astype(_I64)
    repeat = int(np.searchsorted(np.cumsum(per * np.arange(MAX_REPEAT + 1)), 2 * anchors, "right"))
    if repeat <= MAX_REPEAT:
        ok = count <= max(1, repeat - 1)
        lo, count, p = lo[ok], count[ok], p[ok]
        del ok
    if not len(p):
        return empty, empty, empty
    # Expand each new anchor into its candidate diagonals (in place where possible: these arrays
    # are the matcher's largest).
    total = int(count.sum(dtype=_I64))
    if total == len(p):
        found_at = okeys[lo]
        cp = p.astype(_I64)
    else:  # idx: lo[g], lo[g]+1, ..., lo[g]+count[g]-1 for each anchor g, by a running sum
        idx = np.ones(total, _I64)
        ends = lo.astype(_I64) + count - 1
        idx[np.cumsum(count, dtype=_I64) - count] = lo - np.r_[0, ends[:-1]]
        del ends
        np.cumsum(idx, out=idx)
        found_at = okeys[idx]
        del idx
        cp = np.repeat(p, count).astype(_I64)
    del okeys, lo, p, count
    found_at &= low
    cd: _Ints = found_at.view(_I64)  # old positions, < 2**63
    del found_at
    cd -= cp
    # Vote: anchors on the same diagonal within VOTE_SPAN bytes support each other. Then keep,
    # for each new position, its best-supported candidate, in position order.
    key = cd
    key += _D_OFFSET
    key <<= _P_BITS
    key |= cp
    del cd, cp
    key.sort()
    bound = key + VOTE_SPAN
    score = np.searchsorted(key, bound, "right")
    bound -= 2 * VOTE_SPAN
    score -= np.searchsorted(key, bound, "left")
    del bound
    np.minimum(score, _MAX_SCORE, out=score)
    np.subtract(_MAX_SCORE, score, out=score)
    score <<= _D_BITS
    pick = key & ((1 << _P_BITS) - 1)  # position
    pick <<= _D_BITS + _S_BITS
    pick |= score
    del score
    key >>= _P_BITS  # diagonal + _D_OFFSET
    pick |= key
    del key
    pick.sort()
    cp = pick >> (_D_BITS + _S_BITS)
    head = np.flatnonzero(np.r_[True, cp[1:] != cp[:-1]])
    pick, cp = pick[head], cp[head]
    del head
    pick &= (1 << _D_BITS) - 1
    pick -= _D_OFFSET
    diag = pick
    # Runs: consecutive anchors on one diagonal, not too far apart.
    brk = np.flatnonzero((diag[1:] != diag[:-1]) | (cp[1:] - cp[:-1] > MAX_GAP)) + 1
    starts = np.r_[0, brk]
    ends = np.r_[brk - 1, len(cp) - 1]
    return cp[starts], cp[ends] + K, diag[starts]


def _equal_along(nv: _Bytes, ob: _Bytes, pos: _Ints, delta: _Ints) -> npt.NDArray[np.bool_]:
    """``nv == old[pos + delta]`` elementwise, False where ``pos + delta`` is outside ``old``."""
    o = pos + delta
    inside: npt.NDArray[np.bool_] = (o >= 0) & (o < len(ob))
    np.clip(o, 0, max(0, len(ob) - 1), out=o)
    inside &= nv == ob[o]
    return inside


def _better(
    nb: _Bytes, ob: _Bytes, starts: _Ints, ends: _Ints, deltas: _Ints, current: _Ints
) -> npt.NDArray[np.bool_]:
    """For each run, bsdiff's switch rule against diagonal ``current[i]``, vectorised.

    True if some exact match along the run's diagonal inside ``[start, end)`` is longer, by more
    than ``MIN_GAIN`` bytes, than what ``current`` matches over the same stretch.
    """
    out = np.zeros(len(starts), np.bool_)
    lengths = ends - starts
    cum = np.cumsum(lengths)
    cuts = np.searchsorted(cum, np.arange(_BATCH, int(cum[-1]) if len(cum) else 0, _BATCH))
    for i, j in zip(np.r_[0, cuts].tolist(), np.r_[cuts, len(starts)].tolist(), strict=True):
        if j <= i:
            continue
        lens = lengths[i:j]
        off = np.cumsum(lens) - lens  # where each run starts in this batch
        rid = np.repeat(np.arange(j - i), lens)
        pos = np.arange(int(lens.sum()), dtype=_I64) - off[rid] + starts[i:j][rid]
        nv = nb[pos]
        hit = _equal_along(nv, ob, pos, deltas[i:j][rid])
        have = np.r_[0, np.cumsum(_equal_along(nv, ob, pos, current[i:j][rid]), dtype=_I64)]
        before = np.r_[False, hit[:-1]]
        before[off] = False
        after = np.r_[hit[1:], False]
        after[off + lens - 1] = False
        first = np.flatnonzero(hit & ~before)
        last = np.flatnonzero(hit & ~after) + 1
        good = (last - first) - (have[last] - have[first]) > MIN_GAIN
        out[i + rid[first[good]]] = True
    return out


def _shift(values: _Ints) -> _Ints:
    """``values`` moved one place later, 0 first (the diagonal before the first run is 0)."""
    out = np.zeros_like(values)
    out[1:] = values[:-1]
    return out


def _best_prefix(match: npt.NDArray[np.bool_]) -> int:
    """bsdiff's extension rule: the prefix length maximising ``2*matches - length`` (0 if <= 0)."""
    if not len(match):
        return 0
    score = 2 * np.cumsum(match, dtype=_I64) - np.arange(1, len(match) + 1)
    i = int(np.argmax(score))
    return i + 1 if score[i] > 0 else 0


def diff(old: bytes, new: bytes) -> tuple[bytes, bytes, bytes]:
    """bsdiff ``new`` against ``old``: (control, diff, extra), as ``bsdiff4.core.diff`` returns.

    The control stream is packed 24-byte tuples in bsdiff's sign-magnitude encoding; feeding the
    three streams to ``bsdiff4.core.patch(old, len(new), control, diff, extra)`` gives ``new``.
    """
    n, m = len(new), len(old)
    nb: _Bytes = np.frombuffer(new, _U8)
    ob: _Bytes = np.frombuffer(old, _U8)
    starts, ends, deltas = _runs(old, new)
    # Most runs are short, spurious anchors inside a region the current diagonal already covers
    # well. Judge them all in bulk against the two likeliest current diagonals: the previous
    # run's, and that of the last run that passed the first test. The loop below reuses a
    # verdict when its diagonal is the actual current one, and only computes the others.
    guess1 = _shift(deltas)
    verdict1 = _better(nb, ob, starts, ends, deltas, guess1)
    last_good = np.maximum.accumulate(np.where(verdict1, np.arange(len(deltas)), -1))
    guess2 = np.where(last_good >= 0, deltas[np.maximum(last_good, 0)], 0)
    guess2 = _shift(guess2)
    verdict2 = _better(nb, ob, starts, ends, deltas, guess2)

    def along(a: int, b: int, d: int) -> npt.NDArray[np.bool_]:
        """new[a:b] == old along diagonal d, bytewise (False outside the old data)."""
        out = np.zeros(b - a, np.bool_)
        lo, hi = max(a, -d), min(b, m - d)
        if hi > lo:
            out[lo - a : hi - a] = nb[lo:hi] == ob[lo + d : hi + d]
        return out

    def better(a: int, b: int, d: int, cur: int) -> bool:
        """bsdiff's switch rule: some exact match along d in new[a:b] is longer than the bytes
        the current diagonal matches over the same stretch by more than MIN_GAIN."""
        eq = along(a, b, d)
        edges = np.flatnonzero(np.diff(np.r_[False, eq, False]))
        first, last = edges[0::2], edges[1::2]
        if not len(first):
            return False
        have = np.r_[0, np.cumsum(along(a, b, cur), dtype=_I64)]
        return bool(np.max((last - first) - (have[last] - have[first])) > MIN_GAIN)

    tuples: list[tuple[int, int, int]] = []
    diffs: list[bytes] = []
    extras: list[bytes] = []
    last_scan = last_pos = 0  # start of the pending tuple in new / old
    runs = zip(
        starts.tolist(),
        ends.tolist(),
        deltas.tolist(),
        guess1.tolist(),
        verdict1.tolist(),
        guess2.tolist(),
        verdict2.tolist(),
        strict=True,
    )
    work = 0  # bytes compared by the extensions: a guard against quadratic inputs
    for s, e, d, g1, v1, g2, v2 in runs:
        if s < last_scan:
            continue
        if work > _WORK_FACTOR * (n + m):
            break  # pathological input: the rest goes out as one tuple (still correct)
        cur = last_pos - last_scan
        if d == cur:
            continue  # a continuation of the current diagonal
        if cur == g1:
            ok = v1
        elif cur == g2:
            ok = v2
        else:
            ok = better(s, e, d, cur)
        if not ok:
            continue  # no better than the current diagonal
        pos = s + d
        # Forward from the pending tuple along the current diagonal...
        span = min(s - last_scan, m - last_pos)
        lenf = (
            _best_prefix(nb[last_scan : last_scan + span] == ob[last_pos : last_pos + span])
            if span > 0 and last_pos >= 0
            else 0
        )
        # ...and backwards from the run along its diagonal.
        work += 2 * (s - last_scan)
        span = min(s - last_scan, pos)
        lenb = _best_prefix(nb[s - span : s][::-1] == ob[pos - span : pos][::-1]) if span > 0 else 0
        overlap = last_scan + lenf - (s - lenb)
        if overlap > 0:  # both claim the same bytes: split where the pair matches best
            a = last_scan + lenf - overlap
            fwd = nb[a : a + overlap] == ob[last_pos + lenf - overlap : last_pos + lenf]
            bwd = nb[s - lenb : s - lenb + overlap] == ob[pos - lenb : pos - lenb + overlap]
            score = np.cumsum(fwd.astype(_I64) - bwd)
            i = int(np.argmax(score))
            lens = i + 1 if score[i] > 0 else 0
            lenf += lens - overlap
            lenb -= lens
        new_scan = s - lenb
        if new_scan - last_scan < MIN_TUPLE and tuples:
            # Too short for a tuple of its own: its bytes join the previous tuple's extra.
            x, y, z = tuples[-1]
            extras.append(new[last_scan:new_scan])
            tuples[-1] = (x, y + new_scan - last_scan, z + pos - lenb - last_pos)
        else:
            _emit(tuples, diffs, extras, nb, ob, last_scan, last_pos, lenf, new_scan)
            tuples[-1] = (tuples[-1][0], tuples[-1][1], pos - lenb - (last_pos + lenf))
        last_scan, last_pos = new_scan, pos - lenb
    span = min(n - last_scan, m - last_pos)
    lenf = (
        _best_prefix(nb[last_scan : last_scan + span] == ob[last_pos : last_pos + span])
        if span > 0 and last_pos >= 0
        else 0
    )
    if n - last_scan < MIN_TUPLE and tuples:
        x, y, z = tuples[-1]
        extras.append(new[last_scan:])
        tuples[-1] = (x, y + n - last_scan, z)
    else:
        _emit(tuples, diffs, extras, nb, ob, last_scan, last_pos, lenf, n)
    control = b"".join(_pack(v) for t in tuples for v in t)
    assert len(control) == CONTROL_TUPLE_SIZE * len(tuples)
    return control, b"".join(diffs), b"".join(extras)


def _emit(
    tuples: list[tuple[int, int, int]],
    diffs: list[bytes],
    extras: list[bytes],
    nb: _Bytes,
    ob: _Bytes,
    scan: int,
    pos: int,
    lenf: int,
    end: int,
) -> None:
    """One tuple: ``lenf`` diff bytes at (scan, pos), then extra bytes up to ``end``."""
    if lenf:
        diffs.append((nb[scan : scan + lenf] - ob[pos : pos + lenf]).tobytes())
    extras.append(nb[scan + lenf : end].tobytes())
    tuples.append((lenf, end - scan - lenf, 0))


def _pack(v: int) -> bytes:
    return (v if v >= 0 else (-v) | (1 << 63)).to_bytes(8, "little")
