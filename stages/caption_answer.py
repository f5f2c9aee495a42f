"""The captioner's one answer per clip, read strictly: a caption paragraph, then one JSON line.

The JSON line holds the subject list and the reject checks (Cosmos Curator's criteria). Anything
but exactly that shape is unparsable: the caption still counts (it is the text before the JSON
line, or the whole answer when there is none), the subjects fall back to the defaults and the
checks stay unknown (null), so a filter on them drops the clip rather than guess.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from manifests.filters import VLM_CHECKS
from stages.base import BadModelOutput

KINDS = ("human", "face", "object")
DEFAULT_SUBJECTS = [{"kind": "human", "label": "person"}, {"kind": "face", "label": "face"}]
JSON_BLOCK = re.compile(r"\s*(?:```(?:json)?\s*)?(\{.*\})\s*(?:```)?\s*", flags=re.S)  # one optional fence


@dataclass(frozen=True)
class Parsed:
    caption: str
    subjects: list[dict[str, str]] | None  # None: the answer did not parse
    checks: dict[str, bool] | None
    problem: str | None  # why it did not parse


def parse_subjects(data: object, limit: int) -> list[dict[str, str]]:
    """A non-empty list of {"kind", "label"}, duplicates dropped, at most `limit`; else BadModelOutput."""
    if not isinstance(data, list) or not data:
        raise BadModelOutput(f"subjects is not a non-empty list: {str(data)[:120]!r}")
    subjects = []
    for entry in data:
        if not (isinstance(entry, dict) and entry.get("kind") in KINDS and isinstance(entry.get("label"), str) and entry["label"].strip()):
            raise BadModelOutput(f"subject entry {entry!r} needs kind in {KINDS} and a label")
        subject = {"kind": entry["kind"], "label": entry["label"].strip()}
        if subject not in subjects:
            subjects.append(subject)
    return subjects[:limit]


def parse_checks(data: object) -> dict[str, bool]:
    """Exactly the reject criteria, each true or false."""
    if not (isinstance(data, dict) and set(data) == set(VLM_CHECKS) and all(isinstance(v, bool) for v in data.values())):
        raise BadModelOutput(f"reject needs exactly {', '.join(VLM_CHECKS)}, each true or false: {str(data)[:160]!r}")
    return {name: data[name] for name in VLM_CHECKS}


def parse_answer(text: str, max_subjects: int) -> Parsed:
    """Caption, subjects and checks of one answer; a malformed JSON line leaves subjects and checks None."""
    lines = text.strip().splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("{")]
    if not starts:
        return Parsed(text.strip(), None, None, f"no JSON line after the caption: {text[-120:]!r}")
    start = starts[-1] - 1 if starts[-1] and lines[starts[-1] - 1].strip() in ("```", "```json") else starts[-1]
    caption = "\n".join(lines[:start]).strip()
    found = JSON_BLOCK.fullmatch("\n".join(lines[start:]))
    try:
        if not found:
            raise BadModelOutput(f"text after the JSON object: {lines[-1][:120]!r}")
        try:
            data = json.loads(found.group(1))
        except json.JSONDecodeError as exc:
            raise BadModelOutput(f"the JSON line does not parse ({exc.msg}): {found.group(1)[:120]!r}") from None
        if not (isinstance(data, dict) and set(data) == {"subjects", "reject"}):
            raise BadModelOutput(f"the JSON line needs exactly subjects and reject: {found.group(1)[:120]!r}")
        return Parsed(caption, parse_subjects(data["subjects"], max_subjects), parse_checks(data["reject"]), None)
    except BadModelOutput as exc:
        return Parsed(caption, None, None, str(exc))
