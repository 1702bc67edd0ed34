"""JSON-safe text: file and class names that are not valid UTF-8, made storable in strict JSON. One job: every
string the sharder puts into a JSON file (``report.json``, ``_info.json``, the part records, each sample's
``.json``) encodes as strict UTF-8.

On POSIX a file name is bytes; Python gives the bytes that are not UTF-8 as lone surrogates
(``surrogateescape``), which strict JSON readers refuse (and ``json.dumps(..., ensure_ascii=False)`` cannot
encode). Such a string is stored with each of those bytes written as the four characters ``\\xNN`` (Python's
``backslashreplace``): the Latin-1 name ``café.jpg`` is stored as ``caf\\xe9.jpg``. Valid UTF-8 names are
stored as they are, so the output for them is unchanged. ``rejects.tsv`` and ``classes.txt`` keep the
original bytes.
"""

from __future__ import annotations


def needs_escape(text: str) -> bool:
    """Whether ``text`` holds a lone surrogate (an undecodable byte of a file name): strict UTF-8 refuses it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def escape_text(text: str) -> str:
    """``text`` with each byte that is not UTF-8 written as ``\\xNN``; valid text is returned as it is."""
    if not needs_escape(text):
        return text
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that stands for no undecodable byte
        raw = text.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", "backslashreplace")


def json_safe(obj):
    """A copy of the JSON-able ``obj`` (dicts, lists, tuples, strings, numbers) with every string (keys too)
    passed through :func:`escape_text`; tuples become lists, as JSON stores them anyway."""
    if isinstance(obj, str):
        return escape_text(obj)
    if isinstance(obj, dict):
        return {json_safe(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj
