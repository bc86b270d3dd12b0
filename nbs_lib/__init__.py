"""Notebench's reference use case: subscription churn, edited in notebooks/ and exported by nbdev into nbs_lib."""
