"""Manifest fuzzing: random and hostile manifests never raise anything but a ManifestError naming
where, every row is accounted for in the ledger (SQLite and PostgreSQL) and in the report, and no
report cell is a live spreadsheet formula.

``HEALTHIMAGING_FUZZ_EXAMPLES`` sets the examples per property (default 150; ``make test-fuzz``
runs 10,000).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import uuid

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from healthimaging.bulk import report
from healthimaging.bulk.engine import register_manifest
from healthimaging.bulk.ledger import Ledger, engine_for
from healthimaging.bulk.manifest import COLUMNS, JSON_COLUMNS, ManifestError, validate_manifest

EXAMPLES = int(os.environ.get("HEALTHIMAGING_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
POSTGRES_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
DATASTORE = "d" * 32
#: Where a ManifestError may say the problem is.
WHERE = re.compile(r"^(line [\d,]+|row [\d,]+|the manifest)")

ids = st.text("0123456789abcdefghijklmnopqrstuvwxyz", min_size=32, max_size=32)
#: Characters that break parsers: quotes, separators, line breaks, NUL, formula starts, surrogates, BOM.
nasty = st.sampled_from(
    [
        '"',
        "'",
        ",",
        ";",
        "\n",
        "\r",
        "\r\n",
        "\x00",
        "\t",
        "=",
        "+",
        "-",
        "@",
        "\\",
        "{",
        "}",
        "[",
        "]",
        "\ud800",
        "\udfff",
        "\ufeff",
        "\u2028",
        "é",
        "𝄞",
        " ",
    ]
)
chaos_text = st.lists(st.one_of(nasty, st.text(max_size=8), ids), max_size=12).map("".join)
formulas = st.sampled_from(['=HYPERLINK("http://x","y")', "+1", "-1+2", "@SUM(A1)", "\t=1", "\r=1"])
cells = st.one_of(ids, chaos_text, formulas, st.sampled_from(["", "true", "1", "2", "1.2.3;4.5", '["1.2"]']))


def deep(levels: int) -> str:
    return "[" * levels + "]" * levels


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), chaos_text, ids, formulas),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(chaos_text, inner, max_size=4)),
    max_leaves=12,
)


def encode(text: str) -> bytes:
    """UTF-8, lone surrogates included as the invalid bytes a careless exporter writes."""
    return text.encode("utf-8", "surrogatepass")


@st.composite
def csv_manifests(draw, json_columns: bool = True) -> bytes:
    choices = [c for c in COLUMNS if json_columns or c not in JSON_COLUMNS]
    header = draw(st.lists(st.one_of(st.sampled_from(choices), chaos_text), min_size=1, max_size=8))
    if draw(st.booleans()):
        header = ["source_image_set_id", *header]
    rows = draw(st.lists(st.lists(cells, min_size=0, max_size=len(header) + 2), max_size=12))
    lines = [",".join(header)] + [",".join(row) for row in rows]
    separator = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    return encode(separator.join(lines) + draw(st.sampled_from(["", separator])))


@st.composite
def jsonl_manifests(draw) -> bytes:
    lines = []
    for _ in range(draw(st.integers(0, 10))):
        kind = draw(st.integers(0, 5))
        if kind == 0:
            row = draw(st.dictionaries(st.sampled_from(COLUMNS), st.one_of(cells, json_values), max_size=6))
            row.setdefault("source_image_set_id", draw(ids))
            lines.append(json.dumps(row, ensure_ascii=draw(st.booleans())))
        elif kind == 1:
            lines.append(json.dumps(draw(json_values)))  # any JSON value: often not an object
        elif kind == 2:
            levels = draw(st.sampled_from([31, 33, 500, 1000, 5000]))
            lines.append('{"source_image_set_id": "%s", "label": %s}' % (draw(ids), deep(levels)))
        elif kind == 3:
            lines.append(draw(chaos_text))  # not JSON at all
        elif kind == 4:
            escape = draw(st.sampled_from(["\\ud800", "\\udfff", "\\u0000", "\\ud83d\\ude00", "\\ud83d"]))
            lines.append('{"source_image_set_id": "%s", "label": "x%s"}' % (draw(ids), escape))
        else:
            lines.append("")
    return encode("\n".join(lines))


random_bytes = st.binary(max_size=2048)
manifests = st.one_of(
    random_bytes,
    csv_manifests(),
    jsonl_manifests(),
    st.tuples(csv_manifests(), random_bytes).map(b"".join),
    st.tuples(jsonl_manifests(), random_bytes).map(b"\n".join),
)


def validate(data: bytes, name: str):
    """The validated manifest, or None after checking that the ManifestError says where."""
    try:
        validated = validate_manifest(data, name, default_datastore_id=DATASTORE)
    except ManifestError as exc:
        assert WHERE.match(str(exc)), str(exc)
        return None
    numbers = sorted([r.row for r in validated.rows] + [n for n, _, _ in validated.rejected])
    assert numbers == list(range(1, validated.total_rows + 1))
    return validated


def record_and_report(ledger: Ledger, validated, name: str) -> None:
    """Register in the ledger and build the report: every row stored once, accounted for, no live formula."""
    run_id = uuid.uuid4().hex
    registered = register_manifest(
        ledger, dag_id="fuzz", run_id=run_id, manifest_uri=name, validated=validated, batch_size=5
    )
    assert registered.pending + registered.rejected + registered.skipped == validated.total_rows
    rows = ledger.run_rows("fuzz", run_id, validated.sha256)
    assert len(rows) == validated.total_rows
    summary = report.summarize(
        rows,
        dag_id="fuzz",
        run_id=run_id,
        manifest_uri=name,
        manifest_sha256=validated.sha256,
        total_rows=validated.total_rows,
    )
    assert summary["counts"]["unfinished"] == registered.pending
    files = report.report_files(rows, summary)
    json.loads(files["report.json"])
    for file_name, content in files.items():
        if file_name.endswith(".csv"):
            for record in csv.reader(io.StringIO(content, newline="")):
                assert not [cell for cell in record if cell.startswith(report.FORMULA_PREFIXES)], record


@pytest.fixture(scope="module")
def sqlite_ledger(tmp_path_factory) -> Ledger:
    return Ledger(engine_for(f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'ledger.sqlite3'}"))


@pytest.fixture(scope="module")
def postgres_ledger() -> Ledger:
    try:
        return Ledger(engine_for(POSTGRES_URL))
    except sa.exc.OperationalError as exc:  # pragma: no cover - the CI machine has PostgreSQL
        pytest.skip(f"PostgreSQL is not reachable: {exc}")


@FUZZ
@given(data=manifests, name=st.sampled_from(["m.csv", "m.jsonl", "manifest"]))
def test_any_input_is_rows_or_one_manifest_error_and_is_stored_in_sqlite(sqlite_ledger, data, name):
    validated = validate(data, name)
    if validated is not None:
        record_and_report(sqlite_ledger, validated, name)


@settings(FUZZ, max_examples=max(EXAMPLES // 3, 20))
@given(data=manifests, name=st.sampled_from(["m.csv", "m.jsonl"]))
def test_any_input_is_stored_in_postgresql(postgres_ledger, data, name):
    validated = validate(data, name)
    if validated is not None:
        record_and_report(postgres_ledger, validated, name)


def blank_as_csv(line: str) -> bool:
    cells = next(csv.reader([line]), [])
    return all(not cell.strip() for cell in cells)


@FUZZ
@given(data=csv_manifests(json_columns=False))
def test_every_csv_line_is_one_row_or_the_manifest_is_refused(data):
    """Without JSON columns no cell may span lines: each non-blank line after the header is a row."""
    try:
        validated = validate_manifest(data, "m.csv", default_datastore_id=DATASTORE)
    except ManifestError as exc:
        assert WHERE.match(str(exc)), str(exc)
        return
    lines = re.split(rb"\r\n|\r|\n", data.removeprefix(b"\xef\xbb\xbf"))
    if lines and lines[-1] == b"":
        lines.pop()
    texts = [line.decode("utf-8", "replace").replace("\x00", "x") for line in lines]
    content = [t for t in texts if not blank_as_csv(t)]
    assert validated.total_rows == max(len(content) - 1, 0)  # the first non-blank line is the header


LINE_LIMIT = "(at most 2,097,152)"
HUGE = {  # (size, kind): the one outcome, a ManifestError's start or the rejected rows' messages' starts
    (3 * 1024 * 1024, "line"): ["row 1: line 2 is 3,145,761 bytes long " + LINE_LIMIT],
    (3 * 1024 * 1024, "quoted"): (
        "line 2: field larger than field limit (2097152); a quoted field probably opens on this line and never closes"
    ),
    (3 * 1024 * 1024, "jsonl"): ["row 1: line 1 is 3,145,800 bytes long " + LINE_LIMIT],
    (17 * 1024 * 1024, "line"): ["row 1: line 2 is 17,825,825 bytes long " + LINE_LIMIT],
    # Each half of the quoted field is a line over the limit: the quote never opens a field across them.
    (17 * 1024 * 1024, "quoted"): [
        "row 1: line 2 is 8,912,930 bytes long " + LINE_LIMIT,
        "row 2: line 3 is 8,912,897 bytes long " + LINE_LIMIT,
    ],
    (17 * 1024 * 1024, "jsonl"): ["row 1: line 1 is 17,825,864 bytes long " + LINE_LIMIT],
}


@pytest.mark.parametrize(("size", "kind"), list(HUGE), ids=[f"{size // 1024 // 1024}MiB-{kind}" for size, kind in HUGE])
def test_huge_fields_and_lines_are_bounded(size, kind):
    """A field or line of 3 or 17 MiB is a bounded error, never read whole into a row, and each case has one
    outcome: a line over the 2 MiB line limit is a rejected row; a quoted field of 3 MiB over two lines that each
    fit refuses the manifest (the csv field limit); at 17 MiB each of those lines is a rejected row of its own."""
    big = "x" * size
    data = {
        "line": f"source_image_set_id,label\n{'a' * 32},{big}\n",
        "quoted": f'source_image_set_id,label\n{"a" * 32},"{big[: size // 2]}\n{big[: size // 2]}"\n',
        "jsonl": json.dumps({"source_image_set_id": "a" * 32, "label": big}) + "\n",
    }[kind].encode()
    expected = HUGE[(size, kind)]
    name = "m.jsonl" if kind == "jsonl" else "m.csv"
    if isinstance(expected, str):
        with pytest.raises(ManifestError) as refused:
            validate_manifest(data, name, default_datastore_id=DATASTORE)
        assert str(refused.value).startswith(expected), str(refused.value)
        assert len(str(refused.value)) < 1000
        return
    validated = validate(data, name)
    assert validated is not None and not validated.rows
    assert validated.total_rows == len(expected)
    messages = [str(error) for _, _, errors in validated.rejected for error in errors]
    assert [m[: len(e)] for m, e in zip(messages, expected)] == expected and len(messages) == len(expected), messages
    assert all(len(m) < 1000 for m in messages)
