import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from autointerp.collect.corpora import iter_documents, stdlib_docs
from autointerp.errors import AutointerpError


def test_txt_file_is_one_document_per_paragraph(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("first paragraph\nstill first\n\nsecond\n\n\nthird one\n")
    docs = list(iter_documents(str(path)))
    assert [d for d, _ in docs] == [0, 1, 2]
    assert docs[0][1] == "first paragraph\nstill first"
    assert "second" in docs[1][1] and "third one" in docs[2][1]


def test_jsonl_reads_the_text_column_and_keeps_ids_of_empty_rows(tmp_path):
    path = tmp_path / "rows.jsonl"
    rows = [{"text": "alpha", "n": 1}, {"text": "", "n": 2}, {"text": "gamma", "n": 3}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert list(iter_documents(str(path))) == [(0, "alpha"), (2, "gamma")]
    assert list(iter_documents(str(path), start=1)) == [(2, "gamma")]


def test_parquet_with_another_text_column(tmp_path):
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"body": ["one", "two", "three"], "id": [1, 2, 3]}), path)
    assert list(iter_documents(str(path), text_column="body")) == [(0, "one"), (1, "two"), (2, "three")]


def test_missing_column_names_the_columns_there_are(tmp_path):
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"body": ["one"]}), path)
    with pytest.raises(AutointerpError, match=r"no column 'text'.*\['body'\].*`text_column`"):
        list(iter_documents(str(path)))


def test_non_text_column_is_refused(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"text": "a", "n": 1}\n')
    with pytest.raises(AutointerpError, match="holds int values"):
        list(iter_documents(str(path), text_column="n"))


def test_unknown_and_missing_files(tmp_path):
    with pytest.raises(AutointerpError, match="unknown dataset"):
        list(iter_documents(str(tmp_path / "data.xlsx")))
    with pytest.raises(AutointerpError, match="does not exist"):
        list(iter_documents(str(tmp_path / "absent.jsonl")))


def test_hub_datasets_fail_fast_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(AutointerpError, match="stdlib-docs"):
        list(iter_documents("hub:someone/some-dataset:train"))


def test_stdlib_docs_is_deterministic_prose_and_code():
    docs = list(iter_documents("stdlib-docs"))
    assert docs == list(iter_documents("stdlib-docs"))
    assert [d for d, _ in docs] == list(range(len(docs)))
    texts = [t for _, t in docs]
    from pydoc_data.topics import topics

    assert texts[: len(topics)] == [topics[k] for k in sorted(topics)]
    assert len(texts) > len(topics) + 100  # module documents follow the topics
    assert any(t.startswith("JSON (JavaScript Object Notation)") for t in texts)
    assert sum(map(len, texts)) > 800_000
    assert stdlib_docs() is stdlib_docs()
    assert list(iter_documents("stdlib-docs", start=len(docs) - 1)) == [docs[-1]]
