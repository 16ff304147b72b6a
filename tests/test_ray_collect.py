"""Collection on a real local Ray cluster (no mocks): the same rows as in process, a worker killed mid-job,
an unreachable cluster. Ray is a test dependency (`make test` installs the `ray` extra): without it this module
fails to import, it never skips.
"""

import os
import signal
import socket
import subprocess
import sys

import pyarrow as pa
import pytest
import ray  # noqa: F401  (a missing Ray fails this module loudly)

import autointerp

from autointerp.cli import main
from autointerp.collect.collector import CollectConfig, collect
from autointerp.collect.ray_collect import collect_on_ray, store_shard
from autointerp.errors import AutointerpError
from autointerp.ray_cluster import require_ray
from autointerp.store import Store
from autointerp.store.activations import create_source

# 16 contexts in 8 chunks of 2: enough chunks for two workers to share and for one to die mid-job.
SMALL = dict(layer=6, dataset="stdlib-docs", tokens=512, context_len=32, batch_size=4, chunk_tokens=64)
CLI_ARGS = ["--layer", "6", "--tokens", "512", "--context-len", "32", "--batch-size", "4", "--chunk-tokens", "64"]


@pytest.fixture
def cluster(ray_cluster):
    """The session's local Ray cluster (tests/conftest.py), two CPU slots as on this machine."""
    return ray_cluster


@pytest.fixture(scope="module")
def in_process(tmp_path_factory, subject):
    """The reference: the same corpus collected in this process."""
    store = Store(tmp_path_factory.mktemp("ref") / "ref.duckdb", create=True)
    collect(store, CollectConfig(**SMALL), subject=subject, progress=False)
    return tables(store)


def tables(store):
    con = store.con
    return {
        "sources": con.execute("SELECT name, model, hookpoint, layer, feature_kind, width, context_len, config, status FROM sources").fetchall(),
        "contexts": con.execute("SELECT * FROM contexts ORDER BY source_id, context_id").fetchall(),
        "activations": con.execute("SELECT * FROM activations ORDER BY ALL").fetchall(),
        "feature_stats": con.execute("SELECT * FROM feature_stats ORDER BY ALL").fetchall(),
        "chunks": con.execute(
            "SELECT chunk_index, first_context_id, n_contexts, n_tokens, n_activations, resume_state "
            "FROM collection_chunks ORDER BY chunk_index"
        ).fetchall(),
    }


def test_ray_collection_through_the_cli_equals_the_in_process_one(cluster, in_process, tmp_path, capsys):
    db = tmp_path / "ray.duckdb"
    assert main(["collect", "--db", str(db), *CLI_ARGS, "--ray", "--ray-workers", "2"]) == 0
    assert "512 tokens in 16 contexts" in capsys.readouterr().out
    got = tables(Store(db))
    assert len(got["contexts"]) == 16 and len(got["activations"]) > 16 * 31 * 16
    assert [c[0] for c in got["chunks"]] == list(range(8))
    for name, rows in in_process.items():
        assert got[name] == rows, name


def test_a_stopped_run_resumes_and_a_worker_killed_mid_job_is_retried_without_duplicates(cluster, in_process, tmp_path):
    """Run 1 stops on chunk 4 (an error in the worker): chunks 0-3 are stored. Run 2 resumes from chunk 4 on two
    workers, one of which kills its own process on chunk 6: Ray restarts it and runs the chunk again."""
    store = Store(tmp_path / "killed.duckdb", create=True)
    cfg = CollectConfig(**SMALL)

    def stop_on_chunk_4(index):
        if index == 4:
            raise AutointerpError("stopped on purpose")

    with pytest.raises(AutointerpError, match="stopped on purpose"):
        collect_on_ray(store, cfg, workers=1, before_chunk=stop_on_chunk_4, progress=False)
    assert store.con.execute("SELECT list(chunk_index ORDER BY chunk_index) FROM collection_chunks").fetchone() == ([0, 1, 2, 3],)

    marker = tmp_path / "killed-once"

    def die_once_on_chunk_6(index):
        if index == 6 and not marker.exists():
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)

    report = collect_on_ray(store, cfg, workers=2, before_chunk=die_once_on_chunk_6, progress=False)
    assert marker.exists(), "the worker was never killed: the test proves nothing"
    assert (report.n_contexts, report.new_tokens) == (16, 512 - 4 * 64)
    con = store.con
    assert con.execute("SELECT count(*) = count(DISTINCT (feature, context_id, pos)) FROM activations").fetchone() == (True,)
    assert con.execute("SELECT count(*), count(DISTINCT context_id) FROM contexts").fetchone() == (16, 16)
    got = tables(store)
    for name, rows in in_process.items():
        assert got[name] == rows, name


