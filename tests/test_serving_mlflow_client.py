"""MLflow's own scoring client (`mlflow.pyfunc.scoring_server.client.ScoringServerClient`), unchanged, against a
real `notebench serve` (uvicorn on a free local port) serving a model of the fixture use case: `/ping` before and
after the model is loaded, `wait_server_ready`, `/version`, and `/invocations` in each of MLflow's formats. The
service starts before the model is registered, so its imports overlap the training and `/ping` is seen not ready."""

from __future__ import annotations

import io
import json

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest
import requests
from fixture_models import free_port, readings_frame, register_model, start_service, stop_service, wait_until
from mlflow.pyfunc import scoring_server
from mlflow.pyfunc.scoring_server.client import ScoringServerClient
from notebench.workspace import Workspace


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(MLflow's client, the service process, the registered model) for a workspace whose champion is served."""
    root = tmp_path_factory.mktemp("mlflow-client")
    ws = Workspace.of(root / "ws")
    ws.experiment_id(ws.client())  # the store exists before the service opens it
    port, log = free_port(), root / "service.log"
    proc = start_service(ws, port, log, "--watch-interval", "0.3", "--flush-interval", "0.2")
    try:
        not_ready = wait_until(f"http://127.0.0.1:{port}/ping", proc, log, status=404)
        model = register_model(ws, readings_frame())
        yield ScoringServerClient("127.0.0.1", port), proc, model, not_ready
    finally:
        stop_service(proc)


def test_ping_answers_404_until_a_model_is_served_then_200(served):
    client, proc, _, not_ready = served
    assert "no model loaded" in not_ready.json()["message"]  # MLflow's status for "not healthy", with the reason
    client.wait_server_ready(timeout=120, scoring_server_proc=proc)  # polls /ping until it answers 200
    client.ping()
    ping = requests.get(client.url_prefix + "/ping", timeout=5)
    assert (ping.status_code, ping.text, ping.headers["content-type"]) == (200, "\n", "application/json")


def test_version_is_mlflows_as_its_server_answers_it(served):
    client, proc, _, _ = served
    client.wait_server_ready(timeout=120, scoring_server_proc=proc)
    assert client.get_version() == mlflow.__version__  # the bare version string, as `mlflow models serve` answers


def expected(model, frame: pd.DataFrame) -> np.ndarray:
    return model.model.predict_proba(frame)


def test_invoke_in_every_json_format(served):
    client, proc, model, _ = served
    client.wait_server_ready(timeout=120, scoring_server_proc=proc)
    rows = model.frame.iloc[:7].copy()
    rows.loc[rows.index[1], "vibration"] = np.nan  # a missing value: MLflow's client writes it as NaN
    records = json.loads(rows.to_json(orient="records"))
    columns = {c: json.loads(rows[c].to_json(orient="values")) for c in rows}
    payloads = {
        "dataframe_split (a DataFrame)": rows,
        "inputs, records (a list)": records,
        "inputs, rows (an ndarray)": rows.to_numpy(dtype=object),
        "dataframe_split with params": (rows, {"unused": 1}),
        "dataframe_records": json.dumps({"dataframe_records": records}),
        "instances, records": json.dumps({"instances": records}),
        "instances, rows": json.dumps({"instances": rows.to_numpy(dtype=object).tolist()}, default=float),
        "inputs, columns": json.dumps({"inputs": columns}),
    }
    want = expected(model, rows)
    for label, payload in payloads.items():
        data, params = payload if isinstance(payload, tuple) else (payload, None)
        answer = client.invoke(data, params=params)  # MLflow's PredictionsResponse; raises on a non-200
        got = answer.get_predictions(predictions_format="ndarray")
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12, err_msg=label)
        assert answer["model_version"] == model.version, label
        assert answer.get_predictions().shape == (7, 2), label


def test_csv_and_parquet_as_mlflow_documents_them(served):
    """MLflow's client sends only JSON; its server also takes CSV and Parquet bodies under these content types."""
    client, proc, model, _ = served
    client.wait_server_ready(timeout=120, scoring_server_proc=proc)
    rows = model.frame.iloc[3:9]
    parquet = io.BytesIO()
    rows.to_parquet(parquet)
    for content_type, body in ((scoring_server.CONTENT_TYPE_CSV, rows.to_csv(index=False)),
                               (scoring_server.CONTENT_TYPE_CSV, rows.to_csv()),
                               (scoring_server.CONTENT_TYPE_PARQUET, parquet.getvalue())):
        response = httpx.post(client.url_prefix + "/invocations", content=body, timeout=30,
                              headers={"content-type": content_type})
        assert response.status_code == 200, response.text
        answer = scoring_server.client.PredictionsResponse.from_json(response.text)
        np.testing.assert_allclose(answer.get_predictions(predictions_format="ndarray"), expected(model, rows),
                                   rtol=0, atol=1e-12)


def test_a_refused_input_fails_in_mlflows_client_with_mlflows_error_shape(served):
    client, proc, model, _ = served
    client.wait_server_ready(timeout=120, scoring_server_proc=proc)
    with pytest.raises(Exception, match=r"error code 422.*INVALID_PARAMETER_VALUE.*missing columns \['site'\]"):
        client.invoke(model.frame.drop(columns="site").head(2))
