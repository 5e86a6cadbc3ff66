"""Pure parts of the emulator: the search DSL, record shaping, paging and byte ranges (no sockets)."""
from __future__ import annotations

import math

import pytest

from archive_client.emulator import records
from archive_client.emulator.files import RangeNotSatisfiable, parse_byte_range
from archive_client.emulator.query import QueryParseError, parse_query

MELANOMA = {"isic_id": "ISIC_0000001", "diagnosis_3": "Melanoma Invasive", "age_approx": 35, "sex": "male",
            "anatom_site_general": "posterior torso", "melanocytic": True, "clin_size_long_diam_mm": 6.5,
            "image_type": "dermoscopic"}
NEVUS = {"isic_id": "ISIC_0000002", "diagnosis_3": "Nevus", "age_approx": 60, "sex": "female",
         "anatom_site_general": "lower extremity", "melanocytic": True, "image_type": "clinical: close-up"}
KERATOSIS = {"isic_id": "ISIC_0000003", "diagnosis_3": "Seborrheic keratosis", "melanocytic": False,
             "image_type": "dermoscopic"}
ALL = (MELANOMA, NEVUS, KERATOSIS)


def ids(query: str) -> list[str]:
    predicate = parse_query(query)
    return [r["isic_id"] for r in ALL if predicate.matches(r)]


# ---------------------------------------------------------------------------------------------- the DSL
@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", ["ISIC_0000001", "ISIC_0000002", "ISIC_0000003"]),
        ("   ", ["ISIC_0000001", "ISIC_0000002", "ISIC_0000003"]),
        ("sex:male", ["ISIC_0000001"]),
        ("sex:MALE", ["ISIC_0000001"]),                                   # case-insensitive
        ('diagnosis_3:"Melanoma Invasive"', ["ISIC_0000001"]),
        ('diagnosis_3:"melanoma invasive"', ["ISIC_0000001"]),
        ('image_type:"clinical: close-up"', ["ISIC_0000002"]),            # ':' and space inside quotes
        ("age_approx:35", ["ISIC_0000001"]),                              # numbers compare as numbers
        ("age_approx:35.0", ["ISIC_0000001"]),
        ("clin_size_long_diam_mm:6.5", ["ISIC_0000001"]),
        ("melanocytic:true", ["ISIC_0000001", "ISIC_0000002"]),           # booleans are true / false
        ("melanocytic:False", ["ISIC_0000003"]),
        ("age_approx:*", ["ISIC_0000001", "ISIC_0000002"]),               # field present
        ("anatom_site_general:*torso", ["ISIC_0000001"]),                 # leading wildcard
        ("diagnosis_3:mel*", ["ISIC_0000001"]),
        ("diagnosis_3:nev?s", ["ISIC_0000002"]),
        ("diagnosis_3:nev?", []),                                         # ? is exactly one character
        ('diagnosis_3:"Nev*"', []),                                       # quoted values are literal
        (r"diagnosis_3:Nev\*", []),                                       # escaped wildcard is literal
        ("age_approx:[20 TO 40]", ["ISIC_0000001"]),
        ("age_approx:[35 TO 60]", ["ISIC_0000001", "ISIC_0000002"]),      # inclusive
        ("age_approx:{35 TO 60}", []),                                    # exclusive
        ("age_approx:[35 TO 60}", ["ISIC_0000001"]),                      # mixed
        ("age_approx:[40 TO *]", ["ISIC_0000002"]),                       # open end
        ("age_approx:[100 TO 9]", []),
        ("sex:[f TO g]", ["ISIC_0000002"]),                               # string range
        ("sex:male AND age_approx:35", ["ISIC_0000001"]),
        ("sex:male age_approx:60", []),                                   # implicit AND
        ("sex:male OR sex:female", ["ISIC_0000001", "ISIC_0000002"]),
        ("NOT sex:male", ["ISIC_0000002", "ISIC_0000003"]),               # absent field: NOT matches
        ("-sex:male", ["ISIC_0000002", "ISIC_0000003"]),
        ("melanocytic:true -sex:male", ["ISIC_0000002"]),
        ("+sex:male", ["ISIC_0000001"]),
        ("(sex:male OR sex:female) AND NOT diagnosis_3:nevus", ["ISIC_0000001"]),
        ("sex:male OR sex:female AND diagnosis_3:nevus", ["ISIC_0000001", "ISIC_0000002"]),  # AND binds tighter
        ("-(sex:male OR melanocytic:false)", ["ISIC_0000002"]),
        ("NOT NOT sex:male", ["ISIC_0000001"]),
        ("isic_id:ISIC_0000003", ["ISIC_0000003"]),
        ("unknown_field:x", []),
        ("unknown_field:*", []),
        ("age_approx: 35", ["ISIC_0000001"]),                             # space after ':' is allowed
    ],
)
def test_query_features(query: str, expected: list[str]) -> None:
    assert ids(query) == expected


