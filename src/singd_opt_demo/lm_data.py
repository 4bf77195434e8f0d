r"""Characters of Python's own standard library, split by position, for the language model.

The text is the source code of a fixed list of standard-library modules
(:data:`SOURCE_MODULES`), read from the directory of the running interpreter's
standard library (``sysconfig.get_paths()["stdlib"]``), so nothing is downloaded. The
modules are read in the listed order and joined by a newline; the exact text (and so
every number measured on it) depends on the Python version.

Each character becomes a token: ``"\n"`` and the printable ASCII characters
(:data:`VOCABULARY`) have their own, every other character (tabs, the few non-ASCII
letters in docstrings) the shared token :data:`UNKNOWN`.

The split is by position: the token stream is cut into consecutive blocks of
:data:`BLOCK_LENGTH` characters; of every :data:`BLOCKS_PER_CYCLE` consecutive blocks
the second-to-last is validation, the last test and the rest training (95/2.5/2.5),
so every split samples every part of the corpus. Each block is cut into windows of
:data:`CONTEXT` input characters whose targets are the same characters shifted by one
(windows start every :data:`CONTEXT` characters and never cross a block boundary).
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

import torch
from torch import Tensor

from singd_opt_demo.split import Split

#: The standard-library modules whose source forms the corpus, in reading order.
SOURCE_MODULES: tuple[str, ...] = (
    "argparse",
    "ast",
    "calendar",
    "collections",
    "configparser",
    "dataclasses",
    "difflib",
    "enum",
    "fractions",
    "functools",
    "inspect",
    "logging",
    "pathlib",
    "pickle",
    "pprint",
    "shutil",
    "string",
    "subprocess",
    "textwrap",
    "threading",
    "tokenize",
    "typing",
    "zipfile",
)
#: The characters with a token of their own: newline and printable ASCII (space to ``~``).
VOCABULARY = "\n" + "".join(map(chr, range(32, 127)))
#: The token of every other character.
UNKNOWN = len(VOCABULARY)
#: Number of tokens.
VOCAB_SIZE = len(VOCABULARY) + 1
#: Input characters per window (the model's context length).
CONTEXT = 64
#: Characters per block of the position split.
BLOCK_LENGTH = 4096
#: Blocks per cycle of the split: the last is test, the one before validation.
BLOCKS_PER_CYCLE = 40
#: Fewest characters the corpus must have (guards against a stripped installation).
MIN_CHARACTERS = 200_000

_TOKEN_OF_BYTE = torch.full((256,), UNKNOWN, dtype=torch.int64)
_TOKEN_OF_BYTE[torch.tensor([ord(c) for c in VOCABULARY])] = torch.arange(len(VOCABULARY))


def source_path(module: str, stdlib: Path) -> Path | None:
    """Return the source file of a standard-library module, or ``None`` if absent.

    Args:
        module: A dotted module name, e.g. ``"json.decoder"``.
        stdlib: The standard library's directory.
    """
    relative = Path(*module.split("."))
    for candidate in (relative.with_suffix(".py"), relative / "__init__.py"):
        if (stdlib / candidate).is_file():
            return stdlib / candidate
    return None


def read_corpus(stdlib: Path | None = None) -> str:
    """Return the source of :data:`SOURCE_MODULES`, joined by newlines.

    Modules missing from this installation are left out.

    Args:
        stdlib: The standard library's directory (default: this interpreter's).

    Raises:
        FileNotFoundError: If fewer than :data:`MIN_CHARACTERS` characters are found
            (an installation without the standard library's ``.py`` sources).
    """
    stdlib = Path(sysconfig.get_paths()["stdlib"]) if stdlib is None else stdlib
    paths = [path for module in SOURCE_MODULES if (path := source_path(module, stdlib))]
    text = "\n".join(path.read_text(encoding="utf-8") for path in paths)
    if len(text) < MIN_CHARACTERS:
        raise FileNotFoundError(
            f"the language-model corpus needs the standard library's .py sources in "
            f"{stdlib}; found {len(paths)} of {len(SOURCE_MODULES)} modules "
            f"({len(text):,} characters, at least {MIN_CHARACTERS:,} needed)"
        )
    return text


def encode(text: str) -> Tensor:
    """Return the tokens of ``text``, ``(len(text),)`` int64 (see :data:`VOCABULARY`)."""
    if not text:
        return torch.zeros(0, dtype=torch.int64)
    code_points = torch.frombuffer(bytearray(text.encode("utf-32-le")), dtype=torch.int32)
    # Every code point above 255 maps to 0, a control character without a token.
    return _TOKEN_OF_BYTE[code_points.long().where(code_points < 256, 0)]


def decode(tokens: Tensor) -> str:
    """Return the text of ``tokens``; :data:`UNKNOWN` becomes ``"?"``."""
    return "".join(VOCABULARY[t] if t < UNKNOWN else "?" for t in tokens.tolist())


def _windows(blocks: Tensor) -> tuple[Tensor, Tensor]:
    """Cut blocks ``(m, BLOCK_LENGTH)`` into inputs and targets ``(m * w, CONTEXT)``."""
    windows = blocks.unfold(1, CONTEXT + 1, CONTEXT).reshape(-1, CONTEXT + 1)
    return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()


def split_tokens(tokens: Tensor, validation: bool = False) -> Split:
    """Split a token stream by position into training, validation and test windows.

    Args:
        tokens: The stream, ``(L,)`` int64; a last incomplete block is dropped.
        validation: If ``True``, leave the test windows out (for tuning).

    Returns:
        Inputs and targets ``(N, CONTEXT)`` of each split; evaluation sets
        ``"validation"`` and (unless ``validation``) ``"test"``.
    """
    num_blocks = len(tokens) // BLOCK_LENGTH
    blocks = tokens[: num_blocks * BLOCK_LENGTH].view(num_blocks, BLOCK_LENGTH)
    role = torch.arange(num_blocks) % BLOCKS_PER_CYCLE
    x_train, y_train = _windows(blocks[role < BLOCKS_PER_CYCLE - 2])
    eval_sets = {"validation": _windows(blocks[role == BLOCKS_PER_CYCLE - 2])}
    if not validation:
        eval_sets["test"] = _windows(blocks[role == BLOCKS_PER_CYCLE - 1])
    return Split(x_train, y_train, eval_sets)


def load_split(validation: bool = False) -> Split:
    """Read, encode and split the corpus (see the module docstring).

    Args:
        validation: If ``True``, return only the validation set for evaluation (the
            test windows are never looked at); the training windows are the same.

    Returns:
        The split, on the CPU.
    """
    return split_tokens(encode(read_corpus()), validation=validation)