def test_a_shard_goes_through_the_importers_rules_and_lands_once(tmp_path):
    """The driver's store path without Ray: a shard that breaks an import rule stores nothing; a good one
    lands; the same chunk index a second time is refused."""
    store = Store(tmp_path / "s.duckdb", create=True)
    with store.writing() as con:
        source_id = create_source(
            con, "s", model=None, hookpoint=None, layer=None, feature_kind="neurons", width=4, context_len=2, config={}
        ).source_id
    contexts = pa.table({
        "context_id": pa.array([0, 1], pa.int64()),
        "token_ids": pa.array([[1, 2], [3, 4]], pa.list_(pa.int32())),
        "tokens": [["a", "b"], ["c", "d"]],
        "document_id": pa.array([0, 0], pa.int64()),
        "doc_offset": pa.array([0, 2], pa.int32()),
    })

    def activations(pos):
        return pa.table({
            "feature": pa.array([1, 2], pa.int32()),
            "context_id": pa.array([0, 1], pa.int64()),
            "pos": pa.array(pos, pa.int16()),
            "value": pa.array([1.0, 2.0], pa.float32()),
        })

    def counts():
        return store.con.execute(
            "SELECT (SELECT count(*) FROM contexts), (SELECT count(*) FROM activations_staging), "
            "(SELECT count(*) FROM collection_chunks)"
        ).fetchone()

    cfg, resume = CollectConfig(context_len=2), {"document": 0, "offset": 4, "exhausted": False}
    with pytest.raises(AutointerpError, match=r"row 1 .*pos is past the end of its context \(2 tokens\)"):
        store_shard(store, source_id, 0, contexts, activations([0, 2]), resume, tmp_path, cfg)
    assert counts() == (0, 0, 0)
    assert store_shard(store, source_id, 0, contexts, activations([0, 1]), resume, tmp_path, cfg) == 2
    with pytest.raises(AutointerpError, match="chunk 0 of source .* is already stored"):
        store_shard(store, source_id, 0, contexts, activations([0, 1]), resume, tmp_path, cfg)
    assert counts() == (2, 2, 1)
    assert list(tmp_path.glob("*.parquet")) == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_cluster_is_one_clear_error_and_stores_nothing(tmp_path, capsys):
    address = f"127.0.0.1:{_free_port()}"
    store = Store(tmp_path / "none.duckdb", create=True)
    with pytest.raises(AutointerpError, match=r"cannot reach the Ray cluster at '127\.0\.0\.1:\d+'.*ray start --head"):
        collect_on_ray(store, CollectConfig(**SMALL), address=address, progress=False)
    assert store.con.execute("SELECT count(*) FROM sources").fetchone() == (0,)

    assert main(["collect", "--db", str(tmp_path / "cli.duckdb"), *CLI_ARGS, "--ray", address]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot reach the Ray cluster") and "Traceback" not in err
    assert "as `--ray`" in err  # the setting is named as the command's flag
    assert not (tmp_path / "cli.duckdb").exists()


def test_a_setting_the_workers_reject_is_the_same_one_error_and_stores_nothing(cluster, tmp_path):
    store = Store(tmp_path / "bad.duckdb", create=True)
    with pytest.raises(AutointerpError, match=r"layer 99 does not exist: smollm2 has layers 0\.\.29"):
        collect_on_ray(store, CollectConfig(**{**SMALL, "layer": 99}), workers=1, progress=False)
    assert store.con.execute("SELECT count(*) FROM sources").fetchone() == (0,)


def test_bad_worker_counts_are_refused(cluster, tmp_path):
    with pytest.raises(AutointerpError, match="`workers` must be at least 1"):
        collect_on_ray(Store(tmp_path / "s.duckdb", create=True), CollectConfig(**SMALL), workers=0)
    with pytest.raises(AutointerpError, match=r"`workers` \(3\) is more than the cluster's 2 CPUs"):
        collect_on_ray(Store(tmp_path / "s.duckdb", create=True), CollectConfig(**SMALL), workers=3)
    assert main(["collect", "--db", str(tmp_path / "c.duckdb"), *CLI_ARGS, "--ray-workers", "2"]) == 2
    with pytest.raises(AutointerpError, match="`workers` must be at least 1"):  # the Python API takes the Ray path
        autointerp.collect_activations(tmp_path / "api.duckdb", ray="auto", workers=0, **SMALL)


def test_ray_missing_is_an_error_that_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets when the package is absent
    with pytest.raises(AutointerpError, match=r"pip install 'autointerp\[ray\]'"):
        require_ray()


def test_the_in_process_collection_never_imports_ray(tmp_path):
    script = (
        "import sys; from autointerp.cli import main; "
        f"rc = main(['collect', '--db', {str(tmp_path / 'p.duckdb')!r}, '--layer', '6', '--tokens', '64', "
        "'--context-len', '32']); "
        "assert rc == 0, rc; assert 'ray' not in sys.modules, 'ray was imported'"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=os.getcwd())
    assert done.returncode == 0, done.stderr[-2000:]