@pytest.mark.parametrize(
    ("query", "position", "fragment"),
    [
        ("age_approx:[20 TO 40", 20, "close the range"),
        ("age_approx:[20 40]", 15, "'TO'"),
        ("sex:male)", 8, "unmatched ')'"),
        ("(sex:male", 9, "missing ')'"),
        ('diagnosis_3:"Melanoma', 12, "unterminated"),
        ("melanoma", 8, "expected ':'"),
        ("sex male", 3, "expected ':'"),
        ("sex:", 4, "expected a value"),
        ("AND sex:male", 0, "before AND"),
        ("sex:male AND", 12, "query ended"),
        ("sex:male OR OR sex:female", 12, "before OR"),
        ("image_type:clinical: close-up", 19, "unexpected ':'"),
        ("()", 1, "empty parentheses"),
        ("sex:male and sex:female", 12, "upper case"),                  # keywords are upper case
        ("age_approx:[* TO", 16, "unterminated range"),
        ("1sex:male", 0, "expected a term"),
    ],
)
def test_bad_queries_say_where(query: str, position: int, fragment: str) -> None:
    with pytest.raises(QueryParseError) as info:
        parse_query(query)
    assert info.value.position == position
    assert fragment in info.value.reason
    assert "query" in str(info.value)  # isic-cli looks for "query" in the 400 message


def test_query_never_evaluates_code() -> None:
    assert ids('isic_id:"__import__(\'os\').system(\'false\')"') == []


# ---------------------------------------------------------------------------------------------- records
def _row(**extra):
    row = {"isic_id": "ISIC_0000005", "file": "images/ISIC_0000005.jpg", "bytes": 10, "sha256": "ab", "width": 120,
           "height": 90, "image_type": "dermoscopic", "diagnosis_1": "Benign", "diagnosis_2": None,
           "diagnosis_3": "Nevus", "diagnosis_4": None, "diagnosis_5": None, "copyright_license": "CC-BY",
           "attribution": "Anonymous", "source_url": "file:///x"}
    row.update(extra)
    return row


def test_split_metadata_types_and_groups() -> None:
    acquisition, clinical = records.split_metadata(
        _row(age_approx="45", melanocytic="True", clin_size_long_diam_mm="4.5", acquisition_day="12",
             dermoscopic_type="contact polarized", sex=None, lesion_id="nan", fitzpatrick_skin_type="III",
             anatom_site_general=float("nan")))
    assert acquisition == {"acquisition_day": 12, "dermoscopic_type": "contact polarized",
                           "image_type": "dermoscopic", "pixels_x": 120, "pixels_y": 90}
    assert clinical == {"age_approx": 45, "clin_size_long_diam_mm": 4.5, "diagnosis_1": "Benign",
                        "diagnosis_3": "Nevus", "fitzpatrick_skin_type": "III", "melanocytic": True}
    assert list(acquisition) == sorted(acquisition) and list(clinical) == sorted(clinical)


def test_pixels_from_metadata_win_over_width() -> None:
    acquisition, _ = records.split_metadata(_row(pixels_x="1024", pixels_y="768"))
    assert (acquisition["pixels_x"], acquisition["pixels_y"]) == (1024, 768)


def test_json_value_keeps_what_it_cannot_convert() -> None:
    assert records.json_value("age_approx", "85+") == "85+"
    assert records.json_value("clin_size_long_diam_mm", "big") == "big"
    assert records.json_value("sex", "male") == "male"
    assert records.json_value("family_hx_mm", "False") is False


def test_image_record_shape() -> None:
    record = records.image_record(_row(), full_url="http://h/media/images/ISIC_0000005.jpg", full_size=10,
                                  thumbnail_url="http://h/t.jpg", thumbnail_size=5)
    assert set(record) == {"isic_id", "public", "copyright_license", "attribution", "files", "metadata"}
    assert record["files"]["full"] == {"url": "http://h/media/images/ISIC_0000005.jpg", "size": 10}
    assert set(record["metadata"]) == {"acquisition", "clinical"}


def test_search_fields_are_flat_and_typed() -> None:
    fields = records.search_fields(_row(age_approx="30"))
    assert fields["age_approx"] == 30 and fields["image_type"] == "dermoscopic" and fields["public"] is True
    assert "file" not in fields and "sha256" not in fields


