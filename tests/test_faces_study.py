"""The face case study end to end at a tiny size: Table 3 rows and columns, metrics, figures, resuming, the CLI, real photos."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from mem_toolkit.cli import main
from mem_toolkit.errors import DataError
from mem_toolkit.studies.faces_cli import parse_hacker_weights
from mem_toolkit.studies.faces import PRESETS, load_face_data, run_faces_study
from mem_toolkit.experiment import run_arm
from mem_toolkit.studies.face_metrics import evaluate_faces
from mem_toolkit.models import create_model, load_model
from mem_toolkit.protect import Protection

SMOKE = PRESETS["smoke"]
HACKERS = ("mem-tiny-rn", "mem-tiny-vit")
FIGURES = ("examples_mem-3.png", "examples_mem-5.png", "curves_mem-tiny-rn.png", "curves_mem-tiny-vit.png", "attention_image.png",
           "attention_text.png")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("faces")
    return out, run_faces_study(out, "synthetic", SMOKE, HACKERS, progress=False)


def test_study_writes_table_3_metrics_and_figures(study):
    out, results = study
    table = (out / "results.md").read_text()
    header = table.splitlines()[2]
    for hacker in HACKERS:
        assert f"{hacker} top-1" in header and f"{hacker} top-5" in header and f"{hacker} t2i R@1" in header
    for row in ("Clean", "MEM-3", "MEM-5", "chance", "MEM-3 trigger-only", "MEM-3 noise-only"):
        assert f"| {row} |" in table
    assert "Time per stage" in table and "protect mem-5" in table
    saved = json.loads((out / "results.json").read_text())
    assert saved["data"] == {"source": "synthetic", "people": 6, "train_photos": 12, "train_captions": 12, "test_photos": 6}
    for hacker in HACKERS:
        arms = saved["hackers"][hacker]["arms"]
        assert list(arms) == ["clean", "mem-3", "mem-5", "mem-3 trigger-only", "mem-3 noise-only"]
        metrics = arms["mem-3"]["metrics"]
        assert metrics["identification"]["n_people"] == 6 and metrics["identification"]["chance_top1"] == pytest.approx(100 / 6)
        assert {"top1", "top5", "mean_rank"} <= set(metrics["identification"])
        assert {"i2t_R@1", "t2i_R@1", "t2i_MedR"} <= set(metrics["retrieval"])
        assert metrics["retrieval_random"]["i2t_R@1"] == pytest.approx(100 / 6)
        assert arms["clean"]["history"]["epochs"][0]["epoch"] == 1
    assert len(saved["protections"]["mem-5"]["example_triggers"][0].split()) == 5
    assert set(saved["checks"]) == {f"{h}: {c}" for h in HACKERS
                                    for c in ("clean top-1 >= 5x chance (lower bound)", "MEM-3 top-1 <= 2x chance (upper bound)")}
    for figure in FIGURES:
        assert (out / "figures" / figure).stat().st_size > 5000
    assert json.loads((out / "names.json").read_text())["pseudonyms"]


def test_study_grid_gives_what_one_hacker_trained_on_its_own_gives(study, tmp_path):
    """The shared study grid changes where runs live, not what they compute: MEM-3's ResNet hacker, trained here directly
    as the study did before the grid (run_arm, then the face evaluation), has the study's metrics exactly."""
    out, results = study
    face_data = load_face_data("synthetic", SMOKE, progress=False)
    arm = Protection.load(out / "protections" / "mem-3").apply(face_data.train)
    run = run_arm("mem-3", arm, face_data.test, SMOKE.hacker_config(), tmp_path, "mem-tiny-rn", "cpu", progress=False)
    assert evaluate_faces(load_model(run.folder / "model.safetensors"), face_data) == results["hackers"]["mem-tiny-rn"]["arms"]["mem-3"]["metrics"]


