"""The fuzzing harness every reader's target shares: the :class:`Target` record, the property
(:func:`run_example`), a scratch folder, and the cell strategies several CSV targets draw from.

The property: the reader returns a valid result or raises one of the project's own error types
(a UserError naming the file); anything else escaping is a bug in the reader.
"""

from __future__ import annotations

import functools
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from hypothesis import strategies as st

from fuzz_strategies import floats, mutated_bytes, mutated_text

from cxrdet.errors import UserError


@dataclass
class Target:
    name: str
    file_name: str  # what the fuzzed bytes are written as
    strategy: Callable[[], st.SearchStrategy[bytes]]  # built lazily: seeds may need files
    read: Callable[[Path], Any]
    check: Callable[[Any], None] = lambda result: None  # asserts an accepted result is valid
    allowed: tuple[type[BaseException], ...] = (UserError,)
    setup: Callable[[Path], None] = lambda folder: None  # companion files beside the fuzzed one
    named: Callable[[Path], Path] = lambda path: path  # what a UserError must name (file or folder)
    valid: Callable[[], list[bytes]] = list  # unmutated seed files, which must be accepted


class Escaped(AssertionError):
    """A reader let a foreign exception escape (or accepted an invalid result)."""


@functools.lru_cache(maxsize=None)
def workdir() -> Path:
    """One scratch folder per process (hypothesis examples cannot use pytest's tmp_path)."""
    return Path(tempfile.mkdtemp(prefix="cxrdet-fuzz-"))


def run_example(target: Target, data: bytes) -> str:
    """Write ``data``, read it; ``"accepted"`` or ``"refused"``, or raise :class:`Escaped`."""
    folder = workdir() / target.name
    if not folder.is_dir():
        folder.mkdir(parents=True)
        target.setup(folder)
    path = folder / target.file_name
    path.write_bytes(data)
    try:
        result = target.read(path)
    except target.allowed as e:
        if isinstance(e, UserError) and str(target.named(path)) not in str(e):
            raise Escaped(f"{target.name}: UserError does not name {target.named(path)}: {e}") from e
        return "refused"
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # BaseException: a Rust extension's panic is not an Exception
        raise Escaped(f"{target.name}: {type(e).__name__} escaped: {e}") from e
    try:
        target.check(result)
    except AssertionError as e:
        raise Escaped(f"{target.name}: accepted an invalid result: {e}") from e
    return "accepted"


def mutants(seeds: list[bytes], structured: st.SearchStrategy[bytes] | None = None,
            text: bool = True) -> st.SearchStrategy[bytes]:
    """Seeds mutated as text (and bytes) or as bytes only, or files drawn by ``structured``."""
    mutate = mutated_text if text else mutated_bytes
    parts = [st.sampled_from(seeds).flatmap(lambda s: mutate(s.decode()) if text else mutate(s))]
    if text:
        parts.append(st.sampled_from(seeds).flatmap(mutated_bytes))
    if structured is not None:
        parts.append(structured)
    return st.one_of(*parts)


ids = st.sampled_from(["a1", "b2", "c3", "0005e8e3701dfb1dd93d53e2ff537b6e", " d4 ", "e5"])
numbers = st.one_of(floats(-10, 3000).map(lambda x: f"{x:.2f}"), st.integers(-5, 3000).map(str))
probabilities = st.one_of(floats(0, 1).map(lambda x: f"{x:.6g}"), floats().map(repr), st.just(""))


def check_config_fields(cfg) -> None:
    """Every field of an accepted config dataclass has its annotated type, numbers finite."""
    import dataclasses

    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        kind = {"str": str, "int": int, "float": (int, float), "bool": bool}.get(str(f.type))
        if kind is not None:
            assert isinstance(value, kind) and (kind is bool or not isinstance(value, bool)), (f.name, value)
            if kind != str and kind is not bool:
                assert math.isfinite(value), (f.name, value)
        elif str(f.type) == "list[str]":
            assert isinstance(value, list) and all(isinstance(x, str) for x in value), (f.name, value)
        else:  # list[int] / list[float]
            assert isinstance(value, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                   and math.isfinite(x) for x in value), (f.name, value)
