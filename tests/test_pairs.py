"""Translation and summarization pairs: every layout (JSONL, HF-style JSONL, TSV, prefix of line files;
plain or gzip), several references, a field filter, skipped empty texts counted, bad input named by
file:line and field, and a seeded split that keeps duplicates of a source together."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from lmforge.errors import LmforgeError
from lmforge.evaluate.pairs import Pair, read_pairs, split_pairs
from lmforge.tokenizer.sources import ReadLog


def write(path: Path, text: str) -> Path:
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def jsonl(path: Path, records: list[dict]) -> Path:
    return write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


@pytest.mark.parametrize("name", ["pairs.jsonl", "pairs.jsonl.gz"])
def test_jsonl_fields_and_hf_translation_style(tmp_path, name):
    records = [
        {"de": " Ein Hund. ", "en": "A dog."},
        {"translation": {"de": "Zwei Katzen.", "en": "Two cats."}},
    ]
    pairs = read_pairs(jsonl(tmp_path / name, records), "de", "en")
    assert [(p.source, p.target, p.references) for p in pairs] == [
        ("Ein Hund.", "A dog.", ("A dog.",)),
        ("Zwei Katzen.", "Two cats.", ("Two cats.",)),
    ]
    assert pairs[1].origin == f"{tmp_path / name}:2"


def test_several_target_fields_are_references(tmp_path):
    record = {
        "dialogue": "#Person1#: Hi.\n#Person2#: Hello.",
        "summary1": "A",
        "summary2": "B",
        "summary3": "C",
    }
    (pair,) = read_pairs(
        jsonl(tmp_path / "test.jsonl", [record]), "dialogue", ["summary1", "summary2", "summary3"]
    )
    assert pair.source == "#Person1#: Hi.\n#Person2#: Hello."
    assert (pair.target, pair.references) == ("A", ("A", "B", "C"))


def test_where_keeps_one_direction(tmp_path):
    records = [
        {"src": "Hallo", "tgr": "Hello", "type": "de2en"},
        {"src": "Hello", "tgr": "Hallo", "type": "en2de"},
        {"src": "Danke", "tgr": "Thanks", "type": "de2en"},
    ]
    path = jsonl(tmp_path / "wmt.jsonl", records)
    assert [p.source for p in read_pairs(path, "src", "tgr", where={"type": "de2en"})] == ["Hallo", "Danke"]
    with pytest.raises(LmforgeError, match="no pairs with type=xx2yy"):
        read_pairs(path, "src", "tgr", where={"type": "xx2yy"})


@pytest.mark.parametrize("name", ["cmn-eng.tsv", "cmn-eng.tsv.gz"])
def test_tsv_named_columns_extra_ignored(tmp_path, name):
    path = write(tmp_path / name, 'Hi.\t嗨。\tCC-BY 2.0 (France) #1\r\nSay "hi".\t说"嗨"。\tCC-BY #2\n')
    pairs = read_pairs(path, "en", "zh")
    assert [(p.source, p.target) for p in pairs] == [("Hi.", "嗨。"), ('Say "hi".', '说"嗨"。')]
    reverse = read_pairs(path, "zh", "en", columns=["en", "zh", "attribution"])
    assert reverse[0].source == "嗨。"
    attribution = read_pairs(path, "en", "attribution", columns=["en", "zh", "attribution"])
    assert attribution[1].target == "CC-BY #2"


def test_tsv_short_line_and_unknown_column(tmp_path):
    path = write(tmp_path / "p.tsv", "a\tb\nonly one column\n")
    with pytest.raises(LmforgeError, match=r"p\.tsv:2: field 'zh': missing"):
        read_pairs(path, "en", "zh")
    with pytest.raises(LmforgeError, match=r"\['de'\] are not among the TSV columns \['en', 'zh'\]"):
        read_pairs(path, "de", "zh", columns=["en", "zh"])


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_prefix_of_line_aligned_files(tmp_path, suffix):
    write(tmp_path / f"train.de{suffix}", "Ein Hund.\nZwei Katzen.\n")
    write(tmp_path / "train.en", "A dog.\r\nTwo cats.\r\n")  # one plain and one gzip file mix too
    pairs = read_pairs(tmp_path / "train", "de", "en")
    assert [(p.source, p.target) for p in pairs] == [("Ein Hund.", "A dog."), ("Zwei Katzen.", "Two cats.")]
    assert pairs[1].origin == f"{tmp_path / 'train'}.{{de,en}}:2"


def test_prefix_line_counts_must_agree(tmp_path):
    write(tmp_path / "val.de.gz", "a\nb\nc\n")
    write(tmp_path / "val.en.gz", "A\nB\n")
    with pytest.raises(LmforgeError) as e:
        read_pairs(tmp_path / "val", "de", "en")
    assert f"{tmp_path / 'val.de.gz'} has 3" in str(e.value)
    assert f"{tmp_path / 'val.en.gz'} has 2" in str(e.value)


def test_a_stray_carriage_return_does_not_split_a_line(tmp_path):
    write(tmp_path / "x.de", "eins\rzwei\ndrei\n")
    write(tmp_path / "x.en", "one two\nthree\n")
    assert [p.source for p in read_pairs(tmp_path / "x", "de", "en")] == ["eins\rzwei", "drei"]


def test_missing_files_are_named(tmp_path):
    write(tmp_path / "t.de", "a\n")
    with pytest.raises(LmforgeError, match=r"t\.en\[\.gz\]"):
        read_pairs(tmp_path / "t", "de", "en")
    with pytest.raises(LmforgeError, match="'where' needs a JSONL or TSV file"):
        read_pairs(tmp_path / "t", "de", "en", where={"type": "de2en"})
    with pytest.raises(LmforgeError, match=r"expected a \.jsonl or \.tsv"):
        read_pairs(write(tmp_path / "t.csv", "a,b\n"), "de", "en")


def test_empty_texts_are_skipped_and_counted(tmp_path, capsys):
    write(tmp_path / "m.de", "a\n\nc\nd\n")
    write(tmp_path / "m.en", "A\nB\n  \nD\n")
    log = ReadLog()
    pairs = read_pairs(tmp_path / "m", "de", "en", log=log)
    assert [p.source for p in pairs] == ["a", "d"]
    assert log.skipped == {"empty 'de'": 1, "empty 'en'": 1}
    assert log.documents == 2
    report = capsys.readouterr().err
    assert "skipped 2" in report and f"{tmp_path / 'm'}.{{de,en}}:3" in report
    # a pair of references with one empty is skipped too; all empty is an error, not an empty list
    rows = [{"s": "x", "t1": "y", "t2": ""}, {"s": "x", "t1": "y", "t2": "z"}]
    assert len(read_pairs(jsonl(tmp_path / "r.jsonl", rows), "s", ["t1", "t2"])) == 1
    with pytest.raises(LmforgeError, match="no pairs"):
        read_pairs(jsonl(tmp_path / "e.jsonl", [{"s": "", "t": "y"}]), "s", "t")


def test_bad_json_and_missing_or_wrong_fields_name_file_line_field(tmp_path):
    path = write(tmp_path / "bad.jsonl", '{"de": "a", "en": "b"}\n{"de": "a", \n')
    with pytest.raises(LmforgeError, match=r"bad\.jsonl:2: not JSON"):
        read_pairs(path, "de", "en")
    path = jsonl(tmp_path / "miss.jsonl", [{"de": "a", "en": "b"}, {"de": "a", "eng": "b"}])
    with pytest.raises(LmforgeError, match=r"miss\.jsonl:2: field 'en': missing \(the record has de, eng\)"):
        read_pairs(path, "de", "en")
    path = jsonl(tmp_path / "num.jsonl", [{"de": "a", "en": 3}])
    with pytest.raises(LmforgeError, match=r"num\.jsonl:1: field 'en': expected a string, got 3"):
        read_pairs(path, "de", "en")
    path = jsonl(tmp_path / "nodir.jsonl", [{"src": "a", "tgr": "b"}])
    with pytest.raises(LmforgeError, match=r"nodir\.jsonl:1: field 'type': missing"):
        read_pairs(path, "src", "tgr", where={"type": "de2en"})


def pairs_with_duplicates() -> list[Pair]:
    """40 sources, every third one with three translations (like Tatoeba's repeated English lines)."""
    pairs = []
    for i in range(40):
        for j in range(3 if i % 3 == 0 else 1):
            pairs.append(Pair(f"s{i}", f"t{i}.{j}", (f"t{i}.{j}",), f"f:{len(pairs) + 1}"))
    return pairs


def test_split_keeps_duplicates_together_and_is_deterministic():
    pairs = pairs_with_duplicates()
    train, test = split_pairs(pairs, test_fraction=0.2, seed=7)
    assert not {p.source for p in train} & {p.source for p in test}
    assert sorted(train + test, key=pairs.index) == pairs  # a partition, and each side keeps file order
    assert train == sorted(train, key=pairs.index) and test == sorted(test, key=pairs.index)
    assert round(0.2 * len(pairs)) <= len(test) <= round(0.2 * len(pairs)) + 2  # whole groups: may go over
    assert split_pairs(pairs, test_fraction=0.2, seed=7) == (train, test)
    assert split_pairs(pairs, test_fraction=0.2, seed=8) != (train, test)
    by_size = split_pairs(pairs, test_size=10, seed=7, key=lambda p: p.target)  # no duplicates by target
    assert len(by_size[1]) == 10


def test_split_arguments_are_checked():
    pairs = pairs_with_duplicates()
    with pytest.raises(LmforgeError, match="exactly one"):
        split_pairs(pairs)
    with pytest.raises(LmforgeError, match="between 0 and 1"):
        split_pairs(pairs, test_fraction=1.5)
    with pytest.raises(LmforgeError, match="leaves a side empty"):
        split_pairs(pairs, test_size=len(pairs))
    same = [Pair("s", f"t{i}", (f"t{i}",), "f:1") for i in range(5)]
    with pytest.raises(LmforgeError, match="nothing is left to train"):
        split_pairs(same, test_size=1)


def test_shared_corpora_read_as_documented(shared_data):
    translation = shared_data / "translation"
    assert len(read_pairs(translation / "multi30k" / "test_2016_flickr", "de", "en")) == 1000
    assert (
        len(
            read_pairs(translation / "wmt22" / "general-test.jsonl.gz", "src", "tgr", where={"type": "zh2en"})
        )
        == 1875
    )
    tatoeba = read_pairs(translation / "tatoeba-en-zh" / "cmn-eng.tsv.gz", "en", "zh")
    train, test = split_pairs(tatoeba, test_fraction=0.05, seed=0)
    assert len(tatoeba) == 29155 and not {p.source for p in train} & {p.source for p in test}
    dialogsum = shared_data / "summarization" / "dialogsum" / "dialogsum.test.jsonl"
    refs = read_pairs(dialogsum, "dialogue", ["summary1", "summary2", "summary3"])
    assert len(refs) == 500 and all(len(p.references) == 3 for p in refs)
