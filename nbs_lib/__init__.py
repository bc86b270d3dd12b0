"""A notebook-centric MLOps workbench: from JupyterLab experiments to a continuously trained, delivered and monitored prediction service.

Modules:

- `nbs_lib.bundle`: Pipeline bundles: the versioned, content-addressed artifact that CI builds and environments deploy.
- `nbs_lib.dashboards.panels`: What the dashboards show, read from the workspace: one function per panel, each returning plain data.
- `nbs_lib.dashboards.render`: How a dashboard panel looks: the page header, state badges, tables, plots and the "nothing yet" notice.
- `nbs_lib.dashboards.server`: `serve(...)`: Voila on the dashboards folder, with a landing page, the executed notebooks, and warm kernels.
- `nbs_lib.data`: The use case's data contract: its columns, the schema every feature batch must match, loading the landing area, and a time-based split.
- `nbs_lib.demo`: `notebench demo`: the whole level-2 loop on the demo world — what `make demo` runs.
- `nbs_lib.demo_data`: A deterministic subscription-churn world: a fixed customer base, daily feature snapshots, delayed labels, and scenarios that break things the way real data does.
- `nbs_lib.drift`: Reference profiles and drift: per-feature statistics computed once, then compared with any new window.
- `nbs_lib.environments`: Environments: where pipeline bundles are released, which one runs, the promotion rules, and rollback.
- `nbs_lib.evaluation`: Holdout metrics for a model's probabilities, overall and per segment, as plain dicts and as MLflow metric names.
- `nbs_lib.executors`: Executors run ready steps; they plug in through a registry, so a Dask executor needs no runner change.
- `nbs_lib.feast_offline`: A Feast offline store: Feast's DuckDB store, with its point-in-time join done as DuckDB ASOF joins.
- `nbs_lib.features`: Derived features, computed by the same code in training and in serving.
- `nbs_lib.featurestore`: The feature store: a Feast repo inside the workspace, one definition shared by training and serving.
- `nbs_lib.fingerprint`: Content fingerprints of steps: what a step's result depends on, and which part of it changed.
- `nbs_lib.imports`: Import-time costs of our dependencies that a process can refuse to pay.
- `nbs_lib.kernels`: Warm Jupyter kernels: each one forked from a server that has already imported the heavy libraries.
- `nbs_lib.landing`: The landing area and its ledger: which batches arrived, which were already taken, and what changed.
- `nbs_lib.lineage`: Lineage in MLflow, written by a sidecar process so that the runner never waits for `import mlflow`.
- `nbs_lib.model`: The churn model as one scikit-learn pipeline from raw features to a probability, and the search space the tuner explores.
- `nbs_lib.monitoring`: The monitoring job: live predictions and their delayed labels, window by window, against the training reference.
- `nbs_lib.registry`: The model registry: blessing gates, versions with lineage, aliases, promotion with a durable history, rollback.
- `nbs_lib.runner`: The pipeline runner: plan which steps must run, run them through papermill in parallel, record everything.
- `nbs_lib.serving.app`: The app factory: `create_app(workspace, ...)` builds the FastAPI app; its lifespan loads the model.
- `nbs_lib.serving.batching`: Micro-batching: concurrent requests predicted together by one worker thread.
- `nbs_lib.serving.config`: The prediction service's configuration: `[serving]` settings with defaults, and explicit overrides.
- `nbs_lib.serving.deploycheck`: `notebench deploy-check`: Google's continuous-delivery checks on a model version before it may serve.
- `nbs_lib.serving.formats`: MLflow's scoring formats: a request body as `mlflow models serve` accepts it, parsed into a checked `Batch`.
- `nbs_lib.serving.metrics`: Prometheus metrics, hand-written: counters, gauges read at scrape time, histograms, and the text format.
- `nbs_lib.serving.middleware`: One pure ASGI middleware around every request: body size limit, timing and metrics, `X-Model-Version`.
- `nbs_lib.serving.models`: The served model: loading a registry version, and the holder whose single reference swap is the hot swap.
- `nbs_lib.serving.predlog`: The prediction log: every prediction and every piece of delayed ground truth, written off the request path.
- `nbs_lib.serving.routes`: The HTTP API: predictions (MLflow-compatible `/invocations`, `/predict`), feedback, health, metrics, the model.
- `nbs_lib.serving.schema`: The model's input contract, read from its MLflow signature, and the checks that turn request values into columns.
- `nbs_lib.serving.server`: `serve(...)`: the prediction service under uvicorn, one worker, bound to 127.0.0.1 unless told otherwise.
- `nbs_lib.serving.service`: The running service: the model holder, the micro-batcher, the prediction log, the alias watcher, the metrics.
- `nbs_lib.settings`: settings.ini: the schema of every key, the loader with environment overrides, and where each value came from.
- `nbs_lib.spec`: pipeline.yaml: a pipeline's steps, their notebooks, upstream steps, parameters and products — and its checks.
- `nbs_lib.step`: The step API: how a step notebook reads its inputs, writes its products and records metrics and verdicts.
- `nbs_lib.store`: Where a pipeline keeps its state in the workspace: products and their manifests, run records, the lock.
- `nbs_lib.triggers.events`: The trigger event store: every trigger event, durable in SQLite (WAL) inside the workspace, and what became of it.
- `nbs_lib.triggers.kinds`: Trigger kinds: a registry of named sources, each polled once per pass of the trigger service.
- `nbs_lib.triggers.service`: The trigger service: one pass (`tick`) polls every enabled source, then starts one training run for all queued events; `watch` repeats passes until Ctrl-C or SIGTERM.
- `nbs_lib.validation`: The data validation gate, as TFX's ExampleValidator does it: schema anomalies stop, value skew is recorded."""

__version__ = "0.1.0"
