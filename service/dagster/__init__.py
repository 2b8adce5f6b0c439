"""Dagster's GraphQL API: the documents (`queries`), HTTP and its failures (`transport`), what routes
launch (`workspace`) and the runs (`client`)."""

from service.dagster.client import DagsterClient, RunEvent, RunEventLog
from service.dagster.workspace import JobSelector, PartitionsDef, Target, location_failure

__all__ = ["DagsterClient", "JobSelector", "PartitionsDef", "RunEvent", "RunEventLog", "Target",
           "location_failure"]
