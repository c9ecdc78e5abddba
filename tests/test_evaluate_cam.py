"""The pointing game, dilation, focus, bars and summary of ``scripts/evaluate_cam.py``, on hand-made maps.

Every expected value is worked out by hand or by a brute-force reference; the served end-to-end run is
in ``tests/test_train.py`` (it needs a trained model behind a real TorchServe).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from camserve.analysis import localisation as loc
from camserve.errors import DataError
from scripts import evaluate_cam as ev
from tests.harness import free_port


def _brute_dilate(mask: np.ndarray, r: int) -> np.ndarray:
    """Reference: a pixel is in the dilation when some mask pixel lies within Euclidean distance r."""
    ys, xs = np.nonzero(mask)
    yy, xx = np.mgrid[0:mask.shape[0], 0:mask.shape[1]]
    if len(ys) == 0:
        return np.zeros_like(mask, dtype=bool)
    d2 = (yy[..., None] - ys) ** 2 + (xx[..., None] - xs) ** 2
    return (d2 <= r * r).any(axis=-1)


def test_disc_radius_two_has_thirteen_offsets():
    d = loc.disc(2)
    assert d.shape == (5, 5) and int(d.sum()) == 13
    assert not d[0, 0] and d[0, 2] and d[1, 1]


def test_dilate_single_pixel_grows_into_a_disc():
    mask = np.zeros((9, 9), bool)
    mask[4, 4] = True
    out = loc.dilate(mask, 2)
    assert out.sum() == 13
    assert out[4, 2] and out[2, 4] and out[3, 3] and not out[2, 2] and not out[4, 7]


def test_dilate_zero_is_identity_and_borders_do_not_wrap():
    mask = np.zeros((6, 8), bool)
    mask[0, 0] = True
    assert np.array_equal(loc.dilate(mask, 0), mask)
    out = loc.dilate(mask, 1)
    assert sorted(map(tuple, np.argwhere(out))) == [(0, 0), (0, 1), (1, 0)]
    assert not out[-1, -1] and not out[0, -1]


@pytest.mark.parametrize("radius", [1, 3, 4])
def test_dilate_matches_brute_force(radius):
    rng = np.random.default_rng(radius)
    mask = rng.random((17, 23)) < 0.04
    assert np.array_equal(loc.dilate(mask, radius), _brute_dilate(mask, radius))


def _cam_with_peak(h: int, w: int, row: int, col: int) -> np.ndarray:
    cam = np.full((h, w), 0.1, np.float32)
    cam[row, col] = 1.0
    return cam


def test_peak_of_upsampled_map_sits_on_the_hot_cell():
    # A 4x4 map upsampled to 32x32: cell (1, 2) covers rows 8-15, columns 16-23.
    up = loc.upsample_cam(_cam_with_peak(4, 4, 1, 2), 32, 32)
    row, col = loc.peak(up)
    assert 8 <= row <= 15 and 16 <= col <= 23
    assert up.shape == (32, 32) and up.max() <= 1.0


def test_pointing_game_hit_and_miss():
    cam = _cam_with_peak(4, 4, 1, 2)
    lesion = np.zeros((32, 32), bool)
    lesion[10:14, 18:22] = True  # around the hot cell's centre (11.5, 19.5)
    assert loc.pointing_game_hit(cam, lesion, 0)
    elsewhere = np.zeros((32, 32), bool)
    elsewhere[26:30, 2:6] = True
    assert not loc.pointing_game_hit(cam, elsewhere, 4)


def test_dilation_is_the_pointing_game_tolerance():
    cam = _cam_with_peak(4, 4, 1, 2)
    row, col = loc.peak(loc.upsample_cam(cam, 32, 32))
    near = np.zeros((32, 32), bool)
    near[row, col + 3] = True  # 3 px right of the peak
    assert not loc.pointing_game_hit(cam, near, 2)
    assert loc.pointing_game_hit(cam, near, 3)


def test_pointing_game_follows_the_mask_size_and_aspect():
    cam = _cam_with_peak(2, 2, 1, 0)  # bottom-left cell hot
    bottom_left = np.zeros((40, 20), bool)
    bottom_left[20:, :10] = True
    assert loc.pointing_game_hit(cam, bottom_left, 0)
    assert not loc.pointing_game_hit(cam, ~bottom_left, 0)


def test_all_zero_map_never_hits():
    assert loc.peak(np.zeros((8, 8))) is None
    assert not loc.pointing_game_hit(np.zeros((4, 4)), np.ones((16, 16), bool), 4)


def test_focus_known_answers():
    half = np.zeros((16, 16), bool)
    half[:, :8] = True
    assert loc.focus(np.ones((4, 4)), half) == pytest.approx(0.5)
    assert loc.focus(np.ones((4, 4)), np.ones((16, 16), bool)) == pytest.approx(1.0)
    assert loc.focus(np.ones((4, 4)), np.zeros((16, 16), bool)) == 0.0
    assert loc.focus(np.zeros((4, 4)), half) is None


def test_focus_of_a_map_hot_on_one_side():
    # Left column hot, right column cold: bilinear upsampling (align_corners=False) of [[1, 0]] to width 4
    # gives [1, 0.75, 0.25, 0], so the left half holds 1.75 / 2 of the energy.
    cam = np.array([[1.0, 0.0], [1.0, 0.0]])
    left = np.zeros((4, 4), bool)
    left[:, :2] = True
    assert loc.focus(cam, left) == pytest.approx(0.875)


def _records() -> list[ev.Record]:
    R = ev.Record
    return [
        R("a", "COVID", "COVID", 0.9, True, 0.8, 0.8, True, roi=True),
        R("b", "COVID", "COVID", 0.9, True, 0.6, 0.6, False, roi=True),
        R("c", "Viral_Pneumonia", "Viral_Pneumonia", 0.9, True, None, None, False, roi=True),  # no evidence
        R("d", "Viral_Pneumonia", "Viral_Pneumonia", 0.9, True, 0.9, 0.9, True, roi=True),
        R("e", "Viral_Pneumonia", "Normal", 0.6, False, 0.1, 0.1, None, roi=True),  # wrong: no pointing game
        R("f", "Normal", "Normal", 0.9, True, 0.2, 0.2, None, roi=True),
        R("g", "Normal", error="ServerUnavailable: down"),
    ]


BARS = {"min_accuracy": 0.9, "max_accuracy": 1.0, "min_pointing_game": 0.5, "min_pointing_game_per_class": 0.6,
        "min_median_focus": 0.7}


def test_summarise_counts_and_rates():
    s = ev.summarise(_records(), ["COVID", "Viral_Pneumonia"], BARS)
    assert s["n_images"] == 7 and s["n_failed"] == 1
    assert s["accuracy"] == pytest.approx(5 / 6)
    assert s["per_class_accuracy"] == {"COVID": 1.0, "Normal": 1.0, "Viral_Pneumonia": pytest.approx(2 / 3)}
    assert s["pointing_game"]["hits"] == 2 and s["pointing_game"]["n"] == 4
    assert s["pointing_game"]["rate"] == 0.5
    assert s["pointing_game"]["per_class"] == {"COVID": 0.5, "Viral_Pneumonia": 0.5}
    # correctly classified lesion images: 0.8, 0.6, 0 (no evidence), 0.9 -> median 0.7
    assert s["median_focus"] == pytest.approx(0.7)
    assert s["n_scored"] == 4 and s["n_no_evidence"] == 1
    assert s["median_focus_all_images"] == pytest.approx(0.6)  # 0.8, 0.6, 0.9, 0.1, 0.2
    assert s["focus_max_discrepancy"] == 0.0
    assert s["bars"] == {"min_accuracy": False, "max_accuracy": True, "min_pointing_game": True,
                         "min_pointing_game_per_class": False, "min_median_focus": True}


def test_only_the_given_bars_are_judged():
    s = ev.summarise(_records(), ["COVID", "Viral_Pneumonia"], {"min_median_focus": 0.71})
    assert s["bars"] == {"min_median_focus": False}
    assert ev.summarise(_records(), ["COVID"])["bars"] == {}


def test_without_roi_masks_there_is_no_focus_figure():
    recs = [ev.Record(str(i), "COVID", "COVID", 0.9, True, None, None, True) for i in range(3)]
    s = ev.summarise(recs, ["COVID"], {"min_median_focus": 0.1})
    assert s["median_focus"] is None and s["n_no_evidence"] == 0
    assert s["bars"] == {"min_median_focus": False}  # a figure that cannot be measured misses its bar


def test_bars_reject_perfect_accuracy():
    recs = [ev.Record(str(i), "COVID", "COVID", 0.9, True, 0.9, 0.9, True, roi=True) for i in range(10)]
    bars = {"min_accuracy": 0.93, "max_accuracy": 1.0, "min_pointing_game": 0.9, "min_median_focus": 0.75}
    s = ev.summarise(recs, ["COVID"], bars)
    assert s["accuracy"] == 1.0 and not s["bars"]["max_accuracy"] and s["bars"]["min_accuracy"]
    assert s["bars"]["min_pointing_game"] and s["bars"]["min_median_focus"]
    text = ev.human(s, bars)
    assert "MISSES < 1" in text and "meets >= 0.93" in text and "meets >= 0.75" in text


def test_tolerance_is_a_share_of_the_longer_side():
    assert ev.tolerance_px((128, 128), 0.03) == 4  # 3.84 rounds to 4
    assert ev.tolerance_px((200, 100), 0.03) == 6
    assert ev.tolerance_px((64, 64), 0.0) == 0


def test_bars_file_and_flags(tmp_path):
    bars = tmp_path / "bars.json"
    bars.write_text(json.dumps({"min_accuracy": 0.93, "min_median_focus": 0.75}))
    args = ev.build_parser().parse_args(["--data-dir", "d", "--model", "m", "--bars", str(bars),
                                         "--min-median-focus", "0.8"])
    assert ev.read_bars(args) == {"min_accuracy": 0.93, "min_median_focus": 0.8}  # the flag wins
    for bad in ('{"min_acuracy": 0.9}', '{"min_accuracy": 2}', "[0.9]", "not json"):
        bars.write_text(bad)
        with pytest.raises(DataError):
            ev.read_bars(args)


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit) as exc:
        ev.build_parser().parse_args(["--help"])
    assert exc.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for text in ("--dilate", "(default: 0.03)", "--roi-masks", "--lesion-masks", "--concurrency", "--check"):
        assert text in out


@pytest.mark.parametrize("argv", [
    [],
    ["--data-dir", "d"],
    ["--data-dir", "d", "--model", "m", "--dilate", "-1"],
    ["--data-dir", "d", "--model", "m", "--concurrency", "0"],
    ["--data-dir", "d", "--model", "m", "--lesion-classes", ","],
    ["--data-dir", "d", "--model", "m", "--timeout", "inf"],
    ["--data-dir", "d", "--model", "m", "--min-accuracy", "1.5"],
    ["--data-dir", "d", "--model", "m", "--explain", "saliency"],
    ["--data-dir", "d", "--model", "m", "--check"],  # nothing to check against
])
def test_bad_arguments_exit_2(argv):
    with pytest.raises(SystemExit) as exc:
        ev.main(argv)
    assert exc.value.code == 2


def test_unreachable_server_exits_2(tmp_path, capsys):
    (tmp_path / "COVID").mkdir(parents=True)
    (tmp_path / "COVID" / "x.png").write_bytes(b"not read before the server answers")
    key = tmp_path / "key_file.json"
    key.write_text(json.dumps({"inference": {"key": "k"}, "management": {"key": "m"}}))
    code = ev.main(["--data-dir", str(tmp_path), "--model", "m", "--url", f"http://127.0.0.1:{free_port()}",
                    "--token-file", str(key), "--timeout", "5"])
    assert code == 2
    assert "not reachable" in capsys.readouterr().err


def test_unknown_class_folder_and_missing_dir_are_data_errors(tmp_path):
    (tmp_path / "Pneumothorax").mkdir()
    (tmp_path / "Pneumothorax" / "a.png").write_bytes(b"x")
    with pytest.raises(DataError, match="Pneumothorax"):
        ev.list_images(tmp_path, ["COVID", "Normal"])
    with pytest.raises(DataError, match="does not exist"):
        ev.list_images(tmp_path / "nope", ["COVID"])


def test_masks_mirror_the_data_dir(tmp_path):
    (tmp_path / "m" / "COVID").mkdir(parents=True)
    (tmp_path / "m" / "COVID" / "a.png").write_bytes(b"x")
    assert ev.mask_path(tmp_path / "m", "COVID/a.png") == tmp_path / "m" / "COVID" / "a.png"
    assert ev.mask_path(tmp_path / "m", "COVID/a.jpg") == tmp_path / "m" / "COVID" / "a.png"  # same stem
    assert ev.mask_path(tmp_path / "m", "COVID/b.png") is None
    assert ev.mask_path(None, "COVID/a.png") is None
