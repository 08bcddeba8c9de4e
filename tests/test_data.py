"""qeval.data (text sources, cache, similarity data) and qeval.tasks (offline lm-eval tasks).

Unit tests use tiny data the tests write themselves and a word-level tokenizer
built offline. Tests marked ``slow`` download the gensim 4.4.0 wheel (28 MB,
once per cache) to check the real files against the recorded facts.
"""

from __future__ import annotations

import bz2
import hashlib
import json
import math
import zipfile

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from qeval.data import DataError, calibration_batches, load_text, text_spec, token_stream
from qeval.data import cache as cache_mod
from qeval.data.similarity import similarity_benchmark
from qeval.data.wiki import articles, strip_markup, wiki_text
from qeval.tasks import analogy_docs, bigbench_docs, run_lm_eval
from qeval.tasks.builders import write_task

WORDS = ("the a of to is and in it was on for as with he she they at by "
         "athens greece rome italy paris france berlin germany oslo norway big bigger small smaller "
         "cold colder fast faster old older long longer").split()


def word_tokenizer():
    vocab = {"<unk>": 0, "<pad>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="</s>")


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Every test gets an empty qeval cache (never the user's)."""
    monkeypatch.setenv("QEVAL_CACHE", str(tmp_path / "cache"))


# ---------------------------------------------------------------- wiki markup

def test_strip_markup_follows_the_documented_rules():
    raw = (
        "{{Infobox|name={{nested|x}}}}'''Rome''' is the [[capital city|capital]] of [[Italy]].<ref>Cite</ref>"
        " It has [http://example.org many] sites<ref name=a/>.<!-- hidden -->\n"
        "[[File:Rome.jpg|thumb|A [[view]] of Rome]]\n"
        "== History ==\n"
        "* Founded in ''753 BC'' &amp; grew.\n"
        "{| class=wikitable\n| cell\n|}\n"
        "[[Category:Cities]]\n"
        "== References ==\n"
        "Everything below is dropped.\n"
    )
    expected = ("Rome is the capital of Italy. It has many sites.\n\n"
                "History\nFounded in 753 BC & grew.")
    assert strip_markup(raw) == expected


REDIRECT = '<redirect title="X" />'


def _dump(pages):
    body = "".join(
        f"<page><title>{t}</title><ns>{ns}</ns>{REDIRECT if red else ''}"
        f"<revision><text xml:space=\"preserve\">{txt}</text></revision></page>"
        for t, ns, red, txt in pages
    )
    return f'<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/">{body}</mediawiki>'.encode()


def test_articles_keep_main_namespace_non_redirect_pages(tmp_path):
    xml = _dump([
        ("Redir", "0", True, "#REDIRECT [[Other]]"),
        ("Talk:Rome", "1", False, "talk page"),
        ("Rome", "0", False, "'''Rome''' is old."),
        ("Oslo", "0", False, "Oslo is [[Norway|Norwegian]]."),
    ])
    path = tmp_path / "dump"  # no suffix: compression is detected from the content
    path.write_bytes(bz2.compress(xml))
    assert [t for t, _ in articles(path)] == ["Rome", "Oslo"]
    assert wiki_text(path) == "Rome\n\nRome is old.\n\nOslo\n\nOslo is Norwegian."
    assert wiki_text(path, max_chars=8) == "Rome\n\nRo"


# ---------------------------------------------------------------- cache

def _bundle(member_bytes: bytes, sha: str | None = None, archive_sha: str | None = None, zip_bytes=None):
    return {
        "name": "fake-1.0",
        "download": {"requirement": "fake==1.0", "file": "fake-1.0.whl", "sha256": archive_sha},
        "files": {"doc": {"member": "fake/data/doc.txt", "sha256": sha or hashlib.sha256(member_bytes).hexdigest()}},
    }


def _zip_bytes(tmp_path, member_bytes: bytes) -> bytes:
    z = tmp_path / "build.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("fake/data/doc.txt", member_bytes)
    return z.read_bytes()


def test_fetch_downloads_once_verifies_and_reuses(tmp_path):
    payload = b"hello data\n"
    archive = _zip_bytes(tmp_path, payload)
    bundle = _bundle(payload, archive_sha=hashlib.sha256(archive).hexdigest())
    calls = []

    def downloader(b, dest):
        calls.append(b["download"]["requirement"])
        (dest / b["download"]["file"]).write_bytes(archive)

    first = cache_mod.fetch("fake", "doc", downloader=downloader, bundle=bundle)
    second = cache_mod.fetch("fake", "doc", downloader=downloader, bundle=bundle)
    assert first == second and first.read_bytes() == payload
    assert calls == ["fake==1.0"]  # never downloaded again
    assert str(first).startswith(str(cache_mod.cache_dir()))
    # a second file of the same archive is extracted without a download
    first.unlink()
    assert cache_mod.fetch("fake", "doc", downloader=downloader, bundle=bundle).read_bytes() == payload
    assert calls == ["fake==1.0"]
    # a damaged cached file is caught
    first.write_bytes(b"tampered")
    with pytest.raises(DataError, match="checksum mismatch"):
        cache_mod.fetch("fake", "doc", downloader=downloader, bundle=bundle)
    with pytest.raises(DataError, match="has no file 'nope'; valid: doc"):
        cache_mod.fetch("fake", "nope", downloader=downloader, bundle=bundle)


def test_fetch_rejects_wrong_checksums_and_writes_nothing(tmp_path):
    archive = _zip_bytes(tmp_path, b"payload")

    def downloader(b, dest):
        (dest / b["download"]["file"]).write_bytes(archive)

    bad_archive = _bundle(b"payload", archive_sha="0" * 64)
    with pytest.raises(DataError, match="checksum mismatch for fake-1.0.whl"):
        cache_mod.fetch("fake", "doc", downloader=downloader, bundle=bad_archive)
    assert not (cache_mod.cache_dir() / "downloads" / "fake-1.0.whl").exists()
    bad_member = _bundle(b"payload", sha="1" * 64, archive_sha=hashlib.sha256(archive).hexdigest())
    with pytest.raises(DataError, match="checksum mismatch for fake/data/doc.txt"):
        cache_mod.fetch("fake", "doc", downloader=downloader, bundle=bad_member)
    folder = cache_mod.cache_dir() / "data" / "fake-1.0"
    assert not folder.exists() or list(folder.iterdir()) == []


def test_bundle_manifests_are_complete():
    for name in ("gensim", "bigbench"):
        b = cache_mod.load_bundle(name)
        assert len(b["download"]["sha256"]) == 64
        for entry in b["files"].values():
            assert len(entry["sha256"]) == 64 and entry["member"]
    with pytest.raises(DataError, match="no data bundle 'nope'"):
        cache_mod.load_bundle("nope")


# ---------------------------------------------------------------- text sources

def test_local_txt_and_jsonl_sources(tmp_path):
    txt = tmp_path / "a.txt"
    txt.write_text("the cat sat on the mat", encoding="utf-8")
    assert load_text(str(txt)) == "the cat sat on the mat"
    assert load_text({"source": "file", "path": str(txt), "skip_chars": 4, "max_chars": 3}) == "cat"
    jl = tmp_path / "b.jsonl"
    jl.write_text(json.dumps({"text": "one"}) + "\n\n" + json.dumps({"text": "two", "id": 2}) + "\n", encoding="utf-8")
    assert load_text({"source": "file", "path": str(jl)}) == "one\n\ntwo"
    jl.write_text(json.dumps({"body": "x"}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"b.jsonl:1: no string field 'text'"):
        load_text(str(jl))


@pytest.mark.parametrize("content, message", [
    (b"", "text file is empty"),
    (b"  \n\n ", "text file is empty"),
    (b"caf\xe9 latin-1", "text file is not UTF-8"),
])
def test_bad_text_files_give_one_line_errors_naming_the_file(tmp_path, content, message):
    path = tmp_path / "data.txt"
    path.write_bytes(content)
    with pytest.raises(DataError) as err:
        load_text(str(path))
    assert str(err.value).startswith(message) and str(path) in str(err.value) and "\n" not in str(err.value)


def test_missing_file_and_bad_specs(tmp_path):
    with pytest.raises(DataError, match="text file does not exist: .*missing.txt"):
        load_text(str(tmp_path / "missing.txt"))
    with pytest.raises(ValueError, match="needs 'path'"):
        text_spec({"source": "file"})
    with pytest.raises(ValueError, match="source"):
        text_spec({"source": "wikipedia"})
    with pytest.raises(ValueError, match="extra|not permitted"):
        text_spec({"source": "gensim-lee", "max_char": 5})
    assert text_spec("gensim-wiki").source == "gensim-wiki"


def test_token_stream_equals_tokenizing_the_whole_text():
    tok = word_tokenizer()
    text = " ".join(WORDS[i * 7 % len(WORDS)] for i in range(6000))  # ~30k chars: exercises prefix doubling
    full = tok(text, add_special_tokens=False)["input_ids"]
    for n in (1, 100, 1000, 2500, 5999, 6000):
        got = token_stream(tok, text, n)
        assert got.dtype == torch.long and got.tolist() == full[:n]
    assert token_stream(tok, text, 10**6).tolist() == full
    assert token_stream(tok, text).tolist() == full


def test_calibration_batches_are_consecutive_pieces(tmp_path):
    tok = word_tokenizer()
    path = tmp_path / "calib.txt"
    path.write_text(" ".join(WORDS * 20), encoding="utf-8")
    batches = calibration_batches(tok, str(path), n_batches=3, seq_len=16, batch_size=2)
    assert len(batches) == 3 and all(b.shape == (2, 16) and b.dtype == torch.long for b in batches)
    stream = tok(" ".join(WORDS * 20), add_special_tokens=False)["input_ids"]
    assert torch.cat([b.reshape(-1) for b in batches]).tolist() == stream[: 3 * 2 * 16]
    with pytest.raises(DataError, match=f"has {len(WORDS) * 20} tokens; 100 batches x 1 x 16 need 1600"):
        calibration_batches(tok, str(path), n_batches=100, seq_len=16)


# ---------------------------------------------------------------- similarity data

def test_similarity_benchmark_takes_the_upper_triangle(tmp_path, monkeypatch):
    docs = tmp_path / "lee"
    docs.write_bytes("doc zero\ndoc one caf\xe9\ndoc two\n".encode("latin-1"))
    sims = tmp_path / "sims"
    sims.write_text("1 0.1 0.2\n0 1 0.3\n0 0 1\n", encoding="ascii")
    monkeypatch.setattr(cache_mod, "fetch", lambda bundle, key: {"lee": docs, "lee_similarities": sims}[key])
    b = similarity_benchmark("lee")
    assert b.texts == ["doc zero", "doc one caf\u00e9", "doc two"]
    assert b.pairs == [(0, 1), (0, 2), (1, 2)] and b.scores == [0.1, 0.2, 0.3]
    assert b.text_pairs()[2] == ("doc one caf\u00e9", "doc two")
    assert similarity_benchmark("lee", max_pairs=2).scores == [0.1, 0.2]
    with pytest.raises(DataError, match="unknown similarity benchmark"):
        similarity_benchmark("stsb")


# ---------------------------------------------------------------- offline tasks

ANALOGY = """: capital
Athens Greece Rome Italy
Athens Greece Paris France
Rome Italy Berlin Germany
Paris France Oslo Norway
Berlin Germany Athens Greece
Oslo Norway Rome Italy
: comparative
big bigger cold colder
big bigger fast faster
small smaller big bigger
cold colder small smaller
fast faster cold colder
old older long longer
long longer old older
""".splitlines()


def test_analogy_docs_are_valid_and_seeded():
    docs = analogy_docs(ANALOGY, seed=0)
    questions = [line.split() for line in ANALOGY if line and not line.startswith(":")]
    assert len(docs) == len(questions)
    answers = {"capital": {"Italy", "France", "Germany", "Norway", "Greece"},
               "comparative": {"colder", "faster", "bigger", "smaller", "older", "longer"}}
    seen = set()
    for doc in docs:
        a, b, c = doc["query"].removesuffix(" is to").replace(" is to ", " ").replace(" as ", " ").split()
        d = next(q[3] for q in questions if q[:3] == [a, b, c])
        seen.add((a, b, c))
        assert doc["choices"][doc["gold"]] == d
        assert len(doc["choices"]) == 4 and len(set(doc["choices"])) == 4
        distractors = set(doc["choices"]) - {d}
        assert distractors <= answers[doc["section"]] and not distractors & {a, b, c}
    assert len(seen) == len(questions)
    assert analogy_docs(ANALOGY, seed=0) == docs
    assert analogy_docs(ANALOGY, seed=1) != docs
    with pytest.raises(DataError, match="line 2"):
        analogy_docs([": s", "too few words"], seed=0)


def test_bigbench_docs_use_the_task_prefixes():
    task = {"task_prefix": "Judge:", "example_output_prefix": "\nAnswer: ",
            "examples": [{"input": "Is it? ", "target_scores": {"yes": 0, "no": 1}},
                         {"input": "free text", "target": "x"}]}
    assert bigbench_docs(task) == [{"query": "Judge:\nQ: Is it?\nAnswer:", "choices": ["yes", "no"], "gold": 1, "id": 0}]


def _choice_logprob(model, ctx, cont):
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].double(), -1)
    return sum(logp[len(ctx) + i - 1, t].item() for i, t in enumerate(cont))


def test_run_lm_eval_scores_like_an_independent_loglikelihood(tmp_path):
    torch.manual_seed(0)
    tok = word_tokenizer()
    cfg = LlamaConfig(vocab_size=len(WORDS) + 3, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      pad_token_id=1, eos_token_id=2, bos_token_id=2)
    model = LlamaForCausalLM(cfg).eval()
    docs = [dict(d, query=d["query"].lower(), choices=[c.lower() for c in d["choices"]])
            for d in analogy_docs(ANALOGY, seed=0)]
    built = write_task("tiny_analogy", docs, seed=0)
    limit = 8
    result = run_lm_eval(model, tok, [built], limit=limit, batch_size=4, seed=0)
    r = result["tiny_analogy"]
    # independent: argmax over summed log-probs of each choice after the query; lm-eval
    # prepends the EOS token as the first context token when the model has no BOS
    hits, hits_norm = [], []
    for doc in docs[:limit]:
        ctx = [tok.eos_token_id] + tok(doc["query"], add_special_tokens=False)["input_ids"]
        lls = [_choice_logprob(model, ctx, tok(" " + c, add_special_tokens=False)["input_ids"]) for c in doc["choices"]]
        hits.append(max(range(4), key=lambda i: lls[i]) == doc["gold"])
        norm = [ll / len(" " + c) for ll, c in zip(lls, doc["choices"])]
        hits_norm.append(max(range(4), key=lambda i: norm[i]) == doc["gold"])
    acc = sum(hits) / limit
    assert r["n"] == limit
    assert r["acc"] == pytest.approx(acc, abs=1e-12)
    assert r["acc_norm"] == pytest.approx(sum(hits_norm) / limit, abs=1e-12)
    assert r["stderr"] == pytest.approx(math.sqrt(acc * (1 - acc) / (limit - 1)), rel=1e-9)
    assert run_lm_eval(model, tok, [built], limit=limit, batch_size=2, seed=0) == result


def _tiny_lm():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(WORDS) + 3, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      pad_token_id=1, eos_token_id=2, bos_token_id=2)
    return LlamaForCausalLM(cfg).eval(), word_tokenizer()