def test_study_resumes_from_its_cache(study):
    out, results = study
    # an interrupted run: one hacker saved its model but never recorded its finish nor its evaluation (it is reread,
    # not retrained), and one protection is gone (its resume state went with the finished save, so it is redone, identically)
    unfinished = out / "hackers" / "mem-tiny-vit" / "seed0" / "mem-5"
    (unfinished / "arm.json").write_text(json.dumps(json.loads((unfinished / "arm.json").read_text()) | {"seconds": None}))
    (unfinished / "faces_eval.json").unlink()
    weights_written = (unfinished / "model.safetensors").stat().st_mtime_ns
    (out / "protections" / "mem-5" / "protection.json").unlink()
    again = run_faces_study(out, "synthetic", SMOKE, HACKERS, progress=False)
    for hacker in HACKERS:
        for arm, saved in results["hackers"][hacker]["arms"].items():
            assert again["hackers"][hacker]["arms"][arm]["metrics"] == saved["metrics"], (hacker, arm)
    assert again["stage_seconds"]["hacker mem-tiny-rn clean"] == results["stage_seconds"]["hacker mem-tiny-rn clean"]  # reread, not retrained
    assert (unfinished / "model.safetensors").stat().st_mtime_ns == weights_written
    assert again["protections"]["mem-5"]["example_triggers"] == results["protections"]["mem-5"]["example_triggers"]
    assert Protection.load(out / "protections" / "mem-5").config["trigger_len"] == 5


def test_study_refuses_another_setting_in_the_same_folder(study):
    out, _ = study
    with pytest.raises(ValueError, match="preset"):
        run_faces_study(out, "synthetic", replace(SMOKE, hacker_epochs=2), HACKERS, progress=False)


def test_more_seeds_add_runs_to_the_same_study_and_tables_print_intervals(study, tmp_path):
    """Seed 0's runs are reread from the study; seed 1 trains anew; the checks use the interval's bounds."""
    out, results = study
    again = run_faces_study(out, "synthetic", SMOKE, ("mem-tiny-vit",), progress=False, seeds=(0, 1))
    arms = again["hackers"]["mem-tiny-vit"]["arms"]
    assert arms["mem-3"]["metrics"] == results["hackers"]["mem-tiny-vit"]["arms"]["mem-3"]["metrics"]  # seed 0, reread
    top1 = [m["identification"]["top1"] for m in arms["mem-3"]["seed_metrics"]]
    summary = arms["mem-3"]["summary"]["identification/top1"]
    assert len(top1) == 2 and summary["values"] == top1 and summary["mean"] == pytest.approx(np.mean(top1))
    assert "over 2 hacker seeds" in again["table"]
    mem3 = arms["mem-3"]["summary"]["identification/top1"]
    assert f"{mem3['mean']:.1f} [{mem3['low']:.1f}, {mem3['high']:.1f}]" in again["table"]  # bootstrap ranges print as [low, high]
    clean = arms["clean"]["summary"]["identification/top1"]
    assert again["checks"]["mem-tiny-vit: clean top-1 >= 5x chance (lower bound)"] == (clean["low"] >= 5 * 100 / 6)


def test_bad_face_data_is_named(tmp_path):
    with pytest.raises(Exception, match="not found"):
        load_face_data(tmp_path / "missing")


def test_hacker_weights_are_parsed_per_architecture():
    assert parse_hacker_weights(["a.safetensors"], ["mem-tiny-rn"]) == {"mem-tiny-rn": "a.safetensors"}
    assert parse_hacker_weights(["mem-tiny-vit=v.safetensors"], HACKERS) == {"mem-tiny-vit": "v.safetensors"}
    with pytest.raises(ValueError, match="name the architecture"):
        parse_hacker_weights(["a.safetensors"], HACKERS)
    with pytest.raises(ValueError, match="not among"):
        parse_hacker_weights(["RN50=a.safetensors"], HACKERS)


