"""`make test`'s own guard: notebooks, package and README in sync, named when not; and the public API pinned."""
from __future__ import annotations

import importlib
import shutil
import subprocess

import pytest


from conftest import BIN, ROOT


@pytest.fixture
def copy(tmp_path):
    "The project's notebooks, package and README in a temporary folder"
    for f in ("pyproject.toml", "settings.ini", "README.md"): shutil.copy(ROOT / f, tmp_path / f)
    for d in ("nbs", "mlflow_template"):
        shutil.copytree(ROOT / d, tmp_path / d, ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints"))
    return tmp_path


def check(path):
    return subprocess.run([str(BIN / "mlflow-template"), "check-sync"], cwd=path, capture_output=True, text=True,
                          timeout=300)


def test_in_sync_tree_passes(copy):
    r = check(copy)
    assert r.returncode == 0, r.stderr


def test_hand_edited_module_names_its_notebook(copy):
    core = copy / "mlflow_template" / "core.py"
    core.write_text(core.read_text() + "\nHAND_EDIT = 1\n")
    r = check(copy)
    assert r.returncode == 1
    assert "mlflow_template/core.py: out of date with nbs/00_core.ipynb" in r.stderr


def test_stale_readme_is_named(copy):
    (copy / "README.md").write_text("# edited by hand\n")
    r = check(copy)
    assert r.returncode == 1 and "README.md: not what nbs/index.ipynb renders to" in r.stderr


PUBLIC_API = {
    "acquire": {'FORMATS', 'FORMAT_OPTIONS', 'OPTIONS', 'SQL_DIALECTS', 'acquire', 'check_acquired', 'check_options',
                'different_snapshot', 'env_secrets', 'expand_env', 'flatten_nested', 'load_source', 'provenance',
                'records_of', 'redact', 'scrub', 'snapshot', 'source_fingerprint', 'source_format'},
    "acquire_api": {'PAGING', 'quiet_log', 'read_api', 'retrying_session'},
    "acquire_files": {'PROGRESS_BYTES', 'files_fingerprint', 'files_size', 'read_files', 'source_files'},
    "acquire_sql": {'read_sql'},
    "card": {'model_card'},
    "cli": {'check_sync', 'main', 'render_readme'},
    "contract": {'column_stats', 'contract_from_stats', 'contract_report', 'learn_contract', 'merge_reports',
                 'merge_stats', 'mismatch', 'records_frame', 'validate_rows'},
    "core": {'Appender', 'FrameHash', 'as_text', 'atomic_path', 'package_versions', 'plain', 'project_root',
             'read_json', 'read_json_or_none', 'rel', 'row_hashes', 'sample_positions', 'sha256_file',
             'sha256_frame', 'write_json', 'write_parquet'},
    "deploy": {'CONTRACT_FILE', 'DEFAULT_LIMITS', 'FILES_KEY', 'HELDOUT_FILE', 'MIN_FRESH_ROWS', 'MODEL_FILE',
               'ModelNotFoundError', 'REFERENCE_FILE', 'ROWS_FILE', 'check_options', 'check_store',
               'compare_with_champion', 'fitted_rows', 'load_model', 'promote', 'promoted_models', 'promoted_names',
               'promotion_decision', 'row_hashes', 'save_model', 'served_name', 'served_threshold', 'store_path',
               'stored_reference', 'use_store', 'verified_versions', 'verify_version'},
    "evaluate": {'THRESHOLD_STRATEGIES', 'calibration_table', 'check_options', 'choose_threshold', 'cost_curve',
                 'cost_threshold', 'cross_validate_model', 'fairness_tables', 'gate', 'group_caption',
                 'group_metrics', 'importance_table', 'predictions'},
    "explore": {'association_tests', 'bias_scan', 'check_options', 'column_summary', 'explore_summary',
               'outlier_table', 'plot_correlations', 'plot_target_by_feature', 'plot_trend', 'profile_report',
               'target_measure', 'target_summary'},
    "features": {'CLIP_METHODS', 'Clipper', 'DateFeatures', 'IQRClipper', 'QuantileClipper', 'RatioFeatures',
                 'TIME_COLUMN_REASON', 'build_preprocessor', 'check_clip_method', 'check_fraction', 'check_iqr_k',
                 'check_quantiles', 'check_ratios', 'clip_report', 'column_profile', 'drop_columns', 'feature_roles',
                 'iqr_fences', 'leakage_check', 'ratio_report'},
    "kinds": {'DATE_FORMATS', 'KINDS', 'MISSING_TOKENS', 'best_date_format', 'column_kind', 'days_since_epoch',
              'group_labels', 'is_binned', 'is_text', 'numpy_dtypes', 'parse_dates', 'parse_numbers',
              'text_and_missing', 'to_dates'},
    "labels": {'class_labels', 'decision_threshold', 'is_positive', 'label_text', 'positive_flag',
              'positive_index', 'positive_scores', 'predict_table', 'threshold_labels'},
    "metrics": {'DEFAULT_METRIC', 'LOWER_IS_BETTER', 'METRICS', 'Metric', 'TASKS', 'compute_metrics', 'is_better',
                'metric_from_score', 'metric_on_resamples', 'metric_unit', 'metrics_for', 'metrics_units', 'scorer'},
    "modelfile": {'TRUSTED_TYPES', 'check_sha256', 'dump_model', 'load_model_file', 'pipeline_types',
                 'trusted_types'},
    "monitor": {'ALERT_KINDS', 'BatchCheck', 'MIN_HELD_OUT', 'NOT_PROMOTED', 'Watched', 'assemble_check',
                'check_batch', 'check_options', 'drift_alerts', 'feature_drift', 'population_stability_index',
                'prediction_drift', 'quarantine_reasons', 'reference_data', 'watched_model', 'write_check'},
    "pages": {'PAGE_CSS', 'export_html', 'write_index'},
    "plots": {'plot_calibration', 'plot_confusion', 'plot_drift', 'plot_leaderboard', 'plot_partial_dependence',
              'plot_residuals', 'plot_roc_pr'},
    "prepare": {'DUPLICATE_KEEP', 'EXACT_DUPLICATES', 'Prepared', 'apply_repairs', 'check_options', 'clean_target',
                'cleaning_steps', 'contract_table', 'contract_warnings', 'deduplicate', 'finish_prepare',
                'missing_report', 'missing_shares', 'prepare_data', 'repair_plan', 'repair_types', 'roles_table',
                'split_method', 'split_table', 'target_labels', 'target_table', 'whole_numbers'},
    "report": {'figure_html', 'fmt_value', 'md_table', 'show_figure', 'show_table'},
    "runfolder": {'PRODUCERS', 'READS_ENV', 'RunFolder', 'open_run'},
    "runner": {'Interrupted', 'new_run_id', 'run_pipeline', 'run_status'},
    "scope": {'ProblemSpec', 'check_columns', 'objective', 'threshold_checks'},
    "service": {'BATCH_LATENCY_MS', 'Scorer', 'feedback_model', 'make_service', 'predict_records', 'reload_seconds',
                'request_dicts', 'request_limits', 'request_model', 'service_workers'},
    "guard": {'ErrorDetail', 'ErrorResponse', 'RequestGuard', 'error_body', 'openapi_document', 'surprises'},
    "predlog": {'PredictionLog', 'log_predictions', 'prediction_log_path'},
    "settings": {'RESERVED', 'Settings', 'SettingsError', 'apply_overrides', 'check_int', 'check_parameters',
                 'load_parameters', 'option_problems', 'parse_value', 'read_settings', 'resolve',
                 'runbook_parameters', 'runbooks', 'stage_name'},
    "synthetic": {'best_roc_auc', 'load_synthetic', 'make_churn', 'parse_synthetic_uri'},
    "train": {'FAMILIES', 'LogInt', 'STRATEGIES', 'SearchResult', 'TARGET_TRANSFORMS', 'Trained', 'candidates',
              'check_options', 'clearly_better', 'default_params', 'development_rows', 'ensemble_of', 'folds',
              'out_of_fold', 'refit_all_rows', 'search', 'target_transforms', 'top_trials', 'train_candidates',
              'trial_table', 'with_target_transform'},
    "scenarios": {'backtest', 'check_options', 'explain_rows', 'plot_explanations', 'scenarios_record',
                  'shapley_values', 'slice_metrics', 'stress_tests', 'time_bins'},
    "package": {'RUNTIME_ROOTS', 'bento_name', 'bento_path', 'bento_spec', 'build_bento', 'check_dockerfile', 'main',
                'newest_bento', 'promoted_tag', 'render_manifests', 'runtime_requirements', 'write_bentofile',
                'write_manifests'},
    "score": {'OUTPUT_FORMATS', 'output_format', 'quarantine_path', 'read_chunks', 'score_chunk', 'score_source'},
    "fastpath": {'FastModel', 'compile_model'},
    "concept": {'concept_drift', 'frame_scores', 'labelled_performance', 'scored_performance', 'scored_rows',
                'scores_frame'},
    "alerting": {'check_env_name', 'send_alerts'},
    "traffic": {'PREDICTION_ROUTES', 'check_traffic', 'error_alerts', 'is_prediction_log', 'latency_alerts',
                'plot_latency', 'traffic_windows'},
    "feedback": {'FeedbackError', 'answer_key', 'check_truth', 'feedback_db_path', 'feedback_frame',
                 'feedback_stores', 'new_prediction_ids', 'record_feedback', 'refused_frame', 'register_refused',
                 'register_requests', 'with_feedback'},
    "retrain": {'RETRAIN_STAGES', 'compare_on_holdout', 'dedup_override', 'holdout_versus', 'labelled_rows',
                'retrain', 'split_recent', 'training_table'},
    "history": {'KEPT', 'check_summary', 'keep_check', 'plot_history', 'read_history', 'write_history_page'},
    "tracking": {'PARENT_TAG', 'RUN_ID_TAG', 'STAGE_TAG', 'STORE', 'SUPERSEDED_TAG', 'experiment_name',
                 'run_metrics', 'run_params', 'run_tags', 'track_run', 'tracking_uri'},
    "reuse": {'ALWAYS', 'code_hash', 'external_state', 'file_hashes', 'find_reusable', 'finished_keys',
              'folder_state', 'reuse_stage', 'stage_key', 'stage_record', 'store_state'},
    "runs": {'COLUMNS', 'NOT_RUNS', 'plot_runs', 'runs_table', 'write_runs_index'},
    "cluster": {'ADDRESS_SCHEMES', 'Busy', 'ClusterSpec', 'RunCluster', 'SCHEDULER_ENV', 'busy', 'check_fits',
                'check_options', 'check_workers', 'connect', 'describe', 'describe_markdown', 'in_order',
                'joblib_on', 'parse_cluster', 'start_local', 'workers_table'},
    "splits": {'assign_splits', 'check_ids_disjoint', 'check_split_sizes', 'split_codes', 'split_cutoffs',
               'split_data', 'split_keys', 'split_strata', 'split_units'},
    "acquire_dask": {'WORKER_FORMATS', 'acquire_partitioned', 'check_partitions', 'read_partitions',
                     'write_snapshot'},
    "prepare_dask": {'DISTINCT', 'LOOK_ROWS', 'PLAN_VALUES', 'SPLITS', 'decide_rows', 'feature_roles_of',
                     'final_profile', 'first_look', 'prepare_partitioned'},
    "monitor_dask": {'SAMPLE_ROWS', 'SCORED_ROWS', 'SHOWN_QUARANTINE', 'check_partitioned'},
    "explore_dask": {'summaries_partitioned'},
}


def test_public_api_is_deliberate():
    "Each module's public names are pinned, and every module is: a change to the API is a change to this test"
    modules = {p.stem for p in (ROOT / "mlflow_template").glob("*.py") if not p.stem.startswith("_")}
    assert modules == set(PUBLIC_API), f"modules without a pin: {modules - set(PUBLIC_API)}; pinned but gone: {set(PUBLIC_API) - modules}"
    for name, expected in PUBLIC_API.items():
        assert set(importlib.import_module(f"mlflow_template.{name}").__all__) == expected, name
