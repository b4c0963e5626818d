"""The prepare and explore stages in-process, on small synthetic churn data: what `prepare_data` hands the runbook
(splits, roles, contract, fitted preprocessing, the report written as prepare.json) and what explore records.
No papermill: each test takes seconds."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone

from mlflow_template.core import read_json, write_json
from mlflow_template.explore import (association_tests, bias_scan, column_summary, explore_summary, outlier_table,
                                     plot_trend)
from mlflow_template.features import TIME_COLUMN_REASON
from mlflow_template.prepare import (clean_target, cleaning_steps, contract_warnings, deduplicate, prepare_data, repair_types,
                                     roles_table, split_table)
from mlflow_template.splits import check_ids_disjoint, split_data
from mlflow_template.scope import ProblemSpec
from mlflow_template.synthetic import make_churn

SPEC = ProblemSpec(target="churn", positive_class="Yes", id_column="customer_id", sensitive_features=["gender"], seed=3)
TIMED = ProblemSpec(target="churn", positive_class="Yes", id_column="customer_id", time_column="signup_date",
                    sensitive_features=["gender"], seed=3)
RATIOS = {"charge_per_month": ["total_charges", "tenure_months"]}
# prepare.json's keys: other code and earlier runs read them, so they stay as they are
REPORT_KEYS = {"rows_in", "target_missing_dropped", "target_unparsed_dropped", "label_map", "classes",
               "exact_duplicates", "exact_duplicates_dropped", "exact_rule", "duplicate_ids_dropped", "repeated_ids", "rows_with_repeated_ids",
               "rows_without_id", "duplicate_keep", "rows_out", "conversions", "roles", "dropped", "missing", "leakage",
               "clipping", "engineered", "contract_checks", "preprocessor", "split", "splits"}


@pytest.fixture(scope="module")
def raw():
    return make_churn(2000, seed=11)


@pytest.fixture(scope="module")
def prep(raw):
    return prepare_data(raw, SPEC, ratios=RATIOS)


def _ids(df): return set(df["customer_id"])


def test_splits_cover_the_cleaned_rows_and_share_no_id(prep):
    parts = list(prep.splits.values())
    assert sum(map(len, parts)) == prep.report["rows_out"] == prep.report["rows_in"] - prep.report["exact_duplicates_dropped"]
    assert [len(p) for p in parts] == [pytest.approx(0.6 * prep.report["rows_out"], abs=2),
                                       pytest.approx(0.2 * prep.report["rows_out"], abs=2),
                                       pytest.approx(0.2 * prep.report["rows_out"], abs=2)]
    assert not (_ids(prep.train) & _ids(prep.valid) or _ids(prep.train) & _ids(prep.test) or _ids(prep.valid) & _ids(prep.test))
    shares = [p.churn.eq("Yes").mean() for p in parts]
    assert max(shares) - min(shares) < 0.03                               # stratified by the target


def test_event_data_keeps_every_row_of_an_id_in_one_split(raw):
    rng = np.random.default_rng(0)
    events = raw.drop_duplicates().loc[lambda d: d.index.repeat(rng.integers(1, 4, len(d)))]
    events = events.assign(tenure_months=events.tenure_months + rng.integers(0, 3, len(events)))  # not exact copies
    p = prepare_data(events, SPEC, duplicate_keep="keep_all")
    assert p.report["split"] == {"method": "stratified, whole ids", "grouped_by_id": True}
    assert sum(len(s) for s in p.splits.values()) == p.report["rows_out"] > events.customer_id.nunique()
    assert not (_ids(p.train) & _ids(p.test) or _ids(p.train) & _ids(p.valid) or _ids(p.valid) & _ids(p.test))


def test_contract_and_model_take_no_target_id_or_time_column(raw):
    "The spec's time column splits the data and shows trends; it must not become a model feature (it did before)"
    p = prepare_data(raw, TIMED, ratios=RATIOS)
    features = p.contract["features"]
    assert not {"churn", "customer_id", "signup_date"} & set(features)
    assert not {"churn", "customer_id", "signup_date"} & set(p.contract["columns"])
    assert "signup_date" not in set(p.preprocessor.feature_names_in_)
    assert not any(n.startswith("datetime__signup_date") for n in p.preprocessor.get_feature_names_out())
    assert p.roles["dropped"]["signup_date"] == TIME_COLUMN_REASON == p.contract["dropped"]["signup_date"]
    assert p.report["split"]["method"] == "by time"                       # ... but the split still goes by it
    assert p.train.signup_date.max() <= p.valid.signup_date.min() and p.valid.signup_date.max() <= p.test.signup_date.min()
    assert roles_table(p.roles).set_index("column").loc["signup_date", "role"] == f"dropped: {TIME_COLUMN_REASON}"


def test_without_a_time_column_a_date_is_an_ordinary_feature(prep):
    assert "signup_date" in prep.contract["features"] and prep.roles["datetime"] == ["signup_date"]
    assert set(prep.contract["features"]) == set(prep.roles["numeric"] + prep.roles["categorical"] + prep.roles["datetime"])


def test_the_preprocessing_is_fitted_on_the_training_split_only(prep):
    X = {n: p[prep.contract["features"]] for n, p in prep.splits.items()}
    on_train = clone(prep.preprocessor).fit(X["train"], prep.train.churn)
    np.testing.assert_array_equal(prep.preprocessor.transform(X["test"]), on_train.transform(X["test"]))
    on_all = clone(prep.preprocessor).fit(pd.concat(X.values()))
    assert not np.allclose(prep.preprocessor.transform(X["test"]), on_all.transform(X["test"]))  # the check can tell
    clip = prep.preprocessor.named_transformers_["numeric"].named_steps["clip"]
    j = prep.roles["numeric"].index("monthly_charges")
    assert clip.high_[j] == np.nanquantile(prep.train.monthly_charges, 0.995)
    assert clip.high_[j] != np.nanquantile(pd.concat(prep.splits.values()).monthly_charges, 0.995)


def test_same_splits_as_the_steps_run_one_by_one(raw, prep):
    df = deduplicate(clean_target(repair_types(raw, SPEC)[0], SPEC)[0], SPEC)[0]
    for mine, theirs in zip(prep.splits.values(), split_data(df, SPEC)):
        pd.testing.assert_frame_equal(mine, theirs)


def test_the_report_keeps_its_keys_and_is_json(prep, tmp_path):
    r = prep.report
    assert set(r) == REPORT_KEYS
    assert set(r["splits"]) == {"train", "valid", "test"} and all(len(s["sha256"]) == 64 for s in r["splits"].values())
    assert r["preprocessor"] == {"features_in": len(prep.contract["features"]),
                                 "features_out": len(prep.preprocessor.get_feature_names_out())}
    assert r["clipping"]["method"] == "quantile" and {c["column"] for c in r["clipping"]["columns"]} >= {"monthly_charges"}
    assert [e["feature"] for e in r["engineered"]] == ["charge_per_month"] and set(r["contract_checks"]) == {"valid", "test"}
    back = read_json(write_json(tmp_path / "prepare.json", r))
    assert back["rows_out"] == r["rows_out"] and back["leakage"]["flagged"] == r["leakage"]["flagged"] == []
    assert prepare_data(make_churn(300, seed=1), SPEC, clip_quantiles=[]).report["clipping"] == {"method": "none", "columns": []}


def test_a_leaky_column_is_dropped_and_reported(raw):
    p = prepare_data(raw.assign(closed=raw.churn.map({"Yes": "closed", "No": "open"})), SPEC)
    assert p.report["leakage"]["flagged"] == ["closed"] and "closed" not in p.contract["features"]
    assert p.roles["dropped"]["closed"].startswith("leaky") and p.leaky.column.tolist() == ["closed"]
    kept = prepare_data(raw.assign(closed=raw.churn.map({"Yes": "closed", "No": "open"})), SPEC, drop_leaky=False)
    assert "closed" in kept.contract["features"] and kept.report["leakage"]["dropped"] is False


@pytest.mark.parametrize("option, says", [
    ({"duplicate_keep": "latest"}, "duplicate_keep: 'latest' is not one of first, last, keep_all"),
    ({"test_size": 0.5, "valid_size": 0.5}, "test_size + valid_size"),
    ({"clip_method": "winsor"}, "clip_method: 'winsor'"),
    ({"clip_quantiles": [0.99]}, "clip_quantiles"),
    ({"parse_threshold": 1.5}, "parse_threshold"),
    ({"ratios": {"r": ["total_charges"]}}, "ratios"),
    ({"leakage_threshold": 0}, "leakage_threshold"),
    ({"id_unique_share": 0}, "id_unique_share")])
def test_bad_options_fail_first_naming_the_option(option, says):
    with pytest.raises(ValueError, match=says.replace("+", r"\+")):
        prepare_data(make_churn(50, seed=0), SPEC, **option)


def test_report_tables(prep):
    steps = cleaning_steps(prep.report, SPEC)
    assert steps["rows left"].iloc[-1] == prep.report["rows_out"] and steps["rows removed"].sum() == prep.report["rows_in"] - prep.report["rows_out"]
    table = split_table(prep.splits, SPEC).set_index("split")
    assert table["rows"].sum() == prep.report["rows_out"] and table["distinct ids"].tolist() == table["rows"].tolist()
    flags = contract_warnings(prep.checks)
    assert set(flags.split) <= {"valid", "test"} and not (flags.status == "ok").any()


def test_an_id_in_two_splits_is_named(prep):
    leak = {**prep.splits, "test": pd.concat([prep.test, prep.train.head(2)])}
    first = sorted(prep.train.customer_id.head(2))[0]
    with pytest.raises(ValueError, match=f"2 customer_id value.s. in both train and test, e.g. '{first}'"):
        check_ids_disjoint(leak, "customer_id")
    check_ids_disjoint(prep.splits, "customer_id")


def test_explore_records_its_tables(prep, tmp_path):
    train = prep.train
    summary, outliers = column_summary(train), outlier_table(train)
    tests, bias = association_tests(train, SPEC), bias_scan(train, SPEC)
    ex = explore_summary(train, tmp_path / "profile.html", summary, outliers, tests, bias)
    assert list(ex) == ["rows", "profile", "columns", "outliers", "associations", "bias"]
    assert (ex["rows"], ex["profile"]) == (len(train), "profile.html")
    assert [c["column"] for c in ex["columns"]] == list(train.columns)
    assert {b["feature"] for b in ex["bias"]} == {"gender"} and len(ex["associations"]) == len(tests)
    back = read_json(write_json(tmp_path / "explore.json", ex))
    assert back["rows"] == len(train) and len(back["outliers"]) == len(outliers)


def test_the_trend_can_use_any_date_column(prep):
    fig = plot_trend(prep.train, SPEC, freq="Q", column="signup_date")    # the spec has no time column
    assert fig.axes[1].get_xlabel() == "signup_date" and fig.axes[0].lines[0].get_ydata().sum() == len(prep.train)
    assert plot_trend(prep.train, SPEC) is None


# --- one home per idea: labels compared as labels, dates read by `kinds`, one rule per option -------------------

def test_a_numeric_positive_class_finds_its_rows(raw, prep):
    "positive_class 1.0 on a 1/0 target: clean_target read it as '1.0' (not a label) and leakage/split_table compared raw values"
    ones = raw.assign(churn=raw.churn.map({"Yes": 1, "No": 0}))
    p = prepare_data(ones, ProblemSpec(target="churn", positive_class=1.0, id_column="customer_id", seed=3), ratios=RATIOS)
    assert p.report["classes"] == {"0": prep.report["classes"]["No"], "1": prep.report["classes"]["Yes"]}
    pd.testing.assert_frame_equal(p.leakage, prep.leakage)                         # the same scores as with "Yes"
    shares = split_table(p.splits, ProblemSpec(target="churn", positive_class=1, id_column="customer_id"))
    assert shares["churn = 1 (share)"].tolist() == split_table(prep.splits, SPEC)["churn = Yes (share)"].tolist()
    assert shares["churn = 1 (share)"].gt(0.1).all()


def test_multiclass_rates_treat_1_and_text_1_as_one_class(prep):
    "explore's class flags compared raw values, so 1 and '1' were two classes and the shares of a group did not add up"
    codes = prep.train.contract.map({"month-to-month": 0, "one-year": 1, "two-year": 2}).astype(object)
    codes[codes.index[::2]] = codes[codes.index[::2]].map(str)                    # half the rows spell the class as text
    df = prep.train.assign(plan=codes)
    bias = bias_scan(df, ProblemSpec(target="plan", task="multiclass", sensitive_features=["gender"]))
    assert set(bias["class"]) == {"0", "1", "2"}
    np.testing.assert_allclose(bias.groupby("group")["rate (share of group)"].sum(), 1.0)
    tests = association_tests(df, ProblemSpec(target="plan", task="multiclass")).set_index("feature")
    assert tests.loc["tenure_months", "p-value"] < 0.01 and tests.loc["contract", "note"] == ""


def test_dates_written_as_text_are_read_as_kinds_reads_them(prep):
    "plot_trend and DateFeatures read text dates with `kinds.parse_dates` (day-first 01/02 used to fail or be misread)"
    from mlflow_template.features import DateFeatures
    from mlflow_template.kinds import parse_dates
    train = prep.train.sort_values("signup_date")
    text = train.assign(signup_date=train.signup_date.dt.strftime("%d/%m/%Y"))
    text.iloc[0, text.columns.get_loc("signup_date")] = "01/02/2021"              # ambiguous first value: 1 February
    expect = parse_dates(text.signup_date)
    assert expect.iloc[0] == pd.Timestamp("2021-02-01") and expect.iloc[1:].equals(train.signup_date.iloc[1:])
    fig = plot_trend(text, SPEC, freq="Q", column="signup_date")
    assert fig.axes[0].lines[0].get_ydata().sum() == expect.notna().sum()
    parts = DateFeatures().fit(text[["signup_date"]]).transform(text[["signup_date"]])
    np.testing.assert_array_equal(parts[:, 2], expect.dt.month.to_numpy(dtype=float))
    dated = DateFeatures().fit(train[["signup_date"]]).transform(train[["signup_date"]])   # datetimes pass through
    np.testing.assert_array_equal(dated[1:], parts[1:])


def test_one_fence_rule_for_explore_and_the_clipper(prep):
    "explore's outlier fences are the IQR clipper's bounds (one `features.iqr_fences`)"
    from mlflow_template.features import IQRClipper
    cols = ["monthly_charges", "data_usage_gb"]
    fences = outlier_table(prep.train, cols).set_index("column")
    clip = IQRClipper(k=1.5).fit(prep.train[cols])
    np.testing.assert_array_equal(clip.low_, fences["lower fence"].to_numpy())
    np.testing.assert_array_equal(clip.high_, fences["upper fence"].to_numpy())


@pytest.mark.parametrize("call, says", [
    (lambda d: split_data(d, SPEC, test_size="0.2"), "test_size must be a number in (0, 1)"),
    (lambda d: repair_types(d, SPEC, threshold=0), "threshold must be a number in (0, 1]"),
    (lambda d: deduplicate(d, SPEC, keep="latest"), "keep: 'latest' is not one of first, last, keep_all"),
    (lambda d: prepare_data(d, SPEC, iqr_k=-1), "iqr_k must be a number >= 0"),
    (lambda d: prepare_data(d, SPEC, clip_quantiles="0.9"), "clip_quantiles: expected [lower, upper]"),
    (lambda d: prepare_data(d, SPEC, ratios={"r": ["total_charges", "contract"]}), "ratios: 'r' uses contract")])
def test_each_option_rule_is_its_owners(call, says):
    "The stage and the step that owns an option apply one rule, each error naming its own option"
    with pytest.raises(ValueError, match=re.escape(says)):
        call(make_churn(50, seed=0))


def test_prepare_takes_none_for_no_clipping():
    assert prepare_data(make_churn(300, seed=1), SPEC, clip_quantiles=None).report["clipping"] == {"method": "none", "columns": []}


def test_partial_dependence_shows_the_positive_class_even_when_it_is_first():
    "sklearn plots classes_[1]; with the positive class first the curve was 1 - P(positive), labelled P(last class)"
    import matplotlib
    matplotlib.use("Agg")
    from sklearn.linear_model import LogisticRegression
    from mlflow_template.plots import plot_partial_dependence
    df = make_churn(600, seed=2).dropna(subset=["tenure_months", "monthly_charges"])
    X = df[["tenure_months", "monthly_charges"]]
    model = LogisticRegression().fit(X, df.churn)                                  # classes_: No, Yes
    curve = lambda fig: next(a for a in fig.axes if a.get_ylabel().startswith("partial dependence"))
    yes, no = (curve(plot_partial_dependence(model, X, ["tenure_months"], positive_class=c)) for c in ("Yes", "No"))
    assert (yes.get_ylabel(), no.get_ylabel()) == ("partial dependence: P(Yes)", "partial dependence: P(No)")
    np.testing.assert_allclose(no.lines[0].get_ydata(), 1 - yes.lines[0].get_ydata())
    assert curve(plot_partial_dependence(model, X, ["tenure_months"])).get_ylabel() == "partial dependence: P(Yes)"