def test_collections_json_validation() -> None:
    known = frozenset({"ISIC_0000000", "ISIC_0000001"})
    cols = records.collections_from_json(
        [{"id": 7, "name": "b", "isic_ids": ["ISIC_0000001", "ISIC_0009999"], "doi": "10.1/x"},
         {"id": 2, "name": "a"}], known)
    assert [c.id for c in cols] == [2, 7]
    assert cols[1].isic_ids == {"ISIC_0000001"}
    assert records.collection_record(cols[1])["doi_url"] == "https://doi.org/10.1/x"
    with pytest.raises(ValueError, match="integer 'id'"):
        records.collections_from_json([{"name": "x"}], known)
    with pytest.raises(ValueError, match="twice"):
        records.collections_from_json([{"id": 1, "name": "x"}, {"id": 1, "name": "y"}], known)


def test_parse_collection_ids() -> None:
    known = {1: None, 2: None}
    assert records.parse_collection_ids("", known) == ()
    assert records.parse_collection_ids("2,1,2", known) == (1, 2)
    with pytest.raises(records.ParameterError, match="comma separated"):
        records.parse_collection_ids("1;2", known)
    with pytest.raises(records.ParameterError, match="unknown collection id"):
        records.parse_collection_ids("3", known)


# ---------------------------------------------------------------------------------------------- paging
@pytest.mark.parametrize(("raw", "limit"), [(None, 100), ("", 100), ("7", 7), ("0", 1), ("-5", 1), ("500", 100),
                                            ("x", 100)])
def test_clamp_limit(raw, limit) -> None:
    assert records.clamp_limit(raw) == limit


def test_paginate_forward_and_back() -> None:
    keys = [f"ISIC_{i:07d}" for i in range(25)]
    seen, cursor, pages = [], None, []
    while True:
        page = records.paginate(keys, cursor, 10)
        pages.append(page)
        seen += page.keys
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == keys
    assert [p.first for p in pages] == [True, False, False]
    assert pages[0].previous_cursor is None
    back = records.paginate(keys, pages[2].previous_cursor, 10)
    assert back.keys == keys[10:20]
    assert records.paginate(keys, back.previous_cursor, 10).keys == keys[:10]


def test_paginate_empty_and_int_keys() -> None:
    page = records.paginate([], None, 10)
    assert page.keys == [] and page.next_cursor is None and page.count == 0
    page = records.paginate([1, 2, 3], records.encode_cursor("a", 1), 1)
    assert page.keys == [2]


@pytest.mark.parametrize("cursor", ["!!!", "bm90IGpzb24", records.encode_cursor("x", "ISIC_0000000"),
                                    records.encode_cursor("a", 5)])
def test_paginate_rejects_foreign_cursors(cursor) -> None:
    with pytest.raises(records.CursorError):
        records.paginate(["ISIC_0000000"], cursor, 10)


def test_page_body_count_only_first() -> None:
    keys = ["a", "b", "c"]
    first = records.page_body(records.paginate(keys, None, 2), [], "http://h/s/", {"query": "x:1", "limit": "2"})
    assert first["count"] == 3
    assert first["next"].startswith("http://h/s/?query=x%3A1&limit=2&cursor=")
    second = records.page_body(records.paginate(keys, records.encode_cursor("a", "b"), 2), [], "http://h/s/", {})
    assert "count" not in second and second["next"] is None and second["previous"]


def test_license_text() -> None:
    for name in records.LICENSES:
        assert "creativecommons.org" in records.license_text(name)
    assert records.license_text("CC-BY-SA") is None


# ---------------------------------------------------------------------------------------------- ranges
@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None), ("bytes=0-9", (0, 9)), ("bytes=5-", (5, 99)), ("bytes=90-200", (90, 99)),
        ("bytes=-10", (90, 99)), ("bytes=-1000", (0, 99)), ("bytes=9-3", None), ("bytes=0-1,5-6", None),
        ("items=0-3", None), ("bytes=-", None), ("bytes=99-99", (99, 99)),
    ],
)
def test_parse_byte_range(header, expected) -> None:
    assert parse_byte_range(header, 100) == expected


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=100-200", "bytes=-0"])
def test_unsatisfiable_ranges(header) -> None:
    with pytest.raises(RangeNotSatisfiable):
        parse_byte_range(header, 100)


def test_nan_is_absent() -> None:
    assert records.split_metadata(_row(age_approx=math.nan))[1].get("age_approx") is None
