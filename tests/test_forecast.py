"""The forecaster (series_forecast): its two heads, causal codes, no leakage across the split or past a
forecast's origin, candle CSVs from other exchanges, the walk-forward evaluation and the doctor's verdict.

One tiny tokenizer and one tiny forecaster, trained through the command line on 800 real Bitfinex hours,
serve every test here (module-scoped)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from trainlab import forecast, scores
from trainlab.data import series
from trainlab.errors import TrainlabError
from trainlab.presets import resolve
from trainlab.tasks import series_forecast as sf

from conftest import cli, read_rows

CANDLES = Path(__file__).parent / "fixtures" / "candles"
HOURLY = CANDLES / "bitfinex_btcusd_1h.csv"
COMMON = ["--set", "train.max_seconds=null", "--set", "train.compile=false", "--set", "train.precision=fp32",
          "--set", "train.threads=1", "--set", "model.d_model=16", "--set", "train.batch_size=8",
          "--set", f"data.source={HOURLY}"]
BITSTAMP_COLUMNS = "open=BTC:open,high=BTC:high,low=BTC:low,close=BTC:close,volume=BTC:volume"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("forecast")
    tok, fc = root / "tok", root / "fc"
    cli("train", "--preset", "kronos-btc", "--run-dir", str(tok), *COMMON, "--set", "train.max_steps=3",
        "--set", "train.eval_interval=3", "--set", "series.lookback=24", "--set", "series.pred_len=8",
        "--set", "series.s1_bits=5", "--set", "series.s2_bits=5", "--set", "series.causal=true",
        "--set", "data.val_fraction=0.4", "--set", "train.sample_tokens=0")
    made = cli("train", "--preset", "kronos-btc-forecast", "--run-dir", str(fc), *COMMON, "--set", "train.max_steps=6",
        "--set", "train.eval_interval=3", "--set", f"series.tokenizer_run={tok}", "--set", "series.pred_len=8",
        "--set", "data.val_fraction=0.2", "--set", "series.test_fraction=0.2", "--set", "model.n_head=2")
    assert "(frozen, encoded causally)" in made.stdout + made.stderr
    assert "WARNING: the tokenizer" not in made.stdout + made.stderr  # it was trained causal: nothing to say
    with pytest.MonkeyPatch.context() as patch:  # a smaller calibration (on validation), kept for every test
        patch.setattr(forecast, "TEMPERATURES", (0.8, 1.2))
        patch.setattr(forecast, "CALIBRATION_ORIGINS", 40)
        patch.setattr(forecast, "SCALE_ORIGINS", 80)
        patch.setattr(forecast, "CALIBRATION_SAMPLES", 16)
        patch.setattr(forecast, "SCALE_SAMPLES", 16)
        run, task, data = forecast.load(fc)
        forecast.calibration(run, task, data, log=lambda s: None)
    return tok, fc


def _data(fc: Path, source: Path):
    run = forecast.load_run(fc)
    cfg = run.cfg.updated({"data": {"source": str(source)}, "series": {"tokenizer_run": str(fc / "tokenizer")}})
    return sf.load_data(cfg)


def test_training_logs_both_heads_and_copies_the_tokenizer(runs):
    tok, fc = runs
    rows = read_rows(fc / "metrics.jsonl")
    train = [r for r in rows if r["split"] == "train"]
    val = [r for r in rows if r["split"] == "val"]
    for r in train:  # the loss is the mean of the two cross-entropies
        assert r["loss"] == pytest.approx((r["loss_s1"] + r["loss_s2"]) / 2, abs=1e-5)
        assert 0 <= r["acc_s1"] <= 1 and 0 <= r["acc_s2"] <= 1
    assert {"loss_s1", "loss_s2", "acc_s1", "acc_s2", "ppl_s1", "ppl_s2"} <= set(val[-1])
    assert val[-1]["ppl_s1"] == pytest.approx(np.exp(val[-1]["loss_s1"]), rel=1e-6)
    copied = fc / "tokenizer" / "model.safetensors"
    assert copied.read_bytes() == (tok / "checkpoints" / "best" / "model.safetensors").read_bytes()
    saved = resolve(config_file=fc / "config.yaml").series
    assert (saved.lookback, saved.s1_bits, saved.s2_bits) == (24, 5, 5)  # from the tokenizer run
    info = json.loads((fc / "series.json").read_text())
    assert info["first_val_row"] == 480 and info["first_test_row"] == 640  # 800 rows: 60% / 20% / 20%


def test_s2_logits_depend_on_s1():
    cfg = resolve("kronos-btc-forecast", overrides=["series.s1_bits=4", "series.s2_bits=4", "model.d_model=16",
                                                    "model.n_head=2", "series.lookback=8", "series.pred_len=2"])
    cfg = cfg.updated({"model": {"seq_len": 10}})
    torch.manual_seed(0)
    model = sf.SeriesForecast.build_model(cfg).eval()
    s1, s2 = torch.randint(0, 16, (1, 10)), torch.randint(0, 16, (1, 10))
    hour, wday = torch.zeros(1, 10, dtype=torch.long), torch.zeros(1, 10, dtype=torch.long)
    with torch.no_grad():
        a1, a2 = model(s1, s2, hour, wday, torch.zeros(1, 10, dtype=torch.long))
        b1, b2 = model(s1, s2, hour, wday, torch.full((1, 10), 7))
    assert torch.equal(a1, b1)  # s1's logits do not see the next s1
    assert (a2 - b2).abs().amax(-1).min() > 1e-4  # s2's do, at every position


def test_codes_are_causal_per_candle(runs):
    tok, _ = runs
    frozen = sf.load_tokenizer(type(resolve("kronos-btc")), tok)
    rng = np.random.default_rng(0)
    window = rng.normal(0, 1, (1, 32, 6))
    later = window.copy()
    later[:, 20:] += 3.0  # every row from 20 on changes
    a1, a2 = frozen.codes(window)
    b1, b2 = frozen.codes(later)
    assert np.array_equal(a1[:, :20], b1[:, :20]) and np.array_equal(a2[:, :20], b2[:, :20])
    assert not np.array_equal(a1[:, 20:], b1[:, 20:])  # the changed rows' codes did change


def test_altering_candles_after_the_cutoff_leaves_the_training_data(runs, tmp_path):
    _, fc = runs
    lines = HOURLY.read_text().splitlines(keepends=True)  # newest first: the file's top is the future
    altered = tmp_path / "altered.csv"
    future = 1 + 800 - 480  # rows 480.. (oldest first) are lines 1 .. 320 here
    cells = [line.split(",") for line in lines[1:future]]
    altered.write_text(lines[0] + "".join(",".join(c[:2] + [str(float(v) * 3) for v in c[2:6]] + c[6:])
                                          for c in cells) + "".join(lines[future:]))
    a, b = _data(fc, HOURLY), _data(fc, altered)
    assert a.val_start == b.val_start == 480 and np.array_equal(a.train_starts, b.train_starts)
    a.encode(a.train_starts), b.encode(b.train_starts)
    for start in a.train_starts:
        assert all(np.array_equal(x, y) for x, y in zip(a.codes[int(start)], b.codes[int(start)]))
    assert not np.array_equal(a.candles.values[480:], b.candles.values[480:])


def test_a_forecast_reads_no_row_after_its_origin(runs, tmp_path):
    _, fc = runs
    oldest_first = series.read_candles(HOURLY, ["open", "high", "low", "close", "volume", "amount"])
    at = 700
    stamp = oldest_first.timestamps[at]
    lines = HOURLY.read_text().splitlines(keepends=True)
    cut = tmp_path / "cut.csv"
    cut.write_text(lines[0] + "".join(lines[1 + (799 - at):]))  # rows after `at` gone
    outs = []
    for source in (HOURLY, cut):
        out = tmp_path / source.stem
        forecast.forecast(fc, 6, source, None, stamp, 20, None, 1.0, 3, out, log=lambda s: None)
        outs.append([line.split(",") for line in (out / "forecast.csv").read_text().splitlines()])
    assert [r[2:] for r in outs[0]] == [r[2:] for r in outs[1]]  # the same numbers
    assert outs[0][0] == "step,timestamp,mean,median,q05,q10,q25,q75,q90,q95".split(",") and len(outs[0]) == 7
    assert outs[0][1][1] == oldest_first.timestamps[at + 1]  # the file's own next stamp
    assert outs[1][1][1] == "2019-06-29T23:00:00Z" == outs[0][1][1].replace(" ", "T") + ":00Z"  # stepped on


def test_forecast_command_writes_csv_and_plot(runs, tmp_path):
    _, fc = runs
    out = cli("forecast", str(fc), "--horizon", "5", "--samples", "16", "--at", "2019-06-20 10:00").stdout
    folder = fc / "forecasts" / "2019-06-20-10-00"
    assert str(folder) in out
    rows = (folder / "forecast.csv").read_text().splitlines()
    assert len(rows) == 6
    q = np.array([[float(v) for v in r.split(",")[3:]] for r in rows[1:]])  # median, q05 .. q95
    assert (np.diff(q[:, 1:], axis=1) >= 0).all() and ((q[:, 3] <= q[:, 0]) & (q[:, 0] <= q[:, 4])).all()
    assert (folder / "forecast.png").stat().st_size > 5000
    with pytest.raises(TrainlabError, match="is not a timestamp"):
        forecast.forecast(fc, 5, at="1999-01-01", samples=4, log=lambda s: None)
    window = forecast.load(fc)[2].tokenizer.s.window  # the decoder reads at most this many candles at once
    cli("forecast", str(fc), "--horizon", str(window - 1), "--samples", "2")  # the longest there is
    before = {p.name: p.stat().st_mtime_ns for p in (fc / "forecasts").rglob("*")}
    too_far = cli("forecast", str(fc), "--horizon", str(window), "--samples", "2", check=False)
    assert too_far.returncode == 2 and too_far.stderr.count("\n") == 1
    assert f"at most {window - 1} steps ahead" in too_far.stderr and "Traceback" not in too_far.stderr
    assert {p.name: p.stat().st_mtime_ns for p in (fc / "forecasts").rglob("*")} == before  # nothing written


def test_walk_forward_eval_scores_model_and_baselines_on_the_test_period(runs):
    _, fc = runs
    cli("eval", str(fc), "--samples", "16")
    result = json.loads((fc / "forecast_eval.json").read_text())
    assert list(result["horizons"]) == ["1", "6", "24"]
    info = json.loads((fc / "series.json").read_text())
    assert result["period"] == "test" and result["first_origin"] == info["first_test_timestamp"]
    assert result["season"] == 24
    cal = json.loads((fc / "calibration.json").read_text())  # chosen on validation rows, before the test rows
    assert result["temperature"] == cal["temperature"]
    for h, levels in result["interval_scale"].items():  # each interval widened by its own level's scale
        assert levels == {k: pytest.approx(cal["interval_scale"][k][int(h) - 1]) for k in ("80", "90")}
    assert info["first_val_timestamp"] <= cal["period"][0] < cal["period"][1] < info["first_test_timestamp"]
    for block in result["horizons"].values():
        rw, model = block["baselines"]["random_walk"], block["model"]
        assert rw["direction_hit"] is None and rw["crps"] == rw["mae"] and rw["coverage_80"] is None
        assert set(sf.METRICS) <= set(model) and model["mae_ci"][0] <= model["mae"] <= model["mae_ci"][1]
        assert block["baselines"]["gaussian_vol"]["mae"] == rw["mae"]
        assert {"dm_stat", "dm_p", "dm_crps_stat", "dm_crps_p"} <= set(block["tests"])
    one = result["horizons"]["24"]["baselines"]
    assert one["seasonal_naive"]["mae"] == one["random_walk"]["mae"]  # a day back at 24 steps is the last close
    values = series.read_candles(HOURLY, ["close"] + ["open", "high", "low", "volume"]).values[:, 0]
    origins = np.arange(640, 800 - 24, 3)
    assert result["origins"] == len(origins)
    expected = np.abs(values[origins + 1] - values[origins]).mean()
    assert result["horizons"]["1"]["baselines"]["random_walk"]["mae"] == pytest.approx(expected)


def test_eval_on_other_exchanges_and_layouts(runs, tmp_path):
    _, fc = runs
    lines = (CANDLES / "coinbase_btcusd_d.csv").read_text().splitlines(keepends=True)
    daily = tmp_path / "coinbase_daily_before.csv"  # the days before the run's first hour (2019-05-31 18:00)
    daily.write_text("".join(lines[:2] + [line for line in lines[2:] if line[:10] < "2019-05-31"]))
    said: list[str] = []
    forecast.walk_forward(fc, daily, samples=8, max_origins=40, log=said.append)
    result = json.loads((fc / "eval" / "coinbase_daily_before" / "forecast_eval.json").read_text())
    assert result["period"] == "file" and result["origins"] == 40 and result["season"] == 7
    assert result["overlaps_training"] is False and not any("overlaps" in s for s in said)
    bitstamp = CANDLES / "bitstamp_btc_eth_ltc_usd_d.csv"
    cli("forecast", str(fc), "--data", str(bitstamp), "--columns", BITSTAMP_COLUMNS, "--horizon", "3",
        "--samples", "8", "--out", str(fc / "bitstamp"))
    assert len((fc / "bitstamp" / "forecast.csv").read_text().splitlines()) == 4
    with pytest.raises(TrainlabError, match=r"lacks the column\(s\)"):
        forecast.forecast(fc, 3, bitstamp, samples=4, log=lambda s: None)
    # the same hours as the run's own data: said in one line and in the JSON
    forecast.walk_forward(fc, HOURLY, samples=8, max_origins=20, log=said.append)
    assert any("overlaps the run's training period" in s for s in said)
    assert json.loads((fc / "eval" / "bitfinex_btcusd_1h" / "forecast_eval.json").read_text())["overlaps_training"]


def test_csv_layouts_read_the_same_candles(tmp_path):
    features = ["open", "high", "low", "close", "volume", "amount"]
    bitfinex = series.read_candles(HOURLY, features)
    assert bitfinex.timestamps[0] == "2019-05-31 18:00" and "newest first" in bitfinex.notes[0]
    assert bitfinex.values[-1].tolist() == [11849.99, 11880.0, 11790.01, 11849.69, 303.61, 3589525.18]
    cdd = series.read_candles(CANDLES / "coinbase_btcusd_d.csv", features)  # banner, volume_btc beside volume (USD)
    assert cdd.values[-1].tolist() == [7993.54, 8070.0, 7937.01, 8034.32, 1570.08, 12537245.82]
    hourly = tmp_path / "cdd_hourly.csv"
    hourly.write_text("https://www.CryptoDataDownload.com\nUnix Timestamp,Date,Symbol,Open,High,Low,Close,"
                      "Volume BTC,Volume USD\n1571302800,2019-10-17 09-AM,BTCUSD,8051,8056.83,8021.23,8035.88,61.25,"
                      "492394.56\n1571299200,2019-10-17 08-AM,BTCUSD,7975.89,8070,7975.89,8051,370.45,2971610.86\n")
    h = series.read_candles(hourly, features, {"timestamp": "Date"})
    assert h.timestamps == ["2019-10-17 08-AM", "2019-10-17 09-AM"] and h.calendar()[0].tolist() == [8, 9]
    assert h.values[:, 4:].tolist() == [[370.45, 2971610.86], [61.25, 492394.56]]
    no_amount = series.read_candles(CANDLES / "bitstamp_btc_eth_ltc_usd_d.csv", features,
                                    forecast.parse_columns(BITSTAMP_COLUMNS))
    ohlc = no_amount.values[:, :4].mean(1)
    np.testing.assert_allclose(no_amount.values[:, 5], no_amount.values[:, 4] * ohlc)


def test_without_a_tokenizer_run_the_forecaster_exits_2(tmp_path):
    proc = cli("train", "--preset", "kronos-btc-forecast", "--run-dir", str(tmp_path / "r"), check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--preset kronos-btc" in proc.stderr
    assert not (tmp_path / "r").exists()


def test_doctor_says_no_better_than_naive_from_the_evaluation(runs, tmp_path):
    from trainlab.doctor import diagnose

    _, fc = runs
    run = tmp_path / "copy"
    shutil.copytree(fc, run, ignore=shutil.ignore_patterns("forecast_eval.json"))
    checks = {c["id"]: c for c in diagnose(run, check_data=False).checks}
    assert not checks["no_better_than_naive"]["ran"] and f"trainlab eval {run}" in checks["no_better_than_naive"]["reason"]
    result = json.loads((fc / "forecast_eval.json").read_text())
    for block in result["horizons"].values():
        block["tests"].update(dm_p=0.5, dm_crps_p=0.5)
    (run / "forecast_eval.json").write_text(json.dumps(result))
    diag = diagnose(run, check_data=False)
    found = {f.id: f for f in diag.findings}["no_better_than_naive"]
    assert found.severity == "high" and "| 24 | gaussian_vol |" in found.evidence and diag.verdict != "healthy"
    result["horizons"]["6"]["tests"]["dm_crps_p"] = 0.01
    (run / "forecast_eval.json").write_text(json.dumps(result))
    assert "no_better_than_naive" not in {f.id for f in diagnose(run, check_data=False).findings}


def test_interval_scales_calibrate_each_level_where_one_scale_cannot():
    """Sampled paths narrower than the truth and with lighter tails (a Gaussian against Student-t errors): the
    per-level scales, fitted on one set of origins, cover 80% and 90% of a fresh set; the quantiles written
    by `trainlab forecast` are the same intervals."""
    rng = np.random.default_rng(0)
    steps = np.arange(1, 7)

    def draw(n):
        sd = np.sqrt(steps)  # a random walk's spread: the fitted scales follow a power law in the step
        raw = 100 + rng.normal(size=(n, 100, 6)) * sd
        return raw, 100 + 1.7 * rng.standard_t(2, size=(n, 6)) * sd

    fit_raw, fit_y = draw(3000)
    levels = forecast._scales(fit_raw, fit_y)
    assert levels["90"][0] > levels["80"][0] > 1  # heavier tails: the 90% interval needs more widening
    np.testing.assert_allclose(levels["80"] / levels["80"][0], np.ones(6), rtol=0.08)  # no trend in the step
    cal = {"scale": np.sqrt(levels["80"] * levels["90"]).tolist(),
           "interval_scale": {k: v.tolist() for k, v in levels.items()}}
    raw, y = draw(3000)
    q05, q10, q90, q95 = forecast.quantiles(raw, cal, (0.05, 0.1, 0.9, 0.95))
    assert abs(((y >= q10) & (y <= q90)).mean() - 0.8) < 0.02
    assert abs(((y >= q05) & (y <= q95)).mean() - 0.9) < 0.02
    one = forecast._spread(raw, np.array(cal["scale"]))  # one scale for both: off at one level or the other
    lo5, lo10, hi90, hi95 = np.quantile(one, [0.05, 0.1, 0.9, 0.95], axis=1)
    assert max(abs(((y >= lo10) & (y <= hi90)).mean() - 0.8), abs(((y >= lo5) & (y <= hi95)).mean() - 0.9)) > 0.03
    assert forecast.scale_for({"scale": [2.0, 3.0]}, 4, 0.8).tolist() == [2.0, 3.0, 3.0, 3.0]  # an older file


def test_scores_against_hand_computations():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(3, 7)), rng.normal(size=3)
    brute = np.abs(x - y[:, None]).mean(1) - 0.5 * np.abs(x[:, :, None] - x[:, None, :]).mean((1, 2))
    np.testing.assert_allclose(scores.crps_samples(x, y), brute, rtol=1e-12)
    big = rng.normal(2.0, 3.0, size=(1, 40000))
    assert scores.crps_samples(big, np.array([1.0]))[0] == pytest.approx(
        scores.crps_gaussian(np.array([2.0]), np.array([3.0]), np.array([1.0]))[0], rel=0.02)
    a = np.abs(rng.normal(size=300))
    better = scores.diebold_mariano(a * 0.7, a + 0.01 * rng.normal(size=300), overlap=1)
    assert better["p"] < 0.01 and better["stat"] < 0
    assert scores.diebold_mariano(a + 1, a, overlap=6)["p"] > 0.99
    d = rng.normal(size=50)  # HLN: the DM statistic times sqrt((n + 1 - 2h + h(h-1)/n) / n), here h = 1
    plain = d.mean() / np.sqrt(((d - d.mean()) ** 2).mean() / 50)
    assert scores.diebold_mariano(d, np.zeros(50), 1)["stat"] == pytest.approx(plain * np.sqrt(49 / 50))
    lo, hi = scores.block_bootstrap_ci(a, block=5)
    assert lo < a.mean() < hi


def test_doctor_on_a_real_forecaster_run_names_the_evaluation_not_the_learning_rate():
    """A kronos-btc-forecast run with the preset's defaults (btc-1h, early-stopped at step 1,300): its weight
    norm grew 5.5x with updates of 1.5e-3 of the weights per step while its loss kept falling. Its lr was not
    too high: `doctor --verify` with a fifth of it ended 1.58 higher in validation loss (95% interval
    [+1.45, +1.70], 3 seeds). The finding is that it forecasts no better than the naive baselines."""
    from trainlab.doctor import diagnose

    diag = diagnose(Path(__file__).parent / "fixtures" / "doctor" / "forecaster", check_data=False)
    ids = [f.id for f in diag.findings]
    assert ids[0] == "no_better_than_naive" and "lr_too_high" not in ids
    assert diag.verdict == "failing"


def test_a_nucleus_of_zero_samples_the_most_likely_id():
    """`forecast --top-p 0` keeps the most likely id, as `generate --top-p 0` does (it had emptied the
    distribution); a nucleus of 1 leaves every id possible."""
    import torch

    from trainlab.tasks.series_forecast import _sample

    logits = torch.tensor([[0.1, 2.0, -1.0, 1.9], [3.0, 0.0, 0.0, 2.9]])
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        assert _sample(logits, 1.0, 0.0, gen).tolist() == [1, 0]
    drawn = {tuple(_sample(logits, 1.0, 1.0, gen).tolist()) for _ in range(200)}
    assert len(drawn) > 2
