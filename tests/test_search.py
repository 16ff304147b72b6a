"""Search on a small labeled catalog: BM25 keyword hits, semantic synonyms, hybrid, filters inside the
ranking, pagination, hostile queries, incremental updates, index files and their recovery, and the
recall of the HNSW index against exact cosine."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from autointerp import catalog, search as search_module
from autointerp.cli import main as cli
from autointerp.embeddings import EMBEDDING_DIM
from autointerp.errors import AutointerpError
from autointerp.records import Explanation, Score
from autointerp.search import SearchFilters, SearchIndex, search
from autointerp.store import Store
from autointerp.store import catalog_queries as q
from autointerp import vector_index
from autointerp.vector_index import VectorIndex
from catalog_fixtures import FEATURES_A, FEATURES_B, HOSTILE_LABEL, SOURCE_A, SOURCE_B, catalog_copy

INJECTION = "'; DROP TABLE explanations; --"


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    return catalog_copy(tmp_path_factory.mktemp("search"))


@pytest.fixture(scope="module")
def con(db):
    with Store(db, read_only=True) as store:
        yield store.con


@pytest.fixture(scope="module")
def index(con):
    built = SearchIndex()
    built.build(con)
    return built


def labels(results) -> list[str]:
    return [h.label for h in results.hits]


def test_keyword_finds_exact_words_with_stemming(con, index):
    # both of feature 8's labels match; the hit is its best-matching one (the shorter label scores higher)
    assert labels(search(con, index, "kettle", mode="keyword")) == ["kitchen kettle"]
    assert labels(search(con, index, "teapots", mode="keyword")) == ["kettles and teapots"]
    assert labels(search(con, index, "brackets", mode="keyword"))[0] == "closing brackets and parentheses"
    assert labels(search(con, index, "lake", mode="keyword")) == ["rivers lakes and streams"]  # lakes -> lake
    assert search(con, index, "canine", mode="keyword").hits == []  # no shared word
    assert search(con, index, "the and of", mode="keyword").hits == []  # stopwords only


def test_keyword_ranking_matches_duckdb_match_bm25(con, index):
    fts = q.open_fts_database()
    q.build_fts_index(fts, q.label_texts(con))
    for query in ("dogs puppies", "stock market", "loops code range", "and streams", "kettles"):
        ours = index.keyword(query, 50)
        reference = q.fts_match_bm25(fts, query, 50)
        assert [int(i) for i in ours[0]] == [r[0] for r in reference]
        assert np.allclose(ours[1], [r[1] for r in reference], rtol=1e-5)


def test_semantic_finds_synonyms(con, index):
    assert labels(search(con, index, "canine", mode="semantic"))[0] == "dogs and puppies"
    assert labels(search(con, index, "feline pets", mode="semantic"))[0] == "cats and kittens"
    assert "rivers lakes and streams" in labels(search(con, index, "water flowing", mode="semantic", limit=2))
    assert labels(search(con, index, "violins and cellos", mode="semantic"))[0] == "violin"


def test_hybrid_is_the_default_and_fuses_both(con, index):
    results = search(con, index, "dogs")
    assert results.mode == "hybrid" and labels(results)[0] == "dogs and puppies"
    # a hit in both rankings outranks one found by a single ranking
    assert results.hits[0].score > results.hits[1].score
    assert labels(search(con, index, "canine"))[0] == "dogs and puppies"  # semantic alone carries it


def test_one_hit_per_feature_with_its_best_matching_label(con, index):
    hits = search(con, index, "loops", mode="keyword").hits
    assert [(h.source, h.feature) for h in hits] == [(SOURCE_A, 2)]
    results = search(con, index, "code", limit=50)
    keys = [(h.source, h.feature) for h in results.hits]
    assert len(keys) == len(set(keys)) == 12


@pytest.mark.parametrize(
    "filters, expected",
    [
        (SearchFilters(source=SOURCE_B), {(SOURCE_B, 0), (SOURCE_B, 1)}),
        (SearchFilters(layer=1), {(SOURCE_B, 0), (SOURCE_B, 1)}),
        (SearchFilters(min_score="detection:0.8"), {(SOURCE_A, 0), (SOURCE_A, 1), (SOURCE_A, 5), (SOURCE_B, 0)}),
        (SearchFilters(min_score="embedding.auroc:0.78"), {(SOURCE_A, 8)}),  # 1 - 0.40/2
    ],
)
def test_filters(con, index, filters, expected):
    for mode in ("hybrid", "semantic"):  # semantic ranks every label, so the filter alone decides the set
        hits = search(con, index, "things", mode=mode, filters=filters, limit=50).hits
        assert {(h.source, h.feature) for h in hits} == expected
    every_word = " ".join(text for _, labels in [*FEATURES_A.values(), *FEATURES_B.values()] for text, _ in labels)
    keyword = search(con, index, every_word, mode="keyword", filters=filters, limit=50).hits
    assert {(h.source, h.feature) for h in keyword} == expected


def test_density_filter_uses_feature_stats(con, index):
    all_hits = search(con, index, "words", mode="semantic", limit=50).hits
    cut = sorted(h.density for h in all_hits if h.density is not None)[len(all_hits) // 2]
    low = search(con, index, "words", mode="semantic", filters=SearchFilters(density_max=cut), limit=50).hits
    high = search(con, index, "words", mode="semantic", filters=SearchFilters(density_min=cut), limit=50).hits
    assert low and high and all(h.density <= cut for h in low) and all(h.density >= cut for h in high)


def test_review_filter(tmp_path):
    with Store(catalog_copy(tmp_path)) as store:
        with store.writing() as w:
            catalog.review_label(w, catalog.best_label(w, SOURCE_A, 0).explanation_id, "accept")
            catalog.review_label(w, catalog.best_label(w, SOURCE_A, 1).explanation_id, "reject")
        index = SearchIndex()
        for state, expected in (("accepted", [(SOURCE_A, 0)]), ("rejected", [(SOURCE_A, 1)])):
            hits = search(store.con, index, "animals", filters=SearchFilters(review=state), limit=50).hits
            assert [(h.source, h.feature) for h in hits] == expected
        unreviewed = search(store.con, index, "animals", filters=SearchFilters(review="unreviewed"), limit=50).hits
        assert len(unreviewed) == 10 and (SOURCE_A, 0) not in {(h.source, h.feature) for h in unreviewed}


@pytest.mark.parametrize("mode", ["hybrid", "semantic"])
def test_pages_are_never_short_and_never_overlap(con, index, mode):
    filters = SearchFilters(source=SOURCE_A)  # removes the other source's labels from every page
    everything = search(con, index, "words", mode=mode, filters=filters, limit=50).hits
    assert len(everything) == 10
    pages = [search(con, index, "words", mode=mode, filters=filters, limit=3, offset=o).hits for o in (0, 3, 6, 9)]
    assert [len(p) for p in pages] == [3, 3, 3, 1]
    assert [h.explanation_id for p in pages for h in p] == [h.explanation_id for h in everything]


@pytest.mark.parametrize("mode", ["hybrid", "keyword", "semantic"])
@pytest.mark.parametrize("filters", [SearchFilters(source=SOURCE_B), SearchFilters(min_score="detection:0.85")])
def test_filters_run_inside_the_ranking_so_the_first_pool_fills_the_page(con, index, monkeypatch, mode, filters):
    monkeypatch.setattr(search_module, "MIN_CANDIDATES", 1)
    monkeypatch.setattr(search_module, "CANDIDATES_PER_RESULT", 1)
    pools = []
    real = index.ranker

    def counting_ranker(query, mode, allowed=None):
        rank = real(query, mode, allowed)
        return lambda k: pools.append(k) or rank(k)

    monkeypatch.setattr(index, "ranker", counting_ranker)
    query = "kitchen kettle teapots cats"  # feature 8's labels rank first but fail both filters
    results = search(con, index, query, mode=mode, filters=filters, limit=1)
    assert [(h.source, h.feature) for h in results.hits] == [(SOURCE_B, 0)]
    assert pools == [1]  # the best allowed label came first: nothing was fetched only to be dropped


@pytest.mark.parametrize("mode", ["hybrid", "keyword", "semantic"])
@pytest.mark.parametrize("query", [INJECTION, '"dog" OR 1=1', "dog's", "%", "\\", "*", "a' AND match_bm25(", "😀 dogs"])
def test_hostile_queries_are_only_text(db, con, index, mode, query):
    before = con.execute("SELECT count(*) FROM explanations").fetchone()[0]
    results = search(con, index, query, mode=mode, limit=5)
    if mode != "keyword":
        assert results.hits  # the semantic side always ranks something
    assert con.execute("SELECT count(*) FROM explanations").fetchone()[0] == before == 14


def test_hostile_filters_are_only_values(con, index):
    with pytest.raises(AutointerpError, match="unknown source"):
        search(con, index, "dogs", filters=SearchFilters(source=INJECTION, model=INJECTION))
    with pytest.raises(AutointerpError, match="no source matches model"):
        search(con, index, "dogs", filters=SearchFilters(model=INJECTION))
    with pytest.raises(AutointerpError, match="min-score wants"):
        search(con, index, "dogs", filters=SearchFilters(min_score=INJECTION))
    with pytest.raises(AutointerpError, match="no test scores from scorer"):
        search(con, index, "dogs", filters=SearchFilters(min_score=f"{INJECTION}:0.5"))
    hits = search(con, index, "markup injection", mode="keyword").hits
    assert hits[0].label == HOSTILE_LABEL


def test_bad_arguments_say_what_to_do(con, index):
    with pytest.raises(AutointerpError, match="unknown search mode"):
        search(con, index, "x", mode="fuzzy")
    with pytest.raises(AutointerpError, match="unknown review state"):
        search(con, index, "x", filters=SearchFilters(review="pending"))
    with pytest.raises(AutointerpError, match="limit must be"):
        search(con, index, "x", limit=0)


@pytest.mark.parametrize("query", ["", "dogs"])
@pytest.mark.parametrize(
    "filters, message",
    [
        (SearchFilters(source="toy-L9"), "unknown source 'toy-L9'; known sources: toy-L0, toy-L1"),
        (SearchFilters(model="toy", layer=0, source=SOURCE_B), "no source matches source 'toy-L1', model 'toy', layer 0"),
        (SearchFilters(min_score="detecton:0.5"), "no test scores from scorer 'detecton'"),
        (SearchFilters(min_score="detection.auroc:0.5"), "scorer 'detection' has no 'auroc' scores in this store"),
        (SearchFilters(density_min=0.5, density_max=0.1), "density range is inverted"),
        (SearchFilters(density_max=5.0), "a density bound is a fraction of tokens, between 0 and 1, not 5.0"),
    ],
)
def test_filters_that_match_nothing_by_mistake_are_errors(con, index, query, filters, message):
    with pytest.raises(AutointerpError, match=message.replace("(", r"\(")):
        search(con, index, query, filters=filters)


def test_min_score_counts_only_reliable_scores(tmp_path):
    with Store(catalog_copy(tmp_path)) as store:
        shaky = Score("detection", "balanced_accuracy", 0.99, 0.5, 1.0, 2, details={"n_unparsed": 18})
        with store.writing() as w:
            catalog.write_label(w, Explanation(SOURCE_B, 1, "money words"), [shaky], run_id=None, config_hash=None,
                                sampling_config=None, seed=None)
        for query in ("", "money"):
            hits = search(store.con, SearchIndex(), query, filters=SearchFilters(min_score="detection:0.95")).hits
            assert hits == []


def test_empty_query_lists_each_features_best_label(tmp_path):
    with Store(catalog_copy(tmp_path)) as store:
        with store.writing() as w:  # newer, but lower on the score both labels hold
            catalog.write_label(w, Explanation(SOURCE_B, 1, "newer and worse"),
                                [Score("detection", "balanced_accuracy", 0.5, 0.4, 0.6, 40)],
                                run_id=None, config_hash=None, sampling_config=None, seed=None)
        hits = search(store.con, SearchIndex(), "", filters=SearchFilters(source=SOURCE_B)).hits
        assert [h.label for h in hits] == ["cats and kittens", "banks and money deposits"]
        assert [h.label for h in hits] == [catalog.best_label(store.con, SOURCE_B, f).label for f in (0, 1)]


def test_empty_query_lists_labeled_features(con):
    index = SearchIndex()
    results = search(con, index, "", limit=50)
    assert len(results.hits) == 12 and index.version is None  # listing needs no index
    assert [(h.source, h.feature) for h in results.hits][:2] == [(SOURCE_A, 0), (SOURCE_A, 1)]


def write(store, source, feature, text) -> int:
    with store.writing() as w:
        return catalog.write_label(w, Explanation(source, feature, text), [], run_id=None, config_hash=None,
                                   sampling_config=None, seed=None)


def test_index_goes_stale_on_new_labels_and_refresh_finds_them(tmp_path):
    with Store(catalog_copy(tmp_path)) as store:
        index = SearchIndex()
        index.build(store.con)
        assert not index.is_stale(store.con) and index.build_seconds > 0
        write(store, SOURCE_B, 1, "harpsichord recitals")
        assert index.is_stale(store.con)
        stale = search(store.con, index, "harpsichord", mode="keyword")
        assert stale.stale and stale.hits == []
        assert index.refresh(store.con, min_interval_factor=1e9) is False  # too soon after the last build
        assert index.refresh(store.con) is True
        fresh = search(store.con, index, "harpsichord", mode="keyword")
        assert not fresh.stale and labels(fresh) == ["harpsichord recitals"]


def test_update_adds_new_labels_and_drops_deleted_ones_without_a_rebuild(tmp_path):
    from autointerp.store import inventory_queries

    with Store(catalog_copy(tmp_path)) as store:
        index = SearchIndex()
        index.build(store.con)
        builds = index.built_at
        new = write(store, SOURCE_B, 1, "harpsichord recitals")
        assert index.update(store.con) == 2  # its text and its embedding
        assert index.built_at == builds and index.n_labels == 15
        assert labels(search(store.con, index, "harpsichord", mode="keyword")) == ["harpsichord recitals"]
        assert labels(search(store.con, index, "baroque keyboard concert", mode="semantic", limit=1)) == [
            "harpsichord recitals"]
        assert index.update(store.con) == 0  # nothing changed: nothing to do
        dog = catalog.best_label(store.con, SOURCE_A, 0).explanation_id
        with store.writing() as w:
            inventory_queries.delete_explanations(w, [new, dog])
        assert index.update(store.con) == 4
        assert index.n_labels == 13 and index.built_at == builds
        for mode in ("keyword", "semantic", "hybrid"):
            found = {h.explanation_id for h in search(store.con, index, "harpsichord dogs puppies", mode=mode,
                                                      limit=50).hits}
            assert dog not in found and new not in found
        assert search(store.con, index, "harpsichord", mode="keyword").hits == []
        assert len(search(store.con, index, "harpsichord", mode="semantic", limit=50).hits) == 11  # features left


def test_labels_committed_out_of_id_order_are_found(tmp_path):
    """A label whose id is below the highest indexed one (a slower writer committing late) still gets in."""
    with Store(catalog_copy(tmp_path)) as store:
        index = SearchIndex()
        index.build(store.con)
        late = write(store, SOURCE_B, 1, "harpsichord recitals")
        index._keyword.remove(np.array([late]))  # as if the index had looked before that label committed
        index._vectors.remove(np.array([late]))
        index._label_max = index._vector_max = late + 10
        write(store, SOURCE_B, 0, "lute songs")
        index.update(store.con)
        assert labels(search(store.con, index, "harpsichord", mode="keyword")) == ["harpsichord recitals"]
        assert "harpsichord recitals" in labels(search(store.con, index, "harpsichord", mode="semantic"))


def test_index_files_beside_the_store_are_reused_and_rebuilt_when_damaged(tmp_path, caplog):
    db = catalog_copy(tmp_path)
    folder = db.with_name(db.name + ".search")
    with Store(db) as store:
        first = SearchIndex()
        first.build(store.con)
        assert (folder / "manifest.json").exists()
        write(store, SOURCE_B, 1, "harpsichord recitals")
        opened = SearchIndex()
        opened.open(store.con)  # reads the files, then catches up with the new label
        assert opened.loaded_from == folder and opened.n_labels == 15
        assert labels(search(store.con, opened, "harpsichord", mode="keyword")) == ["harpsichord recitals"]
        manifest = json.loads((folder / "manifest.json").read_text())
        graph = folder / manifest["generation"] / "vectors.f16"
        graph.write_bytes(b"not an index" + graph.read_bytes()[12:])
        damaged = SearchIndex()
        damaged.open(store.con)
        assert damaged.loaded_from is None and "damaged" in caplog.text  # rebuilt from the store
        assert labels(search(store.con, damaged, "harpsichord", mode="keyword")) == ["harpsichord recitals"]
        shutil.rmtree(folder)
        gone = SearchIndex()
        assert search(store.con, gone, "canine", mode="semantic").hits[0].label == "dogs and puppies"
        assert gone.loaded_from is None and (folder / "manifest.json").exists()


def test_rebuild_indexes_writes_the_files_from_the_store(tmp_path):
    db = catalog_copy(tmp_path)
    assert search_module.rebuild_indexes(db) > 0
    with Store(db, read_only=True) as store:
        index = SearchIndex()
        index.open(store.con)
        assert index.loaded_from == db.with_name(db.name + ".search") and index.n_labels == 14
        assert search_module.rebuild_indexes(store.con) > 0


def test_semantic_recall_against_exact_cosine(monkeypatch):
    """The quantized index finds the exact cosine top 10 (recall@10 >= 0.95), filtered or not, on 3,000
    vectors; a filter allowing few labels is answered exactly."""
    monkeypatch.setattr(vector_index, "PQ_MIN", 1000)
    monkeypatch.setattr(vector_index, "TRAIN_SAMPLE", 3000)
    monkeypatch.setattr(vector_index, "ALLOWED_EXACT", 100)
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((30, EMBEDDING_DIM)).astype(np.float32)
    vectors = centers[rng.integers(0, 30, 3000)] + 0.6 * rng.standard_normal((3000, EMBEDDING_DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(1, 3001)
    index = VectorIndex.build(EMBEDDING_DIM, ids, vectors)
    assert not index.exact
    subsets = {"all": None, "30% allowed": ids[rng.random(3000) < 0.3], "40 allowed (exact path)": ids[:40]}
    recalls: dict[str, list[float]] = {name: [] for name in subsets}
    queries = centers[rng.integers(0, 30, 40)] + 0.6 * rng.standard_normal((40, EMBEDDING_DIM)).astype(np.float32)
    for query in queries:  # drawn as the labels are: a query is about something labels are about
        query /= np.linalg.norm(query)
        for name, subset in subsets.items():
            pool = ids if subset is None else subset
            exact = set(pool[np.argsort(-(vectors[pool - 1] @ query))[:10]].tolist())
            found, sims, _ = index.search(query, 10, subset)
            assert len(found) == 10 and set(found.tolist()) <= set(pool.tolist())
            assert np.allclose(sims, vectors[found - 1] @ query, atol=1e-4)
            recalls[name].append(len(exact & set(found.tolist())) / 10)
    means = {name: float(np.mean(r)) for name, r in recalls.items()}
    gone = index.search(queries[0], 5)[0]
    index.remove(gone)  # masked in place: never returned again, filtered or not
    assert not set(gone.tolist()) & set(index.search(queries[0], 50)[0].tolist())
    assert not set(gone.tolist()) & set(index.search(queries[0], 50, ids[:2000])[0].tolist())
    assert means["all"] >= 0.95 and means["30% allowed"] >= 0.95 and means["40 allowed (exact path)"] == 1.0, means


def test_cli_search(db, con, capsys):
    assert cli(["search", "--db", str(db), "canine", "--limit", "2"]) == 0
    head, first, *_ = capsys.readouterr().out.splitlines()
    assert head.split() == ["rank", "rrf", "label", "id", "feature", "·", "label"]
    dog = catalog.best_label(con, SOURCE_A, 0)
    assert first.split()[2:] == [str(dog.explanation_id), "toy-L0/0", "·", "dogs", "and", "puppies"]
    assert cli(["search", "--db", str(db), "", "--limit", "1"]) == 0
    assert capsys.readouterr().out.splitlines()[0].split() == ["rank", "label", "id", "feature", "·", "label"]
    assert cli(["search", "--db", str(db), "dogs", "--source", "toy-l0"]) == 2
    assert "unknown source 'toy-l0'" in capsys.readouterr().err
    assert cli(["search", "--db", str(db), "dogs", "--density-min", "0.3", "--density-max", "0.1"]) == 2
    assert "inverted" in capsys.readouterr().err
    assert cli(["search", "--db", str(db), "kettle", "--json", "--mode", "keyword", "--source", SOURCE_A]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["mode"] == "keyword" and [h["label"] for h in data["hits"]] == ["kitchen kettle"]
    assert cli(["search", "--db", str(db), "x", "--min-score", "nonsense"]) == 2
    assert "min-score wants" in capsys.readouterr().err


def test_keyword_updates_score_as_a_fresh_build_would(con):
    """Labels added to the delta, then deleted, then merged: scores stay those of a build over what is left."""
    from autointerp.keyword_index import KeywordIndex, tokenize

    texts = q.label_texts(con)
    first, rest = texts.slice(0, 8), texts.slice(8)
    grown = KeywordIndex.build(first)
    grown.add(tokenize(rest))
    dropped = texts.column("explanation_id").to_numpy()[[1, 9]]
    grown.remove(dropped)
    keep = ~np.isin(texts.column("explanation_id").to_numpy(), dropped)
    fresh = KeywordIndex.build(texts.filter(keep))
    for merged in (False, True):
        if merged:
            grown.merge()
        for terms in (["dog"], ["code", "loop"], ["kettl", "teapot", "market"]):
            a_ids, a_scores = grown.scores(terms)
            b_ids, b_scores = fresh.scores(terms)
            assert len(b_ids) and dict(zip(a_ids.tolist(), a_scores.tolist())) == pytest.approx(dict(zip(b_ids.tolist(), b_scores.tolist())))


def test_vectors_are_memory_mapped_from_the_index_files_and_saves_fold_in_new_rows(tmp_path):
    """A build streams the vectors into the generation's file (no staging file left) and maps it; rows added
    by an update sit in memory until the next save writes them to the file, which is then mapped instead."""
    db = catalog_copy(tmp_path)
    folder = db.with_name(db.name + ".search")
    with Store(db) as store:
        index = SearchIndex()
        index.build(store.con)
        vectors = index._vectors
        assert isinstance(vectors.base, np.memmap) and len(vectors.delta) == 0
        assert Path(vectors.base.filename).parent == index_generation(folder)
        assert not list(folder.glob("staging-*"))
        new = write(store, SOURCE_B, 1, "harpsichord recitals")
        index.update(store.con)
        assert len(vectors.delta) == 1 and len(vectors.base) == 14
        assert search(store.con, index, "baroque keyboard concert", mode="semantic", limit=1).hits[0].explanation_id == new
        index._save(store.con)
        assert len(vectors.delta) == 0 and len(vectors.base) == 15
        assert Path(vectors.base.filename).parent == index_generation(folder)
        opened = SearchIndex()
        assert opened.load_files(store.con) and isinstance(opened._vectors.base, np.memmap)
        assert search(store.con, opened, "baroque keyboard concert", mode="semantic", limit=1).hits[0].explanation_id == new


def index_generation(folder):
    return folder / json.loads((folder / "manifest.json").read_text())["generation"]


def test_quantized_index_saved_and_loaded_answers_as_before(tmp_path, monkeypatch):
    """Codes, mapped vectors and the rows added after the build survive a save and a load unchanged."""
    monkeypatch.setattr(vector_index, "PQ_MIN", 1000)
    monkeypatch.setattr(vector_index, "TRAIN_SAMPLE", 3000)
    monkeypatch.setattr(vector_index, "CHUNK", 700)  # several chunks on build, search and save
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((3200, EMBEDDING_DIM)).astype(np.float32)
    batches = [(np.arange(a, a + 500) + 1, vectors[a : a + 500]) for a in range(0, 3000, 500)]
    ids, rows = vector_index.write_rows(tmp_path / "staged.f16", iter(batches), EMBEDDING_DIM)
    built = VectorIndex.build_from_rows(EMBEDDING_DIM, ids, rows, staged=tmp_path / "staged.f16")
    built.add(np.arange(3001, 3201), vectors[3000:])
    built.remove(np.array([5, 3100]))
    assert not built.exact and len(built.delta) == 200
    for name, save in (("codes", built.save_codes), ("vectors", built.save_vectors), ("rows", built.save_rows)):
        save(tmp_path / name)
    assert (tmp_path / "staged.f16").exists()  # rows added after the build: written, not moved
    loaded = VectorIndex.load(tmp_path / "codes", tmp_path / "vectors", tmp_path / "rows", EMBEDDING_DIM)
    assert len(loaded) == 3198 and len(loaded.delta) == 0
    for query in vectors[[0, 3150, 17]]:
        for allowed in (None, np.arange(2900, 3201)):
            a_ids, a_sims, _ = built.search(query, 10, allowed)
            b_ids, b_sims, _ = loaded.search(query, 10, allowed)
            assert a_ids.tolist() == b_ids.tolist() and np.array_equal(a_sims, b_sims)
            assert 5 not in a_ids and 3100 not in a_ids
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    top = loaded.search(vectors[3150], 1)
    assert top[0].tolist() == [3151] and abs(top[1][0] - 1.0) < 1e-3 and np.allclose(
        loaded.vectors(np.array([3150])).astype(np.float32), unit[3150], atol=1e-3)
    with pytest.raises(ValueError, match="bytes"):
        VectorIndex.load(tmp_path / "codes", tmp_path / "staged.f16", tmp_path / "rows", EMBEDDING_DIM)


def test_keyword_build_in_chunks_scores_as_one_batch(con, monkeypatch):
    from autointerp import keyword_index

    texts = q.label_texts(con)
    whole = keyword_index.KeywordIndex.build(texts)
    monkeypatch.setattr(keyword_index, "BUILD_CHUNK", 3)
    chunked = keyword_index.KeywordIndex.build(texts)
    for terms in (["dog"], ["code", "loop"], ["kettl", "teapot", "market"]):
        a_ids, a_scores = chunked.scores(terms)
        b_ids, b_scores = whole.scores(terms)
        assert len(b_ids) and dict(zip(a_ids.tolist(), a_scores.tolist())) == pytest.approx(
            dict(zip(b_ids.tolist(), b_scores.tolist())))