def test_cli_fine_tunes_a_hacker_from_given_weights(tmp_path, capsys):
    weights = tmp_path / "start.safetensors"
    start = create_model("mem-tiny-rn", seed=7)
    start.save(weights)
    out = tmp_path / "study"
    code = main(["--threads", "1", "faces", "--out", str(out), "--preset", "smoke", "--hackers", "mem-tiny-rn", "--pretrained", str(weights)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| MEM-3 |" in printed and "mem-tiny-rn (fine-tuned) top-1" in printed
    saved = json.loads((out / "results.json").read_text())
    assert list(saved["hackers"]) == ["mem-tiny-rn (fine-tuned)"] and saved["hackers"]["mem-tiny-rn (fine-tuned)"]["weights"] == str(weights)
    runs = [p.name for p in (out / "hackers").iterdir()]
    assert len(runs) == 1 and runs[0].startswith("mem-tiny-rn-from-")
    # the hacker started from the given weights: one epoch moved it only a little away from them
    trained = create_model("mem-tiny-rn", pretrained=out / "hackers" / runs[0] / "seed0" / "clean" / "model.safetensors")
    scratch = create_model("mem-tiny-rn", seed=SMOKE.hacker_config().seed)  # where a hacker from scratch would start
    distance = lambda a, b: sum(float((p - q).detach().norm()) for p, q in zip(a.parameters(), b.parameters()))  # noqa: E731
    assert distance(trained, start) < distance(trained, scratch) / 2


def test_cli_reports_bad_input(tmp_path, capsys):
    assert main(["faces", "--out", str(tmp_path / "o"), "--data", str(tmp_path / "nowhere")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["faces", "--out", str(tmp_path / "o"), "--pretrained", "x.safetensors"]) == 2
    assert "name the architecture" in capsys.readouterr().err
    assert main(["faces", "--out", str(tmp_path / "o2"), "--preset", "huge"]) == 2
    assert "unknown preset" in capsys.readouterr().err
    for setting, problem in (("epz=4", "not a protection setting"), ("eps", "not KEY=VALUE"), ("eps=500", "eps is in 1/255 units")):
        assert main(["faces", "--out", str(tmp_path / "o3"), "--preset", "smoke", "--set", setting]) == 2
        error = capsys.readouterr().err
        assert problem in error and len(error.strip().splitlines()) == 1
    assert not (tmp_path / "o3").exists()  # refused before any work


def test_cli_settings_replace_the_presets_mem_settings(tmp_path, capsys):
    out = tmp_path / "study"
    assert main(["--threads", "1", "faces", "--out", str(out), "--preset", "smoke", "--hackers", "mem-tiny-rn",
                 "--set", "eps=4", "granularity=cluster", "n_clusters=6"]) == 0
    assert json.loads((out / "results.json").read_text())["preset"]["mem"]["eps"] == 4
    for name in ("mem-3", "mem-5"):
        protection = Protection.load(out / "protections" / name)
        assert protection.config["eps"] == 4 and protection.config["granularity"] == "cluster"
        assert protection.noise.shape[0] == 6 and np.abs(protection.noise.astype(np.int16)).max() <= 4  # one noise per cluster


@pytest.mark.slow
def test_real_face_photos_run_end_to_end(shared_data, tmp_path):
    """AT&T faces (40 people, 10 grey photos each) through the whole pipeline at a tiny budget."""
    preset = replace(SMOKE, hacker_batch_size=60, mem=dict(SMOKE.mem, batch_size=60), controls=())
    results = run_faces_study(tmp_path, shared_data / "att_faces", preset, ["mem-tiny-rn"], progress=False)
    assert results["data"]["people"] == 40 and results["data"]["test_photos"] == 40 and results["data"]["train_photos"] == 360
    arms = results["hackers"]["mem-tiny-rn"]["arms"]
    assert list(arms) == ["clean", "mem-3", "mem-5"]
    assert arms["clean"]["metrics"]["identification"]["chance_top1"] == pytest.approx(2.5)
    assert np.isfinite(arms["mem-3"]["metrics"]["retrieval"]["rsum"])
    assert (tmp_path / "figures" / "attention_image.png").stat().st_size > 5000


def test_pretrain_on_other_people_reports_fine_tuned_hackers_beside_scratch(tmp_path):
    """--pretrain-on synthetic: invented people after the study's, named apart from them, pretrain each architecture;
    the table then has each hacker from scratch and fine-tuned, and the fine-tuned one starts from those weights."""
    out = tmp_path / "study"
    results = run_faces_study(out, "synthetic", SMOKE, ("mem-tiny-rn",), progress=False, pretrain_on="synthetic",
                              surrogate_pretrained="pretrained")
    assert list(results["hackers"]) == ["mem-tiny-rn", "mem-tiny-rn (fine-tuned)"]
    pretraining = results["pretraining"]
    assert pretraining["people"] == SMOKE.pretrain_people and len(pretraining["weights"]) == 1
    weights = pretraining["weights"][0]
    assert all(p["surrogate_pretrained"] == weights for p in results["protections"].values())  # the surrogate started there too
    assert results["hackers"]["mem-tiny-rn (fine-tuned)"]["weights"] == weights and results["hackers"]["mem-tiny-rn"]["weights"] is None
    assert "mem-tiny-rn (fine-tuned) top-1" in results["table"] and "none of them in the study" in results["table"]
    assert (out / "figures" / "curves_mem-tiny-rn-fine-tuned.png").exists()
    # the study itself is the one without pretraining: same people, same split
    plain = load_face_data("synthetic", SMOKE, progress=False)
    assert json.loads((out / "study.json").read_text())["train"] == plain.train.fingerprint()
    # pretrained weights come from the other people's photos, and the fine-tuned clean hacker started there
    pretrained_history = json.loads((Path(weights).parent / "arm.json").read_text())
    assert pretrained_history["config"]["epochs"] == SMOKE.pretrain_epochs
    start = create_model("mem-tiny-rn", pretrained=weights)
    tuned = load_model(next((out / "hackers").glob("mem-tiny-rn-from-*")) / "seed0" / "clean" / "model.safetensors")
    scratch = create_model("mem-tiny-rn", seed=SMOKE.hacker_config().seed)
    distance = lambda a, b: sum(float((p - q).detach().norm()) for p, q in zip(a.parameters(), b.parameters()))  # noqa: E731
    assert distance(tuned, start) < distance(tuned, scratch) / 2


def test_pretraining_people_must_be_other_people(tmp_path):
    """A pretraining folder holding the study's own people (or their photos) is refused, naming them; exit 2 at the CLI."""
    from mem_toolkit.data.faces import generate_faces
    from mem_toolkit.data.identity import write_identity_folder

    same_people = tmp_path / "same"
    write_identity_folder(same_people, generate_faces(SMOKE.n_people, SMOKE.photos_per_person, SMOKE.image_size, SMOKE.seed), progress=False)
    with pytest.raises(DataError) as raised:
        run_faces_study(tmp_path / "study", "synthetic", SMOKE, ("mem-tiny-rn",), progress=False, pretrain_on=same_people)
    message = str(raised.value)
    assert "is also a person of the study" in message and "is the same photo as the study's" in message
    code = main(["faces", "--out", str(tmp_path / "cli"), "--preset", "smoke", "--pretrain-on", str(same_people)])
    assert code == 2
    with pytest.raises(ValueError, match="--people"):
        run_faces_study(tmp_path / "rest", same_people, SMOKE, ("mem-tiny-rn",), progress=False, pretrain_on="rest")
    with pytest.raises(ValueError, match="not both"):
        run_faces_study(tmp_path / "both", "synthetic", SMOKE, ("mem-tiny-rn",), {"mem-tiny-rn": "w.safetensors"}, progress=False,
                        pretrain_on="synthetic")
    with pytest.raises(ValueError, match="needs pretrain_on"):
        run_faces_study(tmp_path / "surrogate", "synthetic", SMOKE, ("mem-tiny-rn",), surrogate_pretrained="pretrained", progress=False)


def test_lfw_dev_study_people_and_pretraining_people_are_apart(shared_data):
    """The documented real-face input: --people N of lfw_dev's 108 people for the study, the others to pretrain on,
    with no shared person, photo or caption name."""
    from mem_toolkit.studies.face_sources import pretraining_faces, read_study_photos

    preset = SMOKE
    photos = read_study_photos(shared_data / "lfw_dev", preset.image_size, people=8, synthetic_people=preset.n_people, progress=False)
    study = photos.split(preset.seed)
    other = pretraining_faces("rest", photos, study, preset.image_size, progress=False)
    assert study.n_people == 8 and study.test.n_images == 8 and other.n_people == 108 - 8
    assert not set(study.people) & set(other.people) and not set(study.names) & set(other.names)
    assert not set(study.train.image_paths + study.test.image_paths) & set(other.train.image_paths + other.test.image_paths)
    assert all(name in caption for name, caption in zip(np.array(study.names)[study.test_identity], study.test.captions))
    # the choice of study people depends on the seed and the labels only
    again = read_study_photos(shared_data / "lfw_dev", preset.image_size, people=8, synthetic_people=preset.n_people, progress=False)
    assert again.study.people == photos.study.people
