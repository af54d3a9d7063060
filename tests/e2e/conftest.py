"""Makes the `airflow_stack` fixture available to every end-to-end test."""

from tests.e2e.airflow_stack import airflow_stack

__all__ = ["airflow_stack"]
