"""The library reports through the ``mudg_fast`` loggers, never print: an importing application
can silence or capture the messages; the command line shows them on stderr."""

import logging
import sys

import pytest
from shard_helpers import make_collection

import mudg_fast
from mudg_fast.build import build_index
from mudg_fast.cli import build_parser, main, show_log
from mudg_fast.pipeline import retrieve_candidates
from mudg_fast.synthetic import make_corpus

N, D, NLIST, TRAIN = 2000, 16, 8, 1000


@pytest.fixture(scope="module")
def coll(tmp_path_factory):
    return make_collection(tmp_path_factory.mktemp("logcoll"), n=N, d=D, shard_rows=1000)


@pytest.fixture(scope="module")
def small_corpus():
    corpus = make_corpus(4000, n_concepts=12, seed=1)
    index = mudg_fast.IVFIndex(corpus.dim, 16, codec="f32")
    index.train_paired(corpus.images, corpus.captions, seed=0)
    index.add(corpus.images)
    return corpus, index


@pytest.fixture
def no_tqdm(monkeypatch):
    """Without tqdm the build's plain progress line is a log message too."""
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)


@pytest.fixture
def mudg_logger_restored():
    logger = logging.getLogger("mudg_fast")
    level, handlers = logger.level, list(logger.handlers)
    yield logger
    logger.setLevel(level)
    logger.handlers[:] = handlers


def _build(coll, out, **kw):
    root = coll[0]
    return build_index(root / "img_emb", root / "text_emb", out=out, nlist=NLIST, train_size=TRAIN,
                       batch_size=500, seed=0, **kw)


def test_build_messages_are_log_records_not_prints(coll, tmp_path, no_tqdm, caplog, capsys):
    with caplog.at_level(logging.INFO, logger="mudg_fast"):
        _build(coll, tmp_path / "a.ivf", progress=True)
    err = capsys.readouterr()
    assert err.out == "" and err.err == ""  # nothing printed: it all went to logging
    records = [r for r in caplog.records if r.name == "mudg_fast.build"]
    text = "\n".join(r.getMessage() for r in records)
    assert "memory: index" in text and "disk: index file" in text and "trained in" in text
    assert f"{N:,}/{N:,} vectors (100.0%)" in text  # the plain progress line
    assert all(r.levelno == logging.INFO for r in records)


def test_an_application_can_silence_the_build(coll, tmp_path, no_tqdm, caplog, capsys, mudg_logger_restored):
    mudg_logger_restored.setLevel(logging.WARNING)
    caplog.set_level(logging.INFO)  # the root logger would take INFO: the package's level wins
    _build(coll, tmp_path / "b.ivf", progress=True)
    assert not [r for r in caplog.records if r.name.startswith("mudg_fast")]
    assert capsys.readouterr().err == ""


def test_progress_false_logs_nothing(coll, tmp_path, caplog):
    with caplog.at_level(logging.DEBUG, logger="mudg_fast"):
        _build(coll, tmp_path / "c.ivf", progress=False)
    assert not [r for r in caplog.records if r.name.startswith("mudg_fast")]


def test_pipeline_logs_and_still_calls_the_log_callable(small_corpus, caplog, capsys):
    corpus, index = small_corpus
    seen = []
    with caplog.at_level(logging.INFO, logger="mudg_fast"):
        retrieve_candidates(index, corpus.text_encoder, corpus.concept_names[:4], m=3, n_groups=2, k=16,
                            nprobe=4, log=seen.append)
    logged = [r.getMessage() for r in caplog.records if r.name == "mudg_fast.pipeline"]
    assert logged == seen and any("unique images" in m for m in logged)
    assert capsys.readouterr().err == ""
    with pytest.raises(TypeError, match="log must be None or a callable"):
        retrieve_candidates(index, corpus.text_encoder, corpus.concept_names[:4], m=3, n_groups=2, k=16,
                            log="yes")


def test_show_log_prefixes_and_cleans_up(capsys, mudg_logger_restored):
    logger = mudg_logger_restored
    before = list(logger.handlers)
    logger.setLevel(logging.WARNING)
    with show_log("tool: ") as handler:
        assert handler in logger.handlers
        logging.getLogger("mudg_fast.build").info("hello %d", 3)
        logging.getLogger("mudg_fast.build").debug("not shown")
    logging.getLogger("mudg_fast.build").info("after the block")
    assert capsys.readouterr().err == "tool: hello 3\n"
    assert logger.handlers == before and logger.level == logging.WARNING
    with show_log("tool: ", enabled=False) as handler:
        logging.getLogger("mudg_fast.pipeline").info("hidden")
    assert handler is None and capsys.readouterr().err == ""


def test_cli_build_index_shows_the_messages(coll, tmp_path, no_tqdm, capsys, mudg_logger_restored):
    root = coll[0]
    before = list(mudg_logger_restored.handlers)
    argv = ["build-index", "--embeddings", str(root), "--captions_dir", str(root / "text_emb"),
            "--nlist", str(NLIST), "--train_size", str(TRAIN), "--batch_size", "500"]
    assert main(argv + ["--out", str(tmp_path / "d.ivf")]) == 0
    err = capsys.readouterr().err
    assert "build-index: memory: index" in err and "build-index: trained in" in err
    assert f"{N:,}/{N:,} vectors (100.0%)" in err
    assert mudg_logger_restored.handlers == before  # the CLI removes its handler afterwards
    assert main(argv + ["--out", str(tmp_path / "e.ivf"), "--no_progress"]) == 0
    assert capsys.readouterr().err == ""


def test_cli_shows_pipeline_messages_once(small_corpus, tmp_path, capsys):
    """``mudg-fast retrieve`` prints the retrieval's progress (from the pipeline logger) with the
    command's prefix, each message once."""
    corpus, index = small_corpus
    import mudg_fast.commands.retrieve as retrieve_cmd

    path = tmp_path / "s.ivf"
    index.save(path)
    names = ",".join(corpus.concept_names[:4])
    desc = tmp_path / "desc.txt"
    desc.write_text(", seen from above.\n, in the dark.\n")
    args = build_parser("retrieve").parse_args(
        ["retrieve", "--index", str(path), "--classnames", names, "--descriptors", str(desc), "--k", "16",
         "--out", str(tmp_path / "cand.parquet")])
    with show_log():
        retrieve_cmd.retrieve_from_args(args, encoder=corpus.text_encoder)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "unique images" in line]
    assert len(lines) == 1 and lines[0].startswith("[mudg-fast] ")
    assert len(err.splitlines()) == len(set(err.splitlines()))
