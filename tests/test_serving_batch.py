"""The service's batch path, piece by piece: JSON decoding (orjson, with the standard library for what orjson
refuses), the answer's encoding (the same JSON MLflow's server writes), column checks (booleans are not numbers),
the prediction log's table, and large requests predicted side by side by a thread-safe model."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time

import numpy as np
import pytest
from notebench.errors import InvalidInputError
from notebench.serving.batching import MicroBatcher
from notebench.serving.formats import decode_json
from notebench.serving.predlog import _predictions_table, _Record
from notebench.serving.routes import _encode
from notebench.serving.schema import Batch, Column, InputSchema

SCHEMA = InputSchema([Column("x", "double", True), Column("n", "long", False), Column("i", "integer", False),
                      Column("s", "string", True)])


def test_json_decoding_takes_what_mlflows_server_takes():
    assert decode_json(b'{"a": [1, 2.5, null, "t"]}') == {"a": [1, 2.5, None, "t"]}
    nan = decode_json(b'{"a": [NaN, Infinity, 1]}')["a"]  # pandas and MLflow's client write NaN
    assert np.isnan(nan[0]) and nan[1] == float("inf") and nan[2] == 1
    for text in (b"-9223372036854775809", b"123456789012345678901234567890"):  # beyond 64 bits: floats...
        assert decode_json(b"[" + text + b"]") == [float(text)]
        with pytest.raises(InvalidInputError, match="column 'n' \\(long\\): expected an integer"):
            SCHEMA.from_rows([[1.0, decode_json(text), 1, "a"]])  # ...that an integer column refuses
    with pytest.raises(Exception, match="malformed JSON: Expecting value: line 1 column 7"):
        decode_json(b'{"a": }')
    with pytest.raises(Exception, match="empty payload"):
        decode_json(b"  ")


@pytest.mark.parametrize(("output", "as_python"), [
    (np.array([[0.25, 0.75], [1 / 3, 2 / 3]]), False), (np.array([1, 0, 3]), False), (np.array([True, False]), False),
    (np.array([[0.1, 0.9], [0.2, 0.8]])[:, 1], False),  # a strided view
    (np.array([0.5, np.nan, np.inf]), True),  # orjson would write null
    (np.array([0.1, 0.7], dtype=np.float32), True),  # orjson would write float32's shortest digits
    (np.array(["yes", "no"], dtype=object), True)])
def test_answers_are_the_json_mlflows_server_writes(output, as_python):
    want = json.dumps({"predictions": output.tolist(), "model_version": "3"}, allow_nan=True)
    got = _encode({"predictions": output, "model_version": "3"}).decode()
    assert got == want if as_python else json.loads(got) == json.loads(want)


def test_booleans_and_out_of_range_integers_are_not_numbers():
    good = SCHEMA.from_rows([[1.5, 2, 3, "a"], [None, 4.0, 5, None]])
    assert good.columns["x"].tolist()[0] == 1.5 and np.isnan(good.columns["x"][1])
    assert good.columns["n"].tolist() == [2, 4] and good.columns["s"].tolist() == ["a", None]
    for row, problem in (([True, 1, 1, "a"], "column 'x' (double): expected a number or null; got boolean true"),
                         ([1.5, False, 1, "a"], "column 'n' (long): expected an integer"),
                         ([1.5, -9.223372036854776e18, 1, "a"], "got number -9.223372036854776e+18"),
                         ([1.5, 2**64, 1, "a"], "got number 18446744073709551616"),
                         ([1.5, 1, 2**31, "a"], "column 'i' (integer): expected an integer in"),
                         ([1.5, 1, 1, 7], "column 's' (string): expected a string or null; got number 7")):
        with pytest.raises(InvalidInputError, match=re.escape(problem)):
            SCHEMA.from_rows([[0.5, 1, 1, "b"], row])


def test_the_log_table_repeats_each_requests_values_over_its_rows():
    class Model:
        name, version = "m", "7"

    columns = {"x": np.array([0.5, np.nan, 2.0]), "s": np.array(["a", None, "c"], dtype=object)}
    records = [_Record(f"r{i}", "/invocations", "champion", "m", "7", 1_800_000_000.0 + i, 0.002 * (i + 1),
                       {k: v[:rows] for k, v in columns.items()}, np.full((rows, 2), 0.1 * i), rows)
               for i, rows in enumerate((3, 1, 2))]
    table = _predictions_table(records).to_pandas()
    assert table["request_id"].tolist() == ["r0", "r0", "r0", "r1", "r2", "r2"]
    assert table["row"].tolist() == [0, 1, 2, 0, 0, 1]
    assert table["latency_ms"].tolist() == pytest.approx([2, 2, 2, 4, 6, 6])
    assert table["time"].dt.tz is not None and table["time"].iloc[3].timestamp() == 1_800_000_001.0
    assert table["prediction"].tolist() == pytest.approx([0, 0, 0, 0.1, 0.2, 0.2])
    assert table["s"].tolist() == ["a", None, "c", "a", "a", None] and table["x"].isna().tolist()[:3] == [0, 1, 0]
    assert set(table["model_version"]) == {"7"} and set(table["endpoint"]) == {"/invocations"}


class SlowModel:
    """Predicts slowly, outside the GIL (a sleep), and records how many of its calls ran at once."""

    version = "1"

    def __init__(self, thread_safe: bool):
        self.thread_safe, self.running, self.most, self.lock = thread_safe, 0, 0, threading.Lock()

    def predict(self, batch: Batch) -> np.ndarray:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and self.most < 2 and self.thread_safe:
            time.sleep(0.01)  # wait for the other large request (it never comes while they are queued)
        time.sleep(0.05)
        with self.lock:
            self.running -= 1
        return batch.columns["x"] * 2


async def _predict_large(model: SlowModel, requests: int, rows: int = 300) -> list:
    batcher = MicroBatcher(max_rows=256, large_workers=2).start()
    try:
        batches = [Batch({"x": np.arange(rows, dtype=float) + i}, rows) for i in range(requests)]
        return await asyncio.gather(*(batcher.predict(model, b) for b in batches))
    finally:
        await asyncio.to_thread(batcher.stop)


def test_large_requests_are_predicted_side_by_side_by_a_thread_safe_model():
    model = SlowModel(thread_safe=True)
    outputs = asyncio.run(_predict_large(model, 2))
    assert model.most == 2  # both 300-row requests were in the model at once
    assert [o[:2].tolist() for o in outputs] == [[0, 2], [2, 4]]


def test_a_model_not_known_to_be_thread_safe_predicts_one_request_at_a_time():
    model = SlowModel(thread_safe=False)
    outputs = asyncio.run(_predict_large(model, 3))
    assert model.most == 1 and len(outputs) == 3
