"""`steerlab vector fit` and `steerlab steer` end to end on the embedded model."""

import json

import pytest
import torch

from steerlab.cli import main
from steerlab.steering.generate import generate
from steerlab.steering.vectors import SteeringVector, fit_vector

PAIRS = [
    {"prompt": "How was the film?", "positive": "It was wonderful, I loved it.",
     "negative": "It was awful, I hated it."},
    {"prompt": "How is the weather?", "positive": "Lovely and sunny, a great day.",
     "negative": "Miserable and grey, a terrible day."},
    {"prompt": "How was dinner?", "positive": "Delicious, the best meal in ages.",
     "negative": "Disgusting, the worst meal in ages."},
    {"prompt": "How do you feel?", "positive": "Happy and full of energy.",
     "negative": "Sad and completely drained."},
]  # fmt: skip


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # greedy decoding is many small ops; on a shared 2-core machine one thread is far faster
    # (see tests/steering/conftest.py)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in PAIRS))
    return p


def test_vector_fit_then_steer(tmp_path, capsys, model, pairs_file):
    out = tmp_path / "vec"
    rc = main(["vector", "fit", "--pairs", str(pairs_file), "--sites", "resid_post.3,resid_post.5",
               "--chat", "--out", str(out)])  # fmt: skip
    assert rc == 0
    sv = SteeringVector.load(out)
    ref = fit_vector(model, str(pairs_file), "resid_post.3,resid_post.5", chat=True)
    # the same fit through the CLI and the library, on the same machine: bit-identical
    torch.testing.assert_close(sv.directions, ref.directions, atol=0, rtol=0)
    assert sv.layers == (3, 5) and "wrote" in capsys.readouterr().out

    prompt = "Describe your morning."
    rc = main(["steer", "--vector", str(out), "--layer", "5", "--alpha", "0.5", "--prompt", prompt,
               "--max-new-tokens", "6", "--width", "200"])  # fmt: skip
    assert rc == 0
    text = capsys.readouterr().out
    plain = generate(model, [prompt], max_new_tokens=6).texts[0]
    steered = generate(model, [prompt], sv.intervention(5, 0.5), max_new_tokens=6).texts[0]
    assert prompt in text and "alpha=0.5" in text and "resid_post.5" in text
    body = [ln for ln in text.splitlines() if " | " in ln][1:]  # skip the header row
    assert body[0].split(" | ")[0].strip() == plain.strip()
    assert body[0].split(" | ")[1].strip() == steered.strip()


def test_steer_errors_are_clear(tmp_path, capsys, pairs_file):
    sv = SteeringVector.from_direction(torch.ones(576), "resid_post.3,resid_post.5",
                                       norms=[1.0, 1.0])  # fmt: skip
    sv.save(tmp_path / "v")
    rc = main(["steer", "--vector", str(tmp_path / "v"), "--alpha", "1", "--prompt", "x"])
    assert rc == 1 and "choose one" in capsys.readouterr().err
    rc = main(["steer", "--vector", str(tmp_path / "nothing"), "--alpha", "1", "--prompt", "x"])
    assert rc == 1 and "cfg.json" in capsys.readouterr().err
    wide = SteeringVector.from_direction(torch.ones(64), "resid_post.3", norms=[1.0])
    wide.save(tmp_path / "w")
    rc = main(["steer", "--vector", str(tmp_path / "w"), "--alpha", "1", "--prompt", "x"])
    assert rc == 1 and "width" in capsys.readouterr().err
    rc = main(["vector", "fit", "--pairs", str(tmp_path / "missing.jsonl"), "--sites",
               "resid_post.3", "--out", str(tmp_path / "o")])  # fmt: skip
    assert rc == 1 and "no such file" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("argv", [["steer", "--help"], ["vector", "fit", "--help"]])
def test_help(argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0
