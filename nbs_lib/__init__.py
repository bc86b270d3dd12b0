"""Notebench's reference use case: subscription churn, edited in notebooks/ and exported by nbdev into nbs_lib.

Modules:

- `nbs_lib.data`: The churn use case's data: its columns and the schema every feature batch must match.
- `nbs_lib.demo_data`: A deterministic subscription-churn world: a fixed customer base, daily feature snapshots, delayed labels, and scenarios that break things the way real data does.
- `nbs_lib.features`: Derived features, computed by the same code in training and in serving.
- `nbs_lib.model`: The churn model as one scikit-learn pipeline from raw features to a probability, and the search space the tuner explores."""