def test_task_options_reach_lm_eval_unchanged_and_its_block_is_kept(monkeypatch):
    """A recipe task's lm-eval options arrive in simple_evaluate as given; lm-eval's own
    result block (its "acc,none" layout, config, version, n-shot) and samples come back."""
    import lm_eval

    import qeval.tasks.harness as harness
    from qeval.evaluate.tasks import evaluate_tasks
    from qeval.pipeline.recipe import TaskSpec

    model, tok = _tiny_lm()
    docs = [dict(d, query=d["query"].lower(), choices=[c.lower() for c in d["choices"]])
            for d in analogy_docs(ANALOGY, seed=0)]
    built = write_task("tiny_opts", docs, seed=0)
    monkeypatch.setitem(harness.BUILDERS, "tiny_opts", lambda seed: built)
    seen = {}
    real = lm_eval.simple_evaluate

    def spy(**kwargs):
        seen.update(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(lm_eval, "simple_evaluate", spy)
    spec = TaskSpec(name="tiny_opts", limit=3, batch_size=3, num_fewshot=1, log_samples=True,
                    system_instruction="answer .", lm_eval_args={"bootstrap_iters": 0})
    res = evaluate_tasks(model, tok, [spec], seed=0)["tiny_opts"]
    assert seen["num_fewshot"] == 1 and seen["log_samples"] is True and seen["bootstrap_iters"] == 0
    assert seen["system_instruction"] == "answer ." and seen["limit"] == 3
    block = res["lm_eval"]
    assert block["results"]["acc,none"] == res["acc"]
    assert block["results"]["acc_stderr,none"] == "N/A" and res["stderr"] is None  # bootstrap_iters=0 took effect
    assert block["n-shot"] == 1 and block["config"]["num_fewshot"] == 1 and block["version"] is not None
    assert block["n-samples"]["effective"] == 3 and res["metric"] == "acc" and res["scores"]["acc_norm"] == res["acc_norm"]
    assert len(res["samples"]) == 3
    context = res["samples"][0]["arguments"][0][0]
    assert context.startswith("answer .") and context.count("\n\n") == 1  # the instruction, one shot, the query
    json.dumps(res)  # results.json can hold it


def test_lm_eval_progress_bars_show_unless_quiet(capfd):
    model, tok = _tiny_lm()
    docs = [dict(d, query=d["query"].lower(), choices=[c.lower() for c in d["choices"]])
            for d in analogy_docs(ANALOGY, seed=0)]
    built = write_task("tiny_bars", docs, seed=0)
    loud = run_lm_eval(model, tok, [built], limit=2, batch_size=2, quiet=False)
    assert "Running loglikelihood requests" in capfd.readouterr().err
    assert run_lm_eval(model, tok, [built], limit=2, batch_size=2) == loud  # quiet: same numbers, nothing shown
    assert "Running loglikelihood requests" not in capfd.readouterr().err


def test_a_generative_task_keeps_its_own_metrics(tmp_path):
    """Metrics beyond acc (exact_match of a generate_until task) are carried through."""
    import yaml

    from qeval.tasks.builders import BuiltTask

    model, tok = _tiny_lm()
    rows = [{"question": f"{a} is to {b} as {c} is to", "answer": d} for a, b, c, d in
            (ln.lower().split() for ln in ANALOGY if ln.strip() and not ln.startswith(":"))][:4]
    data = tmp_path / "gen.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    config = {"task": "qeval_tiny_gen", "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
              "test_split": "test", "output_type": "generate_until", "doc_to_text": "{{question}}",
              "doc_to_target": "{{answer}}", "generation_kwargs": {"until": ["."], "max_gen_toks": 3, "do_sample": False},
              "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}]}
    (tmp_path / "gen.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    res = run_lm_eval(model, tok, [BuiltTask("tiny_gen", "qeval_tiny_gen", tmp_path, len(rows))], batch_size=2)["tiny_gen"]
    assert res["metric"] == "exact_match" and res["scores"]["exact_match"] == res["acc"]
    assert 0.0 <= res["acc"] <= 1.0 and res["n"] == 4
    assert "exact_match,none" in res["lm_eval"]["results"] and res["lm_eval"]["config"]["output_type"] == "generate_until"


def test_task_names_route_to_our_builders_or_lm_evals_index(monkeypatch):
    import qeval.tasks.harness as harness

    made = []

    class FakeManager:  # lm-eval's real default index takes ~20 s to scan
        def __init__(self, include_path=None, include_defaults=True):
            made.append((include_path, include_defaults))
            self.all_tasks = ["hellaswag"] + [f"qeval_{n}" for n in ("tiny",)]

    import lm_eval.tasks

    monkeypatch.setattr(lm_eval.tasks, "TaskManager", FakeManager)
    built = write_task("tiny", [{"query": "q", "choices": ["a", "b"], "gold": 0}], seed=0)
    _, names = harness.prepare_tasks([built])
    assert names == {"tiny": "qeval_tiny"} and made[-1] == ([str(built.folder)], False)
    _, names = harness.prepare_tasks([built, "hellaswag"])
    assert names == {"tiny": "qeval_tiny", "hellaswag": "hellaswag"} and made[-1][1] is True
    with pytest.raises(ValueError, match="unknown lm-eval task.*no_such_task; offline tasks: .*word_analogy"):
        harness.prepare_tasks(["no_such_task"])


# ---------------------------------------------------------------- real gensim data (download)

@pytest.mark.slow
def test_real_gensim_bundle_matches_the_recorded_facts(tmp_path, monkeypatch):
    import os

    # share one download across runs: the real cache if it has the wheel, else the tmp cache
    real = os.path.join(os.path.expanduser("~"), ".cache", "qeval")
    monkeypatch.setenv("QEVAL_CACHE", os.environ.get("QEVAL_TEST_CACHE", real))
    from qeval.data.text import lee_documents
    from qeval.tasks.builders import build_word_analogy

    assert len(lee_documents(background=True)) == 300
    b = similarity_benchmark()
    assert len(b.texts) == 50 and len(b.pairs) == 1225 and all(0 <= s <= 1 for s in b.scores)
    built = build_word_analogy(seed=0)
    assert built.n_docs == 19544
    sections = {json.loads(line)["section"] for line in open(built.folder / "word_analogy.jsonl")}
    assert len(sections) == 14
    wiki = load_text({"source": "gensim-wiki", "max_chars": 300_000})
    assert len(wiki) == 300_000 and wiki.startswith("Anarchism\n\nAnarchism is a political philosophy")
    for markup in ("[[", "]]", "{{", "}}", "<ref", "'''"):
        assert markup not in wiki
    assert load_text({"source": "gensim-wiki", "max_chars": 300_000}) == wiki  # deterministic
